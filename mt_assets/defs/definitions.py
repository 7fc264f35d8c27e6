"""The Definitions: everything above, for one manifest, with resources from the environment.

MT_PROFILE / MT_MANIFEST   which manifest (a shipped profile name, or a YAML file)
MT_VOLUME, MT_SOURCE       the volume folder and where missing files come from
MT_RENDER_BACKEND          local | runpod: where renders run, and so their pool (gpu | runpod);
                           runpod reads MT_RUNPOD_* and MT_OUTPUT_S3 (defs/renders_runpod.py, RunPodResource)
"""

from __future__ import annotations

import os

import dagster as dg

from mt_assets import config
from mt_assets.config import Settings
from mt_assets.defs.benchmark_report import build_benchmark_report_asset
from mt_assets.defs.bundle_assets import build_bundle_assets
from mt_assets.defs.drift_sensor import build_drift_sensor
from mt_assets.defs.integrity import build_integrity_job, build_integrity_schedule
from mt_assets.defs.keys import check_unique_keys
from mt_assets.defs.model_files import build_file_checks, build_model_files_asset
from mt_assets.defs.offline_cache import build_offline_cache_assets
from mt_assets.defs.render_inbox import build_inbox_sensor, build_nightly_renders_schedule
from mt_assets.defs.renders import RenderResource, build_renders_asset
from mt_assets.defs.renders_runpod import RunPodResource, build_runpod_renders_asset
from mt_assets.defs.repacks import build_repack_defs
from mt_assets.defs.resources import SourceResource, VolumeResource
from mt_assets.manifest import Manifest, load_manifest, load_profile


def manifest_from_env(settings: Settings | None = None) -> Manifest:
    settings = settings or Settings.from_env()
    path = config.MANIFEST.read()
    return load_manifest(path) if path else load_profile(settings.profile)


def build_definitions(
    manifest: Manifest, settings: Settings | None = None, *, resources: dict[str, object] | None = None
) -> dg.Definitions:
    """`resources` replaces the ones built from `settings` (tests: a loopback source)."""
    settings = settings or Settings.from_env()
    check_unique_keys(manifest.files)
    integrity_job = build_integrity_job(manifest)
    offline = build_offline_cache_assets(manifest)  # with its check `offline_verified`
    # Renders need the offline proof upstream: a manifest without the worker's load units has none.
    backend = settings.render_backend
    choices = config.RENDER_BACKEND.choices  # Settings built in code skip the environment's check
    if backend not in choices:
        raise ValueError(f"MT_RENDER_BACKEND: expected one of {', '.join(choices)}, got {backend!r}")
    build = build_runpod_renders_asset if backend == "runpod" else build_renders_asset
    renders = [build(manifest)] if offline else []
    # The endpoint's settings from the environment (tests pass their own "runpod" in `resources`).
    runpod = {"runpod": RunPodResource.from_env()} if renders and backend == "runpod" else {}
    return dg.Definitions(
        assets=[
            build_model_files_asset(manifest),
            *build_bundle_assets(manifest),
            *offline,
            *renders,
            *([build_benchmark_report_asset(manifest)] if renders else []),  # needs offline_cache
            *build_repack_defs(manifest),
        ],
        asset_checks=[build_file_checks(manifest)],
        jobs=[integrity_job],
        schedules=[
            build_integrity_schedule(integrity_job),
            *([build_nightly_renders_schedule()] if renders else []),
        ],
        sensors=[
            build_drift_sensor(manifest),
            *([build_inbox_sensor(manifest=manifest)] if renders else []),
            dg.AutomationConditionSensorDefinition(
                "volume_automation",
                target=dg.AssetSelection.groups("bundles", "offline", "repacks"),
                default_status=dg.DefaultSensorStatus.RUNNING,
            ),
        ],
        resources={"render": RenderResource(), **runpod, **resources}
        if resources
        else {
            "volume": VolumeResource(path=os.path.abspath(settings.volume)),
            "source": SourceResource(spec=settings.source),
            "render": RenderResource(
                device=config.RENDER_DEVICE.read() or "cpu", persistent_params=config.PERSISTENT_PARAMS.read()
            ),
            **runpod,
        },
    )


def model_assets(defs: dg.Definitions) -> list[dg.AssetKey]:
    """What puts the models on the volume and proves them: every asset but the renders (one run per
    job) and the benchmark report (on demand). `make demo` and the tests materialize these first."""
    from mt_assets.defs.benchmark_report import ASSET_KEY as REPORT_KEY
    from mt_assets.defs.renders import RENDERS_KEY

    return [k for k in defs.resolve_asset_graph().get_all_asset_keys() if k not in (RENDERS_KEY, REPORT_KEY)]
