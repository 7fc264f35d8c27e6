"""The offline proof as an asset: real materializations of `offline_cache` and its blocking check."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from mt_assets.defs import build_definitions
from mt_assets.defs.keys import bundle_key, file_key
from mt_assets.defs.offline_cache import ASSET_KEY, CHECK_NAME, MODEL_VERSIONS, models_data_version
from mt_assets.defs.resources import SourceResource, VolumeResource
from mt_assets.manifest import load_profile
from mt_assets.models.repack import repack_clip_vision, repack_transformer
from mt_assets.offline import resolve_isolation
from mt_assets.volume import LocalVolume
from mt_assets_tests.offline.conftest import T5_TOKENIZER_JSON, copy_volume
from mt_assets_tests.offline.conftest import home_cache_snapshot as home_cache_snapshot  # a fixture


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        yield instance


def prove(
    instance: dg.DagsterInstance, volume: Path, mirror: Path, config: dict[str, object] | None = None
) -> dg.ExecuteInProcessResult:
    defs = build_definitions(
        load_profile("tiny"),
        resources={"volume": VolumeResource(path=str(volume)), "source": SourceResource(spec=str(mirror))},
    )
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        instance=instance,
        asset_selection=[ASSET_KEY],
        run_config={"ops": {"offline_cache": {"config": config or {}}}},
        raise_on_error=False,
    )


def verdict(result: dg.ExecuteInProcessResult) -> tuple[bool, dict[str, object]]:
    [evaluation] = [e for e in result.get_asset_check_evaluations() if e.check_name == CHECK_NAME]
    return evaluation.passed, {k: v.value for k, v in evaluation.metadata.items()}


def _data_version(result: dg.ExecuteInProcessResult) -> str | None:
    [event] = [m for m in result.get_asset_materialization_events() if m.asset_key == ASSET_KEY]
    return event.materialization.tags.get("dagster/data_version")  # type: ignore[union-attr]


def materialized(result: dg.ExecuteInProcessResult) -> dict[str, object]:
    [event] = [m for m in result.get_asset_materialization_events() if m.asset_key == ASSET_KEY]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_offline_cache_is_downstream_of_every_file_and_bundle() -> None:
    manifest = load_profile("tiny")
    graph = build_definitions(manifest).resolve_asset_graph()
    node = graph.get(ASSET_KEY)
    assert node.group_name == "offline"
    assert set(node.parent_keys) == {file_key(f) for f in manifest.files} | {
        bundle_key(b) for b in manifest.bundles
    }
    assert dg.AssetCheckKey(ASSET_KEY, CHECK_NAME) in graph.asset_check_keys


def test_the_check_passes_on_the_tiny_volume_with_a_table_per_component(
    instance: dg.DagsterInstance, tiny_volume: Path, tiny_mirror: Path
) -> None:
    result = prove(instance, tiny_volume, tiny_mirror)
    assert result.success
    passed, check = verdict(result)
    assert passed, check["violations"]
    metadata = materialized(result)
    assert metadata["ok"] is True
    table = str(metadata["components"])
    for unit in ("transformer", "t5", "t5-tokenizer", "clip", "clip-tokenizer", "vae", "wav2vec2"):
        assert f"| float32 | {unit} | loaded | - |" in table
    assert metadata["violations"] == "none"
    assert float(metadata["total_seconds"]) > 0  # type: ignore[arg-type]
    # No repack on this volume: the float32 path only, and why not bfloat16.
    assert list(metadata["dtypes"]) == ["float32"]  # type: ignore[call-overload]
    assert "bfloat16" in metadata["dtypes_skipped"]  # type: ignore[operator]
    assert metadata["isolation"] == resolve_isolation().mode


def test_with_repacks_on_the_volume_both_load_paths_must_pass_and_each_is_recorded(
    instance: dg.DagsterInstance, tiny_volume: Path, tiny_mirror: Path, tmp_path: Path
) -> None:
    volume = copy_volume(tiny_volume, tmp_path / "volume")
    repack_transformer(LocalVolume(volume), load_profile("tiny"))
    repack_clip_vision(LocalVolume(volume), load_profile("tiny"))
    result = prove(instance, volume, tiny_mirror)
    passed, check = verdict(result)
    assert passed, check["violations"]
    metadata = materialized(result)
    paths = metadata["dtypes"]
    assert list(paths) == ["float32", "bfloat16"]  # type: ignore[call-overload]
    assert paths["float32"]["repacks"]["transformer"] is None  # type: ignore[index]
    assert paths["bfloat16"]["repacks"] == {  # type: ignore[index]
        "transformer": "transformer_bf16",
        "t5": None,
        "t5-tokenizer": None,
        "clip": "clip_vision_bf16",
        "clip-tokenizer": None,
        "vae": None,
        "wav2vec2": None,
    }
    for dtype in ("float32", "bfloat16"):
        assert paths[dtype]["ok"] is True and paths[dtype]["files_touched"]["volume"] > 0  # type: ignore[index]
    table = str(metadata["components"])
    assert "| bfloat16 | transformer | loaded | transformer_bf16 |" in table
    assert "| float32 | transformer | loaded | - |" in table
    assert check["dtypes"] == paths
    # The data version still hashes the model files' sha256s only (the renders' guard compares them).
    versions = metadata[MODEL_VERSIONS]
    assert _data_version(result) == models_data_version(versions).value  # type: ignore[arg-type]


def test_the_check_fails_when_a_tokenizer_file_is_missing(
    instance: dg.DagsterInstance, tiny_volume: Path, tiny_mirror: Path, tmp_path: Path
) -> None:
    volume = copy_volume(tiny_volume, tmp_path / "volume")
    (volume / T5_TOKENIZER_JSON).unlink()
    result = prove(instance, volume, tiny_mirror, {"only": ["t5-tokenizer"]})
    passed, check = verdict(result)
    assert not passed
    assert f"missing `{T5_TOKENIZER_JSON}`" in str(check["violations"])


def test_the_check_fails_for_a_loader_that_asks_the_hub(
    instance: dg.DagsterInstance, tiny_volume: Path, tiny_mirror: Path
) -> None:
    config = {
        "only": ["t5-tokenizer"],
        "overrides": {"t5-tokenizer": "google/umt5-xxl"},
        "isolation": "audit-hooks",
    }
    result = prove(instance, tiny_volume, tiny_mirror, config)
    passed, check = verdict(result)
    assert not passed
    assert (
        "- float32: network attempt `huggingface.co:443` by `huggingface_hub.offline` in unit t5-tokenizer"
        in str(check["violations"])
    )
    metadata = materialized(result)
    attempts = metadata["network_attempts"]
    assert [(a["dtype"], a["unit"]) for a in attempts] == [("float32", "t5-tokenizer")]  # type: ignore[index,union-attr]
    assert (metadata["isolation"], metadata["isolation_reason"]) == (
        "audit-hooks",
        "chosen (isolation=audit-hooks)",
    )
    assert check["isolation"] == "audit-hooks"


def test_the_check_fails_for_a_file_read_from_outside_the_volume(
    instance: dg.DagsterInstance, tiny_volume: Path, tiny_mirror: Path, home_cache_snapshot: Path
) -> None:
    config = {"only": ["wav2vec2"], "overrides": {"wav2vec2": str(home_cache_snapshot)}}
    result = prove(instance, tiny_volume, tiny_mirror, config)
    passed, check = verdict(result)
    assert not passed
    assert str(home_cache_snapshot / "preprocessor_config.json") in str(check["violations"])
