"""Renders on the quantized tiny profiles: MeiGen's int8 / fp8 layout at toy scale, through the one factory.

`tiny-int8` and `tiny-fp8-fusionx` are built by the tiny builder (tiny/quant.py) and provisioned like
any profile; `MultiTalkRenderer.from_volume` loads them (models/quant.py) and renders on the CPU in
float32. The int8 volume holds no float DiT shard, no multitalk.safetensors and no `.pth` T5, and the
offline proof shows the load reads none of them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from optimum.quanto import QLinear

from mt_assets.audit import audit
from mt_assets.manifest import load_profile
from mt_assets.offline import verify_offline
from mt_assets.render.pipeline import MultiTalkRenderer
from mt_assets.volume import LocalVolume
from mt_assets_tests.render.test_fast_renders import assert_decodes, media, render  # noqa: F401

FLOAT_ONLY = ("diffusion_pytorch_model-", "multitalk.safetensors", "models_t5_umt5-xxl-enc-bf16.pth")


def _float_files(names: list[str]) -> list[str]:
    return [n for n in names if any(part in n.rsplit("/", 1)[-1] for part in FLOAT_ONLY)]


@pytest.fixture(scope="module")
def int8_renderer(tiny_int8_volume: Path) -> MultiTalkRenderer:
    return MultiTalkRenderer.from_volume(
        LocalVolume(tiny_int8_volume), load_profile("tiny-int8"), device="cpu"
    )


def test_a_render_on_tiny_int8_decodes_with_a_quantized_dit_and_t5(int8_renderer, media, tmp_path) -> None:  # noqa: F811
    manifest = load_profile("tiny-int8")
    result, record = render(int8_renderer, manifest, media, tmp_path, "int8")
    assert_decodes(result)
    assert record["dit_evaluations_run"] == record["dit_evaluations_planned"] > 0
    c = int8_renderer.c
    assert isinstance(c.transformer.blocks[0].attn1.to_q, QLinear)
    assert isinstance(c.t5.encoder.block[0].layer[0].SelfAttention.q, QLinear)
    dit, qmap = manifest.quantized("transformer").quant_files
    t5, t5_map = manifest.quantized("t5").quant_files
    assert c.reports["transformer"].files == (
        f"models/{manifest.component('wan-dit').dir}/config.json", dit.target, qmap.target,
    )  # fmt: skip
    assert c.reports["t5"].files == (t5.target, t5_map.target)
    assert c.reports["transformer"].repack is None
    recorded = [f["target"] for f in record["models"]]
    assert {dit.target, qmap.target, t5.target, t5_map.target} <= set(recorded)
    assert not _float_files(recorded)


def test_a_fusionx_render_on_tiny_fp8_fusionx_decodes_with_the_premerged_dit(
    tiny_fp8_fusionx_volume: Path,
    media,  # noqa: F811
    tmp_path: Path,
) -> None:
    manifest = load_profile("tiny-fp8-fusionx")
    assert manifest.presets == ("fusionx",) and manifest.loras == ()  # pre-merged: nothing to merge at load
    renderer = MultiTalkRenderer.from_volume(LocalVolume(tiny_fp8_fusionx_volume), manifest, device="cpu")
    q = renderer.c.transformer.blocks[0].attn1.to_q
    assert isinstance(q, QLinear) and str(q.weight._data.dtype) == "torch.float8_e4m3fn"
    result, record = render(renderer, manifest, media, tmp_path, "fp8", preset="fusionx")
    assert_decodes(result)
    assert record["job"]["preset"] == "fusionx" and record["job"]["steps"] == 8
    assert record["dit_evaluations_run"] == 8 * 2  # text guidance 1.0: 2 evaluations per step


def test_the_int8_volume_holds_no_float_dit_adapter_or_t5_and_audits_complete(tiny_int8_volume: Path) -> None:
    on_volume = [p.relative_to(tiny_int8_volume).as_posix() for p in (tiny_int8_volume / "models").rglob("*")]
    assert on_volume and not _float_files(on_volume)
    manifest = load_profile("tiny-int8")
    assert not _float_files([f.target for f in manifest.files])
    assert audit(manifest, LocalVolume(tiny_int8_volume), full=True).complete


def test_the_offline_proof_of_tiny_int8_reads_only_declared_files_and_no_float_one(
    tiny_int8_volume: Path,
) -> None:
    manifest = load_profile("tiny-int8")
    report = verify_offline(tiny_int8_volume, manifest, only=["transformer", "t5"])
    doc = report.to_json()
    assert doc["ok"] is True, {k: doc[k] for k in ("undeclared", "outside_volume", "errors")}
    read = [t for unit in ("transformer", "t5") for t in doc["components"][unit]["files"]]
    declared = {f.target for f in manifest.files}
    assert read and set(read) <= declared
    assert not _float_files(read) and not _float_files(list(doc["files_touched"]))
    for unit in ("transformer", "t5"):
        weights, qmap = manifest.quantized(unit).quant_files
        assert {weights.target, qmap.target} <= set(doc["components"][unit]["files"])
