"""The worker's environment: the offline switches it sets, and the settings it reads.

Set by `go_offline()` at the very start of `python -m mt_assets.worker`, before anything imports a
Hugging Face library (huggingface_hub reads HF_HUB_OFFLINE once, when it is imported):

    HF_HUB_OFFLINE=1  TRANSFORMERS_OFFLINE=1  HF_DATASETS_OFFLINE=1   no request to the Hub at all
    HF_HUB_DISABLE_TELEMETRY=1  HF_HUB_DISABLE_IMPLICIT_TOKEN=1        nothing sent, no token read

A worker loads only what the volume holds (`mt-assets verify-offline` proves it for the volume);
these make a file that is not there fail at once instead of being fetched at the first cold start.

Read by `WorkerSettings.from_env()`, through mt_assets.config (docs/configuration.md):

    MT_VOLUME         the volume folder (default /runpod-volume, where RunPod mounts it on serverless)
    MT_PROFILE        a shipped profile (default as for the CLI: tiny), or
    MT_MANIFEST       a manifest YAML file instead (not both)
    MT_RENDER_DEVICE  cuda | cpu (default: cuda when torch sees one, else cpu)
    MT_OUTPUT_S3      s3://bucket/prefix for `return_video: s3` (the default when set); the usual
                      AWS_* variables give the endpoint, region and credentials
    MT_LOAD_STRATEGY  how checkpoints are read (mt_assets.models.reading; default parallel)
    MT_PERSISTENT_PARAMS  low VRAM: DiT parameters kept on the device (mt_assets.render.low_vram;
                      default unset, the whole DiT)

Secrets (AWS keys, HF_TOKEN, RunPod keys) are left to the libraries that use them and never copied
into settings, logs or outputs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from mt_assets import config

OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
}
DEFAULT_VOLUME = "/runpod-volume"
# A setting the worker cannot start with; the message names the variable and the value.
ConfigError = config.ConfigError


def go_offline(env: dict[str, str] | None = None) -> None:
    """Set OFFLINE_ENV (overriding what is there: a worker is offline whatever the deployment says)."""
    target = os.environ if env is None else env
    target.update(OFFLINE_ENV)


@dataclass(frozen=True)
class WorkerSettings:
    volume: str = DEFAULT_VOLUME
    profile: str | None = None  # None when `manifest` is given
    manifest: str | None = None  # a manifest YAML file
    device: str | None = None  # None: cuda when available, else cpu (decided when torch is loaded)
    output_s3: str | None = None  # s3://bucket/prefix
    persistent_params: int | None = None  # low VRAM's budget; None: the whole DiT on the device
    # Limits (not from the environment; tests lower them): media fetched over https or given as
    # data:, and the mp4 returned inline (outputs.MAX_INLINE_VIDEO_BYTES).
    max_media_bytes: int = 2 * 1024**3
    media_timeout: float = 300.0
    max_inline_video_bytes: int = 10 * 1024**2

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerSettings:
        profile = config.PROFILE.read_or(None, env)
        manifest = config.MANIFEST.read(env)
        if profile and manifest:
            raise ConfigError(
                f"MT_PROFILE={profile!r} and MT_MANIFEST={manifest!r} are both set: give one of them"
            )
        return cls(
            volume=config.VOLUME.read_or(DEFAULT_VOLUME, env),
            # The CLI's default profile (mt_assets.config) when neither is given.
            profile=None if manifest else (profile or config.PROFILE.default),
            manifest=manifest,
            device=config.RENDER_DEVICE.read(env),
            output_s3=config.OUTPUT_S3.read(env),
            persistent_params=config.PERSISTENT_PARAMS.read(env),
        )
