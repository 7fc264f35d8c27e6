"""A volume mounted as a folder: /runpod-volume, /workspace, an NFS mount, or ./var/volume.

Layout (see DESIGN.md):

    <volume>/models/<dir>/<path>     the files, as real files (never symlinks)
    <volume>/.mt/hashes.sqlite       the hash cache (hashcache.py)
    <volume>/.mt/locks/*.lock        writer locks (lock.py)
    <volume>/.mt/staging/*.part      files being written (atomic.py)

Every path handed in is a *target*: relative to the volume root, '/'-separated, checked
against traversal before it is joined to the root.
"""

from __future__ import annotations

import os
import stat as stat_module
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from functools import cached_property
from pathlib import Path

from mt_assets.manifest.schema import check_relative_path
from mt_assets.volume.atomic import AtomicWriter, Expected, staging_prefix, target_key
from mt_assets.volume.base import FileState, Writer
from mt_assets.volume.hashcache import CACHE_NAME, HashCache
from mt_assets.volume.hashing import Digest, hash_file
from mt_assets.volume.lock import LockOwner, WriterLock

STATE_DIR = ".mt"


class VolumeError(ValueError):
    """The volume cannot be used as given (not a directory, a bad target path, ...)."""


class LockLost(RuntimeError):
    """This writer's lock was taken over (it was presumed dead): its bytes are not placed."""


class WriterBusy(RuntimeError):
    """Another live writer holds the target's lock."""

    def __init__(self, target: str, holder: LockOwner | None) -> None:
        self.target = target
        self.holder = holder
        who = holder.describe() if holder else "another writer"
        super().__init__(f"{target}: being written by {who}")


