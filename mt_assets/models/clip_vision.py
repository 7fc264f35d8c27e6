"""Wan's CLIP image encoder: the vision tower of `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`.

The file is a torch pickle of a flat {key: tensor} dict, the whole state dict of Wan's
`XLMRobertaCLIP` (`wan/modules/clip.py`, open-clip xlm-roberta-large + ViT-H/14):

    visual.patch_embedding.weight          [width, 3, patch, patch]   no bias (pre-norm ViT)
    visual.cls_embedding                   [1, 1, width]
    visual.pos_embedding                   [1, 1 + (image/patch)^2, width]
    visual.pre_norm.{weight,bias}          [width]
    visual.transformer.N.norm1.{weight,bias}
    visual.transformer.N.attn.to_qkv.{weight,bias}   [3*width, width] / [3*width]  q, k, v stacked
    visual.transformer.N.attn.proj.{weight,bias}
    visual.transformer.N.norm2.{weight,bias}
    visual.transformer.N.mlp.0.{weight,bias}         [mlp, width]   then exact GELU ('gelu')
    visual.transformer.N.mlp.2.{weight,bias}         [width, mlp]
    visual.post_norm.{weight,bias}
    visual.head                            [width, embed_dim]          x[:, 0] @ head
    textual.*                              XLM-RoBERTa text tower (see `wan_clip_textual_shapes`)
    log_scale                              []                          the contrastive temperature

ViT-H/14: width 1280, 32 layers, 16 heads, mlp 5120, 224 px → 1 + 16*16 = 257 tokens,
embed_dim 1024. Wan I2V uses only the vision tower, and from it the hidden states after
the penultimate block (`visual(..., use_31_block=True)`): [B, 257, 1280]. Nothing in the
shapes gives the head count; Wan's ViT-H/14 has 80 channels per head (`HEAD_DIM`, the default of
`load_clip_vision(head_dim=...)`); a checkpoint built otherwise needs its own value passed.

The vision tower maps onto transformers' CLIPVisionModelWithProjection (q/k/v split out
of `to_qkv`, `visual.head` transposed into `visual_projection`). The text tower and
`log_scale` are checked as a set (every key, every shape) and then left unused, so that
junk in the file is still an unexpected key.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from mt_assets.models.checkpoints import CheckpointError, check_keys, load_pth, load_strict
from mt_assets.models.reading import LoadStrategy, read_safetensors, warm_tensors, will_copy

CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"

# Wan's convention: ViT-H/14 is 1280 wide with 16 heads.
HEAD_DIM = 80
# open-clip's normalisation, which Wan applies after mapping [-1, 1] frames to [0, 1].
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_VISUAL_BLOCK = re.compile(r"^visual\.transformer\.(\d+)\.")
_TEXT_BLOCK = re.compile(r"^textual\.blocks\.(\d+)\.")


def wan_clip_visual_shapes(
    *, width: int, mlp: int, layers: int, patch: int, image_size: int, embed_dim: int
) -> dict[str, tuple[int, ...]]:
    """Every `visual.*` key of a Wan CLIP checkpoint with these sizes, and its shape."""
    tokens = 1 + (image_size // patch) ** 2
    shapes: dict[str, tuple[int, ...]] = {
        "visual.patch_embedding.weight": (width, 3, patch, patch),
        "visual.cls_embedding": (1, 1, width),
        "visual.pos_embedding": (1, tokens, width),
        "visual.pre_norm.weight": (width,),
        "visual.pre_norm.bias": (width,),
        "visual.post_norm.weight": (width,),
        "visual.post_norm.bias": (width,),
        "visual.head": (width, embed_dim),
    }
    for n in range(layers):
        b = f"visual.transformer.{n}."
        shapes.update(
            {
                b + "norm1.weight": (width,),
                b + "norm1.bias": (width,),
                b + "attn.to_qkv.weight": (3 * width, width),
                b + "attn.to_qkv.bias": (3 * width,),
                b + "attn.proj.weight": (width, width),
                b + "attn.proj.bias": (width,),
                b + "norm2.weight": (width,),
                b + "norm2.bias": (width,),
                b + "mlp.0.weight": (mlp, width),
                b + "mlp.0.bias": (mlp,),
                b + "mlp.2.weight": (width, mlp),
                b + "mlp.2.bias": (width,),
            }
        )
    return shapes


def wan_clip_textual_shapes(
    *, vocab: int, dim: int, layers: int, max_len: int, type_size: int, embed_dim: int
) -> dict[str, tuple[int, ...]]:
    """Every `textual.*` key (Wan's XLMRobertaWithHead: post-norm blocks, ffn 4*dim, 2-layer head) and `log_scale`."""
    mid = (dim + embed_dim) // 2
    shapes: dict[str, tuple[int, ...]] = {
        "textual.token_embedding.weight": (vocab, dim),
        "textual.type_embedding.weight": (type_size, dim),
        "textual.pos_embedding.weight": (max_len, dim),
        "textual.norm.weight": (dim,),
        "textual.norm.bias": (dim,),
        "textual.head.0.weight": (mid, dim),
        "textual.head.2.weight": (embed_dim, mid),
        "log_scale": (),
    }
    for n in range(layers):
        b = f"textual.blocks.{n}."
        for x in "qkvo":
            shapes[f"{b}attn.{x}.weight"] = (dim, dim)
            shapes[f"{b}attn.{x}.bias"] = (dim,)
        shapes.update(
            {
                b + "norm1.weight": (dim,),
                b + "norm1.bias": (dim,),
                b + "ffn.0.weight": (4 * dim, dim),
                b + "ffn.0.bias": (4 * dim,),
                b + "ffn.2.weight": (dim, 4 * dim),
                b + "ffn.2.bias": (dim,),
                b + "norm2.weight": (dim,),
                b + "norm2.bias": (dim,),
            }
        )
    return shapes


def clip_sizes_from_state(
    state: Mapping[str, torch.Tensor], source: str
) -> tuple[dict[str, int], dict[str, int]]:
    """(visual sizes, textual sizes) that the tensor shapes of a Wan CLIP checkpoint imply."""
    visual = clip_visual_sizes(state, source)
    vocab, dim = _shape(state, "textual.token_embedding.weight", source)
    textual = {
        "vocab": vocab,
        "dim": dim,
        "layers": _count(state, _TEXT_BLOCK),
        "max_len": _shape(state, "textual.pos_embedding.weight", source)[0],
        "type_size": _shape(state, "textual.type_embedding.weight", source)[0],
        "embed_dim": visual["embed_dim"],
    }
    return visual, textual


def clip_visual_sizes(state: Mapping[str, torch.Tensor], source: str) -> dict[str, int]:
    """The vision tower's sizes that the `visual.*` tensor shapes imply."""
    width, _, patch, _ = _shape(state, "visual.patch_embedding.weight", source)
    tokens = _shape(state, "visual.pos_embedding", source)[1]
    grid = math.isqrt(tokens - 1)
    if grid * grid != tokens - 1:
        raise CheckpointError(f"{source}: 'visual.pos_embedding' has {tokens} tokens, not 1 + a square grid")
    visual = {
        "width": width,
        "mlp": _shape(state, "visual.transformer.0.mlp.0.weight", source)[0],
        "layers": _count(state, _VISUAL_BLOCK),
        "patch": patch,
        "image_size": grid * patch,
        "embed_dim": _shape(state, "visual.head", source)[1],
    }
    return visual


def clip_vision_config(
    visual: Mapping[str, int], source: str, *, head_dim: int = HEAD_DIM
) -> CLIPVisionConfig:
    """CLIPVisionConfig for these sizes, with width // head_dim attention heads (the file does not say)."""
    if head_dim <= 0 or visual["width"] % head_dim:
        raise CheckpointError(
            f"{source}: vision width {visual['width']} is not a multiple of the head size {head_dim} "
            f"(Wan's ViT-H/14: {HEAD_DIM})"
        )
    return CLIPVisionConfig(
        hidden_size=visual["width"],
        intermediate_size=visual["mlp"],
        num_hidden_layers=visual["layers"],
        num_attention_heads=visual["width"] // head_dim,
        image_size=visual["image_size"],
        patch_size=visual["patch"],
        projection_dim=visual["embed_dim"],
        num_channels=3,
        hidden_act="gelu",  # exact GELU: Wan builds ViT-H/14 with activation='gelu', not quick_gelu
        layer_norm_eps=1e-5,
        attention_dropout=0.0,
    )


def wan_clip_visual_to_transformers(
    state: Mapping[str, torch.Tensor], layers: int
) -> dict[str, torch.Tensor]:
    """Rename (and split/transposes) a checked Wan `visual.*` state to CLIPVisionModelWithProjection's keys."""
    width = state["visual.cls_embedding"].shape[-1]
    out = {
        "vision_model.embeddings.class_embedding": state["visual.cls_embedding"].reshape(width),
        "vision_model.embeddings.patch_embedding.weight": state["visual.patch_embedding.weight"],
        "vision_model.embeddings.position_embedding.weight": state["visual.pos_embedding"][0],
        "vision_model.pre_layrnorm.weight": state["visual.pre_norm.weight"],
        "vision_model.pre_layrnorm.bias": state["visual.pre_norm.bias"],
        "vision_model.post_layernorm.weight": state["visual.post_norm.weight"],
        "vision_model.post_layernorm.bias": state["visual.post_norm.bias"],
        # Wan computes x @ head; a Linear computes x @ W.T.
        "visual_projection.weight": state["visual.head"].t().contiguous(),
    }
    for n in range(layers):
        w, h = f"visual.transformer.{n}.", f"vision_model.encoder.layers.{n}."
        # to_qkv's output is viewed as [3, heads, head_dim]: q rows first, then k, then v.
        for part, suffix in (("weight", ".weight"), ("bias", ".bias")):
            q, k, v = state[f"{w}attn.to_qkv.{part}"].chunk(3, dim=0)
            out[f"{h}self_attn.q_proj{suffix}"] = q.contiguous()
            out[f"{h}self_attn.k_proj{suffix}"] = k.contiguous()
            out[f"{h}self_attn.v_proj{suffix}"] = v.contiguous()
            out[f"{h}self_attn.out_proj{suffix}"] = state[f"{w}attn.proj.{part}"]
            out[f"{h}layer_norm1{suffix}"] = state[f"{w}norm1.{part}"]
            out[f"{h}layer_norm2{suffix}"] = state[f"{w}norm2.{part}"]
            out[f"{h}mlp.fc1{suffix}"] = state[f"{w}mlp.0.{part}"]
            out[f"{h}mlp.fc2{suffix}"] = state[f"{w}mlp.2.{part}"]
    return out


def load_clip_vision(
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    head_dim: int = HEAD_DIM,
    strategy: LoadStrategy | None = None,
) -> CLIPVisionModelWithProjection:
    """The vision tower of Wan's CLIP checkpoint, in eval mode; the whole file is checked strictly.

    `head_dim` (channels per attention head) is not in the file: the model gets width // head_dim
    heads. Wan's ViT-H/14 uses 80 (1280 / 16); a checkpoint built with another head count (the
    golden tiny CLIP: width 96, 3 heads → 32) loads without complaint under the wrong value and
    computes different features, so pass the value it was built with.
    A `.safetensors` path is a bf16 repack (mt_assets.models.repack): the `visual.*` keys only,
    checked as strictly.
    strategy: how the file's bytes are read (mt_assets.models.reading; None: $MT_LOAD_STRATEGY); of
    a `.pth`, only the vision tower's tensors that are cast or copied to `device` (the text tower is
    checked by shape, never read).
    """
    source = str(path)
    if Path(path).suffix == ".safetensors":  # a bf16 repack (mt_assets.models.repack): visual.* only
        state = read_safetensors(path, strategy)
        visual = clip_visual_sizes(state, source)
        expected = wan_clip_visual_shapes(**visual)
    else:
        state = load_pth(path)
        visual, textual = clip_sizes_from_state(state, source)
        expected = wan_clip_visual_shapes(**visual) | wan_clip_textual_shapes(**textual)
    check_keys(state, expected, source)
    kept = (v for k, v in state.items() if k.startswith("visual.") and will_copy(v, dtype, device))
    warm_tensors(kept, strategy)
    config = clip_vision_config(visual, source, head_dim=head_dim)
    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(config)
    converted = {k: v.to(device=device, dtype=dtype) for k, v in state.items() if k.startswith("visual.")}
    load_strict(model, wan_clip_visual_to_transformers(converted, visual["layers"]), source)
    # position_ids is a non-persistent buffer (not in any state dict): after a meta-device
    # build it must be made real here.
    embeddings = model.vision_model.embeddings
    embeddings.register_buffer(
        "position_ids",
        torch.arange(embeddings.num_positions, device=device).expand((1, -1)),
        persistent=False,
    )
    return model.eval().requires_grad_(False)


def clip_resize(frames: torch.Tensor, image_size: int = 224) -> torch.Tensor:
    """Frames [B, 3, H, W] → [B, 3, image_size, image_size], float32, as Wan's CLIPModel.visual resizes them.

    The whole frame is squashed to a square (aspect ratio not kept, no crop): bicubic,
    align_corners=False, no antialias, and no clamp afterwards, so values overshoot [-1, 1] a little.
    """
    return F.interpolate(frames.float(), size=(image_size, image_size), mode="bicubic", align_corners=False)


def clip_preprocess(frames: torch.Tensor, image_size: int = 224) -> torch.Tensor:
    """Frames [B, 3, H, W] in [-1, 1] → CLIP pixel values, as Wan's CLIPModel.visual prepares them.

    `clip_resize`, then [-1, 1] → [0, 1] as x·0.5 + 0.5, then (x − mean) / std with open-clip's mean/std.
    Wan feeds it the last conditioning frame (`cond_image[:, :, -1]`).
    """
    x = clip_resize(frames, image_size).mul(0.5).add(0.5)
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def clip_image_features(model: CLIPVisionModelWithProjection, pixel_values: torch.Tensor) -> torch.Tensor:
    """The hidden states after the penultimate block, [B, 1 + grid², width] ([B, 257, 1280] for ViT-H/14).

    hidden_states[0] is the (pre-normed) embedding that enters block 0, so [-2] is the
    output of all blocks but the last: Wan's `use_31_block=True`. No post-norm, no head.
    """
    weight = model.vision_model.embeddings.patch_embedding.weight
    out = model(
        pixel_values=pixel_values.to(device=weight.device, dtype=weight.dtype), output_hidden_states=True
    )
    return out.hidden_states[-2]


def _count(state: Mapping[str, torch.Tensor], pattern: re.Pattern[str]) -> int:
    return 1 + max((int(m.group(1)) for k in state if (m := pattern.match(k))), default=-1)


def _shape(state: Mapping[str, torch.Tensor], key: str, source: str) -> tuple[int, ...]:
    if key not in state:
        raise CheckpointError(f"{source}: missing key {key!r} (needed to read the model's sizes)")
    return tuple(state[key].shape)
