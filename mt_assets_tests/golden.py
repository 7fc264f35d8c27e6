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


def chained_denoiser(model: object, dit_inputs: dict, speakers: int, **options: object) -> object:
    """The DiT as the sampler calls it, on the chained tiny DiT's inputs (`dit_inputs.safetensors`)
    for one or two speakers; `options` go to make_denoiser (e.g. teacache)."""
    from mt_assets.render.pipeline import make_denoiser

    return make_denoiser(
        model,
        context=dit_inputs["context"],
        context_null=dit_inputs["context_null"],
        clip_fea=dit_inputs["clip_fea"],
        y=dit_inputs["y"],
        audio=dit_inputs["audio"][:speakers],
        masks=dit_inputs[f"ref_target_masks_{speakers}spk"],
        **options,
    )
