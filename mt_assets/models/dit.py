"""The MultiTalk DiT: diffusers' Wan2.1 I2V transformer with MeiGen's audio adapter attached.

The modules only; reading them from the files on the volume (key naming, the shard index, the
loader) is `dit_loading.py`, as diffusers keeps conversion out of `transformer_wan.py`.

Adapter parameters (`MultiTalkTransformer3DModel.state_dict()` names, as in MeiGen's file):

    audio_proj.{proj1,proj1_vf,proj2,proj3,norm}.{weight,bias}
    blocks.N.audio_cross_attn.{q_linear,kv_linear,proj}.{weight,bias}
    blocks.N.norm_x.{weight,bias}
The forward reproduces MeiGen's `wan/modules/multitalk_model.py` (commit c1ad840) exactly in fp32.
Where it departs from diffusers' stock `WanTransformer3DModel.forward` (measured on the golden data):
  * image/text context are embedded and attended separately (the 257 CLIP tokens are never
    located by `len - 512`, which is wrong for any other text length);
  * the timestep sinusoid is computed in float64, as the reference does;
  * the 3-D RoPE rotation is applied in float64 (diffusers rounds cos/sin to float32 first);
  * two speakers: the label RoPE positions come from a reference-attention map computed from
    the self-attention's post-RoPE q/k (keys of latent frame 0, heads averaged in 2 chunks).
With `audio=None` it computes what stock diffusers computes (no adapter at all).
With a `teacache` state (render/teacache.py) the blocks may be replaced by a cached residual, as the
reference's TeaCache does; without one every call runs them (the default, unchanged).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.normalization import FP32LayerNorm
from diffusers.models.transformers.transformer_wan import WanTransformer3DModel
from torch import nn

if TYPE_CHECKING:
    from mt_assets.render.teacache import TeaCache

# Hard-coded in the reference (not constructor arguments there either).
IMAGE_TOKENS = 257  # CLIP ViT-H/14 at 224 px: 256 patches + class token
CLASS_RANGE = 24  # label-RoPE span: speaker 1 at [0, 4], speaker 2 at [20, 24], background 12
CLASS_INTERVAL = 4
ATTN_MAP_HEAD_CHUNKS = 2  # the reference averages the reference-attention map over heads in 2 chunks
LABEL_ROPE_BASE = 10000


@dataclass(frozen=True)
class MultiTalkConfig:
    """The adapter's arguments and the Wan widths the diffusers config does not carry.

    Reference defaults (MeiGen's `WanModel.__init__` and `AudioProjModel`):
      audio_window 5       wav2vec frames per video frame (±2)
      intermediate_dim 512 audio_proj hidden width
      output_dim 768       audio token width (kv_linear input)
      context_tokens 32    audio tokens per latent frame per speaker
      vae_scale 4          video frames per latent frame (after the first)
      norm_output_audio    LayerNorm on audio tokens (audio_proj.norm)
      norm_input_visual    affine LayerNorm `norm_x` before the audio cross-attention
    and, fixed in the reference but configurable here so the tiny profile can shrink them:
      text_dim 4096        T5 feature width
      image_dim 1280       CLIP feature width
      audio_blocks 12      wav2vec2 hidden-state layers the adapter consumes (hidden_states[1:])
      audio_channels 768   wav2vec2 hidden width
    """

    text_len: int = 512
    text_dim: int = 4096
    image_dim: int = 1280
    audio_window: int = 5
    intermediate_dim: int = 512
    output_dim: int = 768
    context_tokens: int = 32
    vae_scale: int = 4
    norm_output_audio: bool = True
    norm_input_visual: bool = True
    audio_blocks: int = 12
    audio_channels: int = 768


# Keys of Wan's config.json that must hold these values (the adapter only exists for I2V).
_FIXED_CONFIG = {"model_type": "i2v", "window_size": [-1, -1], "qk_norm": True, "cross_attn_norm": True}
_WAN_SHAPE_KEYS = ("dim", "ffn_dim", "freq_dim", "in_dim", "num_heads", "num_layers", "out_dim", "eps")
_IGNORED_CONFIG = {"weight_init"}  # the reference's init switch; weights come from files


def parse_wan_config(config: Mapping[str, Any]) -> tuple[dict[str, Any], MultiTalkConfig]:
    """Split an original Wan config.json dict into diffusers kwargs and the MultiTalk extras.

    Required: dim, ffn_dim, freq_dim, in_dim, num_heads, num_layers, out_dim (eps defaults to 1e-6).
    Optional: patch_size (1,2,2), text_len, model_type/window_size/qk_norm/cross_attn_norm (must be
    the I2V values), the `MultiTalkConfig` fields, and "_"-prefixed bookkeeping keys. Anything else
    is an error, so a typo never silently falls back to a default.
    """
    extras = {f.name for f in fields(MultiTalkConfig)}
    known = set(_WAN_SHAPE_KEYS) | set(_FIXED_CONFIG) | extras | _IGNORED_CONFIG | {"patch_size"}
    unknown = sorted(k for k in config if k not in known and not k.startswith("_"))
    if unknown:
        raise ValueError(f"Wan config: unknown key {unknown[0]!r} (known: {sorted(known)})")
    for key, value in _FIXED_CONFIG.items():
        got = config.get(key, value)
        if (list(got) if isinstance(got, list | tuple) else got) != value:
            raise ValueError(f"Wan config: {key!r} is {got!r}; MultiTalk needs {value!r}")
    missing = [k for k in _WAN_SHAPE_KEYS if k not in config and k != "eps"]
    if missing:
        raise ValueError(f"Wan config: missing key {missing[0]!r}")
    dim, heads = int(config["dim"]), int(config["num_heads"])
    if dim % heads or (dim // heads) % 2:
        raise ValueError(f"Wan config: dim {dim} must split into {heads} heads of even width")
    mt = MultiTalkConfig(**{k: config[k] for k in extras if k in config})
    diffusers_kwargs = {
        "patch_size": tuple(config.get("patch_size", (1, 2, 2))),
        "num_attention_heads": heads,
        "attention_head_dim": dim // heads,
        "in_channels": int(config["in_dim"]),
        "out_channels": int(config["out_dim"]),
        "text_dim": mt.text_dim,
        "freq_dim": int(config["freq_dim"]),
        "ffn_dim": int(config["ffn_dim"]),
        "num_layers": int(config["num_layers"]),
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "eps": float(config.get("eps", 1e-6)),
        "image_dim": mt.image_dim,
        "added_kv_proj_dim": dim,  # Wan's k_img/v_img are Linear(dim, dim) on the embedded CLIP tokens
        "rope_max_seq_len": 1024,  # the reference's rope_params(1024, ...)
    }
    return diffusers_kwargs, mt


class AudioProjModel(nn.Module):
    """wav2vec2 windows -> `context_tokens` audio tokens per latent frame (MeiGen's AudioProjModel).

    proj1 sees the first video frame's window (audio_window × blocks × channels); proj1_vf sees,
    for each later latent frame, an (audio_window + vae_scale - 1)-item window built from its
    vae_scale video frames (see `MultiTalkTransformer3DModel.audio_tokens`).
    """

    def __init__(self, mt: MultiTalkConfig) -> None:
        super().__init__()
        self.mt = mt
        per_item = mt.audio_blocks * mt.audio_channels
        self.proj1 = nn.Linear(mt.audio_window * per_item, mt.intermediate_dim)
        self.proj1_vf = nn.Linear((mt.audio_window + mt.vae_scale - 1) * per_item, mt.intermediate_dim)
        self.proj2 = nn.Linear(mt.intermediate_dim, mt.intermediate_dim)
        self.proj3 = nn.Linear(mt.intermediate_dim, mt.context_tokens * mt.output_dim)
        self.norm: nn.Module = nn.LayerNorm(mt.output_dim) if mt.norm_output_audio else nn.Identity()

    def forward(self, first: torch.Tensor, later: torch.Tensor) -> torch.Tensor:
        """first [N, 1, w, b, c], later [N, n_t, w+vae_scale-1, b, c] -> [N, 1+n_t, tokens, width]."""
        n, n_t = first.shape[0], later.shape[1]
        a = torch.relu(self.proj1(first.reshape(n, -1)))
        a_vf = torch.relu(self.proj1_vf(later.reshape(n * n_t, -1)))
        a = torch.cat([a.view(n, 1, -1), a_vf.view(n, n_t, -1)], dim=1).view(n * (1 + n_t), -1)
        a = self.proj3(torch.relu(self.proj2(a)))
        a = self.norm(a.reshape(n * (1 + n_t), self.mt.context_tokens, self.mt.output_dim))
        return a.view(n, 1 + n_t, self.mt.context_tokens, self.mt.output_dim)


class AudioCrossAttention(nn.Module):
    """Each latent frame's visual tokens attend to that frame's audio tokens (MeiGen's
    SingleStreamMutiAttention with qk_norm off and biases on). `kv_linear` is k and v fused:
    the first `dim` output rows are k, the next `dim` are v."""

    def __init__(self, dim: int, audio_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(audio_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        tokens: torch.Tensor,
        q_positions: torch.Tensor | None = None,
        k_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [B, N_t*S, C], tokens [B, N_t, N_a, C_a]; positions (label RoPE) [B, N_t*S] and [N_a]."""
        b, length, c = x.shape
        n_t, n_a = tokens.shape[1], tokens.shape[2]
        s, h = length // n_t, self.num_heads
        q = self.q_linear(x).view(b, n_t, s, h, c // h)
        kv = self.kv_linear(tokens).view(b, n_t, n_a, 2, h, c // h)
        k, v = kv[..., 0, :, :], kv[..., 1, :, :]
        if q_positions is not None and k_positions is not None:
            q = _label_rope(q, q_positions.view(b, n_t, s))
            k = _label_rope(k, k_positions.view(1, 1, n_a).expand(b, n_t, n_a))
        out = F.scaled_dot_product_attention(
            q.flatten(0, 1).transpose(1, 2), k.flatten(0, 1).transpose(1, 2), v.flatten(0, 1).transpose(1, 2)
        )
        return self.proj(out.transpose(1, 2).reshape(b, length, c))


def _label_rope(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """1-D RoPE on interleaved pairs (rotate-half of (x0, x1) = (-x1, x0)), float32, base 10000.

    x [..., seq, heads, head_dim], positions [..., seq]. Written like the reference's
    RotaryPositionalEmbedding1D so the float32 rounding is the same.
    """
    d = x.shape[-1]
    inv_freq = 1.0 / (LABEL_ROPE_BASE ** (torch.arange(0, d, 2)[: d // 2].float() / d))
    angles = positions.float()[..., None] * inv_freq.to(positions.device)  # [..., seq, d/2]
    angles = angles.repeat_interleave(2, dim=-1)[..., None, :]  # broadcast over heads
    xf = x.float()
    pairs = xf.unflatten(-1, (-1, 2))
    rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return (xf * angles.cos() + rotated * angles.sin()).type_as(x)


class MultiTalkTransformer3DModel(WanTransformer3DModel):
    """Wan2.1 I2V DiT (diffusers) + MultiTalk audio adapter. Build with `build_multitalk_transformer`.

    The adapter modules live at `audio_proj`, `blocks[i].audio_cross_attn` and `blocks[i].norm_x`,
    so `state_dict()` carries multitalk.safetensors' key names for them; everything else has
    diffusers' names. `adapter_state_dict()` returns the adapter part alone.
    """

    multitalk_config: MultiTalkConfig

    def attach_audio_adapter(self, mt: MultiTalkConfig) -> None:
        dim = self.config.num_attention_heads * self.config.attention_head_dim
        self.multitalk_config = mt
        self.audio_proj = AudioProjModel(mt)
        for block in self.blocks:
            block.audio_cross_attn = AudioCrossAttention(dim, mt.output_dim, self.config.num_attention_heads)
            block.norm_x = (
                FP32LayerNorm(dim, self.config.eps, elementwise_affine=True)
                if mt.norm_input_visual
                else nn.Identity()
            )

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The adapter's tensors under multitalk.safetensors' key names."""
        return {k: v for k, v in self.state_dict().items() if is_adapter_key(k)}

    # ------------------------------------------------------------------ forward
    def forward(  # type: ignore[override]
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_image: torch.Tensor,
        audio: torch.Tensor | None = None,
        ref_target_masks: torch.Tensor | None = None,
        return_dict: bool = True,
        intermediates: dict[str, torch.Tensor] | None = None,
        teacache: TeaCache | None = None,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """Predict the flow for one denoising step.

        hidden_states: [B, in_dim, F, H, W] — noisy latent (16 ch) then the I2V condition y (20 ch).
        timestep: [B] (float; 0..1000).
        encoder_hidden_states: [B, text_len, text_dim] — T5 features zero-padded to text_len
            (the reference does not mask the padding, so the padding length matters).
        encoder_hidden_states_image: [B, 257, image_dim] — CLIP penultimate features.
        audio: None (no adapter: plain Wan I2V), or windowed wav2vec2 features
            [S, F_video, audio_window, audio_blocks, audio_channels] shared by the batch, or
            [B, S, ...] per sample; S = number of speakers (1 or 2), F_video = 1 + vae_scale*(F-1).
        ref_target_masks: [3, h, w] or [B, 3, h, w] (speaker 1, speaker 2, background) at any
            resolution; needed when S == 2 (drives the label RoPE), ignored when S == 1.
        intermediates: if a dict is given, it is filled with the tensors named like the golden
            `dit_intermediates.safetensors` (for locating a mismatch).
        teacache: None (every call runs the blocks), or the clip's `TeaCache` state: it measures e0
            and either runs the blocks (caching their residual) or adds the cached residual.
        Returns the prediction [B, out_dim, F, H, W] in float32.
        """
        rec = intermediates if intermediates is not None else None
        batch, _, frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.config.patch_size
        grid = (frames // p_t, height // p_h, width // p_w)
        dtype = self.patch_embedding.weight.dtype

        x = self.patch_embedding(hidden_states.to(dtype)).flatten(2).transpose(1, 2).contiguous()
        temb, e0 = self._time_embedding(timestep)
        emb = self.condition_embedder
        text = emb.text_embedder(encoder_hidden_states.to(dtype))
        image = emb.image_embedder(encoder_hidden_states_image.to(dtype)).to(dtype)
        cos, sin = self._rope_float64(grid, x.device)
        if rec is not None:
            rec.update(time_embedding_out=temb, e0=e0, block0_in=x, context_emb=torch.cat([image, text], 1))

        tokens, human_num = None, 0
        if audio is not None:
            tokens, human_num = self.audio_tokens(audio, batch, grid[0], rec)
            tokens = tokens.to(dtype)
        masks = None
        if ref_target_masks is not None and (human_num == 2 or rec is not None):
            masks = _token_masks(ref_target_masks, batch, grid[1], grid[2])
            if rec is not None:
                rec["token_ref_target_masks"] = masks[0]
        if human_num == 2 and masks is None:
            raise ValueError("MultiTalk forward: two speakers need ref_target_masks [3, h, w]")
        if rec is not None:
            rec["human_num"] = torch.tensor([human_num])

        def blocks(x: torch.Tensor) -> torch.Tensor:
            for i, block in enumerate(self.blocks):
                x = self._block(i, block, x, e0, text, image, cos, sin, grid, tokens, human_num, masks, rec)
            return x

        x = blocks(x) if teacache is None else teacache.run(x, e0, blocks)

        # The modulation tables are read where they are (render/low_vram.py may keep them on the host).
        table = self.scale_shift_table.to(temb.device, torch.float32)
        shift, scale = (table + temb.float().unsqueeze(1)).chunk(2, dim=1)
        x = (self.norm_out(x.float()) * (1 + scale) + shift).to(self.proj_out.weight.dtype)
        x = self.proj_out(x)
        if rec is not None:
            rec["head_out"] = x
        x = x.reshape(batch, *grid, p_t, p_h, p_w, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        out = x.flatten(6, 7).flatten(4, 5).flatten(2, 3).float()
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)

    def forward_reference(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        clip_fea: torch.Tensor,
        y: torch.Tensor,
        audio: torch.Tensor | None,
        ref_target_masks: torch.Tensor | None = None,
        intermediates: dict[str, torch.Tensor] | None = None,
        teacache: TeaCache | None = None,
    ) -> torch.Tensor:
        """The reference's call, `WanModel([x], t, [context], seq_len, clip_fea, y, audio, masks)`.

        x [16, F, H, W] latent; t [1]; context [L, text_dim] unpadded T5 features (L <= text_len);
        clip_fea [1, 257, image_dim]; y [1, 20, F, H, W]; audio [S, F_video, window, blocks,
        channels]; ref_target_masks [3, h, w]; teacache: see `forward`. Returns [1, out_dim, F, H, W].
        """
        text_len = self.multitalk_config.text_len
        if context.shape[0] > text_len:
            raise ValueError(f"context has {context.shape[0]} tokens, more than text_len {text_len}")
        padded = torch.cat([context, context.new_zeros(text_len - context.shape[0], context.shape[1])])
        hidden = torch.cat([x.unsqueeze(0), y.to(x.dtype)], dim=1)
        result = self(
            hidden, t, padded.unsqueeze(0), clip_fea, audio=audio, ref_target_masks=ref_target_masks,
            return_dict=False, intermediates=intermediates, teacache=teacache,
        )  # fmt: skip
        return result[0]

    # ------------------------------------------------------------------ pieces
    def audio_tokens(
        self, audio: torch.Tensor, batch: int, latent_frames: int, rec: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, int]:
        """Windowed audio [S|B,S, F_video, w, b, c] -> tokens [B, N_t, S*context_tokens, width], S."""
        mt = self.multitalk_config
        if audio.ndim == 5:
            audio = audio.unsqueeze(0).expand(batch, *audio.shape)
        if audio.ndim != 6 or audio.shape[0] != batch:
            raise ValueError(
                f"audio must be [S, F, w, b, c] or [{batch}, S, F, w, b, c]; got {list(audio.shape)}"
            )
        _, speakers, video_frames, window, blocks, channels = audio.shape
        expected = 1 + mt.vae_scale * (latent_frames - 1)
        if (video_frames, window, blocks, channels) != (
            expected,
            mt.audio_window,
            mt.audio_blocks,
            mt.audio_channels,
        ):
            raise ValueError(
                f"audio shape {list(audio.shape)[1:]}: expected [S, {expected}, {mt.audio_window}, "
                f"{mt.audio_blocks}, {mt.audio_channels}] for {latent_frames} latent frames"
            )
        if speakers not in (1, 2):
            raise ValueError(f"audio has {speakers} speakers; MultiTalk handles 1 or 2")
        a = audio.flatten(0, 1).to(self.audio_proj.proj1.weight.dtype)  # [B*S, F_video, w, b, c]
        first = a[:, :1]
        later = a[:, 1:].unflatten(1, (latent_frames - 1, mt.vae_scale))  # [N, n_t, vae_scale, w, b, c]
        mid = mt.audio_window // 2
        # Each later latent frame sees: its first video frame's past half-window, the centre of
        # the middle frames, and its last frame's future half-window (the reference's recipe).
        later = torch.cat(
            [
                later[:, :, :1, : mid + 1].flatten(2, 3),
                later[:, :, 1:-1, mid : mid + 1].flatten(2, 3),
                later[:, :, -1:, mid:].flatten(2, 3),
            ],
            dim=2,
        )
        proj = self.audio_proj(first, later)  # [B*S, N_t, tokens, width]
        proj = proj.unflatten(0, (batch, speakers))
        # Speakers side by side on the token axis: speaker 1's tokens, then speaker 2's.
        tokens = proj.permute(0, 2, 1, 3, 4).flatten(2, 3)
        if rec is not None:
            rec["audio_proj_out"] = proj[0]
            rec["audio_embedding"] = tokens[:1]
        return tokens, speakers

    def teacache_input(self, timestep: torch.Tensor) -> torch.Tensor:
        """e0 [B, 6, dim] float32 for timestep [B]: the tensor TeaCache measures (a function of t alone)."""
        return self._time_embedding(timestep)[1]

    def _time_embedding(self, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # float64 sinusoid (cos half first) as the reference; diffusers' float32 one is off by ~2e-5.
        emb = self.condition_embedder
        half = self.config.freq_dim // 2
        position = timestep.reshape(-1).to(torch.float64)
        sinusoid = torch.outer(position, torch.pow(10000, -torch.arange(half).to(position).div(half)))
        sinusoid = torch.cat([torch.cos(sinusoid), torch.sin(sinusoid)], dim=1).float()
        temb = emb.time_embedder(sinusoid.to(emb.time_embedder.linear_1.weight.dtype))
        e0 = emb.time_proj(emb.act_fn(temb).to(emb.time_proj.weight.dtype))
        return temb.float(), e0.float().unflatten(1, (6, -1))

    def _rope_float64(
        self, grid: tuple[int, int, int], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [L, 1, head_dim/2] in float64: frame, height, width pairs as Wan splits them."""
        d = self.config.attention_head_dim
        c = d // 2
        parts = (c - 2 * (c // 3), c // 3, c // 3)
        angles = []
        for axis, (size, pairs) in enumerate(zip(grid, parts, strict=True)):
            inv = 1.0 / torch.pow(
                10000.0, torch.arange(0, 2 * pairs, 2, dtype=torch.float64, device=device) / (2 * pairs)
            )
            a = torch.outer(torch.arange(size, device=device, dtype=torch.float64), inv)
            shape = [1, 1, 1, pairs]
            shape[axis] = size
            angles.append(a.view(shape).expand(*grid, pairs))
        theta = torch.cat(angles, dim=-1).reshape(-1, 1, c)
        return theta.cos(), theta.sin()

    def _block(
        self,
        i: int,
        block: nn.Module,
        x: torch.Tensor,
        e0: torch.Tensor,
        text: torch.Tensor,
        image: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        grid: tuple[int, int, int],
        tokens: torch.Tensor | None,
        human_num: int,
        masks: torch.Tensor | None,
        rec: dict[str, torch.Tensor] | None,
    ) -> torch.Tensor:
        dtype = x.dtype
        table = block.scale_shift_table.to(e0.device, torch.float32)  # may be on the host (low VRAM)
        shift, scale, gate, c_shift, c_scale, c_gate = (table + e0).chunk(6, dim=1)

        # 1. self-attention (diffusers attn1 weights; RoPE rotated in float64 like the reference)
        attn = block.attn1
        n = (block.norm1(x.float()) * (1 + scale) + shift).to(dtype)
        q = _rotate(attn.norm_q(attn.to_q(n)).unflatten(2, (attn.heads, -1)), cos, sin)
        k = _rotate(attn.norm_k(attn.to_k(n)).unflatten(2, (attn.heads, -1)), cos, sin)
        v = attn.to_v(n).unflatten(2, (attn.heads, -1))
        y = _sdpa(q, k, v)
        y = attn.to_out[0](y)
        x = (x.float() + y.float() * gate).to(dtype)
        ref_map = None
        if masks is not None:
            ref_map = _reference_attention_map(q, k, masks, grid[1] * grid[2])
        if rec is not None:
            rec[f"block{i}.self_attn_out"] = y
            if ref_map is not None:
                rec[f"block{i}.x_ref_attn_map"] = ref_map[0]

        # 2. text + image cross-attention (diffusers' norm2 is the reference's affine norm3)
        attn = block.attn2
        n = block.norm2(x.float()).to(dtype)
        q = attn.norm_q(attn.to_q(n)).unflatten(2, (attn.heads, -1))
        k_img = attn.norm_added_k(attn.add_k_proj(image)).unflatten(2, (attn.heads, -1))
        v_img = attn.add_v_proj(image).unflatten(2, (attn.heads, -1))
        k = attn.norm_k(attn.to_k(text)).unflatten(2, (attn.heads, -1))
        v = attn.to_v(text).unflatten(2, (attn.heads, -1))
        y = attn.to_out[0](_sdpa(q, k, v) + _sdpa(q, k_img, v_img))
        x = x + y
        if rec is not None:
            rec[f"block{i}.cross_attn_out"] = y

        # 3. audio cross-attention: after text/image, before the FFN, no modulation gate
        if tokens is not None:
            q_pos = k_pos = None
            if human_num == 2:
                assert ref_map is not None
                q_pos = _label_positions(ref_map)
                k_pos = _audio_key_positions(tokens.shape[2], x.device)
            y = block.audio_cross_attn(block.norm_x(x), tokens, q_pos, k_pos)
            x = x + y
            if rec is not None:
                rec[f"block{i}.audio_cross_attn_out"] = y

        # 4. feed-forward (diffusers' norm3 is the reference's non-affine norm2)
        n = (block.norm3(x.float()) * (1 + c_scale) + c_shift).to(dtype)
        y = block.ffn(n)
        x = (x.float() + y.float() * c_gate).to(dtype)
        if rec is not None:
            rec[f"block{i}.out"] = x
        return x


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Complex rotation of interleaved pairs in float64 (x [B, L, H, D]; cos/sin [L, 1, D/2])."""
    pairs = x.to(torch.float64).unflatten(-1, (-1, 2))
    re, im = pairs[..., 0], pairs[..., 1]
    out = torch.stack((re * cos - im * sin, re * sin + im * cos), dim=-1).flatten(-2)
    return out.to(x.dtype)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention on [B, L, H, D] tensors; returns [B, L, H*D]."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2).flatten(2)


def _token_masks(masks: torch.Tensor, batch: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """[3, h, w] | [B, 3, h, w] pixel masks -> [B, 3, grid_h*grid_w] token masks (nearest, > 0)."""
    if masks.ndim == 3:
        masks = masks.unsqueeze(0).expand(batch, *masks.shape)
    resized = F.interpolate(masks.to(torch.float32), size=(grid_h, grid_w), mode="nearest")
    return (resized > 0).flatten(2).to(torch.float32)


def _reference_attention_map(
    q: torch.Tensor, k: torch.Tensor, masks: torch.Tensor, frame_tokens: int
) -> torch.Tensor:
    """How much each visual token attends to each mask region of latent frame 0 -> [B, 3, L].

    For each head: softmax(q·k/√d) over the first frame's keys, summed over a mask's keys and
    divided by the mask's size; heads averaged within each of 2 head chunks, then over chunks.
    Always float32 (argmax near-ties flip in lower precision). Same operation order as the reference.
    """
    q, k = q.float(), k[:, :frame_tokens].float()
    heads = q.shape[2]
    chunk = heads // ATTN_MAP_HEAD_CHUNKS
    scale = 1.0 / q.shape[-1] ** 0.5
    maps = []
    for b in range(q.shape[0]):
        total = torch.zeros(masks.shape[1], q.shape[1], dtype=torch.float32, device=q.device)
        for c in range(ATTN_MAP_HEAD_CHUNKS):
            qc = (q[b : b + 1, :, c * chunk : (c + 1) * chunk] * scale).transpose(1, 2)
            kc = k[b : b + 1, :, c * chunk : (c + 1) * chunk].transpose(1, 2)
            probs = (qc @ kc.transpose(-2, -1)).softmax(-1)  # [1, h, L, frame_tokens]
            rows = []
            for mask in masks[b]:
                m = mask[None, None, None]
                rows.append(((probs * m).sum(-1) / m.sum()).permute(0, 2, 1).mean(-1))
            total += torch.cat(rows, dim=0)
        maps.append(total / ATTN_MAP_HEAD_CHUNKS)
    return torch.stack(maps)


def _label_positions(ref_map: torch.Tensor) -> torch.Tensor:
    """[B, 3, L] map -> [B, L] label-RoPE positions: speaker 1's row min-max scaled to [0, 4],
    speaker 2's to [20, 24], background 12; each token takes its argmax class's value."""
    lo1, hi1 = 0, CLASS_INTERVAL
    lo2, hi2 = CLASS_RANGE - CLASS_INTERVAL, CLASS_RANGE
    out = []
    for m in ref_map:
        h1 = _min_max_scale(m[0], lo1, hi1)
        h2 = _min_max_scale(m[1], lo2, hi2)
        back = torch.full_like(h1, CLASS_RANGE // 2)
        table = torch.stack([h1, h2, back], dim=1)
        out.append(table[torch.arange(m.shape[1], device=m.device), m.argmax(dim=0)])
    return torch.stack(out)


def _min_max_scale(row: torch.Tensor, new_min: int, new_max: int, epsilon: float = 1e-8) -> torch.Tensor:
    lo, hi = row.min(), row.max()
    return (row - lo) / (hi - lo + epsilon) * (new_max - new_min) + new_min


def _audio_key_positions(n_tokens: int, device: torch.device) -> torch.Tensor:
    """Speaker 1's audio tokens sit at the centre of its label range (2), speaker 2's at 22."""
    pos = torch.empty(n_tokens, dtype=torch.float32, device=device)
    pos[: n_tokens // 2] = CLASS_INTERVAL / 2
    pos[n_tokens // 2 :] = (2 * CLASS_RANGE - CLASS_INTERVAL) / 2
    return pos


# ---------------------------------------------------------------------- building
def build_multitalk_transformer(
    config: Mapping[str, Any], device: str | torch.device = "meta", dtype: torch.dtype = torch.float32
) -> MultiTalkTransformer3DModel:
    """The DiT + adapter from an original Wan config.json dict, in eval mode.

    device "meta" allocates nothing (shapes only: key audits, then `load_strict`); "cpu" (or a
    GPU) gets diffusers' default random init, cast to dtype.
    """
    kwargs, mt = parse_wan_config(config)
    with torch.device(device):
        model = MultiTalkTransformer3DModel(**kwargs)
        model.attach_audio_adapter(mt)
    if torch.device(device).type != "meta":
        # ModelMixin.to warns about fp32 modules; keep_fp32_modules handles them
        nn.Module.to(model, dtype=dtype)
        keep_fp32_modules(model)
    return model.eval()


def is_adapter_key(key: str) -> bool:
    return (
        key.startswith("audio_proj.")
        or re.match(r"blocks\.\d+\.(audio_cross_attn|norm_x)\.", key) is not None
    )


def kept_in_fp32(model: nn.Module, name: str) -> bool:
    """Whether the tensor `name` (diffusers naming) stays float32 whatever the load's dtype: a dotted
    part of it is one of the model's `_keep_in_fp32_modules`, diffusers' from_pretrained(torch_dtype=...)
    rule. The one rule for every DiT loader (float, quantized, repack)."""
    keep = getattr(model, "_keep_in_fp32_modules", None) or ()
    return any(part in name.split(".") for part in keep)


def keep_fp32_modules(model: MultiTalkTransformer3DModel) -> None:
    for name, param in model.named_parameters():
        if kept_in_fp32(model, name):
            param.data = param.data.float()
