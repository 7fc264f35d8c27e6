"""Audio preparation against the reference's golden data (README section J of the pipeline golden set).

Tolerances are the README's: float arrays atol 1e-6 (the stored arrays are numpy-2 float64, ours the
numpy-1 float32 the reference pins), PCM_16 samples +-1, lengths and frame counts exact.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile
from safetensors.numpy import load_file

from mt_assets.jobs.audio_prep import PreparedAudio, pcm16, prepare_multi, prepare_single
from mt_assets.waveform import AudioError, load_waveform
from mt_assets_tests.golden import PIPELINE_GOLDEN_DIR, requires_pipeline_golden

pytestmark = requires_pipeline_golden

ATOL = 1e-6


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    return load_file(PIPELINE_GOLDEN_DIR / "audio_prep_golden.safetensors")


@pytest.fixture(scope="module")
def cases() -> dict[str, dict]:
    return json.loads((PIPELINE_GOLDEN_DIR / "audio_prep_golden.json").read_text())["cases"]


@pytest.fixture(scope="module")
def speaker() -> dict[int, np.ndarray]:
    """The raw (not normalised) input waves, decoded as librosa.load does: int16 / 32768."""
    return {i: load_waveform(PIPELINE_GOLDEN_DIR / f"audio_prep_speaker{i}.wav") for i in (1, 2, 3)}


def close(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=ATOL)


def within_one(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.dtype == np.int16 and ours.shape == theirs.shape
    assert np.abs(ours.astype(np.int32) - theirs.astype(np.int32)).max() <= 1


@pytest.mark.parametrize("i", [1, 2, 3])
def test_each_speaker_is_loudness_normalised_on_its_own(i, speaker, golden):
    prepared = prepare_single(speaker[i])
    close(prepared.speeches[0], golden[f"single.speaker{i}"])
    assert prepared.mix is prepared.speeches[0]


def test_single_speaker_sum_wav_and_frames(speaker, golden, cases):
    prepared = prepare_single(speaker[1])
    within_one(pcm16(prepared.mix), golden["single.speaker1.sum_wav_int16"])
    assert len(prepared.mix) == cases["single_speaker1"]["len"]
    assert prepared.num_frames == cases["single_speaker1"]["embedding_frames"] == 17


def test_add_places_the_speakers_one_after_the_other(speaker, golden, cases):
    prepared = prepare_multi(speaker[1], speaker[2], "add")
    close(prepared.speeches[0], golden["add.speech1"])
    close(prepared.speeches[1], golden["add.speech2"])
    close(prepared.mix, golden["add.sum"])
    within_one(pcm16(prepared.mix), golden["add.sum_wav_int16"])
    case = cases["add"]
    assert [len(s) for s in prepared.speeches] == [case["len_speech1"], case["len_speech2"]]
    assert prepared.num_frames == case["embedding_frames_speech1"] == 45


def test_para_sums_speakers_normalised_separately(speaker, golden, cases):
    prepared = prepare_multi(speaker[1], speaker[3], "para")
    close(prepared.speeches[0], golden["single.speaker1"])
    close(prepared.speeches[1], golden["single.speaker3"])
    close(prepared.mix, golden["para.sum"])
    within_one(pcm16(prepared.mix), golden["para.sum_wav_int16"])
    assert len(prepared.mix) == cases["para"]["len_sum"]
    assert prepared.num_frames == cases["para"]["embedding_frames_speech1"] == 17


def test_para_of_unequal_lengths_names_both_lengths(speaker):
    with pytest.raises(AudioError, match=r"'para'.*person1 has 11200 samples.*person2 has 17600"):
        prepare_multi(speaker[1], speaker[2], "para")


def test_silent_left_speaker_in_add_mode(speaker, golden, cases):
    prepared = prepare_multi(None, speaker[2], "add")
    case = cases["add_left_None"]
    assert [len(s) for s in prepared.speeches] == [case["len_speech1"], case["len_speech2"]]
    assert len(prepared.mix) == case["len_sum"] == 35200
    assert prepared.num_frames == case["embedding_frames_speech1"] == 55
    assert not prepared.speeches[0].any()
    close(prepared.speeches[1], np.concatenate([np.zeros(17600), golden["single.speaker2"]]))
    close(prepared.mix, prepared.speeches[1])


def test_silent_right_speaker_in_para_mode(speaker, golden, cases):
    prepared = prepare_multi(speaker[1], None, "para")
    case = cases["para_right_None"]
    assert len(prepared.mix) == case["len_sum"] == 11200
    assert prepared.num_frames == case["embedding_frames_speech1"] == 17
    assert not prepared.speeches[1].any()
    close(prepared.mix, golden["single.speaker1"])


def test_two_silent_speakers_and_unknown_audio_type_are_refused(speaker):
    with pytest.raises(AudioError, match="both silent"):
        prepare_multi(None, None, "para")
    with pytest.raises(AudioError, match=r"audio_type must be one of para, add; got 'mix'"):
        prepare_multi(speaker[1], speaker[3], "mix")


@pytest.mark.parametrize(
    ("samples", "frames"),
    # README J's table, plus the first length below two minutes where float arithmetic gives one
    # frame less than exact arithmetic (28.999999999999996 -> 28).
    [(28800, 45), (11200, 17), (35200, 55), (18560, 28), (16000, 25), (15999, 24)],
)
def test_frame_count_truncates_the_float_value(samples, frames):
    mix = np.zeros(samples, dtype=np.float32)
    assert PreparedAudio(speeches=(mix,), mix=mix).num_frames == frames


def test_pcm16_equals_what_soundfile_writes():
    rng = np.random.default_rng(0)
    edges = np.arange(-33000, 33000) / 32768
    x = np.concatenate([rng.uniform(-1.3, 1.3, 50_000), edges, edges + 2**-17, edges - 2**-17, [1.0, -1.0]])
    for dtype in (np.float64, np.float32):
        buffer = io.BytesIO()
        soundfile.write(buffer, x.astype(dtype), 16000, format="WAV", subtype="PCM_16")
        buffer.seek(0)
        written, _ = soundfile.read(buffer, dtype="int16")
        np.testing.assert_array_equal(pcm16(x.astype(dtype)), written)


def test_pcm16_refuses_non_finite_samples():
    with pytest.raises(AudioError, match="sample 1 is nan"):
        pcm16(np.array([0.0, np.nan]))


def test_too_short_audio_names_the_speaker():
    with pytest.raises(AudioError, match=r"person2: 0\.100 s is shorter than the 0\.4 s block"):
        prepare_multi(np.full(16000, 0.1, np.float32), np.full(1600, 0.1, np.float32), "add")
