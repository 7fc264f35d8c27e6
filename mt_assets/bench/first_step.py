"""Probe: time from a cold start to the first denoising step, in a fresh interpreter.

    python -m mt_assets.bench.first_step VOLUME MANIFEST STRATEGY DTYPE MODE

The parent (mt_assets.bench.cold_start.first_steps) evicts every file first. This process imports
what a render needs (before the clock: imports are not the volume's cost), then starts the clock,
loads the pipeline and renders one small job (a drawn face, 1 s of speech-like audio, 64x48, 5
frames, 2 steps) until the first denoising step is about to start, and stops there. MODE:

    overlap   load_pipeline_components(background=("transformer",)): the encoders load and encode
              the prompt, the audio and the image while the DiT is read (what a worker does)
    serial    every unit loaded, then the encoders run: the order without overlap, for comparison

The last stdout line is one JSON object: first_step_seconds, per-unit load seconds (from the load
reports; in overlap mode the DiT's overlaps the others) and the files each read, when the
foreground load finished.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

MODES = ("overlap", "serial")
JOB = {
    "prompt": "A person talks to the camera.",
    "size": "64x48",
    "frames": 5,
    "steps": 2,
    "seed": 0,
    "id": "first-step",
}


class _FirstStep(Exception):
    """Raised at the first step to stop the render there."""


def main(argv: list[str]) -> int:
    volume_root, manifest_path, strategy, dtype_name, mode = argv
    if mode not in MODES:
        raise SystemExit(f"mode {mode!r}: expected one of {', '.join(MODES)}")
    import torch

    import mt_assets.models.audio
    import mt_assets.models.clip_vision
    import mt_assets.models.dit
    import mt_assets.models.dit_loading
    import mt_assets.models.text_encoder
    import mt_assets.models.tokenizers
    import mt_assets.models.vae  # noqa: F401
    from mt_assets.jobs.decode import load_job_media
    from mt_assets.jobs.schema import parse_job
    from mt_assets.manifest import load_manifest
    from mt_assets.render.pipeline import MultiTalkRenderer
    from mt_assets.tiny.samples import write_face_image, write_speech
    from mt_assets.volume import LocalVolume

    manifest = load_manifest(manifest_path)
    volume = LocalVolume(volume_root)
    dtype = getattr(torch, dtype_name)
    with tempfile.TemporaryDirectory(prefix="mt-first-step-") as tmp:
        folder = Path(tmp)
        write_face_image(folder / "face.png", 160, 120)
        write_speech(folder / "speech.wav", 1.0)
        doc = {**JOB, "cond_image": "face.png", "cond_audio": {"person1": "speech.wav"}}
        job = parse_job(doc, source="first-step probe", base_dir=folder)
        media = load_job_media(job)  # the job's own files, not the volume's: outside the clock

        started = time.perf_counter()
        renderer = MultiTalkRenderer.from_volume(
            volume,
            manifest,
            device="cpu",
            dtype=dtype,
            strategy=strategy,  # type: ignore[arg-type]
            background=("transformer",) if mode == "overlap" else (),
        )
        components = renderer.c
        foreground_done = time.perf_counter() - started
        first_step: dict[str, float] = {}

        def at_first_step(*args: object, **kwargs: object) -> None:
            first_step["seconds"] = time.perf_counter() - started
            raise _FirstStep

        def models_ready() -> None:
            # The first DiT call is the first denoising step: stop the render there.
            components.transformer.forward_reference = at_first_step

        with contextlib.suppress(_FirstStep):
            renderer.render(job, media, on_models_ready=models_ready)
    out = {
        "mode": mode,
        "first_step_seconds": first_step["seconds"],
        "foreground_load_seconds": foreground_done,
        "units": {
            unit: {"seconds": r.seconds, "bytes": r.bytes, "files": list(r.files)}
            for unit, r in components.reports.items()
        },
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
