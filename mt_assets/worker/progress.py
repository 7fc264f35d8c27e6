"""Progress of a job as RunPod shows it: one update per sampling step.

`StepUpdates` is the `Progress` (mt_assets.progress) that `render_job` is given. Each sampling step
sends one update, a JSON object that the hosted API returns as the job's `output` while its status
is IN_PROGRESS:

    {"stage": "sampling", "step": 3, "steps": 40, "clip": 1, "clips": 1}

`step` counts over all clips (a streaming render of 3 clips of 40 steps ends at 120 of 120).

`notifier(job)` sends them with `runpod.serverless.progress_update` when the worker is deployed
(RunPod sets RUNPOD_WEBHOOK_POST_OUTPUT, the address updates go to); elsewhere (the SDK's local API
server, tests) there is nowhere to send them, so they are logged instead.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger("mt_assets.worker")

Notify = Callable[[dict[str, Any]], None]
PROGRESS_URL_ENV = "RUNPOD_WEBHOOK_POST_OUTPUT"


def notifier(job: Mapping[str, Any]) -> Notify:
    """Where this job's updates go: RunPod's progress_update when deployed, else the log."""
    if os.environ.get(PROGRESS_URL_ENV):
        import runpod

        def send(update: dict[str, Any]) -> None:
            runpod.serverless.progress_update(dict(job), update)

        return send

    job_id = str(job.get("id", ""))

    def record(update: dict[str, Any]) -> None:
        log.info("job %s: step %d of %d", job_id, update["step"], update["steps"])

    return record


class StepUpdates:
    """A Progress that turns the renderer's sampling steps into updates (bytes-style keys ignored)."""

    def __init__(self, notify: Notify) -> None:
        self.notify = notify
        self.totals: dict[str, int | None] = {}
        self.done: dict[str, int] = {}
        self._lock = threading.Lock()

    def start(self, key: str, label: str, total: int | None) -> None:
        with self._lock:
            self.totals[key] = total
            self.done[key] = 0

    def advance(self, key: str, n: int) -> None:
        with self._lock:
            self.done[key] = self.done.get(key, 0) + n
            if key != "steps":
                return
            steps = self.totals.get("steps") or self.done["steps"]
            clips = self.totals.get("clips") or 1
            update = {
                "stage": "sampling",
                "step": self.done["steps"],
                "steps": steps,
                # the renderer counts a clip when its last step is done: this step's clip is one more
                "clip": min(self.done.get("clips", 0) + 1, clips),
                "clips": clips,
            }
        self.notify(update)

    def finish(self, key: str) -> None:
        pass
