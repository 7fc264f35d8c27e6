"""The tiny quantized files: MeiGen's int8 / fp8 DiT and T5 files at toy scale, for the quantized tiny twins.

The tiny twins of the quantized profiles (`tiny-int8`, `tiny-int8-fusionx`, `tiny-fp8-fusionx`)
declare the same components, dirs and paths as the real ones (`multitalk-480p-int8`, ...): the tiny
DiT's `config.json` and, under `MeiGen-MultiTalk/quant_models/`, a quantized DiT file + its map and
a quantized T5 file + its map (models/quant.py describes the layout). `write_tiny_quants(DIR)` writes
them into a tiny mirror, made from the mirror's own float files the way the golden set's section N
made its tiny files (README N, the recipe MeiGen did not publish, reproduced where it is known):

    quantize(model, weights=qtype, exclude=['time_embedding*', 'time_projection*']); freeze(model)
    save_file(state_dict); json.dump(quantization_map(model))

with optimum-quanto on the float32 model (float32 scales; the published files carry bf16 ones), names
in the reference's naming. The FusionX files are the tiny DiT with the tiny FusionX LoRA
(tiny/lora.py) merged at 1.0 first (models/lora.py, float32), as MeiGen pre-merges theirs. The T5 files
quantize every linear of the tiny T5 (the published T5 maps list every `nn.Linear`). Byte-identical
on every run (quanto's absmax scales and round-half-even are deterministic).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from mt_assets.models.quant import QUANT_SUFFIXES

QUANT_EXCLUDE = ("time_embedding*", "time_projection*")  # MeiGen's DiT map leaves these float (README N)


@dataclass(frozen=True)
class TinyQuant:
    """One quantized tiny twin: its profile, the real profile it copies, the qtype, and whether the
    tiny FusionX LoRA is merged into the DiT before quantizing."""

    profile: str
    real_profile: str
    qtype: str  # an optimum-quanto qtype name: qint8 | qfloat8_e4m3fn
    fusionx: bool


TINY_QUANTS: tuple[TinyQuant, ...] = (
    TinyQuant("tiny-int8", "multitalk-480p-int8", "qint8", fusionx=False),
    TinyQuant("tiny-int8-fusionx", "multitalk-480p-int8-fusionx", "qint8", fusionx=True),
    TinyQuant("tiny-fp8-fusionx", "multitalk-480p-fp8-fusionx", "qfloat8_e4m3fn", fusionx=True),
)


def quantize_in_place(
    model: nn.Module, qtype: str, to_reference: Mapping[str, str], exclude: tuple[str, ...] = ()
) -> dict[str, str]:
    """Quantize `model`'s linears in place (weights only, optimum-quanto, frozen), leaving out the
    modules whose reference name (`to_reference`: each float state-dict key -> its reference name)
    matches an `exclude` pattern. Returns every linear: model module -> reference module."""
    from optimum.quanto import freeze, quantize

    modules = {  # model module -> reference module, from the linears' weight keys
        key.removesuffix(".weight"): ref.removesuffix(".weight")
        for key, ref in to_reference.items()
        if key.endswith(".weight") and isinstance(model.get_submodule(key.removesuffix(".weight")), nn.Linear)
    }
    include = [m for m, ref in modules.items() if not any(fnmatch(ref, p) for p in exclude)]
    quantize(model, weights=qtype, include=include)
    freeze(model)
    return modules


def quantize_dit(model: nn.Module, qtype: str) -> None:
    """Quantize our DiT in place as MeiGen's DiT files were made: every linear but the time embedding
    and projection (QUANT_EXCLUDE, in the reference's names), frozen (benchmarks, low-VRAM tests)."""
    from mt_assets.models.dit_loading import diffusers_to_reference_key

    to_reference = {k: diffusers_to_reference_key(k) for k in model.state_dict()}
    quantize_in_place(model, qtype, to_reference, QUANT_EXCLUDE)


def quantize_linears(
    model: nn.Module, qtype: str, to_reference: Mapping[str, str], exclude: tuple[str, ...] = ()
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, str]]]:
    """Quantize `model` (quantize_in_place) and return its state dict and quantization map in the
    reference's naming. Tied tensors appear once."""
    from optimum.quanto import quantization_map

    modules = quantize_in_place(model, qtype, to_reference, exclude)

    def rename(key: str) -> str:
        if key in to_reference:
            return to_reference[key]
        for suffix in QUANT_SUFFIXES:  # what quantizing added to a module
            module = key.removesuffix(f".{suffix}")
            if module in modules:
                return f"{modules[module]}.{suffix}"
        raise AssertionError(key)

    state: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        state.setdefault(rename(key), value.contiguous())
    qmap = {modules[m]: entry for m, entry in quantization_map(model).items()}
    return state, qmap


