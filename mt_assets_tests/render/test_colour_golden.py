"""Colour correction against the reference's `match_and_blend_colors` (golden sections H and I's colour step).

Tolerances are the README's: atol 5e-4 on outputs and `corrected_rgb01`, 3e-4 on `ref_lab`/`src_lab`,
2e-3 on `corrected_lab`, atol 1e-4 + rtol 1e-5 on means and stds. With scikit-image 0.26.0 (the
golden's version) the implementation is in fact bit-identical; the tolerances leave room for other
skimage/numpy builds, and every mistake in the README's sensitivity table moves an output by >= 0.03.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mt_assets.render import colour
from mt_assets.render.colour import colour_transfer, match_and_blend_colors
from mt_assets_tests.golden import PIPELINE_GOLDEN_DIR, requires_pipeline_golden

pytestmark = requires_pipeline_golden

OUT_ATOL = 5e-4
LAB_ATOL = 3e-4
CORRECTED_LAB_ATOL = 2e-3
STATS_ATOL, STATS_RTOL = 1e-4, 1e-5
BLACK_FRAME = 3  # section H: all -1, every Lab channel has std exactly 0
PATCH_FRAME = 2  # section H: 15 pixels get negative Z in lab2rgb


@pytest.fixture(scope="module")
def golden_h() -> dict[str, torch.Tensor]:
    return load_file(PIPELINE_GOLDEN_DIR / "colour_golden.safetensors")


@pytest.fixture(scope="module")
def golden_i() -> dict[str, torch.Tensor]:
    return load_file(PIPELINE_GOLDEN_DIR / "streaming_colour_golden.safetensors")


def _close(
    actual: np.ndarray | torch.Tensor, expected: torch.Tensor, *, atol: float, rtol: float = 0.0
) -> None:
    actual = torch.as_tensor(actual)
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


@pytest.mark.filterwarnings("ignore:Conversion from CIE-LAB:UserWarning")
@pytest.mark.parametrize("strength", [1.0, 0.5, 0.25])
def test_output_matches_reference_at_each_strength(golden_h, strength):
    out = match_and_blend_colors(golden_h["input.video"], golden_h["input.reference"], strength)
    _close(out, golden_h[f"out_strength_{strength}"], atol=OUT_ATOL)


@pytest.mark.filterwarnings("ignore:Conversion from CIE-LAB:UserWarning")
def test_every_intermediate_matches_reference(golden_h):
    d = colour_transfer(golden_h["input.video"], golden_h["input.reference"], 1.0)
    assert d is not None and d.failed_frames == ()
    _close(d.ref_lab, golden_h["ref_lab"], atol=LAB_ATOL)
    _close(d.src_lab, golden_h["src_lab"], atol=LAB_ATOL)
    for name in ("ref_lab_mean", "ref_lab_std", "src_lab_mean", "src_lab_std"):
        _close(getattr(d, name), golden_h[name], atol=STATS_ATOL, rtol=STATS_RTOL)
    _close(d.corrected_lab, golden_h["corrected_lab"], atol=CORRECTED_LAB_ATOL)
    _close(d.corrected_rgb01, golden_h["corrected_rgb01"], atol=OUT_ATOL)


def test_strength_zero_returns_the_input_object_itself(golden_h):
    video = golden_h["input.video"]  # has values outside [-1,1]: a copy would show as a clip
    assert match_and_blend_colors(video, golden_h["input.reference"], 0.0) is video


@pytest.mark.parametrize("strength", [-0.1, 1.5, float("nan")])
def test_strength_outside_unit_interval_is_rejected(golden_h, strength):
    with pytest.raises(ValueError, match="strength must be in"):
        match_and_blend_colors(golden_h["input.video"], golden_h["input.reference"], strength)


@pytest.mark.filterwarnings("ignore:Conversion from CIE-LAB:UserWarning")
def test_flat_black_frame_takes_the_reference_mean_colour(golden_h):
    d = colour_transfer(golden_h["input.video"], golden_h["input.reference"], 1.0)
    assert np.all(d.src_lab_std[BLACK_FRAME] == 0)
    expected = np.broadcast_to(d.ref_lab_mean, d.corrected_lab[BLACK_FRAME].shape)
    np.testing.assert_array_equal(d.corrected_lab[BLACK_FRAME], expected)


def test_negative_z_is_reported_by_skimage_as_in_the_reference(golden_h):
    with pytest.warns(UserWarning, match="15 negative Z values"):
        match_and_blend_colors(golden_h["input.video"], golden_h["input.reference"], 1.0)


@pytest.mark.filterwarnings("ignore:Conversion from CIE-LAB:UserWarning")
def test_a_frame_corrected_alone_equals_it_corrected_inside_the_clip(golden_h):
    video, reference = golden_h["input.video"], golden_h["input.reference"]
    whole = match_and_blend_colors(video, reference, 1.0)
    alone = match_and_blend_colors(video[:, :, 1:2], reference, 1.0)
    torch.testing.assert_close(alone, whole[:, :, 1:2], atol=0, rtol=0)


def test_output_keeps_the_input_dtype_and_float64_agrees(golden_h):
    video, reference = golden_h["input.video"].double(), golden_h["input.reference"].double()
    with pytest.warns(UserWarning):
        out = match_and_blend_colors(video, reference, 1.0)
    assert out.dtype == torch.float64
    # Computed in float32 like the reference, so float64 input changes nothing beyond the cast.
    torch.testing.assert_close(out.float(), golden_h["out_strength_1.0"], atol=OUT_ATOL, rtol=0)


def test_bfloat16_input_fails_like_the_reference(golden_h):
    with pytest.raises(TypeError):
        match_and_blend_colors(golden_h["input.video"].bfloat16(), golden_h["input.reference"], 1.0)


def test_wrong_shapes_name_what_was_expected(golden_h):
    with pytest.raises(ValueError, match=r"video must be \[1,3,T,H,W\], got \[3, 5, 32, 44\]"):
        match_and_blend_colors(golden_h["input.video"][0], golden_h["input.reference"], 1.0)
    with pytest.raises(ValueError, match=r"reference must be \[1,3,1,H,W\]"):
        match_and_blend_colors(golden_h["input.video"], golden_h["input.video"], 1.0)


def test_reference_that_skimage_rejects_leaves_the_video_unchanged(golden_h, monkeypatch):
    def reject(_rgb):
        raise ValueError("bad image")

    monkeypatch.setattr(colour.color, "rgb2lab", reject)
    video = golden_h["input.video"]
    assert match_and_blend_colors(video, golden_h["input.reference"], 1.0) is video


@pytest.mark.filterwarnings("ignore:Conversion from CIE-LAB:UserWarning")
def test_frame_that_skimage_rejects_passes_through_as_its_clipped_source(golden_h, monkeypatch):
    real = colour.color.lab2rgb
    calls = iter(range(100))

    def reject_second_frame(lab):
        if next(calls) == 1:
            raise ValueError("bad frame")
        return real(lab)

    monkeypatch.setattr(colour.color, "lab2rgb", reject_second_frame)
    video = golden_h["input.video"]
    out = match_and_blend_colors(video, golden_h["input.reference"], 1.0)
    clipped = ((video[:, :, 1] + 1.0) / 2.0).clamp(0, 1) * 2.0 - 1.0
    torch.testing.assert_close(out[:, :, 1], clipped, atol=0, rtol=0)
    others = [0, 2, 3, 4]
    _close(out[:, :, others], golden_h["out_strength_1.0"][:, :, others], atol=OUT_ATOL)


def test_streaming_tail_corrected_becomes_clip2_conditioning_frames(golden_i):
    tail, reference = golden_i["clip1.decoded_tail"], golden_i["original_color_reference"]
    _close(match_and_blend_colors(tail, reference, 1.0), golden_i["clip2.cond_frames"], atol=OUT_ATOL)
    d = colour_transfer(tail, reference, 1.0)
    _close(d.src_lab_mean, golden_i["clip2.cond_frames_lab_mean"], atol=STATS_ATOL, rtol=STATS_RTOL)
    _close(d.src_lab_std, golden_i["clip2.cond_frames_lab_std"], atol=STATS_ATOL, rtol=STATS_RTOL)
    _close(d.ref_lab_mean, golden_i["reference_lab_mean"], atol=STATS_ATOL, rtol=STATS_RTOL)
    _close(d.ref_lab_std, golden_i["reference_lab_std"], atol=STATS_ATOL, rtol=STATS_RTOL)
