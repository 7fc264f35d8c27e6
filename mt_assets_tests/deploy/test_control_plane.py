"""The production control plane at work: the webserver and the daemon as two processes on one
Postgres, renders queued from the inbox and paced by the `gpu` pool, the daemon killed mid-render,
and the drift sensor repairing a corrupted model file. What the tests read, they read through the
webserver's GraphQL, except the volume itself and a check evaluation."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import av
import dagster as dg
import pytest

from mt_assets.defs.keys import file_key
from mt_assets.jobs.queue import JobQueue
from mt_assets.manifest import load_profile
from mt_assets_tests.defs.test_renders import RenderEnv
from mt_assets_tests.deploy.conftest import MAX_RUNTIME, ControlPlane, alive, kill_group

RUNS = """
query Runs($tags: [ExecutionTag!], $runIds: [String!]) {
  runsOrError(filter: {tags: $tags, runIds: $runIds}) {
    ... on Runs { results { runId status startTime endTime tags { key value }
                            stepStats { stepKey status startTime endTime } } }
  }
}"""

EVENTS = """
query Events($runId: ID!) {
  logsForRun(runId: $runId, limit: 1000) {
    ... on EventConnection { events { __typename
      ... on MessageEvent { message }
      ... on MaterializationEvent { assetKey { path } partition } } }
  }
}"""

MATERIALIZATIONS = """
query Materializations($partitions: [String!]) {
  assetOrError(assetKey: {path: ["renders"]}) {
    ... on Asset { assetMaterializations(partitions: $partitions) { runId partition
      metadataEntries { label ... on PathMetadataEntry { path } ... on TextMetadataEntry { text } } } }
  }
}"""

POOL = '{ instance { concurrencyLimit(concurrencyKey: "gpu") { slotCount } } }'

FINISHED = ("SUCCESS", "FAILURE", "CANCELED")
KILL_STEPS = 16  # sampling takes seconds, so the kill lands mid-render


def runs(plane: ControlPlane, run_ids: list[str] | None = None, **tags: str) -> list[dict[str, Any]]:
    found = plane.graphql(RUNS, tags=[{"key": k, "value": v} for k, v in tags.items()], runIds=run_ids)
    return found["runsOrError"]["results"]


def wait_for_runs(
    plane: ControlPlane, count: int, timeout: float = 300, run_ids: list[str] | None = None, **tags: str
) -> list[dict[str, Any]]:
    """The `count` runs with `tags` (or `run_ids`), once all have finished (oldest first)."""
    deadline = time.monotonic() + timeout
    while True:
        found = runs(plane, run_ids, **tags)
        if len(found) >= count and all(r["status"] in FINISHED for r in found):
            return sorted(found, key=lambda r: r["startTime"] or 0)
        if time.monotonic() > deadline:
            pytest.fail(f"{count} finished run(s) with {tags} after {timeout} s: {found}\n{plane.log_tail()}")
        time.sleep(1)


def wait_until(what: str, predicate: Any, plane: ControlPlane, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not after {timeout} s\n{plane.log_tail()}")
        time.sleep(0.5)
    return value


def drop(plane: ControlPlane, job_id: str, **fields: object) -> None:
    RenderEnv(plane.volume, None, None).drop(job_id, **fields)  # type: ignore[arg-type]


def frames_of(video: Path) -> int:
    with av.open(str(video)) as container:
        return sum(1 for _ in container.decode(video=0))


def no_partial_outputs(volume: Path) -> list[str]:
    """Hidden staging or set-aside folders under outputs/ (what a killed writer leaves)."""
    return sorted(p.name for p in (volume / "outputs").glob(".*"))


def test_two_processes_on_one_postgres_with_one_dagster_release(plane: ControlPlane) -> None:
    # The fixture waited for the daemon's heartbeats as the webserver reads them: one database.
    assert plane.webserver is not None and plane.daemon is not None
    assert (
        plane.webserver.pid != plane.daemon.pid
        and plane.webserver.poll() is None
        and plane.daemon.poll() is None
    )
    text = plane.log_text()
    assert "version mismatch" not in text.lower(), text
    assert plane.graphql(POOL)["instance"]["concurrencyLimit"]["slotCount"] == 1
    config = (plane.home / "dagster.yaml").read_text()
    assert "DAGSTER_PG_URL" in config and "postgresql" not in config  # the URL stays in the environment
    print(f"\nstart-up: {plane.started}")


def test_two_inbox_jobs_are_queued_by_the_daemon_and_rendered_one_at_a_time(plane: ControlPlane) -> None:
    ids = ["pg-alpha", "pg-bravo"]
    for job_id in ids:
        drop(plane, job_id)
    done = wait_for_runs(plane, 2, **{"mt_assets/trigger": "render_inbox"})
    assert [r["status"] for r in done] == ["SUCCESS", "SUCCESS"], done
    assert sorted(_tag(r, "dagster/partition") for r in done) == ids

    # One at a time: the steps' windows do not overlap (nor do the runs': the second waited queued).
    [first], [second] = (r["stepStats"] for r in done)
    assert first["stepKey"] == second["stepKey"] == "renders"
    assert first["endTime"] <= second["startTime"], (first, second)
    assert done[0]["endTime"] <= done[1]["startTime"], done
    gap = second["startTime"] - first["endTime"]
    print(f"\nrender steps: {first['startTime']:.1f}-{first['endTime']:.1f}, "
          f"{second['startTime']:.1f}-{second['endTime']:.1f} (gap {gap:.1f} s)")  # fmt: skip

    for run in done:
        events = plane.graphql(EVENTS, runId=run["runId"])["logsForRun"]["events"]
        kinds = {e["__typename"] for e in events}
        expected = {
            "RunEnqueuedEvent",
            "RunStartingEvent",
            "RunStartEvent",
            "MaterializationEvent",
            "RunSuccessEvent",
        }
        assert expected <= kinds, kinds
        [m] = [e for e in events if e["__typename"] == "MaterializationEvent"]
        assert m["assetKey"]["path"] == ["renders"] and m["partition"] == _tag(run, "dagster/partition")
        assert any(e.get("message", "").startswith(f"render {m['partition']}:") for e in events)

    found = plane.graphql(MATERIALIZATIONS, partitions=ids)["assetOrError"]["assetMaterializations"]
    assert {(m["runId"], m["partition"]) for m in found} == {
        (r["runId"], _tag(r, "dagster/partition")) for r in done
    }
    for m in found:
        video = Path(next(e["path"] for e in m["metadataEntries"] if e["label"] == "video"))
        assert video == plane.volume / "outputs" / m["partition"] / "video.mp4" and frames_of(video) == 13
        assert (plane.volume / "jobs" / "done" / f"{m['partition']}.json").is_file()

    # Compute logs went to the bucket (MT_COMPUTE_LOGS_S3): readable from any machine.
    keys = plane.compute_log_keys()
    for run in done:
        assert any(f"/storage/{run['runId']}/compute_logs/" in k for k in keys), keys


def test_the_daemon_killed_mid_render_loses_neither_the_job_nor_leaves_a_partial_mp4(
    plane: ControlPlane,
) -> None:
    job_id = "pg-kill"
    drop(plane, job_id, steps=KILL_STEPS)
    marker = plane.volume / "jobs" / "rendering" / f"{job_id}.lock"
    wait_until("the render started (its rendering marker)", marker.exists, plane)
    [run] = [r for r in runs(plane, **{"dagster/partition": job_id}) if r["status"] == "STARTED"]

    # SIGKILL to the daemon and everything it started: its code server and the run worker rendering,
    # as when the daemon's machine or container dies.
    assert plane.daemon is not None
    killed = kill_group(plane.daemon.pid)
    plane.daemon.wait(timeout=10)
    wait_until("the daemon's processes gone", lambda: not any(alive(p) for p in killed), plane, 10)
    killed_at = time.time()
    assert not (plane.volume / "outputs" / job_id).exists()  # nothing at the final path mid-render

    plane.start_daemon()
    restarted = plane.wait_healthy(since=time.time())

    # Run monitoring decides: the worker vanished, so the run fails once it passes its maximum run
    # time; a run that failed without a failing step is retried once (run_retries), from the failure.
    [ended] = wait_for_runs(plane, 1, timeout=MAX_RUNTIME + 120, run_ids=[run["runId"]])
    assert ended["status"] in ("SUCCESS", "FAILURE"), ended
    print(f"\nkilled {len(killed)} processes; daemon back in {restarted:.1f} s; the run ended "
          f"{ended['status']} {ended['endTime'] - killed_at:.1f} s after the kill")  # fmt: skip
    if ended["status"] == "FAILURE":
        [retry] = wait_for_runs(plane, 1, timeout=240, **{"dagster/parent_run_id": run["runId"]})
        assert retry["status"] == "SUCCESS", (retry, plane.log_tail())
        print(
            f"retried by run {retry['runId'][:8]}: {retry['status']} at +{retry['endTime'] - killed_at:.1f} s"
        )

    states = {s.id: s.state for s in JobQueue(plane.volume).status()}
    assert states[job_id] in ("done", "queued"), states
    video = plane.volume / "outputs" / job_id / "video.mp4"
    if states[job_id] == "done":
        assert frames_of(video) == 13
    else:
        assert not video.exists()
    assert no_partial_outputs(plane.volume) == []
    assert not marker.exists()


def test_a_corrupted_model_file_is_repaired_by_the_daemons_drift_sensor(plane: ControlPlane) -> None:
    f = next(f for f in load_profile("tiny").files if f.kind == "weights" and f.size > 10_000)
    path = plane.volume / f.target
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))  # the bytes change, and so do mtime and ctime
    corrupted_at = time.time()
    assert hashlib.sha256(path.read_bytes()).hexdigest() != f.sha256

    [repair] = wait_for_runs(plane, 1, timeout=180, **{"mt_assets/trigger": "volume_drift"})
    assert repair["status"] == "SUCCESS", plane.log_tail()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == f.sha256
    print(f"\nrepair run of {f.target}: started {repair['startTime'] - corrupted_at:.1f} s after the "
          f"corruption, done at +{repair['endTime'] - corrupted_at:.1f} s")  # fmt: skip

    with plane.instance() as instance:
        record = instance.get_latest_asset_check_evaluation_record(
            dg.AssetCheckKey(file_key(f), "sha256_matches")
        )
    assert record is not None and record.run_id == repair["runId"], record
    assert record.evaluation is not None and record.evaluation.passed


def _tag(run: dict[str, Any], key: str) -> str | None:
    return next((t["value"] for t in run["tags"] if t["key"] == key), None)
