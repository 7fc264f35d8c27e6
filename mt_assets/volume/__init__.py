"""Where the files live: a volume, its atomic writes, hash cache and writer locks."""

from __future__ import annotations

from mt_assets.volume.atomic import AtomicWriter, Expected, IntegrityError, VolumeFullError
from mt_assets.volume.hashing import Digest, hash_file
from mt_assets.volume.local import FileState, LocalVolume, LockLost, VolumeError, WriterBusy
from mt_assets.volume.lock import LockOwner, LockTimeout, WriterLock


def open_volume(spec: str) -> LocalVolume:
    """A volume from its configuration string (MT_VOLUME or --volume): a folder path."""
    if spec.startswith("s3://"):
        raise VolumeError(
            f"volume {spec}: S3-compatible volumes are not supported yet; mount the volume and pass its path"
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
    "VolumeError",
    "VolumeFullError",
    "WriterBusy",
    "WriterLock",
    "hash_file",
    "open_volume",
]
