"""What the system needs: the manifest schema, and the profiles shipped in `profiles/`."""

from __future__ import annotations

from pathlib import Path

from mt_assets.manifest.schema import (
    BUNDLE_LOADERS,
    KINDS,
    PRESETS,
    Bundle,
    Component,
    Manifest,
    ManifestError,
    ManifestFile,
    is_commit,
    load_manifest,
    parse_manifest,
)

PROFILES_DIR = Path(__file__).parent / "profiles"


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def profile_path(name: str) -> Path:
    path = PROFILES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ManifestError(f"profile '{name}': not found (known: {', '.join(profile_names())})")
    return path


def load_profile(name: str) -> Manifest:
    """Load a shipped profile by name, e.g. 'multitalk-480p'."""
    return load_manifest(profile_path(name), display=f"profiles/{name}.yaml")


def profiles_serving(preset: str) -> list[str]:
    """The shipped profiles whose `presets` include `preset` (for messages that say where to go)."""
    return [name for name in profile_names() if preset in load_profile(name).presets]


__all__ = [
    "BUNDLE_LOADERS",
    "KINDS",
    "PRESETS",
    "PROFILES_DIR",
    "Bundle",
    "Component",
    "Manifest",
    "ManifestError",
    "ManifestFile",
    "is_commit",
    "load_manifest",
    "load_profile",
    "parse_manifest",
    "profile_names",
    "profile_path",
    "profiles_serving",
]
