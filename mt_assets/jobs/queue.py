"""The render job queue on the volume: one job file per job, moving between folders.

    <volume>/jobs/
      inbox/<name>.yaml|.yml|.json   a dropped job file (media: volume:, s3:// or paths inside the volume)
      inbox/<name>/                  a dropped job folder: exactly one job.yaml|job.yml|job.json and its
                                     media (relative paths are relative to the folder; the job's id
                                     defaults to the folder's name)
      inbox/.<anything>              ignored: staging (`.submit-*`) and entries being accepted
                                     (`.claimed-<hex>-<name>`); a claim untouched for longer than the
                                     lease (15 min) was left by a scanner that stopped: the next scan
                                     puts it back as <name> and takes it
      queued/<id>.json               an accepted job: every effective setting (RenderJob.to_json), its
                                     media as `volume:` or `s3://` references only
      media/<id>/<name>              the local media of accepted jobs, copied at acceptance (names kept;
                                     a different file of the same name becomes <stem>-2<suffix>, ...)
      rendering/<id>.lock            marker while a render runs: {"host", "pid", "started", "token",
                                     "pid_space"}, its mtime touched as a heartbeat (volume/lock.py)
      done/<id>.json                 the job as rendered, and <id>.output.txt: where its output went
      failed/<id>.json               the job as tried, and <id>.error.txt: why it failed
      rejected/<name>                the inbox entry as dropped, and <stem>.error.txt: the JobError
                                     message, which names the field (<stem>-2 ... when the name is taken)

State machine (every move is a rename within the volume, every write temp + rename):

    inbox ──scan_inbox──▶ queued ──rendering()──▶ (rendering) ──mark_done──▶ done
      │                     ▲                          └────────mark_failed──▶ failed
      └──▶ rejected         └── a re-drop of a failed id, or of a done id with `rerender: true`

scan_inbox takes an entry only once its newest mtime (of anything inside, for a folder) is
`settle_seconds` old, so a half-copied drop is never read. It claims the entry by renaming it to a
hidden name first: rename is atomic, so of two scanners (two sensor ticks, two machines) exactly
one gets each entry. A valid job's media are resolved and confined as parse_job does (to the entry's
folder and the volume) and rewritten so that moving the job file never breaks them: local files are
copied into media/<id>/ and referred to as `volume:jobs/media/<id>/<name>`, other files on the volume
become `volume:` references, s3:// stays. Media are copied before queued/<id>.json is written, and the
inbox entry is removed last. An id that is queued or rendering already is rejected, and so is a done
id unless the job says `rerender: true`; its done (or failed) entry is replaced when it completes.

A rename keeps the dropped entry's mtime, so only touches tell a live claim from one whose scanner
died: the scanner touches its claimed entry (the entry's own mtime; a folder's, not its files') when
it claims it and while it copies media, at least every CLAIM_TOUCH_SECONDS and four times per lease.
A `.claimed-*` entry untouched for longer than `claim_lease_seconds` (MT_INBOX_CLAIM_LEASE_SECONDS, 15 min;
give every scanner of a volume the same lease) was left by a scanner that stopped mid-accept, and
scan_inbox puts it back before it lists the inbox. It renames the claim to a claimed name of its own
(of two recoverers exactly one finds it, the other gets FileNotFoundError and leaves it), gives it
back if it was touched meanwhile (its scanner is alive), touches it, and renames it into the inbox as
<name>, or as <stem>-recovered-<n><suffix> when a new drop has taken <name>. That rename never
replaces an entry nor merges into one: renameat2(RENAME_NOREPLACE); where the filesystem lacks it a
hard link, and for a folder an existence check then a rename (a small window). The same scan takes
the recovered entry without waiting for it to settle (it had settled before it was first claimed),
and ScanResult.recovered names it. A scanner that finds its own claim gone (taken over after it
stalled for longer than the lease) gives the entry up. `.claimed-*` entries are never deleted.

This module is plain Python: the Dagster inbox sensor and the CLI (`mt-assets jobs`) call it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from mt_assets import config
from mt_assets.jobs.media import S3_PREFIX, VOLUME_PREFIX, MediaError
from mt_assets.jobs.outputs import OUTPUTS_DIR
from mt_assets.jobs.reader import FOLDER_JOB_NAMES, JOB_SUFFIXES, load_job, read_job_document, read_job_entry
from mt_assets.jobs.schema import JOB_ID, JOB_ID_RULE, JobError, RenderJob, check_preset_served, parse_job
from mt_assets.volume.lock import LockOwner, WriterLock

if TYPE_CHECKING:
    from mt_assets.manifest import Manifest

JOBS_DIR = "jobs"
MEDIA_DIR = "media"
STATES = ("inbox", "queued", "rendering", "done", "failed", "rejected")
# Inbox entries modified more recently than this are left for the next scan (a half-copied folder is never taken).
SETTLE_SECONDS = 5.0
STABLE_SECONDS = config.INBOX_STABLE_SECONDS.default  # younger entries: accepted once seen unchanged
STAGING_STALE_SECONDS = 24 * 3600.0  # a `.submit-*` staging entry older than this was abandoned
SCAN_STATE = ".inbox-scan.json"  # in jobs/: what the previous scan saw of the entries it left waiting
RENDERING_STALE_SECONDS = 120.0  # a rendering marker whose heartbeat is older than this is dead
ERROR_SUFFIX = ".error.txt"
OUTPUT_SUFFIX = ".output.txt"
CLAIM_PREFIX = ".claimed-"
# `.claimed-<hex>-<name>`: an inbox entry being accepted, and the name it was dropped under.
CLAIMED_NAME = re.compile(r"\.claimed-[0-9a-f]+-(?P<name>[^.].*)", re.DOTALL)
# A claim (an inbox entry being accepted) untouched for longer than this was left by a scanner that stopped.
CLAIM_LEASE_SECONDS = config.INBOX_CLAIM_LEASE_SECONDS.default  # 15 minutes
CLAIM_TOUCH_SECONDS = 10.0  # a scanner touches its claim at least this often (and 4 times per lease)
COPY_CHUNK_BYTES = 1 << 20  # media are copied in chunks of this size, the claim touched between them
SUBMIT_PREFIX = ".submit-"


class JobNotFound(LookupError):
    """No accepted job has this id. `str()` names the id and where it was looked for."""


class JobBusy(RuntimeError):
    """The job is being rendered elsewhere (a live rendering marker)."""


@dataclass(frozen=True)
class Accepted:
    id: str
    job: RenderJob
    path: Path  # jobs/queued/<id>.json


@dataclass(frozen=True)
class Rejected:
    name: str  # the inbox entry's name
    error: str  # the JobError message (names the field)
    path: Path  # where the entry went in jobs/rejected/


@dataclass(frozen=True)
class ScanResult:
    accepted: list[Accepted]
    rejected: list[Rejected]
    waiting: list[str]  # inbox entries not settled yet: taken by a later scan
    # Claims left by a scanner that stopped, put back into the inbox (the names they got there) and
    # taken by this scan like any other entry.
    recovered: list[str] = field(default_factory=list)
    # Entries whose acceptance failed for a reason not their own (a full disk, a lost volume): put back,
    # taken again by a later scan; the scan went on with the others. "<name>: <error>".
    errors: list[str] = field(default_factory=list)
    # Abandoned `.submit-*` staging entries (older than a day) this scan removed.
    removed_staging: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class JobStatus:
    id: str
    state: str  # one of STATES
    path: Path  # the job file or folder (the marker, for a re-run of a done or failed job)
    output: Path | None  # done: the output folder
    error: str | None  # failed, rejected: why
    updated: float  # seconds since the epoch

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "path": str(self.path),
            "output": None if self.output is None else str(self.output),
            "error": self.error,
            "updated": self.updated,
        }


class JobQueue:
    """The queue folders of one volume. Every method is safe to call from several processes at once."""

    def __init__(
        self,
        volume_root: Path,
        *,
        settle_seconds: float = SETTLE_SECONDS,
        rendering_stale_after: float = RENDERING_STALE_SECONDS,
        claim_lease_seconds: float | None = None,
        stable_seconds: float | None = None,
        manifest: Manifest | None = None,
    ) -> None:
        """manifest: the profile the queued jobs are rendered with; a dropped job whose `preset` it does
        not serve is rejected, naming the preset and the profiles that serve it. None (`mt-assets jobs
        submit`, which knows no profile): any preset is accepted, and the scanner decides."""
        self.root = Path(volume_root).resolve()
        self.manifest = manifest
        self.settle_seconds = settle_seconds
        self.stable_seconds = config.INBOX_STABLE_SECONDS.read() if stable_seconds is None else stable_seconds
        self.rendering_stale_after = rendering_stale_after
        # Every scanner of one volume should use the same lease: one from MT_INBOX_CLAIM_LEASE_SECONDS.
        self.claim_lease_seconds = (
            config.INBOX_CLAIM_LEASE_SECONDS.read() if claim_lease_seconds is None else claim_lease_seconds
        )
        self.jobs = self.root / JOBS_DIR
        for name in (*STATES, MEDIA_DIR):
            (self.jobs / name).mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"JobQueue({str(self.root)!r})"

    def folder(self, state: str) -> Path:
        if state not in STATES:
            raise ValueError(f"unknown job state {state!r}; expected one of {', '.join(STATES)}")
        return self.jobs / state

    # -- the inbox -----------------------------------------------------------------------------

    def scan_inbox(self, *, now: float | None = None) -> ScanResult:
        """Accept or reject every entry ready to be taken; oldest first, job files and folders before the rest.

        Ready: untouched for `settle_seconds`, and either older than `stable_seconds` or seen with the
        same size and mtime by a scan at least `settle_seconds` ago (a writer that stalled mid-copy has
        not finished). Claims left by a scanner that stopped (untouched for `claim_lease_seconds`) are
        put back first; abandoned `.submit-*` staging entries (a day old) are removed. One entry that
        cannot be read or validated is rejected and the scan goes on; one that fails for another
        reason (a full disk) is put back, named in `errors`, and the scan goes on too.
        """
        now = time.time() if now is None else now
        inbox = self.folder("inbox")
        recovered = self._recover_claims(now)
        removed_staging = self._remove_stale_staging(now)
        previous = self._read_scan_state()
        seen: dict[str, dict[str, Any]] = {}
        accepted: list[Accepted] = []
        rejected: list[Rejected] = []
        waiting: list[str] = []
        errors: list[str] = []
        entries = []
        for entry in inbox.iterdir():
            if entry.name.startswith("."):
                continue
            signature = _signature(entry)
            if signature is None:
                continue  # gone meanwhile: another scanner took it
            newest = signature[1] / 1e9
            # A recovered entry had settled before it was first claimed; its mtime is our touch.
            settled = entry.name in recovered and recovered[entry.name] == _identity(entry)
            if not settled:
                before = previous.get(entry.name)
                unchanged = before is not None and before["signature"] == list(signature)
                first_seen = before["seen"] if unchanged else now
                young = now - newest < self.stable_seconds
                if now - newest < self.settle_seconds or (young and now - first_seen < self.settle_seconds):
                    waiting.append(entry.name)
                    seen[entry.name] = {"signature": list(signature), "seen": first_seen}
                    continue
            entries.append((not _looks_like_job(entry), newest, entry.name))
        self._write_scan_state(seen)
        for _, _, name in sorted(entries):
            try:
                outcome = self._take(inbox / name)
            except Exception as e:  # not the entry's fault (it was put back): the others still get their turn
                errors.append(f"{name}: {type(e).__name__}: {quote_error(e)}")
                continue
            if isinstance(outcome, Accepted):
                accepted.append(outcome)
            elif isinstance(outcome, Rejected):
                rejected.append(outcome)
        return ScanResult(
            accepted=accepted,
            rejected=rejected,
            waiting=sorted(waiting),
            recovered=sorted(recovered),
            errors=errors,
            removed_staging=removed_staging,
        )

    def _read_scan_state(self) -> dict[str, dict[str, Any]]:
        """What the previous scan saw of the entries it left waiting: {name: {signature, seen}}."""
        try:
            doc = json.loads((self.jobs / SCAN_STATE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}  # none yet, or damaged: every young entry waits one more scan
        entries = doc.get("entries") if isinstance(doc, dict) else None
        return {
            k: v
            for k, v in (entries.items() if isinstance(entries, dict) else ())
            if isinstance(v, dict)
            and isinstance(v.get("signature"), list)
            and isinstance(v.get("seen"), int | float)
        }

    def _write_scan_state(self, seen: dict[str, dict[str, Any]]) -> None:
        # Two scanners may overwrite each other's record: the worst is one more scan's wait.
        with contextlib.suppress(OSError):
            _write_text(self.jobs / SCAN_STATE, json.dumps({"entries": seen}) + "\n")

    def _remove_stale_staging(self, now: float) -> list[str]:
        """Remove `.submit-*` staging entries older than a day: a `jobs submit` that died before its rename."""
        removed = []
        for entry in self.folder("inbox").iterdir():
            if not entry.name.startswith(SUBMIT_PREFIX):
                continue
            newest = _newest_mtime(entry)
            if newest is not None and now - newest > STAGING_STALE_SECONDS:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry.name)
        return sorted(removed)

    def _take(self, entry: Path) -> Accepted | Rejected | None:
        """Claim one entry and accept or reject it; None when another scanner claimed it first."""
        claimed = entry.with_name(f"{CLAIM_PREFIX}{secrets.token_hex(6)}-{entry.name}")
        try:
            os.rename(entry, claimed)
        except FileNotFoundError:
            return None
        claim = _Claim(claimed, every=min(CLAIM_TOUCH_SECONDS, self.claim_lease_seconds / 4))
        try:
            try:
                claim.touch()  # the rename kept the drop's mtime: without this the claim looks dead
                return self._accept(entry, claim)
            except JobError as e:
                # Messages name the entry as dropped, not its claimed name.
                message = str(e).replace(str(claimed), str(entry))
                return self._reject(entry.name, claimed, message)
        except _ClaimLost:
            return None  # taken over after this scanner stalled for longer than the lease
        except BaseException:
            # Not the job's fault (a full disk, a bug): put the entry back for the next scan.
            with contextlib.suppress(OSError):
                if not entry.exists():
                    os.rename(claimed, entry)
            raise

    def _accept(self, entry: Path, claim: _Claim) -> Accepted:
        claimed = claim.path
        source = f"{JOBS_DIR}/inbox/{entry.name}"
        if claimed.is_symlink():
            raise JobError(source, None, "is a symlink: drop the job file or folder itself")
        if claimed.is_dir():
            _refuse_links_inside(claimed, source)
        try:
            doc, base_dir, source = read_job_entry(claimed, source, name=entry.name)
            job = parse_job(doc, source=source, base_dir=base_dir, volume_root=self.root)
        except JobError:
            raise
        except Exception as e:  # whatever a hostile or broken entry makes a parser raise: its rejection
            raise JobError(
                source, None, f"cannot be read as a job: {type(e).__name__}: {quote_error(e)}"
            ) from None
        if self.manifest is not None:
            check_preset_served(job, self.manifest.profile, self.manifest.presets)
        self._check_free(job, source)
        queued = self.folder("queued") / f"{job.id}.json"
        try:
            placed = self._place_media(job, lambda path: self._copy_to_media(path, job.id, claim))
        except MediaError as e:  # a medium swapped (for a link, for another file) after it was checked
            raise JobError(source, None, str(e)) from None
        claim.touch()  # still ours: _ClaimLost, before anything is queued, if another scanner took it over
        if not _publish_json(placed, queued):
            raise JobError(source, "id", f"{job.id!r} is already queued ({self._shown(queued)})")
        _remove(claimed)
        return Accepted(id=job.id, job=self._parse_stored(queued), path=queued)

    def _reject(self, name: str, claimed: Path, message: str) -> Rejected:
        rejected = self.folder("rejected")
        stem = _strip_job_suffix(name)
        suffix = name[len(stem) :]
        for n in range(1, 10_000):
            candidate = stem if n == 1 else f"{stem}-{n}"
            # The error file is created exclusively first: it reserves the stem for this entry.
            try:
                fd = os.open(
                    rejected / f"{candidate}{ERROR_SUFFIX}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644
                )
            except FileExistsError:
                continue
            dest = rejected / f"{candidate}{suffix}"
            if dest.exists() or dest.is_symlink():
                # An entry left there without its error file: give the reservation back, try the next.
                os.close(fd)
                (rejected / f"{candidate}{ERROR_SUFFIX}").unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(message + "\n")
                f.flush()
                os.fsync(f.fileno())
            try:
                os.rename(claimed, dest)
            except FileNotFoundError:
                # Taken over after this scanner stalled for longer than the lease: the taker judges it.
                (rejected / f"{candidate}{ERROR_SUFFIX}").unlink(missing_ok=True)
                raise _ClaimLost(claimed) from None
            return Rejected(name=name, error=message, path=dest)
        raise OSError(f"{rejected}: no free name for the rejected entry {name!r}")

    def _recover_claims(self, now: float) -> dict[str, tuple[int, int] | None]:
        """Put every claim untouched for longer than the lease back into the inbox.

        The names the entries got there, each with the (device, inode) it was put back as.
        """
        recovered: dict[str, tuple[int, int] | None] = {}
        for claimed in self.folder("inbox").iterdir():
            match = CLAIMED_NAME.fullmatch(claimed.name)
            touched = _mtime(claimed) if match else None
            if match and touched is not None and now - touched > self.claim_lease_seconds:
                name = self._recover(claimed, match["name"], now)
                if name is not None:
                    recovered[name] = _identity(self.folder("inbox") / name)
        return recovered

    def _recover(self, claimed: Path, name: str, now: float) -> str | None:
        """Move a stale claim back into the inbox as `name`, else a free name; None if another scanner has it."""
        mine = claimed.with_name(f"{CLAIM_PREFIX}{secrets.token_hex(6)}-{name}")
        try:
            os.rename(claimed, mine)  # of two recoverers, exactly one still finds the claim
        except FileNotFoundError:
            return None
        touched = _mtime(mine)
        if touched is None:
            return None
        if now - touched <= self.claim_lease_seconds:
            # Its scanner touched it between our look and our rename: alive. Give it back; if the scanner
            # noticed the gap it gave the entry up, and the claim is recovered once its lease runs out.
            with contextlib.suppress(OSError):
                os.rename(mine, claimed)
            return None
        try:
            _Claim(mine, every=0).touch()  # ours now: recoverers that look from here on leave it alone
        except _ClaimLost:
            return None
        inbox = self.folder("inbox")
        is_dir = mine.is_dir() and not mine.is_symlink()
        stem, suffix = (name, "") if is_dir else os.path.splitext(name)
        for n in range(10_000):
            target = name if n == 0 else f"{stem}-recovered-{n}{suffix}"
            try:
                _rename_noreplace(mine, inbox / target)
            except FileExistsError:
                continue  # a new drop of the same name: never replaced, never merged into
            except FileNotFoundError:
                return None  # another scanner took our claim over meanwhile
            return target
        return None  # left claimed: recovered by a later scan once names are free

    def _check_free(self, job: RenderJob, source: str) -> None:
        """JobError (field 'id') when the id is queued or rendering, or done without `rerender: true`."""
        queued = self.folder("queued") / f"{job.id}.json"
        if queued.exists():
            raise JobError(source, "id", f"{job.id!r} is already queued ({self._shown(queued)})")
        holder = self._live_marker(job.id)
        if holder is not None:
            raise JobError(source, "id", f"{job.id!r} is being rendered now ({holder.describe()})")
        done = self.folder("done") / f"{job.id}.json"
        if done.exists() and not job.rerender:
            raise JobError(
                source,
                "id",
                f"{job.id!r} is done already ({self._shown(done)}); set 'rerender: true' in the job to "
                "render it again",
            )

    # -- media ---------------------------------------------------------------------------------

    def _place_media(self, job: RenderJob, copy: Callable[[Path], str]) -> dict[str, Any]:
        """job.to_json() with every local medium either copied (`copy(path) -> ref`) or made a volume: ref."""
        copies: dict[str, str] = {}

        def place(ref: str | None) -> str | None:
            if ref is None or ref.startswith(S3_PREFIX):
                return ref
            path = Path(ref)  # resolved by parse_job: absolute, symlinks followed
            if path.is_relative_to(self.root) and not path.is_relative_to(self.folder("inbox")):
                return VOLUME_PREFIX + path.relative_to(self.root).as_posix()
            if ref not in copies:
                copies[ref] = copy(path)
            return copies[ref]

        doc = job.to_json()
        doc["cond_image"] = place(job.cond_image)
        doc["cond_audio"] = {name: place(ref) for name, ref in doc["cond_audio"].items()}
        return doc

    def _copy_to_media(self, path: Path, job_id: str, claim: _Claim) -> str:
        claim.touch()
        folder = self.jobs / MEDIA_DIR / job_id
        folder.mkdir(parents=True, exist_ok=True)
        name = _copy_unique(path, folder, roots=(self.root,), on_chunk=claim.keep)
        return f"{VOLUME_PREFIX}{JOBS_DIR}/{MEDIA_DIR}/{job_id}/{name}"

    # -- accepted jobs -------------------------------------------------------------------------

    def queued_ids(self) -> list[str]:
        """Ids waiting in jobs/queued/, oldest first; those being rendered now are left out."""
        found = []
        for path in self.folder("queued").glob("*.json"):
            job_id = path.stem
            if path.name.startswith(".") or self._live_marker(job_id) is not None:
                continue
            with contextlib.suppress(FileNotFoundError):
                found.append((path.stat().st_mtime, job_id))
        return [job_id for _, job_id in sorted(found)]

    def load(self, job_id: str) -> RenderJob:
        """The accepted job: queued, else the newer of done and failed (a re-run). Media are not decoded."""
        return self._parse_stored(self._stored(job_id))

    def _stored(self, job_id: str) -> Path:
        _check_id(job_id)
        queued = self.folder("queued") / f"{job_id}.json"
        if queued.exists():
            return queued
        found = []
        for state in ("done", "failed"):
            path = self.folder(state) / f"{job_id}.json"
            with contextlib.suppress(FileNotFoundError):
                found.append((path.stat().st_mtime, path))
        if not found:
            raise JobNotFound(
                f"render job {job_id!r}: not in {JOBS_DIR}/queued, {JOBS_DIR}/done or {JOBS_DIR}/failed "
                f"of volume {self.root}"
            )
        return max(found)[1]

    def _parse_stored(self, path: Path) -> RenderJob:
        # record_sha256=False: the job keeps the sha256 of the file that was accepted, not of its copy
        return load_job(path, volume_root=self.root, check_media=False, record_sha256=False)

    @contextlib.contextmanager
    def rendering(self, job_id: str) -> Iterator[RenderJob]:
        """Mark the job 'rendering' while the block runs; JobBusy if a live marker says so already.

        The marker is a writer lock (jobs/rendering/<id>.lock): host, pid, start time, and a heartbeat.
        A marker whose heartbeat stopped, or whose pid on this host is gone, counts as not rendering.
        """
        self._stored(job_id)  # JobNotFound before any marker is made
        lock = WriterLock(self._marker(job_id), stale_after=self.rendering_stale_after)
        if not lock.try_acquire():
            holder = lock.holder()
            who = holder.describe() if holder else "another process"
            raise JobBusy(f"render job {job_id!r}: already rendering on {who} ({self._shown(lock.path)})")
        try:
            yield self.load(job_id)
        finally:
            lock.release()

    def mark_done(self, job_id: str, output: Path) -> Path:
        """Move the job to jobs/done/<id>.json (replacing an earlier one), recording where its output is."""
        source = self._stored(job_id)
        done_dir = self.folder("done")
        done = done_dir / f"{job_id}.json"
        _write_text(done_dir / f"{job_id}{OUTPUT_SUFFIX}", self._shown(Path(output).resolve()) + "\n")
        if source != done:
            os.replace(source, done)
        failed_dir = self.folder("failed")
        for stale in (failed_dir / f"{job_id}.json", failed_dir / f"{job_id}{ERROR_SUFFIX}"):
            stale.unlink(missing_ok=True)
        return done

    def mark_failed(self, job_id: str, error: str) -> Path:
        """Move the job to jobs/failed/<id>.json with <id>.error.txt; a re-run of a done job keeps its done entry."""
        source = self._stored(job_id)
        failed_dir = self.folder("failed")
        failed = failed_dir / f"{job_id}.json"
        _write_text(failed_dir / f"{job_id}{ERROR_SUFFIX}", error.rstrip("\n") + "\n")
        if source.parent == self.folder("queued"):
            os.replace(source, failed)
        elif source != failed:
            _write_text(failed, source.read_text(encoding="utf-8"))  # done stays: its output is still there
        return failed

    # -- rendering markers ---------------------------------------------------------------------

    def _marker(self, job_id: str) -> Path:
        return self.folder("rendering") / f"{job_id}.lock"

    def _live_marker(self, job_id: str) -> LockOwner | None:
        """Who renders the job now, or None (no marker, or a stale one: dead local pid, stopped heartbeat)."""
        lock = WriterLock(self._marker(job_id), stale_after=self.rendering_stale_after)
        holder = lock.holder()
        if holder is None or lock._is_stale(holder):
            return None
        return holder

    # -- status --------------------------------------------------------------------------------

    def status(self) -> list[JobStatus]:
        """Every job in every state (a re-render may be listed twice: done, and queued again)."""
        found: list[JobStatus] = []
        now = time.time()
        for entry in self.folder("inbox").iterdir():
            if entry.name.startswith(SUBMIT_PREFIX):
                newest = _newest_mtime(entry)
                if newest is not None and now - newest > STAGING_STALE_SECONDS:
                    name = entry.name.split("-", 2)[-1] if entry.name.count("-") >= 2 else entry.name
                    error = (
                        f"abandoned staging entry {entry.name} ({(now - newest) / 3600:.0f} h old): a `jobs submit` "
                        "stopped before it finished; the next scan removes it"
                    )
                    found.append(JobStatus(name, "inbox", entry, None, error, newest))
                continue
            if entry.name.startswith("."):
                match = CLAIMED_NAME.fullmatch(entry.name)
                touched = _mtime(entry) if match else None
                if match and touched is not None and now - touched > self.claim_lease_seconds:
                    error = (
                        f"stale claim: a scanner stopped while accepting it (untouched for "
                        f"{now - touched:.0f} s, lease {self.claim_lease_seconds:g} s); the next scan "
                        f"puts it back into the inbox as {match['name']} (if that name is free)"
                    )
                    job_id = _peek_id(entry, name=match["name"])
                    found.append(JobStatus(job_id, "inbox", entry, None, error, touched))
                continue
            newest = _newest_mtime(entry)
            if newest is not None:
                found.append(JobStatus(_peek_id(entry), "inbox", entry, None, None, newest))

        queued_ids = set()
        for path in self.folder("queued").glob("*.json"):
            if path.name.startswith("."):
                continue
            updated = _mtime(path)
            if updated is None:
                continue
            queued_ids.add(path.stem)
            holder = self._live_marker(path.stem)
            if holder is None:
                found.append(JobStatus(path.stem, "queued", path, None, None, updated))
            else:
                found.append(JobStatus(path.stem, "rendering", path, None, None, holder.started))
        for marker in self.folder("rendering").glob("*.lock"):
            if marker.stem in queued_ids:
                continue
            holder = self._live_marker(marker.stem)
            if holder is not None:  # a re-run of a done or failed job
                found.append(JobStatus(marker.stem, "rendering", marker, None, None, holder.started))

        for path in self.folder("done").glob("*.json"):
            updated = _mtime(path)
            if updated is not None and not path.name.startswith("."):
                found.append(JobStatus(path.stem, "done", path, self._output_of(path.stem), None, updated))
        for path in self.folder("failed").glob("*.json"):
            updated = _mtime(path)
            if updated is not None and not path.name.startswith("."):
                error = _read_or_none(self.folder("failed") / f"{path.stem}{ERROR_SUFFIX}")
                found.append(JobStatus(path.stem, "failed", path, None, error, updated))
        for entry in self.folder("rejected").iterdir():
            if entry.name.startswith(".") or entry.name.endswith(ERROR_SUFFIX):
                continue
            updated = _mtime(entry)
            if updated is not None:
                stem = _strip_job_suffix(entry.name)
                error = _read_or_none(self.folder("rejected") / f"{stem}{ERROR_SUFFIX}")
                found.append(JobStatus(stem, "rejected", entry, None, error, updated))
        order = {state: i for i, state in enumerate(STATES)}
        return sorted(found, key=lambda s: (order[s.state], s.updated, s.id))

    def _output_of(self, job_id: str) -> Path | None:
        recorded = _read_or_none(self.folder("done") / f"{job_id}{OUTPUT_SUFFIX}")
        if recorded:
            path = Path(recorded)
            path = path if path.is_absolute() else self.root / path
            if path.exists():
                return path
        default = self.root / OUTPUTS_DIR / job_id
        return default if default.exists() else None

    # -- submitting ----------------------------------------------------------------------------

    def withdraw(self, job_id: str) -> list[Path]:
        """Remove a job still waiting: its folder inbox/<id>/ and queued/<id>.json (not while it renders).

        For a program that resubmits its own job, e.g. the demo after an interrupted run. The paths removed.
        """
        removed = []
        folder = self.folder("inbox") / job_id
        if folder.is_dir():
            shutil.rmtree(folder)
            removed.append(folder)
        queued = self.folder("queued") / f"{job_id}.json"
        if queued.is_file() and self._live_marker(job_id) is None:
            queued.unlink()
            removed.append(queued)
        return removed

    def submit(self, job_file: Path, *, allowed_roots: Sequence[Path] = ()) -> Path:
        """Validate a job file (media decoded) and drop it into jobs/inbox/<id>/ with its local media.

        The folder (job.json + media) is written under a hidden name in the inbox and renamed into
        place, so a scan never sees half of it. JobError (naming the field) for an invalid job, and
        (field 'id') for an id already in the inbox, queued, rendering, or done without `rerender: true`.
        """
        job = load_job(job_file, volume_root=self.root, allowed_roots=allowed_roots)
        job_folder = Path(job_file) if Path(job_file).is_dir() else Path(job_file).parent
        roots = (job_folder.resolve(), self.root, *(Path(r).resolve() for r in allowed_roots))
        inbox = self.folder("inbox")
        target = inbox / job.id
        for entry in inbox.iterdir():
            if entry.name.startswith("."):
                continue
            if entry.name == job.id or _peek_id(entry) == job.id:
                raise JobError(job.source, "id", f"{job.id!r} is in the inbox already ({self._shown(entry)})")
        self._check_free(job, job.source)

        stage = inbox / f"{SUBMIT_PREFIX}{secrets.token_hex(6)}-{job.id}"
        stage.mkdir()
        try:
            doc = self._place_media(job, lambda path: _copy_unique(path, stage, roots=roots))
            _write_text(stage / "job.json", json.dumps(doc, indent=2) + "\n")
            if target.exists() or target.is_symlink():
                raise JobError(
                    job.source, "id", f"{job.id!r} is in the inbox already ({self._shown(target)})"
                )
            os.rename(stage, target)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        return target

    def _shown(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else str(path)


# --- helpers ------------------------------------------------------------------------------------


def _check_id(job_id: str) -> None:
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
        raise JobNotFound(f"render job {job_id!r}: not a job id ({JOB_ID_RULE})")


def _peek_id(entry: Path, name: str | None = None) -> str:
    """The id an inbox entry will most likely get: its `id` field, else its name (no validation)."""
    name = entry.name if name is None else name
    default = name if entry.is_dir() else _strip_job_suffix(name)
    job_file = entry
    if entry.is_dir():
        job_file = next((entry / n for n in FOLDER_JOB_NAMES if (entry / n).is_file()), entry)
    if job_file.is_file() and job_file.suffix.lower() in JOB_SUFFIXES:
        with contextlib.suppress(JobError):
            value = read_job_document(job_file).get("id")
            if isinstance(value, str) and value:
                return value
    return default


def _looks_like_job(entry: Path) -> bool:
    return entry.is_dir() or entry.suffix.lower() in JOB_SUFFIXES


def _strip_job_suffix(name: str) -> str:
    for suffix in JOB_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the entry itself, or None when it is gone."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _signature(entry: Path) -> tuple[int, int, int] | None:
    """(bytes, newest mtime in ns, files) of an entry and, for a folder, of everything inside it
    (links not followed); None when it is gone. What "unchanged since the previous scan" compares."""
    try:
        st = entry.lstat()
    except FileNotFoundError:
        return None
    size, newest, count = st.st_size, st.st_mtime_ns, 1
    if stat.S_ISDIR(st.st_mode):
        for folder, dirs, files in os.walk(entry):
            for name in (*dirs, *files):
                try:
                    inner = os.lstat(os.path.join(folder, name))
                except FileNotFoundError:
                    continue
                size, newest, count = size + inner.st_size, max(newest, inner.st_mtime_ns), count + 1
    return size, newest, count


def _refuse_links_inside(folder: Path, source: str) -> None:
    """JobError when anything inside a job folder is a symlink: its files are read only as themselves."""
    for where, dirs, files in os.walk(folder):
        for name in (*dirs, *files):
            path = Path(where) / name
            if path.is_symlink():
                inside = path.relative_to(folder).as_posix()
                raise JobError(
                    source,
                    None,
                    f"holds a symlink, {inside}: a job folder's files are never read through a link",
                )


def quote_error(e: BaseException) -> str:
    """An exception's first line, at most 200 characters (a message about hostile input stays small)."""
    try:
        text = str(e)
    except Exception:  # a str() that itself fails (an integer too long to print)
        text = ""
    line = (text.strip().splitlines() or [""])[0]
    return line if len(line) <= 200 else line[:197] + "..."


