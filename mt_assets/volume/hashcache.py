"""The hash cache: remembers the digests of files on the volume so audits need not re-read them.

Stored in <volume>/.mt/hashes.sqlite, one row per file:

    path TEXT PRIMARY KEY      -- relative to <volume>, '/'-separated
    size INTEGER, mtime_ns INTEGER, inode INTEGER, ctime_ns INTEGER
    sha256 TEXT                -- of the bytes as they were when those stat fields were recorded
    git_sha1 TEXT              -- git blob id, only for small files (see hashing.py); may be NULL
    hashed_at REAL             -- unix time of the hashing, for reports

A row is trusted only while all four stat fields still match; anything else re-hashes. ctime
cannot be set from user space, so a write with the mtime put back, or a file deleted and
recreated on a reused inode, still re-hashes. What stays invisible here is corruption below
the filesystem (bit rot, a bad disk or server) that changes bytes without any stat field: the
full pass (`audit --full`, the nightly schedule) ignores the cache for that. The device number
is left out on purpose: it changes with every mount of a network volume.

The cache is disposable: a database that is unreadable or corrupt (a crash on a network
filesystem, say) is moved aside and started afresh, which only costs re-hashing.

An audit of many files asks in batches (`lookup_many`: one query per LOOKUP_BATCH paths) and,
inside `batched()`, writes the rows of the files it hashed STORE_BATCH at a time, in one
transaction each. A transaction per row creates and deletes the rollback journal: ~32 µs a row on
a local ext4 against ~4 µs batched, and a round trip or more each on a network filesystem.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mt_assets.volume.hashing import Digest

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hashes_v2 (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    git_sha1 TEXT,
    hashed_at REAL NOT NULL
)
"""

CACHE_NAME = "hashes.sqlite"  # in <volume>/.mt/
LOOKUP_BATCH = 500  # paths per query (SQLite allows 999 parameters before 3.32)
STORE_BATCH = 1000  # rows per write transaction inside batched()

