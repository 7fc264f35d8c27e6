"""How checkpoint bytes get from the volume into memory: the load strategies, and cold reads.

A strategy says how one safetensors file is read (`read_safetensors(path, strategy)`); every
strategy returns the same tensors, bit for bit. Chosen by `MT_LOAD_STRATEGY`, or per call.

    mmap        safetensors' own `load_file`: the file is memory-mapped and each page is read
                when a tensor first touches it (page faults, a few pages of readahead at a time).
                What the libraries do by default. On a local disk with a warm page cache it is
                the cheapest; on a network volume every fault is a round trip, and page-by-page
                reads are known to run 30-50x slower than large sequential reads there.
    sequential  the whole file is read front to back with large blocks (64 MiB `pread`s) into
                one buffer by a background thread; the header is parsed here and each tensor
                is a view into that buffer (no second copy), handed out as soon as its bytes
                are in, so the caller's cast overlaps the read. Large sequential reads are what
                reaches a network volume's bandwidth; readahead works for them on any filesystem.
    parallel    the same, with the file split into 16 MiB ranges that a bounded pool of threads
                (PARALLEL_READERS) reads at once, in file order, into the same single buffer
                (memory: the file's size, as for sequential). Several requests in flight hide a
                network volume's latency per request; on one local disk it gains little.

DEFAULT_STRATEGY is `parallel`. Evidence from this machine (a virtual disk shared with other
work, 2 cores; noisy): the medium mirror's DiT + adapter (1.94 GB fp32, 8 files) loaded as bf16
in fresh processes with evicted pages, median of 3: parallel 2.87 s (0.68 GB/s), mmap 3.06 s,
sequential 5.06 s; in the same run a raw read of the same files took 1.96 s with 4 threads
(0.99 GB/s) and 4.09 s with one stream of 64 MiB reads: this disk wants several requests in
flight, which mmap's kernel readahead also gets. What is known of network filesystems (NFS,
the RunPod network volume, FUSE mounts of object stores) rules mmap out there: its page faults
become small synchronous reads, 30-50x slower than large sequential reads, while large reads
(sequential or parallel) reach the volume's bandwidth, and parallel ones also hide its
latency per request. `benchmarks/cold_start.py --volume PATH` settles it on the real volume.

Cold reads. A second read of a file is served from the page cache (RAM), which says nothing
about the volume. `evict(path)` asks the kernel to drop the file's cached pages
(`posix_fadvise(POSIX_FADV_DONTNEED)`, no privileges needed; the file is first flushed with
`fdatasync`, since dirty pages, e.g. of a file just written, are not dropped). Pages mapped
by a running process stay. `drop_caches()` drops the whole page cache (writes 1 to
/proc/sys/vm/drop_caches) where this process may (root on a VM), and says whether it could.
`resident_fraction(path)` tells how much of a file is cached (mincore), to check either.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import math
import mmap
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, get_args

import torch
from safetensors.torch import load_file

from mt_assets.models.checkpoints import CheckpointError

LoadStrategy = Literal["mmap", "sequential", "parallel"]
STRATEGIES: tuple[str, ...] = get_args(LoadStrategy)
DEFAULT_STRATEGY: LoadStrategy = "parallel"
STRATEGY_ENV = "MT_LOAD_STRATEGY"

BLOCK_BYTES = 64 * 1024 * 1024  # sequential: one read call
RANGE_BYTES = 16 * 1024 * 1024  # parallel: one range, read by one of the threads
PARALLEL_READERS = 4  # parallel: threads reading one file at once
DROP_CACHES = Path("/proc/sys/vm/drop_caches")

# safetensors dtype names -> torch dtypes
_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
}


def strategy_from_env() -> LoadStrategy:
    """`MT_LOAD_STRATEGY` if set (and valid), else DEFAULT_STRATEGY."""
    value = os.environ.get(STRATEGY_ENV, "").strip()
    return check_strategy(value, where=f"environment variable {STRATEGY_ENV}") if value else DEFAULT_STRATEGY


def check_strategy(value: str, *, where: str = "load strategy") -> LoadStrategy:
    if value not in STRATEGIES:
        raise ValueError(
            f"{where}: {value!r} is not a load strategy; expected one of {', '.join(STRATEGIES)}"
        )
    return value  # type: ignore[return-value]


# ---------------------------------------------------------------------- reading
def read_safetensors(
    path: str | Path, strategy: LoadStrategy | None = None, *, readers: int = PARALLEL_READERS
) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, on the CPU, read the `strategy` way (None: from the env).

    With sequential and parallel the tensors are views into one buffer of the file's size (kept
    alive by them); a tensor whose offset does not suit its dtype's alignment is copied out.
    A file that is not valid safetensors is a CheckpointError naming it.
    """
    return dict(iter_safetensors(path, strategy, readers=readers))


