"""What a RunPod worker (`python -m mt_assets.worker`) is sent for one render job, and what it returns.

The job input (the `input` of /run) is the queued job, every effective setting in the job format
(`RenderJob.to_json()`), with its media as references the worker can read on its own machine, and
where the video should go:

    {"id": "a1", "prompt": ..., "cond_image": "volume:jobs/media/a1/face.png",
     "cond_audio": {"person1": "volume:jobs/media/a1/speech.wav"}, ...every other setting...,
     "return_video": "volume",              # or "s3"
     "output_s3": "s3://bucket/prefix"}     # only with "s3": MT_OUTPUT_S3

A medium on the volume travels as `volume:<path under the volume root>`, which the worker resolves on
its mount of the same volume (/runpod-volume); an s3:// medium stays as it is. A local path anywhere
else cannot be read by the worker and is refused here (the queue never accepts one: jobs/media/<id>/
holds the copies). With "volume" the worker writes <volume>/outputs/<id>/; with "s3" it uploads the
video under output_s3.

The worker's output (the `output` of a COMPLETED /status) is RenderResult.to_json() as the worker wrote
it, plus what it did with the video:

    {"id": "a1", "video": "/runpod-volume/outputs/a1/video.mp4", "poster": ".../poster.png",
     "job_json": ".../job.json", "sha256": "<64 hex, of the mp4>", "frames": 81, "duration": 3.24,
     "width": 448, "height": 896, "clips": 1, "seconds_per_step": 7.1, "seconds": 310.2, "stages": {...},
     "reused": false, "return_video": "s3", "handler_seconds": 315.0,
     "s3": {"video": "s3://bucket/prefix/a1/video.mp4", "poster": ..., "job_json": ...}}   # with "s3"

A file may also be given as {"path": ...} or {"s3": "s3://..."}. A path is `volume:<path>` or relative
(under the volume root), or absolute: then it is the worker's mount (/runpod-volume), and a path ending
in outputs/<id>/<name> is found on this machine's mount of the same volume when it is there. With "s3"
the video is recorded by its URI. The sha256 is the render's data version; when the video is on this
machine's mount, `check_video` re-hashes it so the record binds to the bytes.

While the job runs, the worker's progress updates (`output` of IN_PROGRESS) are JSON objects,
{"stage": "sampling", "step": 3, "steps": 40, "clip": 1, "clips": 1}; `progress_text` words them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from mt_assets.jobs.media import S3_PREFIX, VOLUME_PREFIX, shown_ref
from mt_assets.jobs.outputs import OUTPUTS_DIR

RETURN_VOLUME, RETURN_S3 = "volume", "s3"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_READ_BLOCK = 1024 * 1024


class WorkerIOError(ValueError):
    """A job the worker could not be sent, or an output that breaks the contract; names the job and field."""


def worker_input(
    job: Mapping[str, Any], volume_root: Path, *, output_s3: str | None = None
) -> dict[str, Any]:
    """The /run input for a job document (`RenderJob.to_json()`): media made portable, the video's destination."""
    root = Path(volume_root).resolve()
    job_id = job.get("id")

    def portable(field: str, ref: str | None) -> str | None:
        if ref is None or ref.startswith((S3_PREFIX, VOLUME_PREFIX)):
            return ref
        path = Path(ref)
        if path.is_absolute() and path.resolve().is_relative_to(root):
            return VOLUME_PREFIX + path.resolve().relative_to(root).as_posix()
        raise WorkerIOError(
            f"render job {job_id}: field {field!r}: {ref} is neither on the volume {root} nor in S3, so a "
            "RunPod worker cannot read it; queue the job through jobs/inbox/ (its media are copied onto the volume)"
        )

    if output_s3 is not None and not output_s3.startswith(S3_PREFIX):
        raise WorkerIOError(f"MT_OUTPUT_S3: expected s3://bucket/prefix, got {shown_ref(output_s3)!r}")
    doc = dict(job)
    doc["cond_image"] = portable("cond_image", doc.get("cond_image"))
    doc["cond_audio"] = {
        name: portable(f"cond_audio.{name}", ref) for name, ref in dict(doc.get("cond_audio") or {}).items()
    }
    doc["return_video"] = RETURN_S3 if output_s3 else RETURN_VOLUME
    if output_s3:
        doc["output_s3"] = output_s3
    return doc


@dataclass(frozen=True)
class WorkerOutput:
    """A COMPLETED job's output, checked: where the video is, its sha256, and the rest as given."""

    job_id: str
    sha256: str
    video_s3: str | None  # s3://... when the worker uploaded it
    video_path: Path | None  # where the worker wrote it: on this machine's mount when `on_volume`
    on_volume: bool  # video_path is on this machine's mount of the volume
    files: dict[str, str | Path]  # the other files it names (poster, job_json): an s3:// URI or a path
    # Everything else the worker returned (frames, width, height, seconds, stages, reused, ...).
    fields: dict[str, Any]

    @property
    def video(self) -> str:
        return self.video_s3 if self.video_s3 is not None else str(self.video_path)


OTHER_FILES = ("poster", "job_json")
_FILE_KEYS = ("id", "sha256", "video", "s3", "video_base64", *OTHER_FILES)


