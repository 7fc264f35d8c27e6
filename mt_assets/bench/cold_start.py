"""Cold starts of the worker's load, per unit, next to the raw-read limit of the same files.

A cold load: every file of the units, and every file under <volume>/repacks/ (a bf16 load reads
a current repack instead of the originals), is evicted from the page cache (`evict`, i.e.
posix_fadvise(DONTNEED) per file; no privileges needed), then a fresh interpreter
(`python -m mt_assets.bench.probe`) imports torch and the loaders, records its RSS, and calls
`load_pipeline_components(..., strategy=S, dtype=D, device="cpu")`. D defaults to bfloat16, as a
GPU worker loads the DiT, T5 and CLIP (the VAE and wav2vec2 stay float32); on the CPU every weight
then stays in host memory. Import time is not counted: the unit seconds are the loaders' own.

The raw-read limit: the files the loads read (as their reports list them), evicted, read with large blocks and nothing else done with the
bytes, twice: `sequential` (one file after another, 64 MiB reads) and `parallel` (16 MiB ranges of
all files, PARALLEL_READERS threads at once). The faster of the two is the limit: how fast this
volume gives these bytes at all.

Transient memory of the DiT load (the `transformer` unit): its peak RSS minus the RSS before it
minus the bytes of the DiT's parameters and buffers (which all stay in host memory on the CPU).

Frames (pandas):
    cold_loads()      one row per (strategy, run, unit): seconds, bytes, rss_before, peak_rss,
                      transient (transformer only), resident_before (page-cache fraction after
                      evict), files (what the unit read, relative to the volume)
    raw_read_limit()  one row per mode: seconds, bytes, gb_per_s
    fresh_memory()    seconds for a fresh process to allocate and write the DiT's kept bytes (a CPU
                      load's other cost beside the reads: on some VMs new memory is slower than the disk)
    summarize()       one row per (strategy, unit) and a `total` per strategy: runs, median, min,
                      max, p50, p95 seconds, bytes, gb_per_s (bytes / median seconds)
    profile_bytes()   one row per profile: the bytes a cold start reads, from the manifests alone
    first_steps()     one row per (mode, run) of a cold start to the first denoising step of a small
                      render (mt_assets.bench.first_step): `overlap` loads the DiT in the background
                      while the encoders load and encode, `serial` one after another
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mt_assets.manifest import Manifest
from mt_assets.manifest.lockfile import to_yaml
from mt_assets.models.pipeline import UNITS, unit_components
from mt_assets.models.reading import STRATEGIES, evict, resident_fraction
from mt_assets.volume import LocalVolume

BLOCK_BYTES = 64 * 1024 * 1024  # sequential raw read: one read call
RANGE_BYTES = 16 * 1024 * 1024  # parallel raw read: one range
PARALLEL_READERS = 4
DEFAULT_DTYPE = "bfloat16"
PROBE_TIMEOUT_S = 900


class BenchError(RuntimeError):
    """A measurement could not be made; the message says which and why."""


@dataclass(frozen=True)
class ColdStart:
    """What a cold-start benchmark gives: the runs, the raw-read limit, and their summary."""

    loads: pd.DataFrame
    raw: pd.DataFrame
    summary: pd.DataFrame
    largest_file: int  # bytes of the DiT's largest safetensors file (shard or adapter)
    fresh: dict[str, float] | None = None  # fresh_memory() of the DiT's kept bytes, when it was loaded

    @property
    def limit_seconds(self) -> float:
        return float(self.raw["seconds"].min())

    def best_strategy(self) -> str:
        totals = self.summary[self.summary["unit"] == "total"]
        return str(totals.loc[totals["median"].idxmin(), "strategy"])

    def cold_start_ratio(self) -> float:
        """Best strategy's median total seconds / the raw-read limit of the same files."""
        totals = self.summary[self.summary["unit"] == "total"]
        return float(totals["median"].min()) / self.limit_seconds

    def peak_rss_ratio(self, strategy: str | None = None) -> float | None:
        """Median transient memory of the DiT load / the largest DiT file; None without the transformer."""
        rows = self.loads[
            (self.loads["unit"] == "transformer")
            & (self.loads["strategy"] == (strategy or self.best_strategy()))
        ]
        if rows.empty or not self.largest_file:
            return None
        return float(rows["transient"].median()) / self.largest_file


def load_files(volume: LocalVolume, manifest: Manifest, units: Sequence[str]) -> list[Path]:
    """The volume paths of every file the units read, in manifest order."""
    names = {c for u in units for c in unit_components(manifest, u)}
    return [volume.path(f.target) for c in manifest.components if c.name in names for f in c.files]


