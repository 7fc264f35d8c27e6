"""Where a render's output goes: `<volume>/outputs/<id>/` (video.mp4, poster.png, job.json) or `--out`.

The folder is written by `render.video.write_render_output`; this module only names it, and refuses
before any work when a job would replace an output it did not ask to replace.
"""

from __future__ import annotations

from pathlib import Path

from mt_assets.jobs.schema import RenderJob

OUTPUTS_DIR = "outputs"
# job.json's DiT evaluation counts (render/cost.py), also in `render --json`, the worker's response and
# the renders' Dagster metadata.
EVALUATION_KEYS = ("dit_evaluations_planned", "dit_evaluations_run", "dit_evaluations_skipped")


class OutputExists(FileExistsError):
    """<out_dir>/<job_id> already holds a render and the job does not ask to replace it."""


def output_dir(volume_root: Path, out: Path | None = None) -> Path:
    """`out`, or `<volume>/outputs`."""
    return out if out is not None else volume_root / OUTPUTS_DIR


def check_output_free(job: RenderJob, out_dir: Path) -> None:
    """Refuse before rendering when the job's output exists and the job does not ask to re-render."""
    existing = out_dir / job.id
    if existing.exists() and not job.rerender:
        raise OutputExists(
            f"render job {job.source}: output {existing} exists; set 'rerender: true' in the job to replace it"
        )
