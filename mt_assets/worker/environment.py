"""The worker's environment: the offline switches it sets, and the settings it reads.

Set by `go_offline()` at the very start of `python -m mt_assets.worker`, before anything imports a
Hugging Face library (huggingface_hub reads HF_HUB_OFFLINE once, when it is imported):

    HF_HUB_OFFLINE=1  TRANSFORMERS_OFFLINE=1  HF_DATASETS_OFFLINE=1   no request to the Hub at all
    HF_HUB_DISABLE_TELEMETRY=1  HF_HUB_DISABLE_IMPLICIT_TOKEN=1        nothing sent, no token read

A worker loads only what the volume holds (`mt-assets verify-offline` proves it for the volume);
these make a file that is not there fail at once instead of being fetched at the first cold start.

Read by `WorkerSettings.from_env()`:

    MT_VOLUME         the volume folder (default /runpod-volume, where RunPod mounts it on serverless)
    MT_PROFILE        a shipped profile (default as for the CLI: tiny), or
    MT_MANIFEST       a manifest YAML file instead (not both)
    MT_RENDER_DEVICE  cuda | cpu (default: cuda when torch sees one, else cpu)
    MT_OUTPUT_S3      s3://bucket/prefix for `return_video: s3` (the default when set); the usual
                      AWS_* variables give the endpoint, region and credentials
    MT_LOAD_STRATEGY  how checkpoints are read (mt_assets.models.reading; default parallel)

Secrets (AWS keys, HF_TOKEN, RunPod keys) are left to the libraries that use them and never copied
into settings, logs or outputs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from mt_assets.config import Settings

OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
}
DEFAULT_VOLUME = "/runpod-volume"
DEVICES = ("cuda", "cpu")


class ConfigError(ValueError):
    """A setting the worker cannot start with; the message names the variable and the value."""


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
    # Limits (not from the environment; tests lower them): media fetched over https or given as
    # data:, and the mp4 returned inline (outputs.MAX_INLINE_VIDEO_BYTES).
    max_media_bytes: int = 2 * 1024**3
    media_timeout: float = 300.0
    max_inline_video_bytes: int = 10 * 1024**2

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerSettings:
        env = dict(os.environ if env is None else env)
        profile = env.get("MT_PROFILE") or None
        manifest = env.get("MT_MANIFEST") or None
        if profile and manifest:
            raise ConfigError(
                f"MT_PROFILE={profile!r} and MT_MANIFEST={manifest!r} are both set: give one of them"
            )
        device = (env.get("MT_RENDER_DEVICE") or "").strip().lower() or None
        if device is not None and device not in DEVICES:
            raise ConfigError(f"MT_RENDER_DEVICE={device!r}: expected one of {', '.join(DEVICES)}")
        output_s3 = env.get("MT_OUTPUT_S3") or None
        if output_s3 is not None:
            from mt_assets.sources.base import SourceError
            from mt_assets.sources.s3 import parse_s3_uri

            try:
                parse_s3_uri(output_s3)
            except SourceError as e:
                raise ConfigError(f"MT_OUTPUT_S3: {str(e).removeprefix('source ')}") from None
        return cls(
            volume=env.get("MT_VOLUME") or DEFAULT_VOLUME,
            # The CLI's default profile (mt_assets.config) when neither is given.
            profile=None if manifest else (profile or Settings.from_env(env).profile),
            manifest=manifest,
            device=device,
            output_s3=output_s3,
        )
