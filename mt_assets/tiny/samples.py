"""Inputs made here, for the demo and the tests: a drawn face (or two) and speech-like audio.

Nothing is downloaded: the image is drawn with PIL, the audio is harmonics of a wobbling pitch under
a syllable envelope with a little noise (what a voice looks like to wav2vec2's front end), written as
16 kHz PCM_16 WAV. Deterministic for a given seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
from PIL import Image, ImageDraw

SAMPLE_RATE = 16_000


def speech_like(seconds: float, *, pitch: float = 140.0, seed: int = 0, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 in [-1, 1]: voiced syllables at ~4 per second, `pitch` Hz with vibrato."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * sr)) / sr
    f0 = pitch * (1 + 0.08 * np.sin(2 * np.pi * 3.1 * t + rng.uniform(0, np.pi)))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    syllables = np.clip(np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, np.pi)), 0, None) ** 0.5
    wave = 0.25 * voice * syllables + 0.01 * rng.standard_normal(len(t))
    return np.clip(wave, -1, 1).astype(np.float32)


def write_speech(path: Path, seconds: float, *, pitch: float = 140.0, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, speech_like(seconds, pitch=pitch, seed=seed), SAMPLE_RATE, subtype="PCM_16")
    return path


def face_image(width: int = 320, height: int = 240, *, faces: int = 1, seed: int = 0) -> Image.Image:
    """A plain room with `faces` (1 or 2) cartoon heads side by side."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height), tuple(int(c) for c in rng.integers(150, 220, 3)))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, int(height * 0.75), width, height], fill=(110, 90, 70))  # a table
    for i in range(faces):
        cx = width * (i + 0.5) / faces
        cy, r = height * 0.45, min(width / faces, height) * 0.28
        skin = tuple(int(c) for c in rng.integers((180, 130, 100), (240, 190, 160)))
        draw.ellipse([cx - r, cy - r * 1.2, cx + r, cy + r * 1.2], fill=skin)
        draw.ellipse([cx - r * 1.05, cy - r * 1.35, cx + r * 1.05, cy - r * 0.5], fill=(60, 40, 30))  # hair
        for side in (-1, 1):
            ex = cx + side * r * 0.4
            draw.ellipse([ex - r * 0.12, cy - r * 0.2, ex + r * 0.12, cy], fill=(255, 255, 255))
            draw.ellipse([ex - r * 0.05, cy - r * 0.14, ex + r * 0.05, cy - r * 0.05], fill=(30, 30, 30))
        draw.ellipse([cx - r * 0.3, cy + r * 0.45, cx + r * 0.3, cy + r * 0.7], fill=(150, 50, 60))  # mouth
    return image


def write_face_image(
    path: Path, width: int = 320, height: int = 240, *, faces: int = 1, seed: int = 0
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    face_image(width, height, faces=faces, seed=seed).save(path)
    return path
