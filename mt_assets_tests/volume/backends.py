"""Both volume backends behind one test harness: a folder, and a moto bucket seen as an S3 volume.

`Backend` places, reads and deletes files the way something outside mt_assets would (plain file
writes, a plain boto3 client), and opens the volume under test (`volume(**kwargs)`). Tests that hold
for both take the `volume_backend` fixture (mt_assets_tests/conftest.py), parametrized over
"local" and "s3"; the "s3" case carries the `servers` mark.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mt_assets import config
from mt_assets.manifest import Manifest, parse_manifest
from mt_assets.sources import MirrorSource
from mt_assets.volume import LocalVolume, Volume
from mt_assets_tests.conftest import SyntheticFile, manifest_yaml
from mt_assets_tests.s3_server import s3_client

BUCKET = "volume-under-test"


def volume_env(endpoint: str) -> dict[str, str]:
    """The environment of an s3:// volume on `endpoint` (moto takes any keys)."""
    return {
        "MT_VOLUME_S3_ENDPOINT": endpoint,
        "MT_VOLUME_S3_REGION": "us-east-1",
        "MT_VOLUME_S3_ACCESS_KEY_ID": "testing",
        "MT_VOLUME_S3_SECRET_ACCESS_KEY": "testing",
    }


@dataclass
class Backend:
    kind: str  # local | s3
    root: Path  # the folder (local); unused for s3
    endpoint: str = ""
    prefix: str = ""
    bucket: str = BUCKET  # created by moto_volume_endpoint; another one by the test (create_bucket)
    files: list[SyntheticFile] = field(default_factory=list)
    manifest: Manifest | None = None
    _client: Any = None

    # -- the volume under test ---------------------------------------------------------------

    @property
    def spec(self) -> str:
        """What --volume takes."""
        return str(self.root) if self.kind == "local" else f"s3://{self.bucket}/{self.prefix}"

    def volume(self, endpoint: str | None = None, **kwargs: Any) -> Volume:
        """The volume under test; `endpoint` (a proxy's URL) for s3 only."""
        if self.kind == "local":
            return LocalVolume(self.root, **kwargs)
        from mt_assets.volume.s3 import S3Volume

        kwargs.setdefault("conditional_writes", True)  # moto enforces If-None-Match
        kwargs.setdefault("part_size", 256 * 1024)  # small parts: several per test file
        kwargs.setdefault("multipart_threshold", 256 * 1024)
        s3 = config.volume_s3_client(env=volume_env(endpoint or self.endpoint), max_attempts=3)
        return S3Volume(self.bucket, self.prefix, s3=s3, **kwargs)

    # -- from outside ------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = s3_client(self.endpoint)
        return self._client

    def create_bucket(self) -> Backend:
        """Create this backend's bucket (one other than BUCKET) on its server."""
        self.client.create_bucket(Bucket=self.bucket)
        return self

    def key(self, target: str) -> str:
        return f"{self.prefix}/{target}"

    def put(self, target: str, data: bytes) -> None:
        if self.kind == "local":
            path = self.root / target
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        else:
            self.client.put_object(Bucket=self.bucket, Key=self.key(target), Body=data)

    def get(self, target: str) -> bytes | None:
        if self.kind == "local":
            path = self.root / target
            return path.read_bytes() if path.is_file() else None
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.key(target))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def delete(self, target: str) -> None:
        if self.kind == "local":
            (self.root / target).unlink()
        else:
            self.client.delete_object(Bucket=self.bucket, Key=self.key(target))

    def uploads(self) -> list[str]:
        """Keys with a multipart upload in progress (s3; none on a folder)."""
        if self.kind == "local":
            return []
        found = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=f"{self.prefix}/")
        return [u["Key"][len(self.prefix) + 1 :] for u in found.get("Uploads", [])]

    # -- synthetic files ---------------------------------------------------------------------

    def fill(
        self, spec: dict[str, dict[str, int]] | None = None, *, place: bool = True, seed: int = 0
    ) -> Backend:
        """Files of random bytes, `spec` = {component: {path: size}}, and a manifest pinning them."""
        spec = spec or {"alpha": {"a.bin": 300_000, "sub/b.bin": 70_000}, "beta": {"c.json": 1_234}}
        rng = random.Random(seed)
        self.files = [
            SyntheticFile(component, path, rng.randbytes(size))
            for component, paths in spec.items()
            for path, size in paths.items()
        ]
        self.manifest = parse_manifest(manifest_yaml(self.files), "synthetic.yaml")
        if place:
            for f in self.files:
                self.put(self.target(f.path), f.data)
        return self

    def target(self, path: str) -> str:
        f = next(f for f in self.files if f.path == path)
        return f"models/{f.component}/{f.path}"

    def data(self, path: str) -> bytes:
        return next(f for f in self.files if f.path == path).data

    def write_manifest(self, path: Path) -> Path:
        path.write_text(manifest_yaml(self.files))
        return path

    def mirror(self, root: Path) -> Path:
        """A mirror folder of the files, as a source."""
        for f in self.files:
            dest = root / f.component / f.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(f.data)
        return root


class GatedMirror(MirrorSource):
    """A mirror that holds one file back until `gate` is set (its fetch has begun: `started`)."""

    def __init__(self, root: Path, held: str) -> None:
        super().__init__(root)
        self.held = held
        self.started = threading.Event()
        self.gate = threading.Event()

    def fetch(self, f, writer, on_bytes):  # type: ignore[no-untyped-def]
        if f.path == self.held:
            self.started.set()
            assert self.gate.wait(60), "the test never opened the gate"
        return super().fetch(f, writer, on_bytes)
