"""A RunPod serverless endpoint on loopback, written from RunPod's documented queue API, for tests.

Hosted layout (`api_base` = http://127.0.0.1:<port>/v2, as https://api.runpod.ai/v2):

    POST      /v2/<endpoint>/run          {"input": {...}}  -> {"id", "status": "IN_QUEUE"}
    GET|POST  /v2/<endpoint>/status/<id>                    -> {"id", "status", "delayTime", "executionTime",
                                                                "output"?, "error"?}
    POST      /v2/<endpoint>/cancel/<id>                    -> {"id", "status": "CANCELLED"}
    GET       /v2/<endpoint>/health                         -> {"jobs": {...}, "workers": {...}}

With `local_sdk=True` it has the SDK's local test API's shape instead (`--rp_serve_api`): routes at the
root (`api_base` = http://127.0.0.1:<port>), POST only, no /cancel and no /health.

Every request must carry `authorization: Bearer <api_key>`; otherwise 401, with a body that echoes the
header it got (as a careless proxy might), so a client that quotes error bodies must scrub its key.

A job follows the `Script` that `endpoint.script(input)` gives, by the clock: `queue_seconds` IN_QUEUE,
then IN_PROGRESS showing each progress message for its seconds (as the worker's progress_update
does), then, once `hold` (an Event) is set if there is one, its outcome: COMPLETED with `output` (a value,
or `output(input, job_id)` called once), FAILED with `error`, or TIMED_OUT. delayTime is the queue time
and executionTime the time in progress, in ms. A cancelled job answers CANCELLED from then on.

Scripted faults: `endpoint.fault(op, status=429, times=1, retry_after="1")` answers the next `times`
requests of an op (run, status, cancel, health) with that status; a job goes on meanwhile, as on
RunPod, where a lost /status answer does not stop the worker. Every request is recorded
(`requests`: method, op, job id, monotonic time, whether authorized, body), and every job's window, from
its /run to the first final status served (`windows()`, `max_overlap()`), for concurrency checks.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ENDPOINT_ID = "ep-test"


@dataclass
class Script:
    queue_seconds: float = 0.0
    progress: Sequence[tuple[Any, float]] = ()  # (message, seconds it is shown)
    hold: threading.Event | None = None  # stays IN_PROGRESS after the progress until this is set
    outcome: str = "COMPLETED"  # COMPLETED | FAILED | TIMED_OUT
    output: Any = None  # COMPLETED: the output, or output(input, job_id) -> the output
    error: Any = None  # FAILED: the error field


@dataclass(frozen=True)
class Request:
    method: str
    op: str
    job_id: str | None
    at: float  # time.monotonic()
    authorized: bool
    body: Any


@dataclass
class Job:
    id: str
    input: Any
    script: Script
    submitted: float
    cancelled: float | None = None
    held_until: float | None = None  # when the hold was first seen set
    final: dict[str, Any] | None = None
    final_served: float | None = None

    def answer(self, now: float) -> dict[str, Any]:
        if self.final is not None:
            return self.final
        s = self.script
        if self.cancelled is not None:
            return self._finish({"status": "CANCELLED"}, now)
        started = self.submitted + s.queue_seconds
        if now < started:
            return {"id": self.id, "status": "IN_QUEUE"}
        shown = None
        end = started
        for message, seconds in s.progress:
            shown = message
            end += seconds
            if now < end:
                return self._progress(message)
        if s.hold is not None:
            if not s.hold.is_set():
                return self._progress(shown)
            if self.held_until is None:
                self.held_until = now
            end = max(end, self.held_until)
        execution = {
            "delayTime": round(s.queue_seconds * 1000),
            "executionTime": round((end - started) * 1000),
        }
        if s.outcome == "COMPLETED":
            output = s.output(self.input, self.id) if callable(s.output) else s.output
            return self._finish({"status": "COMPLETED", "output": output, **execution}, now)
        if s.outcome == "FAILED":
            return self._finish({"status": "FAILED", "error": s.error, **execution}, now)
        return self._finish({"status": s.outcome, **execution}, now)

    def _progress(self, message: Any) -> dict[str, Any]:
        doc: dict[str, Any] = {"id": self.id, "status": "IN_PROGRESS", "delayTime": 0}
        if message is not None:
            doc["output"] = message
        return doc

    def _finish(self, doc: dict[str, Any], now: float) -> dict[str, Any]:
        self.final = {"id": self.id, **doc}
        self.final_served = now
        return self.final


class Endpoint:
    """The endpoint's state; the HTTP server is `runpod_endpoint()`."""

    def __init__(self, api_key: str, *, endpoint_id: str = ENDPOINT_ID, local_sdk: bool = False) -> None:
        self.api_key = api_key
        self.endpoint_id = endpoint_id
        self.local_sdk = local_sdk
        self.script: Callable[[Any], Script] = lambda _input: Script()
        self.requests: list[Request] = []
        self.jobs: dict[str, Job] = {}
        self.api_base = ""  # set once the server listens
        self._faults: dict[str, list[tuple[int, str | None]]] = {}
        self._ids = itertools.count(1)
        self.lock = threading.Lock()

    # -- scripting and inspection ------------------------------------------------------------------

    def fault(self, op: str, *, status: int = 429, times: int = 1, retry_after: str | None = "1") -> None:
        with self.lock:
            self._faults.setdefault(op, []).extend([(status, retry_after)] * times)

    def of(self, op: str, job_id: str | None = None) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.op == op and (job_id is None or r.job_id == job_id)]

    def windows(self) -> list[tuple[float, float]]:
        """(from /run, to the first final status served) of every job; unfinished ones end now."""
        now = time.monotonic()
        with self.lock:
            return [(j.submitted, j.final_served or now) for j in self.jobs.values()]

    def max_overlap(self) -> int:
        edges = sorted(e for start, end in self.windows() for e in ((start, 1), (end, -1)))
        running = most = 0
        for _, step in edges:
            running += step
            most = max(most, running)
        return most

    def in_flight(self) -> list[Job]:
        with self.lock:
            return [j for j in self.jobs.values() if j.final is None]

    # -- the API -----------------------------------------------------------------------------------

    def handle(self, method: str, path: str, authorization: str | None, body: Any) -> tuple[int, dict, Any]:
        """(HTTP status, extra headers, JSON body) for one request."""
        now = time.monotonic()
        route = self._route(path)
        if route is None:
            return 404, {}, {"error": f"no route {path}"}
        op, job_id = route
        authorized = authorization == f"Bearer {self.api_key}"
        with self.lock:
            self.requests.append(Request(method, op, job_id, now, authorized, body))
            if not authorized:
                return 401, {}, {"error": f"unauthorized: {authorization!r} is not a valid API key"}
            allowed = {"run": ("POST",), "status": ("GET", "POST"), "cancel": ("POST",), "health": ("GET",)}
            if method not in (("POST",) if self.local_sdk else allowed[op]):
                return 405, {}, {"error": f"{method} not allowed on /{op}"}
            faults = self._faults.get(op)
            if faults:
                if op == "status" and job_id in self.jobs:
                    self.jobs[job_id].answer(now)  # the job goes on whether or not its answer gets through
                code, retry_after = faults.pop(0)
                return code, ({"Retry-After": retry_after} if retry_after else {}), {"error": f"HTTP {code}"}
            if op == "run":
                if not isinstance(body, dict) or "input" not in body:
                    return 400, {}, {"error": "the body must be {'input': ...}"}
                job = Job(f"job-{next(self._ids)}", body["input"], self.script(body["input"]), now)
                self.jobs[job.id] = job
                return 200, {}, {"id": job.id, "status": "IN_QUEUE"}
            if op == "health":
                busy = sum(j.final is None for j in self.jobs.values())
                done = sum(j.final is not None for j in self.jobs.values())
                return (
                    200,
                    {},
                    {"jobs": {"inProgress": busy, "completed": done}, "workers": {"running": busy}},
                )
            job = self.jobs.get(job_id or "")
            if job is None:
                return 404, {}, {"error": f"job {job_id} not found"}
            if op == "cancel" and job.final is None:
                job.cancelled = now
            return 200, {}, job.answer(now)

    def _route(self, path: str) -> tuple[str, str | None] | None:
        path = path.split("?", 1)[0]
        prefix = "" if self.local_sdk else f"/v2/{self.endpoint_id}"
        if not path.startswith(prefix + "/"):
            return None
        rest = path[len(prefix) + 1 :]
        if rest == "run" or (rest == "health" and not self.local_sdk):
            return rest, None
        match = re.fullmatch(r"(status|cancel)/([A-Za-z0-9_-]+)", rest)
        if match is None or (self.local_sdk and match[1] == "cancel"):
            return None
        return match[1], match[2]


class _Handler(BaseHTTPRequestHandler):
    endpoint: Endpoint  # set on the subclass made per server

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        status, headers, doc = self.endpoint.handle(
            method, self.path, self.headers.get("authorization"), body
        )
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read `requests` instead
        pass


@contextlib.contextmanager
def runpod_endpoint(api_key: str, *, local_sdk: bool = False) -> Iterator[Endpoint]:
    """An endpoint listening on a free loopback port until the block ends."""
    endpoint = Endpoint(api_key, local_sdk=local_sdk)
    handler = type("Handler", (_Handler,), {"endpoint": endpoint})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    host, port = server.server_address[:2]
    endpoint.api_base = f"http://{host}:{port}" + ("" if local_sdk else "/v2")
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="runpod-endpoint", daemon=True
    )
    thread.start()
    try:
        yield endpoint
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
