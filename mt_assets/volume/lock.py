"""The writer lock: one writer per file on a volume shared by many machines.

flock/fcntl locks on network filesystems (NFS, Lustre, some FUSE volumes) can silently
succeed for every caller, so the lock is a file created with O_CREAT|O_EXCL, which those
filesystems do make atomic. Lock files live in <volume>/.mt/locks/<name>.lock and hold one
JSON object:

    {"host": "worker-7", "pid": 4242, "started": 1764412345.1, "token": "<random hex>",
     "pid_space": "<boot id>:<pid namespace inode>"}

While held, a heartbeat thread touches the file's mtime every `heartbeat` seconds. A lock
whose mtime is older than `stale_after` seconds is stale: its owner died or lost the volume.
It may also be taken over at once when its owner ran on this host, in this boot and pid
namespace (`pid_space`), and its pid is gone (`trust_local_pids`).

Take-over renames the stale file to a unique name (only one renamer wins), re-reads it and
checks it is still the stale owner's token; a lock refreshed in the meantime is put back.
The heartbeat thread notices when its file no longer carries its token (`lost`), so a writer
that was presumed dead can refuse to commit.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


class LockTimeout(TimeoutError):
    pass


@dataclass(frozen=True)
class LockOwner:
    host: str
    pid: int
    started: float
    token: str
    # Where `pid` means something: this boot of this kernel, this pid namespace. Containers
    # that share a hostname (host networking) differ here, so none judges another's pid.
    pid_space: str = ""

    def describe(self) -> str:
        return f"{self.host} pid {self.pid} since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.started))}"


class WriterLock:
    def __init__(
        self,
        path: Path,
        *,
        stale_after: float = 120.0,
        heartbeat: float | None = None,
        trust_local_pids: bool = True,
    ) -> None:
        self.path = path
        self.stale_after = stale_after
        self.heartbeat = heartbeat if heartbeat is not None else max(stale_after / 4, 0.05)
        self.trust_local_pids = trust_local_pids
        self.owner: LockOwner | None = None
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- acquiring ---------------------------------------------------------------------

    def try_acquire(self) -> bool:
        """Take the lock if it is free or stale; False when someone alive holds it."""
        if self.owner is not None:
            raise RuntimeError(f"lock {self.path} is already held by this object")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._create():
            return True
        holder = self.holder()
        if holder is None or not self._is_stale(holder):
            return False
        if self._take_over(holder):
            return self._create()
        return False

    def acquire(self, timeout: float | None = None, poll: float = 0.2) -> None:
        wait_for(self, timeout, poll)

    def release(self) -> None:
        if self.owner is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        current = self.holder()
        if current is not None and current.token == self.owner.token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self.owner = None
        self._thread = None

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- state -------------------------------------------------------------------------

    def holder(self) -> LockOwner | None:
        """Who holds the lock now, or None when it is free (or unreadable mid-creation)."""
        try:
            return parse_owner(self.path.read_bytes())
        except FileNotFoundError:
            return None

    def _is_stale(self, holder: LockOwner) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return False
        return is_stale(holder, age, self.stale_after, trust_local_pids=self.trust_local_pids)

    # -- internals ---------------------------------------------------------------------

    def _create(self) -> bool:
        owner = new_owner()
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(owner.__dict__, f)
            f.flush()
            os.fsync(f.fileno())
        self.owner = owner
        self.lost = False
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat {self.path.name}", daemon=True)
        self._thread.start()
        return True

    def _take_over(self, stale: LockOwner) -> bool:
        aside = self.path.with_name(f"{self.path.name}.stale-{secrets.token_hex(8)}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return True  # someone else removed it; try to create
        try:
            data = json.loads(aside.read_text())
            moved_token = data.get("token", "")
        except (OSError, ValueError):
            moved_token = ""
        if moved_token != stale.token:
            # Between our look and our rename the lock changed hands: give it back.
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True

    def _beat(self) -> None:
        assert self.owner is not None
        try:
            while not self._stop.wait(self.heartbeat):
                if not self.still_held():
                    self.lost = True
                    return
                os.utime(self.path)
        except BaseException:
            # A heartbeat that cannot beat (ESTALE, EIO on a network filesystem) will let the
            # lock go stale: this writer must assume it is lost rather than commit blindly.
            self.lost = True

    def still_held(self) -> bool:
        """Read the lock file now: does it still carry this holder's token?"""
        if self.owner is None or self.lost:
            return False
        current = self.holder()
        return current is not None and current.token == self.owner.token


class _Lock(Protocol):
    path: Any

    def try_acquire(self) -> bool: ...

    def holder(self) -> LockOwner | None: ...


def wait_for(lock: _Lock, timeout: float | None, poll: float) -> None:
    """Try `lock` every `poll` seconds until it is taken; LockTimeout after `timeout` (None: never)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not lock.try_acquire():
        if deadline is not None and time.monotonic() >= deadline:
            holder = lock.holder()
            who = holder.describe() if holder else "another writer"
            raise LockTimeout(f"lock {lock.path}: still held by {who} after {timeout:.0f}s")
        time.sleep(poll)


def new_owner() -> LockOwner:
    """This process as a lock's owner, with a fresh token."""
    return LockOwner(
        host=socket.gethostname(),
        pid=os.getpid(),
        started=time.time(),
        token=secrets.token_hex(16),
        pid_space=_pid_space(),
    )


def parse_owner(text: bytes | str) -> LockOwner:
    """The owner a lock's JSON names; one that cannot be read is judged by age alone (token "")."""
    try:
        data = json.loads(text)
        return LockOwner(
            host=data["host"],
            pid=int(data["pid"]),
            started=float(data["started"]),
            token=data["token"],
            pid_space=str(data.get("pid_space", "")),
        )
    except (ValueError, KeyError, TypeError):
        # Created but not yet written by its owner, or garbage.
        return LockOwner(host="?", pid=-1, started=0.0, token="")


def is_stale(holder: LockOwner, age: float, stale_after: float, *, trust_local_pids: bool) -> bool:
    """A lock `age` seconds past its last heartbeat is stale after `stale_after`, or at once when its
    owner ran in this host's pid space and is gone (`trust_local_pids`)."""
    if age > stale_after:
        return True
    same_pid_space = (
        holder.host == socket.gethostname() and holder.pid_space and holder.pid_space == _pid_space()
    )
    if trust_local_pids and same_pid_space and holder.pid > 0:
        return not pid_alive(holder.pid)
    return False


def _pid_space() -> str:
    """This kernel boot and pid namespace, as text; empty where /proc cannot say (then pids are never trusted)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists in this pid namespace (signal 0 sends nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
