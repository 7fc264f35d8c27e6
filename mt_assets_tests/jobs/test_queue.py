"""The render job queue on the volume: inbox → queued → rendering → done | failed, or rejected."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pytest
import yaml

from mt_assets.jobs import queue as queue_module
from mt_assets.jobs.decode import load_job_media
from mt_assets.jobs.queue import (
    CLAIM_LEASE_SECONDS,
    JOBS_DIR,
    STATES,
    JobBusy,
    JobNotFound,
    JobQueue,
    ScanResult,
)
from mt_assets.jobs.reader import load_job
from mt_assets.jobs.schema import JobError
from mt_assets.tiny.samples import write_face_image, write_speech
from mt_assets_tests.conftest import run_cli


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    """A volume with media of its own (media/face.png, media/speech.wav)."""
    root = tmp_path / "volume"
    write_face_image(root / "media" / "face.png", 64, 48)
    write_speech(root / "media" / "speech.wav", 1.0)
    return root


@pytest.fixture
def queue(volume: Path) -> JobQueue:
    return JobQueue(volume, settle_seconds=0, stable_seconds=0)


def job_doc(image: str = "face.png", audio: str = "speech.wav", **fields: Any) -> dict[str, Any]:
    """A valid one-speaker job: 1 s of speech gives 25 audio frames, enough for frames 13."""
    return {
        "prompt": "A woman talks.",
        "cond_image": image,
        "cond_audio": {"person1": audio},
        "frames": 13,
    } | fields


def drop_file(queue: JobQueue, name: str, doc: dict[str, Any]) -> Path:
    path = queue.folder("inbox") / name
    path.write_text(json.dumps(doc) if name.endswith(".json") else yaml.safe_dump(doc))
    return path


def drop_folder(queue: JobQueue, name: str, doc: dict[str, Any], *, job_name: str = "job.yaml") -> Path:
    """inbox/<name>/ with job.yaml, face.png and speech.wav (what job_doc() refers to)."""
    folder = queue.folder("inbox") / name
    write_face_image(folder / "face.png", 64, 48, seed=1)
    write_speech(folder / "speech.wav", 1.0, seed=1)
    (folder / job_name).write_text(yaml.safe_dump(doc))
    return folder


def queued_doc(queue: JobQueue, job_id: str) -> dict[str, Any]:
    return json.loads((queue.folder("queued") / f"{job_id}.json").read_text())


def accepted_ids(result: ScanResult) -> list[str]:
    return sorted(a.id for a in result.accepted)


def states(queue: JobQueue) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for s in queue.status():
        found.setdefault(s.state, []).append(s.id)
    return found


# --- accepting ----------------------------------------------------------------------------------


def test_scan_accepts_a_job_file_and_a_job_folder_with_media_rewritten_to_volume_refs(
    queue: JobQueue, volume: Path
) -> None:
    drop_file(queue, "a1.yaml", job_doc("volume:media/face.png", str(volume / "media" / "speech.wav")))
    drop_folder(queue, "b2", job_doc())  # no id: the folder's name

    result = queue.scan_inbox()

    assert accepted_ids(result) == ["a1", "b2"]
    assert result.rejected == [] and result.waiting == []
    assert list(queue.folder("inbox").iterdir()) == []  # entries removed once queued
    a1 = queued_doc(queue, "a1")
    assert a1["cond_image"] == "volume:media/face.png"  # volume: refs stay
    assert a1["cond_audio"] == {"person1": "volume:media/speech.wav"}  # absolute in the volume → volume:
    b2 = queued_doc(queue, "b2")
    assert b2["id"] == "b2"
    assert b2["cond_image"] == "volume:jobs/media/b2/face.png"
    assert b2["cond_audio"] == {"person1": "volume:jobs/media/b2/speech.wav"}
    assert (volume / JOBS_DIR / "media" / "b2" / "face.png").is_file()
    for accepted in result.accepted:
        assert accepted.path == queue.folder("queued") / f"{accepted.id}.json"
        assert accepted.job == queue.load(accepted.id)


def test_rewritten_media_still_load_after_the_job_moves_to_done(queue: JobQueue, volume: Path) -> None:
    drop_folder(queue, "b2", job_doc())
    queue.scan_inbox()

    done = queue.mark_done("b2", volume / "outputs" / "b2")

    assert done == queue.folder("done") / "b2.json" and not (queue.folder("queued") / "b2.json").exists()
    job = queue.load("b2")
    assert job.cond_image == str(volume / JOBS_DIR / "media" / "b2" / "face.png")
    media = load_job_media(job)
    assert media.image.size == (64, 48)
    # And from another mount point of the same volume: volume: refs follow the root.
    moved = volume.with_name("mounted-elsewhere")
    volume.rename(moved)
    again = load_job(moved / JOBS_DIR / "done" / "b2.json", volume_root=moved)
    assert again.cond_image == str(moved / JOBS_DIR / "media" / "b2" / "face.png")
    load_job_media(again)


def test_media_of_the_same_name_are_both_kept(queue: JobQueue) -> None:
    folder = queue.folder("inbox") / "duo"
    write_face_image(folder / "face.png", 64, 48, faces=2)
    write_speech(folder / "left" / "speech.wav", 1.0, seed=1)
    write_speech(folder / "right" / "speech.wav", 1.0, seed=2)
    doc = job_doc(audio="left/speech.wav") | {
        "cond_audio": {"person1": "left/speech.wav", "person2": "right/speech.wav"}
    }
    (folder / "job.json").write_text(json.dumps(doc))

    assert accepted_ids(queue.scan_inbox()) == ["duo"]

    assert queued_doc(queue, "duo")["cond_audio"] == {
        "person1": "volume:jobs/media/duo/speech.wav",
        "person2": "volume:jobs/media/duo/speech-2.wav",
    }
    load_job_media(queue.load("duo"))


# --- rejecting ----------------------------------------------------------------------------------


def test_image_path_leading_out_of_the_volume_is_rejected_with_the_field(
    queue: JobQueue, tmp_path: Path
) -> None:
    write_face_image(tmp_path / "secret.png", 16, 16)
    drop_folder(queue, "evil", job_doc(image="../../../../secret.png"))

    result = queue.scan_inbox()

    assert result.accepted == []
    [rejected] = result.rejected
    assert rejected.name == "evil"
    assert rejected.path == queue.folder("rejected") / "evil"
    assert (rejected.path / "job.yaml").is_file()  # the entry as dropped
    error = (queue.folder("rejected") / "evil.error.txt").read_text()
    assert error.strip() == rejected.error
    assert "render job jobs/inbox/evil/job.yaml: field 'cond_image'" in error
    assert "'../../../../secret.png' is outside the allowed roots" in error
    assert ".claimed-" not in error  # named as dropped, not as claimed
    assert not (queue.folder("queued") / "evil.json").exists()


def test_folder_with_two_job_files_is_rejected(queue: JobQueue) -> None:
    folder = drop_folder(queue, "twice", job_doc())
    (folder / "job.json").write_text(json.dumps(job_doc()))

    [rejected] = queue.scan_inbox().rejected

    assert "exactly one of job.yaml, job.yml, job.json" in rejected.error
    assert "found job.json, job.yaml" in rejected.error
    assert (queue.folder("rejected") / "twice" / "job.json").is_file()


def test_folder_without_job_file_names_what_it_found(queue: JobQueue) -> None:
    drop_folder(queue, "c3", job_doc(), job_name="c3.yaml")

    [rejected] = queue.scan_inbox().rejected

    assert "c3.yaml: rename the job file job.yaml" in rejected.error


def test_invalid_field_and_non_job_files_are_rejected_and_names_stay_unique(queue: JobQueue) -> None:
    drop_file(queue, "a1.yaml", job_doc("volume:media/face.png", "volume:media/speech.wav", frams=13))
    drop_file(queue, "notes.txt", {})
    first = queue.scan_inbox()
    drop_file(queue, "a1.yaml", job_doc("volume:media/face.png", "volume:media/speech.wav", frames=12))
    second = queue.scan_inbox()

    errors = {r.name: r.error for r in first.rejected}
    assert "field 'frams': unknown field; did you mean 'frames'?" in errors["a1.yaml"]
    assert "not a render job" in errors["notes.txt"]
    [again] = second.rejected
    assert again.path == queue.folder("rejected") / "a1-2.yaml"
    assert "field 'frames'" in (queue.folder("rejected") / "a1-2.error.txt").read_text()
    assert "field 'frams'" in (queue.folder("rejected") / "a1.error.txt").read_text()


# --- settling -----------------------------------------------------------------------------------


def test_entries_wait_until_settled(volume: Path) -> None:
    queue = JobQueue(volume, settle_seconds=5, stable_seconds=0)
    drop_file(queue, "a1.yaml", job_doc("volume:media/face.png", "volume:media/speech.wav"))
    folder = drop_folder(queue, "b2", job_doc())
    old = time.time() - 60
    os.utime(folder, (old, old))  # the folder looks old, but a file inside was just written
    os.utime(folder / "job.yaml", (old, old))
    os.utime(folder / "face.png", (old, old))

    early = queue.scan_inbox()
    late = queue.scan_inbox(now=time.time() + 10)

    assert early.waiting == ["a1.yaml", "b2"] and early.accepted == [] and early.rejected == []
    assert accepted_ids(late) == ["a1", "b2"]


def test_hidden_entries_are_ignored(queue: JobQueue) -> None:
    drop_folder(queue, ".staging-b2", job_doc(id="b2"))

    result = queue.scan_inbox()

    assert result == ScanResult(accepted=[], rejected=[], waiting=[])
    assert (queue.folder("inbox") / ".staging-b2").is_dir()
    assert queue.status() == []


# --- ids already taken --------------------------------------------------------------------------


def test_queued_id_is_rejected(queue: JobQueue) -> None:
    drop_file(queue, "a1.yaml", job_doc("volume:media/face.png", "volume:media/speech.wav"))
    queue.scan_inbox()
    drop_folder(queue, "other", job_doc(id="a1"))

    [rejected] = queue.scan_inbox().rejected

    assert "field 'id': 'a1' is already queued (jobs/queued/a1.json)" in rejected.error


def test_done_id_is_rejected_unless_rerender(queue: JobQueue, volume: Path) -> None:
    drop_folder(queue, "b2", job_doc())
    queue.scan_inbox()
    queue.mark_done("b2", volume / "outputs" / "b2")

    drop_folder(queue, "b2", job_doc())
    [rejected] = queue.scan_inbox().rejected
    assert "'b2' is done already (jobs/done/b2.json); set 'rerender: true'" in rejected.error

    folder = drop_folder(queue, "b2", job_doc(rerender=True, seed=7))
    write_face_image(folder / "face.png", 64, 48, seed=9)  # a different image of the same name
    assert accepted_ids(queue.scan_inbox()) == ["b2"]
    assert queue.load("b2").seed == 7 and queue.load("b2").rerender
    # The done record keeps its own image: the new one was stored beside it.
    assert json.loads((queue.folder("done") / "b2.json").read_text())["cond_image"].endswith("/face.png")
    assert queued_doc(queue, "b2")["cond_image"] == "volume:jobs/media/b2/face-2.png"
    assert sorted(s.state for s in queue.status() if s.id == "b2") == ["done", "queued", "rejected"]

    queue.mark_done("b2", volume / "outputs" / "b2")
    assert json.loads((queue.folder("done") / "b2.json").read_text())["seed"] == 7
    assert queue.queued_ids() == []


def test_a_failure_that_is_not_the_jobs_fault_puts_the_entry_back(
    queue: JobQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    drop_folder(queue, "b2", job_doc())

    def disk_full(path: Path, folder: Path, **_: Any) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(queue_module, "_copy_unique", disk_full)
    scan = queue.scan_inbox()  # the scan goes on: one entry's trouble never stops the others

    assert scan.errors == ["b2: OSError: [Errno 28] No space left on device"]
    assert not scan.accepted and not scan.rejected
    assert sorted(p.name for p in queue.folder("inbox").iterdir() if not p.name.startswith(".")) == ["b2"]
    assert list(queue.folder("rejected").iterdir()) == [] and queue.queued_ids() == []


# --- two scanners -------------------------------------------------------------------------------


def _drop_many(queue: JobQueue, n: int) -> list[str]:
    ids = [f"j{i}" for i in range(n)]
    for job_id in ids:
        if int(job_id[1:]) % 2:
            drop_folder(queue, job_id, job_doc())
        else:
            drop_file(queue, f"{job_id}.json", job_doc("volume:media/face.png", "volume:media/speech.wav"))
    return ids


def test_concurrent_scanners_in_threads_accept_each_entry_once(volume: Path) -> None:
    queue = JobQueue(volume, settle_seconds=0, stable_seconds=0)
    ids = _drop_many(queue, 8)
    scanners = 4
    barrier = threading.Barrier(scanners)
    results: list[ScanResult] = []
    errors: list[BaseException] = []

    def scan() -> None:
        try:
            own = JobQueue(volume, settle_seconds=0, stable_seconds=0)
            barrier.wait()
            results.append(own.scan_inbox())
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=scan) for _ in range(scanners)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    accepted = sorted(a.id for r in results for a in r.accepted)
    assert accepted == sorted(ids)  # each once: none twice, none lost
    assert [r for r in results if r.rejected] == []
    assert sorted(queue.queued_ids()) == sorted(ids)
    assert list(queue.folder("inbox").iterdir()) == []


def test_a_scanner_that_loses_the_claim_leaves_the_entry_to_the_winner(
    volume: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = JobQueue(volume, settle_seconds=0, stable_seconds=0)
    second = JobQueue(volume, settle_seconds=0, stable_seconds=0)
    drop_folder(first, "b2", job_doc())
    signature = queue_module._signature
    looked: list[str] = []
    inner: list[ScanResult] = []

    def second_scans_in_between(entry: Path) -> tuple[int, int, int] | None:
        looked.append(entry.name)
        if len(looked) == 1:  # `first` has listed the entry and will claim it next
            inner.append(second.scan_inbox())
        return signature(entry)

    monkeypatch.setattr(queue_module, "_signature", second_scans_in_between)
    outer = first.scan_inbox()

    assert accepted_ids(inner[0]) == ["b2"]
    assert outer == ScanResult(accepted=[], rejected=[], waiting=[])
    assert first.queued_ids() == ["b2"] and list(first.folder("rejected").iterdir()) == []


def _scan_in_process(volume: str, start_at: float) -> list[str]:
    queue = JobQueue(Path(volume), settle_seconds=0, stable_seconds=0)
    time.sleep(max(0.0, start_at - time.time()))
    result = queue.scan_inbox()
    assert result.rejected == [], result.rejected
    return [a.id for a in result.accepted]


def test_concurrent_scanners_in_processes_accept_each_entry_once(volume: Path) -> None:
    queue = JobQueue(volume, settle_seconds=0, stable_seconds=0)
    ids = _drop_many(queue, 8)
    with ProcessPoolExecutor(max_workers=3, mp_context=get_context("spawn")) as pool:
        start_at = time.time() + 8  # after the workers have imported
        futures = [pool.submit(_scan_in_process, str(volume), start_at) for _ in range(3)]
        accepted = sorted(job_id for f in futures for job_id in f.result(timeout=120))

    assert accepted == sorted(ids)


# --- claims left by a scanner that stopped -----------------------------------------------------


def age(path: Path, seconds: float) -> None:
    """Set the mtime of `path` and of everything inside it to `seconds` ago."""
    old = time.time() - seconds
    for folder, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            os.utime(Path(folder) / name, (old, old))
    os.utime(path, (old, old))


def claimed_entries(queue: JobQueue) -> list[str]:
    return sorted(p.name for p in queue.folder("inbox").iterdir() if p.name.startswith(".claimed-"))


def test_a_scanner_killed_between_claim_and_accept_leaves_a_claim_the_next_scan_recovers(
    volume: Path,
) -> None:
    queue = JobQueue(volume, settle_seconds=0, stable_seconds=0)
    folder = drop_folder(queue, "b2", job_doc())
    age(folder, 3600)  # dropped an hour ago: only the scanner's touch keeps its claim alive
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from mt_assets.jobs.queue import JobQueue\n"
        "def stuck(self, entry, claim):\n"
        "    print(claim.path.name, flush=True)\n"
        "    time.sleep(600)\n"
        "JobQueue._accept = stuck\n"
        "JobQueue(Path(sys.argv[1]), settle_seconds=0, stable_seconds=0).scan_inbox()\n"
    )
    scanner = subprocess.Popen([sys.executable, "-c", code, str(volume)], stdout=subprocess.PIPE, text=True)
    try:
        claimed_name = scanner.stdout.readline().strip() if scanner.stdout else ""
        scanner.send_signal(signal.SIGKILL)  # between the claim and the accept: no clean-up
        assert scanner.wait(timeout=60) == -signal.SIGKILL
    finally:
        if scanner.poll() is None:
            scanner.kill()
            scanner.wait()
        if scanner.stdout:
            scanner.stdout.close()
    claimed = queue.folder("inbox") / claimed_name
    assert claimed_name.startswith(".claimed-") and claimed_name.endswith("-b2") and claimed.is_dir()
    assert abs(claimed.stat().st_mtime - time.time()) < 60  # touched when claimed

    # Within the lease the claim may be a live scanner's: left alone.
    assert queue.scan_inbox() == ScanResult(accepted=[], rejected=[], waiting=[], recovered=[])
    assert claimed_entries(queue) == [claimed_name]

    later = queue.scan_inbox(now=time.time() + CLAIM_LEASE_SECONDS + 1)

    assert later.recovered == ["b2"]
    assert accepted_ids(later) == ["b2"] and later.rejected == [] and later.waiting == []
    assert (queue.folder("queued") / "b2.json").is_file()
    assert list(queue.folder("inbox").iterdir()) == []  # the claim is gone, and so is the entry
    assert queued_doc(queue, "b2")["cond_image"] == "volume:jobs/media/b2/face.png"
    load_job_media(queue.load("b2"))


def test_a_live_slow_claim_that_keeps_touching_is_never_taken_over(
    volume: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lease = 1.5
    first = JobQueue(volume, settle_seconds=0, stable_seconds=0, claim_lease_seconds=lease)
    second = JobQueue(volume, settle_seconds=0, stable_seconds=0, claim_lease_seconds=lease)
    folder = drop_folder(first, "b2", job_doc())
    write_speech(folder / "speech.wav", 2.5, seed=1)  # 80 kB
    age(folder, 3600)
    # A slow volume: 1 kB chunks, 50 ms each. The claim is touched in the copy loop as on a fast one.
    monkeypatch.setattr(queue_module, "COPY_CHUNK_BYTES", 1024)
    copy_file = queue_module._copy_file

    def slow_copy_file(source: Path, target: Path, on_chunk: Any = None) -> None:
        def chunk() -> None:
            time.sleep(0.05)
            if on_chunk is not None:
                on_chunk()

        copy_file(source, target, chunk)

    monkeypatch.setattr(queue_module, "_copy_file", slow_copy_file)
    outcomes: list[ScanResult] = []
    errors: list[BaseException] = []

    def scan_first() -> None:
        try:
            outcomes.append(first.scan_inbox())
        except BaseException as e:
            errors.append(e)

    started = time.monotonic()
    thread = threading.Thread(target=scan_first)
    thread.start()
    while not claimed_entries(second) and thread.is_alive():
        time.sleep(0.01)  # the second scanner starts once the first has claimed the entry
    seen_claimed = 0
    others: list[ScanResult] = []
    while thread.is_alive():
        seen_claimed += bool(claimed_entries(second))
        others.append(second.scan_inbox())
        time.sleep(0.05)
    thread.join()
    seconds = time.monotonic() - started

    assert errors == []
    assert seconds > 2 * lease and seen_claimed > 10  # the accept outlived the lease, claimed all along
    assert all(r == ScanResult(accepted=[], rejected=[], waiting=[], recovered=[]) for r in others)
    [outcome] = outcomes
    assert accepted_ids(outcome) == ["b2"] and outcome.recovered == [] and outcome.rejected == []
    assert first.queued_ids() == ["b2"]
    assert sorted(p.name for p in (volume / JOBS_DIR / "media" / "b2").iterdir()) == [
        "face.png",
        "speech.wav",
    ]
    assert list(first.folder("inbox").iterdir()) == [] and list(first.folder("rejected").iterdir()) == []


def test_a_claim_younger_than_the_lease_is_left_alone_and_an_older_one_shows_as_stale(volume: Path) -> None:
    queue = JobQueue(volume, settle_seconds=0, stable_seconds=0, claim_lease_seconds=60)
    claimed = queue.folder("inbox") / ".claimed-0123456789ab-b2"
    drop_folder(queue, "b2", job_doc()).rename(claimed)  # as a scanner that stopped leaves it
    age(claimed, 30)

    assert queue.scan_inbox() == ScanResult(accepted=[], rejected=[], waiting=[], recovered=[])
    assert claimed.is_dir() and queue.status() == []  # a claim within its lease is being accepted

    age(claimed, 61)
    [stale] = queue.status()
    assert (stale.id, stale.state, stale.path) == ("b2", "inbox", claimed)
    assert (stale.error or "").startswith("stale claim: a scanner stopped while accepting it")
    assert "puts it back into the inbox as b2" in (stale.error or "")

    result = queue.scan_inbox()
    assert result.recovered == ["b2"] and accepted_ids(result) == ["b2"]
    assert list(queue.folder("inbox").iterdir()) == []


@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "link-or-check"])
def test_a_recovered_entry_whose_name_was_dropped_again_gets_a_free_name(
    volume: Path, monkeypatch: pytest.MonkeyPatch, renameat2: bool
) -> None:
    if not renameat2:
        monkeypatch.setattr(queue_module, "_renameat2", lambda: None)  # a filesystem without it
    queue = JobQueue(volume, settle_seconds=5, stable_seconds=0, claim_lease_seconds=60)
    inbox = queue.folder("inbox")
    folder_claim = inbox / ".claimed-0123456789ab-b2"
    file_claim = inbox / ".claimed-ba9876543210-a1.yaml"
    drop_folder(queue, "b2", job_doc()).rename(folder_claim)
    drop_file(queue, "a1.yaml", job_doc("volume:media/face.png", "volume:media/speech.wav")).rename(
        file_claim
    )
    age(folder_claim, 120)
    age(file_claim, 120)
    # Meanwhile the same names were dropped again, just now (still settling).
    new_folder = drop_folder(queue, "b2", job_doc(id="b3"))
    new_file = drop_file(
        queue, "a1.yaml", job_doc("volume:media/face.png", "volume:media/speech.wav", id="a9")
    )

    result = queue.scan_inbox()

    assert result.recovered == ["a1-recovered-1.yaml", "b2-recovered-1"]
    assert accepted_ids(result) == ["a1-recovered-1", "b2-recovered-1"]  # the same scan, unsettled or not
    assert result.waiting == ["a1.yaml", "b2"] and result.rejected == []
    # The new drops are as dropped: not replaced, nothing merged in.
    assert sorted(p.name for p in new_folder.iterdir()) == ["face.png", "job.yaml", "speech.wav"]
    assert yaml.safe_load((new_folder / "job.yaml").read_text())["id"] == "b3"
    assert yaml.safe_load(new_file.read_text())["id"] == "a9"
    assert sorted(p.name for p in inbox.iterdir()) == ["a1.yaml", "b2"]


def test_scanners_recovering_the_same_claims_at_once_put_each_back_once(volume: Path) -> None:
    queue = JobQueue(volume, settle_seconds=0, stable_seconds=0, claim_lease_seconds=60)
    ids = _drop_many(queue, 6)
    for entry in list(queue.folder("inbox").iterdir()):
        claimed = entry.with_name(f".claimed-0123456789ab-{entry.name}")
        entry.rename(claimed)
        age(claimed, 120)
    scanners = 4
    barrier = threading.Barrier(scanners)
    results: list[ScanResult] = []
    errors: list[BaseException] = []

    def scan() -> None:
        try:
            own = JobQueue(volume, settle_seconds=0, stable_seconds=0, claim_lease_seconds=60)
            barrier.wait()
            results.append(own.scan_inbox())
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=scan) for _ in range(scanners)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    recovered = sorted(name for r in results for name in r.recovered)
    assert recovered == sorted(f"{i}.json" if int(i[1:]) % 2 == 0 else i for i in ids)
    assert sorted(a.id for r in results for a in r.accepted) == sorted(ids)
    assert [r for r in results if r.rejected] == []
    assert sorted(queue.queued_ids()) == sorted(ids) and list(queue.folder("inbox").iterdir()) == []


# --- rendering, done, failed --------------------------------------------------------------------


def test_rendering_marker_shows_while_the_block_runs(queue: JobQueue) -> None:
    drop_file(queue, "a1.yaml", job_doc("volume:media/face.png", "volume:media/speech.wav"))
    drop_file(queue, "a2.yaml", job_doc("volume:media/face.png", "volume:media/speech.wav"))
    queue.scan_inbox()

    with queue.rendering("a1") as job:
        assert job.id == "a1"
        marker = json.loads((queue.folder("rendering") / "a1.lock").read_text())
        assert marker["pid"] == os.getpid() and marker["host"] and marker["started"] <= time.time()
        assert states(queue) == {"queued": ["a2"], "rendering": ["a1"]}
        assert queue.queued_ids() == ["a2"]
        with pytest.raises(JobBusy, match=r"render job 'a1': already rendering on .* pid"):
            with queue.rendering("a1"):
                pass
        queue.mark_done("a1", queue.root / "outputs" / "a1")

    assert not (queue.folder("rendering") / "a1.lock").exists()
    assert states(queue) == {"queued": ["a2"], "done": ["a1"]}


def test_marker_of_a_dead_local_pid_counts_as_not_rendering(queue: JobQueue) -> None:
    drop_file(queue, "a1.yaml", job_doc("volume:media/face.png", "volume:media/speech.wav"))
    queue.scan_inbox()
    # A renderer that dies inside the block (kill -9 as far as the marker knows: no clean-up).
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from mt_assets.jobs.queue import JobQueue\n"
        "with JobQueue(Path(sys.argv[1])).rendering('a1'):\n"
        "    os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(queue.root)], check=True, timeout=120)
    marker = queue.folder("rendering") / "a1.lock"
    assert marker.exists()

    assert states(queue) == {"queued": ["a1"]}
    assert queue.queued_ids() == ["a1"]
    with queue.rendering("a1") as job:  # taken over
        assert job.id == "a1"
        assert json.loads(marker.read_text())["pid"] == os.getpid()


def test_mark_failed_writes_the_error_and_a_redrop_retries(queue: JobQueue, volume: Path) -> None:
    drop_folder(queue, "b2", job_doc())
    queue.scan_inbox()

    with queue.rendering("b2"):
        failed = queue.mark_failed("b2", "render b2: CUDA out of memory")

    assert failed == queue.folder("failed") / "b2.json"
    assert (queue.folder("failed") / "b2.error.txt").read_text() == "render b2: CUDA out of memory\n"
    [status] = queue.status()
    assert (status.id, status.state, status.error) == ("b2", "failed", "render b2: CUDA out of memory")
    assert queue.load("b2").id == "b2"  # a failed job can be re-run

    drop_folder(queue, "b2", job_doc())  # a failed id may be dropped again
    assert accepted_ids(queue.scan_inbox()) == ["b2"]
    queue.mark_done("b2", volume / "outputs" / "b2")
    assert states(queue) == {"done": ["b2"]}
    assert not (queue.folder("failed") / "b2.error.txt").exists()


def test_load_of_an_unknown_id_names_it(queue: JobQueue) -> None:
    with pytest.raises(JobNotFound, match=r"render job 'nope': not in jobs/queued, jobs/done or jobs/failed"):
        queue.load("nope")
    with pytest.raises(JobNotFound, match="not a job id"):
        queue.load("../etc")
    with pytest.raises(JobNotFound):
        with queue.rendering("nope"):
            pass


def test_status_lists_every_state(queue: JobQueue, volume: Path) -> None:
    for job_id in ("q1", "r1", "d1", "f1"):
        drop_file(queue, f"{job_id}.yaml", job_doc("volume:media/face.png", "volume:media/speech.wav"))
    drop_file(queue, "x1.yaml", job_doc("volume:media/missing.png", "volume:media/speech.wav"))
    queue.scan_inbox()
    (volume / "outputs" / "d1").mkdir(parents=True)
    queue.mark_done("d1", volume / "outputs" / "d1")
    queue.mark_failed("f1", "boom")
    drop_file(queue, "i1.yaml", job_doc("volume:media/face.png", "volume:media/speech.wav", id="i9"))

    with queue.rendering("r1"):
        found = {s.id: s for s in queue.status()}

    assert {job_id: s.state for job_id, s in found.items()} == {
        "i9": "inbox",
        "q1": "queued",
        "r1": "rendering",
        "d1": "done",
        "f1": "failed",
        "x1": "rejected",
    }
    assert [s.state for s in queue.status()] == sorted((s.state for s in queue.status()), key=STATES.index)
    assert found["d1"].output == volume / "outputs" / "d1"
    assert found["f1"].error == "boom"
    assert "field 'cond_image'" in (found["x1"].error or "") and "no such file" in (found["x1"].error or "")
    assert found["i9"].path == queue.folder("inbox") / "i1.yaml"
    assert found["q1"].path == queue.folder("queued") / "q1.json" and found["q1"].output is None
    assert all(abs(s.updated - time.time()) < 60 for s in found.values())


# --- submit -------------------------------------------------------------------------------------


@pytest.fixture
def job_file(tmp_path: Path) -> Path:
    """A job outside the volume, with its media beside it, and one medium on the volume."""
    src = tmp_path / "src"
    write_face_image(src / "face.png", 64, 48, seed=3)
    (src / "a1.yaml").write_text(yaml.safe_dump(job_doc(audio="volume:media/speech.wav")))
    return src / "a1.yaml"


def test_submit_copies_the_job_and_its_media_into_the_inbox(queue: JobQueue, job_file: Path) -> None:
    target = queue.submit(job_file)

    assert target == queue.folder("inbox") / "a1"
    assert sorted(p.name for p in target.iterdir()) == ["face.png", "job.json"]
    doc = json.loads((target / "job.json").read_text())
    assert doc["cond_image"] == "face.png" and doc["cond_audio"] == {"person1": "volume:media/speech.wav"}
    assert [p.name for p in queue.folder("inbox").iterdir()] == ["a1"]  # no staging left
    assert accepted_ids(queue.scan_inbox()) == ["a1"]
    load_job_media(queue.load("a1"))


def test_submit_refuses_an_id_in_the_inbox_or_queued_and_a_bad_job(
    queue: JobQueue, job_file: Path, tmp_path: Path
) -> None:
    queue.submit(job_file)
    with pytest.raises(JobError, match=r"field 'id': 'a1' is in the inbox already \(jobs/inbox/a1\)"):
        queue.submit(job_file)
    queue.scan_inbox()
    with pytest.raises(JobError, match=r"field 'id': 'a1' is already queued"):
        queue.submit(job_file)

    bad = job_file.with_name("b1.yaml")
    bad.write_text(yaml.safe_dump(job_doc(audio="missing.wav")))
    with pytest.raises(JobError, match=r"field 'cond_audio.person1'.*no such file"):
        queue.submit(bad)
    assert [p.name for p in queue.folder("inbox").iterdir()] == []


def test_withdraw_removes_a_waiting_job_so_it_can_be_submitted_again_but_not_one_rendering(
    queue: JobQueue, job_file: Path
) -> None:
    inbox = queue.submit(job_file)
    assert queue.withdraw("a1") == [inbox] and not inbox.exists()
    queue.submit(job_file)  # no longer refused
    queue.scan_inbox()
    queued = queue.folder("queued") / "a1.json"
    with queue.rendering("a1"):
        assert queue.withdraw("a1") == [] and queued.exists()  # a render holds it
    queue.mark_failed("a1", "stopped")
    assert queue.withdraw("a1") == []  # nothing waiting any more
    assert queue.withdraw("never-submitted") == []


# --- the CLI ------------------------------------------------------------------------------------


def test_cli_jobs_submit_and_list(volume: Path, job_file: Path) -> None:
    submitted = run_cli("jobs", "submit", str(job_file), "--volume", str(volume))
    assert submitted.returncode == 0, submitted.stderr
    assert str(volume / JOBS_DIR / "inbox" / "a1") in submitted.stdout

    listed = run_cli("jobs", "list", "--volume", str(volume))
    assert listed.returncode == 0, listed.stderr
    assert "a1" in listed.stdout and "inbox" in listed.stdout

    JobQueue(volume, settle_seconds=0, stable_seconds=0).scan_inbox()
    as_json = run_cli("jobs", "list", "--volume", str(volume), "--json")
    assert as_json.returncode == 0, as_json.stderr
    [job] = json.loads(as_json.stdout)["jobs"]
    assert set(job) == {"id", "state", "path", "output", "error", "updated"}
    assert (job["id"], job["state"], job["output"], job["error"]) == ("a1", "queued", None, None)
    assert job["path"] == str(volume / JOBS_DIR / "queued" / "a1.json")


def test_cli_jobs_submit_bad_job_exits_2_naming_the_field(volume: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(job_doc(image="../../etc/passwd", audio="volume:media/speech.wav")))

    result = run_cli("jobs", "submit", str(bad), "--volume", str(volume))

    assert result.returncode == 2
    assert f"error: render job {bad}: field 'cond_image'" in result.stderr
    assert "outside the allowed roots" in result.stderr
    assert result.stdout == ""
