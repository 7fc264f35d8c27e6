"""FaultyProxy's imitations of RunPod's S3 API, seen by plain boto3 calls: a Complete answering 524 while
the object appears later, a repeated continuation token, 502s, 507 (volume full), If-None-Match ignored."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError, PaginationError

from mt_assets_tests.s3_server import FaultyProxy, put_tree, s3_client, s3_server

BUCKET = "faults"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with s3_server() as url:
        put_tree(url, BUCKET, "", {})
        yield url


@pytest.fixture
def proxy(endpoint: str) -> Iterator[FaultyProxy]:
    with FaultyProxy(endpoint) as p:
        yield p


@pytest.fixture
def client(proxy: FaultyProxy) -> Iterator[Any]:
    c = s3_client(proxy.url, retries={"mode": "standard", "total_max_attempts": 3})
    yield c
    c.close()


def status_of(e: pytest.ExceptionInfo[ClientError]) -> int:
    return int(e.value.response["ResponseMetadata"]["HTTPStatusCode"])


def test_a_complete_answering_524_raises_and_the_object_appears_later(
    proxy: FaultyProxy, client: Any
) -> None:
    key = "slow/merge.bin"
    upload = client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    etag = client.upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=1, Body=b"x" * 1000)["ETag"]
    proxy.complete_times_out(delay=1.0)
    with pytest.raises(ClientError) as e:
        client.complete_multipart_upload(
            Bucket=BUCKET,
            Key=key,
            UploadId=upload,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]},
        )
    assert status_of(e) == 524 and e.value.response["Error"]["Code"] == "524"
    with pytest.raises(ClientError) as absent:
        client.head_object(Bucket=BUCKET, Key=key)
    assert status_of(absent) == 404  # not yet: the merge goes on
    deadline = time.monotonic() + 15
    while True:
        try:
            head = client.head_object(Bucket=BUCKET, Key=key)
            break
        except ClientError:
            assert time.monotonic() < deadline, "the object never appeared"
            time.sleep(0.2)
    assert head["ContentLength"] == 1000
    completes = [r for r in proxy.requests if r.method == "POST"][1:]  # after CreateMultipartUpload
    assert [(r.fault, r.status) for r in completes] == [
        ("complete_times_out", 524),
        ("complete_times_out:later", 200),
    ]


def test_a_listing_repeats_a_continuation_token_once_with_the_same_page(
    proxy: FaultyProxy, client: Any
) -> None:
    put_tree(proxy.url, BUCKET, "many", {f"f{i}": b"." for i in range(5)})
    proxy.repeat_continuation_token()
    first = client.list_objects_v2(Bucket=BUCKET, Prefix="many/", MaxKeys=2)
    token = first["NextContinuationToken"]
    again = client.list_objects_v2(Bucket=BUCKET, Prefix="many/", MaxKeys=2, ContinuationToken=token)
    assert again["NextContinuationToken"] == token  # the same next token, twice
    assert (
        [o["Key"] for o in again["Contents"]]
        == [o["Key"] for o in first["Contents"]]
        == ["many/f0", "many/f1"]
    )
    second = client.list_objects_v2(Bucket=BUCKET, Prefix="many/", MaxKeys=2, ContinuationToken=token)
    assert [o["Key"] for o in second["Contents"]] == ["many/f2", "many/f3"]  # once only: then the next page
    assert second["NextContinuationToken"] != token
    assert [r.fault for r in proxy.requests if r.path == f"/{BUCKET}"][-3:] == [
        None,
        "repeat_continuation_token",
        None,
    ]


def test_botocores_paginator_refuses_a_repeated_token_as_runpod_documents(
    proxy: FaultyProxy, client: Any
) -> None:
    put_tree(proxy.url, BUCKET, "paged", {f"f{i}": b"." for i in range(5)})
    proxy.repeat_continuation_token()
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix="paged/", PaginationConfig={"PageSize": 2}
    )
    with pytest.raises(PaginationError, match="same next token"):
        list(pages)


def test_502s_are_retried_by_botocore(proxy: FaultyProxy, client: Any) -> None:
    put_tree(proxy.url, BUCKET, "", {"flaky.bin": b"payload"})
    proxy.fail(502, method="GET", path_contains="flaky.bin", times=2)
    assert client.get_object(Bucket=BUCKET, Key="flaky.bin")["Body"].read() == b"payload"
    assert [r.status for r in proxy.gets("flaky.bin")] == [502, 502, 200]


def test_a_full_volume_answers_507_insufficient_storage_to_every_write(
    proxy: FaultyProxy, client: Any
) -> None:
    proxy.volume_full()
    with pytest.raises(ClientError) as put:
        client.put_object(Bucket=BUCKET, Key="full/a.bin", Body=b"x")
    assert status_of(put) == 507 and put.value.response["Error"]["Code"] == "InsufficientStorage"
    with pytest.raises(ClientError) as create:
        client.create_multipart_upload(Bucket=BUCKET, Key="full/b.bin")
    assert status_of(create) == 507
    assert [r.method for r in proxy.requests] == ["PUT", "POST"]  # 507 is not retried
    assert client.list_objects_v2(Bucket=BUCKET, Prefix="full/").get("KeyCount") == 0


def test_fail_picks_the_s3_code_of_its_status(proxy: FaultyProxy, client: Any) -> None:
    proxy.fail(400, method="GET")
    with pytest.raises(ClientError) as e:
        client.get_object(Bucket=BUCKET, Key="anything")
    assert e.value.response["Error"]["Code"] == "InvalidRequest"


def test_an_ignored_if_none_match_lets_a_second_writer_overwrite(proxy: FaultyProxy, client: Any) -> None:
    proxy.ignore_if_none_match(times=None)
    client.put_object(Bucket=BUCKET, Key="lock", Body=b"first", IfNoneMatch="*")
    client.put_object(Bucket=BUCKET, Key="lock", Body=b"second", IfNoneMatch="*")  # 200, not 412
    assert client.get_object(Bucket=BUCKET, Key="lock")["Body"].read() == b"second"
    proxy.clear()
    with pytest.raises(ClientError) as e:
        client.put_object(Bucket=BUCKET, Key="lock", Body=b"third", IfNoneMatch="*")
    assert status_of(e) == 412  # moto itself enforces it


def test_an_ignored_if_match_lets_a_writer_with_a_wrong_etag_overwrite(
    proxy: FaultyProxy, client: Any
) -> None:
    client.put_object(Bucket=BUCKET, Key="held", Body=b"first")
    wrong = '"00000000000000000000000000000000"'
    with pytest.raises(ClientError) as e:
        client.put_object(Bucket=BUCKET, Key="held", Body=b"second", IfMatch=wrong)
    assert status_of(e) == 412  # moto itself enforces it
    proxy.ignore_if_match(times=1)
    client.put_object(Bucket=BUCKET, Key="held", Body=b"second", IfMatch=wrong)  # 200, not 412
    assert client.get_object(Bucket=BUCKET, Key="held")["Body"].read() == b"second"
    assert [r.fault for r in proxy.requests if r.method == "PUT"] == [None, None, "ignore_if_match"]


def test_the_rate_limit_holds_uploads_too(endpoint: str) -> None:
    with FaultyProxy(endpoint, rate_bytes_per_s=20e6) as limited:
        client = s3_client(limited.url)
        try:
            started = time.monotonic()
            client.put_object(Bucket=BUCKET, Key="rated.bin", Body=b"u" * 8_000_000)
            elapsed = time.monotonic() - started
        finally:
            client.close()
    assert limited.upload_bucket is not None
    expected = (8_000_000 - limited.upload_bucket.burst) / 20e6  # 0.35 s: 8 MB at 20 MB/s, less the burst
    assert expected * 0.9 <= elapsed <= expected * 4 + 1.0
