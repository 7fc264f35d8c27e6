"""`make serve`: the Dagster webserver and the daemon as two processes on the production instance.

    python -m mt_assets.deploy --home DIR [--host 127.0.0.1] [--port 3000] [-w workspace.yaml] [--overlay FILE]

In order:
1. writes DIR/dagster.yaml (deploy/instance.py: Postgres from DAGSTER_PG_URL, compute logs, run limit);
2. `dagster instance migrate`: the Postgres schema of this Dagster release (a new database gets its
   tables; after an upgrade, the old schema is migrated; a no-op otherwise);
3. pool limits, through `dagster instance concurrency set`: `gpu` to MT_GPU_SLOTS (default 1),
   `runpod` to MT_RUNPOD_SLOTS when set (the RunPod endpoint's maximum worker count);
4. starts `dagster-webserver` and `dagster-daemon run`, each loading the code location (`-m mt_assets`,
   or the workspace file) in a code server of its own, each in a session of its own with SIGINT and
   SIGTERM at their defaults (a parent started in the background has them ignored, and they would
   otherwise outlive it);
5. waits. Ctrl-C (SIGINT), SIGTERM or SIGHUP stops both: SIGINT to each process group (the code
   servers, and runs in progress, stop with them), SIGKILL to what is left after STOP_GRACE_SECONDS
   (and ORPHAN_GRACE_SECONDS more for what outlives its group's leader).
   If either exits by itself, the other is stopped too and the exit status is 1: whatever restarts
   this command (systemd, a container runtime) restarts both.

Both processes write to this command's stdout and stderr, as `dagster dev` does. Nothing here
imports Dagster: every step is the Dagster CLI of the same virtual environment.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

from mt_assets import config
from mt_assets.deploy.instance import InstanceConfigError, postgres_target, write_instance

CODE_MODULE = "mt_assets"
STOP_GRACE_SECONDS = 30.0
ORPHAN_GRACE_SECONDS = 10.0
READY_TIMEOUT_SECONDS = 180.0


class ServeError(RuntimeError):
    """A step before the processes run failed; the message says which and why."""


@dataclass
class ControlPlane:
    """The two running processes and where the webserver answers."""

    webserver: subprocess.Popen[bytes]
    daemon: subprocess.Popen[bytes]
    url: str

    @property
    def processes(self) -> dict[str, subprocess.Popen[bytes]]:
        return {"webserver": self.webserver, "daemon": self.daemon}


def dagster_executable(name: str) -> str:
    """`name` from this interpreter's environment (the same Dagster release), else from PATH."""
    beside = Path(sys.executable).with_name(name)
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise ServeError(
            f"{name}: not found beside {sys.executable} or on PATH (pip install 'mt_assets[dagster]')"
        )
    return found


def code_location_args(workspace: Path | None) -> list[str]:
    return ["-w", str(workspace)] if workspace is not None else ["-m", CODE_MODULE]


def child_env(home: Path, env: Mapping[str, str]) -> dict[str, str]:
    return {**env, "DAGSTER_HOME": str(Path(home).resolve())}


def pool_limits(env: Mapping[str, str]) -> dict[str, int]:
    """MT_GPU_SLOTS for pool `gpu`; MT_RUNPOD_SLOTS, when set, for pool `runpod`."""
    try:
        limits = {"gpu": config.GPU_SLOTS.read(env)}
        runpod = config.RUNPOD_SLOTS.read(env)
    except config.ConfigError as e:
        raise ServeError(str(e)) from None
    if runpod is not None:
        limits["runpod"] = runpod
    return limits


def prepare(home: Path, env: Mapping[str, str], overlay: Mapping[str, Any] | None = None) -> Path:
    """Steps 1-3: the instance file, the schema migration, the pool limits. Returns the file."""
    try:
        path = write_instance(home, env, overlay)
    except InstanceConfigError as e:
        raise ServeError(str(e)) from None
    dagster = dagster_executable("dagster")
    _run_cli([dagster, "instance", "migrate"], home, env, "dagster instance migrate")
    for pool, limit in pool_limits(env).items():
        _run_cli(
            [dagster, "instance", "concurrency", "set", pool, str(limit)],
            home,
            env,
            f"pool {pool}: dagster instance concurrency set {pool} {limit}",
        )
    return path


def _run_cli(argv: list[str], home: Path, env: Mapping[str, str], what: str) -> None:
    done = subprocess.run(argv, env=child_env(home, env), capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-15:]
        raise ServeError(f"{what}: exit status {done.returncode}\n" + "\n".join(tail))


def start(
    argv: Sequence[str], home: Path, env: Mapping[str, str], output: IO[bytes] | None = None
) -> subprocess.Popen[bytes]:
    """One Dagster process in a session of its own, with SIGINT and SIGTERM at their defaults."""

    def default_signals() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    return subprocess.Popen(
        list(argv),
        env=child_env(home, env),
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT if output is not None else None,
        start_new_session=True,
        preexec_fn=default_signals,
    )


