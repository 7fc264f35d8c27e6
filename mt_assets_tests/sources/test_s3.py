"""S3Source against a real moto_server on loopback, with FaultyProxy in front for the failures."""

from __future__ import annotations

import hashlib
import itertools
import random
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mt_assets.manifest import ManifestFile
from mt_assets.sources import SourceError, TransientSourceError, open_source
from mt_assets.sources.s3 import S3Source
from mt_assets.volume import Expected, IntegrityError, LocalVolume
from mt_assets_tests.s3_server import FaultyProxy, put_tree, s3_server

BUCKET = "mt-test-models"
ACCESS_KEY = "AKIATESTACCESSKEY0001"
SECRET = "rps_SECRET-must-never-be-printed-7f3a9c"
MiB = 1024 * 1024
_counter = itertools.count()


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with s3_server() as url:
        yield url


@pytest.fixture
def proxy(endpoint: str) -> Iterator[FaultyProxy]:
    with FaultyProxy(endpoint) as p:
        yield p


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials (the secret is recognisable, to prove it never leaks); nothing from ~/.aws."""
    for name in (
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_MAX_ATTEMPTS",
        "AWS_RETRY_MODE",
        "AWS_REGION",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@dataclass
class Stored:
    """An object put in the bucket, and the manifest file that pins it."""

    file: ManifestFile
    data: bytes
    prefix: str

    @property
    def expected(self) -> Expected:
        return Expected(size=len(self.data), sha256=hashlib.sha256(self.data).hexdigest())

    @property
    def uri(self) -> str:
        return f"s3://{BUCKET}/{self.prefix}"


@pytest.fixture
def stored(endpoint: str) -> Callable[..., Stored]:
    """Put `size` random bytes at s3://BUCKET/<fresh prefix>/<dir>/<path>; pin them in a ManifestFile."""

    def put(size: int, *, path: str = "weights/model.safetensors", manifest_size: int | None = -1) -> Stored:
        n = next(_counter)
        prefix = f"run-{n}/models"
        data = random.Random(n).randbytes(size)
        put_tree(endpoint, BUCKET, prefix, {f"wan-{n}/{path}": data})
        f = ManifestFile(
            component="wan",
            repo="test/wan",
            revision="a" * 40,
            dir=f"wan-{n}",
            path=path,
            kind="weights",
            size=len(data) if manifest_size == -1 else manifest_size,
            sha256=hashlib.sha256(data).hexdigest(),
        )
        return Stored(f, data, prefix)

    return put


@pytest.fixture
def volume(tmp_path: Path) -> LocalVolume:
    root = tmp_path / "volume"
    root.mkdir()
    return LocalVolume(root)


def fetch_and_commit(source: S3Source, s: Stored, volume: LocalVolume, *, resume: bool = False) -> list[int]:
    seen: list[int] = []
    with volume.writing(s.file.target, s.expected, resume=resume) as w:
        source.fetch(s.file, w, seen.append)
        w.commit()
    return seen


def staged_files(volume: LocalVolume) -> list[Path]:
    staging = volume.root / ".mt" / "staging"
    return sorted(staging.iterdir()) if staging.exists() else []


