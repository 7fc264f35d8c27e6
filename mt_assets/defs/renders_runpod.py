"""Renders on a RunPod serverless endpoint (MT_RENDER_BACKEND=runpod): the `renders` asset, built for it.

The step (after the guard of renders.py) sends the queued job with its media as `volume:` references
(`mt_assets.dispatch.worker_io`) to /run, polls /status with backoff, writes each progress message the
worker sends into the run log, and records the worker's output: the video (a path on the volume, or an
s3:// URI with MT_OUTPUT_S3), its sha256 as the data version (re-hashed when the video is on this
machine's mount), and RunPod's delayTime / executionTime as `delay_seconds` / `execution_seconds`.
Terminating the Dagster run cancels the RunPod job (/cancel) before the step ends. What each final
status means (retry or not, jobs/failed/ or queued) is `mt_assets.dispatch.outcomes`.

A retry sends the job again; the worker returns a finished outputs/<id>/ of the same job as it is
(`reused`), so a render that finished while its /status answers were lost is not rendered twice. For the
same reason this step does not refuse an existing outputs/<id>/ itself: the worker judges it (a
different job under that id is FAILED, naming the field).

Several partitions render at once up to the `runpod` pool's limit, which should be the endpoint's
maximum worker count: `dagster instance concurrency set runpod N`. dagster.yaml cannot name a pool's
limit in Dagster OSS; its `concurrency.pools.default_limit` applies to every pool without one (`gpu`
too), so set `runpod` explicitly. The API key (RUNPOD_API_KEY) is read when a render starts; it is not a
resource field, and it never reaches the run log, metadata or error messages.
"""

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg

from mt_assets import config
from mt_assets.defs.renders import (
    MAX_RETRIES,
    RUNPOD_POOL,
    guarded_queue,
    renders_asset,
    settings_markdown,
)
from mt_assets.defs.resources import VolumeResource
from mt_assets.dispatch import (
    DEFAULT_API_BASE,
    IN_PROGRESS,
    Backoff,
    JobStatus,
    RunPodEndpoint,
    RunPodError,
    WorkerIOError,
    WorkerOutput,
    check_video,
    failure_traceback,
    parse_worker_output,
    progress_text,
    worker_input,
)
from mt_assets.dispatch.outcomes import judge, timing_seconds, timing_text
from mt_assets.jobs.outputs import EVALUATION_KEYS, OUTPUTS_DIR
from mt_assets.jobs.queue import JobBusy, JobQueue
from mt_assets.jobs.schema import JobError
from mt_assets.manifest import Manifest
from mt_assets.render.video import poster_preview_markdown


class RunPodResource(dg.ConfigurableResource):
    """The RunPod serverless endpoint renders go to with MT_RENDER_BACKEND=runpod (`from_env`).

    The API key is not a field (fields show in the UI and in run config): RUNPOD_API_KEY is read when a
    render starts and only goes into the requests' authorization header.
    """

    endpoint: str = ""  # MT_RUNPOD_ENDPOINT: the endpoint's id ("" only for the SDK's local test API)
    api_base: str = DEFAULT_API_BASE  # MT_RUNPOD_API_BASE
    output_s3: str | None = None  # MT_OUTPUT_S3: s3://bucket/prefix for the videos; None: the volume
    # MT_RUNPOD_POLL_SECONDS: the first wait between two /status polls
    poll_seconds: float = config.RUNPOD_POLL_SECONDS.default
    poll_factor: float = 1.5  # each next wait this many times longer, up to:
    poll_max_seconds: float = config.RUNPOD_POLL_MAX_SECONDS.default  # MT_RUNPOD_POLL_MAX_SECONDS
    request_timeout: float = 30.0  # seconds for one answer (the SDK's local API answers /status when done)
    status_method: str = "POST"  # the hosted API takes POST or GET; the SDK's local API only POST

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "RunPodResource":
        return cls(
            endpoint=config.RUNPOD_ENDPOINT.read(env),
            api_base=config.RUNPOD_API_BASE.read(env),
            output_s3=config.OUTPUT_S3.read(env),
            poll_seconds=config.RUNPOD_POLL_SECONDS.read(env),
            poll_max_seconds=config.RUNPOD_POLL_MAX_SECONDS.read(env),
        )

    def backoff(self) -> Backoff:
        return Backoff(self.poll_seconds, self.poll_factor, max(self.poll_max_seconds, self.poll_seconds))

    def open(self, **options: Any) -> RunPodEndpoint:
        """A client; RunPodConfigError without an endpoint id or RUNPOD_API_KEY. `options`: RunPodEndpoint's."""
        return RunPodEndpoint(
            self.endpoint,
            os.environ.get("RUNPOD_API_KEY", ""),
            api_base=self.api_base,
            request_timeout=self.request_timeout,
            status_method=self.status_method,
            **options,
        )


