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

DEFAULT_STRATEGY is `parallel`. Evidence from this machine (a virtual disk shared with other work,
2 cores; noisy), fresh processes, evicted pages, bf16 as a GPU worker loads: the medium mirror's DiT
+ adapter (1.94 GB fp32, 8 files), median of 2: parallel 1.56 s, mmap 2.52 s, sequential 4.08 s,
next to a raw read of the same files of 1.77 s with 4 threads (3.35 s in one stream of 64 MiB
reads): this disk wants several requests in flight. With its reads throttled to a network volume's
200 MB/s (benchmarks/cold_start.py --read-rate 200) all three take the read's time (9.78-9.91 s
against 9.61 s). What is known of network filesystems (NFS, the RunPod network volume, FUSE mounts
of object stores) rules mmap out there: its page faults become small synchronous reads, 30-50x
slower than large sequential reads, while large reads (sequential or parallel) reach the volume's
bandwidth, and parallel ones also hide its latency per request. `benchmarks/cold_start.py --volume
PATH` settles it on the real volume.

Every unit. The DiT and the adapter are read by `iter_safetensors` above, and so are wav2vec2's
and the repacks' safetensors files. T5, CLIP and the VAE are torch `.pth` files loaded with
`torch.load(mmap=True)` (a zip of storages; no second copy in memory, and CLIP's unused text tower is
never read); for sequential and parallel, `warm_tensors` then reads the file ranges behind the
tensors the loader will cast or copy to the device (found in /proc/self/maps) with large `pread`s,
one range after another or PARALLEL_READERS at once, into the page cache, so the cast and the copy
take their page faults on memory, not on the volume. mmap leaves them to the page faults, and so
does every strategy for a tensor kept as it is (a CPU load in the file's dtype): it stays a view of
the mapping, read when first touched, and rows never touched (T5's embedding) are never read.

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
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, cast, get_args

import torch
from safetensors.torch import load_file

from mt_assets import config
from mt_assets.models.checkpoints import CheckpointError

LoadStrategy = Literal["mmap", "sequential", "parallel"]
STRATEGIES: tuple[str, ...] = get_args(LoadStrategy)
DEFAULT_STRATEGY: LoadStrategy = "parallel"

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


def strategy_from_env(env: Mapping[str, str] | None = None) -> LoadStrategy:
    """`MT_LOAD_STRATEGY` if set (and valid), else DEFAULT_STRATEGY; config.ConfigError for a bad value."""
    return cast(LoadStrategy, config.LOAD_STRATEGY.read(env))


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


class ReadBuffer:
    """One buffer that file after file is read into (sequential and parallel), instead of a fresh one each.

    A fresh buffer's pages are faulted in one by one as the file lands in them: for the medium
    DiT (1.94 GB) that was a third of its whole load's CPU time on this machine. Only for a caller
    that is done with a file's tensors (has copied each: a cast, a move to the GPU, a clone)
    before it reads the next file, since they are views into this buffer. `size`: the largest
    file it will take, so it is allocated once.
    """

    def __init__(self, size: int = 0) -> None:
        self._buffer = torch.empty(size, dtype=torch.uint8)

    def take(self, size: int) -> torch.Tensor:
        if self._buffer.numel() < size:
            self._buffer = torch.empty(0, dtype=torch.uint8)  # the old one goes before the new one comes
            self._buffer = torch.empty(size, dtype=torch.uint8)
        return self._buffer[:size]


def iter_safetensors(
    path: str | Path,
    strategy: LoadStrategy | None = None,
    *,
    readers: int = PARALLEL_READERS,
    buffer: ReadBuffer | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, tensor) for every tensor of the file, each as soon as its bytes are in memory.

    sequential and parallel read in background threads, in file order, while the caller works on
    the tensors already in (a cast, a copy to the GPU): reading and converting overlap, and the
    memory is still one buffer of the file's size (`buffer`'s, when given: see ReadBuffer).
    Tensors come in file order; mmap gives them as safetensors lists them. Stopping early stops
    the readers.
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
    yield from _stream(Path(path), readers if strategy == "parallel" else 1, buffer)


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


def _stream(path: Path, readers: int, buffer: ReadBuffer | None = None) -> Iterator[tuple[str, torch.Tensor]]:
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
        buf = buffer.take(size) if buffer is not None else torch.empty(size, dtype=torch.uint8)
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


def _read_range(fd: int, view: memoryview, begin: int, end: int, *, file_offset: int | None = None) -> None:
    """Fill view[begin:end] from the file, BLOCK_BYTES per call (pread releases the GIL).

    The file is read from the same offsets as the view's, or from `file_offset` on.
    """
    shift = 0 if file_offset is None else file_offset - begin
    off = begin
    while off < end:
        got = os.preadv(fd, [view[off : min(end, off + BLOCK_BYTES)]], off + shift)
        if got == 0:
            raise OSError(
                f"file ended at byte {off + shift}, expected {end + shift} (changed while reading?)"
            )
        off += got


def warm_tensors(
    tensors: Iterable[torch.Tensor], strategy: LoadStrategy | None = None, *, readers: int = PARALLEL_READERS
) -> int:
    """Read the file bytes behind memory-mapped tensors into the page cache, the `strategy` way.

    For tensors from `torch.load(mmap=True)` or safetensors' `load_file`: the byte ranges of their
    storages in the mapped files, merged, are read with large preads (sequential: 64 MiB, one after
    another; parallel: 16 MiB pieces over `readers` threads) and the bytes dropped; the tensors then
    find their pages in memory. mmap: nothing is read (the page faults will). Tensors not backed by
    a file (already in memory) are skipped. Returns the bytes read.
    """
    strategy = strategy_from_env() if strategy is None else check_strategy(strategy)
    if strategy == "mmap":
        return 0
    ranges = mapped_file_ranges(tensors)
    step = BLOCK_BYTES if strategy == "sequential" else RANGE_BYTES
    pieces = [
        (path, off, min(end, off + step))
        for path, spans in ranges.items()
        for begin, end in spans
        for off in range(begin, end, step)
    ]
    if not pieces:
        return 0
    local = threading.local()
    fds: dict[str, int] = {}
    try:
        for path in ranges:
            fds[path] = os.open(path, os.O_RDONLY)

        def read(piece: tuple[str, int, int]) -> int:
            path, begin, end = piece
            if not hasattr(local, "view"):
                local.view = memoryview(bytearray(step))
            try:
                _read_range(fds[path], local.view[: end - begin], 0, end - begin, file_offset=begin)
            except OSError as e:
                raise CheckpointError(f"{path}: cannot be read: {e}") from None
            return end - begin

        workers = 1 if strategy == "sequential" else max(1, readers)
        if workers == 1:
            return sum(read(piece) for piece in pieces)
        with ThreadPoolExecutor(workers, thread_name_prefix="mt-warm") as pool:
            return sum(pool.map(read, pieces))
    finally:
        for fd in fds.values():
            os.close(fd)


def owned_copy(tensor: torch.Tensor, *, device: str | torch.device, dtype: torch.dtype) -> torch.Tensor:
    """`tensor` cast to `dtype` on `device`, in storage of its own: a read buffer's (or a mapping's)
    view is copied even when neither the dtype nor the device changes, so the buffer can go."""
    out = tensor.to(device=device, dtype=dtype)
    if out.device.type == "cpu" and out.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr():
        out = out.clone()  # own, aligned storage: not a view into the file's buffer
    return out


def will_copy(tensor: torch.Tensor, dtype: torch.dtype, device: str | torch.device) -> bool:
    """Whether `tensor.to(device=device, dtype=dtype)` copies it (reads all of its bytes).

    A CPU tensor kept as it is stays a view of its mapped file, read page by page when touched
    (and never where it is not, e.g. the rows of T5's embedding no prompt uses), so warming it
    would read bytes for nothing.
    """
    return tensor.dtype != dtype or torch.device(device).type != tensor.device.type


def mapped_file_ranges(tensors: Iterable[torch.Tensor]) -> dict[str, list[tuple[int, int]]]:
    """{file: merged [begin, end) byte ranges} behind the tensors' storages, from /proc/self/maps."""
    storages: dict[int, int] = {}
    for tensor in tensors:
        if tensor.device.type == "cpu" and not tensor.is_meta:
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = max(storages.get(storage.data_ptr(), 0), storage.nbytes())
    mappings = _file_mappings() if storages else []
    starts = [m[0] for m in mappings]
    spans: dict[str, list[tuple[int, int]]] = {}
    for ptr, nbytes in storages.items():
        i = bisect_right(starts, ptr) - 1
        if i < 0 or nbytes == 0:
            continue
        start, end, offset, path = mappings[i]
        if ptr + nbytes > end:
            continue
        begin = offset + (ptr - start)
        spans.setdefault(path, []).append((begin, begin + nbytes))
    merged: dict[str, list[tuple[int, int]]] = {}
    for path, items in spans.items():
        out: list[tuple[int, int]] = []
        for begin, end in sorted(items):
            if out and begin <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], end))
            else:
                out.append((begin, end))
        merged[path] = out
    return merged


def _file_mappings() -> list[tuple[int, int, int, str]]:
    """(start, end, file offset, path) of this process's mappings of regular files, by start address."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:  # not Linux: nothing to warm; the loads read through their page faults
        return []
    found = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or not fields[5].startswith("/") or fields[4] == "0":
            continue
        path = fields[5]
        if path.endswith(" (deleted)"):
            continue
        begin, end = (int(x, 16) for x in fields[0].split("-"))
        found.append((begin, end, int(fields[2], 16), path))
    found.sort()
    # The kernel may list one mapping as several adjacent lines (split areas): joined back, so a
    # tensor that spans the seam is still found.
    joined: list[tuple[int, int, int, str]] = []
    for begin, end, offset, path in found:
        if joined:
            last_begin, last_end, last_offset, last_path = joined[-1]
            if last_path == path and last_end == begin and last_offset + (last_end - last_begin) == offset:
                joined[-1] = (last_begin, end, last_offset, path)
                continue
        joined.append((begin, end, offset, path))
    return joined


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