def cold_start_bytes(manifest: Manifest) -> tuple[int, int]:
    """(bytes, files) a cold start of every unit reads, from the manifest alone: the planned size
    (pinned, else estimated) of each file of the units' components (`loaded_components`); without repacks."""
    from mt_assets.models.pipeline import loaded_components

    components = loaded_components(manifest)
    files = [f for f in manifest.files if f.component in components]
    return sum(f.planned_size or 0 for f in files), len(files)


def profile_bytes(profiles: Sequence[Manifest]) -> pd.DataFrame:
    """One row per profile: profile, files, bytes, gb, estimated (files sized by estimate only),
    ratio (bytes / the first profile's)."""
    rows = []
    for m in profiles:
        nbytes, files = cold_start_bytes(m)
        estimated = sum(1 for f in m.files if f.size is None)
        rows.append(
            {
                "profile": m.profile,
                "files": files,
                "bytes": nbytes,
                "gb": nbytes / 1e9,
                "estimated": estimated,
            }
        )
    frame = pd.DataFrame(rows)
    frame["ratio"] = frame["bytes"] / frame["bytes"].iloc[0]
    return frame


def repack_files(volume: LocalVolume) -> list[Path]:
    """Every file under <volume>/repacks/ (evicted with the originals: a bf16 load may read them instead)."""
    return sorted(p for p in (volume.root / "repacks").rglob("*") if p.is_file())


def evicted_files(volume: LocalVolume, manifest: Manifest, units: Sequence[str]) -> list[Path]:
    """What a cold run evicts first: the units' files that exist, and every repack file."""
    return [p for p in load_files(volume, manifest, units) if p.exists()] + repack_files(volume)


@contextlib.contextmanager
def _manifest_file(manifest: Manifest) -> Iterator[Path]:
    """The manifest as a YAML file for the probes (a fresh interpreter takes a path), removed after."""
    with tempfile.TemporaryDirectory(prefix="mt-bench-") as tmp:
        path = Path(tmp) / "manifest.yaml"
        path.write_text(to_yaml(manifest), encoding="utf-8")
        yield path


def files_read(volume: LocalVolume, loads: pd.DataFrame) -> list[Path]:
    """The files the loads read (the first run of each unit), in load order."""
    seen: dict[str, None] = {}
    for files in loads.drop_duplicates("unit")["files"]:
        seen.update(dict.fromkeys(files))
    return [volume.path(t) for t in seen]


def largest_dit_file(volume: LocalVolume, loads: pd.DataFrame) -> int:
    """Bytes of the largest safetensors file the transformer unit read (a shard, the adapter or a repack shard)."""
    rows = loads[loads["unit"] == "transformer"]
    if rows.empty:
        return 0
    paths = [volume.path(t) for t in rows.iloc[0]["files"] if t.endswith(".safetensors")]
    return max((p.stat().st_size for p in paths), default=0)


def evict_all(paths: Sequence[Path]) -> float:
    """Evict every file; returns the mean fraction still cached afterwards (0.0 is cold; NaN if unknown)."""
    fractions = []
    for path in paths:
        evict(path)
        fraction = resident_fraction(path)
        if fraction is not None:
            fractions.append(fraction)
    return sum(fractions) / len(fractions) if fractions else float("nan")


def cold_load(
    volume: LocalVolume,
    manifest_path: Path,
    paths: Sequence[Path],
    *,
    strategy: str,
    units: Sequence[str],
    dtype: str = DEFAULT_DTYPE,
    timeout: float = PROBE_TIMEOUT_S,
) -> tuple[dict[str, object], float]:
    """Evict `paths`, then load the units in a fresh interpreter; its JSON and the resident fraction before."""
    resident = evict_all(paths)
    args = [str(volume.root), str(manifest_path), strategy, dtype, ",".join(units)]
    out = _probe(
        "mt_assets.bench.probe", args, f"cold load ({strategy}, {','.join(units)}) of {volume.root}", timeout
    )
    return out, resident


