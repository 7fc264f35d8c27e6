"""mt_assets.bench: cold loads in fresh processes, the raw-read limit, the summary, the report's core."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from mt_assets.bench import ColdStart, cold_loads, first_steps, load_files, raw_read_limit, summarize
from mt_assets.bench.cold_start import fresh_memory
from mt_assets.bench.report import build_report, regressions, storage_frame, write_report
from mt_assets.manifest import load_profile
from mt_assets.models.pipeline import UNITS
from mt_assets.volume import LocalVolume


@pytest.fixture(scope="module")
def volume(tiny_volume: Path) -> LocalVolume:
    return LocalVolume(tiny_volume)


def test_raw_read_reads_every_byte_sequentially_and_in_parallel(tmp_path: Path) -> None:
    sizes = [5_000_000, 17 * 1024 * 1024 + 3, 1]
    paths = []
    for i, size in enumerate(sizes):
        paths.append(tmp_path / f"f{i}.bin")
        paths[-1].write_bytes(bytes([i]) * size)
    raw = raw_read_limit(paths, repeats=3)
    assert list(raw["mode"]) == ["sequential", "parallel (4 threads)"]
    assert (raw["bytes"] == sum(sizes)).all() and (raw["seconds"] > 0).all() and (raw["gb_per_s"] > 0).all()
    # the limit is each mode's median of the rounds, with their spread beside it
    assert (raw["runs"] == 3).all()
    assert ((raw["min_seconds"] <= raw["seconds"]) & (raw["seconds"] <= raw["max_seconds"])).all()


def test_fresh_memory_is_timed_in_new_processes() -> None:
    fresh = fresh_memory(64 * 1024 * 1024, repeats=2)
    assert fresh["bytes"] == 64 * 1024 * 1024
    assert 0 < fresh["min_seconds"] <= fresh["seconds"] <= fresh["max_seconds"]
    assert fresh["gb_per_s"] == pytest.approx(fresh["bytes"] / fresh["seconds"] / 1e9)


def test_summary_gives_the_spread_per_unit_and_a_total_per_run() -> None:
    loads = pd.DataFrame([
        {"strategy": "mmap", "run": r, "unit": u, "seconds": s, "bytes": b}
        for r, (a, c) in enumerate([(1.0, 0.5), (2.0, 0.5), (3.0, 1.5)])
        for u, s, b in (("transformer", a, 100), ("vae", c, 10))
    ])  # fmt: skip
    summary = summarize(loads).set_index(["strategy", "unit"])
    dit = summary.loc[("mmap", "transformer")]
    assert (dit["runs"], dit["median"], dit["min"], dit["max"], dit["p50"]) == (3, 2.0, 1.0, 3.0, 2.0)
    assert dit["p95"] == pytest.approx(2.9) and dit["gb_per_s"] == pytest.approx(100 / 2.0 / 1e9)
    total = summary.loc[("mmap", "total")]
    assert (total["median"], total["max"], total["bytes"]) == (2.5, 4.5, 110)


def test_a_cold_load_runs_in_a_fresh_process_with_the_files_evicted(volume: LocalVolume) -> None:
    manifest = load_profile("tiny")
    loads = cold_loads(volume, manifest, strategies=["sequential"], runs=1)
    assert list(loads["unit"]) == list(UNITS)  # the transformer first, as UNITS has it
    assert (loads["seconds"] > 0).all() and (loads["resident_before"] < 0.01).all()
    dit = loads[loads["unit"] == "transformer"].iloc[0]
    assert dit["peak_rss"] >= dit["rss_before"] > 100e6  # torch is imported: RSS is measured in the child
    expected = sum(p.stat().st_size for p in load_files(volume, manifest, ["transformer"]))
    assert dit["bytes"] == expected and dit["transient"] is not None
    assert dit["kept_bytes"] > 0 and loads[loads["unit"] != "transformer"]["kept_bytes"].isna().all()
    assert all(f.startswith("models/") for f in dit["files"])  # no repack on this volume: the originals
    raw = raw_read_limit(load_files(volume, manifest, list(UNITS)))
    cold = ColdStart(loads, raw, summarize(loads), largest_file=1)
    assert cold.best_strategy() == "sequential" and cold.cold_start_ratio() > 0


def test_time_to_first_step_is_measured_cold_with_the_dit_in_the_background_and_without(
    volume: LocalVolume,
) -> None:
    runs = first_steps(volume, load_profile("tiny"), strategy="parallel", runs=1)
    assert list(runs["mode"]) == ["overlap", "serial"]
    assert (runs["resident_before"] < 0.01).all()
    for row in runs.to_dict(orient="records"):
        assert all(row[f"load_{u}"] > 0 for u in UNITS)
        # the first step comes after every model is in, and after the foreground's own loads
        assert row["first_step_seconds"] > row["foreground_load_seconds"] > 0
    serial = runs[runs["mode"] == "serial"].iloc[0]
    overlap = runs[runs["mode"] == "overlap"].iloc[0]
    # serial: the foreground loads every unit; overlap: every unit but the DiT
    assert serial["foreground_load_seconds"] >= serial["load_transformer"]
    assert (
        overlap["bytes"]
        == serial["bytes"]
        == sum(p.stat().st_size for p in load_files(volume, load_profile("tiny"), list(UNITS)))
    )
    every_file = {f.target for f in load_profile("tiny").files}  # no repack here: the originals
    assert set(overlap["files"]) == set(serial["files"]) == every_file


def test_regressions_flag_only_what_got_over_20_percent_slower() -> None:
    before = {"units": {"vae": {"p50": 1.0}, "t5": {"p50": 1.0}}, "renders": {"seconds_per_step": 2.0}}
    now = {"units": {"vae": {"p50": 1.19}, "t5": {"p50": 1.3}, "new": {"p50": 9.0}}, "renders": None}
    assert [r["metric"] for r in regressions(now, before)] == ["units.t5.p50"]
    assert regressions(now, None) == []


def test_report_files_are_written_whole_with_a_png_that_decodes(volume: LocalVolume, tmp_path: Path) -> None:
    loads = pd.DataFrame([
        {"strategy": "parallel", "run": r, "unit": u, "seconds": 0.1 * (r + 1), "bytes": 1000, "transient": 5}
        for r in range(2) for u in ("transformer", "vae")
    ])  # fmt: skip
    raw = pd.DataFrame([{"mode": "sequential", "seconds": 0.1, "bytes": 2000, "gb_per_s": 2e-5}])
    cold = ColdStart(loads, raw, summarize(loads), largest_file=10)
    storage = storage_frame(volume, load_profile("tiny"))
    empty = pd.DataFrame()
    created = datetime(2026, 12, 2, 1, 2, 3, tzinfo=UTC)
    report = build_report(cold, storage, 10**12, empty, empty, {"strategy": "parallel"}, None, created)
    with Image.open(io.BytesIO(report.png)) as image:
        image.load()
    first = write_report(tmp_path, report, created)
    again = write_report(tmp_path, report, created)  # the same second: a second name, not an overwrite
    assert first["json"].name == "benchmark-20261202T010203Z.json" and again["json"] != first["json"]
    assert json.loads(first["json"].read_text())["units"]["total"]["p95"] == pytest.approx(0.39)
    assert "no renders yet" in first["md"].read_text() and "no provisioning recorded" in report.markdown
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_quantized_profile_reads_about_a_third_of_the_base_bytes_and_none_of_its_float_files() -> None:
    """Issue 22: the int8 profile's cold start reads <= 0.36x the base's bytes (from the manifests)."""
    from mt_assets.bench.cold_start import cold_start_bytes, profile_bytes

    names = [
        "multitalk-480p",
        "multitalk-480p-int8",
        "multitalk-480p-int8-fusionx",
        "multitalk-480p-fp8-fusionx",
    ]
    frame = profile_bytes([load_profile(n) for n in names]).set_index("profile")
    assert frame.loc["multitalk-480p", "ratio"] == 1.0
    for name in names[1:]:
        assert frame.loc[name, "ratio"] <= 0.36, name
        nbytes, files = cold_start_bytes(load_profile(name))
        assert (nbytes, files) == (frame.loc[name, "bytes"], frame.loc[name, "files"])
    base = {
        f.target
        for f in load_profile("multitalk-480p").files
        if f.component in ("wan-dit", "multitalk", "t5")
    }
    for name in names[1:]:
        assert base & {f.target for f in load_profile(name).files} == {
            "models/Wan2.1-I2V-14B-480P/config.json"
        }  # the DiT is built from it; no shard, adapter or .pth T5


def test_the_cold_start_benchmark_prints_the_int8_bytes_ratio_last() -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).parents[2]
    out = subprocess.run(
        [sys.executable, "cold_start.py", "--bytes-only"], cwd=root / "benchmarks", capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(root)}, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("int8_bytes_ratio=") and float(last.split("=")[1]) <= 0.36
    assert "multitalk-480p-fp8-fusionx" in out.stdout
