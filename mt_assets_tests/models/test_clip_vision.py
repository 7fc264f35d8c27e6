"""Wan's CLIP checkpoint → transformers' CLIP vision tower: penultimate features as Wan I2V computes them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mt_assets.models.checkpoints import CheckpointError
from mt_assets.models.clip_vision import (
    CLIP_FILE,
    clip_image_features,
    clip_preprocess,
    clip_sizes_from_state,
    clip_vision_config,
    load_clip_vision,
    wan_clip_textual_shapes,
    wan_clip_visual_shapes,
)
from mt_assets.tiny.wan_parts import TINY_CLIP_VISUAL, write_tiny_clip


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_clip(tmp_path_factory.mktemp("wan"), seed=0)


# ---- a plain re-statement of Wan's VisionTransformer forward (wan/modules/clip.py) on Wan's keys ----


def wan_visual_reference(sd: dict[str, torch.Tensor], x: torch.Tensor, *, use_31_block: bool) -> torch.Tensor:
    v = {k.removeprefix("visual."): t for k, t in sd.items() if k.startswith("visual.")}
    width = v["cls_embedding"].shape[-1]
    heads, head_dim = width // 80, 80
    b = x.shape[0]
    x = F.conv2d(x, v["patch_embedding.weight"], stride=v["patch_embedding.weight"].shape[-1])  # no bias
    x = (
        torch.cat([v["cls_embedding"].expand(b, -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
        + v["pos_embedding"]
    )
    x = F.layer_norm(x, (width,), v["pre_norm.weight"], v["pre_norm.bias"], 1e-5)
    layers = sum(1 for k in v if k.endswith("attn.to_qkv.weight"))
    for i in range(layers - 1 if use_31_block else layers):
        p = f"transformer.{i}."
        h = F.layer_norm(x, (width,), v[p + "norm1.weight"], v[p + "norm1.bias"], 1e-5)
        qkv = F.linear(h, v[p + "attn.to_qkv.weight"], v[p + "attn.to_qkv.bias"])
        q, k, val = qkv.view(b, -1, 3, heads, head_dim).unbind(2)
        att = torch.softmax(torch.einsum("bihd,bjhd->bhij", q, k) / head_dim**0.5, dim=-1)
        o = torch.einsum("bhij,bjhd->bihd", att, val).reshape(b, -1, width)
        x = x + F.linear(o, v[p + "attn.proj.weight"], v[p + "attn.proj.bias"])
        h = F.layer_norm(x, (width,), v[p + "norm2.weight"], v[p + "norm2.bias"], 1e-5)
        h = F.gelu(F.linear(h, v[p + "mlp.0.weight"], v[p + "mlp.0.bias"]))  # exact GELU ('gelu')
        x = x + F.linear(h, v[p + "mlp.2.weight"], v[p + "mlp.2.bias"])
    return x


# ---- tests ---------------------------------------------------------------------------------


def test_tiny_clip_loads_with_sizes_read_from_shapes(tiny_clip: Path) -> None:
    model = load_clip_vision(tiny_clip)
    c = model.config
    assert (c.hidden_size, c.num_attention_heads, c.num_hidden_layers, c.intermediate_size) == (
        160,
        2,
        2,
        640,
    )
    assert (c.image_size, c.patch_size, c.projection_dim, c.hidden_act) == (224, 14, 64, "gelu")
    assert not model.training


def test_vit_h_14_sizes_are_inferred_from_the_real_key_shapes() -> None:
    visual = {"width": 1280, "mlp": 5120, "layers": 32, "patch": 14, "image_size": 224, "embed_dim": 1024}
    textual = {"vocab": 250002, "dim": 1024, "layers": 24, "max_len": 514, "type_size": 1, "embed_dim": 1024}
    shapes = wan_clip_visual_shapes(**visual) | wan_clip_textual_shapes(**textual)
    assert len(shapes) == 8 + 32 * 12 + 8 + 24 * 16
    got_visual, got_textual = clip_sizes_from_state(
        {k: torch.empty(s, device="meta") for k, s in shapes.items()}, "vit-h-14"
    )
    assert (got_visual, got_textual) == (visual, textual)
    c = clip_vision_config(got_visual, "vit-h-14")
    assert (c.num_attention_heads, (c.image_size // c.patch_size) ** 2 + 1) == (16, 257)


def test_features_are_wans_penultimate_block_states(tiny_clip: Path) -> None:
    model = load_clip_vision(tiny_clip)
    sd = torch.load(tiny_clip, weights_only=True)
    frames = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(1)) * 2 - 1
    pixels = clip_preprocess(frames, TINY_CLIP_VISUAL["image_size"])
    features = clip_image_features(model, pixels)
    assert features.shape == (2, 257, 160)
    torch.testing.assert_close(
        features, wan_visual_reference(sd, pixels, use_31_block=True), atol=1e-4, rtol=1e-4
    )
    # The head too: post_norm on the class token, then x @ head.
    with torch.no_grad():
        embeds = model(pixel_values=pixels).image_embeds
    full = wan_visual_reference(sd, pixels, use_31_block=False)
    pooled = F.layer_norm(
        full[:, 0], (160,), sd["visual.post_norm.weight"], sd["visual.post_norm.bias"], 1e-5
    )
    torch.testing.assert_close(embeds, pooled @ sd["visual.head"], atol=1e-4, rtol=1e-4)


def test_preprocessing_maps_minus_one_to_one_onto_clip_normalisation() -> None:
    pixels = clip_preprocess(torch.full((1, 3, 40, 60), 1.0), 224)
    assert pixels.shape == (1, 3, 224, 224)
    expected = (1.0 - torch.tensor([0.48145466, 0.4578275, 0.40821073])) / torch.tensor(
        [0.26862954, 0.26130258, 0.27577711]
    )
    torch.testing.assert_close(pixels[0, :, 100, 100], expected)


@pytest.mark.parametrize(
    "key", ["visual.transformer.1.attn.to_qkv.bias", "textual.blocks.0.ffn.2.weight", "log_scale"]
)
def test_a_missing_key_is_named_in_either_tower(tmp_path: Path, tiny_clip: Path, key: str) -> None:
    sd = torch.load(tiny_clip, weights_only=True)
    del sd[key]
    torch.save(sd, tmp_path / CLIP_FILE)
    with pytest.raises(CheckpointError, match=rf"{CLIP_FILE}: missing key '{key}'"):
        load_clip_vision(tmp_path / CLIP_FILE)


@pytest.mark.parametrize("key", ["textual.pooler.weight", "visual.proj", "logit_bias"])
def test_junk_is_an_unexpected_key_even_among_the_unused_text_tower(
    tmp_path: Path, tiny_clip: Path, key: str
) -> None:
    sd = torch.load(tiny_clip, weights_only=True)
    sd[key] = torch.zeros(3)
    torch.save(sd, tmp_path / CLIP_FILE)
    with pytest.raises(CheckpointError, match=rf"unexpected key '{key}'"):
        load_clip_vision(tmp_path / CLIP_FILE)


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("this must never run",))


def test_a_pickle_with_objects_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save({"visual.head": _Payload()}, tmp_path / CLIP_FILE)
    with pytest.raises(CheckpointError, match=rf"{CLIP_FILE}: refused"):
        load_clip_vision(tmp_path / CLIP_FILE)
    assert "must never run" not in capsys.readouterr().out
    torch.save({"visual.head": 3}, tmp_path / CLIP_FILE)  # unpicklable safely, but not a tensor
    with pytest.raises(CheckpointError, match=r"refused: entry 'visual.head' is a int"):
        load_clip_vision(tmp_path / CLIP_FILE)


def test_two_tiny_builds_are_byte_identical(tmp_path: Path) -> None:
    assert write_tiny_clip(tmp_path / "a", 7).read_bytes() == write_tiny_clip(tmp_path / "b", 7).read_bytes()
