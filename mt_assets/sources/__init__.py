"""Where files come from: the Hugging Face Hub, an S3-compatible bucket, a mirror folder, or a volume.

A folder or an `s3://bucket/prefix` is read in one of two layouts, told apart by one rule: where it
holds `models/` (a folder of that name; for S3, an object under `<prefix>/models/`) it is a *volume*
(`models/<dir>/<path>`, as a mounted RunPod volume or an s3:// volume is laid out) and is read as one
(VolumeSource: replication); otherwise it is a *mirror* (`<dir>/<path>`, what `mt-assets tiny build` and
`aws s3 sync` of a mirror make). Manifest dirs are repository folders such as Wan2.1-I2V-14B-480P; a
mirror holding a repository folder named `models` would be read as a volume, and its files then
reported missing on "the source volume": name its parent folder, or rename the dir.
"""

from __future__ import annotations

from pathlib import Path

from mt_assets.sources.base import Source, SourceError, TransientSourceError
from mt_assets.sources.mirror import MirrorSource


def open_source(spec: str, *, hub_endpoint: str | None = None) -> Source:
    """A source from its configuration string (MT_SOURCE or --source): hub | s3://bucket/prefix | folder.

    `hub_endpoint` overrides HF_ENDPOINT for the hub (tests, self-hosted mirrors).
    """
    if spec == "hub":
        from mt_assets.sources.hub import HubSource

        return HubSource(endpoint=hub_endpoint)
    if spec.startswith("s3://"):
        from mt_assets.sources.s3 import S3Source

        bucket = S3Source.from_uri(spec)
        return bucket.as_volume() if bucket.holds_volume() else bucket
    if "://" in spec:
        raise SourceError(f"source {spec}: expected hub, s3://bucket/prefix or a folder path")
    if (Path(spec) / "models").is_dir():
        from mt_assets.sources.volume import VolumeSource
        from mt_assets.volume import LocalVolume

        return VolumeSource(LocalVolume(spec))
    return MirrorSource(spec)


__all__ = ["MirrorSource", "Source", "SourceError", "TransientSourceError", "open_source"]
