"""The verified upload of one file onto an S3 volume: hash while sending, complete only on a match.

A file smaller than `multipart_threshold` (default: RunPod's PutObject limit, 500 MB) is spooled while
its bytes arrive and are hashed (`tempfile.SpooledTemporaryFile`: the first `spool_memory` bytes,
64 MiB by default, in memory, the rest in a file in the system temp folder), then sent from the spool
with one PutObject, and only if its size and sha256 (and git blob id) match the pin: a wrong byte
never leaves the machine, and no writer holds 500 MB in memory. A larger one is a multipart upload:
parts of `part_size` go out as they fill (`parts_in_flight` at once, on a thread of the upload's own,
so the source keeps downloading), each byte hashed on its way and copied once, into a part buffer that
is sent as it is and, once sent, reused by the next part of any upload of the volume (`part_buffers`);
CompleteMultipartUpload is sent only once the whole file's digest matches the
pin, AbortMultipartUpload otherwise. Until Complete nothing is at the key
(the parts sit in `.s3compat_uploads/` on a RunPod volume), so a kill leaves no half-written
object; the next writer of the key aborts the dead upload (s3.py).

RunPod limits: PutObject below 500 MB, parts of at most 500 MB (both checked). Parts are 64 MiB by
default: far below the 500 MB limit, so a writer holds at most (parts_in_flight + 1) x 64 MiB =
192 MiB, and S3's 10,000 parts still reach 10,000 x 64 MiB = 671 GB (625 GiB), far above the largest
model file (a ~10 GB shard: 150 parts). Larger parts would only cost memory; smaller ones more
requests (RunPod also merges parts on Complete).

Complete that does not answer (RunPod merges large objects slowly: a timeout, a 524 or another 5xx,
or, to a retried Complete, NoSuchUpload) is confirmed: HeadObject every `confirm_poll` seconds until
the object's size is the file's (at most `confirm_timeout` seconds), then its bytes are read back
and hashed. A match is placed; a mismatch is deleted; no object in time aborts the upload. Either
failure says which answer started it.

Errors: HTTP 507 (RunPod: the volume is full) is a VolumeFullError; 5xx, throttling and dropped
connections a TransientSourceError (provision retries the file); anything else a SourceError.
"""

from __future__ import annotations

import contextlib
import email.utils
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, ReadTimeoutError

from mt_assets.sources.base import TransientSourceError
from mt_assets.sources.s3_errors import error_code, http_status, is_not_found
from mt_assets.volume.atomic import Expected, IntegrityError, VolumeFullError, mismatch
from mt_assets.volume.base import ObjectStat
from mt_assets.volume.buffers import BufferPool
from mt_assets.volume.hashing import Digest, StreamHasher

MB = 1000 * 1000
MiB = 1024 * 1024
RUNPOD_PUT_LIMIT = 500 * MB  # RunPod's S3 API: PutObject below this, parts at most this
DEFAULT_PART_SIZE = 64 * MiB  # see the module docstring for the arithmetic
DEFAULT_MULTIPART_THRESHOLD = RUNPOD_PUT_LIMIT  # PutObject below it, multipart from it
DEFAULT_SPOOL_MEMORY = 64 * MiB  # of a file spooled for PutObject, in memory; the rest on disk
DEFAULT_PARTS_IN_FLIGHT = 2
DEFAULT_CONFIRM_TIMEOUT = 1800.0  # RunPod: a 10+ GB merge can take many minutes
DEFAULT_CONFIRM_POLL = 5.0


def check_sizes(part_size: int, multipart_threshold: int) -> None:
    if not 1 <= part_size <= RUNPOD_PUT_LIMIT:
        raise ValueError(
            f"part_size must be 1 to {RUNPOD_PUT_LIMIT} bytes (RunPod's part limit), got {part_size}"
        )
    if not 1 <= multipart_threshold <= RUNPOD_PUT_LIMIT:
        raise ValueError(
            f"multipart_threshold must be 1 to {RUNPOD_PUT_LIMIT} bytes (RunPod's PutObject limit), "
            f"got {multipart_threshold}"
        )