def quantized_dit(
    reference_state: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    qtype: str,
    loras: list[tuple[Path, float]] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, str]]]:
    """The quantized file's tensors and map for a DiT given by its reference-named float32 state, with
    `loras` merged first (models/lora.py, float32)."""
    from mt_assets.models.dit import build_multitalk_transformer
    from mt_assets.models.dit_loading import diffusers_to_reference_key, reference_to_diffusers_state

    model = build_multitalk_transformer(config, device="cpu")
    model.load_state_dict(reference_to_diffusers_state(model, reference_state), strict=True)
    if loras:
        from mt_assets.models.lora import merge_loras

        merge_loras(model, loras, dtype=torch.float32)
    to_reference = {k: diffusers_to_reference_key(k) for k in model.state_dict()}
    return quantize_linears(model, qtype, to_reference, QUANT_EXCLUDE)


def quantized_t5(t5_path: Path, qtype: str) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, str]]]:
    """The quantized file's tensors and map for a Wan T5 `.pth` (every linear quantized)."""
    from mt_assets.models.text_encoder import load_t5_encoder, wan_t5_key_map

    model = load_t5_encoder(t5_path, dtype=torch.float32)
    to_reference = {
        name: key for key, names in wan_t5_key_map(model.config.num_layers).items() for name in names
    }
    return quantize_linears(model, qtype, to_reference)


def write_quantized(
    path: Path, map_path: Path, state: Mapping[str, torch.Tensor], qmap: Mapping[str, Any]
) -> None:
    """The state dict (safetensors, sorted keys, no metadata) and its map (`json.dump`, the published
    formatting), each staged and renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(dict(sorted(state.items())), str(tmp))
    os.replace(tmp, path)
    tmp = map_path.with_name(map_path.name + ".tmp")
    tmp.write_text(json.dumps(qmap))
    os.replace(tmp, map_path)


def quant_targets(spec: TinyQuant) -> dict[str, tuple[str, str]]:
    """{unit: (`<dir>/<path>` of the quantized file, of its map)} as the real profile declares them."""
    from mt_assets.manifest import load_profile

    real = load_profile(spec.real_profile)
    out = {}
    for unit in ("transformer", "t5"):
        component = real.quantized(unit)
        assert component is not None, (spec.real_profile, unit)
        weights, qmap = component.quant_files
        out[unit] = (f"{weights.dir}/{weights.path}", f"{qmap.dir}/{qmap.path}")
    return out


def write_tiny_quants(
    root: Path,
    *,
    dit_state: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    t5_path: Path,
    fusionx_lora: Path,
) -> list[str]:
    """Every quantized twin's files under `root` (a mirror, `<dir>/<path>` layout), each written once
    (the int8 T5 serves two twins); their `<dir>/<path>`s."""
    written: list[str] = []
    for spec in TINY_QUANTS:
        targets = quant_targets(spec)
        dit_file, dit_map = targets["transformer"]
        if dit_file not in written:
            loras = [(fusionx_lora, 1.0)] if spec.fusionx else None
            state, qmap = quantized_dit(dit_state, config, spec.qtype, loras)
            write_quantized(root / dit_file, root / dit_map, state, qmap)
            written += [dit_file, dit_map]
        t5_file, t5_map = targets["t5"]
        if t5_file not in written:
            state, qmap = quantized_t5(t5_path, spec.qtype)
            write_quantized(root / t5_file, root / t5_map, state, qmap)
            written += [t5_file, t5_map]
    return written
