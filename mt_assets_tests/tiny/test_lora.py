"""The tiny LoRA files: the real files' key families at the tiny DiT's shapes, and what the merge makes of them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from mt_assets.manifest import load_profile
from mt_assets.models.dit import build_multitalk_transformer
from mt_assets.models.lora import IGNORED_SUFFIX, plan_lora
from mt_assets.tiny.dit import TINY_DIT_CONFIG
from mt_assets.tiny.lora import TINY_LORAS
from mt_assets_tests.golden import ACCEL_GOLDEN_DIR, requires_accel_golden

GOLDEN_FILES = {
    "tiny-fusionx": "Wan2.1_I2V_tiny_FusionX_LoRA.safetensors",
    "tiny-lightx2v": "Wan21_T2V_tiny_lightx2v_cfg_step_distill_lora.safetensors",
}


def _lora(tiny_mirror: Path, profile: str) -> Path:
    [(f, _)] = load_profile(profile).loras
    return tiny_mirror / f.dir / f.path


def _keys(path: Path) -> tuple[list[str], set[str]]:
    with safe_open(str(path), "pt") as f:
        keys = sorted(f.keys())
        return keys, {str(f.get_slice(k).get_dtype()) for k in keys}


@requires_accel_golden
@pytest.mark.parametrize("profile", list(GOLDEN_FILES))
def test_the_tiny_lora_files_have_the_golden_files_keys_and_storage_dtype(
    tiny_mirror: Path, profile: str
) -> None:
    ours, our_dtypes = _keys(_lora(tiny_mirror, profile))
    golden, golden_dtypes = _keys(ACCEL_GOLDEN_DIR / "loras" / GOLDEN_FILES[profile])
    assert ours == golden and our_dtypes == golden_dtypes


def test_the_fusionx_like_file_carries_the_image_branch_and_the_lightx2v_like_file_modulation_deltas(
    tiny_mirror: Path,
) -> None:
    fusionx, _ = _keys(_lora(tiny_mirror, "tiny-fusionx"))
    lightx2v, _ = _keys(_lora(tiny_mirror, "tiny-lightx2v"))
    assert "diffusion_model.blocks.0.cross_attn.k_img.lora_down.weight" in fusionx
    assert "diffusion_model.blocks.1.cross_attn.norm_k_img.diff" in fusionx
    assert not any("_img" in k or "img_emb" in k for k in lightx2v)
    assert [k for k in lightx2v if k.endswith("diff_m")] == [
        "diffusion_model.blocks.0.diff_m", "diffusion_model.blocks.1.diff_m", "diffusion_model.head.diff_m"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("profile", "applied", "ignored"), [("tiny-fusionx", 78, 0), ("tiny-lightx2v", 64, 3)]
)
def test_every_key_of_the_tiny_loras_fits_the_tiny_dit(
    tiny_mirror: Path, profile: str, applied: int, ignored: int
) -> None:
    model = build_multitalk_transformer(TINY_DIT_CONFIG, device="meta")
    report = plan_lora(_lora(tiny_mirror, profile), model)  # a key that fits nothing would raise
    assert len(report.applied) == applied  # as the golden files' reference runs
    assert report.ignored_by_reason == ({IGNORED_SUFFIX: ignored} if ignored else {})


def test_specs_name_the_shipped_twins() -> None:
    assert [(s.profile, s.dtype) for s in TINY_LORAS] == [
        ("tiny-fusionx", torch.float16), ("tiny-lightx2v", torch.bfloat16)
    ]  # fmt: skip
