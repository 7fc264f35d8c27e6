"""Where a job's video goes, and the response that says where it went.

Every render is written to `<volume>/outputs/<id>/` first (video.mp4, poster.png, job.json;
atomically: mt_assets.render.video), which is also how a job delivered twice is recognised: a
finished `<id>/` is returned as it is (`reused: true`) instead of rendering again, unless the job
says `rerender: true`. The finished render must be of the same job: every setting equal, and the
media the same bytes (their sha256 against job.json's `media`; the paths may differ); otherwise the
job is refused naming what differs. Then, by `return_video`:

    volume   nothing more: the paths are in the response
    s3       video.mp4, poster.png and job.json uploaded to <MT_OUTPUT_S3>/<id>/ (boto3; endpoint,
             region and credentials from the AWS_* environment); skipped when the video is there
             already with the same sha256 (a retry), which its `sha256` user metadata records
    base64   the mp4's bytes in the response, up to MAX_INLINE_VIDEO_BYTES (RunPod's response
             payload is limited; a larger video is refused with a message naming the volume path)

The response (the job's `output`) is RenderResult.to_json() of mt_assets.render.run:

    id, video, poster, job_json (paths on the volume), sha256 (of video.mp4), frames, duration,
    width, height, clips, seconds_per_step, seconds (the render's), stages {name: seconds}

plus `reused`, `return_video`, `media` (the references as given, without query strings or data:
payloads), `handler_seconds` (the whole job on the worker), and `s3` {video, poster, job_json: URIs}
or `video_base64`.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import BotoCoreError, ClientError

from mt_assets import config
from mt_assets.jobs.hashes import media_differences
from mt_assets.jobs.media import endpoint_shown
from mt_assets.jobs.outputs import EVALUATION_KEYS
from mt_assets.jobs.schema import JobError, RenderJob
from mt_assets.render.video import FPS, JOB_JSON_NAME, POSTER_NAME, VIDEO_NAME
from mt_assets.sources.s3 import parse_s3_uri

log = logging.getLogger("mt_assets.worker")

MAX_INLINE_VIDEO_BYTES = 10 * 1024**2  # 13.3 MB as base64: under RunPod's 20 MB /runsync payload
MEDIA_FIELDS = ("cond_image", "cond_audio")  # compared by their sha256: a fetched medium's path differs
# Job settings added after renders were first recorded: a job.json without them had these values.
LATER_FIELDS = {"teacache": False, "preset": None}
_CONTENT_TYPES = {VIDEO_NAME: "video/mp4", POSTER_NAME: "image/png", JOB_JSON_NAME: "application/json"}
_RESPONSE_KEYS = {VIDEO_NAME: "video", POSTER_NAME: "poster", JOB_JSON_NAME: "job_json"}


class OutputError(RuntimeError):
    """The render is on the volume but cannot be delivered as asked; the message says where it is."""


def finished_output(
    out_dir: Path, job: RenderJob, media: Callable[[], Mapping[str, Any]]
) -> dict[str, Any] | None:
    """The response of a finished render of `job.id` in `out_dir`, or None when there is none.

    `media` gives the job's media hashes (job.json's `media` section: mt_assets.jobs.hashes); it is
    called only when a render of the same id with the same settings is there, so a retry whose
    settings differ fetches nothing. The media are compared by content: the same bytes at another
    path (a fetched medium's scratch path differs every time) are the same media.

    Raises JobError naming the first setting or medium that differs when the render there was made
    from another job that reuses the id (returning its video would be wrong), or naming none when its
    job.json records no media hashes (a render from before they were recorded); OutputError when its
    job.json cannot be read.
    """
    folder = out_dir / job.id
    record_path = folder / JOB_JSON_NAME
    if not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        response = response_from_record(folder, record)
        before = dict(record["job"])
        media_before = record.get("media")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise OutputError(
            f"output {folder} exists but its {JOB_JSON_NAME} cannot be read ({type(e).__name__}: {e}); "
            "set rerender: true in the job to replace it"
        ) from None
    for name, value in job.to_json().items():
        if name in MEDIA_FIELDS or name == "rerender":
            continue
        earlier = before.get(name, LATER_FIELDS.get(name))
        if earlier != value:
            raise JobError(job.source, name, _differs(folder, name, repr(earlier), repr(value)))
    if not isinstance(media_before, Mapping):
        raise JobError(
            job.source,
            None,
            f"output {folder} exists from a job with the same id, but its {JOB_JSON_NAME} records no "
            "sha256 of its media (an older render), so this job's media cannot be compared with them; "
            "give another id, or set rerender: true to replace it",
        )
    differences = media_differences(media_before, media())
    if differences:
        field, sha_before, sha_now = differences[0]
        raise JobError(
            job.source, field, _differs(folder, f"{field} sha256", _short(sha_before), _short(sha_now))
        )
    return response


def _differs(folder: Path, what: str, before: str, now: str) -> str:
    return (
        f"output {folder} exists from a job with the same id and {what} {before} (this job: {now}); "
        "give another id, or set rerender: true to replace it"
    )


def _short(sha256: str | None) -> str:
    return "none (silent)" if sha256 is None else f"{sha256[:12]}…"


def response_from_record(folder: Path, record: dict[str, Any]) -> dict[str, Any]:
    """RenderResult.to_json()'s keys, from a render's job.json (what a finished render left)."""
    video, settings, timings = record["video"], record["settings"], record["timings"]
    return {
        "id": folder.name,
        "video": str(folder / VIDEO_NAME),
        "poster": str(folder / POSTER_NAME),
        "job_json": str(folder / JOB_JSON_NAME),
        "sha256": video["sha256"],
        "frames": video["frames"],
        "duration": round(video["frames"] / FPS, 3),
        "width": video["width"],
        "height": video["height"],
        "clips": settings["clips"],
        "seconds_per_step": round(timings["seconds_per_step"], 4),
        "seconds": timings["seconds"],
        "stages": timings["stages"],
        # None for a render recorded before they were
        **{key: record.get(key) for key in EVALUATION_KEYS},
    }


def deliver(
    response: dict[str, Any], return_video: str, *, output_s3: str | None, max_inline_bytes: int
) -> None:
    """Add the `return_video` part to `response` (upload to S3 or inline base64); OutputError if it cannot."""
    folder = Path(response["video"]).parent
    if return_video == "base64":
        size = Path(response["video"]).stat().st_size
        if size > max_inline_bytes:
            raise OutputError(
                f"return_video base64: the video is {size:,} bytes, more than the {max_inline_bytes:,} "
                f"returned inline (RunPod limits the response's size); it is on the volume at "
                f"{response['video']}: ask for return_video s3 or volume"
            )
        response["video_base64"] = base64.b64encode(Path(response["video"]).read_bytes()).decode("ascii")
    elif return_video == "s3":
        assert output_s3 is not None  # parse_request refuses s3 without a bucket
        response["s3"] = upload(folder, response["sha256"], output_s3)


def upload(folder: Path, sha256: str, output_s3: str) -> dict[str, str]:
    """Put video.mp4, poster.png and job.json under <output_s3>/<id>/; their s3:// URIs.

    The video goes last, with its sha256 as user metadata: a video object with that sha256 means
    the three are there (a retry uploads nothing).
    """
    bucket, prefix = parse_s3_uri(output_s3)
    keys = {name: "/".join(p for p in (prefix, folder.name, name) if p) for name in _CONTENT_TYPES}
    uris = {_RESPONSE_KEYS[name]: f"s3://{bucket}/{key}" for name, key in keys.items()}
    s3 = config.s3_client()
    client = s3.client
    where = f"s3://{bucket}/{keys[VIDEO_NAME]} (endpoint {endpoint_shown(s3.endpoint)})"
    try:
        try:
            head = client.head_object(Bucket=bucket, Key=keys[VIDEO_NAME])
            if head.get("Metadata", {}).get("sha256") == sha256:
                log.info("job %s: already in %s", folder.name, uris["video"])
                return uris
        except ClientError as e:
            if str(e.response.get("Error", {}).get("Code")) not in ("404", "NoSuchKey", "NotFound"):
                raise
        for name in (POSTER_NAME, JOB_JSON_NAME, VIDEO_NAME):
            extra = {"ContentType": _CONTENT_TYPES[name]}
            if name == VIDEO_NAME:
                extra["Metadata"] = {"sha256": sha256}
            client.upload_file(str(folder / name), bucket, keys[name], ExtraArgs=extra)
    except ClientError as e:
        error = e.response.get("Error", {})
        code = str(error.get("Code") or "no error code")
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        raise OutputError(
            f"return_video s3: {where}: HTTP {status} ({code}); the render is on the volume at {folder}"
        ) from None
    except (S3UploadFailedError, BotoCoreError, OSError) as e:
        # botocore's messages name the endpoint and the operation, never the credentials.
        raise OutputError(
            f"return_video s3: {where}: {type(e).__name__}: {e}; the render is on the volume at {folder}"
        ) from None
    finally:
        client.close()
    log.info("job %s: uploaded to %s", folder.name, uris["video"])
    return uris