def start_webserver(
    home: Path,
    env: Mapping[str, str],
    *,
    host: str = "127.0.0.1",
    port: int = 3000,
    workspace: Path | None = None,
    output: IO[bytes] | None = None,
) -> subprocess.Popen[bytes]:
    argv = [
        dagster_executable("dagster-webserver"),
        *code_location_args(workspace),
        "-h",
        host,
        "-p",
        str(port),
    ]
    return start(argv, home, env, output)


def start_daemon(
    home: Path, env: Mapping[str, str], *, workspace: Path | None = None, output: IO[bytes] | None = None
) -> subprocess.Popen[bytes]:
    argv = [dagster_executable("dagster-daemon"), "run", *code_location_args(workspace)]
    return start(argv, home, env, output)


def wait_for_webserver(
    url: str, proc: subprocess.Popen[bytes], timeout: float = READY_TIMEOUT_SECONDS
) -> None:
    """Until `url`/server_info answers; ServeError if the process exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{url}/server_info", timeout=2) as response,
        ):
            if response.status == 200:
                return
        if proc.poll() is not None:
            raise ServeError(
                f"dagster-webserver exited with status {proc.returncode} before answering on {url}"
            )
        if time.monotonic() > deadline:
            raise ServeError(f"dagster-webserver did not answer on {url} within {timeout:.0f} s")
        time.sleep(0.5)


def stop(
    processes: Sequence[subprocess.Popen[bytes]],
    grace: float = STOP_GRACE_SECONDS,
    orphan_grace: float = ORPHAN_GRACE_SECONDS,
) -> None:
    """SIGINT to each process group; SIGKILL to what is left of a group once the time is up.

    A group is the process and what it started (its code server, the runs in progress): each gets
    the SIGINT. The leaders have `grace` seconds to exit; what is left of their groups after that
    (a run worker reporting its interruption, a code server whose parent died and which waits for
    calls that will never end) at most `orphan_grace` more.
    """
    for proc in processes:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
    deadline = time.monotonic() + grace
    for proc in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    deadline = min(deadline, time.monotonic() + orphan_grace)
    while any(_group_alive(p.pid) for p in processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    for proc in processes:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Stop(Exception):
    def __init__(self, signum: int) -> None:
        self.signum = signum


def serve(
    home: Path,
    env: Mapping[str, str],
    *,
    host: str = "127.0.0.1",
    port: int = 3000,
    workspace: Path | None = None,
    overlay: Mapping[str, Any] | None = None,
) -> int:
    """Steps 1-5; the exit status: 0 after a stop that was asked for, 1 if a process ended by itself."""

    def on_signal(signum: int, _frame: object) -> None:
        raise _Stop(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        target = postgres_target(env)
        started = time.monotonic()
        path = prepare(home, env, overlay)
        _say(f"instance: {path} (Postgres {target}); schema migrated; pools {_pools(env)}")
        url = f"http://{host}:{port}"
        processes.append(start_webserver(home, env, host=host, port=port, workspace=workspace))
        processes.append(start_daemon(home, env, workspace=workspace))
        _say(f"webserver: pid {processes[0].pid}; daemon: pid {processes[1].pid}")
        wait_for_webserver(url, processes[0])
        _say(f"ready in {time.monotonic() - started:.1f} s: {url} (Ctrl-C stops both)")
        while True:
            for name, proc in zip(("webserver", "daemon"), processes, strict=True):
                if proc.poll() is not None:
                    _say(f"{name} exited with status {proc.returncode}; stopping the other")
                    return 1
            time.sleep(0.5)
    except _Stop as e:
        _say(f"{signal.Signals(e.signum).name}: stopping the webserver and the daemon")
        return 0
    except (ServeError, InstanceConfigError) as e:
        _say(f"error: {e}")
        return 2
    finally:
        for s in previous:
            signal.signal(s, signal.SIG_IGN)  # a second Ctrl-C must not cut the stop short
        stop(processes)
        for s, handler in previous.items():
            signal.signal(s, handler)
        if processes:
            _say("stopped")


def _pools(env: Mapping[str, str]) -> str:
    return ", ".join(f"{pool}={limit}" for pool, limit in pool_limits(env).items())


def _say(line: str) -> None:
    print(f"mt_assets.deploy: {line}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mt_assets.deploy",
        description="The Dagster webserver and daemon as two processes on the production (Postgres) instance.",
    )
    parser.add_argument(
        "--home", default=os.environ.get("DAGSTER_HOME"), help="DAGSTER_HOME (default: $DAGSTER_HOME)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="the webserver's address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=3000, help="the webserver's port (default 3000)")
    parser.add_argument(
        "-w", "--workspace", type=Path, help=f"a workspace.yaml (default: the module {CODE_MODULE})"
    )
    parser.add_argument("--overlay", type=Path, help="YAML deep-merged over the instance configuration")
    args = parser.parse_args(argv)
    if not args.home:
        parser.error("--home or DAGSTER_HOME is required")
    overlay = yaml.safe_load(args.overlay.read_text(encoding="utf-8")) if args.overlay else None
    return serve(
        Path(args.home),
        dict(os.environ),
        host=args.host,
        port=args.port,
        workspace=args.workspace,
        overlay=overlay,
    )
