"""`mt-assets volume check`: what an S3-compatible endpoint really does, tried on moto_server and on moto
behind a FaultyProxy that behaves like the look-alikes (Range ignored, If-None-Match ignored or refused)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mt_assets import config
from mt_assets.volume.s3_probe import ProbeError, probe, probe_conditional_writes
from mt_assets_tests.conftest import run_cli
from mt_assets_tests.s3_server import FaultyProxy, put_tree, s3_client, s3_server

BUCKET = "probe-volume"
SECRET = "rps_SECRET-must-never-be-printed-51c0de"
EXISTING = {"models/Wan/config.json": b"{}"}


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with s3_server() as url:
        put_tree(url, BUCKET, "team", EXISTING)
        yield url


@pytest.fixture
def proxy(endpoint: str) -> Iterator[FaultyProxy]:
    with FaultyProxy(endpoint) as p:
        yield p


def volume_env(url: str, tmp_path: Path) -> dict[str, str]:
    """The environment `mt-assets volume check` runs in: the volume's own variables, nothing from ~/.aws."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MT_"))}
    return {
        **env,
        "MT_VOLUME_S3_ENDPOINT": url,
        "MT_VOLUME_S3_REGION": "EU-RO-1",
        "MT_VOLUME_S3_ACCESS_KEY_ID": "user_probe",
        "MT_VOLUME_S3_SECRET_ACCESS_KEY": SECRET,
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def run_probe(url: str, tmp_path: Path, prefix: str = "team") -> Any:
    s3 = config.volume_s3_client(volume_env(url, tmp_path))
    try:
        return probe(s3.client, BUCKET, prefix, endpoint=url)
    finally:
        s3.client.close()


def everything_under(endpoint: str, prefix: str) -> tuple[list[str], list[str]]:
    """(keys, open multipart uploads) under `prefix` in the bucket."""
    client = s3_client(endpoint)
    try:
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])]
        uploads = [
            u["Key"] for u in client.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads", [])
        ]
        return keys, uploads
    finally:
        client.close()


def test_on_moto_every_capability_holds_and_the_probe_leaves_nothing_behind(
    endpoint: str, tmp_path: Path
) -> None:
    caps = run_probe(endpoint, tmp_path)
    # What moto does (ecosystem.md): If-None-Match gives one winner, metadata stored, Range honoured;
    # a key ending in '/' is an object like any other, so it is listed.
    assert caps.conditional_writes and caps.metadata_kept and caps.range_honoured
    assert caps.listing_sizes and caps.folder_entries_listed
    assert caps.multipart_completes and caps.multipart_uploads_listed
    assert caps.usable and caps.cleaned_up and caps.warnings == ()
    assert "412" in caps.probe("conditional_writes").detail
    assert everything_under(endpoint, "team/") == (["team/models/Wan/config.json"], [])


def test_the_probe_writes_only_under_prefix_mt_probe(proxy: FaultyProxy, tmp_path: Path) -> None:
    run_probe(proxy.url, tmp_path)
    written = {r.path for r in proxy.requests if r.method in ("PUT", "POST", "DELETE")}
    assert written and all(p.startswith(f"/{BUCKET}/team/.mt/probe-") for p in written), written


def test_a_server_that_ignores_range_makes_range_not_honoured_and_nothing_else(
    proxy: FaultyProxy, endpoint: str, tmp_path: Path
) -> None:
    proxy.ignore_range(times=None)
    caps = run_probe(proxy.url, tmp_path)
    assert caps.range_honoured is False
    assert "answered 200 with the whole object (4096 bytes)" in caps.probe("range_honoured").detail
    assert caps.conditional_writes and caps.metadata_kept and caps.usable
    assert everything_under(endpoint, "team/.mt/") == ([], [])


def test_a_server_that_ignores_if_none_match_gives_no_conditional_writes(
    proxy: FaultyProxy, endpoint: str, tmp_path: Path
) -> None:
    proxy.ignore_if_none_match(times=None)
    caps = run_probe(proxy.url, tmp_path)
    assert caps.conditional_writes is False
    assert "succeeded: the header is ignored" in caps.probe("conditional_writes").detail
    assert [r.status for r in proxy.requests if r.fault == "ignore_if_none_match"] == [200, 200]
    assert caps.usable and caps.cleaned_up


def test_the_conditional_writes_probe_alone_tells_moto_from_a_server_that_ignores_the_header(
    proxy: FaultyProxy, endpoint: str
) -> None:
    client = s3_client(proxy.url)
    try:
        enforced = probe_conditional_writes(client, BUCKET, "team")
        assert enforced.ok and enforced.if_match  # moto: 412 to a wrong If-Match too
        proxy.ignore_if_match(times=None)
        if_match_ignored = probe_conditional_writes(client, BUCKET, "team")
        proxy.clear()
        proxy.ignore_if_none_match(times=None)
        ignored = probe_conditional_writes(client, BUCKET, "team")
    finally:
        client.close()
    assert not ignored.ok and "the header is ignored" in ignored.detail
    assert if_match_ignored.ok and if_match_ignored.if_match is False  # locks, read before they act
    assert "a PutObject with a wrong If-Match succeeded" in if_match_ignored.detail
    assert {r.method for r in proxy.requests} <= {"PUT", "GET", "DELETE"}  # no multipart, no listing...
    assert everything_under(endpoint, "team/.mt/") == ([], [])


