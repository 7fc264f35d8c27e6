"""Media references (relative, absolute, volume:, s3://; https and data: for the worker), their confinement,
and image/audio decoding."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import av
import numpy as np
import PIL.Image
import pytest
import soundfile

from mt_assets.jobs import media
from mt_assets.jobs.media import (
    MediaError,
    download_https,
    endpoint_shown,
    fetch_remote,
    load_audio,
    load_image,
    remote_suffix,
    resolve_media,
    shown_ref,
)
from mt_assets_tests.s3_server import put_tree, s3_server

RED, BLUE = (255, 0, 0), (0, 0, 255)
SECRET = "media-secret-never-printed"


def speech_like(seconds: float, sr: int = 16000, f0: float = 150.0, channels: int = 1) -> np.ndarray:
    """Harmonics of a wobbling pitch under a 4 Hz syllable envelope: loudness-gated like speech."""
    t = np.arange(int(seconds * sr)) / sr
    pitch = f0 * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / sr
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    wave = (0.2 * voice * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t) ** 2)).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def half_red_half_blue(path: Path, *, orientation: int | None = None, **save: object) -> None:
    """40x20 image: left half red, right half blue; optionally tagged with an EXIF orientation."""
    image = PIL.Image.new("RGB", (40, 20), BLUE)
    image.paste(RED, (0, 0, 20, 20))
    if orientation is not None:
        exif = PIL.Image.Exif()
        exif[0x0112] = orientation
        save["exif"] = exif
    image.save(path, **save)


def encode_aac(path: Path, wave: np.ndarray, sr: int, *, video: bool = False, audio: bool = True) -> None:
    """An .m4a / .mp4 with an AAC track of `wave` (and optionally a short mpeg4 video track)."""
    with av.open(str(path), mode="w") as container:
        vstream = container.add_stream("mpeg4", rate=25) if video else None
        if vstream is not None:
            vstream.width, vstream.height, vstream.pix_fmt = 32, 32, "yuv420p"
        astream = container.add_stream("aac", rate=sr) if audio else None
        if astream is not None:
            astream.layout = "mono"
            frame_size = 1024
            for start in range(0, len(wave), frame_size):
                chunk = wave[start : start + frame_size]
                frame = av.AudioFrame.from_ndarray(
                    chunk[None, :].astype(np.float32), format="fltp", layout="mono"
                )
                frame.sample_rate = sr
                frame.pts = start
                frame.time_base = Fraction(1, sr)
                container.mux(astream.encode(frame))
            container.mux(astream.encode(None))
        if vstream is not None:
            for i in range(10):
                picture = np.full((32, 32, 3), i * 20, dtype=np.uint8)
                container.mux(vstream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
            container.mux(vstream.encode(None))


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Best normalised cross-correlation within +-2048 samples (AAC/MP3 may shift the start a little)."""
    n = min(len(a), len(b)) - 4096
    best = 0.0
    for lag in range(-2048, 2049, 1):
        x = a[2048 + lag : 2048 + lag + n]
        y = b[2048 : 2048 + n]
        best = max(best, float(np.dot(x, y) / np.sqrt(np.dot(x, x) * np.dot(y, y))))
    return best


# --- decoding -----------------------------------------------------------------------------------


def test_exif_rotated_jpeg_comes_out_upright(tmp_path):
    path = tmp_path / "phone.jpg"
    half_red_half_blue(path, orientation=6, quality=95)  # 6: the camera was turned 90° clockwise
    image = load_image(str(path))
    assert image.mode == "RGB" and image.size == (20, 40)
    assert np.allclose(image.getpixel((10, 5)), RED, atol=40)  # the left half is now on top
    assert np.allclose(image.getpixel((10, 35)), BLUE, atol=40)


@pytest.mark.parametrize(("name", "save"), [("a.webp", {"lossless": True}), ("a.png", {})])
def test_webp_and_png_decode_to_rgb(tmp_path, name, save):
    path = tmp_path / name
    PIL.Image.new("RGBA", (40, 20), (*RED, 128)).save(path, **save)
    image = load_image(str(path))
    assert image.mode == "RGB" and image.size == (40, 20)
    assert image.getpixel((0, 0)) == RED


