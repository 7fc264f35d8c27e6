"""The offline proof with bf16 repacks on the volume: their files count as declared, both load paths
are proved (float32 reads the originals, bfloat16 the repacks) and both must pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from mt_assets.manifest import load_profile
from mt_assets.models.repack import declared_targets, repack_clip_vision, repack_transformer
from mt_assets.offline import OfflineProof, OfflineReport, UnitResult, prove_offline, verify_offline
from mt_assets.offline.isolation import Isolation
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


def test_auto_proves_both_paths_when_the_volume_holds_repacks(repacked_root: Path) -> None:
    proof = prove_offline(repacked_root, load_profile("tiny"), only=["transformer", "clip", "vae"])
    doc = proof.to_json()
    assert doc["ok"] is True, doc
    assert list(doc["dtypes"]) == ["float32", "bfloat16"] and doc["dtypes_skipped"] == {}
    repacks = {
        dtype: {u: e["repack"] for u, e in path["components"].items()}
        for dtype, path in doc["dtypes"].items()
    }
    assert repacks == {
        "float32": {"transformer": None, "clip": None, "vae": None},
        "bfloat16": {"transformer": "transformer_bf16", "clip": "clip_vision_bf16", "vae": None},
    }
    # Each path's files are its own: the repack's shards in bf16, the originals in float32.
    bf16 = doc["dtypes"]["bfloat16"]["components"]["clip"]["files"]
    assert bf16 == ["repacks/clip_vision_bf16/repack.json", "repacks/clip_vision_bf16/visual.safetensors"]
    assert doc["dtypes"]["float32"]["components"]["clip"]["files"] == [
        "models/Wan2.1-I2V-14B-480P/models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
    ]


def test_only_units_without_a_repack_need_no_bf16_proof(repacked_root: Path) -> None:
    proof = prove_offline(repacked_root, load_profile("tiny"), only=["t5-tokenizer"])
    assert [r.dtype for r in proof.reports] == ["float32"]
    assert set(proof.skipped) == {"bfloat16"}


def test_the_proof_passes_only_when_every_path_passes() -> None:
    def path(dtype: str, status: str) -> OfflineReport:
        unit = UnitResult("clip", ("clip",), status, 0.1, 1, ())
        return OfflineReport("tiny", "/volume", [unit], [], [], [], dtype=dtype)

    cut = Isolation("audit-hooks", "test")
    fp32, bf16, bf16_failed = (
        path("float32", "loaded"),
        path("bfloat16", "loaded"),
        path("bfloat16", "failed"),
    )
    assert OfflineProof("tiny", "/volume", "all", cut, [fp32, bf16]).ok
    assert not OfflineProof("tiny", "/volume", "all", cut, [fp32, bf16_failed]).ok
    assert not OfflineProof("tiny", "/volume", "all", cut, []).ok  # nothing proved is no proof
