"""What a job costs in DiT evaluations, known before it runs: the clip plan and TeaCache's skip plan.

A render evaluates the DiT `evaluations_per_step` times per step (3; 2 at text guidance 1.0) for
every step of every clip. With TeaCache some of those evaluations are skipped, and which ones follows
from the schedule, the evaluations per step, the threshold, the size bucket's coefficients and the
DiT's time-embedding weights alone (render/teacache.py): `plan_teacache` computes them without
sampling. Every clip starts fresh, so every clip makes the same decisions. Hence, per job:

    dit_evaluations_planned   evaluations the plan says will run: clips x (steps x per step - skipped per clip)
    dit_evaluations_skipped   evaluations the plan says TeaCache skips (0 without TeaCache)
    dit_evaluations_run       evaluations counted while sampling (job.json only): equals planned

`mt-assets render JOB --dry-run --json` prints the plan (`EvaluationPlan.to_json`) without rendering:
without TeaCache no model is loaded; with it only the DiT (`load_pipeline_components(only=
["transformer"])`, on the CPU in the dtype the render would use), for its time embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from mt_assets.render.sampler import Guidance, timesteps
from mt_assets.render.streaming import StreamPlan, plan_clips
from mt_assets.render.teacache import TeaCache, TeaCachePlan, coefficients_for_size, plan_teacache

if TYPE_CHECKING:
    from mt_assets.jobs.decode import JobMedia
    from mt_assets.jobs.schema import RenderJob
    from mt_assets.manifest import Manifest
    from mt_assets.volume import LocalVolume


class PlanError(ValueError):
    """A job whose clips cannot be planned (audio too short): the message names the job and the field."""


def job_guidance(job: RenderJob) -> Guidance:
    return Guidance(
        text=job.text_guidance,
        audio=job.audio_guidance,
        apg_momentum=job.apg.momentum if job.apg else None,
        apg_norm_threshold=job.apg.norm_threshold if job.apg else 55.0,
    )


def job_schedule(job: RenderJob) -> torch.Tensor:
    return timesteps(job.steps, job.shift)


def job_clips(job: RenderJob, audio_frames: int) -> StreamPlan:
    """The clips of `job` for `audio_frames` of audio (25 fps); PlanError when the audio is too short."""
    try:
        return plan_clips(job.frames, job.motion_frames, audio_frames, streaming=job.mode == "streaming")
    except ValueError as e:
        raise PlanError(f"render job {job.source}: field 'cond_audio': {e}") from None


def job_teacache(job: RenderJob) -> TeaCache | None:
    """A fresh TeaCache for the job (its threshold, its size bucket's coefficients), or None when it is off."""
    if job.teacache is None:
        return None
    return TeaCache(job.teacache.threshold, coefficients_for_size(job.size), job.steps)


@dataclass(frozen=True)
class EvaluationPlan:
    """The DiT evaluations a job will run and skip (see the module docstring)."""

    clips: int
    frames_per_clip: int
    steps: int
    evaluations_per_step: int
    teacache_threshold: float | None = None
    teacache: TeaCachePlan | None = None  # one clip's decisions (every clip makes the same)

    @property
    def evaluations_per_clip(self) -> int:
        """Calls of the DiT per clip, skipped ones included."""
        return self.steps * self.evaluations_per_step

    @property
    def skipped_per_clip(self) -> int:
        return self.teacache.evaluations_skipped if self.teacache is not None else 0

    @property
    def planned(self) -> int:
        return self.clips * (self.evaluations_per_clip - self.skipped_per_clip)

    @property
    def skipped(self) -> int:
        return self.clips * self.skipped_per_clip

    def to_json(self) -> dict[str, Any]:
        return {
            "dit_evaluations_planned": self.planned,
            "dit_evaluations_skipped": self.skipped,
            "clips": self.clips,
            "frames_per_clip": self.frames_per_clip,
            "steps": self.steps,
            "evaluations_per_step": self.evaluations_per_step,
            "teacache": False
            if self.teacache_threshold is None
            else {
                "threshold": self.teacache_threshold,
                "skipped_per_clip": self.skipped_per_clip,
                # the calls (0-based, within a clip) whose blocks are skipped
                "skipped_calls": [i for i, computed in enumerate(self.teacache.computed) if not computed]
                if self.teacache is not None
                else [],
            },
        }


def plan_evaluations(job: RenderJob, clips: StreamPlan, transformer: Any = None) -> EvaluationPlan:
    """The job's evaluation plan; `transformer` (the DiT, for its time embedding) is needed with TeaCache only."""
    guidance = job_guidance(job)
    teacache_plan = None
    if job.teacache is not None:
        if transformer is None:
            raise ValueError("planning TeaCache needs the DiT (its time embedding)")
        teacache_plan = plan_teacache(
            transformer,
            job_schedule(job),
            guidance.evaluations,
            job.teacache.threshold,
            coefficients_for_size(job.size),
        )
    return EvaluationPlan(
        clips=len(clips.clips),
        frames_per_clip=clips.frames_per_clip,
        steps=job.steps,
        evaluations_per_step=guidance.evaluations,
        teacache_threshold=None if job.teacache is None else job.teacache.threshold,
        teacache=teacache_plan,
    )


def dry_run(
    job: RenderJob,
    media: JobMedia,
    volume: LocalVolume,
    manifest: Manifest,
    *,
    dtype: torch.dtype = torch.float32,
) -> EvaluationPlan:
    """The job's evaluation plan without rendering: the DiT alone is loaded (on the CPU), and only with TeaCache.

    dtype: the one the render would use (render_dtype of its device), so the time embedding, and
    with it every decision, is computed as the render computes it.
    """
    clips = job_clips(job, media.audio.num_frames)
    if job.teacache is None:
        return plan_evaluations(job, clips)
    from mt_assets.models.pipeline import load_pipeline_components

    # The originals, never the bf16 repack: the same weights bit for bit, and nothing to verify first.
    components = load_pipeline_components(
        volume, manifest, dtype=dtype, device="cpu", only=["transformer"], repacks=False
    )
    return plan_evaluations(job, clips, components.transformer)
