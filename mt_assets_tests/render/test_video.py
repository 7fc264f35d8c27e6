"""The render output: the mp4 as PyAV decodes it, poster, job.json, and the atomic folder protocol."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from mt_assets.jobs.outputs import OutputExists
from mt_assets.render import video as video_mod
from mt_assets.render.video import (
    FPS,
    STALE_SECONDS,
    RenderOutput,
    cleanup_stale,
    frames_to_uint8,
    write_mp4,
    write_render_output,
)

REPO = Path(__file__).parents[2]
AAC_FRAME_SECONDS = 1024 / 16000


def _frames(t: int = 10, h: int = 48, w: int = 64) -> np.ndarray:
    """A smooth colour gradient drifting to the right: easy for H.264, so decoded frames stay close."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for i in range(t):
        r = 128 + 100 * np.sin((xx + 2 * i) / 9)
        g = 128 + 100 * np.cos(yy / 7)
        b = 128 + 60 * np.sin((xx + yy + i) / 11)
        out.append(np.stack([r, g, b], axis=-1))
    return np.clip(np.stack(out), 0, 255).astype(np.uint8)


def _audio(seconds: float) -> np.ndarray:
    n = int(seconds * 16000)
    return (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / 16000)).astype(np.float32)


def _decode(path: Path) -> tuple[list[np.ndarray], dict, dict]:
    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        vinfo = {
            "codec": v.codec_context.name,
            "pix_fmt": v.codec_context.format.name,
            "rate": v.average_rate,
            "width": v.codec_context.width,
            "height": v.codec_context.height,
        }
        ainfo = {
            "codec": a.codec_context.name,
            "sample_rate": a.codec_context.sample_rate,
            "channels": a.codec_context.channels,
            "seconds": float(a.duration * a.time_base),
        }
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return frames, vinfo, ainfo


# --- frames_to_uint8 ---------------------------------------------------------------------------


def test_frames_to_uint8_truncates_like_the_reference():
    # ((x+1)/2)*255 for these x: 0, 255, 127.5, 254.99..., 0.9..., and out of range on both sides
    x = torch.tensor([-1.0, 1.0, 0.0, 0.99999, -0.9929, -1.5, 1.5], dtype=torch.float32)
    video = x.view(1, 7, 1, 1).expand(3, 7, 1, 1)
    out = frames_to_uint8(video)
    assert out.shape == (7, 1, 1, 3) and out.dtype == np.uint8
    assert out[:, 0, 0, 0].tolist() == [0, 255, 127, 254, 0, 0, 255]
    expected = np.clip(((x.numpy() + 1) / 2) * 255, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out[:, 0, 0, 1], expected)


def test_frames_to_uint8_moves_channels_last():
    video = torch.linspace(-1, 1, 3 * 2 * 4 * 6).view(3, 2, 4, 6)
    out = frames_to_uint8(video)
    assert out.shape == (2, 4, 6, 3)
    np.testing.assert_array_equal(out[1, 2, 3], frames_to_uint8(video[:, 1:2, 2:3, 3:4])[0, 0, 0])
    with pytest.raises(ValueError, match=r"\[3,T,H,W\], got \[1, 3, 2, 4, 6\]"):
        frames_to_uint8(video[None])


# --- write_mp4 ---------------------------------------------------------------------------------


def test_mp4_is_h264_yuv420p_at_25_fps_with_every_frame(tmp_path):
    frames = _frames(t=13)
    write_mp4(tmp_path / "v.mp4", frames, _audio(2.0))
    decoded, vinfo, _ = _decode(tmp_path / "v.mp4")
    assert vinfo == {"codec": "h264", "pix_fmt": "yuv420p", "rate": 25, "width": 64, "height": 48}
    assert len(decoded) == 13
    # Lossy (and 4:2:0 halves the chroma of a saturated gradient), but within a few levels on average;
    # swapped channels (BGR) would be far off.
    decoded = np.stack(decoded).astype(int)
    assert np.abs(decoded - frames.astype(int)).mean() < 6
    assert np.abs(decoded - frames[..., ::-1].astype(int)).mean() > 20


def test_mp4_audio_is_aac_cut_to_the_video_length(tmp_path):
    t = 13
    write_mp4(tmp_path / "v.mp4", _frames(t=t), _audio(3.0))  # 3 s of audio for 0.52 s of video
    _, _, ainfo = _decode(tmp_path / "v.mp4")
    assert ainfo["codec"] == "aac" and ainfo["sample_rate"] == 16000 and ainfo["channels"] == 1
    assert abs(ainfo["seconds"] - t / FPS) <= AAC_FRAME_SECONDS


def test_short_audio_is_padded_with_silence_to_the_video_length(tmp_path):
    t = 25
    write_mp4(tmp_path / "v.mp4", _frames(t=t), _audio(0.2))
    _, _, ainfo = _decode(tmp_path / "v.mp4")
    assert abs(ainfo["seconds"] - t / FPS) <= AAC_FRAME_SECONDS


