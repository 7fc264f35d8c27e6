"""Clip bookkeeping of `generate()`: which audio frames each clip reads and which of its frames are kept.

A render is one clip (`clip` mode) or a chain of clips (`streaming`). With F frames per clip and
M motion frames, clip k > 0 starts M frames before clip k-1 ends: its audio starts at k * (F - M), its
first M frames are the previous clip's last M (decoded) frames, and only its frames M.. are kept.

When a clip's audio would end at or past the last audio frame L (`start + F >= min(max_frames, L)`),
the reference marks the next clip as the last one and extends every speaker's embedding once by
miss = start + F - L + 3 frames taken from its end in reverse order (`cat(e, flip(e[-miss:]))`);
windows are clamped to the extended length. After the last clip the output is cut to `max_frames`
and then shortened by `miss` frames, which can discard a trailing clip entirely.

The reference CLI caps streaming at max_frames = 1000 frames (40 s). Here streaming covers the
whole audio: max_frames is at least 1000 and never below what the audio needs, so for audio under
40 s the result is the reference's frame for frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

WINDOW_OFFSETS = (-2, -1, 0, 1, 2)  # audio frames each video frame reads
EXTENSION_EXTRA = 3  # the reference extends the audio 3 frames past what the last clip needs
REFERENCE_MAX_FRAMES = 1000


@dataclass(frozen=True)
class ClipPlan:
    index: int
    audio_start: int  # first audio frame (window centre) of the clip
    cond_frames: int  # conditioning frames: 1 (the image) in the first clip, then the motion frames
    keep_from: int  # frames of this clip before this one are dropped from the output


@dataclass(frozen=True)
class StreamPlan:
    clips: tuple[ClipPlan, ...]
    audio_frames: int  # L: frames of audio embedding
    source_index: torch.Tensor  # [L + extension] int64: embedding frame each (extended) frame reads
    trim: int  # frames cut from the end of the concatenated output (the extension)
    max_frames: int
    frames_per_clip: int
    motion_frames: int

    @property
    def output_frames(self) -> int:
        total = self.frames_per_clip + sum(self.frames_per_clip - c.keep_from for c in self.clips[1:])
        return min(total, self.max_frames) - self.trim

    def windows(self, clip: ClipPlan) -> torch.Tensor:
        """[F, 5] int64 indices into the speaker's (unextended) embedding for `clip`'s audio windows."""
        centres = torch.arange(clip.audio_start, clip.audio_start + self.frames_per_clip)
        offsets = torch.tensor(WINDOW_OFFSETS)
        extended = (centres[:, None] + offsets[None, :]).clamp(0, len(self.source_index) - 1)
        return self.source_index[extended]

    def frame_sources(self) -> list[tuple[int, int]]:
        """For every output frame, the (clip, frame within the clip) it comes from."""
        sources = [(c.index, f) for c in self.clips for f in range(c.keep_from, self.frames_per_clip)]
        return sources[: self.output_frames]


def plan_clips(
    frames: int, motion_frames: int, audio_frames: int, *, streaming: bool, max_frames: int | None = None
) -> StreamPlan:
    """The clips `generate()` renders for `audio_frames` of audio (clip mode: exactly one)."""
    if audio_frames <= frames:
        raise ValueError(f"audio covers {audio_frames} frames; a clip of {frames} frames needs more")
    if not streaming:
        max_frames = frames
    elif max_frames is None:
        max_frames = max(REFERENCE_MAX_FRAMES, audio_frames + frames)
    index = torch.arange(audio_frames)
    clips = [ClipPlan(0, 0, 1, 0)]
    start, trim = 0, 0
    while True:
        start += frames - motion_frames
        end = start + frames
        last = end >= min(max_frames, audio_frames)
        if last:
            miss = end - audio_frames + EXTENSION_EXTRA if end >= audio_frames else 0
            if miss:
                index = torch.cat([index, index[-miss:].flip(0)])
            trim = miss if max_frames > frames else 0
        if max_frames <= frames:
            break
        clips.append(ClipPlan(len(clips), start, motion_frames, motion_frames))
        if last:
            break
    return StreamPlan(tuple(clips), audio_frames, index, trim, max_frames, frames, motion_frames)
