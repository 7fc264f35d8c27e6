"""The MultiTalk DiT: adapter keys, stock-Wan equivalence without audio, strict loading, tiny files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from safetensors.torch import load_file, save_file

from mt_assets.models.checkpoints import CheckpointError
from mt_assets.models.dit import (
    MultiTalkTransformer3DModel,
    build_multitalk_transformer,
    is_adapter_key,
    kept_in_fp32,
    parse_wan_config,
)
from mt_assets.models.dit_loading import INDEX_NAME, diffusers_to_reference_key, load_multitalk_transformer
from mt_assets.tiny.dit import TINY_DIT_CONFIG, tiny_reference_state, write_tiny_dit

# Wan-AI/Wan2.1-I2V-14B-480P config.json
WAN_480P_CONFIG = {
    "_class_name": "WanModel",
    "_diffusers_version": "0.30.0",
    "dim": 5120,
    "eps": 1e-06,
    "ffn_dim": 13824,
    "freq_dim": 256,
    "in_dim": 36,
    "model_type": "i2v",
    "num_heads": 40,
    "num_layers": 40,
    "out_dim": 16,
    "text_len": 512,
}

# multitalk.safetensors, 14B: key suffix -> shape (docs: reference/multitalk-models.md)
ADAPTER_TABLE = {
    "audio_proj.proj1.weight": (512, 46080),
    "audio_proj.proj1.bias": (512,),
    "audio_proj.proj1_vf.weight": (512, 73728),
    "audio_proj.proj1_vf.bias": (512,),
    "audio_proj.proj2.weight": (512, 512),
    "audio_proj.proj2.bias": (512,),
    "audio_proj.proj3.weight": (24576, 512),
    "audio_proj.proj3.bias": (24576,),
    "audio_proj.norm.weight": (768,),
    "audio_proj.norm.bias": (768,),
}
BLOCK_TABLE = {
    "audio_cross_attn.q_linear.weight": (5120, 5120),
    "audio_cross_attn.q_linear.bias": (5120,),
    "audio_cross_attn.kv_linear.weight": (10240, 768),
    "audio_cross_attn.kv_linear.bias": (10240,),
    "audio_cross_attn.proj.weight": (5120, 5120),
    "audio_cross_attn.proj.bias": (5120,),
    "norm_x.weight": (5120,),
    "norm_x.bias": (5120,),
}


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny_dit")
    write_tiny_dit(root / "Wan2.1-I2V-14B-480P", root / "MeiGen-MultiTalk")
    return root / "Wan2.1-I2V-14B-480P", root / "MeiGen-MultiTalk"


@pytest.fixture(scope="module")
def tiny_model(tiny_dirs: tuple[Path, Path]) -> MultiTalkTransformer3DModel:
    wan_dir, mt_dir = tiny_dirs
    return load_multitalk_transformer(wan_dir, mt_dir / "multitalk.safetensors")


def _copy_tree(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_14b_adapter_has_exactly_the_330_reference_keys_and_shapes_on_meta() -> None:
    model = build_multitalk_transformer(WAN_480P_CONFIG, device="meta")
    adapter = model.adapter_state_dict()
    expected = dict(ADAPTER_TABLE)
    for i in range(40):
        expected.update({f"blocks.{i}.{k}": s for k, s in BLOCK_TABLE.items()})
    assert {k: tuple(v.shape) for k, v in adapter.items()} == expected
    assert len(adapter) == 330
    assert sum(v.numel() for v in adapter.values()) == 2_487_168_000
    assert all(p.is_meta for p in model.parameters())  # nothing allocated


def test_kept_in_fp32_matches_whole_dotted_parts_of_a_name() -> None:
    """The one float32 rule of every DiT loader (float, quantized, repack): diffusers' part match."""
    model = build_multitalk_transformer(WAN_480P_CONFIG, device="meta")
    kept = {n for n, _ in model.named_parameters() if kept_in_fp32(model, n)}
    assert "condition_embedder.time_embedder.linear_1.weight" in kept and "scale_shift_table" in kept
    assert "blocks.0.attn1.to_q.weight" not in kept and "proj_out.weight" not in kept
    assert not kept_in_fp32(model, "blocks.0.norm2x.weight")  # a part, not a prefix of one
    assert not kept_in_fp32(torch.nn.Linear(2, 2), "weight")  # a model without the list keeps nothing


def test_audio_arguments_default_to_the_reference_values() -> None:
    _, mt = parse_wan_config(WAN_480P_CONFIG)
    assert (mt.audio_window, mt.intermediate_dim, mt.output_dim, mt.context_tokens, mt.vae_scale) == (
        5,
        512,
        768,
        32,
        4,
    )
    assert (mt.norm_output_audio, mt.text_dim, mt.image_dim, mt.audio_blocks, mt.audio_channels) == (
        True,
        4096,
        1280,
        12,
        768,
    )


def test_config_with_unknown_key_or_non_i2v_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown key 'audio_windw'"):
        parse_wan_config({**WAN_480P_CONFIG, "audio_windw": 5})
    with pytest.raises(ValueError, match="'model_type'"):
        parse_wan_config({**WAN_480P_CONFIG, "model_type": "t2v"})


