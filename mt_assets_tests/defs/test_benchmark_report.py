"""`benchmark_report` on the tiny volume: cold loads in fresh processes, three files per report, and a
second report compared with the first. The tiny profile is materialized once (files, checks, bundles,
offline proof), as for the renders."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
from PIL import Image

from mt_assets.defs.benchmark_report import ASSET_KEY
from mt_assets.defs.offline_cache import ASSET_KEY as OFFLINE_CACHE
from mt_assets.defs.renders import RENDERS_KEY
from mt_assets.manifest import load_profile
from mt_assets.models.pipeline import UNITS
from mt_assets_tests.defs.conftest import materialized_tiny


@dataclass
class ReportEnv:
    root: Path
    instance: dg.DagsterInstance
    defs: dg.Definitions

    @property
    def reports(self) -> Path:
        return self.root / ".mt" / "reports"

    def report(self, runs: int = 2) -> dg.ExecuteInProcessResult:
        job = self.defs.resolve_implicit_global_asset_job_def()
        return job.execute_in_process(
            instance=self.instance,
            asset_selection=[ASSET_KEY],
            run_config={"ops": {"benchmark_report": {"config": {"runs": runs}}}},
        )


@pytest.fixture(scope="module")
def renv(tiny_mirror: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReportEnv]:
    with materialized_tiny(tiny_mirror, tmp_path_factory.mktemp("bench_report")) as (root, instance, defs):
        yield ReportEnv(root, instance, defs)


def test_benchmark_report_is_downstream_of_the_offline_proof_and_the_renders(renv: ReportEnv) -> None:
    graph = renv.defs.resolve_asset_graph()
    assert {OFFLINE_CACHE, RENDERS_KEY} <= set(graph.get(ASSET_KEY).parent_keys)


def test_report_writes_markdown_json_and_a_png_with_p50_and_p95_for_every_unit(renv: ReportEnv) -> None:
    result = renv.report()
    assert result.success
    [json_file] = sorted(renv.reports.glob("benchmark-*.json"))
    stem = json_file.with_suffix("")
    md, png = stem.with_suffix(".md"), stem.with_suffix(".png")
    assert md.exists() and png.exists()
    assert not list(renv.reports.glob(".*partial"))  # staged files were renamed
    doc = json.loads(json_file.read_text())
    assert set(doc["units"]) == {*UNITS, "total"}
    for unit, m in doc["units"].items():
        assert m["runs"] == 2 and 0 < m["p50"] <= m["p95"], unit
    components = {c.name for c in load_profile("tiny").components}
    repacks = {f"repacks/{p.name}" for p in (renv.root / "repacks").glob("*") if p.is_dir()}
    assert doc["capacity"] > 0 and set(doc["storage"]) == components | repacks
    declared = sum(s["bytes"] for name, s in doc["storage"].items() if name in components)
    assert declared == sum(f.size for f in load_profile("tiny").files)
    assert doc["provisioning"] and all(p["files"] > 0 for p in doc["provisioning"].values())
    assert doc["renders"] is None and "no renders yet" in md.read_text()
    assert doc["previous"] is None and doc["regressions"] == []
    with Image.open(png) as image:
        image.load()
        assert image.size[0] > 100 and image.size[1] > 100
    [materialization] = [
        e.materialization for e in result.get_asset_materialization_events() if e.asset_key == ASSET_KEY
    ]
    assert materialization.metadata["report"].value == md.read_text()


def test_a_second_report_compares_with_the_first(renv: ReportEnv) -> None:
    if not list(renv.reports.glob("benchmark-*.json")):
        assert renv.report().success
    first = sorted(renv.reports.glob("benchmark-*.json"))[-1]
    assert renv.report().success
    second = sorted(renv.reports.glob("benchmark-*.json"))[-1]
    assert second != first
    doc = json.loads(second.read_text())
    assert doc["previous"] == first.name
    assert isinstance(doc["regressions"], list)
    for r in doc["regressions"]:
        assert r["ratio"] > 1.2 and r["current"] > r["previous"]