def parse_worker_output(output: Any, volume_root: Path, *, job_id: str) -> WorkerOutput:
    """Check a worker's output against the contract above; WorkerIOError naming the field otherwise."""
    where = f"render {job_id}: the worker's output"
    if not isinstance(output, Mapping):
        raise WorkerIOError(
            f"{where}: expected a JSON object, got {type(output).__name__}: {str(output)[:200]}"
        )
    returned_id = output.get("id")
    if returned_id is not None and returned_id != job_id:
        raise WorkerIOError(f"{where}: field 'id' is {returned_id!r}, expected {job_id!r}")
    sha256 = output.get("sha256")
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise WorkerIOError(f"{where}: field 'sha256' must be 64 lowercase hex characters, got {sha256!r}")
    uploaded = output.get("s3") or {}
    if not isinstance(uploaded, Mapping):
        raise WorkerIOError(f"{where}: field 's3' must map file names to s3:// URIs, got {uploaded!r}")

    root = Path(volume_root)
    video_s3: str | None = None
    video_path: Path | None = None
    on_volume = False
    if "video" in uploaded:
        video_s3 = _s3_uri(uploaded["video"], where, "s3.video")
    if "video" in output:
        found, on_volume = _location(output["video"], root, job_id, where, "video")
        if isinstance(found, Path):
            video_path = found
        elif video_s3 is None:
            video_s3 = found
    if video_s3 is None and video_path is None:
        raise WorkerIOError(f"{where}: no field 'video' (a path on the volume) nor 's3.video'")

    files: dict[str, str | Path] = {}
    for name in OTHER_FILES:
        if name in uploaded:  # the copy in S3 is the deliverable when the worker was asked to upload
            files[name] = _s3_uri(uploaded[name], where, f"s3.{name}")
        elif name in output:
            files[name] = _location(output[name], root, job_id, where, name)[0]
    fields = {k: v for k, v in output.items() if k not in _FILE_KEYS}
    return WorkerOutput(job_id, sha256, video_s3, video_path, on_volume, files, fields)


def progress_text(update: Any) -> str:
    """A worker's progress update as a log line: "sampling step 3/40", "..., clip 2/3"; else as given."""
    if isinstance(update, Mapping) and {"step", "steps"} <= update.keys():
        text = f"{update.get('stage', 'step')} step {update['step']}/{update['steps']}"
        clips = update.get("clips")
        if isinstance(clips, int) and clips > 1:
            text += f", clip {update.get('clip')}/{clips}"
        return text
    return update if isinstance(update, str) else json.dumps(update, default=str)


def _s3_uri(value: Any, where: str, field: str) -> str:
    if not isinstance(value, str) or not value.startswith(S3_PREFIX):
        raise WorkerIOError(f"{where}: field '{field}' must be an s3:// URI, got {value!r}")
    return value


def _location(value: Any, root: Path, job_id: str, where: str, field: str) -> tuple[str | Path, bool]:
    """An s3:// URI as it is; a path, and whether it is on this machine's mount of the volume."""
    if isinstance(value, Mapping) and len(value) == 1 and next(iter(value)) in ("s3", "path"):
        if "s3" in value:
            return _s3_uri(value["s3"], where, f"{field}.s3"), False
        value = value["path"]
    if not isinstance(value, str) or not value:
        raise WorkerIOError(
            f"{where}: field {field!r} must be a path, an s3:// URI, {{'path': ...}} or {{'s3': ...}}, got {value!r}"
        )
    if value.startswith(S3_PREFIX):
        return value, False
    root = root.resolve()
    relative = value.removeprefix(VOLUME_PREFIX)
    if relative != value or not PurePosixPath(relative).is_absolute():
        path = (root / relative).resolve()
        if not path.is_relative_to(root):
            raise WorkerIOError(f"{where}: field {field!r}: {value!r} leads out of the volume")
        return path, True
    path = Path(value)
    if path.is_relative_to(root):
        return path, True
    # The worker's mount (/runpod-volume): its outputs/<id>/ is ours too when we share the volume.
    parts = PurePosixPath(value).parts
    if len(parts) >= 3 and parts[-3:-1] == (OUTPUTS_DIR, job_id):
        here = root / OUTPUTS_DIR / job_id / parts[-1]
        if here.exists():
            return here, True
    return path, False


def check_video(result: WorkerOutput) -> None:
    """Re-hash a video on this machine's mount of the volume: WorkerIOError when missing or not the sha256 returned."""
    if result.video_path is None or not result.on_volume:
        return
    where = f"render {result.job_id}: the worker's video {result.video_path}"
    digest = hashlib.sha256()
    try:
        with open(result.video_path, "rb") as f:
            while block := f.read(_READ_BLOCK):
                digest.update(block)
    except OSError as e:
        raise WorkerIOError(f"{where}: cannot be read on this machine's volume: {e.strerror or e}") from None
    if digest.hexdigest() != result.sha256:
        raise WorkerIOError(
            f"{where}: sha256 is {digest.hexdigest()[:12]}…, the worker returned {result.sha256[:12]}…"
        )
