"""The denoising loop of MultiTalk's `generate()`: schedule, guidance, Euler steps, motion-frame injection.

Schedule. `linspace(1000, 1, steps)` in float32, then 0 appended, each value through the reference's
shift transform `1000 * (shift * s) / (1 + (shift - 1) * s)` with s = t / 1000, in float32. The model is
called with t_i; the last value (0) only sets the last step's dt. (diffusers' default
FlowMatchEulerDiscreteScheduler schedule ends elsewhere: 46.76 instead of 6.958 for shift 7.)

Guidance per step, with three DiT evaluations (cond; drop_text = negative prompt + audio;
uncond = negative prompt + one speaker of zero audio):

    pred = uncond + text * (cond - drop_text) + audio * (drop_text - uncond)

or two when the text guidance is 1.0 exactly (`math.isclose`; drop_audio = prompt + zero audio):

    pred = drop_audio + audio * (cond - drop_audio)

With APG (adaptive projected guidance) each difference goes through `apg` with its own momentum
buffer: running average r = diff + momentum * r (momentum -0.75 by default); if ||r|| over the whole
latent exceeds `norm_threshold` it is scaled down to it; then the part parallel to `cond` is removed
(computed in float64). pred = cond + (text - 1) * apg(cond - drop_text) + (audio - 1) * apg(drop_text - uncond),
or cond + (audio - 1) * apg(cond - drop_audio) at text guidance 1.

Euler update on the negated prediction: latent += -pred * (t_i - t_{i+1}) / 1000.

Streaming clips after the first are conditioned on motion frames: their latent's first Tm frames are
replaced by `add_noise(motion_latent, n, t) = (1 - t/1000) * motion_latent + (t/1000) * n` with fresh
noise before the first step (t_0) and after every step (t_{i+1}; the last one, at t = 0, restores the
motion latent exactly).

Random numbers come from one CPU generator in the reference's order (clip noise, then one draw per
injection), so a seed gives the same video on any device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

NUM_TRAIN_TIMESTEPS = 1000


@dataclass(frozen=True)
class Guidance:
    text: float = 5.0
    audio: float = 4.0
    apg_momentum: float | None = None  # None: vanilla CFG
    apg_norm_threshold: float = 55.0

    @property
    def evaluations(self) -> int:
        """DiT evaluations per step: 2 at text guidance 1.0, else 3."""
        return 2 if math.isclose(self.text, 1.0) else 3


# (latent [16, T, h, w], t [1], use_prompt, use_audio) -> prediction [16, T, h, w]
Denoiser = Callable[[torch.Tensor, torch.Tensor, bool, bool], torch.Tensor]


def timesteps(steps: int, shift: float) -> torch.Tensor:
    """[steps + 1] float32: the shifted schedule, ending in 0."""
    raw = np.append(np.linspace(NUM_TRAIN_TIMESTEPS, 1, steps, dtype=np.float32), np.float32(0.0))
    s = torch.from_numpy(raw.astype(np.float32)) / NUM_TRAIN_TIMESTEPS
    return shift * s / (1 + (shift - 1) * s) * NUM_TRAIN_TIMESTEPS


def add_noise(x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    s = t.float() / NUM_TRAIN_TIMESTEPS
    return (1 - s) * x + s * noise


class MomentumBuffer:
    """APG's running average of a guidance difference (starts at 0)."""

    def __init__(self, momentum: float) -> None:
        self.momentum = momentum
        self.average: torch.Tensor | float = 0.0

    def update(self, value: torch.Tensor) -> torch.Tensor:
        self.average = value + self.momentum * self.average
        return self.average  # type: ignore[return-value]


def apg(
    diff: torch.Tensor, cond: torch.Tensor, buffer: MomentumBuffer, norm_threshold: float
) -> tuple[torch.Tensor, float]:
    """(the projected update, ||diff|| after momentum): eta 0, so only the part orthogonal to `cond` stays."""
    diff = buffer.update(diff)
    norm = diff.norm(p=2)
    if norm_threshold > 0:
        diff = diff * torch.clamp(norm_threshold / norm, max=1.0)
    d, c = diff.double(), cond.double()
    unit = c / c.norm(p=2).clamp_min(1e-12)
    orthogonal = d - (d * unit).sum() * unit
    return orthogonal.to(diff.dtype), float(norm)


@dataclass
class StepRecord:
    """What one step computed, for tests and diagnostics (filled only when asked for)."""

    latent_in: torch.Tensor
    outputs: dict[str, torch.Tensor]
    velocity: torch.Tensor
    apg_norms: dict[str, float]


def sample(
    denoise: Denoiser,
    noise: torch.Tensor,
    schedule: torch.Tensor,
    guidance: Guidance,
    *,
    motion_latent: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    on_step: Callable[[int, int], None] | None = None,
    record: list[StepRecord] | None = None,
) -> torch.Tensor:
    """The final latent [16, T, h, w] from `noise` (float32), one denoising step per schedule interval.

    motion_latent: [16, Tm, h, w] for a streaming clip after the first (noise for its injections is
    drawn from `generator`, on the CPU). on_step(done, total) is called after every step.
    """
    latent = noise.clone()
    steps = len(schedule) - 1
    buffers = (
        {"text": MomentumBuffer(guidance.apg_momentum), "audio": MomentumBuffer(guidance.apg_momentum)}
        if guidance.apg_momentum is not None
        else None
    )

    def inject(t: torch.Tensor) -> None:
        assert motion_latent is not None
        fresh = torch.randn(motion_latent.shape, generator=generator, dtype=torch.float32)
        latent[:, : motion_latent.shape[1]] = add_noise(motion_latent, fresh.to(latent.device), t)

    if motion_latent is not None:
        inject(schedule[0:1])
    for i in range(steps):
        t = schedule[i : i + 1].to(latent.device)
        latent_in = latent.clone() if record is not None else latent
        cond = denoise(latent, t, True, True)
        norms: dict[str, float] = {}
        if guidance.evaluations == 2:
            drop_audio = denoise(latent, t, True, False)
            outputs = {"cond": cond, "drop_audio": drop_audio}
            if buffers is None:
                pred = drop_audio + guidance.audio * (cond - drop_audio)
            else:
                update, norms["audio"] = apg(
                    cond - drop_audio, cond, buffers["audio"], guidance.apg_norm_threshold
                )
                pred = cond + (guidance.audio - 1) * update
        else:
            drop_text = denoise(latent, t, False, True)
            uncond = denoise(latent, t, False, False)
            outputs = {"cond": cond, "drop_text": drop_text, "uncond": uncond}
            if buffers is None:
                pred = uncond + guidance.text * (cond - drop_text) + guidance.audio * (drop_text - uncond)
            else:
                threshold = guidance.apg_norm_threshold
                text_update, norms["text"] = apg(cond - drop_text, cond, buffers["text"], threshold)
                audio_update, norms["audio"] = apg(drop_text - uncond, cond, buffers["audio"], threshold)
                pred = cond + (guidance.text - 1) * text_update + (guidance.audio - 1) * audio_update
        velocity = -pred
        dt = (schedule[i] - schedule[i + 1]) / NUM_TRAIN_TIMESTEPS
        latent = latent + velocity * dt.to(latent.device)
        if motion_latent is not None:
            inject(schedule[i + 1 : i + 2])
        if record is not None:
            record.append(StepRecord(latent_in, outputs, velocity, norms))
        if on_step is not None:
            on_step(i + 1, steps)
    return latent
