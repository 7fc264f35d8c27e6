"""A volume as a source: replication, one volume copied to another (issue 23).

`mt-assets provision --source <a volume> --volume <another>`, where either is a mounted folder or an
`s3://` volume (sources/__init__.py says how a source is recognised as a volume: it holds `models/`).
A RunPod team with endpoints in two datacenters keeps their volumes identical this way, since RunPod
never syncs them.

Built on the Volume interface's read side (volume/base.py), so one class serves both backends: `state`
gives the file's size (checked against the manifest before a byte moves) and `read_into` its bytes
from writer.resume_from (a file read from an offset, or ranged GETs), so an interrupted copy resumes
where the destination can keep partial bytes (a folder; an S3 destination restarts the file).

What the source volume knows about its files is no proof for the destination: its hash record is not
consulted. The destination's writer hashes the bytes it receives and places them only when they match
the manifest's pin, exactly as from any other source; provision.apply then audits the destination in
full (every byte re-read, no hash record), which the provision command reports.
"""

from __future__ import annotations

from collections.abc import Callable

from mt_assets.manifest import ManifestFile
from mt_assets.sources.base import Source, SourceError
from mt_assets.volume import AtomicWriter, Volume, VolumeError, close_volume


class VolumeSource(Source):
    supports_ranges = True

    def __init__(self, volume: Volume) -> None:
        self.volume = volume
        self.uri = volume.uri

    def __repr__(self) -> str:
        return f"VolumeSource({self.volume!r})"

    def uri_for(self, f: ManifestFile) -> str:
        return f"{self.uri.rstrip('/')}/{f.target}"

    def fetch(self, f: ManifestFile, writer: AtomicWriter, on_bytes: Callable[[int], None]) -> None:
        where = f"{f.target} from {self.uri_for(f)}"
        try:
            state = self.volume.state(f.target)
        except VolumeError as e:
            raise SourceError(f"{where}: {e}") from None
        if not state.present:
            raise SourceError(f"{where}: {state.problem} on the source volume")
        size = state.st.st_size
        expected = f.size if f.size is not None else writer.expected.size
        if expected is not None and size != expected:
            raise SourceError(
                f"{where}: the source volume's file is {size} bytes, the manifest expects {expected}; "
                "nothing fetched"
            )
        self.volume.read_into(f.target, state.st, writer, on_bytes)

    def close(self) -> None:
        close_volume(self.volume)
