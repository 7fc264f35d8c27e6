"""A Hugging Face Hub-compatible server on loopback, for tests: olah 0.5.4 serving local git repos.

Why olah: the tests must exercise huggingface_hub's own resolver and transfer code against
something that speaks the Hub's HTTP API, with no network. olah (a Hub mirror) was evaluated
against huggingface_hub 2.x offline and serves local git repos well enough; a home-made server
would have to copy the Hub's protocol and drift from it. See shared/reference/ecosystem.md.

What it serves, from `<mirrors_root>/models/<org>/<repo>` (a normal, non-bare git repo that
`make_repo` writes with the git CLI):

    GET  /api/models/{repo}/refs?include_prs=1        branches, tags, refs/pr/N
    POST /api/models/{repo}/paths-info/{rev}           size, blob id, lfs.oid (sha256)
    GET  /api/models/{repo}/tree/{rev}[/{path}]        the same, listed
    HEAD /{repo}/resolve/{rev}/{path}                  X-Repo-Commit, ETag, Content-Length
    GET  /{repo}/resolve/{rev}/{path}                  the bytes (200, chunked, no Content-Length)

LFS files are stored the way git-lfs stores them, without the git-lfs binary: the commit holds
the standard pointer text and the bytes lie at `.git/lfs/objects/<sha[0:2]>/<sha[2:4]>/<sha>`.

Its gaps, and how the tests live with them:
- any call with a revision containing '/' (`refs/pr/1`) fails: the client percent-encodes it.
  Resolve the ref to its commit through `list_repo_refs` and use the sha;
- Range is ignored: a GET always answers 200 with the whole body, so resume cannot be tested
  as a real partial transfer, only as "restart correctly from zero";
- every HEAD/GET of an LFS file reads the whole file into memory: fine for the small files of
  tests, not for multi-GB benchmarks;
- `model_info` without a revision fails offline, and its siblings carry no size or lfs data;
- an unknown repo is answered 404 `EntryNotFound` (HEAD, paths-info, refs), never `RepoNotFound`;
  an unknown commit, or a GET (not HEAD) of a path missing at a commit, answers 500, and the
  next request on that keep-alive connection is then reset by the server;
- it cannot answer 401/403/429/5xx on demand: `error_server` below does, for the error mapping;
- its index page (`GET /`) fails inside its template code: readiness is probed by TCP connect.

olah is configured through a TOML file only (`[accessibility] offline = true` has no CLI
flag); its upstream (`hf-netloc`) points at a closed loopback port, so nothing can leave the
machine even if it tried.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mt_assets_tests.processes import free_port, stop_group

LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"

# Fixed identity and dates: the same files give the same commit shas on every run.
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "mt-assets tests",
    "GIT_AUTHOR_EMAIL": "tests@mt-assets.invalid",
    "GIT_COMMITTER_NAME": "mt-assets tests",
    "GIT_COMMITTER_EMAIL": "tests@mt-assets.invalid",
    "GIT_AUTHOR_DATE": "2024-01-01T00:00:00+0000",
    "GIT_COMMITTER_DATE": "2024-01-01T00:00:00+0000",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_TERMINAL_PROMPT": "0",
}


@dataclass(frozen=True)
class RepoInfo:
    """A repo `make_repo` wrote: where, its commits, and which paths are stored as LFS."""

    repo_id: str
    path: Path
    main: str  # commit sha of refs/heads/main
    pr: str | None  # commit sha of refs/pr/1, when pr_files were given
    lfs_paths: frozenset[str]  # paths stored as LFS on main or the pull request


def make_repo(
    mirrors_root: str | Path,
    repo_id: str,
    files: dict[str, bytes],
    *,
    lfs_min_size: int = 1024,
    pr_files: dict[str, bytes] | None = None,
) -> RepoInfo:
    """Write a model repo at `<mirrors_root>/models/<org>/<repo>` that olah serves.

    Files of `lfs_min_size` bytes or more are stored as LFS (pointer in git, bytes under
    .git/lfs/objects). `main` holds `files`; with `pr_files`, `refs/pr/1` is a commit on top of
    main that adds (or replaces) those files, as a Hub pull request does.
    """
    org, name = repo_id.split("/")
    path = Path(mirrors_root) / "models" / org / name
    path.mkdir(parents=True, exist_ok=False)
    _git(path, "init", "-q", "-b", "main")
    lfs_paths: set[str] = set()

    def add(index: Path, contents: dict[str, bytes]) -> None:
        for rel, data in contents.items():
            if len(data) >= lfs_min_size:
                data = _store_lfs_object(path, data)
                lfs_paths.add(rel)
            blob = _git(path, "hash-object", "-w", "--stdin", input=data)
            _git(path, "update-index", "--add", "--cacheinfo", f"100644,{blob},{rel}", index=index)

    index = path / ".git" / "index"
    add(index, files)
    tree = _git(path, "write-tree", index=index)
    main = _git(path, "commit-tree", tree, "-m", "initial commit")
    _git(path, "update-ref", "refs/heads/main", main)
    _git(path, "checkout", "-q", "-f", "main")  # a working tree, for whoever looks at the repo

    pr: str | None = None
    if pr_files:
        pr_index = path / ".git" / "pr-index"
        _git(path, "read-tree", "main", index=pr_index)
        add(pr_index, pr_files)
        pr_tree = _git(path, "write-tree", index=pr_index)
        pr = _git(path, "commit-tree", pr_tree, "-p", main, "-m", "pull request #1")
        _git(path, "update-ref", "refs/pr/1", pr)
        pr_index.unlink()
    return RepoInfo(repo_id=repo_id, path=path, main=main, pr=pr, lfs_paths=frozenset(lfs_paths))


def lfs_pointer(data: bytes) -> bytes:
    return LFS_POINTER.format(sha256=hashlib.sha256(data).hexdigest(), size=len(data)).encode()


def _store_lfs_object(repo: Path, data: bytes) -> bytes:
    sha = hashlib.sha256(data).hexdigest()
    obj = repo / ".git" / "lfs" / "objects" / sha[0:2] / sha[2:4] / sha
    obj.parent.mkdir(parents=True, exist_ok=True)
    obj.write_bytes(data)
    return lfs_pointer(data)


def _git(repo: Path, *args: str, input: bytes | None = None, index: Path | None = None) -> str:
    env = {**os.environ, **_GIT_ENV}
    if index is not None:
        env["GIT_INDEX_FILE"] = str(index)
    result = subprocess.run(["git", *args], cwd=repo, env=env, input=input, capture_output=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} in {repo}: {result.stderr.decode(errors='replace')}")
    return result.stdout.decode().strip()


# -- the server --------------------------------------------------------------------------------


@contextlib.contextmanager
def hub_server(mirrors_root: str | Path, *, start_timeout: float = 30.0) -> Iterator[str]:
    """Run olah on a free 127.0.0.1 port serving `mirrors_root`; yield its URL (no trailing '/').

    The server runs in its own process group, and the whole group is stopped on exit, whatever
    happened inside the block.
    """
    with tempfile.TemporaryDirectory(prefix="olah-") as work:
        last_error = ""
        for _attempt in range(3):  # a port taken between free_port() and olah's bind: try another
            port = free_port()
            config = Path(work) / "olah.toml"
            config.write_text(_config_toml(Path(mirrors_root), Path(work), port), encoding="utf-8")
            log = open(Path(work) / "olah.out", "wb")  # noqa: SIM115 - closed below
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "olah.server",
                    "--config",
                    str(config),
                    "--log-path",
                    str(Path(work) / "logs"),
                ],
                cwd=work,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))},
            )
            url = f"http://127.0.0.1:{port}"
            try:
                if _wait_until_up(proc, port, start_timeout):
                    yield url
                    return
                log.flush()
                last_error = (Path(work) / "olah.out").read_text(errors="replace")[-2000:]
            finally:
                stop_group(proc, signal.SIGTERM, timeout=10)
                log.close()
        raise RuntimeError(f"olah did not start on 127.0.0.1 (3 tries); its output:\n{last_error}")


def _config_toml(mirrors_root: Path, work: Path, port: int) -> str:
    dead = free_port()  # nothing listens there: the "upstream hub" cannot be reached
    return f"""\
