"""MultiTalk's audio features: from a sound file to the per-video-frame wav2vec2 windows the DiT reads.

The recipe (MeiGen MultiTalk `generate_multitalk.py`: `audio_prepare_single`, `loudness_norm`,
`get_embedding`, and the `Wav2Vec2Model` subclass in `src/audio_analysis/wav2vec2.py`), one
function per stage so each can be checked on its own:

    load_waveform        decode, average channels to mono, resample to 16 kHz; float32 in [-1, 1]
                         (a 16-bit PCM file gives int16 / 32768, as librosa.load does)
    loudness_normalize   ITU-R BS.1770 integrated loudness (pyloudnorm), gain to -23 LUFS
    extract_features     Wav2Vec2FeatureExtractor: (x - mean) / sqrt(var + 1e-7)       input_values  [N]
                         conv feature encoder, 50 frames per second                     conv_features [1, C, L]
                         linear resampling (align_corners=True) to int(N / 16000 * 25)
                         frames, BEFORE the feature projection                          interp_features [1, T, C]
                         feature projection (LayerNorm + Linear)                        projected_features [1, T, H]
                         encoder with every hidden state: [0] after the positional
                         conv + LayerNorm, [1..layers] the layer outputs                hidden_states [layers+1, T, H]
                         hidden_states[1:] as (frames, layers, hidden)                  audio_embedding [T, layers, H]
    window_audio         per video frame f the embeddings of frames f-2..f+2, indices
                         clamped to [0, T-1]                                            [F, 5, layers, H]

For chinese-wav2vec2-base that is [F, 5, 12, 768]; for the tiny profile [F, 5, 2, 32].

The wav2vec2 folder is the Hugging Face layout of TencentGameMate/chinese-wav2vec2-base:

    config.json               Wav2Vec2Config (the base layout: group-norm conv stack, post-LN encoder)
    preprocessor_config.json  Wav2Vec2FeatureExtractor settings (do_normalize, sampling_rate 16000)
    model.safetensors         Wav2Vec2Model state dict, loaded strictly. The positional conv's weight
                              norm is `encoder.pos_conv_embed.conv.parametrizations.weight.original0/1`
                              (g/v); older files name it `...conv.weight_g/weight_v`, renamed on load.
                              A Wav2Vec2ForPreTraining file (keys under `wav2vec2.`) is accepted: the
                              prefix is dropped, and so are its pretraining heads (`quantizer.*`,
                              `project_q.*`, `project_hid.*`), which the features never use.

The reference subclasses Wav2Vec2Model and calls its encoder; under transformers 5 that no longer
returns hidden states (they are gathered by hooks on the top-level forward), so the encoder steps
run here one by one, with transformers' own modules. A test checks that they equal transformers'
own forward whenever no resampling is involved.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

from mt_assets.models.checkpoints import CheckpointError, load_strict
from mt_assets.models.reading import LoadStrategy, read_safetensors
from mt_assets.waveform import (
    FPS,
    SAMPLE_RATE,
    AudioError,
    load_waveform,
    loudness_normalize,
    num_audio_frames,
)

WINDOW_RADIUS = 2  # each video frame sees audio frames f-2..f+2

_OLD_WEIGHT_NORM = {
    "encoder.pos_conv_embed.conv.weight_g": "encoder.pos_conv_embed.conv.parametrizations.weight.original0",
    "encoder.pos_conv_embed.conv.weight_v": "encoder.pos_conv_embed.conv.parametrizations.weight.original1",
}
_PRETRAINING_PREFIX = "wav2vec2."
_PRETRAINING_HEADS = ("quantizer.", "project_q.", "project_hid.")


# --- the wav2vec2 checkpoint ---------------------------------------------------------------


def load_wav2vec2(
    folder: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    strategy: LoadStrategy | None = None,
) -> tuple[Wav2Vec2FeatureExtractor, Wav2Vec2Model]:
    """The feature extractor and the wav2vec2 model (eval mode, no grad) from a chinese-wav2vec2-base folder.

    strategy: how model.safetensors is read (mt_assets.models.reading; None: $MT_LOAD_STRATEGY).

    Nothing is fetched: transformers reads only `folder`. Raises CheckpointError naming the file and
    the key when the weights do not match the config exactly.
    """
    folder = Path(folder)
    for name in ("config.json", "preprocessor_config.json", "model.safetensors"):
        if not (folder / name).is_file():
            raise CheckpointError(
                f"{folder / name}: missing (a wav2vec2 folder needs config.json, "
                "preprocessor_config.json and model.safetensors)"
            )
    try:
        feature_extractor = Wav2Vec2FeatureExtractor.from_pretrained(folder, local_files_only=True)
        # sdpa computes the same softmax attention as eager; hidden states are collected below,
        # so nothing needs the attention weights that would force eager.
        config = Wav2Vec2Config.from_pretrained(folder, local_files_only=True, attn_implementation="sdpa")
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{folder}: cannot be read as a wav2vec2 config: {_first_line(e)}") from None
    if config.do_stable_layer_norm:
        # The large (pre-LN) layout orders its hidden states differently; MultiTalk uses the base one.
        raise CheckpointError(
            f"{folder / 'config.json'}: do_stable_layer_norm is true (the pre-LN layout); "
            "the audio features expect the wav2vec2-base layout (false)"
        )
    if feature_extractor.sampling_rate != SAMPLE_RATE:
        raise CheckpointError(
            f"{folder / 'preprocessor_config.json'}: sampling_rate is {feature_extractor.sampling_rate}, "
            f"the audio features expect {SAMPLE_RATE}"
        )

    # Built on the meta device: no time spent initialising weights that the file replaces.
    with torch.device("meta"):
        model = Wav2Vec2Model(config)
    path = folder / "model.safetensors"
    load_strict(model, _model_keys(read_safetensors(path, strategy), str(path)), str(path))
    model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return feature_extractor, model


def _model_keys(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Rename the key spellings other writers use to Wav2Vec2Model's; anything else stays, for the strict check."""
    for old, new in _OLD_WEIGHT_NORM.items():
        for prefix in ("", _PRETRAINING_PREFIX):
            if prefix + old in state and prefix + new in state:  # one would silently win over the other
                raise CheckpointError(f"{source}: holds both {prefix + old!r} and {prefix + new!r}")
    if any(key.startswith(_PRETRAINING_PREFIX) for key in state):
        state = {
            key.removeprefix(_PRETRAINING_PREFIX): value
            for key, value in state.items()
            if not key.startswith(_PRETRAINING_HEADS)
        }
    return {_OLD_WEIGHT_NORM.get(key, key): value for key, value in state.items()}


