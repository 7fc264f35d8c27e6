"""One job, three entry points, one computation: the CLI, the Dagster `renders` asset and the RunPod
worker's handler build their renderer with `MultiTalkRenderer.from_volume` and render the same frames,
recording the same resolved settings in job.json."""

from __future__ import annotations

import ast
import json
import os
import time
from pathlib import Path

import av
import dagster as dg
import numpy as np
import pytest
import yaml

import mt_assets
from mt_assets.defs.renders import RENDERS_KEY
from mt_assets.defs.resources import VolumeResource
from mt_assets.tiny.samples import write_face_image, write_speech
from mt_assets.worker.environment import WorkerSettings
from mt_assets.worker.handler import handle
from mt_assets.worker.startup import startup
from mt_assets_tests.conftest import run_cli
from mt_assets_tests.defs.conftest import materialized_tiny

# Two steps of a 4-latent-frame clip: every stage runs, in seconds on 2 cores.
JOB = {
    "prompt": "A person talks to the camera.",
    "size": "64x48",
    "frames": 13,
    "steps": 2,
    "seed": 1234,
    "cond_image": "volume:media/face.png",
    "cond_audio": {"person1": "volume:media/speech.wav"},
}


def frames(video: Path) -> list[np.ndarray]:
    with av.open(str(video)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def record(volume: Path, job_id: str) -> dict:
    return json.loads((volume / "outputs" / job_id / "job.json").read_text())


@pytest.fixture(scope="module")
def rendered_three_ways(tiny_mirror: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("one-renderer")
    with materialized_tiny(tiny_mirror, base) as (root, instance, defs):
        write_face_image(root / "media" / "face.png", 96, 64)
        write_speech(root / "media" / "speech.wav", 1.0)

        # The CLI, on a job file.
        job_file = base / "via-cli.yaml"
        job_file.write_text(yaml.safe_dump({**JOB, "id": "via-cli"}))
        done = run_cli("render", str(job_file), "--profile", "tiny", "--volume", str(root), "--json")
        assert done.returncode == 0, done.stderr

        # Dagster: dropped in the inbox, queued by the sensor, materialized as a partition of renders.
        inbox = root / "jobs" / "inbox"
        inbox.mkdir(parents=True, exist_ok=True)
        dropped = inbox / "via-dagster.yaml"
        dropped.write_text(yaml.safe_dump(JOB))
        settled = time.time() - 120
        os.utime(dropped, (settled, settled))
        sensor = defs.get_sensor_def("render_inbox")
        result = sensor(
            dg.build_sensor_context(instance=instance, resources={"volume": VolumeResource(path=str(root))})
        )
        for request in result.dynamic_partitions_requests or []:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        run = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance,
            partition_key="via-dagster",
            asset_selection=[RENDERS_KEY],
            raise_on_error=False,
        )
        assert run.success, run.all_events

        # The RunPod worker's handler, in a worker started on the same volume.
        worker = startup(WorkerSettings(volume=str(root), profile="tiny", device="cpu"))
        response = handle({"id": "via-worker", "input": {**JOB, "id": "via-worker"}}, worker)
        assert "error" not in response, response
    return root


def test_the_cli_dagster_and_the_worker_render_the_same_frames(rendered_three_ways: Path) -> None:
    cli, dagster, worker = (
        frames(rendered_three_ways / "outputs" / i / "video.mp4")
        for i in ("via-cli", "via-dagster", "via-worker")
    )
    assert len(cli) == 13
    assert all(np.array_equal(a, b) for a, b in zip(cli, dagster, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(cli, worker, strict=True))


def test_the_three_record_the_same_resolved_settings_in_job_json(rendered_three_ways: Path) -> None:
    cli, dagster, worker = (record(rendered_three_ways, i) for i in ("via-cli", "via-dagster", "via-worker"))
    assert cli["renderer"] == dagster["renderer"] == worker["renderer"]
    assert cli["renderer"]["device"] == "cpu" and cli["renderer"]["dtype"] == "float32"
    assert cli["renderer"]["tf32"] is False and "load_strategy" in cli["renderer"]
    assert cli["settings"] == dagster["settings"] == worker["settings"]

    def settings(doc: dict) -> dict:
        # where the media were read from differs (the queue copies a dropped job's media), and the job
        # files themselves (job_sha256: the worker's job is a mapping); nothing else
        return {
            k: v for k, v in doc["job"].items() if k not in ("id", "cond_image", "cond_audio", "job_sha256")
        }

    assert settings(cli) == settings(dagster) == settings(worker)
    assert cli["job"]["seed"] == 1234


def test_exactly_one_place_outside_the_tests_constructs_a_renderer() -> None:
    """`MultiTalkRenderer(...)` is called only by `MultiTalkRenderer.from_volume` (as `cls(...)`)."""
    package = Path(mt_assets.__file__).parent
    calls = []
    for path in [*package.rglob("*.py"), *(package.parent / "benchmarks").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == (
                "MultiTalkRenderer"
            ):
                calls.append(f"{path.relative_to(package.parent)}:{node.lineno}")
    assert calls == [], calls
    pipeline = (package / "render" / "pipeline.py").read_text()
    assert pipeline.count("        return cls(\n") == 1
