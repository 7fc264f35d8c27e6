"""Dagster fixtures: a model repo served by a hub-compatible server on loopback, its manifest,
a volume, and a real (temporary) Dagster instance."""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import yaml

from mt_assets.defs import build_definitions
from mt_assets.defs.definitions import model_assets
from mt_assets.defs.resources import SourceResource, VolumeResource
from mt_assets.manifest import Manifest, load_profile, parse_manifest
from mt_assets_tests.hub_server import hub_server, make_repo

REPO = "test/tiny-models"


def tokenizer_files() -> dict[str, bytes]:
    """A small tokenizer folder, trained here with the tokenizers library and saved by transformers."""
    import tempfile

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = ["a talking head says hello", "two people talk in a room", "480p video of a face"] * 20
    tok.train_from_iterator(
        corpus, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<pad>", "</s>"])
    )
    with tempfile.TemporaryDirectory() as d:
        PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>"
        ).save_pretrained(d)
        return {f"tokenizer/{p.name}": p.read_bytes() for p in sorted(Path(d).iterdir())}


@dataclass
class HubFixture:
    url: str
    commit: str
    files: dict[str, bytes]
    manifest: Manifest
    manifest_text: str


def manifest_for(files: dict[str, bytes], commit: str, *, sha_override: dict[str, str] | None = None) -> str:
    def entry(path: str, kind: str) -> dict[str, object]:
        data = files[path]
        return {
            "path": path,
            "kind": kind,
            "size": len(data),
            "sha256": (sha_override or {}).get(path, hashlib.sha256(data).hexdigest()),
        }

    doc = {
        "profile": "dagster-test",
        "components": [
            {
                "name": "weights",
                "repo": REPO,
                "revision": commit,
                "dir": "tiny-models",
                "files": [entry(p, "weights") for p in sorted(files) if p.endswith(".bin")],
            },
            {
                "name": "tok",
                "repo": REPO,
                "revision": commit,
                "dir": "tiny-models",
                "files": [entry(p, "tokenizer") for p in sorted(files) if p.startswith("tokenizer/")],
            },
        ],
        "bundles": [{"name": "tok", "loader": "tokenizer", "component": "tok", "folder": "tokenizer"}],
    }
    return yaml.safe_dump(doc, sort_keys=False)


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubFixture]:
    rng = random.Random(7)
    files = {"a.bin": rng.randbytes(200_000), "b.bin": rng.randbytes(50_000), **tokenizer_files()}
    mirrors = tmp_path_factory.mktemp("hub-mirrors")
    info = make_repo(mirrors, REPO, files)
    with hub_server(mirrors) as url:
        text = manifest_for(files, info.main)
        yield HubFixture(url, info.main, files, parse_manifest(text, "dagster-test.yaml"), text)


@dataclass
class Env:
    hub: HubFixture
    volume_root: Path
    instance: dg.DagsterInstance

    def resources(self) -> dict[str, object]:
        return {
            "volume": VolumeResource(path=str(self.volume_root)),
            "source": SourceResource(spec="hub", hub_endpoint=self.hub.url),
        }

    def defs(self, manifest: Manifest | None = None) -> dg.Definitions:
        return build_definitions(manifest or self.hub.manifest, resources=self.resources())

    def materialize(
        self, selection: list[dg.AssetKey] | None = None, manifest: Manifest | None = None, **kwargs: object
    ) -> dg.ExecuteInProcessResult:
        job = self.defs(manifest).resolve_implicit_global_asset_job_def()
        return job.execute_in_process(instance=self.instance, asset_selection=selection, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def env(hub: HubFixture, tmp_path: Path) -> Iterator[Env]:
    volume = tmp_path / "volume"
    volume.mkdir()
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        yield Env(hub, volume, instance)


def tiny_definitions(volume_root: Path, mirror: Path) -> dg.Definitions:
    """The tiny profile's Definitions on `volume_root`, provisioned from the local `mirror`."""
    return build_definitions(
        load_profile("tiny"),
        resources={
            "volume": VolumeResource(path=str(volume_root)),
            "source": SourceResource(spec=str(mirror)),
        },
    )


def materialize_models(defs: dg.Definitions, instance: dg.DagsterInstance) -> None:
    """Files, checks, bundles, repacks and the offline proof, as `make demo` does before its renders."""
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=model_assets(defs)
    )
    assert result.success


@contextlib.contextmanager
def materialized_tiny(mirror: Path, base: Path) -> Iterator[tuple[Path, dg.DagsterInstance, dg.Definitions]]:
    """A tiny volume at base/volume with every model asset materialized, on an instance in base/dagster."""
    root = base / "volume"
    root.mkdir()
    (base / "dagster").mkdir()
    defs = tiny_definitions(root, mirror)
    with dg.instance_for_test(temp_dir=str(base / "dagster")) as instance:
        materialize_models(defs, instance)
        yield root, instance, defs
