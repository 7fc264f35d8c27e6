"""Tiny stand-ins for Wan2.1's T5, CLIP, VAE and tokenizer files: same names, formats and keys, toy sizes.

Each writer puts one real-format file (or folder) into a Wan model directory:

    models_t5_umt5-xxl-enc-bf16.pth                         Wan T5 encoder keys, bf16 (like the real file)
    models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth Wan CLIP keys (visual.*, textual.*, log_scale), fp32
    Wan2.1_VAE.pth                                          Wan VAE keys, fp32
    google/umt5-xxl/{special_tokens_map.json, spiece.model, tokenizer.json, tokenizer_config.json}
    xlm-roberta-large/{sentencepiece.bpe.model, special_tokens_map.json, tokenizer.json, tokenizer_config.json}

The sizes (TINY_*) are chosen so the loaders' shape inference exercises the real rules:
T5 width 32 (the tiny DiT's text_dim), CLIP vision width 160 = 2 heads x 80 at 224 px /
patch 14 → 257 tokens like ViT-H/14 (so the tiny DiT's image_dim must be 160), VAE z_dim 16
(the DiT's latent channels).

Deterministic: the same seed gives byte-identical files. Weights come from one seeded
torch.Generator drawn in sorted key order; `.pth` files are a plain {key: tensor} dict in
sorted key order, pickled through a buffer so the zip's archive name does not depend on
the destination (torch's zip writer stores no timestamps). The sentencepiece models are
trained single-threaded on the built-in corpus below; the tokenizer JSONs are derived
from them. Files are written to a temporary name and renamed into place.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import sentencepiece as spm
import torch

from mt_assets.models.clip_vision import CLIP_FILE, wan_clip_textual_shapes, wan_clip_visual_shapes
from mt_assets.models.text_encoder import T5_FILE, wan_t5_shapes
from mt_assets.models.tokenizers import CLIP_TOKENIZER_DIR, T5_TOKENIZER_DIR
from mt_assets.models.vae import VAE_FILE, WanVAESizes, wan_vae_keys

TINY_T5 = {
    "vocab": 256,  # covers the tiny umt5 tokenizer (checked when it is built)
    "dim": 32,
    "dim_attn": 32,
    "dim_ffn": 64,
    "num_heads": 4,
    "num_layers": 2,
    "num_buckets": 8,
}
TINY_CLIP_VISUAL = {"width": 160, "mlp": 640, "layers": 2, "patch": 14, "image_size": 224, "embed_dim": 64}
TINY_CLIP_TEXTUAL = {"vocab": 256, "dim": 32, "layers": 1, "max_len": 34, "type_size": 1, "embed_dim": 64}
TINY_VAE = WanVAESizes(base_dim=4, z_dim=16, dim_mult=(1, 1, 1, 1), num_res_blocks=1)

TINY_T5_EXTRA_IDS = 8
TINY_TOKENIZER_MAX_LENGTH = 512

# Enough varied text for sentencepiece to learn a vocabulary of a couple of hundred pieces.
CORPUS = (
    "A woman with long dark hair is talking to the camera in a bright room.",
    "Two people sit at a wooden table and speak about the weather.",
    "The man smiles, nods and answers a question from the interviewer.",
    "A child sings a short song while the sun sets behind the hills.",
    "An old friend laughs and tells a story about the city at night.",
    "The presenter explains the news in a calm and clear voice.",
    "She raises her hand, turns her head slightly and keeps talking.",
    "Soft light falls on his face; the background is a quiet library.",
    "They are having a lively conversation in a small kitchen.",
    "A singer performs on stage with a microphone and a guitar.",
    "The teacher points at the board and describes the lesson.",
    "Close-up portrait, natural expression, realistic lips and eyes.",
    "Two speakers take turns: the first asks, the second replies.",
    "A doctor speaks kindly to a patient in a white clinic.",
    "The video shows a person reading a poem aloud, slowly and warmly.",
    "Rain taps on the window while a grandmother tells an old tale.",
    "The reporter stands outside in the wind and describes the storm.",
    "High quality, detailed, stable camera, cinematic lighting.",
    "Bonjour, je m'appelle Marie et j'habite à Paris.",
    "Hola, ¿cómo estás? Estoy muy bien, gracias.",
    "Guten Tag, wie geht es Ihnen heute?",
    "Numbers: 1 2 3 4 5 6 7 8 9 10, and the year 2025.",
)


# ---- weights -------------------------------------------------------------------------------


def write_tiny_t5(wan_dir: str | Path, seed: int = 0, *, sizes: Mapping[str, int] = TINY_T5) -> Path:
    """`<wan_dir>/models_t5_umt5-xxl-enc-bf16.pth`: a tiny Wan T5 encoder in bf16 (`sizes`: see TINY_T5)."""
    state = random_state(wan_t5_shapes(**sizes), seed)
    return _save_pth({k: v.to(torch.bfloat16) for k, v in state.items()}, Path(wan_dir) / T5_FILE)


def write_tiny_clip(
    wan_dir: str | Path,
    seed: int = 0,
    *,
    visual: Mapping[str, int] = TINY_CLIP_VISUAL,
    textual: Mapping[str, int] = TINY_CLIP_TEXTUAL,
) -> Path:
    """`<wan_dir>/models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`: tiny Wan CLIP, both towers."""
    shapes = wan_clip_visual_shapes(**visual) | wan_clip_textual_shapes(**textual)
    return _save_pth(random_state(shapes, seed), Path(wan_dir) / CLIP_FILE)


def write_tiny_vae(wan_dir: str | Path, seed: int = 0, *, sizes: WanVAESizes = TINY_VAE) -> Path:
    """`<wan_dir>/Wan2.1_VAE.pth`: a tiny Wan VAE (default base_dim 4, z_dim 16, dim_mult 1,1,1,1, one res block)."""
    shapes = {k: shape for k, (_, shape) in wan_vae_keys(sizes).items()}
    return _save_pth(random_state(shapes, seed), Path(wan_dir) / VAE_FILE)


def random_state(shapes: Mapping[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Seeded random fp32 weights in sorted key order, scaled so activations stay O(1) through toy depths.

    Norm scales are drawn near 1 rather than set to 1, so that swapping two norms in a
    mapping changes the output (a test would not see it with all-ones).
    """
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key in sorted(shapes):
        shape = tuple(shapes[key])
        if key == "log_scale":
            out[key] = torch.tensor(math.log(1 / 0.07))
        elif key.endswith(".gamma") or ("norm" in key and len(shape) == 1 and key.endswith(".weight")):
            out[key] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif key.endswith(".bias"):
            out[key] = 0.02 * torch.randn(shape, generator=g)
        else:
            fan_in = math.prod(shape[1:]) or 1
            out[key] = torch.randn(shape, generator=g) * fan_in**-0.5
    return out


