"""The control plane through real materializations, checks, sensor ticks and staleness."""

from __future__ import annotations

import json
import os

import dagster as dg
import pytest
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest

from mt_assets.defs import build_definitions
from mt_assets.defs.keys import bundle_key, file_key
from mt_assets.manifest import load_profile, parse_manifest
from mt_assets.volume import LocalVolume
from mt_assets_tests.conftest import rot_bit
from mt_assets_tests.defs.conftest import Env, manifest_for


def materializations(result: dg.ExecuteInProcessResult) -> dict[dg.AssetKey, dict[str, object]]:
    return {
        m.asset_key: {k: v.value for k, v in m.metadata.items()}
        for m in result.asset_materializations_for_node("model_files")
    }


def check_outcomes(result: dg.ExecuteInProcessResult) -> dict[dg.AssetKey, bool]:
    return {e.asset_key: e.passed for e in result.get_asset_check_evaluations()}


def test_definitions_have_one_asset_per_file_plus_the_bundles() -> None:
    manifest = load_profile("multitalk-480p")
    defs = build_definitions(manifest)
    graph = defs.resolve_asset_graph()
    keys = set(graph.get_all_asset_keys())
    offline = {dg.AssetKey("offline_cache")}
    renders = {dg.AssetKey("renders")}
    files_and_bundles = {file_key(f) for f in manifest.files} | {bundle_key(b) for b in manifest.bundles}
    repacks = {dg.AssetKey(["repacks", "transformer_bf16"]), dg.AssetKey(["repacks", "clip_vision_bf16"])}
    report = {dg.AssetKey("benchmark_report")}
    assert keys == files_and_bundles | offline | renders | repacks | report
    assert len(keys) == 25 + 3 + 1 + 1 + 2 + 1
    checked = {file_key(f) for f in manifest.files} | offline | repacks
    assert {c.asset_key for c in graph.asset_check_keys} == checked
    shard = graph.get(file_key(manifest.files[2]))
    assert shard.group_name == "wan_dit"
    assert "Wan-AI/Wan2.1-I2V-14B-480P" in (shard.description or "")


def test_materializing_records_metadata_and_a_second_run_skips_the_transfer(env: Env) -> None:
    first = env.materialize()
    assert first.success
    recorded = materializations(first)
    a = recorded[file_key(env.hub.manifest.files[0])]
    assert a["outcome"] == "placed"
    assert a["bytes"] == 200_000
    assert a["sha256"] == env.hub.manifest.files[0].sha256
    assert str(a["volume_path"]).endswith("models/tiny-models/a.bin")
    assert str(a["source"]).startswith(f"hf://{env.hub.manifest.files[0].repo}@{env.hub.commit}/a.bin")
    assert float(a["seconds"]) > 0 and float(a["mb_per_s"]) > 0  # type: ignore[arg-type]
    assert set(check_outcomes(first).values()) == {True}
    bundle = next(
        m
        for m in first.get_asset_materialization_events()
        if m.asset_key == bundle_key(env.hub.manifest.bundles[0])
    )
    loaded = {k: v.value for k, v in bundle.materialization.metadata.items()}
    assert loaded["vocab_size"] > 0 and loaded["sample_tokens"] > 0  # the tokenizer really loaded and encoded
    assert str(loaded["path"]).endswith("models/tiny-models/tokenizer")

    second = env.materialize()
    again = materializations(second)[file_key(env.hub.manifest.files[0])]
    assert again["outcome"] == "skipped"
    assert again["bytes"] == 0
    assert again["detail"] == "already on the volume and verified: no transfer"
    assert again["sha256"] == a["sha256"]
    for run in (first, second):  # data version = sha256, placed or skipped
        versions = {
            e.asset_key: e.materialization.tags["dagster/data_version"]
            for e in run.get_asset_materialization_events()
            if e.asset_key.path[0] == "models"
        }
        assert versions == {file_key(f): f.sha256 for f in env.hub.manifest.files}


def test_corruption_fails_the_check_and_the_drift_sensor_restores_exactly_that_file(env: Env) -> None:
    assert env.materialize().success
    defs = env.defs()
    victim = env.hub.manifest.files[1]  # b.bin
    path = env.volume_root / victim.target
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))

    check_run = defs.resolve_job_def("integrity_pass").execute_in_process(
        instance=env.instance, raise_on_error=False
    )
    outcomes = check_outcomes(check_run)
    assert outcomes[file_key(victim)] is False
    assert [key for key, passed in outcomes.items() if not passed] == [file_key(victim)]

    sensor = defs.get_sensor_def("volume_drift")
    with dg.build_sensor_context(
        instance=env.instance, resources=env.resources(), definitions=defs
    ) as context:
        result = sensor(context)
    [request] = result.run_requests
    assert request.asset_selection == [file_key(victim)]

    job = defs.resolve_implicit_global_asset_job_def()
    restore = job.execute_in_process(instance=env.instance, asset_selection=request.asset_selection)
    assert restore.success
    assert materializations(restore)[file_key(victim)]["outcome"] == "placed"
    assert check_outcomes(restore) == {file_key(victim): True}
    assert path.read_bytes() == env.hub.files["b.bin"]

    with dg.build_sensor_context(
        instance=env.instance, resources=env.resources(), definitions=defs, cursor=result.cursor
    ) as context:
        quiet = sensor(context)
    assert not quiet.run_requests  # restored and re-recorded: no drift left


