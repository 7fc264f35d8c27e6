"""The offline proof: the worker's real load, network cut, every file traced and judged."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from mt_assets.cli import main
from mt_assets.manifest import load_profile
from mt_assets.models.pipeline import UNITS
from mt_assets.offline import (
    AUDIT_HOOKS,
    NETWORK_NAMESPACE,
    Classifier,
    OfflineProof,
    OfflineReport,
    prove_offline,
    verify_offline,
)
from mt_assets.offline.isolation import network_namespace_unavailable
from mt_assets_tests.offline.conftest import T5_TOKENIZER_JSON


@pytest.fixture(scope="module")
def proof(tiny_volume: Path) -> OfflineProof:
    return prove_offline(tiny_volume, load_profile("tiny"))  # dtype auto, isolation auto


@pytest.fixture(scope="module")
def good(proof: OfflineProof) -> OfflineReport:
    return proof.reports[0]


def test_without_repacks_auto_proves_the_float32_path_and_says_why_not_bfloat16(proof: OfflineProof) -> None:
    doc = proof.to_json()
    assert doc["ok"] is True
    assert (doc["dtype"], list(doc["dtypes"])) == ("auto", ["float32"])
    assert "no repack on the volume" in doc["dtypes_skipped"]["bfloat16"]
    path = doc["dtypes"]["float32"]
    assert path["dtype"] == "float32"
    assert {unit: entry["repack"] for unit, entry in path["components"].items()} == dict.fromkeys(UNITS)
    # The cut is named in the proof and in its path; the namespace wherever this machine allows one.
    expected = NETWORK_NAMESPACE if network_namespace_unavailable() is None else AUDIT_HOOKS
    assert doc["isolation"] == path["isolation"] == expected


def test_the_whole_tiny_load_is_proven_offline_with_every_component_timed(good: OfflineReport) -> None:
    manifest = load_profile("tiny")
    doc = good.to_json()
    assert doc["ok"] is True, json.dumps(
        {k: doc[k] for k in ("network_attempts", "outside_volume", "errors")}
    )
    assert doc["network_attempts"] == [] and doc["outside_volume"] == [] and doc["undeclared"] == []
    assert list(doc["components"]) == list(UNITS)
    for unit, entry in doc["components"].items():
        assert entry["status"] == "loaded"
        assert entry["seconds"] > 0
        # bytes read = the on-volume size of exactly the files the trace saw this unit touch
        assert entry["bytes"] == sum((Path(good.volume) / t).stat().st_size for t in entry["files"])
        weights = {
            f.target for name in UNITS[unit] for f in manifest.component(name).files if f.kind == "weights"
        }
        assert weights <= set(entry["files"]), f"{unit}: weights not traced: {weights - set(entry['files'])}"
    # Native loaders are traced too: the shards are opened by safetensors in Rust, not by `open`.
    transformer = doc["components"]["transformer"]["files"]
    assert "models/Wan2.1-I2V-14B-480P/diffusion_pytorch_model-00007-of-00007.safetensors" in transformer
    assert "models/MeiGen-MultiTalk/multitalk.safetensors" in transformer
    assert doc["files_touched"]["volume"] >= 20
    assert doc["files_touched"]["python"] > 100
    assert doc["total_seconds"] == pytest.approx(
        sum(e["seconds"] for e in doc["components"].values()), abs=0.01
    )


def test_a_missing_tokenizer_file_fails_and_is_named(volume_without_t5_tokenizer_json: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "verify-offline",
            "--profile",
            "tiny",
            "--volume",
            str(volume_without_t5_tokenizer_json),
            "--only",
            "t5-tokenizer",
            "--json",
        ],
    )
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)  # the whole of stdout is one JSON document
    assert doc["ok"] is False
    assert list(doc["dtypes"]) == ["float32"]  # no repack on this volume: one load path
    path = doc["dtypes"]["float32"]
    assert path["ok"] is False
    assert path["missing"] == [T5_TOKENIZER_JSON]
    assert path["components"]["t5-tokenizer"]["status"] == "failed"
    assert "missing tokenizer.json" in path["components"]["t5-tokenizer"]["error"]
    assert path["network_attempts"] == []


def test_a_loader_asking_the_hub_by_repo_id_fails_fast_and_names_the_host(tiny_volume: Path) -> None:
    started = time.perf_counter()
    result = CliRunner().invoke(
        main,
        [
            "verify-offline",
            "--profile",
            "tiny",
            "--volume",
            str(tiny_volume),
            "--only",
            "t5-tokenizer",
            "--override-unit",
            "t5-tokenizer=google/umt5-xxl",
        ],
        env={"HF_ENDPOINT": "https://huggingface.co"},
    )
    assert time.perf_counter() - started < 60
    assert result.exit_code == 1, result.output
    text = " ".join(result.stdout.split())  # rich wraps lines at the terminal width
    assert "network attempt huggingface.co:443 by huggingface_hub.offline" in text
    assert "in unit t5-tokenizer: Cannot access file" in text
    assert "repo_id: google/umt5-xxl" in text
    assert "hf_hub_download" in text  # the stack that made it
    assert "offline: not proven — a loader reaches past the volume" in text
    assert text.endswith("then run verify-offline again")


def test_with_only_the_audit_hook_the_socket_call_is_refused_before_it_leaves(tiny_volume: Path) -> None:
    """HF_HUB_OFFLINE unset: the library really tries; the hook refuses the name lookup, at once."""
    report = verify_offline(
        tiny_volume,
        load_profile("tiny"),
        only=["t5-tokenizer"],
        overrides={"t5-tokenizer": "google/umt5-xxl"},
        env={"HF_ENDPOINT": "https://huggingface.co"},
        hub_offline=False,
    )
    assert not report.ok
    [attempt] = report.network_attempts
    assert (attempt.event, attempt.host, attempt.port, attempt.unit) == (
        "socket.getaddrinfo",
        "huggingface.co",
        443,
        "t5-tokenizer",
    )
    assert any("create_connection" in frame for frame in attempt.stack)
    assert report.units[0].status == "failed"
    assert report.units[0].seconds is not None and report.units[0].seconds < 10  # no retry back-off


def test_a_processor_read_from_a_home_cache_fails_and_names_the_path(
    tiny_volume: Path, home_cache_snapshot: Path
) -> None:
    report = verify_offline(
        tiny_volume, load_profile("tiny"), only=["wav2vec2"], overrides={"wav2vec2": str(home_cache_snapshot)}
    )
    doc = report.to_json()
    assert doc["ok"] is False
    assert str(home_cache_snapshot / "preprocessor_config.json") in doc["outside_volume"]
    assert doc["outside_volume_detail"][0]["unit"] == "wav2vec2"
    assert doc["components"]["wav2vec2"]["files"] == []  # nothing came from the volume
    assert doc["network_attempts"] == []


def test_bad_units_and_overrides_are_bad_input(tiny_volume: Path) -> None:
    runner = CliRunner()
    base = ["verify-offline", "--profile", "tiny", "--volume", str(tiny_volume)]
    unknown = runner.invoke(main, [*base, "--only", "unet"])
    assert unknown.exit_code == 2
    assert "unknown units ['unet']" in unknown.stderr
    malformed = runner.invoke(main, [*base, "--override-unit", "t5-tokenizer"])
    assert malformed.exit_code == 2
    assert "UNIT=LOCATION" in malformed.stderr


def test_what_counts_as_outside(tmp_path: Path) -> None:
    volume, sandbox, home = tmp_path / "volume", tmp_path / "sandbox", tmp_path / "home"
    classify = Classifier(
        volume=volume,
        declared={"models/a/config.json"},
        sandbox=sandbox,
        python_roots=["/opt/python"],
        home=str(home),
    )
    assert classify(f"{volume}/models/a/config.json") == "volume"
    assert classify(f"{volume}/models/a/stray.json") == "undeclared"
    assert classify(f"{volume}/.mt/hashes.sqlite") == "undeclared"
    assert classify(f"{sandbox}/hf/token") == "sandbox"
    assert classify("/opt/python/lib/python3.11/json/__init__.py") == "python"
    assert classify("/usr/lib/x86_64-linux-gnu/libc.so.6") == "system"
    assert classify("/proc/self/maps") == "system"
    assert classify("/etc/ld.so.cache") == "system"
    assert classify(f"{home}/.cache/huggingface/hub/models--x/config.json") == "outside"
    assert classify(f"{home}/lib/libsneaky.so") == "outside"
    assert classify("/tmp/config.json") == "outside"
    assert classify("/etc/hosts") == "outside"


def test_the_offline_proof_traces_a_lora_profiles_lora_file_as_declared(tiny_fusionx_volume: Path) -> None:
    fusionx = load_profile("tiny-fusionx")
    [(lora, _)] = fusionx.loras
    report = verify_offline(tiny_fusionx_volume, fusionx, only=["transformer"])
    doc = report.to_json()
    assert doc["ok"] is True, json.dumps({k: doc[k] for k in ("undeclared", "outside_volume", "errors")})
    transformer = doc["components"]["transformer"]
    assert transformer["status"] == "loaded"
    assert lora.target in transformer["files"]  # read by the load, and declared by the manifest
    assert doc["undeclared"] == []


def test_a_lora_file_deleted_from_the_volume_is_named_by_the_audit_the_offline_proof_and_the_worker(
    tiny_fusionx_volume: Path, tmp_path: Path
) -> None:
    from mt_assets.worker.environment import WorkerSettings
    from mt_assets.worker.startup import StartupError, startup
    from mt_assets_tests.conftest import run_cli
    from mt_assets_tests.offline.conftest import copy_volume

    volume = copy_volume(tiny_fusionx_volume, tmp_path / "volume")
    fusionx = load_profile("tiny-fusionx")
    [(lora, _)] = fusionx.loras
    (volume / lora.target).unlink()

    audited = run_cli("audit", "--profile", "tiny-fusionx", "--volume", str(volume), "--json")
    assert audited.returncode == 1, audited.stderr
    missing = [f["target"] for f in json.loads(audited.stdout)["files"] if f["status"] == "missing"]
    assert missing == [lora.target]

    report = verify_offline(volume, fusionx, only=["transformer"])
    assert report.to_json()["ok"] is False
    assert report.missing == [lora.target]
    [unit] = report.units
    assert unit.status == "failed" and "lora-fusionx" in unit.components
    assert f"{lora.target} (component 'lora-fusionx'): missing from the volume" in (unit.error or "")

    settings = WorkerSettings.from_env({"MT_VOLUME": str(volume), "MT_PROFILE": "tiny-fusionx"})
    with pytest.raises(StartupError, match=rf"missing\s+{lora.target}"):
        startup(settings)


def test_a_quantization_map_deleted_from_the_volume_is_named_by_the_audit_the_offline_proof_and_the_worker(
    tiny_int8_volume: Path, tmp_path: Path
) -> None:
    from mt_assets.worker.environment import WorkerSettings
    from mt_assets.worker.startup import StartupError, startup
    from mt_assets_tests.conftest import run_cli
    from mt_assets_tests.offline.conftest import copy_volume

    volume = copy_volume(tiny_int8_volume, tmp_path / "volume")
    int8 = load_profile("tiny-int8")
    _, qmap = int8.quantized("transformer").quant_files
    (volume / qmap.target).unlink()

    audited = run_cli("audit", "--profile", "tiny-int8", "--volume", str(volume), "--json")
    assert audited.returncode == 1, audited.stderr
    missing = [f["target"] for f in json.loads(audited.stdout)["files"] if f["status"] == "missing"]
    assert missing == [qmap.target]

    report = verify_offline(volume, int8, only=["transformer"])
    assert report.to_json()["ok"] is False
    assert report.missing == [qmap.target]
    [unit] = report.units
    assert unit.status == "failed" and "dit-int8" in unit.components
    assert f"quantization map {volume / qmap.target}: no such file" in (unit.error or "")

    settings = WorkerSettings.from_env({"MT_VOLUME": str(volume), "MT_PROFILE": "tiny-int8"})
    with pytest.raises(StartupError, match=rf"missing\s+{qmap.target}"):
        startup(settings)


def test_a_quantized_file_with_a_key_removed_fails_the_offline_proof_naming_the_key(
    tiny_int8_volume: Path, tmp_path: Path
) -> None:
    """On the volume, as the golden test shows for the file alone: the reference would load it with the
    key's memory uninitialised; the proof's load refuses it, naming the file and the key."""
    from safetensors.torch import load_file, save_file

    from mt_assets_tests.offline.conftest import copy_volume

    volume = copy_volume(tiny_int8_volume, tmp_path / "volume")
    int8 = load_profile("tiny-int8")
    weights, _ = int8.quantized("transformer").quant_files
    tensors = load_file(str(volume / weights.target))
    del tensors["blocks.0.self_attn.q.weight._scale"]
    save_file(tensors, str(volume / weights.target))
    report = verify_offline(volume, int8, only=["transformer"])
    [unit] = report.units
    assert unit.status == "failed"
    assert f"{volume / weights.target}: missing key 'blocks.0.self_attn.q.weight._scale'" in (
        unit.error or ""
    )
