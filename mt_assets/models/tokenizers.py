"""The two tokenizer folders shipped inside the Wan2.1 I2V repo, loaded from the volume only.

    google/umt5-xxl/     spiece.model (sentencepiece unigram), tokenizer.json (the same, as a
                         `tokenizers` model), tokenizer_config.json, special_tokens_map.json
                         → the T5 prompt tokenizer (T5Tokenizer)
    xlm-roberta-large/   sentencepiece.bpe.model, tokenizer.json, tokenizer_config.json,
                         special_tokens_map.json
                         → the CLIP text tokenizer (XLMRobertaTokenizer); the reference code
                           loads it with the CLIP model even though I2V uses only the image tower

Both load with `local_files_only=True`: a folder that is incomplete fails here instead of
quietly reaching for the Hub. Wan cleans T5 prompts first ('whitespace' clean: ftfy,
double HTML unescape, runs of whitespace → one space, strip) and pads/truncates to 512 tokens.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from pathlib import Path

import ftfy
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

T5_TOKENIZER_DIR = "google/umt5-xxl"
CLIP_TOKENIZER_DIR = "xlm-roberta-large"
T5_TOKENIZER_FILES = ("special_tokens_map.json", "spiece.model", "tokenizer.json", "tokenizer_config.json")
CLIP_TOKENIZER_FILES = (
    "sentencepiece.bpe.model",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
)
# Wan2.1's T5 text length (config text_len).
TEXT_LEN = 512

_WHITESPACE = re.compile(r"\s+")


def load_t5_tokenizer(folder: str | Path) -> PreTrainedTokenizerBase:
    """The umt5-xxl tokenizer from `<wan dir>/google/umt5-xxl/`, never from the Hub."""
    return _load(Path(folder), T5_TOKENIZER_FILES)


def load_clip_tokenizer(folder: str | Path) -> PreTrainedTokenizerBase:
    """The xlm-roberta-large tokenizer from `<wan dir>/xlm-roberta-large/`, never from the Hub."""
    return _load(Path(folder), CLIP_TOKENIZER_FILES)


def _load(folder: Path, files: Sequence[str]) -> PreTrainedTokenizerBase:
    # Checked up front because transformers does not fail on its own: a folder with only
    # tokenizer_config.json loads as a tokenizer of special tokens only (every word <unk>).
    missing = [name for name in files if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"tokenizer {folder}: missing {', '.join(missing)} (expected {', '.join(files)})"
        )
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def clean_prompt(text: str) -> str:
    """Wan's 'whitespace' clean for T5 prompts: fix mojibake (ftfy), unescape HTML twice, collapse whitespace."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _WHITESPACE.sub(" ", text).strip()


def tokenize_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: str | Sequence[str], text_len: int = TEXT_LEN
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each [B, text_len]: cleaned, with </s>, padded and truncated as Wan does."""
    batch = [prompts] if isinstance(prompts, str) else list(prompts)
    enc = tokenizer(
        [clean_prompt(p) for p in batch],
        padding="max_length",
        truncation=True,
        max_length=text_len,
        add_special_tokens=True,
        return_tensors="pt",
    )
    return enc.input_ids, enc.attention_mask
