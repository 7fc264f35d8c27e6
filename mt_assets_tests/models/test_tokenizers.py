"""The two tokenizer folders: built locally, byte-identical across builds, loaded offline, Wan's prompt cleaning."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from mt_assets.models.tokenizers import (
    CLIP_TOKENIZER_DIR,
    CLIP_TOKENIZER_FILES,
    T5_TOKENIZER_DIR,
    T5_TOKENIZER_FILES,
    clean_prompt,
    load_clip_tokenizer,
    load_t5_tokenizer,
    tokenize_prompts,
)
from mt_assets.tiny.wan_parts import TINY_CLIP_TEXTUAL, TINY_T5, write_tiny_tokenizers


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wan = tmp_path_factory.mktemp("wan")
    write_tiny_tokenizers(wan)
    return wan


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_the_folders_hold_the_same_four_files_as_the_real_ones(wan_dir: Path) -> None:
    assert sorted(os.listdir(wan_dir / T5_TOKENIZER_DIR)) == sorted(T5_TOKENIZER_FILES)
    assert sorted(os.listdir(wan_dir / CLIP_TOKENIZER_DIR)) == sorted(CLIP_TOKENIZER_FILES)


def test_two_builds_are_byte_identical(wan_dir: Path, tmp_path: Path) -> None:
    write_tiny_tokenizers(tmp_path)
    assert _digests(tmp_path) == _digests(wan_dir)


def test_t5_tokenizer_loads_offline_and_encodes_a_prompt(wan_dir: Path) -> None:
    tokenizer = load_t5_tokenizer(wan_dir / T5_TOKENIZER_DIR)
    assert type(tokenizer).__name__ == "T5Tokenizer"
    assert len(tokenizer) <= TINY_T5["vocab"]  # every id has a row in the tiny T5's embedding
    ids, mask = tokenize_prompts(tokenizer, ["A woman is talking to the camera.", "Hi"], text_len=16)
    assert ids.shape == mask.shape == (2, 16)
    n = int(mask[0].sum())
    assert (
        ids[0, n - 1] == tokenizer.eos_token_id
        and (ids[1, int(mask[1].sum()) :] == tokenizer.pad_token_id).all()
    )
    assert tokenizer.decode(ids[0, : n - 1]) == "A woman is talking to the camera."


def test_clip_tokenizer_loads_offline_and_encodes_a_prompt(wan_dir: Path) -> None:
    tokenizer = load_clip_tokenizer(wan_dir / CLIP_TOKENIZER_DIR)
    assert type(tokenizer).__name__ == "XLMRobertaTokenizer"
    assert len(tokenizer) <= TINY_CLIP_TEXTUAL["vocab"]
    ids = tokenizer("Two people speak about the weather.").input_ids
    assert ids[0] == tokenizer.cls_token_id == 0 and ids[-1] == tokenizer.eos_token_id == 2
    assert tokenizer.pad_token_id == 1  # fairseq's layout, which Wan's CLIP text tower (pad_id=1) expects


def test_an_incomplete_folder_is_refused_with_the_missing_files_named(wan_dir: Path, tmp_path: Path) -> None:
    # transformers alone would load tokenizer_config.json by itself: special tokens only, every word <unk>.
    folder = tmp_path / "umt5"
    folder.mkdir()
    (folder / "tokenizer_config.json").write_bytes(
        (wan_dir / T5_TOKENIZER_DIR / "tokenizer_config.json").read_bytes()
    )
    with pytest.raises(
        FileNotFoundError, match=r"umt5: missing special_tokens_map.json, spiece.model, tokenizer.json"
    ):
        load_t5_tokenizer(folder)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("  A woman\n\tis   talking.  ", "A woman is talking."),
        ("Tom &amp;amp; Jerry", "Tom & Jerry"),  # unescaped twice, as Wan does
        ("schÃ¶n", "schön"),  # mojibake fixed by ftfy
        ("“quoted”  ", '"quoted"'),  # ftfy's defaults straighten curly quotes
    ],
)
def test_prompts_are_cleaned_like_wans_whitespace_clean(raw: str, clean: str) -> None:
    assert clean_prompt(raw) == clean
