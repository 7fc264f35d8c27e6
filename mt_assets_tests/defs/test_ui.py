"""The web UI: `dagster dev` on loopback, the asset catalog opened in headless Chromium."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mt_assets.defs.keys import slug
from mt_assets.manifest import load_profile
from mt_assets_tests.hub_server import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
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
    """`dagster dev` on a free loopback port with a fresh DAGSTER_HOME; stops every process it started."""
    home = tmp_path / "dagster-home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    volume = tmp_path / "volume"
    volume.mkdir()
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "MT_VOLUME": str(volume), "MT_PROFILE": "multitalk-480p"}
    env.pop("MT_MANIFEST", None)
    dagster = Path(sys.executable).with_name("dagster")
    # `dagster dev` ignores SIGINT when started from a non-interactive parent unless the default
    # handlers are restored; its own session lets the test stop the whole process group.
    proc = subprocess.Popen(
        [
            "env",
            "--default-signal=INT,TERM",
            str(dagster),
            "dev",
            "-w",
            "workspace.yaml",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=(tmp_path / "dagster-dev.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/server_info", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (tmp_path / "dagster-dev.log").read_text(errors="replace")[-3000:]
                pytest.fail(f"dagster dev did not come up on {url}:\n{log}")
            time.sleep(0.5)
        yield url
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=45)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group is still there
    proc.wait(timeout=10)


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
