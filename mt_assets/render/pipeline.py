"""A render, top to bottom: condition, sample, decode, write (MeiGen MultiTalk `generate()`, commit c1ad840).

`MultiTalkRenderer.from_volume(volume, manifest, device=...)` is the one way to build a renderer: the
CLI, the Dagster `renders` asset, the RunPod worker and the benchmarks all call it, so a job is the
same computation whichever of them renders it. It resolves the device (None: CUDA when visible),
the dtype by device (fp32 on the CPU, bf16 on CUDA), switches TF32 off on CUDA (the reference-exact
path), uses the bf16 repacks when they are current and the hash cache vouches for them (else the
originals, with a warning: verifying a repack would hash it), reads the DiT in the background when
the caller wants the first step to overlap the encoders, and records what it resolved
(`RendererSettings`) in every job.json it writes. Then `renderer.render(job)`:

    condition   image -> bucket, resize + centre crop, [-1, 1]          (conditioning.py)
                prompt, negative prompt -> cleaned, tokenized, T5 features cut to their length
                speakers -> loudness-normalised speech -> wav2vec2 embeddings (audio_prep.py)
                speaker masks at the latent grid
    per clip    CLIP features of the last conditioning frame; VAE latent of the conditioning
                frames padded with zeros; y = [frame mask, latent]; noise; the denoising loop
                (sampler.py); VAE decode; colour correction towards the conditioning image
                (colour.py); the last motion frames condition the next clip (streaming.py)
    write       frames to uint8, H.264 + AAC mp4, poster, job.json (video.py)

Per-job settings never reload a model: the guidance, the schedule and, with `teacache`, a fresh
TeaCache for the job's threshold and size bucket (render/cost.py) are built per job, and
`generate_video` resets the TeaCache per clip. Before sampling the job's DiT evaluations are planned
(`plan_evaluations`: TeaCache's decisions follow from the schedule and the time embedding); while
sampling they are counted (`EvaluationCount`); job.json records both.

Device and dtype are parameters: fp32 on the CPU reproduces the reference's numbers; on a GPU bf16
(the reference's param dtype, with TF32 off for its exact path). `t5_cpu` keeps the T5 encoder on the
CPU; `offload` moves each module to the device only while it is used, as the reference's offload does;
`persistent_params` (MT_PERSISTENT_PARAMS, the reference's `--num_persistent_param_in_dit`) keeps that
many DiT parameters on the device and brings the rest from the host one layer at a time (low_vram.py).
Noise comes from a CPU generator, so a seed gives the same video on any device.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from mt_assets import config
from mt_assets.jobs.audio_prep import PreparedAudio
from mt_assets.models.audio import audio_embedding
from mt_assets.models.clip_vision import clip_image_features, clip_preprocess
from mt_assets.models.pipeline import LoadReport, PipelineComponents, load_pipeline_components
from mt_assets.models.text_encoder import encode_text
from mt_assets.models.tokenizers import tokenize_prompts
from mt_assets.models.vae import decode_latent, encode_latent
from mt_assets.progress import NullProgress, Progress
from mt_assets.render.colour import match_and_blend_colors
from mt_assets.render.conditioning import (
    VAE_STRIDE,
    frame_mask,
    latent_speaker_masks,
    motion_latent_frames,
    preprocess_image,
    target_size,
)
from mt_assets.render.cost import (
    EvaluationPlan,
    PlanError,
    job_clips,
    job_guidance,
    job_schedule,
    job_teacache,
    plan_evaluations,
)
from mt_assets.render.low_vram import LowVram, check_budget
from mt_assets.render.sampler import Guidance, StepRecord, sample
from mt_assets.render.streaming import ClipPlan, StreamPlan

if TYPE_CHECKING:
    from mt_assets.jobs.decode import JobMedia
    from mt_assets.jobs.schema import RenderJob
    from mt_assets.manifest import Manifest
    from mt_assets.models.reading import LoadStrategy
    from mt_assets.render.teacache import TeaCache
    from mt_assets.volume import LocalVolume

log = logging.getLogger("mt_assets.render")


class RenderError(RuntimeError):
    """A render that cannot go on: the message names the job and the stage."""


class DeviceError(ValueError):
    """The device asked for cannot be used here (no CUDA device visible, an unknown name)."""


def resolve_device(device: str | None) -> torch.device:
    """`device` as torch names it; None: CUDA when torch sees a device, else the CPU."""
    if device is None or device == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise DeviceError(f"{device!r} is not a device torch knows (cpu, cuda, cuda:N)") from None
    if resolved.type not in ("cpu", "cuda"):
        raise DeviceError(f"{device!r}: renders run on cpu or cuda")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"{device}: no CUDA device is visible to torch")
    return resolved


def render_dtype(device: torch.device) -> torch.dtype:
    """fp32 on the CPU (the reference's numbers), bf16 on CUDA (the reference's param dtype)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


