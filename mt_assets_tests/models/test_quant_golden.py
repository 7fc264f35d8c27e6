"""Section N of the acceleration golden set: MeiGen's int8 / fp8 (optimum-quanto) DiT and T5 files.

The golden folder's `quant_models/` holds the tiny files in MeiGen's published layout; they are loaded
by the renderer's own loaders (`load_quantized_transformer`, `load_quantized_t5`: what
`load_pipeline_components` calls for a quantized profile) and compared with the reference's DiT
outputs, sampler trajectories and T5 contexts. Every case and setting comes from `accel_golden.json`.
One reference defect is tested fixed (README N, traps): `requantize` loads with `strict=False`, so a
key missing from a file left uninitialised memory; here it is an error naming the file and the key.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from optimum.quanto import QLinear
from safetensors.torch import load_file, save_file

from mt_assets.models.dit_loading import diffusers_to_reference_key
from mt_assets.models.quant import QuantError, load_quantized_t5, load_quantized_transformer, read_quant_map
from mt_assets.models.text_encoder import encode_text
from mt_assets.render.sampler import Guidance, StepRecord, sample, timesteps
from mt_assets_tests.golden import (
    ACCEL_GOLDEN_DIR,
    DIT_GOLDEN_DIR,
    PIPELINE_GOLDEN_DIR,
    chained_denoiser,
    requires_accel_golden,
    requires_dit_golden,
    requires_pipeline_golden,
)

pytestmark = [requires_accel_golden, requires_dit_golden, requires_pipeline_golden]

# README N, "Precision and tolerance": outputs, trajectories and T5 contexts atol 1e-4. Measured here:
# int8 out_1spk_cond 7.1e-5 (a float64 evaluation of the same dequantized weights lies 2.0e-5 from
# ours and 5.6e-5 from the golden value: the reference's own float32 rounding), fp8 2.6e-5, T5 2e-6.
ATOL = 1e-4
# q1 (int8, guidance 5 / 4, shift 7) amplifies float32 rounding: latents 3 and 4 differ from the golden by
# 2.3e-4, while a float64 evaluation of the same dequantized weights lies 7.5e-5 from ours and 1.9e-4
# from the golden (latents 1, 2: 1.8e-5, 6.7e-5 from the golden). The README's 1e-4 holds up to latent 2;
# later ones get this bound, still ~1000x below what the golden set lists for the float model (q1 rel L2 0.029).
Q1_LATE_FROM, Q1_LATE_ATOL = 3, 3e-4
# And every latent of both samplers lies within a tenth of the smallest mistake the golden set lists
# (golden_manifest.json sensitivities, README N: `int8.map_ignored_all_linears_quantized`, relative L2
# 0.00472), read from the JSON: a max-abs bound alone is not tied to what a real mistake moves.
# Measured: q1 at most 7.9e-6 (latents 3, 4), q2 2.7e-6, against the bound's 4.7e-4.
SENSITIVITY_FRACTION = 0.1
QUANT = ACCEL_GOLDEN_DIR / "quant_models"
# The golden variants and MeiGen's file names for them (wan/multitalk.py: `dit_model_{quant}` with
# `dit_model_map_{quant}.json`; the FusionX file `lora_dir[0]` with `quantization_map_{quant}_FusionX.json`)
VARIANTS = {
    "int8": ("dit_model_int8.safetensors", "dit_model_map_int8.json"),
    "fp8_fusionx": ("quant_model_fp8_FusionX.safetensors", "quantization_map_fp8_FusionX.json"),
}
FORWARD_CASES = {  # chained forward cases (multitalk-tiny README §1.4): text features, audio, masks
    "1spk_cond": ("context", "speaker0", "ref_target_masks_1spk"),
    "2spk_drop_audio": ("context", "null", "ref_target_masks_2spk"),
}


@pytest.fixture(scope="module")
def quant() -> dict:
    return json.loads((ACCEL_GOLDEN_DIR / "accel_golden.json").read_text())["quant"]


@pytest.fixture(scope="module")
def sensitivities() -> dict[str, float]:
    """golden_manifest.json's quantization sensitivities: a perturbation's relative L2 effect."""
    return json.loads((ACCEL_GOLDEN_DIR / "golden_manifest.json").read_text())["sensitivities"]["quant"]


@pytest.fixture(scope="module")
def smallest_mistake(sensitivities: dict[str, float]) -> float:
    """The relative L2 of the smallest listed quantization sensitivity (a mistake's effect)."""
    name, rel_l2 = min(sensitivities.items(), key=lambda kv: kv[1])
    assert name == "int8.map_ignored_all_linears_quantized" and rel_l2 > 0, (name, rel_l2)
    return rel_l2


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(str(ACCEL_GOLDEN_DIR / "quant_golden.safetensors"))


@pytest.fixture(scope="module")
def dit_config() -> dict:
    return json.loads((DIT_GOLDEN_DIR / "dit_config.json").read_text())


@pytest.fixture(scope="module")
def dit_inputs() -> dict[str, torch.Tensor]:
    return load_file(str(DIT_GOLDEN_DIR / "dit_inputs.safetensors"))


@pytest.fixture(scope="module")
def models(dit_config) -> dict[str, torch.nn.Module]:
    return {
        variant: load_quantized_transformer(dit_config, QUANT / file, QUANT / qmap)
        for variant, (file, qmap) in VARIANTS.items()
    }


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert tuple(a.shape) == tuple(b.shape), (tuple(a.shape), tuple(b.shape))
    return (a.double() - b.double()).abs().max().item()


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||, in float64."""
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _forward(model: torch.nn.Module, inputs: dict[str, torch.Tensor], case: str) -> torch.Tensor:
    context, audio_kind, masks = FORWARD_CASES[case]
    audio = {"speaker0": inputs["audio"][0:1], "null": torch.zeros_like(inputs["audio"][-1:])}[audio_kind]
    with torch.no_grad():
        return model.forward_reference(
            inputs["x"], inputs["t"], inputs[context], inputs["clip_fea"], inputs["y"], audio, inputs[masks]
        )[0]


# ------------------------------------------------------------------------------------------ the DiT
def test_the_golden_variants_are_the_files_the_golden_set_describes(quant) -> None:
    assert {f"quant_models/{file}" for file, _ in VARIANTS.values()} == set(quant["files"])
    assert {s["variant"] for s in quant["samplers"].values()} == set(VARIANTS)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_map_decides_which_linears_are_quantized(variant: str, quant, models) -> None:
    """Exactly the map's modules are QLinears (README N: `time_embedding`/`time_projection` stay float)."""
    model = models[variant]
    qmap = read_quant_map(QUANT / VARIANTS[variant][1])
    assert sorted(qmap) == sorted(quant["quantized_modules"])
    names = {diffusers_to_reference_key(f"{n}.weight").removesuffix(".weight"): m for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear | QLinear)}  # fmt: skip
    assert sorted(n for n, m in names.items() if isinstance(m, QLinear)) == sorted(quant["quantized_modules"])
    for name in quant["float_modules_with_linear_weights"]:
        assert type(names[name]) is torch.nn.Linear and names[name].weight.dtype == torch.float32
    for name, kind in quant["loaded_module_types"].items():
        if kind in ("Linear", "QLinear"):
            assert type(names[name]).__name__ == kind, name
    q = names[quant["quantized_modules"][0]]
    assert type(q.weight).__name__ == quant["loaded_weight_type"]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_quantized_dit_outputs_match_the_reference(variant: str, models, golden, dit_inputs) -> None:
    outputs = [k.removeprefix(f"{variant}.out_") for k in golden if k.startswith(f"{variant}.out_")]
    assert sorted(outputs) == sorted(FORWARD_CASES)
    for case in outputs:
        err = _max_abs(_forward(models[variant], dit_inputs, case), golden[f"{variant}.out_{case}"])
        assert err <= ATOL, f"{variant}.out_{case}: max abs {err:.3g}"