def assert_no_secret(excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    """Neither the message nor anything in the chained traceback carries the secret key."""
    text = "".join(traceback.format_exception(excinfo.value))
    assert SECRET not in text
    assert SECRET not in str(excinfo.value)


# -- fetching --------------------------------------------------------------------------------


def test_fetch_places_the_objects_bytes_and_names_it_by_uri(stored, volume, endpoint):
    s = stored(300_000)
    source = S3Source.from_uri(s.uri, endpoint_url=endpoint)
    assert source.uri == s.uri
    assert source.uri_for(s.file) == f"s3://{BUCKET}/{s.prefix}/{s.file.dir}/{s.file.path}"

    seen = fetch_and_commit(source, s, volume)

    assert (volume.root / s.file.target).read_bytes() == s.data
    assert sum(seen) == len(s.data)
    assert staged_files(volume) == []


def test_large_object_is_fetched_as_parallel_ranges_in_order(stored, volume, proxy):
    s = stored(40 * MiB + 12345)
    source = S3Source.from_uri(s.uri, endpoint_url=proxy.url, chunk_size=4 * MiB, max_concurrency=4)

    fetch_and_commit(source, s, volume)

    assert (volume.root / s.file.target).read_bytes() == s.data
    gets = proxy.gets(s.file.dir)
    assert len(gets) == 11
    starts = sorted(int(g.range.removeprefix("bytes=").split("-")[0]) for g in gets if g.range)
    assert starts == list(range(0, len(s.data), 4 * MiB))
    assert sum(g.body_bytes for g in gets) == len(s.data)
    assert proxy.max_in_flight > 1


def test_resume_requests_only_the_missing_bytes(stored, volume, proxy):
    s = stored(2 * MiB + 777)
    source = S3Source.from_uri(s.uri, endpoint_url=proxy.url)
    kept = 1_000_001
    with volume.writing(s.file.target, s.expected, resume=True) as w:
        w.write(s.data[:kept])  # an interrupted attempt: left without commit, kept for resuming

    with volume.writing(s.file.target, s.expected, resume=True) as w:
        assert w.resume_from == kept
        source.fetch(s.file, w, lambda n: None)
        w.commit()

    assert (volume.root / s.file.target).read_bytes() == s.data
    [get] = proxy.gets(s.file.dir)
    assert get.range == f"bytes={kept}-"
    assert get.body_bytes == len(s.data) - kept


def test_resume_of_a_large_object_fetches_ranges_from_the_kept_offset(stored, volume, proxy):
    s = stored(12 * MiB)
    source = S3Source.from_uri(s.uri, endpoint_url=proxy.url, chunk_size=2 * MiB, max_concurrency=3)
    kept = 5 * MiB + 3
    with volume.writing(s.file.target, s.expected, resume=True) as w:
        w.write(s.data[:kept])

    fetch_and_commit(source, s, volume, resume=True)

    assert (volume.root / s.file.target).read_bytes() == s.data
    gets = proxy.gets(s.file.dir)
    assert min(int(g.range.split("=")[1].split("-")[0]) for g in gets) == kept
    assert sum(g.body_bytes for g in gets) == len(s.data) - kept


def test_a_server_that_ignores_the_range_makes_the_resume_start_over(stored, volume, proxy):
    s = stored(500_000)
    source = S3Source.from_uri(s.uri, endpoint_url=proxy.url)
    with volume.writing(s.file.target, s.expected, resume=True) as w:
        w.write(b"x" * 1000)  # staged bytes that would be wrong if kept
    proxy.ignore_range()

    fetch_and_commit(source, s, volume, resume=True)

    assert (volume.root / s.file.target).read_bytes() == s.data
    [get] = proxy.gets()
    assert (get.range, get.status, get.body_bytes) == ("bytes=1000-", 200, len(s.data))


def test_a_part_answered_with_the_whole_object_is_transient_and_places_nothing(stored, volume, proxy):
    s = stored(5 * MiB)
    source = S3Source.from_uri(s.uri, endpoint_url=proxy.url, chunk_size=2 * MiB)
    proxy.ignore_range(range_start=2 * MiB)

    with pytest.raises(TransientSourceError, match="server ignored the range"):
        fetch_and_commit(source, s, volume)

    assert not (volume.root / s.file.target).exists()


def test_open_source_reads_the_endpoint_from_aws_endpoint_url(stored, volume, endpoint, monkeypatch):
    s = stored(1000)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    source = open_source(s.uri + "/")  # a trailing slash is the same prefix
    assert isinstance(source, S3Source)
    assert source.uri == s.uri
    assert source.endpoint == endpoint

    fetch_and_commit(source, s, volume)

    assert (volume.root / s.file.target).read_bytes() == s.data


# -- what is not there -----------------------------------------------------------------------


def test_missing_key_is_a_source_error_naming_the_object(stored, volume, endpoint):
    s = stored(10)
    source = S3Source.from_uri(s.uri, endpoint_url=endpoint)
    missing = ManifestFile("wan", "test/wan", "a" * 40, s.file.dir, "nope.bin", "weights", size=10)

    with pytest.raises(SourceError) as excinfo:
        with volume.writing(missing.target) as w:
            source.fetch(missing, w, lambda n: None)

    assert not isinstance(excinfo.value, TransientSourceError)
    assert str(excinfo.value) == (
        f"models/{s.file.dir}/nope.bin from s3://{BUCKET}/{s.prefix}/{s.file.dir}/nope.bin: no such object"
    )
    assert not (volume.root / missing.target).exists()


def test_missing_bucket_is_named(stored, volume, endpoint):
    s = stored(10)
    source = S3Source.from_uri("s3://no-such-bucket-here/models", endpoint_url=endpoint)

    with pytest.raises(SourceError, match="no such bucket 'no-such-bucket-here'") as excinfo:
        with volume.writing(s.file.target) as w:
            source.fetch(s.file, w, lambda n: None)

    assert not isinstance(excinfo.value, TransientSourceError)


def test_size_mismatch_is_caught_before_any_byte_is_fetched(stored, volume, proxy):
    s = stored(5000, manifest_size=4999)
    source = S3Source.from_uri(s.uri, endpoint_url=proxy.url)

    with pytest.raises(SourceError) as excinfo:
        with volume.writing(s.file.target) as w:
            source.fetch(s.file, w, lambda n: None)

    assert "the object is 5000 bytes, the manifest expects 4999; nothing fetched" in str(excinfo.value)
    assert proxy.gets() == []
    assert [r.method for r in proxy.requests] == ["HEAD"]
    assert not (volume.root / s.file.target).exists()


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        (
            "s3://Bad_Bucket/x",
            "source s3://Bad_Bucket/x: bucket name 'Bad_Bucket' is not a valid S3 bucket name",
        ),
        ("s3://ab/x", "bucket name 'ab' is not a valid S3 bucket name (must be 3 to 63 characters"),
        ("s3://a..b/x", "must not contain two adjacent periods"),
        ("s3://192.168.1.10/x", "must not be formatted as an IP address"),
        ("s3:///x", "bucket name '' is not a valid S3 bucket name"),
        ("s3://models/../etc", "key prefix '../etc' must not contain '..'"),
        ("s3://models/a\\b", "key prefix 'a\\\\b' must use '/' separators"),
        ("s3://models//abs", "key prefix '/abs' must not begin with '/'"),
        ("s3://models/a//b", "key prefix 'a//b' must not contain empty"),
        ("s3://models/x?versionId=1", "must not contain a query"),
        ("https://models/x", "expected s3://bucket/prefix"),
    ],
)
def test_from_uri_rejects_bad_uris_naming_the_field(uri, message):
    with pytest.raises(SourceError) as excinfo:
        S3Source.from_uri(uri)
    assert message in str(excinfo.value)


