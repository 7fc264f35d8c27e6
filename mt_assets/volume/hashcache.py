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
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
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


class HashCache:
    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self._lock = threading.Lock()
        self._conn = self._open()

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
                    "SELECT size, mtime_ns, inode, ctime_ns, sha256, git_sha1 FROM hashes_v2 WHERE path = ?",
                    (path,),
                ).fetchone()
        except sqlite3.Error:
            return None  # a busy or damaged cache only costs a re-hash
        if row is None:
            return None
        size, mtime_ns, inode, ctime_ns, sha256, git_sha1 = row
        if (size, mtime_ns, inode, ctime_ns) != (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns):
            return None
        return Digest(size=size, sha256=sha256, git_sha1=git_sha1)

    def store(self, path: str, st: os.stat_result, digest: Digest) -> None:
        """Remember a digest; a cache that cannot be written (busy, read-only) is skipped."""
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._conn.execute(
                "INSERT OR REPLACE INTO hashes_v2"
                " (path, size, mtime_ns, inode, ctime_ns, sha256, git_sha1, hashed_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    path,
                    st.st_size,
                    st.st_mtime_ns,
                    st.st_ino,
                    st.st_ctime_ns,
                    digest.sha256,
                    digest.git_sha1,
                    time.time(),
                ),
            )

    def forget(self, path: str) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM hashes_v2 WHERE path = ?", (path,))

    def close(self) -> None:
        with self._lock:
            self._conn.close()


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
