"""Section M of the acceleration golden set: TeaCache as MeiGen's `teacache_init` / `forward` run it.

Run through `make_denoiser`, `sample` and `generate_video` (what the renderer calls) on the chained
tiny DiT; every setting comes from `accel_golden.json`. The reference's counter defect is fixed
(`TeaCache.reset()` per clip and job): where the golden data record the defect (`d`, clip 2 of `f`)
the fixed behaviour the README gives is tested instead.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from mt_assets.render import pipeline
from mt_assets.render.pipeline import ClipTrace, Conditioning, generate_video
from mt_assets.render.sampler import Guidance, StepRecord, sample, timesteps
from mt_assets.render.streaming import plan_clips
from mt_assets.render.teacache import TeaCache, TeaCacheCall, coefficients_for_size, plan_teacache
from mt_assets_tests.golden import (
    ACCEL_GOLDEN_DIR,
    chained_denoiser,
    requires_accel_golden,
    requires_dit_golden,
)
from mt_assets_tests.render.conftest import max_abs

pytestmark = [requires_accel_golden, requires_dit_golden]
ATOL = 2e-4  # README M: latents and outputs atol 2e-4
RTOL = 1e-5  # README M: distances, rescaled distances, accumulators
CLIP_CASES = ["a_480_cfg3", "b_720_cfg3", "c_480_cfg2"]
STREAMING_CASES = ["e_480_cfg3_streaming", "f_480_cfg2_streaming"]
FRAMES_PER_CLIP = 17  # the golden runs' frame_num: 5 latent frames (the stored latents' T)


@pytest.fixture(scope="module")
def accel() -> dict:
    return json.loads((ACCEL_GOLDEN_DIR / "accel_golden.json").read_text())


@pytest.fixture(scope="module")
def tea(accel) -> dict:
    return accel["teacache"]


@pytest.fixture(scope="module")
def tensors() -> dict[str, torch.Tensor]:
    return load_file(str(ACCEL_GOLDEN_DIR / "teacache_golden.safetensors"))


def _case(tensors: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(f"{name}."): v for k, v in tensors.items() if k.startswith(f"{name}.")}


def _cache(case: dict) -> TeaCache:
    return TeaCache(case["teacache_thresh"], coefficients_for_size(case["size"]), case["steps"])


def _noise(case: dict) -> torch.Tensor:
    # The reference's clip noise: CPU torch.randn after manual_seed(seed) (checked against the stored noise)
    return torch.randn(16, 5, 8, 12, generator=torch.Generator().manual_seed(case["seed"]))


def _guidance(case: dict) -> Guidance:
    guidance = Guidance(text=case["text_guide_scale"], audio=case["audio_guide_scale"])
    assert guidance.evaluations == case["evals_per_step"]
    return guidance


def _assert_calls(
    got: list[TeaCacheCall] | tuple[TeaCacheCall, ...], expected: list[dict], what: str
) -> None:
    assert len(got) == len(expected), what
    for call, exp in zip(got, expected, strict=True):
        where = f"{what}: call {exp['call']} (step {exp['step']} {exp['eval']})"
        assert (call.cnt, call.slot, call.computed) == (exp["cnt"], exp["branch"], exp["computed"]), where
        for key in ("rel_l1", "rescaled", "acc_after_add"):
            value = getattr(call, key)
            if exp[key] is None:
                assert value is None, f"{where}: {key}"
            else:
                assert value == pytest.approx(exp[key], rel=RTOL), f"{where}: {key}"
        assert call.acc_after == pytest.approx(exp["acc_after"], rel=RTOL), f"{where}: acc_after"


class RecordingTeaCache(TeaCache):
    """Also keeps the residual each skipped call added (the golden `skip_residual`)."""

    def __post_init__(self) -> None:
        self.skipped_residuals: list[torch.Tensor] = []
        super().__post_init__()

    def decide(self, modulated: torch.Tensor) -> bool:
        compute = super().decide(modulated)
        if not compute:
            residual = self.residual(self.calls[-1].slot)
            assert residual is not None
            self.skipped_residuals.append(residual.clone())
        return compute


def _run_clip(
    case: dict, dit_inputs, golden_dit, cache: TeaCache | None, noise: torch.Tensor
) -> tuple[torch.Tensor, list[StepRecord]]:
    speakers = case["speakers"]
    denoise = chained_denoiser(golden_dit, dit_inputs, speakers, teacache=cache)
    record: list[StepRecord] = []
    final = sample(denoise, noise, timesteps(case["steps"], case["shift"]), _guidance(case), record=record)
    return final, record


# ---------------------------------------------------------------------------- settings
def test_coefficients_by_size_bucket_are_the_reference_tables(accel, tea) -> None:
    tables = accel["teacache_coefficients_use_ret_steps_true"]
    for size, coefficients in tables.items():
        assert list(coefficients_for_size(size)) == coefficients, size
    # WxH sizes use the 480 coefficients, as the job schema's sizes do
    assert coefficients_for_size((640, 480)) == coefficients_for_size("multitalk-480")
    for name, case in tea.items():
        if "steps" not in case:  # d: a second call with c's settings
            continue
        cache = _cache(case)
        assert (cache.ret_steps, cache.cutoff_steps, cache.num_steps) == (
            case["ret_steps"], case["cutoff_steps"], case["num_steps"]
        ), name  # fmt: skip
        assert timesteps(case["steps"], case["shift"]).tolist() == case["timesteps"], name


def test_noise_is_the_reference_draw(tea, tensors) -> None:
    assert torch.equal(_noise(tea["a_480_cfg3"]), tensors["a_480_cfg3.trajectory"][0])
    assert torch.equal(_noise(tea["b_720_cfg3"]), tensors["b_720_cfg3.noise"])
    assert torch.equal(_noise(tea["c_480_cfg2"]), tensors["c_480_cfg2.trajectory"][0])


# ---------------------------------------------------------------------------- planning
@pytest.mark.parametrize("name", CLIP_CASES + STREAMING_CASES)
def test_decisions_are_planned_from_the_schedule_alone(name: str, tea, golden_dit) -> None:
    """e0 depends on t only: the plan (no blocks run) makes the reference's first-clip decisions,
    distances and accumulators included."""
    case = tea[name]
    plan = plan_teacache(
        golden_dit,
        timesteps(case["steps"], case["shift"]),
        case["evals_per_step"],
        case["teacache_thresh"],
        coefficients_for_size(case["size"]),
    )
    first_clip = [c for c in case["calls"] if c["clip"] == 1]
    _assert_calls(plan.calls, first_clip, f"{name} plan")
    assert plan.evaluations_planned == case["steps"] * case["evals_per_step"]
    assert plan.evaluations_skipped == sum(not c["computed"] for c in first_clip)


# ---------------------------------------------------------------------------- clip mode
@pytest.mark.parametrize("name", CLIP_CASES)
def test_clip_reproduces_every_call_and_step(name: str, tea, tensors, dit_inputs, golden_dit) -> None:
    case, g = tea[name], _case(tensors, name)
    cache = RecordingTeaCache(case["teacache_thresh"], coefficients_for_size(case["size"]), case["steps"])
    final, record = _run_clip(case, dit_inputs, golden_dit, cache, _noise(case))
    _assert_calls(cache.calls, case["calls"], name)
    assert cache.evaluations_skipped == case["n_skipped"]
    assert cache.evaluations_run == case["n_calls"] - case["n_skipped"]
    plan = plan_teacache(
        golden_dit,
        timesteps(case["steps"], case["shift"]),
        case["evals_per_step"],
        case["teacache_thresh"],
        coefficients_for_size(case["size"]),
    )
    assert plan.calls == tuple(cache.calls)  # the plan is the sampling run's, distances bit for bit
    if "trajectory" in g:
        for i, step in enumerate(record):
            assert max_abs(step.latent_in, g["trajectory"][i]) <= ATOL, f"{name} step {i}"
    assert max_abs(final, g["final_latent"]) <= ATOL
    if "skip_call_index" in g:  # the skipped calls' outputs and the residuals they reused
        evals = case["evals_per_step"]
        skipped = g["skip_call_index"].tolist()
        assert skipped == [c["call"] for c in case["calls"] if not c["computed"]]
        for k, call in enumerate(skipped):
            exp = case["calls"][call]
            out = record[exp["step"]].outputs[exp["eval"]]
            assert call // evals == exp["step"]
            assert max_abs(out, g["skip_out"][k]) <= ATOL, f"{name} skipped call {call}: output"
            assert max_abs(cache.skipped_residuals[k], g["skip_residual"][k]) <= ATOL, f"{name} call {call}"


def test_teacache_changes_the_result_and_off_is_the_plain_sampler(
    tea, tensors, dit_inputs, golden_dit
) -> None:
    """The skips matter (README sensitivity `teacache_off`), and a threshold nothing reaches changes nothing."""
    case = tea["a_480_cfg3"]
    never = TeaCache(float("-inf"), coefficients_for_size(case["size"]), case["steps"])
    with_nothing_skipped, _ = _run_clip(case, dit_inputs, golden_dit, never, _noise(case))
    assert never.evaluations_skipped == 0
    plain, _ = _run_clip(case, dit_inputs, golden_dit, None, _noise(case))
    assert torch.equal(with_nothing_skipped, plain)
    assert max_abs(plain, tensors["a_480_cfg3.final_latent"]) > 100 * ATOL


def test_second_job_equals_the_first_exactly(tea, tensors, dit_inputs, golden_dit) -> None:
    """Fixed: the reference's second generate() (case d) starts at cnt 24 and skips at t = 1000 with the
    first call's residuals; with reset() it repeats the first call exactly (README M, item 3)."""
    case, second = tea["c_480_cfg2"], tea["d_480_cfg2_second_call"]
    cache = _cache(case)
    first, _ = _run_clip(case, dit_inputs, golden_dit, cache, _noise(case))
    first_calls = list(cache.calls)
    assert cache.cnt == case["cnt_after_run"]  # 2 evaluations: the counter stops mid-rotation
    cache.reset()
    again, _ = _run_clip(case, dit_inputs, golden_dit, cache, _noise(case))
    assert torch.equal(again, first)
    assert cache.calls == first_calls
    assert max_abs(again, tensors["c_480_cfg2.final_latent"]) <= ATOL
    # what the fix removes: the reference's second call decided differently
    assert [c.computed for c in first_calls] != [c["computed"] for c in second["calls"]]


