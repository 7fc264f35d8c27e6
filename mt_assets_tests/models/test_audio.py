"""The audio feature pipeline and the wav2vec2 loader, on the tiny wav2vec2 and synthetic sound files."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import soundfile
import torch
from safetensors.torch import load_file, save_file

from mt_assets.models.audio import (
    audio_embedding,
    audio_features,
    extract_features,
    load_wav2vec2,
    window_audio,
    window_indices,
)
from mt_assets.models.checkpoints import CheckpointError
from mt_assets.tiny.wav2vec2 import write_tiny_wav2vec2
from mt_assets.waveform import AudioError, load_waveform, loudness_normalize

SR = 16000
FILES = ("config.json", "preprocessor_config.json", "model.safetensors")
POS_CONV = "encoder.pos_conv_embed.conv"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_wav2vec2(tmp_path_factory.mktemp("wav2vec2") / "chinese-wav2vec2-base")


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path):
    return load_wav2vec2(tiny_dir)


def sweep(seconds: float, sr: int = SR, channels: int = 1) -> np.ndarray:
    """A 200 Hz → 1.1 kHz sine sweep at amplitude 0.3: voiced-speech range, non-silent throughout."""
    t = np.arange(round(seconds * sr)) / sr
    wave = 0.3 * np.sin(2 * np.pi * (200 * t + 150 * t**2))  # instantaneous frequency 200 + 300 t
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


@pytest.fixture(scope="module")
def sweep_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "sweep.wav"
    soundfile.write(path, sweep(3.0), SR, subtype="PCM_16")
    return path


def copy_tiny(tiny_dir: Path, dest: Path) -> Path:
    shutil.copytree(tiny_dir, dest)
    return dest


# --- the tiny writer and the loader ---------------------------------------------------------


def test_tiny_wav2vec2_rebuild_is_byte_identical(tiny_dir: Path, tmp_path: Path) -> None:
    again = write_tiny_wav2vec2(tmp_path / "again")
    for name in FILES:
        assert (
            hashlib.sha256((again / name).read_bytes()).digest()
            == hashlib.sha256((tiny_dir / name).read_bytes()).digest()
        ), name
    assert sorted(p.name for p in again.iterdir()) == sorted(FILES)  # no staging files left behind


def test_tiny_wav2vec2_seed_changes_the_weights(tiny_dir: Path, tmp_path: Path) -> None:
    other = write_tiny_wav2vec2(tmp_path / "other", seed=1)
    assert (other / "model.safetensors").read_bytes() != (tiny_dir / "model.safetensors").read_bytes()


def test_tiny_wav2vec2_loads_back_strictly_with_the_shape_the_tiny_dit_expects(tiny, tiny_dir: Path) -> None:
    fe, model = tiny
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 32
    assert fe.sampling_rate == SR and fe.do_normalize
    assert not model.training
    state = load_file(tiny_dir / "model.safetensors")
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_loading_fails_naming_the_file_and_a_missing_key(tiny_dir: Path, tmp_path: Path) -> None:
    folder = copy_tiny(tiny_dir, tmp_path / "w")
    state = load_file(folder / "model.safetensors")
    del state["encoder.layers.1.attention.v_proj.weight"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(
        CheckpointError,
        match=r"model\.safetensors: missing key 'encoder\.layers\.1\.attention\.v_proj\.weight'",
    ):
        load_wav2vec2(folder)


def test_loading_fails_naming_an_unexpected_key(tiny_dir: Path, tmp_path: Path) -> None:
    folder = copy_tiny(tiny_dir, tmp_path / "w")
    state = load_file(folder / "model.safetensors")
    state["lm_head.weight"] = torch.zeros(3, 32)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: unexpected key 'lm_head\.weight'"):
        load_wav2vec2(folder)


def test_loading_fails_on_a_shape_that_differs_from_the_config(tiny_dir: Path, tmp_path: Path) -> None:
    folder = copy_tiny(tiny_dir, tmp_path / "w")
    state = load_file(folder / "model.safetensors")
    state["feature_projection.projection.bias"] = torch.zeros(31)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"'feature_projection\.projection\.bias' has shape \[31\]"):
        load_wav2vec2(folder)


def test_old_weight_norm_key_names_load_to_the_same_model(tiny, tiny_dir: Path, tmp_path: Path) -> None:
    folder = copy_tiny(tiny_dir, tmp_path / "w")
    state = load_file(folder / "model.safetensors")
    state[f"{POS_CONV}.weight_g"] = state.pop(f"{POS_CONV}.parametrizations.weight.original0")
    state[f"{POS_CONV}.weight_v"] = state.pop(f"{POS_CONV}.parametrizations.weight.original1")
    save_file(state, str(folder / "model.safetensors"))
    _, model = load_wav2vec2(folder)
    for key, value in tiny[1].state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key


def test_both_weight_norm_spellings_at_once_are_refused(tiny_dir: Path, tmp_path: Path) -> None:
    folder = copy_tiny(tiny_dir, tmp_path / "w")
    state = load_file(folder / "model.safetensors")
    state[f"{POS_CONV}.weight_g"] = state[f"{POS_CONV}.parametrizations.weight.original0"].clone()
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: holds both '.*weight_g' and"):
        load_wav2vec2(folder)


def test_a_pretraining_checkpoint_loads_its_backbone(tiny, tiny_dir: Path, tmp_path: Path) -> None:
    folder = copy_tiny(tiny_dir, tmp_path / "w")
    state = {f"wav2vec2.{k}": v for k, v in load_file(folder / "model.safetensors").items()}
    state["quantizer.codevectors"] = torch.zeros(1, 4, 8)
    state["project_hid.weight"] = torch.zeros(8, 32)
    save_file(state, str(folder / "model.safetensors"))
    _, model = load_wav2vec2(folder)
    assert torch.equal(model.state_dict()["masked_spec_embed"], tiny[1].state_dict()["masked_spec_embed"])


def test_loading_a_folder_without_weights_names_the_file(tiny_dir: Path, tmp_path: Path) -> None:
    folder = copy_tiny(tiny_dir, tmp_path / "w")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"w/model\.safetensors: missing"):
        load_wav2vec2(folder)


def test_loader_asks_for_the_dtype(tiny_dir: Path) -> None:
    _, model = load_wav2vec2(tiny_dir, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


# --- waveform stages ------------------------------------------------------------------------


def test_pcm16_wav_loads_as_int16_over_32768(tmp_path: Path) -> None:
    ints = (sweep(0.5) * 32767).astype(np.int16)
    soundfile.write(tmp_path / "a.wav", ints, SR, subtype="PCM_16")
    wave = load_waveform(tmp_path / "a.wav")
    assert wave.dtype == np.float32
    np.testing.assert_array_equal(wave, ints.astype(np.float32) / 32768)


def test_stereo_44k1_is_averaged_and_resampled_to_16k(tmp_path: Path) -> None:
    left, right = sweep(1.0, 44100), 0.5 * sweep(1.0, 44100)
    soundfile.write(tmp_path / "s.flac", np.stack([left, right], axis=1), 44100, subtype="PCM_24")
    wave = load_waveform(tmp_path / "s.flac")
    assert wave.shape == (SR,)
    expected = 0.75 * sweep(1.0, SR)
    # A 24-bit file and a good anti-aliasing filter: equal to the 16 kHz signal away from the edges.
    assert np.abs(wave[200:-200] - expected[200:-200]).max() < 1e-3


def test_arrays_are_accepted_with_their_rate() -> None:
    wave = load_waveform(sweep(1.0, 48000).astype(np.float32), source_sr=48000)
    assert wave.shape == (SR,) and wave.dtype == np.float32
    assert np.abs(wave[100:-100] - sweep(1.0)[100:-100]).max() < 1e-3


def test_loudness_is_normalised_to_minus_23_lufs() -> None:
    wave = loudness_normalize(sweep(2.0).astype(np.float32) * 0.1)
    assert wave.dtype == np.float32
    assert pyloudnorm.Meter(SR).integrated_loudness(wave) == pytest.approx(-23.0, abs=0.01)


def test_silence_is_left_as_it_is() -> None:
    silent = np.zeros(SR, dtype=np.float32)
    np.testing.assert_array_equal(loudness_normalize(silent), silent)


# --- features -------------------------------------------------------------------------------


def test_features_of_a_3s_sweep_have_the_tiny_dit_shape(tiny, sweep_wav: Path) -> None:
    fe, model = tiny
    features = audio_features(sweep_wav, fe, model, num_frames=73)
    assert features.shape == (73, 5, 2, 32)
    assert features.dtype == torch.float32 and torch.isfinite(features).all()
    # Every frame sees its ±2 neighbours of the embedding, in order.
    emb = audio_embedding(fe, model, loudness_normalize(load_waveform(sweep_wav)))
    assert emb.shape == (75, 2, 32)
    torch.testing.assert_close(features[10], emb[8:13], rtol=0, atol=0)


def test_stages_have_the_documented_shapes(tiny, sweep_wav: Path) -> None:
    fe, model = tiny
    stages = extract_features(fe, model, loudness_normalize(load_waveform(sweep_wav)))
    conv_frames = stages["conv_features"].shape[-1]
    assert {k: tuple(v.shape) for k, v in stages.items()} == {
        "input_values": (48000,),
        "conv_features": (1, 16, conv_frames),
        "interp_features": (1, 75, 16),
        "projected_features": (1, 75, 32),
        "hidden_states": (3, 75, 32),
        "audio_embedding": (75, 2, 32),
    }
    assert conv_frames == 149  # 50 Hz, less the receptive field
    torch.testing.assert_close(stages["interp_features"][0, 0], stages["conv_features"][0, :, 0])
    torch.testing.assert_close(stages["interp_features"][0, -1], stages["conv_features"][0, :, -1])


def test_encoder_steps_equal_transformers_own_forward(tiny) -> None:
    """With as many frames as the conv stack gives, resampling is the identity, so our stage-by-stage
    encoder must reproduce Wav2Vec2Model's own hidden states exactly."""
    fe, model = tiny
    wave = loudness_normalize(sweep(1.0).astype(np.float32))
    conv_frames = model._get_feat_extract_output_lengths(len(wave))
    stages = extract_features(fe, model, wave, fps=int(conv_frames) * SR / len(wave) + 1e-9)
    assert stages["hidden_states"].shape[1] == conv_frames
    with torch.no_grad():
        out = model(stages["input_values"][None], output_hidden_states=True)
    torch.testing.assert_close(stages["hidden_states"], torch.cat(out.hidden_states), rtol=0, atol=1e-6)


