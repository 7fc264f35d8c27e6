"""What the DiT is conditioned on, built from the job's image and speakers as MultiTalk's `generate()` builds it.

Geometry (the reference's `resize_and_centercrop`, MeiGen MultiTalk c1ad840 `wan/multitalk.py`):

    bucket        ratio = src_h / src_w; the bucket key k with the smallest |float(k) - ratio|
                  (first in table order on ties) gives (target_h, target_w). `multitalk-480` uses
                  ASPECT_RATIO_627, `multitalk-720` ASPECT_RATIO_960; a `WxH` job size is its own target.
    resize        scale = max(target_h / src_h, target_w / src_w); final = ceil(scale * src) in float64,
                  often one pixel more than exact. Images: PIL bilinear on uint8. Masks: torch nearest.
    centre crop   torchvision's: offsets int(round((final - target) / 2)), Python's round (half to even).

Tensors (F video frames, T = (F - 1) / 4 + 1 latent frames, h, w = H / 8, W / 8):

    cond_image    [1, 3, 1, H, W] float32 in [-1, 1]: uint8 / 255, then (x - 0.5) * 2
    frame_mask    [1, 4, T, h, w]: ones for the conditioning frames (1 in the first clip, `motion_frames`
                  after), zeros after; frame 0 is counted 4 times so F frames fold into 4 x T
    y             [1, 4 + 16, T, h, w]: frame_mask, then the VAE latent of the conditioning frames
                  padded with zero frames to F
    speaker masks [3, h, w] (speaker 1, speaker 2, background), 0/1: one speaker -> all ones;
                  two -> bbox rectangles (rows x_min:x_max, columns y_min:y_max, as the reference reads
                  its [x_min, y_min, x_max, y_max]) or the default left/right halves inset by
                  `face_scale`; background = 1 where no speaker is. Drawn at source resolution,
                  resized + cropped like the image, then nearest to the latent grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

VAE_STRIDE = (4, 8, 8)  # frames, height, width per latent cell
FACE_SCALE = 0.05  # the reference's default inset of the left/right speaker halves

# Bucket tables of the reference (`wan/utils/multitalk_utils.py`): h/w ratio -> [target_h, target_w].
ASPECT_RATIO_627: dict[str, tuple[int, int]] = {
    "0.26": (320, 1216), "0.38": (384, 1024), "0.50": (448, 896), "0.67": (512, 768),
    "0.82": (576, 704), "1.00": (640, 640), "1.22": (704, 576), "1.50": (768, 512),
    "1.86": (832, 448), "2.00": (896, 448), "2.50": (960, 384), "2.83": (1088, 384),
    "3.60": (1152, 320), "3.80": (1216, 320), "4.00": (1280, 320),
}  # fmt: skip
ASPECT_RATIO_960: dict[str, tuple[int, int]] = {
    "0.22": (448, 2048), "0.29": (512, 1792), "0.36": (576, 1600), "0.45": (640, 1408),
    "0.55": (704, 1280), "0.63": (768, 1216), "0.76": (832, 1088), "0.88": (896, 1024),
    "1.00": (960, 960), "1.14": (1024, 896), "1.31": (1088, 832), "1.50": (1152, 768),
    "1.58": (1216, 768), "1.82": (1280, 704), "1.91": (1344, 704), "2.20": (1408, 640),
    "2.30": (1472, 640), "2.67": (1536, 576), "2.89": (1664, 576), "3.62": (1856, 512),
    "3.75": (1920, 512),
}  # fmt: skip
BUCKETS = {"multitalk-480": ASPECT_RATIO_627, "multitalk-720": ASPECT_RATIO_960}


def target_size(src_hw: tuple[int, int], size: str | tuple[int, int]) -> tuple[int, int]:
    """(target_h, target_w) for a source image: the closest bucket of `size`, or `size` itself as (W, H)."""
    if not isinstance(size, str):
        width, height = size
        return height, width
    table = BUCKETS[size]
    ratio = src_hw[0] / src_hw[1]
    # sorted() is stable: on a tie the key that comes first in the table wins, as in the reference.
    closest = sorted(table, key=lambda key: abs(float(key) - ratio))[0]
    return table[closest]


def resized_size(src_hw: tuple[int, int], target_hw: tuple[int, int]) -> tuple[int, int]:
    """The size the source is resized to before the centre crop: ceil of the float product, per side."""
    scale = max(target_hw[0] / src_hw[0], target_hw[1] / src_hw[1])
    return math.ceil(scale * src_hw[0]), math.ceil(scale * src_hw[1])


def crop_offsets(resized_hw: tuple[int, int], target_hw: tuple[int, int]) -> tuple[int, int]:
    """(top, left) of torchvision's centre crop: round half to even, as Python's round() does."""
    return round((resized_hw[0] - target_hw[0]) / 2.0), round((resized_hw[1] - target_hw[1]) / 2.0)


def _crop(x: torch.Tensor, resized_hw: tuple[int, int], target_hw: tuple[int, int]) -> torch.Tensor:
    top, left = crop_offsets(resized_hw, target_hw)
    return x[..., top : top + target_hw[0], left : left + target_hw[1]]


def resize_and_crop_image(image: Image.Image, target_hw: tuple[int, int]) -> torch.Tensor:
    """RGB image -> [1, 3, 1, H, W] uint8: bilinear resize to cover the target, then centre crop."""
    src_hw = (image.height, image.width)
    resized_hw = resized_size(src_hw, target_hw)
    resized = image.convert("RGB").resize((resized_hw[1], resized_hw[0]), resample=Image.BILINEAR)
    pixels = torch.from_numpy(np.array(resized)).permute(2, 0, 1)  # [3, h, w]
    return _crop(pixels, resized_hw, target_hw)[None, :, None].contiguous()


def preprocess_image(image: Image.Image, target_hw: tuple[int, int]) -> torch.Tensor:
    """The conditioning image [1, 3, 1, H, W] float32 in [-1, 1]."""
    pixels = resize_and_crop_image(image, target_hw)
    return (pixels / 255 - 0.5) * 2


def resize_and_crop_masks(masks: torch.Tensor, target_hw: tuple[int, int]) -> torch.Tensor:
    """Masks [N, h, w] at source resolution -> [N, H, W]: nearest resize to cover the target, centre crop."""
    resized_hw = resized_size((masks.shape[-2], masks.shape[-1]), target_hw)
    resized = F.interpolate(masks[None].float(), size=resized_hw, mode="nearest")[0]
    return _crop(resized, resized_hw, target_hw).contiguous()


def source_speaker_masks(
    src_hw: tuple[int, int],
    speakers: int,
    bbox: Sequence[Sequence[float]] | None = None,
    face_scale: float = FACE_SCALE,
) -> torch.Tensor:
    """[3, src_h, src_w] float32: speaker 1, speaker 2, background, at source resolution."""
    src_h, src_w = src_hw
    if speakers == 1:
        return torch.ones(3, src_h, src_w)
    if speakers != 2:
        raise ValueError(f"speaker masks: {speakers} speakers; MultiTalk handles 1 or 2")
    people = torch.zeros(2, src_h, src_w)
    if bbox is not None:
        if len(bbox) != 2:
            raise ValueError(f"speaker masks: {len(bbox)} bboxes for 2 speakers")
        for mask, (x_min, y_min, x_max, y_max) in zip(people, bbox, strict=True):
            # The reference's x is the row (height) axis and y the column axis.
            mask[int(x_min) : int(x_max), int(y_min) : int(y_max)] = 1
    else:
        half = src_w // 2
        rows = slice(int(src_h * face_scale), int(src_h * (1 - face_scale)))
        for i, mask in enumerate(people):
            mask[rows, int(half * face_scale + i * half) : int(half * (1 - face_scale) + i * half)] = 1
    background = (people.sum(0) == 0).float()
    return torch.cat([people, background[None]])


def latent_speaker_masks(
    src_hw: tuple[int, int],
    target_hw: tuple[int, int],
    speakers: int,
    bbox: Sequence[Sequence[float]] | None = None,
    face_scale: float = FACE_SCALE,
) -> torch.Tensor:
    """The `ref_target_masks` the DiT gets: [3, H/8, W/8] float32 of 0/1."""
    masks = resize_and_crop_masks(source_speaker_masks(src_hw, speakers, bbox, face_scale), target_hw)
    latent_hw = (target_hw[0] // VAE_STRIDE[1], target_hw[1] // VAE_STRIDE[2])
    return (F.interpolate(masks[None], size=latent_hw, mode="nearest")[0] > 0).float()


def latent_frames(frames: int) -> int:
    """Latent frames for `frames` video frames (4n + 1 -> n + 1)."""
    return (frames - 1) // VAE_STRIDE[0] + 1


def frame_mask(frames: int, cond_frames: int, latent_hw: tuple[int, int]) -> torch.Tensor:
    """[1, 4, T, h, w]: which video frames are given (the first `cond_frames`), folded 4 per latent frame."""
    h, w = latent_hw
    mask = torch.ones(1, frames, h, w)
    mask[:, cond_frames:] = 0
    # Frame 0 stands alone in the latent (the causal VAE), so it is repeated to fill 4 slots.
    mask = torch.cat([mask[:, :1].repeat_interleave(VAE_STRIDE[0], dim=1), mask[:, 1:]], dim=1)
    return mask.view(1, mask.shape[1] // VAE_STRIDE[0], VAE_STRIDE[0], h, w).transpose(1, 2)


def motion_latent_frames(cond_frames: int) -> int:
    """Latent frames that hold the conditioning (motion) frames: 1 + (n - 1) // 4."""
    return 1 + (cond_frames - 1) // VAE_STRIDE[0]