def _probe(module: str, args: list[str], what: str, timeout: float) -> dict[str, object]:
    """Run a probe module in a fresh interpreter; the JSON object on its last stdout line."""
    command = [sys.executable, "-m", module, *args]
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what}: over {timeout:.0f} s") from None
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise BenchError(f"{what}: exit {done.returncode}:\n{tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def cold_loads(
    volume: LocalVolume,
    manifest: Manifest,
    *,
    strategies: Sequence[str] = STRATEGIES,
    runs: int = 3,
    units: Sequence[str] | None = None,
    dtype: str = DEFAULT_DTYPE,
    on_run: Callable[[str, int, dict[str, object]], None] | None = None,
) -> pd.DataFrame:
    """`runs` cold loads per strategy, interleaved (a, b, c, a, b, c, ...) so drift hits all alike."""
    units = list(units or UNITS)
    if "transformer" in units:  # first, so its peak RSS is the DiT load's alone even where HWM can't be reset
        units = ["transformer", *(u for u in units if u != "transformer")]
    paths = evicted_files(volume, manifest, units)
    rows: list[dict[str, object]] = []
    with _manifest_file(manifest) as manifest_path:
        for run in range(runs):
            for strategy in strategies:
                out, resident = cold_load(
                    volume, manifest_path, paths, strategy=strategy, units=units, dtype=dtype
                )
                for unit, m in out["units"].items():  # type: ignore[union-attr]
                    transient = None
                    if unit == "transformer" and "dit_kept_bytes" in out:
                        transient = m["peak_rss"] - m["rss_before"] - out["dit_kept_bytes"]  # type: ignore[operator]
                    rows.append({
                        "strategy": strategy, "run": run, "unit": unit, "seconds": m["seconds"],
                        "bytes": m["bytes"], "rss_before": m["rss_before"], "peak_rss": m["peak_rss"],
                        "transient": transient, "resident_before": resident,
                        "rss_after_imports": out["rss_after_imports"], "hwm_reset": out["hwm_reset"],
                        "kept_bytes": out.get("dit_kept_bytes") if unit == "transformer" else None,
                        "files": tuple(m["files"]),
                    })  # fmt: skip
                if on_run is not None:
                    on_run(strategy, run, out)
    return pd.DataFrame(rows)


def first_steps(
    volume: LocalVolume,
    manifest: Manifest,
    *,
    strategy: str,
    runs: int = 2,
    modes: Sequence[str] = ("overlap", "serial"),
    dtype: str = DEFAULT_DTYPE,
    timeout: float = PROBE_TIMEOUT_S,
) -> pd.DataFrame:
    """Cold starts to the first denoising step (mt_assets.bench.first_step), `runs` per mode, interleaved.

    One row per (mode, run): first_step_seconds, foreground_load_seconds, seconds per unit as
    `load_<unit>`, bytes (of every unit), resident_before, files (what the loads read, relative to
    the volume: a repack's files where one was read). Every unit's files and the repacks are evicted
    before each run.
    """
    paths = evicted_files(volume, manifest, list(UNITS))
    rows: list[dict[str, object]] = []
    with _manifest_file(manifest) as manifest_path:
        for run in range(runs):
            for mode in modes:
                resident = evict_all(paths)
                args = [str(volume.root), str(manifest_path), strategy, dtype, mode]
                out = _probe(
                    "mt_assets.bench.first_step", args, f"first step ({mode}) on {volume.root}", timeout
                )
                units: dict[str, dict[str, float]] = out["units"]  # type: ignore[assignment]
                rows.append({
                    "mode": mode, "run": run, "first_step_seconds": out["first_step_seconds"],
                    "foreground_load_seconds": out["foreground_load_seconds"],
                    "bytes": sum(int(u["bytes"]) for u in units.values()), "resident_before": resident,
                    "files": tuple(t for u in units.values() for t in u["files"]),  # type: ignore[union-attr]
                    **{f"load_{unit}": u["seconds"] for unit, u in units.items()},
                })  # fmt: skip
    return pd.DataFrame(rows)


def _read_sequential(paths: Sequence[Path]) -> int:
    buffer = bytearray(BLOCK_BYTES)
    view = memoryview(buffer)
    total = 0
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(view):
                total += n
    return total


def _read_parallel(paths: Sequence[Path], readers: int) -> int:
    ranges = []
    fds = [os.open(p, os.O_RDONLY) for p in paths]
    try:
        for fd in fds:
            size = os.fstat(fd).st_size
            ranges += [(fd, start, min(RANGE_BYTES, size - start)) for start in range(0, size, RANGE_BYTES)]
        local = threading.local()

        def read(item: tuple[int, int, int]) -> int:
            fd, start, length = item
            if not hasattr(local, "buffer"):
                local.buffer = memoryview(bytearray(RANGE_BYTES))
            got = 0
            while got < length:
                n = os.preadv(fd, [local.buffer[got:length]], start + got)
                if n == 0:
                    break
                got += n
            return got

        with ThreadPoolExecutor(readers) as pool:
            return sum(pool.map(read, ranges))
    finally:
        for fd in fds:
            os.close(fd)


