"""A LoRA add-on profile's LoRA files are file assets like every other: own group, check, drift, staleness."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from mt_assets.defs import build_definitions
from mt_assets.defs.keys import file_key
from mt_assets.manifest import load_profile
from mt_assets_tests.defs.file_lifecycle import assert_file_asset_materializes_drifts_and_goes_stale


def test_each_lora_add_on_has_its_file_assets_in_its_own_group() -> None:
    for profile, group in (
        ("multitalk-480p-fusionx", "lora_fusionx"),
        ("multitalk-480p-lightx2v", "lora_lightx2v"),
    ):
        manifest = load_profile(profile)
        graph = build_definitions(manifest).resolve_asset_graph()
        [(lora, _)] = manifest.loras
        node = graph.get(file_key(lora))
        assert node.group_name == group
        assert lora.repo in (node.description or "") and "not locked" in (node.description or "")
        assert {file_key(f) for f in manifest.files} <= set(graph.get_all_asset_keys())
        # the offline proof depends on it, as on every file the load reads
        assert file_key(lora) in graph.get(dg.AssetKey("offline_cache")).parent_keys
        assert file_key(lora) in {c.asset_key for c in graph.asset_check_keys}


def test_the_tiny_lora_file_materializes_from_the_mirror_drifts_and_goes_stale(
    tiny_mirror: Path, tmp_path: Path
) -> None:
    fusionx = load_profile("tiny-fusionx")
    [(lora, _)] = fusionx.loras
    assert_file_asset_materializes_drifts_and_goes_stale(fusionx, lora, tiny_mirror, tmp_path)
