"""The output of a render: frames + audio -> H.264/AAC mp4, a poster and job.json, written atomically.

A finished render is one folder:

    <out_dir>/<job_id>/
        video.mp4     H.264 (libx264, yuv420p, CRF 18) at 25 fps + AAC mono, the audio cut to T/25 s
        poster.png    frame 0, RGB, lossless
        job.json      the caller's metadata plus
                      "video": {"sha256", "frames", "fps", "width", "height", "audio_seconds"}
                      (sha256 of video.mp4; audio_seconds = the muxed audio's length before AAC framing)

`job_id` matches [A-Za-z0-9_-]{1,64}. The folder appears all at once or not at all: everything is
built in a hidden staging folder inside <out_dir>, each file fsync'd, then the folder is renamed to
<job_id>. So a reader that sees <job_id>/ sees a complete render, and a writer that fails or is
killed never leaves a video.mp4 at the final path. An existing <job_id>/ raises `OutputExists`
unless `replace=True`; then the old folder is renamed aside, the new one renamed in, the old removed
(for an instant between the two renames <job_id>/ is absent).

Hidden folders in <out_dir>, one per writer, named so the next writer can tell whose they are:

    .mt-staging.<job_id>.<writer>.<token>    a render being built
    .mt-old.<job_id>.<writer>.<token>        an old render moved aside by replace=True
    <writer> = <hostname>-<pid namespace inode>-<pid>

Every writer first removes the folders of writers that are gone: on this machine (same hostname and
pid namespace) whose pid is no longer running, or on any machine, untouched for `STALE_SECONDS`
(one hour; a live writer touches its folder while encoding). A `.mt-old` folder whose <job_id>/ is
missing (its writer died between the two renames) is renamed back instead of removed.

Determinism: identical frames and audio give a byte-identical mp4 on the same machine type, with
this package's settings. That needs two of them: a fixed x264 thread count (`X264_THREADS`; x264's
output depends on it, and "auto" follows the core count), and on CPUs with AVX-512 x264 limited to
its AVX2 code, because x264's AVX-512 code changes the output from run to run at widths that are not
a multiple of 128 (e.g. 832; measured with PyAV 18.1 / libavcodec 62). Different CPUs or
x264/FFmpeg builds may encode differently; the decoded frames then differ at the compression-noise
level.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from mt_assets.jobs.outputs import OutputExists
from mt_assets.jobs.schema import JOB_ID, JOB_ID_RULE
from mt_assets.volume.lock import pid_alive

FPS = 25
SAMPLE_RATE = 16000
CRF = 18
X264_THREADS = 4
AAC_BIT_RATE = 64000
STALE_SECONDS = 3600.0
VIDEO_NAME = "video.mp4"
POSTER_NAME = "poster.png"
JOB_JSON_NAME = "job.json"

_STAGING, _OLD = ".mt-staging", ".mt-old"


@dataclass(frozen=True)
class RenderOutput:
    folder: Path  # <out_dir>/<job_id>
    video: Path  # folder / video.mp4
    poster: Path  # folder / poster.png
    job_json: Path  # folder / job.json
    sha256: str  # of video.mp4


def frames_to_uint8(video: torch.Tensor) -> np.ndarray:
    """[3,T,H,W] float in [-1,1] -> [T,H,W,3] uint8, as the reference's `save_video_ffmpeg`.

    `np.clip(((x + 1)/2)*255, 0, 255).astype(np.uint8)`: truncation, not rounding, computed in the
    tensor's float dtype.
    """
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"frames_to_uint8: video must be [3,T,H,W], got {list(video.shape)}")
    x = video.detach().cpu().permute(1, 2, 3, 0).numpy()
    return np.clip(((x + 1) / 2) * 255, 0, 255).astype(np.uint8)


def write_mp4(
    path: Path, frames: np.ndarray, audio: np.ndarray, *, sample_rate: int = SAMPLE_RATE, fps: int = FPS
) -> None:
    """Encode [T,H,W,3] uint8 frames and mono float `audio` to an H.264/AAC mp4 at `path` (not atomic).

    The audio is cut to T/fps seconds (round(T·sample_rate/fps) samples, 640·T at 16 kHz and 25 fps)
    and padded with silence if shorter. H and W must be even (yuv420p halves the chroma).
    """
    path = Path(path)
    t, height, width = _check_frames(frames)
    samples = _audio_for(audio, t, sample_rate, fps)

    with av.open(str(path), mode="w", format="mp4") as container:
        vstream = container.add_stream(
            "libx264", rate=fps, options={"crf": str(CRF), "x264-params": _x264_params()}
        )
        vstream.width, vstream.height, vstream.pix_fmt = width, height, "yuv420p"
        vstream.codec_context.thread_count = X264_THREADS
        astream = container.add_stream("aac", rate=sample_rate, layout="mono")
        astream.codec_context.bit_rate = AAC_BIT_RATE

        for i in range(t):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            container.mux(vstream.encode(frame))
        container.mux(vstream.encode(None))

        aframe = av.AudioFrame.from_ndarray(samples[None, :], format="fltp", layout="mono")
        aframe.sample_rate, aframe.pts, aframe.time_base = sample_rate, 0, Fraction(1, sample_rate)
        container.mux(astream.encode(aframe))
        container.mux(astream.encode(None))


def write_render_output(
    out_dir: Path,
    job_id: str,
    frames: np.ndarray,
    audio: np.ndarray,
    metadata: dict,
    *,
    replace: bool = False,
) -> RenderOutput:
    """Write <out_dir>/<job_id>/{video.mp4, poster.png, job.json} atomically; see the module docstring."""
    out_dir = Path(out_dir)
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
        raise ValueError(f"render output: job_id {job_id!r} must be {JOB_ID_RULE}")
    if "video" in metadata:
        raise ValueError(f"render output {job_id}: metadata key 'video' is reserved for the mp4's facts")
    json.dumps(metadata)  # not JSON-serialisable -> TypeError now, before minutes of encoding
    t, height, width = _check_frames(frames)
    _audio_for(audio, t, SAMPLE_RATE, FPS)

    out_dir.mkdir(parents=True, exist_ok=True)
    cleanup_stale(out_dir)
    final = out_dir / job_id
    if final.exists() and not replace:
        raise OutputExists(f"render output {final}: already exists (pass replace=True to overwrite)")

    staging = out_dir / f"{_STAGING}.{job_id}.{_writer_id()}.{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        video_path = staging / VIDEO_NAME
        write_mp4(video_path, frames, audio)
        _fsync_file(video_path)
        sha256 = _sha256(video_path)

        Image.fromarray(np.ascontiguousarray(frames[0]), mode="RGB").save(staging / POSTER_NAME, format="PNG")
        _fsync_file(staging / POSTER_NAME)

        facts = {
            "sha256": sha256,
            "frames": t,
            "fps": FPS,
            "width": width,
            "height": height,
            "audio_seconds": _audio_samples(t, SAMPLE_RATE, FPS) / SAMPLE_RATE,
        }
        text = json.dumps({**metadata, "video": facts}, indent=2, ensure_ascii=False) + "\n"
        (staging / JOB_JSON_NAME).write_text(text, encoding="utf-8")
        _fsync_file(staging / JOB_JSON_NAME)
        _fsync_dir(staging)

        _move_into_place(staging, final, replace=replace)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return RenderOutput(
        folder=final,
        video=final / VIDEO_NAME,
        poster=final / POSTER_NAME,
        job_json=final / JOB_JSON_NAME,
        sha256=sha256,
    )


def cleanup_stale(out_dir: Path, *, now: float | None = None) -> list[Path]:
    """Remove (or, for a `.mt-old` whose job folder is missing, restore) the hidden folders of gone writers.

    Returns the folders removed or restored. Safe to run while other writers are active: a folder
    is only touched if its writer is provably dead (this machine) or it is older than STALE_SECONDS.
    """
    out_dir = Path(out_dir)
    now = time.time() if now is None else now
    handled: list[Path] = []
    try:
        entries = list(out_dir.iterdir())
    except FileNotFoundError:
        return handled
    for entry in entries:
        parts = entry.name.split(".")
        # ['', 'mt-staging' | 'mt-old', job_id, writer, token]
        if len(parts) != 5 or "." + parts[1] not in (_STAGING, _OLD) or not entry.is_dir():
            continue
        if not _writer_is_gone(parts[3], entry, now):
            continue
        final = out_dir / parts[2]
        if "." + parts[1] == _OLD and not final.exists():
            with contextlib.suppress(OSError):  # another writer restored it first
                os.rename(entry, final)
                handled.append(entry)
            continue
        shutil.rmtree(entry, ignore_errors=True)
        handled.append(entry)
    return handled


def _move_into_place(staging: Path, final: Path, *, replace: bool) -> None:
    out_dir = final.parent
    if replace and final.exists():
        aside = out_dir / f"{_OLD}.{final.name}.{_writer_id()}.{secrets.token_hex(4)}"
        os.rename(final, aside)
        try:
            os.rename(staging, final)
        except BaseException:
            os.rename(aside, final)
            raise
        _fsync_dir(out_dir)
        shutil.rmtree(aside, ignore_errors=True)
        return
    try:
        # rename(2) fails on a non-empty target: a writer that got there first wins.
        os.rename(staging, final)
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise OutputExists(f"render output {final}: appeared while writing (another writer?)") from e
        raise
    _fsync_dir(out_dir)


def _check_frames(frames: np.ndarray) -> tuple[int, int, int]:
    if (
        not isinstance(frames, np.ndarray)
        or frames.dtype != np.uint8
        or frames.ndim != 4
        or frames.shape[3] != 3
    ):
        got = (
            f"{frames.dtype} {list(frames.shape)}"
            if isinstance(frames, np.ndarray)
            else type(frames).__name__
        )
        raise ValueError(f"video frames: expected a uint8 array [T,H,W,3], got {got}")
    t, height, width = frames.shape[:3]
    if t < 1 or height < 2 or width < 2 or height % 2 or width % 2:
        raise ValueError(
            f"video frames: need T >= 1 and even H, W for yuv420p, got T={t}, H={height}, W={width}"
        )
    return t, height, width


def _audio_samples(t: int, sample_rate: int, fps: int) -> int:
    return round(t * sample_rate / fps)


def _audio_for(audio: np.ndarray, t: int, sample_rate: int, fps: int) -> np.ndarray:
    """The mono track cut (or padded with silence) to exactly the video's length, as float32."""
    audio = np.asarray(audio)
    if audio.ndim != 1 or not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"audio: expected mono float samples [N], got {audio.dtype} {list(audio.shape)}")
    n = _audio_samples(t, sample_rate, fps)
    out = np.zeros(n, dtype=np.float32)
    m = min(n, audio.shape[0])
    out[:m] = audio[:m]
    return out


