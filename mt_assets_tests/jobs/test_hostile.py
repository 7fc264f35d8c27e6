"""Hostile and careless job files: each is refused with a short message naming the file or the field, by a
process that stays small, and one bad entry in the inbox never holds up the good ones behind it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from mt_assets.jobs import queue as queue_module
from mt_assets.jobs.queue import STAGING_STALE_SECONDS, JobQueue
from mt_assets.jobs.reader import load_job
from mt_assets.jobs.schema import JobError, parse_job
from mt_assets.tiny.samples import write_face_image, write_speech
from mt_assets_tests.conftest import CLI
from mt_assets_tests.jobs.test_queue import drop_folder, job_doc

PEAK_RSS_LIMIT_MB = 1536  # every refusal here happens in a process below 1.5 GB
SECRET = "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"

BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
prompt: *i
"""

# What each poison file holds, and what its one-line refusal must say.
POISON = {
    "digits.yaml": ("prompt: hi\nsteps: " + "9" * 5000 + "\n", "holds a value that cannot be read"),
    "digits.json": ('{"prompt": "hi", "steps": ' + "9" * 5000 + "}", "holds a value that cannot be read"),
    "nested.yaml": ("prompt: " + "[" * 20000 + "]" * 20000 + "\n", "nested too deeply"),
    "nested.json": ('{"prompt": ' + "[" * 20000 + "]" * 20000 + "}", "nested too deeply"),
    "laughs.yaml": (BILLION_LAUGHS, "YAML aliases (*name) are not accepted"),
}


def measured(
    args: list[str], *, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess, float]:
    """Run a command; its result and its peak RSS in MB (the only child of a small wrapper)."""
    wrapper = (
        "import resource, subprocess, sys\n"
        "done = subprocess.run(sys.argv[1:])\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=open(sys.argv[0] + '.rss', 'w'))\n"
        "sys.exit(done.returncode)\n"
    )
    script = Path(os.environ.get("TMPDIR", "/tmp")) / f"mt-measured-{os.getpid()}-{time.monotonic_ns()}"
    script.write_text(wrapper)
    try:
        done = subprocess.run(
            [sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=120
        )
        peak_kb = int(Path(str(script) + ".rss").read_text())
    finally:
        script.unlink(missing_ok=True)
        Path(str(script) + ".rss").unlink(missing_ok=True)
    return done, peak_kb / 1024


def render_refused(job: Path, tmp_path: Path, env: dict[str, str] | None = None) -> str:
    """`mt-assets render JOB` refuses it: exit 2, one line on stderr, no traceback, a small process."""
    (tmp_path / "volume").mkdir(exist_ok=True)
    done, peak_mb = measured(
        [*CLI, "render", str(job), "--profile", "tiny", "--volume", str(tmp_path / "volume")],
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-2000:]
    assert "Traceback" not in done.stderr and len(lines[0]) < 600
    assert peak_mb < PEAK_RSS_LIMIT_MB, peak_mb
    return lines[0]


# --- one job file, from the CLI -----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(POISON))
def test_a_poison_job_file_is_refused_by_the_cli_in_one_line(name: str, tmp_path: Path) -> None:
    text, says = POISON[name]
    job = tmp_path / name
    job.write_text(text)
    line = render_refused(job, tmp_path)
    assert str(job) in line and says in line


def test_a_billion_laughs_is_refused_before_anything_expands(tmp_path: Path) -> None:
    job = tmp_path / "laughs.yaml"
    job.write_text(BILLION_LAUGHS)
    assert len(BILLION_LAUGHS) < 600
    started = time.perf_counter()
    with pytest.raises(JobError, match=r"aliases \(\*name\) are not accepted in a job file at line 2"):
        load_job(job, check_media=False)
    assert time.perf_counter() - started < 1.0


def test_a_message_quotes_at_most_100_characters_of_any_value(tmp_path: Path) -> None:
    huge = "x" * 900_000
    for field, value in (("steps", huge), ("mode", huge), ("cond_audio", {"person1": 7, "pad": huge})):
        with pytest.raises(JobError) as caught:
            parse_job({"prompt": "hi", "cond_image": "a.png", "cond_audio": {"person1": "a.wav"}, field: value},
                      source="big.yaml", base_dir=tmp_path, check_media=False)  # fmt: skip
        assert len(str(caught.value)) < 400, len(str(caught.value))
    with pytest.raises(JobError, match="an integer of about 1,000 digits"):
        parse_job({**job_doc(), "steps": 10**999}, source="w", base_dir=tmp_path, check_media=False)


def test_a_job_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    job = tmp_path / "big.yaml"
    with open(job, "w") as f:  # a 50 MB prompt: the file is refused by its size, nothing is parsed
        f.write("prompt: ")
        for _ in range(50):
            f.write("a" * 1024 * 1024)
    line = render_refused(job, tmp_path)
    assert "a job file may have at most 1,048,576 (MT_JOB_MAX_BYTES)" in line
    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump(job_doc(steps=2)))
    line = render_refused(small, tmp_path, env={"MT_JOB_MAX_BYTES": "20"})
    assert "at most 20 (MT_JOB_MAX_BYTES)" in line


