"""Wan's UMT5 text encoder: `models_t5_umt5-xxl-enc-bf16.pth` loaded into transformers' UMT5EncoderModel.

The file is a torch pickle of a flat {key: tensor} dict (bf16), the state dict of the
encoder half of Wan's own T5 (`wan/modules/t5.py`, `T5Encoder` with shared_pos=False):

    token_embedding.weight                    [vocab, dim]
    blocks.N.norm1.weight                     [dim]           RMS norm before self-attention
    blocks.N.attn.{q,k,v}.weight              [dim_attn, dim] no biases; T5 does not scale q·k
    blocks.N.attn.o.weight                    [dim, dim_attn]
    blocks.N.pos_embedding.embedding.weight   [num_buckets, num_heads]  per-layer relative bias
    blocks.N.norm2.weight                     [dim]           RMS norm before the feed-forward
    blocks.N.ffn.gate.0.weight                [dim_ffn, dim]  gelu(tanh) branch
    blocks.N.ffn.fc1.weight                   [dim_ffn, dim]  linear branch
    blocks.N.ffn.fc2.weight                   [dim, dim_ffn]
    norm.weight                               [dim]

umt5-xxl: vocab 256384, dim 4096, dim_attn 4096, dim_ffn 10240, 64 heads, 24 layers,
32 buckets. There is no config in the file: every size is read from the shapes. The
relative-position buckets use max distance 128, as both Wan and transformers do.

In transformers' naming the same weights are `encoder.block.N.layer.0.SelfAttention.*`
(q, k, v, o, relative_attention_bias), `...layer.0.layer_norm`, `...layer.1.DenseReluDense`
(wi_0 = gate, wi_1 = fc1, wo = fc2: "gated-gelu" is gelu_new(wi_0 x) * wi_1 x, exactly
Wan's fc1(x) * gate(x)), `...layer.1.layer_norm`, `encoder.final_layer_norm`, and the
embedding under both `shared` and `encoder.embed_tokens` (tied).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from transformers import UMT5Config, UMT5EncoderModel

from mt_assets.models.checkpoints import CheckpointError, check_keys, load_pth, load_strict
from mt_assets.models.reading import LoadStrategy, warm_tensors, will_copy

T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"

# Wan's T5RelativeEmbedding and transformers' UMT5 both default to 128.
_MAX_DISTANCE = 128

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def wan_t5_shapes(
    *, vocab: int, dim: int, dim_attn: int, dim_ffn: int, num_heads: int, num_layers: int, num_buckets: int
) -> dict[str, tuple[int, ...]]:
    """Every key of a Wan T5 encoder checkpoint with these sizes, and its shape."""
    shapes: dict[str, tuple[int, ...]] = {"token_embedding.weight": (vocab, dim), "norm.weight": (dim,)}
    for n in range(num_layers):
        b = f"blocks.{n}."
        shapes.update(
            {
                b + "norm1.weight": (dim,),
                b + "attn.q.weight": (dim_attn, dim),
                b + "attn.k.weight": (dim_attn, dim),
                b + "attn.v.weight": (dim_attn, dim),
                b + "attn.o.weight": (dim, dim_attn),
                b + "pos_embedding.embedding.weight": (num_buckets, num_heads),
                b + "norm2.weight": (dim,),
                b + "ffn.gate.0.weight": (dim_ffn, dim),
                b + "ffn.fc1.weight": (dim_ffn, dim),
                b + "ffn.fc2.weight": (dim, dim_ffn),
            }
        )
    return shapes


def t5_config_from_state(state: Mapping[str, torch.Tensor], source: str) -> UMT5Config:
    """The UMT5 encoder config that the tensor shapes of a Wan T5 checkpoint imply."""
    vocab, dim = _shape(state, "token_embedding.weight", source)
    dim_attn = _shape(state, "blocks.0.attn.q.weight", source)[0]
    dim_ffn = _shape(state, "blocks.0.ffn.fc1.weight", source)[0]
    num_buckets, num_heads = _shape(state, "blocks.0.pos_embedding.embedding.weight", source)
    if dim_attn % num_heads:
        raise CheckpointError(
            f"{source}: attention width {dim_attn} is not a multiple of the {num_heads} heads "
            "that 'blocks.0.pos_embedding.embedding.weight' gives"
        )
    num_layers = 1 + max(int(m.group(1)) for k in state if (m := _BLOCK.match(k)))
    return UMT5Config(
        vocab_size=vocab,
        d_model=dim,
        d_kv=dim_attn // num_heads,
        d_ff=dim_ffn,
        num_layers=num_layers,
        num_heads=num_heads,
        relative_attention_num_buckets=num_buckets,
        relative_attention_max_distance=_MAX_DISTANCE,
        feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6,
        dropout_rate=0.0,
        is_encoder_decoder=False,
        use_cache=False,
    )


def wan_t5_key_map(num_layers: int) -> dict[str, tuple[str, ...]]:
    """Every Wan T5 encoder key -> its UMT5EncoderModel name(s) (the embedding has two: tied)."""
    names: dict[str, tuple[str, ...]] = {
        # Tied to `shared`: the same tensor under both names keeps them tied after loading.
        "token_embedding.weight": ("shared.weight", "encoder.embed_tokens.weight"),
        "norm.weight": ("encoder.final_layer_norm.weight",),
    }
    for n in range(num_layers):
        w, h = f"blocks.{n}.", f"encoder.block.{n}.layer."
        for x in "qkvo":
            names[f"{w}attn.{x}.weight"] = (f"{h}0.SelfAttention.{x}.weight",)
        names[f"{w}pos_embedding.embedding.weight"] = (f"{h}0.SelfAttention.relative_attention_bias.weight",)
        names[f"{w}norm1.weight"] = (f"{h}0.layer_norm.weight",)
        names[f"{w}ffn.gate.0.weight"] = (f"{h}1.DenseReluDense.wi_0.weight",)
        names[f"{w}ffn.fc1.weight"] = (f"{h}1.DenseReluDense.wi_1.weight",)
        names[f"{w}ffn.fc2.weight"] = (f"{h}1.DenseReluDense.wo.weight",)
        names[f"{w}norm2.weight"] = (f"{h}1.layer_norm.weight",)
    return names


def wan_t5_to_transformers(state: Mapping[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """Rename a (checked) Wan T5 state dict to UMT5EncoderModel's keys."""
    return {name: state[key] for key, names in wan_t5_key_map(num_layers).items() for name in names}


