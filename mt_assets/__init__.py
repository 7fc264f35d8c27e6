"""mt_assets: the models MeiGen MultiTalk loads, declared, placed on a shared volume and verified.

`mt_assets.defs`, the Dagster Definitions for `dagster ... -m mt_assets`, is built on first
access, so the core modules and the RunPod worker import without Dagster.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "defs":
        definitions = importlib.import_module("mt_assets.defs").defs
        # Importing the subpackage bound `defs` to the module; Dagster looks for the Definitions.
        globals()["defs"] = definitions
        return definitions
    raise AttributeError(f"module 'mt_assets' has no attribute {name!r}")


def __dir__() -> list[str]:
    return [*globals(), "defs"]
