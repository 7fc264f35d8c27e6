"""TeaCache: skip DiT evaluations whose time modulation barely moved (MeiGen's `teacache_init` / `forward`, c1ad840).

What the reference does, reproduced here call for call (`use_ret_steps` is always True from `generate()`):

    the measured tensor   e0 = time_projection(time_embedding(sin(t)))  [1, 6, dim], float32: a
                          function of t and the time-embedding weights only, never of the latent
    slot                  b = ('cond', 'drop_text', 'uncond')[cnt % 3], whatever the evaluation is:
                          with 2 evaluations per step (text guidance 1.0) cond and drop_audio rotate
                          through the three slots, and a slot compares calls three apart
    warm-up               cnt < 15 (calls, not steps) or cnt >= 3 * steps: compute; acc_b = 0
    else                  acc_b += poly1d(coefficients)(mean|e0 - prev_b| / mean|prev_b|)
                          (float32 tensors -> Python float -> float64 polynomial)
                          acc_b < threshold: skip; else compute and acc_b = 0
    always                prev_b = e0 (skipped calls too)
    compute               residual_b = blocks(x) - x       (x: the patch tokens entering block 0)
    skip                  x + residual_b                   (embeddings and head still run)
    after the call        cnt += 1; cnt = 0 when it reaches 3 * steps

Coefficients (highest power first) by size bucket: 'multitalk-720' has its own, 'multitalk-480' and
every WxH size use the 480 ones.

Fixed knowingly: the reference never resets its call counter between `generate()` calls or streaming
clips (`self.cnt += 1` makes an instance attribute that `teacache_init` no longer reaches), so with 2
evaluations per step the next clip or job starts mid-rotation and can skip at t = 1000 with the
previous clip's residuals. Here `reset()` starts every clip and every job fresh: a second job equals
the first exactly and every clip repeats the first clip's decisions.

Because e0 depends on t alone, the decisions of a clip follow from the schedule, the number of
evaluations per step, the threshold and the coefficients: `plan_teacache` computes them without
sampling (what a dry run reports), and the sampling run makes the same ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mt_assets.render.low_vram import compute_device

# use_ret_steps=True tables of `teacache_init`, highest power first.
COEFFICIENTS: dict[str, tuple[float, ...]] = {
    "multitalk-480": (2.57151496e05, -3.54229917e04, 1.40286849e03, -1.35890334e01, 1.32517977e-01),
    "multitalk-720": (8.10705460e03, 2.13393892e03, -3.72934672e02, 1.66203073e01, -4.17769401e-02),
}
RET_STEPS = 5 * 3  # warm-up in DiT calls (5 steps of 3 evaluations; 7.5 steps of 2)
SLOTS = ("cond", "drop_text", "uncond")  # the reference's names for cnt % 3
DEFAULT_THRESHOLD = 0.2  # the reference CLI's --teacache_thresh


def coefficients_for_size(size: str | tuple[int, int]) -> tuple[float, ...]:
    """The rescaling polynomial for a job's size: 'multitalk-720' its own, anything else (480, WxH) the 480 one."""
    return COEFFICIENTS["multitalk-720" if size == "multitalk-720" else "multitalk-480"]


@dataclass(frozen=True)
class TeaCacheCall:
    """One DiT call as TeaCache saw it (distances are None inside the warm-up)."""

    cnt: int
    slot: str  # 'cond' | 'drop_text' | 'uncond': cnt % 3, not the evaluation
    rel_l1: float | None
    rescaled: float | None
    acc_after_add: float | None
    computed: bool
    acc_after: float


