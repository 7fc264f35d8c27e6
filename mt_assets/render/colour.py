"""Colour correction of decoded clips towards the conditioning image (the reference's `match_and_blend_colors`).

MultiTalk's decoded clips drift in colour, and in streaming mode the drift compounds because
each clip's last frames condition the next. With `color_correction_strength > 0` the pipeline
corrects every decoded clip, before its tail becomes the next clip's conditioning frames, towards
`original_color_reference`: the preprocessed conditioning image, taken once and never updated.

Shapes and ranges:

    video      [1,3,T,H,W] float in [-1,1] (values outside are clipped first)
    reference  [1,3,1,H',W'] float in [-1,1]; H',W' need not equal H,W (only its statistics are used)
    strength   in [0,1]; 0 returns `video` itself (same object, no copy, no clip, no dtype change)

Per frame, on CPU numpy float32 (the reference's precision; float64 would differ by up to ~1e-4):

    frame01 = clip((x + 1)/2, 0, 1)                       [H,W,3] sRGB
    lab     = skimage rgb2lab(frame01)                     D65, float32 in -> float32 out
    per Lab channel j, against the reference's whole-image statistics (population std, ddof 0):
        lab[..., j] = (lab[..., j] - m_s) * (s_r / s_s) + m_r      or m_r when s_s == 0 exactly
    full    = clip(skimage lab2rgb(lab), 0, 1)             lab2rgb clips negative Z with a UserWarning
    out01   = (1 - strength) * frame01 + strength * full   blended in sRGB [0,1], not in Lab
    out     = out01 * 2 - 1, back to [1,3,T,H,W] in the input dtype

Statistics are per frame (each frame against the whole reference), never over the clip, so a
frame corrected alone equals the same frame corrected inside its clip.

A `ValueError` from a skimage conversion is not fatal, as in the reference: if the reference
cannot be converted the video is returned unchanged (the same object), and a frame that cannot be
converted is passed through as its clipped [0,1] source. Only float dtypes numpy can hold are
accepted (the pipeline passes float32); bfloat16 raises `TypeError`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from skimage import color


@dataclass(frozen=True)
class ColourTransfer:
    """Every intermediate of one `match_and_blend_colors` call (numpy float32), for tests and diagnostics.

    `src_*`, `corrected_*` and `output01` hold one entry per frame; a frame whose conversion raised
    `ValueError` has NaN statistics and Lab and its clipped source as `corrected_rgb01`/`output01`.
    """

    ref_lab: np.ndarray  # [H',W',3] rgb2lab of the clipped [0,1] reference
    ref_lab_mean: np.ndarray  # [3]
    ref_lab_std: np.ndarray  # [3] population std
    src_lab: np.ndarray  # [T,H,W,3] rgb2lab of each clipped [0,1] frame
    src_lab_mean: np.ndarray  # [T,3]
    src_lab_std: np.ndarray  # [T,3]
    corrected_lab: np.ndarray  # [T,H,W,3] Lab after the transfer (input of lab2rgb)
    corrected_rgb01: np.ndarray  # [T,H,W,3] clip(lab2rgb(corrected_lab), 0, 1): the full correction
    output01: np.ndarray  # [T,H,W,3] the blend, in [0,1]
    failed_frames: tuple[int, ...]  # frames passed through because skimage raised ValueError


def match_and_blend_colors(video: torch.Tensor, reference: torch.Tensor, strength: float) -> torch.Tensor:
    """Match each frame's Lab mean/std to `reference` and blend by `strength`; see the module docstring."""
    _check_strength(strength)
    if strength == 0.0:
        return video
    details = colour_transfer(video, reference, strength)
    if details is None:
        return video
    out = torch.from_numpy(details.output01 * 2.0 - 1.0)  # [T,H,W,3]
    return out.permute(3, 0, 1, 2).unsqueeze(0).contiguous().to(video.dtype)


