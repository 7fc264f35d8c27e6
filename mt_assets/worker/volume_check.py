"""The start-up check of the volume against the profile: stat and the hash cache, never a hash.

RunPod marks a worker unhealthy when its start-up takes longer than 7 minutes; hashing the real
profile's 93 GB on a network volume takes far longer. So at start the worker reads no file's bytes.
Per file of the manifest:

    ok             the right size, and the hash cache has a row for the file's current stat
                   (size, mtime_ns, inode, ctime_ns) whose digest is the pinned one
    unverified     the right size, but no current row (never audited here, or touched since):
                   allowed, and counted in the log; `mt-assets audit` settles it
    missing        not there, or not a regular file (a symlink, a folder)
    size_mismatch  not the pinned size
    hash_mismatch  the hash cache's current row holds another digest than the pin
    unpinned       nothing pinned to check against (the manifest is not locked)

Any of the last four is a problem: the worker exits non-zero listing them, so the endpoint shows
an unhealthy worker instead of failing every job.

The hash cache (<volume>/.mt/hashes.sqlite, see mt_assets.volume.hashcache) is opened read-only
(`file:...?mode=ro`): a starting worker creates nothing on the volume, takes no write lock, and a
cache that is absent or unreadable only makes files `unverified`.

The bf16 repacks (mt_assets.models.repack) are verified by the loader itself, through the hash
cache, which hashes any file it has no current row for: 33 GB of the real DiT repack. So before a
bf16 load `models.repack.unvouched_repacks` says which repacks the loader would use whose files the cache does not
vouch for; the worker then loads the originals instead (and logs why) rather than hash at start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mt_assets.manifest import Manifest, ManifestFile
from mt_assets.volume import LocalVolume
from mt_assets.volume.hashcache import CACHE_NAME, HashCache, ReadOnlyHashCache

PROBLEMS = ("missing", "size_mismatch", "hash_mismatch", "unpinned")


@dataclass(frozen=True)
class FileCheck:
    target: str
    status: str  # ok | unverified | missing | size_mismatch | hash_mismatch | unpinned
    detail: str | None = None

    def describe(self) -> str:
        return f"{self.status:14} {self.target}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class VolumeCheck:
    profile: str
    volume: str
    cache: str  # what the hash cache was: 'read-only', 'absent' or why it was not used
    files: list[FileCheck] = field(default_factory=list)

    @property
    def problems(self) -> list[FileCheck]:
        return [f for f in self.files if f.status in PROBLEMS]

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> dict[str, int]:
        statuses = ("ok", "unverified", *PROBLEMS)
        return {s: sum(f.status == s for f in self.files) for s in statuses}

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "volume": self.volume,
            "hash_cache": self.cache,
            "ok": self.ok,
            "counts": self.counts(),
            "problems": [{"target": f.target, "status": f.status, "detail": f.detail} for f in self.problems],
        }


def check_volume(manifest: Manifest, volume: LocalVolume) -> VolumeCheck:
    """Check every file of `manifest` on `volume` from stat and the hash cache; reads no file's bytes."""
    cache = ReadOnlyHashCache(volume.state_dir / CACHE_NAME)
    try:
        files = [_check(f, volume, cache) for f in manifest.files]
    finally:
        cache.close()
    return VolumeCheck(profile=manifest.profile, volume=str(volume.root), cache=cache.state, files=files)


def _check(f: ManifestFile, volume: LocalVolume, cache: HashCache) -> FileCheck:
    state = volume.state(f.target)
    if not state.present:
        return FileCheck(f.target, "missing", None if state.problem == "missing" else state.problem)
    assert state.st is not None
    size = state.st.st_size
    if f.size is not None and size != f.size:
        return FileCheck(f.target, "size_mismatch", f"size is {size}, expected {f.size}")
    if not f.pinned:
        return FileCheck(f.target, "unpinned", "no sha256 or git_sha1 pinned: lock the manifest")
    cached = cache.lookup(f.target, state.st)
    if cached is None:
        return FileCheck(f.target, "unverified", "no hash cache row for its current stat")
    if f.sha256 is not None and cached.sha256 != f.sha256:
        return FileCheck(
            f.target,
            "hash_mismatch",
            f"the hash cache says sha256 {cached.sha256[:12]}…, expected {f.sha256[:12]}…",
        )
    if f.git_sha1 is not None and f.sha256 is None:
        if cached.git_sha1 is None:
            return FileCheck(f.target, "unverified", "the hash cache has no git blob id for it")
        if cached.git_sha1 != f.git_sha1:
            return FileCheck(
                f.target,
                "hash_mismatch",
                f"the hash cache says git_sha1 {cached.git_sha1[:12]}…, expected {f.git_sha1[:12]}…",
            )
    return FileCheck(f.target, "ok")