def test_credentials_in_the_uri_or_endpoint_are_refused_without_echoing_them():
    with pytest.raises(SourceError) as excinfo:
        S3Source.from_uri(f"s3://{ACCESS_KEY}:{SECRET}@models/x")
    assert "credentials do not belong in the URI" in str(excinfo.value)
    assert_no_secret(excinfo)

    with pytest.raises(SourceError) as excinfo:
        S3Source.from_uri("s3://models/x", endpoint_url=f"http://{ACCESS_KEY}:{SECRET}@127.0.0.1:9")
    assert "must not carry credentials" in str(excinfo.value)
    assert_no_secret(excinfo)


# -- failures --------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [300_000, 9 * MiB], ids=["one-stream", "ranges"])
def test_dropped_connection_is_transient_and_places_nothing(stored, volume, proxy, size):
    s = stored(size)
    source = S3Source.from_uri(s.uri, endpoint_url=proxy.url, chunk_size=2 * MiB, max_concurrency=2)
    proxy.drop_after(100_000)

    with pytest.raises(TransientSourceError) as excinfo:
        fetch_and_commit(source, s, volume)

    assert f"{s.file.target} from {source.uri_for(s.file)}" in str(excinfo.value)
    assert not (volume.root / s.file.target).exists()
    assert staged_files(volume) == []
    assert_no_secret(excinfo)


def test_after_a_dropped_part_a_retry_resumes_where_the_written_parts_end(stored, volume, proxy):
    s = stored(10 * MiB)
    source = S3Source.from_uri(s.uri, endpoint_url=proxy.url, chunk_size=2 * MiB, max_concurrency=2)
    proxy.drop_after(1000, range_start=4 * MiB)  # the third part; the first two get written
    seen: list[int] = []
    with pytest.raises(TransientSourceError, match=r"ResponseStreamingError|IncompleteRead"):
        with volume.writing(s.file.target, s.expected, resume=True) as w:
            source.fetch(s.file, w, seen.append)
    assert sum(seen) == 4 * MiB

    proxy.clear()
    with volume.writing(s.file.target, s.expected, resume=True) as w:
        assert w.resume_from == 4 * MiB
        source.fetch(s.file, w, lambda n: None)
        w.commit()

    assert (volume.root / s.file.target).read_bytes() == s.data
    assert sorted(g.range for g in proxy.gets()) == [
        f"bytes={a}-{a + 2 * MiB - 1}" for a in range(4 * MiB, 10 * MiB, 2 * MiB)
    ]


