"""The nightly integrity pass: every file check, re-hashing every byte (the `--full` path)."""

from __future__ import annotations

import dagster as dg

from mt_assets.defs.keys import file_key
from mt_assets.manifest import Manifest

FULL_PASS_CONFIG = {"ops": {"model_file_checks": {"config": {"full": True}}}}


def build_integrity_job(manifest: Manifest) -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        "integrity_pass",
        selection=dg.AssetSelection.checks_for_assets(*[file_key(f) for f in manifest.files]),
        config=FULL_PASS_CONFIG,
        description="Re-hash every model file on the volume; a mismatch fails its check.",
    )


def build_integrity_schedule(
    job: dg.UnresolvedAssetJobDefinition, cron: str = "0 3 * * *"
) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="nightly_integrity",
        job=job,
        cron_schedule=cron,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Nightly full re-hash of every model file.",
    )
