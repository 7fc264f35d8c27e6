"""The benchmark report: cold starts, storage, provisioning and render figures in three files.

Written to <volume>/.mt/reports/benchmark-<UTC time>.{md,json,png} (each staged beside its final
name, fsynced and renamed; the JSON last, so a report whose JSON exists is whole):

    .md     the tables (pandas, as markdown): the `benchmark_report` asset's metadata in the UI
    .json   {"created", "conditions", "units": {unit: {runs, median, min, max, p50, p95, bytes,
            gb_per_s, raw_read_seconds}}, "raw_read": [...], "storage": {component: {...}},
            "capacity", "provisioning": {component: {...}}, "renders": {...} | null,
            "previous": name | null, "regressions": [{metric, previous, current, ratio}]}
    .png    load time per unit (p50 and p95 bars, the raw-read limit of the unit's bytes as a
            line) and storage per component

`units` holds the load units of mt_assets.models.pipeline (`transformer` is wan-dit + multitalk)
and `total`, their sum per run. A regression is a p50 seconds (per unit or total) or a render's
seconds per step more than REGRESSION (20%) above the previous report's, and by more than
MIN_DELTA_S (0.05 s): on the tiny profile a unit loads in tens of milliseconds, where 20% is jitter.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from mt_assets.bench.cold_start import ColdStart
from mt_assets.manifest import Manifest
from mt_assets.volume import LocalVolume

REGRESSION = 0.20
MIN_DELTA_S = 0.05  # a slowdown smaller than this is scheduling jitter, not a regression (tiny loads)
REPORTS_DIR = Path(".mt") / "reports"


@dataclass(frozen=True)
class Report:
    markdown: str
    doc: dict[str, Any]
    png: bytes


def capacity_bytes(volume: LocalVolume) -> int:
    """The volume's size: statvfs, or its configured capacity when smaller."""
    vfs = os.statvfs(volume.root)
    size = vfs.f_blocks * vfs.f_frsize
    return min(size, volume.capacity) if volume.capacity is not None else size


def storage_frame(volume: LocalVolume, manifest: Manifest) -> pd.DataFrame:
    """Per component: files present / declared, bytes on the volume, share of the volume's capacity;
    then each repack on the volume (repacks/<name>)."""
    capacity = capacity_bytes(volume)
    rows = []
    for component in manifest.components:
        sizes = [
            volume.path(f.target).stat().st_size for f in component.files if volume.path(f.target).exists()
        ]
        rows.append({
            "component": component.name, "files": len(sizes), "declared": len(component.files),
            "bytes": sum(sizes), "share_of_capacity": sum(sizes) / capacity if capacity else float("nan"),
        })  # fmt: skip
    for repack in sorted(p for p in (volume.root / "repacks").glob("*") if p.is_dir()):
        sizes = [p.stat().st_size for p in repack.rglob("*") if p.is_file()]
        rows.append({
            "component": f"repacks/{repack.name}", "files": len(sizes), "declared": len(sizes),
            "bytes": sum(sizes), "share_of_capacity": sum(sizes) / capacity if capacity else float("nan"),
        })  # fmt: skip
    return pd.DataFrame(rows)


def provisioning_frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Per component, from the file assets' latest materializations ({component, path, bytes, seconds,
    mb_per_s, outcome}): files, files transferred, bytes, seconds, mb_per_s (bytes / seconds of the
    transferred ones)."""
    columns = ["component", "files", "transferred", "bytes", "seconds", "mb_per_s"]
    if not records:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(records)
    frame["transferred"] = frame["bytes"] > 0
    grouped = frame.groupby("component", sort=False)
    out = grouped.agg(files=("path", "count"), transferred=("transferred", "sum"), bytes=("bytes", "sum"),
                      seconds=("seconds", "sum")).reset_index()  # fmt: skip
    out["mb_per_s"] = [
        b / s / 1e6 if s > 0 else float("nan") for b, s in zip(out["bytes"], out["seconds"], strict=True)
    ]
    return out[columns]


def renders_frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Per render (partition): seconds, seconds_per_step, duration (of the video), seconds per output second."""
    columns = ["partition", "seconds", "seconds_per_step", "duration", "seconds_per_output_second"]
    if not records:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(records)
    frame["seconds_per_output_second"] = frame["seconds"] / frame["duration"]
    return frame[columns]


def previous_report(folder: Path) -> tuple[str, dict[str, Any]] | None:
    """The newest benchmark-*.json in the folder, by name (UTC time sorts), or None."""
    docs = sorted(folder.glob("benchmark-*.json"))
    return (docs[-1].name, json.loads(docs[-1].read_text())) if docs else None


def regressions(current: dict[str, Any], previous: dict[str, Any] | None) -> list[dict[str, Any]]:
    """p50 seconds per unit (and total), and the median render seconds per step, over 1 + REGRESSION x the previous."""
    if previous is None:
        return []
    pairs = [
        (f"units.{unit}.p50", m.get("p50"), previous.get("units", {}).get(unit, {}).get("p50"))
        for unit, m in current["units"].items()
    ]
    now, before = (current.get("renders") or {}), (previous.get("renders") or {})
    pairs.append(("renders.seconds_per_step", now.get("seconds_per_step"), before.get("seconds_per_step")))
    found = []
    for metric, value, old in pairs:
        if value is not None and old and value > old * (1 + REGRESSION) and value - old > MIN_DELTA_S:
            found.append({"metric": metric, "previous": old, "current": value, "ratio": value / old})
    return found