def build_runpod_renders_asset(manifest: Manifest) -> dg.AssetsDefinition:
    """Renders on a RunPod endpoint: same key, partitions, guard and retries as the local asset; pool "runpod"."""

    @renders_asset(
        RUNPOD_POOL,
        "runpod",
        "One partition per render job (`jobs/queued/<id>.json`), rendered by a RunPod serverless endpoint "
        "whose workers read the verified model files on the same volume: the mp4 under `outputs/<id>/` "
        "(or in S3 with MT_OUTPUT_S3).",
    )
    def renders(
        context: dg.AssetExecutionContext, volume: VolumeResource, runpod: RunPodResource
    ) -> dg.MaterializeResult:
        job_id = context.partition_key
        run = context.instance.get_run_by_id(context.run.run_id)
        if run is not None and run.status == dg.DagsterRunStatus.CANCELING:
            # The in-process executor retries a step that termination interrupted (dagster#15026): a retry
            # of a run being terminated must not send the job again.
            raise dg.Failure(
                description=f"render {job_id}: the run is being terminated; not sent", allow_retries=False
            )
        root, queue = guarded_queue(context, volume, manifest)
        try:
            job = queue.load(job_id)
            # No check for an existing outputs/<id>/ here: the worker returns a finished output of the
            # same job as it is (`reused`), which is what a retry after a lost /status answer needs, and
            # refuses one of different settings (FAILED, with the message).
            job_input = worker_input(job.to_json(), root, output_s3=runpod.output_s3)
            backoff = runpod.backoff()  # ValueError for poll settings that would not back off
        except (JobError, LookupError, ValueError) as e:
            raise dg.Failure(description=f"render {job_id}: {e}", allow_retries=False) from None

        def rate_limited(request: str, wait: float) -> None:
            context.log.warning(
                f"render {job_id}: RunPod rate limit on {request}: asking again in {wait:.1f} s"
            )

        try:
            with runpod.open(on_rate_limited=rate_limited) as endpoint, queue.rendering(job_id):
                final = _dispatch(context, endpoint, backoff, job_id, job_input)
        except JobBusy as e:
            raise dg.Failure(description=str(e), allow_retries=False) from None
        except RunPodError as e:
            if not e.retryable:  # a refused key, no endpoint id, a bad request: the job stays queued
                raise dg.Failure(description=f"render {job_id}: {e}", allow_retries=False) from None
            if context.retry_number >= MAX_RETRIES:
                context.log.error(
                    f"render {job_id}: the RunPod endpoint failed {MAX_RETRIES + 1} attempts; the job stays queued"
                )
            raise
        return _outcome(context, queue, job_id, job_input, final, endpoint)

    return renders


def _dispatch(
    context: dg.AssetExecutionContext,
    endpoint: RunPodEndpoint,
    backoff: Backoff,
    job_id: str,
    job_input: dict[str, Any],
) -> JobStatus:
    """/run, then /status until final, progress into the run log; a terminated run cancels the RunPod job."""
    remote: str | None = None

    def update(status: JobStatus) -> None:
        if status.status == IN_PROGRESS and status.output is not None:
            context.log.info(f"render {job_id}: {progress_text(status.output)}")
        else:
            context.log.info(f"render {job_id}: RunPod job {status.id} {status.status}{timing_text(status)}")

    def poll_error(error: RunPodError, wait: float) -> None:
        context.log.warning(f"render {job_id}: {error}; polling again in {wait:.1f} s")

    try:
        submitted = endpoint.run(job_input)
        remote = submitted.id
        context.log.info(
            f"render {job_id}: sent to RunPod endpoint {endpoint.endpoint_id or endpoint.api_base} as job "
            f"{remote} ({submitted.status})"
        )
        return endpoint.wait(remote, backoff=backoff, on_update=update, on_poll_error=poll_error)
    except (dg.DagsterExecutionInterruptedError, KeyboardInterrupt):
        # Dagster raises these in the step when the run is terminated: stop the GPU work before ending.
        # (An interrupt while /run is on the wire leaves a job this step never learnt the id of.)
        if remote is not None:
            try:
                cancelled = endpoint.cancel(remote, timeout=10.0)
                context.log.warning(
                    f"render {job_id}: run terminated; RunPod job {remote} cancelled ({cancelled.status})"
                )
            except RunPodError as e:
                context.log.error(
                    f"render {job_id}: run terminated, but RunPod job {remote} could not be cancelled: {e}; "
                    "cancel it in the RunPod console"
                )
        raise


