"""`dagster dev` (webserver and daemon) for tests: started on a free loopback port, always stopped."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mt_assets_tests.processes import free_port, stop_group

REPO_ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def dagster_dev(home: Path, env: dict[str, str], log: Path, timeout: float = 120) -> Iterator[str]:
    """`dagster dev` (webserver and daemon) on a free loopback port; stops every process it started."""
    port = free_port()
    dagster = Path(sys.executable).with_name("dagster")
    # `dagster dev` ignores SIGINT when started from a non-interactive parent unless the default
    # handlers are restored; its own session lets the caller stop the whole process group.
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
        env={**{k: v for k, v in os.environ.items() if k != "MT_MANIFEST"}, "DAGSTER_HOME": str(home), **env},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/server_info", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"dagster dev did not come up on {url}:\n{log.read_text(errors='replace')[-3000:]}"
                )
            time.sleep(0.5)
        yield url
    finally:
        stop_group(proc)