def _mtime(path: Path) -> float | None:
    try:
        return path.lstat().st_mtime
    except FileNotFoundError:
        return None


def _newest_mtime(entry: Path) -> float | None:
    """The newest mtime of the entry and, for a folder, of anything inside it (links not followed)."""
    signature = _signature(entry)
    return None if signature is None else signature[1] / 1e9


def _read_or_none(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        with contextlib.suppress(FileNotFoundError):  # taken over meanwhile: its id is queued now
            shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class _ClaimLost(Exception):
    """This scanner's claim is gone: another scanner took it over after the lease ran out."""


class _Claim:
    """An inbox entry this scanner renamed to `.claimed-*`, touched so that other scanners see it alive."""

    def __init__(self, path: Path, every: float) -> None:
        self.path = path
        self.every = every
        self.touched = -float("inf")

    def touch(self) -> None:
        """Set the entry's own mtime to now (not a symlink's target); _ClaimLost when it is gone."""
        try:
            os.utime(self.path, follow_symlinks=False)
        except FileNotFoundError:
            raise _ClaimLost(self.path) from None
        except PermissionError:
            pass  # another user's file, not ours to touch: still there, so still ours
        self.touched = time.monotonic()

    def keep(self) -> None:
        """Touch the entry if the last touch is `every` seconds old (called as media are copied)."""
        if time.monotonic() - self.touched >= self.every:
            self.touch()


_RENAME_NOREPLACE = 1  # linux/fs.h
_AT_FDCWD = -100


@functools.cache
def _renameat2() -> Any:
    """libc's renameat2 (Linux, glibc 2.28+), or None."""
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    except OSError:
        return None


def _rename_noreplace(source: Path, target: Path) -> None:
    """Rename `source` to `target` unless `target` exists (FileExistsError; FileNotFoundError: no `source`).

    renameat2(RENAME_NOREPLACE) where the filesystem has it; else a hard link, which refuses an existing
    name atomically; for a folder (or where links are not supported) an existence check and a rename,
    with a small window. A folder is never renamed onto a folder that has files: rename refuses that.
    """
    renameat2 = _renameat2()
    if renameat2 is not None:
        if renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), str(source), None, str(target))
    if source.is_symlink() or not source.is_dir():
        try:
            os.link(source, target, follow_symlinks=False)
        except (FileExistsError, FileNotFoundError):
            raise
        except OSError:
            pass  # no hard links on this filesystem
        else:
            source.unlink(missing_ok=True)
            return
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
    os.rename(source, target)