def test_undecodable_image_is_named(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(MediaError, match=rf"image {path}: "):
        load_image(str(path))
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    with pytest.raises(MediaError, match=rf"image {text}: not a PNG, JPEG or WebP image"):
        load_image(str(text))
    gif = tmp_path / "a.gif"
    PIL.Image.new("RGB", (4, 4)).save(gif)
    with pytest.raises(MediaError, match="not a PNG, JPEG or WebP image"):
        load_image(str(gif))


def test_missing_media_is_named(tmp_path):
    with pytest.raises(MediaError, match=rf"image {tmp_path / 'nope.png'}: no such file"):
        load_image(str(tmp_path / "nope.png"))
    with pytest.raises(MediaError, match=rf"audio {tmp_path / 'nope.wav'}: no such file"):
        load_audio(str(tmp_path / "nope.wav"))
    with pytest.raises(MediaError, match="not a regular file"):
        load_audio(str(tmp_path))


@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])
def test_wav_at_16k_is_read_as_is(tmp_path, subtype):
    wave = speech_like(1.0)
    path = tmp_path / "a.wav"
    soundfile.write(path, wave, 16000, subtype=subtype)
    out = load_audio(str(path))
    assert out.dtype == np.float32 and out.shape == wave.shape
    expected = np.floor(wave * 32768) / 32768 if subtype == "PCM_16" else wave
    np.testing.assert_allclose(out, expected, atol=1 / 32768)


def test_stereo_flac_at_44k_becomes_mono_16k(tmp_path):
    path = tmp_path / "a.flac"
    soundfile.write(path, speech_like(1.0, sr=44100, channels=2), 44100)
    out = load_audio(str(path))
    assert out.dtype == np.float32 and len(out) == 16000
    assert correlation(out, speech_like(1.0)) > 0.99


def test_mp3(tmp_path):
    path = tmp_path / "a.mp3"
    soundfile.write(path, speech_like(1.5), 16000, format="MP3")
    out = load_audio(str(path))
    assert out.dtype == np.float32 and abs(len(out) - 24000) < 2400
    assert correlation(out, speech_like(1.5)) > 0.95


@pytest.mark.parametrize(("name", "sr", "video"), [("a.m4a", 16000, False), ("a.mp4", 48000, True)])
def test_aac_in_m4a_and_the_audio_track_of_an_mp4(tmp_path, name, sr, video):
    path = tmp_path / name
    encode_aac(path, speech_like(1.5, sr=sr), sr, video=video)
    out = load_audio(str(path))
    assert out.dtype == np.float32 and abs(len(out) - 24000) < 2400
    assert correlation(out, speech_like(1.5)) > 0.95


def test_mp4_without_an_audio_track_says_so(tmp_path):
    path = tmp_path / "silent.mp4"
    encode_aac(path, np.zeros(0, np.float32), 16000, video=True, audio=False)
    with pytest.raises(MediaError, match=rf"audio {path}: has no audio track \(video\)"):
        load_audio(str(path))


def test_undecodable_audio_gives_both_decoders_reasons(tmp_path):
    path = tmp_path / "noise.wav"
    path.write_bytes(os.urandom(4000))
    with pytest.raises(MediaError, match=rf"audio {path}: cannot be decoded \(libsndfile: .*; FFmpeg: .*\)"):
        load_audio(str(path))
    fake = tmp_path / "fake.m4a"
    fake.write_bytes(b"not an mp4 at all" * 10)
    with pytest.raises(MediaError, match=rf"audio {fake}: cannot be decoded"):
        load_audio(str(fake))


# --- references and confinement -----------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """<tmp>/jobs/inbox (the job folder), <tmp>/volume/media/a.png, <tmp>/outside/secret.png."""
    for folder in ("jobs/inbox", "volume/media", "outside"):
        (tmp_path / folder).mkdir(parents=True)
    for name in ("jobs/inbox/a.png", "volume/media/a.png", "outside/secret.png"):
        half_red_half_blue(tmp_path / name)
    return tmp_path


def resolve(tree: Path, ref: str, *, volume: bool = True, allowed: tuple[Path, ...] = ()) -> str:
    return resolve_media(
        ref,
        base_dir=tree / "jobs" / "inbox",
        volume_root=tree / "volume" if volume else None,
        allowed_roots=allowed,
    )


