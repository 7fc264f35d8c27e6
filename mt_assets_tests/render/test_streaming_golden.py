"""Sections B and I of the pipeline golden set, and the clip bookkeeping of `generate()`.

A streaming render of two clips through `generate_video` (what the renderer runs), with the
chained tiny DiT, the tiny VAE of section E and the reference's fixed text/CLIP stand-ins.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mt_assets.render.conditioning import preprocess_image, target_size
from mt_assets.render.pipeline import ClipTrace, Conditioning, generate_video
from mt_assets.render.sampler import Guidance, timesteps
from mt_assets.render.streaming import plan_clips
from mt_assets_tests.golden import requires_dit_golden, requires_pipeline_golden
from mt_assets_tests.render.conftest import golden, max_abs

pytestmark = [requires_pipeline_golden, requires_dit_golden]
ATOL = 2e-4  # README B: the section-A tolerance on latents
FRAMES_ATOL = 5e-4  # README I: colour-corrected conditioning frames


def _stream(dit_inputs, golden_dit, golden_vae, colour: float) -> tuple[torch.Tensor, list[ClipTrace]]:
    source = golden("conditioning")["i2v.source_image_u8"].numpy()
    image = Image.fromarray(source, "RGB")
    target = target_size((image.height, image.width), (96, 64))  # the golden's one-entry bucket: 64x96
    cond = Conditioning(
        cond_image=preprocess_image(image, target),
        context=dit_inputs["context"],
        context_null=dit_inputs["context_null"],
        embeddings=[dit_inputs["audio_full_emb"][0]],
        masks=dit_inputs["ref_target_masks_1spk"],
    )
    clip_fea = dit_inputs["clip_fea"]
    frames_seen: list[torch.Tensor] = []

    def clip_features(frame: torch.Tensor) -> torch.Tensor:
        frames_seen.append(frame)
        return clip_fea

    plan = plan_clips(17, 5, len(dit_inputs["audio_full_emb"][0]), streaming=True)
    trace: list[ClipTrace] = []
    video = generate_video(
        golden_dit,
        golden_vae,
        clip_features,
        cond,
        plan,
        Guidance(text=5.0, audio=4.0),
        timesteps(3, 7.0),
        seed=131,
        colour_correction=colour,
        trace=trace,
    )
    # CLIP sees the last conditioning frame of each clip: the image, then the last corrected frame
    assert max_abs(frames_seen[0], cond.cond_image[:, :, -1]) == 0
    assert max_abs(frames_seen[1], trace[1].cond_frames[:, :, -1]) == 0
    return video, trace


def _check_clip2(trace: list[ClipTrace], g: dict[str, torch.Tensor], frames_atol: float) -> None:
    clip2 = trace[1]
    assert max_abs(clip2.cond_frames, g["clip2.cond_frames"]) <= frames_atol
    assert max_abs(clip2.vae_latent, g["clip2.vae_latent"]) <= ATOL
    assert max_abs(clip2.vae_latent[:, :2], g["clip2.latent_motion_frames"]) <= ATOL
    assert max_abs(clip2.y, g["clip2.y"]) <= ATOL
    for i, step in enumerate(clip2.steps):
        assert max_abs(step.latent_in, g["clip2.trajectory"][i]) <= ATOL, f"clip 2 step {i}"
    assert max_abs(clip2.final_latent, g["clip2.final_latent"]) <= ATOL
    # the last injection is at t = 0: the motion frames come back exactly
    assert torch.equal(clip2.final_latent[:, :2], clip2.vae_latent[:, :2])


def test_streaming_second_clip_matches_the_reference(dit_inputs, golden_dit, golden_vae) -> None:
    g = golden("streaming")
    video, trace = _stream(dit_inputs, golden_dit, golden_vae, colour=0.0)
    assert len(trace) == 2
    assert max_abs(trace[0].noise, g["clip1.noise"]) == 0  # CPU generator, the reference's draw order
    assert max_abs(trace[1].noise, g["clip2.noise"]) == 0
    assert max_abs(trace[0].y, golden("conditioning")["i2v.y"]) <= ATOL
    assert max_abs(trace[0].final_latent, g["clip1.final_latent"]) <= ATOL
    for i, step in enumerate(trace[1].steps):
        for kind in ("cond", "drop_text", "uncond"):
            assert max_abs(step.outputs[kind], g[f"clip2.out_{kind}"][i]) <= ATOL
        assert max_abs(step.velocity, g["clip2.velocity"][i]) <= ATOL
    _check_clip2(trace, g, ATOL)
    # the audio windows of clip 2 read the flip-extended embedding as the reference does
    expected_audio = dit_inputs["audio_full_emb"][0][g["clip2.audio_source_indices"][0]]
    assert max_abs(trace[1].audio[0], expected_audio) == 0
    # generate() returned 15 frames (len(audio) - 3), all from clip 1: clip 2 is discarded
    assert tuple(video.shape) == (3, 15, 64, 96)


def test_streaming_with_colour_correction_matches_the_reference(dit_inputs, golden_dit, golden_vae) -> None:
    g = golden("streaming_colour")
    video, trace = _stream(dit_inputs, golden_dit, golden_vae, colour=1.0)
    assert max_abs(trace[0].final_latent, golden("streaming")["clip1.final_latent"]) <= ATOL
    _check_clip2(trace, g, FRAMES_ATOL)
    # the output is the corrected clip 1: its frames 12..14 are clip 2's first conditioning frames
    assert tuple(video.shape) == (3, 15, 64, 96)
    assert max_abs(video[None, :, 12:15], trace[1].cond_frames[:, :, :3]) == 0


@pytest.mark.parametrize("case", range(3))
def test_clip_bookkeeping_matches_the_reference(case: int, pipeline_golden_json) -> None:
    o = pipeline_golden_json["streaming"]["orchestration"][case]
    plan = plan_clips(o["frame_num"], o["motion_frame"], o["audio_len"], streaming=True)
    assert len(plan.clips) == o["num_clips"]
    for clip, centres, (first, last) in zip(
        plan.clips, o["clip_audio_center_indices"], o["clip_audio_window_first_last"], strict=True
    ):
        windows = plan.windows(clip)
        assert windows[:, 2].tolist() == centres
        assert windows[0].tolist() == first and windows[-1].tolist() == last
    assert plan.output_frames == o["result_num_frames"]
    assert [list(s) for s in plan.frame_sources()] == o["result_frame_source"]


def test_clip_mode_renders_one_clip_and_needs_more_audio_than_frames() -> None:
    plan = plan_clips(17, 5, 40, streaming=False)
    assert len(plan.clips) == 1 and plan.output_frames == 17 and plan.trim == 0
    with pytest.raises(ValueError, match="17 frames needs more"):
        plan_clips(17, 5, 17, streaming=False)


def test_streaming_covers_audio_longer_than_the_reference_cap() -> None:
    """The reference CLI stops at 1000 frames; a 60 s track is rendered to its end here."""
    plan = plan_clips(81, 25, 1500, streaming=True)
    assert plan.output_frames == 1500 - 3
    assert np.all(np.diff([c.audio_start for c in plan.clips]) == 56)
