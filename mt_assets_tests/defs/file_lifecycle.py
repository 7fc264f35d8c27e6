"""One file asset's life in Dagster, asserted the same way for every kind of model file an add-on
profile brings (LoRA files, quantized weights and maps): it materializes from the tiny mirror with its
check passing, the drift sensor asks for exactly it once it vanishes, and a new pin makes it stale."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import dagster as dg
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest

from mt_assets.defs import build_definitions
from mt_assets.defs.keys import file_key
from mt_assets.defs.resources import SourceResource, VolumeResource
from mt_assets.manifest import Manifest, ManifestFile


def with_component_sha(manifest: Manifest, component: str, sha256: str) -> Manifest:
    """`manifest` with every file of `component` pinned to `sha256`."""
    components = tuple(
        replace(c, files=tuple(replace(f, sha256=sha256) for f in c.files)) if c.name == component else c
        for c in manifest.components
    )
    return replace(manifest, components=components)


def assert_file_asset_materializes_drifts_and_goes_stale(
    manifest: Manifest, f: ManifestFile, mirror: Path, tmp_path: Path
) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    resources = {"volume": VolumeResource(path=str(volume)), "source": SourceResource(spec=str(mirror))}
    defs = build_definitions(manifest, resources=resources)
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        job = defs.resolve_implicit_global_asset_job_def()
        result = job.execute_in_process(instance=instance, asset_selection=[file_key(f)])
        assert result.success
        assert [e.passed for e in result.get_asset_check_evaluations()] == [True]
        assert (volume / f.target).is_file()

        (volume / f.target).unlink()
        sensor = defs.get_sensor_def("volume_drift")
        with dg.build_sensor_context(instance=instance, resources=resources, definitions=defs) as context:
            drift = sensor(context)
        assert [r.asset_selection for r in drift.run_requests] == [[file_key(f)]]

        changed = build_definitions(with_component_sha(manifest, f.component, "e" * 64), resources=resources)
        resolver = CachingStaleStatusResolver(
            instance, changed.resolve_asset_graph(), LoadingContextForTest(instance)
        )
        assert resolver.get_status(file_key(f)) == StaleStatus.STALE
