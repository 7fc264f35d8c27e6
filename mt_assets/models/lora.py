"""Merging LoRA files into the MultiTalk DiT, as MeiGen's `WanLoraWrapper` does (commit c1ad840).

A LoRA file is safetensors with keys in Wan's own naming (`WanModel`'s parameter names, as on the
volume), behind a `diffusion_model.` prefix. Three key families are read; every other key is ignored
and counted with its reason (`IGNORED_*`):

    diffusion_model.<module>.lora_down.weight  [r, in]   with  .lora_up.weight [out, r]
                              -> <module>.weight += (up @ down) * scale     (2-D weights only)
    diffusion_model.<module>.diff_b           -> <module>.bias   += diff_b * scale
    diffusion_model.<module>.diff             -> <module>.weight += diff * scale   (any shape: 1-D norm
                                                 weights, full 2-D weights, the 5-D patch embedding)

Ignored (as the reference does): keys without the `diffusion_model.` prefix (`lora_unet_*`,
`model.diffusion_model.*`, bare `blocks.*`), any other suffix (`.alpha`, `.dora_scale`, PEFT's
`lora_A`/`lora_B`, `.diff_m` modulation deltas), a `lora_down` without its `lora_up` and the other
way round. There is no alpha/rank factor: `.alpha` keys are ignored, so a kohya-style file with
alpha != rank merges at another strength than in kohya/ComfyUI; that is the reference's strength.
Keys are read in sorted order and each registers its target parameter; a later key for the same
target replaces the earlier one (a `q.diff` next to a `q.lora_down/up` pair: the pair wins, since
`...q.diff` sorts first), and the replaced key is reported as ignored.

Dtypes: every LoRA tensor is first cast to the model's load dtype (`dtype`: bf16 on a GPU, float32
on the CPU), then the delta is computed and added in the parameter's own dtype. With bf16 that is
the reference's production merge (its float32 branch, `device == 'cpu'` with a string, is never
taken from `MultiTalkPipeline.__init__`); the parameters our model keeps in float32 (time embedder,
norms, modulation) get a float32 delta of the bf16-cast tensors.

Targets are Wan names; they are mapped to our diffusers-named parameters by `dit_loading`'s
`diffusers_to_reference_key` (with its norm2/norm3 swap). Where the reference crashes
(AttributeError, IndexError, RuntimeError) we refuse before changing any weight, naming the file
and the key: a target that names no parameter (`blocks.N.modulation.diff`, a block the model lacks,
a bias a module does not have), a pair whose shapes do not give the weight's (rank orientation),
a `.diff` of another shape (the reference would broadcast some of these silently). A file none of
whose keys applies is refused too.

Two defects of the reference are fixed, knowingly:
  * it names a LoRA by its file name up to the first dot and reads a name only once, so a second
    `Wan2.1_...` file is never read and the first is applied again with the second scale; here
    every listed file is merged once, with its own scale;
  * `zip(lora_dir, lora_scales)` drops files beyond the number of scales silently; `pair_loras`
    refuses a count mismatch either way.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mt_assets.models.checkpoints import CheckpointError
from mt_assets.models.dit_loading import diffusers_to_reference_key
from mt_assets.models.reading import LoadStrategy, read_safetensors, read_safetensors_header

PREFIX = "diffusion_model."
DOWN, UP, DIFF_B, DIFF = "lora_down.weight", "lora_up.weight", "diff_b", "diff"

IGNORED_NO_PREFIX = "no 'diffusion_model.' prefix"
IGNORED_SUFFIX = "suffix is none of lora_down.weight / diff_b / diff"
IGNORED_UP_ALONE = "lora_up.weight without its lora_down.weight"
IGNORED_DOWN_ALONE = "lora_down.weight without its lora_up.weight"
IGNORED_REPLACED = (
    "its target was registered again by a later key "
    "(keys are read in sorted order; the dict entry is overwritten)"
)


class LoraError(CheckpointError):
    """A LoRA file (or list of them) that cannot be merged: the message names the file and the key."""


@dataclass(frozen=True)
class LoraEntry:
    """One change to one parameter: `target` in Wan's naming, from `keys` (a pair: down, up)."""

    target: str
    keys: tuple[str, ...]

    @property
    def is_pair(self) -> bool:
        return len(self.keys) == 2


@dataclass
class LoraFileReport:
    """What one file did: the entries applied (in the reference's order) and the keys ignored, with why."""

    path: Path
    scale: float
    applied: list[LoraEntry] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (key, reason), keys sorted

    @property
    def ignored_by_reason(self) -> dict[str, int]:
        return dict(Counter(reason for _, reason in self.ignored))

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "scale": self.scale,
            "applied": len(self.applied),
            "ignored": len(self.ignored),
            "ignored_by_reason": self.ignored_by_reason,
        }

    def summary(self) -> str:
        """One log line: `<file> @ <scale>: N weight adjustments, M keys ignored (reason: n, ...)`."""
        line = f"LoRA {self.path.name} @ {self.scale:g}: {len(self.applied)} weight adjustments"
        if not self.ignored:
            return line
        reasons = ", ".join(f"{reason}: {n}" for reason, n in self.ignored_by_reason.items())
        return f"{line}, {len(self.ignored)} keys ignored ({reasons})"


