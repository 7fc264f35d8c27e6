"""Provisioning: plan what the volume lacks, then fetch it from a source, verified and atomically.

plan()  audits the volume (hash cache allowed) and lists the files to fetch: missing, wrong
        size, wrong bytes. It sums the bytes and compares them with the free space.
apply() fetches those files, several at once. Each file goes through the volume's writer lock
        and its writer (an AtomicWriter; on an S3 volume a verified upload, volume/s3_upload.py),
        so bytes are hashed as they arrive and placed only when they match the pin. Transient source errors are retried with exponential backoff; where the
        source serves ranges, a retry (or a re-run after a kill) resumes from the staged bytes.

A full volume stops the run: the first VolumeFullError (a full disk; HTTP 507 from an S3 volume,
RunPod's "volume full") starts no further file and stops the files in flight at their next bytes
(their writers discard what they staged or abort their uploads: nothing half-written); the report's
`stopped` says why, in one line naming the volume, and every file left is `failed` with a detail
saying it was not fetched. Other failures stay one file's.

Two provisioners on one volume: a file whose lock is held by a live writer is put aside and
taken up last, waiting for the lock; by then the other writer has usually placed it, and the
hash cache (which that writer filled) says so without re-reading it. So no file is fetched
twice and nothing is written over a file being written.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from mt_assets.audit import SPACE_MARGIN, AuditReport, FileAudit, audit, audit_file
from mt_assets.manifest import Manifest, ManifestFile
from mt_assets.progress import NullProgress, Progress
from mt_assets.sources.base import Source, SourceError, TransientSourceError
from mt_assets.units import human_bytes
from mt_assets.volume import Expected, IntegrityError, LockLost, Volume, VolumeFullError, WriterBusy

DEFAULT_RETRIES = 5
DEFAULT_BACKOFF = 0.5  # seconds before the first retry; doubles each time


class NotEnoughSpace(RuntimeError):
    """The files to fetch do not fit on the volume (with the margin)."""


class _Stopped(Exception):
    """Raised in a fetch's byte callback once the run has stopped (a full volume): the fetch unwinds
    through its writer, which discards what it staged."""


@dataclass
class Plan:
    manifest: Manifest
    audit: AuditReport
    to_fetch: list[FileAudit]

    # The sums are the audit's: one definition of what is left to fetch and what it needs.
    @property
    def to_fetch_bytes(self) -> int:
        return self.audit.totals.to_fetch_bytes

    @property
    def unknown_size_files(self) -> int:
        return self.audit.totals.unknown_size_files

    @property
    def free_bytes(self) -> int | None:
        return self.audit.free_bytes

    @property
    def required_bytes(self) -> int:
        return self.audit.required_bytes

    @property
    def fits(self) -> bool:
        return self.audit.fits

    def check_space(self) -> None:
        if not self.fits and self.free_bytes is not None:
            raise NotEnoughSpace(
                f"volume {self.audit.volume}: {human_bytes(self.free_bytes)} free, "
                f"{human_bytes(self.to_fetch_bytes)} to fetch (+{SPACE_MARGIN:.0%} margin): "
                f"free {human_bytes(self.required_bytes - self.free_bytes)} or pass --only"
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.manifest.profile,
            "volume": self.audit.volume,
            "free_bytes": self.free_bytes,
            "to_fetch_bytes": self.to_fetch_bytes,
            "required_bytes": self.required_bytes,
            "unknown_size_files": self.unknown_size_files,
            "fits": self.fits,
            "files": [
                {
                    "component": fa.file.component,
                    "path": fa.file.path,
                    "status": fa.status,
                    "size": fa.file.planned_size,
                }
                for fa in self.to_fetch
            ],
        }


@dataclass(frozen=True)
class FetchResult:
    """What happened to one file. `outcome`: placed | skipped | failed."""

    file: ManifestFile
    outcome: str
    status: str  # the file's audit status afterwards: ok, unpinned, missing, ...
    source_uri: str
    bytes: int = 0  # fetched during this run
    resumed_from: int = 0  # bytes kept from an interrupted earlier attempt
    seconds: float = 0.0
    attempts: int = 0
    sha256: str | None = None
    detail: str | None = None

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "component": self.file.component,
            "path": self.file.path,
            "target": self.file.target,
            "outcome": self.outcome,
            "status": self.status,
            "source": self.source_uri,
            "bytes": self.bytes,
            "resumed_from": self.resumed_from,
            "seconds": round(self.seconds, 3),
            "mb_per_s": round(self.mb_per_s, 1),
            "attempts": self.attempts,
            "sha256": self.sha256,
            "detail": self.detail,
        }


@dataclass
class ProvisionReport:
    plan: Plan
    results: list[FetchResult] = field(default_factory=list)
    audit: AuditReport | None = None  # after applying
    stopped: str | None = None  # why the run stopped before every file was tried (a full volume)

    @property
    def complete(self) -> bool:
        return self.audit is not None and self.audit.complete

    def to_json(self) -> dict[str, Any]:
        assert self.audit is not None
        return {
            "complete": self.complete,
            "stopped": self.stopped,
            "plan": self.plan.to_json(),
            "results": [r.to_json() for r in self.results],
            "audit": self.audit.to_json(),
        }


def plan(
    manifest: Manifest,
    volume: Volume,
    *,
    full: bool = False,
    jobs: int | None = None,
    progress: Progress | None = None,
) -> Plan:
    report = audit(manifest, volume, full=full, jobs=jobs, progress=progress)
    return Plan(manifest=manifest, audit=report, to_fetch=[fa for fa in report.files if fa.to_fetch])


def apply(
    the_plan: Plan,
    source: Source,
    volume: Volume,
    *,
    jobs: int = 4,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF,
    progress: Progress | None = None,
    full_audit: bool | None = None,
) -> ProvisionReport:
    """Fetch every file of the plan; never raises for one file's failure (see the results).

    The closing audit is full (every byte of the volume re-read, no hash cache) when `full_audit`, or,
    left None, when the source is a volume (replication proves the destination, sources/volume.py)."""
    if full_audit is None:
        from mt_assets.sources.volume import VolumeSource

        full_audit = isinstance(source, VolumeSource)
    fetcher = _Fetcher(source, volume, retries=retries, backoff=backoff, progress=progress or NullProgress())
    files = [fa.file for fa in the_plan.to_fetch]
    results: dict[str, FetchResult] = {}
    busy: list[ManifestFile] = []
    with ThreadPoolExecutor(max_workers=max(jobs, 1), thread_name_prefix="provision") as pool:
        for f, result in zip(files, pool.map(lambda f: fetcher.fetch(f, wait=False), files), strict=True):
            if result is None:
                busy.append(f)
            else:
                results[f.target] = result
        # Files another provisioner is writing: wait for its lock, then (usually) find them placed.
        for f, result in zip(busy, pool.map(lambda f: fetcher.fetch(f, wait=True), busy), strict=True):
            assert result is not None
            results[f.target] = result
    report = ProvisionReport(plan=the_plan, results=[results[f.target] for f in files])
    if fetcher.stopped is not None:
        placed = sum(r.outcome == "placed" for r in report.results)
        report.stopped = (
            f"volume {volume.uri}: {fetcher.stopped}; provisioning stopped ({placed} placed, "
            f"{len(files) - placed} not): free space on the volume (RunPod: enlarge the network volume), "
            "then run again"
        )
    report.audit = audit(the_plan.manifest, volume, full=full_audit)
    return report


class _Fetcher:
    def __init__(
        self, source: Source, volume: Volume, *, retries: int, backoff: float, progress: Progress
    ) -> None:
        self.source = source
        self.volume = volume
        self.retries = retries
        self.backoff = backoff
        self.progress = progress
        self.stopped: str | None = None  # the first full-volume error: no file starts after it
        self._stop = threading.Event()

    def fetch(self, f: ManifestFile, *, wait: bool) -> FetchResult | None:
        """Fetch one file; None when `wait` is off and another live writer holds it."""
        uri = self.source.uri_for(f)
        if self._stop.is_set():
            return self._not_started(f, uri)
        expected = Expected(size=f.size, sha256=f.sha256, git_sha1=f.git_sha1)
        attempts = 0
        fetched = 0
        resumed_from = 0
        restarted = False
        started = time.monotonic()
        while True:
            attempts += 1
            try:
                with self.volume.writing(
                    f.target, expected, wait=wait, resume=self.source.supports_ranges
                ) as w:
                    # Under the lock: another provisioner may have placed it while we waited.
                    already = audit_file(f, self.volume)
                    if not already.to_fetch:
                        return FetchResult(
                            f,
                            "skipped",
                            already.status,
                            uri,
                            attempts=attempts,
                            sha256=already.sha256,
                            detail="already on the volume (placed by another writer)",
                        )
                    if attempts == 1:
                        resumed_from = w.resume_from
                    self.progress.start(f.target, f.target, f.planned_size)
                    if w.resume_from:
                        self.progress.advance(f.target, w.resume_from)
                    try:

                        def on_bytes(n: int) -> None:
                            nonlocal fetched
                            if self._stop.is_set():
                                raise _Stopped
                            fetched += n
                            self.progress.advance(f.target, n)

                        self.source.fetch(f, w, on_bytes)
                        if self._stop.is_set():
                            raise _Stopped
                        digest = w.commit()
                    finally:
                        self.progress.finish(f.target)
                after = audit_file(f, self.volume)
                return FetchResult(
                    f,
                    "placed",
                    after.status,
                    uri,
                    bytes=fetched,
                    resumed_from=resumed_from,
                    seconds=time.monotonic() - started,
                    attempts=attempts,
                    sha256=digest.sha256,
                )
            except WriterBusy:
                return None
            except TransientSourceError as e:
                if attempts > self.retries:
                    return self._failed(f, uri, attempts, started, f"{e} (gave up after {attempts} attempts)")
                time.sleep(self.backoff * 2 ** (attempts - 1))
            except _Stopped:
                return self._not_started(f, uri, started=started, attempts=attempts)
            except VolumeFullError as e:
                if not self._stop.is_set():
                    self.stopped = str(e)
                    self._stop.set()
                return self._failed(f, uri, attempts, started, str(e))
            except (SourceError, LockLost) as e:
                return self._failed(f, uri, attempts, started, str(e))
            except IntegrityError as e:
                if resumed_from and not restarted:
                    # Bytes kept from an earlier attempt may belong to a source that changed since:
                    # the commit discarded them; one more try starts from zero.
                    restarted, resumed_from = True, 0
                    continue
                return self._failed(f, uri, attempts, started, str(e))
            except OSError as e:
                return self._failed(f, uri, attempts, started, f"{f.target}: {e}")
            except Exception as e:  # one file's surprise must not sink the other files' results
                return self._failed(f, uri, attempts, started, f"{f.target}: {type(e).__name__}: {e}")

    def _not_started(
        self, f: ManifestFile, uri: str, *, started: float | None = None, attempts: int = 0
    ) -> FetchResult:
        """A file the run stopped before (or while) fetching; what it had staged is discarded."""
        detail = "not fetched: the run stopped, the volume is full"
        if started is None:
            return FetchResult(f, "failed", audit_file(f, self.volume).status, uri, detail=detail)
        return self._failed(f, uri, attempts, started, detail)

    def _failed(self, f: ManifestFile, uri: str, attempts: int, started: float, detail: str) -> FetchResult:
        try:
            status = audit_file(f, self.volume).status
        except Exception:  # the volume itself is in trouble; the detail says what failed first
            status = "missing"
        return FetchResult(
            f, "failed", status, uri, seconds=time.monotonic() - started, attempts=attempts, detail=detail
        )
