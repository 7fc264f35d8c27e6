"""The start-up check: stat and the hash cache (opened read-only), never a file's bytes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mt_assets.manifest import load_profile, parse_manifest
from mt_assets.models.repack import unvouched_repacks
from mt_assets.volume import LocalVolume
from mt_assets.worker.volume_check import check_volume
from mt_assets_tests.conftest import manifest_yaml


def test_a_provisioned_volume_is_verified_by_the_hash_cache_which_stays_untouched(tiny_volume: Path) -> None:
    cache = tiny_volume / ".mt" / "hashes.sqlite"
    before = os.stat(cache)
    check = check_volume(load_profile("tiny"), LocalVolume(tiny_volume))
    assert check.ok and check.cache == "read-only"
    assert check.counts() == {
        "ok": 25, "unverified": 0, "missing": 0, "size_mismatch": 0, "hash_mismatch": 0, "unpinned": 0
    }  # fmt: skip
    after = os.stat(cache)
    assert (after.st_mtime_ns, after.st_size) == (before.st_mtime_ns, before.st_size)
    assert not list(cache.parent.glob("hashes.sqlite-*"))  # no journal: nothing was written


def test_without_a_hash_cache_files_are_unverified_and_nothing_is_hashed_or_created(
    tiny_volume: Path, tmp_path: Path
) -> None:
    volume = tmp_path / "volume"
    shutil.copytree(tiny_volume / "models", volume / "models")
    check = check_volume(load_profile("tiny"), LocalVolume(volume))
    assert check.ok and check.cache == "absent"
    assert {f.status for f in check.files} == {"unverified"}
    assert not (volume / ".mt").exists()  # a hash would have gone into a new cache


def test_an_unpinned_file_is_a_problem(synthetic_volume) -> None:
    sv = synthetic_volume()
    manifest = parse_manifest(manifest_yaml(sv.files, pin=False), "unpinned.yaml")
    check = check_volume(manifest, sv.volume())
    assert not check.ok
    assert {f.status for f in check.problems} == {"unpinned"}
    assert check.to_json()["problems"][0]["detail"] == "no sha256 or git_sha1 pinned: lock the manifest"


def test_a_symlink_in_place_of_a_file_is_missing(synthetic_volume, tmp_path: Path) -> None:
    sv = synthetic_volume()
    target = sv.target("a.bin")
    elsewhere = tmp_path / "elsewhere.bin"
    target.rename(elsewhere)
    target.symlink_to(elsewhere)
    [problem] = check_volume(sv.manifest, sv.volume()).problems
    assert (problem.status, problem.detail) == ("missing", "is a symlink; the volume keeps real files")


def test_repacks_the_hash_cache_does_not_vouch_for_are_named(tiny_volume: Path, tmp_path: Path) -> None:
    from mt_assets.models.repack import CLIP_VISION, TRANSFORMER, repack_clip_vision, repack_transformer

    manifest = load_profile("tiny")
    written = LocalVolume(shutil.copytree(tiny_volume, tmp_path / "written"))
    assert unvouched_repacks(manifest, written) == {}  # none there
    repack_transformer(written, manifest)
    repack_clip_vision(written, manifest)
    assert unvouched_repacks(manifest, written) == {}  # written through the volume: hashes recorded
    copied = LocalVolume(shutil.copytree(written.root, tmp_path / "copied"))  # new inodes: rows stale
    unvouched = unvouched_repacks(manifest, copied)
    assert set(unvouched) == {TRANSFORMER, CLIP_VISION}
    assert (
        unvouched[CLIP_VISION]
        == f"repacks/{CLIP_VISION}/visual.safetensors: no hash cache row for its current stat"
    )
