"""A read-bandwidth limit on the disk under a volume, for this process and its children.

Why: on this kind of machine (a few cores, a local virtual disk at 1-2 GB/s) a cold load is bound by
the CPU (casts, unpickling), while on a RunPod network volume (a few hundred MB/s) it is bound by the
read. To measure the loaders where the read dominates without such a volume, the benchmark can put
itself in a cgroup whose reads of the volume's disk the kernel throttles.

Mechanism (Linux cgroup v1, the `blkio` controller; root, or a delegated hierarchy):

    <blkio mount>/mt-bench-<pid>/                     a new group, removed on exit
        blkio.throttle.read_bps_device  "MAJ:MIN BYTES"   MAJ:MIN of the whole disk under the path
        cgroup.procs                    this process's pid (its threads and later children follow)

Only reads that reach the device are throttled: page-cache hits are not (the benchmark evicts the
files first), and they are throttled alike whether a `read()`, readahead or an mmap page fault
issued them, so every load strategy sees the same disk. A path on no block device (tmpfs, overlay,
NFS, FUSE: st_dev with no /sys/dev/block entry) cannot be throttled this way; a real network volume
needs no emulation. cgroup v2 (`io.max`) is not handled: the error says so.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from mt_assets.volume.mounts import mounts

GROUP_PREFIX = "mt-bench-"
SYS_DEV_BLOCK = Path("/sys/dev/block")


class ThrottleError(RuntimeError):
    """Reads cannot be throttled here; the message says why."""


def block_device(path: str | Path) -> str:
    """'MAJ:MIN' of the whole disk holding `path` (a partition's parent disk)."""
    st = os.stat(path)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    entry = SYS_DEV_BLOCK / dev
    if not entry.exists():
        raise ThrottleError(
            f"{path}: not on a block device (device {dev} has no {entry}; tmpfs, overlay, NFS or FUSE), "
            "so its reads cannot be throttled; measure such a volume as it is"
        )
    real = entry.resolve()
    if (real / "partition").exists():  # the throttle applies to whole disks
        return (real.parent / "dev").read_text().strip()
    return dev


def blkio_mount() -> Path:
    """Where the cgroup v1 blkio hierarchy is mounted (from /proc/self/mountinfo)."""
    for mount in mounts():
        if mount.fstype == "cgroup" and "blkio" in mount.super_options:
            return Path(mount.point)
    raise ThrottleError(
        "no cgroup v1 blkio hierarchy is mounted (cgroup v2's io.max is not handled), so reads cannot "
        "be throttled here"
    )


def _own_group(mount: Path) -> Path:
    """This process's blkio group (from /proc/self/cgroup), to return to afterwards."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, group = line.split(":", 2)
        if "blkio" in controllers.split(","):
            return mount / group.lstrip("/")
    return mount


def _remove_stale_groups(mount: Path) -> None:
    """Groups left by a benchmark that was killed (no cleanup ran): removed once empty, its pid gone."""
    for group in mount.glob(f"{GROUP_PREFIX}*"):
        pid = group.name.removeprefix(GROUP_PREFIX)
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            with contextlib.suppress(OSError):  # still has processes in it: left alone
                group.rmdir()


@contextlib.contextmanager
def read_throttle(path: str | Path, bytes_per_s: int) -> Iterator[str]:
    """Throttle reads of `path`'s disk to `bytes_per_s` for this process and the children it starts.

    Yields the 'MAJ:MIN' throttled. On exit the process returns to its group and the group is
    removed; a group left by a killed run is removed by the next one.
    """
    if bytes_per_s <= 0:
        raise ThrottleError(f"read rate must be > 0 bytes/s, got {bytes_per_s}")
    device = block_device(path)
    mount = blkio_mount()
    home = _own_group(mount)
    _remove_stale_groups(mount)
    group = mount / f"{GROUP_PREFIX}{os.getpid()}"
    try:
        group.mkdir(exist_ok=True)
        (group / "blkio.throttle.read_bps_device").write_text(f"{device} {int(bytes_per_s)}\n")
        (group / "cgroup.procs").write_text(f"{os.getpid()}\n")
    except OSError as e:
        with contextlib.suppress(OSError):
            group.rmdir()
        raise ThrottleError(
            f"cannot throttle reads of {path} ({device}) in {group}: {e} (needs root)"
        ) from None
    try:
        yield device
    finally:
        (home / "cgroup.procs").write_text(f"{os.getpid()}\n")
        with contextlib.suppress(OSError):  # a child still alive keeps it; the next run removes it
            group.rmdir()
