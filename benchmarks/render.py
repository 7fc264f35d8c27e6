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
The last lines printed are `dit_step_ratio=<ours / stock>` and `audio_adapter_ratio=<ours + audio / ours>`.
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

from mt_assets.models.dit import (
    IMAGE_TOKENS,
    MultiTalkTransformer3DModel,
    build_multitalk_transformer,
    is_adapter_key,
    parse_wan_config,
)

DIT_STEP_GOAL = 1.10
# Outputs of stock and ours on the same weights and inputs: max |difference| / max |output|.
# Measured ~1e-6 (float32 rounding: diffusers rounds the RoPE and the timestep sinusoid to
# float32 earlier); a wrong weight or a skipped branch gives O(1).
SAME_OUTPUT_TOLERANCE = 1e-4
NOISY_SPREAD = 1.5  # slowest / fastest run of one variant above which the output says so


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
    ours, stock = build_models(size, seed)
    inputs = make_inputs(ours, size, seed + 1)
    dit_inputs = {k: v for k, v in inputs.items() if k != "audio"}

    def run_stock() -> torch.Tensor:
        return stock(**dit_inputs, return_dict=False)[0]

    def run_ours() -> torch.Tensor:
        return ours(**dit_inputs, return_dict=False)[0]

    def run_ours_audio() -> torch.Tensor:
        return ours(**inputs, return_dict=False)[0]

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
        steps = {"stock": run_stock, "ours": run_ours, "ours + audio": run_ours_audio}
        variants = interleaved(steps, max(0, warmup - 1), repeats, console)  # the check above was 1 warm-up

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
    )


def dit_step_table(result: DitStepResult) -> Table:
    table = Table(title="DiT denoising step (one forward), fp32, CPU", title_justify="left")
    for column in ("variant", "median s/step", "min", "max", "ratio", "of", "cpu s/step"):
        table.add_column(column, justify="left" if column in ("variant", "of") else "right")
    rows = [
        (result.stock, 1.0, "stock"),
        (result.ours, result.dit_step_ratio, "stock"),
        (result.ours_audio, result.audio_adapter_ratio, "ours"),
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
        "audio=None; ours + audio = the same with 1 speaker",
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
        "variants": {v.name: asdict(v) for v in (dit.stock, dit.ours, dit.ours_audio)},
        "dit_step_ratio": dit.dit_step_ratio,
        "audio_adapter_ratio": dit.audio_adapter_ratio,
    }


def print_dit_step(console: Console, dit: DitStepResult) -> None:
    console.print(dit_step_table(dit))
    met = "met" if dit.dit_step_ratio <= DIT_STEP_GOAL else "MISSED"
    min_ratio = min(dit.ours.seconds) / min(dit.stock.seconds)
    console.print(
        f"  goal: ours / stock <= {DIT_STEP_GOAL} {met} (medians; {min_ratio:.3f} on the fastest runs)"
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

    # 2. A whole render on the tiny profile: where the time goes outside the DiT.
    console.print(
        f"whole render: tiny profile, {args.render_size}, {args.render_frames} frames", style="bold"
    )
    whole = measure_whole_render(args.render_size, args.render_frames, args.render_steps)
    document["whole_render"] = whole
    reports.append(lambda: print_whole_render(console, whole))
    results.append(f"outside_dit_share={whole['outside_dit_share']:.3f}")

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
