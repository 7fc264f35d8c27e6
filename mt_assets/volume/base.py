"""What a volume is, to the audit and the provisioner: the interface both backends keep.

Two backends, one layout (`models/<dir>/<path>`, `.mt/...`; see DESIGN.md):

    LocalVolume  (local.py)  a folder: /runpod-volume, /workspace, an NFS mount, ./var/volume
    S3Volume     (s3.py)     the same volume through an S3-compatible API (RunPod's, moto, MinIO)

What the audit and provisioner use, and nothing more. A volume can also be read as a provision
*source* (replication: sources/volume.py's VolumeSource): `state` gives a file's size, and
`read_into` its bytes, into any Writer from writer.resume_from (a file read from an offset, or ranged
GETs), so a copy resumes.

    uri                          how the volume was named, for reports (never credentials)
    state(target) / states(...)  a FileState: present with its `Stat` (size, and the backend's
                                 identity of those bytes: stat fields, or the ETag), or why not
    digest(target, st, ...)      the file's Digest, from the hash record while `st` still matches
                                 it, else by reading the bytes (and recording them)
    hash_cache                   the hash record: lookup_many, batched (see hashcache.py, s3_hashes.py)
    read_into(target, st, w, cb)  the file's bytes into a Writer, from w.resume_from (source errors)
    free_bytes() / used_bytes()  space; free_bytes() is None where it cannot be known
    writing(target, expected)    holds the target's writer lock and yields a writer (`Writer`): bytes
                                 go in with write(), are hashed on the way, and reach the target only
                                 by commit(), which checks them against `expected` first
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from mt_assets.volume.atomic import Expected
from mt_assets.volume.hashing import Digest


class Stat(Protocol):
    """What the audit needs of a file's stat: its size (os.stat_result and ObjectStat have it)."""

    @property
    def st_size(self) -> int: ...


@dataclass(frozen=True, slots=True)
class ObjectStat:
    """An object's stat, from a listing or HeadObject: its size and ETag (the S3 identity of its bytes)."""

    st_size: int
    etag: str
    last_modified: float = 0.0  # unix time


@dataclass(frozen=True, slots=True)
class FileState:
    """What a stat of a target found: a regular file (or object) with its stat, or why not."""

    st: Any  # os.stat_result (LocalVolume) or ObjectStat (S3Volume); None when there is nothing
    problem: str | None = None  # None when st describes a regular file

    @property
    def present(self) -> bool:
        return self.st is not None and self.problem is None


class Writer(Protocol):
    """An AtomicWriter or an S3 upload: what a Source writes into."""

    expected: Expected

    @property
    def resume_from(self) -> int: ...

    def write(self, data: bytes | bytearray | memoryview) -> None: ...

    def truncate_to(self, size: int) -> None: ...

    def commit(self) -> Digest: ...


class HashRecord(Protocol):
    def lookup_many(self, files: Sequence[tuple[str, Any]]) -> dict[str, Digest]: ...

    def batched(self) -> AbstractContextManager[None]: ...


class Volume(Protocol):
    @property
    def uri(self) -> str: ...

    @property
    def hash_cache(self) -> HashRecord: ...

    def state(self, target: str) -> FileState: ...

    def states(self, targets: Iterable[str]) -> Iterator[FileState]: ...

    def digest(
        self,
        target: str,
        st: Any,
        *,
        use_cache: bool = True,
        git_sha1: bool = False,
        on_bytes: Callable[[int], None] | None = None,
    ) -> tuple[Digest, bool]: ...

    def read_into(self, target: str, st: Any, writer: Writer, on_bytes: Callable[[int], None]) -> None: ...

    def free_bytes(self) -> int | None: ...

    def used_bytes(self) -> int: ...

    def writing(
        self,
        target: str,
        expected: Expected | None = None,
        *,
        wait: bool = True,
        timeout: float | None = None,
        resume: bool = False,
    ) -> AbstractContextManager[Writer]: ...