@pytest.mark.parametrize("name", ["q1_int8_cfg3", "q2_fp8_fusionx_cfg2"])
def test_quantized_sampler_reproduces_every_step(
    name: str, quant, models, golden, dit_inputs, smallest_mistake: float
) -> None:
    case = quant["samplers"][name]
    denoise = chained_denoiser(models[case["variant"]], dit_inputs, case["speakers"])
    guidance = Guidance(text=case["text_guide_scale"], audio=case["audio_guide_scale"])
    assert guidance.evaluations == case["evals_per_step"]
    trajectory = golden[f"{name}.trajectory"]
    assert trajectory.shape[0] == case["steps"] + 1
    record: list[StepRecord] = []
    final = sample(denoise, trajectory[0], timesteps(case["steps"], case["shift"]), guidance, record=record)
    assert len(record) == case["steps"]
    for i, latent in enumerate([*(step.latent_in for step in record), final]):
        atol = Q1_LATE_ATOL if name == "q1_int8_cfg3" and i >= Q1_LATE_FROM else ATOL
        err = _max_abs(latent, trajectory[i])
        assert err <= atol, f"{name} latent {i}: max abs {err:.3g}"
        rel = _rel_l2(latent, trajectory[i])
        assert rel < SENSITIVITY_FRACTION * smallest_mistake, f"{name} latent {i}: relative L2 {rel:.3g}"


