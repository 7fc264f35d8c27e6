"""The quantized tiny twins: made from the tiny float files the way the golden set's section N made its files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mt_assets.manifest import load_profile
from mt_assets.models.quant import load_quantized_t5, load_quantized_transformer
from mt_assets.tiny.quant import TINY_QUANTS, quant_targets, quantized_dit, quantized_t5
from mt_assets_tests.golden import (
    ACCEL_GOLDEN_DIR,
    DIT_GOLDEN_DIR,
    PIPELINE_GOLDEN_DIR,
    requires_accel_golden,
    requires_dit_golden,
    requires_pipeline_golden,
)

QUANT = ACCEL_GOLDEN_DIR / "quant_models"


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Keys whose tensors differ in dtype, shape or any bit (float8 compared as bytes)."""
    assert sorted(a) == sorted(b)
    return [
        k
        for k in a
        if a[k].dtype != b[k].dtype
        or a[k].shape != b[k].shape
        or not torch.equal(a[k].reshape(-1).view(torch.uint8), b[k].reshape(-1).view(torch.uint8))
    ]


@requires_accel_golden
@requires_dit_golden
def test_the_tiny_quantizer_reproduces_the_golden_dit_files_bit_for_bit() -> None:
    """README N's recipe on the chained tiny DiT (FusionX: its LoRA merged at 1.0 first) gives the golden
    files' tensors exactly, and the same maps."""
    accel = json.loads((ACCEL_GOLDEN_DIR / "accel_golden.json").read_text())["quant"]
    config = json.loads((DIT_GOLDEN_DIR / "dit_config.json").read_text())
    weights = load_file(str(DIT_GOLDEN_DIR / "dit_weights.safetensors"))
    fusionx = [(ACCEL_GOLDEN_DIR / "loras" / "Wan2.1_I2V_tiny_FusionX_LoRA.safetensors", 1.0)]
    cases = [
        ("qint8", None, "dit_model_int8.safetensors", "dit_model_map_int8.json"),
        (
            "qfloat8_e4m3fn",
            fusionx,
            "quant_model_fp8_FusionX.safetensors",
            "quantization_map_fp8_FusionX.json",
        ),
    ]
    for qtype, loras, file, qmap in cases:
        assert f"quant_models/{file}" in accel["files"]
        state, written_map = quantized_dit(weights, config, qtype, loras)
        assert _same(state, load_file(str(QUANT / file))) == [], file
        assert written_map == json.loads((QUANT / qmap).read_text()), qmap


@requires_accel_golden
@requires_pipeline_golden
def test_the_tiny_quantizer_reproduces_the_golden_t5_file_bit_for_bit() -> None:
    state, qmap = quantized_t5(PIPELINE_GOLDEN_DIR / "t5_tiny.pth", "qint8")
    assert _same(state, load_file(str(QUANT / "t5_int8.safetensors"))) == []
    assert qmap == json.loads((QUANT / "t5_map_int8.json").read_text())


@pytest.mark.parametrize("spec", TINY_QUANTS, ids=lambda s: s.profile)
def test_quantized_twins_declare_the_real_profiles_components_on_top_of_tiny(spec) -> None:
    twin, real = load_profile(spec.profile), load_profile(spec.real_profile)
    assert twin.extends == "tiny" and real.extends == "multitalk-480p"
    assert twin.dropped == real.dropped == ("multitalk", "t5", "wan-dit")
    assert twin.presets == real.presets
    assert [
        (c.name, c.repo, c.dir, c.quantized, [(f.path, f.kind) for f in c.files]) for c in twin.components
    ] == [(c.name, c.repo, c.dir, c.quantized, [(f.path, f.kind) for f in c.files]) for c in real.components]
    assert all(f.sha256 and f.size for f in twin.files)
    assert twin.loras == ()


def test_the_mirror_holds_each_twins_quantized_files_and_they_load(tiny_mirror: Path) -> None:
    for spec in TINY_QUANTS:
        targets = quant_targets(spec)
        dit, dit_map = targets["transformer"]
        model = load_quantized_transformer(
            tiny_mirror / "Wan2.1-I2V-14B-480P" / "config.json", tiny_mirror / dit, tiny_mirror / dit_map
        )
        qmap = json.loads((tiny_mirror / dit_map).read_text())
        assert {e["weights"] for e in qmap.values()} == {spec.qtype}
        assert not any(m.startswith(("time_embedding", "time_projection")) for m in qmap)  # MeiGen's map
        assert model.blocks[0].attn1.to_q.weight.qtype.name == spec.qtype
        t5, t5_map = targets["t5"]
        load_quantized_t5(tiny_mirror / t5, tiny_mirror / t5_map)
