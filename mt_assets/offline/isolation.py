"""How the offline probe's network is cut: a fresh network namespace where the kernel allows one,
else the audit hook alone; and which one was used, for the report.

    isolation (the choice)     what runs
    auto (default)             network-namespace when the trial below succeeds, else audit-hooks
                               (the report says why the namespace was not available)
    netns | network-namespace  network-namespace, or IsolationError naming why it is not available
    audit-hooks                audit-hooks, even where a namespace is available

The choice comes from the caller (`--isolation`, the asset's config), else $MT_OFFLINE_ISOLATION,
else auto. Both modes keep the probe's audit hook (probe.py), which names the host of every
Python-level attempt and refuses it before it leaves; what differs is native code (hf_xet's Rust
client, a C library's own socket), which the hook cannot see:

    network-namespace  the probe runs inside `netns.py exec`: every connection fails in the
                       kernel, whoever makes it, so a load that needs the network fails; the
                       namespace's own counters list IPv4 attempts even when a loader swallowed
                       the error (see netns.py)
    audit-hooks        a native connection is neither refused nor seen

The trial (`netns.py check`, one short interpreter start) runs once per process and python.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mt_assets import config

NETNS = Path(__file__).with_name("netns.py")
ENV = config.OFFLINE_ISOLATION.name
NETWORK_NAMESPACE, AUDIT_HOOKS = "network-namespace", "audit-hooks"
CHOICES = config.OFFLINE_ISOLATION.choices  # auto, netns, network-namespace, audit-hooks
TRIAL_TIMEOUT = 30.0  # seconds; the trial takes a few milliseconds


class IsolationError(ValueError):
    """The isolation asked for is unknown, or not available here."""


@dataclass(frozen=True)
class Isolation:
    mode: str  # NETWORK_NAMESPACE | AUDIT_HOOKS
    reason: str | None = None  # why not the namespace; None when it is used

    def command(self, argv: list[str], python: str = sys.executable) -> list[str]:
        """`argv` (the probe's command line) run under this isolation."""
        if self.mode == NETWORK_NAMESPACE:
            return [python, "-I", "-S", str(NETNS), "exec", "--", *argv]
        return list(argv)

    @property
    def description(self) -> str:
        if self.mode == NETWORK_NAMESPACE:
            return (
                "a fresh network namespace (no interface up, loopback included): every connection fails, "
                "native code's too; the audit hook names Python's"
            )
        return "the audit hook alone: Python's connections are refused, native code's are neither refused nor seen"


def resolve_isolation(choice: str | Isolation | None = None, *, python: str = sys.executable) -> Isolation:
    """The isolation to run the probe under (see the module docstring)."""
    if isinstance(choice, Isolation):
        return choice
    source = "isolation"
    if choice is None:
        try:
            choice, source = config.OFFLINE_ISOLATION.read(), ENV
        except config.ConfigError as e:
            raise IsolationError(f"verify-offline: {e}") from None
    if choice not in CHOICES:
        raise IsolationError(f"verify-offline: {source} {choice!r}: expected one of auto, netns, audit-hooks")
    if choice == AUDIT_HOOKS:
        return Isolation(AUDIT_HOOKS, f"chosen ({source}={choice})")
    unavailable = network_namespace_unavailable(python)
    if unavailable is None:
        return Isolation(NETWORK_NAMESPACE)
    if choice == "auto":
        return Isolation(AUDIT_HOOKS, f"no network namespace here: {unavailable}")
    raise IsolationError(
        f"verify-offline: {source} {choice}: a network namespace is not available here: {unavailable}; "
        "choose auto (falls back to the audit hook, and says so) or audit-hooks"
    )


@functools.cache
def network_namespace_unavailable(python: str = sys.executable) -> str | None:
    """None when this process can run the probe in a fresh network namespace; else why not."""
    try:
        done = subprocess.run(
            [python, "-I", "-S", str(NETNS), "check"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TRIAL_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"the trial ({NETNS.name} check) did not run: {e}"
    try:
        doc = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"the trial ({NETNS.name} check) exited with status {done.returncode}: {tail}"
    if not doc.get("available"):
        return str(doc.get("reason"))
    # A namespace that has more than a loopback, or routes, is not a cut network.
    if doc.get("interfaces") != ["lo"] or doc.get("routes"):
        return (
            f"the new namespace is not empty: interfaces {doc.get('interfaces')}, {doc.get('routes')} routes"
        )
    return None