def test_without_reset_the_state_carries_over_as_in_the_reference(
    tea, tensors, dit_inputs, golden_dit
) -> None:
    """The state machine matches the reference across calls too: not resetting reproduces case d."""
    case, second = tea["c_480_cfg2"], tea["d_480_cfg2_second_call"]
    cache = _cache(case)
    _run_clip(case, dit_inputs, golden_dit, cache, _noise(case))
    assert cache.cnt == second["cnt_at_start"]
    n_first = len(cache.calls)
    final, _ = _run_clip(case, dit_inputs, golden_dit, cache, _noise(case))
    _assert_calls(cache.calls[n_first:], second["calls"], "d (not reset)")
    assert cache.cnt == second["cnt_after_run"]
    assert max_abs(final, tensors["d_480_cfg2_second_call.final_latent"]) <= ATOL


# ---------------------------------------------------------------------------- streaming
def _stream(
    name: str, case: dict, g: dict[str, torch.Tensor], dit_inputs, golden_dit, monkeypatch
) -> tuple[TeaCache, list[ClipTrace], list[list[TeaCacheCall]]]:
    """Two clips through `generate_video`, the VAE replaced by the golden run's stand-in latents."""
    speakers = case["speakers"]
    latents = iter([dit_inputs["y"][0, 4:], g["clip2.vae_latent"]])
    monkeypatch.setattr(pipeline, "encode_latent", lambda vae, video: next(latents))
    monkeypatch.setattr(
        pipeline,
        "decode_latent",
        lambda vae, z: torch.zeros(3, 4 * (z.shape[1] - 1) + 1, 8 * z.shape[2], 8 * z.shape[3]),
    )
    embeddings = [dit_inputs["audio_full_emb"][s] for s in range(speakers)]
    cond = Conditioning(
        cond_image=torch.zeros(1, 3, 1, 64, 96),
        context=dit_inputs["context"],
        context_null=dit_inputs["context_null"],
        embeddings=embeddings,
        masks=dit_inputs[f"ref_target_masks_{speakers}spk"],
    )
    plan = plan_clips(FRAMES_PER_CLIP, case["motion_frame"], len(embeddings[0]), streaming=True)
    assert len(plan.clips) == case["clips"]
    cache = _cache(case)
    per_clip: list[list[TeaCacheCall]] = []
    trace: list[ClipTrace] = []

    def on_step(clip: int, clips: int, step: int, steps: int) -> None:
        if step == steps:
            per_clip.append(list(cache.calls))

    generate_video(
        golden_dit,
        None,
        lambda frame: dit_inputs["clip_fea"],
        cond,
        plan,
        _guidance(case),
        timesteps(case["steps"], case["shift"]),
        seed=case["seed"],
        trace=trace,
        teacache=cache,
        on_step=on_step,
    )
    # clip 2's inputs are the reference's
    assert torch.equal(trace[0].noise, g["clip1.noise"]) and torch.equal(trace[1].noise, g["clip2.noise"])
    for s in range(speakers):
        assert torch.equal(trace[1].audio[s], embeddings[s][g["clip2.audio_source_indices"][s]])
    assert torch.equal(
        trace[1].vae_latent[:, : case["motion_latent_frames"]], g["clip2.latent_motion_frames"]
    )
    return cache, trace, per_clip


