"""Media that ask for far more memory than their size (issue 20): refused from the header, before
decoding, naming the field and the limit; the refusing process stays small.

The hostile files are made small here too: a 10-hour FLAC of silence written block by block (900 KB),
a WAV at 1 Hz written with the `wave` module, a 12000x12000 PNG written row by row through zlib (a
few KB), an .m4a whose boxes claim 10 hours (or 1 s) for 10 s of AAC.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import warnings
import wave
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
import pytest
import soundfile
import yaml

from mt_assets import config
from mt_assets.jobs import media
from mt_assets.jobs.decode import load_job_media
from mt_assets.jobs.media import AudioLimits, MediaError, MediaLimitError, load_audio, load_image
from mt_assets.jobs.reader import load_job
from mt_assets.jobs.schema import JobError
from mt_assets.waveform import AudioTooLong, read_sound_file
from mt_assets_tests.conftest import run_cli
from mt_assets_tests.jobs.test_media import encode_aac, speech_like

ROOT = Path(__file__).resolve().parents[2]
PEAK_RSS_BOUND = 1.5e9  # bytes: what a refusing process may reach (issue 20)
TEN_HOURS = 36000.0


# ---- hostile files, made cheaply -----------------------------------------------------------------


def silent_flac(path: Path, seconds: float, rate: int = 8000) -> None:
    """A FLAC of `seconds` of silence, written a minute at a time (10 hours at 8 kHz: ~900 KB)."""
    block = np.zeros((rate * 60, 1), dtype=np.int16)
    left = round(seconds * rate)
    with soundfile.SoundFile(path, "w", samplerate=rate, channels=1, format="FLAC", subtype="PCM_16") as f:
        while left > 0:
            f.write(block[: min(left, len(block))])
            left -= len(block)


def wav_at(path: Path, rate: int, frames: int) -> None:
    """16-bit mono PCM WAV of silence at `rate` Hz (the wave module writes any rate, 1 Hz included)."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\0\0" * frames)


def black_png(path: Path, width: int, height: int) -> None:
    """A 1-bit grayscale PNG of width x height, compressed row by row: never held as pixels here."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte 0, then the packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


_MP4_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts"}


def _mp4_boxes(data: bytes, start: int, end: int):
    while start + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, start)
        assert size >= 8, "no 64-bit or to-the-end boxes in what PyAV writes"
        yield kind, start
        if kind in _MP4_CONTAINERS:
            yield from _mp4_boxes(data, start + 8, start + size)
        start += size


def m4a_claiming(path: Path, factor: float, *, sample_table: bool) -> None:
    """Rewrite an .m4a's durations (mvhd, tkhd, mdhd, elst; with `sample_table` also each sample's
    duration in stts) times `factor`: what FFmpeg then reports as the track's length."""
    data = bytearray(path.read_bytes())
    for kind, at in list(_mp4_boxes(bytes(data), 0, len(data))):
        assert kind not in (b"mvhd", b"tkhd", b"mdhd", b"elst") or data[at + 8] == 0, "version 0 boxes"
        if kind in (b"mvhd", b"mdhd", b"tkhd"):
            offset = at + (28 if kind == b"tkhd" else 24)
            (value,) = struct.unpack_from(">I", data, offset)
            struct.pack_into(">I", data, offset, int(value * factor))
        elif kind == b"elst" and sample_table:
            (count,) = struct.unpack_from(">I", data, at + 12)
            for k in range(count):
                (value,) = struct.unpack_from(">I", data, at + 16 + 12 * k)
                struct.pack_into(">I", data, at + 16 + 12 * k, int(value * factor))
        elif kind == b"stts" and sample_table:
            (count,) = struct.unpack_from(">I", data, at + 12)
            for k in range(count):
                (value,) = struct.unpack_from(">I", data, at + 20 + 8 * k)
                struct.pack_into(">I", data, at + 20 + 8 * k, int(value * factor))
    path.write_bytes(bytes(data))


