"""A LoRA add-on profile's LoRA files are file assets like every other: own group, check, drift, staleness."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import dagster as dg
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest

from mt_assets.defs import build_definitions
from mt_assets.defs.keys import file_key
from mt_assets.defs.resources import SourceResource, VolumeResource
from mt_assets.manifest import Manifest, load_profile


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


def _with_lora_sha(manifest: Manifest, sha256: str) -> Manifest:
    components = tuple(
        replace(c, files=tuple(replace(f, sha256=sha256) for f in c.files)) if c.lora_scale is not None else c
        for c in manifest.components
    )
    return replace(manifest, components=components)


def test_the_tiny_lora_file_materializes_from_the_mirror_drifts_and_goes_stale(
    tiny_mirror: Path, tmp_path: Path
) -> None:
    fusionx = load_profile("tiny-fusionx")
    [(lora, _)] = fusionx.loras
    volume = tmp_path / "volume"
    volume.mkdir()
    resources = {"volume": VolumeResource(path=str(volume)), "source": SourceResource(spec=str(tiny_mirror))}
    defs = build_definitions(fusionx, resources=resources)
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        job = defs.resolve_implicit_global_asset_job_def()
        result = job.execute_in_process(instance=instance, asset_selection=[file_key(lora)])
        assert result.success
        assert [e.passed for e in result.get_asset_check_evaluations()] == [True]
        assert (volume / lora.target).is_file()

        (volume / lora.target).unlink()
        sensor = defs.get_sensor_def("volume_drift")
        with dg.build_sensor_context(instance=instance, resources=resources, definitions=defs) as context:
            drift = sensor(context)
        assert [r.asset_selection for r in drift.run_requests] == [[file_key(lora)]]

        changed = build_definitions(_with_lora_sha(fusionx, "e" * 64), resources=resources)
        resolver = CachingStaleStatusResolver(
            instance, changed.resolve_asset_graph(), LoadingContextForTest(instance)
        )
        assert resolver.get_status(file_key(lora)) == StaleStatus.STALE
