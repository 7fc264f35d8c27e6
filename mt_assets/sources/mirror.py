"""A mirror folder (local disk or NFS) in the volume's own `<dir>/<path>` layout.

`mt-assets tiny build DIR` writes such a folder; a team can also rsync one from a machine with
internet access. Reads resume from any offset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mt_assets.manifest import ManifestFile
from mt_assets.sources.base import Source, SourceError, TransientSourceError
from mt_assets.volume import AtomicWriter
from mt_assets.volume.direct import aligned_buffer
from mt_assets.volume.hashing import CHUNK_SIZE


class MirrorSource(Source):
    supports_ranges = True

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise SourceError(f"source {root}: not a directory")
        self.uri = str(self.root)

    def path_for(self, f: ManifestFile) -> Path:
        return self.root / f.dir / f.path

    def uri_for(self, f: ManifestFile) -> str:
        return str(self.path_for(f))

    def fetch(self, f: ManifestFile, writer: AtomicWriter, on_bytes: Callable[[int], None]) -> None:
        path = self.path_for(f)
        with self._reading(f, path):
            src = open(path, "rb")  # noqa: SIM115 - closed below; errors of the read side only
        with src:
            if writer.resume_from:
                with self._reading(f, path):
                    src.seek(writer.resume_from)
            # Page-aligned, so whole chunks can be written directly (volume/direct.py).
            buffer = memoryview(aligned_buffer(CHUNK_SIZE))
            while True:
                with self._reading(f, path):
                    n = src.readinto1(buffer)  # what is there now: a pipe or NFS may give less
                if not n:
                    break
                writer.write(buffer[:n])  # volume errors (a full disk) propagate as they are
                on_bytes(n)

    @contextmanager
    def _reading(self, f: ManifestFile, path: Path) -> Iterator[None]:
        """Translate errors of the mirror side into source errors."""
        try:
            yield
        except FileNotFoundError:
            raise SourceError(f"{f.target} from {path}: not in the mirror") from None
        except IsADirectoryError:
            raise SourceError(f"{f.target} from {path}: is a directory in the mirror") from None
        except PermissionError as e:
            raise SourceError(f"{f.target} from {path}: {e.strerror}") from None
        except OSError as e:
            # An NFS hiccup or a stale handle may pass; the retry resumes from the staged bytes.
            raise TransientSourceError(f"{f.target} from {path}: {e.strerror or e}") from e
