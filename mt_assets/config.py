"""Configuration from the environment, with embedded defaults that work on a laptop.

    MT_VOLUME          a folder (default ./var/volume)
    MT_PROFILE         a shipped profile name (default tiny; the real one is multitalk-480p)
    MT_SOURCE          hub | s3://bucket/prefix | a mirror folder (default hub)
    MT_RENDER_BACKEND  local | runpod (default local)

Secrets (HF_TOKEN, AWS keys, RUNPOD_API_KEY) are read where they are used, by the libraries
that use them, and never copied into settings, logs or metadata.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_VOLUME = "var/volume"
DEFAULT_PROFILE = "tiny"
DEFAULT_SOURCE = "hub"


@dataclass(frozen=True)
class Settings:
    volume: str = DEFAULT_VOLUME
    profile: str = DEFAULT_PROFILE
    source: str = DEFAULT_SOURCE
    render_backend: str = "local"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        return cls(
            volume=env.get("MT_VOLUME") or DEFAULT_VOLUME,
            profile=env.get("MT_PROFILE") or DEFAULT_PROFILE,
            source=env.get("MT_SOURCE") or DEFAULT_SOURCE,
            render_backend=env.get("MT_RENDER_BACKEND") or "local",
        )
