"""The three encoders the pipeline loads, against MultiTalk's reference on the tiny golden checkpoints.

The golden set's README, sections E (Wan VAE), F (CLIP vision tower) and G (umT5 encoder), plus the
latent part of section C's `y`: the tiny `.pth` files in the real formats go through our loaders, and
every stored intermediate is compared at atol 1e-4 (fp32 vs float64 in the reference: ≤ 4.2e-6).
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from diffusers import AutoencoderKLWan
from safetensors.torch import load_file
from transformers import CLIPVisionModelWithProjection, UMT5EncoderModel

from mt_assets.models.checkpoints import CheckpointError
from mt_assets.models.clip_vision import (
    HEAD_DIM,
    clip_image_features,
    clip_preprocess,
    clip_resize,
    load_clip_vision,
)
from mt_assets.models.text_encoder import encode_text, load_t5_encoder
from mt_assets.models.vae import decode_latent, encode_latent, latent_norm, load_vae
from mt_assets_tests.golden import PIPELINE_GOLDEN_DIR, requires_pipeline_golden

pytestmark = requires_pipeline_golden

ATOL = 1e-4


def assert_close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.shape == ref.shape
    assert ours.dtype == torch.float32
    err = (ours - ref).abs().max().item()
    assert err <= ATOL, f"max abs difference {err:.3g} > {ATOL}"


def golden(name: str) -> dict[str, torch.Tensor]:
    return load_file(PIPELINE_GOLDEN_DIR / name)


def config(name: str) -> dict:
    return json.loads((PIPELINE_GOLDEN_DIR / name).read_text())


# ---- E. VAE ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vae() -> AutoencoderKLWan:
    return load_vae(PIPELINE_GOLDEN_DIR / "vae_tiny.pth")


@pytest.fixture(scope="module")
def vae_golden() -> dict[str, torch.Tensor]:
    return golden("vae_golden.safetensors")


def test_vae_latent_norm_is_wan21s_sixteen_constants(vae, vae_golden) -> None:
    mean, inv_std = latent_norm(vae)
    assert torch.equal(torch.tensor(vae.config.latents_mean), vae_golden["norm.mean"])
    assert torch.equal(torch.tensor(vae.config.latents_std), vae_golden["norm.std"])
    assert torch.equal(mean.flatten(), vae_golden["norm.mean"])
    assert torch.equal(inv_std.flatten(), 1.0 / vae_golden["norm.std"])
    cfg = config("vae_config.json")
    assert (cfg["latent_mean"], cfg["latent_std"]) == (vae.config.latents_mean, vae.config.latents_std)


def test_vae_encode_latent_is_the_normalised_mean_of_the_reference(vae, vae_golden) -> None:
    encoder_chunks: list[torch.Tensor] = []
    hook = vae.encoder.register_forward_hook(lambda _m, _i, out: encoder_chunks.append(out))
    try:
        mu = encode_latent(vae, vae_golden["encode.video"])
    finally:
        hook.remove()
    # frame 0 alone, then one chunk of 4 per latent frame
    assert [c.shape[2] for c in encoder_chunks] == [1, 1, 1]
    assert_close(torch.cat(encoder_chunks, dim=2), vae_golden["encode.encoder_out"])
    assert_close(mu, vae_golden["encode.mu"])
    # the same video without its batch axis
    assert_close(encode_latent(vae, vae_golden["encode.video"][0]), vae_golden["encode.mu"])


def test_vae_raw_mean_before_normalisation_matches(vae, vae_golden) -> None:
    with torch.no_grad():
        dist = vae.encode(vae_golden["encode.video"]).latent_dist
    assert_close(dist.mean, vae_golden["encode.mu_raw"])
    assert_close(dist.logvar, vae_golden["encode.log_var"])


def test_vae_encode_latent_rejects_a_frame_count_that_is_not_4n_plus_1(vae, vae_golden) -> None:
    with pytest.raises(ValueError, match="8 frames"):
        encode_latent(vae, vae_golden["encode.video"][:, :, :8])


def test_vae_decode_latent_denormalises_decodes_and_clamps_once(vae, vae_golden) -> None:
    decoder_chunks: list[torch.Tensor] = []
    conv_inputs: list[torch.Tensor] = []
    hooks = [
        vae.decoder.register_forward_hook(lambda _m, _i, out: decoder_chunks.append(out)),
        vae.post_quant_conv.register_forward_pre_hook(lambda _m, args: conv_inputs.append(args[0])),
    ]
    try:
        video = decode_latent(vae, vae_golden["decode.z"])
    finally:
        for h in hooks:
            h.remove()
    assert_close(conv_inputs[0], vae_golden["decode.z_denorm"])
    # one latent frame at a time: 1 frame, then 4 per latent frame
    assert [c.shape[2] for c in decoder_chunks] == [1, 4, 4]
    raw = torch.cat(decoder_chunks, dim=2)[0]
    assert_close(raw, vae_golden["decode.raw"])
    assert raw.abs().max() > 1  # the golden exercises the clamp
    assert_close(video, vae_golden["decode.video"])
    assert video.abs().max() <= 1


def test_vae_latent_of_y_is_the_conditioning_frame_followed_by_zeros(vae) -> None:
    cond = golden("conditioning_golden.safetensors")
    video = torch.cat([cond["i2v.cond_image"], torch.zeros(1, 3, 16, 64, 96)], dim=2)
    latent = encode_latent(vae, video)
    assert_close(latent, cond["i2v.vae_latent"])
    assert_close(latent, cond["i2v.y"][0, 4:])


# ---- F. CLIP vision tower --------------------------------------------------------------------


def golden_clip_head_dim() -> int:
    kw = config("clip_config.json")["clip_xlm_roberta_vit_h_14_kwargs"]
    return kw["vision_dim"] // kw["vision_heads"]


@pytest.fixture(scope="module")
def clip() -> CLIPVisionModelWithProjection:
    return load_clip_vision(PIPELINE_GOLDEN_DIR / "clip_tiny.pth", head_dim=golden_clip_head_dim())


@pytest.fixture(scope="module")
def clip_golden() -> dict[str, torch.Tensor]:
    return golden("clip_golden.safetensors")


def test_clip_loads_with_the_head_count_it_was_built_with(clip) -> None:
    assert golden_clip_head_dim() == 32
    assert (clip.config.hidden_size, clip.config.num_attention_heads) == (96, 3)


def test_clip_preprocess_squashes_the_last_frame_like_the_reference(clip_golden) -> None:
    last_frame = clip_golden["input_video"][:, :, -1]
    assert_close(clip_resize(last_frame, 56), clip_golden["resized"])
    assert_close(clip_preprocess(last_frame, 56), clip_golden["pixel_values"])


def test_clip_image_features_are_the_penultimate_block(clip, clip_golden) -> None:
    pixels = clip_preprocess(clip_golden["input_video"][:, :, -1], 56)
    assert_close(clip_image_features(clip, pixels), clip_golden["out"])
    with torch.no_grad():
        hidden = clip(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert_close(hidden[0], clip_golden["embeddings"])
    blocks = clip_golden["block_outputs"]
    for n in range(blocks.shape[0]):
        assert_close(hidden[n + 1], blocks[n])


def test_clip_with_wans_default_head_size_is_refused_naming_the_file() -> None:
    path = PIPELINE_GOLDEN_DIR / "clip_tiny.pth"
    with pytest.raises(
        CheckpointError, match=rf"{re.escape(str(path))}: vision width 96 .* head size {HEAD_DIM}"
    ):
        load_clip_vision(path)


def test_clip_with_the_wrong_head_count_computes_different_features(clip_golden) -> None:
    # one head of 96 channels loads without complaint but is not the model the file was trained as
    wrong = load_clip_vision(PIPELINE_GOLDEN_DIR / "clip_tiny.pth", head_dim=96)
    pixels = clip_preprocess(clip_golden["input_video"][:, :, -1], 56)
    err = (clip_image_features(wrong, pixels) - clip_golden["out"]).abs().max().item()
    assert err > 100 * ATOL


# ---- G. T5 encoder ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def t5() -> UMT5EncoderModel:
    return load_t5_encoder(PIPELINE_GOLDEN_DIR / "t5_tiny.pth")


@pytest.fixture(scope="module")
def t5_golden() -> dict[str, torch.Tensor]:
    return golden("t5_golden.safetensors")


def test_t5_sizes_including_32_buckets_are_read_from_the_file(t5) -> None:
    kw = config("t5_config.json")["umt5_xxl_kwargs"]
    c = t5.config
    assert c.relative_attention_num_buckets == kw["num_buckets"] == 32
    assert (c.vocab_size, c.d_model, c.d_kv * c.num_heads, c.d_ff) == (
        kw["vocab_size"],
        kw["dim"],
        kw["dim_attn"],
        kw["dim_ffn"],
    )
    assert (c.num_heads, c.num_layers) == (kw["num_heads"], kw["encoder_layers"])


def test_t5_relative_buckets_match_the_reference(t5, t5_golden) -> None:
    attention = t5.encoder.block[0].layer[0].SelfAttention
    buckets = attention._relative_position_bucket(t5_golden["rel_bucket_offsets"])
    assert torch.equal(buckets, t5_golden["rel_bucket_by_offset"])


def test_t5_encode_text_cuts_each_prompt_to_its_true_length(t5, t5_golden) -> None:
    context = encode_text(t5, t5_golden["ids"], t5_golden["mask"])
    assert [c.shape[0] for c in context] == [11, 150]
    assert_close(context[0], t5_golden["context_0"])
    assert_close(context[1], t5_golden["context_1"])


def test_t5_encoder_states_match_at_the_real_positions(t5, t5_golden) -> None:
    with torch.no_grad():
        states = t5(input_ids=t5_golden["ids"], attention_mask=t5_golden["mask"]).last_hidden_state
    real = t5_golden["mask"].bool()
    assert_close(states[real], t5_golden["encoder_out"][real])