def colour_transfer(video: torch.Tensor, reference: torch.Tensor, strength: float) -> ColourTransfer | None:
    """The computation of `match_and_blend_colors` with its intermediates; None if the reference fails to convert.

    Unlike `match_and_blend_colors` this computes everything even at strength 0.
    """
    _check_strength(strength)
    if video.ndim != 5 or video.shape[0] != 1 or video.shape[1] != 3:
        raise ValueError(f"colour correction: video must be [1,3,T,H,W], got {list(video.shape)}")
    if reference.ndim != 5 or reference.shape[0] != 1 or reference.shape[1] != 3 or reference.shape[2] != 1:
        raise ValueError(f"colour correction: reference must be [1,3,1,H,W], got {list(reference.shape)}")

    # .numpy() raises TypeError for bfloat16, as the reference does; float32 is what the pipeline passes.
    frames = video[0].detach().cpu().permute(1, 2, 3, 0).numpy().astype(np.float32, copy=False)
    ref = reference[0, :, 0].detach().cpu().permute(1, 2, 0).numpy().astype(np.float32, copy=False)
    frames01 = np.clip((frames + 1.0) / 2.0, 0.0, 1.0)
    ref01 = np.clip((ref + 1.0) / 2.0, 0.0, 1.0)

    try:
        ref_lab = color.rgb2lab(ref01)
    except ValueError:
        return None
    ref_mean, ref_std = _lab_stats(ref_lab)

    t = frames01.shape[0]
    nan = np.float32(np.nan)
    src_lab = np.full(frames01.shape, nan, dtype=np.float32)
    src_mean = np.full((t, 3), nan, dtype=np.float32)
    src_std = np.full((t, 3), nan, dtype=np.float32)
    corrected_lab = np.full(frames01.shape, nan, dtype=np.float32)
    corrected_rgb01 = np.empty_like(frames01)
    output01 = np.empty_like(frames01)
    failed: list[int] = []
    for i in range(t):
        frame01 = frames01[i]
        try:
            lab = color.rgb2lab(frame01)
            mean, std = _lab_stats(lab)
            new_lab = np.empty_like(lab)
            for j in range(3):
                if std[j] == 0:
                    # A flat channel (e.g. an all-black frame) has no spread to rescale: it takes the
                    # reference's mean, as in the reference, instead of dividing by zero.
                    new_lab[..., j] = ref_mean[j]
                else:
                    new_lab[..., j] = (lab[..., j] - mean[j]) * (ref_std[j] / std[j]) + ref_mean[j]
            full = np.clip(color.lab2rgb(new_lab), 0.0, 1.0)
        except ValueError:
            failed.append(i)
            corrected_rgb01[i] = frame01
            output01[i] = frame01
            continue
        src_lab[i], src_mean[i], src_std[i], corrected_lab[i] = lab, mean, std, new_lab
        corrected_rgb01[i] = full
        output01[i] = (1.0 - strength) * frame01 + strength * full

    return ColourTransfer(
        ref_lab=ref_lab,
        ref_lab_mean=ref_mean,
        ref_lab_std=ref_std,
        src_lab=src_lab,
        src_lab_mean=src_mean,
        src_lab_std=src_std,
        corrected_lab=corrected_lab,
        corrected_rgb01=corrected_rgb01,
        output01=output01,
        failed_frames=tuple(failed),
    )


def _check_strength(strength: float) -> None:
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"colour correction: strength must be in [0, 1], got {strength}")


def _lab_stats(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and population std of an [...,3] Lab image, as numpy float32 reductions.

    Each channel is reduced as the strided view `lab[..., j]`, the same summation order as the
    reference, so the statistics are bit-identical rather than merely close.
    """
    mean = np.array([lab[..., j].mean() for j in range(3)], dtype=np.float32)
    std = np.array([lab[..., j].std() for j in range(3)], dtype=np.float32)
    return mean, std
