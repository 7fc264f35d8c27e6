"""load_pipeline_components: the worker's whole load path, offline, from a provisioned tiny volume."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mt_assets.manifest import ManifestError, load_profile
from mt_assets.models.audio import audio_features
from mt_assets.models.checkpoints import CheckpointError
from mt_assets.models.pipeline import UNITS, load_pipeline_components
from mt_assets.models.reading import STRATEGIES
from mt_assets.volume import LocalVolume


@pytest.fixture(scope="module")
def components(tiny_volume: Path):
    return load_pipeline_components(LocalVolume(tiny_volume), load_profile("tiny"))


def test_every_unit_loads_and_reports_seconds_and_bytes(components, tiny_volume: Path) -> None:
    assert set(components.reports) == set(UNITS)
    tiny = load_profile("tiny")
    for unit, report in components.reports.items():
        on_volume = sum(
            Path(tiny_volume, f.target).stat().st_size
            for name in UNITS[unit]
            for f in tiny.component(name).files
        )
        assert report.bytes == on_volume, unit
        assert set(report.files) == {f.target for name in UNITS[unit] for f in tiny.component(name).files}
        assert report.seconds > 0
    assert components.bytes == sum(f.size for f in tiny.files)  # every file of the profile is loaded
    assert all(getattr(components, u.replace("-", "_")) is not None for u in UNITS)


def test_a_forward_pass_with_audio_from_a_synthetic_waveform_has_the_latent_shape(
    components, tmp_path: Path
) -> None:
    sr = 16_000
    t = np.arange(int(1.2 * sr)) / sr
    wave = 0.3 * np.sin(2 * np.pi * (120 + 80 * t) * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    wav = tmp_path / "speech.wav"
    sf.write(wav, wave.astype(np.float32), sr, subtype="PCM_16")
    frames = 17  # 4n+1 video frames -> 5 latent frames
    fe, w2v = components.wav2vec2
    audio = audio_features(wav, fe, w2v, num_frames=frames).unsqueeze(0)  # one speaker
    assert audio.shape == (1, frames, 5, 2, 32)

    gen = torch.Generator().manual_seed(0)
    latent_frames, h, w = (frames - 1) // 4 + 1, 8, 12
    x = torch.randn(16, latent_frames, h, w, generator=gen)
    y = torch.randn(1, 20, latent_frames, h, w, generator=gen)
    ids = components.t5_tokenizer(["a person talking"], return_tensors="pt")
    with torch.no_grad():
        context = components.t5(input_ids=ids.input_ids, attention_mask=ids.attention_mask).last_hidden_state[
            0
        ]
        clip = components.clip(
            pixel_values=torch.randn(1, 3, 224, 224, generator=gen), output_hidden_states=True
        )
        clip_fea = clip.hidden_states[-2]
        out = components.transformer.forward_reference(x, torch.tensor([500.0]), context, clip_fea, y, audio)
    assert out.shape == (1, 16, latent_frames, h, w)
    assert torch.isfinite(out).all()


def test_a_key_removed_from_the_adapter_on_the_volume_is_named(tiny_volume: Path, tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    copy = tmp_path / "volume"
    shutil.copytree(tiny_volume, copy, ignore=shutil.ignore_patterns(".mt"))
    adapter = copy / "models/MeiGen-MultiTalk/multitalk.safetensors"
    tensors = load_file(adapter)
    del tensors["blocks.1.norm_x.weight"]
    save_file(tensors, adapter)
    with pytest.raises(CheckpointError, match=r"blocks\.1\.norm_x\.weight"):
        load_pipeline_components(LocalVolume(copy), load_profile("tiny"), only=["transformer"])


def test_unknown_units_are_refused(tiny_volume: Path) -> None:
    with pytest.raises(ManifestError, match=r"unknown units \['unet'\]"):
        load_pipeline_components(LocalVolume(tiny_volume), load_profile("tiny"), only=["unet"])


def test_loading_works_with_the_hub_unreachable(tiny_volume: Path) -> None:
    """The load in a fresh interpreter with HF offline and an empty cache: nothing comes from the Hub."""
    code = (
        "from mt_assets.volume import LocalVolume; from mt_assets.manifest import load_profile;"
        "from mt_assets.models.pipeline import load_pipeline_components as l;"
        f"r = l(LocalVolume({str(tiny_volume)!r}), load_profile('tiny')); print(sorted(r.reports))"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(tiny_volume.parent / "hf"),
        "HF_ENDPOINT": "http://127.0.0.1:9",
    }
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(sorted(UNITS))


def test_a_background_unit_starts_once_the_others_are_in_and_gives_the_same_weights(
    components, tiny_volume: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    import mt_assets.models.dit_loading as dit

    release = threading.Event()
    real_load = dit.load_multitalk_transformer
    loaded_units: list[str] = []
    in_when_started: list[str] = []

    def held_load(*args: object, **kwargs: object):
        # The DiT's read is held until the test lets it go: so the call returning at all proves
        # that the caller does not wait for it.
        in_when_started.extend(loaded_units)
        assert release.wait(60), "the test never released the DiT"
        return real_load(*args, **kwargs)

    monkeypatch.setattr(dit, "load_multitalk_transformer", held_load)
    loaded = load_pipeline_components(
        LocalVolume(tiny_volume),
        load_profile("tiny"),
        background=["transformer"],
        on_loaded=lambda r: loaded_units.append(r.unit),
    )
    assert loaded.transformer is None and "transformer" in loaded.pending
    assert loaded.t5 is not None and loaded.vae is not None and "transformer" not in loaded.reports
    release.set()
    loaded.wait()
    # the encoders' files were read first, with the volume to themselves
    assert sorted(in_when_started) == sorted(u for u in UNITS if u != "transformer")
    assert not loaded.pending and "transformer" in loaded.reports
    theirs = components.transformer.state_dict()
    ours = loaded.transformer.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_a_background_load_error_is_raised_by_wait(tiny_volume: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "volume"
    shutil.copytree(tiny_volume, copy, ignore=shutil.ignore_patterns(".mt"))
    (copy / "models/MeiGen-MultiTalk/multitalk.safetensors").write_bytes(b"not safetensors")
    loaded = load_pipeline_components(
        LocalVolume(copy), load_profile("tiny"), only=["transformer", "vae"], background=["transformer"]
    )
    assert loaded.vae is not None
    with pytest.raises(CheckpointError, match=r"multitalk\.safetensors"):
        loaded.wait("transformer")


def test_background_units_must_be_loaded_ones(tiny_volume: Path) -> None:
    with pytest.raises(ManifestError, match=r"background units \['transformer'\]"):
        load_pipeline_components(
            LocalVolume(tiny_volume), load_profile("tiny"), only=["vae"], background=["transformer"]
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_strategy_loads_every_unit_to_the_same_weights(tiny_volume: Path, dtype: torch.dtype) -> None:
    volume, tiny = LocalVolume(tiny_volume), load_profile("tiny")
    loaded = {
        s: load_pipeline_components(volume, tiny, dtype=dtype, strategy=s, repacks=False) for s in STRATEGIES
    }
    for unit in ("transformer", "t5", "clip", "vae", "wav2vec2"):
        states = {}
        for strategy, components in loaded.items():
            module = getattr(components, unit)
            states[strategy] = (module[1] if unit == "wav2vec2" else module).state_dict()
        reference = states["mmap"]
        for strategy, state in states.items():
            assert state.keys() == reference.keys(), (unit, strategy)
            for key, value in state.items():
                assert value.dtype == reference[key].dtype and torch.equal(value, reference[key]), (
                    unit,
                    strategy,
                    key,
                )


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa
    )


def test_a_lora_profile_merges_its_lora_into_the_transformer_and_reports_the_file(
    tiny_fusionx_volume: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from mt_assets.models.lora import merge_loras

    volume, fusionx = LocalVolume(tiny_fusionx_volume), load_profile("tiny-fusionx")
    [(lora, scale)] = fusionx.loras
    with caplog.at_level(logging.INFO, logger="mt_assets.models.pipeline"):
        merged = load_pipeline_components(volume, fusionx, only=["transformer"])
    plain = load_pipeline_components(volume, load_profile("tiny"), only=["transformer"]).transformer
    assert not _same_weights(merged.transformer, plain)
    [expected] = merge_loras(plain, [(volume.path(lora.target), scale)], dtype=torch.float32)
    assert _same_weights(merged.transformer, plain)  # the DiT as loaded, then the LoRA merged at its scale
    report = merged.reports["transformer"]
    assert report.components == ("wan-dit", "multitalk", "lora-fusionx")
    assert report.files[-1] == lora.target
    assert report.bytes == sum(Path(tiny_fusionx_volume, t).stat().st_size for t in report.files)
    assert expected.summary() in caplog.text and "78 weight adjustments" in caplog.text


def test_a_bf16_load_from_the_repack_merges_the_lora_too(tiny_fusionx_volume: Path, tmp_path: Path) -> None:
    from mt_assets.models.repack import TRANSFORMER, repack_transformer
    from mt_assets_tests.offline.conftest import copy_volume

    volume, fusionx = (
        LocalVolume(copy_volume(tiny_fusionx_volume, tmp_path / "volume")),
        load_profile("tiny-fusionx"),
    )
    repack_transformer(volume, fusionx)
    from_repack = load_pipeline_components(volume, fusionx, dtype=torch.bfloat16, only=["transformer"])
    originals = load_pipeline_components(
        volume, fusionx, dtype=torch.bfloat16, only=["transformer"], repacks=False
    )
    report = from_repack.reports["transformer"]
    assert report.repack == TRANSFORMER and report.files[-1] == fusionx.loras[0][0].target
    assert _same_weights(from_repack.transformer, originals.transformer)


def test_a_lora_whose_keys_match_nothing_is_an_error_naming_the_file(
    tiny_fusionx_volume: Path, tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    from mt_assets.models.lora import LoraError
    from mt_assets_tests.offline.conftest import copy_volume

    volume, fusionx = (
        LocalVolume(copy_volume(tiny_fusionx_volume, tmp_path / "volume")),
        load_profile("tiny-fusionx"),
    )
    [(lora, _)] = fusionx.loras
    save_file(
        {"lora_unet_blocks_0_ffn_2.lora_down.weight": torch.zeros(4, 48)}, str(volume.path(lora.target))
    )
    with pytest.raises(LoraError, match=rf"LoRA {volume.path(lora.target)}: none of its 1 keys applies"):
        load_pipeline_components(volume, fusionx, only=["transformer"])
