"""The sha256 and size of a job's media: what a render's job.json records as `media`.

    "media": {
      "cond_image": {"sha256": "<64 hex>", "size": <bytes>},
      "cond_audio": {"person1": {"sha256": ..., "size": ...}, "person2": null}   # null: silent
    }

`cond_audio` has the job's speakers (one or two). What is hashed is the bytes as they were decoded:
a local file as it is, an s3:// object as fetched (once: it is decoded from the same temporary
file), an https URL or data: URI as the RunPod worker wrote it to its scratch folder (the fetched
file, the decoded payload). Paths are not part of it: the same bytes at another path are the same
media.

The RunPod worker compares these with a retried job's media (`job_media_hashes`, which hashes
without decoding) before it returns a finished output: a retry with other media is refused.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from mt_assets.jobs.media import S3_PREFIX, MediaError, download_s3
from mt_assets.jobs.schema import SPEAKERS, JobError, RenderJob

T = TypeVar("T")
_READ_BLOCK = 1024 * 1024


def file_entry(path: Path) -> dict[str, Any]:
    """{"sha256", "size"} of the file at `path`."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(_READ_BLOCK):
            digest.update(block)
            size += len(block)
    return {"sha256": digest.hexdigest(), "size": size}


def decoded(ref: str, load: Callable[[str], T]) -> tuple[T, dict[str, Any]]:
    """`load(ref)` and the {"sha256", "size"} of the bytes it decoded.

    `ref` is a resolved local path or an s3:// URI; an s3:// object is fetched once into a temporary
    file, which `load` decodes (its messages still name `ref`). Raises MediaError.
    """
    if not ref.startswith(S3_PREFIX):
        value = load(ref)  # reports a missing or undecodable file first
        return value, _entry(ref, Path(ref))
    with tempfile.TemporaryDirectory(prefix="mt-media-") as folder:
        path = Path(folder) / f"media{PurePosixPath(ref).suffix[:16]}"
        download_s3(ref, path)
        try:
            value = load(str(path))
        except MediaError as e:
            raise MediaError(str(e).replace(str(path), ref)) from None
        return value, _entry(ref, path)


def media_section(image: Mapping[str, Any], audio: Sequence[Mapping[str, Any] | None]) -> dict[str, Any]:
    """The `media` section of job.json from the image's entry and one per speaker (None: silent)."""
    return {
        "cond_image": dict(image),
        "cond_audio": {
            name: None if entry is None else dict(entry) for name, entry in zip(SPEAKERS, audio, strict=False)
        },
    }


def job_media_hashes(job: RenderJob) -> dict[str, Any]:
    """The `media` section for `job`'s media as they are now, without decoding them.

    Raises JobError naming the field for a missing file or an s3:// object that cannot be fetched.
    """

    def hashed(field: str, ref: str) -> dict[str, Any]:
        try:
            if not ref.startswith(S3_PREFIX):
                return _entry(ref, Path(ref))
            with tempfile.TemporaryDirectory(prefix="mt-media-") as folder:
                path = Path(folder) / "media"
                download_s3(ref, path)
                return file_entry(path)
        except MediaError as e:
            raise JobError(job.source, field, str(e)) from None

    image = hashed("cond_image", job.cond_image)
    audio = [
        None if ref is None else hashed(f"cond_audio.{name}", ref)
        for name, ref in zip(SPEAKERS, job.cond_audio, strict=False)
    ]
    return media_section(image, audio)


def media_differences(
    before: Mapping[str, Any], now: Mapping[str, Any]
) -> list[tuple[str, str | None, str | None]]:
    """(field, sha256 before, sha256 now) for each medium whose bytes differ; None: none there (silent).

    Fields are named as in messages: 'cond_image', 'cond_audio.person1', ...
    """

    def sha(entry: Any) -> str | None:
        return entry.get("sha256") if isinstance(entry, Mapping) else None

    pairs = [("cond_image", sha(before.get("cond_image")), sha(now.get("cond_image")))]
    audio_before = before.get("cond_audio") or {}
    audio_now = now.get("cond_audio") or {}
    for name in sorted(set(audio_before) | set(audio_now)):
        pairs.append((f"cond_audio.{name}", sha(audio_before.get(name)), sha(audio_now.get(name))))
    return [(field, b, n) for field, b, n in pairs if b != n]


def _entry(ref: str, path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MediaError(f"{ref}: {'no such file' if not path.exists() else 'not a regular file'}")
    try:
        return file_entry(path)
    except OSError as e:
        raise MediaError(f"{ref}: cannot be read: {type(e).__name__}: {e.strerror or e}") from None
