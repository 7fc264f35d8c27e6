"""The handler as a plain function: a Worker started in this process, jobs as RunPod hands them over."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from mt_assets.worker.environment import WorkerSettings
from mt_assets.worker.handler import handle
from mt_assets.worker.startup import Worker, startup
from mt_assets_tests.worker.conftest import tiny_job, video_frames


@pytest.fixture(scope="module")
def worker(worker_volume: Path) -> Worker:
    return startup(WorkerSettings(volume=str(worker_volume), profile="tiny", device="cpu"))


@pytest.fixture(scope="module")
def rendered(worker: Worker) -> tuple[dict, list[dict]]:
    """One render, shared: RunPod's job id has characters the job id rules do not allow."""
    updates: list[dict] = []
    response = handle({"id": "sync/a1b2:c3-u1", "input": tiny_job()}, worker, notify=updates.append)
    return response, updates


def test_the_startup_check_passes_a_complete_copy_and_loads_every_unit(worker: Worker) -> None:
    assert worker.check.ok and worker.check.counts()["unverified"] == 25  # a copy: new inodes
    assert set(worker.renderer.c.reports) == {
        "transformer", "t5", "t5-tokenizer", "clip", "clip-tokenizer", "vae", "wav2vec2"
    }  # fmt: skip


def test_the_job_lands_on_the_volume_by_default_with_one_update_per_step(worker: Worker, rendered) -> None:
    response, updates = rendered
    assert "error" not in response, response
    assert response["id"] == "sync_a1b2_c3-u1"  # RunPod's id, within the rules
    assert response["return_video"] == "volume" and "video_base64" not in response and "s3" not in response
    video = worker.volume.root / "outputs" / "sync_a1b2_c3-u1" / "video.mp4"
    assert Path(response["video"]) == video and video_frames(video) == (17, 128, 96)
    assert updates == [
        {"stage": "sampling", "step": step, "steps": 4, "clip": 1, "clips": 1} for step in (1, 2, 3, 4)
    ]
    assert response["media"] == {
        "cond_image": str(worker.volume.root / "media" / "face.png"),
        "cond_audio.person1": str(worker.volume.root / "media" / "a.wav"),
    }


def test_a_retry_is_answered_from_the_volume_with_the_same_keys(worker: Worker, rendered) -> None:
    first, _ = rendered
    updates: list[dict] = []
    again = handle({"id": "sync/a1b2:c3-u1", "input": tiny_job()}, worker, notify=updates.append)
    assert again["reused"] is True and updates == []
    assert set(again) == set(first)  # RenderResult.to_json()'s keys, rebuilt from job.json
    assert {k: v for k, v in again.items() if k not in ("reused", "handler_seconds")} == {
        k: v for k, v in first.items() if k not in ("reused", "handler_seconds")
    }


def test_the_same_id_with_other_settings_is_refused_naming_the_setting(worker: Worker, rendered) -> None:
    response = handle({"id": "sync/a1b2:c3-u1", "input": tiny_job(seed=7)}, worker)
    assert response == {
        "error": f"render job runpod:sync/a1b2:c3-u1: field 'seed': output {worker.outputs / 'sync_a1b2_c3-u1'} "
        "exists from a job with the same id and seed 42 (this job: 7); give another id, or set rerender: "
        "true to replace it"
    }


def test_base64_over_the_limit_is_refused_saying_where_the_video_is(worker: Worker, rendered) -> None:
    small = dataclasses.replace(
        worker, settings=dataclasses.replace(worker.settings, max_inline_video_bytes=1000)
    )
    response = handle({"id": "sync/a1b2:c3-u1", "input": tiny_job(return_video="base64")}, small)
    assert "more than the 1,000 returned inline" in response["error"]
    assert f"on the volume at {rendered[0]['video']}" in response["error"]
    assert "refresh_worker" not in response


def test_s3_without_an_output_bucket_is_refused_before_anything_renders(worker: Worker) -> None:
    response = handle({"id": "no-bucket", "input": tiny_job(return_video="s3")}, worker)
    assert (
        "field 'return_video': 's3': this worker has no output bucket (set MT_OUTPUT_S3" in response["error"]
    )
    assert not (worker.outputs / "no-bucket").exists()


@pytest.mark.parametrize(
    ("job", "says"),
    [
        ({"id": "x"}, "render job runpod:x: expected an input mapping of job fields, got nothing"),
        ({"input": tiny_job()}, "render job runpod: field 'id': not given, and RunPod gave no job id"),
        ({"id": "x", "input": tiny_job(id="a b")}, "field 'id': 'a b' must be 1 to 64 characters"),
    ],
)
def test_inputs_that_are_not_jobs_are_named(worker: Worker, job: dict, says: str) -> None:
    assert says in handle(job, worker)["error"]


def test_an_unreadable_record_of_the_same_id_is_named(worker: Worker) -> None:
    folder = worker.outputs / "damaged"
    folder.mkdir(parents=True)
    (folder / "job.json").write_text("{")
    response = handle({"id": "damaged", "input": tiny_job()}, worker)
    assert f"output {folder} exists but its job.json cannot be read (JSONDecodeError" in response["error"]
    assert "refresh_worker" not in response


def test_an_unexpected_failure_asks_for_a_fresh_worker(worker: Worker) -> None:
    broken = dataclasses.replace(worker, renderer=None)  # as if the GPU state were lost
    response = handle({"id": "broken", "input": tiny_job()}, broken)
    assert response["refresh_worker"] is True
    assert response["error"].startswith("render job runpod:broken: AttributeError: ")


def test_a_preset_the_workers_profile_does_not_serve_fails_naming_it(worker: Worker) -> None:
    response = handle({"id": "fast-1", "input": tiny_job(preset="fusionx")}, worker)
    assert set(response) == {"error"}
    assert response["error"].startswith(
        "render job runpod:fast-1: field 'preset': 'fusionx' is not served by profile 'tiny'"
    )
    assert not (worker.outputs / "fast-1").exists()


def test_a_worker_whose_profile_serves_the_preset_renders_it_with_the_presets_settings(
    worker: Worker,
) -> None:
    serving = dataclasses.replace(
        worker, manifest=dataclasses.replace(worker.manifest, presets=("lightx2v",))
    )
    doc = tiny_job(preset="lightx2v")
    del doc["steps"]  # the preset's 4
    response = handle({"id": "fast-2", "input": doc}, serving)
    assert "error" not in response, response
    record = json.loads(Path(response["job_json"]).read_text())
    assert record["job"]["preset"] == "lightx2v" and record["job"]["steps"] == 4
    assert record["dit_evaluations_planned"] == record["dit_evaluations_run"] == 4 * 2


def test_a_render_recorded_before_teacache_and_preset_existed_is_still_reused(worker: Worker) -> None:
    first = handle({"id": "older-1", "input": tiny_job()}, worker)
    assert "error" not in first, first
    path = Path(first["job_json"])
    record = json.loads(path.read_text())
    for name in ("teacache", "preset"):
        del record["job"][name]
    path.write_text(json.dumps(record))
    again = handle({"id": "older-1", "input": tiny_job()}, worker)
    assert again["reused"] is True, again
    other = handle({"id": "older-1", "input": tiny_job(teacache=True)}, worker)
    assert "field 'teacache'" in other["error"] and "False" in other["error"]
