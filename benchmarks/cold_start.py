"""Benchmark cold starts: the worker's load per unit and strategy, next to the volume's raw-read limit.

What it measures (mt_assets.bench.cold_start does the work): for each load strategy (mmap,
sequential, parallel; see mt_assets.models.reading), --runs fresh-process loads of the volume with
every file of the loaded units evicted from the page cache first, interleaved (mmap, sequential,
parallel, mmap, ...) so drift on a shared machine hits all alike. dtype bfloat16 on the CPU, as a GPU
worker loads the DiT, T5 and CLIP (VAE and wav2vec2 stay float32). Per unit and in total: median,
min, max, p95 seconds, bytes, GB/s; the DiT load's peak RSS and transient memory (peak RSS minus
the RSS before it minus the DiT's parameters, which all stay in host memory on the CPU). Beside them,
in the same run, the raw-read limit: the same files, evicted, read with large blocks one after
another and with 4 threads at once; the faster is the limit. And `fresh memory`: how long a new
process takes to allocate and write as many bytes as the DiT keeps, the other cost of a CPU load (on
a VM whose host backs memory lazily it can exceed the read).

Default volume: the medium mirror (~2.8 GB, `build_tiny_mirror(scale="medium")`), built once under
./var/bench/medium (models/ + medium.yaml) and reused. `--volume PATH --manifest FILE` measures any
mounted volume (e.g. a RunPod network volume) laid out as <volume>/models/<dir>/<path>.

Usage:
    .venv/bin/python benchmarks/cold_start.py --quick     # the transformer unit, 2 runs (< 3 min)
    .venv/bin/python benchmarks/cold_start.py             # every unit, 3 runs per strategy
    .venv/bin/python benchmarks/cold_start.py --volume /runpod-volume --manifest profiles/x.yaml
    .venv/bin/python benchmarks/cold_start.py --json      # one JSON document on stdout, nothing else
    sudo .venv/bin/python benchmarks/cold_start.py --quick --read-rate 200   # as on a 200 MB/s volume
`--read-rate MBPS` throttles every read of the volume's disk (loads and raw reads alike) to that
bandwidth (mt_assets.bench.throttle: a cgroup v1 blkio limit; root), so a local disk behaves like a
network volume's bandwidth and the ratios show where the read, not the CPU, dominates.
The last lines are `cold_start_ratio=<best strategy's median total / raw-read limit>` (goal <= 1.15),
`peak_rss_ratio=<transient memory of the DiT load / its largest file>` (goal <= 1.5) and, when the
volume has a repack (<volume>/repacks/*/repack.json), `repack_bytes_ratio=<bytes read with / without>`,
`int8_bytes_ratio=<bytes of multitalk-480p-int8 / of multitalk-480p>` (from the manifests alone: what a
cold start of each shipped real profile reads, printed as a table first; goal <= 0.36; `--bytes-only`
prints just that, in a second), and `first_step_ratio=<median time from a cold start to the first denoising step of a small render,
the DiT loading in the background while the encoders load and encode / the raw read of every loaded
file>` (goal <= 1.1; `--no-first-step` skips it; mt_assets.bench.first_step is the probe).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # for the probes too: see benchmarks/render.py

import pandas as pd
from common import BenchmarkError  # benchmarks/common.py
from rich.console import Console
from rich.table import Table

from mt_assets.bench import BenchError, ColdStart, first_steps, load_files, measure, raw_read_limit
from mt_assets.bench.cold_start import files_read, profile_bytes
from mt_assets.bench.throttle import ThrottleError, read_throttle
from mt_assets.manifest import Manifest, load_manifest, load_profile
from mt_assets.manifest.lockfile import to_yaml
from mt_assets.models.pipeline import UNITS
from mt_assets.models.reading import STRATEGIES
from mt_assets.volume import LocalVolume

COLD_START_GOAL = 1.15
PEAK_RSS_GOAL = 1.5
FIRST_STEP_GOAL = 1.1
INT8_BYTES_GOAL = 0.36
INT8_PROFILE = "multitalk-480p-int8"
# the base first: every ratio is to it
BYTES_PROFILES = (
    "multitalk-480p",
    "multitalk-480p-fusionx",
    "multitalk-480p-lightx2v",
    INT8_PROFILE,
    "multitalk-480p-int8-fusionx",
    "multitalk-480p-fp8-fusionx",
)
DEFAULT_CACHE = Path("var/bench/medium")


def medium_volume(cache: Path, console: Console) -> tuple[LocalVolume, Manifest]:
    """The cached medium volume (<cache>/models + <cache>/medium.yaml), built the first time."""
    manifest_path = cache / "medium.yaml"
    if not manifest_path.exists():
        from mt_assets.tiny.profile import build_tiny_mirror

        console.print(f"building the medium mirror in {cache / 'models'} (~2.8 GB, once)")
        started = time.perf_counter()
        manifest = build_tiny_mirror(cache / "models", scale="medium")
        manifest_path.write_text(to_yaml(manifest), encoding="utf-8")
        console.print(f"  built in {time.perf_counter() - started:.0f} s")
    return LocalVolume(cache), load_manifest(manifest_path)


def repack_bytes(volume: LocalVolume, paths: list[Path], result: ColdStart) -> tuple[int, int] | None:
    """(bytes the loads read, bytes of the originals) when the volume has a repack; None: no repack.

    A bf16 load reads a current repack instead of the originals; the loads' reports list what they read.
    """
    if not list(volume.root.glob("repacks/*/repack.json")):
        return None
    read = sum(p.stat().st_size for p in files_read(volume, result.loads))
    return read, sum(p.stat().st_size for p in paths)


def summary_table(result: ColdStart, limit_s: float) -> Table:
    table = Table(title="cold loads (evicted, fresh process), seconds", title_justify="left")
    columns = ("strategy", "unit", "runs", "median", "min", "max", "p95", "bytes", "GB/s", "/ limit")
    for column in columns:
        table.add_column(column, justify="left" if column in ("strategy", "unit") else "right")
    for row in result.summary.itertuples():
        ratio = f"{row.median / limit_s:.2f}" if row.unit == "total" else ""
        table.add_row(
            row.strategy, row.unit, str(row.runs), f"{row.median:.2f}", f"{row.min:.2f}", f"{row.max:.2f}",
            f"{row.p95:.2f}", f"{row.bytes / 1e9:.2f} GB", f"{row.gb_per_s:.2f}", ratio,
        )  # fmt: skip
    return table


def raw_table(result: ColdStart) -> Table:
    table = Table(title="raw-read limit (same files, evicted, large blocks)", title_justify="left")
    for column in ("mode", "runs", "median", "min", "max", "bytes", "GB/s", "cached before"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for row in result.raw.itertuples():
        table.add_row(
            row.mode, str(row.runs), f"{row.seconds:.2f}", f"{row.min_seconds:.2f}", f"{row.max_seconds:.2f}",
            f"{row.bytes / 1e9:.2f} GB", f"{row.gb_per_s:.2f}", f"{row.resident_before:.1%}",
        )  # fmt: skip
    return table


def memory_table(result: ColdStart) -> Table | None:
    dit = result.loads[result.loads["unit"] == "transformer"]
    if dit.empty:
        return None
    table = Table(title="DiT load memory (medians)", title_justify="left")
    for column in ("strategy", "RSS before", "peak RSS", "transient", "/ largest file"):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for strategy, rows in dit.groupby("strategy", sort=False):
        transient = rows["transient"].median()
        table.add_row(
            str(strategy), f"{rows['rss_before'].median() / 1e9:.2f} GB", f"{rows['peak_rss'].median() / 1e9:.2f} GB",
            f"{transient / 1e9:.2f} GB", f"{transient / result.largest_file:.2f}",
        )  # fmt: skip
    return table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--volume", type=Path, help="a volume (<volume>/models/...); default: the cached medium one"
    )
    parser.add_argument("--manifest", type=Path, help="its manifest YAML (with --volume)")
    parser.add_argument("--profile", help="a shipped profile instead of --manifest (with --volume)")
    parser.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help=f"where the medium volume is kept ({DEFAULT_CACHE})"
    )
    parser.add_argument("--quick", action="store_true", help="the transformer unit only, 2 runs (< 3 min)")
    parser.add_argument("--runs", type=int, help="loads per strategy (default 3; quick 2)")
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--units", nargs="+", choices=list(UNITS), help="default: all (quick: transformer)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument(
        "--no-first-step",
        dest="first_step",
        action="store_false",
        help="skip the time to first denoising step (cold renders of a small job, overlap vs serial)",
    )
    parser.add_argument(
        "--read-rate",
        type=float,
        metavar="MBPS",
        help="throttle reads of the volume's disk to MBPS MB/s (a network volume's bandwidth; root)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout, nothing else")
    parser.add_argument(
        "--bytes-only",
        action="store_true",
        help="only the bytes a cold start reads per shipped profile, from the manifests (no loads)",
    )
    args = parser.parse_args(argv)
    if (args.manifest or args.profile) and not args.volume:
        parser.error("--manifest / --profile need --volume")
    if args.volume and not (args.manifest or args.profile):
        parser.error("--volume needs --manifest FILE or --profile NAME")
    args.runs = args.runs or (2 if args.quick else 3)
    args.units = args.units or (["transformer"] if args.quick else list(UNITS))
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    if args.read_rate is not None and args.read_rate <= 0:
        parser.error("--read-rate must be > 0 MB/s")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=args.json, highlight=False)
    if not console.is_terminal:
        console.width = 110
    by_profile = profile_bytes([load_profile(name) for name in BYTES_PROFILES])
    int8_ratio = float(by_profile.set_index("profile").loc[INT8_PROFILE, "ratio"])
    if args.bytes_only:
        if args.json:
            print(
                json.dumps({"profiles": by_profile.to_dict(orient="records"), "int8_bytes_ratio": int8_ratio})
            )
            return 0
        console.print(bytes_table(by_profile))
        print(f"int8_bytes_ratio={int8_ratio:.3f}")
        return 0
    if args.volume:
        volume = LocalVolume(args.volume)
        manifest = load_manifest(args.manifest) if args.manifest else load_profile(args.profile)
    else:
        volume, manifest = medium_volume(args.cache, console)
    paths = load_files(volume, manifest, args.units)
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        print(f"volume {volume.root}: {len(missing)} files of {manifest.source} missing, e.g. {missing[0]}; "
              "provision it first", file=sys.stderr)  # fmt: skip
        return 1
    load_before = os.getloadavg()[0]
    console.print(
        f"cold loads of {volume.root} ({manifest.profile}; units {', '.join(args.units)}; "
        f"{sum(p.stat().st_size for p in paths) / 1e9:.2f} GB in {len(paths)} files): "
        f"{args.runs} runs x {', '.join(args.strategies)}, {args.dtype} on the CPU",
        style="bold",
    )

    def on_run(strategy: str, run: int, out: dict[str, object]) -> None:
        total = sum(u["seconds"] for u in out["units"].values())  # type: ignore[union-attr]
        console.print(
            f"  run {run + 1}/{args.runs} {strategy:<10} {total:.2f} s (imports {out['import_seconds']:.1f} s)"
        )

    started = time.perf_counter()
    throttle = (
        read_throttle(volume.root, int(args.read_rate * 1e6)) if args.read_rate else contextlib.nullcontext()
    )
    first = None
    try:
        with throttle as device:
            if device:
                console.print(f"reads of {volume.root} (disk {device}) throttled to {args.read_rate:g} MB/s")
            result = measure(
                volume, manifest, strategies=args.strategies, runs=args.runs, units=args.units,
                dtype=args.dtype, on_run=on_run,
            )  # fmt: skip
            if args.first_step:
                first = first_step(volume, manifest, result.best_strategy(), args, console)
    except (BenchError, BenchmarkError, ThrottleError) as e:
        print(f"benchmark aborted: {e}", file=sys.stderr)
        return 1
    wall = time.perf_counter() - started
    limit_s = result.limit_seconds
    ratio = result.cold_start_ratio()
    best = result.best_strategy()
    peak = result.peak_rss_ratio()
    repack = repack_bytes(volume, paths, result)
    results = [f"cold_start_ratio={ratio:.3f}"]
    if peak is not None:
        results.append(f"peak_rss_ratio={peak:.3f}")
    if repack is not None:
        results.append(f"repack_bytes_ratio={repack[0] / repack[1]:.3f}")
    results.append(f"int8_bytes_ratio={int8_ratio:.3f}")
    if first is not None:
        results.append(f"first_step_ratio={first['ratio']:.3f}")
    conditions = {
        "volume": str(volume.root),
        "profile": manifest.profile,
        "units": args.units,
        "dtype": args.dtype,
        "device": "cpu",
        "runs": args.runs,
        "read_rate_mb_s": args.read_rate,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average": [load_before, os.getloadavg()[0]],
        "hwm_reset": bool(result.loads["hwm_reset"].all()),
        "cached_before": float(result.loads["resident_before"].max()),
        "wall_seconds": wall,
    }
    if args.json:
        doc = {
            "conditions": conditions,
            "summary": result.summary.to_dict(orient="records"),
            "loads": result.loads.to_dict(orient="records"),
            "raw": result.raw.to_dict(orient="records"),
            "largest_file": result.largest_file,
            "fresh_memory": result.fresh,
            "best_strategy": best,
            "cold_start_ratio": ratio,
            "peak_rss_ratio": peak,
            "repack_bytes_ratio": repack[0] / repack[1] if repack else None,
            "profiles": by_profile.to_dict(orient="records"),
            "int8_bytes_ratio": int8_ratio,
            "first_step": None if first is None else {
                "runs": first["runs"].to_dict(orient="records"),
                "raw": first["raw"].to_dict(orient="records"),
                "ratio": first["ratio"],
            },
        }  # fmt: skip
        print(json.dumps(doc, indent=2, default=float))
        return 0
    console.print()
    console.print(
        f"conditions: {conditions['cpus']} cpus ({conditions['machine']}), python {conditions['python']}, "
        f"load average {load_before:.2f} before / {conditions['load_average'][1]:.2f} after; page cache "
        f"{conditions['cached_before']:.1%} of the files cached after evict (max); VmHWM reset per unit: "
        f"{conditions['hwm_reset']}; reads "
        f"{f'throttled to {args.read_rate:g} MB/s' if args.read_rate else 'not throttled'}; {wall:.0f} s in all"
    )
    console.print(summary_table(result, limit_s))
    console.print(raw_table(result))
    memory = memory_table(result)
    if memory is not None:
        console.print(memory)
    met = "met" if ratio <= COLD_START_GOAL else "MISSED"
    console.print(
        f"  best strategy {best}: {ratio:.2f}x the raw-read limit ({limit_s:.2f} s); goal <= {COLD_START_GOAL} {met}"
    )
    if peak is not None:
        met = "met" if peak <= PEAK_RSS_GOAL else "MISSED"
        console.print(
            f"  DiT transient memory ({best}) {peak:.2f}x its largest file ({result.largest_file / 1e6:.0f} MB); "
            f"goal <= {PEAK_RSS_GOAL} {met}"
        )
    if result.fresh is not None:
        fresh = result.fresh
        console.print(
            f"  fresh memory: a new process allocates and writes the DiT's kept {fresh['bytes'] / 1e9:.2f} GB "
            f"in {fresh['seconds']:.2f} s ({fresh['gb_per_s']:.2f} GB/s), a cost of a CPU load beside its reads"
        )
    if repack is not None:
        console.print(
            f"  with the volume's repacks the loads read {repack[0] / 1e9:.2f} GB of the originals' {repack[1] / 1e9:.2f} GB"
        )
    else:
        console.print(
            "  no repack on the volume (<volume>/repacks/*/repack.json): repack_bytes_ratio not measured"
        )
    console.print(bytes_table(by_profile))
    if first is not None:
        console.print(first_step_table(first))
        ratio_first = first["ratio"]
        met = "met" if ratio_first <= FIRST_STEP_GOAL else "MISSED"
        console.print(
            f"  first denoising step (overlap) {ratio_first:.2f}x the raw read of every loaded file "
            f"({first['limit']:.2f} s); goal <= {FIRST_STEP_GOAL} {met}"
        )
    for line in results:
        print(line)
    return 0


def bytes_table(frame: pd.DataFrame) -> Table:
    table = Table(
        title=f"bytes a cold start reads, per profile (manifests; goal {INT8_PROFILE} <= {INT8_BYTES_GOAL} x base)",
        title_justify="left",
    )
    for column in ("profile", "files", "GB", f"/ {frame['profile'].iloc[0]}", "sized by estimate"):
        table.add_column(column, justify="left" if column == "profile" else "right")
    for row in frame.itertuples():
        table.add_row(row.profile, str(row.files), f"{row.gb:.1f}", f"{row.ratio:.3f}", str(row.estimated))
    return table


def first_step(
    volume: LocalVolume, manifest: Manifest, strategy: str, args: argparse.Namespace, console: Console
) -> dict[str, object]:
    """Cold renders to the first denoising step, overlap and serial, and the raw read of every unit's files."""
    console.print(
        f"time to first step: {args.runs} cold renders x overlap, serial ({strategy}, {args.dtype})"
    )
    runs = first_steps(volume, manifest, strategy=strategy, runs=args.runs, dtype=args.dtype)
    # what the loads read (a repack's files where one was used), as the DiT's limit is measured
    raw = raw_read_limit([volume.path(t) for t in dict.fromkeys(runs.iloc[0]["files"])], repeats=args.runs)
    limit = float(raw["seconds"].min())
    overlap = float(runs[runs["mode"] == "overlap"]["first_step_seconds"].median())
    return {"runs": runs, "raw": raw, "limit": limit, "ratio": overlap / limit}


def first_step_table(first: dict[str, object]) -> Table:
    runs: pd.DataFrame = first["runs"]  # type: ignore[assignment]
    table = Table(
        title="cold start to the first denoising step (evicted, fresh process)", title_justify="left"
    )
    for column in ("mode", "runs", "median", "min", "max", "models loaded (foreground)", "/ raw read"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for mode, rows in runs.groupby("mode", sort=False):
        seconds = rows["first_step_seconds"]
        table.add_row(
            str(mode), str(len(rows)), f"{seconds.median():.2f}", f"{seconds.min():.2f}", f"{seconds.max():.2f}",
            f"{rows['foreground_load_seconds'].median():.2f}", f"{seconds.median() / first['limit']:.2f}",
        )  # fmt: skip
    return table


if __name__ == "__main__":
    sys.exit(main())
