"""`offline_cache`: the offline proof (mt_assets.offline) as an asset, with its blocking check.

Downstream of every file and bundle asset: when any of them is rebuilt, the proof is rerun
(eager), and it is built the first time (on_missing). The check `offline_verified` is evaluated
in the same step from the same proof, so it cannot disagree with the recorded metadata; it
blocks what comes after (renders) on a network attempt, a file read outside the volume, an
undeclared file, a missing file or a unit that did not load, in any load path proved.

Load paths (`dtype`, default auto): float32 always, and bfloat16 too when the volume holds a bf16
repack, so the GPU worker's path through the repacks is proved as well; both must pass. The
metadata keys are the CLI's JSON keys; for a key the JSON has per path, the metadata holds all
paths: `dtypes` (per path: ok, repack per unit, files touched, seconds), `components` (one table,
a row per path and unit), the violations of every path (prefixed with the path's dtype), and
`total_seconds` / `wall_seconds` summed over the paths (the proof's cost). `isolation` and
`isolation_reason` say how the network was cut (mt_assets.offline.isolation).

The data version (a hash of the model files' sha256s) and MODEL_VERSIONS do not depend on the
paths proved: the renders' guard compares them (defs/renders.py).

Run config (the test seam of mt_assets.offline.overrides, a unit filter, the paths and the cut);
empty in production:

    ops: {offline_cache: {config: {only: [t5-tokenizer], overrides: {t5-tokenizer: google/umt5-xxl}}}}
    ops: {offline_cache: {config: {dtype: all, isolation: audit-hooks}}}
"""

import hashlib
from typing import Any

import dagster as dg
from pydantic import Field

from mt_assets.defs.keys import bundle_key, file_key
from mt_assets.defs.resources import VolumeResource
from mt_assets.manifest import Manifest
from mt_assets.offline import OfflineProof, OfflineReport, provable_units, prove_offline
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
    # Plain strings (Dagster config has no Literal); the core refuses any other value, naming it.
    dtype: str = Field(
        default="auto",
        description="Load paths to prove: auto (float32, and bfloat16 too when the volume holds a repack), "
        "float32, bfloat16 or all.",
    )
    isolation: str | None = Field(
        default=None,
        description="How the network is cut: auto, netns or audit-hooks "
        "(default: $MT_OFFLINE_ISOLATION, else auto: netns where available).",
    )


