"""`mt-assets lock` against a hub-compatible server on loopback, then provisioning what it pinned."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from mt_assets.manifest import load_manifest
from mt_assets.volume.hashing import git_blob_sha1
from mt_assets_tests.conftest import run_cli
from mt_assets_tests.hub_server import RepoInfo, error_server, hub_server, make_repo

CONFIG = b'{"hidden_size": 32}\n'
WEIGHTS = random.Random(1).randbytes(50_000)
PR_WEIGHTS = random.Random(2).randbytes(20_000)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, RepoInfo]]:
    mirrors = tmp_path_factory.mktemp("mirrors")
    info = make_repo(
        mirrors,
        "org/audio",
        {"config.json": CONFIG, "model.bin": WEIGHTS},
        pr_files={"model.safetensors": PR_WEIGHTS},
    )
    with hub_server(mirrors) as url:
        yield url, info


def unlocked(tmp_path: Path, extra_file: str | None = None) -> Path:
    files = [{"path": "model.safetensors", "kind": "weights", "estimated_size": 20_000}]
    if extra_file:
        files.append({"path": extra_file, "kind": "config"})
    doc = {
        "profile": "locktest",
        "components": [
            {
                "name": "audio-config",
                "repo": "org/audio",
                "revision": "main",
                "dir": "audio",
                "files": [{"path": "config.json", "kind": "config"}],
            },
            {"name": "audio", "repo": "org/audio", "revision": "refs/pr/1", "dir": "audio", "files": files},
        ],
    }
    path = tmp_path / "locktest.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def mt_assets(*args: str, endpoint: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    full_env.update(HF_ENDPOINT=endpoint, HF_HOME=env.pop("HF_HOME", "/nonexistent-hf-home"), **env)
    return run_cli(*args, env=full_env, timeout=120)


def test_lock_resolves_refs_pins_every_file_and_provisioning_uses_it(
    hub: tuple[str, RepoInfo], tmp_path: Path
) -> None:
    url, info = hub
    manifest = unlocked(tmp_path)
    out = tmp_path / "locktest.lock.yaml"
    done = mt_assets("lock", "--manifest", str(manifest), endpoint=url)
    assert done.returncode == 0, done.stderr
    assert f"into {out}" in done.stdout
    assert f"audio: revision refs/pr/1 → {info.pr[:12]}…" in done.stdout  # type: ignore[index]
    locked = {f.path: f for f in load_manifest(out).files}
    assert locked["config.json"].revision == info.main
    assert (locked["config.json"].size, locked["config.json"].git_sha1) == (
        len(CONFIG),
        git_blob_sha1(CONFIG),
    )
    pr = locked["model.safetensors"]
    assert (pr.revision, pr.size, pr.sha256) == (
        info.pr,
        len(PR_WEIGHTS),
        hashlib.sha256(PR_WEIGHTS).hexdigest(),
    )
    assert pr.estimated_size is None

    again = mt_assets("lock", "--manifest", str(manifest), endpoint=url)
    assert again.returncode == 0
    assert f"0 changes against previous lock {out}" in again.stdout

    volume = tmp_path / "volume"
    volume.mkdir()
    placed = mt_assets(
        "provision", "--manifest", str(out), "--source", "hub", "--volume", str(volume), endpoint=url
    )
    assert placed.returncode == 0, placed.stdout + placed.stderr
    assert (volume / "models/audio/model.safetensors").read_bytes() == PR_WEIGHTS
    assert (volume / "models/audio/config.json").read_bytes() == CONFIG


def test_a_file_the_hub_does_not_have_writes_nothing(hub: tuple[str, RepoInfo], tmp_path: Path) -> None:
    url, info = hub
    done = mt_assets("lock", "--manifest", str(unlocked(tmp_path, extra_file="nope.json")), endpoint=url)
    assert done.returncode == 2
    assert f"nope.json does not exist in org/audio at {info.pr}" in done.stderr
    assert not (tmp_path / "locktest.lock.yaml").exists()


def test_offline_lock_is_a_clear_error_and_writes_nothing(hub: tuple[str, RepoInfo], tmp_path: Path) -> None:
    url, _ = hub
    done = mt_assets("lock", "--manifest", str(unlocked(tmp_path)), endpoint=url, HF_HUB_OFFLINE="1")
    assert done.returncode == 2
    assert "offline" in done.stderr.lower()
    assert not (tmp_path / "locktest.lock.yaml").exists()


def test_unauthorised_lock_names_the_token_and_never_prints_it(tmp_path: Path) -> None:
    secret = "hf_lock-test-secret-never-printed"
    with error_server(401) as url:
        done = mt_assets("lock", "--manifest", str(unlocked(tmp_path)), endpoint=url, HF_TOKEN=secret)
    assert done.returncode == 2
    assert "HF_TOKEN" in done.stderr
    assert secret not in done.stdout + done.stderr
    assert not (tmp_path / "locktest.lock.yaml").exists()
