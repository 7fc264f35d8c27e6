"""Proof that the worker's load needs nothing but the volume: the network cut, every file traced.

    prove_offline(volume, manifest, dtype=...) -> OfflineProof   verify.py: every load path asked for
    verify_offline(volume, manifest) -> OfflineReport            verify.py: one path, the judgement
    probe.py                                                     the child: audit hook, the real load
    isolation.py, netns.py                                       the cut: a network namespace where the
                                                                 kernel allows one, else the hook alone
    overrides.py                                                 the test seam (a loader gone wrong)

Plain Python: never imports dagster (defs/offline_cache.py maps it onto an asset and a check).
"""

from __future__ import annotations

from mt_assets.offline.isolation import (
    AUDIT_HOOKS,
    NETWORK_NAMESPACE,
    Isolation,
    IsolationError,
    resolve_isolation,
)
from mt_assets.offline.overrides import UNIT_LOADERS, parse_overrides
from mt_assets.offline.verify import (
    CATEGORIES,
    DTYPE_CHOICES,
    DTYPES,
    Classifier,
    NetworkAttempt,
    OfflineProof,
    OfflineReport,
    TouchedFile,
    UnitResult,
    provable_units,
    prove_offline,
    verify_offline,
)

__all__ = [
    "AUDIT_HOOKS",
    "CATEGORIES",
    "DTYPES",
    "DTYPE_CHOICES",
    "NETWORK_NAMESPACE",
    "UNIT_LOADERS",
    "Classifier",
    "Isolation",
    "IsolationError",
    "NetworkAttempt",
    "OfflineProof",
    "OfflineReport",
    "TouchedFile",
    "UnitResult",
    "parse_overrides",
    "provable_units",
    "prove_offline",
    "resolve_isolation",
    "verify_offline",
]