def load_t5_encoder(
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    strategy: LoadStrategy | None = None,
) -> UMT5EncoderModel:
    """Wan's T5 encoder checkpoint as a UMT5EncoderModel in eval mode, strictly (every key, every shape).

    strategy: how the tensors cast or copied to `device` are read (mt_assets.models.reading; None:
    $MT_LOAD_STRATEGY); tensors kept as they are stay memory-mapped, read when first touched.
    """
    source = str(path)
    state = load_pth(path)
    config = t5_config_from_state(state, source)
    check_keys(state, wan_t5_shapes(**_wan_sizes(config)), source)
    warm_tensors((v for v in state.values() if will_copy(v, dtype, device)), strategy)
    # Built on the meta device: umt5-xxl would otherwise allocate and randomly initialise
    # 5.7 B parameters only to overwrite them.
    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    # Each tensor is converted once; the embedding then serves both tied names.
    converted = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    load_strict(model, wan_t5_to_transformers(converted, config.num_layers), source)
    return model.eval().requires_grad_(False)


@torch.no_grad()
def encode_text(
    model: UMT5EncoderModel, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> list[torch.Tensor]:
    """Per prompt, the encoder states of its real tokens ([len_i, d_model]), as Wan's T5EncoderModel returns.

    `input_ids`/`attention_mask` come from the T5 tokenizer padded to the text length
    (Wan: 512); padded rows are masked in attention and cut from the result.
    """
    device = model.shared.weight.device
    states = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).last_hidden_state
    lengths = attention_mask.gt(0).sum(dim=1).tolist()
    return [s[:n] for s, n in zip(states, lengths, strict=True)]


def _wan_sizes(config: UMT5Config) -> dict[str, int]:
    return {
        "vocab": config.vocab_size,
        "dim": config.d_model,
        "dim_attn": config.d_kv * config.num_heads,
        "dim_ffn": config.d_ff,
        "num_heads": config.num_heads,
        "num_layers": config.num_layers,
        "num_buckets": config.relative_attention_num_buckets,
    }


def _shape(state: Mapping[str, torch.Tensor], key: str, source: str) -> Sequence[int]:
    if key not in state:
        raise CheckpointError(f"{source}: missing key {key!r} (needed to read the model's sizes)")
    return tuple(state[key].shape)
