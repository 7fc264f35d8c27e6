"""Where files come from: the Hugging Face Hub, an S3-compatible bucket, or a mirror folder."""

from __future__ import annotations

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

        return S3Source.from_uri(spec)
    if "://" in spec:
        raise SourceError(f"source {spec}: expected hub, s3://bucket/prefix or a folder path")
    return MirrorSource(spec)


__all__ = ["MirrorSource", "Source", "SourceError", "TransientSourceError", "open_source"]
