"""Wan2.1's video VAE: `Wan2.1_VAE.pth` loaded into diffusers' AutoencoderKLWan.

The file is a torch pickle of a flat {key: tensor} dict, the state dict of Wan's `WanVAE_`
(`wan/modules/vae.py`). Its module lists are flat, which the key names mirror:

    encoder.conv1.*                         causal conv 3 → base_dim
    encoder.downsamples.K.*                 per stage i: num_res_blocks ResidualBlocks, then
                                            (except after the last stage) a Resample:
                                              ResidualBlock: residual.0.gamma (RMS norm),
                                                residual.2.* (conv), residual.3.gamma,
                                                residual.6.* (conv), shortcut.* (1x1x1 conv,
                                                only where the width changes)
                                              Resample: resample.1.* (2d conv),
                                                time_conv.* (only for a temporal step)
    encoder.middle.{0,2}.* / middle.1.*     ResidualBlock, AttentionBlock (norm.gamma, to_qkv, proj), ResidualBlock
    encoder.head.0.gamma, encoder.head.2.*  RMS norm, conv → 2*z_dim
    conv1.*, conv2.*                        1x1x1 convs before/after the latent (quant_conv, post_quant_conv)
    decoder.conv1.*, decoder.middle.*       as in the encoder
    decoder.upsamples.K.*                   per stage i: num_res_blocks+1 ResidualBlocks, then a
                                            Resample (upsample2d/3d: resample.1.*, time_conv.*)
    decoder.head.0.gamma, decoder.head.2.*  → 3 channels

Wan2.1: base_dim 96, z_dim 16, dim_mult [1, 2, 4, 4], num_res_blocks 2, temporal
downsampling [False, True, True]. The file carries no config; all of it is read from the
shapes (and which Resamples have a time_conv).

diffusers ships `convert_wan_vae_to_diffusers`, but its decoder indices are hard-coded for
num_res_blocks=2 (blocks 0-2, 4-6, ... are resnets, 3, 7, 11 the upsamplers), so it would
misplace a smaller VAE's keys. The mapping here is derived from the architecture instead;
a test checks that it agrees with diffusers' converter on the real layout.

Latents: Wan's pipeline never sees the raw latent. `WanVAE` (the wrapper) normalises the
encoder's mean per channel with Wan2.1's 16 constants and returns it without sampling;
decoding undoes it and clamps the frames to [-1, 1]. `encode_latent`/`decode_latent` are
those two calls, with the constants taken from AutoencoderKLWan's config (`latents_mean`,
`latents_std`, whose defaults are Wan2.1's).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan

from mt_assets.models.checkpoints import CheckpointError, check_keys, load_pth, load_strict
from mt_assets.models.reading import LoadStrategy, warm_tensors, will_copy

VAE_FILE = "Wan2.1_VAE.pth"

# AutoencoderKLWan's default latents_mean/latents_std are Wan2.1's 16-channel constants.
WAN21_Z_DIM = 16

_DOWN = re.compile(r"^encoder\.downsamples\.(\d+)\.")

# (wan key, (diffusers key, shape))
_Entry = tuple[str, tuple[str, tuple[int, ...]]]


@dataclass(frozen=True)
class WanVAESizes:
    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temperal_downsample: tuple[bool, ...] = field(default=(False, True, True))


def wan_vae_keys(s: WanVAESizes) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every key of a Wan VAE checkpoint: {wan key: (diffusers key, shape)}."""
    return dict(_walk(s))