@dataclass(frozen=True)
class RendererSettings:
    """What `from_volume` resolved; recorded as `renderer` in every job.json, whichever entry point rendered."""

    device: str
    dtype: str
    t5_device: str
    offload: bool
    tf32: bool
    load_strategy: str
    persistent_params: int | None = None  # low VRAM's budget (low_vram.py); None: the whole DiT resident

    def to_json(self, components: PipelineComponents | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "device": self.device,
            "dtype": self.dtype,
            "t5_device": self.t5_device,
            "offload": self.offload,
            "tf32": self.tf32,
            "load_strategy": self.load_strategy,
            "persistent_params": self.persistent_params,
        }
        if components is not None:
            # Which repacks were read is known once every unit is in (the DiT may load in the background).
            doc["repacks"] = sorted(r.repack for r in components.reports.values() if r.repack)
        return doc


@dataclass
class Conditioning:
    """What every clip of a render shares."""

    cond_image: torch.Tensor  # [1, 3, 1, H, W] in [-1, 1]
    context: torch.Tensor  # [L, text_dim] T5 features of the prompt (unpadded)
    context_null: torch.Tensor  # [L', text_dim] of the negative prompt
    embeddings: list[torch.Tensor]  # per speaker [audio frames, layers, channels]
    masks: torch.Tensor  # [3, h, w] speaker 1, speaker 2, background


@dataclass
class Timings:
    """Seconds per stage (summed over clips) and per denoising step, in order."""

    stages: dict[str, float] = field(default_factory=dict)
    steps: list[float] = field(default_factory=list)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - started

    def to_json(self) -> dict[str, Any]:
        return {
            "stages": {k: round(v, 4) for k, v in self.stages.items()},
            "steps": [round(s, 4) for s in self.steps],
            "seconds": round(sum(self.stages.values()), 4),
        }


@dataclass
class EvaluationCount:
    """DiT evaluations counted while sampling: run (the blocks ran) and skipped (TeaCache reused a residual)."""

    run: int = 0
    skipped: int = 0


@dataclass
class RenderedVideo:
    video: torch.Tensor  # [3, N, H, W] float32 in [-1, 1]
    audio: PreparedAudio
    plan: StreamPlan
    target_hw: tuple[int, int]
    timings: Timings
    media_files: dict[str, Any] = field(default_factory=dict)  # JobMedia.files: job.json's `media`
    evaluations: EvaluationPlan | None = None  # what the plan said (render/cost.py)
    counted: EvaluationCount = field(default_factory=EvaluationCount)  # what sampling ran

    def evaluations_json(self) -> dict[str, int]:
        """job.json's flat keys: planned and skipped from the plan, run as counted."""
        return {
            "dit_evaluations_planned": self.evaluations.planned if self.evaluations else self.counted.run,
            "dit_evaluations_run": self.counted.run,
            "dit_evaluations_skipped": self.evaluations.skipped if self.evaluations else self.counted.skipped,
        }


