"""Benchmark fetching from an S3-compatible server: `S3Source` + verified commit vs boto3 `download_file`.

What it measures, against a real `moto_server` on loopback (default: 8 objects of 256 MiB, ~2 GB of
random bytes at s3://mt-bench/models/<dir>/<path>):

    baseline   boto3 `download_file` of every object into a temp folder, no verification: what a
               hand-written provisioning script does. Files run on a thread pool of --file-jobs;
               each download_file uses TransferConfig(multipart_chunksize=--chunk-mb,
               max_concurrency=--concurrency / --file-jobs), so at most --concurrency ranged GETs
               are in flight in all.
    ours       `S3Source(max_concurrency=--concurrency, chunk_size=--chunk-mb)` fetching every object
               into a fresh `LocalVolume` through `volume.writing(target, Expected(size, sha256))` and
               `commit()`: sha256 while writing, fsync, verify, rename, hash-cache row. Files on the
               same --file-jobs thread pool, as a provisioner runs them; the source's one thread pool
               caps ranged GETs in flight at --concurrency across files.
                                                Goal: ours / baseline <= 1.1.
    (info)     download_file, then fsync of each file: the baseline made as durable as ours, to
               show how much of the difference is the fsync rather than hashing (--no-fsync-row
               skips it).

Next to wall seconds the table shows the client's CPU seconds (user + system, all threads): steadier
than wall time on a busy machine, and where hashing shows up. The load average before and after is
printed with the conditions: on a shared machine it explains noisy runs.

Both sides use the same client settings (path-style, standard retries, checksums only when
required), the same chunk size, the same number of files at once and the same total number of
GETs in flight. Runs alternate (baseline, ours, baseline, ...); the table shows medians. Before
each run the destination is empty and `sync` has flushed the previous run's writes; with
`--page-cache drop` (auto: when /proc/sys/vm/drop_caches is writable) the page cache is dropped too,
which also evicts moto's copies of the objects (moto spools objects over ~5 MB to temp files).

moto reads the whole object for every GET, ranged or not, so small chunks measure moto, not the
client: 64 MiB chunks (the default here) keep that cost low; it is the same for both sides.

Usage:
    .venv/bin/python benchmarks/provision.py                           # 8 x 256 MiB, ~2 GB
    .venv/bin/python benchmarks/provision.py --files 4 --mb-per-file 16   # a quick check
    .venv/bin/python benchmarks/provision.py --rate 200 --files 4 --mb-per-file 128   # network-bound
The last line printed is `provision_s3_ratio=<x>`; with --rate MBPS, `provision_s3_ratio_at_rate=<x>`:
every download (both sides) then goes through the test suite's proxy (mt_assets_tests.s3_server
.FaultyProxy, run in a process of its own, as a network would be) limiting all connections together
to MBPS MB/s, as a real source is network-bound
(a few hundred MB/s per volume), so hashing on the client no longer competes with moto for the cores.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version
from multiprocessing.connection import Connection
from pathlib import Path

from boto3.s3.transfer import TransferConfig

# The loopback moto_server helpers live with the tests (mt_assets_tests is not installed).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import (  # benchmarks/common.py
    MB,
    BenchmarkError,
    drop_page_cache,
    page_cache_mode,
    varied_payloads,
)

from mt_assets.manifest import ManifestFile
from mt_assets.sources.s3 import S3Source
from mt_assets.volume import Expected, LocalVolume
from mt_assets_tests.s3_server import FaultyProxy, put_tree, s3_client, s3_server

BUCKET = "mt-bench"
PREFIX = "models"
GOAL = 1.1
GOAL_AT_RATE = 1.03  # network-bound (--rate): verification may cost at most 3%


@dataclass(frozen=True)
class Stored:
    files: list[ManifestFile]
    total_bytes: int


# -- the objects -----------------------------------------------------------------------------


def upload(endpoint: str, files: int, mb_per_file: float, seed: int) -> Stored:
    """Put `files` objects of ~`mb_per_file` MiB of random bytes; pin them in ManifestFiles."""
    pinned: list[ManifestFile] = []
    total = 0
    for index, view in enumerate(varied_payloads(files, mb_per_file, seed)):
        data = bytes(view)
        size = len(data)
        f = ManifestFile(
            component="bench",
            repo="bench/objects",
            revision=hashlib.sha1(b"bench").hexdigest(),
            dir="bench-objects",
            path=f"shard-{index:05d}.safetensors",
            kind="weights",
            size=size,
            sha256=hashlib.sha256(data).hexdigest(),
        )
        put_tree(endpoint, BUCKET, PREFIX, {f"{f.dir}/{f.path}": data})
        pinned.append(f)
        total += size
    return Stored(pinned, total)


# -- page cache ------------------------------------------------------------------------------


def settle(mode: str) -> None:
    """Before a run: flush the previous run's writes, and drop the page cache when asked."""
    if mode == "drop":
        drop_page_cache()
    else:
        os.sync()


# -- the two sides ---------------------------------------------------------------------------