def test_key_mapping_agrees_with_diffusers_converter() -> None:
    model = build_multitalk_transformer(TINY_DIT_CONFIG, device="meta")
    reference = {diffusers_to_reference_key(k): k for k in model.state_dict() if not is_adapter_key(k)}
    converted = convert_wan_transformer_to_diffusers(dict(zip(reference, reference, strict=True)))
    assert {v: k for k, v in converted.items()} == reference
    # the converter's norm2/norm3 swap: Wan's affine cross-attention norm3 is diffusers' norm2
    assert diffusers_to_reference_key("blocks.0.norm2.weight") == "blocks.0.norm3.weight"


def test_without_audio_output_equals_stock_diffusers_wan(tiny_model: MultiTalkTransformer3DModel) -> None:
    kwargs, _ = parse_wan_config(TINY_DIT_CONFIG)
    stock = WanTransformer3DModel(**kwargs).eval()
    stock.load_state_dict(
        {k: v for k, v in tiny_model.state_dict().items() if not is_adapter_key(k)}, strict=True
    )
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 36, 3, 8, 8, generator=gen)
    # Stock diffusers finds the image tokens at len - 512, so give it exactly 512 text tokens.
    text = torch.randn(2, 512, 32, generator=gen)
    image = torch.randn(2, 257, TINY_DIT_CONFIG["image_dim"], generator=gen)
    # A small t: diffusers' float32 timestep sinusoid drifts from the reference's float64 one as t grows.
    t = torch.tensor([50.0, 50.0])
    with torch.no_grad():
        ours = tiny_model(hidden, t, text, image).sample
        theirs = stock(hidden, t, text, image).sample
    assert ours.shape == theirs.shape == (2, 16, 3, 8, 8)
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_audio_changes_the_output_and_two_speakers_differ_from_one(
    tiny_model: MultiTalkTransformer3DModel,
) -> None:
    gen = torch.Generator().manual_seed(2)
    hidden, t = torch.randn(1, 36, 3, 8, 8, generator=gen), torch.tensor([500.0])
    text, image = (
        torch.randn(1, 512, 32, generator=gen),
        torch.randn(1, 257, TINY_DIT_CONFIG["image_dim"], generator=gen),
    )
    audio = torch.randn(2, 9, 5, 2, 32, generator=gen)
    masks = torch.zeros(3, 16, 16)
    masks[0, :, :8], masks[1, :, 8:], masks[2] = 1, 1, 1
    with torch.no_grad():
        none = tiny_model(hidden, t, text, image).sample
        one = tiny_model(hidden, t, text, image, audio=audio[:1], ref_target_masks=masks).sample
        two = tiny_model(hidden, t, text, image, audio=audio, ref_target_masks=masks).sample
    assert (one - none).abs().max() > 1e-2
    assert (two - one).abs().max() > 1e-2
    with pytest.raises(ValueError, match="ref_target_masks"):
        tiny_model(hidden, t, text, image, audio=audio)
    with pytest.raises(ValueError, match=r"expected \[S, 9, 5, 2, 32\]"):
        tiny_model(hidden, t, text, image, audio=audio[:, :8])


def test_tiny_dit_files_are_byte_identical_on_rebuild(tmp_path: Path, tiny_dirs: tuple[Path, Path]) -> None:
    write_tiny_dit(tmp_path / "wan", tmp_path / "mt")
    for built, again in ((tiny_dirs[0], tmp_path / "wan"), (tiny_dirs[1], tmp_path / "mt")):
        names = sorted(p.name for p in built.iterdir())
        assert names == sorted(p.name for p in again.iterdir())
        for name in names:
            assert (built / name).read_bytes() == (again / name).read_bytes(), name
    assert len(list(tiny_dirs[0].glob("diffusion_pytorch_model-*-of-00007.safetensors"))) == 7


def test_tiny_indexes_map_dit_keys_to_wan_shards_and_adapter_keys_to_multitalk(
    tiny_dirs: tuple[Path, Path],
) -> None:
    wan_map = json.loads((tiny_dirs[0] / INDEX_NAME).read_text())["weight_map"]
    mt_map = json.loads((tiny_dirs[1] / INDEX_NAME).read_text())["weight_map"]
    adapter = load_file(str(tiny_dirs[1] / "multitalk.safetensors"))
    assert all(is_adapter_key(k) for k in adapter) and not any(is_adapter_key(k) for k in wan_map)
    assert mt_map == {**wan_map, **dict.fromkeys(adapter, "multitalk.safetensors")}
    assert set(wan_map.values()) == {
        f"diffusion_pytorch_model-{i:05d}-of-00007.safetensors" for i in range(1, 8)
    }


