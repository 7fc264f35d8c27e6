"""Jobs into renders: the inbox sensor and the nightly batch schedule.

    jobs/inbox/ --render_inbox sensor--> jobs/queued/<id>.json + partition <id> + a run request
                (and again each tick for a queued job whose run key has no run: a lost tick)
    nightly_renders schedule --> a run for every queued job without a materialization

The queue (`mt_assets.jobs.queue`) does the work; the runs are of the `renders` asset (renders.py).
"""

import contextlib
from pathlib import Path
from typing import Any

import dagster as dg

from mt_assets.defs.renders import PARTITIONS, RENDERS_KEY
from mt_assets.defs.resources import VolumeResource
from mt_assets.jobs.queue import JobQueue
from mt_assets.manifest import Manifest

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


def build_inbox_sensor(
    minimum_interval_seconds: int = 30, *, manifest: Manifest | None = None
) -> dg.SensorDefinition:
    """manifest: the Definitions' profile; a dropped job whose preset it does not serve is rejected."""

    @dg.sensor(
        name=INBOX_SENSOR,
        minimum_interval_seconds=minimum_interval_seconds,
        asset_selection=[RENDERS_KEY],
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Job files dropped in <volume>/jobs/inbox/: validated, queued as partitions of renders, run.",
    )
    def render_inbox(context: dg.SensorEvaluationContext, volume: VolumeResource) -> dg.SensorResult:
        queue = JobQueue(volume.open().root, manifest=manifest)
        scan = queue.scan_inbox()
        if scan.recovered:
            context.log.warning(
                f"recovered {len(scan.recovered)} claim(s) left by a scanner that stopped: {', '.join(scan.recovered)}"
            )
        for error in scan.errors:
            context.log.error(f"put back, taken again by a later tick: {error}")
        if scan.removed_staging:
            context.log.warning(f"removed abandoned staging entries: {', '.join(scan.removed_staging)}")
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
                reason += f"; {len(scan.waiting)} waiting to be seen unchanged (still being copied?)"
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
