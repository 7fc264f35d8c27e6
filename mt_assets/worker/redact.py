"""What the worker must never print or return: secrets, and the parts of references that carry them.

`redact(text)` is applied to every error message a job returns and to every log record of the
worker (`RedactingFilter`). It replaces

    the values of secret environment variables   names with KEY, SECRET, TOKEN or PASSWORD in them
                                                 (AWS_SECRET_ACCESS_KEY, AWS_ACCESS_KEY_ID,
                                                 AWS_SESSION_TOKEN, HF_TOKEN, RUNPOD_API_KEY, ...),
                                                 values of 6+ characters, by '***'
    the query string of any http(s) URL           by '?…' (a presigned URL's signature lives there)
    user:password@ in any URL                     by '***@'
    the payload of a data: URI                    by '…'

Messages are built from `shown_ref` (mt_assets.jobs.media) in the first place; this is the
second line, for text that comes from libraries.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping

_SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", re.IGNORECASE)
_NOT_SECRET = {"HF_HUB_DISABLE_IMPLICIT_TOKEN", "TOKENIZERS_PARALLELISM"}  # names that only look like it
_MIN_SECRET_CHARS = 6  # shorter values ('1', 'true') would mask ordinary words
# The query up to whitespace, a quote or the end, leaving trailing punctuation (': ' after a URL in
# a message) alone; a query already shown as '?…' is left as it is.
_URL_QUERY = re.compile(r"""(?i)\b(https?://[^\s?#"'<>]*)\?(?!…)[^\s"'<>]*?(?=[:,;.)\]]*(?:[\s"'<>]|$))""")
_URL_USERINFO = re.compile(r"""(?i)\b([a-z][a-z0-9+.-]*://)[^\s/@"'<>]+@""")
_DATA_PAYLOAD = re.compile(r"""(?i)\b(data:[^\s,"']{0,100},)[A-Za-z0-9+/=%]{8,}""")
MASK = "***"


def secret_values(env: Mapping[str, str] | None = None) -> list[str]:
    """The values of the environment's secret variables, longest first."""
    env = os.environ if env is None else env
    values = {
        value
        for name, value in env.items()
        if _SECRET_NAME.search(name) and name not in _NOT_SECRET and len(value) >= _MIN_SECRET_CHARS
    }
    return sorted(values, key=len, reverse=True)


def redact(text: str, env: Mapping[str, str] | None = None) -> str:
    for value in secret_values(env):
        text = text.replace(value, MASK)
    text = _URL_USERINFO.sub(rf"\1{MASK}@", text)
    text = _URL_QUERY.sub(r"\1?…", text)
    return _DATA_PAYLOAD.sub(r"\1…", text)


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (arguments merged in, traceback included) through `redact`."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
            record.exc_text = None
        record.msg = redact(message)
        record.args = None
        return True
