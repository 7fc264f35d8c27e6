"""The S3 volume on moto_server: kills mid-upload, RunPod's faults through the proxy, locks, the hash
record, multipart uploads left behind, free space, and the commands that need a mounted volume."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mt_assets import provision
from mt_assets.audit import audit
from mt_assets.cli import main as cli_main
from mt_assets.sources import MirrorSource, TransientSourceError
from mt_assets.volume import open_volume
from mt_assets.volume.s3 import ListingError, S3Volume
from mt_assets.volume.s3_hashes import FORMAT
from mt_assets.volume.s3_lock import S3Lock
from mt_assets_tests.conftest import run_cli
from mt_assets_tests.processes import sigkill_when
from mt_assets_tests.s3_server import FaultyProxy
from mt_assets_tests.volume.backends import BUCKET, Backend, GatedMirror, volume_env


@pytest.fixture
def s3(moto_volume_endpoint: str, tmp_path: Path, request: pytest.FixtureRequest) -> Backend:
    prefix = "s3-" + request.node.name[:40].replace("_", "-").lower()
    return Backend("s3", tmp_path, endpoint=moto_volume_endpoint, prefix=prefix)


def result_of(report: provision.ProvisionReport, path: str) -> provision.FetchResult:
    return next(r for r in report.results if r.file.path == path)


# -- kills and wrong bytes -------------------------------------------------------------------------

CHILD = """
import sys
from mt_assets import config, provision
from mt_assets.manifest import load_manifest
from mt_assets.sources import MirrorSource
from mt_assets.volume.s3 import S3Volume
from mt_assets_tests.volume.backends import BUCKET, volume_env
endpoint, prefix, manifest, mirror = sys.argv[1:]
s3 = config.volume_s3_client(env=volume_env(endpoint))
vol = S3Volume(BUCKET, prefix, s3=s3, conditional_writes=True, part_size=256 * 1024, multipart_threshold=256 * 1024)
provision.apply(provision.plan(load_manifest(manifest), vol), MirrorSource(mirror), vol, jobs=1)
"""


def test_sigkill_mid_upload_leaves_nothing_at_the_key_and_the_next_run_aborts_the_upload(
    s3: Backend, tmp_path: Path
) -> None:
    b = s3.fill({"alpha": {"big.bin": 1_500_000}}, place=False)
    assert b.manifest is not None
    mirror = b.mirror(tmp_path / "mirror")
    pipe = mirror / "alpha" / "big.bin"
    pipe.unlink()
    os.mkfifo(pipe)
    manifest = b.write_manifest(tmp_path / "m.yaml")
    victim = subprocess.Popen(
        [sys.executable, "-c", CHILD, b.endpoint, b.prefix, str(manifest), str(mirror)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def a_part_sent() -> bool:
        uploads = b.client.list_multipart_uploads(Bucket=BUCKET, Prefix=f"{b.prefix}/").get("Uploads", [])
        return bool(
            uploads
            and b.client.list_parts(
                Bucket=BUCKET, Key=uploads[0]["Key"], UploadId=uploads[0]["UploadId"]
            ).get("Parts")
        )

    try:
        with open(pipe, "wb") as feed:  # blocks until the provisioner opens the pipe
            feed.write(b.data("big.bin")[:800_000])
            feed.flush()
            sigkill_when(victim, a_part_sent, "sending a part")
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    assert b.get(b.target("big.bin")) is None  # nothing half-written at the key
    assert b.uploads() == [b.target("big.bin")]  # its parts still take space

    pipe.unlink()
    b.mirror(mirror)  # the source is whole again
    vol = b.volume()  # the dead writer's lock: same host and pid space, its pid gone
    report = provision.apply(provision.plan(b.manifest, vol), MirrorSource(mirror), vol)
    assert report.complete
    assert b.get(b.target("big.bin")) == b.data("big.bin")
    assert b.uploads() == []  # the dead upload was aborted


def test_the_hash_record_binds_key_size_and_etag_to_the_sha256(s3: Backend, tmp_path: Path) -> None:
    b = s3.fill(place=False)
    assert b.manifest is not None
    vol = b.volume()
    provision.apply(provision.plan(b.manifest, vol), MirrorSource(b.mirror(tmp_path / "m")), vol)
    doc = json.loads(b.client.get_object(Bucket=BUCKET, Key=f"{b.prefix}/.mt/hashes.json")["Body"].read())
    assert doc["format"] == FORMAT
    listed = {
        o["Key"][len(b.prefix) + 1 :]: o
        for o in b.client.list_objects_v2(Bucket=BUCKET, Prefix=f"{b.prefix}/models/")["Contents"]
    }
    assert set(doc["files"]) == set(listed) == {b.target(f.path) for f in b.files}
    for f in b.files:
        entry = doc["files"][b.target(f.path)]
        assert (entry["size"], entry["sha256"]) == (len(f.data), f.sha256)
        assert entry["etag"] == listed[b.target(f.path)]["ETag"]


def test_the_hash_record_is_written_every_16_files_and_at_the_end_not_once_per_file(
    s3: Backend, tmp_path: Path
) -> None:
    b = s3.fill({"alpha": {f"f{i:02}.bin": 1_000 for i in range(20)}}, place=False)
    assert b.manifest is not None
    with FaultyProxy(b.endpoint) as proxy:
        vol = b.volume(endpoint=proxy.url)
        vol.hash_cache.flush_seconds = 3600.0  # only the count decides here
        report = provision.apply(
            provision.plan(b.manifest, vol), MirrorSource(b.mirror(tmp_path / "m")), vol, jobs=1
        )
    assert report.complete
    record = f"{b.prefix}/.mt/hashes.json"
    writes = [r for r in proxy.requests if r.method == "PUT" and r.path.endswith(record)]
    assert len(writes) == 3  # the first file (none written for a while), files 2-17, then the rest on leaving
    assert not any(r.method == "GET" and "/models/" in r.path for r in proxy.requests)  # nothing re-read
    doc = json.loads(b.client.get_object(Bucket=BUCKET, Key=record)["Body"].read())
    assert set(doc["files"]) == {b.target(f.path) for f in b.files}


# -- RunPod's faults, through the proxy ------------------------------------------------------------


def test_a_full_volume_507_stops_the_run_with_one_line_and_places_nothing_more(
    s3: Backend, tmp_path: Path
) -> None:
    b = s3.fill({"alpha": {"a.bin": 1_000, "b.bin": 300_000, "c.bin": 1_000, "d.bin": 1_000}}, place=False)
    assert b.manifest is not None
    with FaultyProxy(b.endpoint) as proxy:
        proxy.volume_full(path_contains="b.bin")
        vol = b.volume(endpoint=proxy.url)
        report = provision.apply(
            provision.plan(b.manifest, vol), MirrorSource(b.mirror(tmp_path / "m")), vol, jobs=1
        )
    writes = {r.path.rsplit("/", 1)[-1] for r in proxy.requests if r.method in ("PUT", "POST")}
    assert {"c.bin", "d.bin"}.isdisjoint(writes)  # no file started after the 507
    assert result_of(report, "a.bin").outcome == "placed"
    failed = result_of(report, "b.bin")
    assert (failed.outcome, failed.attempts) == ("failed", 1)  # not retried: a full volume stays full
    assert failed.detail == (
        "models/alpha/b.bin: the volume is full (CreateMultipartUpload answered HTTP 507 Insufficient "
        "Storage); nothing was placed"
    )
    for path in ("c.bin", "d.bin"):
        r = result_of(report, path)
        assert (r.outcome, r.status, r.detail) == (
            "failed",
            "missing",
            "not fetched: the run stopped, the volume is full",
        )
    assert report.stopped == (
        f"volume {b.spec}: {failed.detail}; provisioning stopped (1 placed, 3 not): free space on the "
        "volume (RunPod: enlarge the network volume), then run again"
    )
    assert [b.get(b.target(p)) for p in ("b.bin", "c.bin", "d.bin")] == [None, None, None]
    assert b.uploads() == []


def test_a_507_on_the_lock_stops_the_run_as_a_full_volume_naming_volume_and_lock(
    s3: Backend, tmp_path: Path
) -> None:
    b = s3.fill({"alpha": {"a.bin": 1_000, "b.bin": 1_000}}, place=False)
    assert b.manifest is not None
    with FaultyProxy(b.endpoint) as proxy:
        proxy.volume_full(method="PUT", path_contains="/.mt/locks/")
        vol = b.volume(endpoint=proxy.url)
        report = provision.apply(
            provision.plan(b.manifest, vol), MirrorSource(b.mirror(tmp_path / "m")), vol, jobs=1
        )
    failed = result_of(report, "a.bin")
    assert (failed.outcome, failed.attempts) == ("failed", 1)
    assert failed.detail.startswith(f"volume {b.spec}: lock s3://{BUCKET}/{b.prefix}/.mt/locks/")
    assert "the volume is full (HTTP 507 Insufficient Storage)" in failed.detail
    assert report.stopped is not None and "provisioning stopped" in report.stopped
    assert result_of(report, "b.bin").detail == "not fetched: the run stopped, the volume is full"


def test_5xx_on_the_lock_are_transient_and_the_file_is_tried_again(s3: Backend, tmp_path: Path) -> None:
    b = s3.fill({"alpha": {"a.bin": 1_000}}, place=False)
    assert b.manifest is not None
    with FaultyProxy(b.endpoint) as proxy:
        proxy.fail(503, times=3, method="PUT", path_contains="/.mt/locks/")  # all of botocore's attempts
        vol = b.volume(endpoint=proxy.url)
        report = provision.apply(
            provision.plan(b.manifest, vol), MirrorSource(b.mirror(tmp_path / "m")), vol, jobs=1
        )
    placed = result_of(report, "a.bin")
    assert (placed.outcome, placed.status, placed.attempts) == ("placed", "ok", 2), placed.detail
    assert b.get(b.target("a.bin")) == b.data("a.bin")


def test_a_507_stops_the_files_in_flight_and_aborts_their_uploads(s3: Backend, tmp_path: Path) -> None:
    b = s3.fill({"alpha": {"big.bin": 900_000, "small.bin": 1_000}}, place=False)
    assert b.manifest is not None
    gated = GatedMirror(b.mirror(tmp_path / "m"), "big.bin")
    reports: list[provision.ProvisionReport] = []
    with FaultyProxy(b.endpoint) as proxy:
        proxy.volume_full(path_contains="small.bin")
        vol = b.volume(endpoint=proxy.url)
        the_plan = provision.plan(b.manifest, vol)
        run = threading.Thread(target=lambda: reports.append(provision.apply(the_plan, gated, vol, jobs=2)))
        run.start()
        assert gated.started.wait(30)  # big.bin is in flight ...
        deadline = time.monotonic() + 30
        # ... when small.bin meets the 507: the run stops, then looks at small.bin (a HEAD) for its result.
        while True:
            seen = list(proxy.requests)
            full = next((i for i, r in enumerate(seen) if r.status == 507), None)
            if full is not None and any(r.method == "HEAD" and "small.bin" in r.path for r in seen[full:]):
                break
            assert time.monotonic() < deadline
            time.sleep(0.02)
        gated.gate.set()
        run.join(60)
    [report] = reports
    big = result_of(report, "big.bin")
    assert (big.outcome, big.detail) == ("failed", "not fetched: the run stopped, the volume is full")
    assert report.stopped is not None and "HTTP 507" in report.stopped
    assert b.get(b.target("big.bin")) is None
    assert b.uploads() == []  # its upload (if it had begun) aborted


def test_cli_stops_on_a_full_volume_with_one_line_naming_the_volume_and_507(
    s3: Backend, tmp_path: Path
) -> None:
    b = s3.fill(place=False)
    manifest = b.write_manifest(tmp_path / "m.yaml")
    with FaultyProxy(b.endpoint) as proxy:
        proxy.volume_full()
        env = {**os.environ, **volume_env(proxy.url)}
        done = run_cli(
            "provision", "--manifest", str(manifest), "--volume", b.spec, "--source", str(b.mirror(tmp_path / "m")),
            "--jobs", "1", env=env, timeout=120,
        )  # fmt: skip
    assert done.returncode == 1
    [line] = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert line.startswith(f"error: volume {b.spec}: models/")
    assert "HTTP 507 Insufficient Storage" in line and "provisioning stopped (0 placed, 3 not)" in line


def test_files_below_the_put_limit_are_spooled_and_put_once_only_on_a_match(
    s3: Backend, tmp_path: Path
) -> None:
    b = s3.fill({"alpha": {"a.bin": 600_000, "bad.bin": 500_000}}, place=False)
    assert b.manifest is not None
    mirror = b.mirror(tmp_path / "m")
    (mirror / "alpha" / "bad.bin").write_bytes(b"\0" + b.data("bad.bin")[1:])  # one wrong byte
    with FaultyProxy(b.endpoint) as proxy:
        # 600 KB: 64 KiB in memory, the rest spooled on disk, then one PutObject; no multipart.
        vol = b.volume(endpoint=proxy.url, multipart_threshold=1_000_000, spool_memory=64 * 1024)
        report = provision.apply(provision.plan(b.manifest, vol), MirrorSource(mirror), vol)
    assert result_of(report, "a.bin").outcome == "placed"
    assert b.get(b.target("a.bin")) == b.data("a.bin")
    sent = [(r.method, r.path.rsplit("/", 1)[-1]) for r in proxy.requests if r.method in ("PUT", "POST")]
    assert sent.count(("PUT", "a.bin")) == 1 and ("POST", "a.bin") not in sent
    assert ("PUT", "bad.bin") not in sent  # a wrong byte never leaves the machine
    assert result_of(report, "bad.bin").outcome == "failed"


def test_the_lock_probe_leaves_nothing_under_the_state_folder_but_the_hash_record(
    s3: Backend, tmp_path: Path
) -> None:
    b = s3.fill(place=False)
    assert b.manifest is not None
    vol = b.volume(conditional_writes=None)  # probed on the first lock
    report = provision.apply(provision.plan(b.manifest, vol), MirrorSource(b.mirror(tmp_path / "m")), vol)
    assert report.complete
    listed = b.client.list_objects_v2(Bucket=b.bucket, Prefix=f"{b.prefix}/")["Contents"]
    state = sorted(o["Key"][len(b.prefix) + 1 :] for o in listed if "/.mt/" in f"/{o['Key']}")
    assert state == [".mt/hashes.json"]


def test_a_complete_answering_524_whose_object_never_appears_is_aborted_naming_524(
    s3: Backend, tmp_path: Path
) -> None:
    b = s3.fill({"alpha": {"a.bin": 600_000}}, place=False)
    assert b.manifest is not None
    with FaultyProxy(b.endpoint) as proxy:
        # The first POST creates the upload; every later one (Complete) answers 524.
        proxy.fail(524, "Timeout", times=None, skip=1, method="POST", path_contains="a.bin")
        vol = b.volume(endpoint=proxy.url, confirm_timeout=0.5, confirm_poll=0.1)
        report = provision.apply(
            provision.plan(b.manifest, vol), MirrorSource(b.mirror(tmp_path / "m")), vol, retries=0
        )
    failed = result_of(report, "a.bin")
    assert failed.outcome == "failed"
    assert failed.detail is not None
    assert "CompleteMultipartUpload answered HTTP 524" in failed.detail
    assert "did not appear whole within 0.5 s; upload aborted" in failed.detail
    assert b.get(b.target("a.bin")) is None
    assert b.uploads() == []


def test_an_audit_writes_its_hash_record_without_probing_the_endpoint(s3: Backend) -> None:
    b = s3.fill()
    assert b.manifest is not None
    with FaultyProxy(b.endpoint) as proxy:
        vol = b.volume(endpoint=proxy.url, conditional_writes=None)  # unknown: a writer would probe
        assert audit(b.manifest, vol).complete
        written = [(r.method, r.path) for r in proxy.requests if r.method in ("PUT", "POST", "DELETE")]
    assert written == [("PUT", f"/{BUCKET}/{b.prefix}/.mt/hashes.json")]  # one write: the record


def test_a_hash_record_that_cannot_be_read_only_costs_reading_the_files(s3: Backend) -> None:
    b = s3.fill()
    assert b.manifest is not None
    audit(b.manifest, b.volume())
    b.client.put_object(Bucket=BUCKET, Key=f"{b.prefix}/.mt/hashes.json", Body=b"{not json")  # damaged
    damaged = audit(b.manifest, b.volume())
    assert damaged.complete and damaged.bytes_read == sum(len(f.data) for f in b.files)  # and rewritten
    with FaultyProxy(b.endpoint) as proxy:
        proxy.fail(403, "AccessDenied", times=None, method="GET", path_contains="hashes.json")
        denied = audit(b.manifest, b.volume(endpoint=proxy.url))
    assert denied.complete and denied.bytes_read == sum(len(f.data) for f in b.files)
    assert audit(b.manifest, b.volume()).bytes_read == 0  # the record, rewritten after the damage


def test_502s_on_the_listing_are_retried_and_the_audit_completes(s3: Backend) -> None:
    b = s3.fill()
    assert b.manifest is not None
    with FaultyProxy(b.endpoint) as proxy:
        proxy.fail(502, "BadGateway", times=2, method="GET", path_contains=f"/{BUCKET}")
        report = audit(b.manifest, b.volume(endpoint=proxy.url))
        statuses = [r.status for r in proxy.requests]
    assert report.complete
    assert statuses[:3] == [502, 502, 200]


def test_502s_on_parts_and_complete_are_retried_and_the_file_placed(s3: Backend, tmp_path: Path) -> None:
    b = s3.fill({"alpha": {"a.bin": 600_000}}, place=False)
    assert b.manifest is not None
    with FaultyProxy(b.endpoint) as proxy:
        proxy.fail(502, "BadGateway", times=2, method="PUT", path_contains="a.bin")  # two parts
        proxy.fail(502, "BadGateway", times=1, skip=1, method="POST", path_contains="a.bin")  # Complete
        vol = b.volume(endpoint=proxy.url)
        report = provision.apply(provision.plan(b.manifest, vol), MirrorSource(b.mirror(tmp_path / "m")), vol)
        failed_writes = [r for r in proxy.requests if r.status == 502]
    assert result_of(report, "a.bin").outcome == "placed"
    assert len(failed_writes) == 3
    assert b.get(b.target("a.bin")) == b.data("a.bin")


def test_502s_that_do_not_stop_end_the_audit_with_a_message_naming_them(s3: Backend) -> None:
    b = s3.fill()
    assert b.manifest is not None
    with FaultyProxy(b.endpoint) as proxy:
        proxy.fail(502, "BadGateway", times=None, method="GET")
        with pytest.raises(
            TransientSourceError, match=r"listing [^ ]*/models/: the server failed, HTTP 502 \(BadGateway"
        ):
            audit(b.manifest, b.volume(endpoint=proxy.url))


def test_a_repeated_continuation_token_is_asked_again_and_the_listing_completes(s3: Backend) -> None:
    b = s3.fill()
    with FaultyProxy(b.endpoint) as proxy:
        proxy.repeat_continuation_token(times=1)  # RunPod: "same next token received twice"
        vol = b.volume(endpoint=proxy.url, list_page_size=1, list_retry_wait=0.01)
        assert isinstance(vol, S3Volume)
        assert set(vol.listing("models/")) == {b.target(f.path) for f in b.files}
        listings = [r for r in proxy.requests if r.method == "GET" and r.path == f"/{BUCKET}"]
    assert len(listings) == 4  # three pages, the second asked twice
    assert [r.fault for r in listings].count("repeat_continuation_token") == 1


def test_a_repeated_page_is_not_counted_twice_in_the_space_used(s3: Backend) -> None:
    b = s3.fill()
    used = b.volume(list_page_size=1)
    assert isinstance(used, S3Volume)
    with FaultyProxy(b.endpoint) as proxy:
        proxy.repeat_continuation_token(times=1)
        vol = b.volume(endpoint=proxy.url, list_page_size=1, list_retry_wait=0.01)
        assert isinstance(vol, S3Volume)
        assert vol.used_bytes() == used.used_bytes() == sum(len(f.data) for f in b.files)
        assert [r.fault for r in proxy.requests].count("repeat_continuation_token") == 1


def test_a_token_that_keeps_repeating_stops_the_listing_with_a_message_naming_it(s3: Backend) -> None:
    b = s3.fill()
    with FaultyProxy(b.endpoint) as proxy:
        proxy.repeat_continuation_token(times=1)
        vol = b.volume(endpoint=proxy.url, list_page_size=1, list_retries=0)  # no patience at all
        assert isinstance(vol, S3Volume)
        with pytest.raises(
            ListingError, match=r"sent a continuation token it had sent before, 1 time\(s\) in a row"
        ):
            vol.listing("models/")


def test_a_complete_answering_524_is_confirmed_when_the_object_appears_and_verified(
    s3: Backend, tmp_path: Path
) -> None:
    b = s3.fill({"alpha": {"a.bin": 600_000}}, place=False)
    assert b.manifest is not None
    with FaultyProxy(b.endpoint) as proxy:
        proxy.complete_times_out(524, delay=1.0, path_contains="a.bin")  # the merge ends a second later
        vol = b.volume(endpoint=proxy.url, confirm_poll=0.2, confirm_timeout=30)
        report = provision.apply(provision.plan(b.manifest, vol), MirrorSource(b.mirror(tmp_path / "m")), vol)
        heads = [r for r in proxy.requests if r.method == "HEAD" and "a.bin" in r.path]
        reads = proxy.gets("a.bin")
    placed = result_of(report, "a.bin")
    assert (placed.outcome, placed.status, placed.attempts) == ("placed", "ok", 1)
    assert heads  # confirmed by HeadObject
    assert reads  # and verified: its bytes read back and hashed
    assert b.get(b.target("a.bin")) == b.data("a.bin")
    assert b.uploads() == []
    assert audit(b.manifest, b.volume()).bytes_read == 0  # recorded once verified


def test_a_complete_answering_524_over_a_damaged_file_of_the_same_size_places_the_new_one(
    s3: Backend, tmp_path: Path
) -> None:
    b = s3.fill({"alpha": {"a.bin": 600_000}}, place=False)
    assert b.manifest is not None
    good = b.data("a.bin")
    b.put(b.target("a.bin"), bytes(len(good)))  # damaged: the right size, the wrong bytes
    with FaultyProxy(b.endpoint) as proxy:
        proxy.complete_times_out(
            524, delay=1.0, path_contains="a.bin"
        )  # the old object answers HEAD meanwhile
        vol = b.volume(endpoint=proxy.url, confirm_poll=0.2, confirm_timeout=30)
        report = provision.apply(provision.plan(b.manifest, vol), MirrorSource(b.mirror(tmp_path / "m")), vol)
        deletes = [r for r in proxy.requests if r.method == "DELETE" and r.path.endswith("a.bin")]
    placed = result_of(report, "a.bin")
    assert (placed.outcome, placed.status, placed.attempts) == ("placed", "ok", 1)
    assert deletes == []  # the old object was never taken for the new one
    assert b.get(b.target("a.bin")) == good
    assert b.uploads() == []


# -- locks, and without them -----------------------------------------------------------------------


def test_a_held_lock_refuses_a_second_writer_and_a_stale_one_is_taken_over(s3: Backend) -> None:
    vol = s3.volume()
    assert isinstance(vol, S3Volume)
    key = f"{s3.prefix}/.mt/locks/test.lock"
    first = S3Lock(vol.client, BUCKET, key, stale_after=60, heartbeat=60)
    second = S3Lock(vol.client, BUCKET, key, stale_after=60)
    assert first.try_acquire()
    assert not second.try_acquire()  # a live holder: If-None-Match refused, not stale
    first._stop.set()
    assert first.holder() is not None
    judge = S3Lock(vol.client, BUCKET, key, stale_after=0.5, trust_local_pids=False)
    time.sleep(1.2)
    assert judge.try_acquire()  # stale by the server's clock: taken over
    assert not first.still_held()  # the presumed-dead writer learns it before completing
    judge.release()
    assert second.try_acquire()
    second.release()


def test_a_lock_keeps_beating_where_the_endpoint_refuses_if_match(s3: Backend) -> None:
    key = f"{s3.prefix}/.mt/locks/beat.lock"
    with FaultyProxy(s3.endpoint) as proxy:
        vol = s3.volume(endpoint=proxy.url)
        assert isinstance(vol, S3Volume)
        # The create (If-None-Match) passes; the first heartbeat (If-Match) is refused as unknown.
        proxy.fail(501, "NotImplemented", times=1, skip=1, method="PUT", path_contains="beat.lock")
        lock = S3Lock(vol.client, BUCKET, key, stale_after=60, heartbeat=0.1)
        assert lock.try_acquire()
        time.sleep(0.6)
        assert not lock.lost and lock.still_held()  # beating with a read, then a plain put
        assert [r.status for r in proxy.requests if r.method == "PUT"][:3] == [200, 501, 200]
        lock.release()
        assert lock.holder() is None


def test_a_heartbeat_that_meets_502s_for_a_while_keeps_the_lock_and_the_upload_completes(
    s3: Backend, tmp_path: Path
) -> None:
    b = s3.fill({"alpha": {"a.bin": 600_000}}, place=False)
    assert b.manifest is not None
    gated = GatedMirror(b.mirror(tmp_path / "m"), "a.bin")
    reports: list[provision.ProvisionReport] = []
    with FaultyProxy(b.endpoint) as proxy:
        vol = b.volume(endpoint=proxy.url, lock_stale_after=4.0)  # a heartbeat every second
        the_plan = provision.plan(b.manifest, vol)
        run = threading.Thread(target=lambda: reports.append(provision.apply(the_plan, gated, vol, jobs=1)))
        run.start()
        assert gated.started.wait(30)  # the lock is held, the file not sent yet
        # One heartbeat meets 502 on all of botocore's attempts: the endpoint hiccups, nobody took the lock.
        proxy.fail(502, times=3, method="PUT", path_contains="/.mt/locks/")
        deadline = time.monotonic() + 30
        while [r.status for r in proxy.requests].count(502) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(1.5)  # the next heartbeat goes through
        gated.gate.set()
        run.join(60)
        beats = [r.status for r in proxy.requests if r.method == "PUT" and "/.mt/locks/" in r.path]
    placed = result_of(reports[0], "a.bin")
    assert (placed.outcome, placed.status, placed.attempts) == ("placed", "ok", 1), placed.detail
    assert beats.count(502) == 3 and beats[-1] == 200  # beating again after the 502s
    assert b.get(b.target("a.bin")) == b.data("a.bin")


def test_where_the_endpoint_ignores_if_match_a_lock_reads_before_it_beats_and_learns_it_was_taken(
    s3: Backend,
) -> None:
    with FaultyProxy(s3.endpoint) as proxy:
        proxy.ignore_if_match(times=None)  # accepted and ignored, probe and lock alike
        vol = s3.volume(endpoint=proxy.url, conditional_writes=None)
        assert isinstance(vol, S3Volume)
        lock = vol.lock_for("models/a/x.bin")
        assert isinstance(lock, S3Lock)
        lock.heartbeat = 0.2
        assert lock.try_acquire()
        key = lock.path.split("/", 3)[3]
        s3.client.delete_object(Bucket=BUCKET, Key=key)  # another writer takes it over meanwhile
        other = S3Lock(s3.client, BUCKET, key, stale_after=60)
        assert other.try_acquire()
        time.sleep(0.8)  # a few heartbeats of the first holder
        try:
            assert lock.lost and not lock.still_held()  # its heartbeat saw the ETag changed
            assert other.still_held()  # not overwritten: one holder, not two
        finally:
            other.release()
            lock.release()


def test_locks_are_used_only_where_a_live_probe_saw_the_second_writer_refused(
    s3: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    assert isinstance(s3.volume(conditional_writes=None).lock_for("models/a/x.bin"), S3Lock)  # moto: 412
    with FaultyProxy(s3.endpoint) as proxy, caplog.at_level(logging.WARNING, logger="mt_assets.volume.s3"):
        proxy.ignore_if_none_match(times=None)  # an S3 look-alike that accepts the header and ignores it
        vol = s3.volume(endpoint=proxy.url, conditional_writes=None)
        assert not isinstance(vol.lock_for("models/a/x.bin"), S3Lock)
        assert not isinstance(vol.lock_for("models/a/y.bin"), S3Lock)
    [warning] = [r.getMessage() for r in caplog.records]  # once per volume
    assert warning.startswith(
        f"volume {s3.spec}: the endpoint does not enforce conditional writes (If-None-Match)"
    )


def test_a_probe_that_gets_no_answer_is_transient_and_not_taken_as_no_conditional_writes(s3: Backend) -> None:
    with FaultyProxy(s3.endpoint) as proxy:
        vol = s3.volume(endpoint=proxy.url, conditional_writes=None)
        assert isinstance(vol, S3Volume)
        proxy.fail(502, times=3, method="PUT", path_contains="/.mt/probe-")  # all of botocore's attempts
        with pytest.raises(TransientSourceError, match=r"probing conditional_writes.*HTTP 502"):
            vol.lock_for("models/a/x.bin")
        assert isinstance(vol.lock_for("models/a/x.bin"), S3Lock)  # probed again: the endpoint enforces it


def test_without_conditional_writes_two_provisioners_both_upload_and_the_volume_ends_correct(
    s3: Backend, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    b = s3.fill({"alpha": {"x.bin": 300_000, "y.bin": 100_000}}, place=False)
    assert b.manifest is not None
    root = b.mirror(tmp_path / "mirror")
    gated = GatedMirror(root, "x.bin")
    reports: dict[str, provision.ProvisionReport] = {}
    vol_a, vol_b = b.volume(conditional_writes=False), b.volume(conditional_writes=False)

    def run(name: str, source: MirrorSource, vol: Any) -> None:
        reports[name] = provision.apply(provision.plan(b.manifest, vol), source, vol, jobs=1)  # type: ignore[arg-type]

    with caplog.at_level(logging.WARNING, logger="mt_assets.volume.s3"):
        first = threading.Thread(target=run, args=("first", gated, vol_a))
        first.start()
        assert gated.started.wait(30)
        run("second", MirrorSource(root), vol_b)  # no lock to wait for: it uploads x.bin too
        gated.gate.set()
        first.join(60)
    assert {r.file.path: r.outcome for r in reports["second"].results} == {
        "x.bin": "placed",
        "y.bin": "placed",
    }
    assert result_of(reports["first"], "x.bin").outcome == "placed"  # identical bytes, last writer wins
    assert audit(b.manifest, b.volume(), full=True).complete
    warnings = [r.getMessage() for r in caplog.records if "conditional writes" in r.getMessage()]
    assert len(warnings) == 2  # once per volume (here: per provisioner)
    assert "the last one wins with identical bytes" in warnings[0]


def test_stale_uploads_of_others_are_aborted_and_live_ones_kept(s3: Backend, tmp_path: Path) -> None:
    b = s3.fill({"alpha": {"a.bin": 1000}}, place=False)
    assert b.manifest is not None

    def start(name: str, *, part: bool) -> str:
        key = f"{b.prefix}/models/other/{name}"
        upload_id = b.client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
        if part:  # a live writer sends parts (moto reports a fixed Initiated date: parts tell)
            b.client.upload_part(Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=1, Body=b"x")
        return upload_id

    start("old.bin", part=True)
    time.sleep(3.1)  # part dates and the server's clock are whole seconds: 3 s or more, past 2.0
    live = start("live.bin", part=True)
    starting = start("starting.bin", part=False)  # no part sent yet: takes no space, may be live
    vol = b.volume(stale_upload_age=2.0)
    report = provision.apply(provision.plan(b.manifest, vol), MirrorSource(b.mirror(tmp_path / "m")), vol)
    assert report.complete
    # the old one aborted, other provisioners' kept
    assert sorted(b.uploads()) == ["models/other/live.bin", "models/other/starting.bin"]
    for name, upload_id in (("live.bin", live), ("starting.bin", starting)):
        b.client.abort_multipart_upload(
            Bucket=BUCKET, Key=f"{b.prefix}/models/other/{name}", UploadId=upload_id
        )


# -- free space ------------------------------------------------------------------------------------


@pytest.fixture
def runpod_rest() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A loopback stand-in for RunPod's REST API: GET /networkvolumes/<id> -> {"id", "size": 1} (GB)."""
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append({"path": self.path, "authorization": self.headers.get("authorization", "")})
            body = json.dumps({"id": self.path.rsplit("/", 1)[-1], "size": 1, "name": "v"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    finally:
        server.shutdown()
        server.server_close()


def test_free_space_is_runpods_volume_size_less_the_listing_and_unknown_without_a_key(
    s3: Backend, runpod_rest: tuple[str, list[dict[str, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, seen = runpod_rest
    b = s3.fill()
    used = sum(len(f.data) for f in b.files)
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    assert b.volume(rest_base=base).free_bytes() is None  # no key: unknown, never guessed
    assert seen == []
    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_secret")
    vol = b.volume(rest_base=base)
    assert vol.free_bytes() == 1_000_000_000 - used
    assert seen == [{"path": f"/v1/networkvolumes/{BUCKET}", "authorization": "Bearer rpa_secret"}]
    report = audit(b.manifest, vol)  # type: ignore[arg-type]
    assert report.fits
    assert report.free_bytes == 1_000_000_000 - vol.used_bytes()  # the hash record, now written, counts too


def test_an_s3_volume_of_unknown_size_plans_without_refusing_and_says_so(s3: Backend, tmp_path: Path) -> None:
    b = s3.fill(place=False)
    manifest = b.write_manifest(tmp_path / "m.yaml")
    env = {**os.environ, **volume_env(b.endpoint)}
    env.pop("RUNPOD_API_KEY", None)
    result = run_cli(
        "provision",
        "--manifest",
        str(manifest),
        "--volume",
        b.spec,
        "--source",
        str(tmp_path),
        "--dry-run",
        env=env,
    )
    assert result.returncode == 1, result.stderr
    assert "free space unknown on this volume" in result.stdout


# -- the commands ----------------------------------------------------------------------------------


def test_cli_provisions_and_audits_an_s3_volume_with_its_own_endpoint_and_keys(
    s3: Backend, tmp_path: Path
) -> None:
    b = s3.fill(place=False)
    manifest = b.write_manifest(tmp_path / "m.yaml")
    mirror = b.mirror(tmp_path / "mirror")
    # The volume's variables only: AWS_* point elsewhere (an s3:// source would use those).
    env = {
        **os.environ,
        **volume_env(b.endpoint),
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "x",
    }
    done = run_cli(
        "provision",
        "--manifest",
        str(manifest),
        "--volume",
        b.spec,
        "--source",
        str(mirror),
        "--json",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["complete"] is True
    audited = run_cli("audit", "--manifest", str(manifest), "--volume", b.spec, "--full", "--json", env=env)
    assert audited.returncode == 0, audited.stderr
    doc = json.loads(audited.stdout)
    assert (doc["complete"], doc["volume"], doc["free_bytes"]) == (True, b.spec, None)
    assert "testing" not in done.stdout + done.stderr + audited.stdout + audited.stderr


@pytest.mark.parametrize("command", ["audit", "provision"])
def test_cli_closes_the_s3_volume_when_the_command_ends(
    s3: Backend, tmp_path: Path, command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = s3.fill(place=False)
    manifest = b.write_manifest(tmp_path / "m.yaml")
    closed: list[str] = []
    real_close = S3Volume.close

    def close(self: S3Volume) -> None:
        closed.append(self.uri)
        real_close(self)

    monkeypatch.setattr(S3Volume, "close", close)  # the real close, noted
    args = [command, "--manifest", str(manifest), "--volume", b.spec, "--json"]
    if command == "provision":
        args += ["--source", str(b.mirror(tmp_path / "mirror"))]
    result = CliRunner().invoke(cli_main, args, env=volume_env(b.endpoint))
    assert result.exit_code == (0 if command == "provision" else 1), result.output
    assert closed == [b.spec]


def test_refused_keys_are_named_as_the_volumes_own_variables_never_their_values(
    s3: Backend, tmp_path: Path
) -> None:
    b = s3.fill()
    manifest = b.write_manifest(tmp_path / "m.yaml")
    with FaultyProxy(b.endpoint) as proxy:
        proxy.fail(403, "SignatureDoesNotMatch", times=None)
        env = {**os.environ, **volume_env(proxy.url), "MT_VOLUME_S3_SECRET_ACCESS_KEY": "rps_never-shown"}
        result = run_cli("audit", "--manifest", str(manifest), "--volume", b.spec, env=env, timeout=60)
    assert result.returncode == 2
    assert f"error: volume {b.spec}: listing {b.prefix}/models/: the request signature does not match: " in (
        result.stderr
    )
    assert (
        "check MT_VOLUME_S3_SECRET_ACCESS_KEY (and that it belongs to MT_VOLUME_S3_ACCESS_KEY_ID)"
        in result.stderr
    )
    assert "rps_never-shown" not in result.stdout + result.stderr


@pytest.mark.parametrize("command", [["render", "job.yaml"], ["verify-offline"], ["jobs", "list"]])
def test_commands_that_read_files_refuse_an_s3_volume_saying_it_must_be_mounted(command: list[str]) -> None:
    result = run_cli(*command, "--volume", "s3://some-volume/prefix", timeout=60)
    assert result.returncode == 2
    assert "error: volume s3://some-volume/prefix: " in result.stderr
    assert "needs a mounted volume (a folder such as /runpod-volume or /workspace)" in result.stderr


def test_the_worker_refuses_an_s3_volume_at_start_up() -> None:
    from mt_assets.worker.environment import WorkerSettings
    from mt_assets.worker.startup import StartupError, open_settings

    with pytest.raises(StartupError, match="the worker needs a mounted volume") as raised:
        open_settings(WorkerSettings(volume="s3://some-volume", profile="tiny"))
    assert raised.value.exit_status == 2


def test_open_volume_names_a_bad_bucket_as_the_volume() -> None:
    with pytest.raises(ValueError, match=r"^volume s3://Bad_Bucket: bucket name 'Bad_Bucket' is not a valid"):
        open_volume("s3://Bad_Bucket")


def test_one_volume_key_without_the_other_is_bad_input_naming_the_missing_one() -> None:
    env = {**os.environ, "MT_VOLUME_S3_ACCESS_KEY_ID": "user_x"}
    env.pop("MT_VOLUME_S3_SECRET_ACCESS_KEY", None)
    result = run_cli("audit", "--profile", "tiny", "--volume", "s3://some-volume", env=env, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith(
        "error: volume s3://some-volume: MT_VOLUME_S3_SECRET_ACCESS_KEY: expected it"
    )
    assert "user_x" not in result.stderr
