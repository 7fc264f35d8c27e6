"""The RunPod handler: one job in, a rendered mp4 (or an error naming the field) out.

`handle(job, worker)` is a plain function of RunPod's job (`{"id": ..., "input": {...}}`) and the
`Worker` that `startup()` made; `python -m mt_assets.worker` hands it to the SDK. The steps:

    parse_request   the input as a render job (request.py): every field checked, nothing fetched
    finished?       `<volume>/outputs/<id>/` there already, from a job with the same settings: its
                    media fetched and hashed, and if they are the same bytes as its job.json's
                    `media`, it is returned (a job delivered twice); otherwise refused (outputs.py)
    fetch_media     https and data: references into a scratch folder
    load_job_media  image and audio decoded and checked against the job
    render_job      the render, written to <volume>/outputs/<id>/ (mt_assets.render.run), one
                    progress update per sampling step (progress.py)
    deliver         S3 upload or base64, by return_video (outputs.py)

Failures come back as `{"error": message}`, which RunPod reports as FAILED with that message:
a bad input names the job and the field (`render job runpod:<id>: field 'frames': ...`), as
JobError, MediaError and OutputError messages do. Anything unexpected (a CUDA error, say) also
asks RunPod to replace this worker (`refresh_worker`), since its state is then unknown. Every
message and log line goes through `redact` (redact.py): no secret, no signature, ever.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mt_assets.jobs.decode import load_job_media
from mt_assets.jobs.hashes import job_media_hashes
from mt_assets.jobs.outputs import OutputExists
from mt_assets.jobs.schema import JobError, check_preset_served
from mt_assets.render.pipeline import RenderError
from mt_assets.render.run import render_job
from mt_assets.worker.outputs import OutputError, deliver, finished_output
from mt_assets.worker.progress import Notify, StepUpdates, notifier
from mt_assets.worker.redact import redact
from mt_assets.worker.request import fetch_media, parse_request, source_for
from mt_assets.worker.startup import Worker

log = logging.getLogger("mt_assets.worker")


def handle(job: Mapping[str, Any], worker: Worker, *, notify: Notify | None = None) -> dict[str, Any]:
    """Render one RunPod job; the response (outputs.py) or {"error": message}."""
    started = time.perf_counter()
    runpod_id = str(job.get("id") or "") if isinstance(job, Mapping) else ""
    try:
        response = _handle(job, worker, runpod_id, notify)
    except (JobError, OutputError, RenderError) as e:
        message = redact(str(e))
        log.warning("job %s failed: %s", runpod_id, message)
        return {"error": message}
    except Exception as e:
        log.exception("job %s failed", runpod_id)
        where = source_for(runpod_id)
        return {"error": redact(f"render job {where}: {type(e).__name__}: {e}"), "refresh_worker": True}
    response["handler_seconds"] = round(time.perf_counter() - started, 3)
    log.info(
        "job %s: %s in %.2f s: %d frames, sha256 %s, return_video %s",
        runpod_id,
        "reused the finished output" if response["reused"] else "rendered",
        response["handler_seconds"],
        response["frames"],
        response["sha256"][:12],
        response["return_video"],
    )
    return response


def _handle(job: Mapping[str, Any], worker: Worker, runpod_id: str, notify: Notify | None) -> dict[str, Any]:
    settings = worker.settings
    out_dir = worker.outputs
    with tempfile.TemporaryDirectory(prefix="mt-worker-") as scratch:
        request = parse_request(
            job.get("input") if isinstance(job, Mapping) else None,
            runpod_id=runpod_id,
            volume_root=worker.volume.root,
            scratch=Path(scratch),
            output_s3=settings.output_s3,
        )
        rjob = request.job
        # Before anything is fetched: a preset this worker's profile does not serve fails naming it.
        check_preset_served(rjob, worker.manifest.profile, worker.manifest.presets)

        def media_hashes() -> dict[str, Any]:
            # Called only for a finished render with the same settings: it is returned (same media)
            # or the job refused (other media), so nothing is fetched twice.
            fetch_media(request, max_bytes=settings.max_media_bytes, timeout=settings.media_timeout)
            return job_media_hashes(rjob)

        # Nothing is fetched before this: a new id costs a stat, a retry with other settings a small read.
        response = None if rjob.rerender else finished_output(out_dir, rjob, media_hashes)
        reused = response is not None
        if response is None:
            fetch_media(request, max_bytes=settings.max_media_bytes, timeout=settings.media_timeout)
            media = load_job_media(rjob)
            log.info(
                "job %s: rendering %s, %s, %d frames, %d steps",
                runpod_id,
                rjob.id,
                rjob.size,
                rjob.frames,
                rjob.steps,
            )
            progress = StepUpdates(notify or notifier(job))
            try:
                result = render_job(
                    rjob, worker.renderer, worker.manifest, out_dir, media=media, progress=progress
                )
                response = result.to_json()
            except OutputExists:
                # Another worker finished the same job meanwhile (RunPod delivered it twice at once).
                response = finished_output(out_dir, rjob, lambda: media.files)
                if response is None:
                    raise
                reused = True
    deliver(
        response,
        request.return_video,
        output_s3=settings.output_s3,
        max_inline_bytes=settings.max_inline_video_bytes,
    )
    response.update(reused=reused, return_video=request.return_video, media=request.media)
    return response