def _save_pth(state: Mapping[str, torch.Tensor], path: Path) -> Path:
    buf = io.BytesIO()
    torch.save({k: state[k].contiguous() for k in sorted(state)}, buf)
    _write_bytes(path, buf.getvalue())
    return path


# ---- tokenizers ----------------------------------------------------------------------------


def write_tiny_tokenizers(wan_dir: str | Path) -> tuple[Path, Path]:
    """`<wan_dir>/google/umt5-xxl/` and `<wan_dir>/xlm-roberta-large/`, the same four files as the real ones."""
    wan_dir = Path(wan_dir)
    return _write_t5_tokenizer(wan_dir / T5_TOKENIZER_DIR), _write_xlmr_tokenizer(
        wan_dir / CLIP_TOKENIZER_DIR
    )


def _train_sentencepiece(**ids: int) -> bytes:
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=buf,
        model_type="unigram",
        vocab_size=200,
        hard_vocab_limit=False,  # the corpus is small: take what it supports, up to 200
        character_coverage=1.0,
        num_threads=1,  # one thread: the EM steps then run in a fixed order (byte-identical models)
        minloglevel=2,
        **ids,
    )
    return buf.getvalue()


def _write_t5_tokenizer(folder: Path) -> Path:
    # umt5's id layout: <pad>=0, </s>=1, <unk>=2, then pieces, then <extra_id_N> at the top.
    model = _train_sentencepiece(pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
    extra = [f"<extra_id_{i}>" for i in range(TINY_T5_EXTRA_IDS)]
    config = {
        "tokenizer_class": "T5Tokenizer",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "extra_ids": TINY_T5_EXTRA_IDS,
        "additional_special_tokens": extra,
        "model_max_length": TINY_TOKENIZER_MAX_LENGTH,
        "clean_up_tokenization_spaces": True,
    }
    special = {
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "additional_special_tokens": extra,
    }
    size = _write_tokenizer(folder, "spiece.model", model, config, special)
    if size > TINY_T5["vocab"]:
        raise RuntimeError(
            f"tiny umt5 tokenizer has {size} tokens, more than the tiny T5's {TINY_T5['vocab']} rows"
        )
    return folder


def _write_xlmr_tokenizer(folder: Path) -> Path:
    # sentencepiece's defaults (<unk>=0, <s>=1, </s>=2); the tokenizer adds fairseq's offset and <mask>.
    model = _train_sentencepiece(unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    tokens = {
        "bos_token": "<s>",
        "cls_token": "<s>",
        "eos_token": "</s>",
        "sep_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
    }
    config = {
        "tokenizer_class": "XLMRobertaTokenizer",
        **tokens,
        "mask_token": "<mask>",
        "model_max_length": TINY_CLIP_TEXTUAL["max_len"] - 2,
        "clean_up_tokenization_spaces": True,
    }
    special = {**tokens, "mask_token": {"content": "<mask>", "lstrip": True, "normalized": False,
                                        "rstrip": False, "single_word": False}}  # fmt: skip
    size = _write_tokenizer(folder, "sentencepiece.bpe.model", model, config, special)
    if size > TINY_CLIP_TEXTUAL["vocab"]:
        raise RuntimeError(
            f"tiny xlm-roberta tokenizer has {size} tokens, more than {TINY_CLIP_TEXTUAL['vocab']}"
        )
    return folder


def _write_tokenizer(
    folder: Path, model_name: str, model: bytes, config: dict[str, object], special: dict[str, object]
) -> int:
    """Write the four files; tokenizer.json is transformers' own conversion of the sentencepiece model."""
    from transformers import AutoTokenizer  # heavy import, only needed when building

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        (src / model_name).write_bytes(model)
        (src / "tokenizer_config.json").write_text(json.dumps(config))
        tokenizer = AutoTokenizer.from_pretrained(str(src), local_files_only=True)
        tokenizer_json = tokenizer.backend_tokenizer.to_str(pretty=True)
        size = len(tokenizer)
    folder.mkdir(parents=True, exist_ok=True)
    _write_bytes(folder / model_name, model)
    _write_bytes(folder / "tokenizer.json", tokenizer_json.encode())
    _write_bytes(folder / "tokenizer_config.json", _json(config))
    _write_bytes(folder / "special_tokens_map.json", _json(special))
    return size


def _json(obj: object) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