def vae_sizes_from_state(state: Mapping[str, torch.Tensor], source: str) -> WanVAESizes:
    """The VAE sizes that the encoder's keys and shapes imply (the decoder mirrors them)."""
    base_dim = _shape(state, "encoder.conv1.weight", source)[0]
    z_dim = _shape(state, "conv2.weight", source)[0]
    indices = sorted({int(m.group(1)) for k in state if (m := _DOWN.match(k))})
    # The encoder's flat list: per stage, resnets then one Resample (none after the last).
    stages: list[list[int]] = [[]]
    temporal: list[bool] = []
    for k in indices:
        if f"encoder.downsamples.{k}.resample.1.weight" in state:
            temporal.append(f"encoder.downsamples.{k}.time_conv.weight" in state)
            stages.append([])
        else:
            stages[-1].append(_shape(state, f"encoder.downsamples.{k}.residual.2.weight", source)[0])
    if not stages[0] or any(len(s) != len(stages[0]) for s in stages):
        raise CheckpointError(
            f"{source}: encoder.downsamples does not split into stages of equal length "
            f"(residual blocks per stage: {[len(s) for s in stages]})"
        )
    mults = []
    for s in stages:
        if s[-1] % base_dim:
            raise CheckpointError(f"{source}: a stage width {s[-1]} is not a multiple of base_dim {base_dim}")
        mults.append(s[-1] // base_dim)
    return WanVAESizes(
        base_dim=base_dim,
        z_dim=z_dim,
        dim_mult=tuple(mults),
        num_res_blocks=len(stages[0]),
        temperal_downsample=tuple(temporal),
    )


def build_vae(sizes: WanVAESizes, *, device: str | torch.device = "meta") -> AutoencoderKLWan:
    """An AutoencoderKLWan of these sizes, with no weights loaded (meta: nothing allocated)."""
    with torch.device(device):
        return AutoencoderKLWan(
            base_dim=sizes.base_dim,
            z_dim=sizes.z_dim,
            dim_mult=list(sizes.dim_mult),
            num_res_blocks=sizes.num_res_blocks,
            temperal_downsample=list(sizes.temperal_downsample),
        )


def load_vae(
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    strategy: LoadStrategy | None = None,
) -> AutoencoderKLWan:
    """Wan's VAE checkpoint as an AutoencoderKLWan in eval mode, strictly (every key, every shape).

    strategy: how the tensors cast or copied to `device` are read (mt_assets.models.reading; None:
    $MT_LOAD_STRATEGY); tensors kept as they are stay memory-mapped, read when first touched.
    """
    source = str(path)
    state = load_pth(path)
    sizes = vae_sizes_from_state(state, source)
    if sizes.z_dim != WAN21_Z_DIM:
        raise CheckpointError(
            f"{source}: z_dim is {sizes.z_dim} ('conv2.weight'); Wan2.1's latent normalisation "
            f"is defined for {WAN21_Z_DIM} channels"
        )
    keys = wan_vae_keys(sizes)
    check_keys(state, {k: shape for k, (_, shape) in keys.items()}, source)
    warm_tensors((v for v in state.values() if will_copy(v, dtype, device)), strategy)
    model = build_vae(sizes, device="meta")
    converted = {keys[k][0]: v.to(device=device, dtype=dtype) for k, v in state.items()}
    load_strict(model, converted, source)
    return model.eval().requires_grad_(False)


def latent_norm(vae: AutoencoderKLWan) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, 1/std) as [1, z_dim, 1, 1, 1] in the VAE's dtype and device: Wan's `scale = [mean, 1/std]`.

    Like the reference, the reciprocal is taken once, of the std already in that dtype.
    """
    weight = vae.post_quant_conv.weight
    mean = torch.tensor(vae.config.latents_mean, dtype=weight.dtype, device=weight.device)
    std = torch.tensor(vae.config.latents_std, dtype=weight.dtype, device=weight.device)
    if mean.numel() != vae.config.z_dim or std.numel() != vae.config.z_dim:
        raise ValueError(
            f"VAE config: latents_mean/latents_std have {mean.numel()}/{std.numel()} values, "
            f"expected z_dim = {vae.config.z_dim}"
        )
    return mean.view(1, -1, 1, 1, 1), (1.0 / std).view(1, -1, 1, 1, 1)


@torch.no_grad()
def encode_latent(vae: AutoencoderKLWan, video: torch.Tensor) -> torch.Tensor:
    """A video [1, 3, F, H, W] or [3, F, H, W] in [-1, 1] → Wan's normalised latent [z_dim, T, H/8, W/8], float32.

    As `WanVAE.encode`: the encoder's mean (no sampling, log-variance dropped), then
    `(mu - mean) * (1/std)`. F must be 4n + 1 (T = n + 1): the encoder takes frame 0 alone and
    then causal chunks of 4, and diffusers would silently drop a partial chunk. Computed in the
    VAE's dtype on its device; tiling, if switched on, would change the result.
    """
    if video.dim() == 4:
        video = video.unsqueeze(0)
    if video.dim() != 5 or video.shape[0] != 1 or video.shape[1] != 3:
        raise ValueError(
            f"encode_latent: video must be [1, 3, F, H, W] or [3, F, H, W], got {list(video.shape)}"
        )
    frames = video.shape[2]
    if frames % 4 != 1:
        raise ValueError(
            f"encode_latent: the video has {frames} frames; the VAE needs 4n + 1 (1, 5, 9, ..., 81)"
        )
    weight = vae.post_quant_conv.weight
    mean, inv_std = latent_norm(vae)
    mu = vae.encode(video.to(device=weight.device, dtype=weight.dtype)).latent_dist.mean
    return ((mu - mean) * inv_std).float().squeeze(0)


@torch.no_grad()
def decode_latent(vae: AutoencoderKLWan, z: torch.Tensor) -> torch.Tensor:
    """Wan's normalised latent [z_dim, T, h, w] → video [3, 4(T-1)+1, 8h, 8w] in [-1, 1], float32.

    As `WanVAE.decode`: `z / (1/std) + mean` (the reference divides by the reciprocal, which
    differs from `z * std + mean` in the last bit), then the decoder one latent frame at a time
    (diffusers' `_decode`, which also does the one clamp to [-1, 1]).
    """
    if z.dim() != 4 or z.shape[0] != vae.config.z_dim:
        raise ValueError(f"decode_latent: z must be [{vae.config.z_dim}, T, h, w], got {list(z.shape)}")
    weight = vae.post_quant_conv.weight
    mean, inv_std = latent_norm(vae)
    z = z.to(device=weight.device, dtype=weight.dtype).unsqueeze(0) / inv_std + mean
    return vae.decode(z).sample.float().squeeze(0)


def _walk(s: WanVAESizes) -> Iterator[_Entry]:
    z2 = 2 * s.z_dim
    stage_dims = [s.base_dim * m for m in s.dim_mult]
    top = stage_dims[-1]

    yield from _conv3d("encoder.conv1", "encoder.conv_in", 3, s.base_dim, 3)
    # Encoder: flat in both namings, same indices.
    k, in_dim = 0, s.base_dim
    for i, out_dim in enumerate(stage_dims):
        for _ in range(s.num_res_blocks):
            yield from _resnet(f"encoder.downsamples.{k}", f"encoder.down_blocks.{k}", in_dim, out_dim)
            k, in_dim = k + 1, out_dim
        if i != len(stage_dims) - 1:
            temporal = s.temperal_downsample[i]
            yield from _resample(
                f"encoder.downsamples.{k}", f"encoder.down_blocks.{k}", out_dim, "down", temporal
            )
            k += 1
    yield from _middle("encoder", top)
    yield from _gamma("encoder.head.0", "encoder.norm_out", top)
    yield from _conv3d("encoder.head.2", "encoder.conv_out", top, z2, 3)

    yield from _conv3d("conv1", "quant_conv", z2, z2, 1)
    yield from _conv3d("conv2", "post_quant_conv", s.z_dim, s.z_dim, 1)

    # Decoder: Wan's flat list becomes up_blocks.i.{resnets.j, upsamplers.0}.
    yield from _conv3d("decoder.conv1", "decoder.conv_in", s.z_dim, top, 3)
    yield from _middle("decoder", top)
    up_dims = [top, *stage_dims[::-1]]
    temporal_up = s.temperal_downsample[::-1]
    k = 0
    for i, (in_dim, out_dim) in enumerate(pairwise(up_dims)):
        if i > 0:
            in_dim //= 2  # the previous stage's upsampler halves the channels
        for j in range(s.num_res_blocks + 1):
            yield from _resnet(
                f"decoder.upsamples.{k}", f"decoder.up_blocks.{i}.resnets.{j}", in_dim, out_dim
            )
            k, in_dim = k + 1, out_dim
        if i != len(up_dims) - 2:
            up = f"decoder.up_blocks.{i}.upsamplers.0"
            yield from _resample(f"decoder.upsamples.{k}", up, out_dim, "up", temporal_up[i])
            k += 1
    yield from _gamma("decoder.head.0", "decoder.norm_out", s.base_dim * s.dim_mult[0])
    yield from _conv3d("decoder.head.2", "decoder.conv_out", s.base_dim * s.dim_mult[0], 3, 3)


def _conv3d(wan: str, hf: str, cin: int, cout: int, k: int | Sequence[int]) -> Iterator[_Entry]:
    kt, kh, kw = (k, k, k) if isinstance(k, int) else k
    yield f"{wan}.weight", (f"{hf}.weight", (cout, cin, kt, kh, kw))
    yield f"{wan}.bias", (f"{hf}.bias", (cout,))


def _conv2d(wan: str, hf: str, cin: int, cout: int, k: int) -> Iterator[_Entry]:
    yield f"{wan}.weight", (f"{hf}.weight", (cout, cin, k, k))
    yield f"{wan}.bias", (f"{hf}.bias", (cout,))


def _gamma(wan: str, hf: str, dim: int, *, images: bool = False) -> Iterator[_Entry]:
    # RMS_norm keeps gamma broadcastable: [dim, 1, 1, 1] for video, [dim, 1, 1] for images.
    yield f"{wan}.gamma", (f"{hf}.gamma", (dim, 1, 1) if images else (dim, 1, 1, 1))


def _resnet(wan: str, hf: str, cin: int, cout: int) -> Iterator[_Entry]:
    yield from _gamma(f"{wan}.residual.0", f"{hf}.norm1", cin)
    yield from _conv3d(f"{wan}.residual.2", f"{hf}.conv1", cin, cout, 3)
    yield from _gamma(f"{wan}.residual.3", f"{hf}.norm2", cout)
    yield from _conv3d(f"{wan}.residual.6", f"{hf}.conv2", cout, cout, 3)
    if cin != cout:
        yield from _conv3d(f"{wan}.shortcut", f"{hf}.conv_shortcut", cin, cout, 1)


def _resample(wan: str, hf: str, dim: int, direction: str, temporal: bool) -> Iterator[_Entry]:
    if direction == "down":
        yield from _conv2d(f"{wan}.resample.1", f"{hf}.resample.1", dim, dim, 3)
        if temporal:
            yield from _conv3d(f"{wan}.time_conv", f"{hf}.time_conv", dim, dim, (3, 1, 1))
    else:
        yield from _conv2d(f"{wan}.resample.1", f"{hf}.resample.1", dim, dim // 2, 3)
        if temporal:
            yield from _conv3d(f"{wan}.time_conv", f"{hf}.time_conv", dim, 2 * dim, (3, 1, 1))


def _middle(part: str, dim: int) -> Iterator[_Entry]:
    yield from _resnet(f"{part}.middle.0", f"{part}.mid_block.resnets.0", dim, dim)
    yield from _gamma(f"{part}.middle.1.norm", f"{part}.mid_block.attentions.0.norm", dim, images=True)
    yield from _conv2d(f"{part}.middle.1.to_qkv", f"{part}.mid_block.attentions.0.to_qkv", dim, 3 * dim, 1)
    yield from _conv2d(f"{part}.middle.1.proj", f"{part}.mid_block.attentions.0.proj", dim, dim, 1)
    yield from _resnet(f"{part}.middle.2", f"{part}.mid_block.resnets.1", dim, dim)


def _shape(state: Mapping[str, torch.Tensor], key: str, source: str) -> tuple[int, ...]:
    if key not in state:
        raise CheckpointError(f"{source}: missing key {key!r} (needed to read the model's sizes)")
    return tuple(state[key].shape)
