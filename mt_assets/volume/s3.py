"""A volume reached through an S3-compatible API: RunPod's (bucket = network volume id), moto, MinIO.

`--volume s3://<bucket>[/<prefix>]` (or MT_VOLUME). Laid out exactly as a mounted volume, so the
same files are seen by a pod at /workspace and here:

    <prefix>/models/<dir>/<path>          the files, one object each
    <prefix>/.mt/hashes.json              the hash record (s3_hashes.py)
    <prefix>/.mt/locks/<key>.lock         writer locks (s3_lock.py)

The client is config.volume_s3_client's: MT_VOLUME_S3_ENDPOINT / _REGION / _ACCESS_KEY_ID /
_SECRET_ACCESS_KEY where set, else the AWS_* variables (so an `s3://` source elsewhere keeps its own).

Reading. Sizes and ETags come from ListObjectsV2, one listing per top-level folder of the targets
asked for (`models/`), never one request per file; folder entries (`.../`) and RunPod's multipart
staging (`.s3compat_uploads/`) are not files. RunPod computes the ETags of files a pod wrote on the
first listing and may meanwhile send the same continuation token twice: that page is asked for again
(`list_retries` times, waiting longer each time) and then the listing stops with a message saying so.
A file's sha256 comes from the hash record while its (size, ETag) is the recorded one, else from its
bytes, read by ranged GETs several at once (sources/s3.py's reader) and recorded.

Writing (s3_upload.py): hashed while sending, placed only on a match with the pin (PutObject, or
CompleteMultipartUpload), else nothing at the key. Before writing a key, the writer aborts the
multipart uploads left on it (ListMultipartUploads): all of them when it holds the key's lock (their
writers are dead), else only those older than `stale_upload_age` (24 h); once per volume it also
aborts every upload under the prefix older than that, since parts take space on the volume. An
upload's age is that of its newest part; one with no part yet takes no space and counts as live.

Locks (s3_lock.py) need an endpoint that refuses a second `If-None-Match: *` write with 412. Whether
it does is a fact to probe (`conditional_writes`; None: probed on first need with
s3_probe.probe_conditional_writes, two small PUTs, as `mt-assets volume check` does); without it there is no lock, a warning says
so once, and two writers of one file both upload it: the last one wins with the same pinned bytes.

Free space: RunPod's S3 calls do not check it (a full volume answers 507 mid-upload). Known only from
`capacity`, or for a RunPod volume from its REST API (`GET <rest_base>/networkvolumes/<id>`, size in
GB, with RUNPOD_API_KEY) minus the bytes the listing sums; otherwise `free_bytes()` is None: unknown.

Not possible here: render, verify-offline and the worker read the files as a filesystem; they need the
volume mounted (open_mounted_volume refuses `s3://` with a message that says so).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError

from mt_assets import config
from mt_assets.manifest.schema import check_relative_path
from mt_assets.sources.base import SourceError, TransientSourceError
from mt_assets.sources.s3 import DEFAULT_CHUNK_SIZE, DEFAULT_MAX_CONCURRENCY, S3Source, parse_s3_uri, scrub
from mt_assets.sources.s3_errors import error_code, http_status, is_not_found
from mt_assets.volume.atomic import Expected, VolumeFullError, target_key
from mt_assets.volume.base import FileState, ObjectStat
from mt_assets.volume.hashing import Digest, StreamHasher
from mt_assets.volume.local import STATE_DIR, VolumeError, WriterBusy, _check_lock
from mt_assets.volume.s3_hashes import RECORD_NAME, S3HashRecord
from mt_assets.volume.s3_lock import NoLock, S3Lock
from mt_assets.volume.s3_upload import (
    DEFAULT_CONFIRM_POLL,
    DEFAULT_CONFIRM_TIMEOUT,
    DEFAULT_MULTIPART_THRESHOLD,
    DEFAULT_PART_SIZE,
    DEFAULT_PARTS_IN_FLIGHT,
    DEFAULT_SPOOL_MEMORY,
    S3Upload,
    check_sizes,
    part_buffers,
    server_time,
)

log = logging.getLogger(__name__)

RUNPOD_REST_BASE = "https://rest.runpod.io/v1"
_RUNPOD_ENDPOINT = re.compile(r"^s3api-[a-z0-9-]+\.runpod\.io$")
STALE_UPLOAD_AGE = 24 * 3600.0
_VOLUME_NAMES = (  # in the source's messages, when MT_VOLUME_S3_* keys are set
    ("AWS_ACCESS_KEY_ID", config.VOLUME_S3_ACCESS_KEY_ID.name),
    ("AWS_SECRET_ACCESS_KEY", config.VOLUME_S3_SECRET_ACCESS_KEY.name),
    ("AWS_REGION", config.VOLUME_S3_REGION.name),
    ("that may read bucket", "that may read and write bucket"),
)
UPLOADS_STAGING = ".s3compat_uploads/"  # RunPod keeps multipart parts here, on the volume


class ListingError(TransientSourceError):
    """The listing could not be completed (a continuation token that keeps repeating): try later."""


class S3Volume:
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        s3: config.S3Client | None = None,
        conditional_writes: bool | None = None,
        capacity: int | None = None,
        rest_base: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        parts_in_flight: int = DEFAULT_PARTS_IN_FLIGHT,
        spool_memory: int = DEFAULT_SPOOL_MEMORY,
        confirm_timeout: float = DEFAULT_CONFIRM_TIMEOUT,
        confirm_poll: float = DEFAULT_CONFIRM_POLL,
        lock_stale_after: float = 120.0,
        trust_local_pids: bool = True,
        stale_upload_age: float = STALE_UPLOAD_AGE,
        list_retries: int = 5,
        list_retry_wait: float = 2.0,
        list_page_size: int | None = None,  # keys per ListObjectsV2 page (None: the server's 1000)
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        try:
            self.bucket, self.prefix = parse_s3_uri(
                f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}", role="volume"
            )
        except SourceError as e:
            raise VolumeError(str(e)) from None
        try:
            check_sizes(part_size, multipart_threshold)
        except ValueError as e:
            raise VolumeError(f"volume {self.uri}: {e}") from None
        try:
            self._s3 = s3 or config.volume_s3_client(
                max_pool_connections=max_concurrency + 16, tcp_keepalive=True
            )
            self._own_keys = s3 is None and config.VOLUME_S3_ACCESS_KEY_ID.read() is not None
        except config.ConfigError as e:  # one MT_VOLUME_S3_* key without the other, say
            raise VolumeError(f"volume {self.uri}: {e}") from None
        self.client = self._s3.client
        self.capacity = capacity
        self.rest_base = rest_base
        self.part_size = part_size
        self.multipart_threshold = multipart_threshold
        self.parts_in_flight = parts_in_flight
        self.spool_memory = spool_memory
        # Shared by this volume's uploads: a part freed by one is taken by the next; idle ones are kept
        # for two files' worth (4 files at once kept 12 x 64 MiB idle for little more reuse).
        self._part_buffers = part_buffers(part_size, keep=2 * (parts_in_flight + 1))
        self.confirm_timeout = confirm_timeout
        self.confirm_poll = confirm_poll
        self.lock_stale_after = lock_stale_after
        self.trust_local_pids = trust_local_pids
        self.stale_upload_age = stale_upload_age
        self.list_retries = list_retries
        self.list_retry_wait = list_retry_wait
        self.list_page_size = list_page_size
        self._conditional = conditional_writes
        self._probe_detail = ""  # what the lock probe observed, for the warning
        self._if_match = True  # whether the endpoint enforces If-Match (the probe's finding)
        self._conditional_lock = threading.Lock()
        self._warned = False
        self._swept = False
        self._reader = S3Source(
            self.bucket, self.prefix, s3=self._s3, max_concurrency=max_concurrency, chunk_size=chunk_size
        )
        self.endpoint = self._reader.endpoint  # without any userinfo
        self.hash_cache = S3HashRecord(self.client, self.bucket, self._key(f"{STATE_DIR}/{RECORD_NAME}"))

    @classmethod
    def from_uri(cls, uri: str, **kwargs: Any) -> S3Volume:
        if not uri.startswith("s3://"):
            raise VolumeError(f"volume {uri}: expected s3://bucket[/prefix]")
        rest = uri[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        return cls(bucket, prefix, **kwargs)

    def __repr__(self) -> str:
        return f"S3Volume({self.uri!r}, endpoint={self.endpoint!r})"

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def close(self) -> None:
        self.hash_cache.flush()  # entries still waiting (s3_hashes.py)
        self._part_buffers.clear()
        self._reader.close()  # and the client the reader shares

    # -- keys --------------------------------------------------------------------------------

    def _key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def key(self, target: str) -> str:
        """The object key of a target, once checked (relative, no traversal, not in .mt/)."""
        problem = check_relative_path(target)
        if problem:
            raise VolumeError(f"volume {self.uri}: target {target!r} {problem}")
        if target.split("/", 1)[0] == STATE_DIR:
            raise VolumeError(f"volume {self.uri}: target {target!r} is inside the state folder {STATE_DIR}/")
        return self._key(target)

    def _where(self, target: str) -> str:
        return f"volume {self.uri}: {target}"

    def _scrub(self, text: str) -> str:
        return scrub(text, self._s3.session)

    def _error(self, e: BaseException, where: str) -> Exception:
        # The source's reading of botocore failures (credentials, region, throttling, 5xx), messages
        # scrubbed of credentials; 507 is RunPod's "volume full".
        if isinstance(e, ClientError) and http_status(e) == 507:
            return VolumeFullError(f"{where}: the volume is full (HTTP 507 Insufficient Storage)")
        error = self._reader._error(e, where)  # the source's one reading of botocore failures
        if not self._own_keys:
            return error
        # The volume's own variables are the ones to check, not the source's AWS_* it names.
        text = str(error)
        for source_name, volume_name in _VOLUME_NAMES:
            text = text.replace(source_name, volume_name)
        return type(error)(text)

    # -- state -------------------------------------------------------------------------------

    def state(self, target: str) -> FileState:
        try:
            key = self.key(target)
        except VolumeError as e:
            return FileState(None, str(e).split(": ", 1)[1])
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as e:
            if is_not_found(e):
                return FileState(None, "missing")
            raise self._error(e, self._where(target)) from e
        except BotoCoreError as e:
            raise self._error(e, self._where(target)) from e
        return FileState(
            ObjectStat(int(head["ContentLength"]), str(head.get("ETag")), head["LastModified"].timestamp())
        )

    def states(self, targets: Iterable[str]) -> Iterator[FileState]:
        """`state` of each target, from one listing per top-level folder (listed when first needed)."""
        listed: dict[str, dict[str, ObjectStat]] = {}
        for target in targets:
            try:
                self.key(target)
            except VolumeError as e:
                yield FileState(None, str(e).split(": ", 1)[1])
                continue
            top = target.split("/", 1)[0]
            if top not in listed:
                listed[top] = self.listing(f"{top}/")
            st = listed[top].get(target)
            yield FileState(st) if st is not None else FileState(None, "missing")

    def listing(self, folder: str = "") -> dict[str, ObjectStat]:
        """Every file under `folder` (relative to the volume, '' or ending in '/'): target -> stat."""
        base = self._key(folder) if folder else (f"{self.prefix}/" if self.prefix else "")
        skip = len(f"{self.prefix}/") if self.prefix else 0
        found = {}
        for obj in self._list(base):
            key = obj["Key"]
            if key.endswith("/") or UPLOADS_STAGING in f"/{key}":
                continue  # a folder entry, or RunPod's multipart staging: not files
            found[key[skip:]] = ObjectStat(
                int(obj["Size"]), str(obj.get("ETag")), obj["LastModified"].timestamp()
            )
        return found

    def _list(self, prefix: str) -> Iterator[dict[str, Any]]:
        """ListObjectsV2 pages under `prefix`; a page whose next token was seen before is asked again.
        A page's contents are yielded only once its next token is accepted: a repeated page (the one
        before, again) is dropped, never counted twice."""
        token: str | None = None
        seen: set[str] = set()
        repeats = 0
        where = f"volume {self.uri}: listing {prefix or '/'}"
        while True:
            args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
            if token is not None:
                args["ContinuationToken"] = token
            if self.list_page_size:
                args["MaxKeys"] = self.list_page_size
            try:
                page = self.client.list_objects_v2(**args)
            except (ClientError, BotoCoreError) as e:
                raise self._error(e, where) from e
            if not page.get("IsTruncated"):
                yield from page.get("Contents", [])
                return
            following = page.get("NextContinuationToken")
            if not following or following == token or following in seen:
                # RunPod: "same next token received twice" while it computes ETags: ask again.
                repeats += 1
                if repeats > self.list_retries:
                    raise ListingError(
                        f"{where}: ListObjectsV2 sent a continuation token it had sent before, {repeats} "
                        "time(s) in a row (RunPod "
                        "computes the ETags of files not written through S3 on their first listing, which "
                        "can take minutes on a large volume); run the command again later"
                    )
                time.sleep(self.list_retry_wait * repeats)
                continue
            yield from page.get("Contents", [])
            seen.add(following)
            token, repeats = following, 0

    def free_bytes(self) -> int | None:
        """Space left, where it can be known (see the module docstring); None: unknown."""
        size = self.capacity if self.capacity is not None else self._runpod_size()
        if size is None:
            return None
        return max(size - self.used_bytes(), 0)

    def used_bytes(self) -> int:
        # Everything under the prefix, multipart staging included: it takes space too.
        return sum(int(obj["Size"]) for obj in self._list(f"{self.prefix}/" if self.prefix else ""))

    def _runpod_size(self) -> int | None:
        """The network volume's size from RunPod's REST API (GB), or None where it cannot be asked."""
        host = urlsplit(self.endpoint or "").hostname or ""
        base = self.rest_base or (RUNPOD_REST_BASE if _RUNPOD_ENDPOINT.match(host) else None)
        key = os.environ.get("RUNPOD_API_KEY")
        if base is None or not key:
            return None
        import requests

        try:
            response = requests.get(
                f"{base.rstrip('/')}/networkvolumes/{self.bucket}",
                headers={"authorization": f"Bearer {key}"},
                timeout=30,
            )
            response.raise_for_status()
            return int(float(response.json()["size"]) * 1e9)  # GB; the decimal unit is the safe reading
        except (requests.RequestException, ValueError, KeyError, TypeError):
            return None

    # -- hashing -----------------------------------------------------------------------------

    def digest(
        self,
        target: str,
        st: ObjectStat,
        *,
        use_cache: bool = True,
        git_sha1: bool = False,
        on_bytes: Callable[[int], None] | None = None,
    ) -> tuple[Digest, bool]:
        """The object's digest and whether its bytes were read (False: from the hash record)."""
        if use_cache:
            recorded = self.hash_cache.lookup(target, st)
            if recorded is not None and (recorded.git_sha1 is not None or not git_sha1):
                return recorded, False
        digest = self._read_digest(target, st, git_sha1, on_bytes)
        after = self.state(target)
        # Only recorded if the object did not change while it was being read.
        if after.present and (after.st.st_size, after.st.etag) == (st.st_size, st.etag):
            self.hash_cache.store(target, st, digest)
        return digest, True

    def _read_digest(
        self, target: str, st: ObjectStat, git_sha1: bool, on_bytes: Callable[[int], None] | None = None
    ) -> Digest:
        sink = _HashingSink(st.st_size, git_sha1)
        self._reader.read_object(
            self.key(target), st.st_size, sink, on_bytes or (lambda n: None), self._where(target)
        )
        return sink.digest()

    def read_into(self, target: str, st: ObjectStat, writer: Any, on_bytes: Callable[[int], None]) -> None:
        """The object's bytes into a writer (from writer.resume_from): the volume as a source."""
        self._reader.read_object(self.key(target), st.st_size, writer, on_bytes, self._where(target))

    # -- writing -----------------------------------------------------------------------------

    def conditional_writes(self) -> bool:
        """Whether the endpoint refuses a second `If-None-Match: *` write (probed once, if not given)."""
        with self._conditional_lock:
            if self._conditional is None:
                from mt_assets.volume.s3_probe import probe_conditional_writes

                found = probe_conditional_writes(
                    self.client, self.bucket, self.prefix, scrub=self._scrub, error=self._error
                )  # a TransientSourceError (no answer) leaves it unprobed: asked again on next need
                self._conditional, self._probe_detail = found.ok, found.detail
                self._if_match = found.if_match is not False
            if not self._conditional and not self._warned:
                self._warned = True
                seen = f" (the probe saw: {self._probe_detail})" if self._probe_detail else ""
                log.warning(
                    "volume %s: the endpoint does not enforce conditional writes (If-None-Match)%s, so there are "
                    "no writer locks: two provisioners may upload the same file (wasted bandwidth); each "
                    "completes only bytes that match the pinned sha256, so the last one wins with identical bytes",
                    self.uri,
                    seen,
                )
            return self._conditional

    def lock_for(self, target: str) -> S3Lock | NoLock:
        key = self._key(f"{STATE_DIR}/locks/{target_key(target)}.lock")
        if not self.conditional_writes():
            return NoLock(key)
        return S3Lock(
            self.client,
            self.bucket,
            key,
            stale_after=self.lock_stale_after,
            trust_local_pids=self.trust_local_pids,
            takes_if_match=self._if_match,
            error=lambda e, what: self._error(e, f"volume {self.uri}: {what}"),
        )

    @contextmanager
    def writing(
        self,
        target: str,
        expected: Expected | None = None,
        *,
        wait: bool = True,
        timeout: float | None = None,
        resume: bool = False,
    ) -> Iterator[S3Upload]:
        """Hold the target's writer lock and yield an S3Upload for it (`resume` is not possible: an
        upload always starts from the first byte; what a dead writer left is aborted here)."""
        key = self.key(target)
        lock = self.lock_for(target)
        if wait:
            lock.acquire(timeout=timeout)
        elif not lock.try_acquire():
            raise WriterBusy(target, lock.holder())
        try:
            self._sweep_uploads()
            self.abort_uploads(key, holding=isinstance(lock, S3Lock))
            upload = S3Upload(
                self.client,
                self.bucket,
                key,
                expected=expected,
                label=target,
                error=self._error,
                read_digest=lambda st, git_sha1: self._read_digest(target, st, git_sha1),
                guard=lambda: _check_lock(lock, target),  # type: ignore[arg-type]
                part_size=self.part_size,
                multipart_threshold=self.multipart_threshold,
                parts_in_flight=self.parts_in_flight,
                spool_memory=self.spool_memory,
                buffers=self._part_buffers,
                confirm_timeout=self.confirm_timeout,
                confirm_poll=self.confirm_poll,
            )
            with upload:
                yield upload
            if upload.digest is not None and upload.stat is not None:
                self.hash_cache.store(target, upload.stat, upload.digest)
        finally:
            lock.release()

    # -- multipart uploads left behind -------------------------------------------------------

    def uploads(self, prefix: str) -> Iterator[tuple[str, str, float]]:
        """(key, upload id, age in seconds by the server's clock) of the uploads in progress under `prefix`."""
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            try:
                page = self.client.list_multipart_uploads(**args)
            except (ClientError, BotoCoreError) as e:
                raise self._error(e, f"volume {self.uri}: listing multipart uploads") from e
            now = server_time(page)
            for u in page.get("Uploads", []):
                age = now - u["Initiated"].timestamp()
                if age > self.stale_upload_age:
                    age = now - self._newest_part(u["Key"], u["UploadId"], now)
                yield u["Key"], u["UploadId"], age
            if not page.get("IsTruncated"):
                return
            args.update(KeyMarker=page.get("NextKeyMarker"), UploadIdMarker=page.get("NextUploadIdMarker"))

    def _newest_part(self, key: str, upload_id: str, now: float) -> float:
        """When the upload last showed life: its newest part. One with no part yet takes no space and
        may be another writer's that has not sent its first part: live (`now`, the server's clock).
        (A writer sends parts all along; and moto reports a fixed Initiated date, so the parts are the
        better clock.)"""
        try:
            parts = self.client.list_parts(Bucket=self.bucket, Key=key, UploadId=upload_id).get("Parts", [])
        except (ClientError, BotoCoreError) as e:
            if isinstance(e, ClientError) and error_code(e) == "NoSuchUpload":
                return now  # gone meanwhile: nothing to abort
            raise self._error(e, f"volume {self.uri}: listing the parts of the upload of {key}") from e
        return max((p["LastModified"].timestamp() for p in parts), default=now)

    def abort_uploads(self, key: str, *, holding: bool) -> int:
        """Abort the uploads left on `key`: all (`holding` its lock: their writers are gone) or the
        stale ones. How many."""
        aborted = 0
        for found, upload_id, age in list(self.uploads(key)):
            if found == key and (holding or age > self.stale_upload_age):
                aborted += self._abort(found, upload_id)
        return aborted

    def _sweep_uploads(self) -> None:
        if self._swept:
            return
        self._swept = True
        for key, upload_id, age in list(self.uploads(f"{self.prefix}/" if self.prefix else "")):
            if age > self.stale_upload_age:
                self._abort(key, upload_id)

    def _abort(self, key: str, upload_id: str) -> int:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as e:
            if error_code(e) == "NoSuchUpload":
                return 0  # gone meanwhile
            raise self._error(e, f"volume {self.uri}: aborting the upload of {key}") from e
        return 1


class _HashingSink:
    """A writer that only hashes: what the reader writes into to learn an object's digest."""

    def __init__(self, size: int, git_sha1: bool) -> None:
        self.size = size
        self.git_sha1 = git_sha1
        self.expected = Expected(size=size)
        self._hasher = StreamHasher(total_size=size, git_sha1=git_sha1)

    @property
    def resume_from(self) -> int:
        return self._hasher.size

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._hasher.update(data)

    def truncate_to(self, size: int) -> None:
        if size != self._hasher.size:
            self._hasher = StreamHasher(total_size=self.size, git_sha1=self.git_sha1)

    def digest(self) -> Digest:
        return self._hasher.digest()
