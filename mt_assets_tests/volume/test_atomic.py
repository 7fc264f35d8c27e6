"""Atomic placement: nothing half-written ever reaches a final path."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mt_assets.volume import (
    Expected,
    IntegrityError,
    LocalVolume,
    LockLost,
    VolumeError,
    VolumeFullError,
    WriterBusy,
    WriterLock,
)
from mt_assets_tests.conftest import small_tmpfs

TARGET = "models/comp/big.bin"


def start_writer(root: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mt_assets_tests.volume.slow_writer", str(root), TARGET, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_line(proc: subprocess.Popen[str], expected: str) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith(expected), (
        f"expected {expected!r}, got {line!r}; stderr: {proc.stderr.read() if proc.stderr else ''}"
    )
    return line


def test_commit_places_verified_bytes_and_records_their_hash(tmp_path: Path) -> None:
    vol = LocalVolume(tmp_path)
    data = os.urandom(100_000)
    expected = Expected(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    with vol.writing(TARGET, expected) as w:
        w.write(data[:40_000])
        assert not (tmp_path / TARGET).exists()  # staged, not placed
        w.write(data[40_000:])
        digest = w.commit()
    assert (tmp_path / TARGET).read_bytes() == data
    assert digest.sha256 == expected.sha256
    assert vol.hash_cache.lookup(TARGET, os.stat(tmp_path / TARGET)) == digest
    assert list((tmp_path / ".mt" / "staging").iterdir()) == []
    assert list((tmp_path / ".mt" / "locks").iterdir()) == []


def test_wrong_bytes_are_never_placed_and_the_old_file_stays(tmp_path: Path) -> None:
    vol = LocalVolume(tmp_path)
    (tmp_path / "models/comp").mkdir(parents=True)
    (tmp_path / TARGET).write_bytes(b"previous")
    with pytest.raises(
        IntegrityError, match=r"^models/comp/big.bin: sha256 is .*, expected 000000000000…; not placed$"
    ):
        with vol.writing(TARGET, Expected(size=3, sha256="0" * 64)) as w:
            w.write(b"abc")
            w.commit()
    assert (tmp_path / TARGET).read_bytes() == b"previous"
    assert list((tmp_path / ".mt" / "staging").iterdir()) == []


def test_wrong_size_is_never_placed(tmp_path: Path) -> None:
    vol = LocalVolume(tmp_path)
    with pytest.raises(IntegrityError, match=r"size is 2, expected 3; not placed"):
        with vol.writing(TARGET, Expected(size=3)) as w:
            w.write(b"ab")
            w.commit()
    assert not (tmp_path / TARGET).exists()


def test_an_exception_mid_write_discards_the_staged_bytes(tmp_path: Path) -> None:
    vol = LocalVolume(tmp_path)
    with pytest.raises(ConnectionError), vol.writing(TARGET) as w:
        w.write(b"partial")
        raise ConnectionError("source went away")
    assert not (tmp_path / TARGET).exists()
    assert list((tmp_path / ".mt" / "staging").iterdir()) == []


@pytest.mark.parametrize(
    "target", ["../escape.bin", "/etc/passwd", "models/../../x", ".mt/hashes.sqlite", "a\\b"]
)
def test_targets_outside_the_volume_are_refused(tmp_path: Path, target: str) -> None:
    vol = LocalVolume(tmp_path)
    with pytest.raises(VolumeError, match=rf"^volume {tmp_path}: target "), vol.writing(target):
        pass


def test_volume_must_be_a_directory(tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match=r"no such directory"):
        LocalVolume(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(VolumeError, match=r"not a directory"):
        LocalVolume(tmp_path / "file")


def test_full_disk_leaves_nothing_behind(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "small", "1m") as mount:
        vol = LocalVolume(mount)
        with pytest.raises(VolumeFullError, match=r"^\[Errno 28\] models/comp/big.bin: the volume is full"):
            with vol.writing(TARGET) as w:
                for _ in range(40):
                    w.write(os.urandom(64 * 1024))
                w.commit()
        assert not (mount / TARGET).exists()
        assert list((mount / ".mt" / "staging").iterdir()) == []


def test_sigkill_mid_write_leaves_no_file_and_the_next_writer_proceeds_after_the_stale_timeout(
    tmp_path: Path,
) -> None:
    size = 4 * 1024 * 1024
    victim = start_writer(
        tmp_path,
        "--size",
        str(size),
        "--fill",
        "1",
        "--delay",
        "0.05",
        "--stale-after",
        "1.5",
        "--no-trust-local-pids",
    )
    wait_for_line(victim, "writing")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (tmp_path / TARGET).exists()
    assert len(list((tmp_path / ".mt" / "locks").iterdir())) == 1  # the dead writer's lock

    started = time.monotonic()
    vol = LocalVolume(tmp_path, lock_stale_after=1.5, trust_local_pids=False)
    with vol.writing(TARGET, Expected(size=size), timeout=30) as w:
        waited = time.monotonic() - started
        w.write(b"\x02" * size)
        w.commit()
    assert waited >= 1.0  # it had to wait for the dead lock's heartbeat to go stale
    assert (tmp_path / TARGET).read_bytes() == b"\x02" * size


def test_sigkill_writer_on_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    victim = start_writer(tmp_path, "--size", str(1 << 22), "--fill", "1", "--delay", "0.05")
    wait_for_line(victim, "writing")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    vol = LocalVolume(tmp_path, lock_stale_after=600)
    with vol.writing(TARGET, timeout=5) as w:  # would time out if it waited for the 600 s stale limit
        w.write(b"x")
        w.commit()
    assert (tmp_path / TARGET).read_bytes() == b"x"


def test_two_writers_of_one_file_take_turns_and_the_file_is_whole(tmp_path: Path) -> None:
    size = 1 << 20
    first = start_writer(tmp_path, "--size", str(size), "--fill", "1", "--delay", "0.02")
    wait_for_line(first, "writing")
    second = start_writer(tmp_path, "--size", str(size), "--fill", "2", "--delay", "0.0")
    assert first.wait(60) == 0 and second.wait(60) == 0
    data = (tmp_path / TARGET).read_bytes()
    assert data == b"\x02" * size  # the waiter wrote after the first finished, never interleaved


def test_a_writer_that_will_not_wait_skips_a_busy_file(tmp_path: Path) -> None:
    first = start_writer(tmp_path, "--size", str(1 << 20), "--fill", "1", "--delay", "0.02")
    wait_for_line(first, "writing")
    vol = LocalVolume(tmp_path)
    with (
        pytest.raises(WriterBusy, match=r"^models/comp/big.bin: being written by .* pid \d+"),
        vol.writing(TARGET, wait=False),
    ):
        pass
    assert first.wait(60) == 0
    assert (tmp_path / TARGET).read_bytes() == b"\x01" * (1 << 20)


def test_a_writer_presumed_dead_does_not_place_its_bytes(tmp_path: Path) -> None:
    vol = LocalVolume(tmp_path, lock_stale_after=0.4, trust_local_pids=False)
    with pytest.raises(LockLost, match=r"^models/comp/big.bin: the writer lock was taken over"):
        with vol.writing(TARGET) as w:
            w.write(b"slow writer's bytes")
            lock = vol.lock_for(TARGET)
            lock.path.unlink()  # another machine judged us dead and took the file over
            assert WriterLock(lock.path).try_acquire()
            w.commit()  # the commit re-reads the lock file: no waiting for the heartbeat
    assert not (tmp_path / TARGET).exists()


def test_a_symlinked_folder_inside_the_volume_never_carries_a_write_outside(tmp_path: Path) -> None:
    volume, outside = tmp_path / "volume", tmp_path / "outside"
    volume.mkdir()
    outside.mkdir()
    (volume / "models").mkdir()
    (volume / "models" / "comp").symlink_to(outside)
    vol = LocalVolume(volume)
    with pytest.raises(VolumeError, match=r"models/comp is a symlink \(on the way to models/comp/big.bin\)"):
        with vol.writing(TARGET) as w:
            w.write(b"x")
            w.commit()
    assert list(outside.iterdir()) == []
    state = vol.state(TARGET)
    assert not state.present
    assert "models/comp is a symlink" in str(state.problem)
