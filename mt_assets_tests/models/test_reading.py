"""Reading checkpoint files: every strategy gives the same bits, cold reads, and MT_LOAD_STRATEGY."""

from __future__ import annotations

import json
import struct
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mt_assets.models import reading
from mt_assets.models.checkpoints import CheckpointError, load_pth
from mt_assets.models.reading import (
    DEFAULT_STRATEGY,
    STRATEGIES,
    drop_caches,
    evict,
    iter_safetensors,
    read_safetensors,
    read_safetensors_header,
    resident_fraction,
    strategy_from_env,
    warm_tensors,
    will_copy,
)
from mt_assets.volume.mounts import filesystem_type


def _odd_tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return {
        "a.weight": torch.randn(37, 11, generator=gen),  # fp32, odd sizes
        "b.weight": torch.randn(13, 7, 3, generator=gen).to(torch.bfloat16),
        "c.bias": torch.randn(5, generator=gen).to(torch.bfloat16),  # 10 bytes: what follows is unaligned
        "d.half": torch.randn(9, generator=gen).to(torch.float16),
        "e.index": torch.arange(17, dtype=torch.int64),
        "f.mask": torch.rand(23, generator=gen) > 0.5,
        "g.scalar": torch.tensor(3.25),
        "h.empty": torch.zeros(0, 4),
        "i.big": torch.randn(300, 301, generator=gen),  # spans many of the small blocks below
    }


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.view(-1).view(torch.uint8), b.view(-1).view(torch.uint8))
    )


@pytest.fixture()
def odd_file(tmp_path: Path) -> Path:
    path = tmp_path / "odd.safetensors"
    save_file(_odd_tensors(), str(path), metadata={"format": "pt"})
    return path


@pytest.fixture()
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks and ranges of a few KB, so a small file takes many reads (and many threads' turns)."""
    monkeypatch.setattr(reading, "BLOCK_BYTES", 4096)
    monkeypatch.setattr(reading, "RANGE_BYTES", 3000)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_reads_the_same_bits_as_safetensors(
    odd_file: Path, strategy: str, small_blocks: None
) -> None:
    expected = load_file(str(odd_file))
    got = read_safetensors(odd_file, strategy)  # type: ignore[arg-type]
    assert got.keys() == expected.keys()
    for key in expected:
        assert _same_bits(got[key], expected[key]), key


@pytest.mark.parametrize("strategy", ["sequential", "parallel"])
def test_a_tensor_at_an_unaligned_offset_reads_back_right(tmp_path: Path, strategy: str) -> None:
    # safetensors' writer aligns tensors; other writers need not. 3 bytes of uint8, then a float32.
    header = {
        "u": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
        "f": {"dtype": "F32", "shape": [2], "data_offsets": [3, 11]},
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # data starts 8-aligned, so "f" starts at an odd byte
    path = tmp_path / "unaligned.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes([1, 2, 3]) + struct.pack("<2f", 1.5, -2.0))
    got = read_safetensors(path, strategy)  # type: ignore[arg-type]
    assert got["u"].tolist() == [1, 2, 3]
    assert got["f"].tolist() == [1.5, -2.0]


def test_tensors_come_in_file_order_and_stopping_early_stops_the_readers(
    odd_file: Path, small_blocks: None
) -> None:
    before = threading.active_count()
    stream = iter_safetensors(odd_file, "parallel", readers=3)
    key, tensor = next(stream)
    assert _same_bits(tensor, load_file(str(odd_file))[key])
    stream.close()
    assert threading.active_count() == before


def test_the_header_gives_dtypes_and_shapes_without_the_data(odd_file: Path) -> None:
    header = read_safetensors_header(odd_file)
    assert header["b.weight"] == (torch.bfloat16, (13, 7, 3))
    assert header["g.scalar"] == (torch.float32, ())
    assert set(header) == set(_odd_tensors())


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_truncated_file_is_a_checkpoint_error_naming_it(odd_file: Path, strategy: str) -> None:
    data = odd_file.read_bytes()
    odd_file.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match=r"odd\.safetensors"):
        read_safetensors(odd_file, strategy)  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match=r"odd\.safetensors"):
        read_safetensors_header(odd_file)


