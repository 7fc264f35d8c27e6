"""Read throttling (mt_assets.bench.throttle) with the kernel's real blkio controller, in a child process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mt_assets.bench.throttle import ThrottleError, blkio_mount, block_device, read_throttle

RATE = 20_000_000  # bytes/s
FILE_BYTES = 8 * 1024 * 1024

# Runs in a child so the test process itself never sits in the throttled group.
CHILD = """
import json, os, sys, time
from pathlib import Path
from mt_assets.bench.throttle import read_throttle
from mt_assets.models.reading import evict

path, rate = Path(sys.argv[1]), int(sys.argv[2])
def cold_read():
    evict(path)
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.read(1 << 20):
            pass
    return time.perf_counter() - started
def blkio_group():
    line = next(l for l in Path("/proc/self/cgroup").read_text().splitlines() if "blkio" in l.split(":")[1])
    return line.split(":", 2)[2]
home = blkio_group()
with read_throttle(path.parent, rate) as device:
    inside = blkio_group()
    group_dir = Path(sys.argv[3]) / inside.lstrip("/")
    limit = (group_dir / "blkio.throttle.read_bps_device").read_text().strip()
    throttled = cold_read()
    served = (group_dir / "blkio.throttle.io_service_bytes").read_text()
print(json.dumps({
    "device": device, "home": home, "inside": inside, "after": blkio_group(), "limit": limit,
    "throttled_s": throttled, "served": served, "group_left": group_dir.exists(),
}))
"""


def _can_throttle(path: Path) -> bool:
    try:
        block_device(path)
        mount = blkio_mount()
    except ThrottleError:
        return False
    return os.geteuid() == 0 and os.access(mount, os.W_OK)


def test_reads_in_the_throttled_group_are_held_to_the_rate_and_the_group_goes_afterwards(
    tmp_path: Path,
) -> None:
    if not _can_throttle(tmp_path):
        pytest.skip("needs root, a cgroup v1 blkio hierarchy and a block device under the temp folder")
    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(FILE_BYTES))
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = blkio_mount() / f"mt-bench-{gone.stdout.strip()}"  # as a killed run leaves it
    stale.mkdir()
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(RATE), str(blkio_mount())],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    assert doc["limit"] == f"{doc['device']} {RATE}"
    assert doc["inside"] != doc["home"] and doc["after"] == doc["home"]
    assert not doc["group_left"] and not stale.exists()
    # The reads went through the group, on the throttled disk, and could not beat the rate.
    read_lines = [line for line in doc["served"].splitlines() if line.startswith(f"{doc['device']} Read")]
    assert read_lines and int(read_lines[0].split()[-1]) >= FILE_BYTES
    assert doc["throttled_s"] >= 0.8 * FILE_BYTES / RATE


def test_a_path_on_no_block_device_is_refused_naming_it() -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm")
    with pytest.raises(ThrottleError, match="/dev/shm: not on a block device"):
        with read_throttle(shm, RATE):
            pass


def test_a_rate_of_zero_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ThrottleError, match="read rate must be > 0"):
        with read_throttle(tmp_path, 0):
            pass
