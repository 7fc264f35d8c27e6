"""Quantized weights as MeiGen publishes them (optimum-quanto): the DiT and the T5 encoder.

Files (Hugging Face `MeiGen-AI/MeiGen-MultiTalk`, folder `quant_models/`), each a safetensors state
dict plus a JSON quantization map:

    dit_model_int8.safetensors          + dit_model_map_int8.json             the MultiTalk DiT
    quant_model_{int8,fp8}_FusionX.safetensors + quantization_map_{int8,fp8}_FusionX.json
                                        the DiT with the FusionX LoRA merged in before quantizing
    t5_{int8,fp8}.safetensors           + t5_map_{int8,fp8}.json              the umT5 encoder

Map (what optimum-quanto's `quantization_map()` writes): `{module: {"weights": qtype, "activations":
"none"}}`, module names in the reference's naming (Wan's `blocks.0.self_attn.q`, T5's
`blocks.0.attn.q`). Only the modules it names are quantized (MeiGen's DiT map leaves
`time_embedding.*` and `time_projection.*` in float); weights qtypes of 8 bits (`qint8`,
`qfloat8_e4m3fn`, ...), activations `none` (weight-only), nothing else is accepted.

State dict (reference naming). A quantized linear `M` is stored as

    M.weight._data    int8 or float8_e4m3fn [out, in]   the quantized weight
    M.weight._scale   float [out, 1]                    per-row scale: weight = _data * _scale
    M.bias            float [out]                        as in the float model
    M.input_scale, M.output_scale   float []            ones; unused without activation quantization

and every other parameter under its usual name, in float.

Loading (`load_quantized_transformer`, `load_quantized_t5`) does what the reference's `--quant`
path does (`wan/multitalk.py` and `wan/modules/t5.py` at c1ad840: a model built on the meta device
from its config, the map's modules turned into quanto `QLinear`s, the file loaded into it, the RoPE
tables rebuilt), with these differences, on purpose:

  * strict keys (the reference's `requantize` loads with `strict=False`, so a key missing from the
    file leaves uninitialised memory in the model without an error): the file's header is checked
    against the keys the map implies before anything is read; a missing or an unexpected key, a
    shape that differs, or a quantized weight of another dtype than its map entry is a QuantError
    naming the file and the keys; a map that names a module the model lacks (or one that is not a
    linear layer) names the map and the modules. A missing or malformed map names the map.
  * no float weights are allocated: the model is filled from the meta device by assignment (the
    reference allocates every float weight first and then replaces the quantized ones).
  * float tensors follow the load's dtype like every other loader here (the DiT's fp32 modules stay
    float32), scales included: a float32-scale file loads under bf16, and a bf16-scale file (the
    published ones, README N) loads under float32 on a CPU. The reference crashes on the first
    (`The dtype of a weights Tensor cannot be changed`); with matching dtypes nothing changes.

LoRA files are never merged into quantized weights (the reference ignores `lora_scales` with
`--quant`): a LoRA is merged before quantizing, into the published `*_FusionX` files.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mt_assets.models.checkpoints import CheckpointError
from mt_assets.models.reading import (
    LoadStrategy,
    check_strategy,
    iter_safetensors,
    owned_copy,
    read_safetensors_header,
    strategy_from_env,
)

# What the quantized state dict holds for a module of the map, beside the float model's keys.
QUANT_SUFFIXES = ("weight._data", "weight._scale", "input_scale", "output_scale")
SHOWN_KEYS = 8  # keys an error lists by name before it counts the rest


class QuantError(CheckpointError):
    """A quantized file or map that does not fit the model: the message names the file and the keys."""


def read_quant_map(path: str | Path) -> dict[str, str]:
    """{module (reference name): weights qtype name} from a quantization map; a QuantError naming the
    file for a missing file, bad JSON, or an entry that is not weight-only 8-bit quantization."""
    from optimum.quanto import qtypes

    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QuantError(f"quantization map {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise QuantError(f"quantization map {path}: cannot be read: {e}") from None
    except ValueError as e:
        raise QuantError(f"quantization map {path}: not valid JSON: {e}") from None
    if not isinstance(raw, dict) or not raw:
        raise QuantError(
            f"quantization map {path}: expected a non-empty JSON object {{module: {{weights, activations}}}}"
        )
    out: dict[str, str] = {}
    for module, entry in raw.items():
        where = f"quantization map {path}: module {module!r}"
        if not isinstance(entry, dict) or set(entry) != {"weights", "activations"}:
            raise QuantError(f'{where}: expected {{"weights": qtype, "activations": "none"}}, got {entry!r}')
        weights, activations = entry["weights"], entry["activations"]
        if activations != "none":
            raise QuantError(
                f"{where}: activations {activations!r}: only weight-only quantization ('none') is supported"
            )
        q = qtypes.get(weights) if isinstance(weights, str) else None
        if q is None or q.bits != 8:
            eight = sorted(n for n, t in qtypes.items() if t.bits == 8)
            raise QuantError(f"{where}: weights {weights!r}: expected one of {', '.join(eight)}")
        out[module] = weights
    return out


def quantized_key_shapes(
    plain: Mapping[str, tuple[int, ...]], qmap: Mapping[str, str], map_source: str
) -> dict[str, tuple[int, ...]]:
    """The keys and shapes a quantized file holds for a float model with these keys (`plain`, reference
    names) and this map: each mapped module's `weight` becomes `weight._data` + `weight._scale`, and
    it gains `input_scale` and `output_scale`."""
    lacking = sorted(m for m in qmap if len(plain.get(f"{m}.weight", ())) != 2)
    if lacking:
        raise QuantError(
            f"quantization map {map_source}: names {_names(lacking)}, which the model has no linear layer for"
        )
    shapes = dict(plain)
    for module in qmap:
        out, inp = shapes.pop(f"{module}.weight")
        shapes[f"{module}.weight._data"] = (out, inp)
        shapes[f"{module}.weight._scale"] = (out, 1)
        shapes[f"{module}.input_scale"] = ()
        shapes[f"{module}.output_scale"] = ()
    return shapes


def plain_key_shapes(header: Mapping[str, tuple[torch.dtype, tuple[int, ...]]]) -> dict[str, tuple[int, ...]]:
    """The float model's keys and shapes behind a quantized file's header (`X.weight._data` -> `X.weight`;
    the scale buffers dropped): what a loader reads a model's sizes from."""
    shapes: dict[str, tuple[int, ...]] = {}
    for key, (_, shape) in header.items():
        if key.endswith(".weight._data"):
            shapes[key.removesuffix("._data")] = shape
        elif not key.endswith((".weight._scale", ".input_scale", ".output_scale")):
            shapes[key] = shape
    return shapes


