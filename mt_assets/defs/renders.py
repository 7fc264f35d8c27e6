"""Renders in Dagster: the `renders` asset (one dynamic partition per job), the inbox sensor, the batch schedule.

    jobs/inbox/ --render_inbox sensor--> jobs/queued/<id>.json + partition <id> + a run request
                (and again each tick for a queued job whose run key has no run: a lost tick)
    run of renders[<id>] (pool "gpu") --> outputs/<id>/ ; jobs/done/   (or jobs/failed/ after retries)
    nightly_renders schedule --> a run for every queued job without a materialization

The core does the work (`mt_assets.render.queue`, `mt_assets.render.run`); this module only wires it.

Guard. Sensor and schedule runs do not re-run `offline_cache`, so its blocking check does not stop
them: the render step itself refuses (no retry, the job stays queued) unless the latest
`offline_verified` evaluation passed and every model file's data version (its sha256) is the one the
offline proof recorded. A render's data version is its mp4's sha256; `offline_cache`'s is a hash of
the model files' sha256s, so once `offline_cache` has run again (automation does it), renders show
stale exactly when a model file really changed. Between a change and that proof, `offline_cache`
shows stale and the renders do not (Dagster does not pass staleness down a chain), but the guard
refuses to render.

Retries: a failing render is retried at most MAX_RETRIES times (the step's RetryPolicy); after the
last attempt the job moves to jobs/failed/ with its error. A refused render, or a job whose output
exists without `rerender: true`, fails at once and is not retried.

Backends (MT_RENDER_BACKEND, read when the Definitions load, since an asset's pool is fixed then):

    local   (default) the render runs in the step, on this machine's device; pool "gpu"
    runpod  the step sends the job to a RunPod serverless endpoint whose workers run
            `python -m mt_assets.worker` on the same volume, and follows it; pool "runpod"

With runpod, the step (after the same guard) sends the queued job with its media as `volume:` references
(`mt_assets.dispatch.worker_io`) to /run, polls /status with backoff, writes each progress message the
worker sends into the run log, and records the worker's output: the video (a path on the volume, or an
s3:// URI with MT_OUTPUT_S3), its sha256 as the data version (re-hashed when the video is on this
machine's mount), and RunPod's delayTime / executionTime as `delay_seconds` / `execution_seconds`.
Terminating the Dagster run cancels the RunPod job (/cancel) before the step ends. Outcomes:

    COMPLETED   materialized; jobs/done/
    FAILED      the worker's message fails the materialization at once, no retry (the worker refused or
                broke on this job: retrying would pay for the same failure); jobs/failed/ with that message
    TIMED_OUT   retried like a failing local render; after the last attempt jobs/failed/
    CANCELLED   (by someone on RunPod) fails, no retry; the job stays queued
    the endpoint unreachable or answering 5xx: retried; after the last attempt the job stays queued
    (not the job's fault; the nightly schedule asks again); a refused API key or a missing endpoint id
    fails at once and the job stays queued

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

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg

from mt_assets.defs.offline_cache import ASSET_KEY as OFFLINE_CACHE_KEY
from mt_assets.defs.offline_cache import CHECK_NAME as OFFLINE_CHECK
from mt_assets.defs.offline_cache import MODEL_VERSIONS, models_data_versions
from mt_assets.defs.resources import VolumeResource
from mt_assets.dispatch import (
    CANCELLED,
    COMPLETED,
    DEFAULT_API_BASE,
    FAILED,
    IN_PROGRESS,
    TIMED_OUT,
    Backoff,
    JobStatus,
    RunPodEndpoint,
    RunPodError,
    WorkerIOError,
    WorkerOutput,
    check_video,
    failure_message,
    failure_traceback,
    parse_worker_output,
    progress_text,
    worker_input,
)
from mt_assets.manifest import Manifest
from mt_assets.render.job import JobError
from mt_assets.render.queue import JobBusy, JobQueue
from mt_assets.render.run import OUTPUTS_DIR, RenderResult, output_dir, render_job
from mt_assets.render.video import OutputExists

RENDERS_KEY = dg.AssetKey("renders")
PARTITIONS = dg.DynamicPartitionsDefinition(name="render_jobs")
POOL = "gpu"
RUNPOD_POOL = "runpod"
BACKENDS = ("local", "runpod")
MAX_RETRIES = 2


class RenderResource(dg.ConfigurableResource):
    """Where renders run: the local device (the RunPod backend comes with the worker)."""

    device: str = "cpu"
    t5_cpu: bool = False
    offload: bool = False

    def renderer(self, volume_root: str, manifest: Manifest) -> Any:
        return _renderer(volume_root, manifest, self.device, self.t5_cpu, self.offload)


_RENDERERS: dict[tuple[str, str, str, bool, bool], Any] = {}


def _renderer(root: str, manifest: Manifest, device: str, t5_cpu: bool, offload: bool) -> Any:
    """One loaded renderer per process and settings: loading is the expensive part of a cold render."""
    import torch

    from mt_assets.models.pipeline import load_pipeline_components
    from mt_assets.render.pipeline import MultiTalkRenderer
    from mt_assets.volume import open_volume

    key = (root, manifest.profile, device, t5_cpu, offload)
    if key not in _RENDERERS:
        dtype = torch.float32 if device == "cpu" else torch.bfloat16
        components = load_pipeline_components(
            open_volume(root), manifest, dtype=dtype, device="cpu" if offload else device
        )
        _RENDERERS[key] = MultiTalkRenderer(
            components, device=device, dtype=dtype, t5_cpu=t5_cpu, offload=offload
        )
    return _RENDERERS[key]


def models_verified(instance: dg.DagsterInstance, manifest: Manifest) -> str | None:
    """Why a render may not run now, or None: the latest offline proof passed for today's model files."""
    check = instance.get_latest_asset_check_evaluation_record(
        dg.AssetCheckKey(OFFLINE_CACHE_KEY, OFFLINE_CHECK)
    )
    evaluation = check.evaluation if check is not None else None
    if evaluation is None:
        return "the offline proof (offline_cache / offline_verified) has never been evaluated"
    if not evaluation.passed:
        return "the latest offline_verified check of offline_cache failed: the models may not load offline"
    event = instance.get_latest_materialization_event(OFFLINE_CACHE_KEY)
    materialization = event.asset_materialization if event is not None else None
    if materialization is None or MODEL_VERSIONS not in materialization.metadata:
        return "offline_cache has no record of the model files it proved"
    proved: dict[str, str] = materialization.metadata[MODEL_VERSIONS].value  # type: ignore[assignment]
    now = models_data_versions(instance, manifest)
    changed = sorted(k for k in set(proved) | set(now) if proved.get(k) != now.get(k))
    if changed:
        return (
            f"{len(changed)} model file(s) changed since the last offline proof ({', '.join(changed[:5])}); "
            "materialize offline_cache again"
        )
    return None