def test_the_drift_sensor_notices_a_vanished_file_once(env: Env) -> None:
    assert env.materialize().success
    defs = env.defs()
    victim = env.hub.manifest.files[0]
    os.unlink(env.volume_root / victim.target)
    sensor = defs.get_sensor_def("volume_drift")
    with dg.build_sensor_context(
        instance=env.instance, resources=env.resources(), definitions=defs
    ) as context:
        first = sensor(context)
    assert [r.asset_selection for r in first.run_requests] == [[file_key(victim)]]
    with dg.build_sensor_context(
        instance=env.instance, resources=env.resources(), definitions=defs, cursor=first.cursor
    ) as context:
        second = sensor(context)
    assert not second.run_requests  # already requested; not again every tick


def test_changing_a_hash_in_the_manifest_makes_that_asset_stale(env: Env) -> None:
    assert env.materialize().success
    changed_file = env.hub.manifest.files[0]
    text = manifest_for(env.hub.files, env.hub.commit, sha_override={changed_file.path: "e" * 64})
    changed = parse_manifest(text, "changed.yaml")
    graph = build_definitions(changed, resources=env.resources()).resolve_asset_graph()
    resolver = CachingStaleStatusResolver(env.instance, graph, LoadingContextForTest(env.instance))
    assert resolver.get_status(file_key(changed_file)) == StaleStatus.STALE
    assert resolver.get_status(file_key(env.hub.manifest.files[1])) == StaleStatus.FRESH


def test_the_nightly_full_pass_catches_rot_that_no_stat_field_shows(env: Env) -> None:
    assert env.materialize().success
    victim = env.hub.manifest.files[0]
    rot_bit(LocalVolume(env.volume_root), victim.target, offset=999)  # no stat field shows it
    job = env.defs().resolve_job_def("integrity_pass")

    cached_config = {"ops": {"model_file_checks": {"config": {"full": False}}}}
    cached = job.execute_in_process(instance=env.instance, run_config=cached_config, raise_on_error=False)
    assert check_outcomes(cached)[file_key(victim)] is True  # invisible to the hash cache, by design

    full = job.execute_in_process(instance=env.instance, raise_on_error=False)  # the schedule's config: full
    outcomes = check_outcomes(full)
    assert outcomes[file_key(victim)] is False
    assert all(passed for key, passed in outcomes.items() if key != file_key(victim))
    assert env.defs().get_schedule_def("nightly_integrity").job_name == "integrity_pass"


def test_a_rematerialized_tokenizer_file_makes_its_bundle_rebuild_by_automation(env: Env) -> None:
    defs = env.defs()
    bundle = bundle_key(env.hub.manifest.bundles[0])
    tokenizer_file = next(f for f in env.hub.manifest.files if f.component == "tok")
    first = dg.evaluate_automation_conditions(defs=defs, instance=env.instance)
    assert first.get_num_requested(bundle) == 0  # its files are not there yet: nothing to build from

    assert env.materialize().success  # files and bundle, as the demo does
    settled = dg.evaluate_automation_conditions(defs=defs, instance=env.instance, cursor=first.cursor)
    assert settled.get_num_requested(bundle) == 0

    assert env.materialize(selection=[file_key(tokenizer_file)]).success  # e.g. the drift sensor's run
    after = dg.evaluate_automation_conditions(defs=defs, instance=env.instance, cursor=settled.cursor)
    assert after.get_num_requested(bundle) == 1


def test_a_file_that_vanishes_again_after_a_repair_is_requested_again(env: Env) -> None:
    assert env.materialize().success
    defs = env.defs()
    victim = env.hub.manifest.files[0]
    sensor = defs.get_sensor_def("volume_drift")
    cursor = None
    for _ in range(2):
        os.unlink(env.volume_root / victim.target)
        with dg.build_sensor_context(
            instance=env.instance, resources=env.resources(), definitions=defs, cursor=cursor
        ) as context:
            tick = sensor(context)
        [request] = tick.run_requests
        assert request.asset_selection == [file_key(victim)]
        repair = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=env.instance, asset_selection=request.asset_selection
        )
        assert repair.success
        with dg.build_sensor_context(
            instance=env.instance, resources=env.resources(), definitions=defs, cursor=tick.cursor
        ) as context:
            settled = sensor(context)
        assert not settled.run_requests
        cursor = settled.cursor
        assert victim.target not in json.loads(cursor or "{}")  # resolved drifts leave the cursor


def test_two_files_that_would_share_an_asset_key_are_refused_by_name() -> None:
    text = (
        "profile: p\ncomponents:\n  - {name: c, repo: o/r, revision: main, dir: d, files: "
        "[{path: a-b.json, kind: config}, {path: a_b.json, kind: config}]}\n"
    )
    with pytest.raises(
        ValueError, match=r"models/c/a_b_json would stand for both models/d/a-b.json and models/d/a_b.json"
    ):
        build_definitions(parse_manifest(text, "m.yaml"))
