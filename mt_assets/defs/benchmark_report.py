"""`benchmark_report`: what the volume costs at cold start, as an asset (mt_assets.bench does the work).

Downstream of `offline_cache` and `renders`; materialized on demand. Each materialization runs
`runs` fresh-process cold loads of the volume (mt_assets.bench.cold_start), reads the volume's
storage per component, the provisioning throughput from each model file asset's latest
materialization (metadata `bytes`, `seconds`, `mb_per_s`) and the render timings from the renders'
materializations (`seconds`, `seconds_per_step`, `duration`), and writes
<volume>/.mt/reports/benchmark-<UTC time>.{md,json,png} (mt_assets.bench.report). The markdown is
the asset's metadata.

Run config: ops: {benchmark_report: {config: {runs: 3, strategy: parallel}}}
"""

import os
import platform
from datetime import UTC, datetime
from typing import Any

import dagster as dg
from pydantic import Field

from mt_assets.defs.keys import file_key
from mt_assets.defs.offline_cache import ASSET_KEY as OFFLINE_CACHE_KEY
from mt_assets.defs.renders import RENDERS_KEY
from mt_assets.defs.resources import VolumeResource
from mt_assets.manifest import Manifest

ASSET_KEY = dg.AssetKey("benchmark_report")
RENDER_RECORDS = 1000  # the newest render materializations read for the report


class BenchmarkReportConfig(dg.Config):
    runs: int = Field(default=3, ge=1, description="Fresh-process cold loads of the volume.")
    strategy: str = Field(
        default="", description="Load strategy (default: $MT_LOAD_STRATEGY, else the default)."
    )


def _value(metadata: dict[str, Any], key: str) -> Any:
    entry = metadata.get(key)
    return getattr(entry, "value", entry)


def provisioning_records(instance: dg.DagsterInstance, manifest: Manifest) -> list[dict[str, Any]]:
    keys = {file_key(f): f for f in manifest.files}
    records = []
    for key, event in instance.get_latest_materialization_events(list(keys)).items():
        m = event.asset_materialization if event is not None else None
        if m is None or "bytes" not in m.metadata:
            continue
        f = keys[key]
        records.append({
            "component": f.component, "path": f.path, "bytes": int(_value(m.metadata, "bytes")),
            "seconds": float(_value(m.metadata, "seconds")), "mb_per_s": float(_value(m.metadata, "mb_per_s")),
        })  # fmt: skip
    return records


def render_records(instance: dg.DagsterInstance) -> list[dict[str, Any]]:
    """The newest materialization of each render partition."""
    latest: dict[str, dict[str, Any]] = {}
    for record in instance.fetch_materializations(RENDERS_KEY, limit=RENDER_RECORDS).records:
        m = record.asset_materialization
        if m is None or m.partition in latest or "seconds_per_step" not in m.metadata:
            continue
        latest[m.partition or ""] = {
            "partition": m.partition, "seconds": float(_value(m.metadata, "seconds")),
            "seconds_per_step": float(_value(m.metadata, "seconds_per_step")),
            "duration": float(_value(m.metadata, "duration")),
        }  # fmt: skip
    return list(latest.values())


def build_benchmark_report_asset(manifest: Manifest) -> dg.AssetsDefinition:
    @dg.asset(
        key=ASSET_KEY,
        deps=[OFFLINE_CACHE_KEY, RENDERS_KEY],
        group_name="bench",
        kinds={"python"},
        description=(
            "Cold start per load unit (p50/p95, fresh processes, evicted pages) next to the raw-read limit, "
            "storage per component, provisioning throughput and render timings; "
            "<volume>/.mt/reports/benchmark-<UTC time>.{md,json,png}."
        ),
    )
    def benchmark_report(
        context: dg.AssetExecutionContext, config: BenchmarkReportConfig, volume: VolumeResource
    ) -> dg.MaterializeResult:
        from mt_assets.bench import measure
        from mt_assets.bench.report import (
            REPORTS_DIR,
            build_report,
            capacity_bytes,
            previous_report,
            provisioning_frame,
            renders_frame,
            storage_frame,
            write_report,
        )
        from mt_assets.models.pipeline import loadable_units
        from mt_assets.models.reading import check_strategy, strategy_from_env

        vol = volume.open()
        strategy = check_strategy(config.strategy) if config.strategy else strategy_from_env()
        units = loadable_units(manifest)
        context.log.info(f"cold loads: {config.runs} x {strategy}, units {', '.join(units)}")
        cold = measure(vol, manifest, strategies=[strategy], runs=config.runs, units=units)
        created = datetime.now(UTC)
        folder = vol.root / REPORTS_DIR
        conditions = {
            "profile": manifest.profile, "strategy": strategy, "runs": config.runs, "dtype": "bfloat16",
            "device": "cpu", "cpus": os.cpu_count(), "machine": platform.machine(),
            "load_average": round(os.getloadavg()[0], 2),
        }  # fmt: skip
        report = build_report(
            cold,
            storage_frame(vol, manifest),
            capacity_bytes(vol),
            provisioning_frame(provisioning_records(context.instance, manifest)),
            renders_frame(render_records(context.instance)),
            conditions,
            previous_report(folder),
            created,
        )
        paths = write_report(folder, report, created)
        total = report.doc["units"]["total"]
        return dg.MaterializeResult(
            metadata={
                "report": dg.MetadataValue.md(report.markdown),
                "json": dg.MetadataValue.path(str(paths["json"])),
                "png": dg.MetadataValue.path(str(paths["png"])),
                "p50_seconds": total["p50"],
                "p95_seconds": total["p95"],
                "cold_start_ratio": report.doc["cold_start_ratio"],
                "regressions": len(report.doc["regressions"]),
            }
        )

    return benchmark_report
