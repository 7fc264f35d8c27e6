"""Section A of the pipeline golden set: the denoising loop of `generate()`, five guidance cases.

Run through `make_denoiser` and `sample`, the functions the renderer calls, on the chained tiny DiT.
"""

from __future__ import annotations

import pytest
import torch

from mt_assets.render.sampler import Guidance, StepRecord, sample, timesteps
from mt_assets_tests.golden import chained_denoiser, requires_dit_golden, requires_pipeline_golden
from mt_assets_tests.render.conftest import golden, max_abs

pytestmark = [requires_pipeline_golden, requires_dit_golden]
ATOL = 2e-4  # README A: fp32 noise floor 6.1e-06 on latents reaching |x| ~ 14.6


@pytest.fixture(scope="module")
def sampler_golden() -> dict[str, torch.Tensor]:
    return golden("sampler")


def test_schedule_is_the_reference_shifted_linspace(sampler_golden) -> None:
    assert torch.equal(timesteps(4, 7.0), sampler_golden["timesteps"])
    # diffusers' default flow-matching schedule would end at 46.76; the reference's ends at 6.958
    assert timesteps(4, 7.0)[-2].item() == pytest.approx(6.958251, abs=1e-5)


def _guidance(case: dict) -> Guidance:
    apg = case["apg"]
    return Guidance(
        text=case["text_guide_scale"],
        audio=case["audio_guide_scale"],
        apg_momentum=apg["momentum"] if apg else None,
        apg_norm_threshold=apg["norm_threshold"] if apg else 55.0,
    )


@pytest.mark.parametrize(
    "name",
    ["a_1spk_cfg", "b_1spk_textguide1", "c_2spk_cfg", "d_1spk_apg", "e_2spk_apg_textguide1_lowthreshold"],
)
def test_sampler_reproduces_every_step(
    name: str, sampler_golden, pipeline_golden_json, dit_inputs, golden_dit
) -> None:
    case = pipeline_golden_json["sampler"]["cases"][name]
    speakers = case["num_speakers"]
    denoise = chained_denoiser(golden_dit, dit_inputs, speakers)
    guidance = _guidance(case)
    assert guidance.evaluations == case["model_evals_per_step"]
    record: list[StepRecord] = []
    final = sample(
        denoise, sampler_golden["noise"], timesteps(case["steps"], case["shift"]), guidance, record=record
    )
    g = {k.removeprefix(f"{name}."): v for k, v in sampler_golden.items() if k.startswith(f"{name}.")}
    assert len(record) == case["steps"]
    for i, step in enumerate(record):
        assert max_abs(step.latent_in, g["trajectory"][i]) <= ATOL, f"step {i}: latent"
        for kind, out in step.outputs.items():
            assert max_abs(out, g[f"out_{kind}"][i]) <= ATOL, f"step {i}: {kind}"
        assert max_abs(step.velocity, g["velocity"][i]) <= ATOL, f"step {i}: velocity"
        for kind, norm in step.apg_norms.items():
            assert norm == pytest.approx(g[f"apg_norm_{kind}"][i].item(), rel=1e-5), f"step {i}: {kind} norm"
    assert set(step.outputs) == {k.removeprefix("out_") for k in g if k.startswith("out_")}
    assert max_abs(final, g["final_latent"]) <= ATOL
    assert max_abs(final, g["trajectory"][-1]) <= ATOL


def test_apg_clamp_is_active_where_the_reference_clamped(sampler_golden, pipeline_golden_json) -> None:
    """Case e's threshold (30) clamps at some steps and not others: the clamp is exercised both ways."""
    norms = sampler_golden["e_2spk_apg_textguide1_lowthreshold.apg_norm_audio"]
    assert (norms > 30).any() and (norms <= 30).any()
