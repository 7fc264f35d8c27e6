"""Offline-proof fixtures: a writable copy of the tiny volume, a home cache outside it, a TCP server
on loopback for native connections, and a shell in which the kernel refuses network namespaces."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mt_assets.offline.isolation import network_namespace_unavailable

T5_TOKENIZER_JSON = "models/Wan2.1-I2V-14B-480P/google/umt5-xxl/tokenizer.json"


def copy_volume(src: Path, dest: Path) -> Path:
    """The volume's model files only (not its .mt/ state), so the session fixture stays untouched."""
    shutil.copytree(src / "models", dest / "models")
    return dest


@pytest.fixture(scope="module")
def volume_without_t5_tokenizer_json(tiny_volume: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = copy_volume(tiny_volume, tmp_path_factory.mktemp("offline") / "volume")
    (root / T5_TOKENIZER_JSON).unlink()
    return root


@pytest.fixture(scope="module")
def home_cache_snapshot(tiny_volume: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wav2vec2 processor left in a home cache, as a worker image built with the Hub would have it."""
    snapshot = (
        tmp_path_factory.mktemp("home")
        / ".cache/huggingface/hub/models--TencentGameMate--chinese-wav2vec2-base/snapshots/0123abcd"
    )
    snapshot.mkdir(parents=True)
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copy(tiny_volume / "models/chinese-wav2vec2-base" / name, snapshot / name)
    return snapshot


@dataclass
class LoopbackServer:
    """A TCP server on 127.0.0.1 that answers every connection with `payload` and counts them."""

    port: int
    payload: bytes
    connections: list[str] = field(default_factory=list)  # the peers, in order

    @property
    def location(self) -> str:
        """The override LOCATION that fetches from it natively (mt_assets.offline.overrides)."""
        return f"tcp://127.0.0.1:{self.port}"


@pytest.fixture
def loopback_server() -> Iterator[LoopbackServer]:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)  # accept() wakes up to see `stop`: closing a socket does not wake it
    server = LoopbackServer(port=listener.getsockname()[1], payload=b"weights from the network")
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, peer = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                server.connections.append(f"{peer[0]}:{peer[1]}")
                conn.sendall(server.payload)

    thread = threading.Thread(target=serve, name="loopback-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        thread.join(timeout=10)
        listener.close()


@pytest.fixture(scope="session")
def namespaces_refused() -> list[str]:
    """A command prefix under which the kernel refuses this process's new user namespaces, as many
    containers do: a user namespace of its own whose limit (user.max_user_namespaces) is set to 0,
    then ARGV. Where this machine already refuses them, no prefix is needed."""
    if network_namespace_unavailable() is not None:
        return []
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("util-linux unshare is not installed: cannot make a namespace-less environment")
    prefix = [
        unshare,
        "--user",
        "--map-root-user",
        "sh",
        "-c",
        'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"',
        "sh",
    ]
    trial = subprocess.run(
        [*prefix, "unshare", "--user", "true"], capture_output=True, text=True, check=False
    )
    if trial.returncode == 0:
        pytest.skip("could not limit user namespaces inside a user namespace on this kernel")
    return prefix
