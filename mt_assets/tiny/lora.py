"""The tiny LoRA files: the add-on profiles' LoRA files at toy scale, in the real files' key families.

The tiny twins of the LoRA profiles (`tiny-fusionx`, `tiny-lightx2v`: `extends: tiny` plus one
LoRA component each) declare the same component names, repos, dirs and paths as the real ones
(`multitalk-480p-fusionx`, `multitalk-480p-lightx2v`); `write_tiny_loras(DIR)` writes their files
into a tiny mirror, sized for the tiny DiT (TINY_DIT_CONFIG; shapes from the model's Wan-named
parameters, `dit_loading.reference_key_shapes`). The key lists are those of the golden tiny LoRA
files (multitalk-tiny-accel README, section L), which follow what is known of the real files:

    FusionX-I2V-like (rank 4, float16)    per block: `lora_down/lora_up` pairs + `diff_b` on
        self_attn.{q,k,v,o}, cross_attn.{q,k,v,o,k_img,v_img}, ffn.{0,2}; `.diff` on the q/k norms,
        cross_attn.norm_k_img and norm3 (+ norm3.diff_b); pairs + `diff_b` on text_embedding.{0,2},
        time_embedding.{0,2}, time_projection.1, head.head; `.diff` + `.diff_b` on img_emb.proj.{0,4}
    lightx2v-T2V-like (rank 2, bfloat16)  the same block pairs without the image branch (no k_img,
        v_img, norm_k_img, img_emb), `blocks.N.diff_m` and `head.diff_m` (modulation deltas, which
        the merge ignores), pairs + `diff_b` on text_embedding.{0,2}, time_embedding.0,
        time_projection.1, and full 2-D `.diff` (+ `diff_b`) on time_embedding.2 and head.head

Values as the golden files draw them: `lora_down` ~ N(0,1)/sqrt(in), `lora_up` ~ N(0,1)·0.35/sqrt(rank),
`diff_b` and 1-D `diff` ~ N(0, 0.05), full `diff` ~ N(0, 0.3/sqrt(in)), `diff_m` ~ N(0, 0.1), from
one seeded generator in sorted key order, then cast to the storage dtype. Byte-identical on every run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from mt_assets.tiny.dit import TINY_DIT_CONFIG

PREFIX = "diffusion_model."
_SELF = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o")
_CROSS = ("cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o")
_NORMS = ("self_attn.norm_q", "self_attn.norm_k", "cross_attn.norm_q", "cross_attn.norm_k", "norm3")


@dataclass(frozen=True)
class TinyLora:
    """One tiny add-on: its profile, the real profile it twins, the LoRA component, and how it is drawn."""

    profile: str  # the tiny twin, e.g. tiny-fusionx
    real_profile: str  # the profile whose component (name, repo, dir, path, scale, presets) it copies
    component: str
    family: str  # "fusionx" | "lightx2v" (which key list)
    rank: int
    dtype: torch.dtype
    seed: int
    up: float = 0.35


TINY_LORAS: tuple[TinyLora, ...] = (
    TinyLora("tiny-fusionx", "multitalk-480p-fusionx", "lora-fusionx", "fusionx", 4, torch.float16, 5101),
    TinyLora(
        "tiny-lightx2v", "multitalk-480p-lightx2v", "lora-lightx2v", "lightx2v", 2, torch.bfloat16, 5102
    ),
)


def lora_key_list(family: str, num_layers: int) -> list[tuple[str, str]]:
    """(module, suffix) pairs of a family's keys, in Wan's naming; suffix: pair | diff | diff_b | diff_m."""
    keys: list[tuple[str, str]] = []

    def pair(module: str) -> None:
        keys.extend([(module, "pair"), (module, "diff_b")])

    if family == "fusionx":
        for n in range(num_layers):
            for m in (*_SELF, *_CROSS, "cross_attn.k_img", "cross_attn.v_img", "ffn.0", "ffn.2"):
                pair(f"blocks.{n}.{m}")
            for m in (*_NORMS, "cross_attn.norm_k_img"):
                keys.append((f"blocks.{n}.{m}", "diff"))
            keys.append((f"blocks.{n}.norm3", "diff_b"))
        for m in ("text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2"):
            pair(m)
        pair("time_projection.1")
        pair("head.head")
        for m in ("img_emb.proj.0", "img_emb.proj.4"):
            keys.extend([(m, "diff"), (m, "diff_b")])
    elif family == "lightx2v":
        for n in range(num_layers):
            for m in (*_SELF, *_CROSS, "ffn.0", "ffn.2"):
                pair(f"blocks.{n}.{m}")
            for m in _NORMS:
                keys.append((f"blocks.{n}.{m}", "diff"))
            keys.append((f"blocks.{n}.norm3", "diff_b"))
            keys.append((f"blocks.{n}", "diff_m"))
        for m in ("text_embedding.0", "text_embedding.2", "time_embedding.0", "time_projection.1"):
            pair(m)
        for m in ("time_embedding.2", "head.head"):
            keys.extend([(m, "diff"), (m, "diff_b")])  # full 2-D .diff, as LightX2V's extractor writes
        keys.append(("head", "diff_m"))
    else:
        raise ValueError(f"tiny LoRA family {family!r}: expected 'fusionx' or 'lightx2v'")
    return keys


def tiny_lora_state(spec: TinyLora, config: Mapping[str, Any] = TINY_DIT_CONFIG) -> dict[str, torch.Tensor]:
    """The file's tensors (keys with the `diffusion_model.` prefix), drawn in sorted key order."""
    from mt_assets.models.dit import build_multitalk_transformer
    from mt_assets.models.dit_loading import reference_key_shapes

    shapes = reference_key_shapes(build_multitalk_transformer(config, device="meta"))
    wanted: dict[str, tuple[int, ...]] = {}
    for module, suffix in lora_key_list(spec.family, int(config["num_layers"])):
        if suffix == "pair":
            out, inp = shapes[f"{module}.weight"]
            wanted[f"{PREFIX}{module}.lora_down.weight"] = (spec.rank, inp)
            wanted[f"{PREFIX}{module}.lora_up.weight"] = (out, spec.rank)
        elif suffix == "diff":
            wanted[f"{PREFIX}{module}.diff"] = tuple(shapes[f"{module}.weight"])
        elif suffix == "diff_b":
            wanted[f"{PREFIX}{module}.diff_b"] = tuple(shapes[f"{module}.bias"])
        else:  # diff_m: the modulation table's shape
            wanted[f"{PREFIX}{module}.diff_m"] = tuple(shapes[f"{module}.modulation"])
    gen = torch.Generator().manual_seed(spec.seed)
    state: dict[str, torch.Tensor] = {}
    for key in sorted(wanted):
        shape = wanted[key]
        noise = torch.randn(shape, generator=gen)
        if key.endswith("lora_down.weight"):
            value = noise / shape[1] ** 0.5
        elif key.endswith("lora_up.weight"):
            value = noise * spec.up / spec.rank**0.5
        elif key.endswith("diff_m"):
            value = noise * 0.1
        elif key.endswith("diff") and len(shape) >= 2:
            value = noise * 0.3 / torch.Size(shape[1:]).numel() ** 0.5
        else:  # diff_b, 1-D diff
            value = noise * 0.05
        state[key] = value.to(spec.dtype)
    return state


def write_tiny_lora(path: Path, spec: TinyLora, config: Mapping[str, Any] = TINY_DIT_CONFIG) -> None:
    """Write one tiny LoRA file at `path` (staged, then renamed); no safetensors metadata, as the real files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tiny_lora_state(spec, config).items()}, str(tmp))
    os.replace(tmp, path)


def lora_target(spec: TinyLora) -> tuple[str, str]:
    """(dir, path) of the add-on's LoRA file, as its real profile declares it."""
    from mt_assets.manifest import load_profile

    [f] = [f for f in load_profile(spec.real_profile).component(spec.component).files if f.kind == "weights"]
    return f.dir, f.path


def write_tiny_loras(root: Path, config: Mapping[str, Any] = TINY_DIT_CONFIG) -> list[str]:
    """Every tiny add-on's LoRA file under `root` (a mirror, `<dir>/<path>` layout); their `<dir>/<path>`s."""
    written = []
    for spec in TINY_LORAS:
        directory, path = lora_target(spec)
        write_tiny_lora(Path(root) / directory / path, spec, config)
        written.append(f"{directory}/{path}")
    return written
