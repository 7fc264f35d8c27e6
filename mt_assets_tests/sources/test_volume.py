"""A volume as a source (replication): folders and s3:// prefixes holding models/ are read as volumes,
copied file by file with the destination verifying every byte, proved by a full audit, resumable."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from mt_assets import provision
from mt_assets.audit import audit
from mt_assets.sources import MirrorSource, open_source
from mt_assets.sources.s3 import S3Source
from mt_assets.sources.volume import VolumeSource
from mt_assets.volume import LocalVolume
from mt_assets_tests.conftest import CLI, run_cli
from mt_assets_tests.processes import sigkill_when
from mt_assets_tests.s3_server import FaultyProxy
from mt_assets_tests.volume.backends import Backend, volume_env

SPEC = {"alpha": {"a.bin": 300_000, "sub/b.bin": 70_000}, "beta": {"c.json": 1_234}}


def source_env(endpoint: str) -> dict[str, str]:
    """An s3:// source's variables (AWS_*) for `endpoint`; nothing of the volume's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MT_VOLUME_S3_", "AWS_"))}
    return {
        **env,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def provision_json(source: str, volume: str, manifest: Path, env: dict[str, str], *more: str) -> dict:
    done = run_cli(
        "provision",
        "--manifest",
        str(manifest),
        "--source",
        source,
        "--volume",
        volume,
        "--json",
        *more,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def assert_same_files(*backends: Backend) -> None:
    first = backends[0]
    for f in first.files:
        for b in backends:
            assert b.get(first.target(f.path)) == f.data, (b.spec, f.path)


# -- telling a volume from a mirror ---------------------------------------------------------------


def test_a_folder_holding_models_is_read_as_a_volume_and_any_other_as_a_mirror(tmp_path: Path) -> None:
    (tmp_path / "volume").mkdir()
    volume = Backend("local", tmp_path / "volume").fill(SPEC)
    mirror = volume.mirror(tmp_path / "mirror")
    as_volume = open_source(str(volume.root))
    assert isinstance(as_volume, VolumeSource) and isinstance(as_volume.volume, LocalVolume)
    assert isinstance(open_source(str(mirror)), MirrorSource)
    f = volume.manifest.files[0]  # type: ignore[union-attr]
    assert as_volume.uri_for(f) == f"{volume.root}/models/{f.dir}/{f.path}"


def test_a_file_missing_from_the_source_volume_is_named_as_such(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = Backend("local", tmp_path / "a").fill(SPEC)
    a.delete(a.target("c.json"))
    assert a.manifest is not None
    dest = LocalVolume(tmp_path / "b")
    report = provision.apply(provision.plan(a.manifest, dest), open_source(str(a.root)), dest)
    failed = next(r for r in report.results if r.file.path == "c.json")
    assert (
        failed.detail == f"models/beta/c.json from {a.root}/models/beta/c.json: missing on the source volume"
    )
    assert report.audit is not None and report.audit.full  # replication: the closing audit re-reads all
    assert [r.outcome for r in report.results].count("placed") == 2


def test_an_s3_prefix_holding_models_is_a_volume_and_its_models_folder_a_bucket(
    moto_volume_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = Backend("s3", tmp_path, endpoint=moto_volume_endpoint, prefix="detect").fill(SPEC)
    for name, value in source_env(moto_volume_endpoint).items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    as_volume = open_source(a.spec)
    assert isinstance(as_volume, VolumeSource)
    as_bucket = open_source(f"{a.spec}/models")  # the S3 source's own layout: <prefix>/<dir>/<path>
    assert isinstance(as_bucket, S3Source)
    assert isinstance(open_source(f"{a.spec}/nothing-here"), S3Source)
    for source in (as_volume, as_bucket):
        source.close()


# -- replication end to end -----------------------------------------------------------------------


def test_local_to_s3_to_local_ends_with_both_audits_complete_and_identical_bytes(
    moto_volume_endpoint: str, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "c").mkdir()
    a = Backend("local", tmp_path / "a").fill(SPEC)  # a mounted volume, written by a pod
    b = Backend("s3", tmp_path, endpoint=moto_volume_endpoint, prefix="repl-b", files=a.files)
    c = Backend("local", tmp_path / "c", files=a.files)
    manifest = a.write_manifest(tmp_path / "m.yaml")
    # The destination's variables only (an s3:// source would use AWS_*): here AWS_* lead nowhere.
    to_s3 = {**source_env("http://127.0.0.1:9"), **volume_env(moto_volume_endpoint)}
    doc = provision_json(str(a.root), b.spec, manifest, to_s3)
    assert doc["complete"] and doc["audit"]["full"]
    assert {r["outcome"] for r in doc["results"]} == {"placed"}
    assert doc["results"][0]["source"] == f"{a.root}/{a.target(a.files[0].path)}"
    doc = provision_json(b.spec, str(c.root), manifest, source_env(moto_volume_endpoint))
    assert doc["complete"] and doc["audit"]["full"]
    assert doc["results"][0]["source"] == f"{b.spec}/{a.target(a.files[0].path)}"
    assert_same_files(a, b, c)
    assert a.manifest is not None
    for backend in (a, b, c):
        assert audit(a.manifest, backend.volume(), full=True).complete


def test_replication_between_two_buckets_ends_with_both_audits_complete(
    moto_volume_endpoint: str, tmp_path: Path
) -> None:
    a = Backend(
        "s3", tmp_path, endpoint=moto_volume_endpoint, bucket="volume-a", prefix="dc1"
    ).create_bucket()
    a.fill(SPEC)
    b = Backend("s3", tmp_path, endpoint=moto_volume_endpoint, prefix="dc2", files=a.files)
    manifest = a.write_manifest(tmp_path / "m.yaml")
    env = {**source_env(moto_volume_endpoint), **volume_env(moto_volume_endpoint)}
    doc = provision_json(a.spec, b.spec, manifest, env)
    assert doc["complete"] and doc["audit"]["full"]
    assert_same_files(a, b)
    assert a.manifest is not None
    assert audit(a.manifest, a.volume(), full=True).complete
    assert audit(a.manifest, b.volume(), full=True).complete
    again = provision_json(a.spec, b.spec, manifest, env)  # nothing left to copy
    assert again["complete"] and again["results"] == []


def test_a_source_volumes_hash_record_is_no_proof_the_destination_verifies_the_bytes(
    moto_volume_endpoint: str, tmp_path: Path
) -> None:
    a = Backend("s3", tmp_path, endpoint=moto_volume_endpoint, prefix="lying-a").fill(SPEC)
    assert a.manifest is not None
    assert audit(a.manifest, a.volume()).complete  # the record now binds every file
    # Bit rot under the API: c.json's bytes change, and its record entry is moved to the new ETag.
    target = a.target("c.json")
    wrong = bytes([a.data("c.json")[0] ^ 1]) + a.data("c.json")[1:]
    a.put(target, wrong)
    record_key = f"{a.prefix}/.mt/hashes.json"
    doc = json.loads(a.client.get_object(Bucket=a.bucket, Key=record_key)["Body"].read())
    doc["files"][target]["etag"] = a.client.head_object(Bucket=a.bucket, Key=a.key(target))["ETag"]
    a.client.put_object(Bucket=a.bucket, Key=record_key, Body=json.dumps(doc).encode())
    assert audit(a.manifest, a.volume()).complete  # the record vouches for the wrong bytes

    b = Backend("s3", tmp_path, endpoint=moto_volume_endpoint, prefix="lying-b", files=a.files)
    dest = b.volume()
    source = VolumeSource(a.volume())
    report = provision.apply(provision.plan(a.manifest, dest), source, dest)
    source.close()
    failed = next(r for r in report.results if r.file.path == "c.json")
    assert failed.outcome == "failed"
    assert failed.detail is not None and "sha256 is" in failed.detail and failed.detail.endswith("not placed")
    assert b.get(target) is None
    assert report.audit is not None and report.audit.counts()["ok"] == 2


# -- killed half-way ------------------------------------------------------------------------------


@pytest.mark.parametrize("destination", ["s3", "local"])
def test_a_replication_killed_half_way_is_finished_by_a_rerun(
    moto_volume_endpoint: str, tmp_path: Path, destination: str
) -> None:
    spec = {"alpha": {f"f{i}.bin": 400_000 for i in range(6)}}
    a = Backend("s3", tmp_path, endpoint=moto_volume_endpoint, prefix=f"kill-a-{destination}").fill(spec)
    if destination == "s3":
        b = Backend("s3", tmp_path, endpoint=moto_volume_endpoint, prefix="kill-b", files=a.files)
    else:
        (tmp_path / "b").mkdir()
        b = Backend("local", tmp_path / "b", files=a.files)
    manifest = a.write_manifest(tmp_path / "m.yaml")
    env = {**volume_env(moto_volume_endpoint)}
    with FaultyProxy(moto_volume_endpoint, rate_bytes_per_s=600_000) as slow:  # ~4 s for the 2.4 MB
        args = [
            "provision",
            "--manifest",
            str(manifest),
            "--source",
            a.spec,
            "--volume",
            b.spec,
            "--jobs",
            "1",
        ]
        victim = subprocess.Popen(
            [*CLI, *args],
            env={**source_env(slow.url), **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

        def two_placed() -> bool:
            return sum(b.get(b.target(f.path)) is not None for f in a.files) >= 2

        sigkill_when(victim, two_placed, "placing two files")
    placed_before = {f.path for f in a.files if b.get(b.target(f.path)) is not None}
    assert 2 <= len(placed_before) < len(a.files)
    doc = provision_json(a.spec, b.spec, manifest, {**source_env(moto_volume_endpoint), **env})
    assert doc["complete"] and doc["audit"]["full"]
    assert {r["path"] for r in doc["results"]} == {f.path for f in a.files} - placed_before
    assert_same_files(a, b)
    assert b.uploads() == []