def test_a_prompt_over_the_limit_is_refused_naming_the_field(tmp_path: Path) -> None:
    job = tmp_path / "long.yaml"
    job.write_text(yaml.safe_dump(job_doc(prompt="word " * 4000)))  # 20,000 characters, 20 KB
    line = render_refused(job, tmp_path)
    assert "field 'prompt': is 20,000 characters; the limit is 10,000 (MT_PROMPT_MAX_CHARS)" in line
    # a mapping (the worker's input) meets the same limit
    with pytest.raises(JobError, match="field 'negative_prompt': is 11 characters; the limit is 10"):
        os.environ["MT_PROMPT_MAX_CHARS"] = "10"
        try:
            parse_job({**job_doc(), "prompt": "short", "negative_prompt": "a" * 11},
                      source="w", base_dir=tmp_path, check_media=False)  # fmt: skip
        finally:
            del os.environ["MT_PROMPT_MAX_CHARS"]


@pytest.mark.parametrize("size", ["٦٤x٦٤", "６４x６４", "64x٦٤"])
def test_size_takes_ascii_digits_only(size: str, tmp_path: Path) -> None:
    with pytest.raises(JobError, match="field 'size'"):
        parse_job({**job_doc(), "size": size}, source="s.yaml", base_dir=tmp_path, check_media=False)


def test_the_reader_records_the_sha256_of_the_bytes_it_read(tmp_path: Path) -> None:
    job = tmp_path / "a1.yaml"
    job.write_text(yaml.safe_dump({**job_doc(), "job_sha256": "0" * 64}))  # a claimed hash is replaced
    read = load_job(job, check_media=False)
    assert read.job_sha256 == hashlib.sha256(job.read_bytes()).hexdigest()
    assert read.to_json()["job_sha256"] == read.job_sha256


# --- the inbox ----------------------------------------------------------------------------------


def settle(path: Path, seconds: float = 120) -> None:
    old = time.time() - seconds
    for p in [path, *(path.rglob("*") if path.is_dir() else [])]:
        os.utime(p, (old, old), follow_symlinks=False)


def inbox_queue(volume: Path) -> JobQueue:
    write_face_image(volume / "media" / "face.png", 64, 48)
    write_speech(volume / "media" / "speech.wav", 1.0)
    return JobQueue(volume)  # the defaults: a 5 s settle time and a 60 s stability window


def volume_job(**fields: Any) -> dict[str, Any]:
    return job_doc(image="volume:media/face.png", audio="volume:media/speech.wav", **fields)


def test_a_poison_entry_first_in_the_inbox_is_rejected_and_the_good_ones_behind_it_accepted(
    tmp_path: Path,
) -> None:
    queue = inbox_queue(tmp_path / "volume")
    inbox = queue.folder("inbox")
    for i, (name, (text, _)) in enumerate(sorted(POISON.items())):
        (inbox / name).write_text(text)
        settle(inbox / name, 300 + i)  # older than the good ones: taken first
    for job_id in ("good1", "good2"):
        (inbox / f"{job_id}.yaml").write_text(yaml.safe_dump(volume_job()))
        settle(inbox / f"{job_id}.yaml")
    scan = queue.scan_inbox()
    assert sorted(a.id for a in scan.accepted) == ["good1", "good2"]
    assert sorted(r.name for r in scan.rejected) == sorted(POISON)
    for r in scan.rejected:
        assert POISON[r.name][1] in r.error and len(r.error) < 600
    assert not scan.errors and list(inbox.iterdir()) == []


def test_a_job_file_inside_a_folder_is_never_read_through_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "credentials"
    outside.write_text(f"[default]\n{SECRET}\n")
    queue = inbox_queue(tmp_path / "volume")
    folder = queue.folder("inbox") / "sneaky"
    folder.mkdir()
    (folder / "job.yaml").symlink_to(outside)
    settle(folder)
    [rejected] = queue.scan_inbox().rejected
    assert "symlink" in rejected.error
    for path in queue.folder("rejected").rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert "wJalrXUtnFEMI" not in path.read_text(errors="replace"), path


