"""An S3-compatible bucket as a source: RunPod's S3 API onto a network volume, MinIO, or AWS S3.

Layout: the volume's own `<dir>/<path>` layout under a key prefix,

    s3://<bucket>/<prefix>/<dir>/<path>      e.g. s3://models/wan/Wan2.1-I2V-14B-480P/Wan2.1_VAE.pth

so a bucket can be filled with `aws s3 sync <mirror folder> s3://bucket/prefix`, and a RunPod
volume seen through its S3 API (bucket = volume id) serves its own `models/` folder with
`s3://<volume id>/models`. A prefix that holds `models/` is a volume's root instead (`holds_volume`,
one ListObjectsV2 of one key when the source is opened): open_source reads it as a volume
(`as_volume`, sources/volume.py: replication).

Protocol, per file: one HeadObject (the object's size, checked against the manifest's `size`
before any byte is fetched), then GetObject with a byte Range. Besides that one listing, only GET and
HEAD are used: no presigned URLs, no DeleteObjects.

Resume: `supports_ranges` is true; the fetch starts at `writer.resume_from` with
`Range: bytes=<resume_from>-`. A server that ignores the range (200 with the whole body) makes the
writer restart from zero.

Concurrency: an object larger than `chunk_size` is fetched as byte ranges of `chunk_size`,
several at once on a thread pool shared by every fetch of this source (`max_concurrency` ranged
GETs in flight in all, across files). The parts are written into the writer in order, so the
sha256 is computed in one pass over the bytes while later parts are still downloading; at most
`window_bytes` (at least two parts) of one file are held in memory ahead of the writer. Parts are
read into reused buffers and handed to the writer in 1 MiB writes (both measured: see volume/buffers.py
and _fetch_ranges). A part that fails stops the fetch after the parts before it were written, so
a retry resumes there. An object no larger than `chunk_size` (or a resumed remainder that small)
is one streaming GET.

Errors, as sources/base.py defines them:

    SourceError           no such object / bucket; the object's size differs from the manifest;
                          access denied, unknown access key, signature mismatch, missing
                          credentials (the message names AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
                          never their values); wrong region
    TransientSourceError  connection refused or dropped, connect/read timeouts, a body cut short
                          (IncompleteRead, ResponseStreamingError), HTTP 5xx, SlowDown and other
                          throttling, after botocore's own retries (standard mode)

Messages name the file's target and `s3://bucket/prefix/<dir>/<path>`, and the endpoint without
any userinfo; credential values are scrubbed from anything a server sent back.

Configuration: the client is mt_assets.config.s3_client's (boto3's usual chain). The endpoint
comes from `endpoint_url`, else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL; credentials from AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY (or a profile); the region from `region`, AWS_REGION, AWS_DEFAULT_REGION or
the profile, else us-east-1. With a custom endpoint, path-style addressing is used
(`<endpoint>/<bucket>/<key>`: MinIO expects it, and it needs no wildcard DNS name or certificate for
`<bucket>.<host>`); pass `addressing_style="virtual"` for a server that wants the bucket in the
host name. Retries use botocore's standard mode
(AWS_MAX_ATTEMPTS or `max_attempts`; default 3 attempts). Flexible checksums are only
sent/validated when an operation requires them: the manifest's sha256 is the check, and some
S3-compatible servers reject the newer checksum headers.

RunPod notes (https://s3api-<datacenter>.runpod.io/, region = datacenter id such as eu-ro-1,
bucket = network volume id, keys from an "S3 API key": access `user_…`, secret `rps_…`):
DeleteObjects and presigned URLs are not supported, and neither is needed here. ETags of files not
written through the S3 API are computed lazily, so the first request touching a large volume can
be slow: the read timeout is generous and standard retry mode retries what fails. A first
*listing* can take minutes ("same next token received twice"); this source never lists.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import (
    BotoCoreError,
    ChecksumError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
)

from mt_assets import config
from mt_assets.manifest import ManifestFile
from mt_assets.sources.base import Source, SourceError, TransientSourceError
from mt_assets.sources.s3_errors import error_code, http_status, is_not_found
from mt_assets.volume import AtomicWriter
from mt_assets.volume.base import Writer
from mt_assets.volume.buffers import BufferPool
from mt_assets.volume.direct import aligned_buffer

MiB = 1024 * 1024
DEFAULT_CHUNK_SIZE = 16 * MiB
DEFAULT_MAX_CONCURRENCY = 8
DEFAULT_WINDOW_BYTES = 128 * MiB
STREAM_BLOCK = 1 * MiB
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 120.0  # RunPod computes ETags of large files lazily on first access

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IP_ADDRESS = re.compile(r"^\d+\.\d+\.\d+\.\d+$")

_CREDENTIALS = {
    "InvalidAccessKeyId": "the access key is not known to the endpoint: check AWS_ACCESS_KEY_ID",
    "SignatureDoesNotMatch": (
        "the request signature does not match: check AWS_SECRET_ACCESS_KEY (and that it belongs to "
        "AWS_ACCESS_KEY_ID)"
    ),
    "ExpiredToken": "the session token has expired: refresh AWS_SESSION_TOKEN",
    "InvalidToken": "the session token is not valid: check AWS_SESSION_TOKEN",
    "TokenRefreshRequired": "the session token has expired: refresh AWS_SESSION_TOKEN",
}
_DENIED = {"AccessDenied", "403", "AllAccessDisabled", "Forbidden"}
_WRONG_REGION = {
    "AuthorizationHeaderMalformed",
    "PermanentRedirect",
    "301",
    "IllegalLocationConstraintException",
}
_THROTTLED = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequests",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "RequestTimeout",
    "RequestTimeoutException",
    "PriorRequestNotComplete",
    "InternalError",
    "ServiceUnavailable",
}


def check_bucket_name(name: str) -> str | None:
    """Why `name` is not a valid S3 bucket name (the general-purpose bucket rules), or None."""
    if not 3 <= len(name) <= 63:
        return f"must be 3 to 63 characters long, got {len(name)}"
    if not _BUCKET.match(name):
        return (
            "may only contain lowercase letters, digits, '.' and '-', and must begin and end "
            "with a letter or digit"
        )
    if ".." in name:
        return "must not contain two adjacent periods"
    if _IP_ADDRESS.match(name):
        return "must not be formatted as an IP address"
    if name.startswith(("xn--", "sthree-")) or name.endswith(("-s3alias", "--ol-s3")):
        return "must not use a prefix or suffix reserved by S3"
    return None


def check_key_prefix(prefix: str) -> str | None:
    """Why `prefix` is not a safe key prefix ('/'-separated, relative), or None ('' is the bucket root)."""
    if prefix == "":
        return None
    if "\\" in prefix:
        return "must use '/' separators, not backslashes"
    if prefix.startswith("/"):
        return "must not begin with '/'"
    if "\x00" in prefix or any(ord(c) < 0x20 for c in prefix):
        return "must not contain control characters"
    parts = prefix.split("/")
    if ".." in parts:
        return "must not contain '..'"
    if any(p in ("", ".") for p in parts):
        return "must not contain empty or '.' segments"
    return None


def parse_s3_uri(uri: str, *, role: str = "source") -> tuple[str, str]:
    """(bucket, prefix) of `s3://bucket[/prefix]`; a trailing '/' is dropped. Raises SourceError.

    `role` ("source" or "volume") begins the messages and picks the credential variables they name."""
    keys = (
        "MT_VOLUME_S3_ACCESS_KEY_ID and MT_VOLUME_S3_SECRET_ACCESS_KEY"
        if role == "volume"
        else "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    )
    if not uri.startswith("s3://"):
        raise SourceError(f"{role} {_shown(uri)}: expected s3://bucket/prefix")
    rest = uri[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    if "@" in bucket:
        raise SourceError(f"{role} {_shown(uri)}: credentials do not belong in the URI; set {keys} instead")
    if "?" in rest or "#" in rest:
        raise SourceError(f"{role} {_shown(uri)}: must not contain a query ('?') or fragment ('#')")
    problem = check_bucket_name(bucket)
    if problem:
        raise SourceError(f"{role} {uri}: bucket name {bucket!r} is not a valid S3 bucket name ({problem})")
    prefix = prefix[:-1] if prefix.endswith("/") else prefix
    problem = check_key_prefix(prefix)
    if problem:
        raise SourceError(f"{role} {uri}: key prefix {prefix!r} {problem}")
    return bucket, prefix


def scrub(text: str, session: Any) -> str:
    """`text` with the credential values of `session` (a boto3 Session) and any URL userinfo taken out."""
    text = re.sub(r"//[^/\s@]+@", "//***@", text)
    credentials = session.get_credentials()
    if credentials is not None:
        frozen = credentials.get_frozen_credentials()
        for secret in (frozen.secret_key, frozen.token, frozen.access_key):
            if secret and len(secret) >= 4:
                text = text.replace(secret, "***")
    return text


class S3Source(Source):
    """Files at s3://<bucket>/<prefix>/<dir>/<path> on any S3-compatible endpoint."""

    supports_ranges = True

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        window_bytes: int = DEFAULT_WINDOW_BYTES,
        max_attempts: int | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        addressing_style: str | None = None,
        s3: config.S3Client | None = None,
    ) -> None:
        self.bucket, self.prefix = parse_s3_uri(f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}")
        self.uri = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        if max_concurrency < 1:
            raise SourceError(f"source {self.uri}: max_concurrency must be at least 1, got {max_concurrency}")
        if chunk_size < 1 * MiB:
            raise SourceError(f"source {self.uri}: chunk_size must be at least 1 MiB, got {chunk_size}")
        self.max_concurrency = max_concurrency
        self.chunk_size = chunk_size
        self.window = max(2, min(max_concurrency, window_bytes // chunk_size))

        if s3 is None:  # else a client made for someone else (an S3 volume reading its own objects)
            endpoint_url = endpoint_url or config.s3_endpoint()
            if endpoint_url:
                _check_endpoint(self.uri, endpoint_url)
            s3 = config.s3_client(
                endpoint_url=endpoint_url,
                region=region,
                max_attempts=max_attempts,
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                tcp_keepalive=True,
                # Ranged GETs in flight, plus HEADs and single GETs from the callers' own threads.
                max_pool_connections=max_concurrency + 16,
                addressing_style=addressing_style,
            )
        self.region = s3.region
        self._s3 = s3
        self._session = s3.session
        self._client = s3.client
        self.endpoint = _without_userinfo(self._client.meta.endpoint_url)
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()
        # Enough idle buffers for the parts in flight plus one file's window.
        # Page-aligned, so the writer can send their 1 MiB blocks to the disk directly (volume/direct.py).
        self._buffers = BufferPool(
            lambda: aligned_buffer(chunk_size), chunk_size, keep=max_concurrency + self.window + 1
        )

    @classmethod
    def from_uri(
        cls,
        uri: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        **kwargs: Any,
    ) -> S3Source:
        """A source from `s3://bucket/prefix`; other settings from the arguments or the environment."""
        bucket, prefix = parse_s3_uri(uri)
        return cls(
            bucket,
            prefix,
            endpoint_url=endpoint_url,
            region=region,
            max_concurrency=max_concurrency,
            chunk_size=chunk_size,
            **kwargs,
        )

    def __repr__(self) -> str:
        return f"S3Source({self.uri!r}, endpoint={self.endpoint!r})"

    def holds_volume(self) -> bool:
        """Whether `<prefix>/models/` holds an object: then the prefix is a volume's root (replication,
        sources/volume.py), not a bucket in the mirror layout. One ListObjectsV2 of one key. A key that
        may not list (403) reads the prefix as a bucket, as before listing was asked."""
        models = f"{self.prefix}/models/" if self.prefix else "models/"
        try:
            page = self._client.list_objects_v2(Bucket=self.bucket, Prefix=models, MaxKeys=1)
        except ClientError as e:
            if error_code(e) in _DENIED or http_status(e) == 403:
                return False
            raise self._error(e, f"source {self.uri}: listing {models}") from e
        except BotoCoreError as e:
            raise self._error(e, f"source {self.uri}: listing {models}") from e
        return bool(page.get("Contents"))

    def as_volume(self) -> Source:
        """This prefix read as a volume (`holds_volume`), through the same client (AWS_*, not MT_VOLUME_S3_*)."""
        from mt_assets.sources.volume import VolumeSource
        from mt_assets.volume.s3 import S3Volume

        return VolumeSource(
            S3Volume(
                self.bucket,
                self.prefix,
                s3=self._s3,
                max_concurrency=self.max_concurrency,
                chunk_size=self.chunk_size,
            )
        )

    # -- naming ------------------------------------------------------------------------------

    def key_for(self, f: ManifestFile) -> str:
        rel = f"{f.dir}/{f.path}"
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def uri_for(self, f: ManifestFile) -> str:
        return f"s3://{self.bucket}/{self.key_for(f)}"

    # -- fetching ----------------------------------------------------------------------------

    def fetch(self, f: ManifestFile, writer: AtomicWriter, on_bytes: Callable[[int], None]) -> None:
        where = f"{f.target} from {self.uri_for(f)}"
        key = self.key_for(f)
        size = self._object_size(key, where)
        expected = f.size if f.size is not None else writer.expected.size
        if expected is not None and size != expected:
            raise SourceError(
                f"{where}: the object is {size} bytes, the manifest expects {expected}; nothing fetched"
            )
        self.read_object(key, size, writer, on_bytes, where)

    def read_object(
        self, key: str, size: int, writer: Writer, on_bytes: Callable[[int], None], where: str
    ) -> None:
        """Write the `size` bytes of object `key` into `writer` from writer.resume_from (ranged GETs,
        several at once for a large object); `where` names it in errors."""
        start = writer.resume_from
        if start > size:  # staged bytes from something else: start over
            writer.truncate_to(0)
            start = 0
        if start == size:
            return
        if size - start <= self.chunk_size or self.max_concurrency == 1:
            self._fetch_stream(key, start, size, writer, on_bytes, where)
        else:
            self._fetch_ranges(key, start, size, writer, on_bytes, where)

    def close(self) -> None:
        with self._executor_lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)
                self._executor = None
        self._client.close()
        self._buffers.clear()

    # -- internals ---------------------------------------------------------------------------

    def _object_size(self, key: str, where: str) -> int:
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as e:
            if is_not_found(e):
                raise self._not_found(where) from None
            raise self._error(e, where) from e
        except BotoCoreError as e:
            raise self._error(e, where) from e
        return int(head["ContentLength"])

    def _not_found(self, where: str) -> SourceError:
        """After a 404 (HeadObject's has no body to say why): no such object, or no such bucket."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            if error_code(e) in ("NoSuchBucket", "404", "NotFound"):
                return self._no_such_bucket(where)
        except BotoCoreError:
            pass
        return SourceError(f"{where}: no such object")

    def _no_such_bucket(self, where: str) -> SourceError:
        return SourceError(
            f"{where}: no such bucket {self.bucket!r} at {self.endpoint} (on RunPod the bucket is "
            "the network volume id, and the endpoint must be its datacenter's)"
        )

    def _get(self, key: str, first: int, last: int | None, where: str) -> dict[str, Any]:
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if first or last is not None:  # the whole object: no Range, a plain 200
            args["Range"] = f"bytes={first}-{'' if last is None else last}"
        try:
            return self._client.get_object(**args)
        except ClientError as e:
            if is_not_found(e):
                raise self._not_found(where) from None
            raise self._error(e, where) from e
        except BotoCoreError as e:
            raise self._error(e, where) from e

    def _fetch_stream(
        self,
        key: str,
        start: int,
        size: int,
        writer: Writer,
        on_bytes: Callable[[int], None],
        where: str,
    ) -> None:
        """One GET from `start` to the end, written as it arrives."""
        response = self._get(key, start, None, where)
        if start and not response.get("ContentRange"):
            writer.truncate_to(0)  # the whole body came back
            start = 0
        body = response["Body"]
        received = 0
        try:
            while True:
                try:
                    block = body.read(STREAM_BLOCK)
                except (BotoCoreError, OSError) as e:
                    raise self._error(e, where, f"after {start + received} of {size} bytes") from e
                if not block:
                    break
                writer.write(block)  # a volume error (full disk) propagates as it is
                received += len(block)
                on_bytes(len(block))
        finally:
            body.close()
        if start + received != size:
            raise TransientSourceError(
                f"{where}: the connection ended after {start + received} of {size} bytes"
            )

    def _fetch_ranges(
        self,
        key: str,
        start: int,
        size: int,
        writer: Writer,
        on_bytes: Callable[[int], None],
        where: str,
    ) -> None:
        """Byte ranges of chunk_size in parallel, written in order; `window` parts in flight.

        The first part in line is hashed and written while it still arrives, so a file's last
        bytes are on the volume moments after they are received, not a whole part later."""
        executor = self._pool()
        ranges = iter(range(start, size, self.chunk_size))
        pending: deque[tuple[_Part, Future[None]]] = deque()
        stop = threading.Event()

        def submit_next() -> None:
            first = next(ranges, None)
            if first is not None:
                part = _Part(first, min(first + self.chunk_size, size) - 1)
                future = executor.submit(self._get_part, key, part, size, where, stop)
                future.add_done_callback(lambda _: part.finish())  # cancelled before it ran, too
                pending.append((part, future))

        for _ in range(self.window):
            submit_next()
        try:
            while pending:
                part, future = pending[0]
                written = 0
                topped_up = False
                try:
                    while written < part.want:
                        received, finished = part.wait_for(min(written + STREAM_BLOCK, part.want))
                        if finished and received == part.want and not topped_up:
                            submit_next()  # downloaded: the window takes the next part meanwhile
                            topped_up = True
                        # In 1 MiB blocks: each block is hashed while it is in the CPU cache, and
                        # written directly (page-aligned buffers, volume/direct.py) or, buffered,
                        # with ~20x less kernel time than one 64 MiB write() (ext4, Linux 6.x VM).
                        while written < received and (
                            received - written >= STREAM_BLOCK or received == part.want
                        ):
                            assert part.view is not None
                            block = min(STREAM_BLOCK, received - written)
                            writer.write(part.view[written : written + block])
                            written += block
                            on_bytes(block)
                        if finished and written < part.want:
                            # Failed: its whole blocks are written, so a retry resumes after them.
                            future.result()
                            raise TransientSourceError(
                                f"{where}: bytes {part.first}-{part.last} ended after {received}"
                            )
                finally:
                    # A part still downloading keeps its buffer (its reader writes into it): dropped.
                    if part.view is not None and part.finished:
                        self._give(part.view)
                pending.popleft()
                if not topped_up:
                    submit_next()
        finally:
            stop.set()
            for _, future in pending:
                future.cancel()

    def _get_part(self, key: str, part: _Part, size: int, where: str, stop: threading.Event) -> None:
        """Read bytes part.first..part.last into a reused buffer (volume/buffers.py), telling `part` as
        they arrive; the writer gives the buffer back, since it reads from it meanwhile."""
        try:
            if stop.is_set():
                return  # the fetch already failed; nobody reads this part
            first, last, want = part.first, part.last, part.want
            response = self._get(key, first, last, where)
            body = response["Body"]
            try:
                if response.get("ContentLength") != want:
                    got = response.get("ContentRange") or f"{response.get('ContentLength')} bytes"
                    raise TransientSourceError(
                        f"{where}: asked for bytes {first}-{last} of {size}, got {got}; the object may be "
                        "changing or the server ignored the range"
                    )
                view = part.view = memoryview(self._buffers.take())[:want]
                received = 0
                try:
                    while received < want:
                        n = body.readinto(view[received : min(received + STREAM_BLOCK, want)])
                        if not n:
                            raise TransientSourceError(
                                f"{where}: the connection ended after {received} of bytes {first}-{last}"
                            )
                        received += n
                        part.arrived(received)
                except (BotoCoreError, OSError) as e:
                    raise self._error(e, where, f"in bytes {first}-{last} of {size}") from e
            finally:
                body.close()
        finally:
            part.finish()

    def _give(self, view: memoryview) -> None:
        """A part's buffer back to the pool, once the view the writer read is released."""
        buffer = view.obj
        view.release()
        self._buffers.give(buffer)  # type: ignore[arg-type]

    def _pool(self) -> ThreadPoolExecutor:
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="mt-s3")
            return self._executor

    def _error(self, e: BaseException, where: str, when: str = "") -> SourceError:
        """The SourceError or TransientSourceError for a botocore/network failure."""
        suffix = f" {when}" if when else ""
        if isinstance(e, ClientError):
            code = error_code(e)
            status = http_status(e)
            detail = self._scrub(e.response.get("Error", {}).get("Message") or "")
            said = f" ({code}: {detail})" if detail and detail != code else f" ({code})"
            if code == "NoSuchBucket":
                return self._no_such_bucket(where)
            if code in _CREDENTIALS:
                return SourceError(f"{where}: {_CREDENTIALS[code]}{said}")
            if code in _DENIED or status == 403:
                return SourceError(
                    f"{where}: access denied{said}: check that AWS_ACCESS_KEY_ID and "
                    f"AWS_SECRET_ACCESS_KEY belong to a key that may read bucket {self.bucket!r}"
                )
            if code in _WRONG_REGION:
                return SourceError(
                    f"{where}: the bucket is not in region {self.region!r}{said}: set AWS_REGION "
                    "(on RunPod, the datacenter id such as eu-ro-1)"
                )
            if code in _THROTTLED or status == 429 or status >= 500:
                return TransientSourceError(f"{where}: the server failed{suffix}, HTTP {status}{said}")
            return SourceError(f"{where}: HTTP {status}{said}")
        if isinstance(e, (NoCredentialsError, PartialCredentialsError)):
            return SourceError(
                f"{where}: no usable credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(on RunPod, from an S3 API key)"
            )
        if isinstance(e, (HTTPClientError, ConnectionError, IncompleteReadError, ChecksumError, OSError)):
            reason = self._scrub(str(e)) or type(e).__name__
            return TransientSourceError(f"{where}: {type(e).__name__} at {self.endpoint}{suffix}: {reason}")
        return SourceError(f"{where}: {type(e).__name__}{suffix}: {self._scrub(str(e))}")

    def _scrub(self, text: str) -> str:
        return scrub(text, self._session)