def _outcome(
    context: dg.AssetExecutionContext,
    queue: JobQueue,
    job_id: str,
    job_input: dict[str, Any],
    final: JobStatus,
    endpoint: RunPodEndpoint,
) -> dg.MaterializeResult:
    """A final status as the materialization, or as the failure `dispatch.outcomes.judge` says it is."""
    timing = timing_seconds(final)
    outcome = judge(final, job_id=job_id, last_attempt=context.retry_number >= MAX_RETRIES)
    if not outcome.succeeded:
        traceback = failure_traceback(final.error)
        if traceback:
            context.log.error(f"render {job_id}: RunPod job {final.id}: the worker's traceback:\n{traceback}")
        if outcome.mark_failed:
            queue.mark_failed(job_id, outcome.message)
            context.log.error(f"render {job_id}: {outcome.message}; moved to jobs/failed/")
        if outcome.retry:
            raise RuntimeError(outcome.message)
        raise dg.Failure(
            description=outcome.message, metadata={"runpod_job": final.id, **timing}, allow_retries=False
        )
    try:
        output = parse_worker_output(final.output, queue.root, job_id=job_id)
        check_video(output)
    except WorkerIOError as e:
        raise dg.Failure(description=f"{e} (RunPod job {final.id})", allow_retries=False) from None
    if output.fields.get("reused"):
        context.log.info(f"render {job_id}: the worker returned the output it had rendered before")
    if not output.on_volume:
        context.log.info(
            f"render {job_id}: video at {output.video} (not on this machine's volume: not re-hashed)"
        )
    folder = (
        output.video_path.parent
        if output.on_volume and output.video_path
        else queue.root / OUTPUTS_DIR / job_id
    )
    queue.mark_done(job_id, folder)
    return dg.MaterializeResult(
        metadata={
            **runpod_metadata(output, job_input),
            "runpod_job": final.id,
            "endpoint": endpoint.endpoint_id or endpoint.api_base,
            **timing,
        },
        data_version=dg.DataVersion(output.sha256),
    )


def runpod_metadata(output: WorkerOutput, job_input: dict[str, Any]) -> dict[str, Any]:
    """Keys as the local backend's where the worker returns them; s3:// as URLs, the volume's files as paths."""
    metadata: dict[str, Any] = {
        "video": _location(output.video_s3 or output.video_path),
        "sha256": output.sha256,
    }
    for name, where in output.files.items():
        metadata[name] = _location(where)
    poster = output.files.get("poster")
    preview = poster_preview_markdown(poster) if isinstance(poster, Path) else None
    if preview:
        metadata["poster_preview"] = dg.MetadataValue.md(preview)
    for key in (
        "frames",
        "duration",
        "width",
        "height",
        "clips",
        "seconds_per_step",
        "seconds",
        "handler_seconds",
        *EVALUATION_KEYS,
    ):
        value = output.fields.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            metadata[key] = value
    if isinstance(output.fields.get("reused"), bool):
        metadata["reused"] = output.fields["reused"]
    if "stages" in output.fields:
        metadata["stages"] = dg.MetadataValue.json(output.fields["stages"])
    metadata["settings"] = dg.MetadataValue.md(settings_markdown(job_input))
    return metadata


def _location(where: str | Path | None) -> dg.MetadataValue:
    return dg.MetadataValue.url(where) if isinstance(where, str) else dg.MetadataValue.path(str(where))
