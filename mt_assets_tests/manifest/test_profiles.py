"""The shipped profiles declare what the system really loads."""

from __future__ import annotations

import pytest

from mt_assets.manifest import ManifestError, load_profile, profile_names


def test_multitalk_480p_declares_every_file_the_system_loads() -> None:
    m = load_profile("multitalk-480p")
    targets = {f.target for f in m.files}
    wan = "models/Wan2.1-I2V-14B-480P/"
    shards = {f"{wan}diffusion_pytorch_model-0000{i}-of-00007.safetensors" for i in range(1, 8)}
    assert shards <= targets
    assert {
        f"{wan}config.json",
        f"{wan}diffusion_pytorch_model.safetensors.index.json",
        f"{wan}models_t5_umt5-xxl-enc-bf16.pth",
        f"{wan}models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
        f"{wan}Wan2.1_VAE.pth",
        f"{wan}google/umt5-xxl/tokenizer.json",
        f"{wan}google/umt5-xxl/spiece.model",
        f"{wan}xlm-roberta-large/sentencepiece.bpe.model",
        f"{wan}xlm-roberta-large/tokenizer.json",
        "models/MeiGen-MultiTalk/multitalk.safetensors",
        "models/MeiGen-MultiTalk/diffusion_pytorch_model.safetensors.index.json",
        "models/chinese-wav2vec2-base/config.json",
        "models/chinese-wav2vec2-base/preprocessor_config.json",
        "models/chinese-wav2vec2-base/model.safetensors",
    } <= targets
    assert m.component("wav2vec2").revision == "refs/pr/1"


def test_multitalk_480p_leaves_out_what_it_does_not_load() -> None:
    m = load_profile("multitalk-480p")
    assert not any("wav2vec2-large-960h" in c.repo for c in m.components)
    assert not any("quant_models" in f.path for f in m.files)
    assert not any(f.path in ("pytorch_model.bin", "chinese-wav2vec2-base-fairseq-ckpt.pt") for f in m.files)


def test_multitalk_480p_pins_the_reference_sizes_and_hashes() -> None:
    files = {f.path: f for f in load_profile("multitalk-480p").files}
    assert files["multitalk.safetensors"].size == 9_947_889_040
    assert (
        files["multitalk.safetensors"].sha256
        == "f4b48e2eb148e2407711dfc29ef411820094e5684435d5791a6d34b53fe9e1db"
    )
    assert (
        files["Wan2.1_VAE.pth"].sha256 == "38071ab59bd94681c686fa51d75a1968f64e470262043be31f7a094e442fd981"
    )
    planned = sum(f.planned_size or 0 for f in files.values())
    assert 92e9 < planned < 94e9  # the "core set ≈ 93 GB"


def test_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(ManifestError, match=r"profile 'nope': not found \(known: .*multitalk-480p"):
        load_profile("nope")
    assert "multitalk-480p" in profile_names()
