"""The hash record of an S3 volume: which sha256 the bytes of each object have, so audits need not
read them again.

S3 gives every object a size and an ETag, never a sha256 we can trust (moto's checksums are not
verified, a multipart checksum is a composite, RunPod keeps none). So the writer that placed or
hashed an object records it, as one JSON object at `<prefix>/.mt/hashes.json`:

    {"format": "mt-assets s3 hash record 1",
     "files": {"models/<dir>/<path>": {"size": 1234, "etag": "\\"9b2c…\\"",
                                        "sha256": "<64 hex>", "git_sha1": "<40 hex>" | null,
                                        "hashed_at": 1764412345.1}}}

Keys of "files" are targets (relative to the volume, as in the layout). An entry is trusted only
while the object's listing still shows the same (size, ETag): an object written again, by anyone,
gets a new ETag and is read again. What stays invisible, as with the local hash cache, is
corruption below the API that keeps the ETag: `audit --full` ignores the record for that.

Writers merge: each write reads the record with its ETag, adds its entries, and puts it back with
`If-Match: <that ETag>` (`If-None-Match: *` when there was none); a 412 means another writer came
between, so it reads and merges again. Where the endpoint refuses the headers (400, 501) the put is
plain; where it silently ignores them (no probe is needed to write the record) the last writer wins: an entry lost that way only costs reading the object again.
The record is disposable: one that is unreadable or not this format counts as empty.

Writes are batched, since each one reads and rewrites the whole record (a record rewritten per placed
file grows the cost with the square of the files). Outside `batched()`, entries wait until
FLUSH_FILES of them are waiting or FLUSH_SECONDS have passed since the last write (so the first file
placed after a pause is written at once); inside `batched()` they are written once, on leaving (an
audit of many files writes the record once). `flush()` writes what waits (S3Volume.close calls it, and
so does leaving any `batched()`, such as the audit that closes a provision run). Entries waiting are
answered by `lookup` as if written. A process killed meanwhile loses at most those entries: the
objects are there and whole (they were verified before being placed); the next audit reads them
again and records them, which costs reading at most FLUSH_FILES files or FLUSH_SECONDS of writing.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from mt_assets.sources.s3_errors import http_status, is_not_found
from mt_assets.volume.base import ObjectStat
from mt_assets.volume.hashing import Digest

FORMAT = "mt-assets s3 hash record 1"
RECORD_NAME = "hashes.json"  # in <prefix>/.mt/
MERGE_ATTEMPTS = 8  # reads and merges again after this many 412s, then gives up (costs re-hashing)
FLUSH_FILES = 16  # entries waiting, outside batched(), before the record is written
FLUSH_SECONDS = 10.0  # or since the last write


class S3HashRecord:
    def __init__(self, client: Any, bucket: str, key: str) -> None:
        self.client = client
        self.bucket = bucket
        self.key = key
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] | None = None  # as last read or written
        self._pending: dict[str, dict[str, Any] | None] = {}  # waiting to be written; None value: forget
        self._writing: dict[str, dict[str, Any] | None] = {}  # being written (still answered by lookup)
        self._depth = 0  # batched() nesting
        self._last_write = 0.0  # time.monotonic() of the last write
        self.flush_files = FLUSH_FILES
        self.flush_seconds = FLUSH_SECONDS
        self._takes_if_match = True  # until the endpoint refuses the headers

    # -- reading -----------------------------------------------------------------------------

    def _read(self) -> tuple[dict[str, dict[str, Any]], str | None]:
        """The record's entries and the ETag they were read at (None: no record yet)."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.key)
            body = response["Body"].read()
        except ClientError as e:
            if is_not_found(e):
                return {}, None
            raise
        try:
            doc = json.loads(body)
            files = doc["files"] if doc.get("format") == FORMAT else {}
        except (ValueError, KeyError, TypeError, AttributeError):
            files = {}  # disposable: unreadable costs re-hashing, nothing else
        return (files if isinstance(files, dict) else {}), response.get("ETag")

    def entries(self) -> dict[str, dict[str, Any]]:
        """The record as first read (then as this process wrote it); one that cannot be read now is
        empty, and asked for again next time: that only costs reading files."""
        with self._lock:
            if self._entries is None:
                try:
                    self._entries, _ = self._read()
                except (ClientError, BotoCoreError):
                    return {}
            return self._entries

    def _entry(self, entries: dict[str, dict[str, Any]], target: str) -> dict[str, Any] | None:
        """The newest entry of `target`: waiting, being written, or as read."""
        for newer in (self._pending, self._writing):
            if target in newer:
                return newer[target]
        return entries.get(target)

    def lookup(self, target: str, st: ObjectStat) -> Digest | None:
        return _trusted(self._entry(self.entries(), target), st)

    def lookup_many(self, files: Sequence[tuple[str, ObjectStat]]) -> dict[str, Digest]:
        entries = self.entries()
        found = {}
        for target, st in files:
            digest = _trusted(self._entry(entries, target), st)
            if digest is not None:
                found[target] = digest
        return found

    # -- writing -----------------------------------------------------------------------------

    def store(self, target: str, st: ObjectStat, digest: Digest) -> None:
        entry = {
            "size": st.st_size,
            "etag": st.etag,
            "sha256": digest.sha256,
            "git_sha1": digest.git_sha1,
            "hashed_at": round(time.time(), 3),
        }
        self._change({target: entry})

    def forget(self, target: str) -> None:
        self._change({target: None})

    def _change(self, changes: dict[str, dict[str, Any] | None]) -> None:
        with self._lock:
            self._pending.update(changes)
            due = self._depth == 0 and (
                len(self._pending) >= self.flush_files
                or time.monotonic() - self._last_write >= self.flush_seconds
            )
        if due:
            self.flush()

    def flush(self) -> None:
        """Write the entries waiting (see the module docstring)."""
        with self._lock:
            if not self._pending:
                return
            changes, self._pending = self._pending, {}
            self._writing.update(changes)
        try:
            self._write(changes)
        finally:
            with self._lock:
                for target in changes:
                    if self._writing.get(target, _GONE) is changes[target]:
                        del self._writing[target]
                self._last_write = time.monotonic()

    @contextlib.contextmanager
    def batched(self) -> Iterator[None]:
        with self._lock:
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                outer = self._depth == 0
            if outer:
                self.flush()

    def _write(self, changes: dict[str, dict[str, Any] | None]) -> None:
        """Merge `changes` into the record as it is now (see the module docstring); a record that
        cannot be written is left as it is: that costs re-hashing later, never a wrong answer."""
        with contextlib.suppress(ClientError, BotoCoreError):
            for _attempt in range(MERGE_ATTEMPTS):
                entries, etag = self._read()
                for target, entry in changes.items():
                    if entry is None:
                        entries.pop(target, None)
                    else:
                        entries[target] = entry
                body = json.dumps({"format": FORMAT, "files": entries}, indent=0, sort_keys=True).encode()
                args: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key, "Body": body}
                if self._takes_if_match:
                    if etag is None:
                        args["IfNoneMatch"] = "*"
                    else:
                        args["IfMatch"] = etag
                try:
                    self.client.put_object(**args, ContentType="application/json")
                except ClientError as e:
                    status = http_status(e)
                    if status in (409, 412):  # another writer came between: read and merge again
                        continue
                    if status in (400, 501) and ("IfMatch" in args or "IfNoneMatch" in args):
                        self._takes_if_match = False  # If-Match refused: last writer wins from now on
                        continue
                    raise
                with self._lock:
                    self._entries = entries
                return


_GONE: Any = object()


def _trusted(entry: dict[str, Any] | None, st: ObjectStat) -> Digest | None:
    """The entry's digest, if the object still has the (size, ETag) it was hashed at."""
    if not entry:
        return None
    try:
        if entry["size"] != st.st_size or entry["etag"] != st.etag:
            return None
        return Digest(size=int(entry["size"]), sha256=str(entry["sha256"]), git_sha1=entry.get("git_sha1"))
    except (KeyError, TypeError, ValueError):
        return None
