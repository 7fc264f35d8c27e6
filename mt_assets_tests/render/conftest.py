"""Golden fixtures for the render tests: the reference's tiny DiT and VAE, loaded through our loaders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mt_assets.models.dit import MultiTalkTransformer3DModel
from mt_assets.models.dit_loading import load_multitalk_transformer
from mt_assets.models.vae import load_vae
from mt_assets.tiny.dit import write_original_format
from mt_assets_tests.golden import DIT_GOLDEN_DIR, PIPELINE_GOLDEN_DIR


def golden(name: str) -> dict[str, torch.Tensor]:
    """A safetensors file of the pipeline golden set (`sampler`, `streaming`, ...)."""
    return load_file(str(PIPELINE_GOLDEN_DIR / f"{name}_golden.safetensors"))


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert tuple(a.shape) == tuple(b.shape), (tuple(a.shape), tuple(b.shape))
    return (a.double() - b.double()).abs().max().item()


@pytest.fixture(scope="session")
def pipeline_golden_json() -> dict:
    return json.loads((PIPELINE_GOLDEN_DIR / "pipeline_golden.json").read_text())


@pytest.fixture(scope="session")
def dit_inputs() -> dict[str, torch.Tensor]:
    return load_file(str(DIT_GOLDEN_DIR / "dit_inputs.safetensors"))


@pytest.fixture(scope="session")
def golden_dit(tmp_path_factory: pytest.TempPathFactory) -> MultiTalkTransformer3DModel:
    """The chained tiny DiT, written in the published formats and loaded by the production loader."""
    root = tmp_path_factory.mktemp("golden_dit")
    config = json.loads((DIT_GOLDEN_DIR / "dit_config.json").read_text())
    state = load_file(str(DIT_GOLDEN_DIR / "dit_weights.safetensors"))
    write_original_format(state, config, root / "wan", root / "multitalk", shards=2)
    return load_multitalk_transformer(root / "wan", root / "multitalk")


@pytest.fixture(scope="session")
def golden_vae():
    return load_vae(Path(PIPELINE_GOLDEN_DIR / "vae_tiny.pth"))
