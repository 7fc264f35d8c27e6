"""One job, end to end: check where its output goes, render, write the mp4 and its record.

The record (`job.json` beside `video.mp4`) holds the job as given, the sha256 and size of its media as
decoded (`media`: mt_assets.jobs.hashes), every effective setting, how the renderer was built
(`renderer`: device, dtype, TF32, load strategy, repacks read), the profile and the sha256 of every
model file the render loaded (from the manifest, which the audit checked against the volume before
the components were loaded), seconds per stage and per step, the DiT evaluations planned, run and skipped (flat keys
`dit_evaluations_planned`, `dit_evaluations_run`, `dit_evaluations_skipped`: render/cost.py), and the
video's own sha256 (added by
`video.write_render_output`). The CLI, the Dagster `renders` asset and the RunPod
worker all call `render_job`, with a renderer from `MultiTalkRenderer.from_volume`.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mt_assets import __version__
from mt_assets.jobs.audio_prep import pcm16
from mt_assets.jobs.decode import JobMedia
from mt_assets.jobs.outputs import check_output_free
from mt_assets.jobs.schema import RenderJob, check_preset_served
from mt_assets.manifest import Manifest
from mt_assets.models.pipeline import loaded_components
from mt_assets.progress import Progress
from mt_assets.render.pipeline import MultiTalkRenderer, RenderedVideo
from mt_assets.render.video import FPS, RenderOutput, frames_to_uint8, write_render_output


@dataclass(frozen=True)
class RenderResult:
    job: RenderJob
    output: RenderOutput
    frames: int
    width: int
    height: int
    clips: int
    seconds_per_step: float
    timings: dict[str, Any]
    evaluations: dict[str, int] = field(default_factory=dict)  # job.json's dit_evaluations_* keys

    @property
    def duration(self) -> float:
        return self.frames / FPS

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.job.id,
            "video": str(self.output.video),
            "poster": str(self.output.poster),
            "job_json": str(self.output.job_json),
            "sha256": self.output.sha256,
            "frames": self.frames,
            "duration": round(self.duration, 3),
            "width": self.width,
            "height": self.height,
            "clips": self.clips,
            "seconds_per_step": round(self.seconds_per_step, 4),
            "seconds": self.timings["seconds"],
            "stages": self.timings["stages"],
            **self.evaluations,
        }


def model_files(manifest: Manifest) -> list[dict[str, Any]]:
    """The files a render loads (every component of the load units, LoRAs included), as pinned by the manifest."""
    components = loaded_components(manifest)
    return [
        {"component": f.component, "target": f.target, "size": f.size, "sha256": f.sha256}
        for f in manifest.files
        if f.component in components
    ]


def render_record(
    job: RenderJob, rendered: RenderedVideo, manifest: Manifest, renderer: MultiTalkRenderer
) -> dict[str, Any]:
    height, width = rendered.target_hw
    steps = rendered.timings.steps
    return {
        "job": job.to_json(),
        # planned and skipped: what the plan said (render/cost.py); run: counted while sampling
        **rendered.evaluations_json(),
        "media": rendered.media_files,
        "settings": {
            "width": width,
            "height": height,
            "frames": int(rendered.video.shape[1]),
            "frames_per_clip": job.frames,
            "clips": len(rendered.plan.clips),
            "speakers": len(rendered.audio.speeches),
            "fps": FPS,
        },
        "renderer": renderer.settings.to_json(renderer.c),
        "profile": manifest.profile,
        "models": model_files(manifest),
        "timings": {**rendered.timings.to_json(), "seconds_per_step": _median(steps)},
        "software": {
            "mt_assets": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }


def render_job(
    job: RenderJob,
    renderer: MultiTalkRenderer,
    manifest: Manifest,
    out_dir: Path,
    *,
    media: JobMedia | None = None,
    progress: Progress | None = None,
) -> RenderResult:
    """Render `job` and write `<out_dir>/<job.id>/` atomically; OutputExists if it is there already.

    JobError (field 'preset') when the job's preset is not one the manifest's profile serves.
    """
    check_preset_served(job, manifest.profile, manifest.presets)
    check_output_free(job, out_dir)
    rendered = renderer.render(job, media, progress=progress)
    record = render_record(job, rendered, manifest, renderer)
    frames = frames_to_uint8(rendered.video)
    # The sound track is the mix as the reference stores it (PCM_16, saturating), cut to the video.
    track = pcm16(rendered.audio.mix).astype(np.float32) / 32768
    output = write_render_output(out_dir, job.id, frames, track, record, replace=job.rerender)
    height, width = rendered.target_hw
    return RenderResult(
        job=job,
        output=output,
        frames=int(frames.shape[0]),
        width=width,
        height=height,
        clips=len(rendered.plan.clips),
        seconds_per_step=record["timings"]["seconds_per_step"],
        timings=record["timings"],
        evaluations=rendered.evaluations_json(),
    )


def _median(values: list[float]) -> float:
    return round(float(np.median(values)), 4) if values else 0.0
