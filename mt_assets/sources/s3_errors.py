"""What a botocore ClientError says: its HTTP status, its S3 error code, whether it means "no such
object". One set of helpers for every S3 caller (sources, the S3 volume): S3 and its look-alikes name
a missing object NoSuchKey (GET), NotFound or a bare 404 (HEAD, which has no body to name it)."""

from __future__ import annotations

from botocore.exceptions import ClientError

NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})


def http_status(e: ClientError) -> int:
    return int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def error_code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code") or "")


def is_not_found(e: ClientError) -> bool:
    """No object at the key (not: no bucket, which is NoSuchBucket)."""
    return error_code(e) in NOT_FOUND_CODES
