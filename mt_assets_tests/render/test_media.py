"""Media references (relative, absolute, volume:, s3://), their confinement, and image/audio decoding."""

from __future__ import annotations

import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import PIL.Image
import pytest
import soundfile

from mt_assets.render.media import MediaError, load_audio, load_image, resolve_media
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
