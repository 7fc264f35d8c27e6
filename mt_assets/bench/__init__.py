"""Measurements as DataFrames: cold starts of the worker's load, next to the volume's raw read speed.

Core: no dagster. `benchmarks/cold_start.py` prints them; the `benchmark_report` asset records them.
"""

from mt_assets.bench.cold_start import (
    BenchError,
    ColdStart,
    cold_loads,
    first_steps,
    load_files,
    measure,
    raw_read_limit,
    summarize,
)

__all__ = [
    "BenchError",
    "ColdStart",
    "cold_loads",
    "first_steps",
    "load_files",
    "measure",
    "raw_read_limit",
    "summarize",
]
