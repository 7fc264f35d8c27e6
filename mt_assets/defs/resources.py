"""Resources: the volume and the source, configured from the environment (MT_VOLUME, MT_SOURCE).

Credentials are not resources' fields: HF_TOKEN and the AWS variables are read by
huggingface_hub and boto3 themselves, so they never appear in run config or the UI.
"""

from __future__ import annotations

import dagster as dg

from mt_assets.sources import Source, open_source
from mt_assets.volume import LocalVolume, open_mounted_volume


class VolumeResource(dg.ConfigurableResource):
    """The shared volume: a folder such as /runpod-volume, /workspace or ./var/volume."""

    path: str

    def open(self) -> LocalVolume:
        return open_mounted_volume(self.path, "Dagster (a later issue adds s3:// volumes there)")


class SourceResource(dg.ConfigurableResource):
    """Where missing files come from: hub, s3://bucket/prefix or a mirror folder."""

    spec: str
    hub_endpoint: str | None = None  # overrides HF_ENDPOINT for spec "hub"

    def open(self) -> Source:
        return open_source(self.spec, hub_endpoint=self.hub_endpoint)