def test_relative_and_volume_references_resolve(tree):
    assert resolve(tree, "a.png") == str(tree / "jobs/inbox/a.png")
    assert resolve(tree, "volume:media/a.png") == str(tree / "volume/media/a.png")
    assert resolve(tree, "../../volume/media/a.png") == str(tree / "volume/media/a.png")  # inside a root
    assert resolve(tree, str(tree / "volume/media/a.png")) == str(tree / "volume/media/a.png")
    assert resolve(tree, "s3://bucket/key/a.png") == "s3://bucket/key/a.png"


def test_dotdot_escape_is_refused(tree):
    with pytest.raises(MediaError, match=r"'../../outside/secret.png' is outside the allowed roots"):
        resolve(tree, "../../outside/secret.png")
    with pytest.raises(MediaError, match=r"'../../../../../../etc/passwd' is outside the allowed roots"):
        resolve(tree, "../../../../../../etc/passwd")
    with pytest.raises(
        MediaError, match=r"'volume:../outside/secret.png' leads to .*outside the volume root"
    ):
        resolve(tree, "volume:../outside/secret.png")


def test_absolute_path_outside_the_roots_is_refused_unless_allowed(tree):
    secret = str(tree / "outside/secret.png")
    with pytest.raises(MediaError, match=rf"'{secret}' is outside the allowed roots; allowed: "):
        resolve(tree, secret)
    with pytest.raises(MediaError, match="'/etc/passwd' is outside the allowed roots"):
        resolve(tree, "/etc/passwd")
    assert resolve(tree, secret, allowed=(tree / "outside",)) == secret


def test_symlink_leading_out_is_refused(tree):
    (tree / "jobs/inbox/link.png").symlink_to(tree / "outside/secret.png")
    (tree / "volume/media/linked").symlink_to(tree / "outside")
    with pytest.raises(
        MediaError, match=r"'link.png' is outside the allowed roots \(it resolves to .*secret"
    ):
        resolve(tree, "link.png")
    with pytest.raises(MediaError, match="outside the volume root"):
        resolve(tree, "volume:media/linked/secret.png")


def test_malformed_references_are_named(tree):
    with pytest.raises(MediaError, match="no volume root is configured"):
        resolve(tree, "volume:media/a.png", volume=False)
    with pytest.raises(MediaError, match="expected volume:<path relative to the volume root>"):
        resolve(tree, "volume:/etc/passwd")
    with pytest.raises(MediaError, match="expected s3://bucket/key, with a key"):
        resolve(tree, "s3://bucket")
    with pytest.raises(MediaError, match="not a valid S3 bucket name"):
        resolve(tree, "s3://B_ad/key")
    with pytest.raises(MediaError, match="credentials do not belong in the URI"):
        resolve(tree, "s3://user:pass@bucket/key")
    with pytest.raises(MediaError, match="'' is not a media reference"):
        resolve(tree, "")


# --- s3:// --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with s3_server() as url:
        yield url


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, endpoint: str) -> str:
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "user_media")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return endpoint


def test_s3_image_and_audio_are_fetched_and_decoded(aws_env, tmp_path):
    half_red_half_blue(tmp_path / "a.jpg", orientation=6)
    soundfile.write(tmp_path / "a.wav", speech_like(1.0), 16000)
    put_tree(
        aws_env,
        "media",
        "jobs/one",
        {"a.jpg": (tmp_path / "a.jpg").read_bytes(), "a.wav": (tmp_path / "a.wav").read_bytes()},
    )
    assert load_image("s3://media/jobs/one/a.jpg").size == (20, 40)
    np.testing.assert_array_equal(
        load_audio("s3://media/jobs/one/a.wav"), load_audio(str(tmp_path / "a.wav"))
    )


def test_s3_missing_object_too_large_and_missing_bucket(aws_env):
    put_tree(aws_env, "media", "big", {"a.wav": b"\x00" * 5000})
    with pytest.raises(
        MediaError, match=r"s3://media/nope.png \(endpoint http://127\.0\.0\.1:\d+\): no such object"
    ):
        load_image("s3://media/nope.png")
    with pytest.raises(MediaError, match="the object is 5000 bytes, more than the 1000 allowed"):
        load_audio("s3://media/big/a.wav", max_bytes=1000)
    with pytest.raises(MediaError, match="no such bucket 'absent-bucket'") as caught:
        load_audio("s3://absent-bucket/a.wav")
    assert SECRET not in str(caught.value)