def test_even_sizes_that_are_not_multiples_of_16_encode(tmp_path):
    write_mp4(tmp_path / "v.mp4", _frames(t=3, h=34, w=50), _audio(1.0))
    decoded, vinfo, _ = _decode(tmp_path / "v.mp4")
    assert (vinfo["width"], vinfo["height"], len(decoded)) == (50, 34, 3)


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (np.zeros((3, 33, 50, 3), np.uint8), "even H, W for yuv420p, got T=3, H=33, W=50"),
        (np.zeros((0, 32, 48, 3), np.uint8), "T >= 1"),
        (np.zeros((3, 32, 48, 3), np.float32), r"uint8 array \[T,H,W,3\], got float32"),
        (np.zeros((3, 32, 48), np.uint8), r"got uint8 \[3, 32, 48\]"),
    ],
)
def test_frames_that_cannot_be_encoded_are_rejected(tmp_path, frames, message):
    with pytest.raises(ValueError, match=message):
        write_mp4(tmp_path / "v.mp4", frames, _audio(1.0))


def test_audio_must_be_mono_float(tmp_path):
    with pytest.raises(ValueError, match=r"mono float samples \[N\], got float32 \[2, 16000\]"):
        write_mp4(tmp_path / "v.mp4", _frames(t=2), np.zeros((2, 16000), np.float32))
    with pytest.raises(ValueError, match="got int16"):
        write_mp4(tmp_path / "v.mp4", _frames(t=2), np.zeros(16000, np.int16))


def test_identical_input_gives_a_byte_identical_mp4(tmp_path):
    # 832 wide is where x264's AVX-512 code made runs differ before it was capped at AVX2.
    frames, audio = _frames(t=12, h=48, w=832), _audio(1.0)
    digests = set()
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        write_mp4(tmp_path / name, frames.copy(), audio.copy())
        digests.add(hashlib.sha256((tmp_path / name).read_bytes()).hexdigest())
    assert len(digests) == 1


# --- write_render_output -----------------------------------------------------------------------


def _hidden(out_dir: Path) -> list[str]:
    return sorted(p.name for p in out_dir.iterdir() if p.name.startswith("."))


def test_render_output_folder_holds_video_poster_and_job_json(tmp_path):
    frames = _frames(t=10)
    out = write_render_output(tmp_path, "job-1", frames, _audio(1.0), {"prompt": "a man talks", "seed": 42})
    assert isinstance(out, RenderOutput)
    assert out.folder == tmp_path / "job-1"
    assert sorted(p.name for p in out.folder.iterdir()) == ["job.json", "poster.png", "video.mp4"]
    assert (out.video, out.poster, out.job_json) == (
        out.folder / "video.mp4",
        out.folder / "poster.png",
        out.folder / "job.json",
    )
    np.testing.assert_array_equal(np.asarray(Image.open(out.poster).convert("RGB")), frames[0])
    assert json.loads(out.job_json.read_text(encoding="utf-8")) == {
        "prompt": "a man talks",
        "seed": 42,
        "video": {
            "sha256": out.sha256,
            "frames": 10,
            "fps": 25,
            "width": 64,
            "height": 48,
            "audio_seconds": 0.4,
        },
    }
    assert out.sha256 == hashlib.sha256(out.video.read_bytes()).hexdigest()
    assert len(_decode(out.video)[0]) == 10
    assert _hidden(tmp_path) == []


def test_existing_output_is_kept_and_raises_output_exists(tmp_path):
    first = write_render_output(tmp_path, "job", _frames(t=4), _audio(1.0), {"n": 1})
    before = first.video.read_bytes()
    with pytest.raises(OutputExists, match=r"job: already exists \(pass replace=True"):
        write_render_output(tmp_path, "job", _frames(t=6), _audio(1.0), {"n": 2})
    assert first.video.read_bytes() == before
    assert json.loads(first.job_json.read_text())["n"] == 1
    assert _hidden(tmp_path) == []
    assert issubclass(OutputExists, FileExistsError)


def test_replace_swaps_in_the_new_render_and_removes_the_old(tmp_path):
    write_render_output(tmp_path, "job", _frames(t=4), _audio(1.0), {"n": 1})
    new = write_render_output(tmp_path, "job", _frames(t=6), _audio(1.0), {"n": 2}, replace=True)
    assert json.loads(new.job_json.read_text())["video"]["frames"] == 6
    assert json.loads(new.job_json.read_text())["n"] == 2
    assert len(_decode(new.video)[0]) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job"]


