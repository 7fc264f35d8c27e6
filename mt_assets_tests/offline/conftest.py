"""Offline-proof fixtures: a writable copy of the tiny volume, and a home cache outside it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

T5_TOKENIZER_JSON = "models/Wan2.1-I2V-14B-480P/google/umt5-xxl/tokenizer.json"


def copy_volume(src: Path, dest: Path) -> Path:
    """The volume's model files only (not its .mt/ state), so the session fixture stays untouched."""
    shutil.copytree(src / "models", dest / "models")
    return dest


@pytest.fixture(scope="module")
def volume_without_t5_tokenizer_json(tiny_volume: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = copy_volume(tiny_volume, tmp_path_factory.mktemp("offline") / "volume")
    (root / T5_TOKENIZER_JSON).unlink()
    return root


@pytest.fixture(scope="module")
def home_cache_snapshot(tiny_volume: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wav2vec2 processor left in a home cache, as a worker image built with the Hub would have it."""
    snapshot = (
        tmp_path_factory.mktemp("home")
        / ".cache/huggingface/hub/models--TencentGameMate--chinese-wav2vec2-base/snapshots/0123abcd"
    )
    snapshot.mkdir(parents=True)
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copy(tiny_volume / "models/chinese-wav2vec2-base" / name, snapshot / name)
    return snapshot
