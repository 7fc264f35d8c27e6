"""The code location of the control-plane tests: mt_assets' own Definitions from the environment
(MT_PROFILE, MT_VOLUME, MT_SOURCE, MT_RENDER_DEVICE), with the inbox and drift sensors ticking every
SENSOR_SECONDS instead of every 30 and 60 s. Everything else is what `-m mt_assets` loads."""

import dagster as dg

from mt_assets.defs.definitions import build_definitions, manifest_from_env
from mt_assets.defs.drift_sensor import build_drift_sensor
from mt_assets.defs.render_inbox import build_inbox_sensor

SENSOR_SECONDS = 2


def fast_sensors() -> dg.Definitions:
    """One Definitions at module scope (Dagster refuses two): the production one, two sensors swapped."""
    manifest = manifest_from_env()
    production = build_definitions(manifest)
    fast = {
        "render_inbox": build_inbox_sensor(minimum_interval_seconds=SENSOR_SECONDS),
        "volume_drift": build_drift_sensor(manifest, minimum_interval_seconds=SENSOR_SECONDS),
    }
    return dg.Definitions(
        assets=production.assets,
        asset_checks=production.asset_checks,
        jobs=production.jobs,
        schedules=production.schedules,
        sensors=[fast.get(s.name, s) for s in production.sensors or []],
        resources=production.resources,
    )


defs = fast_sensors()
