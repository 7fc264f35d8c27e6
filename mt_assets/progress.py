"""How long work reports progress, without tying core code to a terminal or to Dagster.

Core functions take a `Progress` and call it as bytes move; the CLI passes a rich display
(terminal.py), Dagster passes one that logs, tests pass nothing (NullProgress).
"""

from __future__ import annotations

from typing import Protocol


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
