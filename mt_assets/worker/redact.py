"""What the worker must never print or return: secrets, and the parts of references that carry them.

`redact(text)` is applied to every error message a job returns and to every log record of the
worker (`RedactingFilter`). It replaces

    the values of secret environment variables   names with KEY, SECRET, TOKEN or PASSWORD in them
                                                 (AWS_SECRET_ACCESS_KEY, AWS_ACCESS_KEY_ID,
                                                 AWS_SESSION_TOKEN, HF_TOKEN, RUNPOD_API_KEY, ...),
                                                 values of 6+ characters, by '***'
    every URL and data: URI in the text           by `shown_ref` (mt_assets.jobs.media) of it: a
                                                 query string by '?…' (a presigned URL's signature
                                                 lives there), user:password@ by '***@', a data:
                                                 URI cut to its media type and length

`shown_ref` is the one way a reference is shown: messages are built from it in the first place;
this is the second line, for text that comes from libraries, and it finds references in free text
only to hand each to `shown_ref`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping

from mt_assets.jobs.media import shown_ref

_SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", re.IGNORECASE)
_NOT_SECRET = {"HF_HUB_DISABLE_IMPLICIT_TOKEN", "TOKENIZERS_PARALLELISM"}  # names that only look like it
_MIN_SECRET_CHARS = 6  # shorter values ('1', 'true') would mask ordinary words
# A URL (any scheme://) up to whitespace, a quote or the end, leaving trailing punctuation (': '
# after a URL in a message) alone; a data: URI with a payload of 8+ characters.
_URL = re.compile(r"""(?i)\b[a-z][a-z0-9+.-]*://[^\s"'<>]*?(?=[:,;.)\]]*(?:[\s"'<>]|$))""")
_DATA_URI = re.compile(r"""(?i)\bdata:[^\s,"']{0,100},[A-Za-z0-9+/=%]{8,}""")
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
    text = _URL.sub(lambda m: shown_ref(m.group()), text)
    return _DATA_URI.sub(lambda m: shown_ref(m.group()), text)


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
