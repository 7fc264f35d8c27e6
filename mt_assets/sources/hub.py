"""The Hugging Face Hub as a source: files at their pinned commit, through huggingface_hub's own code.

Protocol (all through huggingface_hub: its URL builder, session, headers, error types and
transfer loop; `endpoint` is the Hub, or whatever HF_ENDPOINT / the `endpoint` argument names):

1. A revision that is not a 40-hex commit (`main`, a tag, `refs/pr/1`) is first resolved to one
   with `GET /api/models/{repo}/refs?include_prs=1` (`HfApi.list_repo_refs`). Everything after
   that asks for the commit itself: a branch that moves mid-run cannot mix two commits, and no
   ref is ever sent in a URL (the client percent-encodes `refs/pr/1`, which some hub-compatible
   servers do not decode). Resolutions are remembered for the life of the source.
2. `HEAD /{repo}/resolve/{commit}/{path}` (`get_hf_file_metadata`) gives the size
   (`X-Linked-Size` or `Content-Length`), the ETag (sha256 for LFS files, git blob id otherwise)
   and `X-Repo-Commit`. If the manifest pins a size or hash that the Hub contradicts, nothing is
   downloaded: a 30 GB transfer would only end in a mismatch.
3. `GET /{repo}/resolve/{commit}/{path}` (`file_download.http_get`), following the Hub's redirect
   to its CDN (the Authorization header is not forwarded to another host). The bytes go straight
   into the volume's AtomicWriter, which hashes them on the way in: a multi-GB file is read once.
   hf_xet is not used: it writes to a path of its own, not to a stream we can hash on the fly.
   The Hub serves Xet-stored files over plain HTTP too (its bridge), at single-stream speed,
   and http_get refuses files over 50 GB on that path (none of MultiTalk's is near that).

Resume: `supports_ranges` is True. The GET carries `Range: bytes=<writer.resume_from>-`, kept
across the redirect; the Hub's CDN answers 206 (not verifiable offline: the tests' server does
not). A server that ignores Range answers 200 with the whole body (olah, some
proxies): http_get then rewinds the file object it was given, which here calls
`writer.truncate_to(0)`, and the whole file is written from zero. Those bytes are reported to
`on_bytes` again. http_get also retries a connection that drops mid-body (5 times, 1 s apart),
resuming the same way.

Errors (messages name the file and its hf:// URI, never the token):

    OfflineModeIsEnabled (HF_HUB_OFFLINE=1)                      SourceError, says so
    RepositoryNotFoundError (404, or 401 for private repos)       SourceError, with an HF_TOKEN hint
    GatedRepoError, 401, 403                                      SourceError: HF_TOKEN missing or lacking access
    RevisionNotFoundError, EntryNotFoundError, other 4xx          SourceError
    connection refused/reset, DNS, timeouts, 408, 429, 5xx,
    a body that ended short                                       TransientSourceError

Errors of the volume (a full disk) pass through unchanged. Timeouts: the HEAD uses `timeout`
(default HF_HUB_ETAG_TIMEOUT, 10 s); the GET uses HF_HUB_DOWNLOAD_TIMEOUT per read. The refs
and paths-info calls of HfApi take no timeout argument and run on huggingface_hub's shared
client, whose default is no timeout: a server that accepts and never answers stalls them.

Needs huggingface_hub 2.x (its HTTP client is httpx2). The token comes from huggingface_hub's
usual places (HF_TOKEN, then `hf auth login`); this module never reads it except to scrub it
from messages.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import httpx2
from huggingface_hub import HfApi, constants, get_hf_file_metadata, get_token, hf_hub_url
from huggingface_hub.errors import (
    DisabledRepoError,
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import http_get
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import build_hf_headers

from mt_assets.manifest import ManifestFile
from mt_assets.manifest.schema import is_commit
from mt_assets.sources.base import Source, SourceError, TransientSourceError
from mt_assets.volume import AtomicWriter

LIBRARY_NAME = "mt_assets"
PATHS_PER_CALL = 100  # paths-info is a form POST; keep each request small

_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RemoteFile:
    """One file of a repo at a commit, as the Hub describes it."""

    path: str
    size: int
    sha256: str | None  # LFS files: the sha256 of the content
    git_sha1: str | None  # files kept in git: the blob id (for LFS files that would be the pointer's)

    @property
    def lfs(self) -> bool:
        return self.sha256 is not None


class HubSource(Source):
    supports_ranges = True

    def __init__(self, endpoint: str | None = None, *, timeout: float | None = None) -> None:
        """`endpoint`: a hub-compatible server (default: huggingface_hub's, i.e. HF_ENDPOINT or
        https://huggingface.co). `timeout`: seconds for the metadata HEAD (default HF_HUB_ETAG_TIMEOUT)."""
        self.endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
        self.timeout = timeout
        default = self.endpoint == constants._HF_DEFAULT_ENDPOINT
        self.shown = _without_credentials(self.endpoint)  # for messages
        self.uri = "hub" if default else f"hub:{self.shown}"
        self._api = HfApi(endpoint=self.endpoint, library_name=LIBRARY_NAME)
        self._commits: dict[tuple[str, str], str] = {}
        self._resolving = threading.Lock()

    def __repr__(self) -> str:
        return f"HubSource({self.uri!r})"

    def uri_for(self, f: ManifestFile) -> str:
        return f"hf://{f.repo}@{f.revision}/{f.path}"

    # -- revisions and file listings -------------------------------------------------------------

    def resolve_revision(self, repo: str, revision: str) -> str:
        """The 40-hex commit that `revision` (a commit, branch, tag or refs/pr/N) names in `repo`."""
        return self._resolve(repo, revision, f"hf://{repo}@{revision} from {self.shown}")

    def _resolve(self, repo: str, revision: str, where: str) -> str:
        if is_commit(revision):
            return revision
        key = (repo, revision)
        with self._resolving:  # one lookup per ref, so every file of a component gets the same commit
            if key not in self._commits:
                try:
                    refs = self._api.list_repo_refs(repo, include_pull_requests=True)
                except Exception as e:
                    _raise_mapped(e, where, self.shown)
                every = [*refs.branches, *refs.tags, *refs.converts, *(refs.pull_requests or [])]
                by_name = [*refs.branches, *refs.tags]  # `main`, `v1.0`; a PR only by its full ref
                match = next((r for r in every if r.ref == revision), None) or next(
                    (r for r in by_name if r.name == revision), None
                )
                if match is None:
                    known = ", ".join(sorted(r.ref for r in every)) or "none"
                    raise SourceError(f"{where}: no branch, tag or pull request '{revision}' (refs: {known})")
                self._commits[key] = match.target_commit
            return self._commits[key]

    def paths_info(self, repo: str, commit: str, paths: Iterable[str]) -> dict[str, RemoteFile]:
        """Size and hash of each of `paths` in `repo` at `commit` (a ref is resolved first).

        Paths missing at that commit, and folders, are left out of the result.
        """
        commit = self.resolve_revision(repo, commit)
        wanted = list(dict.fromkeys(paths))
        found: dict[str, RemoteFile] = {}
        for start in range(0, len(wanted), PATHS_PER_CALL):
            batch = wanted[start : start + PATHS_PER_CALL]
            try:
                infos = self._api.get_paths_info(repo, batch, revision=commit)
            except Exception as e:
                _raise_mapped(e, f"hf://{repo}@{commit} from {self.shown}", self.shown)
            for info in infos:
                if isinstance(info, RepoFile):
                    found[info.path] = _remote_file(info)
        return found

    # -- fetching --------------------------------------------------------------------------------

    def url_for(self, repo: str, commit: str, path: str) -> str:
        """The resolve URL of `path` at `commit` on this source's endpoint."""
        url = hf_hub_url(repo, path, revision=commit, endpoint=self.endpoint)
        if not url.startswith(self.endpoint + "/"):
            # hf_hub_url only swaps in `endpoint` when its URL template (fixed when huggingface_hub
            # was imported) starts with constants.ENDPOINT; after constants.ENDPOINT was changed
            # in-process it returns the import-time host. Swap that prefix here instead.
            imported = constants.HUGGINGFACE_CO_URL_TEMPLATE.split("/{repo_id}", 1)[0]
            url = self.endpoint + url[len(imported) :]
        return url

    def fetch(self, f: ManifestFile, writer: AtomicWriter, on_bytes: Callable[[int], None]) -> None:
        where = f"{f.target} from {self.uri_for(f)}"
        commit = self._resolve(f.repo, f.revision, where)
        if commit != f.revision:
            where += f" (commit {commit[:12]})"
        url = self.url_for(f.repo, commit, f.path)
        try:
            meta = get_hf_file_metadata(
                url,
                timeout=self.timeout if self.timeout is not None else constants.HF_HUB_ETAG_TIMEOUT,
                library_name=LIBRARY_NAME,
                endpoint=self.endpoint,
            )
        except Exception as e:
            _raise_mapped(e, where, self.shown)
        if meta.commit_hash is None:
            raise SourceError(
                f"{where}: {self.shown} answered without an X-Repo-Commit header; "
                "it does not look like a Hugging Face Hub endpoint (check HF_ENDPOINT)"
            )
        _check_against_pin(f, meta.size, meta.etag, commit, where)

        if meta.size is not None and writer.resume_from > meta.size:
            writer.truncate_to(0)  # staged bytes longer than the file: they cannot be a prefix of it
        sink = _WriterSink(writer, on_bytes)
        try:
            http_get(
                url,
                sink,  # type: ignore[arg-type]  # a file-like object: write/tell/seek/truncate
                resume_size=writer.resume_from,
                headers=build_hf_headers(library_name=LIBRARY_NAME),
                expected_size=meta.size,
                displayed_filename=f.path,
                tqdm_class=_NoProgressBar,  # type: ignore[arg-type]  # progress goes to on_bytes
            )
        except _WriterFailed as e:
            raise e.error from None  # the volume's problem (e.g. full), not the source's
        except OSError as e:
            if isinstance(e, HfHubHTTPError) or not str(e).startswith("Consistency check failed"):
                _raise_mapped(e, where, self.shown)
            # http_get's own size check: the body was cut short (a retry resumes from what arrived)
            # or ran long (no prefix to resume from: start again).
            if meta.size is not None and writer.resume_from > meta.size:
                writer.truncate_to(0)
            raise TransientSourceError(f"{where}: {_first_line(e)}") from e
        except Exception as e:
            _raise_mapped(e, where, self.shown)
        if meta.size is not None and writer.resume_from != meta.size:
            received = writer.resume_from
            writer.truncate_to(0)  # whatever this is, it is no prefix to resume from
            raise TransientSourceError(f"{where}: received {received} bytes in all, expected {meta.size}")


# -- helpers -------------------------------------------------------------------------------------


class _WriterFailed(Exception):
    """Carries an exception of the writer out through http_get, so it is not taken for the source's."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _WriterSink:
    """The file object http_get writes to: bytes go to the AtomicWriter (hashed) and to on_bytes.

    http_get only seeks and truncates when a server ignored its Range header (200 instead of 206):
    it seeks back to where this transfer started and truncates. The writer can only restart from
    zero, which is what a resumed transfer's start is.
    """

    def __init__(self, writer: AtomicWriter, on_bytes: Callable[[int], None]) -> None:
        self.writer = writer
        self.on_bytes = on_bytes
        self._seek_to: int | None = None

    def write(self, data: bytes) -> int:
        try:
            self.writer.write(data)
            self.on_bytes(len(data))  # may stop the fetch (provision: the run stopped)
        except Exception as e:
            raise _WriterFailed(e) from e
        return len(data)

    def tell(self) -> int:
        return self.writer.resume_from

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence != os.SEEK_SET or offset > self.writer.resume_from:
            raise OSError("the staged file can only be rewound")
        self._seek_to = offset
        return offset

    def truncate(self, size: int | None = None) -> int:
        size = self._seek_to if size is None else size
        self.writer.truncate_to(size if size is not None else self.writer.resume_from)
        self._seek_to = None
        return self.writer.resume_from


class _NoProgressBar:
    """A stand-in for tqdm: http_get's own bar would draw over the caller's progress display."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> _NoProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, n: float | None = 1) -> None:
        pass


def _remote_file(info: RepoFile) -> RemoteFile:
    if info.lfs is not None:
        return RemoteFile(path=info.path, size=info.lfs.size, sha256=info.lfs.sha256, git_sha1=None)
    return RemoteFile(path=info.path, size=info.size, sha256=None, git_sha1=info.blob_id)


def _check_against_pin(f: ManifestFile, size: int | None, etag: str | None, commit: str, where: str) -> None:
    """Refuse before downloading when the Hub's HEAD contradicts the manifest's pin."""
    at = f"at {commit[:12]}"
    if f.size is not None and size is not None and size != f.size:
        raise SourceError(f"{where}: the hub has {size} bytes {at}, the manifest pins {f.size}; not fetched")
    if etag is None:
        return
    if f.sha256 is not None and len(etag) == 64 and etag != f.sha256:
        raise SourceError(
            f"{where}: the hub's sha256 {at} is {etag[:12]}…, the manifest pins {f.sha256[:12]}…; not fetched"
        )
    if f.git_sha1 is not None and len(etag) == 40 and etag != f.git_sha1:
        raise SourceError(
            f"{where}: the hub's git blob id {at} is {etag[:12]}…, the manifest pins {f.git_sha1[:12]}…; not fetched"
        )


def _raise_mapped(e: BaseException, where: str, endpoint: str) -> NoReturn:
    """Raise the SourceError (or TransientSourceError) that says what `e` means for `where`."""
    if isinstance(e, SourceError):
        raise e
    if isinstance(e, OfflineModeIsEnabled):
        raise SourceError(
            f"{where}: HF_HUB_OFFLINE is set, so no request to the hub is made; unset it to fetch"
        ) from None
    if isinstance(e, GatedRepoError):
        raise SourceError(f"{where}: the repo is gated; {_token_hint()}") from None
    if isinstance(e, DisabledRepoError):
        raise SourceError(f"{where}: the repo is disabled on the hub") from None
    if isinstance(e, RepositoryNotFoundError):
        raise SourceError(
            f"{where}: no such repo on {endpoint} (or it is private: {_token_hint()})"
        ) from None
    if isinstance(e, RevisionNotFoundError):
        raise SourceError(f"{where}: no such revision in the repo") from None
    if isinstance(e, EntryNotFoundError):
        raise SourceError(f"{where}: no such file in the repo at that revision") from None
    if isinstance(e, HfHubHTTPError):
        status = e.response.status_code if e.response is not None else None
        detail = _scrub(f"HTTP {status}" + (f": {_first_line(e.server_message)}" if e.server_message else ""))
        if status in (401, 403):
            raise SourceError(f"{where}: access denied ({detail}); {_token_hint()}") from None
        if status is not None and (status in _TRANSIENT_STATUS or status >= 500):
            raise TransientSourceError(f"{where}: the hub answered {detail}") from e
        raise SourceError(f"{where}: the hub answered {detail}") from None
    if isinstance(e, httpx2.UnsupportedProtocol | httpx2.InvalidURL):
        raise SourceError(
            f"{where}: {endpoint} is not a usable endpoint URL ({_scrub(_first_line(e))})"
        ) from None
    if isinstance(e, httpx2.TimeoutException):
        raise TransientSourceError(f"{where}: timed out talking to {endpoint} ({type(e).__name__})") from e
    if isinstance(e, httpx2.TransportError | ConnectionError):
        raise TransientSourceError(
            f"{where}: cannot reach {endpoint} ({_scrub(_first_line(e)) or type(e).__name__}); "
            "check the network, or HF_ENDPOINT"
        ) from e
    if isinstance(e, ValueError) and "too large" in str(e):
        raise SourceError(f"{where}: {_scrub(_first_line(e))}") from None
    raise e


def _token_hint() -> str:
    if _known_tokens():
        return "the token in HF_TOKEN (or from `hf auth login`) lacks access to it"
    return "HF_TOKEN is not set; set it to a token with access"


def _known_tokens() -> list[str]:
    tokens = [os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")]
    with contextlib.suppress(Exception):  # a failing token source (OIDC) must not hide the real error
        tokens.append(get_token())
    return [t for t in tokens if t]


def _scrub(text: str) -> str:
    for token in _known_tokens():
        text = text.replace(token, "***")
    return text


def _first_line(value: object) -> str:
    text = str(value).strip()
    return text.splitlines()[0] if text else ""


def _without_credentials(url: str) -> str:
    """The endpoint as shown in messages: no user:password@, query or fragment."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