# --- https and data: (fetched by the RunPod worker) ----------------------------------------------


@pytest.mark.parametrize(
    "ref",
    [
        "https://host/a.png?X-Amz-Signature=sig",
        "HTTPS://host/a.png",
        "http://host/a.png",
        "data:image/png;base64,AAAA",
    ],
)
def test_remote_references_are_left_to_the_worker(tree, ref):
    with pytest.raises(MediaError, match="taken by the RunPod worker only") as caught:
        resolve(tree, ref)
    assert "beefcafe" not in str(caught.value) and "AAAA" not in str(caught.value)


@pytest.mark.parametrize(
    ("ref", "says"),
    [
        ("s3://b/k.png?X-Amz-Signature=beefcafe", "'s3://b/k.png?…': an s3:// URI has no query string"),
        ("s3://AKIA:beefcafe@b/k.png", "s3://***@b/k.png: credentials do not belong in the URI"),
    ],
)
def test_an_s3_uri_with_a_query_or_credentials_is_refused_without_showing_them(tree, ref, says):
    with pytest.raises(MediaError) as caught:
        resolve(tree, ref)
    assert says in str(caught.value) and "beefcafe" not in str(caught.value)


def test_shown_refs_keep_no_query_credentials_or_payload():
    assert shown_ref("https://h.example/a/b.png?X-Amz-Signature=s&e=1") == "https://h.example/a/b.png?…"
    assert shown_ref("https://user:pw@h.example/b.png") == "https://***@h.example/b.png"
    assert shown_ref("https://h.example/b.png") == "https://h.example/b.png"
    assert shown_ref("data:audio/wav;base64,UklGRg==") == "data:audio/wav;base64,… (30 characters)"
    assert shown_ref("volume:media/a.png") == "volume:media/a.png"
    assert shown_ref("s3://b/out?X-Amz-Signature=s") == "s3://b/out?…"  # any URL, not only https
    assert shown_ref("s3://key:secret@b/out") == "s3://***@b/out"
    assert shown_ref("http://h:9000/x#part") == "http://h:9000/x"
    assert shown_ref("S3://b/k") == "S3://b/k" and shown_ref("/in/a?b.png") == "/in/a?b.png"  # kept as given
    assert endpoint_shown("http://u:pw@127.0.0.1:9000") == "http://***@127.0.0.1:9000"
    assert endpoint_shown(None) == "AWS default"
    assert remote_suffix("https://h/in/Face.JPG?x=1") == ".jpg"
    assert remote_suffix("data:audio/x-wav;base64,AAAA") == ".wav"
    assert remote_suffix("data:application/x-unknown-thing;base64,AAAA") == ""


