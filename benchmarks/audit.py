"""Benchmark `mt_assets.audit.audit` against `openssl dgst -sha256`, one file after another.

What it measures, on a synthetic volume (default: 200 files of ~10 MB, ~2 GB of random bytes
laid out as <volume>/models/<dir>/<path>, with a manifest pinning each file's size and sha256):

    raw read       every file read once, no hashing, one after another: the limit set by the
                   disk (page cache dropped) or by memory copies (warm); informational.
    baseline       `openssl dgst -sha256 <file>`, one subprocess per file, sequentially: what
                   an operator would do by hand to check the volume ("just hash everything").
    first audit    audit with an empty hash cache: reads and hashes every file, fills the cache.
    cached audit   audit again, nothing changed: only stats and hash-cache look-ups, no bytes
                   read. Median of several runs.   Goal: cached / baseline <= 0.02.
    full audit     audit(full=True, jobs=cpu count): ignores the cache and re-hashes every
                   file, several at once.           Goal: full / baseline <= 0.6 (0.5 is the
                   floor on 2 cores when hashing, not reading, is the bottleneck).
    CLI, cached    `mt-assets audit --manifest M --volume V --json` wall time, interpreter
                   start-up included; informational, not a ratio.

Why openssl is the baseline: it is the fastest widely available sha256 (SHA-NI/AVX2 assembly,
the same library hashlib calls into), so a ratio against it measures what the audit adds or
saves (the cache, the parallelism, Python's per-file costs) rather than the speed of a hash
implementation. The baseline also pays a process start-up per file (~3 ms here), as a hand-run
check would; below that, a full-pass ratio under 1 comes from hashing files in parallel.

Page cache: when this process may write /proc/sys/vm/drop_caches (root on a VM) the cache is
dropped before the baseline, the first audit and each full audit, so both sides read from disk
(`--page-cache drop`); otherwise every file is read once first and all timings are warm-cache
(`--page-cache warm`). The output says which.

Usage:
    .venv/bin/python benchmarks/audit.py                         # 200 x 10 MB, ~2 GB
    .venv/bin/python benchmarks/audit.py --files 20 --mb-per-file 2   # a quick check
The last line printed is `audit_cached_ratio=<x> audit_full_ratio=<y>`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from common import (  # benchmarks/common.py
    BenchmarkError,
    drop_page_cache,
    page_cache_mode,
    varied_payloads,
)

from mt_assets.audit import AuditReport, audit
from mt_assets.manifest import Manifest, load_manifest
from mt_assets.volume import LocalVolume
from mt_assets.volume.hashing import CHUNK_SIZE

FILES_PER_COMPONENT = 20
CACHED_GOAL = 0.02
FULL_GOAL = 0.6


@dataclass(frozen=True)
class Volume:
    root: Path
    manifest_path: Path
    manifest: Manifest
    paths: list[Path]
    total_bytes: int


# -- building the synthetic volume ---------------------------------------------------------


def build_volume(root: Path, files: int, mb_per_file: float, seed: int) -> Volume:
    """Write `files` files of ~`mb_per_file` MB under root/models/, and a manifest pinning them."""
    components: list[dict[str, object]] = []
    paths: list[Path] = []
    total = 0
    for index, data in enumerate(varied_payloads(files, mb_per_file, seed)):
        size = len(data)
        c_index, f_index = divmod(index, FILES_PER_COMPONENT)
        if f_index == 0:
            components.append(
                {
                    "name": f"bench-{c_index:03d}",
                    "repo": f"bench/component-{c_index:03d}",
                    "revision": hashlib.sha1(f"bench-{c_index}".encode()).hexdigest(),
                    "dir": f"component-{c_index:03d}",
                    "files": [],
                }
            )
        component = components[-1]
        rel = f"shard-{f_index:05d}.bin"
        path = root / "models" / str(component["dir"]) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as out:
            out.write(data)
        files_list = component["files"]
        assert isinstance(files_list, list)
        files_list.append(
            {"path": rel, "size": size, "sha256": hashlib.sha256(data).hexdigest(), "kind": "weights"}
        )
        paths.append(path)
        total += size
    manifest_path = root.parent / f"{root.name}-manifest.yaml"
    manifest_path.write_text(
        yaml.safe_dump({"profile": "bench-audit", "components": components}, sort_keys=False),
        encoding="utf-8",
    )
    os.sync()
    return Volume(root, manifest_path, load_manifest(manifest_path), paths, total)


# -- page cache ----------------------------------------------------------------------------


def prepare_page_cache(mode: str, paths: list[Path]) -> None:
    """Before a measurement that reads bytes: drop the page cache, or make sure it is warm."""
    if mode == "drop":
        drop_page_cache()
        return
    buffer = bytearray(CHUNK_SIZE)
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buffer):
                pass


# -- measurements --------------------------------------------------------------------------


def openssl_baseline(vol: Volume) -> float:
    """Seconds for `openssl dgst -sha256` over every file, one process after another."""
    expected = {str(vol.root / f.target): f.sha256 for f in vol.manifest.files}
    start = time.perf_counter()
    outputs = [
        subprocess.run(
            ["openssl", "dgst", "-sha256", str(p)], capture_output=True, text=True, check=True
        ).stdout
        for p in vol.paths
    ]
    elapsed = time.perf_counter() - start
    for path, out in zip(vol.paths, outputs, strict=True):
        if out.strip().rsplit(" ", 1)[-1] != expected[str(path)]:
            raise BenchmarkError(f"openssl: {path}: unexpected digest {out.strip()!r}")
    return elapsed


def raw_read(paths: list[Path]) -> float:
    """Seconds to read every file once, one after another, without hashing: the read limit."""
    buffer = bytearray(CHUNK_SIZE)
    start = time.perf_counter()
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buffer):
                pass
    return time.perf_counter() - start


def timed_audit(vol: Volume, *, full: bool, jobs: int) -> tuple[float, AuditReport]:
    volume = LocalVolume(vol.root)
    start = time.perf_counter()
    report = audit(vol.manifest, volume, full=full, jobs=jobs)
    elapsed = time.perf_counter() - start
    volume.hash_cache.close()
    return elapsed, report


def check_report(name: str, report: AuditReport, bytes_read: int) -> None:
    if not report.complete:
        raise BenchmarkError(f"{name}: audit not complete: {report.counts()}")
    if report.bytes_read != bytes_read:
        raise BenchmarkError(f"{name}: read {report.bytes_read} bytes, expected {bytes_read}")


def cli_audit(vol: Volume, cli: str) -> float:
    """Wall seconds of the `mt-assets audit --json` command (cached), start-up included."""
    start = time.perf_counter()
    proc = subprocess.run(
        [cli, "audit", "--manifest", str(vol.manifest_path), "--volume", str(vol.root), "--json"],
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise BenchmarkError(f"CLI audit: exit status {proc.returncode}: {proc.stderr.strip()[-500:]}")
    data = json.loads(proc.stdout)
    if not data["complete"] or data["bytes_read"] != 0:
        raise BenchmarkError(f"CLI audit: complete={data['complete']} bytes_read={data['bytes_read']}")
    return elapsed


# -- the run -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--files", type=int, default=200, help="number of files (default 200)")
    parser.add_argument("--mb-per-file", type=float, default=10.0, help="MiB per file, +-4 KiB (default 10)")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to make the temp volume (default: system temp)"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="threads for the full audit (default: cpu count)",
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="runs of the cached audit and the CLI (median)"
    )
    parser.add_argument(
        "--full-repeats", type=int, default=3, help="runs of the baseline and the full audit (median)"
    )
    parser.add_argument(
        "--page-cache",
        choices=("auto", "drop", "warm"),
        default="auto",
        help="auto: drop when /proc/sys/vm/drop_caches is writable, else warm",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> tuple[float, float]:
    mode = page_cache_mode(args.page_cache)
    cli = shutil.which("mt-assets", path=str(Path(sys.executable).parent)) or shutil.which("mt-assets")

    work = Path(tempfile.mkdtemp(prefix="mt-bench-audit-", dir=args.dir))
    try:
        t0 = time.perf_counter()
        vol = build_volume(work / "volume", args.files, args.mb_per_file, args.seed)
        build_s = time.perf_counter() - t0
        gb = vol.total_bytes / 1e9
        print(
            f"built {len(vol.paths)} files, {vol.total_bytes:,} bytes in {build_s:.1f} s under {work}",
            flush=True,
        )

        read_runs = []
        for _ in range(args.full_repeats):
            prepare_page_cache(mode, vol.paths)
            read_runs.append(raw_read(vol.paths))
        raw = statistics.median(read_runs)

        baseline_runs = []
        for _ in range(args.full_repeats):
            prepare_page_cache(mode, vol.paths)
            baseline_runs.append(openssl_baseline(vol))
        baseline = statistics.median(baseline_runs)

        prepare_page_cache(mode, vol.paths)
        first_s, report = timed_audit(vol, full=False, jobs=args.jobs)
        check_report("first audit", report, vol.total_bytes)

        cached_runs = []
        for _ in range(args.repeats):
            t, report = timed_audit(vol, full=False, jobs=args.jobs)
            check_report("cached audit", report, 0)
            cached_runs.append(t)
        cached = statistics.median(cached_runs)

        full_runs = []
        for _ in range(args.full_repeats):
            prepare_page_cache(mode, vol.paths)
            t, report = timed_audit(vol, full=True, jobs=args.jobs)
            check_report("full audit", report, vol.total_bytes)
            full_runs.append(t)
        full = statistics.median(full_runs)

        cli_runs = [cli_audit(vol, cli) for _ in range(args.repeats)] if cli else []
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    cached_ratio, full_ratio = cached / baseline, full / baseline
    openssl_version = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip()
    print()
    print("conditions")
    print(f"  cpus            {os.cpu_count()} ({platform.machine()}), full-audit jobs={args.jobs}")
    print(
        f"  files           {len(vol.paths)} x ~{args.mb_per_file:g} MiB = {vol.total_bytes:,} bytes ({gb:.2f} GB)"
    )
    print(
        f"  page cache      {'dropped before each reading measurement' if mode == 'drop' else 'warm (every file read first)'}"
    )
    print("  pins            sha256 only (the git blob id is computed only for files pinned by git_sha1)")
    print(f"  python          {platform.python_version()}, hashlib on {__import__('ssl').OPENSSL_VERSION}")
    print(f"  openssl         {openssl_version}")
    print(f"  volume          {work} (removed)" if not args.keep else f"  volume          {work}")
    print()

    def row(
        name: str, seconds: float, runs: list[float], ratio: float | None = None, reads: bool = True
    ) -> None:
        rate = f"{gb / seconds:6.2f}" if reads else "     -"
        r = f"{ratio:7.3f}" if ratio is not None else "      -"
        spread = ", ".join(f"{x:.3f}" for x in runs)
        print(f"  {name:<26} {seconds:9.3f} {rate:>8} {r:>8}   [{spread}]")

    print(f"  {'measurement':<26} {'seconds':>9} {'GB/s':>8} {'ratio':>8}   [runs]")
    row("raw read, sequential", raw, read_runs, raw / baseline)
    row("openssl dgst, sequential", baseline, baseline_runs, 1.0)
    row("first audit (empty cache)", first_s, [first_s], first_s / baseline)
    row("cached audit", cached, cached_runs, cached_ratio, reads=False)
    row(f"full audit (jobs={args.jobs})", full, full_runs, full_ratio)
    if cli_runs:
        row("CLI audit --json, cached", statistics.median(cli_runs), cli_runs, reads=False)
    else:
        print("  CLI audit: mt-assets not found on PATH, skipped")
    print()
    print(
        f"  goals: cached <= {CACHED_GOAL} {_verdict(cached_ratio <= CACHED_GOAL)}, "
        f"full <= {FULL_GOAL} {_verdict(full_ratio <= FULL_GOAL)}"
    )
    return cached_ratio, full_ratio


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cached_ratio, full_ratio = run(args)
    except BenchmarkError as e:
        print(f"benchmark aborted: {e}", file=sys.stderr)
        return 1
    print(f"audit_cached_ratio={cached_ratio:.3f} audit_full_ratio={full_ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
