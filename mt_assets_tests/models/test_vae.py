"""Wan2.1's VAE checkpoint → diffusers' AutoencoderKLWan: sizes from shapes, strict keys, encode/decode."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

from mt_assets.models.checkpoints import CheckpointError
from mt_assets.models.vae import (
    VAE_FILE,
    WanVAESizes,
    build_vae,
    load_vae,
    vae_sizes_from_state,
    wan_vae_keys,
)
from mt_assets.tiny.wan_parts import TINY_VAE, write_tiny_vae


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_vae(tmp_path_factory.mktemp("wan"), seed=0)


def _meta_state(sizes: WanVAESizes) -> dict[str, torch.Tensor]:
    return {k: torch.empty(shape, device="meta") for k, (_, shape) in wan_vae_keys(sizes).items()}


def _diffusers_shapes(sizes: WanVAESizes) -> dict[str, tuple[int, ...]]:
    model = build_vae(sizes)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_the_key_map_agrees_with_diffusers_converter_on_the_real_layout() -> None:
    real = WanVAESizes()  # base_dim 96, z_dim 16, dim_mult 1,2,4,4, 2 res blocks
    keys = wan_vae_keys(real)
    assert convert_wan_vae_to_diffusers({k: k for k in keys}) == {hf: wan for wan, (hf, _) in keys.items()}
    assert {hf: shape for hf, shape in keys.values()} == _diffusers_shapes(real)


@pytest.mark.parametrize("sizes", [WanVAESizes(), TINY_VAE, WanVAESizes(base_dim=8, dim_mult=(1, 2, 2, 4))])
def test_sizes_are_inferred_from_shapes_and_fit_diffusers_model(sizes: WanVAESizes) -> None:
    assert vae_sizes_from_state(_meta_state(sizes), "vae") == sizes
    assert {hf: shape for hf, shape in wan_vae_keys(sizes).values()} == _diffusers_shapes(sizes)


def test_tiny_vae_encodes_and_decodes_a_short_video(tiny_vae: Path) -> None:
    vae = load_vae(tiny_vae)
    assert (vae.config.base_dim, vae.config.z_dim, vae.config.num_res_blocks) == (4, 16, 1)
    assert list(vae.config.dim_mult) == [1, 1, 1, 1] and list(vae.config.temperal_downsample) == [
        False,
        True,
        True,
    ]
    video = torch.rand(1, 3, 5, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        latents = vae.encode(video).latent_dist.mode()
        assert latents.shape == (1, 16, 2, 4, 4)  # 1 + 4 frames → 2 latent frames, 8x spatially
        frames = vae.decode(latents).sample
    assert frames.shape == (1, 3, 5, 32, 32)
    assert torch.isfinite(frames).all()


def test_dtype_is_a_parameter(tiny_vae: Path) -> None:
    assert {p.dtype for p in load_vae(tiny_vae, dtype=torch.bfloat16).parameters()} == {torch.bfloat16}


@pytest.mark.parametrize(
    "key", ["decoder.upsamples.3.shortcut.weight", "conv1.bias", "encoder.middle.1.to_qkv.weight"]
)
def test_a_missing_key_is_named(tmp_path: Path, tiny_vae: Path, key: str) -> None:
    sd = torch.load(tiny_vae, weights_only=True)
    del sd[key]
    torch.save(sd, tmp_path / VAE_FILE)
    with pytest.raises(CheckpointError, match=rf"{VAE_FILE}: missing key '{key}'"):
        load_vae(tmp_path / VAE_FILE)


def test_an_unexpected_key_is_named(tmp_path: Path, tiny_vae: Path) -> None:
    sd = torch.load(tiny_vae, weights_only=True)
    sd["decoder.middle.3.gamma"] = torch.ones(4, 1, 1, 1)
    torch.save(sd, tmp_path / VAE_FILE)
    with pytest.raises(CheckpointError, match=r"unexpected key 'decoder.middle.3.gamma'"):
        load_vae(tmp_path / VAE_FILE)


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("this must never run",))


def test_a_pickle_with_objects_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save({"conv1.weight": torch.zeros(1), "meta": {"author": _Payload()}}, tmp_path / VAE_FILE)
    with pytest.raises(CheckpointError, match=rf"{VAE_FILE}: refused"):
        load_vae(tmp_path / VAE_FILE)
    assert "must never run" not in capsys.readouterr().out


def test_two_tiny_builds_are_byte_identical(tmp_path: Path) -> None:
    assert write_tiny_vae(tmp_path / "a", 5).read_bytes() == write_tiny_vae(tmp_path / "b", 5).read_bytes()
