"""The repack assets on the tiny profile: materialized after their source files, stale when a source
changes, and a corrupted repack fails its blocking check while the loader falls back to the originals."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import torch
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest

from mt_assets.defs.keys import file_key
from mt_assets.defs.repacks import CHECK_NAME, repack_key
from mt_assets.manifest import load_profile
from mt_assets.models.pipeline import load_pipeline_components
from mt_assets.models.repack import CLIP_VISION, TRANSFORMER, RepackWarning, read_repack
from mt_assets.volume import LocalVolume
from mt_assets_tests.defs.conftest import materialized_tiny

REPACKS = [repack_key(TRANSFORMER), repack_key(CLIP_VISION)]


@dataclass
class RepackEnv:
    root: Path
    instance: dg.DagsterInstance
    defs: dg.Definitions

    def run(self, selection: list[dg.AssetKey], **kwargs: object) -> dg.ExecuteInProcessResult:
        job = self.defs.resolve_implicit_global_asset_job_def()
        return job.execute_in_process(instance=self.instance, asset_selection=selection, **kwargs)  # type: ignore[arg-type]

    def status(self, key: dg.AssetKey) -> StaleStatus:
        graph = self.defs.resolve_asset_graph()
        return CachingStaleStatusResolver(
            self.instance, graph, LoadingContextForTest(self.instance)
        ).get_status(key)


@pytest.fixture(scope="module")
def renv(tiny_mirror: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RepackEnv]:
    with materialized_tiny(tiny_mirror, tmp_path_factory.mktemp("repacks")) as (root, instance, defs):
        yield RepackEnv(root, instance, defs)


def test_repacks_are_in_their_group_downstream_of_their_source_files(renv: RepackEnv) -> None:
    graph = renv.defs.resolve_asset_graph()
    manifest = load_profile("tiny")
    for key in REPACKS:
        assert graph.get(key).group_name == "repacks"
    assert graph.get(repack_key(CLIP_VISION)).parent_keys == {
        file_key(f) for f in manifest.component("clip").files
    }
    sources = {file_key(f) for c in ("wan-dit", "multitalk") for f in manifest.component(c).files}
    assert graph.get(repack_key(TRANSFORMER)).parent_keys == sources


def test_repack_materializes_with_its_metadata_and_passes_its_check(renv: RepackEnv) -> None:
    for key in REPACKS:
        event = renv.instance.get_latest_materialization_event(key)
        assert event is not None and event.asset_materialization is not None
        metadata = event.asset_materialization.metadata
        assert {"files", "bytes", "sha256s", "seconds", "sources"} <= set(metadata)
        repack = read_repack(LocalVolume(renv.root), key.path[-1])
        assert repack is not None
        assert metadata["bytes"].value == repack.bytes
        assert metadata["sha256s"].value == {f.path: f.sha256 for f in repack.files}
        check = renv.instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(key, CHECK_NAME)]
        )[dg.AssetCheckKey(key, CHECK_NAME)]
        assert check.status.value == "SUCCEEDED"
        assert renv.status(key) == StaleStatus.FRESH


def test_a_changed_source_file_makes_its_repack_stale(renv: RepackEnv) -> None:
    [clip] = load_profile("tiny").component("clip").files
    renv.instance.report_runless_asset_event(
        dg.AssetMaterialization(
            file_key(clip), metadata={"sha256": "0" * 64}, tags={"dagster/data_version": "0" * 64}
        )
    )
    assert renv.status(repack_key(CLIP_VISION)) == StaleStatus.STALE
    assert renv.status(repack_key(TRANSFORMER)) == StaleStatus.FRESH
    assert renv.run([repack_key(CLIP_VISION)]).success
    assert renv.status(repack_key(CLIP_VISION)) == StaleStatus.FRESH


def test_a_corrupted_repack_fails_its_check_and_the_loader_falls_back(renv: RepackEnv) -> None:
    volume = LocalVolume(renv.root)
    repack = read_repack(volume, TRANSFORMER)
    assert repack is not None
    shard = volume.path(repack.target(repack.files[0].path))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    check_key = dg.AssetCheckKey(repack_key(TRANSFORMER), CHECK_NAME)
    defs = dg.Definitions.merge(
        renv.defs,
        dg.Definitions(
            jobs=[dg.define_asset_job("verify_repack", selection=dg.AssetSelection.checks(check_key))]
        ),
    )
    result = defs.resolve_job_def("verify_repack").execute_in_process(
        instance=renv.instance, raise_on_error=False
    )
    [evaluation] = result.get_asset_check_evaluations()
    assert not evaluation.passed
    assert repack.files[0].path in str(evaluation.metadata["problems"].value)
    with pytest.warns(RepackWarning, match=repack.files[0].path):
        loaded = load_pipeline_components(
            volume, load_profile("tiny"), dtype=torch.bfloat16, only=["transformer"]
        )
    assert loaded.reports["transformer"].repack is None


def test_automation_keeps_a_made_repack_current_and_never_builds_a_missing_one(
    renv: RepackEnv, tmp_path: Path
) -> None:
    manifest = load_profile("tiny")
    clip_files = manifest.component("clip").files
    settled = dg.evaluate_automation_conditions(defs=renv.defs, instance=renv.instance)
    assert all(settled.get_num_requested(key) == 0 for key in REPACKS)  # made, nothing changed since
    for f in clip_files:  # the clip file re-materialized (e.g. by a repair run), same bytes
        renv.instance.report_runless_asset_event(
            dg.AssetMaterialization(file_key(f), tags={"dagster/data_version": f.sha256})
        )
    after = dg.evaluate_automation_conditions(defs=renv.defs, instance=renv.instance, cursor=settled.cursor)
    assert after.get_num_requested(repack_key(CLIP_VISION)) == 1
    assert after.get_num_requested(repack_key(TRANSFORMER)) == 0

    # Another instance where every source file is materialized but no repack was ever made:
    # the automation builds the bundles (on_missing) and not the repacks.
    with dg.instance_for_test(temp_dir=str(tmp_path)) as fresh:
        first = dg.evaluate_automation_conditions(defs=renv.defs, instance=fresh)
        for f in manifest.files:
            fresh.report_runless_asset_event(
                dg.AssetMaterialization(file_key(f), tags={"dagster/data_version": f.sha256})
            )
        then = dg.evaluate_automation_conditions(defs=renv.defs, instance=fresh, cursor=first.cursor)
        assert all(then.get_num_requested(key) == 0 for key in REPACKS)
        assert then.total_requested > 0
