"""A quantized profile's files (quantized DiT and T5, their maps) are file assets like every other: own
group per component, check, drift, staleness; and no bf16 transformer repack is offered for them."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from mt_assets.defs import build_definitions
from mt_assets.defs.keys import file_key
from mt_assets.defs.repacks import repack_key
from mt_assets.manifest import load_profile
from mt_assets.models.repack import CLIP_VISION, TRANSFORMER
from mt_assets_tests.defs.file_lifecycle import assert_file_asset_materializes_drifts_and_goes_stale


@pytest.mark.parametrize(
    ("profile", "groups"),
    [
        ("multitalk-480p-int8", {"dit-int8": "dit_int8", "t5-int8": "t5_int8"}),
        ("multitalk-480p-int8-fusionx", {"dit-int8-fusionx": "dit_int8_fusionx", "t5-int8": "t5_int8"}),
        ("multitalk-480p-fp8-fusionx", {"dit-fp8-fusionx": "dit_fp8_fusionx", "t5-fp8": "t5_fp8"}),
    ],
)
def test_each_quantized_component_has_its_file_assets_in_its_own_group(profile: str, groups: dict) -> None:
    manifest = load_profile(profile)
    graph = build_definitions(manifest).resolve_asset_graph()
    keys = set(graph.get_all_asset_keys())
    assert {file_key(f) for f in manifest.files} <= keys
    for component, group in groups.items():
        for f in manifest.component(component).files:  # the quantized file and its map
            node = graph.get(file_key(f))
            assert node.group_name == group
            assert f.repo in (node.description or "") and "not locked" in (node.description or "")
            assert file_key(f) in graph.get(dg.AssetKey("offline_cache")).parent_keys
            assert file_key(f) in {c.asset_key for c in graph.asset_check_keys}
    # the float DiT, adapter and T5 are not declared, so not assets; the transformer repack does not apply
    assert not any("diffusion_pytorch_model-" in k.to_user_string() for k in keys)
    assert repack_key(TRANSFORMER) not in keys and repack_key(CLIP_VISION) in keys


def test_the_tiny_quantization_map_materializes_from_the_mirror_drifts_and_goes_stale(
    tiny_mirror: Path, tmp_path: Path
) -> None:
    int8 = load_profile("tiny-int8")
    _, qmap = int8.quantized("transformer").quant_files
    assert_file_asset_materializes_drifts_and_goes_stale(int8, qmap, tiny_mirror, tmp_path)
