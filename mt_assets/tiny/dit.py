"""The tiny profile's DiT files: the same names, formats and key naming as the 480p set, random weights.

`write_tiny_dit(wan_dir, multitalk_dir)` writes

    wan_dir/config.json                                          TINY_DIT_CONFIG (original Wan format)
    wan_dir/diffusion_pytorch_model-0000{1..7}-of-00007.safetensors   DiT keys (Wan names), spread over 7 shards
    wan_dir/diffusion_pytorch_model.safetensors.index.json       DiT key -> shard
    multitalk_dir/multitalk.safetensors                          adapter keys only (MultiTalk names)
    multitalk_dir/diffusion_pytorch_model.safetensors.index.json MeiGen's index: DiT keys -> the Wan
                                                                 shards, adapter keys -> multitalk.safetensors

Byte-identical on every run: weights from a seeded generator in sorted key order, sorted JSON,
fixed safetensors metadata ({"format": "pt"}). Weights are scaled like the golden reference
(norm weights N(1, 0.1), biases N(0, 0.1), modulations N(0, 0.2), other weights N(0, 1/sqrt(fan_in)))
so that outputs depend visibly on every part, RoPE and audio included.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from mt_assets.models.dit import build_multitalk_transformer, is_adapter_key
from mt_assets.models.dit_loading import ADAPTER_FILE_NAME, INDEX_NAME, reference_key_shapes

TINY_DIT_CONFIG: dict[str, Any] = {
    "_class_name": "WanModel",
    "_diffusers_version": "0.30.0",
    "model_type": "i2v",
    "patch_size": [1, 2, 2],
    "text_len": 512,
    "dim": 32,
    "ffn_dim": 48,
    "freq_dim": 256,
    "in_dim": 36,
    "num_heads": 2,  # head_dim 16: RoPE pairs 4 (frame) / 2 (height) / 2 (width)
    "num_layers": 2,
    "out_dim": 16,
    "eps": 1e-6,
    # MultiTalk extras (reference defaults in mt_assets.models.dit.MultiTalkConfig)
    "text_dim": 32,  # tiny T5 width
    "image_dim": 160,  # tiny CLIP width (2 heads x 80, the real head size)
    "audio_blocks": 2,  # tiny wav2vec2: 2 layers ...
    "audio_channels": 32,  # ... of hidden width 32
    "audio_window": 5,
    "intermediate_dim": 16,
    "output_dim": 16,
    "context_tokens": 4,
    "vae_scale": 4,
    "norm_output_audio": True,
}

_SAFETENSORS_METADATA = {"format": "pt"}


def tiny_reference_state(
    config: Mapping[str, Any] = TINY_DIT_CONFIG, *, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random weights for `config` under the reference key names, drawn in sorted key order."""
    shapes = reference_key_shapes(build_multitalk_transformer(config, device="meta"))
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key in sorted(shapes):
        shape = shapes[key]
        noise = torch.randn(shape, generator=gen)
        parts = key.split(".")
        if parts[-1] == "bias":
            state[key] = noise * 0.1
        elif parts[-1] == "modulation":
            state[key] = noise * 0.2
        elif any(p.startswith("norm") for p in parts[:-1]) or key.startswith(
            ("img_emb.proj.0.", "img_emb.proj.4.")
        ):
            state[key] = 1.0 + noise * 0.1
        else:
            state[key] = noise / (torch.Size(shape[1:]).numel() ** 0.5)
    return state


def shard_name(i: int, n: int) -> str:
    return f"diffusion_pytorch_model-{i:05d}-of-{n:05d}.safetensors"


def write_original_format(
    state: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    wan_dir: Path,
    multitalk_dir: Path,
    *,
    shards: int = 7,
    balance: str = "keys",
) -> None:
    """Write a reference-named DiT + adapter state as Wan's and MultiTalk's published files.

    The DiT keys, sorted, are cut into `shards` runs: of equal key counts (balance "keys", the
    tiny profile), or of about equal bytes (balance "bytes", like the published shards).
    """
    wan_dir, multitalk_dir = Path(wan_dir), Path(multitalk_dir)
    wan_dir.mkdir(parents=True, exist_ok=True)
    multitalk_dir.mkdir(parents=True, exist_ok=True)
    dit_keys = sorted(k for k in state if not is_adapter_key(k))
    adapter_keys = sorted(k for k in state if is_adapter_key(k))
    if len(dit_keys) < shards:
        raise ValueError(f"{len(dit_keys)} DiT keys cannot fill {shards} shards")

    wan_map: dict[str, str] = {}
    for i, keys in enumerate(shard_split(dit_keys, state, shards, balance)):
        name = shard_name(i + 1, shards)
        _save(wan_dir / name, {k: state[k] for k in keys})
        wan_map.update(dict.fromkeys(keys, name))
    _save(multitalk_dir / ADAPTER_FILE_NAME, {k: state[k] for k in adapter_keys})

    def nbytes(keys: list[str]) -> int:
        return sum(state[k].numel() * state[k].element_size() for k in keys)

    _write_json(wan_dir / "config.json", dict(config))
    _write_json(wan_dir / INDEX_NAME, {"metadata": {"total_size": nbytes(dit_keys)}, "weight_map": wan_map})
    multitalk_map = {**wan_map, **dict.fromkeys(adapter_keys, ADAPTER_FILE_NAME)}
    _write_json(
        multitalk_dir / INDEX_NAME,
        {"metadata": {"total_size": nbytes(dit_keys + adapter_keys)}, "weight_map": multitalk_map},
    )


def write_tiny_dit(
    wan_dir: Path,
    multitalk_dir: Path,
    *,
    seed: int = 0,
    shards: int = 7,
    config: Mapping[str, Any] = TINY_DIT_CONFIG,
    balance: str = "keys",
) -> None:
    """The tiny profile's DiT files (see the module docstring), deterministically; `config` for other sizes."""
    write_original_format(
        tiny_reference_state(config, seed=seed),
        config,
        wan_dir,
        multitalk_dir,
        shards=shards,
        balance=balance,
    )


def shard_split(
    keys: list[str], state: Mapping[str, torch.Tensor], shards: int, balance: str
) -> list[list[str]]:
    if balance == "keys":
        per_shard = -(-len(keys) // shards)
        return [keys[i * per_shard : (i + 1) * per_shard] for i in range(shards)]
    if balance != "bytes":
        raise ValueError(f"shard balance {balance!r}: expected 'keys' or 'bytes'")
    sizes = [state[k].numel() * state[k].element_size() for k in keys]
    total, runs, run, done = sum(sizes), [], [], 0
    for key, size in zip(keys, sizes, strict=True):
        # Close the run once it reaches its share, leaving at least one key for each later shard.
        left_keys, left_runs = len(keys) - len(runs) - len(run), shards - len(runs)
        if (
            run
            and len(runs) < shards - 1
            and (done >= total * (len(runs) + 1) / shards or left_keys < left_runs)
        ):
            runs.append(run)
            run = []
        run.append(key)
        done += size
    runs.append(run)
    return runs


def _save(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    # Staged then renamed: a crash never leaves a half-written file under the final name.
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=_SAFETENSORS_METADATA)
    os.replace(tmp, path)


def _write_json(path: Path, obj: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
