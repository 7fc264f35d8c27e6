"""Where the reference's golden data lie, and the rule for when a golden test may skip.

CI has ../shared beside the clone, so golden tests never skip there; elsewhere they skip with the
path they looked in. MT_GOLDEN_DIR / MT_PIPELINE_GOLDEN_DIR / MT_ACCEL_GOLDEN_DIR point at other copies.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_SHARED = Path(__file__).parents[2] / "shared" / "golden"
DIT_GOLDEN_DIR = Path(os.environ.get("MT_GOLDEN_DIR", _SHARED / "multitalk-tiny"))
PIPELINE_GOLDEN_DIR = Path(os.environ.get("MT_PIPELINE_GOLDEN_DIR", _SHARED / "multitalk-tiny-pipeline"))
ACCEL_GOLDEN_DIR = Path(os.environ.get("MT_ACCEL_GOLDEN_DIR", _SHARED / "multitalk-tiny-accel"))


def requires_golden(folder: Path, marker_file: str) -> pytest.MarkDecorator:
    """Skip when `folder/marker_file` is absent, except in CI, where a missing golden set must fail."""
    return pytest.mark.skipif(
        not (folder / marker_file).is_file() and not os.environ.get("CI"),
        reason=f"golden data not found at {folder} (set MT_GOLDEN_DIR / MT_PIPELINE_GOLDEN_DIR / MT_ACCEL_GOLDEN_DIR)",
    )


requires_pipeline_golden = requires_golden(PIPELINE_GOLDEN_DIR, "golden_manifest.json")
requires_dit_golden = requires_golden(DIT_GOLDEN_DIR, "dit_outputs.safetensors")
requires_accel_golden = requires_golden(ACCEL_GOLDEN_DIR, "golden_manifest.json")