def make_denoiser(
    transformer: Any,
    *,
    context: torch.Tensor,
    context_null: torch.Tensor,
    clip_fea: torch.Tensor,
    y: torch.Tensor,
    audio: torch.Tensor,
    masks: torch.Tensor,
    teacache: TeaCache | None = None,
) -> Callable[[torch.Tensor, torch.Tensor, bool, bool], torch.Tensor]:
    """The DiT as the sampler calls it: (latent, t, use_prompt, use_audio) -> prediction.

    Dropped audio is ONE speaker of zeros, also with two speakers (the reference's `zeros_like(a)[-1:]`).
    teacache: the clip's TeaCache state (render/teacache.py), consulted on every call; the caller resets it.
    """
    null_audio = torch.zeros_like(audio)[-1:]
    extra = {} if teacache is None else {"teacache": teacache}

    @torch.no_grad()
    def denoise(latent: torch.Tensor, t: torch.Tensor, use_prompt: bool, use_audio: bool) -> torch.Tensor:
        return transformer.forward_reference(
            latent,
            t,
            context if use_prompt else context_null,
            clip_fea,
            y,
            audio if use_audio else null_audio,
            masks,
            **extra,
        )[0]

    return denoise


def clip_audio(embeddings: list[torch.Tensor], plan: StreamPlan, clip: ClipPlan) -> torch.Tensor:
    """[speakers, F, 5, layers, channels]: each speaker's audio windows for one clip."""
    index = plan.windows(clip)
    return torch.stack([e[index] for e in embeddings])


@dataclass
class ClipTrace:
    """What one clip computed (kept only when a trace is asked for: tests, diagnostics)."""

    cond_frames: torch.Tensor
    noise: torch.Tensor
    vae_latent: torch.Tensor
    y: torch.Tensor
    audio: torch.Tensor
    final_latent: torch.Tensor
    steps: list[StepRecord]


