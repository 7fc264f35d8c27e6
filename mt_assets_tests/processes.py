"""Servers the tests start as processes of their own: a free port to give them, and a clean stop.

Each server runs in a process group of its own (`start_new_session=True`), so one signal to the
group reaches it and everything it started (worker processes, code servers, backends).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT, *, timeout: float = 45) -> None:
    """`sig` to the process group, `timeout` seconds for the leader to exit, then SIGKILL whatever of
    the group is still there."""
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def sigkill_when(
    proc: subprocess.Popen[bytes], ready: Callable[[], bool], what: str, *, timeout: float = 60
) -> None:
    """SIGKILL `proc` as soon as `ready()` (polled every 50 ms): a kill at a chosen moment of its work.
    Fails naming `what` it never got to, with its stderr if it exited first; never leaves it running."""
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else f"exited before {what}"
            assert time.monotonic() < deadline, f"it never got to {what}"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
