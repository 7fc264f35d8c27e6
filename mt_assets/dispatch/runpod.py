"""A client for one RunPod serverless endpoint (queue-based), and the wait for one of its jobs.

The protocol, as RunPod documents it (docs.runpod.io/serverless/endpoints/operations and
.../operation-reference); `base` is https://api.runpod.ai/v2, or MT_RUNPOD_API_BASE for a test server:

    POST {base}/{endpoint}/run          {"input": {...}}  -> {"id": "<job id>", "status": "IN_QUEUE"}
    POST {base}/{endpoint}/status/{id}                    -> {"id", "status", "delayTime", "executionTime",
                                                              "output"?, "error"?}
    POST {base}/{endpoint}/cancel/{id}                    -> {"id", "status": "CANCELLED"}
    GET  {base}/{endpoint}/health                         -> {"jobs": {...}, "workers": {...}}

    every request: header `authorization: Bearer <RUNPOD_API_KEY>`

A job goes IN_QUEUE -> IN_PROGRESS -> COMPLETED | FAILED | CANCELLED | TIMED_OUT (the last four are
final). While IN_PROGRESS, `output` is the latest message the worker sent with
`runpod.serverless.progress_update(job, msg)`; once COMPLETED it is what the handler returned. FAILED
carries `error`: for a handler that raised, the SDK's JSON string {"error_type", "error_message",
"error_traceback", "hostname", "worker_id", ...}; for a handler that returned {"error": ...}, that
value. `delayTime` is the milliseconds from /run until a worker took the job (queue and cold start),
`executionTime` the milliseconds the handler ran. Results of /run are kept 30 minutes.

/status by POST: the hosted API takes GET or POST for /status (its rate-limit table lists /status as
GET/POST), and the SDK's local test API (`python handler.py --rp_serve_api`) serves every route as
POST only, so POST reaches both; `status_method="GET"` is there for a proxy that allows only GET. The
local test API also serves its routes at the root (no endpoint id: pass endpoint ""), has no /cancel
and no /health, and runs a /run job inside the first POST /status, answering only when the job is done
(give `request_timeout` room for a whole render there); a second /status says "Job ID not found".

Polling backs off: the first wait is `Backoff.first` seconds (0.5), each next one `factor` (1.5)
times longer, up to `cap` (10 s). Past a rate limit RunPod answers 429 (/status: 2000 requests per 10
s per endpoint, /run 1000, /cancel 100): the client waits the response's Retry-After (seconds or an
HTTP date; without one, `rate_limit_wait`) and asks again, at most `max_rate_limited` times in a row.
A 5xx or a dropped connection while polling is retried on the next poll (`max_poll_errors` in a row);
/run is never repeated by this client: a /run whose answer was lost may have queued a job.

Secrets: the API key travels only in the authorization header. It is not an attribute shown by repr,
never part of a URL, and every message built from a response or a transport error has it scrubbed
(a proxy may echo what it was sent). Nothing here logs; callers get messages through callbacks.

Plain Python (requests); the Dagster `renders` asset and any command line use it alike.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
import requests.auth

from mt_assets import config

DEFAULT_API_BASE = config.RUNPOD_API_BASE.default  # https://api.runpod.ai/v2
IN_QUEUE, IN_PROGRESS = "IN_QUEUE", "IN_PROGRESS"
COMPLETED, FAILED, CANCELLED, TIMED_OUT = "COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"
FINAL_STATES = (COMPLETED, FAILED, CANCELLED, TIMED_OUT)
STATUS_METHODS = ("POST", "GET")
MAX_RETRY_AFTER = 300.0  # a Retry-After longer than this is taken as this (a wrong clock, a wrong header)
_SNIPPET = 300  # characters of a response body quoted in an error message
_SCRUBBED = "***"


class RunPodError(RuntimeError):
    """A request to the endpoint failed. `str()` names the endpoint and the operation, never the key.

    `retryable`: whether the same request may work later (5xx, a dropped connection, a timeout), as
    opposed to a configuration problem (401/403: the key; 404: the endpoint or job; 400: the input).
    """

    def __init__(self, message: str, *, retryable: bool, status_code: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status_code = status_code


class RunPodConfigError(RunPodError):
    """The endpoint cannot be used as configured: no endpoint id, no API key, or the key was refused."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message, retryable=False, status_code=status_code)