def test_window_indices_clamp_to_the_whole_embedding() -> None:
    # 18 frames of audio, 17 rendered: the last frame reads 14..17 and repeats 17.
    idx = window_indices(17, 18)
    assert idx[0].tolist() == [0, 0, 0, 1, 2]
    assert idx[-1].tolist() == [14, 15, 16, 17, 17]
    emb = torch.arange(18.0)[:, None, None].expand(18, 2, 3)
    assert window_audio(emb, 17)[:, :, 0, 0].tolist() == idx.float().tolist()


def test_window_audio_refuses_more_frames_than_the_embedding_covers() -> None:
    with pytest.raises(AudioError, match="covers 18 frames, 19 requested"):
        window_audio(torch.zeros(18, 2, 3), 19)


def test_too_short_audio_names_the_file_and_the_frames(tiny, sweep_wav: Path) -> None:
    fe, model = tiny
    with pytest.raises(AudioError, match=r"sweep\.wav: 3\.000 s covers 75 frames at 25 fps, 81 requested"):
        audio_features(sweep_wav, fe, model, num_frames=81)


def test_undecodable_file_names_the_file(tiny, tmp_path: Path) -> None:
    fe, model = tiny
    bad = tmp_path / "speech.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00not a wave file at all" * 10)
    with pytest.raises(AudioError, match=r"speech\.wav cannot be decoded as audio: "):
        audio_features(bad, fe, model, num_frames=5)


def test_missing_file_names_the_file(tiny, tmp_path: Path) -> None:
    fe, model = tiny
    with pytest.raises(AudioError, match=r"nowhere\.wav: no such file"):
        audio_features(tmp_path / "nowhere.wav", fe, model, num_frames=5)
