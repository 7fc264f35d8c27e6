"""How long work reports progress, without tying core code to a terminal or to Dagster.

Core functions take a `Progress` and call it as bytes move; the CLI passes a rich display
(terminal.py), Dagster passes one that logs, tests pass nothing (NullProgress).
"""

from __future__ import annotations

from typing import Protocol

FILES = "files"
"""The key of work counted in files, not bytes: an audit's files checked (`start` with how many in
all, `advance` by files done, a batch at a time). The audit's and the provisioner's other keys are
files' targets, counted in bytes and started only for files whose bytes are read or written."""


class Progress(Protocol):
    def start(self, key: str, label: str, total: int | None) -> None:
        """A piece of work named `key` begins; `total` bytes when known."""

    def advance(self, key: str, n: int) -> None:
        """`n` more bytes of `key` are done. Called from worker threads."""

    def finish(self, key: str) -> None:
        """`key` is done (or failed)."""


class NullProgress:
    def start(self, key: str, label: str, total: int | None) -> None:
        pass

    def advance(self, key: str, n: int) -> None:
        pass

    def finish(self, key: str) -> None:
        pass