def parse_lora_keys(keys: Iterable[str]) -> tuple[list[LoraEntry], list[tuple[str, str]]]:
    """The reference's key parsing: (entries in its dict order, ignored (key, reason) in sorted key order)."""
    keys = sorted(keys)
    present = set(keys)
    registered: dict[str, LoraEntry] = {}  # target -> entry; a later key replaces, the position stays
    ignored: dict[str, str] = {}
    for key in keys:
        if not key.startswith(PREFIX):
            ignored[key] = IGNORED_NO_PREFIX
            continue
        name = key[len(PREFIX) :]
        if key.endswith(DOWN):
            up = key[: -len(DOWN)] + UP
            if up not in present:
                ignored[key] = IGNORED_DOWN_ALONE
                continue
            entry = LoraEntry(name[: -len(DOWN)] + "weight", (key, up))
        elif key.endswith(UP):
            if key[: -len(UP)] + DOWN not in present:
                ignored[key] = IGNORED_UP_ALONE
            continue  # read with its lora_down
        elif key.endswith(DIFF_B):
            entry = LoraEntry(name[: -len(DIFF_B)] + "bias", (key,))
        elif key.endswith(DIFF):
            entry = LoraEntry(name[: -len(DIFF)] + "weight", (key,))
        else:
            ignored[key] = IGNORED_SUFFIX
            continue
        replaced = registered.get(entry.target)
        if replaced is not None:
            for old in replaced.keys:
                ignored[old] = IGNORED_REPLACED
        registered[entry.target] = entry
    return list(registered.values()), sorted(ignored.items())


def pair_loras(paths: Sequence[str | Path], scales: Sequence[float]) -> list[tuple[Path, float]]:
    """(file, scale) pairs from the reference's two lists; a count mismatch is refused (it would zip silently)."""
    if len(paths) != len(scales):
        raise LoraError(
            f"LoRA files and scales: {len(paths)} file(s) ({', '.join(Path(p).name for p in paths)}) "
            f"and {len(scales)} scale(s) ({', '.join(f'{s:g}' for s in scales)}); give one scale per file"
        )
    return [(Path(p), float(s)) for p, s in zip(paths, scales, strict=True)]


def plan_lora(path: str | Path, model: nn.Module, scale: float = 1.0) -> LoraFileReport:
    """Parse one file's header and check every entry against the model, changing nothing.

    LoraError (naming the file and the key) for a target that is no parameter, shapes that do not
    fit it, or a file none of whose keys applies.
    """
    path = Path(path)
    header = read_safetensors_header(path)
    entries, ignored = parse_lora_keys(header)
    report = LoraFileReport(path, scale, entries, ignored)
    if not entries:
        raise LoraError(
            f"LoRA {path}: none of its {len(header)} keys applies (expected '{PREFIX}<module>.{DOWN}' + "
            f"'.{UP}', '.{DIFF_B}' or '.{DIFF}' keys); {_reasons(report)}"
        )
    params = _reference_parameters(model)
    for entry in entries:
        param = params.get(entry.target)
        if param is None:
            raise LoraError(f"LoRA {path}: key {entry.keys[0]!r}: the DiT has no parameter {entry.target!r}")
        want = tuple(param.shape)
        if entry.is_pair:
            down, up = (tuple(header[k][1]) for k in entry.keys)
            if (
                len(want) != 2
                or len(down) != 2
                or len(up) != 2
                or up[1] != down[0]
                or (up[0], down[1]) != want
            ):
                raise LoraError(
                    f"LoRA {path}: key {entry.keys[0]!r}: lora_up {list(up)} @ lora_down {list(down)} "
                    f"does not give {entry.target} {list(want)} (expected up [out, rank], down [rank, in])"
                )
        else:
            got = tuple(header[entry.keys[0]][1])
            if got != want:
                raise LoraError(
                    f"LoRA {path}: key {entry.keys[0]!r}: shape {list(got)}, expected {list(want)} ({entry.target})"
                )
    return report


def merge_loras(
    model: nn.Module,
    loras: Sequence[tuple[str | Path, float]],
    *,
    dtype: torch.dtype,
    strategy: LoadStrategy | None = None,
) -> list[LoraFileReport]:
    """Merge each (file, scale) into the model's weights in place, in order; one report per file.

    Every file is checked (`plan_lora`) before any weight changes. dtype: the model's load dtype,
    which the LoRA tensors are cast to first (see the module docstring).
    """
    reports = [plan_lora(path, model, scale) for path, scale in loras]
    params = _reference_parameters(model)
    with torch.no_grad():
        for report in reports:
            tensors = read_safetensors(report.path, strategy)
            for entry in report.applied:
                param = params[entry.target]
                parts = [tensors[k].to(dtype).to(device=param.device, dtype=param.dtype) for k in entry.keys]
                if entry.is_pair:
                    down, up = parts
                    delta = (up @ down) * report.scale
                else:
                    delta = parts[0] * report.scale
                param.add_(delta.to(param.dtype))
            del tensors
    return reports


def _reference_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """{Wan name: parameter} for the model's parameters."""
    return {diffusers_to_reference_key(name): p for name, p in model.named_parameters()}


def _reasons(report: LoraFileReport) -> str:
    counts: Mapping[str, int] = report.ignored_by_reason
    return "ignored: " + "; ".join(f"{reason}: {n}" for reason, n in counts.items()) if counts else "no keys"
