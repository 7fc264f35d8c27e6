"""Control-plane fixtures: a real PostgreSQL on loopback, and the production instance on it with the
webserver and the daemon as two processes (as `make serve` starts them) over a tiny volume.

`postgres` (session): one server; each test asks it for a database of its own (`database`).
`plane` (module): the tiny profile materialized onto a volume through the Postgres instance in this
process (as `make demo` does), then `prepare()` (instance file, migrate, pool limits) and the two
processes, with compute logs in a moto S3 bucket. The code location is mt_assets' own with the inbox
and drift sensors ticking every 2 s (code_location.py), and the instance has short queue and
monitoring intervals (OVERLAY). Everything this module started is stopped afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from mt_assets.deploy import serve
from mt_assets_tests.dagster_dev import REPO_ROOT
from mt_assets_tests.defs.conftest import materialize_models, tiny_definitions
from mt_assets_tests.postgres import PostgresServer, postgres_server
from mt_assets_tests.processes import free_port
from mt_assets_tests.s3_server import s3_client, s3_server

LOG_BUCKET = "compute-logs"
LOG_PREFIX = "mt/runs"
# Short intervals so that a test sees the queue, monitoring and retries act within seconds. A run
# whose worker vanished is failed once it has run MAX_RUNTIME seconds (a render run here takes 15-45 s).
MAX_RUNTIME = 75
OVERLAY: dict[str, Any] = {
    "run_coordinator": {"config": {"dequeue_interval_seconds": 1}},
    "run_monitoring": {
        "poll_interval_seconds": 2,
        "max_runtime_seconds": MAX_RUNTIME,
        "free_slots_after_run_end_seconds": 5,
    },
}
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
}


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


_databases = iter(range(1, 1_000_000))


@pytest.fixture
def database(postgres: PostgresServer, request: pytest.FixtureRequest) -> str:
    """A new, empty database for this test: its `postgresql+psycopg2://` URL."""
    name = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:40]
    return postgres.create_database(f"t{next(_databases)}_{name}")


def base_env() -> dict[str, str]:
    """This environment without the variables that would point the processes elsewhere."""
    skip = (
        "MT_MANIFEST",
        "DAGSTER_HOME",
        "DAGSTER_PG_URL",
        "MT_COMPUTE_LOGS_S3",
        "AWS_ENDPOINT_URL",
        "AWS_PROFILE",
    )
    return {k: v for k, v in os.environ.items() if k not in skip}


def graphql(url: str, query: str, **variables: Any) -> dict[str, Any]:
    body = json.dumps({"query": query, "variables": variables}).encode()
    request = urllib.request.Request(
        f"{url}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        doc = json.load(response)
    assert not doc.get("errors"), f"GraphQL errors: {doc['errors']}"
    return doc["data"]


HEALTH = """{
  instance { daemonHealth { allDaemonStatuses { daemonType required healthy lastHeartbeatTime } } }
  workspaceOrError { ... on Workspace { locationEntries { name
    locationOrLoadError { __typename ... on PythonError { message } } } } }
}"""


def daemons_healthy(url: str, since: float = 0.0) -> bool:
    """Every required daemon reports healthy (with a heartbeat after `since`, a Unix time), and the
    webserver loaded the code location."""
    health = graphql(url, HEALTH)
    statuses = [s for s in health["instance"]["daemonHealth"]["allDaemonStatuses"] if s["required"]]
    [location] = health["workspaceOrError"]["locationEntries"]
    loaded = location["locationOrLoadError"]
    assert loaded is None or loaded["__typename"] != "PythonError", f"code location: {loaded['message']}"
    beating = all(s["healthy"] and (s["lastHeartbeatTime"] or 0) >= since for s in statuses)
    return loaded is not None and beating


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc), children first."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                for child in map(int, f.read().split()):
                    found += [child, *descendants(child)]
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except OSError:
        return False


@dataclass
class ControlPlane:
    """The running webserver and daemon, and what this process shares with them."""

    home: Path
    volume: Path
    env: dict[str, str]
    workspace: Path
    url: str
    logs: Path
    s3_endpoint: str
    webserver: subprocess.Popen[bytes] | None = None
    daemon: subprocess.Popen[bytes] | None = None
    daemon_starts: int = 0
    started: dict[str, float] = field(default_factory=dict)

    def start_webserver(self) -> None:
        port = int(self.url.rsplit(":", 1)[1])
        with (self.logs / "webserver.log").open("ab") as out:
            self.webserver = serve.start_webserver(
                self.home, self.env, port=port, workspace=self.workspace, output=out
            )

    def start_daemon(self) -> None:
        self.daemon_starts += 1
        with (self.logs / f"daemon-{self.daemon_starts}.log").open("ab") as out:
            self.daemon = serve.start_daemon(self.home, self.env, workspace=self.workspace, output=out)

    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        return graphql(self.url, query, **variables)

    @contextlib.contextmanager
    def instance(self) -> Iterator[dg.DagsterInstance]:
        """The same instance in this process (its configuration reads the processes' environment)."""
        with pytest.MonkeyPatch.context() as mp:
            for name, value in self.env.items():
                mp.setenv(name, value)
            with dg.DagsterInstance.from_config(str(self.home)) as instance:
                yield instance

    def wait_healthy(self, timeout: float = 180, since: float = 0.0) -> float:
        """Seconds until the webserver answers and every required daemon reports healthy, with a
        heartbeat after `since` (a restarted daemon's, not the heartbeats its predecessor left)."""
        started = time.monotonic()
        assert self.webserver is not None and self.daemon is not None
        serve.wait_for_webserver(self.url, self.webserver, timeout)
        while not daemons_healthy(self.url, since):
            assert self.daemon.poll() is None, f"the daemon exited:\n{self.log_tail()}"
            if time.monotonic() - started > timeout:
                pytest.fail(f"daemons not healthy after {timeout} s:\n{self.log_tail()}")
            time.sleep(1)
        return time.monotonic() - started

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("*.log")))

    def log_tail(self, limit: int = 4000) -> str:
        return self.log_text()[-limit:]

    def stop(self) -> None:
        serve.stop([p for p in (self.webserver, self.daemon) if p is not None])

    def compute_log_keys(self) -> list[str]:
        client = s3_client(self.s3_endpoint)
        try:
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=LOG_BUCKET, Prefix=LOG_PREFIX)
            return [o["Key"] for page in pages for o in page.get("Contents", [])]
        finally:
            client.close()


