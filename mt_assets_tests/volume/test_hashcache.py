"""The hash cache asked and written in batches answers exactly as one file at a time."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

import mt_assets.volume.hashcache as hashcache
from mt_assets.volume.hashcache import HashCache
from mt_assets.volume.hashing import Digest


def _files(tmp_path: Path, n: int) -> list[tuple[str, os.stat_result]]:
    out = []
    for i in range(n):
        path = tmp_path / f"f{i}"
        path.write_bytes(b"x" * i)
        out.append((f"models/d/f{i}", os.stat(path)))
    return out


def _rows(db: Path) -> int:
    with sqlite3.connect(db) as other:  # another connection: what other processes see
        return int(other.execute("SELECT count(*) FROM hashes_v2").fetchone()[0])


def test_lookup_many_answers_what_lookup_answers_across_query_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hashcache, "LOOKUP_BATCH", 2)
    cache = HashCache(tmp_path / "hashes.sqlite")
    files = _files(tmp_path, 7)
    for i, (path, st) in enumerate(files):
        if i != 3:  # never hashed
            cache.store(path, st, Digest(size=st.st_size, sha256=f"{i:064x}"))
    os.utime(tmp_path / "f5", ns=(1, 1))  # changed since: its row is not trusted
    files[5] = (files[5][0], os.stat(tmp_path / "f5"))
    found = cache.lookup_many(files)
    assert found == {path: d for path, st in files if (d := cache.lookup(path, st)) is not None}
    assert sorted(found) == [f"models/d/f{i}" for i in (0, 1, 2, 4, 6)]


def test_rows_stored_in_a_batch_are_written_together_at_the_latest_on_leaving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hashcache, "STORE_BATCH", 3)
    db = tmp_path / "hashes.sqlite"
    cache = HashCache(db)
    files = _files(tmp_path, 5)
    with cache.batched():
        for path, st in files[:2]:
            cache.store(path, st, Digest(size=st.st_size, sha256="a" * 64))
        assert _rows(db) == 0  # gathered
        cache.store(*files[2], Digest(size=2, sha256="a" * 64))
        assert _rows(db) == 3  # a batch full: one transaction
        cache.store(*files[3], Digest(size=3, sha256="a" * 64))
        cache.store(*files[4], Digest(size=4, sha256="a" * 64))
        cache.forget(files[4][0])  # forgotten before it was written: not written at all
    assert _rows(db) == 4
    assert cache.lookup(*files[3]) == Digest(size=3, sha256="a" * 64)
    assert cache.lookup(*files[4]) is None
    cache.store(*files[4], Digest(size=4, sha256="b" * 64))  # outside a batch: at once
    assert _rows(db) == 5