class LocalVolume:
    def __init__(
        self,
        root: str | Path,
        *,
        capacity: int | None = None,
        lock_stale_after: float = 120.0,
        trust_local_pids: bool = True,
    ) -> None:
        self.root = Path(root)
        if not self.root.exists():
            raise VolumeError(f"volume {self.root}: no such directory")
        if not self.root.is_dir():
            raise VolumeError(f"volume {self.root}: not a directory")
        self.capacity = capacity
        self.lock_stale_after = lock_stale_after
        self.trust_local_pids = trust_local_pids

    def __repr__(self) -> str:
        return f"LocalVolume({str(self.root)!r})"

    @property
    def uri(self) -> str:
        return str(self.root)

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    @cached_property
    def hash_cache(self) -> HashCache:
        return HashCache(self.state_dir / CACHE_NAME)

    # -- paths and state -------------------------------------------------------------------

    def path(self, target: str) -> Path:
        return Path(self._checked_path(target, None))

    def _checked_path(self, target: str, real: set[str] | None) -> str:
        """The target's path under the root, as a string, once checked (see `path`)."""
        problem = check_relative_path(target)
        if problem:
            raise VolumeError(f"volume {self.root}: target {target!r} {problem}")
        if target.split("/", 1)[0] == STATE_DIR:
            raise VolumeError(
                f"volume {self.root}: target {target!r} is inside the state folder {STATE_DIR}/"
            )
        self.refuse_symlinked_parents(target, real)
        return os.path.join(self.root, target)

    def refuse_symlinked_parents(self, relative: str, real: set[str] | None = None) -> None:
        """Raise VolumeError when a folder on the way to `relative` is a symlink.

        A symlinked folder would carry writes (and reads) outside the volume; the volume keeps
        real folders, as network filesystems and the S3 API do. Folders not there yet are fine:
        they are created as real ones. `real`: the folders already found real during one pass over
        many files (an audit), not looked at again, and where those found now are added.
        """
        folder = ""
        for part in relative.split("/")[:-1]:
            folder = f"{folder}/{part}" if folder else part
            if real is not None and folder in real:
                continue
            try:
                st = os.lstat(os.path.join(self.root, folder))
            except (FileNotFoundError, NotADirectoryError):
                return
            if stat_module.S_ISLNK(st.st_mode):
                raise VolumeError(
                    f"volume {self.root}: {folder} is a symlink (on the way to "
                    f"{relative}); the volume keeps real folders"
                )
            if real is not None:
                real.add(folder)

    def state(self, target: str) -> FileState:
        return self._state(target, None)

    def states(self, targets: Iterable[str]) -> Iterator[FileState]:
        """`state` of each target in turn, each folder on the way looked at once, not once per file."""
        real: set[str] = set()
        for target in targets:
            yield self._state(target, real)

    def _state(self, target: str, real: set[str] | None) -> FileState:
        try:
            path = self._checked_path(target, real)
        except VolumeError as e:
            return FileState(None, str(e).split(": ", 1)[1])
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return FileState(None, "missing")
        except NotADirectoryError:
            return FileState(None, "a parent folder is a file")
        if stat_module.S_ISLNK(st.st_mode):
            return FileState(st, "is a symlink; the volume keeps real files")
        if not stat_module.S_ISREG(st.st_mode):
            return FileState(st, "is not a regular file")
        return FileState(st)

    def free_bytes(self) -> int:
        """Space a writer can still use: statvfs, capped by `capacity` when one is set."""
        vfs = os.statvfs(self.root)
        free = vfs.f_bavail * vfs.f_frsize
        if self.capacity is not None:
            free = min(free, max(self.capacity - self.used_bytes(), 0))
        return free

    def used_bytes(self) -> int:
        total = 0
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                with suppress(FileNotFoundError):
                    total += os.lstat(os.path.join(dirpath, name)).st_size
        return total

    # -- hashing -----------------------------------------------------------------------------

    def digest(
        self,
        target: str,
        st: os.stat_result,
        *,
        use_cache: bool = True,
        git_sha1: bool = False,
        on_bytes: Callable[[int], None] | None = None,
    ) -> tuple[Digest, bool]:
        """The file's digest and whether its bytes were read (False: from the hash cache).

        `git_sha1` asks for the git blob id too; a cached digest without one does not answer.
        """
        if use_cache:
            cached = self.hash_cache.lookup(target, st)
            if cached is not None and (cached.git_sha1 is not None or not git_sha1):
                return cached, False
        path = self.path(target)
        digest = hash_file(path, on_bytes=on_bytes, git_sha1=git_sha1)
        after = os.stat(path)
        # Only remember the digest if the file did not change while it was being read.
        if _stat_key(after) == _stat_key(st):
            self.hash_cache.store(target, after, digest)
        return digest, True

    def read_into(
        self, target: str, st: os.stat_result, writer: Writer, on_bytes: Callable[[int], None]
    ) -> None:
        """The file's bytes into a writer (from writer.resume_from): the volume as a source (replication).
        Read-side errors are source errors naming the volume and the target."""
        from mt_assets.sources.mirror import read_file_into  # sources build on volume: imported when used

        read_file_into(
            self.path(target), writer, on_bytes, f"volume {self.root}: {target}", missing="missing"
        )

    # -- writing -----------------------------------------------------------------------------

    def lock_for(self, target: str) -> WriterLock:
        self.refuse_symlinked_parents(f"{STATE_DIR}/locks/x")
        return WriterLock(
            self.state_dir / "locks" / f"{target_key(target)}.lock",
            stale_after=self.lock_stale_after,
            trust_local_pids=self.trust_local_pids,
        )

    @contextmanager
    def writing(
        self,
        target: str,
        expected: Expected | None = None,
        *,
        wait: bool = True,
        timeout: float | None = None,
        resume: bool = False,
    ) -> Iterator[AtomicWriter]:
        """Hold the target's writer lock and yield an open AtomicWriter for it.

        `wait=False` raises WriterBusy at once when a live writer holds the lock. The caller
        writes and calls `commit()`; leaving without it discards the staged bytes (kept when
        `resume` is set, for the next attempt to continue).
        """
        final = self.path(target)
        lock = self.lock_for(target)
        if wait:
            lock.acquire(timeout=timeout)
        elif not lock.try_acquire():
            raise WriterBusy(target, lock.holder())
        try:
            assert lock.owner is not None
            staging = self._claim_staging(
                target, expected or Expected(), lock.owner.token[:12], resume=resume
            )
            writer = AtomicWriter(
                final,
                staging,
                expected=expected,
                label=target,
                keep_partial=resume,
                guard=lambda: _check_lock(lock, target),
            )
            with writer.open(resume=resume):
                yield writer
            if writer.digest is not None:
                self.hash_cache.store(target, os.stat(final), writer.digest)
        finally:
            lock.release()

    def _claim_staging(self, target: str, expected: Expected, owner: str, *, resume: bool) -> Path:
        """This writer's staging file; with `resume`, an earlier writer's bytes of the same pin.

        Called under the target's lock, so any other staged file of this target belongs to a
        writer that died: one of the same pin may be taken over, the rest are removed.
        """
        self.refuse_symlinked_parents(f"{STATE_DIR}/staging/x")
        staging = self.state_dir / "staging"
        staging.mkdir(parents=True, exist_ok=True)
        prefix = staging_prefix(target, expected)
        mine = staging / f"{prefix}.{owner}.part"
        for old in sorted(staging.glob(f"{target_key(target)}.*.part")):
            if old == mine:
                continue
            if resume and old.name.startswith(f"{prefix}.") and not mine.exists():
                try:
                    os.rename(old, mine)  # atomic: of two claimants only one gets it
                    continue
                except FileNotFoundError:
                    continue
            old.unlink(missing_ok=True)
        return mine


def _stat_key(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


def _check_lock(lock: WriterLock, target: str) -> None:
    # Re-read the lock file rather than trust the heartbeat's last look: a take-over may be
    # seconds old, and nothing but this check stands between a stale writer and the final path.
    if not lock.still_held():
        raise LockLost(
            f"{target}: the writer lock was taken over (this writer was presumed dead); not placed"
        )
