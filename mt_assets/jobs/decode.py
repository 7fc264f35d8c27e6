"""A job's media decoded and checked against the job: the image, and the speakers prepared.

The sha256 and size of the bytes decoded come with them (`JobMedia.files`, job.json's `media`).

What `parse_job(..., check_media=True)` and every render call before conditioning: a missing or
undecodable file, media over a limit (MT_IMAGE_MAX_PIXELS, MT_AUDIO_MAX_SECONDS,
MT_AUDIO_MIN_SAMPLE_RATE: see media.py), speakers that cannot be mixed, audio too short for `frames`
and a box outside the image are reported here, naming the field, rather than minutes into a render.
A MemoryError is reported the same way, never as a traceback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import PIL.Image

from mt_assets.jobs.audio_prep import PreparedAudio, prepare_multi, prepare_single
from mt_assets.jobs.hashes import decoded, media_section
from mt_assets.jobs.media import MediaError, load_audio, load_image
from mt_assets.jobs.schema import SPEAKERS, JobError, RenderJob, format_number
from mt_assets.waveform import FPS, SAMPLE_RATE, AudioError, num_audio_frames


@dataclass(frozen=True)
class JobMedia:
    """A job's decoded media: the conditioning image (RGB, upright) and the prepared speakers, and
    the sha256 and size of the bytes decoded (job.json's `media` section: hashes.py)."""

    image: PIL.Image.Image
    audio: PreparedAudio
    files: dict[str, Any] = field(default_factory=dict)


def load_job_media(job: RenderJob) -> JobMedia:
    """Decode the image and audio, prepare the speakers, and check them against the job.

    Raises JobError naming the field: a missing or undecodable image or audio, media over a limit
    (checked from the header, before decoding), 'para' speakers of different lengths, audio that
    does not give MORE audio frames than `frames` (the reference asserts it, in streaming mode for
    the first clip), and a bbox that misses the image entirely.
    """
    try:
        image, image_file = decoded(job.cond_image, load_image)
    except MediaError as e:
        raise JobError(job.source, "cond_image", str(e)) from None

    waves: list[np.ndarray | None] = []
    audio_files: list[dict[str, Any] | None] = []
    for name, ref in zip(SPEAKERS, job.cond_audio, strict=False):
        try:
            wave, audio_file = (None, None) if ref is None else decoded(ref, load_audio)
        except MediaError as e:
            raise JobError(job.source, f"cond_audio.{name}", str(e)) from None
        waves.append(wave)
        audio_files.append(audio_file)
    names = [f"{name} {ref}" for name, ref in zip(SPEAKERS, job.cond_audio, strict=False)]
    try:
        if len(waves) == 1:
            assert waves[0] is not None  # parse_job refuses a silent single speaker
            audio = prepare_single(waves[0], source=names[0])
        else:
            audio = prepare_multi(waves[0], waves[1], job.audio_type, sources=(names[0], names[1]))
    except AudioError as e:
        raise JobError(job.source, "cond_audio", str(e)) from None
    except MemoryError:
        raise JobError(
            job.source, "cond_audio", f"{', '.join(names)}: not enough memory to mix them"
        ) from None

    if audio.num_frames <= job.frames:
        # The fewest samples that give frames + 1 audio frames, counted the reference's way
        # (float arithmetic can make (frames + 1) * 640 samples one frame short).
        samples = (job.frames + 1) * SAMPLE_RATE // FPS
        while num_audio_frames(samples) <= job.frames:
            samples += 1
        needed = math.ceil(samples * 1000 / SAMPLE_RATE) / 1000
        combined = " ('add' plays the speakers one after the other)" if job.audio_type == "add" else ""
        raise JobError(
            job.source,
            "cond_audio",
            f"{', '.join(names)}: {len(audio.mix) / SAMPLE_RATE:.3f} s of audio{combined} gives "
            f"{audio.num_frames} audio frames at {FPS} fps; frames {job.frames} needs more than "
            f"{job.frames}, i.e. at least {needed:.3f} s of audio (or fewer frames)",
        )
    if job.bbox is not None:
        for name, (x_min, y_min, x_max, y_max) in zip(SPEAKERS, job.bbox, strict=False):
            # The reference fills mask[x_min:x_max, y_min:y_max]: rows by x, columns by y.
            if x_min >= image.height or y_min >= image.width:
                raise JobError(
                    job.source,
                    f"bbox.{name}",
                    f"[{format_number(x_min)}, {format_number(y_min)}, {format_number(x_max)}, {format_number(y_max)}] lies outside the "
                    f"{image.width}x{image.height} image (x counts rows 0..{image.height}, y columns "
                    f"0..{image.width}, as in the reference)",
                )
    return JobMedia(image=image, audio=audio, files=media_section(image_file, audio_files))
