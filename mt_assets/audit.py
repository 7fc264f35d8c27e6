"""The audit: is every file the manifest declares on the volume, whole and exactly as pinned?

Per file, one status:

    ok             present, and its bytes match the pinned sha256 (or git blob id)
    missing        not there (or not a regular file: a symlink, a folder)
    size_mismatch  there, but not the pinned size (truncated, or another file)
    hash_mismatch  the pinned size, but other bytes
    unpinned       there, with nothing pinned to check it against (until `lock`)

A file's bytes are read only when the hash cache has no entry for its current (size,
mtime_ns, inode); `full=True` re-reads everything, several files at once.

At scale (a lock of a large repository has thousands of files; a million must stay feasible) the
work per file is kept to one lstat: folders on the way are checked once per audit, the hash cache
answers BATCH files per query and takes the rows of files hashed in batches too, only files whose
bytes are read go to the thread pool (a bounded number at a time), progress is counted in files
(`mt_assets.progress.FILES`) a batch at a time, and the JSON report is written a file at a time.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TextIO, cast

from mt_assets.manifest import Manifest, ManifestFile
from mt_assets.progress import FILES, NullProgress, Progress
from mt_assets.volume import Digest, FileState, Volume
from mt_assets.volume.base import Stat

STATUSES = ("ok", "missing", "size_mismatch", "hash_mismatch", "unpinned")
TO_FETCH = ("missing", "size_mismatch", "hash_mismatch")
SPACE_MARGIN = 0.05  # keep 5% over the bytes to fetch: staging, filesystem overhead
BATCH = 1000  # files stat'ed, then asked of the hash cache, at a time; progress moves by as many
READING_PER_JOB = 4  # files queued per hashing thread: enough to keep it busy, few to hold


@dataclass(frozen=True, slots=True)
class FileAudit:
    file: ManifestFile
    status: str
    size: int | None = None  # bytes on the volume
    sha256: str | None = None  # of the bytes on the volume, when known
    git_sha1: str | None = None
    hashed: bool = False  # bytes were read during this audit
    detail: str | None = None

    @property
    def to_fetch(self) -> bool:
        return self.status in TO_FETCH

    def to_json(self) -> dict[str, Any]:
        f = self.file
        return {
            "component": f.component,
            "path": f.path,
            "target": f.target,
            "kind": f.kind,
            "status": self.status,
            "size": self.size,
            "expected_size": f.size,
            "sha256": self.sha256,
            "expected_sha256": f.sha256,
            "git_sha1": self.git_sha1,
            "expected_git_sha1": f.git_sha1,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Totals:
    files: int = 0
    ok: int = 0
    needed_bytes: int = 0  # what the files take once all are in place
    present_bytes: int = 0  # of those, already in place (ok or unpinned)
    to_fetch_bytes: int = 0  # still to fetch (missing or wrong), known sizes only
    unknown_size_files: int = 0  # declared without size or estimate: not in the sums

    def add(self, fa: FileAudit) -> Totals:
        planned = fa.file.planned_size
        present = fa.size if fa.status in ("ok", "unpinned") else 0
        return Totals(
            files=self.files + 1,
            ok=self.ok + (fa.status == "ok"),
            needed_bytes=self.needed_bytes + (planned if planned is not None else present or 0),
            present_bytes=self.present_bytes + (present or 0),
            to_fetch_bytes=self.to_fetch_bytes + ((planned or 0) if fa.to_fetch else 0),
            unknown_size_files=self.unknown_size_files + (planned is None and fa.to_fetch),
        )

    def to_json(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class _Summary:
    counts: dict[str, int]
    totals: Totals
    components: dict[str, Totals]
    bytes_read: int


@dataclass
class AuditReport:
    """What an audit found; read-only once made (its sums are worked out once, on first use)."""

    profile: str
    manifest: str
    volume: str
    free_bytes: int | None  # None: the volume cannot tell (an S3 volume without a known size)
    files: list[FileAudit] = field(default_factory=list)
    full: bool = False

    @cached_property
    def _summary(self) -> _Summary:
        """Counts and sums of every file, in one pass (Totals.add per file, summed)."""
        counts = dict.fromkeys(STATUSES, 0)
        sums: dict[str, list[int]] = {}  # component -> Totals' fields, in order
        bytes_read = 0
        for fa in self.files:
            status, f = fa.status, fa.file
            counts[status] += 1
            row = sums.get(f.component)
            if row is None:
                row = sums[f.component] = [0] * 6
            planned = f.size if f.size is not None else f.estimated_size
            present = (fa.size or 0) if status in ("ok", "unpinned") else 0
            to_fetch = status in TO_FETCH
            row[0] += 1
            row[1] += status == "ok"
            row[2] += planned if planned is not None else present
            row[3] += present
            row[4] += (planned or 0) if to_fetch else 0
            row[5] += planned is None and to_fetch
            if fa.hashed:
                bytes_read += fa.size or 0
        components = {name: Totals(*row) for name, row in sums.items()}
        totals = Totals(*(sum(column) for column in zip(*sums.values(), strict=True))) if sums else Totals()
        return _Summary(counts, totals, components, bytes_read)

    @property
    def complete(self) -> bool:
        return self._summary.counts["ok"] == len(self.files)

    @property
    def totals(self) -> Totals:
        return self._summary.totals

    def component_totals(self) -> dict[str, Totals]:
        return dict(self._summary.components)

    @property
    def required_bytes(self) -> int:
        """Free space the files still to fetch need, with the margin."""
        return round(self.totals.to_fetch_bytes * (1 + SPACE_MARGIN))

    @property
    def fits(self) -> bool:
        """Whether the files to fetch fit; True where free space is unknown (nothing to refuse on)."""
        return self.free_bytes is None or self.required_bytes <= self.free_bytes

    @property
    def bytes_read(self) -> int:
        return self._summary.bytes_read

    def counts(self) -> dict[str, int]:
        return dict(self._summary.counts)

    def to_json(self) -> dict[str, Any]:
        return {**self._json_head(), "files": [fa.to_json() for fa in self.files]}

    def _json_head(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "manifest": self.manifest,
            "volume": self.volume,
            "complete": self.complete,
            "full": self.full,
            "counts": self.counts(),
            "free_bytes": self.free_bytes,
            "fits": self.fits,
            "bytes_read": self.bytes_read,
            "totals": self.totals.to_json(),
            "components": {name: t.to_json() for name, t in self._summary.components.items()},
        }

    def write_json(self, stream: TextIO) -> None:
        """Write `json.dumps(self.to_json(), indent=2)` to `stream`, BATCH files at a time.

        The same text, without ever holding it, or every file's dict, at once: for a million files
        those were ~0.5 GB each. Each file's dict is flat, so the C encoder can indent it with
        its item separator.
        """
        head = json.dumps({**self._json_head(), "files": []}, indent=2)
        assert head.endswith('"files": []\n}')
        if not self.files:
            stream.write(head)
            return
        stream.write(head[: -len("[]\n}")] + "[\n")
        encode = json.JSONEncoder(separators=(",\n      ", ": ")).encode
        for start in range(0, len(self.files), BATCH):
            chunk = [
                "    {\n      " + encode(fa.to_json())[1:-1] + "\n    }"
                for fa in self.files[start : start + BATCH]
            ]
            stream.write((",\n" if start else "") + ",\n".join(chunk))
        stream.write("\n  ]\n}")


def audit(
    manifest: Manifest,
    volume: Volume,
    *,
    full: bool = False,
    jobs: int | None = None,
    progress: Progress | None = None,
) -> AuditReport:
    """Audit every file of `manifest` on `volume`; see the module docstring for statuses."""
    progress = progress or NullProgress()
    jobs = jobs or min(4, os.cpu_count() or 1)
    files = manifest.files
    results: list[FileAudit | None] = [None] * len(files)
    reading: dict[Future[FileAudit], int] = {}  # files being hashed -> their index
    progress.start(FILES, "checking", len(files))
    with ExitStack() as stack:
        pool: ThreadPoolExecutor | None = None

        def collect(block: bool) -> int:
            """Results of the files hashed by now (`block`: wait for one at least); how many."""
            done, _ = wait(reading, timeout=None if block else 0, return_when=FIRST_COMPLETED)
            for future in done:
                results[reading.pop(future)] = future.result()
            return len(done)

        def settle(stat_ok: list[tuple[int, Stat]]) -> int:
            """Judge files that passed stat by the hash cache; hash the rest. How many are judged."""
            nonlocal pool
            if not stat_ok:
                return 0
            if pool is None:  # the cache's batch first: leaving, the pool's rows are written after it stops
                stack.enter_context(volume.hash_cache.batched())
                pool = stack.enter_context(ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="audit"))
            cached = (
                {} if full else volume.hash_cache.lookup_many([(files[i].target, st) for i, st in stat_ok])
            )
            judged = 0
            for i, st in stat_ok:
                f = files[i]
                digest = cached.get(f.target)
                if digest is not None and (digest.git_sha1 is not None or f.git_sha1 is None):
                    results[i] = _judge(f, digest, hashed=False)
                    judged += 1
                    continue
                while len(reading) >= jobs * READING_PER_JOB:
                    judged += collect(block=True)
                reading[pool.submit(_check_bytes, f, volume, st, use_cache=False, progress=progress)] = i
            return judged + collect(block=False)

        stat_ok: list[tuple[int, Stat]] = []
        judged = 0
        try:
            for i, (f, state) in enumerate(zip(files, volume.states(f.target for f in files), strict=True)):
                quick = _judge_stat(f, state)
                if isinstance(quick, FileAudit):
                    results[i] = quick
                    judged += 1
                else:
                    stat_ok.append((i, quick))
                if len(stat_ok) >= BATCH or judged >= BATCH:
                    judged += settle(stat_ok)
                    stat_ok = []
                    progress.advance(FILES, judged)
                    judged = 0
            judged += settle(stat_ok)
            progress.advance(FILES, judged)
            while reading:
                progress.advance(FILES, collect(block=True))
        finally:
            progress.finish(FILES)

    assert all(r is not None for r in results)
    return AuditReport(
        profile=manifest.profile,
        manifest=manifest.source,
        volume=volume.uri,
        free_bytes=volume.free_bytes(),
        files=cast(list[FileAudit], results),  # every one filled in, as asserted
        full=full,
    )


def audit_file(
    f: ManifestFile, volume: Volume, *, full: bool = False, progress: Progress | None = None
) -> FileAudit:
    """Audit one file (the hash cache answers unless `full`)."""
    quick = _judge_stat(f, volume.state(f.target))
    if isinstance(quick, FileAudit):
        return quick
    return _check_bytes(f, volume, quick, use_cache=not full, progress=progress or NullProgress())


def _judge_stat(f: ManifestFile, state: FileState) -> FileAudit | Stat:
    """A verdict from stat alone (missing, size_mismatch), or the stat to hash with."""
    if not state.present:
        return FileAudit(f, "missing", detail=None if state.problem == "missing" else state.problem)
    assert state.st is not None
    if f.size is not None and state.st.st_size != f.size:
        return FileAudit(
            f, "size_mismatch", size=state.st.st_size, detail=f"size is {state.st.st_size}, expected {f.size}"
        )
    return state.st


def _check_bytes(
    f: ManifestFile, volume: Volume, st: Stat, *, use_cache: bool, progress: Progress
) -> FileAudit:
    key = f.target
    progress.start(key, f.target, st.st_size)
    try:
        digest, hashed = volume.digest(
            f.target,
            st,
            use_cache=use_cache,
            git_sha1=f.git_sha1 is not None,
            on_bytes=lambda n: progress.advance(key, n),
        )
    except OSError as e:
        # An unreadable file (EIO, EACCES, a stale handle) is not what was pinned: refetch it.
        return FileAudit(f, "hash_mismatch", size=st.st_size, detail=f"unreadable: {e.strerror or e}")
    finally:
        progress.finish(key)
    return _judge(f, digest, hashed)


def _judge(f: ManifestFile, digest: Digest, hashed: bool) -> FileAudit:
    # The pinned strings when they match: a million audits then hold no second copy of each digest.
    sha256 = f.sha256 if digest.sha256 == f.sha256 else digest.sha256
    git_sha1 = f.git_sha1 if digest.git_sha1 == f.git_sha1 else digest.git_sha1
    common = {"size": digest.size, "sha256": sha256, "git_sha1": git_sha1, "hashed": hashed}
    if f.sha256 is not None and digest.sha256 != f.sha256:
        return FileAudit(
            f, "hash_mismatch", detail=f"sha256 is {digest.sha256[:12]}…, expected {f.sha256[:12]}…", **common
        )
    if f.git_sha1 is not None and digest.git_sha1 != f.git_sha1:
        got = (digest.git_sha1 or "not computed")[:12]
        return FileAudit(
            f, "hash_mismatch", detail=f"git_sha1 is {got}…, expected {f.git_sha1[:12]}…", **common
        )
    if not f.pinned:
        return FileAudit(
            f, "unpinned", detail="no sha256 or git_sha1 pinned yet: run `mt-assets lock`", **common
        )
    return FileAudit(f, "ok", **common)