def _x264_params() -> str:
    # See the module docstring: x264's AVX-512 code is not deterministic here. Every AVX-512 CPU
    # also has everything x264's "AVX2" level needs, so capping it is safe; other CPUs keep auto.
    params = f"threads={X264_THREADS}"
    return params + ":asm=AVX2" if _cpu_has_avx512() else params


def _cpu_has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return "avx512f" in line.split()
    except OSError:
        pass
    return False


def _writer_id() -> str:
    host = re.sub(r"[^A-Za-z0-9]", "-", socket.gethostname())[:48] or "host"
    return f"{host}-{_pid_namespace()}-{os.getpid()}"


def _pid_namespace() -> int:
    # Containers on one host can share a hostname; the pid namespace tells whose pid it is.
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _writer_is_gone(writer: str, folder: Path, now: float) -> bool:
    host, _, pid = writer.rpartition("-")
    if host == _writer_id().rpartition("-")[0] and pid.isdigit() and not pid_alive(int(pid)):
        return True
    return now - _last_touched(folder) > STALE_SECONDS


def _last_touched(folder: Path) -> float:
    try:
        times = [folder.stat().st_mtime]
        times += [p.stat().st_mtime for p in folder.iterdir()]
    except FileNotFoundError:
        return time.time()  # vanished meanwhile: someone else is handling it
    return max(times)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


PREVIEW_SIDE = 256  # pixels of the poster preview's longer side


def poster_preview_markdown(poster: Path, *, max_side: int = PREVIEW_SIDE) -> str | None:
    """A Markdown image of the poster, scaled to `max_side`, inline as a data: URI (a JPEG of a few KB);
    None when the poster cannot be read as an image (a preview is never worth failing a render over).

    For places that show Markdown but cannot reach the volume (the Dagster UI in a browser).
    """
    import base64
    import io

    try:
        with Image.open(poster) as image:
            preview = image.convert("RGB")
    except OSError:  # missing, unreadable, not an image (PIL's UnidentifiedImageError is an OSError)
        return None
    preview.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    preview.save(buffer, format="JPEG", quality=85)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"![poster {preview.width}x{preview.height}](data:image/jpeg;base64,{data})"
