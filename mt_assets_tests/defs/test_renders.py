"""Renders through Dagster: the inbox sensor against a real instance, partitioned renders, the guard,
retries ending in jobs/failed/, and the batch schedule. The tiny profile is materialized once (files,
checks, bundles, offline proof) as `make demo` does, then jobs are dropped on the volume."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import av
import dagster as dg
import pytest
import yaml

from mt_assets.defs.keys import file_key
from mt_assets.defs.offline_cache import ASSET_KEY as OFFLINE_CACHE
from mt_assets.defs.renders import PARTITIONS, RENDERS_KEY
from mt_assets.defs.resources import VolumeResource
from mt_assets.jobs.queue import JobQueue
from mt_assets.manifest import load_profile
from mt_assets.tiny.samples import write_face_image, write_speech
from mt_assets_tests.defs.conftest import materialized_tiny

JOB = {"prompt": "A person talks.", "size": "64x48", "frames": 13, "steps": 2}


@dataclass
class RenderEnv:
    root: Path
    instance: dg.DagsterInstance
    defs: dg.Definitions

    @property
    def inbox(self) -> Path:
        return self.root / "jobs" / "inbox"

    def drop(self, name: str, *, folder: bool = False, **fields: object) -> Path:
        """A job dropped as a file (media beside the volume's jobs/) or as a folder with its media."""
        doc = {**JOB, "cond_image": "face.png", "cond_audio": {"person1": "speech.wav"}, **fields}
        self.inbox.mkdir(parents=True, exist_ok=True)
        if folder:
            where = self.inbox / name
            where.mkdir()
            job = where / "job.yaml"
        else:
            where = self.inbox
            job = where / f"{name}.yaml"
            doc["cond_image"] = f"volume:media/{doc['cond_image']}"
            doc["cond_audio"] = {k: f"volume:media/{v}" for k, v in doc["cond_audio"].items()}  # type: ignore[union-attr]
        media = where if folder else self.root / "media"
        # Renamed into place: media/ beside jobs/ is shared, and a sensor may be decoding it right now.
        for name, write in (
            ("face.png", lambda p: write_face_image(p, 96, 64)),
            ("speech.wav", lambda p: write_speech(p, 1.0)),
        ):
            write(media / f".new-{name}")
            os.replace(media / f".new-{name}", media / name)
        job.write_text(yaml.safe_dump(doc))
        settled = time.time() - 60  # older than the inbox's settle time: a finished copy
        for p in [job, *media.iterdir()] if folder else [job]:
            os.utime(p, (settled, settled))
        if folder:
            os.utime(where, (settled, settled))
        return job

    def tick(self) -> dg.SensorResult:
        sensor = self.defs.get_sensor_def("render_inbox")
        context = dg.build_sensor_context(instance=self.instance, resources={"volume": self.volume()})
        result = sensor(context)
        assert isinstance(result, dg.SensorResult)
        for request in result.dynamic_partitions_requests or []:
            self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        return result

    def volume(self) -> VolumeResource:
        return VolumeResource(path=str(self.root))

    def render(self, partition: str) -> dg.ExecuteInProcessResult:
        job = self.defs.resolve_implicit_global_asset_job_def()
        return job.execute_in_process(
            instance=self.instance,
            partition_key=partition,
            asset_selection=[RENDERS_KEY],
            raise_on_error=False,
        )

    def prove(self, config: dict[str, object] | None = None) -> dg.ExecuteInProcessResult:
        job = self.defs.resolve_implicit_global_asset_job_def()
        return job.execute_in_process(
            instance=self.instance,
            asset_selection=[OFFLINE_CACHE],
            run_config={"ops": {"offline_cache": {"config": config or {}}}},
            raise_on_error=False,
        )


@pytest.fixture(scope="module")
def renv(tiny_mirror: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RenderEnv]:
    with materialized_tiny(tiny_mirror, tmp_path_factory.mktemp("renders")) as (root, instance, defs):
        yield RenderEnv(root, instance, defs)


def assert_poster_preview(markdown: str, poster: Path) -> None:
    """The materialization shows the poster itself: a Markdown image whose data is the poster, scaled."""
    import base64
    import io
    import re

    from PIL import Image

    match = re.fullmatch(r"!\[poster (\d+)x(\d+)\]\(data:image/jpeg;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert match, markdown[:120]
    with Image.open(io.BytesIO(base64.b64decode(match[3]))) as preview, Image.open(poster) as full:
        assert preview.size == (int(match[1]), int(match[2]))
        assert preview.width / preview.height == pytest.approx(full.width / full.height, rel=0.05)

        # the same picture: the preview's mean colour is the poster's, within JPEG's rounding
        def mean(im: Image.Image) -> list[float]:
            return [sum(c) / len(c) for c in zip(*im.convert("RGB").resize((8, 8)).getdata(), strict=True)]

        assert max(abs(a - b) for a, b in zip(mean(preview), mean(full), strict=True)) < 8


def frames_of(video: Path) -> int:
    with av.open(str(video)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_renders_is_partitioned_downstream_of_the_offline_proof_in_the_gpu_pool(renv) -> None:
    node = renv.defs.resolve_asset_graph().get(RENDERS_KEY)
    assert node.parent_keys == {OFFLINE_CACHE}
    assert node.partitions_def == PARTITIONS
    assert node.pools == {"gpu"}


def test_the_inbox_sensor_queues_valid_jobs_rejects_bad_ones_and_the_renders_finish_them(renv) -> None:
    renv.drop("alpha")
    renv.drop("bravo", folder=True)
    renv.drop("charlie", cond_image="../../../etc/passwd")
    result = renv.tick()
    assert sorted(r.partition_key for r in result.run_requests or []) == ["alpha", "bravo"]
    [add] = result.dynamic_partitions_requests
    assert sorted(add.partition_keys) == ["alpha", "bravo"]
    assert set(renv.instance.get_dynamic_partitions(PARTITIONS.name)) >= {"alpha", "bravo"}
    rejected = renv.root / "jobs" / "rejected"
    errors = {p.name: p.read_text() for p in rejected.glob("*.error.txt")}
    [(name, error)] = errors.items()
    assert name.startswith("charlie") and "field 'cond_image'" in error and "outside" in error
    assert not list(renv.inbox.iterdir())

    for job_id in ("alpha", "bravo"):
        run = renv.render(job_id)
        assert run.success, run.all_events
        [m] = run.get_asset_materialization_events()
        md = {k: v.value for k, v in m.materialization.metadata.items()}
        assert md["frames"] == 13 and Path(md["video"]) == renv.root / "outputs" / job_id / "video.mp4"
        assert "| seed | 42 |" in md["settings"]
        assert_poster_preview(md["poster_preview"], Path(md["poster"]))
        assert m.materialization.tags["dagster/data_version"] == md["sha256"]
        assert frames_of(Path(md["video"])) == 13
        assert (renv.root / "jobs" / "done" / f"{job_id}.json").is_file()
    assert not list((renv.root / "jobs" / "queued").glob("*.json"))
    # a done job's folder drop was moved: its media are still found through volume: refs
    assert renv.tick().run_requests in (None, [])


def test_a_render_refuses_to_run_after_a_failing_offline_proof_naming_why(renv) -> None:
    renv.drop("delta")
    renv.tick()
    failing = renv.prove({"overrides": {"t5-tokenizer": "google/umt5-xxl"}, "only": ["t5-tokenizer"]})
    assert not [e for e in failing.get_asset_check_evaluations() if e.passed]
    run = renv.render("delta")
    assert not run.success
    failure = next(e for e in run.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    message = failure.step_failure_data.error.message
    assert "refused" in message and "offline_verified" in message
    assert (renv.root / "jobs" / "queued" / "delta.json").is_file()  # still queued, not failed
    assert sum(e.event_type == dg.DagsterEventType.STEP_RESTARTED for e in run.all_events) == 0

    assert renv.prove().success
    assert renv.render("delta").success


def test_a_render_refuses_when_a_model_file_changed_since_the_proof(renv) -> None:
    renv.drop("echo")
    renv.tick()
    f = load_profile("tiny").files[0]
    renv.instance.report_runless_asset_event(
        dg.AssetMaterialization(file_key(f), metadata={"sha256": "0" * 64})
    )
    run = renv.render("echo")
    message = next(
        e for e in run.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE
    ).step_failure_data.error.message
    assert "changed since the last offline proof" in message and file_key(f).to_user_string() in message
    renv.instance.report_runless_asset_event(
        dg.AssetMaterialization(file_key(f), metadata={"sha256": f.sha256})
    )
    assert renv.render("echo").success


def test_a_failing_render_is_retried_twice_then_moves_to_failed_with_its_error(renv) -> None:
    renv.drop("foxtrot", folder=True)
    renv.tick()
    shutil.rmtree(renv.root / "jobs" / "media" / "foxtrot")  # its media vanish after acceptance
    run = renv.render("foxtrot")
    assert not run.success
    assert sum(e.event_type == dg.DagsterEventType.STEP_RESTARTED for e in run.all_events) == 2
    failed = renv.root / "jobs" / "failed"
    assert (failed / "foxtrot.json").is_file()
    assert "cond_image" in (failed / "foxtrot.error.txt").read_text()
    assert not (renv.root / "jobs" / "queued" / "foxtrot.json").exists()
    assert not (renv.root / "outputs" / "foxtrot").exists()


def test_the_nightly_schedule_asks_for_queued_jobs_without_a_render(renv) -> None:
    renv.drop("golf")
    renv.tick()
    schedule = renv.defs.get_schedule_def("nightly_renders")
    tonight = datetime(2026, 12, 2, 2, 0, tzinfo=UTC)
    context = dg.build_schedule_context(
        instance=renv.instance,
        resources={"volume": renv.volume()},
        scheduled_execution_time=tonight,
        repository_def=renv.defs.get_repository_def(),
    )
    requests = list(schedule.evaluate_tick(context).run_requests or [])
    assert [r.partition_key for r in requests] == ["golf"]
    assert renv.render("golf").success
    after = schedule.evaluate_tick(
        dg.build_schedule_context(
            instance=renv.instance,
            resources={"volume": renv.volume()},
            scheduled_execution_time=tonight,
            repository_def=renv.defs.get_repository_def(),
        )
    )
    assert not after.run_requests


def test_a_job_queued_by_a_tick_whose_result_was_lost_is_asked_for_again_once(renv) -> None:
    renv.drop("hotel")
    JobQueue(renv.root).scan_inbox()  # a tick accepted it, and its result never reached the daemon
    [request] = [r for r in renv.tick().run_requests or [] if r.partition_key == "hotel"]
    assert "hotel" in renv.instance.get_dynamic_partitions(PARTITIONS.name)

    # The daemon made a run under that key: the next ticks leave the job to it.
    job = renv.defs.resolve_implicit_global_asset_job_def()
    tags = {"dagster/run_key": request.run_key, "dagster/sensor_name": "render_inbox"}
    renv.instance.create_run_for_job(job, tags=tags, asset_selection=frozenset([RENDERS_KEY]))
    assert not [r for r in renv.tick().run_requests or [] if r.partition_key == "hotel"]

    # Queued anew (as a re-drop with `rerender: true` is): a new key, so asked for again.
    queued = renv.root / "jobs" / "queued" / "hotel.json"
    os.utime(queued, ns=(queued.stat().st_atime_ns, queued.stat().st_mtime_ns + 1))
    [again] = [r for r in renv.tick().run_requests or [] if r.partition_key == "hotel"]
    assert again.run_key != request.run_key
    assert JobQueue(renv.root).withdraw("hotel")