@dataclass
class TeaCache:
    """The state of one clip's TeaCache; pass it to `forward_reference(teacache=...)` and `reset()` per clip.

    steps: sampling steps of the clip (the reference's num_steps = cutoff_steps = 3 * steps).
    """

    threshold: float
    coefficients: Sequence[float]
    steps: int
    ret_steps: int = RET_STEPS
    calls: list[TeaCacheCall] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self._polynomial = np.poly1d(list(self.coefficients))
        self.reset()

    @property
    def num_steps(self) -> int:
        return 3 * self.steps

    @property
    def cutoff_steps(self) -> int:
        return 3 * self.steps

    @property
    def evaluations_run(self) -> int:
        return sum(c.computed for c in self.calls)

    @property
    def evaluations_skipped(self) -> int:
        return sum(not c.computed for c in self.calls)

    def reset(self) -> None:
        """Forget counter, accumulators, previous e0 and residuals (start of every clip and job)."""
        self.cnt = 0
        self._acc: list[float] = [0.0, 0.0, 0.0]
        self._previous: list[torch.Tensor | None] = [None, None, None]
        self._residual: list[torch.Tensor | None] = [None, None, None]
        self.calls = []

    def decide(self, modulated: torch.Tensor) -> bool:
        """Whether this call runs the blocks; records the call and updates the slot's previous e0."""
        b = self.cnt % 3
        rel_l1 = rescaled = acc_after_add = None
        if self.cnt < self.ret_steps or self.cnt >= self.cutoff_steps:
            compute = True
            self._acc[b] = 0.0
        else:
            previous = self._previous[b]
            assert previous is not None  # set by the warm-up
            rel_l1 = ((modulated - previous).abs().mean() / previous.abs().mean()).cpu().item()
            rescaled = float(self._polynomial(rel_l1))
            self._acc[b] += rescaled
            acc_after_add = self._acc[b]
            compute = not self._acc[b] < self.threshold
            if compute:
                self._acc[b] = 0.0
        self._previous[b] = modulated.clone()
        self.calls.append(
            TeaCacheCall(self.cnt, SLOTS[b], rel_l1, rescaled, acc_after_add, compute, self._acc[b])
        )
        return compute

    def advance(self) -> None:
        self.cnt += 1
        if self.cnt >= self.num_steps:
            self.cnt = 0

    def run(
        self, x: torch.Tensor, modulated: torch.Tensor, blocks: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """The blocks' output for patch tokens x: run (caching the residual) or the cached residual added."""
        b = self.cnt % 3
        if self.decide(modulated):
            out = blocks(x)  # the blocks never write into x, so x is still their input (the reference clones)
            self._residual[b] = out - x
        else:
            residual = self._residual[b]
            assert residual is not None  # a skip needs a computed call in its slot before it
            out = x + residual
        self.advance()
        return out

    def residual(self, slot: str) -> torch.Tensor | None:
        """The residual cached in a slot (for tests and diagnostics)."""
        return self._residual[SLOTS.index(slot)]


@dataclass(frozen=True)
class TeaCachePlan:
    """The decisions of one clip, computed from the schedule alone."""

    calls: tuple[TeaCacheCall, ...]

    @property
    def computed(self) -> tuple[bool, ...]:
        return tuple(c.computed for c in self.calls)

    @property
    def evaluations_planned(self) -> int:
        return len(self.calls)

    @property
    def evaluations_skipped(self) -> int:
        return sum(not c.computed for c in self.calls)


@torch.no_grad()
def plan_teacache(
    model: Any,
    schedule: torch.Tensor,
    evaluations_per_step: int,
    threshold: float,
    coefficients: Sequence[float],
) -> TeaCachePlan:
    """The skip decisions a clip sampled with `schedule` will make, without running the DiT blocks.

    model: the DiT (`teacache_input(t)` gives the tensor TeaCache measures); schedule: `timesteps(...)`
    ([steps + 1], ending in 0); evaluations_per_step: 3, or 2 at text guidance 1.0.
    """
    steps = len(schedule) - 1
    cache = TeaCache(threshold, coefficients, steps)
    device = compute_device(model)  # with low VRAM its first parameter may be on the host
    for i in range(steps):
        modulated = model.teacache_input(schedule[i : i + 1].to(device))
        for _ in range(evaluations_per_step):
            cache.decide(modulated)
            cache.advance()
    return TeaCachePlan(tuple(cache.calls))
