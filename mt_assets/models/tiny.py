"""The tiny profile: the multitalk-480p layout at toy scale, built locally, for demos and tests.

`build_tiny_mirror(DIR)` writes a mirror folder in the volume's `<dir>/<path>` layout with
exactly the files of `multitalk-480p` (same dirs, names and formats: sharded original-format
DiT + index, Wan's `.pth` files in their own key naming, tokenizer folders built here,
wav2vec2 safetensors + configs, the adapter under multitalk key names), with random weights
small enough for a laptop CPU. Deterministic: two builds give byte-identical files.

The pinned manifest of those files is the `tiny` profile (profiles/tiny.yaml): the real
profile's components, dirs and paths, with the tiny files' sizes and sha256s and the revision
`tiny-local` (these files exist on no Hub). `tiny_manifest(DIR)` derives it from a build, so
a test can show the shipped profile is what the builder writes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from mt_assets.manifest import Component, Manifest, ManifestError, load_profile
from mt_assets.manifest.lockfile import to_yaml
from mt_assets.manifest.schema import parse_manifest

TEMPLATE_PROFILE = "multitalk-480p"
TINY_PROFILE = "tiny"
TINY_REVISION = "tiny-local"
WAN_DIR = "Wan2.1-I2V-14B-480P"
MULTITALK_DIR = "MeiGen-MultiTalk"
WAV2VEC2_DIR = "chinese-wav2vec2-base"


def build_tiny_mirror(root: str | Path, *, seed: int = 0) -> Manifest:
    """Write the tiny mirror at `root` (must not exist or be empty) and return its pinned manifest.

    Built in a temporary folder beside `root` and renamed into place, so an interrupted build
    leaves no half mirror behind.
    """
    from mt_assets.models.tiny_dit import write_tiny_dit
    from mt_assets.models.tiny_wan_parts import (
        write_tiny_clip,
        write_tiny_t5,
        write_tiny_tokenizers,
        write_tiny_vae,
    )
    from mt_assets.models.tiny_wav2vec2 import write_tiny_wav2vec2

    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(
            f"tiny mirror {root}: exists and is not empty; remove it or pick another folder"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        wan = work / WAN_DIR
        write_tiny_dit(wan, work / MULTITALK_DIR, seed=seed)
        write_tiny_t5(wan, seed=seed)
        write_tiny_clip(wan, seed=seed)
        write_tiny_vae(wan, seed=seed)
        write_tiny_tokenizers(wan)
        write_tiny_wav2vec2(work / WAV2VEC2_DIR, seed=seed)
        manifest = tiny_manifest(work)
        if root.exists():
            root.rmdir()
        os.replace(work, root)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return manifest


def tiny_manifest(mirror: str | Path) -> Manifest:
    """The tiny profile for a built mirror: the real profile's layout with the mirror's pins.

    Refuses a mirror whose files are not exactly those of the real profile.
    """
    mirror = Path(mirror)
    template = load_profile(TEMPLATE_PROFILE)
    expected = {f"{f.dir}/{f.path}" for f in template.files}
    written = {p.relative_to(mirror).as_posix() for p in mirror.rglob("*") if p.is_file()}
    if written != expected:
        extra, missing = sorted(written - expected), sorted(expected - written)
        raise ManifestError(
            f"tiny mirror {mirror}: files differ from profile {TEMPLATE_PROFILE}: extra {extra}, missing {missing}"
        )
    components = []
    for c in template.components:
        files = []
        for f in c.files:
            data_path = mirror / f.dir / f.path
            files.append(
                type(f)(
                    component=f.component,
                    repo=f.repo,
                    revision=TINY_REVISION,
                    dir=f.dir,
                    path=f.path,
                    kind=f.kind,
                    size=data_path.stat().st_size,
                    sha256=_sha256(data_path),
                )
            )
        components.append(
            Component(name=c.name, repo=c.repo, revision=TINY_REVISION, dir=c.dir, files=tuple(files))
        )
    draft = Manifest(
        profile=TINY_PROFILE,
        source="profiles/tiny.yaml",
        components=tuple(components),
        bundles=template.bundles,
    )
    return parse_manifest(to_yaml(draft), "profiles/tiny.yaml")


def tiny_profile_yaml(manifest: Manifest) -> str:
    header = (
        "The tiny profile: multitalk-480p's files at toy scale, random weights, built locally by\n"
        "`mt-assets tiny build DIR` (deterministic). Generated: do not edit; rebuild with\n"
        "`mt-assets tiny build DIR --update-profile` when the builder changes."
    )
    return to_yaml(manifest, header)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
