"""Reading the MultiTalk DiT from the volume: key naming, the shard index, the strict loader.

Files on the volume (reference naming, i.e. Wan's own `WanModel` state-dict keys):

    Wan2.1-I2V-14B-480P/config.json                       original Wan config (see `parse_wan_config`)
    Wan2.1-I2V-14B-480P/diffusion_pytorch_model-0000N-of-0000M.safetensors
    Wan2.1-I2V-14B-480P/diffusion_pytorch_model.safetensors.index.json
                          {"metadata": {...}, "weight_map": {key: shard}}, DiT keys only
    MeiGen-MultiTalk/multitalk.safetensors                the audio adapter only (330 keys for 14B)
    MeiGen-MultiTalk/diffusion_pytorch_model.safetensors.index.json
                          MeiGen's index: DiT keys -> the Wan shards, adapter keys -> multitalk.safetensors

Adapter keys (identical in the file and in `MultiTalkTransformer3DModel.state_dict()`):

    audio_proj.{proj1,proj1_vf,proj2,proj3,norm}.{weight,bias}
    blocks.N.audio_cross_attn.{q_linear,kv_linear,proj}.{weight,bias}
    blocks.N.norm_x.{weight,bias}

DiT keys are renamed between Wan's naming and diffusers' by `reference_to_diffusers_state` /
`diffusers_to_reference_key` (the same mapping as diffusers' `convert_wan_transformer_to_diffusers`,
including its norm2/norm3 swap: Wan's affine cross-attention norm `norm3` is diffusers' `norm2`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed
from torch import nn

from mt_assets.models.checkpoints import CheckpointError, check_keys
from mt_assets.models.dit import (
    MultiTalkTransformer3DModel,
    build_multitalk_transformer,
    is_adapter_key,
    kept_in_fp32,
)
from mt_assets.models.reading import (
    LoadStrategy,
    ReadBuffer,
    check_strategy,
    iter_safetensors,
    owned_copy,
    read_safetensors_header,
    strategy_from_env,
)

INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
ADAPTER_FILE_NAME = "multitalk.safetensors"


# diffusers -> Wan (reference) key renames; block-level renames apply under `blocks.N.`.
_TOP_RENAMES = (
    ("condition_embedder.time_embedder.linear_1.", "time_embedding.0."),
    ("condition_embedder.time_embedder.linear_2.", "time_embedding.2."),
    ("condition_embedder.time_proj.", "time_projection.1."),
    ("condition_embedder.text_embedder.linear_1.", "text_embedding.0."),
    ("condition_embedder.text_embedder.linear_2.", "text_embedding.2."),
    ("condition_embedder.image_embedder.norm1.", "img_emb.proj.0."),
    ("condition_embedder.image_embedder.ff.net.0.proj.", "img_emb.proj.1."),
    ("condition_embedder.image_embedder.ff.net.2.", "img_emb.proj.3."),
    ("condition_embedder.image_embedder.norm2.", "img_emb.proj.4."),
    ("proj_out.", "head.head."),
    ("patch_embedding.", "patch_embedding."),
)
_BLOCK_RENAMES = (
    ("attn1.", "self_attn."),
    ("attn2.", "cross_attn."),
    ("norm2.", "norm3."),  # the affine cross-attention norm (diffusers swapped the names)
    ("ffn.net.0.proj.", "ffn.0."),
    ("ffn.net.2.", "ffn.2."),
)
_ATTN_RENAMES = (
    ("to_q.", "q."),
    ("to_k.", "k."),
    ("to_v.", "v."),
    ("to_out.0.", "o."),
    ("add_k_proj.", "k_img."),
    ("add_v_proj.", "v_img."),
    ("norm_added_k.", "norm_k_img."),
    ("norm_q.", "norm_q."),
    ("norm_k.", "norm_k."),
)


def diffusers_to_reference_key(key: str) -> str:
    """A diffusers `WanTransformer3DModel` (or adapter) key -> its name in Wan's/MultiTalk's files."""
    if is_adapter_key(key):
        return key
    if key == "scale_shift_table":
        return "head.modulation"
    for old, new in _TOP_RENAMES:
        if key.startswith(old):
            return new + key[len(old) :]
    m = re.match(r"(blocks\.\d+\.)(.*)", key)
    if m is None:
        raise KeyError(f"no Wan name for diffusers key {key!r}")
    prefix, rest = m.groups()
    if rest == "scale_shift_table":
        return prefix + "modulation"
    for old, new in _BLOCK_RENAMES:
        if rest.startswith(old):
            rest = new + rest[len(old) :]
            if old.startswith("attn"):
                inner = rest[len(new) :]
                for a_old, a_new in _ATTN_RENAMES:
                    if inner.startswith(a_old):
                        return prefix + new + a_new + inner[len(a_old) :]
                raise KeyError(f"no Wan name for diffusers key {key!r}")
            return prefix + rest
    raise KeyError(f"no Wan name for diffusers key {key!r}")


def reference_key_shapes(model: MultiTalkTransformer3DModel) -> dict[str, tuple[int, ...]]:
    """Every key the model needs, under the reference names, with its shape."""
    return {diffusers_to_reference_key(k): tuple(v.shape) for k, v in model.state_dict().items()}


def reference_to_diffusers_state(
    model: MultiTalkTransformer3DModel, state: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename a reference-named state dict to the model's names (keys must already be checked)."""
    to_diffusers = {diffusers_to_reference_key(k): k for k in model.state_dict()}
    return {to_diffusers[k]: v for k, v in state.items()}