def check_quantized_header(
    path: Path,
    header: Mapping[str, tuple[torch.dtype, tuple[int, ...]]],
    expected: Mapping[str, tuple[int, ...]],
    qmap: Mapping[str, str],
) -> None:
    """Exactly the expected keys and shapes, quantized data of its map entry's dtype and every other
    tensor a float; else a QuantError naming `path` and the keys."""
    from optimum.quanto import qtypes

    missing = sorted(set(expected) - set(header))
    if missing:
        raise QuantError(f"{path}: missing {_keys(missing)}")
    unexpected = sorted(set(header) - set(expected))
    if unexpected:
        raise QuantError(f"{path}: unexpected {_keys(unexpected)}")
    for key, shape in expected.items():
        if tuple(header[key][1]) != tuple(shape):
            raise QuantError(
                f"{path}: key {key!r} has shape {list(header[key][1])}, the model expects {list(shape)}"
            )
    for key in expected:
        dtype = header[key][0]
        # every tensor but a quantized weight's data is read as a float (an int8 bias or norm weight
        # would fail the first forward without naming the file)
        if not key.endswith(".weight._data") and not dtype.is_floating_point:
            raise QuantError(f"{path}: key {key!r} is {dtype}, expected a floating-point tensor")
    for module, weights in qmap.items():
        want = qtypes[weights].dtype
        got = header[f"{module}.weight._data"][0]
        if got != want:
            raise QuantError(
                f"{path}: key '{module}.weight._data' is {got}, its map entry {weights} stores {want}"
            )


