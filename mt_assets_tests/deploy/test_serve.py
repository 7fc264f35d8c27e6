"""`make serve` (`python -m mt_assets.deploy`) as a user runs it: the webserver and the daemon come up
as two processes on Postgres, Ctrl-C stops both and everything they started, and one of them dying
takes the other down with a non-zero exit status (so whatever restarts the command restarts both)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mt_assets_tests.dagster_dev import REPO_ROOT
from mt_assets_tests.deploy.conftest import alive, base_env, daemons_healthy, descendants
from mt_assets_tests.processes import free_port


class Serve:
    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "serve.log"
        (tmp_path / "volume").mkdir()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mt_assets.deploy",
                "--home",
                str(tmp_path / "home"),
                "--port",
                str(self.port),
            ],
            cwd=REPO_ROOT,
            env={**base_env(), "MT_PROFILE": "tiny", "MT_VOLUME": str(tmp_path / "volume"), **env},
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # as a terminal runs it: its own process group, which Ctrl-C signals
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 240) -> float:
        started = time.monotonic()
        while "ready in" not in self.text() or not daemons_healthy(self.url):
            if self.proc.poll() is not None or time.monotonic() - started > timeout:
                pytest.fail(f"make serve did not come up (status {self.proc.poll()}):\n{self.text()[-4000:]}")
            time.sleep(1)
        return time.monotonic() - started

    def children(self) -> dict[str, int]:
        """The webserver's and the daemon's pids, by their command lines."""
        found = {}
        for pid in descendants(self.proc.pid):
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            for name in ("dagster-webserver", "dagster-daemon"):
                if any(a.endswith(name.encode()) for a in argv[:2]):
                    found[name] = pid
        return found


@pytest.fixture
def served(database: str, tmp_path: Path) -> Iterator[Serve]:
    s = Serve(tmp_path, {"DAGSTER_PG_URL": database})
    try:
        yield s
    finally:
        for pid in [s.proc.pid, *descendants(s.proc.pid)]:  # each child leads a group of its own
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        s.proc.wait(timeout=30)


def gone(pids: list[int], timeout: float = 10) -> bool:
    """Whether every one of `pids` has exited (a process SIGKILLed a moment ago may still be dying)."""
    deadline = time.monotonic() + timeout
    while (left := [pid for pid in pids if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in left}
    return True


def test_ctrl_c_stops_the_webserver_the_daemon_and_everything_they_started(served: Serve) -> None:
    seconds = served.wait_ready()
    children = served.children()
    assert set(children) == {"dagster-webserver", "dagster-daemon"}, served.text()
    everything = descendants(served.proc.pid)  # both, and the code server each started
    assert len(everything) >= 4, everything
    assert "version mismatch" not in served.text().lower()
    print(f"\nmake serve: ready in {seconds:.1f} s, {len(everything)} processes")

    started = time.monotonic()
    os.killpg(served.proc.pid, signal.SIGINT)  # what Ctrl-C in its terminal sends
    assert served.proc.wait(timeout=60) == 0, served.text()
    assert gone(everything)
    assert "SIGINT: stopping the webserver and the daemon" in served.text()
    print(f"stopped in {time.monotonic() - started:.1f} s")


def test_the_daemon_dying_stops_the_webserver_and_exits_with_status_1(served: Serve) -> None:
    served.wait_ready()
    children = served.children()
    everything = descendants(served.proc.pid)
    os.kill(children["dagster-daemon"], signal.SIGKILL)
    assert served.proc.wait(timeout=60) == 1, served.text()
    assert f"daemon exited with status {-signal.SIGKILL}; stopping the other" in served.text()
    assert gone(everything)


def test_without_a_postgres_url_nothing_starts_and_the_variable_is_named(tmp_path: Path) -> None:
    s = Serve(tmp_path, {})
    assert s.proc.wait(timeout=60) == 2
    assert "error: DAGSTER_PG_URL is not set" in s.text()
    assert not (tmp_path / "home" / "dagster.yaml").exists()