def iter_safetensors(
    path: str | Path, strategy: LoadStrategy | None = None, *, readers: int = PARALLEL_READERS
) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, tensor) for every tensor of the file, each as soon as its bytes are in memory.

    sequential and parallel read in background threads, in file order, while the caller works on
    the tensors already in (a cast, a copy to the GPU): reading and converting overlap, and the
    memory is still one buffer of the file's size. Tensors come in file order; mmap gives them
    as safetensors lists them. Stopping early stops the readers.
    """
    strategy = strategy_from_env() if strategy is None else check_strategy(strategy)
    if strategy == "mmap":
        try:
            tensors = load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own SafetensorError and OSErrors
            raise CheckpointError(f"{path}: cannot be read as safetensors: {_first_line(e)}") from None
        while tensors:  # popped, so the mapping goes with the last tensor the caller drops
            key = next(iter(tensors))
            yield key, tensors.pop(key)
        return
    yield from _stream(Path(path), readers if strategy == "parallel" else 1)


def read_safetensors_header(path: str | Path) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """{key: (dtype, shape)} from the header alone (a few KB read), to check a file before loading it."""
    try:
        with open(path, "rb") as f:
            header, _ = _read_header(f.fileno(), os.fstat(f.fileno()).st_size)
        return {key: (dtype, shape) for key, (dtype, shape, _) in header.items()}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: cannot be read as safetensors: {_first_line(e)}") from None


_Entries = dict[str, tuple[torch.dtype, tuple[int, ...], tuple[int, int]]]


def _read_header(fd: int, size: int) -> tuple[_Entries, int]:
    """The header's entries and where the data starts, checked against the file's size."""
    head = os.pread(fd, 8, 0)
    if len(head) != 8:
        raise ValueError("shorter than the 8-byte header length")
    n = int.from_bytes(head, "little")
    if 8 + n > size:
        raise ValueError(f"header length {n} runs past the end of the file")
    raw = os.pread(fd, n, 8)
    start = 8 + n
    entries: _Entries = {}
    for key, info in json.loads(raw).items():
        if key == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"tensor {key!r}: unknown dtype {info['dtype']!r}")
        dtype, shape = _DTYPES[info["dtype"]], tuple(int(s) for s in info["shape"])
        begin, end = (int(x) for x in info["data_offsets"])
        if begin < 0 or end - begin != math.prod(shape) * dtype.itemsize or start + end > size:
            raise ValueError(f"tensor {key!r}: offsets [{begin}, {end}) do not fit shape {list(shape)}")
        entries[key] = (dtype, shape, (begin, end))
    return entries, start


class _Filled:
    """How much of the buffer, from its start, the readers have filled; the consumer waits on it."""

    def __init__(self, ranges: list[tuple[int, int]]) -> None:
        self.ranges = ranges
        self.done = [False] * len(ranges)
        self.prefix = 0  # ranges[:prefix] are all done
        self.upto = 0  # bytes filled from the start
        self.error: BaseException | None = None
        self.stopped = False
        self.next_range = 0
        self.cond = threading.Condition()

    def take(self) -> int | None:
        with self.cond:
            if self.stopped or self.error or self.next_range >= len(self.ranges):
                return None
            self.next_range += 1
            return self.next_range - 1

    def finish(self, i: int) -> None:
        with self.cond:
            self.done[i] = True
            while self.prefix < len(self.ranges) and self.done[self.prefix]:
                self.prefix += 1
            self.upto = self.ranges[self.prefix - 1][1] if self.prefix else 0
            self.cond.notify_all()

    def fail(self, e: BaseException) -> None:
        with self.cond:
            self.error = e
            self.cond.notify_all()

    def wait_for(self, end: int) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.upto >= end or self.error is not None)
            if self.upto < end and self.error is not None:
                raise self.error


def _stream(path: Path, readers: int) -> Iterator[tuple[str, torch.Tensor]]:
    """sequential (readers=1, BLOCK_BYTES per read) and parallel (ranges over `readers` threads)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read: {e}") from None
    threads: list[threading.Thread] = []
    filled: _Filled | None = None
    try:
        size = os.fstat(fd).st_size
        try:
            entries, start = _read_header(fd, size)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path}: cannot be read as safetensors: {_first_line(e)}") from None
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        buf = torch.empty(size, dtype=torch.uint8)
        view = memoryview(buf.numpy()).cast("B") if size else memoryview(bytearray())
        step = BLOCK_BYTES if readers <= 1 else RANGE_BYTES
        filled = _Filled([(off, min(size, off + step)) for off in range(0, size, step)])

        def work(state: _Filled = filled) -> None:
            try:
                while (i := state.take()) is not None:
                    _read_range(fd, view, *state.ranges[i])
                    state.finish(i)
            except BaseException as e:  # handed to the consumer, which raises it
                state.fail(e)

        for _ in range(max(1, min(readers, len(filled.ranges)))):
            threads.append(threading.Thread(target=work, name=f"read {path.name}", daemon=True))
            threads[-1].start()
        for key, (dtype, shape, (begin, end)) in sorted(entries.items(), key=lambda e: e[1][2][0]):
            try:
                filled.wait_for(start + end)
            except OSError as e:
                raise CheckpointError(f"{path}: cannot be read: {e}") from None
            raw = buf[start + begin : start + end]
            if (start + begin) % dtype.itemsize:
                raw = raw.clone()  # a view of another dtype must start at a multiple of its size
            yield key, raw.view(dtype).reshape(shape)
    finally:
        if filled is not None:
            with filled.cond:
                filled.stopped = True
        for t in threads:
            t.join()
        os.close(fd)


