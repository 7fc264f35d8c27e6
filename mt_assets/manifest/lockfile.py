"""Locking a manifest: every revision resolved to a commit, every file given its size and hash.

The result is a manifest in the same format (a *lock file*), so everything that takes
`--manifest` takes it. Facts come from the Hub's file metadata (`paths-info` at the commit):

    LFS files       size + sha256 of the content (the LFS oid)
    files in git    size + git_sha1 (the blob id); a sha256 written by hand for such a file
                    cannot be confirmed by the Hub and is dropped in favour of git_sha1

`estimated_size` is dropped once a size is known. A profile that `extends` another is written flat:
the base's components and bundles, then its own, with no `extends` (a lock stands alone); its
`presets` and the components' `lora_scale` and `quantized` are kept (a `drop` is already applied). What changed against the previous lock is
returned as a list of changes to show. Any file the Hub does not have at the commit is an
error, and nothing is written: a lock is all or nothing.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import yaml

from mt_assets.manifest.schema import (
    Component,
    Manifest,
    ManifestError,
    ManifestFile,
    is_commit,
    parse_manifest,
)


class RemoteFileInfo(Protocol):
    size: int
    sha256: str | None
    git_sha1: str | None


class MetadataSource(Protocol):
    def resolve_revision(self, repo: str, revision: str) -> str: ...

    def paths_info(self, repo: str, commit: str, paths: list[str]) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Change:
    component: str
    path: str  # '' for a component-level change
    field: str
    old: Any
    new: Any

    def describe(self) -> str:
        where = f"{self.component}/{self.path}" if self.path else self.component
        return f"{where}: {self.field} {_short(self.old)} → {_short(self.new)}"


def lock_manifest(manifest: Manifest, hub: MetadataSource) -> Manifest:
    """A copy of `manifest` with commits and pins from `hub`; raises ManifestError on any gap."""
    components = []
    commits: dict[tuple[str, str], str] = {}
    for c in manifest.components:
        key = (c.repo, c.revision)
        if key not in commits:
            commits[key] = c.revision if is_commit(c.revision) else hub.resolve_revision(c.repo, c.revision)
        commit = commits[key]
        info = hub.paths_info(c.repo, commit, [f.path for f in c.files])
        files = []
        for index, f in enumerate(c.files, start=1):
            remote = info.get(f.path)
            if remote is None:
                raise ManifestError(
                    f"lock {manifest.source}: component '{c.name}', file #{index}: "
                    f"{f.path} does not exist in {c.repo} at {commit}"
                )
            files.append(_pinned(f, commit, remote))
        components.append(
            Component(
                name=c.name,
                repo=c.repo,
                revision=commit,
                dir=c.dir,
                files=tuple(files),
                lora_scale=c.lora_scale,
                quantized=c.quantized,
            )
        )
    locked = Manifest(
        profile=manifest.profile,
        source=manifest.source,
        components=tuple(components),
        bundles=manifest.bundles,
        presets=manifest.presets,
    )
    # Re-parsing ties the bundles to the locked files and validates the result like any manifest.
    return parse_manifest(to_yaml(locked), manifest.source)


def _pinned(f: ManifestFile, commit: str, remote: RemoteFileInfo) -> ManifestFile:
    if remote.sha256 is not None:
        return replace(
            f, revision=commit, size=remote.size, sha256=remote.sha256, git_sha1=None, estimated_size=None
        )
    return replace(
        f, revision=commit, size=remote.size, sha256=None, git_sha1=remote.git_sha1, estimated_size=None
    )


def diff(old: Manifest | None, new: Manifest) -> list[Change]:
    """What `new` changes against `old` (None: everything is new)."""
    changes: list[Change] = []
    old_components = {c.name: c for c in old.components} if old else {}
    for c in new.components:
        before = old_components.get(c.name)
        if before is None:
            changes.append(Change(c.name, "", "component", None, f"{c.repo}@{c.revision}"))
            continue
        if before.revision != c.revision:
            changes.append(Change(c.name, "", "revision", before.revision, c.revision))
        old_files = {f.path: f for f in before.files}
        for f in c.files:
            prev = old_files.get(f.path)
            for name in ("size", "sha256", "git_sha1"):
                was = getattr(prev, name) if prev else None
                now = getattr(f, name)
                if was != now:
                    changes.append(Change(c.name, f.path, name, was, now))
    return changes


def to_yaml(manifest: Manifest, header: str = "") -> str:
    """The manifest as a flat document: every component and bundle (an `extends` base's included, no
    `extends`, `drop` applied), `presets`, `lora_scale` and `quantized` kept."""
    doc: dict[str, Any] = {"profile": manifest.profile}
    if manifest.presets:
        doc["presets"] = list(manifest.presets)
    doc["components"] = [
        {
            "name": c.name,
            "repo": c.repo,
            "revision": c.revision,
            "dir": c.dir,
            **({"lora_scale": c.lora_scale} if c.lora_scale is not None else {}),
            **({"quantized": c.quantized} if c.quantized is not None else {}),
            "files": [_file_doc(f) for f in c.files],
        }
        for c in manifest.components
    ]
    if manifest.bundles:
        doc["bundles"] = [
            {
                "name": b.name,
                "loader": b.loader,
                "component": b.component,
                **({"folder": b.folder} if b.folder else {}),
            }
            for b in manifest.bundles
        ]
    text = yaml.safe_dump(doc, sort_keys=False, width=200)
    return "".join(f"# {line}\n" for line in header.splitlines()) + text


def write_lock(manifest: Manifest, path: Path, header: str = "") -> None:
    """Write atomically (temp file + rename), after checking the text parses back to the same manifest."""
    text = to_yaml(manifest, header)
    reparsed = parse_manifest(text, str(path))
    assert (
        reparsed.files == manifest.files
        and reparsed.bundles == manifest.bundles
        and reparsed.loras == manifest.loras
        and reparsed.presets == manifest.presets
    ), "lock file does not round-trip"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _file_doc(f: ManifestFile) -> dict[str, Any]:
    doc: dict[str, Any] = {"path": f.path, "kind": f.kind}
    for name in ("size", "sha256", "git_sha1", "estimated_size"):
        value = getattr(f, name)
        if value is not None:
            doc[name] = value
    return doc


def _short(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str) and len(value) >= 40:
        return value[:12] + "…"
    return str(value)