def test_tiny_files_load_back_the_same_through_every_layout(
    tmp_path: Path, tiny_dirs: tuple[Path, Path]
) -> None:
    wan_dir, mt_dir = tiny_dirs
    by_file = load_multitalk_transformer(wan_dir, mt_dir / "multitalk.safetensors").state_dict()
    by_index = load_multitalk_transformer(wan_dir, mt_dir).state_dict()
    # The reference's in-place layout: MeiGen's index and multitalk.safetensors inside the Wan folder.
    in_place = _copy_tree(wan_dir, tmp_path / "wan")
    for name in (INDEX_NAME, "multitalk.safetensors"):
        (in_place / name).write_bytes((mt_dir / name).read_bytes())
    by_wan_index = load_multitalk_transformer(in_place).state_dict()
    state = tiny_reference_state()
    for loaded in (by_index, by_wan_index):
        assert loaded.keys() == by_file.keys()
        assert all(torch.equal(loaded[k], by_file[k]) for k in by_file)
    assert all(torch.equal(by_file[k], state[diffusers_to_reference_key(k)]) for k in by_file)


def test_missing_adapter_key_fails_naming_the_key(tmp_path: Path, tiny_dirs: tuple[Path, Path]) -> None:
    wan_dir, mt_dir = tiny_dirs
    mt = _copy_tree(mt_dir, tmp_path / "mt")
    adapter = load_file(str(mt / "multitalk.safetensors"))
    del adapter["blocks.1.audio_cross_attn.kv_linear.bias"]
    save_file(adapter, str(mt / "multitalk.safetensors"), metadata={"format": "pt"})
    with pytest.raises(
        CheckpointError, match=r"multitalk\.safetensors.*'blocks\.1\.audio_cross_attn\.kv_linear\.bias'"
    ):
        load_multitalk_transformer(wan_dir, mt / "multitalk.safetensors")
    with pytest.raises(
        CheckpointError, match=r"multitalk\.safetensors.*'blocks\.1\.audio_cross_attn\.kv_linear\.bias'"
    ):
        load_multitalk_transformer(wan_dir, mt)


def test_dit_without_adapter_weights_is_an_error_not_a_warning(tiny_dirs: tuple[Path, Path]) -> None:
    with pytest.raises(CheckpointError, match="no MultiTalk adapter weights"):
        load_multitalk_transformer(tiny_dirs[0])


def test_unexpected_key_in_a_shard_fails_naming_file_and_key(
    tmp_path: Path, tiny_dirs: tuple[Path, Path]
) -> None:
    wan = _copy_tree(tiny_dirs[0], tmp_path / "wan")
    shard = wan / "diffusion_pytorch_model-00003-of-00007.safetensors"
    tensors = load_file(str(shard))
    tensors["blocks.0.self_attn.extra.weight"] = torch.zeros(2)
    save_file(tensors, str(shard), metadata={"format": "pt"})
    index = json.loads((wan / INDEX_NAME).read_text())
    index["weight_map"]["blocks.0.self_attn.extra.weight"] = shard.name
    (wan / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(
        CheckpointError,
        match=r"00003-of-00007\.safetensors: unexpected key 'blocks\.0\.self_attn\.extra\.weight'",
    ):
        load_multitalk_transformer(wan, tiny_dirs[1] / "multitalk.safetensors")


def test_missing_dit_key_fails_naming_the_index(tmp_path: Path, tiny_dirs: tuple[Path, Path]) -> None:
    wan = _copy_tree(tiny_dirs[0], tmp_path / "wan")
    index = json.loads((wan / INDEX_NAME).read_text())
    shard = wan / index["weight_map"].pop("head.modulation")
    tensors = load_file(str(shard))
    del tensors["head.modulation"]
    save_file(tensors, str(shard), metadata={"format": "pt"})
    (wan / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"index\.json: missing key 'head\.modulation'"):
        load_multitalk_transformer(wan, tiny_dirs[1] / "multitalk.safetensors")


def test_bf16_load_keeps_time_embedder_and_modulation_in_fp32(tiny_dirs: tuple[Path, Path]) -> None:
    model = load_multitalk_transformer(tiny_dirs[0], tiny_dirs[1], dtype=torch.bfloat16)
    assert model.blocks[0].audio_cross_attn.kv_linear.weight.dtype == torch.bfloat16
    assert model.blocks[0].scale_shift_table.dtype == torch.float32
    assert model.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        out = model(
            torch.randn(1, 36, 3, 8, 8, generator=gen),
            torch.tensor([500.0]),
            torch.randn(1, 512, 32, generator=gen),
            torch.randn(1, 257, TINY_DIT_CONFIG["image_dim"], generator=gen),
            audio=torch.randn(1, 9, 5, 2, 32, generator=gen),
        ).sample
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_a_missing_or_broken_wan_config_is_named_by_the_float_and_the_quantized_loaders(
    tmp_path: Path,
) -> None:
    from mt_assets.models.quant import load_quantized_transformer

    config = tmp_path / "config.json"
    with pytest.raises(CheckpointError, match=r"config\.json: cannot read the Wan config"):
        load_multitalk_transformer(tmp_path, None)
    config.write_text('{"dim": ')  # truncated
    for load in (
        lambda: load_multitalk_transformer(tmp_path, None),
        lambda: load_quantized_transformer(config, tmp_path / "q.safetensors", tmp_path / "q.json"),
    ):
        with pytest.raises(CheckpointError, match=rf"{config}: cannot read the Wan config"):
            load()
