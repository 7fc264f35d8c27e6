"""Reading checkpoint files strictly: the formats on the volume, and what counts as an error.

    *.safetensors   safetensors (tensors only, by construction); sharded sets come with an
                    index JSON: {"metadata": {...}, "weight_map": {key: shard file name}}
    *.pth           a torch pickle of a flat {key: tensor} dict (Wan's T5, CLIP and VAE).
                    Loaded with `weights_only=True` only: a payload that is anything but
                    tensors (code, arbitrary objects) is refused, never executed.

Loading into a module is strict: a key the module lacks, a key the file lacks, or a shape
that differs is a CheckpointError naming the file and the key.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file


class CheckpointError(ValueError):
    """A checkpoint that does not fit: the message names the file and the key."""


def load_pth(path: str | Path) -> dict[str, torch.Tensor]:
    """A `.pth` state dict, tensors only (weights_only=True)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused: not a plain tensor checkpoint ({_first_line(e)})") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: cannot be read as a torch checkpoint: {_first_line(e)}") from None
    return _tensor_dict(obj, path)


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own SafetensorError and OSErrors
        raise CheckpointError(f"{path}: cannot be read as safetensors: {_first_line(e)}") from None


def load_sharded_safetensors(index_path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a sharded set, checking that every shard holds exactly the keys the index gives it."""
    index_path = Path(index_path)
    try:
        weight_map: dict[str, str] = json.loads(index_path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{index_path}: not a safetensors index: {_first_line(e)}") from None
    by_shard: dict[str, set[str]] = {}
    for key, shard in weight_map.items():
        by_shard.setdefault(shard, set()).add(key)
    tensors: dict[str, torch.Tensor] = {}
    for shard, keys in sorted(by_shard.items()):
        shard_path = index_path.parent / shard
        if not shard_path.is_file():
            raise CheckpointError(
                f"{index_path}: shard {shard} is missing (needed for key {sorted(keys)[0]!r})"
            )
        part = load_safetensors(shard_path)
        extra = set(part) - keys
        if extra:
            raise CheckpointError(f"{shard_path}: unexpected key {sorted(extra)[0]!r} (not in the index)")
        missing = keys - set(part)
        if missing:
            raise CheckpointError(
                f"{shard_path}: missing key {sorted(missing)[0]!r} (the index puts it here)"
            )
        tensors.update(part)
    return tensors


def check_keys(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Size | tuple[int, ...]],
    source: str,
    *,
    ignore: Iterable[str] = (),
) -> None:
    """Raise CheckpointError unless `state` has exactly the expected keys and shapes."""
    ignored = set(ignore)
    missing = sorted(set(expected) - set(state) - ignored)
    if missing:
        raise CheckpointError(f"{source}: missing key {missing[0]!r}" + _more(missing))
    unexpected = sorted(set(state) - set(expected) - ignored)
    if unexpected:
        raise CheckpointError(f"{source}: unexpected key {unexpected[0]!r}" + _more(unexpected))
    for key, shape in expected.items():
        if key in state and tuple(state[key].shape) != tuple(shape):
            raise CheckpointError(
                f"{source}: key {key!r} has shape {list(state[key].shape)}, the model expects {list(shape)}"
            )


def load_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load `state` into `module`, requiring an exact key and shape match."""
    expected = {k: v.shape for k, v in module.state_dict().items()}
    check_keys(state, expected, source)
    module.load_state_dict(dict(state), strict=True, assign=_on_meta(module))


def _on_meta(module: torch.nn.Module) -> bool:
    return any(p.is_meta for p in module.parameters())


def _tensor_dict(obj: object, path: str | Path) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: refused: holds a {type(obj).__name__}, not a {{key: tensor}} dict")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: refused: entry {key!r} is a {type(value).__name__}, not a tensor")
    return obj


def _more(keys: list[str]) -> str:
    return f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
