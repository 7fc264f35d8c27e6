"""The worker on a quantized profile: its start-up check covers the quantized files, and it renders."""

from __future__ import annotations

from pathlib import Path

from optimum.quanto import QLinear

from mt_assets.manifest import load_profile
from mt_assets.worker.environment import WorkerSettings
from mt_assets.worker.handler import handle
from mt_assets.worker.startup import startup
from mt_assets_tests.worker.conftest import copy_volume, tiny_job, video_frames


def test_a_worker_on_tiny_int8_checks_the_quantized_files_loads_them_and_renders(
    tiny_int8_volume: Path, tmp_path: Path
) -> None:
    volume = copy_volume(tiny_int8_volume, tmp_path / "volume")
    worker = startup(WorkerSettings(volume=str(volume), profile="tiny-int8", device="cpu"))
    manifest = load_profile("tiny-int8")
    assert worker.check.ok and worker.check.counts()["unverified"] == len(manifest.files)
    reports = worker.renderer.c.reports
    for unit in ("transformer", "t5"):
        weights, qmap = manifest.quantized(unit).quant_files
        assert {weights.target, qmap.target} <= set(reports[unit].files)
    assert isinstance(worker.renderer.c.transformer.proj_out, QLinear)
    response = handle({"id": "int8-1", "input": tiny_job()}, worker, notify=lambda update: None)
    assert "error" not in response, response
    assert video_frames(Path(response["video"]))[0] == 17
