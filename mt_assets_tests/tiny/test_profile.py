"""The tiny profile is the real layout at toy scale, and what the builder writes is what it pins."""

from __future__ import annotations

from pathlib import Path

import pytest

from mt_assets.audit import audit
from mt_assets.manifest import load_profile, profile_path
from mt_assets.tiny.lora import TINY_LORAS
from mt_assets.tiny.profile import (
    build_tiny_mirror,
    stale_tiny_files,
    tiny_addon_yaml,
    tiny_manifest,
    tiny_profile_names,
    tiny_profile_yaml,
    tiny_twins,
)
from mt_assets.volume import LocalVolume
from mt_assets_tests.conftest import run_cli


def test_tiny_and_real_profiles_have_the_same_files_and_bundles() -> None:
    real, tiny = load_profile("multitalk-480p"), load_profile("tiny")
    assert [(c.name, c.repo, c.dir) for c in tiny.components] == [
        (c.name, c.repo, c.dir) for c in real.components
    ]
    assert [(f.target, f.kind) for f in tiny.files] == [(f.target, f.kind) for f in real.files]
    assert [(b.name, b.loader, b.location) for b in tiny.bundles] == [
        (b.name, b.loader, b.location) for b in real.bundles
    ]
    assert all(f.sha256 and f.size for f in tiny.files)  # fully pinned


def test_the_builder_writes_exactly_the_shipped_tiny_profile(tiny_mirror: Path) -> None:
    assert tiny_profile_yaml(tiny_manifest(tiny_mirror)) == profile_path("tiny").read_text()


@pytest.mark.parametrize("name", list(tiny_twins()))
def test_the_builder_writes_exactly_the_shipped_tiny_addon_profiles(tiny_mirror: Path, name: str) -> None:
    assert tiny_addon_yaml(tiny_mirror, name) == profile_path(name).read_text()


@pytest.mark.parametrize(("tiny", "real"), [(s.profile, s.real_profile) for s in TINY_LORAS])
def test_tiny_addon_twins_declare_the_real_lora_components_on_top_of_tiny(tiny: str, real: str) -> None:
    twin, original = load_profile(tiny), load_profile(real)
    assert twin.extends == "tiny" and original.extends == "multitalk-480p"
    assert twin.presets == original.presets
    base = load_profile("tiny")
    assert twin.files[: len(base.files)] == base.files and twin.bundles == base.bundles
    assert [(f.component, f.repo, f.target, f.kind, s) for f, s in twin.loras] == [
        (f.component, f.repo, f.target, f.kind, s) for f, s in original.loras
    ]
    assert [s for _, s in twin.loras] == [1.0]  # MeiGen's README runs 1.0, not the CLI's default 1.2
    assert all(f.sha256 and f.size and f.revision == "tiny-local" for f, _ in twin.loras)


def test_two_builds_are_byte_identical(tiny_mirror: Path, tmp_path: Path) -> None:
    second = tmp_path / "again"
    build_tiny_mirror(second)
    for f in {f.target: f for n in tiny_profile_names() for f in load_profile(n).files}.values():
        assert (second / f.dir / f.path).read_bytes() == (tiny_mirror / f.dir / f.path).read_bytes(), f.target


def test_the_builder_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        build_tiny_mirror(tmp_path / "x")
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["x"]  # no half-built folder left beside it


def test_provisioned_tiny_volume_audits_clean(tiny_volume: Path) -> None:
    report = audit(load_profile("tiny"), LocalVolume(tiny_volume), full=True)
    assert report.complete


def test_cli_tiny_build_then_provision_the_tiny_profile(tmp_path: Path) -> None:
    import json

    mirror, volume = tmp_path / "mirror", tmp_path / "volume"
    built = run_cli("tiny", "build", str(mirror))
    assert built.returncode == 0, built.stderr  # also: the build equals the shipped tiny profiles
    for name in ("tiny", "tiny-fusionx", "tiny-lightx2v"):
        assert (mirror / f"{name}.yaml").read_text() == profile_path(name).read_text()
    again = run_cli("tiny", "build", str(mirror))
    assert again.returncode == 2 and "exists and is not empty" in again.stderr
    volume.mkdir()
    placed = run_cli(
        "provision", "--profile", "tiny-fusionx", "--source", str(mirror), "--volume", str(volume), "--json"
    )
    assert placed.returncode == 0, placed.stderr
    assert json.loads(placed.stdout)["complete"] is True


def test_a_mirror_from_another_build_is_found_stale_file_by_file(tiny_mirror: Path, tmp_path: Path) -> None:
    import shutil

    assert stale_tiny_files(tiny_mirror) == []
    copy = tmp_path / "mirror"
    shutil.copytree(tiny_mirror, copy)
    [spiece] = [f for f in load_profile("tiny").files if f.path.endswith("spiece.model")]
    target = copy / spiece.dir / spiece.path
    data = bytearray(target.read_bytes())
    data[-1] ^= 1  # same size, other bytes: as a tokenizer trained by another sentencepiece
    target.write_bytes(bytes(data))
    [vae] = [f for f in load_profile("tiny").files if f.component == "vae"]
    (copy / vae.dir / vae.path).unlink()
    [(lora, _)] = load_profile("tiny-lightx2v").loras
    (copy / lora.dir / lora.path).write_bytes(b"an older LoRA")
    assert sorted(stale_tiny_files(copy)) == sorted([spiece.target, vae.target, lora.target])
