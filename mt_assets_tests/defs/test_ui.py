"""The web UI: `dagster dev` on loopback, the asset catalog opened in headless Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mt_assets.defs.keys import slug
from mt_assets.manifest import load_profile
from mt_assets_tests.dagster_dev import REPO_ROOT
from mt_assets_tests.dagster_dev import dagster_dev as run_dagster_dev

# Headless, offline and quiet: no GPU, no QUIC, none of Chromium's own background traffic.
HEADLESS_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CHROMIUM_FLAGS = [
    *HEADLESS_FLAGS,
    # The catalog renders only the rows in view (a virtualized list, sorted by key): tall enough for
    # a row of every group, benchmark_report and the bundles sorting before the model files.
    "--window-size=1400,1600",
    "--virtual-time-budget=20000",
]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("chromium is required in CI: `make setup` installs it with apt as root")
    pytest.skip("chromium is not installed (as root, `make setup` installs it with apt)")


@pytest.fixture
def dagster_dev(tmp_path: Path) -> Iterator[str]:
    """`dagster dev` with a fresh DAGSTER_HOME and the real profile on an empty volume."""
    home = tmp_path / "dagster-home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    volume = tmp_path / "volume"
    volume.mkdir()
    env = {"MT_VOLUME": str(volume), "MT_PROFILE": "multitalk-480p"}
    with run_dagster_dev(home, env, tmp_path / "dagster-dev.log") as url:
        yield url


def test_asset_catalog_lists_the_model_assets_in_a_real_browser(dagster_dev: str, tmp_path: Path) -> None:
    browser = chromium()
    base = [browser, *CHROMIUM_FLAGS]
    dom = subprocess.run(
        [*base, f"--user-data-dir={tmp_path / 'profile-dom'}", "--dump-dom", f"{dagster_dev}/assets"],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    screenshot = tmp_path / "asset-catalog.png"
    subprocess.run(
        [
            *base,
            f"--user-data-dir={tmp_path / 'profile-shot'}",
            f"--screenshot={screenshot}",
            f"{dagster_dev}/assets",
        ],
        capture_output=True,
        timeout=120,
    )
    manifest = load_profile("multitalk-480p")
    for component in {f.component for f in manifest.files}:
        assert f"{slug(component)}" in dom, f"component {component} not shown in the asset catalog"
    assert "bundles" in dom
    shard = subprocess.run(
        [
            *base,
            f"--user-data-dir={tmp_path / 'profile-asset'}",
            "--dump-dom",
            f"{dagster_dev}/assets/models/wan_dit/diffusion_pytorch_model_00001_of_00007_safetensors",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "diffusion_pytorch_model-00001-of-00007.safetensors" in shard  # its description, rendered
    assert "Wan-AI/Wan2.1-I2V-14B-480P" in shard
    assert "(9.8 GB, weights)" in shard  # the real profile's shard, as MT_PROFILE asked, not the tiny one
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000


def test_dagster_validates_the_definitions_from_the_environment(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path),
        "MT_PROFILE": "multitalk-480p",
        "MT_VOLUME": str(tmp_path),
    }
    dagster = Path(sys.executable).with_name("dagster")
    done = subprocess.run(
        [str(dagster), "definitions", "validate", "-m", "mt_assets"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Validation successful for code location mt_assets" in done.stdout + done.stderr