def test_bf16_load_of_a_float32_scale_file_runs_where_the_reference_crashed(
    quant, dit_config, golden, dit_inputs, sensitivities
) -> None:
    """README N: the reference raises `float32_file_with_param_dtype_bf16` for these float32-scale files
    under bf16; here scales follow the load's dtype (the published files carry bf16 scales)."""
    assert "cannot be changed" in quant["float32_file_with_param_dtype_bf16"]
    file, qmap = VARIANTS["fp8_fusionx"]
    model = load_quantized_transformer(dit_config, QUANT / file, QUANT / qmap, dtype=torch.bfloat16)
    q = model.blocks[0].attn1.to_q
    assert (
        isinstance(q, QLinear)
        and q.weight.dtype == torch.bfloat16
        and q.weight._data.dtype == torch.float8_e4m3fn
    )
    assert model.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32  # an fp32 module
    expected = golden["fp8_fusionx.out_1spk_cond"].double()
    bf16 = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in dit_inputs.items()}
    out = _forward(model, bf16, "1spk_cond").double()
    rel = _rel_l2(out, expected)
    # bf16 rounding of weights and activations (measured 0.060); below what the golden set lists for
    # using e5m2 instead of e4m3fn (0.135)
    assert rel < sensitivities["fp8_fusionx.fp8_e5m2_instead_of_e4m3fn"], rel


def test_bf16_int8_on_the_cpu_with_odd_widths_is_refused_not_a_crash(dit_config) -> None:
    """torch's CPU int8 x bf16 kernel (what quanto calls) segfaults for input widths not a multiple of 16;
    the tiny DiT's text embedding (T5 width 24) has one."""
    file, qmap = VARIANTS["int8"]
    with pytest.raises(QuantError, match=r"'text_embedding.0'.*load as float32 on the CPU") as e:
        load_quantized_transformer(dit_config, QUANT / file, QUANT / qmap, dtype=torch.bfloat16)
    assert str(QUANT / qmap) in str(e.value)


