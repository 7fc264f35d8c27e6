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

Many small files (`--entries N`, issue 20): a manifest of N entries of 16-80 bytes each, 1,000
per component in folders of 100, pinned by size and sha256. The first audit fills the hash cache;
then, with the cache warm:

    sha256sum -c   `sha256sum --quiet -c` of a list of every file and its sha256, one process:
                   what an operator would do by hand (baseline; it reads every byte, which for
                   files this small costs about what a stat does).
    find           `find <volume>/models -type f` printing each file's size and inode: one stat
                   per file and nothing else, the floor of any audit; informational.
    CLI audit      `mt-assets audit --manifest M --volume V --json > /dev/null` wall time, start-up
                   included, and the command's peak RSS (VmHWM): the figure, median of --repeats.
                   Goal at 100,000 entries: under 60 s on 2 cores.
    in-process     where the CLI's time goes: load_manifest, audit, the JSON report; informational.

Usage:
    .venv/bin/python benchmarks/audit.py                         # 200 x 10 MB, ~2 GB
    .venv/bin/python benchmarks/audit.py --files 20 --mb-per-file 2   # a quick check
    .venv/bin/python benchmarks/audit.py --entries 100000        # 100,000 small files, warm cache
The last line printed is `audit_cached_ratio=<x> audit_full_ratio=<y>`, or with `--entries`
`audit_<N>_seconds=<s> audit_<N>_peak_mb=<m> audit_<N>_ratio=<r>` (N as 100k, 1m, ...).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import re
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


# -- many small files (--entries) ----------------------------------------------------------

ENTRIES_PER_COMPONENT = 1000
ENTRIES_PER_FOLDER = 100
ENTRIES_GOALS = {100_000: 60.0}  # seconds of the CLI audit, warm cache (issue 20)

# The CLI in a child that writes its own peak RSS (VmHWM, KiB) to $AUDIT_BENCH_PEAK_FILE on the way out: a
# child's ru_maxrss would carry this process's memory into it across the fork and exec.
CLI_WITH_PEAK = """
import atexit, os, sys

def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            with open(os.environ["AUDIT_BENCH_PEAK_FILE"], "w") as f:
                f.write(line.split()[1])

atexit.register(peak)
sys.argv[0] = "mt-assets"
from mt_assets.cli import main

main()
"""


@dataclass(frozen=True)
class SmallFiles:
    root: Path
    manifest_path: Path
    checklist: Path  # `sha256sum -c` input: "<sha256>  <path>" per file
    entries: int
    total_bytes: int


def build_small_files(work: Path, entries: int, seed: int) -> SmallFiles:
    """`entries` files of 16-80 bytes under work/volume/models/, their manifest and checklist.

    The manifest is written line by line in the layout yaml.safe_dump gives (a dumper takes
    minutes at a million entries).
    """
    root = work / "volume"
    manifest_path = work / "manifest.yaml"
    checklist = work / "checklist.sha256"
    rng = random.Random(seed)
    total = 0
    with open(manifest_path, "w", encoding="utf-8") as m, open(checklist, "w", encoding="utf-8") as c:
        m.write("profile: bench-audit-entries\ncomponents:\n")
        for index in range(entries):
            c_index, f_index = divmod(index, ENTRIES_PER_COMPONENT)
            directory = f"component-{c_index:05d}"
            if f_index == 0:
                revision = hashlib.sha1(f"bench-{c_index}".encode()).hexdigest()
                m.write(
                    f"- name: bench-{c_index:05d}\n  repo: bench/{directory}\n  revision: {revision}\n"
                    f"  dir: {directory}\n  files:\n"
                )
            rel = f"part-{f_index // ENTRIES_PER_FOLDER:02d}/file-{f_index:04d}.json"
            path = root / "models" / directory / rel
            if f_index % ENTRIES_PER_FOLDER == 0:
                path.parent.mkdir(parents=True, exist_ok=True)
            data = f'{{"index": {index}, "pad": "{"x" * rng.randrange(48)}"}}\n'.encode()
            path.write_bytes(data)
            sha256 = hashlib.sha256(data).hexdigest()
            m.write(f"  - path: {rel}\n    size: {len(data)}\n    sha256: {sha256}\n    kind: config\n")
            c.write(f"{sha256}  {path}\n")
            total += len(data)
    return SmallFiles(root, manifest_path, checklist, entries, total)


