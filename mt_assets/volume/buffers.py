"""Large buffers reused rather than made afresh: a new 64 MiB buffer is zeroed page by page (page
faults, and for a bytearray a memset too) before a byte is copied in, which measured about as much CPU
as the sha256 of its bytes (the S3 source's ranged GETs, and the S3 volume's upload parts)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sized
from typing import Generic, TypeVar

B = TypeVar("B", bound=Sized)


class BufferPool(Generic[B]):
    """Buffers of `size` bytes from `make`, given back after use; at most `keep` idle ones are kept
    (a buffer of another length, such as a trimmed last part, is dropped); `clear()` lets them go."""

    def __init__(self, make: Callable[[], B], size: int, keep: int) -> None:
        self.make = make
        self.size = size
        self.keep = keep
        self._idle: list[B] = []
        self._lock = threading.Lock()

    def take(self) -> B:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self.make()

    def give(self, buffer: B) -> None:
        if len(buffer) != self.size:
            return
        with self._lock:
            if len(self._idle) < self.keep:
                self._idle.append(buffer)

    def clear(self) -> None:
        with self._lock:
            self._idle.clear()