def _guarded_queue(
    context: dg.AssetExecutionContext, volume: VolumeResource, manifest: Manifest
) -> tuple[Path, JobQueue]:
    """The volume's root and job queue, once the guard lets the partition's render go (every backend)."""
    root = volume.open().root
    queue = JobQueue(root)
    refused = models_verified(context.instance, manifest)
    if refused:
        raise dg.Failure(
            description=f"render {context.partition_key} refused: {refused}", allow_retries=False
        )
    return root, queue


def settings_markdown(job: dict[str, Any]) -> str:
    lines = ["| setting | value |", "|---|---|"]
    for name, value in job.items():
        shown = json.dumps(value) if isinstance(value, dict | list) else str(value)
        lines.append(f"| {name} | {shown.replace('|', '/')} |")
    return "\n".join(lines)


def render_metadata(result: RenderResult) -> dict[str, Any]:
    """Keys as the CLI's `render --json`."""
    doc = result.to_json()
    return {
        "video": dg.MetadataValue.path(doc["video"]),
        "poster": dg.MetadataValue.path(doc["poster"]),
        "job_json": dg.MetadataValue.path(doc["job_json"]),
        "sha256": doc["sha256"],
        "frames": doc["frames"],
        "duration": doc["duration"],
        "width": doc["width"],
        "height": doc["height"],
        "clips": doc["clips"],
        "seconds_per_step": doc["seconds_per_step"],
        "seconds": doc["seconds"],
        "stages": dg.MetadataValue.json(doc["stages"]),
        "settings": dg.MetadataValue.md(settings_markdown(result.job.to_json())),
    }


