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
from mt_assets.volume.base import Writer
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
        read_file_into(path, writer, on_bytes, f"{f.target} from {path}", missing="not in the mirror")


def read_file_into(
    path: Path, writer: Writer, on_bytes: Callable[[int], None], where: str, *, missing: str
) -> None:
    """Write the file at `path` into `writer` from writer.resume_from (a mirror's file, or a mounted
    volume's read as a source: LocalVolume.read_into). Errors of the read side are source errors that
    begin with `where` (`missing`: what a file not there is called); the writer's propagate as they are."""
    with _reading(where, missing):
        src = open(path, "rb")  # noqa: SIM115 - closed below; errors of the read side only
    with src:
        if writer.resume_from:
            with _reading(where, missing):
                src.seek(writer.resume_from)
        # Page-aligned, so whole chunks can be written directly (volume/direct.py).
        buffer = memoryview(aligned_buffer(CHUNK_SIZE))
        while True:
            with _reading(where, missing):
                n = src.readinto1(buffer)  # what is there now: a pipe or NFS may give less
            if not n:
                break
            writer.write(buffer[:n])  # volume errors (a full disk) propagate as they are
            on_bytes(n)


@contextmanager
def _reading(where: str, missing: str) -> Iterator[None]:
    """Translate errors of the read side into source errors."""
    try:
        yield
    except FileNotFoundError:
        raise SourceError(f"{where}: {missing}") from None
    except IsADirectoryError:
        raise SourceError(f"{where}: is a directory") from None
    except PermissionError as e:
        raise SourceError(f"{where}: {e.strerror}") from None
    except OSError as e:
        # An NFS hiccup or a stale handle may pass; the retry resumes from the staged bytes.
        raise TransientSourceError(f"{where}: {e.strerror or e}") from e
