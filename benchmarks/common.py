"""What the benchmarks share: random payloads (fast, each different, reproducible from a seed) and
the page cache (dropped when this process may, so reads measure the disk)."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

MB = 1024 * 1024
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def varied_payloads(count: int, mb_each: float, seed: int) -> Iterator[memoryview]:
    """`count` payloads of ~`mb_each` MiB (±4 KiB): one block of random bytes, a few bytes changed
    per payload, so making 2 GB takes seconds and no two payloads (or hashes) are alike.

    Each view is only valid until the next one is produced (they share one buffer).
    """
    rng = random.Random(seed)
    base_size = max(int(mb_each * MB), 64)
    jitter = min(4096, base_size // 8)
    n = base_size + jitter
    block = bytearray(b"".join(rng.randbytes(min(16 * MB, n - i)) for i in range(0, n, 16 * MB)))
    for index in range(count):
        size = base_size + rng.randint(-jitter, jitter)
        for _ in range(8):
            block[rng.randrange(size)] = rng.randrange(256)
        block[0:8] = index.to_bytes(8, "little")
        yield memoryview(block)[:size]


def drop_page_cache() -> None:
    """Flush dirty pages, then drop the page cache (root on a VM); OSError where not allowed."""
    os.sync()
    DROP_CACHES.write_text("3\n")


class BenchmarkError(RuntimeError):
    """The benchmark cannot give a trustworthy figure; the message says why."""


def page_cache_mode(asked: str) -> str:
    """`auto` | `drop` | `warm` as asked -> `drop` or `warm`, as this process is allowed."""
    if asked == "warm":
        return "warm"
    try:
        drop_page_cache()
    except OSError:
        if asked == "drop":
            raise BenchmarkError(f"--page-cache drop: cannot write {DROP_CACHES}") from None
        return "warm"
    return "drop"