[basic]
host = "127.0.0.1"
port = {port}
repos-path = "{work / "repos"}"
mirrors-path = ["{mirrors_root.resolve()}"]
hf-scheme = "http"
hf-netloc = "127.0.0.1:{dead}"
hf-lfs-netloc = "127.0.0.1:{dead}"
mirror-scheme = "http"
mirror-netloc = "127.0.0.1:{port}"
mirror-lfs-netloc = "127.0.0.1:{port}"

[accessibility]
offline = true
"""


def _wait_until_up(proc: subprocess.Popen[bytes], port: int, timeout: float) -> bool:
    """Until the port accepts connections (uvicorn listens once the app has started)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.1)
    return False


# -- a server that only fails ------------------------------------------------------------------


@contextlib.contextmanager
def error_server(
    status: int, headers: dict[str, str] | None = None, *, seen: list[dict[str, str]] | None = None
) -> Iterator[str]:
    """A loopback HTTP server answering every request with `status` and `headers`; yields its URL.

    With `seen`, the headers of each request received are appended to it.

    olah cannot be made to answer 401, 403, 429 or 503 the way the Hub does, so the error mapping
    of the source is checked against this instead (the client code under test is still real).
    """
    fixed_headers = dict(headers or {})

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            if seen is not None:
                seen.append(dict(self.headers.items()))
            body = b'{"error": "canned answer"}' if self.command != "HEAD" else b""
            self.send_response(status)
            for name, value in fixed_headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_HEAD = do_POST = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