def test_the_part_in_line_is_written_while_it_arrives_so_a_cut_keeps_its_whole_blocks(stored, volume, proxy):
    s = stored(10 * MiB)
    source = S3Source.from_uri(s.uri, endpoint_url=proxy.url, chunk_size=4 * MiB, max_concurrency=2)
    proxy.drop_after(MiB + MiB // 2, range_start=4 * MiB)  # 1.5 MiB into the second part
    with pytest.raises(TransientSourceError):
        with volume.writing(s.file.target, s.expected, resume=True) as w:
            source.fetch(s.file, w, lambda n: None)

    proxy.clear()
    with volume.writing(s.file.target, s.expected, resume=True) as w:
        assert w.resume_from == 5 * MiB  # the first part and the second's first whole 1 MiB block
        source.fetch(s.file, w, lambda n: None)
        w.commit()
    assert (volume.root / s.file.target).read_bytes() == s.data
    assert sorted(g.range for g in proxy.gets()) == ["bytes=5242880-9437183", "bytes=9437184-10485759"]


def test_http_500_once_is_retried_by_botocore(stored, volume, proxy):
    s = stored(50_000)
    source = S3Source.from_uri(s.uri, endpoint_url=proxy.url)
    proxy.fail(500, "InternalError", method="GET")

    fetch_and_commit(source, s, volume)

    assert (volume.root / s.file.target).read_bytes() == s.data
    assert [g.status for g in proxy.gets()] == [500, 200]


@pytest.mark.parametrize(
    ("status", "code"), [(500, "InternalError"), (503, "SlowDown"), (503, "ServiceUnavailable")]
)
def test_server_errors_left_after_retries_are_transient(stored, volume, proxy, status, code):
    s = stored(50_000)
    source = S3Source.from_uri(s.uri, endpoint_url=proxy.url, max_attempts=1)
    proxy.fail(status, code, method="GET", times=None)

    with pytest.raises(TransientSourceError, match=f"HTTP {status} \\({code}") as excinfo:
        fetch_and_commit(source, s, volume)

    assert not (volume.root / s.file.target).exists()
    assert_no_secret(excinfo)


@pytest.mark.parametrize(
    ("status", "code", "hint"),
    [
        (403, "InvalidAccessKeyId", "check AWS_ACCESS_KEY_ID"),
        (403, "SignatureDoesNotMatch", "check AWS_SECRET_ACCESS_KEY"),
        (403, "AccessDenied", "check that AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY belong to a key"),
        (404, "NoSuchBucket", "no such bucket"),
    ],
)
def test_credential_and_access_errors_are_permanent_and_never_show_the_secret(
    stored, volume, proxy, status, code, hint
):
    s = stored(50_000)
    source = S3Source.from_uri(s.uri, endpoint_url=proxy.url)
    proxy.fail(status, code, method="GET", times=None)

    with pytest.raises(SourceError, match=hint) as excinfo:
        fetch_and_commit(source, s, volume)

    assert not isinstance(excinfo.value, TransientSourceError)
    assert_no_secret(excinfo)


def test_forbidden_head_without_a_body_says_access_denied(stored, volume, proxy):
    s = stored(50_000)
    source = S3Source.from_uri(s.uri, endpoint_url=proxy.url)
    proxy.fail(403, "AccessDenied", method="HEAD")

    with pytest.raises(SourceError, match="access denied") as excinfo:
        fetch_and_commit(source, s, volume)

    assert not isinstance(excinfo.value, TransientSourceError)
    assert [g.method for g in proxy.requests] == ["HEAD"]


def test_connection_refused_is_transient(volume):
    from mt_assets_tests.processes import free_port

    source = S3Source.from_uri(
        "s3://models/x", endpoint_url=f"http://127.0.0.1:{free_port()}", max_attempts=1
    )
    f = ManifestFile("wan", "test/wan", "a" * 40, "wan", "a.bin", "weights", size=1)

    with pytest.raises(TransientSourceError, match="EndpointConnectionError") as excinfo:
        with volume.writing(f.target) as w:
            source.fetch(f, w, lambda n: None)

    assert_no_secret(excinfo)


def test_missing_credentials_name_the_variables(stored, volume, endpoint, monkeypatch):
    s = stored(10)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    source = S3Source.from_uri(s.uri, endpoint_url=endpoint)

    with pytest.raises(SourceError, match="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") as excinfo:
        fetch_and_commit(source, s, volume)

    assert not isinstance(excinfo.value, TransientSourceError)


def test_read_timeout_is_transient(stored, volume, proxy):
    s = stored(50_000)
    source = S3Source.from_uri(s.uri, endpoint_url=proxy.url, read_timeout=0.3, max_attempts=1)
    proxy.stall(1.5)

    with pytest.raises(TransientSourceError, match="ReadTimeoutError"):
        fetch_and_commit(source, s, volume)

    assert not (volume.root / s.file.target).exists()


@pytest.mark.parametrize("size", [300_000, 9 * MiB], ids=["one-stream", "ranges"])
def test_corrupted_bytes_fail_the_commit_and_place_nothing(stored, volume, proxy, size):
    s = stored(size)
    source = S3Source.from_uri(s.uri, endpoint_url=proxy.url, chunk_size=2 * MiB)
    proxy.corrupt(at=12_345)

    with pytest.raises(IntegrityError, match=r"sha256 is .*; not placed"):
        fetch_and_commit(source, s, volume)

    assert not (volume.root / s.file.target).exists()
    assert staged_files(volume) == []
