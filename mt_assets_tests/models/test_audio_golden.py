"""The audio features against MultiTalk's reference code: every stage of the tiny golden set to 1e-5.

The golden set (see its README, section 2) was computed by MeiGen's `generate_multitalk.py` helpers
and `src/audio_analysis/wav2vec2.py` with a tiny wav2vec2, under numpy 1 and transformers 4.52.
It lives in /work/shared/golden/multitalk-tiny beside the checkout, or wherever MT_GOLDEN_DIR says.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mt_assets.models.audio import (
    audio_features,
    extract_features,
    load_wav2vec2,
    window_audio,
)
from mt_assets.waveform import load_waveform, loudness_normalize

GOLDEN_DIR = Path(
    os.environ.get("MT_GOLDEN_DIR") or Path(__file__).parents[3] / "shared/golden/multitalk-tiny"
)
ATOL = 1e-5

# Skipped only outside CI: CI has ../shared beside the clone, and must not lose these silently.
pytestmark = pytest.mark.skipif(
    not (GOLDEN_DIR / "audio_golden.safetensors").is_file() and not os.environ.get("CI"),
    reason=f"golden data not found at {GOLDEN_DIR} (set MT_GOLDEN_DIR to the multitalk-tiny folder)",
)


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(GOLDEN_DIR / "audio_golden.safetensors")


@pytest.fixture(scope="module")
def wav2vec2():
    return load_wav2vec2(GOLDEN_DIR / "audio_wav2vec2_tiny")


@pytest.fixture(scope="module")
def stages(wav2vec2) -> dict[str, torch.Tensor]:
    loaded = load_waveform(GOLDEN_DIR / "audio_input.wav")
    normalised = loudness_normalize(loaded)
    return {
        "waveform_loaded": torch.from_numpy(loaded),
        "waveform_loudnorm": torch.from_numpy(normalised),
        **extract_features(*wav2vec2, normalised),
    }


STAGES = [
    "waveform_loaded",
    "waveform_loudnorm",
    "input_values",
    "conv_features",
    "interp_features",
    "projected_features",
    "hidden_states",
    "audio_embedding",
]


@pytest.mark.parametrize("name", STAGES)
def test_stage_matches_the_reference(name: str, stages: dict[str, torch.Tensor], golden) -> None:
    ours, ref = stages[name], golden[name]
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    err = (ours.double() - ref.double()).abs().max().item()
    assert err <= ATOL, f"{name}: max abs error {err:.3g} > {ATOL}"


def test_waveform_stages_are_bit_exact(stages: dict[str, torch.Tensor], golden) -> None:
    # The WAV decodes to int16 / 32768, and the gain is applied in float32 as under numpy 1.
    assert torch.equal(stages["waveform_loaded"], golden["waveform_loaded"])
    assert torch.equal(stages["waveform_loudnorm"], golden["waveform_loudnorm"])


def test_windowing_matches_the_pipelines_gather() -> None:
    inputs = load_file(GOLDEN_DIR / "dit_inputs.safetensors")
    full, windows = inputs["audio_full_emb"], inputs["audio"]
    num_frames = windows.shape[1]
    for speaker in range(full.shape[0]):
        assert torch.equal(window_audio(full[speaker], num_frames), windows[speaker])


def test_audio_features_end_to_end(wav2vec2, golden) -> None:
    frames = golden["audio_embedding"].shape[0]
    features = audio_features(GOLDEN_DIR / "audio_input.wav", *wav2vec2, num_frames=frames)
    idx = (torch.arange(frames)[:, None] + torch.arange(-2, 3)).clamp(0, frames - 1)
    expected = golden["audio_embedding"][idx]
    assert features.shape == (frames, 5, 2, 32)
    assert np.abs((features - expected).numpy()).max() <= ATOL
