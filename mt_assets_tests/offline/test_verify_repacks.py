"""The offline proof with bf16 repacks on the volume: their files count as declared, both paths pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from mt_assets.manifest import load_profile
from mt_assets.models.repack import declared_targets, repack_clip_vision, repack_transformer
from mt_assets.offline import OfflineReport, verify_offline
from mt_assets.volume import LocalVolume
from mt_assets_tests.offline.conftest import copy_volume


@pytest.fixture(scope="module")
def repacked_root(tiny_volume: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = copy_volume(tiny_volume, tmp_path_factory.mktemp("offline-repack") / "volume")
    volume = LocalVolume(root)
    repack_transformer(volume, load_profile("tiny"))
    repack_clip_vision(volume, load_profile("tiny"))
    return root


def files_of(report: OfflineReport, unit: str) -> tuple[str, ...]:
    return next(u.files for u in report.units if u.unit == unit)


def test_a_bf16_load_from_the_repacks_is_proven_offline(repacked_root: Path) -> None:
    report = verify_offline(
        repacked_root, load_profile("tiny"), only=["transformer", "clip"], dtype="bfloat16"
    )
    assert report.ok, report.to_json()
    assert any(f.startswith("repacks/transformer_bf16/") for f in files_of(report, "transformer"))
    assert all(f.startswith("repacks/clip_vision_bf16/") for f in files_of(report, "clip"))
    assert not any(".safetensors" in f for f in files_of(report, "transformer") if f.startswith("models/"))


def test_the_float32_load_beside_repacks_reads_the_originals_and_passes(repacked_root: Path) -> None:
    report = verify_offline(repacked_root, load_profile("tiny"), only=["transformer", "clip"])
    assert report.ok, report.to_json()
    assert not any(f.startswith("repacks/") for u in report.units for f in u.files)


def test_only_the_files_repack_json_lists_count_as_declared(repacked_root: Path) -> None:
    declared = declared_targets(LocalVolume(repacked_root))
    assert "repacks/clip_vision_bf16/visual.safetensors" in declared
    assert "repacks/clip_vision_bf16/repack.json" in declared
    assert "repacks/clip_vision_bf16/stray.safetensors" not in declared
    assert not any(t.startswith("models/") for t in declared)