def read_wan_config(path: str | Path) -> dict[str, Any]:
    """Wan's `config.json` (the DiT's sizes), or a CheckpointError naming the file."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read the Wan config: {e}") from None


def load_multitalk_transformer(
    wan_dir: str | Path,
    multitalk: str | Path | None = None,
    *,
    config: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    strategy: LoadStrategy | None = None,
) -> MultiTalkTransformer3DModel:
    """Load the DiT + adapter strictly from the on-volume files, one file at a time.

    wan_dir: Wan2.1-I2V folder with config.json, the shards and their index (reference names).
    multitalk: where the adapter comes from —
      * `.../multitalk.safetensors`: the adapter file; the DiT comes from wan_dir's index;
      * `.../diffusion_pytorch_model.safetensors.index.json` (MeiGen's index) or the folder
        holding it: every key through that index; a shard named there is looked up next to the
        index first, then in wan_dir (MeiGen's layout copies the index into the Wan folder;
        the volume keeps it in MeiGen-MultiTalk/);
      * None: wan_dir's own index must map the adapter keys too (the reference's in-place swap).
    config: Wan config dict; default wan_dir/config.json.
    strategy: how each file is read (`mt_assets.models.reading`); None: $MT_LOAD_STRATEGY or the default.

    Keys and shapes are checked from the files' headers before any weight is read: a key missing
    from or unexpected in any file, a shape mismatch, or no adapter weights at all is a
    CheckpointError naming the file and the key. Then the model, built on the meta device, is
    filled file by file: each file is read, every tensor is cast to its dtype and moved to
    `device`, and the file's buffer is dropped before the next is read, so the host memory the
    load needs beyond the weights it keeps is about one shard (the largest).
    dtype: bf16 on GPU, float32 on CPU; the time embedder, the norms and the modulation tables
    stay float32 (diffusers' _keep_in_fp32_modules), read from the file's values directly.
    """
    strategy = strategy_from_env() if strategy is None else check_strategy(strategy)
    wan_dir = Path(wan_dir)
    if config is None:
        config = read_wan_config(wan_dir / "config.json")
    model = build_multitalk_transformer(config, device="meta")
    expected = reference_key_shapes(model)
    adapter_expected = {k: s for k, s in expected.items() if is_adapter_key(k)}
    dit_expected = {k: s for k, s in expected.items() if not is_adapter_key(k)}

    # Plan from the indexes and the files' headers (shapes as meta tensors; no weights read).
    wan_index = wan_dir / INDEX_NAME
    files: dict[str, Path] = {}  # key -> the file it is read from
    if multitalk is None:
        headers = _index_headers(wan_index, [wan_dir], files)
        adapter_source = wan_index
    else:
        multitalk = Path(multitalk)
        if multitalk.is_dir():
            multitalk = multitalk / INDEX_NAME
        if multitalk.suffix == ".json":
            headers = _index_headers(multitalk, [multitalk.parent, wan_dir], files)
            adapter_source = multitalk
        else:
            headers = _index_headers(wan_index, [wan_dir], files)
            adapter = _file_header(multitalk)
            overlap = sorted(set(headers) & set(adapter))
            if overlap:
                raise CheckpointError(f"{multitalk}: key {overlap[0]!r} is also in {wan_index}")
            headers.update(adapter)
            files.update(dict.fromkeys(adapter, multitalk))
            adapter_source = multitalk

    # Unexpected keys and wrong shapes: named with the file that holds them.
    by_file: dict[Path, dict[str, torch.Tensor]] = {}
    for key, tensor in headers.items():
        by_file.setdefault(files[key], {})[key] = tensor
    for path, part in sorted(by_file.items()):
        check_keys(part, {k: expected[k] for k in part if k in expected}, str(path))
    # Missing keys: the DiT's against the index, the adapter's against its file.
    adapter_files = sorted({files[k] for k in headers if is_adapter_key(k)})
    if not adapter_files:
        raise CheckpointError(
            f"{adapter_source}: no MultiTalk adapter weights (missing key {sorted(adapter_expected)[0]!r}); "
            f"the Wan DiT without {ADAPTER_FILE_NAME} is not MultiTalk"
        )
    dit_source = multitalk if multitalk is not None and multitalk.suffix == ".json" else wan_index
    check_keys({k: v for k, v in headers.items() if not is_adapter_key(k)}, dit_expected, str(dit_source))
    check_keys(
        {k: v for k, v in headers.items() if is_adapter_key(k)},
        adapter_expected,
        " + ".join(str(p) for p in adapter_files),
    )

    to_diffusers = {diffusers_to_reference_key(k): k for k in model.state_dict()}
    # _fill_from_file copies every tensor out of a file before the next is read: one buffer serves all
    buffer = ReadBuffer(max(p.stat().st_size for p in by_file)) if strategy != "mmap" else None
    for path, part in by_file.items():  # in plan order: the shards, then the adapter
        _fill_from_file(
            model, path, part, to_diffusers, device=device, dtype=dtype, strategy=strategy, buffer=buffer
        )
    del buffer
    unfilled = [name for name, p in model.named_parameters() if p.is_meta]
    if unfilled:  # the checks above make this unreachable; a silent meta weight would be worse
        raise CheckpointError(
            f"{adapter_source}: key {diffusers_to_reference_key(unfilled[0])!r} was not loaded"
        )
    finish_buffers(model, device)
    _own_aligned_storage(model)  # a no-op now (every weight is a fresh copy); kept as the guard it was
    return model.eval()


def _fill_from_file(
    model: MultiTalkTransformer3DModel,
    path: Path,
    header: Mapping[str, torch.Tensor],
    to_diffusers: Mapping[str, str],
    *,
    device: str | torch.device,
    dtype: torch.dtype,
    strategy: LoadStrategy,
    buffer: ReadBuffer | None = None,
) -> None:
    """Read one file, cast and move each of its tensors, and assign them into the (meta) model.

    Each weight ends up in storage of its own (a cast, a device copy, or else a clone), so the
    file's buffer (or mapping) is released when this returns. Keys are renamed one by one
    (`to_diffusers`), so a shard may hold any part of a block (the norm2/norm3 swap is a rename).
    """
    part: dict[str, torch.Tensor] = {}
    for key, source in iter_safetensors(path, strategy, buffer=buffer):  # each tensor as soon as it is read
        if key not in header or tuple(source.shape) != tuple(header[key].shape):
            raise CheckpointError(f"{path}: key {key!r} appeared or changed shape while loading; retry")
        name = to_diffusers[key]
        target = source.dtype
        if source.is_floating_point():
            target = torch.float32 if kept_in_fp32(model, name) else dtype
        part[name] = owned_copy(source, device=device, dtype=target)
        del source
    if len(part) != len(header):  # the file changed between the header check and the read
        missing = sorted(set(header) - {diffusers_to_reference_key(k) for k in part})[0]
        raise CheckpointError(f"{path}: key {missing!r} vanished while loading; retry")
    result = model.load_state_dict(part, strict=False, assign=True)
    if result.unexpected_keys:
        raise CheckpointError(f"{path}: unexpected key {result.unexpected_keys[0]!r}")


def _file_header(path: Path) -> dict[str, torch.Tensor]:
    """{key: a meta tensor of the file's dtype and shape}, from the safetensors header alone."""
    return {
        key: torch.empty(shape, dtype=dt, device="meta")
        for key, (dt, shape) in read_safetensors_header(path).items()
    }


def _index_headers(
    index_path: Path, search_dirs: list[Path], files: dict[str, Path]
) -> dict[str, torch.Tensor]:
    """The headers of every shard an index names; each shard must hold exactly the keys the index gives it.

    A shard is looked up in `search_dirs` in order (MeiGen's index lives apart from Wan's shards
    on the volume). `files` is filled with key -> shard path, shards in sorted order.
    """
    try:
        weight_map: dict[str, str] = json.loads(index_path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index_path}: not a safetensors index: {e}") from None
    by_shard: dict[str, set[str]] = {}
    for key, shard in weight_map.items():
        by_shard.setdefault(shard, set()).add(key)
    headers: dict[str, torch.Tensor] = {}
    for shard, keys in sorted(by_shard.items()):
        if Path(shard).name != shard:
            raise CheckpointError(f"{index_path}: shard name {shard!r} is not a plain file name")
        path = next((d / shard for d in search_dirs if (d / shard).is_file()), None)
        if path is None:
            where = " or ".join(str(d) for d in search_dirs)
            raise CheckpointError(
                f"{index_path}: shard {shard} is missing from {where} (needed for key {sorted(keys)[0]!r})"
            )
        part = _file_header(path)
        extra = sorted(set(part) - keys)
        if extra:
            raise CheckpointError(f"{path}: unexpected key {extra[0]!r} (not in {index_path})")
        missing = sorted(keys - set(part))
        if missing:
            raise CheckpointError(f"{path}: missing key {missing[0]!r} ({index_path} puts it here)")
        headers.update(part)
        files.update(dict.fromkeys(part, path))
    return headers


def finish_buffers(model: MultiTalkTransformer3DModel, device: str | torch.device) -> None:
    """Loading with assign=True leaves non-persistent buffers (diffusers' RoPE tables) on meta: built
    again (the reference's `init_freqs()` after building on meta) and moved to `device`, float32
    ('rope' is an fp32 module)."""
    if any(b.is_meta for b in model.buffers()):
        cfg = model.config
        model.rope = WanRotaryPosEmbed(cfg.attention_head_dim, cfg.patch_size, cfg.rope_max_seq_len)
    for module in model.modules():
        for name, buf in module._buffers.items():
            if buf is not None:
                module._buffers[name] = buf.to(device)


def _own_aligned_storage(model: nn.Module) -> None:
    """Copy parameters that sit at unaligned addresses (safetensors hands out tensors at their
    file offsets). CPU BLAS takes a different path for unaligned weights and rounds the last bit
    differently; the golden data was made with freshly allocated, aligned parameters."""
    for param in model.parameters():
        if param.device.type == "cpu" and param.data_ptr() % 64:
            param.data = param.data.clone()