@pytest.fixture(scope="module")
def plane(
    postgres: PostgresServer, tiny_mirror: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ControlPlane]:
    base = tmp_path_factory.mktemp("plane")
    home, volume, logs = base / "dagster-home", base / "volume", base / "logs"
    for folder in (home, volume, logs):
        folder.mkdir()
    workspace = base / "workspace.yaml"
    workspace.write_text(
        yaml.safe_dump(
            {
                "load_from": [
                    {
                        "python_module": {
                            "module_name": "mt_assets_tests.deploy.code_location",
                            "location_name": "mt_assets",
                            "working_directory": str(REPO_ROOT),
                        }
                    }
                ]
            }
        )
    )
    with s3_server() as endpoint:
        s3 = s3_client(endpoint)
        s3.create_bucket(Bucket=LOG_BUCKET)
        s3.close()
        env = {
            **base_env(),
            **AWS_ENV,
            "AWS_ENDPOINT_URL_S3": endpoint,
            "DAGSTER_PG_URL": postgres.create_database("plane"),
            "MT_COMPUTE_LOGS_S3": f"s3://{LOG_BUCKET}/{LOG_PREFIX}",
            "MT_PROFILE": "tiny",
            "MT_VOLUME": str(volume),
            "MT_SOURCE": str(tiny_mirror),
            "MT_RENDER_DEVICE": "cpu",
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p),
        }
        plane = ControlPlane(home, volume, env, workspace, f"http://127.0.0.1:{free_port()}", logs, endpoint)
        t = time.monotonic()
        serve.prepare(home, env, OVERLAY)
        plane.started["prepare"] = time.monotonic() - t
        with plane.instance() as instance:
            t = time.monotonic()
            materialize_models(tiny_definitions(volume, tiny_mirror), instance)
            plane.started["materialize"] = time.monotonic() - t
        try:
            plane.start_webserver()
            plane.start_daemon()
            plane.started["processes"] = plane.wait_healthy()
            yield plane
        finally:
            plane.stop()


def kill_group(pid: int) -> list[int]:
    """SIGKILL the process group led by `pid` (the process and all it started); returns their pids."""
    pids = [pid, *descendants(pid)]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    return pids
