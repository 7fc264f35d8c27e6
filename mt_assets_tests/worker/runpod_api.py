"""The RunPod SDK's local API server running our worker, and a recorder for progress updates.

`local_api(env, log_dir)` starts `python -m mt_assets.worker --rp_serve_api --rp_api_host 127.0.0.1
--rp_api_port <free port>` with `env`, waits until the server answers (GET / is its docs page), yields
a `LocalApi`, and always stops the process. Its stdout and stderr go to files in `log_dir`, so a test
can read everything the worker printed (`api.logs()`).

The local server's routes are all POST: `/runsync` runs the job now and answers with its result;
`/run` only queues it (answering its id) and the job runs when `/status/{id}` is POSTed.

`ProgressRecorder` is an HTTP server on loopback that stands in for RunPod's job-output webhook:
with RUNPOD_WEBHOOK_POST_OUTPUT=`recorder.template` the SDK's `progress_update` posts each update
there (`{"status": "IN_PROGRESS", "output": <update>}` as the request body), and the recorder keeps
them per job id.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from mt_assets_tests.processes import free_port


class LocalApiError(RuntimeError):
    """The worker's local API server did not come up."""


@dataclass
class LocalApi:
    url: str
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    responses: list[dict[str, Any]] = field(default_factory=list)  # every answer, for the secrets test

    def post(self, route: str, body: dict[str, Any] | None = None, *, timeout: float = 300) -> dict[str, Any]:
        request = urllib.request.Request(
            self.url + route,
            data=json.dumps(body or {}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read())
        self.responses.append(answer)
        return answer

    def runsync(self, job_input: dict[str, Any]) -> dict[str, Any]:
        return self.post("/runsync", {"input": job_input})

    def logs(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def local_api(env: dict[str, str], log_dir: Path, *, startup_timeout: float = 180.0) -> Iterator[LocalApi]:
    log_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):  # the free port may be taken before uvicorn binds it
        port = free_port()
        stdout, stderr = log_dir / f"worker-{attempt}.out", log_dir / f"worker-{attempt}.err"
        with open(stdout, "wb") as out, open(stderr, "wb") as err:
            process = subprocess.Popen(
                [sys.executable, "-m", "mt_assets.worker", "--rp_serve_api", "--rp_api_host", "127.0.0.1",
                 "--rp_api_port", str(port)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, cwd=log_dir,
            )  # fmt: skip
        api = LocalApi(f"http://127.0.0.1:{port}", process, stdout, stderr)
        try:
            deadline = time.monotonic() + startup_timeout
            while process.poll() is None and not _answers(api.url):
                if time.monotonic() > deadline:
                    raise LocalApiError(
                        f"the worker's API did not answer within {startup_timeout:g} s:\n{api.logs()[-3000:]}"
                    )
                time.sleep(0.2)
            if process.poll() is None:
                yield api
                return
            if "address already in use" not in api.logs():
                raise LocalApiError(
                    f"the worker exited at start (status {process.returncode}):\n{api.logs()[-3000:]}"
                )
        finally:
            _stop(process)
    raise LocalApiError(f"no free port for the worker's API after 3 tries:\n{api.logs()[-3000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


class ProgressRecorder:
    """Records what the SDK's progress_update posts, per job id (the $ID of the template)."""

    def __init__(self) -> None:
        self.updates: dict[str, list[dict[str, Any]]] = {}
        self.requests: list[str] = []  # the request paths and queries, as they arrived
        self._lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                job_id = unquote(urlsplit(self.path).path).rsplit("/", 1)[-1]
                with recorder._lock:
                    recorder.requests.append(self.path)
                    recorder.updates.setdefault(job_id, []).append(body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.template = f"http://127.0.0.1:{self._server.server_address[1]}/progress/$ID?gpu=test"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> ProgressRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def outputs(self, job_id: str, *, wait_for: int = 0, timeout: float = 10.0) -> list[Any]:
        """The updates posted for `job_id` (each one's `output`), waiting until there are `wait_for`:
        progress_update posts from a thread of its own, so the last may land after the response."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                posted = [u.get("output") for u in self.updates.get(job_id, [])]
            if len(posted) >= wait_for or time.monotonic() > deadline:
                return posted
            time.sleep(0.05)
