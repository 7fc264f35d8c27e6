"""`offline_cache`: the offline proof (mt_assets.offline) as an asset, with its blocking check.

Downstream of every file and bundle asset: when any of them is rebuilt, the proof is rerun
(eager), and it is built the first time (on_missing). The check `offline_verified` is evaluated
in the same step from the same report, so it cannot disagree with the recorded metadata; it
blocks what comes after (renders) on a network attempt, a file read outside the volume, an
undeclared file, a missing file or a unit that did not load.

Run config (the test seam of mt_assets.offline.overrides, plus a unit filter); empty in production:

    ops: {offline_cache: {config: {only: [t5-tokenizer], overrides: {t5-tokenizer: google/umt5-xxl}}}}
"""

import hashlib
from typing import Any

import dagster as dg
from pydantic import Field

from mt_assets.defs.keys import bundle_key, file_key
from mt_assets.defs.resources import VolumeResource
from mt_assets.manifest import Manifest
from mt_assets.offline import OfflineReport, provable_units, verify_offline
from mt_assets.units import human_bytes

ASSET_KEY = dg.AssetKey("offline_cache")
CHECK_NAME = "offline_verified"
# Metadata: {model file asset key: its data version (sha256)} as proved; the renders' guard compares.
MODEL_VERSIONS = "model_data_versions"
AUTOMATION = dg.AutomationCondition.eager() | dg.AutomationCondition.on_missing()


class OfflineCacheConfig(dg.Config):
    only: list[str] = Field(
        default_factory=list, description="Load units to prove (default: the whole load)."
    )
    overrides: dict[str, str] = Field(
        default_factory=dict,
        description="Testing the verifier only: UNIT -> LOCATION loaded naively instead of the volume.",
    )


def units_markdown(report: OfflineReport) -> str:
    lines = ["| unit | status | seconds | bytes | files |", "|---|---|---:|---:|---:|"]
    for u in report.units:
        seconds = f"{u.seconds:.3f}" if u.seconds is not None else "-"
        size = human_bytes(u.bytes) if u.bytes is not None else "-"
        lines.append(f"| {u.unit} | {u.status} | {seconds} | {size} | {len(u.files)} |")
    return "\n".join(lines)


def violations_markdown(report: OfflineReport) -> str:
    lines = [
        f"- network attempt `{a.where}` by `{a.event}` in unit {a.unit}: {a.detail}"
        for a in report.network_attempts
    ]
    lines += [f"- outside the volume `{t.path}` ({t.via}, unit {t.unit})" for t in report.outside_volume]
    lines += [f"- undeclared `{t.path}` (unit {t.unit})" for t in report.undeclared]
    lines += [f"- missing `{target}`" for target in report.missing]
    lines += [f"- failed {u.unit}: {u.error}" for u in report.units if u.error]
    lines += [f"- error: {e}" for e in report.errors]
    return "\n".join(lines) or "none"


def report_metadata(report: OfflineReport) -> dict[str, Any]:
    """Metadata keys are the CLI's JSON keys."""
    data = report.to_json()
    return {
        "ok": report.ok,
        "components": dg.MetadataValue.md(units_markdown(report)),
        "violations": dg.MetadataValue.md(violations_markdown(report)),
        "network_attempts": dg.MetadataValue.json(
            [{k: v for k, v in a.items() if k != "stack"} for a in data["network_attempts"]]
        ),
        "outside_volume": dg.MetadataValue.json(data["outside_volume"]),
        "undeclared": dg.MetadataValue.json(data["undeclared"]),
        "missing": dg.MetadataValue.json(data["missing"]),
        "files_touched": dg.MetadataValue.json(data["files_touched"]),
        "total_seconds": data["total_seconds"],
        "wall_seconds": data["wall_seconds"],
    }


def models_data_versions(instance: dg.DagsterInstance, manifest: Manifest) -> dict[str, str]:
    """Each model file's sha256 as its latest materialization recorded it (its data version), by asset key."""
    keys = [file_key(f) for f in manifest.files]
    versions: dict[str, str] = {}
    for key, event in instance.get_latest_materialization_events(keys).items():
        materialization = event.asset_materialization if event is not None else None
        if materialization is not None and "sha256" in materialization.metadata:
            versions[key.to_user_string()] = str(materialization.metadata["sha256"].value)
    return versions


def models_data_version(versions: dict[str, str]) -> dg.DataVersion:
    """One version for the set: changes exactly when some model file's sha256 does."""
    text = "\n".join(f"{k}={v}" for k, v in sorted(versions.items()))
    return dg.DataVersion(hashlib.sha256(text.encode()).hexdigest()[:32])


def build_offline_cache_assets(manifest: Manifest) -> list[dg.AssetsDefinition]:
    """The asset, or none for a manifest that declares none of the worker's load units."""
    units = provable_units(manifest)
    return [build_offline_cache_asset(manifest, units)] if units else []


def build_offline_cache_asset(manifest: Manifest, units: list[str]) -> dg.AssetsDefinition:
    @dg.asset(
        key=ASSET_KEY,
        deps=[*(file_key(f) for f in manifest.files), *(bundle_key(b) for b in manifest.bundles)],
        group_name="offline",
        automation_condition=AUTOMATION,
        kinds={"python"},
        check_specs=[
            dg.AssetCheckSpec(
                CHECK_NAME,
                asset=ASSET_KEY,
                blocking=True,
                description="The worker's load touched only declared files on the volume; no network attempt.",
            )
        ],
        description=(
            "The worker's load (load_pipeline_components) in a fresh interpreter with the network cut "
            "and every opened file traced: per-unit load time, and what it touched outside the volume."
        ),
    )
    def offline_cache(
        context: dg.AssetExecutionContext, config: OfflineCacheConfig, volume: VolumeResource
    ) -> dg.MaterializeResult:
        report = verify_offline(
            volume.open(), manifest, only=config.only or units, overrides=config.overrides
        )
        loaded = sum(u.status == "loaded" for u in report.units)
        context.log.info(
            f"offline load: {loaded}/{len(report.units)} units in {report.total_seconds:.2f}s; "
            f"{len(report.network_attempts)} network attempts, {len(report.outside_volume)} files outside the "
            f"volume, {len(report.undeclared)} undeclared, {len(report.missing)} missing"
        )
        metadata = report_metadata(report)
        versions = models_data_versions(context.instance, manifest)
        return dg.MaterializeResult(
            metadata={**metadata, MODEL_VERSIONS: dg.MetadataValue.json(versions)},
            data_version=models_data_version(versions),
            check_results=[
                dg.AssetCheckResult(
                    check_name=CHECK_NAME,
                    passed=report.ok,
                    severity=dg.AssetCheckSeverity.ERROR,
                    metadata={k: metadata[k] for k in ("violations", "total_seconds", "files_touched")},
                )
            ],
        )

    return offline_cache
