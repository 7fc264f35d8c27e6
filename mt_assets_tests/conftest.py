"""Shared fixtures: synthetic volumes of random bytes with known hashes, and their manifests."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from mt_assets.manifest import Manifest, parse_manifest
from mt_assets.volume import LocalVolume


@dataclass
class SyntheticFile:
    component: str
    path: str
    data: bytes = field(repr=False)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class SyntheticVolume:
    """A volume folder, the files that belong on it, and a manifest that pins them."""

    root: Path
    files: list[SyntheticFile]
    manifest: Manifest

    def volume(self, **kwargs: object) -> LocalVolume:
        return LocalVolume(self.root, **kwargs)  # type: ignore[arg-type]

    def target(self, path: str) -> Path:
        f = next(f for f in self.files if f.path == path)
        return self.root / "models" / f.component / f.path

    def write_manifest(self, path: Path) -> Path:
        path.write_text(manifest_yaml(self.files))
        return path

    def place_all(self) -> None:
        for f in self.files:
            dest = self.root / "models" / f.component / f.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(f.data)


CLI = (sys.executable, "-m", "mt_assets.cli")


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`mt-assets ARGS` in a subprocess of this interpreter: exit status, stdout and stderr as a user sees them."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=timeout)


def manifest_yaml(files: list[SyntheticFile], *, pin: bool = True, profile: str = "synthetic") -> str:
    components: dict[str, list[dict[str, object]]] = {}
    for f in files:
        entry: dict[str, object] = {"path": f.path, "kind": "weights"}
        if pin:
            entry.update(size=len(f.data), sha256=f.sha256)
        components.setdefault(f.component, []).append(entry)
    doc = {
        "profile": profile,
        "components": [
            {"name": name, "repo": f"test/{name}", "revision": "a" * 40, "dir": name, "files": entries}
            for name, entries in components.items()
        ],
    }
    return yaml.safe_dump(doc, sort_keys=False)


@pytest.fixture
def synthetic_volume(tmp_path: Path) -> Callable[..., SyntheticVolume]:
    """Build a volume with `spec` = {component: {path: size}} of random bytes, all placed."""

    def build(
        spec: dict[str, dict[str, int]] | None = None, *, place: bool = True, seed: int = 0
    ) -> SyntheticVolume:
        spec = spec or {"alpha": {"a.bin": 300_000, "sub/b.bin": 70_000}, "beta": {"c.json": 1_234}}
        rng = random.Random(seed)
        files = [
            SyntheticFile(component, path, rng.randbytes(size))
            for component, paths in spec.items()
            for path, size in paths.items()
        ]
        root = tmp_path / "volume"
        root.mkdir(exist_ok=True)
        sv = SyntheticVolume(root, files, parse_manifest(manifest_yaml(files), "synthetic.yaml"))
        if place:
            sv.place_all()
        return sv

    return build


def flip_bit_keep_mtime(path: Path, offset: int = 0) -> None:
    """Flip one bit in place and put the mtime back, as silent corruption would."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.fixture(scope="session")
def tiny_mirror(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny profile's mirror, built once per test session (about 5 MB, a few seconds)."""
    from mt_assets.tiny.profile import build_tiny_mirror

    root = tmp_path_factory.mktemp("tiny") / "mirror"
    build_tiny_mirror(root)
    return root


@pytest.fixture(scope="session")
def tiny_volume(tiny_mirror: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A volume provisioned from the tiny mirror through the real provisioner (read-only use)."""
    from mt_assets import provision
    from mt_assets.manifest import load_profile
    from mt_assets.sources import MirrorSource

    root = tmp_path_factory.mktemp("tiny-volume")
    volume = LocalVolume(root)
    report = provision.apply(provision.plan(load_profile("tiny"), volume), MirrorSource(tiny_mirror), volume)
    assert report.complete, [r.detail for r in report.results if r.outcome == "failed"]
    return root


def rot_bit(volume: LocalVolume, target: str, offset: int = 0) -> None:
    """Corrupt a byte the way failing storage does: the bytes change and no stat field shows it.

    User space cannot change bytes without changing ctime, so the hash cache's row is moved to
    the file's new stat with its old digest: exactly what bit rot under the filesystem leaves.
    """
    path = volume.path(target)
    cached = volume.hash_cache.lookup(target, os.stat(path))
    assert cached is not None, f"{target} is not in the hash cache yet"
    flip_bit_keep_mtime(path, offset)
    volume.hash_cache.store(target, os.stat(path), cached)


@contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (mount's syntax: 1m, 200k) mounted at `where`, for a full disk; skips the
    test where mounting needs a privilege this machine does not give (CI runs as root)."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip() or 'needs root'})")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)
