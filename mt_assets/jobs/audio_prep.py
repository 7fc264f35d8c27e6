"""One or two speakers' audio, prepared as MeiGen MultiTalk's `generate_multitalk.py` prepares it.

The reference (commit c1ad840: `loudness_norm`, `audio_prepare_single`, `audio_prepare_multi`,
`get_embedding`), for waveforms already decoded to mono float32 at 16 kHz (see `media.load_audio`):

    prepare_single(wave)      speech = wave loudness-normalised to -23 LUFS (BS.1770, pyloudnorm);
                              the mix is that same array
    prepare_multi(l, r, t)    each speaker normalised ON ITS OWN, before mixing; then
                                'para': speech1 = l, speech2 = r (equal lengths required), mix = l + r
                                'add':  speech1 = [l, zeros(len r)], speech2 = [zeros(len l), r],
                                        so both are len l + len r long and the mix is concat(l, r)
                              None for a speaker is the reference's 'None' path: zeros as long as
                              the other speaker (after that speaker's normalisation)
    PreparedAudio.num_frames  int(len(mix) / 16000 * 25): float arithmetic then truncation, as
                              `get_embedding` computes wav2vec2's seq_len (0.7 s gives 17, not 18)
    pcm16(mix)                the int16 samples `sf.write(sum.wav, mix, 16000)` stores (PCM_16)

The mix is never normalised again: it is the sound track that is muxed, and each speech is what
that speaker's wav2vec2 embedding is computed from. Arrays are float32, as under the numpy < 2 the
reference pins (numpy 2 gives float64; the two differ by < 1e-7).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mt_assets.waveform import SAMPLE_RATE, AudioError, loudness_normalize, num_audio_frames

AUDIO_TYPES = ("para", "add")

# libsndfile (1.2.2, with the clipping soundfile switches on) writes PCM_16 as lrint(x * 2**31) >> 16,
# saturating at the ends: floor(x * 32768) except within 2**-16 below an integer, not round(x * 32767).
_PCM16_SCALE = 2.0**31
_PCM16_SHIFT = 16


@dataclass(frozen=True)
class PreparedAudio:
    """The speakers' normalised speeches (1 or 2, each as long as the mix) and their sum."""

    speeches: tuple[np.ndarray, ...]  # what each speaker's wav2vec2 embedding is computed from
    mix: np.ndarray  # sum of the speeches, never re-normalised: the sound track that is muxed

    @property
    def num_frames(self) -> int:
        """Audio frames at 25 fps, exactly as the reference counts them: int(len / 16000 * 25)."""
        return num_audio_frames(len(self.mix), SAMPLE_RATE)

    @property
    def seconds(self) -> float:
        return len(self.mix) / SAMPLE_RATE


def prepare_single(wave: np.ndarray, *, source: str = "audio") -> PreparedAudio:
    """One speaker: `wave` (mono float32, 16 kHz, not yet normalised) at -23 LUFS; the mix is that speech.

    Raises AudioError (naming `source`) for a wave that is not 1-D float or shorter than one 0.4 s
    loudness block.
    """
    speech = _normalised(wave, source)
    return PreparedAudio(speeches=(speech,), mix=speech)


def prepare_multi(
    left: np.ndarray | None,
    right: np.ndarray | None,
    audio_type: str,
    *,
    sources: tuple[str, str] = ("person1", "person2"),
) -> PreparedAudio:
    """Two speakers (raw mono float32 16 kHz waves; None = silent) mixed as 'para' or 'add'.

    Raises AudioError when both are None, for an unknown `audio_type`, and for 'para' speeches of
    different lengths (the reference leaves that to a numpy broadcasting error).
    """
    if audio_type not in AUDIO_TYPES:
        raise AudioError(f"audio_type must be one of {', '.join(AUDIO_TYPES)}; got {audio_type!r}")
    if left is None and right is None:
        raise AudioError(f"{sources[0]} and {sources[1]} are both silent (None); at least one needs audio")
    speech1 = None if left is None else _normalised(left, sources[0])
    speech2 = None if right is None else _normalised(right, sources[1])
    # The silent speaker is as long as the other one's (normalised) speech.
    if speech1 is None:
        assert speech2 is not None
        speech1 = np.zeros(len(speech2), dtype=np.float32)
    if speech2 is None:
        speech2 = np.zeros(len(speech1), dtype=np.float32)

    if audio_type == "para":
        if len(speech1) != len(speech2):
            raise AudioError(
                f"audio_type 'para' needs both speakers equally long: {sources[0]} has {len(speech1)} "
                f"samples ({len(speech1) / SAMPLE_RATE:.3f} s), {sources[1]} has {len(speech2)} "
                f"({len(speech2) / SAMPLE_RATE:.3f} s); trim or pad them, or use 'add' (one after the other)"
            )
        new1, new2 = speech1, speech2
    else:
        new1 = np.concatenate([speech1, np.zeros(len(speech2), dtype=np.float32)])
        new2 = np.concatenate([np.zeros(len(speech1), dtype=np.float32), speech2])
    return PreparedAudio(speeches=(new1, new2), mix=new1 + new2)


def pcm16(mix: np.ndarray) -> np.ndarray:
    """int16 samples as soundfile/libsndfile write `mix` to a PCM_16 WAV (clipping on).

    That is lrint(x * 2**31) >> 16 (an arithmetic shift), saturating at +-1: floor(x * 32768) for
    almost every sample. Reading the file back gives these samples / 32768.
    """
    x = np.asarray(mix)
    if x.ndim != 1 or not np.issubdtype(x.dtype, np.floating):
        raise AudioError(f"pcm16: expected float samples shaped [samples], got {x.dtype} {list(x.shape)}")
    if not np.all(np.isfinite(x)):
        bad = int(np.flatnonzero(~np.isfinite(x))[0])
        raise AudioError(f"pcm16: sample {bad} is {x[bad]}; expected finite values")
    scaled = x.astype(np.float64) * _PCM16_SCALE
    top, bottom = _PCM16_SCALE - 1, -_PCM16_SCALE
    # np.rint rounds half to even, as lrint does in the default rounding mode.
    inner = np.rint(np.clip(scaled, bottom, top)).astype(np.int64) >> _PCM16_SHIFT
    out = np.where(scaled >= top, 32767, np.where(scaled <= bottom, -32768, inner))
    return out.astype(np.int16)


def _normalised(wave: np.ndarray, source: str) -> np.ndarray:
    wave = np.asarray(wave)
    if wave.ndim != 1 or not np.issubdtype(wave.dtype, np.floating):
        raise AudioError(
            f"{source}: expected mono float samples shaped [samples], got {wave.dtype} {list(wave.shape)}"
        )
    if not np.all(np.isfinite(wave)):
        bad = int(np.flatnonzero(~np.isfinite(wave))[0])
        raise AudioError(f"{source}: sample {bad} is {wave[bad]}; expected finite values")
    return loudness_normalize(wave.astype(np.float32, copy=False), SAMPLE_RATE, source=source)
