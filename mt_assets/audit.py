"""The audit: is every file the manifest declares on the volume, whole and exactly as pinned?

Per file, one status:

    ok             present, and its bytes match the pinned sha256 (or git blob id)
    missing        not there (or not a regular file: a symlink, a folder)
    size_mismatch  there, but not the pinned size (truncated, or another file)
    hash_mismatch  the pinned size, but other bytes
    unpinned       there, with nothing pinned to check it against (until `lock`)

A file's bytes are read only when the hash cache has no entry for its current (size,
mtime_ns, inode); `full=True` re-reads everything, several files at once.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from mt_assets.manifest import Manifest, ManifestFile
from mt_assets.progress import NullProgress, Progress
from mt_assets.volume import Digest, LocalVolume

STATUSES = ("ok", "missing", "size_mismatch", "hash_mismatch", "unpinned")
SPACE_MARGIN = 0.05  # keep 5% over the bytes to fetch: staging, filesystem overhead


@dataclass(frozen=True)
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
        return self.status in ("missing", "size_mismatch", "hash_mismatch")

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


@dataclass
class AuditReport:
    profile: str
    manifest: str
    volume: str
    free_bytes: int
    files: list[FileAudit] = field(default_factory=list)
    full: bool = False

    @property
    def complete(self) -> bool:
        return all(fa.status == "ok" for fa in self.files)

    @property
    def totals(self) -> Totals:
        totals = Totals()
        for fa in self.files:
            totals = totals.add(fa)
        return totals

    def component_totals(self) -> dict[str, Totals]:
        out: dict[str, Totals] = {}
        for fa in self.files:
            out[fa.file.component] = out.get(fa.file.component, Totals()).add(fa)
        return out

    @property
    def required_bytes(self) -> int:
        """Free space the files still to fetch need, with the margin."""
        return round(self.totals.to_fetch_bytes * (1 + SPACE_MARGIN))

    @property
    def fits(self) -> bool:
        return self.required_bytes <= self.free_bytes

    @property
    def bytes_read(self) -> int:
        return sum(fa.size or 0 for fa in self.files if fa.hashed)

    def counts(self) -> dict[str, int]:
        return {s: sum(fa.status == s for fa in self.files) for s in STATUSES}

    def to_json(self) -> dict[str, Any]:
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
            "components": {name: t.to_json() for name, t in self.component_totals().items()},
            "files": [fa.to_json() for fa in self.files],
        }


def audit(
    manifest: Manifest,
    volume: LocalVolume,
    *,
    full: bool = False,
    jobs: int | None = None,
    progress: Progress | None = None,
) -> AuditReport:
    """Audit every file of `manifest` on `volume`; see the module docstring for statuses."""
    progress = progress or NullProgress()
    jobs = jobs or min(4, os.cpu_count() or 1)
    files = manifest.files
    results: dict[int, FileAudit] = {}
    to_hash: list[tuple[int, ManifestFile, os.stat_result]] = []

    for i, f in enumerate(files):
        quick = _check_without_reading(f, volume)
        if isinstance(quick, FileAudit):
            results[i] = quick
        else:
            to_hash.append((i, f, quick))

    def check(item: tuple[int, ManifestFile, os.stat_result]) -> tuple[int, FileAudit]:
        i, f, st = item
        return i, _check_bytes(f, volume, st, full=full, progress=progress)

    if to_hash:
        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="audit") as pool:
            for i, result in pool.map(check, to_hash):
                results[i] = result

    return AuditReport(
        profile=manifest.profile,
        manifest=manifest.source,
        volume=volume.uri,
        free_bytes=volume.free_bytes(),
        files=[results[i] for i in range(len(files))],
        full=full,
    )


def audit_file(
    f: ManifestFile, volume: LocalVolume, *, full: bool = False, progress: Progress | None = None
) -> FileAudit:
    """Audit one file (the hash cache answers unless `full`)."""
    quick = _check_without_reading(f, volume)
    if isinstance(quick, FileAudit):
        return quick
    return _check_bytes(f, volume, quick, full=full, progress=progress or NullProgress())


def _check_without_reading(f: ManifestFile, volume: LocalVolume) -> FileAudit | os.stat_result:
    """A verdict from stat alone (missing, size_mismatch), or the stat to hash with."""
    state = volume.state(f.target)
    if not state.present:
        return FileAudit(f, "missing", detail=None if state.problem == "missing" else state.problem)
    assert state.st is not None
    if f.size is not None and state.st.st_size != f.size:
        return FileAudit(
            f, "size_mismatch", size=state.st.st_size, detail=f"size is {state.st.st_size}, expected {f.size}"
        )
    return state.st


def _check_bytes(
    f: ManifestFile, volume: LocalVolume, st: os.stat_result, *, full: bool, progress: Progress
) -> FileAudit:
    key = f.target
    progress.start(key, f.target, st.st_size)
    try:
        digest, hashed = volume.digest(
            f.target,
            st,
            use_cache=not full,
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
    common = {"size": digest.size, "sha256": digest.sha256, "git_sha1": digest.git_sha1, "hashed": hashed}
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