def _renders_asset(pool: str, kind: str, description: str) -> Any:
    """The `renders` asset's decorator: one key, partitioning, upstream and retries for every backend."""
    return dg.asset(
        key=RENDERS_KEY,
        partitions_def=PARTITIONS,
        deps=[OFFLINE_CACHE_KEY],
        pool=pool,
        retry_policy=dg.RetryPolicy(max_retries=MAX_RETRIES),
        group_name="renders",
        kinds={kind},
        description=description,
    )


def build_renders_asset(manifest: Manifest, backend: str = "local") -> dg.AssetsDefinition:
    """The renders asset for a backend (MT_RENDER_BACKEND): local renders in pool "gpu", runpod in "runpod"."""
    if backend not in BACKENDS:
        raise ValueError(f"MT_RENDER_BACKEND: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "runpod":
        return build_runpod_renders_asset(manifest)

    @_renders_asset(
        POOL,
        "pytorch",
        "One partition per render job (`jobs/queued/<id>.json`): the mp4, poster and job.json under "
        "`outputs/<id>/`, rendered from the verified model files on the volume.",
    )
    def renders(
        context: dg.AssetExecutionContext, volume: VolumeResource, render: RenderResource
    ) -> dg.MaterializeResult:
        job_id = context.partition_key
        root, queue = _guarded_queue(context, volume, manifest)
        try:
            job = queue.load(job_id)
        except (JobError, LookupError) as e:
            raise dg.Failure(description=f"render {job_id}: {e}", allow_retries=False) from None
        renderer = render.renderer(str(root), manifest)
        context.log.info(f"render {job_id}: {job.frames} frames per clip, {job.steps} steps, mode {job.mode}")
        try:
            with queue.rendering(job_id):
                result = render_job(job, renderer, manifest, output_dir(root), progress=_LogProgress(context))
        except (OutputExists, JobBusy) as e:
            raise dg.Failure(description=str(e), allow_retries=False) from None
        except Exception as e:
            if context.retry_number >= MAX_RETRIES:
                queue.mark_failed(job_id, f"{type(e).__name__}: {e}")
                context.log.error(
                    f"render {job_id} failed after {MAX_RETRIES + 1} attempts; moved to jobs/failed/"
                )
            raise
        queue.mark_done(job_id, result.output.folder)
        return dg.MaterializeResult(
            metadata=render_metadata(result), data_version=dg.DataVersion(result.output.sha256)
        )

    return renders


class RunPodResource(dg.ConfigurableResource):
    """The RunPod serverless endpoint renders go to with MT_RENDER_BACKEND=runpod (`from_env`).

    The API key is not a field (fields show in the UI and in run config): RUNPOD_API_KEY is read when a
    render starts and only goes into the requests' authorization header.
    """

    endpoint: str = ""  # MT_RUNPOD_ENDPOINT: the endpoint's id ("" only for the SDK's local test API)
    api_base: str = DEFAULT_API_BASE  # MT_RUNPOD_API_BASE
    output_s3: str | None = None  # MT_OUTPUT_S3: s3://bucket/prefix for the videos; None: the volume
    poll_seconds: float = 0.5  # MT_RUNPOD_POLL_SECONDS: the first wait between two /status polls
    poll_factor: float = 1.5  # each next wait this many times longer ...
    poll_max_seconds: float = 10.0  # MT_RUNPOD_POLL_MAX_SECONDS: ... up to this
    request_timeout: float = 30.0  # seconds for one answer (the SDK's local API answers /status when done)
    status_method: str = "POST"  # the hosted API takes POST or GET; the SDK's local API only POST

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "RunPodResource":
        env = os.environ if env is None else env

        def seconds(name: str, default: float) -> float:
            text = env.get(name) or ""
            try:
                return float(text) if text else default
            except ValueError:
                raise ValueError(f"{name}: expected seconds, got {text!r}") from None

        return cls(
            endpoint=env.get("MT_RUNPOD_ENDPOINT") or "",
            api_base=env.get("MT_RUNPOD_API_BASE") or DEFAULT_API_BASE,
            output_s3=env.get("MT_OUTPUT_S3") or None,
            poll_seconds=seconds("MT_RUNPOD_POLL_SECONDS", 0.5),
            poll_max_seconds=seconds("MT_RUNPOD_POLL_MAX_SECONDS", 10.0),
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

    @_renders_asset(
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
        root, queue = _guarded_queue(context, volume, manifest)
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
            context.log.info(f"render {job_id}: RunPod job {status.id} {status.status}{_timing_text(status)}")

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
    """A final status as the materialization, or as the failure the module docstring's table says."""
    timing = _timing_metadata(final)
    where = f"render {job_id}: RunPod job {final.id}"
    if final.status == FAILED:
        message = failure_message(final.error)
        traceback = failure_traceback(final.error)
        if traceback:
            context.log.error(f"{where}: the worker's traceback:\n{traceback}")
        queue.mark_failed(job_id, f"RunPod job {final.id} FAILED: {message}")
        context.log.error(f"{where} FAILED; moved to jobs/failed/")
        raise dg.Failure(
            description=f"{where} FAILED: {message}",
            metadata={"runpod_job": final.id, **timing},
            allow_retries=False,
        )
    if final.status == TIMED_OUT:
        message = f"{where} TIMED_OUT: the endpoint's execution timeout ended it"
        if context.retry_number >= MAX_RETRIES:
            queue.mark_failed(job_id, message)
            context.log.error(
                f"render {job_id} failed after {MAX_RETRIES + 1} attempts; moved to jobs/failed/"
            )
        raise RuntimeError(message)
    if final.status == CANCELLED:
        raise dg.Failure(
            description=f"{where} was cancelled on RunPod, not by this run; the job stays queued",
            allow_retries=False,
        )
    if final.status != COMPLETED:
        raise dg.Failure(
            description=f"{where}: unexpected final status {final.status!r}", allow_retries=False
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
    for key in (
        "frames",
        "duration",
        "width",
        "height",
        "clips",
        "seconds_per_step",
        "seconds",
        "handler_seconds",
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


def _timing_metadata(status: JobStatus) -> dict[str, float]:
    """RunPod's delayTime (queue and cold start) and executionTime (the handler), in seconds."""
    timing = {}
    if status.delay_ms is not None:
        timing["delay_seconds"] = round(status.delay_ms / 1000, 3)
    if status.execution_ms is not None:
        timing["execution_seconds"] = round(status.execution_ms / 1000, 3)
    return timing


def _timing_text(status: JobStatus) -> str:
    timing = _timing_metadata(status)
    if not timing:
        return ""
    return " (" + ", ".join(f"{k.removesuffix('_seconds')} {v:.1f} s" for k, v in timing.items()) + ")"


class _LogProgress:
    """Sampling progress into the run log, one line per clip and every tenth step."""

    def __init__(self, context: dg.AssetExecutionContext) -> None:
        self._log = context.log
        self._done: dict[str, int] = {}
        self._total: dict[str, int | None] = {}

    def start(self, key: str, label: str, total: int | None) -> None:
        self._done[key], self._total[key] = 0, total

    def advance(self, key: str, n: int) -> None:
        self._done[key] = self._done.get(key, 0) + n
        total = self._total.get(key)
        if key == "clips" or (total and (self._done[key] % max(1, total // 10) == 0)):
            self._log.info(f"{key}: {self._done[key]}/{total}")

    def finish(self, key: str) -> None:
        self._done.pop(key, None)


INBOX_SENSOR = "render_inbox"


def _run_key(job_id: str, queued: Path) -> str:
    """One key per acceptance: a re-dropped job (`rerender: true`) is queued anew, so it gets a new run."""
    return f"{job_id}@{queued.stat().st_mtime_ns}"


def _queued_run_keys(queue: JobQueue) -> list[tuple[str, str]]:
    """(id, run key) of the jobs waiting in jobs/queued/; one taken by a render meanwhile is left out."""
    found = []
    for job_id in queue.queued_ids():
        with contextlib.suppress(FileNotFoundError):
            found.append((job_id, _run_key(job_id, queue.folder("queued") / f"{job_id}.json")))
    return found


def _has_run(context: dg.SensorEvaluationContext, run_key: str) -> bool:
    """Whether this sensor's run key has a run: the tags the daemon puts on the runs it creates."""
    tags = {"dagster/run_key": run_key, "dagster/sensor_name": INBOX_SENSOR}
    return bool(context.instance.get_run_ids(filters=dg.RunsFilter(tags=tags), limit=1))


def build_inbox_sensor(minimum_interval_seconds: int = 30) -> dg.SensorDefinition:
    @dg.sensor(
        name=INBOX_SENSOR,
        minimum_interval_seconds=minimum_interval_seconds,
        asset_selection=[RENDERS_KEY],
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Job files dropped in <volume>/jobs/inbox/: validated, queued as partitions of renders, run.",
    )
    def render_inbox(context: dg.SensorEvaluationContext, volume: VolumeResource) -> dg.SensorResult:
        queue = JobQueue(volume.open().root)
        scan = queue.scan_inbox()
        for r in scan.rejected:
            context.log.warning(f"rejected {r.name}: {r.error}")
        accepted = [a.id for a in scan.accepted]
        # Accepting moves a job out of the inbox before the daemon has the tick's run request: a tick
        # whose result is lost (a timed-out evaluation, a restart) would leave it queued with no run.
        # So a queued job whose run key has no run yet is asked for again.
        unrun = [i for i in _queued_run_keys(queue) if i[0] not in accepted and not _has_run(context, i[1])]
        if unrun:
            context.log.warning(f"queued without a run, asked for again: {', '.join(i for i, _ in unrun)}")
        if not accepted and not unrun:
            reason = f"{len(scan.rejected)} rejected" if scan.rejected else "nothing new in jobs/inbox/"
            if scan.waiting:
                reason += f"; {len(scan.waiting)} still being copied"
            return dg.SensorResult(skip_reason=reason)
        if accepted:
            context.log.info(f"queued {len(accepted)} render job(s): {', '.join(accepted)}")
        keys = {a.id: _run_key(a.id, a.path) for a in scan.accepted} | dict(unrun)
        known = set(context.instance.get_dynamic_partitions(PARTITIONS.name))
        new_partitions = [i for i in keys if i not in known]
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=run_key,
                    partition_key=job_id,
                    asset_selection=[RENDERS_KEY],
                    tags={"mt_assets/trigger": "render_inbox"},
                )
                for job_id, run_key in keys.items()
            ],
            dynamic_partitions_requests=(
                [PARTITIONS.build_add_request(new_partitions)] if new_partitions else []
            ),
        )

    return render_inbox


def build_nightly_renders_schedule(cron: str = "0 2 * * *") -> dg.ScheduleDefinition:
    @dg.schedule(
        name="nightly_renders",
        cron_schedule=cron,
        target=[RENDERS_KEY],
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Every queued render job without a materialization, one run each (the gpu pool paces them).",
    )
    def nightly_renders(context: dg.ScheduleEvaluationContext, volume: VolumeResource) -> Any:
        queued = JobQueue(volume.open().root).queued_ids()
        instance = context.instance
        known = set(instance.get_dynamic_partitions(PARTITIONS.name))
        missing = [i for i in queued if i not in known]
        if missing:
            instance.add_dynamic_partitions(PARTITIONS.name, missing)
        todo = [
            i for i in queued
            if not instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=RENDERS_KEY, asset_partitions=[i]), limit=1
            ).records
        ]  # fmt: skip
        if not todo:
            return dg.SkipReason(f"{len(queued)} queued job(s), none without a render")
        return [
            dg.RunRequest(
                run_key=f"nightly:{context.scheduled_execution_time:%Y-%m-%d}:{i}",
                partition_key=i,
                tags={"mt_assets/trigger": "nightly_renders"},
            )
            for i in todo
        ]

    return nightly_renders
