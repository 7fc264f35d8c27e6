"""A tiny chinese-wav2vec2-base lookalike for the `tiny` profile: same files, formats and key names.

`write_tiny_wav2vec2(folder)` writes

    config.json               Wav2Vec2Config of the wav2vec2-base layout (group-norm conv stack, kernels
                              10,3,3,3,3,2,2 and strides 5,2,2,2,2,2,2 without conv bias, post-LN
                              encoder, positional conv of kernel 128 in 16 groups, weight-normed),
                              shrunk to conv_dim 16 x 7, hidden 32, 2 layers, 2 heads, FFN 64; keys
                              sorted, no `transformers_version` (so the bytes do not follow the library)
    preprocessor_config.json  Wav2Vec2FeatureExtractor at 16 kHz, do_normalize true
    model.safetensors         the Wav2Vec2Model state dict (weight norm as `parametrizations.weight.
                              original0/1`), float32, keys sorted, metadata {"format": "pt"}

The tiny DiT's audio adapter reads 2 layers x 32 channels, which is what this model produces.

Weights come from one torch.Generator seeded with `seed`, drawn in sorted key order, so two builds
are byte-identical. The scale keeps activations of order one through every layer: norm gains and
the weight-norm magnitude N(1, 0.1), biases N(0, 0.1), other weights N(0, 1/sqrt(fan_in)). (The
0.02 of transformers' own init would make every layer nearly the identity, which no test could tell
from a bug.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import Wav2Vec2Config, Wav2Vec2Model

CONFIG = {
    "conv_dim": [16] * 7,
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "conv_bias": False,
    "feat_extract_norm": "group",
    "do_stable_layer_norm": False,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16,
    "architectures": ["Wav2Vec2Model"],
}

PREPROCESSOR = {
    "do_normalize": True,
    "feature_extractor_type": "Wav2Vec2FeatureExtractor",
    "feature_size": 1,
    "padding_side": "right",
    "padding_value": 0.0,
    "return_attention_mask": False,
    "sampling_rate": 16000,
}

# Fields that describe the writer rather than the model; leaving them out keeps the bytes stable.
_VOLATILE = ("transformers_version", "_name_or_path")


def write_tiny_wav2vec2(folder: str | Path, *, seed: int = 0, sizes: Mapping[str, Any] = CONFIG) -> Path:
    """Write the tiny wav2vec2 folder (created if needed; `sizes`: Wav2Vec2Config fields, default CONFIG)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = Wav2Vec2Config(**sizes)
    config_dict = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE}

    _write_atomic(folder / "config.json", _json_bytes(config_dict))
    _write_atomic(folder / "preprocessor_config.json", _json_bytes(PREPROCESSOR))

    tensors = tiny_wav2vec2_state(config, seed=seed)
    tmp = folder / ".model.safetensors.partial"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, folder / "model.safetensors")
    return folder


def tiny_wav2vec2_state(config: Wav2Vec2Config, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """The random state dict for `config`, keys sorted, drawn from one generator seeded with `seed`."""
    with torch.device("meta"):  # only the names and shapes are needed
        shapes = {k: v.shape for k, v in Wav2Vec2Model(config).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key in sorted(shapes):
        shape = shapes[key]
        noise = torch.randn(shape, generator=gen, dtype=torch.float32)
        if _is_gain(key):
            state[key] = 1.0 + 0.1 * noise
        elif key.endswith(".bias") or key == "masked_spec_embed":
            state[key] = 0.1 * noise
        else:
            fan_in = shape[1:].numel() if len(shape) > 1 else shape[0]
            state[key] = noise / fan_in**0.5
    return state


def _is_gain(key: str) -> bool:
    # LayerNorm / GroupNorm weights and the weight-norm magnitude g multiply activations: keep them near 1.
    return (key.endswith(".weight") and "norm" in key.split(".")[-2]) or key.endswith("weight.original0")


def _json_bytes(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_bytes(data)
    os.replace(tmp, path)
