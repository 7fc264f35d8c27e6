"""HubSource against a hub-compatible server on loopback (olah serving local git repos).

No mock of huggingface_hub: the library's own resolver, session and transfer code talk HTTP to
olah (or, for the error statuses olah cannot produce, to a canned loopback server).
"""

from __future__ import annotations

import errno
import hashlib
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from huggingface_hub import constants

from mt_assets.manifest import ManifestFile
from mt_assets.sources.base import SourceError, TransientSourceError
from mt_assets.sources.hub import HubSource, RemoteFile
from mt_assets.volume import Expected, LocalVolume, VolumeFullError
from mt_assets.volume.hashing import git_blob_sha1
from mt_assets_tests.hub_server import RepoInfo, error_server, hub_server, make_repo
from mt_assets_tests.processes import free_port

REPO = "mt-test/tiny-model"
SECRET = "hf_DummySecretThatMustNeverShow0123456789"

_rng = random.Random(7)
MAIN_FILES = {
    "model.safetensors": _rng.randbytes(300_000),  # LFS
    "config.json": b'{"dim": 16, "layers": 2}\n',  # kept in git
    "tokenizer/vocab.txt": _rng.randbytes(3_000),  # kept in git, in a folder
}
PR_FILES = {
    "adapter.safetensors": _rng.randbytes(50_000),  # LFS, only on the pull request
    "config.json": b'{"dim": 16, "layers": 3}\n',  # changed by the pull request
}


@dataclass
class Hub:
    url: str
    repo: RepoInfo


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    mirrors = tmp_path_factory.mktemp("mirrors")
    repo = make_repo(mirrors, REPO, MAIN_FILES, lfs_min_size=10_000, pr_files=PR_FILES)
    with hub_server(mirrors) as url:
        yield Hub(url, repo)


@pytest.fixture(autouse=True)
def _no_real_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever falls back to huggingface_hub's default endpoint meets a closed loopback port."""
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setattr(constants, "ENDPOINT", dead)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", dead + "/{repo_id}/resolve/{revision}/{filename}"
    )


@pytest.fixture
def source(hub: Hub) -> HubSource:
    return HubSource(endpoint=hub.url)


def manifest_file(path: str, revision: str, *, repo: str = REPO, pin: bytes | None = None) -> ManifestFile:
    """A manifest entry for `path`; with `pin`, its size and sha256 are those of those bytes."""
    return ManifestFile(
        component="tiny",
        repo=repo,
        revision=revision,
        dir="tiny-model",
        path=path,
        kind="weights",
        size=len(pin) if pin is not None else None,
        sha256=hashlib.sha256(pin).hexdigest() if pin is not None else None,
    )


