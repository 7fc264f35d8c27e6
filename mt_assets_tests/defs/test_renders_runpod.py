"""Renders dispatched to a RunPod endpoint (MT_RENDER_BACKEND=runpod), against a loopback endpoint written
from RunPod's documented API (mt_assets_tests/runpod_endpoint.py) that plays the worker's part by script.

Real materializations of the tiny profile's `renders` asset on a real instance. The models are not put on
the volume here (the worker renders, not this process): the offline proof the guard reads is recorded as
`offline_cache` records it (each model file's sha256, the check passed). Terminating a run and several
partitions at once are run in child processes (`python -m mt_assets_tests.defs.test_renders_runpod <id>`,
the `main` below) against a DAGSTER_HOME instance, as a run worker would be.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from mt_assets.config import Settings
from mt_assets.defs import build_definitions
from mt_assets.defs.keys import file_key
from mt_assets.defs.offline_cache import ASSET_KEY as OFFLINE_CACHE
from mt_assets.defs.offline_cache import CHECK_NAME, MODEL_VERSIONS
from mt_assets.defs.renders import PARTITIONS, RENDERS_KEY, RUNPOD_POOL
from mt_assets.defs.renders_runpod import RunPodResource
from mt_assets.defs.resources import SourceResource, VolumeResource
from mt_assets.jobs.queue import JobQueue
from mt_assets.manifest import Manifest, load_profile
from mt_assets.tiny.samples import write_face_image, write_speech
from mt_assets_tests.runpod_endpoint import ENDPOINT_ID, Endpoint, Script, runpod_endpoint

KEY = "rpa_DAGSTER_TEST_KEY_7c0ffee5a1d"
REPO = Path(__file__).resolve().parents[2]
SDK_ERROR = json.dumps(
    {
        "error_type": "<class 'mt_assets.jobs.schema.JobError'>",
        "error_message": "render job a1: field 'cond_audio': 0.200 s of audio gives 5 audio frames",
        "error_traceback": 'Traceback (most recent call last):\n  File "handler.py", line 9\nJobError: ...',
        "hostname": "worker-1",
    }
)


def tiny() -> Manifest:
    return load_profile("tiny")


def record_offline_proof(instance: dg.DagsterInstance, manifest: Manifest) -> None:
    """What materializing the model files and offline_cache leaves on an instance, for the guard."""
    versions = {}
    for f in manifest.files:
        instance.report_runless_asset_event(
            dg.AssetMaterialization(file_key(f), metadata={"sha256": f.sha256})
        )
        versions[file_key(f).to_user_string()] = f.sha256
    instance.report_runless_asset_event(
        dg.AssetMaterialization(OFFLINE_CACHE, metadata={MODEL_VERSIONS: dg.MetadataValue.json(versions)})
    )
    instance.report_runless_asset_event(
        dg.AssetCheckEvaluation(asset_key=OFFLINE_CACHE, check_name=CHECK_NAME, passed=True)
    )


def queue_job(root: Path, job_id: str) -> None:
    """A job dropped as a folder with its media and accepted: jobs/queued/<id>.json, media in jobs/media/<id>/."""
    queue = JobQueue(root, settle_seconds=0, stable_seconds=0)
    folder = queue.folder("inbox") / job_id
    write_face_image(folder / "face.png", 64, 48)
    write_speech(folder / "speech.wav", 1.0)
    doc = {"prompt": "A person talks.", "cond_image": "face.png", "cond_audio": {"person1": "speech.wav"}}
    (folder / "job.yaml").write_text(yaml.safe_dump({**doc, "frames": 13, "size": "64x48", "steps": 2}))
    [accepted] = queue.scan_inbox().accepted
    assert accepted.id == job_id


def fake_worker(root: Path) -> Callable[[dict[str, Any], str], dict[str, Any]]:
    """The worker's COMPLETED output (mt_assets.worker.outputs): it writes outputs/<id>/ on the shared
    volume, which it sees at /runpod-volume, and with return_video 's3' uploads the files too."""

    def output(job: dict[str, Any], _remote_id: str) -> dict[str, Any]:
        job_id = job["id"]
        folder = root / "outputs" / job_id
        reused = folder.is_dir()  # a job delivered twice: the finished output is returned as it is
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "video.mp4").write_bytes(f"mp4 of {job_id}".encode())
        (folder / "poster.png").write_bytes(b"png")
        (folder / "job.json").write_text("{}")
        there = f"/runpod-volume/outputs/{job_id}"
        result: dict[str, Any] = {
            "id": job_id,
            "video": f"{there}/video.mp4",
            "poster": f"{there}/poster.png",
            "job_json": f"{there}/job.json",
            "sha256": hashlib.sha256((folder / "video.mp4").read_bytes()).hexdigest(),
            "frames": job["frames"],
            "duration": 0.52,
            "width": 64,
            "height": 48,
            "clips": 1,
            "seconds_per_step": 0.5,
            "seconds": 1.5,
            "stages": {"load": 0.5, "sample": 1.0},
            "reused": reused,
            "return_video": job["return_video"],
            "media": {"cond_image": job["cond_image"]},
            "handler_seconds": 1.7,
        }
        if job["return_video"] == "s3":
            names = {"video": "video.mp4", "poster": "poster.png", "job_json": "job.json"}
            result["s3"] = {key: f"{job['output_s3']}/{job_id}/{name}" for key, name in names.items()}
        return result

    return output


def step(n: int, of: int) -> dict[str, Any]:
    """A progress update as the worker sends one per sampling step."""
    return {"stage": "sampling", "step": n, "steps": of, "clip": 1, "clips": 1}


@dataclass
class RunPodEnv:
    root: Path
    home: Path  # the instance's folder
    instance: dg.DagsterInstance
    endpoint: Endpoint

    def resource(self, **fields: Any) -> RunPodResource:
        settings = {"poll_seconds": 0.02, "poll_max_seconds": 0.1} | fields
        return RunPodResource(endpoint=ENDPOINT_ID, api_base=self.endpoint.api_base, **settings)

    def defs(self, **fields: Any) -> dg.Definitions:
        return build_definitions(
            tiny(),
            Settings(render_backend="runpod"),
            resources={
                "volume": VolumeResource(path=str(self.root)),
                "source": SourceResource(spec="hub"),
                "runpod": self.resource(**fields),
            },
        )

    def render(self, job_id: str, **fields: Any) -> dg.ExecuteInProcessResult:
        self.instance.add_dynamic_partitions(PARTITIONS.name, [job_id])
        return (
            self.defs(**fields)
            .resolve_implicit_global_asset_job_def()
            .execute_in_process(
                instance=self.instance,
                partition_key=job_id,
                asset_selection=[RENDERS_KEY],
                raise_on_error=False,
            )
        )

    def log(self, run: dg.ExecuteInProcessResult) -> list[str]:
        return [e.user_message for e in self.instance.all_logs(run.run_id)]

    def sent(self) -> list[dict[str, Any]]:
        return [r.body["input"] for r in self.endpoint.of("run")]


@pytest.fixture
def renv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunPodEnv]:
    monkeypatch.setenv("RUNPOD_API_KEY", KEY)
    root = tmp_path / "volume"
    root.mkdir()
    home = tmp_path / "dagster"
    home.mkdir()
    with runpod_endpoint(KEY) as endpoint, dg.instance_for_test(temp_dir=str(home)) as instance:
        endpoint.script = lambda _: Script(output=fake_worker(root))
        yield RunPodEnv(root, home, instance, endpoint)


def failure_message(run: dg.ExecuteInProcessResult) -> str:
    failure = next(e for e in run.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    return failure.step_failure_data.error.message  # type: ignore[union-attr]


def restarts(run: dg.ExecuteInProcessResult) -> int:
    return sum(e.event_type == dg.DagsterEventType.STEP_RESTARTED for e in run.all_events)


def files_holding(folder: Path, secret: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


# --- definitions ----------------------------------------------------------------------------------


def test_the_backend_chosen_when_the_definitions_load_sets_the_renders_pool(monkeypatch) -> None:
    resources = {"volume": VolumeResource(path="v"), "source": SourceResource(spec="hub")}
    runpod = build_definitions(tiny(), Settings(render_backend="runpod"), resources=resources)
    node = runpod.resolve_asset_graph().get(RENDERS_KEY)
    assert (
        node.pools == {RUNPOD_POOL}
        and node.partitions_def == PARTITIONS
        and node.parent_keys == {OFFLINE_CACHE}
    )
    local = build_definitions(tiny(), Settings(render_backend="local"), resources=resources)
    assert local.resolve_asset_graph().get(RENDERS_KEY).pools == {"gpu"}
    with pytest.raises(ValueError, match="MT_RENDER_BACKEND: expected one of local, runpod, got 'k8s'"):
        build_definitions(tiny(), Settings(render_backend="k8s"))

    # From the environment, as `dagster dev -m mt_assets` loads them: the endpoint's settings, never the key.
    for name, value in {
        "MT_RENDER_BACKEND": "runpod",
        "MT_RUNPOD_ENDPOINT": "abc123",
        "MT_OUTPUT_S3": "s3://renders/out",
        "MT_RUNPOD_POLL_SECONDS": "1",
        "RUNPOD_API_KEY": KEY,
    }.items():
        monkeypatch.setenv(name, value)
    defs = build_definitions(tiny())
    assert defs.resolve_asset_graph().get(RENDERS_KEY).pools == {RUNPOD_POOL}
    resource = defs.resources["runpod"]
    assert (resource.endpoint, resource.output_s3, resource.poll_seconds) == (
        "abc123",
        "s3://renders/out",
        1.0,
    )
    assert KEY not in json.dumps(resource._convert_to_config_dictionary(), default=str)  # type: ignore[attr-defined]


# --- one render -----------------------------------------------------------------------------------


def test_a_runpod_render_streams_the_workers_progress_into_the_run_log_and_records_its_output(renv) -> None:
    queue_job(renv.root, "a1")
    record_offline_proof(renv.instance, tiny())
    updates = [step(1, 2), step(2, 2)]
    renv.endpoint.script = lambda _: Script(
        queue_seconds=0.1, progress=[(u, 0.2) for u in updates], output=fake_worker(renv.root)
    )
    run = renv.render("a1")
    assert run.success, failure_message(run)

    log = renv.log(run)
    assert [line for line in log if "sampling step" in line] == [
        "render a1: sampling step 1/2",
        "render a1: sampling step 2/2",
    ]  # each once, in order
    assert any(line.startswith("render a1: RunPod job job-1 COMPLETED (delay 0.1 s") for line in log)

    [sent] = renv.sent()
    assert sent["id"] == "a1" and sent["return_video"] == "volume" and "output_s3" not in sent
    assert sent["cond_image"] == "volume:jobs/media/a1/face.png"
    assert sent["cond_audio"] == {"person1": "volume:jobs/media/a1/speech.wav"}

    [m] = run.get_asset_materialization_events()
    md = {k: v.value for k, v in m.materialization.metadata.items()}
    video = (
        renv.root / "outputs" / "a1" / "video.mp4"
    )  # the worker's /runpod-volume/outputs/a1/video.mp4, here
    assert Path(md["video"]) == video and Path(md["poster"]) == video.with_name("poster.png")
    assert Path(md["job_json"]) == video.with_name("job.json")
    assert md["sha256"] == hashlib.sha256(video.read_bytes()).hexdigest()
    assert m.materialization.tags["dagster/data_version"] == md["sha256"]
    assert (md["frames"], md["width"], md["height"], md["seconds"]) == (13, 64, 48, 1.5)
    assert md["stages"] == {"load": 0.5, "sample": 1.0}
    assert (md["handler_seconds"], md["reused"]) == (1.7, False)
    assert md["runpod_job"] == "job-1" and md["endpoint"] == ENDPOINT_ID
    assert md["delay_seconds"] == 0.1 and 0.4 <= md["execution_seconds"] < 1.5
    assert "| cond_image | volume:jobs/media/a1/face.png |" in md["settings"]

    jobs = renv.root / "jobs"
    assert (jobs / "done" / "a1.json").is_file() and not (jobs / "queued" / "a1.json").exists()
    assert (jobs / "done" / "a1.output.txt").read_text().strip() == "outputs/a1"
    assert not list((jobs / "rendering").iterdir())
    assert all(r.authorized for r in renv.endpoint.requests)


def test_with_an_output_bucket_the_video_is_recorded_by_its_s3_uri(renv) -> None:
    queue_job(renv.root, "b2")
    record_offline_proof(renv.instance, tiny())
    run = renv.render("b2", output_s3="s3://renders/batch")
    assert run.success, failure_message(run)
    [sent] = renv.sent()
    assert sent["return_video"] == "s3" and sent["output_s3"] == "s3://renders/batch"
    [m] = run.get_asset_materialization_events()
    md = m.materialization.metadata
    assert (
        isinstance(md["video"], dg.UrlMetadataValue)
        and md["video"].value == "s3://renders/batch/b2/video.mp4"
    )
    assert md["poster"].value == "s3://renders/batch/b2/poster.png"
    # The worker rendered into outputs/b2/ on the volume first: re-hashed there, and where jobs/done points.
    assert m.materialization.tags["dagster/data_version"] == md["sha256"].value
    assert (renv.root / "jobs" / "done" / "b2.output.txt").read_text().strip() == "outputs/b2"


def test_polls_back_off_and_a_429_is_honoured_with_its_retry_after(renv) -> None:
    queue_job(renv.root, "c3")
    record_offline_proof(renv.instance, tiny())
    renv.endpoint.script = lambda _: Script(progress=[(step(1, 1), 2.0)], output=fake_worker(renv.root))
    renv.endpoint.fault("status", status=429, retry_after="1")
    run = renv.render("c3", poll_seconds=0.05, poll_factor=2.0, poll_max_seconds=0.4)
    assert run.success, failure_message(run)
    assert "render c3: RunPod rate limit on POST /status/job-1: asking again in 1.0 s" in renv.log(run)

    times = [r.at for r in renv.endpoint.of("status")]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] >= 1.0  # the refused poll, then the same poll after Retry-After
    # then 0.05, 0.1, 0.2, 0.4, 0.4, ...: each gap at least its wait (sleep never returns early)
    waits = [0.05, 0.1, 0.2, 0.4, 0.4]
    assert len(gaps) >= 1 + len(waits)
    assert all(g >= w * 0.99 for g, w in zip(gaps[1:], waits, strict=False)), gaps


# --- failures -------------------------------------------------------------------------------------


def test_a_failed_job_fails_the_materialization_with_the_workers_message_at_once_and_moves_to_failed(
    renv,
) -> None:
    queue_job(renv.root, "a1")
    record_offline_proof(renv.instance, tiny())
    renv.endpoint.script = lambda _: Script(
        progress=[("loading models", 0.05)], outcome="FAILED", error=SDK_ERROR
    )
    run = renv.render("a1")
    assert not run.success
    message = failure_message(run)
    assert "RunPod job job-1 FAILED: JobError: render job a1: field 'cond_audio': 0.200 s of audio" in message
    assert restarts(run) == 0 and len(renv.endpoint.of("run")) == 1  # the same job would fail the same way
    failed = renv.root / "jobs" / "failed"
    assert "JobError: render job a1: field 'cond_audio'" in (failed / "a1.error.txt").read_text()
    assert (failed / "a1.json").is_file() and not (renv.root / "jobs" / "queued" / "a1.json").exists()
    assert any("the worker's traceback" in line and 'File "handler.py"' in line for line in renv.log(run))


def test_an_endpoint_that_stops_answering_is_retried_and_the_retry_gets_the_finished_output(renv) -> None:
    queue_job(renv.root, "h8")
    record_offline_proof(renv.instance, tiny())
    renv.endpoint.fault("status", status=503, times=6, retry_after=None)  # one more than max_poll_errors
    run = renv.render("h8")
    assert run.success, failure_message(run)
    assert restarts(run) == 1 and [r.body["input"]["id"] for r in renv.endpoint.of("run")] == ["h8", "h8"]
    log = renv.log(run)
    assert sum("HTTP 503" in line and "polling again" in line for line in log) == 5
    assert "render h8: the worker returned the output it had rendered before" in log
    [m] = run.get_asset_materialization_events()
    assert m.materialization.metadata["reused"].value is True
    assert (renv.root / "jobs" / "done" / "h8.json").is_file()


def test_a_timed_out_job_is_retried_then_moves_to_failed(renv) -> None:
    queue_job(renv.root, "d4")
    record_offline_proof(renv.instance, tiny())
    renv.endpoint.script = lambda _: Script(outcome="TIMED_OUT")
    run = renv.render("d4")
    assert not run.success
    assert restarts(run) == 2 and len(renv.endpoint.of("run")) == 3
    assert "TIMED_OUT" in (renv.root / "jobs" / "failed" / "d4.error.txt").read_text()


def test_the_guard_refuses_before_anything_is_sent_and_the_job_stays_queued(renv) -> None:
    queue_job(renv.root, "e5")  # no offline proof recorded
    run = renv.render("e5")
    assert not run.success
    message = failure_message(run)
    assert "render e5 refused" in message and "offline_verified" in message
    assert renv.endpoint.requests == [] and restarts(run) == 0
    assert (renv.root / "jobs" / "queued" / "e5.json").is_file()


def test_the_api_key_never_reaches_the_run_log_the_event_log_or_an_error(renv, monkeypatch, capfd) -> None:
    queue_job(renv.root, "f6")
    record_offline_proof(renv.instance, tiny())
    wrong = "rpa_WRONG_KEY_echoed_by_the_endpoint"
    monkeypatch.setenv("RUNPOD_API_KEY", wrong)
    refused = renv.render("f6")
    assert not refused.success
    assert "the API key was refused (check RUNPOD_API_KEY" in failure_message(refused)
    assert "unauthorized" in failure_message(refused)  # the endpoint's body, quoted, with the key scrubbed
    assert restarts(refused) == 0 and (renv.root / "jobs" / "queued" / "f6.json").is_file()

    monkeypatch.setenv("RUNPOD_API_KEY", KEY)
    assert renv.render("f6").success
    assert [r.authorized for r in renv.endpoint.of("run")] == [False, True]
    out, err = capfd.readouterr()
    for secret in (wrong, KEY):
        assert secret not in out + err
        assert files_holding(renv.home, secret) == []  # event log, run storage, compute logs


# --- terminating a run, several partitions at once (child processes) -------------------------------


@dataclass
class Shared:
    """A DAGSTER_HOME, a volume and the endpoint that child processes and this test share."""

    home: Path
    root: Path
    endpoint: Endpoint
    instance: dg.DagsterInstance
    logs: Path

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "DAGSTER_HOME": str(self.home),
            "MT_VOLUME": str(self.root),
            "MT_RENDER_BACKEND": "runpod",
            "MT_RUNPOD_ENDPOINT": ENDPOINT_ID,
            "MT_RUNPOD_API_BASE": self.endpoint.api_base,
            "MT_RUNPOD_POLL_SECONDS": "0.05",
            "MT_RUNPOD_POLL_MAX_SECONDS": "0.2",
            "RUNPOD_API_KEY": KEY,
        }

    def start(self, job_id: str, executor: str = "in_process") -> subprocess.Popen[bytes]:
        """A child that loads the Definitions, then waits for `go(job_id)` before it materializes renders[job_id]."""
        go = str(self.logs / f"{job_id}.go")
        with open(self.logs / f"{job_id}.log", "wb") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "mt_assets_tests.defs.test_renders_runpod", job_id, go, executor],
                cwd=REPO,
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def go(self, job_id: str) -> None:
        (self.logs / f"{job_id}.go").touch()

    def log(self, job_id: str) -> str:
        return (self.logs / f"{job_id}.log").read_text(errors="replace")


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Shared]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    root = tmp_path / "volume"
    root.mkdir()
    with runpod_endpoint(KEY) as endpoint:
        instance = dg.DagsterInstance.from_config(str(home))
        try:
            record_offline_proof(instance, tiny())
            yield Shared(home, root, endpoint, instance, tmp_path)
        finally:
            instance.dispose()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize("executor", ["multiprocess", "in_process"])
def test_terminating_the_run_cancels_the_runpod_job_and_sends_nothing_more(shared, executor) -> None:
    queue_job(shared.root, "g7")
    shared.instance.add_dynamic_partitions(PARTITIONS.name, ["g7"])
    never = threading.Event()  # the job never ends by itself
    shared.endpoint.script = lambda _: Script(progress=[(step(1, 2), 0.05)], hold=never)
    child = shared.start("g7", executor)
    try:
        shared.go("g7")
        wait_for(lambda: len(shared.endpoint.of("status")) >= 2, "the run to follow its RunPod job")
        # As Dagster's run launcher terminates a run: mark it canceling, then interrupt the run worker.
        [run] = shared.instance.get_runs()
        shared.instance.report_run_canceling(run)
        child.send_signal(signal.SIGINT)
        child.wait(timeout=60)
    finally:
        child.kill()
    [cancel] = shared.endpoint.of("cancel")
    assert cancel.job_id == "job-1" and cancel.authorized
    assert shared.endpoint.jobs["job-1"].final["status"] == "CANCELLED"  # type: ignore[index]
    # The in-process executor retries an interrupted step (dagster#15026): that retry sends nothing.
    assert len(shared.endpoint.of("run")) == 1

    record = shared.instance.get_run_by_id(run.run_id)
    assert record is not None and record.status == dg.DagsterRunStatus.CANCELED, shared.log("g7")[-3000:]
    log = [e.user_message for e in shared.instance.all_logs(run.run_id)]
    assert "render g7: run terminated; RunPod job job-1 cancelled (CANCELLED)" in log
    jobs = shared.root / "jobs"
    assert (jobs / "queued" / "g7.json").is_file() and not list((jobs / "rendering").iterdir())
    assert KEY not in shared.log("g7")


def test_partitions_render_at_once_up_to_the_runpod_pools_limit(shared) -> None:
    ids = ["p1", "p2", "p3"]
    for job_id in ids:
        queue_job(shared.root, job_id)
    shared.instance.add_dynamic_partitions(PARTITIONS.name, ids)
    shared.instance.event_log_storage.set_concurrency_slots(
        RUNPOD_POOL, 2
    )  # `dagster instance concurrency set runpod 2`
    release = threading.Event()
    shared.endpoint.script = lambda _: Script(
        progress=[(step(1, 2), 0.05)], hold=release, output=fake_worker(shared.root)
    )
    children = [shared.start(job_id) for job_id in ids]  # they load in parallel

    def blocked_on_the_pool() -> bool:
        return shared.instance.event_log_storage.get_concurrency_info(RUNPOD_POOL).pending_step_count == 1

    try:
        # One at a time into the pool: SQLite instance storage does not make simultaneous claims atomic
        # across processes (Postgres does), and the pool's limit is what is tested here, not SQLite.
        shared.go("p1")
        wait_for(lambda: len(shared.endpoint.in_flight()) == 1, "the first RunPod job")
        shared.go("p2")
        wait_for(
            lambda: len(shared.endpoint.in_flight()) == 2, "the second RunPod job, the first still running"
        )
        shared.go("p3")
        wait_for(blocked_on_the_pool, "the third step to wait for a slot of the runpod pool")
        assert len(shared.endpoint.jobs) == 2
        release.set()
        for job_id, child in zip(ids, children, strict=True):
            assert child.wait(timeout=120) == 0, shared.log(job_id)[-3000:]
    finally:
        for child in children:
            child.kill()
    assert len(shared.endpoint.jobs) == 3 and shared.endpoint.max_overlap() == 2
    done = shared.instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=RENDERS_KEY), limit=10)
    assert {r.partition_key for r in done.records} == set(ids)


def render_one() -> dg.JobDefinition:
    """renders alone, with the Definitions the environment describes (MT_VOLUME, MT_RENDER_BACKEND, MT_RUNPOD_*)."""
    defs = build_definitions(
        tiny(),
        resources={
            "volume": VolumeResource(path=os.environ["MT_VOLUME"]),
            "source": SourceResource(spec="hub"),
        },
    )
    job = dg.define_asset_job("render_one", selection=[RENDERS_KEY])
    return dg.Definitions.merge(defs, dg.Definitions(jobs=[job])).resolve_job_def("render_one")


def main(job_id: str, go: str, executor: str) -> int:
    """A child process: load the job, wait for `go` to exist, then materialize renders[job_id] on the
    DAGSTER_HOME instance, in this process or (multiprocess, Dagster's default for launched runs) in a
    step process of its own."""
    job = render_one()
    while not os.path.exists(go):
        time.sleep(0.02)
    with dg.DagsterInstance.get() as instance:
        if executor == "multiprocess":
            result = dg.execute_job(
                dg.reconstructable(render_one), instance, tags={"dagster/partition": job_id}
            )
        else:
            result = job.execute_in_process(instance=instance, partition_key=job_id, raise_on_error=False)
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