@pytest.mark.parametrize("job_id", ["", "a" * 65, "../escape", "a.b", "a b", "job/1", "ñ", ".hidden"])
def test_job_id_outside_the_allowed_alphabet_is_rejected(tmp_path, job_id):
    with pytest.raises(ValueError, match=r"must be 1 to 64 characters of A-Z"):
        write_render_output(tmp_path, job_id, _frames(t=2), _audio(1.0), {})
    assert list(tmp_path.iterdir()) == []


def test_longest_allowed_job_id_is_accepted(tmp_path):
    job_id = "A-z_9" * 12 + "abcd"
    assert len(job_id) == 64
    assert write_render_output(tmp_path, job_id, _frames(t=2), _audio(1.0), {}).folder.name == job_id


def test_metadata_may_not_override_the_video_facts(tmp_path):
    with pytest.raises(ValueError, match="'video' is reserved"):
        write_render_output(tmp_path, "job", _frames(t=2), _audio(1.0), {"video": "x"})
    with pytest.raises(TypeError):
        write_render_output(tmp_path, "job", _frames(t=2), _audio(1.0), {"when": object()})
    assert list(tmp_path.iterdir()) == []


def test_writer_that_fails_midway_leaves_nothing_behind(tmp_path, monkeypatch):
    def fail_after_partial_mp4(path, *args, **kwargs):
        Path(path).write_bytes(b"\x00" * 1000)
        raise RuntimeError("encoder died")

    monkeypatch.setattr(video_mod, "write_mp4", fail_after_partial_mp4)
    with pytest.raises(RuntimeError, match="encoder died"):
        write_render_output(tmp_path, "job", _frames(t=2), _audio(1.0), {})
    assert list(tmp_path.iterdir()) == []


_KILLED_WRITER = """
import sys, time
from pathlib import Path
import numpy as np
from mt_assets.render import video

real = video.write_mp4
def write_then_hang(path, *args, **kwargs):
    real(path, *args, **kwargs)
    print("mp4 written", flush=True)
    time.sleep(120)

video.write_mp4 = write_then_hang
frames = np.full((5, 32, 48, 3), 128, np.uint8)
video.write_render_output(Path(sys.argv[1]), "job", frames, np.zeros(16000, np.float32), {}, replace=True)
"""


def _start_writer_and_kill_it_mid_write(out_dir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(out_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:
        line = proc.stdout.readline()  # the child prints once its mp4 is complete in staging
        assert line == "mp4 written\n", proc.stderr.read() if proc.poll() is not None else line
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_sigkilled_writer_leaves_no_video_and_the_next_writer_cleans_up(tmp_path):
    _start_writer_and_kill_it_mid_write(tmp_path)

    assert not (tmp_path / "job").exists()
    (staging,) = [p for p in tmp_path.iterdir() if p.name.startswith(".mt-staging.job.")]
    assert (staging / "video.mp4").stat().st_size > 0  # killed after the mp4, before the rename

    out = write_render_output(tmp_path, "job", _frames(t=3), _audio(1.0), {})
    assert len(_decode(out.video)[0]) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job"]


def test_sigkilled_replacing_writer_leaves_the_old_render_in_place(tmp_path):
    old = write_render_output(tmp_path, "job", _frames(t=4), _audio(1.0), {"n": 1})
    before = old.video.read_bytes()
    _start_writer_and_kill_it_mid_write(tmp_path)
    assert old.video.read_bytes() == before
    assert cleanup_stale(tmp_path) != []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_old_render_moved_aside_by_a_dead_writer_is_restored(tmp_path):
    old = write_render_output(tmp_path, "job", _frames(t=4), _audio(1.0), {"n": 1})
    # What a replacing writer killed between its two renames leaves: no job/, the old render aside.
    me = video_mod._writer_id().rpartition("-")[0]
    aside = tmp_path / f".mt-old.job.{me}-{_dead_pid()}.abcd1234"
    os.rename(old.folder, aside)

    write_render_output(tmp_path, "other", _frames(t=2), _audio(1.0), {})
    assert json.loads((tmp_path / "job" / "job.json").read_text())["n"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job", "other"]


def test_live_writers_folders_are_left_alone_and_old_ones_from_any_host_removed(tmp_path):
    mine = tmp_path / f".mt-staging.job.{video_mod._writer_id()}.00000000"  # this process: alive
    elsewhere = tmp_path / ".mt-staging.job.otherhost-1-123.11111111"
    for folder in (mine, elsewhere):
        folder.mkdir()
        (folder / "video.mp4").write_bytes(b"partial")
    unrelated = tmp_path / ".something-else"
    unrelated.mkdir()

    assert cleanup_stale(tmp_path) == []  # young, and not provably dead
    later = time.time() + STALE_SECONDS + 60
    assert sorted(p.name for p in cleanup_stale(tmp_path, now=later)) == sorted([mine.name, elsewhere.name])
    assert _hidden(tmp_path) == [".something-else"]