@dataclass(frozen=True)
class Backoff:
    """Waits between polls: first, first*factor, first*factor**2, ... never more than cap (seconds)."""

    first: float = 0.5
    factor: float = 1.5
    cap: float = 10.0

    def __post_init__(self) -> None:
        if not (self.first > 0 and self.factor >= 1 and self.cap >= self.first):
            raise ValueError(
                f"poll backoff: need first > 0, factor >= 1 and cap >= first; got first={self.first}, "
                f"factor={self.factor}, cap={self.cap}"
            )

    def intervals(self) -> Iterator[float]:
        wait = self.first
        while True:
            yield wait
            wait = min(wait * self.factor, self.cap)


@dataclass(frozen=True)
class JobStatus:
    """One answer of /run, /status or /cancel."""

    id: str
    status: str
    output: Any = None
    error: Any = None
    delay_ms: int | None = None  # RunPod's delayTime
    execution_ms: int | None = None  # RunPod's executionTime
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATES

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], *, job_id: str | None = None) -> JobStatus:
        return cls(
            id=str(doc.get("id") or job_id or ""),
            status=str(doc.get("status") or ""),
            output=doc.get("output"),
            error=doc.get("error"),
            delay_ms=_int_or_none(doc.get("delayTime")),
            execution_ms=_int_or_none(doc.get("executionTime")),
            raw=dict(doc),
        )


def failure_message(error: Any) -> str:
    """The worker's message from a FAILED job's `error`: "ValueError: ..." from the SDK's JSON, else the text."""
    doc = error
    if isinstance(error, str):
        try:
            doc = json.loads(error)
        except ValueError:
            return error.strip() or "(no message)"
    if isinstance(doc, Mapping) and "error_message" in doc:
        kind = str(doc.get("error_type") or "")
        # The SDK sends str(type(err)): "<class 'mt_assets.jobs.schema.JobError'>" -> "JobError".
        kind = kind.removeprefix("<class '").removesuffix("'>").rsplit(".", 1)[-1]
        message = str(doc["error_message"])
        return f"{kind}: {message}" if kind else message
    if doc is None:
        return "(no message)"
    return doc if isinstance(doc, str) else json.dumps(doc, default=str)


def failure_traceback(error: Any) -> str | None:
    """The worker's traceback, when the SDK sent one."""
    if isinstance(error, str):
        try:
            error = json.loads(error)
        except ValueError:
            return None
    if isinstance(error, Mapping) and isinstance(error.get("error_traceback"), str):
        return error["error_traceback"]
    return None


