"""Benchmark fetching from an S3-compatible server: `S3Source` + verified commit vs boto3 `download_file`;
with --to-s3, the other direction: provisioning onto an S3 volume vs boto3 `upload_file`.

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

--to-s3 (issue 23), from a local mirror folder of the same payloads (<mirror>/<dir>/<path>):

    baseline   boto3 `upload_file` of every file to s3://mt-bench/baseline-<run>/models/<dir>/<path>, no
               verification: files on --file-jobs threads, TransferConfig(multipart_threshold =
               multipart_chunksize = --chunk-mb, max_concurrency=--concurrency / --file-jobs).
    ours       `provision.plan` + `provision.apply(MirrorSource(mirror), S3Volume(...))` onto
               s3://mt-bench/ours-<run>: what `mt-assets provision --volume s3://...` does (listing, the
               conditional-writes probe, locks, sha256 while sending --chunk-mb parts,
               --concurrency / --file-jobs in flight per file, Complete only on a match, the hash record,
               the closing audit). Goal: ours / baseline <= 1.15 (<= 1.03 with --rate, which then limits
               uploads as well as downloads). Each run's prefix is emptied afterwards, untimed.

Usage:
    .venv/bin/python benchmarks/provision.py                           # 8 x 256 MiB, ~2 GB
    .venv/bin/python benchmarks/provision.py --files 4 --mb-per-file 16   # a quick check
    .venv/bin/python benchmarks/provision.py --rate 200 --files 4 --mb-per-file 128   # network-bound
    .venv/bin/python benchmarks/provision.py --to-s3 --files 4 --mb-per-file 128   # onto an S3 volume
The last line printed is `provision_s3_ratio=<x>` (--to-s3: `provision_to_s3_ratio=<x>`); with --rate
MBPS, `provision_s3_ratio_at_rate=<x>` (`provision_to_s3_ratio_at_rate=<x>`):
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

import yaml
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

from mt_assets.manifest import Manifest, ManifestFile, parse_manifest
from mt_assets.sources.s3 import S3Source
from mt_assets.volume import Expected, LocalVolume
from mt_assets.volume.s3_upload import DEFAULT_MULTIPART_THRESHOLD, DEFAULT_SPOOL_MEMORY
from mt_assets_tests.s3_server import FaultyProxy, put_tree, s3_client, s3_server

BUCKET = "mt-bench"
PREFIX = "models"
GOAL = 1.1
GOAL_AT_RATE = 1.03  # network-bound (--rate): verification may cost at most 3%
GOAL_TO_S3 = 1.15  # --to-s3 against moto, which is CPU-bound on 2 cores (issue 23)
GOAL_TO_S3_AT_RATE = 1.03


@dataclass(frozen=True)
class Stored:
    files: list[ManifestFile]
    total_bytes: int


# -- the objects -----------------------------------------------------------------------------


def pinned_payloads(files: int, mb_per_file: float, seed: int) -> Iterator[tuple[ManifestFile, memoryview]]:
    """`files` payloads of ~`mb_per_file` MiB of random bytes, each pinned in a ManifestFile (each view
    is valid until the next one is produced)."""
    for index, view in enumerate(varied_payloads(files, mb_per_file, seed)):
        yield (
            ManifestFile(
                component="bench",
                repo="bench/objects",
                revision=hashlib.sha1(b"bench").hexdigest(),
                dir="bench-objects",
                path=f"shard-{index:05d}.safetensors",
                kind="weights",
                size=len(view),
                sha256=hashlib.sha256(view).hexdigest(),
            ),
            view,
        )


def upload(endpoint: str, files: int, mb_per_file: float, seed: int) -> Stored:
    """Put `files` objects of ~`mb_per_file` MiB of random bytes; pin them in ManifestFiles."""
    pinned: list[ManifestFile] = []
    for f, view in pinned_payloads(files, mb_per_file, seed):
        put_tree(endpoint, BUCKET, PREFIX, {f"{f.dir}/{f.path}": bytes(view)})
        pinned.append(f)
    return Stored(pinned, sum(f.size or 0 for f in pinned))


def write_mirror(root: Path, files: int, mb_per_file: float, seed: int) -> Stored:
    """The same payloads as files of a local mirror, <root>/<dir>/<path> (MirrorSource's layout)."""
    pinned: list[ManifestFile] = []
    for f, view in pinned_payloads(files, mb_per_file, seed):
        out = root / f.dir / f.path
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(view)
        pinned.append(f)
    return Stored(pinned, sum(f.size or 0 for f in pinned))


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


# -- the other direction: onto an S3 volume (--to-s3) ---------------------------------------


def bench_manifest(stored: Stored) -> Manifest:
    """A manifest pinning the stored files (one component), as `mt-assets provision` reads one."""
    first = stored.files[0]
    doc = {
        "profile": "bench",
        "components": [
            {
                "name": first.component,
                "repo": first.repo,
                "revision": first.revision,
                "dir": first.dir,
                "files": [
                    {"path": f.path, "kind": f.kind, "size": f.size, "sha256": f.sha256} for f in stored.files
                ],
            }
        ],
    }
    return parse_manifest(yaml.safe_dump(doc, sort_keys=False), "benchmarks/provision.py --to-s3")


def empty_prefix(endpoint: str, prefix: str) -> None:
    """Remove every object and multipart upload under `prefix` (between runs, untimed)."""
    client = s3_client(endpoint)
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
            for o in page.get("Contents", []):
                client.delete_object(Bucket=BUCKET, Key=o["Key"])
        for u in client.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix + "/").get("Uploads", []):
            client.abort_multipart_upload(Bucket=BUCKET, Key=u["Key"], UploadId=u["UploadId"])
    finally:
        client.close()


