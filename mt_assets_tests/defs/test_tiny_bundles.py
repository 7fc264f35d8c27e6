"""The tiny profile's real bundles, built through Dagster from the mirror: what loaded is recorded."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from mt_assets.defs import build_definitions
from mt_assets.defs.keys import bundle_key, file_key
from mt_assets.defs.resources import SourceResource, VolumeResource
from mt_assets.manifest import load_profile


def test_the_tiny_bundles_load_and_record_their_classes(tiny_mirror: Path, tmp_path: Path) -> None:
    manifest = load_profile("tiny")
    volume = tmp_path / "volume"
    volume.mkdir()
    defs = build_definitions(
        manifest,
        resources={
            "volume": VolumeResource(path=str(volume)),
            "source": SourceResource(spec=str(tiny_mirror)),
        },
    )
    selection = [bundle_key(b) for b in manifest.bundles] + [
        file_key(f) for b in manifest.bundles for f in b.files
    ]
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance, asset_selection=selection
        )
    assert result.success
    loaded = {
        e.asset_key: {k: v.value for k, v in e.materialization.metadata.items()}
        for e in result.get_asset_materialization_events()
        if e.asset_key.path[0] == "bundles"
    }
    w2v = loaded[dg.AssetKey(["bundles", "wav2vec2_processor"])]
    assert (w2v["class"], w2v["sampling_rate"], w2v["hidden_size"], w2v["num_hidden_layers"]) == (
        "Wav2Vec2FeatureExtractor",
        16000,
        32,
        2,
    )
    for name in ("t5_tokenizer", "clip_tokenizer"):
        tok = loaded[dg.AssetKey(["bundles", name])]
        assert tok["vocab_size"] > 100 and tok["sample_tokens"] > 1, name
        assert str(tok["path"]).startswith(str(volume))
    # Only the bundles' own files were provisioned: the weights were not needed to load them.
    assert not (volume / "models/Wan2.1-I2V-14B-480P/Wan2.1_VAE.pth").exists()