def test_a_medium_inside_a_folder_is_never_read_through_a_symlink(tmp_path: Path) -> None:
    queue = inbox_queue(tmp_path / "volume")
    folder = drop_folder(queue, "linked", job_doc())
    (folder / "face.png").unlink()
    (folder / "face.png").symlink_to(queue.root / "media" / "face.png")  # even one to the volume itself
    settle(folder)
    [rejected] = queue.scan_inbox().rejected
    assert "holds a symlink, face.png" in rejected.error


def test_a_file_swapped_for_a_link_after_validation_is_not_copied_into_the_volume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"not yours " * 1000)
    queue = inbox_queue(tmp_path / "volume")
    folder = drop_folder(queue, "swapped", job_doc())
    settle(folder)
    check_free = JobQueue._check_free

    def swap_after_validation(self: JobQueue, job: Any, source: str) -> None:
        check_free(self, job, source)  # the job was parsed and its media decoded: now the race
        claimed = Path(job.cond_image)
        claimed.unlink()
        claimed.symlink_to(outside)

    monkeypatch.setattr(JobQueue, "_check_free", swap_after_validation)
    [rejected] = queue.scan_inbox().rejected
    assert "became a symlink after it was checked" in rejected.error
    copied = [p for p in (queue.jobs / "media").rglob("*") if p.is_file()]
    assert all(p.read_bytes() != outside.read_bytes() for p in copied), copied
    assert queue.queued_ids() == []


def test_a_medium_swapped_for_a_file_outside_through_a_parent_link_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The opened file's real location is checked, not only its last path component."""
    elsewhere = tmp_path / "elsewhere"
    write_face_image(elsewhere / "face.png", 64, 48, seed=9)
    with pytest.raises(queue_module.MediaError, match="no longer inside the allowed folders"):
        queue_module.open_medium(elsewhere / "face.png", roots=(tmp_path / "volume",))


def test_a_young_entry_is_accepted_only_once_two_scans_saw_it_unchanged(tmp_path: Path) -> None:
    queue = inbox_queue(tmp_path / "volume")
    job = queue.folder("inbox") / "slow.yaml"
    full = yaml.safe_dump(volume_job(steps=40, seed=7))
    job.write_text(full[: full.index("steps")] + "steps: 4")  # a stalled writer: cut after `steps: 4`
    written = time.time() - 10  # older than the settle time, younger than the stability window
    os.utime(job, (written, written))
    now = time.time()
    assert queue.scan_inbox(now=now).waiting == ["slow.yaml"]  # first sight: noted, not taken
    job.write_text(full)  # the writer goes on
    os.utime(job, (now, now))
    later = queue.scan_inbox(now=now + 6)
    assert later.waiting == ["slow.yaml"] and not later.accepted  # changed since the previous scan
    again = queue.scan_inbox(now=now + 12)
    [accepted] = again.accepted
    assert (accepted.job.steps, accepted.job.seed) == (40, 7)
    assert accepted.job.job_sha256 == hashlib.sha256(full.encode()).hexdigest()
    assert queue.load("slow").job_sha256 == accepted.job.job_sha256  # kept, not the queued copy's


def test_an_entry_older_than_the_stability_window_is_accepted_on_first_sight(tmp_path: Path) -> None:
    queue = inbox_queue(tmp_path / "volume")
    job = queue.folder("inbox") / "old.yaml"
    job.write_text(yaml.safe_dump(volume_job()))
    settle(job, 61)
    assert [a.id for a in queue.scan_inbox().accepted] == ["old"]
    young = queue.folder("inbox") / "young.json"
    young.write_text(json.dumps(volume_job()))
    settle(young, 30)
    assert queue.scan_inbox().waiting == ["young.json"]
    os.environ["MT_INBOX_STABLE_SECONDS"] = "20"  # the window from the environment
    try:
        assert [a.id for a in JobQueue(queue.root).scan_inbox().accepted] == ["young"]
    finally:
        del os.environ["MT_INBOX_STABLE_SECONDS"]


def test_abandoned_staging_entries_are_listed_then_removed_by_a_scan(tmp_path: Path) -> None:
    queue = inbox_queue(tmp_path / "volume")
    inbox = queue.folder("inbox")
    stale, fresh = inbox / ".submit-0a1b2c3d4e5f-a1", inbox / ".submit-abcdefabcdef-b2"
    for stage in (stale, fresh):
        stage.mkdir()
        (stage / "job.json").write_text("{}")
    settle(stale, STAGING_STALE_SECONDS + 60)
    [listed] = [s for s in queue.status() if s.state == "inbox"]
    assert listed.id == "a1" and "abandoned staging entry" in (listed.error or "")
    scan = queue.scan_inbox()
    assert scan.removed_staging == [stale.name]
    assert not stale.exists() and fresh.exists()
