"""Provisioning from S3 (moto_server on loopback) through a proxy that breaks things on purpose."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mt_assets import provision
from mt_assets.sources.s3 import S3Source
from mt_assets_tests.conftest import SyntheticVolume, run_cli
from mt_assets_tests.s3_server import FaultyProxy, put_tree, s3_server

BUCKET = "volume-models"
SECRET = "rps_provision-secret-never-printed"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with s3_server() as url:
        yield url


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "user_provision")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def in_bucket(
    endpoint: str, synthetic_volume: Callable[..., SyntheticVolume], request: pytest.FixtureRequest
) -> SyntheticVolume:
    """An empty volume, and its files in the bucket under a prefix of their own."""
    sv = synthetic_volume({"alpha": {"big.bin": 3_000_000}, "beta": {"c.json": 2_000}}, place=False)
    prefix = f"{request.node.name}/models"
    put_tree(endpoint, BUCKET, prefix, {f"{f.component}/{f.path}": f.data for f in sv.files})
    sv.prefix = prefix  # type: ignore[attr-defined]
    return sv


def source(url: str, sv: SyntheticVolume) -> S3Source:
    # Small parts, so a 3 MB file is several ranged GETs and a drop lands mid-file.
    return S3Source.from_uri(
        f"s3://{BUCKET}/{sv.prefix}", endpoint_url=url, chunk_size=1 << 20, max_concurrency=2
    )  # type: ignore[attr-defined]


def big(report: provision.ProvisionReport) -> provision.FetchResult:
    return next(r for r in report.results if r.file.path == "big.bin")


def test_a_connection_dropped_mid_file_is_retried_and_resumed(
    endpoint: str, in_bucket: SyntheticVolume
) -> None:
    vol = in_bucket.volume()
    with FaultyProxy(endpoint) as proxy:
        proxy.drop_after(100_000, times=1, range_start=1 << 20, path_contains="big.bin")
        report = provision.apply(
            provision.plan(in_bucket.manifest, vol), source(proxy.url, in_bucket), vol, backoff=0.01
        )
        ranges = [r.range for r in proxy.requests if r.method == "GET" and "big.bin" in r.path]
    assert report.complete
    assert big(report).attempts == 2
    # the second attempt resumed after the part already staged: the first MiB was fetched once
    assert ranges.count("bytes=0-1048575") == 1
    assert ranges.count("bytes=1048576-2097151") == 2
    assert in_bucket.target("big.bin").read_bytes() == in_bucket.files[0].data
    assert not any(p.name.endswith(".part") for p in (vol.root / ".mt" / "staging").iterdir())


def test_http_500_then_success_places_the_file(endpoint: str, in_bucket: SyntheticVolume) -> None:
    vol = in_bucket.volume()
    with FaultyProxy(endpoint) as proxy:
        proxy.fail(500, "InternalError", times=1, method="GET", path_contains="c.json")
        report = provision.apply(
            provision.plan(in_bucket.manifest, vol), source(proxy.url, in_bucket), vol, backoff=0.01
        )
        statuses = [r.status for r in proxy.requests if "c.json" in r.path and r.method == "GET"]
    assert report.complete
    assert statuses[0] == 500 and statuses[-1] in (200, 206)


def test_wrong_bytes_served_are_never_placed(endpoint: str, in_bucket: SyntheticVolume) -> None:
    vol = in_bucket.volume()
    with FaultyProxy(endpoint) as proxy:
        proxy.corrupt(at=12_345, times=None, range_start=0, path_contains="big.bin")
        report = provision.apply(
            provision.plan(in_bucket.manifest, vol), source(proxy.url, in_bucket), vol, backoff=0.01
        )
    result = big(report)
    assert (result.outcome, result.status) == ("failed", "missing")
    assert result.detail is not None
    assert result.detail.startswith("models/alpha/big.bin: sha256 is ")
    assert f"expected {in_bucket.files[0].sha256[:12]}…; not placed" in result.detail
    assert not in_bucket.target("big.bin").exists()
    assert next(r for r in report.results if r.file.path == "c.json").outcome == "placed"


def test_a_server_that_keeps_failing_is_given_up_on_with_the_count(
    endpoint: str, in_bucket: SyntheticVolume
) -> None:
    vol = in_bucket.volume()
    with FaultyProxy(endpoint) as proxy:
        proxy.fail(503, "SlowDown", times=None, method="GET", path_contains="c.json")
        report = provision.apply(
            provision.plan(in_bucket.manifest, vol),
            source(proxy.url, in_bucket),
            vol,
            retries=2,
            backoff=0.01,
        )
    failed = next(r for r in report.results if r.file.path == "c.json")
    assert failed.outcome == "failed"
    assert failed.attempts == 3
    assert failed.detail is not None and "gave up after 3 attempts" in failed.detail
    assert SECRET not in failed.detail


def test_cli_provisions_from_s3_with_the_endpoint_from_the_environment(
    endpoint: str, in_bucket: SyntheticVolume, tmp_path: Path
) -> None:
    manifest = in_bucket.write_manifest(tmp_path / "m.yaml")
    source = f"s3://{BUCKET}/{in_bucket.prefix}"  # type: ignore[attr-defined]
    done = run_cli(
        "provision",
        "--manifest",
        str(manifest),
        "--volume",
        str(in_bucket.root),
        "--source",
        source,
        "--json",
        env={**os.environ, "AWS_ENDPOINT_URL": endpoint},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["complete"] is True
    assert {r["source"] for r in doc["results"]} == {
        f"s3://{BUCKET}/{in_bucket.prefix}/{f.component}/{f.path}"
        for f in in_bucket.files  # type: ignore[attr-defined]
    }
    assert SECRET not in done.stdout + done.stderr
