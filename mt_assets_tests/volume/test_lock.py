"""The writer lock holds across processes without flock, and only stale locks are taken over."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from mt_assets.volume import WriterLock
from mt_assets.volume.lock import _pid_space


def test_only_one_holder_at_a_time(tmp_path: Path) -> None:
    a = WriterLock(tmp_path / "x.lock", stale_after=60)
    b = WriterLock(tmp_path / "x.lock", stale_after=60)
    assert a.try_acquire()
    assert not b.try_acquire()
    assert b.holder() == a.owner
    a.release()
    assert b.try_acquire()
    b.release()
    assert not (tmp_path / "x.lock").exists()


def test_heartbeat_keeps_a_live_lock_fresh(tmp_path: Path) -> None:
    a = WriterLock(tmp_path / "x.lock", stale_after=0.6, heartbeat=0.1)
    assert a.try_acquire()
    time.sleep(1.0)  # longer than stale_after: only the heartbeat keeps it
    other = WriterLock(tmp_path / "x.lock", stale_after=0.6, trust_local_pids=False)
    assert not other.try_acquire()
    a.release()


def test_lock_of_another_host_is_taken_over_only_once_stale(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": time.time(), "token": "t0"}))
    lock = WriterLock(path, stale_after=30)
    assert not lock.try_acquire()  # fresh: someone on another machine is writing
    old = time.time() - 60
    os.utime(path, (old, old))
    assert lock.try_acquire()  # its heartbeat stopped a minute ago
    assert lock.holder() == lock.owner
    lock.release()


def test_a_writer_whose_lock_was_taken_over_knows_it(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    slow = WriterLock(path, stale_after=0.3, heartbeat=0.1)
    assert slow.try_acquire()
    path.unlink()  # as a take-over by another machine would
    WriterLock(path).try_acquire()
    deadline = time.monotonic() + 5
    while not slow.lost and time.monotonic() < deadline:  # the heartbeat notices within a beat
        time.sleep(0.02)
    assert slow.lost
    slow.release()
    assert path.exists()  # release never removes someone else's lock


def test_a_dead_pid_of_another_container_with_our_hostname_is_not_trusted(tmp_path: Path) -> None:
    import socket

    path = tmp_path / "x.lock"
    dead = {"host": socket.gethostname(), "pid": 2**22 + 12345, "started": time.time(), "token": "t0"}
    path.write_text(json.dumps({**dead, "pid_space": "another-boot:4026531836"}))
    assert not WriterLock(path, stale_after=30).try_acquire()  # that pid lives in another namespace
    path.write_text(json.dumps({**dead, "pid_space": _pid_space()}))
    lock = WriterLock(path, stale_after=30)
    assert lock.try_acquire()  # same boot and namespace: the pid is really gone
    lock.release()