def units_markdown(proof: OfflineProof) -> str:
    lines = [
        "| dtype | unit | status | repack | seconds | bytes | files |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for report in proof.reports:
        for u in report.units:
            seconds = f"{u.seconds:.3f}" if u.seconds is not None else "-"
            size = human_bytes(u.bytes) if u.bytes is not None else "-"
            lines.append(
                f"| {report.dtype} | {u.unit} | {u.status} | {u.repack or '-'} | {seconds} | {size} | {len(u.files)} |"
            )
    return "\n".join(lines)


def violations_markdown(proof: OfflineProof) -> str:
    lines: list[str] = []
    for report in proof.reports:
        found = [
            f"network attempt `{a.where}` by `{a.event}` in unit {a.unit}: {a.detail}"
            for a in report.network_attempts
        ]
        found += [f"outside the volume `{t.path}` ({t.via}, unit {t.unit})" for t in report.outside_volume]
        found += [f"undeclared `{t.path}` (unit {t.unit})" for t in report.undeclared]
        found += [f"missing `{target}`" for target in report.missing]
        found += [f"failed {u.unit}: {u.error}" for u in report.units if u.error]
        found += [f"error: {e}" for e in report.errors]
        lines += [f"- {report.dtype}: {line}" for line in found]
    return "\n".join(lines) or "none"


def path_summary(report: OfflineReport) -> dict[str, Any]:
    """One load path's result, for `dtypes`: what a reader checks first."""
    return {
        "ok": report.ok,
        "repacks": report.repacks,  # unit -> the repack read, or None: the originals
        "files_touched": report.files_touched(),
        "total_seconds": round(report.total_seconds, 3),
        "wall_seconds": round(report.wall_seconds, 3),
    }


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def report_metadata(proof: OfflineProof) -> dict[str, Any]:
    """Metadata keys are the CLI's JSON keys (see the module docstring for the keys per path)."""
    paths = {r.dtype: r.to_json() for r in proof.reports}
    return {
        "ok": proof.ok,
        "isolation": proof.isolation.mode,
        "isolation_reason": proof.isolation.reason,  # None (null) when the namespace was used
        "dtype": proof.dtype,
        "dtypes": dg.MetadataValue.json({r.dtype: path_summary(r) for r in proof.reports}),
        "dtypes_skipped": dg.MetadataValue.json(proof.skipped),
        "components": dg.MetadataValue.md(units_markdown(proof)),
        "violations": dg.MetadataValue.md(violations_markdown(proof)),
        "network_attempts": dg.MetadataValue.json(
            [
                {"dtype": dtype, **{k: v for k, v in a.items() if k != "stack"}}
                for dtype, data in paths.items()
                for a in data["network_attempts"]
            ]
        ),
        "outside_volume": dg.MetadataValue.json(
            _unique([p for d in paths.values() for p in d["outside_volume"]])
        ),
        "undeclared": dg.MetadataValue.json(_unique([p for d in paths.values() for p in d["undeclared"]])),
        "missing": dg.MetadataValue.json(_unique([p for d in paths.values() for p in d["missing"]])),
        "files_touched": dg.MetadataValue.json({dtype: d["files_touched"] for dtype, d in paths.items()}),
        "total_seconds": round(sum(r.total_seconds for r in proof.reports), 3),
        "wall_seconds": round(sum(r.wall_seconds for r in proof.reports), 3),
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
                description=(
                    "The worker's load, in every path proved (float32; bfloat16 with the repacks), touched "
                    "only declared files on the volume; no network attempt."
                ),
            )
        ],
        description=(
            "The worker's load (load_pipeline_components) in a fresh interpreter with the network cut "
            "(a fresh network namespace where available) and every opened file traced, for float32 and, "
            "when the volume holds bf16 repacks, bfloat16: per-unit load time, the repack read, and what "
            "it touched outside the volume."
        ),
    )
    def offline_cache(
        context: dg.AssetExecutionContext, config: OfflineCacheConfig, volume: VolumeResource
    ) -> dg.MaterializeResult:
        proof = prove_offline(
            volume.open(),
            manifest,
            dtype=config.dtype,
            isolation=config.isolation,
            only=config.only or units,
            overrides=config.overrides,
        )
        for report in proof.reports:
            loaded = sum(u.status == "loaded" for u in report.units)
            repacks = sorted({r for r in report.repacks.values() if r})
            context.log.info(
                f"offline load ({report.dtype}{', repacks ' + ' '.join(repacks) if repacks else ''}): "
                f"{loaded}/{len(report.units)} units in {report.total_seconds:.2f}s; "
                f"{len(report.network_attempts)} network attempts, {len(report.outside_volume)} files outside "
                f"the volume, {len(report.undeclared)} undeclared, {len(report.missing)} missing"
            )
        reason = f" ({proof.isolation.reason})" if proof.isolation.reason else ""
        context.log.info(f"network cut by {proof.isolation.mode}{reason}")
        metadata = report_metadata(proof)
        versions = models_data_versions(context.instance, manifest)
        return dg.MaterializeResult(
            metadata={**metadata, MODEL_VERSIONS: dg.MetadataValue.json(versions)},
            data_version=models_data_version(versions),
            check_results=[
                dg.AssetCheckResult(
                    check_name=CHECK_NAME,
                    passed=proof.ok,
                    severity=dg.AssetCheckSeverity.ERROR,
                    metadata={
                        k: metadata[k]
                        for k in ("violations", "isolation", "dtypes", "total_seconds", "files_touched")
                    },
                )
            ],
        )

    return offline_cache