class _Part:
    """One ranged GET's progress, shared by the thread reading it and the writer reading its buffer."""

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last, self.want = first, last, last - first + 1
        self.view: memoryview | None = None  # set before the first bytes arrive
        self._received = 0
        self._finished = False
        self._changed = threading.Condition()

    @property
    def finished(self) -> bool:
        return self._finished

    def arrived(self, received: int) -> None:
        with self._changed:
            crossed = received // STREAM_BLOCK > self._received // STREAM_BLOCK
            self._received = received
            if crossed or received >= self.want:
                self._changed.notify()  # once per block the writer waits for, not per socket read

    def finish(self) -> None:
        with self._changed:
            self._finished = True
            self._changed.notify()

    def wait_for(self, count: int) -> tuple[int, bool]:
        """(bytes received, finished) once `count` bytes have arrived or the read ended."""
        with self._changed:
            self._changed.wait_for(lambda: self._received >= count or self._finished)
            return self._received, self._finished


def _check_endpoint(uri: str, endpoint_url: str) -> None:
    parts = urlsplit(endpoint_url)
    if parts.username is not None or parts.password is not None:
        raise SourceError(
            f"source {uri}: the endpoint URL must not carry credentials; "
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SourceError(
            f"source {uri}: endpoint {_without_userinfo(endpoint_url)!r} must be an http(s):// URL"
        )


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]).geturl()


def _shown(uri: str) -> str:
    """A URI as it may be shown: any 'user:secret@' replaced."""
    return re.sub(r"^(\w+://)[^/]*@", r"\1***@", uri)
