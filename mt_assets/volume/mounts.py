"""The mount table, from /proc/self/mountinfo (Linux), for what a path lives on.

Each line (proc(5)):

    <id> <parent id> <major:minor> <root> <mount point> <mount options> [optional fields...] - <fstype> <source> <super options>

Mount points escape a space, tab, newline and backslash as octal (\\040, \\011, \\012, \\134).
Where /proc is not there (not Linux) the table is empty.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")
_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    point: str
    fstype: str
    super_options: tuple[str, ...]


def mounts() -> list[Mount]:
    """Every mount this process sees, in mountinfo's order (a later one may cover an earlier)."""
    try:
        lines = MOUNTINFO.read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields, _, rest = line.partition(" - ")
        parts, tail = fields.split(" "), rest.split(" ")
        if len(parts) < 5 or len(tail) < 3:
            continue
        point = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), parts[4])
        found.append(Mount(point, tail[0], tuple(tail[2].split(","))))
    return found


def filesystem_type(path: str | Path) -> str | None:
    """The type of the filesystem holding `path`: that of the longest mount point above it."""
    target = os.path.realpath(path)
    best: Mount | None = None
    for mount in mounts():
        inside = target == mount.point or target.startswith(mount.point.rstrip("/") + "/")
        if inside and (best is None or len(mount.point) >= len(best.point)):
            best = mount
    return best.fstype if best else None