def raw_read_limit(
    paths: Sequence[Path | str], *, readers: int = PARALLEL_READERS, repeats: int = 1
) -> pd.DataFrame:
    """Read the files evicted, `sequential` then `parallel`, `repeats` rounds; one row per mode.

    seconds is the median of the rounds (min_seconds, max_seconds beside it), so one slow or fast
    moment of a shared disk does not set the limit; gb_per_s = bytes / seconds.
    """
    paths = [Path(p) for p in paths]
    modes: dict[str, Callable[[], int]] = {
        "sequential": lambda: _read_sequential(paths),
        f"parallel ({readers} threads)": lambda: _read_parallel(paths, readers),
    }
    samples: dict[str, list[float]] = {mode: [] for mode in modes}
    size, resident = 0, 0.0
    for _ in range(max(1, repeats)):
        for mode, read in modes.items():
            resident = max(resident, evict_all(paths))
            started = time.perf_counter()
            size = read()
            samples[mode].append(time.perf_counter() - started)
    rows = []
    for mode, seconds in samples.items():
        median = float(pd.Series(seconds).median())
        rows.append({"mode": mode, "runs": len(seconds), "seconds": median, "min_seconds": min(seconds),
                     "max_seconds": max(seconds), "bytes": size, "gb_per_s": size / median / 1e9,
                     "resident_before": resident})  # fmt: skip
    return pd.DataFrame(rows)


# Allocates and writes n bytes of new anonymous memory in a fresh process, as a CPU load's cast does
# for the weights it keeps; prints the seconds. No numpy or torch: their import would be the measure.
_FRESH_MEMORY = (
    "import ctypes, mmap, sys, time\n"
    "n = int(sys.argv[1]); started = time.perf_counter(); m = mmap.mmap(-1, n)\n"
    "ctypes.memset(ctypes.addressof(ctypes.c_char.from_buffer(m)), 1, n)\n"
    "print(time.perf_counter() - started)"
)


def fresh_memory(nbytes: int, *, repeats: int = 1) -> dict[str, float]:
    """How fast this machine gives a fresh process new memory: `nbytes` allocated and written,
    median of `repeats` processes. A CPU load pays this for every weight it keeps, beside the reads;
    on a VM whose host backs guest memory lazily (free page reporting) it can be slower than the disk."""
    samples = []
    for _ in range(max(1, repeats)):
        done = subprocess.run(
            [sys.executable, "-c", _FRESH_MEMORY, str(nbytes)], capture_output=True, text=True, timeout=300
        )
        if done.returncode != 0:
            raise BenchError(
                f"fresh memory of {nbytes} bytes: exit {done.returncode}: {done.stderr.strip()[-300:]}"
            )
        samples.append(float(done.stdout.strip()))
    median = float(pd.Series(samples).median())
    return {"bytes": nbytes, "seconds": median, "min_seconds": min(samples), "max_seconds": max(samples),
            "gb_per_s": nbytes / median / 1e9}  # fmt: skip


def summarize(loads: pd.DataFrame) -> pd.DataFrame:
    """Per (strategy, unit), and a `total` per strategy (the sum of a run's units): the seconds' spread."""
    per_run = loads.groupby(["strategy", "run"], sort=False, as_index=False)[["seconds", "bytes"]].sum()
    per_run["unit"] = "total"
    frame = pd.concat([loads[["strategy", "run", "unit", "seconds", "bytes"]], per_run], ignore_index=True)
    grouped = frame.groupby(["strategy", "unit"], sort=False)
    summary = grouped["seconds"].agg(
        runs="count",
        median="median",
        min="min",
        max="max",
        p50=lambda s: s.quantile(0.5),
        p95=lambda s: s.quantile(0.95),
    )
    summary["bytes"] = grouped["bytes"].max()
    summary["gb_per_s"] = summary["bytes"] / summary["median"] / 1e9
    return summary.reset_index()


def measure(
    volume: LocalVolume,
    manifest: Manifest,
    *,
    strategies: Sequence[str] = STRATEGIES,
    runs: int = 3,
    units: Sequence[str] | None = None,
    dtype: str = DEFAULT_DTYPE,
    on_run: Callable[[str, int, dict[str, object]], None] | None = None,
) -> ColdStart:
    """The cold loads, then the raw-read limit of the same files in the same run, and the summary."""
    units = list(units or UNITS)
    loads = cold_loads(
        volume, manifest, strategies=strategies, runs=runs, units=units, dtype=dtype, on_run=on_run
    )
    raw = raw_read_limit(files_read(volume, loads), repeats=runs)
    largest = largest_dit_file(volume, loads)
    kept = loads["kept_bytes"].dropna()
    fresh = fresh_memory(int(kept.max()), repeats=runs) if not kept.empty else None
    return ColdStart(loads=loads, raw=raw, summary=summarize(loads), largest_file=largest, fresh=fresh)