# ------------------------------------------------------------------------------------------ the T5
def test_quantized_t5_contexts_match_the_reference(quant, golden) -> None:
    t5_golden = load_file(str(PIPELINE_GOLDEN_DIR / "t5_golden.safetensors"))
    file, qmap = (
        f"t5_{quant['t5_requested_by_init']['quant']}.safetensors",
        f"t5_map_{quant['t5_requested_by_init']['quant']}.json",
    )
    model = load_quantized_t5(QUANT / file, QUANT / qmap)
    kw = json.loads((PIPELINE_GOLDEN_DIR / "t5_config.json").read_text())["umt5_xxl_kwargs"]
    assert (model.config.d_model, model.config.num_layers, model.config.num_heads) == (
        kw["dim"],
        kw["encoder_layers"],
        kw["num_heads"],
    )
    layer = model.encoder.block[0].layer[0].SelfAttention
    assert type(layer.q).__name__ == quant["t5"]["type_of_blocks_0_attn_q"]
    assert sum(isinstance(m, QLinear) for m in model.modules()) == quant["t5"]["n"]
    assert model.shared.weight.data_ptr() == model.encoder.embed_tokens.weight.data_ptr()  # one tensor
    contexts = encode_text(model, t5_golden["ids"], t5_golden["mask"])
    names = sorted(k for k in golden if k.startswith("t5_int8.context_"))
    assert len(names) == len(contexts)
    for i, context in enumerate(contexts):
        err = _max_abs(context, golden[f"t5_int8.context_{i}"])
        assert err <= ATOL, f"t5 context {i}: max abs {err:.3g}"


# ------------------------------------------------------------------------------------------ refusals
def _copy_without(tmp_path: Path, file: str, drop: str | None = None, add: dict | None = None) -> Path:
    tensors = load_file(str(QUANT / file))
    if drop is not None:
        del tensors[drop]
    tensors.update(add or {})
    out = tmp_path / file
    save_file(tensors, str(out))
    return out


@pytest.mark.parametrize(
    "key",
    [
        "blocks.1.self_attn.q.weight._scale",
        "blocks.0.ffn.0.bias",
        "head.modulation",
        "blocks.0.audio_cross_attn.kv_linear.input_scale",
    ],
)
def test_a_key_missing_from_a_quantized_file_is_refused_naming_file_and_key(
    tmp_path: Path, dit_config, key: str
) -> None:
    """The reference's `requantize(strict=False)` would leave these uninitialised and render anyway."""
    file, qmap = VARIANTS["int8"]
    bad = _copy_without(tmp_path, file, drop=key)
    with pytest.raises(QuantError) as e:
        load_quantized_transformer(dit_config, bad, QUANT / qmap)
    assert str(bad) in str(e.value) and repr(key) in str(e.value) and "missing" in str(e.value)


def test_an_unexpected_key_is_refused_naming_it(tmp_path: Path, dit_config) -> None:
    file, qmap = VARIANTS["int8"]
    bad = _copy_without(
        tmp_path, file, add={"time_embedding.0.weight._data": torch.zeros(2, dtype=torch.int8)}
    )
    with pytest.raises(QuantError, match=r"unexpected key 'time_embedding.0.weight._data'") as e:
        load_quantized_transformer(dit_config, bad, QUANT / qmap)
    assert str(bad) in str(e.value)


@pytest.mark.parametrize("key", ["time_embedding.0.weight", "blocks.1.self_attn.q.weight._scale"])
def test_an_integer_tensor_where_a_float_is_read_is_refused_naming_file_and_key(
    tmp_path: Path, dit_config, key: str
) -> None:
    """Right key and shape, wrong kind: it would load and fail at the first forward, the file unnamed."""
    file, qmap = VARIANTS["int8"]
    shape = load_file(str(QUANT / file))[key].shape
    bad = _copy_without(tmp_path, file, add={key: torch.ones(shape, dtype=torch.int8)})
    with pytest.raises(
        QuantError, match=rf"key '{re.escape(key)}' is torch.int8, expected a floating-point"
    ) as e:
        load_quantized_transformer(dit_config, bad, QUANT / qmap)
    assert str(bad) in str(e.value)


def test_a_t5_file_with_a_key_removed_is_refused(tmp_path: Path) -> None:
    bad = _copy_without(tmp_path, "t5_int8.safetensors", drop="blocks.1.ffn.fc2.weight._data")
    with pytest.raises(QuantError, match=r"missing key 'blocks.1.ffn.fc2.weight._data'") as e:
        load_quantized_t5(bad, QUANT / "t5_map_int8.json")
    assert str(bad) in str(e.value)


