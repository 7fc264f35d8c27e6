"""The mount table: the filesystem a path lives on, mount points with escaped characters."""

from __future__ import annotations

from pathlib import Path

from mt_assets.volume.mounts import filesystem_type, mounts
from mt_assets_tests.conftest import small_tmpfs


def test_a_path_lives_on_the_longest_mount_point_above_it() -> None:
    assert filesystem_type(Path("/proc/self")) == "proc"
    assert filesystem_type(Path("/proc")) == "proc"
    assert any(m.point == "/" for m in mounts())


def test_a_mount_point_with_a_space_is_found(tmp_path: Path) -> None:
    before = filesystem_type(tmp_path)
    with small_tmpfs(tmp_path / "a b", "1m") as mount:
        assert str(mount) in {m.point for m in mounts()}  # \040 in mountinfo, a space here
        assert filesystem_type(mount / "inside") == "tmpfs"
    assert filesystem_type(tmp_path / "a b") == before
