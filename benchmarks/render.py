"""Benchmark the render's compute: the MultiTalk DiT's denoising step against stock diffusers.

What it measures, fp32 on CPU, on a "medium" DiT built here with random weights (default: dim 512,
4 heads of 128 (the real head width), ffn 2048, 4 layers; the real T5/CLIP/wav2vec2 widths and
adapter sizes; latent [1, 36, 5, 30, 52], i.e. 1950 video tokens, 512 text + 257 image tokens):

    stock          diffusers' `WanTransformer3DModel.forward`, the same weights (our state dict
                   without the adapter keys, loaded strictly) and the same inputs: one denoising
                   step. The baseline.
    ours           `MultiTalkTransformer3DModel.forward(..., audio=None)`: the reference-exact
                   forward (float64 timestep sinusoid and RoPE rotation, image and text attended
                   separately), no adapter.  Goal: ours / stock <= 1.10.
    ours + audio   the same with one speaker's windowed wav2vec2 features
                   [1, 1 + 4*(F-1), 5, 12, 768]: audio_proj once, then an audio cross-attention in
                   every block. Reported as ours + audio / ours (the adapter's cost; no goal).
                   This is "one DiT evaluation" below.
    ours + audio + LoRA   the same on a copy of ours with a LoRA merged (`merge_loras`, scale 1.0):
                   a file of the FusionX family (`mt_assets.tiny.lora`, rank 4) drawn for this DiT's
                   shapes into a temporary folder. A merge changes weights, not the computation, so
                   lora_eval_ratio = ours + audio + LoRA / ours + audio should be 1 within the noise.
    int8           ours + audio on a copy quantized in-process with optimum-quanto the way MeiGen's
                   published files were made (`quantize(weights=qint8)` on every Linear but the time
                   embedding and time projection, then `freeze`): weight-only int8, float activations.
                   int8_eval_ratio = int8 / ours + audio.
    fp8 fusionx    the LoRA-merged copy quantized the same way with qfloat8 (e4m3fn), as MeiGen's
                   pre-merged `quant_model_fp8_FusionX`. fp8_eval_ratio = fp8 fusionx / ours + audio + LoRA.
                   On the CPU a quantized Linear dequantizes its weight at every call (x @ (scale * data).T):
                   slower here; its win is GPU memory and the bytes a cold start reads, not CPU time.
    low VRAM 0     ours + audio on a copy under render/low_vram.py with budget 0 (MT_PERSISTENT_PARAMS=0:
                   no parameter resident, every layer visits). On the CPU the host is the device, so this
                   measures the hooks' bookkeeping only, not the host-to-GPU copies a GPU run pays:
                   low_vram_eval_ratio = low VRAM 0 / ours + audio. Its output must equal ours + audio's
                   exactly, or the benchmark stops.

Then the DiT evaluations per 81-frame clip, per configuration, times the measured seconds per
evaluation (ours + audio; ours + audio + LoRA for the LoRA presets): the reference default (40 steps x 3),
TeaCache 0.2 and 0.3 (40 x 3 less the calls `plan_teacache` skips on THIS DiT's random time embedding
with the 480 coefficients and the default schedule, shift 7: random weights give distances of
10^3-10^6, so these counts are not the rate on MeiGen's weights), fusionx and lightx2v (the presets'
steps x 2 evaluations at text guidance 1.0). The seconds per clip are at this medium DiT's size and
latent, on this CPU: for comparing configurations, not a forecast of a real render. A skipped TeaCache
call still runs the embeddings and the head; it is counted as free.

Before timing, stock and ours are run once on the same inputs and their outputs compared (they
must agree to float32 rounding, or the benchmark stops: a ratio of two different computations
means nothing). Each variant is warmed up, then the variants run interleaved (stock, ours,
ours + audio, stock, ...) so drift on a shared machine hits all of them alike; the table gives the
median seconds per step (wall) with min, max and the median CPU seconds (all threads).
torch uses --threads threads (default: the cpu count) throughout; no autograd (inference_mode);
OpenMP threads wait passively (OMP_WAIT_POLICY=PASSIVE unless set), see below the imports.

Usage:
    .venv/bin/python benchmarks/render.py             # medium DiT, 2 warm-up + 9 interleaved runs (1-3 min)
    .venv/bin/python benchmarks/render.py --quick     # 2 layers, 1 warm-up + 5 runs (< 1 min)
    .venv/bin/python benchmarks/render.py --json      # one JSON document on stdout, nothing else
The lines printed last: `dit_step_ratio=<ours / stock>`, `audio_adapter_ratio=<ours + audio / ours>`,
`outside_dit_share=...`, `lora_eval_ratio=<ours + audio + LoRA / ours + audio>`, `int8_eval_ratio=`,
`fp8_eval_ratio=`, `low_vram_eval_ratio=` (see above), then
`evals_ratio_fusionx=`, `evals_ratio_lightx2v=`, `evals_ratio_teacache_0.2=`, `evals_ratio_teacache_0.3=`
(evaluations per clip / the reference default's 120).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

# Read by OpenMP when torch loads, so set before the imports below (an OMP_WAIT_POLICY already in
# the environment wins). PASSIVE: idle threads sleep instead of spinning. On a busy 2-core machine
# spinning threads fight the other work for the cores and a step can take 3-5x longer at random,
# worse for the forward with more small parallel ops; passive waiting keeps runs within ~10%.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import diffusers
import torch
from common import BenchmarkError  # benchmarks/common.py
from diffusers.models.transformers.transformer_wan import WanTransformer3DModel
from rich.console import Console
from rich.table import Table

from mt_assets.jobs.schema import DEFAULT_SHIFT, PRESETS
from mt_assets.models.dit import (
    IMAGE_TOKENS,
    MultiTalkTransformer3DModel,
    build_multitalk_transformer,
    is_adapter_key,
    parse_wan_config,
)
from mt_assets.models.lora import merge_loras
from mt_assets.render.low_vram import LowVram
from mt_assets.render.sampler import Guidance, timesteps
from mt_assets.render.teacache import COEFFICIENTS, plan_teacache
from mt_assets.tiny.lora import TINY_LORAS, write_tiny_lora

DIT_STEP_GOAL = 1.10
# Outputs of stock and ours on the same weights and inputs: max |difference| / max |output|.
# Measured ~1e-6 (float32 rounding: diffusers rounds the RoPE and the timestep sinusoid to
# float32 earlier); a wrong weight or a skipped branch gives O(1).
SAME_OUTPUT_TOLERANCE = 1e-4
NOISY_SPREAD = 1.5  # slowest / fastest run of one variant above which the output says so
REFERENCE_STEPS = 40  # the reference default: 40 steps x 3 evaluations per 81-frame clip
TEACACHE_THRESHOLDS = (0.2, 0.3)
LORA = TINY_LORAS[0]  # the FusionX key family (image branch included), drawn for the benchmark's DiT


@dataclass(frozen=True)
class DitSize:
    dim: int
    heads: int
    ffn_dim: int
    layers: int
    latent: tuple[int, int, int]  # latent frames, height, width (before the 1x2x2 patching)

    def wan_config(self) -> dict[str, object]:
        """An original-format Wan config.json dict; the MultiTalk extras keep the reference defaults."""
        return {
            "model_type": "i2v",
            "patch_size": [1, 2, 2],
            "dim": self.dim,
            "ffn_dim": self.ffn_dim,
            "freq_dim": 256,
            "in_dim": 36,
            "num_heads": self.heads,
            "num_layers": self.layers,
            "out_dim": 16,
            "eps": 1e-6,
        }


MEDIUM = DitSize(dim=512, heads=4, ffn_dim=2048, layers=4, latent=(5, 30, 52))
QUICK = DitSize(dim=512, heads=4, ffn_dim=2048, layers=2, latent=MEDIUM.latent)


@dataclass(frozen=True)
class Variant:
    name: str
    seconds: list[float]  # wall seconds per step, one per timed run
    cpu_seconds: list[float]  # process CPU seconds (all threads) per step

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


@dataclass(frozen=True)
class DitStepResult:
    size: DitSize
    shapes: dict[str, list[int]]
    video_tokens: int
    parameters: dict[str, int]
    same_output_error: float  # stock vs ours, max |diff| / max |out|
    audio_effect: float  # ours + audio vs ours, max |diff| / max |out| (must be > 0)
    stock: Variant
    ours: Variant
    ours_audio: Variant
    ours_lora: Variant  # ours + audio with a LoRA merged
    lora: dict[str, object]  # the merged file: keys applied / ignored, its effect on the output
    int8: Variant  # ours + audio, weights quantized to qint8
    fp8_fusionx: Variant  # ours + audio + LoRA, weights quantized to qfloat8
    quantized: dict[str, dict[str, object]]  # per variant: qtype, modules quantized, effect on the output
    low_vram: Variant  # ours + audio under low VRAM, budget 0
    low_vram_stats: dict[str, int]  # its accounting (render/low_vram.py)
    teacache_evaluations: dict[float, int]  # threshold -> evaluations run per clip (plan_teacache)
    teacache_min_rescaled: float  # the smallest rescaled distance TeaCache saw after its warm-up

    @property
    def lora_eval_ratio(self) -> float:
        return self.ours_lora.median / self.ours_audio.median

    @property
    def int8_eval_ratio(self) -> float:
        return self.int8.median / self.ours_audio.median

    @property
    def fp8_eval_ratio(self) -> float:
        return self.fp8_fusionx.median / self.ours_lora.median

    @property
    def low_vram_eval_ratio(self) -> float:
        return self.low_vram.median / self.ours_audio.median

    @property
    def dit_step_ratio(self) -> float:
        return self.ours.median / self.stock.median

    @property
    def audio_adapter_ratio(self) -> float:
        return self.ours_audio.median / self.ours.median


# -- the DiT step --------------------------------------------------------------------------


def build_models(size: DitSize, seed: int) -> tuple[MultiTalkTransformer3DModel, WanTransformer3DModel]:
    """Ours (random init, seeded) and a stock diffusers model holding exactly the same DiT weights."""
    config = size.wan_config()
    torch.manual_seed(seed)
    ours = build_multitalk_transformer(config, device="cpu")
    kwargs, _ = parse_wan_config(config)
    stock = WanTransformer3DModel(**kwargs).eval()
    dit_state = {k: v for k, v in ours.state_dict().items() if not is_adapter_key(k)}
    stock.load_state_dict(dit_state, strict=True)
    return ours, stock


def make_inputs(ours: MultiTalkTransformer3DModel, size: DitSize, seed: int) -> dict[str, torch.Tensor]:
    mt = ours.multitalk_config
    frames, height, width = size.latent
    gen = torch.Generator().manual_seed(seed)
    video_frames = 1 + mt.vae_scale * (frames - 1)
    return {
        "hidden_states": torch.randn(1, 36, frames, height, width, generator=gen),
        "timestep": torch.tensor([937.0]),
        "encoder_hidden_states": torch.randn(1, mt.text_len, mt.text_dim, generator=gen),
        "encoder_hidden_states_image": torch.randn(1, IMAGE_TOKENS, mt.image_dim, generator=gen),
        # One speaker: [S, F_video, audio_window, audio_blocks, audio_channels]
        "audio": torch.randn(
            1, video_frames, mt.audio_window, mt.audio_blocks, mt.audio_channels, generator=gen
        ),
    }


def merged_copy(
    ours: MultiTalkTransformer3DModel, size: DitSize
) -> tuple[MultiTalkTransformer3DModel, dict[str, object]]:
    """A copy of ours with a FusionX-family LoRA (drawn for this DiT's shapes) merged at scale 1.0."""
    import copy
    import tempfile
    from pathlib import Path

    merged = copy.deepcopy(ours)
    with tempfile.TemporaryDirectory(prefix="mt-bench-lora-") as tmp:
        path = Path(tmp) / "bench_lora.safetensors"
        write_tiny_lora(path, LORA, size.wan_config())
        [report] = merge_loras(merged, [(path, 1.0)], dtype=torch.float32)
        info: dict[str, object] = {
            "family": LORA.family,
            "rank": LORA.rank,
            "dtype": str(LORA.dtype).removeprefix("torch."),
            "scale": 1.0,
            "mb": round(path.stat().st_size / 1e6, 2),
            "entries_applied": len(report.applied),
            "keys_ignored": len(report.ignored),
        }
    return merged, info


def quantized_copy(model: MultiTalkTransformer3DModel, qtype: str) -> tuple[MultiTalkTransformer3DModel, int]:
    """A copy of `model` with its Linear weights quantized to `qtype` (qint8 | qfloat8) and frozen, as
    MeiGen's files were made; and how many modules were quantized."""
    import copy

    from optimum.quanto import QTensor

    from mt_assets.tiny.quant import quantize_dit

    quantized = copy.deepcopy(model)
    quantize_dit(quantized, qtype)
    modules = sum(isinstance(getattr(m, "weight", None), QTensor) for m in quantized.modules())
    return quantized, modules


def teacache_evaluations(model: MultiTalkTransformer3DModel) -> tuple[dict[float, int], float]:
    """Per threshold, the evaluations TeaCache runs in one reference-default clip (40 x 3) on this DiT;
    and the smallest rescaled distance it saw (why it skips so little on random weights)."""
    schedule = timesteps(REFERENCE_STEPS, DEFAULT_SHIFT["multitalk-480"])
    out = {}
    rescaled = []
    for threshold in TEACACHE_THRESHOLDS:
        plan = plan_teacache(model, schedule, 3, threshold, COEFFICIENTS["multitalk-480"])
        out[threshold] = plan.evaluations_planned - plan.evaluations_skipped
        rescaled += [c.rescaled for c in plan.calls if c.rescaled is not None]
    return out, min(rescaled, default=float("nan"))


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def interleaved(
    steps: dict[str, Callable[[], torch.Tensor]], warmup: int, repeats: int, console: Console
) -> dict[str, Variant]:
    """Warm every step up, then time them in turn (a, b, c, a, b, c, ...); wall and CPU seconds."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    wall: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(repeats):
        for name, step in steps.items():
            c0, t0 = time.process_time(), time.perf_counter()
            step()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
        console.print(
            f"  run {i + 1}/{repeats}  " + "  ".join(f"{n} {wall[n][-1]:.3f} s" for n in steps),
            highlight=False,
        )
    return {name: Variant(name, wall[name], cpu[name]) for name in steps}


def measure_dit_step(size: DitSize, warmup: int, repeats: int, seed: int, console: Console) -> DitStepResult:
    import copy

    ours, stock = build_models(size, seed)
    merged, lora = merged_copy(ours, size)
    int8, int8_modules = quantized_copy(ours, "qint8")
    fp8, fp8_modules = quantized_copy(merged, "qfloat8")
    low = copy.deepcopy(ours)
    low_vram = LowVram(low, "cpu", 0)
    inputs = make_inputs(ours, size, seed + 1)
    dit_inputs = {k: v for k, v in inputs.items() if k != "audio"}

    def run_stock() -> torch.Tensor:
        return stock(**dit_inputs, return_dict=False)[0]

    def run_ours() -> torch.Tensor:
        return ours(**dit_inputs, return_dict=False)[0]

    def run_ours_audio() -> torch.Tensor:
        return ours(**inputs, return_dict=False)[0]

    def run_ours_lora() -> torch.Tensor:
        return merged(**inputs, return_dict=False)[0]

    def run_int8() -> torch.Tensor:
        return int8(**inputs, return_dict=False)[0]

    def run_fp8() -> torch.Tensor:
        return fp8(**inputs, return_dict=False)[0]

    def run_low_vram() -> torch.Tensor:
        return low(**inputs, return_dict=False)[0]

    with torch.inference_mode():
        reference = run_stock()
        plain = run_ours()
        with_audio = run_ours_audio()
        same = relative_error(plain, reference)
        if not same <= SAME_OUTPUT_TOLERANCE:
            raise BenchmarkError(
                f"stock and ours disagree on the same weights and inputs: max |diff| / max |out| = {same:.2e}, "
                f"expected <= {SAME_OUTPUT_TOLERANCE:g}; the ratio would compare different computations"
            )
        audio_effect = relative_error(with_audio, plain)
        if not audio_effect > 0:
            raise BenchmarkError("ours + audio gave the same output as ours without audio: adapter not run")
        with_lora = run_ours_lora()
        lora["effect"] = relative_error(with_lora, with_audio)
        if not lora["effect"] > 0:
            raise BenchmarkError("ours + audio + LoRA gave the same output as ours + audio: LoRA not merged")
        quantized: dict[str, dict[str, object]] = {
            "int8": {"qtype": "qint8", "modules": int8_modules, "effect": relative_error(run_int8(), with_audio)},
            "fp8 fusionx": {
                "qtype": "qfloat8_e4m3fn", "modules": fp8_modules, "effect": relative_error(run_fp8(), with_lora),
            },
        }  # fmt: skip
        for name, q in quantized.items():
            if not 0 < q["effect"] < 1:  # type: ignore[operator]
                raise BenchmarkError(
                    f"{name}: output changed by {q['effect']:.2e} against float32: not quantized, or broken"
                )
        if not torch.equal(run_low_vram(), with_audio):
            raise BenchmarkError(
                "low VRAM 0 gave another output than ours + audio: it must not change a number"
            )
        steps = {
            "stock": run_stock,
            "ours": run_ours,
            "ours + audio": run_ours_audio,
            "ours + audio + LoRA": run_ours_lora,
            "int8": run_int8,
            "fp8 fusionx": run_fp8,
            "low VRAM 0": run_low_vram,
        }
        variants = interleaved(steps, max(0, warmup - 1), repeats, console)  # the check above was 1 warm-up

    teacache = teacache_evaluations(ours)
    n_adapter = sum(p.numel() for k, p in ours.state_dict().items() if is_adapter_key(k))
    frames, height, width = size.latent
    return DitStepResult(
        size=size,
        shapes={k: list(v.shape) for k, v in inputs.items()},
        video_tokens=frames * (height // 2) * (width // 2),
        parameters={"dit": sum(p.numel() for p in stock.parameters()), "adapter": n_adapter},
        same_output_error=same,
        audio_effect=audio_effect,
        stock=variants["stock"],
        ours=variants["ours"],
        ours_audio=variants["ours + audio"],
        ours_lora=variants["ours + audio + LoRA"],
        lora=lora,
        int8=variants["int8"],
        fp8_fusionx=variants["fp8 fusionx"],
        quantized=quantized,
        low_vram=variants["low VRAM 0"],
        low_vram_stats=low_vram.stats.to_json(),
        teacache_evaluations=teacache[0],
        teacache_min_rescaled=teacache[1],
    )


def dit_step_table(result: DitStepResult) -> Table:
    table = Table(title="DiT denoising step (one forward), fp32, CPU", title_justify="left")
    for column in ("variant", "median s/step", "min", "max", "ratio", "of", "cpu s/step"):
        table.add_column(column, justify="left" if column in ("variant", "of") else "right")
    rows = [
        (result.stock, 1.0, "stock"),
        (result.ours, result.dit_step_ratio, "stock"),
        (result.ours_audio, result.audio_adapter_ratio, "ours"),
        (result.ours_lora, result.lora_eval_ratio, "ours + audio"),
        (result.int8, result.int8_eval_ratio, "ours + audio"),
        (result.fp8_fusionx, result.fp8_eval_ratio, "ours + audio + LoRA"),
        (result.low_vram, result.low_vram_eval_ratio, "ours + audio"),
    ]
    for variant, ratio, of in rows:
        table.add_row(
            variant.name,
            f"{variant.median:.3f}",
            f"{min(variant.seconds):.3f}",
            f"{max(variant.seconds):.3f}",
            f"{ratio:.3f}",
            of,
            f"{statistics.median(variant.cpu_seconds):.3f}",
        )
    return table


# -- the run -------------------------------------------------------------------------------


def conditions_table(args: argparse.Namespace, dit: DitStepResult, load_before: float) -> Table:
    s = dit.size
    table = Table(title="conditions", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row(
        "cpus",
        f"{os.cpu_count()} ({platform.machine()}), torch threads {torch.get_num_threads()}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}",
    )
    table.add_row("load average", f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after (1 min)")
    table.add_row(
        "software",
        f"torch {torch.__version__}, diffusers {diffusers.__version__}, python {platform.python_version()}",
    )
    table.add_row("dtype", "float32, torch.inference_mode, CPU")
    table.add_row(
        "variants",
        "stock = diffusers WanTransformer3DModel.forward; ours = MultiTalkTransformer3DModel.forward, "
        "audio=None; ours + audio = the same with 1 speaker; int8 / fp8 fusionx = ours + audio / + LoRA "
        "with optimum-quanto weight-only qint8 / qfloat8 Linears (time embedding and projection float); "
        "low VRAM 0 = ours + audio under render/low_vram.py, budget 0 (host = device here: hooks only)",
    )
    table.add_row(
        "DiT",
        f"dim {s.dim}, {s.heads} heads x {s.dim // s.heads}, ffn {s.ffn_dim}, {s.layers} layers; "
        f"{dit.parameters['dit'] / 1e6:.1f} M DiT + {dit.parameters['adapter'] / 1e6:.1f} M adapter parameters "
        f"(random, seed {args.seed})",
    )
    table.add_row(
        "video tokens", f"{dit.video_tokens} (latent {s.latent[0]}x{s.latent[1]}x{s.latent[2]}, patch 1x2x2)"
    )
    for name, shape in dit.shapes.items():
        table.add_row(name, str(shape))
    table.add_row("runs", f"{args.warmup} warm-up + {args.repeats} timed per variant, interleaved")
    table.add_row("stock vs ours", f"outputs agree to {dit.same_output_error:.1e} (max |diff| / max |out|)")
    return table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK.layers} layers (same latent), 1 warm-up + 5 runs (< 1 min)",
    )
    parser.add_argument("--layers", type=int, default=None, help=f"DiT blocks (default {MEDIUM.layers})")
    parser.add_argument(
        "--dim", type=int, default=None, help=f"DiT width; heads of 128, ffn 4 x dim (default {MEDIUM.dim})"
    )
    parser.add_argument(
        "--latent",
        type=str,
        default=None,
        help="latent frames,height,width (default {},{},{})".format(*MEDIUM.latent),
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs per variant (default 2)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per variant (default 9)")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: cpu count)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout, nothing else")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else MEDIUM
    latent = base.latent
    if args.latent is not None:
        try:
            f, h, w = (int(x) for x in args.latent.split(","))
        except ValueError:
            parser.error(f"--latent: expected frames,height,width, got {args.latent!r}")
        latent = (f, h, w)
    args.size = DitSize(
        dim=args.dim or base.dim,
        heads=base.heads if args.dim is None else max(1, args.dim // 128),
        ffn_dim=4 * (args.dim or base.dim),
        layers=args.layers or base.layers,
        latent=latent,
    )
    args.render_size = "128x96" if args.quick else "256x192"
    args.render_frames = 17 if args.quick else 33
    args.render_steps = 4 if args.quick else 10
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    args.repeats = args.repeats if args.repeats is not None else (5 if args.quick else 9)
    if args.repeats < 1 or args.warmup < 1 or args.threads < 1:
        parser.error("--repeats, --warmup and --threads must be >= 1")
    if latent[1] % 2 or latent[2] % 2:
        parser.error(f"--latent: height and width must be even (1x2x2 patches), got {args.latent}")
    return args


def dit_step_document(dit: DitStepResult) -> dict[str, object]:
    return {
        "size": asdict(dit.size),
        "shapes": dit.shapes,
        "video_tokens": dit.video_tokens,
        "parameters": dit.parameters,
        "same_output_error": dit.same_output_error,
        "audio_effect": dit.audio_effect,
        "variants": {
            v.name: asdict(v)
            for v in (
                dit.stock,
                dit.ours,
                dit.ours_audio,
                dit.ours_lora,
                dit.int8,
                dit.fp8_fusionx,
                dit.low_vram,
            )
        },
        "dit_step_ratio": dit.dit_step_ratio,
        "audio_adapter_ratio": dit.audio_adapter_ratio,
        "lora": dit.lora,
        "lora_eval_ratio": dit.lora_eval_ratio,
        "quantized": dit.quantized,
        "int8_eval_ratio": dit.int8_eval_ratio,
        "fp8_eval_ratio": dit.fp8_eval_ratio,
        "low_vram": dit.low_vram_stats,
        "low_vram_eval_ratio": dit.low_vram_eval_ratio,
        "teacache_evaluations": {f"{t:g}": n for t, n in dit.teacache_evaluations.items()},
        "teacache_min_rescaled": dit.teacache_min_rescaled,
    }


# -- evaluations per clip ------------------------------------------------------------------


def clip_costs(dit: DitStepResult) -> list[dict[str, object]]:
    """Per configuration: evaluations per 81-frame clip, the s/eval used, seconds per clip, ratio to the reference."""
    plain, merged = dit.ours_audio.median, dit.ours_lora.median
    reference = REFERENCE_STEPS * Guidance(text=5.0, audio=4.0).evaluations
    rows: list[tuple[str, int, float, str]] = [
        ("reference default", reference, plain, f"{REFERENCE_STEPS} steps x 3"),
    ]
    for threshold, evaluations in dit.teacache_evaluations.items():
        rows.append((
            f"teacache {threshold:g}", evaluations, plain,
            f"{REFERENCE_STEPS} x 3 less {reference - evaluations} skipped (random weights: not the real rate)",
        ))  # fmt: skip
    for name, preset in PRESETS.items():
        per_step = Guidance(text=preset.text_guidance, audio=preset.audio_guidance).evaluations
        rows.append(
            (name, preset.steps * per_step, merged, f"{preset.steps} steps x {per_step}, LoRA merged")
        )
    return [
        {
            "configuration": name,
            "evaluations": evaluations,
            "how": how,
            "seconds_per_evaluation": seconds,
            "seconds": evaluations * seconds,
            "evals_ratio": evaluations / reference,
        }
        for name, evaluations, seconds, how in rows
    ]


def print_clip_costs(console: Console, dit: DitStepResult, costs: list[dict[str, object]]) -> None:
    table = Table(
        title="DiT evaluations per 81-frame clip x measured s/eval (this medium DiT, this CPU)",
        title_justify="left",
    )
    for column in ("configuration", "evaluations", "of 120", "s/eval", "seconds per clip", "how"):
        table.add_column(column, justify="left" if column in ("configuration", "how") else "right")
    for row in costs:
        table.add_row(
            str(row["configuration"]),
            str(row["evaluations"]),
            f"{row['evals_ratio']:.3f}",
            f"{row['seconds_per_evaluation']:.3f}",
            f"{row['seconds']:.1f}",
            str(row["how"]),
        )
    console.print(table)
    lora = dit.lora
    console.print(
        f"  LoRA: {lora['family']} family, rank {lora['rank']}, {lora['dtype']}, {lora['mb']} MB, "
        f"{lora['entries_applied']} entries merged, {lora['keys_ignored']} keys ignored; output changed by "
        f"{lora['effect']:.2e} (max |diff| / max |out|); s/eval merged / plain = {dit.lora_eval_ratio:.3f}"
    )
    console.print(
        "  TeaCache counts come from plan_teacache on this DiT's RANDOM time embedding (distances of "
        f"10^3-10^6; the smallest rescaled distance after the warm-up here: {dit.teacache_min_rescaled:.3g}, "
        f"against thresholds {', '.join(f'{t:g}' for t in TEACACHE_THRESHOLDS)}): not the rate on MeiGen's "
        "weights (2-3x faster per its README). "
        "Seconds per clip are at this DiT's size and latent, not a real 480p x 81-frame render.",
        style="yellow",
    )


def print_dit_step(console: Console, dit: DitStepResult) -> None:
    console.print(dit_step_table(dit))
    met = "met" if dit.dit_step_ratio <= DIT_STEP_GOAL else "MISSED"
    min_ratio = min(dit.ours.seconds) / min(dit.stock.seconds)
    console.print(
        f"  goal: ours / stock <= {DIT_STEP_GOAL} {met} (medians; {min_ratio:.3f} on the fastest runs)"
    )
    for name, q in dit.quantized.items():
        console.print(
            f"  {name}: {q['modules']} Linears {q['qtype']} (weights only); output changed by {q['effect']:.2e} "
            "(max |diff| / max |out|) against its float32 model"
        )
    lv = dit.low_vram_stats
    console.print(
        f"  low VRAM 0: {lv['persistent']:,} of {lv['total']:,} parameters resident, at most {lv['peak']:,} on the "
        f"device at once (the largest layer: {lv['largest_offloaded']:,}); output identical. Host = device on "
        "the CPU: the ratio is the hooks' bookkeeping, not host-to-GPU copies (GPU figures: not measured)"
    )
    spread = max(max(v.seconds) / min(v.seconds) for v in (dit.stock, dit.ours, dit.ours_audio))
    if spread > NOISY_SPREAD:
        console.print(
            f"  noisy: the slowest run of a variant took {spread:.1f}x its fastest (other work on the "
            f"cpus?); rerun with more --repeats or when the machine is quiet",
            style="yellow",
        )


def measure_whole_render(size: str, frames: int, steps: int) -> dict[str, object]:
    """One render job end to end on a tiny volume built here: stage seconds, and the DiT's own share.

    The DiT's time is the wall time inside `forward_reference` (every guidance evaluation); the rest
    of `sampling` is the guidance arithmetic and the scheduler. Everything else (media, the text,
    audio and CLIP encoders, the VAE, colour correction, the mp4) is outside the DiT.
    """
    import tempfile
    from pathlib import Path

    import yaml

    from mt_assets import provision
    from mt_assets.jobs.reader import load_job
    from mt_assets.manifest import load_profile
    from mt_assets.render.pipeline import MultiTalkRenderer
    from mt_assets.render.run import render_job
    from mt_assets.sources import MirrorSource
    from mt_assets.tiny.profile import build_tiny_mirror
    from mt_assets.tiny.samples import write_face_image, write_speech
    from mt_assets.volume import LocalVolume

    with tempfile.TemporaryDirectory(prefix="mt-bench-render-") as tmp:
        root = Path(tmp)
        build_tiny_mirror(root / "mirror")
        (root / "volume").mkdir()
        volume = LocalVolume(root / "volume")
        manifest = load_profile("tiny")
        provision.apply(provision.plan(manifest, volume), MirrorSource(root / "mirror"), volume)
        renderer = MultiTalkRenderer.from_volume(volume, manifest, device="cpu")
        dit_seconds = [0.0]
        forward = renderer.c.transformer.forward_reference

        def timed_forward(*a: object, **k: object) -> torch.Tensor:
            started = time.perf_counter()
            try:
                return forward(*a, **k)
            finally:
                dit_seconds[0] += time.perf_counter() - started

        renderer.c.transformer.forward_reference = timed_forward
        write_face_image(root / "face.png", 320, 240)
        write_speech(root / "speech.wav", frames / 25 + 0.5)
        job_file = root / "bench.yaml"
        job_file.write_text(yaml.safe_dump({
            "prompt": "A person talks to the camera.", "cond_image": "face.png",
            "cond_audio": {"person1": "speech.wav"}, "size": size, "frames": frames, "steps": steps,
        }))  # fmt: skip
        started = time.perf_counter()
        result = render_job(load_job(job_file), renderer, manifest, root / "outputs")
        total = time.perf_counter() - started
    stages = dict(result.timings["stages"])
    stages["write"] = round(total - result.timings["seconds"], 4)  # frames to uint8, mp4, poster, json
    return {
        "size": size,
        "frames": frames,
        "steps": steps,
        "evaluations": 3 * steps,
        "seconds": round(total, 3),
        "stages": stages,
        "dit_seconds": round(dit_seconds[0], 3),
        "outside_dit_share": (total - dit_seconds[0]) / total,
    }


def print_whole_render(console: Console, whole: dict[str, object]) -> None:
    table = Table(title=f"whole render (tiny profile, {whole['size']}, {whole['frames']} frames, "
                  f"{whole['steps']} steps)", title_justify="left")  # fmt: skip
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    table.add_column("share", justify="right")
    total = float(whole["seconds"])  # type: ignore[arg-type]
    for stage, seconds in whole["stages"].items():  # type: ignore[union-attr]
        table.add_row(stage, f"{seconds:.2f}", f"{seconds / total:.1%}")
    table.add_row(
        "  of which inside the DiT", f"{whole['dit_seconds']:.2f}", f"{1 - whole['outside_dit_share']:.1%}"
    )
    table.add_row("total", f"{total:.2f}", "100%")
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=args.json, highlight=False)  # with --json, stdout carries only the document
    if not console.is_terminal:
        console.width = 110  # rich assumes 80 columns when piped; the tables need more
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    # Each measurement adds: its section of the JSON document, a function printing its table(s),
    # and its `name=value` result lines (printed last, in order).
    document: dict[str, object] = {}
    reports: list[Callable[[], None]] = []
    results: list[str] = []

    # 1. The DiT step: ours vs stock diffusers, and the audio adapter's cost.
    s = args.size
    console.print(
        f"DiT step: dim {s.dim}, {s.layers} layers, latent {list(s.latent)}, {args.threads} threads",
        style="bold",
    )
    try:
        dit = measure_dit_step(s, args.warmup, args.repeats, args.seed, console)
    except BenchmarkError as e:
        print(f"benchmark aborted: {e}", file=sys.stderr)
        return 1
    document["dit_step"] = dit_step_document(dit)
    reports.append(lambda: print_dit_step(console, dit))
    results += [
        f"dit_step_ratio={dit.dit_step_ratio:.3f}",
        f"audio_adapter_ratio={dit.audio_adapter_ratio:.3f}",
    ]
    costs = clip_costs(dit)
    document["clip_cost"] = costs
    reports.append(lambda: print_clip_costs(console, dit, costs))

    # 2. A whole render on the tiny profile: where the time goes outside the DiT.
    console.print(
        f"whole render: tiny profile, {args.render_size}, {args.render_frames} frames", style="bold"
    )
    whole = measure_whole_render(args.render_size, args.render_frames, args.render_steps)
    document["whole_render"] = whole
    reports.append(lambda: print_whole_render(console, whole))
    results.append(f"outside_dit_share={whole['outside_dit_share']:.3f}")
    # The evaluation-count lines last (the issue's), the LoRA's per-evaluation cost just before them.
    results.append(f"lora_eval_ratio={dit.lora_eval_ratio:.3f}")
    results += [
        f"int8_eval_ratio={dit.int8_eval_ratio:.3f}",
        f"fp8_eval_ratio={dit.fp8_eval_ratio:.3f}",
        f"low_vram_eval_ratio={dit.low_vram_eval_ratio:.3f}",
    ]
    ratios = {str(row["configuration"]): float(row["evals_ratio"]) for row in costs}  # type: ignore[arg-type]
    results += [f"evals_ratio_{name}={ratios[name]:.3f}" for name in PRESETS]
    results += [f"evals_ratio_teacache_{t:g}={ratios[f'teacache {t:g}']:.3f}" for t in TEACACHE_THRESHOLDS]

    if args.json:
        conditions = {
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "python": platform.python_version(),
            "dtype": "float32",
            "load_average": [load_before, os.getloadavg()[0]],
        }
        print(json.dumps({"conditions": conditions, **document}, indent=2))
        return 0
    console.print()
    console.print(conditions_table(args, dit, load_before))
    for report in reports:
        console.print()
        report()
    for line in results:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