def baseline_run(
    endpoint: str, stored: Stored, dest: Path, args: argparse.Namespace, *, fsync: bool = False
) -> float:
    """Seconds for boto3 download_file of every object (no verification); `fsync`: then fsync each."""
    per_file = max(1, args.concurrency // args.file_jobs)
    config = TransferConfig(
        multipart_threshold=args.chunk_mb * MB,
        multipart_chunksize=args.chunk_mb * MB,
        max_concurrency=per_file,
    )
    client = s3_client(endpoint, retries={"mode": "standard"}, max_pool_connections=args.concurrency + 16)
    dest.mkdir(parents=True)

    def one(f: ManifestFile) -> None:
        out = dest / f.dir / f.path
        out.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(BUCKET, f"{PREFIX}/{f.dir}/{f.path}", str(out), Config=config)
        if fsync:
            fd = os.open(out, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    start = time.perf_counter()
    with ThreadPoolExecutor(args.file_jobs) as pool:
        list(pool.map(one, stored.files))
    elapsed = time.perf_counter() - start
    client.close()
    for f in stored.files:
        got = (dest / f.dir / f.path).stat().st_size
        if got != f.size:
            raise BenchmarkError(f"baseline: {f.path} is {got} bytes, expected {f.size}")
    return elapsed


def ours_run(endpoint: str, stored: Stored, root: Path, args: argparse.Namespace) -> float:
    """Seconds for S3Source + LocalVolume.writing + commit (sha256 verified) of every object."""
    root.mkdir(parents=True)
    volume = LocalVolume(root)
    source = S3Source.from_uri(
        f"s3://{BUCKET}/{PREFIX}",
        endpoint_url=endpoint,
        max_concurrency=args.concurrency,
        chunk_size=args.chunk_mb * MB,
    )

    def one(f: ManifestFile) -> None:
        with volume.writing(f.target, Expected(size=f.size, sha256=f.sha256)) as w:
            source.fetch(f, w, lambda n: None)
            w.commit()

    start = time.perf_counter()
    with ThreadPoolExecutor(args.file_jobs) as pool:
        list(pool.map(one, stored.files))
    elapsed = time.perf_counter() - start
    source.close()
    volume.hash_cache.close()
    for f in stored.files:
        if (root / f.target).stat().st_size != f.size:
            raise BenchmarkError(f"ours: {f.target} has the wrong size")
    return elapsed


# -- the run ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--files", type=int, default=8, help="number of objects (default 8)")
    parser.add_argument(
        "--mb-per-file", type=float, default=256.0, help="MiB per object, +-4 KiB (default 256)"
    )
    parser.add_argument(
        "--chunk-mb", type=int, default=64, help="ranged-GET size in MiB, both sides (default 64)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=8, help="ranged GETs in flight in all, both sides (default 8)"
    )
    parser.add_argument(
        "--file-jobs", type=int, default=4, help="files fetched at once, both sides (default 4)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side, alternating (median)")
    parser.add_argument(
        "--page-cache",
        choices=("auto", "drop", "warm"),
        default="auto",
        help="auto: drop before each run when /proc/sys/vm/drop_caches is writable, else warm",
    )
    parser.add_argument("--dir", type=Path, default=None, help="where to download (default: system temp)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        metavar="MBPS",
        help="limit downloads to MBPS MB/s in all (a token-bucket proxy in front of moto), as a network-bound "
        "source is; the last line is then provision_s3_ratio_at_rate (goal <= 1.03)",
    )
    parser.add_argument(
        "--no-fsync-row",
        action="store_true",
        help="skip the informational download_file + fsync runs",
    )
    return parser.parse_args(argv)


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process (all its threads) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextlib.contextmanager
def rate_limit(endpoint: str, bytes_per_s: float) -> Iterator[str]:
    """The token-bucket proxy in front of `endpoint`, in a process of its own; yields its URL.

    Its own process, as a real network is: in this one it would relay every byte under the
    benchmark's GIL and bill its CPU to the client being measured.
    """
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_serve_rate_limit, args=(endpoint, bytes_per_s, child), daemon=True)
    process.start()
    child.close()
    try:
        if not parent.poll(30):
            raise BenchmarkError("the rate-limiting proxy did not start within 30 s")
        yield parent.recv()
    finally:
        parent.close()  # the proxy process stops when its end of the pipe closes
        process.join(10)
        if process.is_alive():
            process.kill()


def _serve_rate_limit(endpoint: str, bytes_per_s: float, conn: Connection) -> None:
    proxy = FaultyProxy(endpoint, rate_bytes_per_s=bytes_per_s).start()
    conn.send(proxy.url)
    with contextlib.suppress(EOFError):
        conn.recv()
    proxy.stop()


def moto_peak_rss(endpoint: str) -> int | None:
    """Peak RSS in bytes of the moto_server process listening on the endpoint's port, if found."""
    port = endpoint.rsplit(":", 1)[1]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            if not any(b"moto" in part for part in cmdline) or port.encode() not in cmdline:
                continue
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            continue
    return None


def run(args: argparse.Namespace) -> float:
    mode = page_cache_mode(args.page_cache)
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        os.environ.pop(name, None)
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1"
    )

    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="mt-bench-provision-", dir=args.dir))
    sides: list[tuple[str, Callable[..., float]]] = [
        ("baseline", baseline_run),
        ("ours", ours_run),
    ]
    if not args.no_fsync_row:
        sides.append(("baseline+fsync", lambda *a: baseline_run(*a, fsync=True)))
    runs: dict[str, list[float]] = {name: [] for name, _ in sides}
    cpu: dict[str, list[float]] = {name: [] for name, _ in sides}
    try:
        with contextlib.ExitStack() as stack:
            endpoint = stack.enter_context(s3_server())
            t0 = time.perf_counter()
            stored = upload(endpoint, args.files, args.mb_per_file, args.seed)
            upload_s = time.perf_counter() - t0
            gb = stored.total_bytes / 1e9
            print(
                f"uploaded {len(stored.files)} objects, {stored.total_bytes:,} bytes in {upload_s:.1f} s "
                f"to moto_server at {endpoint}",
                flush=True,
            )
            limiter = rate_limit(endpoint, args.rate * 1e6) if args.rate else contextlib.nullcontext()
            proxy_url = stack.enter_context(limiter)
            source_url = proxy_url or endpoint
            if proxy_url:
                print(f"downloads through a {args.rate:g} MB/s limit at {proxy_url}", flush=True)
            for i in range(args.repeats):
                for name, fn in sides:
                    dest = work / f"{name}-{i}"
                    settle(mode)
                    cpu_before = _cpu_seconds()
                    seconds = fn(source_url, stored, dest, args)
                    cpu[name].append(_cpu_seconds() - cpu_before)
                    runs[name].append(seconds)
                    print(
                        f"  run {i + 1} {name:<14} {seconds:7.2f} s  {gb / seconds:5.2f} GB/s  "
                        f"client cpu {cpu[name][-1]:6.2f} s",
                        flush=True,
                    )
                    shutil.rmtree(dest)
            moto_rss = moto_peak_rss(endpoint)
            load_after = os.getloadavg()[0]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    baseline = statistics.median(runs["baseline"])
    ours = statistics.median(runs["ours"])
    ratio = ours / baseline
    own_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    per_file = max(1, args.concurrency // args.file_jobs)
    mem_total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    print()
    print("conditions")
    print(f"  cpus            {os.cpu_count()} ({platform.machine()}), memory {mem_total / 2**30:.1f} GiB")
    print(f"  load average    {load_before:.2f} before, {load_after:.2f} after (1 min)")
    print(
        f"  objects         {len(stored.files)} x ~{args.mb_per_file:g} MiB = {stored.total_bytes:,} bytes "
        f"({gb:.2f} GB)"
    )
    print(f"  server          moto_server {version('moto')} on 127.0.0.1 (one process, threaded werkzeug)")
    print(
        f"  client          boto3 {version('boto3')}, botocore {version('botocore')}, "
        f"s3transfer {version('s3transfer')}, python {platform.python_version()}"
    )
    print(
        f"  transfer        {args.chunk_mb} MiB ranges, <= {args.concurrency} GETs in flight, "
        f"{args.file_jobs} files at once (baseline: max_concurrency={per_file} per download_file)"
    )
    print(
        f"  page cache      {'dropped before each run' if mode == 'drop' else 'warm (objects in page cache)'}"
        "; sync before each run"
    )
    print(f"  destination     {work} (removed), the same disk for every side")
    print(
        f"  peak RSS        moto_server {moto_rss / 1e9:.2f} GB, benchmark process {own_rss / 1e9:.2f} GB"
        if moto_rss is not None
        else f"  peak RSS        benchmark process {own_rss / 1e9:.2f} GB"
    )
    print()

    def row(name: str, key: str) -> None:
        seconds = statistics.median(runs[key])
        spread = ", ".join(f"{x:.2f}" for x in runs[key])
        print(
            f"  {name:<44} {seconds:8.2f} {gb / seconds:7.2f} {seconds / baseline:7.3f} "
            f"{statistics.median(cpu[key]):8.2f}   [{spread}]"
        )

    print(f"  {'measurement':<44} {'seconds':>8} {'GB/s':>7} {'ratio':>7} {'cpu s':>8}   [runs]")
    row("boto3 download_file, no verification", "baseline")
    row("S3Source + writing/commit (sha256, fsync)", "ours")
    if "baseline+fsync" in runs:
        row("  (info) download_file, then fsync each file", "baseline+fsync")
    print()
    goal = GOAL_AT_RATE if args.rate else GOAL
    print(f"  goal: ours / baseline <= {goal} {'met' if ratio <= goal else 'MISSED'}")
    return ratio


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.file_jobs < 1 or args.concurrency < 1 or args.chunk_mb < 1 or args.repeats < 1:
        print("benchmark: --file-jobs, --concurrency, --chunk-mb and --repeats must be >= 1", file=sys.stderr)
        return 2
    try:
        ratio = run(args)
    except BenchmarkError as e:
        print(f"benchmark aborted: {e}", file=sys.stderr)
        return 1
    print(f"provision_s3_ratio_at_rate={ratio:.3f}" if args.rate else f"provision_s3_ratio={ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
