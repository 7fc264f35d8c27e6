"""What an S3-compatible endpoint really does, found by trying it: the facts an `s3://` volume relies on.

RunPod's S3 API onto a network volume (docs.runpod.io/storage/s3-api) documents a subset of S3:
Get/Put (< 500 MB)/Head/Copy/DeleteObject, ListObjects(V2), HeadBucket and the six multipart calls
(parts <= 500 MB); not DeleteObjects, presigned URLs, versioning, tagging, GetObjectAttributes or
UploadPartCopy. It says nothing of user metadata, conditional writes or Range, and S3 look-alikes
often accept `If-None-Match` and ignore it. So nothing the backend needs beyond the documented subset
is assumed: `probe(client, bucket, prefix)` tries each on the volume itself and returns Capabilities.

The probes, each on its own object(s) and each isolated (a failure records False and the reason the
server gave, the others still run):

    conditional_writes       PutObject with `If-None-Match: *` on a fresh key succeeds, a second one on
                             the same key answers 412 and the first writer's bytes stay. Only then may
                             a writer lock be an object created that way; anything else (501, 400, a
                             second 200 that overwrote) means two writers cannot be told apart. Then
                             a PutObject with a wrong `If-Match` must answer 412 (`Probe.if_match`);
                             where not, the lock reads the ETag before it beats or takes over.
    metadata_kept            an `x-amz-meta-mt-sha256` header on PutObject comes back from HeadObject.
    range_honoured           a GetObject with `Range: bytes=1000-1999` answers 206 and exactly those
                             1000 bytes (a server that ignores Range answers 200 with everything).
    listing_sizes            ListObjectsV2 lists an object just written, with the size it was written
                             with: the audit's sizes come from the listing.
    folder_entries_listed    whether the listing returns keys ending in '/' (RunPod lists folders, empty
                             ones too): such keys are folders, never files, and are skipped.
    multipart_completes      a two-part upload (5 MiB, then 1 KiB: only the last part may be below
                             S3's 5 MiB minimum) completes to an object of the summed size.
    multipart_uploads_listed ListMultipartUploads shows an upload in progress, so stale ones (RunPod
                             stages their parts in `.s3compat_uploads/` on the volume, using its space)
                             can be found and aborted.

`probe_conditional_writes` runs the first alone, for a writer about to rely on locks.

listing_sizes and multipart_completes are required (`usable`); the others have fallbacks in the
backend (a lock-less "identical pinned bytes, last writer wins", the hash record under `.mt/`, whole
GETs). Access denied on any write stops the probe with ProbeError: a read-only key cannot fill a volume.

Everything is written under `<prefix>/.mt/probe-<random>/` and removed afterwards, failure or not,
with single DeleteObject calls (RunPod has no DeleteObjects); a multipart upload left open is aborted.
What could not be removed is named in `warnings`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

from mt_assets.sources.base import TransientSourceError
from mt_assets.sources.s3_errors import error_code, http_status
from mt_assets.volume.local import STATE_DIR, VolumeError
from mt_assets.volume.s3_upload import MB, RUNPOD_PUT_LIMIT, MiB

RUNPOD_MAX_PUT_BYTES = RUNPOD_PUT_LIMIT  # RunPod: PutObject "< 500 MB"; larger objects go up in parts
RUNPOD_MAX_PART_BYTES = RUNPOD_PUT_LIMIT  # RunPod: each multipart part at most 500 MB
S3_MIN_PART_BYTES = 5 * MiB  # S3: every part but the last at least 5 MiB
S3_MAX_PARTS = 10_000
RUNPOD_UNSUPPORTED = (
    "DeleteObjects",
    "presigned URLs",
    "versioning",
    "object tagging",
    "GetObjectAttributes",
    "UploadPartCopy",
)
RUNPOD_NOTES = (
    "a first listing of files not written through S3 computes their ETags (minutes) and may repeat "
    "a continuation token ('same next token received twice'): the listing retries",
    "CompleteMultipartUpload of large objects (>= 10 GB) can answer 524 while the merge goes on: "
    "confirmed by HeadObject until the size matches",
    "502s happen: retried (AWS_MAX_ATTEMPTS raises botocore's attempts)",
    "507 means the volume is full; S3 calls never check free space beforehand",
    "multipart parts are staged in .s3compat_uploads/ on the volume itself",
)

REQUIRED = ("listing_sizes", "multipart_completes")
# What each answer means for the backend: (when yes, when no).
MEANINGS = {
    "conditional_writes": (
        "writer locks are objects created with If-None-Match: * (a second writer gets 412)",
        "no lock can be trusted: two provisioners may both write (identical pinned bytes, last "
        "writer wins: wasted bandwidth, never corruption)",
    ),
    "metadata_kept": (
        "x-amz-meta-* headers come back as written (the hash record under .mt/ stays the authority)",
        "x-amz-meta-* headers are lost: a sha256 is kept only in the hash record under .mt/",
    ),
    "range_honoured": (
        "ranged GETs return exactly the bytes asked for (parallel and resumed reads)",
        "Range is ignored: every read fetches whole objects",
    ),
    "listing_sizes": (
        "ListObjectsV2 lists new objects at once, with their sizes (the audit's sizes)",
        "the listing cannot be trusted for sizes: this volume cannot be audited through S3",
    ),
    "folder_entries_listed": (
        "the listing returns folder entries (keys ending in '/'): skipped",
        "the listing returns no folder entries",
    ),
    "multipart_completes": (
        f"objects of {RUNPOD_MAX_PUT_BYTES // MB} MB and more go up in parts (the last may be < 5 MiB)",
        f"multipart uploads fail: no file of {RUNPOD_MAX_PUT_BYTES // MB} MB or more can be written",
    ),
    "multipart_uploads_listed": (
        "uploads in progress are listed: stale ones (ours, > 24 h) are found and aborted",
        "uploads in progress are not listed: a killed upload's parts stay on the volume until aborted by id",
    ),
}

_DENIED = {
    "AccessDenied",
    "403",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AllAccessDisabled",
}
_RANGE = (1000, 1999)
_RANGE_OBJECT_BYTES = 4096


class ProbeError(VolumeError):
    """The probe cannot run at all: no such bucket, credentials refused, endpoint unreachable."""


@dataclass(frozen=True)
class Probe:
    """One capability as tried: `ok`, and what was observed (the server's answer when it failed)."""

    name: str
    ok: bool
    detail: str
    # conditional_writes only: whether a PutObject with a wrong If-Match got 412 (the lock's
    # heartbeat and take-over rely on it; without it they read the ETag first). None: not tried.
    if_match: bool | None = None

    @property
    def meaning(self) -> str:
        yes, no = MEANINGS[self.name]
        return yes if self.ok else no


@dataclass(frozen=True)
class Capabilities:
    """What the endpoint did when tried (see the module docstring for each probe)."""

    uri: str
    endpoint: str | None
    conditional_writes: bool
    metadata_kept: bool
    range_honoured: bool
    listing_sizes: bool
    folder_entries_listed: bool
    multipart_completes: bool
    multipart_uploads_listed: bool
    probes: tuple[Probe, ...]
    warnings: tuple[str, ...] = ()
    cleaned_up: bool = True
    max_put_bytes: int = RUNPOD_MAX_PUT_BYTES
    max_part_bytes: int = RUNPOD_MAX_PART_BYTES
    min_part_bytes: int = S3_MIN_PART_BYTES

    @property
    def usable(self) -> bool:
        """Whether the backend can audit and fill a volume here (the REQUIRED probes passed)."""
        return all(getattr(self, name) for name in REQUIRED)

    def probe(self, name: str) -> Probe:
        return next(p for p in self.probes if p.name == name)

    def to_json(self) -> dict[str, Any]:
        return {
            "volume": self.uri,
            "endpoint": self.endpoint,
            "usable": self.usable,
            "capabilities": {
                p.name: {"ok": p.ok, "detail": p.detail, "meaning": p.meaning} for p in self.probes
            },
            "limits": {
                "max_put_bytes": self.max_put_bytes,
                "max_part_bytes": self.max_part_bytes,
                "min_part_bytes": self.min_part_bytes,
                "max_parts": S3_MAX_PARTS,
                "unsupported": list(RUNPOD_UNSUPPORTED),
            },
            "notes": list(RUNPOD_NOTES),
            "warnings": list(self.warnings),
            "cleaned_up": self.cleaned_up,
        }


def probe_prefix(prefix: str) -> str:
    """A fresh `<prefix>/.mt/probe-<random>` (no trailing '/') that nothing else writes to."""
    base = f"{STATE_DIR}/probe-{secrets.token_hex(6)}"
    return f"{prefix}/{base}" if prefix else base


def probe(
    client: Any,
    bucket: str,
    prefix: str,
    *,
    endpoint: str | None = None,
    scrub: Callable[[str], str] = lambda text: text,
) -> Capabilities:
    """Try each capability on `bucket` under `prefix`; remove what was written. Raises ProbeError.

    `scrub` takes credential values out of anything a server sent back (see sources.s3.scrub)."""
    uri = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
    run = _Run(client, bucket, probe_prefix(prefix), uri, endpoint, scrub)
    run.check_bucket()
    try:
        probes = (
            run.attempt("conditional_writes", run.conditional_writes),
            run.attempt("metadata_kept", run.metadata_kept),
            run.attempt("range_honoured", run.range_honoured),
            *run.listing(),
            *run.multipart(),
        )
    finally:
        run.clean_up()
    found = {p.name: p.ok for p in probes}
    return Capabilities(
        uri=uri,
        endpoint=endpoint,
        probes=probes,
        warnings=tuple(run.warnings),
        cleaned_up=run.cleaned_up,
        **found,
    )


def probe_conditional_writes(
    client: Any,
    bucket: str,
    prefix: str,
    *,
    scrub: Callable[[str], str] = lambda text: text,
    error: Callable[[BaseException, str], Exception] | None = None,
) -> Probe:
    """Only the conditional_writes probe (small PUTs, a GET, their removal): what a writer asks
    before it relies on locks, without the rest of `probe` (a 5 MiB multipart upload among them).

    `error` reads a botocore failure as the volume does (S3Volume._error): one it reads as a
    TransientSourceError (a 5xx, throttling, a dropped connection: no answer, not a "no") is raised,
    so that no verdict is taken from it."""
    uri = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
    run = _Run(client, bucket, probe_prefix(prefix), uri, None, scrub)
    try:
        found = run.attempt("conditional_writes", run.conditional_writes, error=error)
        return dataclasses.replace(found, if_match=run.if_match)
    finally:
        run.clean_up()


class _Run:
    """One probe run: the keys it wrote (to remove them) and what it observed."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        base: str,
        uri: str,
        endpoint: str | None,
        scrub: Callable[[str], str],
    ) -> None:
        self.client, self.bucket, self.base, self.uri = client, bucket, base, uri
        self.where = f"volume {uri}" + (f" at {endpoint}" if endpoint else "")
        self.scrub = scrub
        self.written: list[str] = []
        self.upload: tuple[str, str] | None = None  # (key, upload id) of a multipart upload left open
        self.warnings: list[str] = []
        self.cleaned_up = True
        self.if_match: bool | None = None  # what conditional_writes saw of If-Match

    # -- the bucket itself: a failure here is the user's input, not a capability ------------------

    def check_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            code, status = error_code(e), http_status(e)
            if code in {"404", "NoSuchBucket", "NotFound"} or status == 404:
                raise ProbeError(
                    f"{self.where}: no bucket {self.bucket!r} (on RunPod the bucket is the network volume "
                    "id, and MT_VOLUME_S3_ENDPOINT must be the endpoint of the volume's datacenter)"
                ) from None
            if code in _DENIED or status == 403:
                raise ProbeError(
                    f"{self.where}: access denied (HTTP {status} {code}): check MT_VOLUME_S3_ACCESS_KEY_ID "
                    "and MT_VOLUME_S3_SECRET_ACCESS_KEY (on RunPod, an S3 API key)"
                ) from None
            if status in (301, 400):
                raise ProbeError(
                    f"{self.where}: the endpoint refused the request (HTTP {status} {code}): check "
                    "MT_VOLUME_S3_REGION (on RunPod, the datacenter id such as EU-RO-1)"
                ) from None
            raise ProbeError(f"{self.where}: HeadBucket failed: {self._said(e)}") from None
        except NoCredentialsError:
            raise ProbeError(
                f"{self.where}: no credentials: set MT_VOLUME_S3_ACCESS_KEY_ID and "
                "MT_VOLUME_S3_SECRET_ACCESS_KEY (on RunPod, an S3 API key)"
            ) from None
        except EndpointConnectionError:
            raise ProbeError(
                f"{self.where}: cannot connect: check MT_VOLUME_S3_ENDPOINT "
                "(on RunPod, https://s3api-<datacenter>.runpod.io)"
            ) from None
        except BotoCoreError as e:
            raise ProbeError(f"{self.where}: HeadBucket failed: {self.scrub(str(e))}") from None

    # -- running one probe ----------------------------------------------------------------------

    def attempt(
        self,
        name: str,
        fn: Callable[[], tuple[bool, str]],
        error: Callable[[BaseException, str], Exception] | None = None,
    ) -> Probe:
        """Run one probe; an S3 error records False and what the server said (access denied stops all;
        with `error`, one it reads as transient is raised: see probe_conditional_writes)."""
        try:
            ok, detail = fn()
        except (ClientError, BotoCoreError) as e:
            self._stop_if_denied(e)
            if error is not None:
                failure = error(e, f"{self.where}: probing {name}")
                if isinstance(failure, TransientSourceError):
                    raise failure from e
            return Probe(name, False, f"failed: {self._said(e)}")
        return Probe(name, ok, detail)

    def _stop_if_denied(self, e: BaseException) -> None:
        if isinstance(e, ClientError) and (error_code(e) in _DENIED or http_status(e) == 403):
            raise ProbeError(
                f"{self.where}: access denied writing under {self.base}/ ({self._said(e)}): the key "
                "must be allowed to write the volume"
            ) from None

    def _said(self, e: BaseException) -> str:
        if isinstance(e, ClientError):
            message = e.response.get("Error", {}).get("Message") or ""
            text = f"HTTP {http_status(e)} {error_code(e)}" + (
                f" ({message})" if message and message != error_code(e) else ""
            )
        else:
            text = f"{type(e).__name__}: {e}"
        return self.scrub(text)

    def _put(self, name: str, body: bytes, **kw: Any) -> dict[str, Any]:
        key = f"{self.base}/{name}"
        if key not in self.written:
            self.written.append(key)  # before the call: a PUT that failed may still have written
        response: dict[str, Any] = self.client.put_object(Bucket=self.bucket, Key=key, Body=body, **kw)
        return response

    # -- the probes -----------------------------------------------------------------------------

    def conditional_writes(self) -> tuple[bool, str]:
        first, second = b"first writer", b"second writer"
        try:
            self._put("lock", first, IfNoneMatch="*")
        except ClientError as e:
            self._stop_if_denied(e)
            if _no_answer(e):
                raise
            return False, f"a PutObject with If-None-Match: * on a fresh key was refused: {self._said(e)}"
        try:
            self._put("lock", second, IfNoneMatch="*")
        except ClientError as e:
            if _no_answer(e):
                raise
            if http_status(e) != 412:
                return False, f"a second PutObject with If-None-Match: * answered {self._said(e)}, not 412"
        else:
            return (
                False,
                "a second PutObject with If-None-Match: * on the same key succeeded: the header is ignored",
            )
        kept = self._get(f"{self.base}/lock")
        if kept != first:
            return False, "a second writer got 412, yet the object's bytes changed"
        said = "a second PutObject with If-None-Match: * answered 412; the first writer's bytes stayed"
        self.if_match, answer = self._if_match_enforced()
        return True, f"{said}; {answer}"

    def _if_match_enforced(self) -> tuple[bool, str]:
        """Does a PutObject with an ETag the object does not have get 412? (An endpoint may accept
        If-Match and ignore it, as some do If-None-Match.)"""
        try:
            self._put("lock", b"a writer with a wrong ETag", IfMatch=f'"{"0" * 32}"')
        except ClientError as e:
            if _no_answer(e):
                raise
            if http_status(e) == 412:
                return True, "a PutObject with a wrong If-Match answered 412"
            return False, f"a PutObject with a wrong If-Match answered {self._said(e)}, not 412"
        return False, "a PutObject with a wrong If-Match succeeded: that header is ignored"

    def metadata_kept(self) -> tuple[bool, str]:
        body = b"metadata probe"
        value = hashlib.sha256(body).hexdigest()
        self._put("metadata", body, Metadata={"mt-sha256": value})
        head = self.client.head_object(Bucket=self.bucket, Key=f"{self.base}/metadata")
        got = head.get("Metadata", {}).get("mt-sha256")
        if got == value:
            return True, "x-amz-meta-mt-sha256 came back from HeadObject unchanged"
        if got is None:
            return False, "x-amz-meta-mt-sha256 was not returned by HeadObject"
        return False, f"x-amz-meta-mt-sha256 came back changed ({got[:16]!r}...)"

    def range_honoured(self) -> tuple[bool, str]:
        body = os.urandom(_RANGE_OBJECT_BYTES)
        self._put("range", body)
        first, last = _RANGE
        got = self.client.get_object(
            Bucket=self.bucket, Key=f"{self.base}/range", Range=f"bytes={first}-{last}"
        )
        status = got["ResponseMetadata"]["HTTPStatusCode"]
        data = got["Body"].read()
        if status == 206 and data == body[first : last + 1]:
            return True, f"Range: bytes={first}-{last} answered 206 with exactly those {len(data)} bytes"
        if status == 200 and data == body:
            return (
                False,
                f"Range: bytes={first}-{last} answered 200 with the whole object ({len(data)} bytes)",
            )
        return False, f"Range: bytes={first}-{last} answered {status} with {len(data)} bytes that differ"

    def listing(self) -> tuple[Probe, Probe]:
        """listing_sizes and folder_entries_listed, from one listing of the probe's own folder."""
        folder_refused = ""
        try:
            self._put("folder/", b"")  # a folder entry: RunPod lists folders (its own, and empty ones)
        except (ClientError, BotoCoreError) as e:
            self._stop_if_denied(e)
            folder_refused = f" (a PutObject of a key ending in '/' failed: {self._said(e)})"
        try:
            size = len(b"listing probe")
            self._put("listed", b"listing probe")
            listed = self._list()
        except (ClientError, BotoCoreError) as e:
            self._stop_if_denied(e)
            failed = f"failed: {self._said(e)}"
            return Probe("listing_sizes", False, failed), Probe("folder_entries_listed", False, failed)
        got = listed.get(f"{self.base}/listed")
        if got == size:
            sizes = Probe(
                "listing_sizes", True, f"an object just written was listed with its size ({size} bytes)"
            )
        elif got is None:
            sizes = Probe("listing_sizes", False, "an object just written was not listed")
        else:
            sizes = Probe("listing_sizes", False, f"an object of {size} bytes was listed with size {got}")
        folders = [k for k in listed if k.endswith("/")]
        if folders:
            shown = ", ".join(k.removeprefix(self.base + "/") for k in folders)
            entries = Probe("folder_entries_listed", True, f"listed keys ending in '/': {shown}")
        else:
            entries = Probe(
                "folder_entries_listed", False, f"no key ending in '/' was listed{folder_refused}"
            )
        return sizes, entries

    def multipart(self) -> tuple[Probe, Probe]:
        """multipart_uploads_listed (while the upload is open) and multipart_completes."""
        key = f"{self.base}/multipart"
        parts = (os.urandom(S3_MIN_PART_BYTES), os.urandom(1024))
        listed = Probe("multipart_uploads_listed", False, "not tried: the upload could not start")
        try:
            self.written.append(key)
            upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
            self.upload = (key, upload_id)
            listed = self.attempt("multipart_uploads_listed", lambda: self._upload_listed(key, upload_id))
            etags = [
                self.client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=n, Body=data
                )["ETag"]
                for n, data in enumerate(parts, start=1)
            ]
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={
                    "Parts": [{"PartNumber": n, "ETag": t} for n, t in enumerate(etags, start=1)]
                },
            )
            self.upload = None
            size = int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except (ClientError, BotoCoreError) as e:
            self._stop_if_denied(e)
            return listed, Probe("multipart_completes", False, f"failed: {self._said(e)}")
        want = sum(len(p) for p in parts)
        if size != want:
            return listed, Probe("multipart_completes", False, f"completed to {size} bytes, expected {want}")
        return listed, Probe(
            "multipart_completes",
            True,
            f"parts of {len(parts[0])} and {len(parts[1])} bytes completed to {size}",
        )

    def _upload_listed(self, key: str, upload_id: str) -> tuple[bool, str]:
        found = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=self.base + "/")
        ids = {(u.get("Key"), u.get("UploadId")) for u in found.get("Uploads", [])}
        if (key, upload_id) in ids:
            return True, "ListMultipartUploads showed the upload in progress"
        return False, "ListMultipartUploads did not show the upload in progress"

    def _get(self, key: str) -> bytes:
        body: bytes = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return body

    def _list(self) -> dict[str, int]:
        """Every key under the probe's folder and its size (all pages; a repeated token ends it)."""
        found: dict[str, int] = {}
        token: str | None = None
        while True:
            kw = {"ContinuationToken": token} if token else {}
            page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.base + "/", **kw)
            found.update({o["Key"]: int(o["Size"]) for o in page.get("Contents", [])})
            following = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not following or following == token:
                return found
            token = following

    # -- removing what was written --------------------------------------------------------------

    def clean_up(self) -> None:
        if self.upload is not None:
            key, upload_id = self.upload
            with contextlib.suppress(ClientError, BotoCoreError):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        for key in self.written:
            try:
                self.client.delete_object(Bucket=self.bucket, Key=key)
            except (ClientError, BotoCoreError) as e:
                self.cleaned_up = False
                self.warnings.append(f"could not remove {key}: {self._said(e)}")
        # On a filesystem behind the API the probe's folder is a directory: remove it too (a no-op on S3).
        with contextlib.suppress(ClientError, BotoCoreError):
            self.client.delete_object(Bucket=self.bucket, Key=self.base + "/")
        try:
            left = sorted(self._list())
        except (ClientError, BotoCoreError) as e:
            self.warnings.append(
                f"could not list {self.base}/ after removing the probe's objects: {self._said(e)}"
            )
            return
        if left:
            self.cleaned_up = False
            self.warnings.append(f"left under {self.base}/ after the probe: {', '.join(left)}")


def _no_answer(e: ClientError) -> bool:
    """A failure that says nothing of the header: throttling or a 5xx other than 501 Not Implemented
    (which refuses the header: a real "no")."""
    return http_status(e) == 429 or (http_status(e) >= 500 and http_status(e) != 501)
