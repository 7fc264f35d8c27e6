"""What a source is: somewhere a manifest file's bytes can be fetched from, at its pinned revision.

A source pushes a file's bytes into an AtomicWriter (volume/atomic.py), which hashes them on the
way in and places them only if they match the pin. Sources never write to the volume directly.

Resuming: when `supports_ranges` is true, `fetch` starts at `writer.resume_from` (bytes kept from
an interrupted attempt). A source that finds it cannot serve the range (a server answering 200
with the whole body) calls `writer.truncate_to(0)` and sends everything.

Errors: `TransientSourceError` for what a retry may cure (connection dropped, timeouts, HTTP 5xx,
throttling); `SourceError` for what it will not (no such file or revision, access denied). The
messages name the file and the source URI and never contain credentials.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from mt_assets.manifest import ManifestFile
from mt_assets.volume import AtomicWriter


class SourceError(RuntimeError):
    """Fetching failed in a way a retry will not fix."""


class TransientSourceError(SourceError):
    """Fetching failed in a way a retry may fix."""


class Source(ABC):
    #: how the source was configured, for messages and metadata (never credentials)
    uri: str
    #: whether fetch() can continue from writer.resume_from
    supports_ranges: bool = False

    @abstractmethod
    def uri_for(self, f: ManifestFile) -> str:
        """Where `f` comes from, e.g. s3://bucket/prefix/<dir>/<path> or hub://<repo>@<revision>/<path>."""

    @abstractmethod
    def fetch(self, f: ManifestFile, writer: AtomicWriter, on_bytes: Callable[[int], None]) -> None:
        """Write `f`'s bytes into `writer` (from writer.resume_from when supports_ranges), calling
        on_bytes(n) as they arrive. Does not commit."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the default has none."""
