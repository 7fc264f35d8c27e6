"""What a RunPod job's final status means for the render that sent it, and for the job's place in the queue.

    COMPLETED   the render succeeded: materialize; the job moves to jobs/done/
    FAILED      the worker refused or broke on this job: fail at once, no retry (retrying would pay for
                the same failure); the job moves to jobs/failed/ with the worker's message
    TIMED_OUT   the endpoint's execution timeout ended it: retry like a failing local render; after the
                last attempt the job moves to jobs/failed/
    CANCELLED   someone cancelled it on RunPod: fail, no retry; the job stays queued
    other       an unknown final status: fail, no retry; the job stays queued

A request that never reached a final status is `RunPodError`: retried when `retryable` (unreachable,
5xx), after the last attempt the job stays queued (not the job's fault; the nightly schedule asks
again); a refused API key or a missing endpoint id fails at once and the job stays queued.

Plain Python: the `renders` asset (defs/renders_runpod.py) applies these outcomes.
"""

from __future__ import annotations

from dataclasses import dataclass

from mt_assets.dispatch.runpod import CANCELLED, COMPLETED, FAILED, TIMED_OUT, JobStatus, failure_message


@dataclass(frozen=True)
class Outcome:
    """A final status, judged: whether the render succeeded, may be retried, and moves to jobs/failed/."""

    succeeded: bool
    retry: bool
    mark_failed: bool  # move the job to jobs/failed/ now (with `message`)
    message: str


def judge(status: JobStatus, *, job_id: str, last_attempt: bool) -> Outcome:
    """The outcome of a final `status` of the RunPod job sent for render `job_id` (see the module docstring)."""
    where = f"render {job_id}: RunPod job {status.id}"
    if status.status == COMPLETED:
        return Outcome(succeeded=True, retry=False, mark_failed=False, message=f"{where} COMPLETED")
    if status.status == FAILED:
        return Outcome(
            succeeded=False,
            retry=False,
            mark_failed=True,
            message=f"{where} FAILED: {failure_message(status.error)}",
        )
    if status.status == TIMED_OUT:
        return Outcome(
            succeeded=False,
            retry=True,
            mark_failed=last_attempt,
            message=f"{where} TIMED_OUT: the endpoint's execution timeout ended it",
        )
    if status.status == CANCELLED:
        return Outcome(
            succeeded=False,
            retry=False,
            mark_failed=False,
            message=f"{where} was cancelled on RunPod, not by this run; the job stays queued",
        )
    return Outcome(
        succeeded=False,
        retry=False,
        mark_failed=False,
        message=f"{where}: unexpected final status {status.status!r}",
    )


def timing_seconds(status: JobStatus) -> dict[str, float]:
    """RunPod's delayTime (queue and cold start) and executionTime (the handler), in seconds."""
    timing = {}
    if status.delay_ms is not None:
        timing["delay_seconds"] = round(status.delay_ms / 1000, 3)
    if status.execution_ms is not None:
        timing["execution_seconds"] = round(status.execution_ms / 1000, 3)
    return timing


def timing_text(status: JobStatus) -> str:
    """' (delay 1.2 s, execution 30.0 s)', or '' when RunPod gave neither."""
    timing = timing_seconds(status)
    if not timing:
        return ""
    return " (" + ", ".join(f"{k.removesuffix('_seconds')} {v:.1f} s" for k, v in timing.items()) + ")"
