"""Proof that the worker's load needs nothing but the volume: the network cut, every file traced.

    verify_offline(volume, manifest) -> OfflineReport      verify.py: the parent, the judgement
    probe.py                                               the child: audit hook, the real load
    overrides.py                                           the test seam (a loader gone wrong)

Plain Python: never imports dagster (defs/offline_cache.py maps it onto an asset and a check).
"""

from __future__ import annotations

from mt_assets.offline.overrides import UNIT_LOADERS, parse_overrides
from mt_assets.offline.verify import (
    CATEGORIES,
    Classifier,
    NetworkAttempt,
    OfflineReport,
    TouchedFile,
    UnitResult,
    provable_units,
    verify_offline,
)

__all__ = [
    "CATEGORIES",
    "UNIT_LOADERS",
    "Classifier",
    "NetworkAttempt",
    "OfflineReport",
    "TouchedFile",
    "UnitResult",
    "parse_overrides",
    "provable_units",
    "verify_offline",
]
