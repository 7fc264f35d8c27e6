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
byte of the request's Range header; 0 when it has none), and for some kinds by the query or a header
the request must have:

    proxy.drop_after(n)            send the headers and n bytes of the body, then cut the connection
    proxy.fail(500)                answer with an S3 XML error (any status and code) instead of forwarding
    proxy.corrupt(at=0)            flip one bit in the body byte at offset `at` of the response
    proxy.stall(seconds)           wait after the headers before sending the body (read timeouts)
    proxy.ignore_range()           forward without the Range header: 200 and the whole object
    proxy.ignore_if_none_match()   forward a PUT or POST without its If-None-Match header, as S3
                                   look-alikes that accept the header and ignore it do: a second
                                   "create only if absent" PUT overwrites and answers 200, not 412
    proxy.ignore_if_match()        the same for If-Match: a PUT or DELETE "only if the ETag is still
                                   this one" acts whatever the object's ETag is, answers 2xx, not 412

RunPod's S3 API (docs.runpod.io/storage/s3-api, "known issues") documents a few behaviours of its
own, imitated here:

    proxy.complete_times_out(status=524, delay=2.0)
        CompleteMultipartUpload (a POST whose query has `uploadId`) is answered `status` at once, with
        Cloudflare's short text body ("error code: 524"; RunPod's endpoints are behind Cloudflare,
        whose 524 means the origin took too long), while the request itself goes on to the server
        `delay` seconds later from a thread of the proxy: the object appears then, as RunPod's merge
        of large uploads finishes after the client's request timed out. botocore's standard retry
        mode does not retry 524, so the client sees a ClientError with code "524". The request sent
        later is recorded too (fault "complete_times_out:later", the server's status).
    proxy.repeat_continuation_token()
        RunPod's first listing of files not written through S3 computes their ETags and may answer
        a ListObjectsV2 carrying ContinuationToken T with NextContinuationToken T again, which
        botocore's paginator refuses ("The same next token was received twice"). Imitated thus: the
        proxy remembers each ListObjectsV2 page (GET with `list-type=2`) whose body has a
        NextContinuationToken T, and answers the first request carrying T with that same page again,
        byte for byte (the same keys, NextContinuationToken T); the next request carrying T is
        forwarded. Whether RunPod's repeated answer repeats the keys is not documented; repeating
        them is the harder case (a client must not count them twice). `times` pages are repeated.
    proxy.fail(507)                RunPod: the volume is full. The S3 error code sent is
    proxy.volume_full()            "InsufficientStorage" (an assumption: RunPod documents the status, not
                                   the body); fail(status) picks the code of S3_ERROR_CODES for a status
                                   unless `code` is given (502 "BadGateway", also RunPod's: retried by
                                   botocore's standard mode, as 500, 503 and 504 are)

Each request is recorded in `proxy.requests` (method, path, Range header, status, body bytes sent),
and `proxy.max_in_flight` is the most requests handled at once. `FaultyProxy(endpoint,
rate_bytes_per_s=R)` also limits the response bodies of all connections together to R bytes/s (a
token bucket): a network-bound source in front of a loopback server; request bodies (uploads) take
from a second bucket of the same rate, as a link's two directions are separate. Only loopback upstreams are allowed;
on exit the server and every open connection are closed.
"""

from __future__ import annotations

import contextlib
import html
import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs, unquote, urlsplit

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
_NEXT_TOKEN = re.compile(rb"<NextContinuationToken>([^<]*)</NextContinuationToken>")
# The S3 error code `fail(status)` sends when none is given; 507 is RunPod's "volume full" (code assumed).
S3_ERROR_CODES = {
    400: "InvalidRequest",
    403: "AccessDenied",
    404: "NoSuchKey",
    412: "PreconditionFailed",
    500: "InternalError",
    501: "NotImplemented",
    502: "BadGateway",
    503: "SlowDown",
    504: "GatewayTimeout",
    507: "InsufficientStorage",
}


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
    # drop | fail | corrupt | stall | ignore_range | ignore_if_none_match | ignore_if_match
    # | complete_times_out | repeat_token
    kind: str
    times: int | None
    method: str | None
    path_contains: str | None
    skip: int = 0
    range_start: int | None = None
    n: int = 0
    status: int = 500
    code: str = "InternalError"
    seconds: float = 0.0
    query_has: str | None = None  # a parameter the request's query must have (e.g. uploadId)
    header_has: str | None = None  # a header the request must carry (e.g. If-None-Match)
    pages: dict[str, tuple[int, list[tuple[str, str]], bytes]] = field(default_factory=dict)

    def matches(
        self, method: str, path: str, byte_range: str | None, request: _Request | None = None
    ) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.method is not None and method != self.method:
            return False
        if self.range_start is not None and _range_start(byte_range) != self.range_start:
            return False
        if self.query_has is not None and (request is None or self.query_has not in request.query):
            return False
        if self.header_has is not None and (request is None or request.headers.get(self.header_has) is None):
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


@dataclass
class _Request:
    """What a fault may match on besides method, path and Range: the query and the headers."""

    query: dict[str, list[str]]
    headers: Message


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
        self.upload_bucket = TokenBucket(rate_bytes_per_s) if rate_bytes_per_s else None
        self.requests: list[ProxiedRequest] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._faults: list[_Fault] = []
        self._later: list[threading.Thread] = []  # requests sent on after a delay (complete_times_out)
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
        for thread in self._later:
            thread.join(
                timeout=self.upstream_timeout
            )  # a delayed Complete still lands before the server stops
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
        code: str | None = None,
        *,
        times: int | None = 1,
        skip: int = 0,
        range_start: int | None = None,
        method: str | None = None,
        path_contains: str | None = None,
    ) -> None:
        """Answer the next matching request(s) with an S3 error document instead of forwarding; `code`
        defaults to S3_ERROR_CODES[status] (InternalError for a status not there)."""
        code = code or S3_ERROR_CODES.get(status, "InternalError")
        self._arm(_Fault("fail", times, method, path_contains, skip, range_start, status=status, code=code))

    def volume_full(
        self,
        *,
        times: int | None = None,
        skip: int = 0,
        method: str | None = None,
        path_contains: str | None = None,
    ) -> None:
        """Answer matching writes (PUT and POST: PutObject, UploadPart, CompleteMultipartUpload) 507
        InsufficientStorage, as RunPod does when the volume is full; every one by default."""
        for verb in (method,) if method else ("PUT", "POST"):
            self.fail(
                507, "InsufficientStorage", times=times, skip=skip, method=verb, path_contains=path_contains
            )

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

    def ignore_if_none_match(
        self,
        *,
        times: int | None = 1,
        skip: int = 0,
        method: str | None = "PUT",
        path_contains: str | None = None,
    ) -> None:
        """Forward the next matching request(s) that carry If-None-Match without it (moto checks no
        signatures): a conditional PUT on an existing key overwrites it and answers 200."""
        self._arm(
            _Fault("ignore_if_none_match", times, method, path_contains, skip, header_has="If-None-Match")
        )

    def ignore_if_match(
        self,
        *,
        times: int | None = 1,
        skip: int = 0,
        method: str | None = None,
        path_contains: str | None = None,
    ) -> None:
        """Forward the next matching request(s) that carry If-Match without it: a PUT or DELETE meant
        only for an object that still has a given ETag acts on whatever is there and answers 2xx."""
        self._arm(_Fault("ignore_if_match", times, method, path_contains, skip, header_has="If-Match"))

    def complete_times_out(
        self,
        status: int = 524,
        delay: float = 2.0,
        *,
        times: int | None = 1,
        skip: int = 0,
        path_contains: str | None = None,
    ) -> None:
        """Answer the next matching CompleteMultipartUpload(s) `status` at once and send the request
        on to the server `delay` seconds later: the object appears after the client gave up."""
        self._arm(
            _Fault(
                "complete_times_out",
                times,
                "POST",
                path_contains,
                skip,
                status=status,
                seconds=delay,
                query_has="uploadId",
            )
        )

    def repeat_continuation_token(
        self, *, times: int | None = 1, skip: int = 0, path_contains: str | None = None
    ) -> None:
        """Answer the first ListObjectsV2 carrying a continuation token T with the page that gave out T,
        again (so NextContinuationToken is T twice in a row); `skip` pages that give out a token are
        let through first, then `times` pages are repeated."""
        self._arm(_Fault("repeat_token", times, "GET", path_contains, skip, query_has="list-type"))

    def clear(self) -> None:
        """Disarm every fault and forget the request log."""
        with self._lock:
            self._faults.clear()
            self.requests.clear()
            self.max_in_flight = 0

    def _arm(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _take(self, method: str, path: str, byte_range: str | None, request: _Request) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.kind != "repeat_token" and fault.matches(method, path, byte_range, request):
                    return fault if fault.take() else None
        return None

    def _repeat_fault(self, path: str, request: _Request) -> _Fault | None:
        """The armed repeat_continuation_token fault for this listing request, if any (not consumed)."""
        with self._lock:
            for fault in self._faults:
                if fault.kind == "repeat_token" and fault.matches("GET", path, None, request):
                    return fault
        return None

    def _repeated_page(
        self, fault: _Fault, token: str | None
    ) -> tuple[int, list[tuple[str, str]], bytes] | None:
        """The page that gave out `token`, once per armed repetition; None: forward the request."""
        with self._lock:
            if token is None or token not in fault.pages or (fault.times is not None and fault.times <= 0):
                return None
            if fault.times is not None:
                fault.times -= 1
            return fault.pages.pop(token)

    def _remember_page(self, fault: _Fault, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        found = _NEXT_TOKEN.search(body)
        if status != 200 or found is None:
            return
        with self._lock:
            if fault.skip > 0:
                fault.skip -= 1
                return
            fault.pages[html.unescape(found.group(1).decode())] = (status, headers, body)

    # -- observations ------------------------------------------------------------------------

    def gets(self, path_contains: str = "") -> list[ProxiedRequest]:
        """The GET requests so far whose path contains `path_contains`."""
        with self._lock:
            return [r for r in self.requests if r.method == "GET" and path_contains in r.path]

    def _send_later(
        self, target: str, path: str, headers: dict[str, str], body: bytes | None, delay: float
    ) -> None:
        """Send a request on to the server `delay` seconds from now, from a thread (complete_times_out)."""

        def send() -> None:
            record = ProxiedRequest("POST", path, None, fault="complete_times_out:later")
            time.sleep(delay)
            self._record(record, +1)
            upstream = http.client.HTTPConnection(
                self.upstream_host, self.upstream_port, timeout=self.upstream_timeout
            )
            try:
                upstream.request("POST", target, body=body, headers=headers)
                response = upstream.getresponse()
                record.body_bytes = len(response.read())
                record.status = response.status
            except OSError:
                record.status = -1  # the server went away (the test ended first)
            finally:
                upstream.close()
                self._record(record, -1)

        thread = threading.Thread(target=send, name="faultyproxy-later", daemon=True)
        with self._lock:
            self._later.append(thread)
        thread.start()

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
        body = self._read_body(length) if length else None
        request = _Request(parse_qs(urlsplit(self.path).query, keep_blank_values=True), self.headers)
        repeat = owner._repeat_fault(record.path, request) if self.command == "GET" else None
        if repeat is not None:
            self._list_repeating(repeat, request, record)
            return
        fault = owner._take(self.command, record.path, record.range, request)
        record.fault = fault.kind if fault else None
        if fault is not None and fault.kind == "complete_times_out":
            owner._send_later(self.path, record.path, self._upstream_headers(None), body, fault.seconds)
            record.status = fault.status
            self._send_plain(
                fault.status, f"error code: {fault.status}".encode(), reason="A Timeout Occurred"
            )
            record.body_bytes = len(f"error code: {fault.status}")
            return
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
            upstream.request(self.command, self.path, body=body, headers=self._upstream_headers(fault))
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

    def _read_body(self, length: int) -> bytes:
        """The request body, at the upload rate when the proxy limits it."""
        limit = self.owner.upload_bucket
        if limit is None:
            return self.rfile.read(length)
        chunks = []
        while length > 0:
            chunk = self.rfile.read(min(_BLOCK, length))
            if not chunk:
                break
            limit.take(len(chunk))
            chunks.append(chunk)
            length -= len(chunk)
        return b"".join(chunks)

    def _upstream_headers(self, fault: _Fault | None) -> dict[str, str]:
        """The request's headers as forwarded: without hop-by-hop ones, and without what a fault strips."""
        dropped = set(_HOP_BY_HOP)
        if fault is not None and fault.kind == "ignore_range":
            dropped.add("range")
        if fault is not None and fault.kind == "ignore_if_none_match":
            dropped.add("if-none-match")
        if fault is not None and fault.kind == "ignore_if_match":
            dropped.add("if-match")
        return {k: v for k, v in self.headers.items() if k.lower() not in dropped}

    def _list_repeating(self, fault: _Fault, request: _Request, record: ProxiedRequest) -> None:
        """A ListObjectsV2 while repeat_continuation_token is armed: the page again, or forwarded (and
        remembered when it gives out a continuation token)."""
        owner = self.owner
        token = request.query.get("continuation-token", [None])[0]
        page = owner._repeated_page(fault, token)
        if page is not None:
            record.fault = "repeat_continuation_token"
            status, headers, payload = page
        else:
            upstream = http.client.HTTPConnection(
                owner.upstream_host, owner.upstream_port, timeout=owner.upstream_timeout
            )
            try:
                upstream.request("GET", self.path, headers=self._upstream_headers(None))
                response = upstream.getresponse()
                payload = response.read()
                status = response.status
                headers = [
                    (k, v)
                    for k, v in response.getheaders()
                    if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length"
                ]
            finally:
                upstream.close()
            owner._remember_page(fault, status, headers, payload)
        record.status = status
        self.send_response_only(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        record.body_bytes = len(payload)

    def _send_plain(self, status: int, payload: bytes, reason: str | None = None) -> None:
        self.send_response_only(status, reason)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