class RunPodEndpoint:
    """One serverless endpoint. Not thread-safe (one requests.Session); cheap to make one per job."""

    def __init__(
        self,
        endpoint_id: str,
        api_key: str,
        *,
        api_base: str = DEFAULT_API_BASE,
        request_timeout: float = 30.0,
        status_method: str = "POST",
        max_rate_limited: int = 20,
        rate_limit_wait: float = 2.0,
        on_rate_limited: Callable[[str, float], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not api_key:
            raise RunPodConfigError(
                "RunPod: no API key (set RUNPOD_API_KEY; the key needs access to the endpoint)"
            )
        if not endpoint_id and api_base.rstrip("/") == DEFAULT_API_BASE:
            raise RunPodConfigError("RunPod: no endpoint id (set MT_RUNPOD_ENDPOINT to the endpoint's id)")
        if status_method not in STATUS_METHODS:
            raise RunPodConfigError(
                f"RunPod: status_method must be one of {', '.join(STATUS_METHODS)}, got {status_method!r}"
            )
        self.endpoint_id = endpoint_id
        self.api_base = api_base.rstrip("/")
        self.request_timeout = request_timeout
        self.status_method = status_method
        self.max_rate_limited = max_rate_limited
        self.rate_limit_wait = rate_limit_wait
        self.on_rate_limited = on_rate_limited
        self._sleep = sleep
        self._key = api_key
        self._session = requests.Session()
        # Set as the session's auth, so requests never replaces it with credentials from ~/.netrc.
        self._session.auth = _Bearer(api_key)

    def __repr__(self) -> str:
        return f"RunPodEndpoint({self.endpoint_id!r}, api_base={self.api_base!r})"

    @property
    def url(self) -> str:
        """The endpoint's URL: base/endpoint, or the base itself for the SDK's local API (no endpoint id)."""
        return f"{self.api_base}/{self.endpoint_id}" if self.endpoint_id else self.api_base

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> RunPodEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- operations ------------------------------------------------------------------------

    def run(self, job_input: Mapping[str, Any]) -> JobStatus:
        """Queue a job; its id and first status. Never repeated on a lost answer (it may have queued)."""
        doc = self._request("POST", "run", json_body={"input": dict(job_input)}, retry_transport=False)
        status = JobStatus.from_json(doc)
        if not status.id:
            raise RunPodError(
                f"RunPod endpoint {self._where()}: /run answered without a job id: {self._snippet(doc)}",
                retryable=False,
            )
        return status

    def status(self, job_id: str) -> JobStatus:
        doc = self._request(self.status_method, f"status/{job_id}")
        return JobStatus.from_json(doc, job_id=job_id)

    def cancel(self, job_id: str, *, timeout: float | None = None) -> JobStatus:
        doc = self._request("POST", f"cancel/{job_id}", timeout=timeout)
        return JobStatus.from_json(doc, job_id=job_id)

    def health(self) -> dict[str, Any]:
        return self._request("GET", "health")

    def wait(
        self,
        job_id: str,
        *,
        backoff: Backoff | None = None,
        on_update: Callable[[JobStatus], None] | None = None,
        on_poll_error: Callable[[RunPodError, float], None] | None = None,
        max_poll_errors: int = 5,
    ) -> JobStatus:
        """Poll /status until the job is final; that last status.

        `on_update` sees every change: of state, or of the progress message while IN_PROGRESS.
        `on_poll_error(error, wait)` sees a retryable failure of one poll before the next try.
        """
        intervals = (backoff or Backoff()).intervals()
        seen: tuple[str, str] | None = None
        errors = 0
        while True:
            try:
                status = self.status(job_id)
            except RunPodError as e:
                errors += 1
                if not e.retryable or errors > max_poll_errors:
                    raise
                wait = next(intervals)
                if on_poll_error is not None:
                    on_poll_error(e, wait)
                self._sleep(wait)
                continue
            errors = 0
            now = (status.status, _canonical(status.output) if status.status == IN_PROGRESS else "")
            if now != seen:
                seen = now
                if on_update is not None:
                    on_update(status)
            if status.final:
                return status
            self._sleep(next(intervals))

    # -- HTTP ------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        op: str,
        *,
        json_body: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        retry_transport: bool = True,
    ) -> dict[str, Any]:
        url = f"{self.url}/{op}"
        shown = f"{method} /{op}"
        headers = {"accept": "application/json"}
        for attempt in range(self.max_rate_limited + 1):
            try:
                response = self._session.request(
                    method,
                    url,
                    json=json_body,
                    headers=headers,
                    timeout=(10.0, timeout if timeout is not None else self.request_timeout),
                )
            except requests.RequestException as e:
                # The text of a transport error names the URL (no key in it) and the cause.
                raise RunPodError(
                    f"RunPod endpoint {self._where()}: {shown}: {self._scrub(f'{type(e).__name__}: {e}')}",
                    retryable=retry_transport,
                ) from None
            if response.status_code == 429 and attempt < self.max_rate_limited:
                wait = _retry_after(response.headers.get("retry-after"), self.rate_limit_wait)
                if self.on_rate_limited is not None:
                    self.on_rate_limited(shown, wait)
                self._sleep(wait)
                continue
            return self._answer(response, shown)
        raise AssertionError("unreachable")  # the last attempt returns or raises in _answer

    def _answer(self, response: requests.Response, shown: str) -> dict[str, Any]:
        code = response.status_code
        body = self._scrub(response.text[:_SNIPPET].strip())
        where = f"RunPod endpoint {self._where()}: {shown}: HTTP {code}"
        if code in (401, 403):
            raise RunPodConfigError(
                f"{where}: the API key was refused (check RUNPOD_API_KEY and its access to this endpoint)"
                + (f": {body}" if body else ""),
                status_code=code,
            )
        if code >= 400:
            retryable = code >= 500 or code in (408, 429)
            raise RunPodError(
                f"{where}" + (f": {body}" if body else ""), retryable=retryable, status_code=code
            )
        try:
            doc = response.json()
        except ValueError:
            raise RunPodError(f"{where}: not JSON: {body!r}", retryable=True, status_code=code) from None
        if not isinstance(doc, dict):
            raise RunPodError(
                f"{where}: expected a JSON object, got {body!r}", retryable=False, status_code=code
            )
        return doc

    def _where(self) -> str:
        return self.endpoint_id or self.api_base

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, _SCRUBBED) if self._key else text

    def _snippet(self, doc: object) -> str:
        return self._scrub(json.dumps(doc, default=str)[:_SNIPPET])


class _Bearer(requests.auth.AuthBase):
    """The authorization header; its repr does not show the key."""

    def __init__(self, key: str) -> None:
        self._key = key

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["authorization"] = f"Bearer {self._key}"
        return request

    def __repr__(self) -> str:
        return "_Bearer(***)"


def _retry_after(value: str | None, default: float) -> float:
    """Seconds to wait for a Retry-After header: delta-seconds or an HTTP date; `default` without one."""
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return default
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _int_or_none(value: object) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, default=str)