def plot(loads: pd.DataFrame, storage: pd.DataFrame, limit_gb_per_s: float) -> bytes:
    """PNG: load seconds per unit (p50, p95 bars; the raw-read limit as a line) and storage per component."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    units = loads[loads["unit"] != "total"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    x = range(len(units))
    left.bar([i - 0.2 for i in x], units["p50"], width=0.4, label="p50")
    left.bar([i + 0.2 for i in x], units["p95"], width=0.4, label="p95")
    raw = units["bytes"] / (limit_gb_per_s * 1e9)
    left.plot(list(x), raw, color="black", marker="_", markersize=28, markeredgewidth=2, linestyle="none",
              label="raw-read limit")  # fmt: skip
    left.set_xticks(list(x), units["unit"], rotation=30, ha="right")
    left.set_ylabel("seconds (cold, evicted)")
    left.set_title("load time per unit")
    left.legend()
    right.barh(storage["component"], storage["bytes"] / 1e6)
    right.set_xlabel("MB on the volume")
    right.set_title("storage per component")
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=100)
    plt.close(fig)
    return out.getvalue()


def _markdown_table(frame: pd.DataFrame, floatfmt: str = ".3f") -> str:
    return frame.to_markdown(index=False, floatfmt=floatfmt) if not frame.empty else "none"


def build_report(
    cold: ColdStart,
    storage: pd.DataFrame,
    capacity: int,
    provisioning: pd.DataFrame,
    renders: pd.DataFrame,
    conditions: dict[str, Any],
    previous: tuple[str, dict[str, Any]] | None,
    created: datetime,
) -> Report:
    summary = cold.summary.copy()
    limit_gb_per_s = float(cold.raw["gb_per_s"].max())
    summary["raw_read_seconds"] = summary["bytes"] / (limit_gb_per_s * 1e9)
    units = {
        row["unit"]: {
            k: row[k]
            for k in ("runs", "median", "min", "max", "p50", "p95", "bytes", "gb_per_s", "raw_read_seconds")
        }
        for row in summary.to_dict(orient="records")
    }
    render_doc = None
    if not renders.empty:
        render_doc = {
            "renders": len(renders),
            "seconds_per_step": float(renders["seconds_per_step"].median()),
            "seconds_per_output_second": float(renders["seconds_per_output_second"].median()),
            "by_partition": renders.to_dict(orient="records"),
        }
    doc: dict[str, Any] = {
        "created": created.isoformat(),
        "conditions": conditions,
        "units": units,
        "raw_read": cold.raw.to_dict(orient="records"),
        "cold_start_ratio": cold.cold_start_ratio(),
        "peak_rss_ratio": cold.peak_rss_ratio(),
        "capacity": capacity,
        "storage": {r.pop("component"): r for r in storage.to_dict(orient="records")},
        "provisioning": {r.pop("component"): r for r in provisioning.to_dict(orient="records")},
        "renders": render_doc,
        "previous": previous[0] if previous else None,
    }
    doc["regressions"] = regressions(doc, previous[1] if previous else None)
    doc = json.loads(json.dumps(doc, default=_plain))  # numpy scalars -> plain JSON

    table = summary[["unit", "runs", "p50", "p95", "min", "max", "bytes", "gb_per_s", "raw_read_seconds"]]
    lines = [
        f"# Benchmark report {created:%Y-%m-%d %H:%M:%S} UTC",
        "",
        "Conditions: " + ", ".join(f"{k} {v}" for k, v in conditions.items()),
        "",
        f"## Cold load per unit (seconds; evicted, fresh process, {conditions.get('strategy')})",
        "",
        _markdown_table(table),
        "",
        f"cold start / raw-read limit: {doc['cold_start_ratio']:.2f}; raw read: "
        + "; ".join(f"{r['mode']} {r['seconds']:.2f} s ({r['gb_per_s']:.2f} GB/s)" for r in doc["raw_read"]),
        "",
        f"## Storage per component (volume capacity {capacity / 1e9:.1f} GB)",
        "",
        _markdown_table(
            storage.assign(share_of_capacity=[f"{x:.2g}%" for x in storage["share_of_capacity"] * 100])
        ),
        "",
        "## Provisioning (latest materialization of each file)",
        "",
        _markdown_table(provisioning, ".2f") if not provisioning.empty else "no provisioning recorded",
        "",
        "## Renders",
        "",
        _markdown_table(renders) if not renders.empty else "no renders yet",
        "",
        "## Regressions (over 20% slower than "
        + (f"`{previous[0]}`)" if previous else "the previous report)"),
        "",
        "\n".join(
            f"- {r['metric']}: {r['previous']:.3f} -> {r['current']:.3f} ({r['ratio']:.2f}x)"
            for r in doc["regressions"]
        )
        or ("none" if previous else "no previous report"),
    ]
    return Report("\n".join(lines) + "\n", doc, plot(summary, storage, limit_gb_per_s))


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def write_report(folder: Path, report: Report, created: datetime) -> dict[str, Path]:
    """benchmark-<UTC time>.{md,png,json} in the folder, each atomically; the JSON last."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"benchmark-{created.astimezone(UTC):%Y%m%dT%H%M%SZ}"
    n = 1
    while (folder / f"{stem}.json").exists():  # two reports in one second
        n += 1
        stem = f"benchmark-{created.astimezone(UTC):%Y%m%dT%H%M%SZ}-{n}"
    payloads = {
        "md": report.markdown.encode(),
        "png": report.png,
        "json": (json.dumps(report.doc, indent=2) + "\n").encode(),
    }
    paths = {}
    for ext, data in payloads.items():
        final = folder / f"{stem}.{ext}"
        staged = folder / f".{stem}.{ext}.partial"
        with open(staged, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(staged, final)
        paths[ext] = final
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return paths
