"""Where the files live: a volume, its atomic writes, hash cache and writer locks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mt_assets.volume.atomic import AtomicWriter, Expected, IntegrityError, VolumeFullError
from mt_assets.volume.base import FileState, ObjectStat, Volume
from mt_assets.volume.hashing import Digest, hash_file
from mt_assets.volume.local import LocalVolume, LockLost, VolumeError, WriterBusy
from mt_assets.volume.lock import LockOwner, LockTimeout, WriterLock

if TYPE_CHECKING:
    from mt_assets.volume.s3 import S3Volume


def open_volume(spec: str) -> LocalVolume | S3Volume:
    """A volume from its configuration string (MT_VOLUME or --volume): a folder path, or
    s3://bucket[/prefix] for one reached through an S3-compatible API (audit and provision)."""
    if spec.startswith("s3://"):
        from mt_assets.volume.s3 import S3Volume

        return S3Volume.from_uri(spec)
    return LocalVolume(spec)


def close_volume(volume: object) -> None:
    """Release what a volume holds: an S3Volume's pending hash-record entries and connections; a
    folder holds nothing."""
    close = getattr(volume, "close", None)
    if close is not None:
        close()


def open_mounted_volume(spec: str, purpose: str) -> LocalVolume:
    """A volume that must be a folder, for `purpose` (render, verify-offline, the worker): those read
    the files as a filesystem, which the S3 API is not. VolumeError for s3://, saying so."""
    if spec.startswith("s3://"):
        raise VolumeError(
            f"volume {spec}: {purpose} needs a mounted volume (a folder such as /runpod-volume or "
            "/workspace); an s3:// volume serves audit and provision only"
        )
    return LocalVolume(spec)


__all__ = [
    "AtomicWriter",
    "Digest",
    "Expected",
    "FileState",
    "IntegrityError",
    "LocalVolume",
    "LockLost",
    "LockOwner",
    "LockTimeout",
    "ObjectStat",
    "Volume",
    "VolumeError",
    "VolumeFullError",
    "WriterBusy",
    "WriterLock",
    "close_volume",
    "hash_file",
    "open_mounted_volume",
    "open_volume",
]
