"""The hash cache: remembers the digests of files on the volume so audits need not re-read them.

Stored in <volume>/.mt/hashes.sqlite, one row per file:

    path TEXT PRIMARY KEY      -- relative to <volume>, '/'-separated
    size INTEGER, mtime_ns INTEGER, inode INTEGER
    sha256 TEXT                -- of the bytes as they were when (size, mtime_ns, inode) was recorded
    git_sha1 TEXT              -- git blob id, only for small files (see hashing.py); may be NULL
    hashed_at REAL             -- unix time of the hashing, for reports

A row is trusted only while all three stat fields still match; anything else re-hashes.
A write that keeps size and mtime (a bit flip with the mtime put back) is invisible here by
design: the full pass (`audit --full`, the nightly schedule) ignores the cache.

The cache is disposable: a database that is unreadable or corrupt (a crash on a network
filesystem, say) is moved aside and started afresh, which only costs re-hashing.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

from mt_assets.volume.hashing import Digest

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hashes (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    git_sha1 TEXT,
    hashed_at REAL NOT NULL
)
"""


class HashCache:
    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self._lock = threading.Lock()
        self._conn = self._open()

    def _open(self) -> sqlite3.Connection:
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = self._connect()
            conn.execute("SELECT count(*) FROM hashes").fetchone()
            return conn
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
        """The cached digest of `path`, if the file still has the size, mtime and inode it was hashed with."""
        with self._lock:
            row = self._conn.execute(
                "SELECT size, mtime_ns, inode, sha256, git_sha1 FROM hashes WHERE path = ?", (path,)
            ).fetchone()
        if row is None:
            return None
        size, mtime_ns, inode, sha256, git_sha1 = row
        if (size, mtime_ns, inode) != (st.st_size, st.st_mtime_ns, st.st_ino):
            return None
        return Digest(size=size, sha256=sha256, git_sha1=git_sha1)

    def store(self, path: str, st: os.stat_result, digest: Digest) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO hashes (path, size, mtime_ns, inode, sha256, git_sha1, hashed_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (path, st.st_size, st.st_mtime_ns, st.st_ino, digest.sha256, digest.git_sha1, time.time()),
            )

    def forget(self, path: str) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM hashes WHERE path = ?", (path,))

    def close(self) -> None:
        with self._lock:
            self._conn.close()