def encode_clip_inputs(
    vae: Any,
    clip_features: Callable[[torch.Tensor], torch.Tensor],
    cond_frames: torch.Tensor,
    frames: int,
    *,
    device: str | torch.device = "cpu",
    timings: Timings | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(CLIP features of the last conditioning frame, VAE latent of the frames zero-padded to `frames`).

    What each clip needs from its conditioning frames before the DiT runs; neither draws random numbers.
    """
    timings = timings or Timings()
    height, width = cond_frames.shape[-2:]
    with timings.stage("clip"):
        clip_fea = clip_features(cond_frames[:, :, -1])
    with timings.stage("vae_encode"):
        padding = cond_frames.new_zeros(1, 3, frames - cond_frames.shape[2], height, width)
        vae_latent = encode_latent(vae, torch.cat([cond_frames, padding], dim=2).to(device))
    return clip_fea, vae_latent


def generate_video(
    transformer: Any,
    vae: Any,
    clip_features: Callable[[torch.Tensor], torch.Tensor],
    cond: Conditioning,
    plan: StreamPlan,
    guidance: Guidance,
    schedule: torch.Tensor,
    *,
    seed: int,
    colour_correction: float = 0.0,
    device: str | torch.device = "cpu",
    timings: Timings | None = None,
    on_step: Callable[[int, int, int, int], None] | None = None,
    trace: list[ClipTrace] | None = None,
    first_clip_inputs: tuple[torch.Tensor, torch.Tensor] | None = None,
    teacache: TeaCache | None = None,
    counted: EvaluationCount | None = None,
) -> torch.Tensor:
    """Every clip of `plan`, decoded and joined: [3, N, H, W] float32 in [-1, 1].

    clip_features(frame [1, 3, H, W]) -> [1, tokens, width]. on_step(clip, clips, step, steps).
    first_clip_inputs: the first clip's `encode_clip_inputs(..., cond.cond_image, ...)`, when the
    caller computed them already (while the DiT was still loading); the same values either way.
    teacache: step skipping (render/teacache.py); reset at the start of every clip, so each clip
    makes the first clip's decisions (the reference carries its call counter over: a defect).
    counted: DiT evaluations run and skipped are added to it, clip by clip.
    """
    timings = timings or Timings()
    generator = torch.Generator().manual_seed(seed)
    frames = plan.frames_per_clip
    height, width = cond.cond_image.shape[-2:]
    latent_hw = (height // VAE_STRIDE[1], width // VAE_STRIDE[2])
    reference = cond.cond_image.clone() if colour_correction > 0 else None
    cond_frames = cond.cond_image
    pieces: list[torch.Tensor] = []
    for clip in plan.clips:
        audio = clip_audio(cond.embeddings, plan, clip).to(device)
        # The noise is drawn on the CPU generator before the VAE encodes (the reference's order);
        # the encoders draw no random numbers, so inputs computed earlier change nothing.
        noise = torch.randn(16, (frames - 1) // VAE_STRIDE[0] + 1, *latent_hw, generator=generator)
        if clip.index == 0 and first_clip_inputs is not None:
            clip_fea, vae_latent = first_clip_inputs
        else:
            clip_fea, vae_latent = encode_clip_inputs(
                vae, clip_features, cond_frames, frames, device=device, timings=timings
            )
        y = torch.cat(
            [frame_mask(frames, clip.cond_frames, latent_hw).to(vae_latent), vae_latent[None]], dim=1
        )
        motion = vae_latent[:, : motion_latent_frames(clip.cond_frames)] if clip.index > 0 else None
        if teacache is not None:
            teacache.reset()
        denoise = make_denoiser(
            transformer,
            context=cond.context,
            context_null=cond.context_null,
            clip_fea=clip_fea,
            y=y,
            audio=audio,
            masks=cond.masks.to(device),
            teacache=teacache,
        )
        calls = [0]

        def counting(*args: Any, denoise: Any = denoise, calls: list[int] = calls) -> torch.Tensor:
            calls[0] += 1
            return denoise(*args)

        records: list[StepRecord] | None = [] if trace is not None else None
        last_step = [time.perf_counter()]

        def step_done(
            step: int, steps: int, clip: ClipPlan = clip, last_step: list[float] = last_step
        ) -> None:
            now = time.perf_counter()
            timings.steps.append(now - last_step[0])
            last_step[0] = now
            if on_step is not None:
                on_step(clip.index, len(plan.clips), step, steps)

        with timings.stage("sampling"):
            latent = sample(
                counting,
                noise.to(device),
                schedule,
                guidance,
                motion_latent=motion,
                generator=generator,
                on_step=step_done,
                record=records,
            )
        if counted is not None:
            skipped = teacache.evaluations_skipped if teacache is not None else 0
            counted.run += calls[0] - skipped
            counted.skipped += skipped
        with timings.stage("vae_decode"):
            video = decode_latent(vae, latent)[None].float().cpu()  # [1, 3, F, H, W]
        if reference is not None:
            with timings.stage("colour_correction"), warnings.catch_warnings():
                # skimage warns for every frame with out-of-gamut pixels, which it clips as the
                # reference does: expected on strong corrections, noise in a render's log.
                warnings.filterwarnings("ignore", "Conversion from CIE-LAB", UserWarning)
                video = match_and_blend_colors(video, reference.cpu(), colour_correction)
        if trace is not None:
            trace.append(ClipTrace(cond_frames, noise, vae_latent, y, audio, latent, records or []))
        pieces.append(video[:, :, clip.keep_from :])
        cond_frames = video[:, :, -plan.motion_frames :].to(device)
    joined = torch.cat(pieces, dim=2)[:, :, : plan.max_frames]
    if plan.trim:
        joined = joined[:, :, : -plan.trim]
    return joined[0]


class MultiTalkRenderer:
    """Renders jobs with loaded components (keep one per worker: loading is the expensive part)."""

    def __init__(
        self,
        components: PipelineComponents,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        t5_cpu: bool = False,
        offload: bool = False,
        load_strategy: str = "",
        persistent_params: int | None = None,
    ) -> None:
        """Renders with components already loaded; build one with `from_volume` unless a test holds them.

        persistent_params: None, the whole DiT on the device; else low VRAM's budget (low_vram.py),
        applied when the DiT is in (it may still be loading in the background).
        """
        if persistent_params is not None:
            check_budget(persistent_params)  # now, not when the first job's DiT is in
        self.c = components
        self.device = torch.device(device)
        self.dtype = dtype
        self.t5_device = torch.device("cpu") if t5_cpu else self.device
        self.offload = offload
        self.persistent_params = persistent_params
        self.low_vram: LowVram | None = None  # set once the DiT is in (`_dit`)
        self.settings = RendererSettings(
            device=str(self.device),
            dtype=str(dtype).removeprefix("torch."),
            t5_device=str(self.t5_device),
            offload=offload,
            tf32=self.device.type == "cuda"
            and (torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32),
            load_strategy=load_strategy,
            persistent_params=persistent_params,
        )
        self._dit()  # now when the DiT is in; else when the first job has waited for it

    @classmethod
    def from_volume(
        cls,
        volume: LocalVolume,
        manifest: Manifest,
        *,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        t5_cpu: bool = False,
        offload: bool = False,
        persistent_params: int | Literal["env"] | None = "env",
        background: Collection[str] = (),
        strategy: LoadStrategy | None = None,
        on_loaded: Callable[[LoadReport], None] | None = None,
    ) -> MultiTalkRenderer:
        """Load every model from the volume and return a renderer: see the module docstring.

        device: cpu, cuda, cuda:N, or None (CUDA when visible); DeviceError when it cannot be used.
        dtype: None (always, for renders): by device. Benchmarks pass bf16 on the CPU to measure
        the GPU path's loads on a machine without one.
        background: units read by a background thread while the caller conditions its first job
        (("transformer",): the first step overlaps the encoders); `render` waits for them.
        strategy: how weight files are read (models/reading.py); None: MT_LOAD_STRATEGY or the default.
        persistent_params: low VRAM's budget, in DiT parameters (low_vram.py); None: the whole DiT on
        the device; "env": MT_PERSISTENT_PARAMS (unset: None). With a budget every model is loaded
        onto the CPU and the encoders go to the device when first used.
        The caller has checked the volume (audit or the worker's start-up check) before calling.
        """
        from mt_assets.models.reading import check_strategy, strategy_from_env
        from mt_assets.models.repack import unvouched_repacks

        resolved = resolve_device(device)
        dtype = dtype or render_dtype(resolved)
        strategy = strategy_from_env() if strategy is None else check_strategy(strategy)
        if persistent_params == "env":
            persistent_params = config.PERSISTENT_PARAMS.read()
        elif persistent_params is not None:
            check_budget(persistent_params)  # before minutes of loading
        if resolved.type == "cuda":
            # The reference-exact path: no TF32 shortcuts in matmuls or convolutions (cuDNN's
            # default is on, which would change every VAE convolution).
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        repacks = True
        if dtype == torch.bfloat16:
            unvouched = unvouched_repacks(manifest, volume)
            for name, why in unvouched.items():
                log.warning(
                    "repack %s is not verified by the hash cache (%s): loading the originals rather than "
                    "hashing it now; verify it once (`mt-assets audit` or the repacks asset's check) to "
                    "have it used",
                    name,
                    why,
                )
            repacks = not unvouched  # load_pipeline_components takes all repacks or none
        components = load_pipeline_components(
            volume,
            manifest,
            dtype=dtype,
            # low VRAM: the DiT's offloaded layers live on the host, so it is loaded there
            device="cpu" if offload or persistent_params is not None else resolved,
            strategy=strategy,
            repacks=repacks,
            on_loaded=on_loaded,
            background=background,
        )
        return cls(
            components,
            device=resolved,
            dtype=dtype,
            t5_cpu=t5_cpu,
            offload=offload,
            load_strategy=strategy,
            persistent_params=persistent_params,
        )

    @contextlib.contextmanager
    def _using(self, module: Any, device: torch.device | None = None) -> Iterator[Any]:
        """`module` on the device while the block runs; back on the CPU afterwards when offloading.

        The DiT under low VRAM is left where it is: its hooks move its layers (`_dit`)."""
        if self.low_vram is not None and module is self.low_vram.model:
            yield module
            return
        device = device or self.device
        module.to(device)
        try:
            yield module
        finally:
            if self.offload and device.type != "cpu":
                module.to("cpu")

    def _dit(self) -> Any:
        """The DiT, with low VRAM set up on it the first time when a budget is set (once it is in)."""
        if self.persistent_params is not None and self.low_vram is None and self.c.transformer is not None:
            self.low_vram = LowVram(self.c.transformer, self.device, self.persistent_params)
            s = self.low_vram.stats
            log.info(
                "low VRAM: %s of %s DiT parameters resident on %s (budget %s); the rest visit per layer",
                f"{s.persistent:,}", f"{s.total:,}", self.device, f"{s.budget:,}",
            )  # fmt: skip
        return self.c.transformer

    # ---- condition -----------------------------------------------------------------------
    def encode_prompts(self, prompt: str, negative_prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = tokenize_prompts(self.c.t5_tokenizer, [prompt, negative_prompt])
        with self._using(self.c.t5, self.t5_device) as t5:
            context, context_null = encode_text(t5, ids, mask)
        return context.to(self.device), context_null.to(self.device)

    def audio_embeddings(self, audio: PreparedAudio) -> list[torch.Tensor]:
        feature_extractor, model = self.c.wav2vec2
        with self._using(model):
            return [audio_embedding(feature_extractor, model, speech) for speech in audio.speeches]

    def clip_features(self, frame: torch.Tensor) -> torch.Tensor:
        """CLIP penultimate-block features of one frame [1, 3, H, W] in [-1, 1]."""
        size = self.c.clip.config.image_size
        with self._using(self.c.clip) as clip, torch.no_grad():
            return clip_image_features(clip, clip_preprocess(frame.to(self.device), size)).to(self.device)

    # ---- render --------------------------------------------------------------------------
    def render(
        self,
        job: RenderJob,
        media: JobMedia | None = None,
        *,
        progress: Progress | None = None,
        on_models_ready: Callable[[], None] | None = None,
    ) -> RenderedVideo:
        """Condition, sample, decode. `on_models_ready` is called once every model is in (background
        loads waited for), just before sampling starts."""
        from mt_assets.jobs.decode import load_job_media

        progress = progress or NullProgress()
        timings = Timings()
        with timings.stage("media"):
            media = media or load_job_media(job)
        image = media.image
        size: str | tuple[int, int] = job.size_wh or job.size
        target_hw = target_size((image.height, image.width), size)
        with timings.stage("text"):
            context, context_null = self.encode_prompts(job.prompt, job.negative_prompt)
        with timings.stage("audio"):
            embeddings = self.audio_embeddings(media.audio)
        audio_frames = min(e.shape[0] for e in embeddings)
        try:
            plan = job_clips(job, audio_frames)
        except PlanError as e:
            raise RenderError(str(e)) from None
        masks = latent_speaker_masks(
            (image.height, image.width), target_hw, len(embeddings), job.bbox
        )  # fmt: skip
        cond = Conditioning(
            cond_image=preprocess_image(image, target_hw).to(self.device),
            context=context,
            context_null=context_null,
            embeddings=embeddings,
            masks=masks,
        )
        guidance = job_guidance(job)
        schedule = job_schedule(job)
        # Per job, never a reload: a fresh TeaCache for the job's threshold and size bucket (None: off).
        teacache = job_teacache(job)
        counted = EvaluationCount()
        progress.start("clips", f"{job.id}: clips", len(plan.clips))
        progress.start("steps", f"{job.id}: steps", job.steps * len(plan.clips))

        def on_step(clip: int, clips: int, step: int, steps: int) -> None:
            progress.advance("steps", 1)
            if step == steps:
                progress.advance("clips", 1)

        # With background loading (load_pipeline_components(background=...)) the DiT may still be
        # coming in: everything above, and the first clip's CLIP and VAE encodings, run meanwhile,
        # so the first step can start as soon as the DiT is in. The wait is its own stage.
        with self._using(self.c.vae):
            first_clip_inputs = encode_clip_inputs(
                self.c.vae, self.clip_features, cond.cond_image, plan.frames_per_clip,
                device=self.device, timings=timings,
            )  # fmt: skip
        if self.c.pending:
            with timings.stage("wait_models"):
                self.c.wait()
        if on_models_ready is not None:
            on_models_ready()
        self._dit()
        with self._using(self.c.transformer), self._using(self.c.vae):
            # The skip decisions follow from the schedule and the time embedding: planned before sampling.
            evaluations = plan_evaluations(job, plan, self.c.transformer)
            video = generate_video(
                self.c.transformer,
                self.c.vae,
                self.clip_features,
                cond,
                plan,
                guidance,
                schedule,
                seed=job.seed,
                colour_correction=job.color_correction,
                device=self.device,
                timings=timings,
                on_step=on_step,
                first_clip_inputs=first_clip_inputs,
                teacache=teacache,
                counted=counted,
            )
        progress.finish("steps")
        progress.finish("clips")
        return RenderedVideo(video, media.audio, plan, target_hw, timings, media.files, evaluations, counted)