@pytest.mark.parametrize("name", STREAMING_CASES)
def test_streaming_every_clip_starts_fresh(
    name: str, tea, tensors, dit_inputs, golden_dit, monkeypatch
) -> None:
    """Clip 1 is the reference's; fixed, clip 2 repeats clip 1's decisions (the reference's 2-evaluation
    clip 2 starts mid-rotation at cnt 18: case f's recorded clip 2 is that defect and is not compared)."""
    case, g = tea[name], _case(tensors, name)
    _, trace, per_clip = _stream(name, case, g, dit_inputs, golden_dit, monkeypatch)
    clip1 = [c for c in case["calls"] if c["clip"] == 1]
    clip2 = [c for c in case["calls"] if c["clip"] == 2]
    _assert_calls(per_clip[0], clip1, f"{name} clip 1")
    assert max_abs(trace[0].final_latent, g["clip1.final_latent"]) <= ATOL
    assert [c.computed for c in per_clip[1]] == [c["computed"] for c in clip1]
    assert [c.cnt for c in per_clip[1]] == [c["cnt"] for c in clip1]
    if case["evals_per_step"] == 3:
        # 3 evaluations: the reference's counter wraps to 0 at each clip's end, so its clip 2 is the fixed one
        _assert_calls(per_clip[1], clip2, f"{name} clip 2")
        assert max_abs(trace[1].final_latent, g["clip2.final_latent"]) <= ATOL
    else:
        assert [c["computed"] for c in clip2] != [c["computed"] for c in clip1]  # the defect the fix removes
