"""Random payloads for the benchmarks: fast to make, each one different, reproducible from a seed."""

from __future__ import annotations

import random
from collections.abc import Iterator

MB = 1024 * 1024


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
