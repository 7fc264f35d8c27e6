"""Direct writes: aligned blocks skip the page cache, everything else is written buffered, and
either way the placed bytes, their hash and the failure paths are those of a buffered write."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mt_assets.models.reading import resident_fraction
from mt_assets.volume import Expected, LocalVolume, VolumeFullError
from mt_assets.volume.direct import ALIGNMENT, ENV, aligned_buffer, fits, open_direct
from mt_assets.volume.mounts import filesystem_type
from mt_assets_tests.conftest import small_tmpfs

MiB = 1 << 20
TARGET = "models/comp/big.bin"


def write_blocks(root: Path, blocks: list[memoryview | bytes]) -> tuple[bytes, Path]:
    data = b"".join(bytes(b) for b in blocks)
    vol = LocalVolume(root)
    with vol.writing(TARGET, Expected(size=len(data), sha256=hashlib.sha256(data).hexdigest())) as w:
        for block in blocks:
            w.write(block)
        assert w.commit().sha256 == hashlib.sha256(data).hexdigest()
    return data, root / TARGET


def aligned_blocks(count: int, size: int = MiB) -> list[memoryview]:
    buffer = aligned_buffer(count * size)
    buffer.write(os.urandom(count * size))
    view = memoryview(buffer)
    return [view[i * size : (i + 1) * size] for i in range(count)]


def skip_unless_direct(folder: Path) -> None:
    """Skip the test where the filesystem of `folder` refuses O_DIRECT (MT_DIRECT_WRITES=on set)."""
    probe = folder / ".probe"
    probe.touch()
    try:
        fd = open_direct(probe)
    finally:
        probe.unlink()
    if fd is None:
        pytest.skip(f"{filesystem_type(folder)} at {folder} refuses O_DIRECT")
    os.close(fd)


@pytest.fixture
def direct_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv(ENV, "on")
    skip_unless_direct(tmp_path)
    yield tmp_path


def test_aligned_blocks_skip_the_page_cache_and_a_short_tail_is_written_buffered(direct_on: Path) -> None:
    blocks: list[memoryview | bytes] = [*aligned_blocks(4), os.urandom(1000)]
    data, placed = write_blocks(direct_on, blocks)
    # Asked before reading the file back: of its 1025 pages only the tail's came through the cache.
    fraction = resident_fraction(placed)
    assert fraction is not None and fraction <= 1 / 1025, fraction
    assert placed.read_bytes() == data


def test_with_direct_writes_off_the_same_blocks_go_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, "off")
    data, placed = write_blocks(tmp_path, [*aligned_blocks(4)])
    assert resident_fraction(placed) == 1.0
    assert placed.read_bytes() == data


def test_blocks_off_the_alignment_are_written_buffered_with_the_same_bytes(direct_on: Path) -> None:
    blocks = aligned_blocks(3)
    # An odd first write puts every later block at an unaligned offset; bytes are never aligned;
    # a view one byte into an aligned buffer is not either.
    odd = [os.urandom(1000), blocks[0], bytes(blocks[1]), blocks[2][1:], os.urandom(ALIGNMENT)]
    data, placed = write_blocks(direct_on, odd)
    assert placed.read_bytes() == data
    assert resident_fraction(placed) == 1.0


def test_buffered_and_direct_blocks_interleave_in_order(direct_on: Path) -> None:
    blocks = aligned_blocks(4, size=ALIGNMENT * 8)
    mixed = [blocks[0], bytes(blocks[1]), blocks[2], bytes(blocks[3]), os.urandom(10)]
    data, placed = write_blocks(direct_on, mixed)
    assert placed.read_bytes() == data


@pytest.mark.parametrize(
    ("start", "stop", "offset", "expected"),
    [
        (0, MiB, 0, True),
        (ALIGNMENT, 2 * ALIGNMENT, ALIGNMENT, True),
        (0, MiB, 512, False),  # offset
        (1, ALIGNMENT + 1, 0, False),  # address
        (0, ALIGNMENT + 1, 0, False),  # length
        (0, 0, 0, False),
    ],
)
def test_fits_needs_address_offset_and_length_aligned(
    start: int, stop: int, offset: int, expected: bool
) -> None:
    buffer = aligned_buffer(2 * MiB)
    assert fits(memoryview(buffer)[start:stop], offset) is expected


def test_bytes_and_read_only_views_never_fit() -> None:
    assert not fits(bytes(MiB), 0)
    assert not fits(memoryview(aligned_buffer(MiB)).toreadonly(), 0)


def test_auto_uses_direct_writes_on_local_disks_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "auto")
    assert filesystem_type(Path("/proc/self")) == "proc"
    shm = Path("/dev/shm")
    if filesystem_type(shm) == "tmpfs" and os.access(shm, os.W_OK):
        probe = shm / f"mt-direct-{os.getpid()}"
        probe.touch()
        try:
            assert open_direct(probe) is None  # not a local block filesystem: buffered
        finally:
            probe.unlink()
    monkeypatch.setenv(ENV, "off")
    (tmp_path / "f").touch()
    assert open_direct(tmp_path / "f") is None


def test_an_unknown_mode_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "always")
    with pytest.raises(ValueError, match=rf"{ENV}: expected one of auto, on, off, got 'always'"):
        LocalVolume(tmp_path).writing(TARGET).__enter__()
    assert not (tmp_path / TARGET).exists()
    assert not list((tmp_path / ".mt").glob("staging/*")) and not list((tmp_path / ".mt").glob("locks/*"))


def test_a_full_disk_under_direct_writes_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with small_tmpfs(tmp_path / "small", "2m") as mount:
        monkeypatch.setenv(ENV, "on")
        skip_unless_direct(mount)
        vol = LocalVolume(mount)
        with pytest.raises(VolumeFullError, match=r"models/comp/big.bin: the volume is full"):
            with vol.writing(TARGET) as w:
                for block in aligned_blocks(4):
                    w.write(block)
                w.commit()
        assert not (mount / TARGET).exists()
        assert list((mount / ".mt" / "staging").iterdir()) == []
