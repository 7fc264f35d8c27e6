"""Wan's T5 checkpoint → transformers' UMT5EncoderModel: sizes from shapes, strict keys, same numbers as Wan's T5."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mt_assets.models.checkpoints import CheckpointError
from mt_assets.models.text_encoder import (
    T5_FILE,
    encode_text,
    load_t5_encoder,
    t5_config_from_state,
    wan_t5_shapes,
)
from mt_assets.models.tokenizers import T5_TOKENIZER_DIR, load_t5_tokenizer, tokenize_prompts
from mt_assets.tiny.wan_parts import TINY_T5, write_tiny_t5, write_tiny_tokenizers


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_t5(tmp_path_factory.mktemp("wan"), seed=0)


# ---- a plain re-statement of Wan's T5 encoder forward (wan/modules/t5.py), on Wan's keys ----


def _bucket(rel: torch.Tensor, num_buckets: int, max_dist: int = 128) -> torch.Tensor:
    half = num_buckets // 2  # bidirectional: half the buckets for keys after the query
    out = (rel > 0).long() * half
    rel = rel.abs()
    exact = half // 2
    large = exact + (torch.log(rel.float() / exact) / math.log(max_dist / exact) * (half - exact)).long()
    large = large.clamp(max=half - 1)
    return out + torch.where(rel < exact, rel, large)


def _rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def wan_t5_reference(sd: dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    sd = {k: v.float() for k, v in sd.items()}
    b, n = ids.shape
    x = sd["token_embedding.weight"][ids]
    layers = sum(1 for k in sd if k.endswith(".attn.q.weight"))
    for i in range(layers):
        p = f"blocks.{i}."
        buckets, heads = sd[p + "pos_embedding.embedding.weight"].shape
        pos = torch.arange(n)
        bias = sd[p + "pos_embedding.embedding.weight"][_bucket(pos[None, :] - pos[:, None], buckets)]
        bias = bias.permute(2, 0, 1)[None].clone()  # [1, heads, Lq, Lk]
        bias = bias.expand(b, -1, -1, -1).masked_fill(mask.view(b, 1, 1, n) == 0, torch.finfo(x.dtype).min)
        h = _rms(x, sd[p + "norm1.weight"])
        q, k, v = (F.linear(h, sd[p + f"attn.{c}.weight"]).view(b, n, heads, -1) for c in "qkv")
        attn = torch.softmax(torch.einsum("binc,bjnc->bnij", q, k) + bias, dim=-1)  # no 1/sqrt(d) in T5
        x = x + F.linear(torch.einsum("bnij,bjnc->binc", attn, v).reshape(b, n, -1), sd[p + "attn.o.weight"])
        h = _rms(x, sd[p + "norm2.weight"])
        gate = F.gelu(F.linear(h, sd[p + "ffn.gate.0.weight"]), approximate="tanh")
        x = x + F.linear(F.linear(h, sd[p + "ffn.fc1.weight"]) * gate, sd[p + "ffn.fc2.weight"])
    return _rms(x, sd["norm.weight"])


# ---- tests ---------------------------------------------------------------------------------


def test_tiny_t5_loads_with_sizes_read_from_shapes(tiny_t5: Path) -> None:
    model = load_t5_encoder(tiny_t5)
    c = model.config
    assert (c.vocab_size, c.d_model, c.d_ff, c.num_layers, c.num_heads, c.d_kv) == (256, 32, 64, 2, 4, 8)
    assert c.relative_attention_num_buckets == 8 and c.is_gated_act and c.dense_act_fn == "gelu_new"
    assert not model.training
    assert model.shared.weight.dtype == torch.float32  # fp32 by default although the file is bf16
    assert model.encoder.embed_tokens.weight.data_ptr() == model.shared.weight.data_ptr()


def test_umt5_xxl_sizes_are_inferred_from_the_real_key_shapes() -> None:
    real = {"vocab": 256384, "dim": 4096, "dim_attn": 4096, "dim_ffn": 10240, "num_heads": 64}
    shapes = wan_t5_shapes(**real, num_layers=24, num_buckets=32)
    c = t5_config_from_state({k: torch.empty(s, device="meta") for k, s in shapes.items()}, "umt5-xxl")
    assert (c.vocab_size, c.d_model, c.d_ff, c.num_layers, c.num_heads, c.d_kv) == (
        256384,
        4096,
        10240,
        24,
        64,
        64,
    )
    assert c.relative_attention_num_buckets == 32


def test_t5_computes_what_wans_t5_computes_including_the_padding_mask(tiny_t5: Path) -> None:
    model = load_t5_encoder(tiny_t5)
    sd = torch.load(tiny_t5, weights_only=True)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, TINY_T5["vocab"], (2, 12), generator=g)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 7:] = 0
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert out.shape == (2, 12, 32)
    torch.testing.assert_close(out, wan_t5_reference(sd, ids, mask), atol=1e-5, rtol=1e-5)


def test_padding_does_not_change_the_states_of_real_tokens(tiny_t5: Path) -> None:
    model = load_t5_encoder(tiny_t5)
    ids = torch.tensor([[5, 17, 42, 9, 1]])
    padded = torch.cat([ids, torch.zeros(1, 11, dtype=torch.long)], dim=1)
    mask = (torch.arange(16) < 5).long()[None]
    (short,) = encode_text(model, ids, torch.ones_like(ids))
    (long,) = encode_text(model, padded, mask)
    assert long.shape == (5, 32)
    torch.testing.assert_close(long, short, atol=1e-5, rtol=1e-5)


def test_prompt_goes_through_the_tiny_tokenizer_and_encoder(tmp_path: Path, tiny_t5: Path) -> None:
    write_tiny_tokenizers(tmp_path)
    tokenizer = load_t5_tokenizer(tmp_path / T5_TOKENIZER_DIR)
    assert len(tokenizer) <= TINY_T5["vocab"]
    ids, mask = tokenize_prompts(
        tokenizer, ["A woman is talking.", "Two people speak about the weather."], 24
    )
    states = encode_text(load_t5_encoder(tiny_t5), ids, mask)
    assert [s.shape[0] for s in states] == mask.sum(1).tolist()
    assert all(s.shape[1] == 32 and torch.isfinite(s).all() for s in states)


def test_dtype_and_device_are_parameters(tiny_t5: Path) -> None:
    model = load_t5_encoder(tiny_t5, dtype=torch.bfloat16, device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in model.parameters()} == {"cpu"}


@pytest.mark.parametrize("key", ["blocks.1.ffn.fc1.weight", "token_embedding.weight", "norm.weight"])
def test_a_missing_key_is_named(tmp_path: Path, tiny_t5: Path, key: str) -> None:
    sd = torch.load(tiny_t5, weights_only=True)
    del sd[key]
    torch.save(sd, tmp_path / T5_FILE)
    with pytest.raises(CheckpointError, match=rf"{T5_FILE}: missing key '{key}'"):
        load_t5_encoder(tmp_path / T5_FILE)


def test_an_unexpected_key_is_named(tmp_path: Path, tiny_t5: Path) -> None:
    sd = torch.load(tiny_t5, weights_only=True)
    sd["pos_embedding.embedding.weight"] = torch.zeros(8, 4)  # a shared-position T5: not Wan's umt5
    torch.save(sd, tmp_path / T5_FILE)
    with pytest.raises(CheckpointError, match=r"unexpected key 'pos_embedding.embedding.weight'"):
        load_t5_encoder(tmp_path / T5_FILE)


def test_a_wrong_shape_is_named(tmp_path: Path, tiny_t5: Path) -> None:
    sd = torch.load(tiny_t5, weights_only=True)
    sd["blocks.1.attn.o.weight"] = torch.zeros(32, 16)
    torch.save(sd, tmp_path / T5_FILE)
    with pytest.raises(CheckpointError, match=r"'blocks.1.attn.o.weight' has shape \[32, 16\]"):
        load_t5_encoder(tmp_path / T5_FILE)


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("this must never run",))


def test_a_pickle_with_code_is_refused_not_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save({"token_embedding.weight": torch.zeros(2, 2), "x": _Payload()}, tmp_path / T5_FILE)
    with pytest.raises(CheckpointError, match=rf"{T5_FILE}: refused"):
        load_t5_encoder(tmp_path / T5_FILE)
    assert "must never run" not in capsys.readouterr().out


def test_two_tiny_builds_are_byte_identical(tmp_path: Path) -> None:
    a = write_tiny_t5(tmp_path / "a", seed=3).read_bytes()
    b = write_tiny_t5(tmp_path / "b", seed=3).read_bytes()
    assert a == b
    assert write_tiny_t5(tmp_path / "c", seed=4).read_bytes() != a
    assert {v.dtype for v in torch.load(tmp_path / "a" / T5_FILE, weights_only=True).values()} == {
        torch.bfloat16
    }
