"""The volume drift sensor: a file changed, was truncated or vanished since it was materialized.

Each tick stats every manifest file (no hashing) and compares (size, mtime_ns, inode, ctime_ns) with
what the file's latest materialization recorded. A file that differs gets a run that
re-provisions exactly the drifted files; bundles downstream follow by automation.

Cursor: JSON {target: drift last requested}, so a drift is requested once, not on every tick
while its run is queued; an entry is dropped once the file is as recorded again, and a new
change to the same file (or the same vanishing after a repair) is a new request.
"""

import json

import dagster as dg

from mt_assets.defs.keys import file_key
from mt_assets.defs.resources import VolumeResource
from mt_assets.manifest import Manifest

STAT_KEYS = ("size", "mtime_ns", "inode", "ctime_ns")
_ATTR = {"size": "size", "mtime_ns": "mtime_ns", "inode": "ino", "ctime_ns": "ctime_ns"}


def build_drift_sensor(manifest: Manifest, minimum_interval_seconds: int = 60) -> dg.SensorDefinition:
    files = manifest.files
    keys = [file_key(f) for f in files]

    @dg.sensor(
        name="volume_drift",
        minimum_interval_seconds=minimum_interval_seconds,
        asset_selection=keys,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Stat every model file; re-provision those that changed, shrank or vanished since materialized.",
    )
    def volume_drift(context: dg.SensorEvaluationContext, volume: VolumeResource) -> dg.SensorResult:
        vol = volume.open()
        latest = context.instance.get_latest_materialization_events(keys)
        requested: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        drifted: dict[str, str] = {}
        for f, key in zip(files, keys, strict=True):
            event = latest.get(key)
            if event is None or event.asset_materialization is None:
                continue  # never materialized: not drift, just missing
            md = event.asset_materialization.metadata
            if "mtime_ns" not in md:
                continue
            recorded = ":".join(str(md[k].value) for k in STAT_KEYS if k in md)
            state = vol.state(f.target)
            now = (
                ":".join(str(getattr(state.st, f"st_{_ATTR[k]}")) for k in STAT_KEYS if k in md)
                if (state.present and state.st)
                else "gone"
            )
            if now == recorded:
                requested.pop(f.target, None)  # as recorded (again): a later drift is a new one
                continue
            # The materialization's run id makes each drift episode its own request: the same
            # file vanishing again after a repair is asked for again.
            drift = f"{event.run_id[:8]}:{now}"
            if requested.get(f.target) != drift:
                drifted[f.target] = drift
        if not drifted:
            return dg.SensorResult(
                skip_reason="no drift: every materialized file is as recorded",
                cursor=json.dumps(requested, sort_keys=True),
            )
        requested.update(drifted)
        targets = sorted(drifted)
        run_key = "drift:" + ",".join(f"{t}={drifted[t]}" for t in targets)
        context.log.info(f"drift in {len(targets)} files: {', '.join(targets)}")
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=run_key,
                    asset_selection=[file_key(f) for f in files if f.target in drifted],
                    tags={"mt_assets/trigger": "volume_drift"},
                )
            ],
            cursor=json.dumps(requested, sort_keys=True),
        )

    return volume_drift
