"""Asset keys, groups and code versions derived from the manifest: one place, so the UI, the
sensor and the checks always agree.

    models/<component>/<slug of path>   one asset per file, group = component
    bundles/<bundle>                    one asset per bundle, group "bundles"

Keys use [A-Za-z0-9_] only: '-', '.', '/' in names become '_'. The code version is a hash of
the file's manifest entry (repo, revision, dir, path, size, sha256, git_sha1), so a new revision or
hash in the manifest shows the asset stale in the UI.
"""

from __future__ import annotations

import hashlib
import json
import re

import dagster as dg

from mt_assets.manifest import Bundle, ManifestFile

CHECK_NAME = "sha256_matches"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", text)


def file_key(f: ManifestFile) -> dg.AssetKey:
    return dg.AssetKey(["models", slug(f.component), slug(f.path)])


def check_unique_keys(files: tuple[ManifestFile, ...]) -> None:
    """Two files whose names differ only in '-', '.' or '/' would share an asset key."""
    seen: dict[dg.AssetKey, ManifestFile] = {}
    for f in files:
        key = file_key(f)
        if key in seen:
            raise ValueError(
                f"asset key {key.to_user_string()} would stand for both {seen[key].target} and {f.target}: "
                "rename one of them in the manifest"
            )
        seen[key] = f


def bundle_key(b: Bundle) -> dg.AssetKey:
    return dg.AssetKey(["bundles", slug(b.name)])


def group_for(component: str) -> str:
    return slug(component)


def file_code_version(f: ManifestFile) -> str:
    entry = {k: getattr(f, k) for k in ("repo", "revision", "dir", "path", "size", "sha256", "git_sha1")}
    return hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()[:16]


def bundle_code_version(b: Bundle) -> str:
    parts = [b.loader, b.folder, *(file_code_version(f) for f in b.files)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