def flac_without_length(path: Path, seconds: float, rate: int = 16000) -> None:
    """A FLAC whose STREAMINFO says 0 samples ('unknown'): only decoding finds out how long it is."""
    soundfile.write(path, speech_like(seconds, rate), rate, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO first
    at = 8 + 10  # rate(20) channels(3) bits(5) total samples(36)
    packed = int.from_bytes(data[at : at + 8], "big") & ~((1 << 36) - 1)
    data[at : at + 8] = packed.to_bytes(8, "big")
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One folder per case, each with a job a1.yaml; the hostile file in it is named as in issue 20."""
    root = tmp_path_factory.mktemp("hostile")
    made: dict[str, Path] = {}

    def case(name: str, *, image: str = "face.png", audio: str = "speech.wav") -> Path:
        folder = root / name
        folder.mkdir()
        PIL.Image.new("RGB", (64, 48), (120, 90, 60)).save(folder / "face.png")
        soundfile.write(folder / "speech.wav", speech_like(1.0), 16000)
        job = {
            "prompt": "a person talking",
            "cond_image": image,
            "cond_audio": {"person1": audio},
            "frames": 13,
        }
        (folder / "a1.yaml").write_text(yaml.safe_dump(job))
        made[name] = folder
        return folder

    silent_flac(case("flac_10h", audio="speech.flac") / "speech.flac", TEN_HOURS)
    wav_at(case("wav_1hz", audio="speech1hz.wav") / "speech1hz.wav", 1, 100_000)  # 200 KB, "27.8 hours"
    black_png(case("png_12000", image="big.png") / "big.png", 12000, 12000)
    m4a = case("m4a_10h", audio="speech.m4a") / "speech.m4a"
    encode_aac(m4a, np.zeros(16000 * 10, np.float32), 16000)
    m4a_claiming(m4a, TEN_HOURS / 10, sample_table=True)
    return made


# ---- the CLI refuses, in one line, and stays small --------------------------------------------------

# A sitecustomize that the CLI's interpreter imports at start-up (PYTHONPATH), so that run_cli's own
# process reports its peak RSS at exit. VmHWM, not ru_maxrss: Linux carries the parent's (pytest's)
# high-water mark into a child across fork and exec.
_PEAK_HOOK = """
import atexit, os

def _report_peak():
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    with open(os.environ["PEAK_RSS_FILE"], "w") as out:
        out.write(str(peak))

if os.environ.get("PEAK_RSS_FILE"):
    atexit.register(_report_peak)
"""


def run_cli_measured(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """run_cli(*args), and the peak RSS in bytes of the CLI's process."""
    hook = tmp_path / "peak_hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(_PEAK_HOOK)
    peak_file = tmp_path / "peak_rss"
    paths = [str(hook), str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    child = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PEAK_RSS_FILE": str(peak_file)}
    done = run_cli(*args, env=child)
    return done, int(peak_file.read_text())


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
@pytest.mark.parametrize(
    ("case", "field", "says"),
    [
        (
            "flac_10h",
            "cond_audio.person1",
            "speech.flac is 36000.0 s long; the limit is 600 s per speaker (MT_AUDIO_MAX_SECONDS)",
        ),
        (
            "wav_1hz",
            "cond_audio.person1",
            "speech1hz.wav is sampled at 1 Hz; the lowest rate taken is 8000 Hz (MT_AUDIO_MIN_SAMPLE_RATE)",
        ),
        (
            "png_12000",
            "cond_image",
            "big.png is 12000x12000 (144.0 megapixels); the limit is 50.0 megapixels (MT_IMAGE_MAX_PIXELS)",
        ),
        (
            "m4a_10h",
            "cond_audio.person1",
            "speech.m4a is 36000.0 s long; the limit is 600 s per speaker (MT_AUDIO_MAX_SECONDS)",
        ),
    ],
)
def test_cli_refuses_amplifying_media_in_one_line_naming_the_field_and_stays_small(
    hostile, tmp_path, case, field, says
) -> None:
    job = hostile[case] / "a1.yaml"
    volume = tmp_path / "volume"
    volume.mkdir()
    done, peak = run_cli_measured(tmp_path, "render", str(job), "--profile", "tiny", "--volume", str(volume))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: render job {job}: "), done.stderr
    assert f"field {field!r}: " in lines[0] and lines[0].endswith(says), lines[0]
    assert "Traceback" not in done.stderr and done.stdout == ""
    print(f"{case}: peak RSS of the refusing CLI {peak / 1e6:.0f} MB")
    assert peak < PEAK_RSS_BOUND, f"{case}: the refusing CLI reached {peak / 1e6:.0f} MB"


def test_the_inbox_refuses_what_the_cli_refuses(hostile, tmp_path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    done = run_cli("jobs", "submit", str(hostile["wav_1hz"] / "a1.yaml"), "--volume", str(volume))
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
    assert "field 'cond_audio.person1': " in done.stderr and "(MT_AUDIO_MIN_SAMPLE_RATE)" in done.stderr
    assert not any((volume / "jobs" / "inbox").glob("a1*"))


# ---- the same, in this process: every path through the decoders --------------------------------------


def test_each_hostile_job_is_refused_by_the_job_reader_naming_the_field(hostile) -> None:
    for case, field in [
        ("flac_10h", "cond_audio.person1"),
        ("wav_1hz", "cond_audio.person1"),
        ("png_12000", "cond_image"),
        ("m4a_10h", "cond_audio.person1"),
    ]:
        with pytest.raises(JobError) as refused:
            load_job(hostile[case] / "a1.yaml")
        assert refused.value.field == field and "MT_" in str(refused.value), case


def test_a_lower_limit_refuses_from_the_header_of_wav_flac_and_m4a(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MT_AUDIO_MAX_SECONDS", "5")
    soundfile.write(tmp_path / "a.wav", speech_like(10.0), 16000)
    soundfile.write(tmp_path / "a.flac", speech_like(10.0, 44100, channels=2), 44100)
    encode_aac(tmp_path / "a.m4a", speech_like(10.0), 16000)
    for name, seconds in [("a.wav", "10.0"), ("a.flac", "10.0"), ("a.m4a", "10.0")]:
        with pytest.raises(
            MediaLimitError, match=rf"{name} is {seconds} s long; the limit is 5 s per speaker"
        ):
            load_audio(str(tmp_path / name))
    monkeypatch.setenv("MT_AUDIO_MAX_SECONDS", "11")
    assert len(load_audio(str(tmp_path / "a.flac"))) == 160000


def test_a_header_that_says_less_than_there_is_stops_the_decode_at_the_limit(tmp_path) -> None:
    short = tmp_path / "short.m4a"  # 10 s of AAC whose boxes say 1 s
    encode_aac(short, speech_like(10.0), 16000)
    m4a_claiming(short, 0.1, sample_table=False)
    unknown = tmp_path / "unknown.flac"  # libsndfile cannot read it; FFmpeg can, not knowing its length
    flac_without_length(unknown, 10.0)
    limits = AudioLimits(max_seconds=5)
    with pytest.raises(MediaLimitError, match=r"more than 5 s of audio decoded \(its header says 1\.0 s\)"):
        load_audio(str(short), limits=limits)
    with pytest.raises(MediaLimitError, match=r"more than 5 s of audio decoded \(its header says nothing"):
        load_audio(str(unknown), limits=limits)
    # Within the limit both decode in full, whatever their headers say.
    assert len(load_audio(str(short))) >= 160000
    assert len(load_audio(str(unknown))) == 160000


def test_libsndfile_reads_stop_past_the_limit_even_if_the_header_is_not_asked(tmp_path) -> None:
    soundfile.write(tmp_path / "a.wav", speech_like(3.0), 16000)
    with pytest.raises(AudioTooLong):
        read_sound_file(tmp_path / "a.wav", max_seconds=1.0)


def test_sample_rate_and_channel_limits(tmp_path, monkeypatch) -> None:
    wav_at(tmp_path / "low.wav", 4000, 8000)
    soundfile.write(tmp_path / "high.wav", np.zeros((384, 1), np.float32), 384000)
    soundfile.write(tmp_path / "many.wav", np.zeros((1600, 12), np.float32), 16000)
    with pytest.raises(
        MediaLimitError, match=r"low.wav is sampled at 4000 Hz; the lowest rate taken is 8000 Hz"
    ):
        load_audio(str(tmp_path / "low.wav"))
    with pytest.raises(
        MediaLimitError, match=r"high.wav is sampled at 384000 Hz; the highest rate taken is 192000 Hz"
    ):
        load_audio(str(tmp_path / "high.wav"))
    with pytest.raises(MediaLimitError, match=r"many.wav has 12 channels; at most 8 are taken"):
        load_audio(str(tmp_path / "many.wav"))
    monkeypatch.setenv("MT_AUDIO_MIN_SAMPLE_RATE", "4000")
    assert len(load_audio(str(tmp_path / "low.wav"))) == 32000


def test_image_limit_from_the_variable_and_pillows_own_bomb_error(tmp_path, monkeypatch) -> None:
    PIL.Image.new("RGB", (40, 30)).save(tmp_path / "small.png")
    monkeypatch.setenv("MT_IMAGE_MAX_PIXELS", "1000")
    with pytest.raises(
        MediaLimitError, match=r"small.png is 40x30 \(0.0 megapixels\); the limit is 0.0 megapixels"
    ):
        load_image(str(tmp_path / "small.png"))
    monkeypatch.setenv("MT_IMAGE_MAX_PIXELS", "1200")
    assert load_image(str(tmp_path / "small.png")).size == (40, 30)
    monkeypatch.delenv("MT_IMAGE_MAX_PIXELS")

    # Past 2 x PIL.Image.MAX_IMAGE_PIXELS, Pillow refuses while reading the header: said as our limit.
    black_png(tmp_path / "huge.png", 20000, 20000)
    with pytest.raises(MediaLimitError, match=r"huge.png has 400.0 megapixels; the limit is 50.0 megapixels"):
        load_image(str(tmp_path / "huge.png"))
    # Between Pillow's warning and its error, only our limit counts: no warning on stderr. Past its
    # error, Pillow's refusal is named as such.
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
        assert load_image(str(tmp_path / "small.png")).size == (40, 30)  # 1200 pixels > 1000
    PIL.Image.new("RGB", (50, 50)).save(tmp_path / "square.png")  # 2500 pixels > 2 x 1000
    with pytest.raises(MediaLimitError, match="Pillow refuses it as a decompression bomb"):
        load_image(str(tmp_path / "square.png"))


def test_a_malformed_limit_is_an_error_naming_the_variable(tmp_path, monkeypatch) -> None:
    soundfile.write(tmp_path / "a.wav", speech_like(1.0), 16000)
    monkeypatch.setenv("MT_AUDIO_MAX_SECONDS", "ten minutes")
    with pytest.raises(MediaError, match=r"MT_AUDIO_MAX_SECONDS: expected seconds > 0, got 'ten minutes'"):
        load_audio(str(tmp_path / "a.wav"))
    monkeypatch.setenv("MT_IMAGE_MAX_PIXELS", "0")
    with pytest.raises(MediaError, match=r"MT_IMAGE_MAX_PIXELS: expected a positive whole number, got '0'"):
        load_image(str(tmp_path / "a.wav"))


def test_the_limits_defaults_and_values() -> None:
    assert config.AUDIO_MAX_SECONDS.read({}) == 600.0 and AudioLimits().max_seconds == 600.0
    assert config.AUDIO_MIN_SAMPLE_RATE.read({}) == 8000 and AudioLimits().min_rate == 8000
    assert config.IMAGE_MAX_PIXELS.read({}) == 50_000_000
    env = {"MT_AUDIO_MAX_SECONDS": "90.5", "MT_AUDIO_MIN_SAMPLE_RATE": "16000"}
    assert AudioLimits.from_env(env) == AudioLimits(max_seconds=90.5, min_rate=16000)


def test_a_memory_error_while_decoding_names_the_field(hostile, monkeypatch) -> None:
    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise MemoryError

    job = load_job(hostile["flac_10h"] / "a1.yaml", check_media=False)
    monkeypatch.setattr(media, "read_sound_file", out_of_memory)
    with pytest.raises(
        JobError, match=r"field 'cond_audio.person1': audio .*: not enough memory to decode it"
    ):
        load_job_media(job)
    monkeypatch.setattr(PIL.ImageOps, "exif_transpose", out_of_memory)
    with pytest.raises(
        JobError, match=r"field 'cond_image': image .*face.png: not enough memory to decode it"
    ):
        load_job_media(job)


# ---- ordinary media still decode --------------------------------------------------------------------


def test_a_normal_job_still_decodes_and_submits(tmp_path) -> None:
    folder = tmp_path / "job"
    folder.mkdir()
    PIL.Image.new("RGB", (64, 48), (120, 90, 60)).save(folder / "face.png")
    soundfile.write(folder / "one.flac", speech_like(1.2, 44100, channels=2), 44100, subtype="PCM_24")
    encode_aac(folder / "two.m4a", speech_like(0.8, 48000, f0=210), 48000)
    job = {
        "prompt": "two people talking",
        "cond_image": "face.png",
        "cond_audio": {"person1": "one.flac", "person2": "two.m4a"},
        "audio_type": "add",
        "frames": 13,
    }
    (folder / "a2.yaml").write_text(yaml.safe_dump(job))
    decoded = load_job_media(load_job(folder / "a2.yaml"))
    assert decoded.image.size == (64, 48) and decoded.image.mode == "RGB"
    assert abs(len(decoded.audio.mix) / 16000 - 2.0) < 0.1
    volume = tmp_path / "volume"
    volume.mkdir()
    done = run_cli("jobs", "submit", str(folder / "a2.yaml"), "--volume", str(volume))
    assert done.returncode == 0, done.stderr


def test_block_by_block_mixing_gives_the_samples_of_a_whole_file_read(tmp_path, monkeypatch) -> None:
    data = np.random.default_rng(0).standard_normal((100_000, 3)).astype(np.float32) * 0.2
    soundfile.write(tmp_path / "three.wav", data, 48000, subtype="FLOAT")
    monkeypatch.setattr(sys.modules["mt_assets.waveform"], "READ_BLOCK_SAMPLES", 3 * 4096)  # 25 blocks
    mono, rate = read_sound_file(tmp_path / "three.wav")
    whole, _ = soundfile.read(tmp_path / "three.wav", dtype="float32", always_2d=True)
    assert rate == 48000 and np.array_equal(mono, whole.mean(axis=1, dtype=np.float32))
