"""The writer lock of an S3 volume: one object per target, created only if absent.

The lock object is `<prefix>/.mt/locks/<target key>.lock` (the same name a mounted volume uses)
and holds the same JSON as lock.py's lock file (host, pid, started, token, pid_space). It is
created with `If-None-Match: *`: of two writers, the second gets 412 and waits. That is a lock only
where the endpoint enforces the header, which S3 look-alikes may silently ignore, so S3Volume uses
this class only where a live probe saw a second writer refused (`conditional_writes`); elsewhere it
uses `NoLock` and says so (see s3.py).

Heartbeat: the holder puts the object again every `heartbeat` seconds with `If-Match: <its ETag>`
(so it never overwrites a lock that was taken over); a 412, 409 or 404 means the lock is lost, any
other failure (a 5xx, a dropped connection) is beaten through until no beat went through for
`stale_after`. A lock whose LastModified is older than `stale_after` seconds by the server's own clock (the Date header of the same response: no clock
skew between machines), or whose owner ran in this host's pid space and is gone, is stale. Take-over
deletes it with `If-Match` (only the ETag that was judged stale) and creates it afresh; the writer
that was presumed dead sees its token gone (`still_held`) and does not complete its upload.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from mt_assets.sources.s3_errors import http_status, is_not_found
from mt_assets.volume.lock import LockOwner, is_stale, new_owner, parse_owner, wait_for
from mt_assets.volume.s3_upload import server_time


class S3Lock:
    def __init__(
        self,
        client: Any,
        bucket: str,
        key: str,
        *,
        stale_after: float = 120.0,
        heartbeat: float | None = None,
        trust_local_pids: bool = True,
        takes_if_match: bool = True,
        error: Callable[[BaseException, str], Exception] | None = None,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.key = key
        self.path = f"s3://{bucket}/{key}"  # for messages, as WriterLock.path
        self.stale_after = stale_after
        self.heartbeat = heartbeat if heartbeat is not None else max(stale_after / 4, 0.05)
        self.trust_local_pids = trust_local_pids
        # A botocore failure -> the error to raise (S3Volume._error: 507 a full volume, 5xx transient,
        # named by volume and lock); None: raised as it is.
        self.error = error
        self.owner: LockOwner | None = None
        self.lost = False
        self._etag: str | None = None
        # False where the probe saw If-Match ignored, or once the endpoint refuses it (see _if_match).
        self._takes_if_match = takes_if_match
        self._body = b""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- acquiring ---------------------------------------------------------------------

    def try_acquire(self) -> bool:
        if self.owner is not None:
            raise RuntimeError(f"lock {self.path} is already held by this object")
        try:
            return self._try_acquire()
        except (ClientError, BotoCoreError) as e:
            raise self._failed(e, "taking it") from e

    def _failed(self, e: ClientError | BotoCoreError, doing: str) -> Exception:
        return self.error(e, f"lock {self.path}: {doing}") if self.error is not None else e

    def _try_acquire(self) -> bool:
        if self._create():
            return True
        found = self._read()
        if found is None:
            return self._create()  # released meanwhile
        holder, etag, age = found
        if not self._is_stale(holder, age):
            return False
        try:
            self._if_match("delete_object", etag)
        except ClientError as e:
            if http_status(e) in (409, 412):
                return False  # changed hands between our look and the delete
            if not is_not_found(e):
                raise
        return self._create()

    def acquire(self, timeout: float | None = None, poll: float = 0.2) -> None:
        wait_for(self, timeout, poll)

    def release(self) -> None:
        if self.owner is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.lost and self._etag is not None:
            with contextlib.suppress(ClientError, BotoCoreError):
                self._if_match("delete_object", self._etag)
        self.owner = None
        self._thread = None

    # -- state -------------------------------------------------------------------------

    def holder(self) -> LockOwner | None:
        try:
            found = self._read()
        except (ClientError, BotoCoreError) as e:
            raise self._failed(e, "reading its holder") from e
        return found[0] if found else None

    def still_held(self) -> bool:
        """Read the lock object now: does it still carry this holder's token?"""
        if self.owner is None or self.lost:
            return False
        try:
            found = self._read()
        except (ClientError, BotoCoreError):
            return False
        return found is not None and found[0].token == self.owner.token

    def _read(self) -> tuple[LockOwner, str, float] | None:
        """(holder, ETag, age in seconds by the server's clock), or None when there is no lock."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.key)
            body = response["Body"].read()
        except ClientError as e:
            if is_not_found(e):
                return None
            raise
        holder = parse_owner(body)
        age = server_time(response) - response["LastModified"].timestamp()
        return holder, str(response.get("ETag")), age

    def _is_stale(self, holder: LockOwner, age: float) -> bool:
        return is_stale(holder, age, self.stale_after, trust_local_pids=self.trust_local_pids)

    # -- internals ---------------------------------------------------------------------

    def _create(self) -> bool:
        owner = new_owner()
        body = json.dumps(owner.__dict__).encode()
        try:
            response = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=body, IfNoneMatch="*")
        except ClientError as e:
            if http_status(e) in (409, 412):  # 409: a concurrent conditional write in progress
                return False
            raise
        self.owner, self._etag, self._body = owner, str(response.get("ETag")), body
        self.lost = False
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat {self.key}", daemon=True)
        self._thread.start()
        return True

    def _if_match(self, call: str, etag: str | None, **kwargs: Any) -> dict[str, Any]:
        """`call` (put_object, delete_object) on the lock object only while it still has `etag`.

        With `If-Match` where the endpoint takes it (412 when the object moved); an endpoint that
        refuses the header (400, 501: RunPod documents none of them) gets a read of the object's ETag
        first, then the plain call: a window of one round trip, which `still_held` before Complete
        closes for what matters."""
        fn = getattr(self.client, call)
        if self._takes_if_match:
            try:
                return fn(Bucket=self.bucket, Key=self.key, IfMatch=etag, **kwargs)
            except ClientError as e:
                if http_status(e) not in (400, 501):
                    raise
                self._takes_if_match = False
        found = self._read()
        if found is None or found[1] != etag:
            raise ClientError(
                {"Error": {"Code": "PreconditionFailed"}, "ResponseMetadata": {"HTTPStatusCode": 412}}, call
            )
        return fn(Bucket=self.bucket, Key=self.key, **kwargs)

    def _beat(self) -> None:
        """Put the lock object again every `heartbeat` seconds. 412, 409 or 404: it was taken over or
        deleted, the lock is lost. Anything else (a 5xx, a dropped connection) may pass: beat on, and
        give the lock up only once no beat went through for as long as others wait before taking it
        over (`stale_after`, less the beat that would come too late)."""
        last = time.monotonic()
        while not self._stop.wait(self.heartbeat):
            try:
                response = self._if_match("put_object", self._etag, Body=self._body)
            except ClientError as e:
                if http_status(e) in (404, 409, 412) or is_not_found(e):
                    self.lost = True
                    return
            except BotoCoreError:
                pass
            except BaseException:
                self.lost = True  # anything else: assume lost rather than complete an upload blindly
                return
            else:
                self._etag, last = str(response.get("ETag")), time.monotonic()
                continue
            if time.monotonic() - last + self.heartbeat >= self.stale_after:
                self.lost = True  # the endpoint unreachable too long: others may take the lock now
                return


class NoLock:
    """Where the endpoint does not enforce conditional writes: no lock at all. Two writers of one
    target may both upload; each completes only bytes whose sha256 matches the pin, so the last one
    wins with identical bytes (wasted bandwidth, never corruption)."""

    def __init__(self, key: str) -> None:
        self.path = key
        self.owner: LockOwner | None = None
        self.lost = False

    def try_acquire(self) -> bool:
        self.owner = new_owner()
        return True

    def acquire(self, timeout: float | None = None, poll: float = 0.2) -> None:
        self.try_acquire()

    def release(self) -> None:
        self.owner = None

    def holder(self) -> LockOwner | None:
        return None

    def still_held(self) -> bool:
        return self.owner is not None