def load_quantized(
    model: nn.Module,
    path: str | Path,
    map_path: str | Path,
    *,
    to_model: Mapping[str, tuple[str, ...]],
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    keep_fp32: Callable[[str], bool] = lambda name: False,
    strategy: LoadStrategy | None = None,
) -> nn.Module:
    """Fill `model` (built on the meta device) from a quantized file and its map, strictly.

    to_model: every key of the float model in the file's (reference) naming -> the model's name(s)
    for it (a tied weight has two). The map's modules become quanto QLinears (their names follow
    from their `.weight` keys), the header is checked (module docstring), then the file is read once
    (`strategy`), each tensor cast (floats to `dtype`, or float32 where `keep_fp32(model name)`;
    quantized data as stored) and moved to `device`, and assigned. Anything left on the meta device
    afterwards is an error naming its key. Non-persistent buffers are the caller's (the DiT's RoPE).
    """
    from optimum.quanto.nn import quantize_module

    strategy = strategy_from_env() if strategy is None else check_strategy(strategy)
    path, map_path = Path(path), Path(map_path)
    qmap = read_quant_map(map_path)
    shapes = {k: tuple(t.shape) for k, t in model.state_dict().items()}
    plain = {ref: shapes[names[0]] for ref, names in to_model.items()}
    expected = quantized_key_shapes(plain, qmap, str(map_path))
    header = read_safetensors_header(path)
    check_quantized_header(path, header, expected, qmap)

    if torch.device(device).type == "cpu" and dtype == torch.bfloat16:
        # quanto sends bf16 x int8 on a CPU to torch._weight_int8pack_mm, which crashes the process
        # (SIGSEGV, torch 2.13) when in_features is not a multiple of 16; the real widths are.
        odd = sorted(m for m, w in qmap.items() if w == "qint8" and plain[f"{m}.weight"][1] % 16)
        if odd:
            raise QuantError(
                f"quantization map {map_path}: bf16 on the CPU cannot run qint8 linears whose input width is "
                f"not a multiple of 16 ({_names(odd)}; torch's int8 kernel crashes): load as float32 on the "
                "CPU, or on a GPU"
            )
    modules: dict[str, str] = {}  # reference module -> model module
    for module, weights in qmap.items():
        [name] = to_model[f"{module}.weight"]
        target = name.removesuffix(".weight")
        linear = model.get_submodule(target)
        if type(linear) is not nn.Linear:
            raise QuantError(
                f"quantization map {map_path}: module {module!r} is a {type(linear).__name__} in the model, not a Linear"
            )
        qlinear = quantize_module(linear, weights=weights)
        parent, _, child = target.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, qlinear)
        modules[module] = target

    def model_names(key: str) -> tuple[str, ...]:
        if key in to_model:
            return to_model[key]
        for suffix in QUANT_SUFFIXES:
            module = key.removesuffix(f".{suffix}")
            if module in modules:
                return (f"{modules[module]}.{suffix}",)
        raise AssertionError(key)  # the header check admits no other key

    state: dict[str, torch.Tensor] = {}
    read = 0
    for key, source in iter_safetensors(path, strategy):
        if key not in header or tuple(source.shape) != tuple(header[key][1]):
            raise QuantError(f"{path}: key {key!r} appeared or changed shape while loading; retry")
        names = model_names(key)
        target_dtype = source.dtype
        if source.is_floating_point() and not key.endswith(".weight._data"):
            target_dtype = torch.float32 if keep_fp32(names[0]) else dtype
        tensor = owned_copy(source, device=device, dtype=target_dtype)
        del source
        for name in names:  # a tied weight: the same tensor under each name stays tied
            state[name] = tensor
        read += 1
    if read != len(header):
        raise QuantError(f"{path}: {len(header) - read} key(s) vanished while loading; retry")
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.unexpected_keys:  # unreachable after the header check; a silent drop would be worse
        raise QuantError(f"{path}: unexpected {_keys(sorted(result.unexpected_keys))}")
    left = [name for name, p in model.named_parameters() if p.is_meta]
    left += [name for name, b in model.named_buffers() if b.is_meta and not _non_persistent(model, name)]
    if left:
        raise QuantError(f"{path}: {_keys(sorted(left))} not loaded (left uninitialised)")
    return model.eval().requires_grad_(False)


def _non_persistent(model: nn.Module, name: str) -> bool:
    parent, _, buffer = name.rpartition(".")
    module = model.get_submodule(parent) if parent else model
    return buffer in module._non_persistent_buffers_set


def load_quantized_transformer(
    config: str | Path | Mapping[str, Any],
    path: str | Path,
    map_path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    strategy: LoadStrategy | None = None,
) -> Any:
    """The MultiTalk DiT (+ audio adapter) from a quantized file in MeiGen's layout (e.g.
    `quant_models/dit_model_int8.safetensors` + `dit_model_map_int8.json`), built from the Wan
    `config.json` (a path or its dict). dtype as `load_multitalk_transformer`'s: the time embedder,
    norms and modulation tables stay float32."""
    from mt_assets.models.dit import build_multitalk_transformer, kept_in_fp32
    from mt_assets.models.dit_loading import diffusers_to_reference_key, finish_buffers, read_wan_config

    if not isinstance(config, Mapping):
        config = read_wan_config(config)
    model = build_multitalk_transformer(config, device="meta")
    to_model = {diffusers_to_reference_key(k): (k,) for k in model.state_dict()}
    load_quantized(
        model,
        path,
        map_path,
        to_model=to_model,
        device=device,
        dtype=dtype,
        keep_fp32=partial(kept_in_fp32, model),
        strategy=strategy,
    )
    finish_buffers(model, device)  # the reference's init_freqs(): RoPE tables built off the meta device
    return model


def load_quantized_t5(
    path: str | Path,
    map_path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    strategy: LoadStrategy | None = None,
) -> Any:
    """Wan's T5 encoder from a quantized file (`quant_models/t5_int8.safetensors` + `t5_map_int8.json`)
    as a UMT5EncoderModel in eval mode; sizes read from the shapes (as `load_t5_encoder` does)."""
    from transformers import UMT5EncoderModel

    from mt_assets.models.text_encoder import t5_config_from_state, wan_t5_key_map

    header = read_safetensors_header(path)
    plain = {k: torch.empty(s, device="meta") for k, s in plain_key_shapes(header).items()}
    config = t5_config_from_state(plain, str(path))
    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    load_quantized(
        model,
        path,
        map_path,
        to_model=wan_t5_key_map(config.num_layers),
        device=device,
        dtype=dtype,
        strategy=strategy,
    )
    return model


def _keys(keys: list[str]) -> str:
    word = "key" if len(keys) == 1 else "keys"
    return f"{word} {_names(keys)}"


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:SHOWN_KEYS])
    return shown + (f" (and {len(names) - SHOWN_KEYS} more)" if len(names) > SHOWN_KEYS else "")