def part_buffers(part_size: int, keep: int) -> BufferPool[bytearray]:
    """Part buffers for uploads, shared by a volume's uploads (S3Volume): a file's parts reuse the
    buffers of the files before it (cProfile of benchmarks/provision.py --to-s3: with files of 2 to 4
    parts, an upload alone hardly reused its own, and zeroing fresh ones cost as much as copying in)."""
    return BufferPool(lambda: bytearray(part_size), part_size, keep)


class S3Upload:
    """Write one object; `commit()` verifies and places it. Leaving without commit aborts."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        key: str,
        *,
        expected: Expected | None = None,
        label: str,
        error: Callable[[BaseException, str], Exception],
        read_digest: Callable[[ObjectStat, bool], Digest],
        guard: Callable[[], None] | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        parts_in_flight: int = DEFAULT_PARTS_IN_FLIGHT,
        confirm_timeout: float = DEFAULT_CONFIRM_TIMEOUT,
        confirm_poll: float = DEFAULT_CONFIRM_POLL,
        spool_memory: int = DEFAULT_SPOOL_MEMORY,
        buffers: BufferPool[bytearray] | None = None,
    ) -> None:
        check_sizes(part_size, multipart_threshold)
        self.client = client
        self.bucket = bucket
        self.key = key
        self.expected = expected or Expected()
        self.label = label
        self.error = error  # a botocore failure -> the error to raise (SourceError family)
        self.read_digest = read_digest  # the placed object's bytes, read back and hashed
        self.guard = guard
        self.part_size = part_size
        self.multipart_threshold = multipart_threshold
        self.parts_in_flight = max(parts_in_flight, 1)
        self.confirm_timeout = confirm_timeout
        self.confirm_poll = confirm_poll
        self.spool_memory = spool_memory
        self.digest: Digest | None = None
        self.stat: ObjectStat | None = None  # of the placed object, once committed
        self.upload_id: str | None = None
        self._hasher = StreamHasher(
            total_size=self.expected.size, git_sha1=self.expected.git_sha1 is not None
        )
        # A file pinned at multipart_threshold or more goes up in parts from its first byte; one of
        # unknown size is spooled until it proves that large.
        self._multipart = self.expected.size is not None and self.expected.size >= multipart_threshold
        self._spool: tempfile.SpooledTemporaryFile[bytes] | None = None  # the whole file, for one PutObject
        self._part: bytearray | None = None  # the part being filled, `_fill` bytes of it so far
        self._fill = 0
        self._buffers = buffers or part_buffers(part_size, keep=self.parts_in_flight + 1)
        self._parts: list[Future[dict[str, Any]]] = []
        self._pool: ThreadPoolExecutor | None = None

    # -- writing -------------------------------------------------------------------------

    @property
    def resume_from(self) -> int:
        """Bytes received so far (an upload never resumes an earlier writer's: it starts at 0)."""
        return self._hasher.size

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._hasher.update(data)
        if not self._multipart:
            if self._spool is None:
                # Closed by commit or abort (its file, if it rolled over to one, is removed then).
                self._spool = tempfile.SpooledTemporaryFile(max_size=self.spool_memory, prefix="mt-s3-put-")  # noqa: SIM115
            self._spool.write(data)
            if self._spool.tell() < self.multipart_threshold:
                return
            # Unpinned and now as large as the threshold: what was spooled becomes the first parts.
            self._multipart, spool, self._spool = True, self._spool, None
            with spool:
                spool.seek(0)
                while block := spool.read(self.part_size):
                    self._to_parts(block)
            return
        self._to_parts(data)

    def _to_parts(self, data: bytes | bytearray | memoryview) -> None:
        if self.upload_id is None:
            self._start_multipart()
        # Each byte is copied once, into a part buffer that goes out as it is (measured: slicing a
        # growing bytearray and copying the slice again cost as much CPU as the sha256).
        view = memoryview(data).cast("B")
        while view:
            if self._part is None:
                self._part, self._fill = self._buffers.take(), 0
            n = min(len(view), self.part_size - self._fill)
            self._part[self._fill : self._fill + n] = view[:n]
            self._fill += n
            view = view[n:]
            if self._fill == self.part_size:
                part, self._part = self._part, None
                self._send_part(part)

    def truncate_to(self, size: int) -> None:
        if size == self._hasher.size:
            return
        if size != 0:
            raise ValueError("can only restart from zero")
        self.abort()
        self._hasher = StreamHasher(
            total_size=self.expected.size, git_sha1=self.expected.git_sha1 is not None
        )

    def commit(self) -> Digest:
        """Verify against `expected`, check `guard`, then put or complete; abort on any failure."""
        try:
            parts = self._finish_parts()
            digest = self._hasher.digest()
            problem = mismatch(self.expected, digest)
            if problem:
                raise IntegrityError(f"{self.label}: {problem}; not placed")
            if self.guard is not None:
                self.guard()
            if self.upload_id is None:
                spool, self._spool = self._spool, None
                with spool or tempfile.SpooledTemporaryFile() as body:  # an empty file: an empty spool
                    body.seek(0)
                    response = self._call(
                        "PutObject", self.client.put_object, Bucket=self.bucket, Key=self.key, Body=body
                    )
                self.stat = ObjectStat(digest.size, str(response.get("ETag")), time.time())
            else:
                self.stat = self._complete(parts, digest)
        except BaseException:
            self.abort()
            raise
        self.digest = digest
        return digest

    def abort(self) -> None:
        """Drop what was received; abort the multipart upload, if one was started (best effort)."""
        if self._spool is not None:
            self._spool.close()  # its file, if it had one, is removed
        self._spool, self._part, self._fill = None, None, 0
        for future in self._parts:
            future.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._parts = []
        if self.upload_id is not None:
            upload_id, self.upload_id = self.upload_id, None
            with contextlib.suppress(ClientError, BotoCoreError):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=upload_id)

    def __enter__(self) -> S3Upload:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.digest is None:
            self.abort()

    # -- internals -----------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[..., dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        try:
            return fn(**kwargs)
        except (ClientError, BotoCoreError) as e:
            raise self._translate(e, what) from e

    def _translate(self, e: BaseException, what: str) -> Exception:
        if isinstance(e, ClientError) and http_status(e) == 507:
            return VolumeFullError(
                f"{self.label}: the volume is full ({what} answered HTTP 507 Insufficient Storage); nothing was placed",
            )
        return self.error(e, f"{self.label}: {what}")

    def _start_multipart(self) -> None:
        response = self._call(
            "CreateMultipartUpload", self.client.create_multipart_upload, Bucket=self.bucket, Key=self.key
        )
        self.upload_id = str(response["UploadId"])
        self._pool = ThreadPoolExecutor(self.parts_in_flight, thread_name_prefix="mt-s3-upload")

    def _send_part(self, data: bytearray) -> None:
        """Queue `data` as the next part; its buffer goes back to the pool once sent."""
        assert self._pool is not None and self.upload_id is not None
        # Bounded memory: wait for the oldest part in flight before queueing one more.
        in_flight = [f for f in self._parts if not f.done()]
        if len(in_flight) >= self.parts_in_flight:
            in_flight[0].result()
        for done in self._parts:
            if done.done():
                done.result()  # a failed part stops the upload now, not at commit
        number = len(self._parts) + 1
        future = self._pool.submit(
            self._call,
            f"UploadPart {number}",
            self.client.upload_part,
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=data,
        )
        if len(data) == self.part_size:
            future.add_done_callback(lambda _: self._buffers.give(data))
        self._parts.append(future)

    def _finish_parts(self) -> list[dict[str, Any]]:
        if self.upload_id is None:
            return []
        if self._fill or not self._parts:
            last, self._part = self._part if self._part is not None else bytearray(), None
            del last[self._fill :]  # the file's short last part, sent from the same buffer
            self._fill = 0
            self._send_part(last)
        done = [{"PartNumber": n, "ETag": f.result()["ETag"]} for n, f in enumerate(self._parts, 1)]
        assert self._pool is not None
        self._pool.shutdown(wait=True)
        self._pool = None
        return done

    def _complete(self, parts: list[dict[str, Any]], digest: Digest) -> ObjectStat:
        assert self.upload_id is not None
        # What is at the key before Complete (a damaged file being replaced may have the same size):
        # should Complete not answer, only an object other than this one can be ours (_confirm).
        before, sent_at = self._head()
        try:
            response = self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, MultipartUpload={"Parts": parts}
            )
        except ClientError as e:
            status = http_status(e)
            if status == 507:
                raise self._translate(e, "CompleteMultipartUpload") from e
            if status < 500 and error_code(e) != "NoSuchUpload":
                raise self._translate(e, "CompleteMultipartUpload") from e
            answer = f"HTTP {status} ({error_code(e)})"
        except (ReadTimeoutError, ConnectionError) as e:
            answer = type(e).__name__
        except BotoCoreError as e:
            raise self._translate(e, "CompleteMultipartUpload") from e
        else:
            self.upload_id = None  # completed: nothing left to abort
            return ObjectStat(digest.size, str(response.get("ETag")), time.time())
        return self._confirm(digest, answer, before, sent_at)

    def _confirm(self, digest: Digest, answer: str, before: ObjectStat | None, sent_at: float) -> ObjectStat:
        """After Complete answered `answer`: wait for the object to appear whole, then read it back.

        `before` is what HeadObject found at the key just before Complete was sent, `sent_at` the
        server's clock then: an object with its ETag and no later LastModified is the old one, not ours."""
        said = f"CompleteMultipartUpload answered {answer}"
        deadline = time.monotonic() + self.confirm_timeout
        while True:
            st, _ = self._head()
            if (
                st is not None
                and st.st_size == digest.size
                and (before is None or st.etag != before.etag or st.last_modified > sent_at)
            ):
                break
            if time.monotonic() >= deadline:
                raise TransientSourceError(
                    f"{self.label}: {said} and the object did not appear whole within "
                    f"{self.confirm_timeout:g} s; upload aborted, nothing was placed"
                )
            time.sleep(self.confirm_poll)
        self.upload_id = None  # the server completed it
        got = self.read_digest(st, digest.git_sha1 is not None)
        problem = mismatch(self.expected, got) or (
            None if got.sha256 == digest.sha256 else "sha256 differs from the bytes sent"
        )
        if problem:
            self._delete_if_match(st.etag)
            raise IntegrityError(f"{self.label}: {said}; the object that appeared has {problem}; deleted")
        return st

    def _delete_if_match(self, etag: str) -> None:
        """Delete the object at the key only while it is the one with `etag` (best effort): a Complete
        that ends later must not lose its good object to the delete of a bad one. Plain delete only
        where the endpoint refuses If-Match (400, 501)."""
        with contextlib.suppress(ClientError, BotoCoreError):
            try:
                self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=etag)
            except ClientError as e:
                if http_status(e) not in (400, 501):
                    raise
                self.client.delete_object(Bucket=self.bucket, Key=self.key)

    def _head(self) -> tuple[ObjectStat | None, float]:
        """The object at the key (None: none, or no answer) and the server's clock at the answer."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.key)
        except ClientError as e:
            if is_not_found(e) or http_status(e) >= 500:
                return None, server_time(e.response)
            raise self._translate(e, "HeadObject") from e
        except (ReadTimeoutError, ConnectionError):
            return None, time.time()
        stat = ObjectStat(int(head["ContentLength"]), str(head.get("ETag")), head["LastModified"].timestamp())
        return stat, server_time(head)


def server_time(response: dict[str, Any]) -> float:
    """Now by the server's clock (the response's Date header), else by ours: ages of objects and
    uploads are measured on the clock that stamped them."""
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    with contextlib.suppress(TypeError, ValueError):
        if date:
            return email.utils.parsedate_to_datetime(date).timestamp()
    return time.time()
