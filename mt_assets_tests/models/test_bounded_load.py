"""The DiT load, shard by shard: the same weights as reading everything at once, in bounded memory;
and the benchmark-sized (medium) mirror that the load strategies are measured on."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from mt_assets.manifest import load_profile
from mt_assets.models.checkpoints import load_strict
from mt_assets.models.dit import MultiTalkTransformer3DModel, build_multitalk_transformer
from mt_assets.models.dit_loading import (
    INDEX_NAME,
    diffusers_to_reference_key,
    load_multitalk_transformer,
    reference_to_diffusers_state,
)
from mt_assets.models.pipeline import UNITS, load_pipeline_components
from mt_assets.models.reading import STRATEGIES
from mt_assets.tiny.dit import (
    TINY_DIT_CONFIG,
    tiny_reference_state,
    write_original_format,
    write_tiny_dit,
)
from mt_assets.tiny.profile import build_tiny_mirror, medium_scale, scale_bytes
from mt_assets.volume import LocalVolume
from mt_assets_tests.conftest import run_cli

# A DiT whose shards cut blocks in the middle: 5 byte-balanced shards over 3 blocks.
SPLIT_CONFIG: dict[str, Any] = {**TINY_DIT_CONFIG, "dim": 64, "ffn_dim": 96, "num_heads": 2, "num_layers": 3}
# ~420 MB of fp32 in 5 shards of ~75 MB and an adapter of ~45 MB: shard-sized, for the memory bound.
MEMORY_CONFIG: dict[str, Any] = {
    **TINY_DIT_CONFIG,
    "dim": 1024,
    "ffn_dim": 4096,
    "num_heads": 8,
    "num_layers": 5,
}
TRANSIENT_BOUND = 1.5  # transient host memory / largest file (issue 11)


def _all_at_once(
    wan_dir: Path, adapter: Path, config: Mapping[str, Any], dtype: torch.dtype = torch.float32
) -> MultiTalkTransformer3DModel:
    """The loader as it was before: every file read in full, then loaded, moved and cast at once."""
    index = json.loads((wan_dir / INDEX_NAME).read_text())["weight_map"]
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(index.values())):
        state.update(load_file(str(wan_dir / shard)))
    state.update(load_file(str(adapter)))
    model = build_multitalk_transformer(config, device="meta")
    load_strict(model, reference_to_diffusers_state(model, state), source="all at once")
    nn.Module.to(model, dtype=dtype)
    for name, param in model.named_parameters():
        if any(part in name.split(".") for part in model._keep_in_fp32_modules):
            param.data = param.data.float()
    return model


def _assert_same_state(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny_dit")
    write_tiny_dit(root / "wan", root / "multitalk")
    return root / "wan", root / "multitalk"


@pytest.fixture(scope="module")
def split_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("split_dit")
    state = tiny_reference_state(SPLIT_CONFIG, seed=1)
    write_original_format(state, SPLIT_CONFIG, root / "wan", root / "multitalk", shards=5, balance="bytes")
    return root / "wan", root / "multitalk"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_shard_by_shard_equals_all_at_once_on_the_tiny_profile(
    tiny_dirs: tuple[Path, Path], strategy: str
) -> None:
    wan, mt = tiny_dirs
    bounded = load_multitalk_transformer(wan, mt, strategy=strategy)  # type: ignore[arg-type]
    _assert_same_state(
        bounded.state_dict(), _all_at_once(wan, mt / "multitalk.safetensors", TINY_DIT_CONFIG).state_dict()
    )
    assert all(p.data_ptr() % 64 == 0 and not p.is_meta for p in bounded.parameters())  # own, aligned storage


def test_shards_that_cut_blocks_in_the_middle_load_every_key_under_its_name(
    split_dirs: tuple[Path, Path],
) -> None:
    wan, mt = split_dirs
    shard_of = json.loads((wan / INDEX_NAME).read_text())["weight_map"]
    shards_of_block: dict[str, set[str]] = {}
    for key, shard in shard_of.items():
        if key.startswith("blocks."):
            shards_of_block.setdefault(key.split(".")[1], set()).add(shard)
    assert any(len(s) > 1 for s in shards_of_block.values()), "the fixture should split a block over shards"
    bounded = load_multitalk_transformer(wan, mt / "multitalk.safetensors").state_dict()
    _assert_same_state(bounded, _all_at_once(wan, mt / "multitalk.safetensors", SPLIT_CONFIG).state_dict())
    state = tiny_reference_state(SPLIT_CONFIG, seed=1)  # norm2/norm3 and kv_linear under the right names
    assert all(torch.equal(bounded[k], state[diffusers_to_reference_key(k)]) for k in bounded)


def test_bf16_load_casts_like_all_at_once_and_keeps_fp32_modules_at_the_files_values(
    split_dirs: tuple[Path, Path],
) -> None:
    wan, mt = split_dirs
    model = load_multitalk_transformer(wan, mt, dtype=torch.bfloat16)
    bounded = model.state_dict()
    before = _all_at_once(wan, mt / "multitalk.safetensors", SPLIT_CONFIG, torch.bfloat16).state_dict()
    state = tiny_reference_state(SPLIT_CONFIG, seed=1)
    fp32 = [k for k in bounded if any(p in k.split(".") for p in model._keep_in_fp32_modules)]
    assert fp32 and "blocks.0.norm2.weight" in fp32 and "scale_shift_table" in fp32
    for key, value in bounded.items():
        if key in fp32:  # read straight from the file (before: rounded through bf16, then back)
            assert value.dtype == torch.float32 and torch.equal(
                value, state[diffusers_to_reference_key(key)]
            ), key
        else:
            assert value.dtype == torch.bfloat16 and torch.equal(value, before[key]), key


# The memory bound, in a fresh process. Peak RSS is VmHWM, the high-water mark of this process's
# own memory: ru_maxrss would not do, since Linux carries the parent's (pytest's, over 1 GB by
# then) into it across the fork (vfork) and exec.
_MEASURE = """
import json, sys
import torch
from mt_assets.models.dit_loading import load_multitalk_transformer

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

