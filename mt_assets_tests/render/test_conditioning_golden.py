"""Sections C and D of the pipeline golden set: the I2V frame mask and image, speaker masks, size buckets."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mt_assets.render.conditioning import (
    crop_offsets,
    frame_mask,
    latent_speaker_masks,
    preprocess_image,
    resized_size,
    target_size,
)
from mt_assets_tests.golden import requires_pipeline_golden
from mt_assets_tests.render.conftest import golden, max_abs

pytestmark = requires_pipeline_golden


@pytest.mark.parametrize(("frames", "motion"), [(17, 1), (17, 5), (81, 1), (81, 25)])
def test_frame_mask_matches_the_reference(frames: int, motion: int) -> None:
    want = golden("conditioning")[f"msk.frames{frames}_motion{motion}"]
    assert torch.equal(frame_mask(frames, motion, (2, 2)), want)


def test_conditioning_image_is_resized_and_cropped_exactly(pipeline_golden_json) -> None:
    g = golden("conditioning")
    image = Image.fromarray(g["i2v.source_image_u8"].numpy(), "RGB")
    s = pipeline_golden_json["streaming"]
    src = (image.height, image.width)
    assert resized_size(src, (64, 96)) == tuple(s["resized_hw_before_crop"])
    assert crop_offsets(tuple(s["resized_hw_before_crop"]), (64, 96)) == tuple(s["crop_top_left"])
    assert max_abs(preprocess_image(image, (64, 96)), g["i2v.cond_image"]) == 0


@pytest.mark.parametrize("case", ["1spk", "2spk_nobbox", "2spk_bbox"])
def test_speaker_masks_match_the_reference(case: str, pipeline_golden_json) -> None:
    c = pipeline_golden_json["masks"]["cases"][case]
    src = tuple(c["src_hw"])
    target = target_size(src, "multitalk-480")
    assert list(target) == c["bucket_target_hw"]
    assert list(resized_size(src, target)) == c["resized_hw_before_crop"]
    assert list(crop_offsets(resized_size(src, target), target)) == c["crop_top_left"]
    bbox = [c["bbox"]["person1"], c["bbox"]["person2"]] if c["bbox"] else None
    masks = latent_speaker_masks(src, target, c["num_speakers"], bbox)
    assert torch.equal(masks, golden("masks")[f"{case}.ref_target_masks"])
    assert masks.sum(dim=(1, 2)).int().tolist() == c["mask_pixel_counts_latent"]


def test_size_buckets_match_the_reference(pipeline_golden_json) -> None:
    for b in pipeline_golden_json["masks"]["buckets"]:
        src = tuple(b["src_hw"])
        target = target_size(src, "multitalk-480")
        assert list(target) == b["target_hw"], src
        assert list(resized_size(src, target)) == b["resized_hw_before_crop"], src


def test_720_buckets_and_explicit_sizes() -> None:
    assert target_size((1080, 1920), "multitalk-720") == (704, 1280)
    assert target_size((1080, 1920), (96, 64)) == (64, 96)


def test_the_default_negative_prompt_is_the_one_generate_used(pipeline_golden_json) -> None:
    from mt_assets.jobs.schema import DEFAULT_NEGATIVE_PROMPT

    assert pipeline_golden_json["negative_prompt_used"] == DEFAULT_NEGATIVE_PROMPT