def test_a_map_that_does_not_fit_the_file_is_refused(tmp_path: Path, dit_config) -> None:
    """The int8 file with the fp8 file's map: the dtypes differ; a map naming a float module: keys differ."""
    file, _ = VARIANTS["int8"]
    with pytest.raises(
        QuantError, match=r"is torch.int8, its map entry qfloat8_e4m3fn stores torch.float8_e4m3fn"
    ):
        load_quantized_transformer(dit_config, QUANT / file, QUANT / VARIANTS["fp8_fusionx"][1])
    qmap = json.loads((QUANT / VARIANTS["int8"][1]).read_text())
    qmap["time_embedding.0"] = {"weights": "qint8", "activations": "none"}
    wider = tmp_path / "map.json"
    wider.write_text(json.dumps(qmap))
    with pytest.raises(QuantError, match=r"missing keys 'time_embedding.0.input_scale'"):
        load_quantized_transformer(dit_config, QUANT / file, wider)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "no such file"),
        ("{not json", "not valid JSON"),
        ("[]", "expected a non-empty JSON object"),
        (
            '{"blocks.0.self_attn.q": {"weights": "qint4", "activations": "none"}}',
            "weights 'qint4': expected one of",
        ),
        ('{"blocks.0.self_attn.q": {"weights": "qint8", "activations": "qint8"}}', "only weight-only"),
        (
            '{"blocks.9.self_attn.q": {"weights": "qint8", "activations": "none"}}',
            "names 'blocks.9.self_attn.q', which the model has no linear layer for",
        ),
        ('{"blocks.0.norm3": {"weights": "qint8", "activations": "none"}}', "no linear layer"),
    ],
)
def test_a_missing_or_malformed_map_is_refused_naming_it(
    tmp_path: Path, dit_config, text: str | None, message: str
) -> None:
    qmap = tmp_path / "dit_model_map_int8.json"
    if text is not None:
        qmap.write_text(text)
    file = tmp_path / VARIANTS["int8"][0]
    shutil.copy(QUANT / VARIANTS["int8"][0], file)
    with pytest.raises(QuantError, match=message) as e:
        load_quantized_transformer(dit_config, file, qmap)
    assert str(qmap) in str(e.value)


def test_the_golden_int8_files_laid_out_as_the_int8_profile_load_through_load_pipeline_components(
    tmp_path: Path, golden, dit_inputs
) -> None:
    """The renderer's own path: `load_pipeline_components` (what `MultiTalkRenderer.from_volume` calls)
    finds the quantized DiT, its map, the Wan config and the quantized T5 by the profile's components."""
    from mt_assets.manifest import load_profile
    from mt_assets.models.pipeline import load_pipeline_components
    from mt_assets.volume import LocalVolume

    manifest = load_profile("multitalk-480p-int8")
    dit, dit_map = manifest.quantized("transformer").quant_files
    t5, t5_map = manifest.quantized("t5").quant_files
    config = f"models/{manifest.component('wan-dit').dir}/config.json"
    placed = {
        config: DIT_GOLDEN_DIR / "dit_config.json",
        dit.target: QUANT / VARIANTS["int8"][0],
        dit_map.target: QUANT / VARIANTS["int8"][1],
        t5.target: QUANT / "t5_int8.safetensors",
        t5_map.target: QUANT / "t5_map_int8.json",
    }
    for target, source in placed.items():
        (tmp_path / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, tmp_path / target)
    loaded = load_pipeline_components(LocalVolume(tmp_path), manifest, only=["transformer", "t5"])
    assert loaded.reports["transformer"].files == (config, dit.target, dit_map.target)
    err = _max_abs(_forward(loaded.transformer, dit_inputs, "1spk_cond"), golden["int8.out_1spk_cond"])
    assert err <= ATOL
    t5_golden = load_file(str(PIPELINE_GOLDEN_DIR / "t5_golden.safetensors"))
    [context, _] = encode_text(loaded.t5, t5_golden["ids"], t5_golden["mask"])
    assert _max_abs(context, golden["t5_int8.context_0"]) <= ATOL
