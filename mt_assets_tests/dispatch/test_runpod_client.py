"""The RunPod endpoint client against a loopback endpoint written from RunPod's documented API:
the operations, the wait with its backoff, 429 and 5xx handling, the key kept out of every message,
and the SDK local test API's shape (POST only, no endpoint id in the path)."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator

import pytest

from mt_assets.dispatch import (
    Backoff,
    JobStatus,
    RunPodConfigError,
    RunPodEndpoint,
    RunPodError,
    failure_message,
    failure_traceback,
)
from mt_assets.dispatch.runpod import _retry_after
from mt_assets_tests.runpod_endpoint import ENDPOINT_ID, Endpoint, Script, runpod_endpoint

KEY = "rpa_TEST_KEY_d41d8cd98f00b204"


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    with runpod_endpoint(KEY) as e:
        yield e


def client(endpoint: Endpoint, **kwargs: object) -> RunPodEndpoint:
    return RunPodEndpoint(ENDPOINT_ID, kwargs.pop("key", KEY), api_base=endpoint.api_base, **kwargs)  # type: ignore[arg-type]


def gaps(endpoint: Endpoint, job_id: str) -> list[float]:
    times = [r.at for r in endpoint.of("status", job_id)]
    return [b - a for a, b in itertools.pairwise(times)]


def test_run_status_cancel_and_health_follow_the_documented_api(endpoint) -> None:
    endpoint.script = lambda _: Script(queue_seconds=30)
    with client(endpoint) as c:
        queued = c.run({"id": "a1", "prompt": "hi"})
        assert queued.status == "IN_QUEUE" and queued.id
        assert c.status(queued.id).status == "IN_QUEUE"
        health = c.health()
        assert health["jobs"]["inProgress"] == 1
        cancelled = c.cancel(queued.id)
        assert cancelled.status == "CANCELLED" and cancelled.final
        assert c.status(queued.id).status == "CANCELLED"
    [run] = endpoint.of("run")
    assert run.method == "POST" and run.body == {"input": {"id": "a1", "prompt": "hi"}}
    assert {r.method for r in endpoint.of("status")} == {"POST"}
    assert [r.method for r in endpoint.of("cancel")] == ["POST"]
    assert all(r.authorized for r in endpoint.requests)


def test_wait_reports_each_state_and_progress_message_once_and_returns_the_final_status(endpoint) -> None:
    endpoint.script = lambda inp: Script(
        queue_seconds=0.1,
        progress=[("loading models", 0.15), ({"step": 1, "of": 2}, 0.15)],
        output={"echo": inp["id"]},
    )
    seen: list[tuple[str, object]] = []
    with client(endpoint) as c:
        job = c.run({"id": "b2"})
        final = c.wait(
            job.id, backoff=Backoff(0.01, 1.5, 0.03), on_update=lambda s: seen.append((s.status, s.output))
        )
    assert seen == [
        ("IN_QUEUE", None),
        ("IN_PROGRESS", "loading models"),
        ("IN_PROGRESS", {"step": 1, "of": 2}),
        ("COMPLETED", {"echo": "b2"}),
    ]
    assert final.status == "COMPLETED" and final.output == {"echo": "b2"}
    assert final.delay_ms == 100 and 300 <= final.execution_ms < 600  # type: ignore[operator]


def test_polls_wait_first_then_factor_times_longer_up_to_the_cap(endpoint) -> None:
    hold = threading.Event()
    endpoint.script = lambda _: Script(hold=hold, output={})
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:  # no real waiting: the job finishes after eight polls
        sleeps.append(seconds)
        if len(sleeps) == 8:
            hold.set()

    with client(endpoint, sleep=sleep) as c:
        c.wait(c.run({}).id, backoff=Backoff(0.5, 1.5, 3.0))
    assert sleeps == [0.5, 0.75, 1.125, 1.6875, 2.53125, 3.0, 3.0, 3.0]


def test_the_endpoint_sees_the_polls_spread_out_as_the_backoff_grows(endpoint) -> None:
    endpoint.script = lambda _: Script(progress=[("working", 0.9)], output={})
    with client(endpoint) as c:
        job = c.run({})
        c.wait(job.id, backoff=Backoff(0.05, 2.0, 0.4))
    seen = gaps(endpoint, job.id)
    expected = [0.05, 0.1, 0.2, 0.4]
    assert len(seen) >= len(expected)
    # A gap is at least the wait before it (sleep never returns early); request time only adds to it.
    assert all(g >= w * 0.99 for g, w in zip(seen, expected, strict=False)), seen
    assert seen[-1] >= 0.4 * 0.99


def test_a_429_is_honoured_by_waiting_its_retry_after_before_asking_again(endpoint) -> None:
    endpoint.script = lambda _: Script(progress=[("working", 0.2)], output={"ok": True})
    limited: list[tuple[str, float]] = []
    with client(endpoint, on_rate_limited=lambda req, wait: limited.append((req, wait))) as c:
        job = c.run({})
        endpoint.fault("status", status=429, retry_after="1")
        final = c.wait(job.id, backoff=Backoff(0.02, 1.0, 0.02))
    assert final.status == "COMPLETED"
    assert limited == [(f"POST /status/{job.id}", 1.0)]
    assert gaps(endpoint, job.id)[0] >= 1.0  # the refused poll, then the same poll a second later


def test_retry_after_reads_seconds_and_http_dates_and_bounds_them() -> None:
    import email.utils

    assert _retry_after("3", 2.0) == 3.0
    assert _retry_after(None, 2.0) == 2.0
    assert _retry_after("soon", 2.0) == 2.0
    assert _retry_after("-5", 2.0) == 0.0
    assert _retry_after("100000", 2.0) == 300.0
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= _retry_after(later, 2.0) <= 31


def test_a_5xx_while_polling_is_retried_on_the_next_poll_and_given_up_after_max_poll_errors(endpoint) -> None:
    endpoint.script = lambda _: Script(progress=[("working", 0.1)], output={})
    errors: list[str] = []
    with client(endpoint) as c:
        job = c.run({})
        endpoint.fault("status", status=503, times=2, retry_after=None)
        final = c.wait(
            job.id, backoff=Backoff(0.01, 1.0, 0.01), on_poll_error=lambda e, _w: errors.append(str(e))
        )
        assert final.status == "COMPLETED"
        assert len(errors) == 2 and "HTTP 503" in errors[0] and ENDPOINT_ID in errors[0]

        endpoint.fault("status", status=502, times=3, retry_after=None)
        with pytest.raises(RunPodError, match="HTTP 502") as raised:
            c.wait(job.id, backoff=Backoff(0.01, 1.0, 0.01), max_poll_errors=2)
        assert raised.value.retryable


def test_a_refused_key_is_a_config_error_and_no_message_or_repr_holds_the_key(endpoint) -> None:
    wrong = "rpa_WRONG_KEY_0123456789abcdef"
    with client(endpoint, key=wrong) as c:
        with pytest.raises(RunPodConfigError) as raised:
            c.run({"id": "x"})
        assert "RUNPOD_API_KEY" in str(raised.value) and "HTTP 401" in str(raised.value)
        assert not raised.value.retryable
        # The endpoint echoed the header it got; the client scrubbed it.
        assert "unauthorized" in str(raised.value) and wrong not in str(raised.value)
        assert wrong not in repr(c) and wrong not in repr(c._session.auth)
    assert endpoint.of("run")[0].authorized is False


def test_no_key_or_no_endpoint_id_is_refused_before_any_request(endpoint) -> None:
    with pytest.raises(RunPodConfigError, match="RUNPOD_API_KEY"):
        RunPodEndpoint(ENDPOINT_ID, "")
    with pytest.raises(RunPodConfigError, match="MT_RUNPOD_ENDPOINT"):
        RunPodEndpoint("", KEY)
    assert not endpoint.requests


def test_the_sdk_local_api_shape_post_only_at_the_root_works_without_an_endpoint_id() -> None:
    with runpod_endpoint(KEY, local_sdk=True) as local:
        local.script = lambda _: Script(progress=[("working", 0.05)], output={"done": 1})
        with RunPodEndpoint("", KEY, api_base=local.api_base) as c:
            final = c.wait(c.run({"x": 1}).id, backoff=Backoff(0.01, 1.0, 0.01))
        assert final.output == {"done": 1}
        assert {r.method for r in local.requests} == {"POST"}
        # The same API refuses a GET /status: why POST is the default.
        with RunPodEndpoint("", KEY, api_base=local.api_base, status_method="GET") as c:
            with pytest.raises(RunPodError, match="HTTP 405"):
                c.status(final.id)


def test_failure_message_reads_the_sdks_error_json_or_the_handlers_text() -> None:
    sdk = json.dumps(
        {
            "error_type": "<class 'mt_assets.jobs.schema.JobError'>",
            "error_message": "render job a1: field 'cond_image': no such file",
            "error_traceback": "Traceback (most recent call last): ...",
            "hostname": "worker-1",
        }
    )
    assert failure_message(sdk) == "JobError: render job a1: field 'cond_image': no such file"
    assert failure_traceback(sdk) == "Traceback (most recent call last): ..."
    assert failure_message("CUDA out of memory") == "CUDA out of memory"
    assert failure_traceback("CUDA out of memory") is None
    assert failure_message(None) == "(no message)"
    assert failure_message({"code": 3}) == '{"code": 3}'


def test_a_status_answer_keeps_runpods_fields() -> None:
    status = JobStatus.from_json(
        {"id": "j", "status": "COMPLETED", "delayTime": 1200, "executionTime": 3400, "output": {"a": 1}}
    )
    assert (status.delay_ms, status.execution_ms, status.final) == (1200, 3400, True)
    assert not JobStatus.from_json({"id": "j", "status": "IN_PROGRESS"}).final


def test_backoff_refuses_settings_that_would_not_back_off() -> None:
    with pytest.raises(ValueError, match="first > 0"):
        Backoff(0, 1.5, 10)
    with pytest.raises(ValueError, match="factor >= 1"):
        Backoff(0.5, 0.5, 10)
