"""End to end: the `renders` asset with the RunPod backend, against the RunPod SDK's local API server
running our own worker (`python -m mt_assets.worker --rp_serve_api`) on the tiny volume.

Both sides share one volume folder, as a Dagster run worker and a RunPod worker share the network
volume: the job goes from jobs/queued/ with its media as `volume:` references, the worker renders it
into outputs/<id>/, and the materialization records that mp4 (a real decoder reads it). The SDK's
server has no endpoint id in its paths and runs a `/run` job when `/status` is asked for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from mt_assets.config import Settings
from mt_assets.defs import build_definitions
from mt_assets.defs.renders import PARTITIONS, RENDERS_KEY
from mt_assets.defs.renders_runpod import RunPodResource
from mt_assets.defs.resources import SourceResource, VolumeResource
from mt_assets.jobs.queue import JobQueue
from mt_assets.manifest import load_profile
from mt_assets_tests.defs.test_renders_runpod import queue_job, record_offline_proof
from mt_assets_tests.worker.conftest import copy_volume, video_frames, worker_env
from mt_assets_tests.worker.runpod_api import LocalApi, local_api

KEY = "rpa_LOCAL_SDK_SERVER_KEY_0b5e"  # the SDK's local server takes any key; ours must never show


@pytest.fixture(scope="module")
def shared(tiny_volume: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, LocalApi]]:
    base = tmp_path_factory.mktemp("runpod-e2e")
    root = copy_volume(tiny_volume, base / "volume")
    with local_api(worker_env(root), base / "worker-logs") as api:
        yield root, api


def test_a_partition_renders_end_to_end_on_our_worker_behind_the_sdks_local_api(
    shared: tuple[Path, LocalApi], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, api = shared
    monkeypatch.setenv("RUNPOD_API_KEY", KEY)
    manifest = load_profile("tiny")
    queue_job(root, "e2e1")
    defs = build_definitions(
        manifest,
        Settings(render_backend="runpod"),
        resources={
            "volume": VolumeResource(path=str(root)),
            "source": SourceResource(spec="hub"),
            "runpod": RunPodResource(endpoint="", api_base=api.url, poll_seconds=0.1, request_timeout=300),
        },
    )
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        record_offline_proof(instance, manifest)
        instance.add_dynamic_partitions(PARTITIONS.name, ["e2e1"])
        run = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance, partition_key="e2e1", asset_selection=[RENDERS_KEY], raise_on_error=False
        )
        logs = [e.user_message for e in instance.all_logs(run.run_id)]
        assert run.success, "\n".join(logs[-20:])
        event = instance.get_latest_materialization_event(RENDERS_KEY)
        assert event is not None and event.asset_materialization is not None
        metadata = event.asset_materialization.metadata
        video = Path(metadata["video"].value)  # type: ignore[arg-type]
        assert video == root / "outputs" / "e2e1" / "video.mp4"
        assert video_frames(video) == (13, 64, 48)  # the queued job: 13 frames at 64x48
        assert event.asset_materialization.tags["dagster/data_version"] == metadata["sha256"].value
        assert str(metadata["runpod_job"].value).startswith("test-")  # the SDK's local job ids
        assert all(KEY not in line for line in logs)
    assert JobQueue(root).folder("done").joinpath("e2e1.json").exists()
    assert KEY not in api.logs()
