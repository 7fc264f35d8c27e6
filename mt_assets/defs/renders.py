"""Renders in Dagster: the `renders` asset (one dynamic partition per job), rendered on this machine.

    run of renders[<id>] (pool "gpu") --> outputs/<id>/ ; jobs/done/   (or jobs/failed/ after retries)

Jobs reach the partitions through the inbox sensor and the nightly schedule (render_inbox.py). With
MT_RENDER_BACKEND=runpod the same asset key is built by renders_runpod.py instead: the step sends the
job to a RunPod endpoint. This module holds what both backends share: the key, the partitions, the
guard, the retries. The core does the work (`mt_assets.jobs.queue`, `mt_assets.render.run`).

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

The renderer is built once per process by `MultiTalkRenderer.from_volume` (the CLI and the worker
build theirs the same way), so a job renders the same computation whichever entry point runs it.
"""

import json
from pathlib import Path
from typing import Any

import dagster as dg

from mt_assets.defs.offline_cache import ASSET_KEY as OFFLINE_CACHE_KEY
from mt_assets.defs.offline_cache import CHECK_NAME as OFFLINE_CHECK
from mt_assets.defs.offline_cache import MODEL_VERSIONS, models_data_versions
from mt_assets.defs.resources import VolumeResource
from mt_assets.jobs.outputs import EVALUATION_KEYS, OutputExists, output_dir
from mt_assets.jobs.queue import JobBusy, JobQueue
from mt_assets.jobs.schema import JobError, check_preset_served
from mt_assets.manifest import Manifest
from mt_assets.render.run import RenderResult, render_job
from mt_assets.render.video import poster_preview_markdown

RENDERS_KEY = dg.AssetKey("renders")
PARTITIONS = dg.DynamicPartitionsDefinition(name="render_jobs")
POOL = "gpu"
RUNPOD_POOL = "runpod"
MAX_RETRIES = 2


class RenderResource(dg.ConfigurableResource):
    """Where renders run: the local device (the RunPod backend comes with the worker)."""

    device: str = "cpu"
    t5_cpu: bool = False
    offload: bool = False
    persistent_params: int | None = None  # low VRAM's budget (render/low_vram.py); None: the whole DiT

    def renderer(self, volume_root: str, manifest: Manifest) -> Any:
        return _renderer(
            volume_root, manifest, self.device, self.t5_cpu, self.offload, self.persistent_params
        )


_RENDERERS: dict[tuple[str, str, str, bool, bool, int | None], Any] = {}


def _renderer(
    root: str, manifest: Manifest, device: str, t5_cpu: bool, offload: bool, persistent_params: int | None
) -> Any:
    """One loaded renderer per process and settings: loading is the expensive part of a cold render.

    Built by the one factory, as the CLI and the worker build theirs; the DiT is read in the
    background while the first job's encoders run (that job's render waits for it).
    """
    from mt_assets.render.pipeline import MultiTalkRenderer
    from mt_assets.volume import open_mounted_volume

    key = (root, manifest.profile, device, t5_cpu, offload, persistent_params)
    if key not in _RENDERERS:
        _RENDERERS[key] = MultiTalkRenderer.from_volume(
            open_mounted_volume(root, "render"),
            manifest,
            device=device,
            t5_cpu=t5_cpu,
            offload=offload,
            persistent_params=persistent_params,
            background=["transformer"],
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


def guarded_queue(
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
    preview = poster_preview_markdown(result.output.poster)
    return {
        "video": dg.MetadataValue.path(doc["video"]),
        "poster": dg.MetadataValue.path(doc["poster"]),
        # A person browsing renders would rather look than read a path: the poster, inline.
        **({"poster_preview": dg.MetadataValue.md(preview)} if preview else {}),
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
        **{key: doc[key] for key in EVALUATION_KEYS if key in doc},
        "settings": dg.MetadataValue.md(settings_markdown(result.job.to_json())),
    }


def renders_asset(pool: str, kind: str, description: str) -> Any:
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


def build_renders_asset(manifest: Manifest) -> dg.AssetsDefinition:
    """The renders asset of the local backend: renders in the step, on this machine's device, in pool "gpu"."""

    @renders_asset(
        POOL,
        "pytorch",
        "One partition per render job (`jobs/queued/<id>.json`): the mp4, poster and job.json under "
        "`outputs/<id>/`, rendered from the verified model files on the volume.",
    )
    def renders(
        context: dg.AssetExecutionContext, volume: VolumeResource, render: RenderResource
    ) -> dg.MaterializeResult:
        job_id = context.partition_key
        root, queue = guarded_queue(context, volume, manifest)
        try:
            job = queue.load(job_id)
        except (JobError, LookupError) as e:
            raise dg.Failure(description=f"render {job_id}: {e}", allow_retries=False) from None
        try:
            # Queued under another profile (or before the sensor checked presets): no retry can serve it.
            check_preset_served(job, manifest.profile, manifest.presets)
        except JobError as e:
            queue.mark_failed(job_id, str(e))
            raise dg.Failure(
                description=f"render {job_id}: {e}; moved to jobs/failed/", allow_retries=False
            ) from None
        renderer = render.renderer(str(root), manifest)
        context.log.info(f"render {job_id}: {job.frames} frames per clip, {job.steps} steps, mode {job.mode}")
        try:
            with queue.rendering(job_id):
                result = render_job(job, renderer, manifest, output_dir(root), progress=LogProgress(context))
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


class LogProgress:
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
