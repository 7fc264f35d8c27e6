"""A real S3-compatible server on loopback for tests and benchmarks, and a proxy that breaks it.

`s3_server()` starts moto's `moto_server` (moto[server], the venv's own) as a subprocess on a free
127.0.0.1 port, waits until it answers HTTP, yields its endpoint URL, and always stops it. moto
accepts any credentials; tests set dummy ones (AWS_ACCESS_KEY_ID=testing, ...). Objects larger
than ~5 MB are spooled to temporary files by moto, so a few GB fit without memory trouble, but
every GET, ranged or not, reads the whole object on the server side: prefer large ranges.

`put_tree(endpoint, bucket, prefix, files)` creates the bucket if needed and puts the objects.

`FaultyProxy(endpoint)` is a threaded HTTP/1.1 forwarder on 127.0.0.1 in front of it. Point the
client at `proxy.url`; requests pass through unchanged (the Host header too, so signatures stay
valid) unless a fault matches. A fault applies to `times` matching requests (None: every one)
after letting the first `skip` through; faults are matched in the order they were armed, by
`method`, `path_contains` (the unquoted path is /<bucket>/<key>) and `range_start` (the first
byte of the request's Range header; 0 when it has none):

    proxy.drop_after(n)            send the headers and n bytes of the body, then cut the connection
    proxy.fail(500)                answer with an S3 XML error (any status and code) instead of forwarding
    proxy.corrupt(at=0)            flip one bit in the body byte at offset `at` of the response
    proxy.stall(seconds)           wait after the headers before sending the body (read timeouts)
    proxy.ignore_range()           forward without the Range header: 200 and the whole object

Each request is recorded in `proxy.requests` (method, path, Range header, status, body bytes sent),
and `proxy.max_in_flight` is the most requests handled at once. `FaultyProxy(endpoint,
rate_bytes_per_s=R)` also limits the response bodies of all connections together to R bytes/s (a
token bucket): a network-bound source in front of a loopback server. Only loopback upstreams are allowed;
on exit the server and every open connection are closed.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

import boto3
from botocore.config import Config

from mt_assets_tests.processes import free_port

DUMMY_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
LOOPBACK = ("127.0.0.1", "localhost", "::1")
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
}
_BLOCK = 256 * 1024


class S3ServerError(RuntimeError):
    """moto_server did not start."""


def moto_server_command(port: int) -> list[str]:
    exe = Path(sys.executable).parent / "moto_server"
    if exe.exists():
        return [str(exe), "-H", "127.0.0.1", "-p", str(port)]
    found = shutil.which("moto_server")
    if found:
        return [found, "-H", "127.0.0.1", "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


def _answers(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/moto-api/")
        conn.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        conn.close()


def _tail(log: IO[bytes], limit: int = 2000) -> str:
    log.flush()
    log.seek(0)
    return log.read().decode(errors="replace")[-limit:]


@contextlib.contextmanager
def s3_server(*, startup_timeout: float = 30.0, env: dict[str, str] | None = None) -> Iterator[str]:
    """Run moto_server on a free loopback port; yield its endpoint URL (http://127.0.0.1:<port>)."""
    with tempfile.TemporaryFile(prefix="moto-server-", suffix=".log") as log:
        for _attempt in range(3):  # the free port may be taken before moto binds it
            port = free_port()
            proc = subprocess.Popen(
                moto_server_command(port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )
            try:
                deadline = time.monotonic() + startup_timeout
                while proc.poll() is None and not _answers(port):
                    if time.monotonic() > deadline:
                        raise S3ServerError(
                            f"moto_server on port {port} did not answer within {startup_timeout:g} s:\n"
                            + _tail(log)
                        )
                    time.sleep(0.05)
                if proc.poll() is None:
                    yield f"http://127.0.0.1:{port}"
                    return
            finally:
                _stop(proc)
        raise S3ServerError(f"moto_server exited at start-up (status {proc.returncode}):\n{_tail(log)}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def s3_client(endpoint: str, **config: Any) -> Any:
    """A plain boto3 S3 client for the server, with dummy credentials (for setting up tests)."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            **config,
        ),
        **DUMMY_CREDENTIALS,
    )


def put_tree(endpoint: str, bucket: str, prefix: str, files: dict[str, bytes]) -> list[str]:
    """Create `bucket` if it does not exist and put `files` at <prefix>/<key>; returns the keys."""
    client = s3_client(endpoint)
    try:
        try:
            client.head_bucket(Bucket=bucket)
        except client.exceptions.ClientError:
            client.create_bucket(Bucket=bucket)
        keys = []
        for key, data in files.items():
            full = f"{prefix.strip('/')}/{key}" if prefix.strip("/") else key
            client.put_object(Bucket=bucket, Key=full, Body=data)
            keys.append(full)
        return keys
    finally:
        client.close()


# -- the fault-injecting proxy ---------------------------------------------------------------


@dataclass
class ProxiedRequest:
    method: str
    path: str  # unquoted, without the query
    range: str | None
    status: int = 0
    body_bytes: int = 0  # response body bytes sent to the client
    fault: str | None = None


@dataclass
class _Fault:
    kind: str  # drop | fail | corrupt | stall | ignore_range
    times: int | None
    method: str | None
    path_contains: str | None
    skip: int = 0
    range_start: int | None = None
    n: int = 0
    status: int = 500
    code: str = "InternalError"
    seconds: float = 0.0

    def matches(self, method: str, path: str, byte_range: str | None) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.method is not None and method != self.method:
            return False
        if self.range_start is not None and _range_start(byte_range) != self.range_start:
            return False
        return self.path_contains is None or self.path_contains in path

    def take(self) -> bool:
        """Count one matching request; True when the fault applies to it (past `skip`)."""
        if self.skip > 0:
            self.skip -= 1
            return False
        if self.times is not None:
            self.times -= 1
        return True


class TokenBucket:
    """At most `rate` bytes per second through every connection together (bursts up to 50 ms worth).

    `take(n)` books n bytes and sleeps until the bucket has paid for them: concurrent takers queue up
    in booking order, so the aggregate rate holds however many requests are in flight.
    """

    def __init__(self, rate: float) -> None:
        self.rate = float(rate)
        self.burst = max(self.rate / 20, float(_BLOCK))
        self.tokens = self.burst
        self.stamp = time.monotonic()
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        with self._lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            self.tokens -= n
            wait = -self.tokens / self.rate if self.tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)


class FaultyProxy:
    """A loopback HTTP forwarder to `upstream` that can drop, fail, corrupt or stall responses."""

    def __init__(
        self, upstream: str, *, upstream_timeout: float = 60.0, rate_bytes_per_s: float | None = None
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or parts.hostname not in LOOPBACK or parts.port is None:
            raise ValueError(f"FaultyProxy: upstream must be http://<loopback>:<port>, got {upstream!r}")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port
        self.upstream_timeout = upstream_timeout
        self.bucket = TokenBucket(rate_bytes_per_s) if rate_bytes_per_s else None
        self.requests: list[ProxiedRequest] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FaultyProxy:
        proxy = self

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

        class Handler(_Handler):
            owner = proxy

        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            for conn in list(self._connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> FaultyProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults ------------------------------------------------------------------------------

    def drop_after(
        self,
        n: int,
        *,
        times: int | None = 1,
        skip: int = 0,
        range_start: int | None = None,
        method: str | None = "GET",
        path_contains: str | None = None,
    ) -> None:
        """Send the headers and `n` body bytes of the next matching response(s), then cut the connection."""
        self._arm(_Fault("drop", times, method, path_contains, skip, range_start, n=n))

    def fail(
        self,
        status: int = 500,
        code: str = "InternalError",
        *,
        times: int | None = 1,
        skip: int = 0,
        range_start: int | None = None,
        method: str | None = None,
        path_contains: str | None = None,
    ) -> None:
        """Answer the next matching request(s) with an S3 error document instead of forwarding."""
        self._arm(_Fault("fail", times, method, path_contains, skip, range_start, status=status, code=code))

    def corrupt(
        self,
        at: int = 0,
        *,
        times: int | None = 1,
        skip: int = 0,
        range_start: int | None = None,
        method: str | None = "GET",
        path_contains: str | None = None,
    ) -> None:
        """Flip the lowest bit of body byte `at` of the next matching response(s)."""
        self._arm(_Fault("corrupt", times, method, path_contains, skip, range_start, n=at))

    def stall(
        self,
        seconds: float,
        *,
        times: int | None = 1,
        skip: int = 0,
        range_start: int | None = None,
        method: str | None = "GET",
        path_contains: str | None = None,
    ) -> None:
        """Wait `seconds` after the headers of the next matching response(s), before the body."""
        self._arm(_Fault("stall", times, method, path_contains, skip, range_start, seconds=seconds))

    def ignore_range(
        self,
        *,
        times: int | None = 1,
        skip: int = 0,
        range_start: int | None = None,
        method: str | None = "GET",
        path_contains: str | None = None,
    ) -> None:
        """Forward the next matching request(s) without their Range header, as a server that
        does not do ranges would answer: 200 with the whole object."""
        self._arm(_Fault("ignore_range", times, method, path_contains, skip, range_start))

    def clear(self) -> None:
        """Disarm every fault and forget the request log."""
        with self._lock:
            self._faults.clear()
            self.requests.clear()
            self.max_in_flight = 0

    def _arm(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _take(self, method: str, path: str, byte_range: str | None) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path, byte_range):
                    return fault if fault.take() else None
        return None

    # -- observations ------------------------------------------------------------------------

    def gets(self, path_contains: str = "") -> list[ProxiedRequest]:
        """The GET requests so far whose path contains `path_contains`."""
        with self._lock:
            return [r for r in self.requests if r.method == "GET" and path_contains in r.path]

    def _record(self, request: ProxiedRequest, delta: int) -> None:
        with self._lock:
            if delta > 0:
                self.requests.append(request)
            self._in_flight += delta
            self.max_in_flight = max(self.max_in_flight, self._in_flight)


def _range_start(byte_range: str | None) -> int | None:
    if not byte_range:
        return 0
    first = byte_range.removeprefix("bytes=").split("-", 1)[0]
    return int(first) if first.isdigit() else None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60  # an idle keep-alive connection is closed after this
    owner: FaultyProxy

    def setup(self) -> None:
        super().setup()
        with self.owner._lock:
            self.owner._connections.add(self.connection)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        with self.owner._lock:
            self.owner._connections.discard(self.connection)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output quiet; proxy.requests is the log

    def do_GET(self) -> None:
        self._forward()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    def _forward(self) -> None:
        owner = self.owner
        path = unquote(urlsplit(self.path).path)
        record = ProxiedRequest(self.command, path, self.headers.get("Range"))
        owner._record(record, +1)
        try:
            self._handle(record)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away (a timeout, a cancelled part)
        finally:
            owner._record(record, -1)

    def _handle(self, record: ProxiedRequest) -> None:
        owner = self.owner
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self._send_plain(501, b"FaultyProxy does not forward chunked request bodies")
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        fault = owner._take(self.command, record.path, record.range)
        record.fault = fault.kind if fault else None
        if fault is not None and fault.kind == "fail":
            record.status = fault.status
            payload = (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{fault.code}</Code><Message>injected by FaultyProxy</Message>"
                "<RequestId>faultyproxy</RequestId></Error>"
            ).encode()
            self.send_response_only(fault.status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
                record.body_bytes = len(payload)
            return

        upstream = http.client.HTTPConnection(
            owner.upstream_host, owner.upstream_port, timeout=owner.upstream_timeout
        )
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            if fault is not None and fault.kind == "ignore_range":
                headers = {k: v for k, v in headers.items() if k.lower() != "range"}
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            record.status = response.status
            response_headers = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
            buffered: bytes | None = None
            if self.command != "HEAD" and response.getheader("Content-Length") is None:
                buffered = response.read()
                response_headers.append(("Content-Length", str(len(buffered))))
            self.send_response_only(response.status, response.reason)
            for k, v in response_headers:
                self.send_header(k, v)
            self.end_headers()
            if self.command == "HEAD":
                response.read()
                return
            if fault is not None and fault.kind == "stall":
                self.wfile.flush()
                time.sleep(fault.seconds)
            self._send_body(response, buffered, fault, record)
        finally:
            upstream.close()

    def _send_body(
        self,
        response: http.client.HTTPResponse,
        buffered: bytes | None,
        fault: _Fault | None,
        record: ProxiedRequest,
    ) -> None:
        sent = 0
        pending = [buffered] if buffered is not None else None
        while True:
            chunk = (pending.pop() if pending else b"") if pending is not None else response.read(_BLOCK)
            if not chunk:
                return
            if fault is not None and fault.kind == "corrupt" and sent <= fault.n < sent + len(chunk):
                mutable = bytearray(chunk)
                mutable[fault.n - sent] ^= 0x01
                chunk = bytes(mutable)
            if fault is not None and fault.kind == "drop" and sent + len(chunk) >= fault.n:
                self.wfile.write(chunk[: fault.n - sent])
                self.wfile.flush()
                record.body_bytes = fault.n
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            if self.owner.bucket is not None:
                self.owner.bucket.take(len(chunk))
            self.wfile.write(chunk)
            sent += len(chunk)
            record.body_bytes = sent

    def _send_plain(self, status: int, payload: bytes) -> None:
        self.send_response_only(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
