"""Lock files: the same format, every pin filled, changes listed, written whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from mt_assets.manifest import is_commit, load_manifest, load_profile
from mt_assets.manifest.lockfile import diff, to_yaml, write_lock


def test_a_lock_file_round_trips_through_the_parser(tmp_path: Path) -> None:
    m = load_profile("multitalk-480p")
    out = tmp_path / "multitalk-480p.lock.yaml"
    write_lock(m, out, header="Locked for a test.")
    assert out.read_text().startswith("# Locked for a test.\n")
    again = load_manifest(out)
    assert again.files == m.files
    assert diff(m, again) == []


def test_diff_lists_revision_and_pin_changes() -> None:
    m = load_profile("multitalk-480p")
    text = to_yaml(m).replace("refs/pr/1", "c" * 40).replace("size: 507609880", "size: 507609881")
    from mt_assets.manifest import parse_manifest

    changed = parse_manifest(text, "changed.yaml")
    described = [c.describe() for c in diff(m, changed)]
    assert described == [
        "vae/Wan2.1_VAE.pth: size 507609880 → 507609881",
        "wav2vec2: revision refs/pr/1 → cccccccccccc…",
    ]
    assert is_commit(changed.component("wav2vec2").revision)


def test_write_lock_leaves_the_previous_file_when_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = load_profile("multitalk-480p")
    out = tmp_path / "x.lock.yaml"
    out.write_text("previous\n")

    def boom(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fsync", boom)
    with pytest.raises(OSError, match="No space left"):
        write_lock(m, out)
    assert out.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["x.lock.yaml"]


def test_a_lock_of_an_extends_profile_is_flat_and_keeps_presets_and_lora_scales(tmp_path: Path) -> None:
    from dataclasses import dataclass

    from mt_assets.manifest.lockfile import lock_manifest

    @dataclass
    class Info:
        size: int
        sha256: str | None
        git_sha1: str | None

    class Hub:  # every ref resolves to one commit; every file an LFS file of 7 bytes
        def resolve_revision(self, repo: str, revision: str) -> str:
            return "d" * 40

        def paths_info(self, repo: str, commit: str, paths: list[str]) -> dict[str, Info]:
            return {p: Info(7, "e" * 64, None) for p in paths}

    m = load_profile("multitalk-480p-fusionx")
    locked = lock_manifest(m, Hub())
    out = tmp_path / "fusionx.lock.yaml"
    write_lock(locked, out)
    text = out.read_text()
    assert "extends" not in text  # a lock stands alone: the base's components are written out
    again = load_manifest(out)
    assert again.extends is None and again.presets == ("fusionx",)
    assert [c.name for c in again.components] == [c.name for c in m.components]
    assert [b.name for b in again.bundles] == [b.name for b in m.bundles]
    [(lora, scale)] = again.loras
    assert (lora.target, scale) == (m.loras[0][0].target, 1.0)
    assert (lora.revision, lora.size, lora.sha256) == ("d" * 40, 7, "e" * 64)
    assert again.component("lora-fusionx").locked
    assert diff(locked, again) == []


def test_a_lock_of_a_quantized_profile_is_flat_with_the_drop_applied_and_keeps_quantized(
    tmp_path: Path,
) -> None:
    from dataclasses import dataclass

    from mt_assets.manifest.lockfile import lock_manifest

    @dataclass
    class Info:
        size: int
        sha256: str | None
        git_sha1: str | None

    class Hub:
        def resolve_revision(self, repo: str, revision: str) -> str:
            return "d" * 40

        def paths_info(self, repo: str, commit: str, paths: list[str]) -> dict[str, Info]:
            return {p: Info(7, "e" * 64, None) for p in paths}

    m = load_profile("multitalk-480p-int8")
    out = tmp_path / "int8.lock.yaml"
    write_lock(lock_manifest(m, Hub()), out)
    text = out.read_text()
    assert "extends" not in text and "drop" not in text
    again = load_manifest(out)
    assert [c.name for c in again.components] == [c.name for c in m.components]
    assert "multitalk" not in [c.name for c in again.components]
    assert again.quantized("transformer").name == "dit-int8" and again.quantized("t5").name == "t5-int8"
    assert all(c.locked for c in again.components)
