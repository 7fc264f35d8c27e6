"""A writer process for the kill and concurrency tests: writes a target slowly through the volume.

    python -m mt_assets_tests.volume.slow_writer VOLUME TARGET --size N --fill BYTE [--delay S]
        [--no-wait] [--stale-after S] [--no-trust-local-pids]

Prints 'writing' once it holds the lock and the first chunk is staged, 'placed' on commit,
'busy' when --no-wait finds another writer.
"""

from __future__ import annotations

import argparse
import sys
import time

from mt_assets.volume import LocalVolume, WriterBusy


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("volume")
    p.add_argument("target")
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--fill", type=int, required=True)
    p.add_argument("--chunk", type=int, default=64 * 1024)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--no-wait", action="store_true")
    p.add_argument("--stale-after", type=float, default=120.0)
    p.add_argument("--no-trust-local-pids", action="store_true")
    a = p.parse_args()
    volume = LocalVolume(a.volume, lock_stale_after=a.stale_after, trust_local_pids=not a.no_trust_local_pids)
    chunk = bytes([a.fill]) * a.chunk
    try:
        with volume.writing(a.target, wait=not a.no_wait) as w:
            written = 0
            while written < a.size:
                n = min(a.chunk, a.size - written)
                w.write(chunk[:n])
                written += n
                if written == n:
                    print("writing", flush=True)
                time.sleep(a.delay)
            w.commit()
        print("placed", flush=True)
    except WriterBusy as e:
        print("busy", e, flush=True)
        sys.exit(3)


if __name__ == "__main__":
    main()
