"""The worker's log: one line per event on stderr, every record redacted (redact.py).

    2026-12-01 10:00:00 mt_assets.worker INFO loaded transformer      1.23 s  ...

The RunPod SDK prints its own lines on stdout; both end up in the endpoint's logs.
"""

from __future__ import annotations

import logging
import sys

from mt_assets.worker.redact import RedactingFilter

FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def setup_logging(level: int = logging.INFO) -> None:
    """Send the worker's records (and warnings, e.g. a RepackWarning) to stderr, redacted."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, "%Y-%m-%d %H:%M:%S"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # libraries: warnings and up
    logging.getLogger("mt_assets").setLevel(level)
    logging.captureWarnings(True)
