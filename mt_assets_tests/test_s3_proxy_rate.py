"""The proxy's bandwidth limit (benchmarks/provision.py --rate): all connections together, not each."""

from __future__ import annotations

import threading
import time

from mt_assets_tests.s3_server import TokenBucket


def test_token_bucket_holds_the_aggregate_rate_across_threads() -> None:
    bucket = TokenBucket(20e6)  # 20 MB/s; a burst of 1 MB
    chunk, per_thread, threads = 256 * 1024, 12, 4  # 12.6 MB in all

    def pull() -> None:
        for _ in range(per_thread):
            bucket.take(chunk)

    started = time.monotonic()
    workers = [threading.Thread(target=pull) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.monotonic() - started
    expected = (chunk * per_thread * threads - bucket.burst) / bucket.rate
    assert expected * 0.95 <= elapsed <= expected * 2 + 0.5