def _read_range(fd: int, view: memoryview, begin: int, end: int) -> None:
    """Fill view[begin:end] from the file at the same offsets, BLOCK_BYTES per call (pread releases the GIL)."""
    off = begin
    while off < end:
        got = os.preadv(fd, [view[off : min(end, off + BLOCK_BYTES)]], off)
        if got == 0:
            raise OSError(f"file ended at byte {off}, expected {end} (changed while reading?)")
        off += got


# ---------------------------------------------------------------------- cold reads
def evict(path: str | Path) -> bool:
    """Drop the file's pages from the page cache so the next read comes from the volume.

    False where the platform has no posix_fadvise. Pages another process has mapped stay.
    """
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        # Dirty pages (a file just written) are not dropped unless flushed first; some filesystems
        # refuse fdatasync on a read-only descriptor, and their clean pages still go.
        with contextlib.suppress(OSError):
            os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def drop_caches() -> bool:
    """Flush, then drop the whole page cache (`1` to /proc/sys/vm/drop_caches); False if not permitted."""
    os.sync()
    try:
        DROP_CACHES.write_text("1\n")
    except OSError:
        return False
    return True


def resident_fraction(path: str | Path) -> float | None:
    """How much of the file sits in the page cache (0..1), by mincore; None where that cannot be asked."""
    libc_name = ctypes.util.find_library("c")
    size = Path(path).stat().st_size
    if not libc_name or size == 0:
        return None if size else 0.0
    libc = ctypes.CDLL(libc_name, use_errno=True)
    page = mmap.PAGESIZE
    pages = -(-size // page)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    with open(path, "rb") as f:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, f.fileno(), 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            return None
        try:
            vec = ctypes.create_string_buffer(pages)
            if libc.mincore(addr, size, vec) != 0:
                return None
            return sum(b & 1 for b in vec.raw) / pages
        finally:
            libc.munmap(addr, size)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