base = status("VmRSS")  # after the imports
model = load_multitalk_transformer(sys.argv[1], sys.argv[2], strategy=sys.argv[3])
peak = status("VmHWM")
kept = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
print(json.dumps({"base": base, "peak": peak, "kept": kept}))
"""


@pytest.fixture(scope="module")
def memory_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("memory_dit")
    state = tiny_reference_state(MEMORY_CONFIG)
    write_original_format(state, MEMORY_CONFIG, root / "wan", root / "multitalk", shards=5, balance="bytes")
    return root / "wan", root / "multitalk"


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_transient_host_memory_of_the_dit_load_stays_under_one_and_a_half_shards(
    memory_dirs: tuple[Path, Path], strategy: str
) -> None:
    wan, mt = memory_dirs
    files = [*wan.glob("*.safetensors"), mt / "multitalk.safetensors"]
    total, largest = sum(f.stat().st_size for f in files), max(f.stat().st_size for f in files)
    assert 300e6 < total < 600e6 and largest < total / 4  # shard-sized: the bound means something
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(wan), str(mt), strategy],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    m = json.loads(out.stdout.strip().splitlines()[-1])
    assert m["kept"] > 0.95 * total  # fp32 on the CPU: every weight stays in host memory
    transient = m["peak"] - m["base"] - m["kept"]
    assert transient <= TRANSIENT_BOUND * largest, (
        f"{strategy}: transient {transient / 1e6:.0f} MB = {transient / largest:.2f}x the largest file "
        f"({largest / 1e6:.0f} MB); all files {total / 1e6:.0f} MB; {m}"
    )


# ---- the benchmark-sized mirror (never built full size here)
def test_medium_scale_is_a_few_gigabytes_in_shards_of_a_few_hundred_megabytes() -> None:
    sizes = scale_bytes("medium")
    shards = [v for k, v in sizes.items() if k.startswith("dit-shard-")]
    total = sum(v for k, v in sizes.items() if not k.startswith("dit-shard-"))
    assert 2e9 < total < 3e9
    assert len(shards) == 7 and all(150e6 < s < 400e6 for s in shards) and sum(shards) == sizes["dit"]
    assert sizes["multitalk"] > 200e6  # the adapter grows with the DiT too
    medium = medium_scale()
    assert (
        medium.dit["text_dim"] == medium.t5["dim"] and medium.dit["image_dim"] == medium.clip_visual["width"]
    )
    assert medium.dit["audio_channels"] == medium.wav2vec2["hidden_size"]
    assert medium.dit["audio_blocks"] == medium.wav2vec2["num_hidden_layers"]


def test_a_shrunk_medium_mirror_has_the_real_files_and_every_unit_loads(tmp_path: Path) -> None:
    volume_root = tmp_path / "volume"
    manifest = build_tiny_mirror(volume_root / "models", scale=medium_scale(8))  # ~45 MB, same shapes / 8
    assert manifest.profile == "medium" and len(manifest.files) == len(load_profile("multitalk-480p").files)
    shards = [f for f in manifest.files if f.path.startswith("diffusion_pytorch_model-")]
    assert len(shards) == 7
    loaded = load_pipeline_components(LocalVolume(volume_root), manifest, strategy="parallel")
    assert set(loaded.reports) == set(UNITS)
    assert loaded.transformer.config.num_layers == 10 and loaded.transformer.config.num_attention_heads == 1


def test_load_pipeline_components_refuses_a_bad_strategy_before_loading(
    tiny_volume: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MT_LOAD_STRATEGY", "page-by-page")
    loaded: list[str] = []
    with pytest.raises(
        ValueError, match=r"MT_LOAD_STRATEGY: expected one of mmap, sequential, parallel, got 'page-by-page'"
    ):
        load_pipeline_components(
            LocalVolume(tiny_volume), load_profile("tiny"), on_loaded=lambda r: loaded.append(r.unit)
        )
    assert loaded == []


def test_cli_refuses_to_update_the_shipped_profile_from_a_medium_build(tmp_path: Path) -> None:
    result = run_cli("tiny", "build", str(tmp_path / "m"), "--scale", "medium", "--update-profile")
    assert result.returncode != 0 and "--scale medium is not shipped" in result.stderr
    assert not (tmp_path / "m").exists()