def place(source: HubSource, volume: LocalVolume, f: ManifestFile, data: bytes) -> int:
    """Fetch `f` into `volume` through an AtomicWriter pinned to `data`; return bytes reported."""
    reported: list[int] = []
    expected = Expected(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    with volume.writing(f.target, expected, resume=True) as w:
        source.fetch(f, w, reported.append)
        w.commit()
    return sum(reported)


def stage_partial(volume: LocalVolume, target: str, prefix: bytes) -> None:
    """Leave `prefix` staged for `target`, as an interrupted transfer would."""
    with pytest.raises(KeyboardInterrupt), volume.writing(target, resume=True) as w:
        w.write(prefix)
        raise KeyboardInterrupt


# -- fetching -------------------------------------------------------------------------------------


def test_fetch_places_lfs_and_git_kept_files_byte_for_byte(
    hub: Hub, source: HubSource, tmp_path: Path
) -> None:
    volume = LocalVolume(tmp_path)
    for path, data in MAIN_FILES.items():
        f = manifest_file(path, hub.repo.main, pin=data)
        assert place(source, volume, f, data) == len(data)
        assert (tmp_path / f.target).read_bytes() == data
    assert "model.safetensors" in hub.repo.lfs_paths
    assert "config.json" not in hub.repo.lfs_paths


def test_branch_is_resolved_to_its_commit_and_fetched_there(
    hub: Hub, source: HubSource, tmp_path: Path
) -> None:
    assert source.resolve_revision(REPO, "main") == hub.repo.main
    assert source.resolve_revision(REPO, "refs/heads/main") == hub.repo.main
    assert source.resolve_revision(REPO, hub.repo.main) == hub.repo.main
    data = MAIN_FILES["config.json"]
    place(source, LocalVolume(tmp_path), manifest_file("config.json", "main", pin=data), data)


def test_pull_request_ref_resolves_to_its_commit_and_serves_its_files(
    hub: Hub, source: HubSource, tmp_path: Path
) -> None:
    assert source.resolve_revision(REPO, "refs/pr/1") == hub.repo.pr
    volume = LocalVolume(tmp_path)
    for path, data in PR_FILES.items():
        place(source, volume, manifest_file(path, "refs/pr/1", pin=data), data)
        assert (tmp_path / "models/tiny-model" / path).read_bytes() == data


def test_unknown_ref_is_a_source_error_listing_the_refs(source: HubSource) -> None:
    with pytest.raises(SourceError, match=r"no branch, tag or pull request 'refs/pr/9'.*refs/pr/1") as e:
        source.resolve_revision(REPO, "refs/pr/9")
    assert not isinstance(e.value, TransientSourceError)


def test_paths_info_gives_sha256_for_lfs_files_and_blob_id_for_git_files(hub: Hub, source: HubSource) -> None:
    paths = [*MAIN_FILES, "tokenizer", "missing.bin"]
    info = source.paths_info(REPO, hub.repo.main, paths)
    model, config, vocab = (MAIN_FILES[p] for p in MAIN_FILES)
    assert info == {
        "model.safetensors": RemoteFile(
            "model.safetensors", len(model), hashlib.sha256(model).hexdigest(), git_sha1=None
        ),
        "config.json": RemoteFile("config.json", len(config), None, git_blob_sha1(config)),
        "tokenizer/vocab.txt": RemoteFile("tokenizer/vocab.txt", len(vocab), None, git_blob_sha1(vocab)),
    }
    on_pr = source.paths_info(REPO, "refs/pr/1", ["adapter.safetensors", "config.json"])
    assert on_pr["adapter.safetensors"].sha256 == hashlib.sha256(PR_FILES["adapter.safetensors"]).hexdigest()
    assert on_pr["config.json"].git_sha1 == git_blob_sha1(PR_FILES["config.json"])


# -- resuming -----------------------------------------------------------------------------------


def test_resume_ends_whole_and_correct_though_the_server_ignores_range(
    hub: Hub, source: HubSource, tmp_path: Path
) -> None:
    volume = LocalVolume(tmp_path)
    data = MAIN_FILES["model.safetensors"]
    f = manifest_file("model.safetensors", hub.repo.main, pin=data)
    stage_partial(volume, f.target, data[:100_000])
    with volume.writing(f.target, resume=True) as w:
        assert w.resume_from == 100_000
    # olah answers the Range request with 200 and the whole body: the writer restarts from zero.
    reported = place(source, volume, f, data)
    assert (tmp_path / f.target).read_bytes() == data
    assert reported == len(data)


def test_staged_bytes_that_are_no_prefix_of_the_file_are_replaced(
    hub: Hub, source: HubSource, tmp_path: Path
) -> None:
    volume = LocalVolume(tmp_path)
    data = MAIN_FILES["model.safetensors"]
    f = manifest_file("model.safetensors", hub.repo.main, pin=data)
    stage_partial(volume, f.target, b"\0" * (len(data) + 10))  # longer than the file itself
    place(source, volume, f, data)
    assert (tmp_path / f.target).read_bytes() == data


# -- refusing and failing -----------------------------------------------------------------------


def test_missing_file_is_a_source_error_naming_the_file(hub: Hub, source: HubSource, tmp_path: Path) -> None:
    f = manifest_file("not-there.bin", hub.repo.main)
    with pytest.raises(SourceError) as e, LocalVolume(tmp_path).writing(f.target) as w:
        source.fetch(f, w, lambda n: None)
    assert not isinstance(e.value, TransientSourceError)
    assert f.target in str(e.value)
    assert f"hf://{REPO}@{hub.repo.main}/not-there.bin" in str(e.value)
    assert "no such file" in str(e.value)


def test_unknown_repo_is_a_source_error(hub: Hub, source: HubSource, tmp_path: Path) -> None:
    f = manifest_file("config.json", hub.repo.main, repo="mt-test/no-such-model")
    with pytest.raises(SourceError) as e, LocalVolume(tmp_path).writing(f.target) as w:
        source.fetch(f, w, lambda n: None)
    assert not isinstance(e.value, TransientSourceError)
    assert "hf://mt-test/no-such-model@" in str(e.value)


def test_a_pin_the_hub_contradicts_is_refused_before_downloading(
    hub: Hub, source: HubSource, tmp_path: Path
) -> None:
    f = manifest_file("model.safetensors", hub.repo.main, pin=b"other bytes")
    reported: list[int] = []
    with (
        pytest.raises(SourceError, match="the manifest pins 11; not fetched"),
        LocalVolume(tmp_path).writing(f.target) as w,
    ):
        source.fetch(f, w, reported.append)
    assert reported == []


def test_a_full_volume_is_reported_as_such_not_as_a_source_error(hub: Hub, source: HubSource) -> None:
    class FullWriter:
        resume_from = 0

        def write(self, data: bytes) -> None:
            raise VolumeFullError(errno.ENOSPC, "models/tiny-model/model.safetensors: the volume is full")

    f = manifest_file("model.safetensors", hub.repo.main)
    with pytest.raises(VolumeFullError):
        source.fetch(f, FullWriter(), lambda n: None)  # type: ignore[arg-type]


def test_dead_endpoint_is_a_transient_error_raised_quickly(hub: Hub, tmp_path: Path) -> None:
    dead = HubSource(endpoint=f"http://127.0.0.1:{free_port()}")
    f = manifest_file("config.json", hub.repo.main)
    started = time.monotonic()
    with pytest.raises(TransientSourceError, match=r"cannot reach http://127\.0\.0\.1") as e:
        with LocalVolume(tmp_path).writing(f.target) as w:
            dead.fetch(f, w, lambda n: None)
    assert f.target in str(e.value)
    with pytest.raises(TransientSourceError):
        dead.resolve_revision(REPO, "main")
    assert time.monotonic() - started < 5


def test_offline_mode_is_a_source_error_that_says_so(
    hub: Hub, source: HubSource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as HF_HUB_OFFLINE=1 at import time
    f = manifest_file("config.json", hub.repo.main)
    with pytest.raises(SourceError, match="HF_HUB_OFFLINE is set") as e:
        with LocalVolume(tmp_path).writing(f.target) as w:
            source.fetch(f, w, lambda n: None)
    assert not isinstance(e.value, TransientSourceError)


@pytest.mark.parametrize(
    ("status", "headers", "transient", "expected"),
    [
        (401, {}, False, "HF_TOKEN is not set"),
        (401, {"X-Error-Code": "GatedRepo"}, False, "gated; HF_TOKEN is not set"),
        (
            403,
            {"X-Error-Message": "no access"},
            False,
            "access denied .HTTP 403: no access.; HF_TOKEN is not set",
        ),
        (404, {"X-Error-Code": "RevisionNotFound"}, False, "no such revision"),
        (429, {}, True, "the hub answered HTTP 429"),
        (503, {}, True, "the hub answered HTTP 503"),
    ],
)
def test_hub_error_statuses_map_to_source_errors(
    status: int,
    headers: dict[str, str],
    transient: bool,
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    f = manifest_file("config.json", "a" * 40)
    with error_server(status, headers) as url, pytest.raises(SourceError, match=expected) as e:
        with LocalVolume(tmp_path).writing(f.target) as w:
            HubSource(endpoint=url).fetch(f, w, lambda n: None)
    assert isinstance(e.value, TransientSourceError) == transient


# -- names and secrets ----------------------------------------------------------------------------


def test_uri_names_the_endpoint_only_when_it_is_not_the_hub(hub: Hub) -> None:
    assert HubSource(endpoint="https://huggingface.co").uri == "hub"
    assert HubSource(endpoint=hub.url).uri == f"hub:{hub.url}"
    assert (
        HubSource(endpoint="https://user:pw@mirror.example/hf/?t=x").uri == "hub:https://mirror.example/hf/"
    )
    f = manifest_file("tokenizer/vocab.txt", "refs/pr/1")
    assert HubSource(endpoint=hub.url).uri_for(f) == f"hf://{REPO}@refs/pr/1/tokenizer/vocab.txt"


def test_default_endpoint_is_huggingface_hubs_configured_one(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # HF_ENDPOINT is read when huggingface_hub is imported; in-process, its constant is what counts.
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    source = HubSource()
    assert source.uri == f"hub:{hub.url}"
    assert source.url_for(REPO, hub.repo.main, "config.json").startswith(hub.url + "/")
    data = MAIN_FILES["config.json"]
    place(source, LocalVolume(tmp_path), manifest_file("config.json", "main", pin=data), data)


def test_token_never_appears_in_messages_or_uris(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", SECRET)
    source = HubSource(endpoint=hub.url)
    messages = [source.uri, repr(source), source.uri_for(manifest_file("config.json", "main"))]
    failing = [
        (source, manifest_file("not-there.bin", hub.repo.main)),
        (source, manifest_file("config.json", "refs/pr/9")),
        (source, manifest_file("config.json", hub.repo.main, repo="mt-test/no-such-model")),
        (HubSource(endpoint=f"http://127.0.0.1:{free_port()}"), manifest_file("config.json", hub.repo.main)),
    ]
    for s, f in failing:
        with pytest.raises(SourceError) as e, LocalVolume(tmp_path).writing(f.target) as w:
            s.fetch(f, w, lambda n: None)
        messages += [str(e.value), repr(e.value)]
    for status in (401, 403):
        seen: list[dict[str, str]] = []
        with error_server(status, seen=seen) as url, pytest.raises(SourceError) as e:
            with LocalVolume(tmp_path).writing("models/x/y") as w:
                HubSource(endpoint=url).fetch(manifest_file("config.json", "a" * 40), w, lambda n: None)
        messages += [str(e.value), repr(e.value)]
        assert "lacks access" in str(e.value)
        assert {k.lower(): v for k, v in seen[0].items()}[
            "authorization"
        ] == f"Bearer {SECRET}"  # sent to the endpoint, and only there
    assert not [m for m in messages if SECRET in m]
