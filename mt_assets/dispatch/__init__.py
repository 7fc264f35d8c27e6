"""Renders dispatched to a RunPod serverless endpoint whose workers run `python -m mt_assets.worker`.

    runpod.py     the endpoint's HTTP API: /run, /status (with backoff and 429 handling), /cancel, /health
    outcomes.py   what a final status means: retry or not, jobs/failed/ or still queued
    worker_io.py  the job input a worker is sent (media as volume: or s3:// references) and the output
                  it returns (video on the volume or in S3, its sha256)

Core: no Dagster. The `renders` asset (defs/renders_runpod.py, MT_RENDER_BACKEND=runpod) wires it; what its outcomes mean is outcomes.py.
"""

from mt_assets.dispatch.runpod import (
    CANCELLED,
    COMPLETED,
    DEFAULT_API_BASE,
    FAILED,
    FINAL_STATES,
    IN_PROGRESS,
    IN_QUEUE,
    TIMED_OUT,
    Backoff,
    JobStatus,
    RunPodConfigError,
    RunPodEndpoint,
    RunPodError,
    failure_message,
    failure_traceback,
)
from mt_assets.dispatch.worker_io import (
    RETURN_S3,
    RETURN_VOLUME,
    WorkerIOError,
    WorkerOutput,
    check_video,
    parse_worker_output,
    progress_text,
    worker_input,
)

__all__ = [
    "CANCELLED",
    "COMPLETED",
    "DEFAULT_API_BASE",
    "FAILED",
    "FINAL_STATES",
    "IN_PROGRESS",
    "IN_QUEUE",
    "RETURN_S3",
    "RETURN_VOLUME",
    "TIMED_OUT",
    "Backoff",
    "JobStatus",
    "RunPodConfigError",
    "RunPodEndpoint",
    "RunPodError",
    "WorkerIOError",
    "WorkerOutput",
    "check_video",
    "failure_message",
    "failure_traceback",
    "parse_worker_output",
    "progress_text",
    "worker_input",
]