def sha256sum_check(small: SmallFiles) -> float:
    """Seconds for `sha256sum --quiet -c` over every file (one process): the by-hand check."""
    start = time.perf_counter()
    proc = subprocess.run(
        ["sha256sum", "--quiet", "-c", str(small.checklist)], capture_output=True, text=True
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise BenchmarkError(
            f"sha256sum -c: exit status {proc.returncode}: {proc.stdout[-300:]}{proc.stderr[-300:]}"
        )
    return elapsed


def find_stat(small: SmallFiles) -> float:
    """Seconds for `find` to stat every file (size and inode printed, thrown away): the floor."""
    start = time.perf_counter()
    with open(os.devnull, "w") as devnull:
        subprocess.run(
            ["find", str(small.root / "models"), "-type", "f", "-printf", "%s %i\n"],
            stdout=devnull,
            check=True,
        )
    return time.perf_counter() - start


def cli_audit_with_peak(small: SmallFiles, work: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of `mt-assets audit --json` (warm cache), stdout to a file."""
    out, peak = work / "cli-audit.json", work / "cli-peak"
    env = {**os.environ, "AUDIT_BENCH_PEAK_FILE": str(peak)}
    args = ["audit", "--manifest", str(small.manifest_path), "--volume", str(small.root), "--json"]
    with open(out, "w") as stdout:
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", CLI_WITH_PEAK, *args],
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise BenchmarkError(f"CLI audit: exit status {proc.returncode}: {proc.stderr.strip()[-500:]}")
    with open(out, encoding="utf-8") as f:
        head = f.read(4096)
    if not re.search(r'"complete": true,', head) or not re.search(r'"bytes_read": 0,', head):
        raise BenchmarkError(f"CLI audit: not complete, or it read bytes: {head[:400]!r}")
    return elapsed, int(peak.read_text()) * 1024


def in_process_phases(small: SmallFiles) -> dict[str, float]:
    """Seconds of each part of what the CLI does, in this process (warm cache)."""
    seconds = {}
    start = time.perf_counter()
    manifest = load_manifest(small.manifest_path)
    seconds["load_manifest"] = time.perf_counter() - start
    volume = LocalVolume(small.root)
    start = time.perf_counter()
    report = audit(manifest, volume)
    seconds["audit"] = time.perf_counter() - start
    volume.hash_cache.close()
    check_report("in-process audit", report, 0)
    start = time.perf_counter()
    with open(os.devnull, "w", encoding="utf-8") as devnull:
        report.write_json(devnull)
    seconds["JSON report"] = time.perf_counter() - start
    return seconds


def filesystem_of(path: Path) -> str:
    """The type of the filesystem `path` is on (ext4, tmpfs, nfs4...), from /proc/self/mounts."""
    best, kind = "", "unknown"
    resolved = str(path.resolve())
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            mount_point, fstype = line.split()[1:3]
            inside = resolved == mount_point or resolved.startswith(mount_point.rstrip("/") + "/")
            if inside and len(mount_point) > len(best):
                best, kind = mount_point, fstype
    return f"{kind} ({best})"


def entries_label(entries: int) -> str:
    for size, suffix in ((1_000_000, "m"), (1_000, "k")):
        if entries % size == 0:
            return f"{entries // size}{suffix}"
    return str(entries)


def run_entries(args: argparse.Namespace) -> tuple[float, int, float]:
    """The --entries mode: (CLI seconds, CLI peak RSS bytes, ratio to sha256sum -c), medians."""
    work = Path(tempfile.mkdtemp(prefix="mt-bench-audit-entries-", dir=args.dir))
    fs = filesystem_of(work)
    try:
        t0 = time.perf_counter()
        small = build_small_files(work, args.entries, args.seed)
        print(
            f"built {small.entries:,} files, {small.total_bytes:,} bytes in {time.perf_counter() - t0:.1f} s under {work}",
            flush=True,
        )

        volume = LocalVolume(small.root)
        start = time.perf_counter()
        report = audit(load_manifest(small.manifest_path), volume, jobs=args.jobs)
        first_s = time.perf_counter() - start
        volume.hash_cache.close()
        check_report("first audit", report, small.total_bytes)
        del report
        print(f"first audit (fills the hash cache): {first_s:.1f} s", flush=True)

        baseline_runs, find_runs, cli_runs, peaks = [], [], [], []
        for _ in range(args.repeats):  # interleaved, so a burst of other work hits all alike
            baseline_runs.append(sha256sum_check(small))
            find_runs.append(find_stat(small))
            seconds, peak = cli_audit_with_peak(small, work)
            cli_runs.append(seconds)
            peaks.append(peak)
            print(f"  CLI audit {seconds:.2f} s, peak RSS {peak / 1e6:.0f} MB", flush=True)
        phases = in_process_phases(small)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    baseline, cli_s, peak = statistics.median(baseline_runs), statistics.median(cli_runs), max(peaks)
    label = entries_label(args.entries)
    print()
    print("conditions")
    print(
        f"  cpus            {os.cpu_count()} ({platform.machine()}), load average {os.getloadavg()[0]:.1f} at the end"
    )
    print(
        f"  files           {small.entries:,} of 16-80 bytes ({small.total_bytes:,} bytes), {ENTRIES_PER_COMPONENT} per component"
    )
    print(f"  filesystem      {fs}, page cache warm")
    print("  hash cache      warm (filled by a first audit), rollback journal, synchronous=OFF")
    print(
        f"  python          {platform.python_version()}, PyYAML {yaml.__version__} (libyaml: {yaml.__with_libyaml__})"
    )
    print()

    def row(name: str, seconds: float, runs: list[float], ratio: float | None = None) -> None:
        r = f"{ratio:7.3f}" if ratio is not None else "      -"
        print(f"  {name:<38} {seconds:9.3f} {r:>8}   [{', '.join(f'{x:.3f}' for x in runs)}]")

    print(f"  {'measurement':<38} {'seconds':>9} {'ratio':>8}   [runs]")
    row("sha256sum -c, every file (baseline)", baseline, baseline_runs, 1.0)
    row(
        "find, a stat per file (floor)",
        statistics.median(find_runs),
        find_runs,
        statistics.median(find_runs) / baseline,
    )
    row("first audit (empty hash cache)", first_s, [first_s], first_s / baseline)
    row("CLI audit --json, warm cache", cli_s, cli_runs, cli_s / baseline)
    for name, seconds in phases.items():
        row(f"  in-process: {name}", seconds, [seconds])
    print(
        f"  CLI peak RSS {peak / 1e6:.0f} MB (max of {len(peaks)} runs: {', '.join(f'{p / 1e6:.0f}' for p in peaks)})"
    )
    goal = ENTRIES_GOALS.get(args.entries)
    if goal is not None:
        print(f"\n  goal: CLI audit < {goal:g} s {_verdict(cli_s < goal)}")
    print(
        f"audit_{label}_seconds={cli_s:.2f} audit_{label}_peak_mb={peak / 1e6:.0f} audit_{label}_ratio={cli_s / baseline:.2f}"
    )
    return cli_s, peak, cli_s / baseline


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
    parser.add_argument(
        "--entries",
        type=int,
        default=None,
        help="instead: a manifest of this many small files, audited with a warm cache (e.g. 100000)",
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
    if args.entries is not None:
        try:
            run_entries(args)  # prints its own last line
        except BenchmarkError as e:
            print(f"benchmark aborted: {e}", file=sys.stderr)
            return 1
        return 0
    try:
        cached_ratio, full_ratio = run(args)
    except BenchmarkError as e:
        print(f"benchmark aborted: {e}", file=sys.stderr)
        return 1
    print(f"audit_cached_ratio={cached_ratio:.3f} audit_full_ratio={full_ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