_COLUMNS = "size, mtime_ns, inode, ctime_ns, sha256, git_sha1"
_INSERT = (
    "INSERT OR REPLACE INTO hashes_v2 (path, size, mtime_ns, inode, ctime_ns, sha256, git_sha1, hashed_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_Row = tuple[int, int, int, int, str, "str | None"]


class HashCache:
    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self._lock = threading.Lock()
        self._conn = self._open()
        self._pending: list[tuple[Any, ...]] | None = None  # rows to write, inside batched()

    def _open(self) -> sqlite3.Connection:
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = self._connect()
            conn.execute("SELECT count(*) FROM hashes_v2").fetchone()
            return conn
        except sqlite3.OperationalError:
            raise  # busy or locked: a healthy database that another process is using
        except sqlite3.DatabaseError:
            aside = self.db_path.with_name(f"{self.db_path.name}.corrupt-{int(time.time())}")
            os.replace(self.db_path, aside)
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        # Several processes (audits, provisioners, the drift sensor) share the file; the
        # default rollback journal works on network filesystems where WAL's shared memory
        # does not.
        conn = sqlite3.connect(self.db_path, timeout=30.0, check_same_thread=False, isolation_level=None)
        # The cache is disposable (a corrupt file is moved aside and rebuilt), so it need not
        # wait for the disk on every row: an fsync per file cost ~1.6 ms in the audit benchmark.
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute(_SCHEMA)
        return conn

    def lookup(self, path: str, st: os.stat_result) -> Digest | None:
        """The cached digest of `path`, if the file still has the stat it was hashed with."""
        try:
            with self._lock:
                row = self._conn.execute(
                    f"SELECT {_COLUMNS} FROM hashes_v2 WHERE path = ?", (path,)
                ).fetchone()
        except sqlite3.Error:
            return None  # a busy or damaged cache only costs a re-hash
        return _trusted(row, st)

    def lookup_many(self, files: Sequence[tuple[str, os.stat_result]]) -> dict[str, Digest]:
        """`lookup` of each (path, stat), a query per LOOKUP_BATCH paths: the paths answered."""
        found: dict[str, Digest] = {}
        for start in range(0, len(files), LOOKUP_BATCH):
            batch = dict(files[start : start + LOOKUP_BATCH])
            marks = ",".join("?" * len(batch))
            try:
                with self._lock:
                    rows = self._conn.execute(
                        f"SELECT path, {_COLUMNS} FROM hashes_v2 WHERE path IN ({marks})", tuple(batch)
                    ).fetchall()
            except sqlite3.Error:
                continue  # a busy or damaged cache only costs re-hashing
            for path, *row in rows:
                digest = _trusted(tuple(row), batch[path])
                if digest is not None:
                    found[path] = digest
        return found

    def store(self, path: str, st: os.stat_result, digest: Digest) -> None:
        """Remember a digest; a cache that cannot be written (busy, read-only) is skipped.

        Inside `batched()` the row is written with the next STORE_BATCH, at the latest on leaving.
        """
        row = (
            path,
            st.st_size,
            st.st_mtime_ns,
            st.st_ino,
            st.st_ctime_ns,
            digest.sha256,
            digest.git_sha1,
            time.time(),
        )
        with self._lock:
            if self._pending is None:
                self._write([row])
                return
            self._pending.append(row)
            if len(self._pending) >= STORE_BATCH:
                self._write(self._pending)
                self._pending = []

    @contextlib.contextmanager
    def batched(self) -> Iterator[None]:
        """Within: `store` gathers rows and writes STORE_BATCH of them per transaction."""
        with self._lock:
            outer = self._pending is not None
            if not outer:
                self._pending = []
        try:
            yield
        finally:
            if not outer:
                with self._lock:
                    rows, self._pending = self._pending or [], None
                    self._write(rows)

    def _write(self, rows: list[tuple[Any, ...]]) -> None:
        """Write rows in one transaction (called holding the lock); a cache that cannot be written is skipped."""
        if not rows:
            return
        with contextlib.suppress(sqlite3.Error):
            if len(rows) == 1:
                self._conn.execute(_INSERT, rows[0])
                return
            self._conn.execute("BEGIN")
            try:
                self._conn.executemany(_INSERT, rows)
                self._conn.execute("COMMIT")
            except sqlite3.Error:
                self._conn.execute("ROLLBACK")
                raise

    def forget(self, path: str) -> None:
        with self._lock:
            if self._pending:
                self._pending = [row for row in self._pending if row[0] != path]
            self._conn.execute("DELETE FROM hashes_v2 WHERE path = ?", (path,))

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _trusted(row: _Row | None, st: os.stat_result) -> Digest | None:
    """The digest of a row, if the file's stat still matches the one it was hashed with."""
    if row is None:
        return None
    size, mtime_ns, inode, ctime_ns, sha256, git_sha1 = row
    if (size, mtime_ns, inode, ctime_ns) != (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns):
        return None
    return Digest(size=size, sha256=sha256, git_sha1=git_sha1)


class ReadOnlyHashCache(HashCache):
    """The volume's hash cache, opened for reading only; `lookup` as HashCache's, `store` does nothing."""

    def __init__(self, db_path: Path) -> None:
        self.state = "read-only"
        super().__init__(db_path)

    def _open(self) -> sqlite3.Connection:
        if not self.db_path.is_file():
            self.state = "absent"
            return self._empty()
        try:
            conn = sqlite3.connect(
                f"{self.db_path.resolve().as_uri()}?mode=ro",
                uri=True,
                timeout=5.0,
                check_same_thread=False,
                isolation_level=None,
            )
            conn.execute("SELECT count(*) FROM hashes_v2").fetchone()
            return conn
        except sqlite3.Error as e:
            # Busy with a writer, an older schema, a damaged file: it only costs 'unverified'.
            self.state = f"not used ({e})"
            return self._empty()

    def _empty(self) -> sqlite3.Connection:
        conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        conn.execute(
            "CREATE TABLE hashes_v2 (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER,"
            " inode INTEGER, ctime_ns INTEGER, sha256 TEXT, git_sha1 TEXT, hashed_at REAL)"
        )
        return conn

    def store(self, path: str, st: Any, digest: Any) -> None:  # a starting worker writes nothing
        pass

    def forget(self, path: str) -> None:
        pass