def check_uploaded(endpoint: str, prefix: str, stored: Stored, side: str) -> None:
    client = s3_client(endpoint)
    try:
        for f in stored.files:
            size = client.head_object(Bucket=BUCKET, Key=f"{prefix}/models/{f.dir}/{f.path}")["ContentLength"]
            if size != f.size:
                raise BenchmarkError(
                    f"{side}: {f.dir}/{f.path} is {size} bytes on the volume, expected {f.size}"
                )
    finally:
        client.close()


def baseline_to_s3(
    endpoint: str, stored: Stored, mirror: Path, prefix: str, args: argparse.Namespace
) -> float:
    """Seconds for boto3 upload_file of every mirror file to <prefix>/models/<dir>/<path> (no verification)."""
    per_file = max(1, args.concurrency // args.file_jobs)
    config = TransferConfig(
        multipart_threshold=args.chunk_mb * MB,
        multipart_chunksize=args.chunk_mb * MB,
        max_concurrency=per_file,
    )
    client = s3_client(endpoint, retries={"mode": "standard"}, max_pool_connections=args.concurrency + 16)

    def one(f: ManifestFile) -> None:
        key = f"{prefix}/models/{f.dir}/{f.path}"
        client.upload_file(str(mirror / f.dir / f.path), BUCKET, key, Config=config)

    start = time.perf_counter()
    with ThreadPoolExecutor(args.file_jobs) as pool:
        list(pool.map(one, stored.files))
    elapsed = time.perf_counter() - start
    client.close()
    check_uploaded(endpoint, prefix, stored, "baseline")
    return elapsed


def ours_to_s3(
    endpoint: str, manifest: Manifest, stored: Stored, mirror: Path, prefix: str, args: argparse.Namespace
) -> float:
    """Seconds for `mt-assets provision --source <mirror> --volume s3://<bucket>/<prefix>` in-process: plan
    (a listing), every file uploaded with its sha256 computed while sending and completed only on a match
    with the pin, the hash record written, then the closing audit."""
    from mt_assets import config, provision
    from mt_assets.sources.mirror import MirrorSource
    from mt_assets.volume.s3 import S3Volume

    per_file = max(1, args.concurrency // args.file_jobs)
    env = {
        "MT_VOLUME_S3_ENDPOINT": endpoint,
        "MT_VOLUME_S3_ACCESS_KEY_ID": "testing",
        "MT_VOLUME_S3_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
    }
    start = time.perf_counter()
    volume = S3Volume(
        BUCKET,
        prefix,
        s3=config.volume_s3_client(env, max_pool_connections=args.concurrency + 16, tcp_keepalive=True),
        part_size=args.chunk_mb * MB,
        # The provisioner's own rule (s3_upload.py): PutObject below RunPod's 500 MB limit (the file
        # spooled while hashed), multipart from it; --multipart-from-mb overrides it.
        **({"multipart_threshold": args.multipart_from_mb * MB} if args.multipart_from_mb else {}),
        parts_in_flight=per_file,
    )
    try:
        the_plan = provision.plan(manifest, volume)
        report = provision.apply(the_plan, MirrorSource(mirror), volume, jobs=args.file_jobs)
    finally:
        volume.close()
    elapsed = time.perf_counter() - start
    assert report.audit is not None
    if not report.audit.complete:
        failed = [r.detail for r in report.results if r.outcome == "failed"]
        raise BenchmarkError(f"ours: the volume is not complete after provisioning: {failed[:3]}")
    check_uploaded(endpoint, prefix, stored, "ours")
    return elapsed


def run_to_s3(args: argparse.Namespace) -> float:
    mode = page_cache_mode(args.page_cache)
    _aws_test_env()
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="mt-bench-provision-to-s3-", dir=args.dir))
    try:
        with contextlib.ExitStack() as stack:
            mirror = work / "mirror"
            stored = write_mirror(mirror, args.files, args.mb_per_file, args.seed)
            manifest = bench_manifest(stored)
            endpoint = stack.enter_context(s3_server())
            put_tree(endpoint, BUCKET, "", {})
            print(
                f"mirror of {len(stored.files)} files, {stored.total_bytes:,} bytes in {mirror}", flush=True
            )
            limiter = rate_limit(endpoint, args.rate * 1e6) if args.rate else contextlib.nullcontext()
            proxy_url = stack.enter_context(limiter)
            volume_url = proxy_url or endpoint
            if proxy_url:
                print(f"uploads through a {args.rate:g} MB/s limit at {proxy_url}", flush=True)

            def baseline(i: int) -> float:
                try:
                    return baseline_to_s3(volume_url, stored, mirror, f"baseline-{i}", args)
                finally:
                    empty_prefix(endpoint, f"baseline-{i}")

            def ours(i: int) -> float:
                try:
                    return ours_to_s3(volume_url, manifest, stored, mirror, f"ours-{i}", args)
                finally:
                    empty_prefix(endpoint, f"ours-{i}")

            measured = alternate(
                [("baseline", baseline), ("ours", ours)], args.repeats, mode, stored.total_bytes / 1e9
            )
            moto_rss = moto_peak_rss(endpoint)
            load_after = os.getloadavg()[0]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    per_file = max(1, args.concurrency // args.file_jobs)
    below = (
        f"{args.multipart_from_mb} MiB"
        if args.multipart_from_mb
        else f"{DEFAULT_MULTIPART_THRESHOLD / 1e6:g} MB"
    )
    ours_rule = (
        f"PutObject below {below} (spooled, {DEFAULT_SPOOL_MEMORY // MB} MiB in memory), "
        f"{args.chunk_mb} MiB parts from it, <= {per_file} parts in flight per file"
    )
    return print_report(
        measured,
        [
            ("boto3 upload_file, no verification", "baseline"),
            ("provision onto S3Volume (sha256, pin, audit)", "ours"),
        ],
        stored=stored,
        args=args,
        mode=mode,
        load=(load_before, load_after),
        moto_rss=moto_rss,
        transfer=f"ours: {ours_rule}; {args.file_jobs} files at once (baseline: upload_file of "
        f"{args.chunk_mb} MiB parts from {args.chunk_mb} MiB, max_concurrency={per_file})",
        destination=f"source          {mirror} (removed): a local mirror folder, the same files for both sides",
        goal=GOAL_TO_S3_AT_RATE if args.rate else GOAL_TO_S3,
    )


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
        "--to-s3",
        action="store_true",
        help="the other direction: provisioning from a local mirror onto an S3 volume (S3Volume) vs boto3 "
        "upload_file of the same files; the last line is provision_to_s3_ratio (goal <= 1.15; with --rate, "
        "provision_to_s3_ratio_at_rate, goal <= 1.03)",
    )
    parser.add_argument(
        "--multipart-from-mb",
        type=int,
        default=None,
        help="--to-s3: ours sends files of this many MiB or more as multipart uploads (default: the "
        "provisioner's own threshold, RunPod's 500 MB PutObject limit)",
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


def _aws_test_env() -> None:
    """moto's dummy credentials, and nothing from the caller's AWS_* endpoint or profile."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        os.environ.pop(name, None)
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1"
    )


@dataclass
class Measured:
    """Seconds and client CPU seconds of each side's runs, in the order they ran."""

    runs: dict[str, list[float]]
    cpu: dict[str, list[float]]


def alternate(
    sides: list[tuple[str, Callable[[int], float]]], repeats: int, mode: str, gb: float
) -> Measured:
    """Run the sides in turn (baseline, ours, baseline, ...) `repeats` times; each gets the run index."""
    measured = Measured({name: [] for name, _ in sides}, {name: [] for name, _ in sides})
    for i in range(repeats):
        for name, fn in sides:
            settle(mode)
            cpu_before = _cpu_seconds()
            seconds = fn(i)
            measured.cpu[name].append(_cpu_seconds() - cpu_before)
            measured.runs[name].append(seconds)
            print(
                f"  run {i + 1} {name:<14} {seconds:7.2f} s  {gb / seconds:5.2f} GB/s  "
                f"client cpu {measured.cpu[name][-1]:6.2f} s",
                flush=True,
            )
    return measured


def print_report(
    measured: Measured,
    rows: list[tuple[str, str]],
    *,
    stored: Stored,
    args: argparse.Namespace,
    mode: str,
    load: tuple[float, float],
    moto_rss: int | None,
    transfer: str,
    destination: str,
    goal: float,
) -> float:
    """The conditions, then one row per side (median seconds, GB/s, ratio to the first row); the ratio
    of the second row to the first."""
    runs, cpu = measured.runs, measured.cpu
    gb = stored.total_bytes / 1e9
    baseline_key, ours_key = rows[0][1], rows[1][1]
    baseline = statistics.median(runs[baseline_key])
    ratio = statistics.median(runs[ours_key]) / baseline
    own_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    mem_total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    print()
    print("conditions")
    print(f"  cpus            {os.cpu_count()} ({platform.machine()}), memory {mem_total / 2**30:.1f} GiB")
    print(f"  load average    {load[0]:.2f} before, {load[1]:.2f} after (1 min)")
    print(
        f"  objects         {len(stored.files)} x ~{args.mb_per_file:g} MiB = {stored.total_bytes:,} bytes "
        f"({gb:.2f} GB)"
    )
    print(f"  server          moto_server {version('moto')} on 127.0.0.1 (one process, threaded werkzeug)")
    print(
        f"  client          boto3 {version('boto3')}, botocore {version('botocore')}, "
        f"s3transfer {version('s3transfer')}, python {platform.python_version()}"
    )
    print(f"  transfer        {transfer}")
    if args.rate:
        print(
            f"  network         {args.rate:g} MB/s in all, both directions (token-bucket proxy in its own process)"
        )
    print(
        f"  page cache      {'dropped before each run' if mode == 'drop' else 'warm (objects in page cache)'}"
        "; sync before each run"
    )
    print(f"  {destination}")
    print(
        f"  peak RSS        moto_server {moto_rss / 1e9:.2f} GB, benchmark process {own_rss / 1e9:.2f} GB"
        if moto_rss is not None
        else f"  peak RSS        benchmark process {own_rss / 1e9:.2f} GB"
    )
    print()
    print(f"  {'measurement':<44} {'seconds':>8} {'GB/s':>7} {'ratio':>7} {'cpu s':>8}   [runs]")
    for name, key in rows:
        if key not in runs:
            continue
        seconds = statistics.median(runs[key])
        spread = ", ".join(f"{x:.2f}" for x in runs[key])
        print(
            f"  {name:<44} {seconds:8.2f} {gb / seconds:7.2f} {seconds / baseline:7.3f} "
            f"{statistics.median(cpu[key]):8.2f}   [{spread}]"
        )
    print()
    print(f"  goal: ours / baseline <= {goal} {'met' if ratio <= goal else 'MISSED'}")
    return ratio


def run(args: argparse.Namespace) -> float:
    mode = page_cache_mode(args.page_cache)
    _aws_test_env()
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="mt-bench-provision-", dir=args.dir))
    try:
        with contextlib.ExitStack() as stack:
            endpoint = stack.enter_context(s3_server())
            t0 = time.perf_counter()
            stored = upload(endpoint, args.files, args.mb_per_file, args.seed)
            upload_s = time.perf_counter() - t0
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

            def side(fn: Callable[..., float], name: str, **kw: bool) -> Callable[[int], float]:
                def once(i: int) -> float:
                    dest = work / f"{name}-{i}"
                    try:
                        return fn(source_url, stored, dest, args, **kw)
                    finally:
                        shutil.rmtree(dest, ignore_errors=True)

                return once

            sides = [("baseline", side(baseline_run, "baseline")), ("ours", side(ours_run, "ours"))]
            if not args.no_fsync_row:
                sides.append(("baseline+fsync", side(baseline_run, "baseline+fsync", fsync=True)))
            measured = alternate(sides, args.repeats, mode, stored.total_bytes / 1e9)
            moto_rss = moto_peak_rss(endpoint)
            load_after = os.getloadavg()[0]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    per_file = max(1, args.concurrency // args.file_jobs)
    return print_report(
        measured,
        [
            ("boto3 download_file, no verification", "baseline"),
            ("S3Source + writing/commit (sha256, fsync)", "ours"),
            ("  (info) download_file, then fsync each file", "baseline+fsync"),
        ],
        stored=stored,
        args=args,
        mode=mode,
        load=(load_before, load_after),
        moto_rss=moto_rss,
        transfer=f"{args.chunk_mb} MiB ranges, <= {args.concurrency} GETs in flight, {args.file_jobs} files at "
        f"once (baseline: max_concurrency={per_file} per download_file)",
        destination=f"destination     {work} (removed), the same disk for every side",
        goal=GOAL_AT_RATE if args.rate else GOAL,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.file_jobs < 1 or args.concurrency < 1 or args.chunk_mb < 1 or args.repeats < 1:
        print("benchmark: --file-jobs, --concurrency, --chunk-mb and --repeats must be >= 1", file=sys.stderr)
        return 2
    try:
        ratio = run_to_s3(args) if args.to_s3 else run(args)
    except BenchmarkError as e:
        print(f"benchmark aborted: {e}", file=sys.stderr)
        return 1
    name = "provision_to_s3_ratio" if args.to_s3 else "provision_s3_ratio"
    print(f"{name}_at_rate={ratio:.3f}" if args.rate else f"{name}={ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
