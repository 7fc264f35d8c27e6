"""bf16 repacks: written from the verified files, loaded bit-identically, refused when stale or corrupt."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mt_assets.manifest import load_profile
from mt_assets.models.pipeline import load_pipeline_components
from mt_assets.models.reading import read_safetensors_header
from mt_assets.models.repack import (
    CLIP_VISION,
    MANIFEST_NAME,
    TRANSFORMER,
    RepackWarning,
    read_repack,
    repack_clip_vision,
    repack_transformer,
    usable_repack,
    verify_repack,
)
from mt_assets.volume import LocalVolume
from mt_assets_tests.offline.conftest import copy_volume

UNITS = ["transformer", "clip"]


@pytest.fixture(scope="module")
def repacked(tiny_volume: Path, tmp_path_factory: pytest.TempPathFactory) -> LocalVolume:
    volume = LocalVolume(copy_volume(tiny_volume, tmp_path_factory.mktemp("repack") / "volume"))
    manifest = load_profile("tiny")
    repack_transformer(volume, manifest)
    repack_clip_vision(volume, manifest)
    return volume


def states(components) -> dict[str, dict[str, torch.Tensor]]:
    return {"transformer": components.transformer.state_dict(), "clip": components.clip.state_dict()}


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


def test_repack_loads_bit_identical_to_the_originals_cast_to_bf16(repacked: LocalVolume) -> None:
    manifest = load_profile("tiny")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RepackWarning)
        from_repack = load_pipeline_components(repacked, manifest, dtype=torch.bfloat16, only=UNITS)
    originals = load_pipeline_components(repacked, manifest, dtype=torch.bfloat16, only=UNITS, repacks=False)
    assert from_repack.reports["transformer"].repack == TRANSFORMER
    assert from_repack.reports["clip"].repack == CLIP_VISION
    assert all(t.startswith("repacks/clip_vision_bf16/") for t in from_repack.reports["clip"].files)
    assert originals.reports["transformer"].repack is None
    assert from_repack.reports["transformer"].bytes < originals.reports["transformer"].bytes
    a, b = states(from_repack), states(originals)
    for unit in UNITS:
        assert_identical(a[unit], b[unit])
    assert any(v.dtype == torch.float32 for v in a["transformer"].values())  # the keep-fp32 modules


def test_repack_layout_and_manifest(repacked: LocalVolume) -> None:
    manifest = load_profile("tiny")
    repack = read_repack(repacked, TRANSFORMER)
    assert repack is not None and repack.dtype == "bfloat16"
    doc = json.loads((repacked.root / "repacks" / TRANSFORMER / MANIFEST_NAME).read_text())
    assert set(doc) == {"name", "dtype", "files", "sources"}
    sources = {s["target"] for s in doc["sources"]}
    assert sources == {f.target for c in ("wan-dit", "multitalk") for f in manifest.component(c).files}
    shards = [f.path for f in repack.files if f.path.endswith(".safetensors")]
    assert len(shards) == 8  # 7 DiT shards + the adapter, one each
    dtypes = {
        dt for s in shards for dt, _ in read_safetensors_header(repacked.root / repack.folder / s).values()
    }
    assert dtypes == {torch.bfloat16, torch.float32}
    clip = read_repack(repacked, CLIP_VISION)
    assert clip is not None
    keys = read_safetensors_header(repacked.root / clip.folder / clip.files[0].path)
    assert keys and all(k.startswith("visual.") for k in keys)
    assert {dt for dt, _ in keys.values()} == {torch.bfloat16}
    assert verify_repack(repacked, repack) == []


def test_float32_load_reads_the_originals(repacked: LocalVolume) -> None:
    loaded = load_pipeline_components(repacked, load_profile("tiny"), only=["clip"])
    assert loaded.reports["clip"].repack is None


def test_stale_repack_is_not_used(repacked: LocalVolume) -> None:
    manifest = load_profile("tiny")
    clip = manifest.component("clip")
    repinned = replace(clip, files=tuple(replace(f, sha256="0" * 64) for f in clip.files))
    changed = replace(manifest, components=tuple(repinned if c is clip else c for c in manifest.components))
    assert usable_repack(repacked, manifest, CLIP_VISION) is not None
    assert usable_repack(repacked, changed, CLIP_VISION) is None
    loaded = load_pipeline_components(repacked, changed, dtype=torch.bfloat16, only=["clip"])
    assert loaded.reports["clip"].repack is None


def test_corrupt_repack_falls_back_to_the_originals_with_a_warning(tiny_volume: Path, tmp_path: Path) -> None:
    volume = LocalVolume(copy_volume(tiny_volume, tmp_path / "volume"))
    manifest = load_profile("tiny")
    repack = repack_clip_vision(volume, manifest)
    target = repack.target(repack.files[0].path)
    path = volume.path(target)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.warns(RepackWarning, match="visual.safetensors"):
        loaded = load_pipeline_components(volume, manifest, dtype=torch.bfloat16, only=["clip"])
    assert loaded.reports["clip"].repack is None
    assert loaded.reports["clip"].files == tuple(f.target for f in manifest.component("clip").files)