def _temp_beside(final: Path) -> Path:
    return final.with_name(f".{final.name}.{secrets.token_hex(6)}.tmp")


def _write_text(final: Path, text: str) -> None:
    """Write via a hidden temporary file, fsync, and rename over `final`."""
    temp = _temp_beside(final)
    try:
        with open(temp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, final)
    finally:
        temp.unlink(missing_ok=True)


def _publish(temp: Path, final: Path) -> bool:
    """Rename a complete `temp` to `final` unless `final` exists; False (temp removed) when it does.

    A hard link refuses an existing name atomically; where links are not supported (some network
    filesystems) an existence check and a rename do, with a small window.
    """
    try:
        try:
            os.link(temp, final)
            return True
        except FileExistsError:
            return False
        except OSError:
            if final.exists():
                return False
            os.rename(temp, final)
            return True
    finally:
        temp.unlink(missing_ok=True)


def _publish_json(doc: Mapping[str, Any], final: Path) -> bool:
    temp = _temp_beside(final)
    try:
        with open(temp, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return _publish(temp, final)


def open_medium(path: Path, roots: Sequence[Path]) -> BinaryIO:
    """The medium at `path` opened once, for reading: never through a symlink, a regular file, and
    really inside one of `roots` (what was opened is checked, not what the path said before).

    Media are validated by path and copied later: a file swapped for a link to something outside the
    volume in between is refused here, and the copy is made from this open file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise MediaError(f"{path.name} became a symlink after it was checked: not copied") from None
        raise
    f = os.fdopen(fd, "rb")
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise MediaError(f"{path.name} is not a regular file: not copied")
        opened = Path(os.readlink(f"/proc/self/fd/{fd}")) if os.path.exists(f"/proc/self/fd/{fd}") else path
        if not any(opened.is_relative_to(root) for root in roots):
            raise MediaError(f"{path.name} is no longer inside the allowed folders: not copied")
        os.set_blocking(fd, True)
    except BaseException:
        f.close()
        raise
    return f


def _copy_file(source: BinaryIO, target: Path, on_chunk: Callable[[], None] | None = None) -> None:
    """Copy the bytes of the open `source` to a new file `target` and fsync it; `on_chunk()` after each chunk."""
    source.seek(0)
    with open(target, "xb") as dst:
        while chunk := source.read(COPY_CHUNK_BYTES):
            dst.write(chunk)
            if on_chunk is not None:
                on_chunk()
        dst.flush()
        os.fsync(dst.fileno())


def _same_bytes(source: BinaryIO, other: Path) -> bool:
    source.seek(0)
    with open(other, "rb") as f:
        while True:
            a, b = source.read(COPY_CHUNK_BYTES), f.read(COPY_CHUNK_BYTES)
            if a != b:
                return False
            if not a:
                return True


def _copy_unique(
    path: Path, folder: Path, *, roots: Sequence[Path], on_chunk: Callable[[], None] | None = None
) -> str:
    """Copy `path` into `folder` under its own name, or <stem>-2<suffix>, ... when a different file has it.

    The medium is opened once (`open_medium`: no symlink, inside `roots`) and copied from that open
    file. A file with the same bytes already there is used as it is. Returns the name in `folder`.
    `on_chunk()` is called as bytes are copied (a claim's touch).
    """
    stem, suffix = path.stem, path.suffix
    with open_medium(path, roots) as source:
        for n in range(1, 10_000):
            name = path.name if n == 1 else f"{stem}-{n}{suffix}"
            final = folder / name
            if final.exists():
                if final.is_file() and _same_bytes(source, final):
                    return name
                continue
            temp = _temp_beside(final)
            try:
                _copy_file(source, temp, on_chunk)
            except BaseException:
                temp.unlink(missing_ok=True)
                raise
            if _publish(temp, final):
                return name
            if final.is_file() and _same_bytes(source, final):
                return name  # another scanner copied the same file meanwhile
    raise OSError(f"{folder}: no free name for a copy of {path.name}")
