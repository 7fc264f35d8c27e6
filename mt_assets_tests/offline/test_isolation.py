"""The network cut: a fresh network namespace where the kernel allows one (native connections fail
there too), else the audit hook alone; the report always names the isolation used."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from mt_assets.cli import main
from mt_assets.offline import AUDIT_HOOKS, NETWORK_NAMESPACE
from mt_assets.offline.isolation import network_namespace_unavailable
from mt_assets_tests.conftest import CLI
from mt_assets_tests.offline.conftest import LoopbackServer

needs_netns = pytest.mark.skipif(
    network_namespace_unavailable() is not None,
    reason=f"no network namespace here: {network_namespace_unavailable()}",
)


@needs_netns
def test_a_native_connection_fails_in_the_namespace_and_so_does_the_proof(
    tiny_volume: Path, loopback_server: LoopbackServer
) -> None:
    """libc connect() through ctypes, out of the audit hook's sight, to a server that is listening on
    the host's 127.0.0.1: inside the namespace it cannot be reached, the load that needs it fails,
    and the namespace's counters name the unit that tried."""
    result = verify_tiny(tiny_volume, "--only", "vae", "--override-unit", f"vae={loopback_server.location}",
                         "--isolation", "netns", "--json")  # fmt: skip
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    assert doc["ok"] is False
    assert (doc["isolation"], doc["isolation_reason"]) == (NETWORK_NAMESPACE, None)
    path = doc["dtypes"]["float32"]
    assert path["isolation"] == NETWORK_NAMESPACE
    assert path["environment"]["network"] == "cut (network namespace and audit hook)"
    vae = path["components"]["vae"]
    assert vae["status"] == "failed"
    assert f"native connect() to 127.0.0.1:{loopback_server.port}: Network is unreachable" in vae["error"]
    [attempt] = path["network_attempts"]
    assert (attempt["event"], attempt["unit"]) == ("netns.counters", "vae")
    assert "IpOutNoRoutes +1" in attempt["detail"]
    assert loopback_server.connections == []  # nothing reached the host


def test_the_audit_hook_alone_does_not_see_a_native_connection_and_the_report_says_so(
    tiny_volume: Path, loopback_server: LoopbackServer
) -> None:
    """The blind spot the namespace closes: with the hook alone the native fetch succeeds unseen
    and the load passes; the report names the weaker isolation and why it was used."""
    result = verify_tiny(tiny_volume, "--only", "vae", "--override-unit", f"vae={loopback_server.location}",
                         env={"MT_OFFLINE_ISOLATION": "audit-hooks"})  # fmt: skip
    assert len(loopback_server.connections) == 1
    assert result.exit_code == 0, result.output  # wrongly: which is why every report names its isolation
    text = " ".join(result.stdout.split())  # rich wraps lines at the terminal width
    assert (
        "isolation: audit-hooks — the audit hook alone: Python's connections are refused, native code's are "
        "neither refused nor seen; chosen (MT_OFFLINE_ISOLATION=audit-hooks)"
    ) in text
    assert "network cut (audit-hooks)" in text


def test_where_the_kernel_refuses_namespaces_auto_falls_back_and_netns_refuses_to_run(
    tiny_volume: Path, namespaces_refused: list[str]
) -> None:
    base = [
        *CLI,
        "verify-offline",
        "--profile",
        "tiny",
        "--volume",
        str(tiny_volume),
        "--only",
        "t5-tokenizer",
    ]
    refused = _run([*namespaces_refused, *base, "--isolation", "netns"])
    assert refused.returncode == 2, refused.stderr
    assert refused.stdout == ""
    assert (
        "error: verify-offline: isolation netns: a network namespace is not available here: "
        in refused.stderr
    )
    assert "choose auto (falls back to the audit hook, and says so) or audit-hooks" in refused.stderr

    auto = _run([*namespaces_refused, *base, "--json"])
    assert auto.returncode == 0, auto.stdout + auto.stderr
    doc = json.loads(auto.stdout)
    assert doc["ok"] is True
    assert doc["isolation"] == AUDIT_HOOKS
    assert doc["isolation_reason"].startswith(
        "no network namespace here: unshare(CLONE_NEWUSER|CLONE_NEWNET)"
    )
    path = doc["dtypes"]["float32"]
    assert (path["isolation"], path["isolation_reason"]) == (AUDIT_HOOKS, doc["isolation_reason"])
    assert path["environment"]["network"] == "cut (audit hook)"


def test_an_unknown_isolation_is_bad_input(tiny_volume: Path) -> None:
    result = verify_tiny(tiny_volume, env={"MT_OFFLINE_ISOLATION": "firewall"})
    assert result.exit_code == 2
    assert (
        "MT_OFFLINE_ISOLATION: expected one of auto, netns, network-namespace, audit-hooks, got 'firewall'"
        in result.stderr
    )


def verify_tiny(volume: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    """`mt-assets verify-offline --profile tiny --volume VOLUME ARGS...` through the CLI."""
    return CliRunner().invoke(
        main, ["verify-offline", "--profile", "tiny", "--volume", str(volume), *args], env=env
    )


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
