"""Speech as samples: decoding to 16 kHz mono, loudness normalisation, and the audio-frame count.

The first stages of MultiTalk's audio recipe (`audio_prepare_single`, `loudness_norm` in
`generate_multitalk.py`), with numpy, soundfile, scipy and pyloudnorm only: no torch, so a job's
media can be decoded and checked (`mt_assets.jobs`) where torch is not installed. The wav2vec2
stages that follow are in `mt_assets.models.audio`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyloudnorm
import scipy.signal
import soundfile

SAMPLE_RATE = 16000  # what wav2vec2 was trained on
FPS = 25  # MultiTalk's audio frame rate, fixed by how the adapter was trained
TARGET_LUFS = -23.0
LOUDNESS_BLOCK_SECONDS = 0.4  # BS.1770 gating block; pyloudnorm needs at least one
READ_BLOCK_SAMPLES = 1 << 20  # samples (all channels together) per libsndfile read: 4 MB of float32
_UNKNOWN_FRAMES = 2**62  # libsndfile says SF_COUNT_MAX when a file does not give its length


class AudioError(ValueError):
    """Audio that cannot feed the model: the message names the file and what was expected."""


class AudioTooLong(AudioError):
    """More frames decoded than the caller allows; `header_seconds` is what the file said (None: nothing)."""

    def __init__(self, message: str, header_seconds: float | None) -> None:
        super().__init__(message)
        self.header_seconds = header_seconds


def load_waveform(
    source: str | Path | np.ndarray, sr: int = SAMPLE_RATE, *, source_sr: int | None = None
) -> np.ndarray:
    """Mono float32 samples at `sr` Hz from a sound file (anything libsndfile decodes) or an array.

    An array is [samples] or [samples, channels] at `source_sr` Hz (default: already at `sr`).
    Channels are averaged, as librosa.load(mono=True) does. Another rate is resampled with a
    polyphase Kaiser-windowed filter (scipy's resample_poly), which keeps speech below 8 kHz intact.
    """
    if isinstance(source, np.ndarray):
        name = "audio array"
        if source.ndim not in (1, 2) or not np.issubdtype(source.dtype, np.floating):
            raise AudioError(
                f"{name}: expected float samples shaped [samples] or [samples, channels], "
                f"got {source.dtype} {list(source.shape)}"
            )
        data = source if source.ndim == 2 else source.reshape(-1, 1)
        rate = sr if source_sr is None else source_sr
    else:
        name = str(source)
        mono, rate = read_sound_file(source)
        data = mono.reshape(-1, 1)
    if data.shape[0] == 0:
        raise AudioError(f"audio {name}: has no samples")
    wave = to_mono(data)
    if rate != sr:
        wave = resample(wave, rate, sr)
    return wave


def to_mono(data: np.ndarray) -> np.ndarray:
    """[samples, channels] float samples as [samples] float32, the channels averaged.

    Row by row, so a file mixed down block by block gives the same samples as mixed down whole."""
    wave = (
        data.astype(np.float32, copy=False).mean(axis=1, dtype=np.float32)
        if data.shape[1] > 1
        else data[:, 0]
    )
    return np.ascontiguousarray(wave, dtype=np.float32)


def read_sound_file(
    path: str | Path,
    *,
    max_seconds: float | None = None,
    header: Callable[[int, int, float | None], None] | None = None,
) -> tuple[np.ndarray, int]:
    """(mono float32 samples, their rate) of a file libsndfile decodes, at the file's own rate.

    Read in blocks of READ_BLOCK_SAMPLES and mixed down as they come, so memory is the mono result
    whatever the channel count. `header(rate, channels, seconds)` is called before any sample is
    decoded (seconds: None when the file does not say); it refuses a file by raising. Past
    `max_seconds` of decoded frames AudioTooLong is raised, whatever the header said. float32 from
    16-bit PCM is int16 / 32768: exactly what librosa.load returns.
    """
    name = str(path)
    if not Path(path).is_file():
        raise AudioError(f"audio {name}: no such file")
    try:
        sound = soundfile.SoundFile(path)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioError(f"audio {name} cannot be decoded as audio: {_first_line(e)}") from None
    with sound:
        rate, channels, frames = sound.samplerate, sound.channels, sound.frames
        seconds = frames / rate if 0 <= frames < _UNKNOWN_FRAMES and rate > 0 else None
        if header is not None:
            header(rate, channels, seconds)
        limit = None if max_seconds is None else math.ceil(max_seconds * rate)
        block = max(1, READ_BLOCK_SAMPLES // max(1, channels))
        parts: list[np.ndarray] = []
        decoded = 0
        while True:
            try:
                data = sound.read(block, dtype="float32", always_2d=True)
            except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
                raise AudioError(f"audio {name} cannot be decoded as audio: {_first_line(e)}") from None
            if data.shape[0] == 0:
                break
            decoded += data.shape[0]
            if limit is not None and decoded > limit:
                raise AudioTooLong(
                    f"audio {name}: more than {max_seconds:g} s decoded", header_seconds=seconds
                )
            parts.append(to_mono(data))
    if not parts:
        return np.zeros(0, np.float32), rate
    return (parts[0] if len(parts) == 1 else np.concatenate(parts)), rate


def resample(wave: np.ndarray, from_sr: int, to_sr: int) -> np.ndarray:
    """`wave` from `from_sr` to `to_sr` Hz; output length round(len * to_sr / from_sr)."""
    ratio = Fraction(int(to_sr), int(from_sr))
    out = scipy.signal.resample_poly(wave.astype(np.float64), ratio.numerator, ratio.denominator)
    return out[: round(len(wave) * to_sr / from_sr)].astype(np.float32)


def loudness_normalize(
    wave: np.ndarray, sr: int = SAMPLE_RATE, target: float = TARGET_LUFS, *, source: str = "audio"
) -> np.ndarray:
    """`wave` scaled so its BS.1770 integrated loudness is `target` LUFS (float32, may exceed ±1).

    Silence (loudness beyond ±100 LUFS, e.g. -inf) is returned unchanged, as the reference does.
    """
    wave = np.asarray(wave, dtype=np.float32)
    if len(wave) < LOUDNESS_BLOCK_SECONDS * sr:
        raise AudioError(
            f"{source}: {len(wave) / sr:.3f} s is shorter than the {LOUDNESS_BLOCK_SECONDS} s "
            "block loudness is measured over"
        )
    loudness = pyloudnorm.Meter(sr).integrated_loudness(wave)
    if abs(loudness) > 100:
        return wave
    gain = 10.0 ** ((target - loudness) / 20.0)
    # The reference ran under numpy 1, where float32 * float64-scalar stays float32 (the gain is
    # rounded to float32 first). Doing the same reproduces its waveform bit for bit.
    return wave * np.float32(gain)


def num_audio_frames(num_samples: int, sr: int = SAMPLE_RATE, fps: int | float = FPS) -> int:
    """How many video frames the audio covers, computed as the reference does: int(seconds * fps)."""
    return int(num_samples / sr * fps)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