def test_a_data_uri_is_decoded_to_the_file_it_holds(tmp_path):
    half_red_half_blue(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    ref = "data:image/png;base64," + base64.b64encode(data).decode()
    assert fetch_remote(ref, tmp_path / "copy.png") == len(data)
    assert load_image(str(tmp_path / "copy.png")).getpixel((0, 0)) == RED


@pytest.mark.parametrize(
    ("ref", "says"),
    [
        ("data:image/png,plain%20text", "only base64 data: URIs are taken"),
        ("data:image/png;base64,***", "the data is not valid base64"),
        ("data:image/png;base64,", "the data is empty"),
        ("data:image/png;base64" + "A" * 10, "expected data:<mime type>;base64,<data>"),
        ("data:image/png;base64," + "A" * 2000, "more than the 1000 bytes allowed"),
    ],
)
def test_bad_data_uris_are_refused(tmp_path, ref, says):
    with pytest.raises(MediaError, match=re.escape(says)):
        fetch_remote(ref, tmp_path / "out", max_bytes=1000)


def test_a_data_uri_over_runpods_payload_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(media, "MAX_DATA_URI_CHARS", 100)
    with pytest.raises(
        MediaError, match=r"\(200 characters\): a data: URI of 200 characters is over the 100 allowed"
    ):
        fetch_remote("data:image/png;base64," + "A" * 178, tmp_path / "out")


class _Loopback(BaseHTTPRequestHandler):
    """Routes: /ok.png, /big (Content-Length over any test limit), /endless (no Content-Length),
    /stall (headers, then nothing), /trickle (a byte every 0.2 s), /missing (404), /to-http (302 to a
    plain-http host that is not loopback)."""

    protocol_version = "HTTP/1.0"  # no Content-Length: the body ends when the connection closes
    body = b""

    def do_GET(self):
        path = urlsplit(self.path).path
        if path == "/ok.png":
            self._head(200, {"Content-Length": str(len(self.body))})
            self.wfile.write(self.body)
        elif path == "/big":
            self._head(200, {"Content-Length": str(10**9)})
            self.wfile.write(b"x" * 1000)
        elif path == "/endless":
            self._head(200)
            with contextlib.suppress(OSError):
                for _ in range(1000):
                    self.wfile.write(b"x" * 1024)
        elif path == "/stall":
            self._head(200)
            time.sleep(3)
        elif path == "/trickle":
            self._head(200)
            with contextlib.suppress(OSError):
                for _ in range(30):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
        elif path == "/to-http":
            self._head(302, {"Location": "http://example.com/a.png?X-Amz-Signature=beefcafe2"})
        else:
            self._head(404, {"Content-Length": "0"})

    def _head(self, status, headers=None):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.flush()

    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="module")
def loopback(tmp_path_factory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("loopback")
    half_red_half_blue(folder / "a.png")

    class Handler(_Loopback):
        body = (folder / "a.png").read_bytes()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def fetch(url, tmp_path, **kwargs):
    return download_https(url, tmp_path / "out", allow_loopback_http=True, **kwargs)


def test_plain_http_is_refused_unless_a_test_allows_loopback(loopback, tmp_path):
    with pytest.raises(MediaError, match=r"\?…: only https URLs are fetched") as caught:
        fetch_remote(f"{loopback}/ok.png?X-Amz-Signature=f00dcafe", tmp_path / "out")
    assert "f00dcafe" not in str(caught.value)
    with pytest.raises(MediaError, match="only https URLs are fetched"):
        fetch("http://example.com/a.png", tmp_path)  # the allowance is for loopback only
    with pytest.raises(MediaError, match="credentials do not belong in the URL"):
        download_https("https://user:pw@example.com/a.png", tmp_path / "out")
    assert fetch(f"{loopback}/ok.png", tmp_path) == (tmp_path / "out").stat().st_size
    assert load_image(str(tmp_path / "out")).getpixel((39, 0)) == BLUE


def test_a_download_over_the_size_limit_stops_whether_announced_or_not(loopback, tmp_path):
    with pytest.raises(MediaError, match=r"/big: 1000000000 bytes, more than the 5000 allowed"):
        fetch(f"{loopback}/big", tmp_path, max_bytes=5000)
    with pytest.raises(MediaError, match=r"/endless\?…: more than the 5000 bytes allowed"):
        fetch(f"{loopback}/endless?sig=1", tmp_path, max_bytes=5000)


def test_a_download_that_stalls_or_trickles_times_out(loopback, tmp_path):
    started = time.monotonic()
    with pytest.raises(MediaError, match=r"/stall: timed out \(no byte for 1 s, 0 bytes in\)"):
        fetch(f"{loopback}/stall", tmp_path, timeout=1)
    with pytest.raises(MediaError, match=r"/trickle: not fetched within 1 s \(\d+ bytes in\)"):
        fetch(f"{loopback}/trickle", tmp_path, timeout=1)
    assert time.monotonic() - started < 5


def test_http_errors_and_insecure_redirects_are_named_without_the_query(loopback, tmp_path):
    with pytest.raises(MediaError, match=r"/missing\?…: HTTP 404") as caught:
        fetch(f"{loopback}/missing?X-Amz-Signature=beefcafe1", tmp_path)
    assert "beefcafe1" not in str(caught.value)
    with pytest.raises(MediaError, match=r"redirected to http://example.com/a.png\?…: only https") as caught:
        fetch(f"{loopback}/to-http", tmp_path)
    assert "beefcafe2" not in str(caught.value)