def test_evict_drops_a_read_file_from_the_page_cache_and_it_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "big.safetensors"
    tensors = {"x": torch.randn(1024, 1024)}  # 4 MB
    save_file(tensors, str(path))
    read_safetensors(path, "sequential")
    assert evict(path) is True
    cached = resident_fraction(path)
    if cached is not None:  # mincore answered: the pages are gone (tmpfs keeps them: skip that case)
        assert cached < 0.5 or filesystem_type(path) == "tmpfs"
    assert _same_bits(read_safetensors(path, "sequential")["x"], tensors["x"])


def test_drop_caches_says_whether_it_could(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reading.os, "sync", lambda: None)  # the real sync flushes every filesystem
    monkeypatch.setattr(reading, "DROP_CACHES", tmp_path / "no-such-dir" / "drop_caches")
    assert drop_caches() is False
    target = tmp_path / "drop_caches"
    monkeypatch.setattr(reading, "DROP_CACHES", target)
    assert drop_caches() is True
    assert target.read_text() == "1\n"


def test_strategy_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MT_LOAD_STRATEGY", raising=False)
    assert strategy_from_env() == DEFAULT_STRATEGY
    monkeypatch.setenv("MT_LOAD_STRATEGY", "parallel")
    assert strategy_from_env() == "parallel"


def test_a_bad_strategy_in_the_environment_names_the_variable_and_the_choices(
    monkeypatch: pytest.MonkeyPatch, odd_file: Path
) -> None:
    monkeypatch.setenv("MT_LOAD_STRATEGY", "fast")
    message = r"MT_LOAD_STRATEGY: expected one of mmap, sequential, parallel, got 'fast'"
    with pytest.raises(ValueError, match=message):
        strategy_from_env()
    with pytest.raises(ValueError, match=message):
        read_safetensors(odd_file)
    with pytest.raises(ValueError, match=r"'fast' is not a load strategy"):
        read_safetensors(odd_file, "fast")  # type: ignore[arg-type]


@pytest.mark.parametrize("strategy", ["sequential", "parallel"])
def test_warming_reads_only_the_file_ranges_behind_the_given_mapped_tensors(
    tmp_path: Path, strategy: str
) -> None:
    path = tmp_path / "two.pth"
    # 4 MiB each; the kept one last, so the kernel's readahead (forward) has nothing of the other to take
    torch.save({"left": torch.randn(1024, 1024), "kept": torch.randn(1024, 1024)}, path)
    evict(path)
    state = load_pth(path)  # memory-mapped: the data is not read yet
    before = resident_fraction(path)
    if before is None or filesystem_type(path) == "tmpfs":
        pytest.skip("the page cache cannot be asked here")
    assert before < 0.1
    assert warm_tensors([state["kept"]], "mmap") == 0  # mmap leaves it to the page faults
    assert resident_fraction(path) < 0.1
    assert warm_tensors([state["kept"]], strategy) == 4 * 1024 * 1024
    assert 0.45 < resident_fraction(path) < 0.6  # the kept tensor's half of the file, not the other's
    assert _same_bits(state["kept"], torch.load(path, weights_only=True)["kept"])
    assert warm_tensors([torch.ones(3)], strategy) == 0  # in memory already: nothing to read


def test_only_a_cast_or_a_move_copies_a_tensor() -> None:
    t = torch.ones(2, dtype=torch.bfloat16)
    assert not will_copy(t, torch.bfloat16, "cpu")
    assert will_copy(t, torch.float32, "cpu")
    assert will_copy(t, torch.bfloat16, "meta")