# --- wav2vec2 features ---------------------------------------------------------------------


@torch.no_grad()
def extract_features(
    feature_extractor: Wav2Vec2FeatureExtractor,
    model: Wav2Vec2Model,
    wave: np.ndarray,
    *,
    sr: int = SAMPLE_RATE,
    fps: int | float = FPS,
) -> dict[str, torch.Tensor]:
    """Every stage from a (loudness-normalised) 16 kHz waveform to the embedding, on the CPU.

    Keys and shapes: input_values [N], conv_features [1, C, L], interp_features [1, T, C],
    projected_features [1, T, H], hidden_states [layers + 1, T, H], audio_embedding [T, layers, H],
    with T = int(N / sr * fps).
    """
    frames = num_audio_frames(len(wave), sr, fps)
    if frames < 1:
        raise AudioError(f"audio of {len(wave)} samples covers no frame at {fps} fps")
    param = next(model.parameters())
    input_values = np.squeeze(feature_extractor(wave, sampling_rate=sr).input_values)
    x = torch.from_numpy(np.asarray(input_values, dtype=np.float32)).to(param.device, param.dtype)

    conv = model.feature_extractor(x[None])  # [1, C, L] at 50 Hz
    # Resampled to the video rate before the projection, so the transformer runs at 25 fps.
    interp = F.interpolate(conv, size=frames, mode="linear", align_corners=True).transpose(1, 2)
    projected, _ = model.feature_projection(interp)

    encoder = model.encoder
    hidden = encoder.layer_norm(projected + encoder.pos_conv_embed(projected))
    hidden_states = [hidden]
    for layer in encoder.layers:  # eval mode: no layerdrop, no dropout
        hidden = layer(hidden, attention_mask=None)
        hidden_states.append(hidden)
    stacked = torch.cat(hidden_states)  # [layers + 1, T, H]

    stages = {
        "input_values": x,
        "conv_features": conv,
        "interp_features": interp,
        "projected_features": projected,
        "hidden_states": stacked,
        "audio_embedding": stacked[1:].transpose(0, 1),
    }
    return {name: t.detach().to("cpu").contiguous() for name, t in stages.items()}


def audio_embedding(
    feature_extractor: Wav2Vec2FeatureExtractor,
    model: Wav2Vec2Model,
    wave: np.ndarray,
    *,
    sr: int = SAMPLE_RATE,
    fps: int | float = FPS,
) -> torch.Tensor:
    """[T, layers, hidden]: the wav2vec2 layer outputs per audio frame (MultiTalk's `get_embedding`)."""
    return extract_features(feature_extractor, model, wave, sr=sr, fps=fps)["audio_embedding"]


def window_indices(num_frames: int, available: int) -> torch.Tensor:
    """[F, 5] int64: frame f reads audio frames f-2..f+2, clamped to [0, available - 1].

    The clamp is to the whole embedding, not to the frames rendered: with 18 frames of audio and 17
    rendered, frame 16 reads 14, 15, 16, 17, 17 (the reference's `center_indices`).
    """
    offsets = torch.arange(-WINDOW_RADIUS, WINDOW_RADIUS + 1)
    return (torch.arange(num_frames)[:, None] + offsets[None, :]).clamp(0, available - 1)


def window_audio(embedding: torch.Tensor, num_frames: int) -> torch.Tensor:
    """[F, 5, layers, hidden] from an embedding [T, layers, hidden] that covers at least F frames."""
    available = embedding.shape[0]
    if num_frames < 1:
        raise AudioError(f"audio windows: {num_frames} frames requested; need at least 1")
    if available < num_frames:
        raise AudioError(f"audio embedding covers {available} frames, {num_frames} requested")
    return embedding[window_indices(num_frames, available)]


def audio_features(
    path: str | Path,
    feature_extractor: Wav2Vec2FeatureExtractor,
    model: Wav2Vec2Model,
    num_frames: int,
    fps: int | float = FPS,
) -> torch.Tensor:
    """[num_frames, 5, layers, hidden]: one speaker's audio condition for a clip of `num_frames` video frames."""
    wave = load_waveform(path, SAMPLE_RATE)
    frames = num_audio_frames(len(wave), SAMPLE_RATE, fps)
    if frames < num_frames:
        raise AudioError(
            f"audio {path}: {len(wave) / SAMPLE_RATE:.3f} s covers {frames} frames at {fps:g} fps, "
            f"{num_frames} requested (needs at least {num_frames / fps:.3f} s)"
        )
    wave = loudness_normalize(wave, SAMPLE_RATE, source=f"audio {path}")
    return window_audio(audio_embedding(feature_extractor, model, wave, fps=fps), num_frames)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