def test_a_server_that_refuses_if_none_match_records_why_and_the_other_probes_still_run(
    proxy: FaultyProxy, endpoint: str, tmp_path: Path
) -> None:
    proxy.fail(501, method="PUT", path_contains="/lock", times=None)
    caps = run_probe(proxy.url, tmp_path)
    assert caps.conditional_writes is False
    assert "HTTP 501 NotImplemented" in caps.probe("conditional_writes").detail
    assert caps.metadata_kept and caps.range_honoured and caps.multipart_completes
    assert everything_under(endpoint, "team/.mt/") == ([], [])


def test_a_multipart_complete_that_fails_is_recorded_and_its_upload_aborted(
    proxy: FaultyProxy, endpoint: str, tmp_path: Path
) -> None:
    proxy.fail(500, method="POST", path_contains="/multipart", times=None)  # Create as well as Complete
    caps = run_probe(proxy.url, tmp_path)
    assert caps.multipart_completes is False and not caps.usable
    assert "HTTP 500 InternalError" in caps.probe("multipart_completes").detail
    assert everything_under(endpoint, "team/.mt/") == ([], [])


def test_access_denied_on_a_write_stops_the_probe_and_cleans_up(
    proxy: FaultyProxy, endpoint: str, tmp_path: Path
) -> None:
    proxy.fail(403, method="PUT", path_contains="/metadata", times=None)
    with pytest.raises(
        ProbeError, match=r"access denied writing under team/\.mt/probe-.*must be allowed to write"
    ):
        run_probe(proxy.url, tmp_path)
    assert everything_under(endpoint, "team/.mt/") == ([], [])


def test_cli_prints_one_line_per_capability_and_runpods_limits(endpoint: str, tmp_path: Path) -> None:
    result = run_cli("volume", "check", f"s3://{BUCKET}/team", env=volume_env(endpoint, tmp_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for name in (
        "conditional_writes",
        "metadata_kept",
        "range_honoured",
        "listing_sizes",
        "multipart_completes",
    ):
        assert sum(line.split()[:2] == [name, "yes"] for line in lines) == 1, result.stdout
    assert "PutObject < 500 MB; multipart parts <= 500 MB" in result.stdout
    assert "not supported: DeleteObjects" in result.stdout
    assert lines[-1] == f"next: mt-assets audit --volume s3://{BUCKET}/team"
    assert SECRET not in result.stdout + result.stderr


def test_cli_json_is_one_document(endpoint: str, tmp_path: Path) -> None:
    result = run_cli("volume", "check", f"s3://{BUCKET}", "--json", env=volume_env(endpoint, tmp_path))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["volume"] == f"s3://{BUCKET}" and doc["usable"] is True
    assert {name: c["ok"] for name, c in doc["capabilities"].items()} == {
        "conditional_writes": True,
        "metadata_kept": True,
        "range_honoured": True,
        "listing_sizes": True,
        "folder_entries_listed": True,
        "multipart_uploads_listed": True,
        "multipart_completes": True,
    }
    assert doc["limits"]["max_put_bytes"] == doc["limits"]["max_part_bytes"] == 500_000_000
    assert "DeleteObjects" in doc["limits"]["unsupported"]


def test_cli_says_in_one_line_that_the_bucket_does_not_exist(endpoint: str, tmp_path: Path) -> None:
    result = run_cli("volume", "check", "s3://no-such-volume", env=volume_env(endpoint, tmp_path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"error: volume s3://no-such-volume at {endpoint}: no bucket 'no-such-volume' (on RunPod the bucket is "
        "the network volume id, and MT_VOLUME_S3_ENDPOINT must be the endpoint of the volume's datacenter)"
    ]


def test_cli_says_in_one_line_that_the_keys_were_refused_and_never_prints_the_secret(
    proxy: FaultyProxy, tmp_path: Path
) -> None:
    proxy.fail(403, "InvalidAccessKeyId", method="HEAD", times=None)
    result = run_cli("volume", "check", f"s3://{BUCKET}", env=volume_env(proxy.url, tmp_path))
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "access denied (HTTP 403" in line and "check MT_VOLUME_S3_ACCESS_KEY_ID" in line
    assert SECRET not in result.stdout + result.stderr


def test_cli_refuses_a_bad_uri_naming_the_volume(tmp_path: Path) -> None:
    result = run_cli("volume", "check", "s3://user:pw@vol", env=volume_env("http://127.0.0.1:9", tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: volume s3://***@vol: credentials do not belong in the URI; set MT_VOLUME_S3_ACCESS_KEY_ID "
        "and MT_VOLUME_S3_SECRET_ACCESS_KEY instead"
    )
