"""A RunPod job's input read as a render job, and its remote media fetched.

RunPod hands the handler `{"id": <RunPod job id>, "input": {...}}`. The input is a render job in the
format of mt_assets.jobs.schema (MultiTalk's input JSON plus our settings) with one more field, for
the worker only:

    return_video   s3 | volume | base64: where the mp4 goes (outputs.py). Default: s3 when
                   MT_OUTPUT_S3 is set, else volume
    output_s3      optional, and only as a check: must equal the worker's MT_OUTPUT_S3 (a caller
                   that says where it expects the video). The destination is the worker's setting,
                   never the input's: a job cannot send renders to any bucket the worker's keys reach

Media references (`cond_image`, `cond_audio.person1/2`) may be

    volume:<path> or <path>    a file on the volume (a relative path is relative to the volume
                               root; either way it must stay inside the volume)
    s3://bucket/key            fetched with boto3 when decoded (the AWS_* environment)
    https://...                fetched here, at most `max_bytes`, within `timeout` seconds
    data:<mime>;base64,...     decoded here (within RunPod's payload limit)

An absolute path elsewhere is refused. https and data: references are written to this job's
scratch folder before the job is checked, so the job (and its job.json) records a local path,
never a URL's signature or the base64 payload; the response lists them as `shown_ref` shows them.

The job id is the input's `id` if given (the job rules: 1-64 of A-Z a-z 0-9 _ -), else RunPod's
job id made to fit those rules (`job_id_from_runpod`): a retry of the same RunPod job has the same
id, which is how a job delivered twice finds its finished output.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mt_assets.jobs.media import (
    HTTPS_TIMEOUT,
    MAX_DOWNLOAD_BYTES,
    MediaError,
    fetch_remote,
    is_remote,
    remote_suffix,
    shown_ref,
)
from mt_assets.jobs.schema import SPEAKERS, JobError, RenderJob, describe_kind, parse_job

RETURN_VIDEO = ("s3", "volume", "base64")
WORKER_FIELDS = ("return_video", "output_s3")
_ID_MAX = 64
_NOT_ID = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class Remote:
    """A media reference fetched into the scratch folder."""

    field: str  # 'cond_image' | 'cond_audio.person1' | 'cond_audio.person2'
    ref: str  # as given (may hold a signature: never shown)
    path: Path  # where its bytes go

    @property
    def shown(self) -> str:
        return shown_ref(self.ref)


@dataclass(frozen=True)
class WorkerRequest:
    job: RenderJob  # checked; media not decoded yet
    return_video: str
    remote: tuple[Remote, ...]  # fetched by `fetch_media`

    @property
    def media(self) -> dict[str, str]:
        """Every media reference as `shown_ref` shows it (no query string, no data: payload)."""
        shown = {"cond_image": shown_ref(self.job.cond_image)}
        for name, ref in zip(SPEAKERS, self.job.cond_audio, strict=False):
            if ref is not None:
                shown[f"cond_audio.{name}"] = shown_ref(ref)
        shown.update({r.field: r.shown for r in self.remote})
        return shown


def job_id_from_runpod(runpod_id: str) -> str:
    """RunPod's job id within the job id rules: other characters become '_'; a longer id keeps its
    first 55 characters and gains '-' + 8 hex digits of its sha256, so two long ids stay apart."""
    cleaned = _NOT_ID.sub("_", runpod_id)
    if len(cleaned) > _ID_MAX:
        digest = hashlib.sha256(runpod_id.encode()).hexdigest()[:8]
        cleaned = f"{cleaned[: _ID_MAX - 9]}-{digest}"
    return cleaned


def source_for(runpod_id: str) -> str:
    """How messages name the job: `render job runpod:<id>: field ...`."""
    return f"runpod:{shown_ref(runpod_id)[:80]}" if runpod_id else "runpod"


def parse_request(
    job_input: Any,
    *,
    runpod_id: str,
    volume_root: Path,
    scratch: Path,
    output_s3: str | None,
) -> WorkerRequest:
    """Check the input as a render job, without fetching or decoding any media; raises JobError.

    Remote references are given their place in `scratch` (the job records those paths); relative
    and volume: references resolve inside `volume_root`.
    """
    source = source_for(runpod_id)
    if not isinstance(job_input, Mapping):
        kind = "nothing" if job_input is None else type(job_input).__name__
        raise JobError(source, None, f"expected an input mapping of job fields, got {kind}")
    doc = dict(job_input)
    return_video = _return_video(doc.pop("return_video", None), output_s3, source)
    if "output_s3" in doc:
        expected = doc.pop("output_s3")
        if expected != output_s3:
            given = repr(shown_ref(expected)) if isinstance(expected, str) else describe_kind(expected)
            raise JobError(
                source,
                "output_s3",
                f"{given}: this worker uploads to its own MT_OUTPUT_S3 only "
                f"({shown_ref(output_s3) if output_s3 else 'not set'}); leave output_s3 out or set the "
                "endpoint's MT_OUTPUT_S3",
            )
    if "id" not in doc:
        if not runpod_id:
            raise JobError(source, "id", "not given, and RunPod gave no job id")
        doc["id"] = job_id_from_runpod(runpod_id)

    remote: list[Remote] = []

    def place(field: str, ref: Any) -> Any:
        if isinstance(ref, str) and is_remote(ref):
            path = scratch / f"{field}{remote_suffix(ref)}"
            remote.append(Remote(field, ref, path))
            return str(path)
        return ref

    if "cond_image" in doc:
        doc["cond_image"] = place("cond_image", doc["cond_image"])
    audio = doc.get("cond_audio")
    if isinstance(audio, Mapping):
        doc["cond_audio"] = {name: place(f"cond_audio.{name}", ref) for name, ref in audio.items()}
    job = parse_job(
        doc,
        source=source,
        base_dir=volume_root,
        volume_root=volume_root,
        allowed_roots=[scratch],
        check_media=False,
    )
    return WorkerRequest(job=job, return_video=return_video, remote=tuple(remote))


def fetch_media(
    request: WorkerRequest, *, max_bytes: int = MAX_DOWNLOAD_BYTES, timeout: float = HTTPS_TIMEOUT
) -> None:
    """Fetch the request's https and data: references into their scratch paths; JobError names the field."""
    for r in request.remote:
        try:
            fetch_remote(r.ref, r.path, max_bytes=max_bytes, timeout=timeout)
        except MediaError as e:
            raise JobError(request.job.source, r.field, str(e)) from None


def _return_video(value: Any, output_s3: str | None, source: str) -> str:
    if value is None:
        return "s3" if output_s3 else "volume"
    if value not in RETURN_VIDEO:
        raise JobError(source, "return_video", f"{value!r} is not one of {', '.join(RETURN_VIDEO)}")
    if value == "s3" and not output_s3:
        raise JobError(
            source,
            "return_video",
            "'s3': this worker has no output bucket (set MT_OUTPUT_S3=s3://bucket/prefix on the "
            "endpoint), so ask for volume or base64",
        )
    return value
