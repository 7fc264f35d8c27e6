"""Section L of the acceleration golden set: LoRA files merged as MeiGen's `WanLoraWrapper` does.

The chained tiny DiT (shared/golden/multitalk-tiny) is written in the published formats and loaded
by the production loader; `merge_loras` merges the golden LoRA files into it. Every case and
setting comes from `accel_golden.json`. Two reference defects are tested fixed (README L, traps):
`m5_name_collision` (each file merged once with its own scale) and `m6_zip_truncation` (refused).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mt_assets.models.dit import MultiTalkTransformer3DModel
from mt_assets.models.dit_loading import diffusers_to_reference_key, load_multitalk_transformer
from mt_assets.models.lora import LoraError, merge_loras, pair_loras, parse_lora_keys
from mt_assets.models.reading import read_safetensors_header
from mt_assets.render.sampler import Guidance, StepRecord, sample, timesteps
from mt_assets.tiny.dit import write_original_format
from mt_assets_tests.golden import (
    ACCEL_GOLDEN_DIR,
    DIT_GOLDEN_DIR,
    chained_denoiser,
    requires_accel_golden,
    requires_dit_golden,
)

pytestmark = [requires_accel_golden, requires_dit_golden]

# README L, "Precision and tolerance": the merge is one matmul and one addition (the replica is
# bit-exact); outputs and trajectories carry the fp32 attention noise floor (1.4e-6 / 1.7e-6).
MERGED_ATOL = 1e-6
OUT_ATOL = 1e-4
LORAS = ACCEL_GOLDEN_DIR / "loras"
MERGE_CASES_WITH_TENSORS = ["m1_single", "m2_edge", "m3_multi"]

# chained forward cases (multitalk-tiny README §1.4): text features, audio, masks
FORWARD_CASES = {
    "1spk_cond": ("context", "speaker0", "ref_target_masks_1spk"),
    "2spk_drop_audio": ("context", "null", "ref_target_masks_2spk"),
}


@pytest.fixture(scope="module")
def accel() -> dict:
    return json.loads((ACCEL_GOLDEN_DIR / "accel_golden.json").read_text())


@pytest.fixture(scope="module")
def lora_golden() -> dict[str, torch.Tensor]:
    return load_file(str(ACCEL_GOLDEN_DIR / "lora_golden.safetensors"))


@pytest.fixture(scope="module")
def dit_weights() -> dict[str, torch.Tensor]:
    return load_file(str(DIT_GOLDEN_DIR / "dit_weights.safetensors"))


@pytest.fixture(scope="module")
def dit_inputs() -> dict[str, torch.Tensor]:
    return load_file(str(DIT_GOLDEN_DIR / "dit_inputs.safetensors"))


@pytest.fixture(scope="module")
def dit_files(tmp_path_factory: pytest.TempPathFactory, dit_weights) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("golden_dit")
    config = json.loads((DIT_GOLDEN_DIR / "dit_config.json").read_text())
    write_original_format(dit_weights, config, root / "wan", root / "multitalk", shards=2)
    return root / "wan", root / "multitalk"


@pytest.fixture
def fresh_dit(dit_files) -> MultiTalkTransformer3DModel:
    """A freshly loaded chained tiny DiT (merging changes it in place)."""
    return load_multitalk_transformer(*dit_files)


def _loras(files: list[str], scales: list[float]) -> list[tuple[Path, float]]:
    return pair_loras([LORAS / f for f in files], scales)


def _merged(accel: dict, case: str, dit_files) -> tuple[MultiTalkTransformer3DModel, list]:
    merge = accel["merges"][case]
    model = load_multitalk_transformer(*dit_files)
    reports = merge_loras(model, _loras(merge["lora_dir"], merge["lora_scales"]), dtype=torch.float32)
    return model, reports


def _reference_state(model: MultiTalkTransformer3DModel) -> dict[str, torch.Tensor]:
    return {diffusers_to_reference_key(k): v for k, v in model.named_parameters()}


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert tuple(a.shape) == tuple(b.shape), (tuple(a.shape), tuple(b.shape))
    return (a.double() - b.double()).abs().max().item()


def _forward(model: MultiTalkTransformer3DModel, inputs: dict[str, torch.Tensor], case: str) -> torch.Tensor:
    context, audio_kind, masks = FORWARD_CASES[case]
    audio = {
        "speaker0": inputs["audio"][0:1],
        "null": torch.zeros_like(inputs["audio"][-1:]),  # the pipeline's null audio: one silent speaker
    }[audio_kind]
    with torch.no_grad():
        return model.forward_reference(
            inputs["x"], inputs["t"], inputs[context], inputs["clip_fea"], inputs["y"], audio, inputs[masks]
        )[0]  # the golden outputs are stored without the batch dimension


# ------------------------------------------------------------------------------------------ key parsing
def test_key_parsing_per_file_matches_the_reference(accel) -> None:
    """Applied entries (target + keys, in the reference's dict order) and ignored keys with their reasons."""
    for name, expected in accel["lora_files"].items():
        header = read_safetensors_header(LORAS / name)
        assert len(header) == expected["n_keys"], name
        entries, ignored = parse_lora_keys(header)
        assert [[e.target, list(e.keys)] for e in entries] == expected["applied"], name
        assert len(entries) == expected["n_applied_entries"], name
        assert [list(i) for i in ignored] == expected["ignored"], name


def test_report_counts_ignored_keys_by_reason(accel, dit_files) -> None:
    for name, expected in accel["lora_files"].items():
        model = load_multitalk_transformer(*dit_files)
        (report,) = merge_loras(model, [(LORAS / name, 1.0)], dtype=torch.float32)
        assert len(report.applied) == expected["n_applied_entries"]
        want: dict[str, int] = {}
        for _, reason in expected["ignored"]:
            want[reason] = want.get(reason, 0) + 1
        assert report.ignored_by_reason == want, name
        assert report.to_json()["ignored"] == len(expected["ignored"])
        assert f"{expected['n_applied_entries']} weight adjustments" in report.summary()


# ------------------------------------------------------------------------------------------ merges
@pytest.mark.parametrize("case", MERGE_CASES_WITH_TENSORS)
def test_merged_weights_match_the_reference(case: str, accel, lora_golden, dit_weights, dit_files) -> None:
    model, reports = _merged(accel, case, dit_files)
    merge = accel["merges"][case]
    prefix = f"{case}.merged."
    merged = {k.removeprefix(prefix): v for k, v in lora_golden.items() if k.startswith(prefix)}
    assert sorted(merged) == sorted(merge["changed_tensors"])
    state = _reference_state(model)
    assert set(merged) <= set(state)
    worst = 0.0
    for name, param in state.items():
        if name in merged:
            worst = max(worst, _max_abs(param, merged[name]))
        else:
            assert torch.equal(param, dit_weights[name]), f"{case}: {name} changed"
    assert worst <= MERGED_ATOL, f"{case}: merged weights max abs {worst:.3g}"
    applied = sorted({e.target for r in reports for e in r.applied})
    assert applied == sorted(merge["changed_tensors"])


@pytest.mark.parametrize("case", MERGE_CASES_WITH_TENSORS)
def test_merged_dit_outputs_match_the_reference(case: str, accel, lora_golden, dit_inputs, dit_files) -> None:
    model, _ = _merged(accel, case, dit_files)
    outputs = [k.removeprefix(f"{case}.out_") for k in lora_golden if k.startswith(f"{case}.out_")]
    assert outputs
    for forward in outputs:
        err = _max_abs(_forward(model, dit_inputs, forward), lora_golden[f"{case}.out_{forward}"])
        assert err <= OUT_ATOL, f"{case}.out_{forward}: max abs {err:.3g}"


def test_order_of_several_loras_matters_only_by_rounding(accel, lora_golden, dit_inputs, dit_files) -> None:
    """m4 lists m3's files the other way round (with their scales): the same merge up to float rounding."""
    m3, m4 = accel["merges"]["m3_multi"], accel["merges"]["m4_multi_order_swapped"]
    assert sorted(zip(m3["lora_dir"], m3["lora_scales"], strict=True)) == sorted(
        zip(m4["lora_dir"], m4["lora_scales"], strict=True)
    )
    model, _ = _merged(accel, "m4_multi_order_swapped", dit_files)
    state = _reference_state(model)
    worst = max(
        _max_abs(state[name], lora_golden[f"m3_multi.merged.{name}"]) for name in m3["changed_tensors"]
    )
    assert worst <= MERGED_ATOL
    assert sorted(m4["changed_tensors"]) == sorted(m3["changed_tensors"])
    err = _max_abs(_forward(model, dit_inputs, "1spk_cond"), lora_golden["m3_multi.out_1spk_cond"])
    assert err <= OUT_ATOL


def test_files_sharing_a_reference_name_are_each_merged_once_with_their_own_scale(
    accel, lora_golden, dit_weights, dit_files
) -> None:
    """m5 (fixed): the reference reads its second `Wan2...` file never and applies the first again at the
    second scale; here each file is merged once with its scale, i.e. W + m1's delta + scale * m2's delta."""
    m5 = accel["merges"]["m5_name_collision"]
    single = {accel["merges"][c]["lora_dir"][0]: c for c in ("m1_single", "m2_edge")}
    assert set(m5["lora_dir"]) == set(single)  # m5 = the files of m1 and m2, each merged there at 1.0
    assert all(accel["merges"][c]["lora_scales"] == [1.0] for c in single.values())
    expected = {name: w.double() for name, w in dit_weights.items()}
    for file, scale in zip(m5["lora_dir"], m5["lora_scales"], strict=True):
        case = single[file]
        for name in accel["merges"][case]["changed_tensors"]:
            expected[name] += scale * (
                lora_golden[f"{case}.merged.{name}"].double() - dit_weights[name].double()
            )

    model, reports = _merged(accel, "m5_name_collision", dit_files)
    assert [r.path.name for r in reports] == m5["lora_dir"]
    assert [r.scale for r in reports] == m5["lora_scales"]
    state = _reference_state(model)
    worst = max(_max_abs(state[name], expected[name]) for name in state)
    assert worst <= MERGED_ATOL, f"m5 fixed: max abs {worst:.3g}"
    # and the second file really was read: its own targets changed, which the reference never touches
    only_second = set(accel["merges"][single[m5["lora_dir"][1]]]["changed_tensors"]) - set(
        m5["changed_tensors"]
    )
    assert only_second and all(not torch.equal(state[n], dit_weights[n]) for n in only_second)


def test_more_files_than_scales_is_refused_not_truncated(accel) -> None:
    m6 = accel["merges"]["m6_zip_truncation"]
    assert m6["dropped_by_zip"]  # what the reference did silently
    with pytest.raises(LoraError, match=r"give one scale per file") as e:
        pair_loras([LORAS / f for f in m6["lora_dir"]], m6["lora_scales"])
    for dropped in m6["dropped_by_zip"]:
        assert dropped in str(e.value)
    with pytest.raises(LoraError, match=r"1 file\(s\).*2 scale\(s\)"):
        pair_loras([LORAS / m6["lora_dir"][0]], [1.0, 0.5])


def test_bf16_merge_is_as_close_as_the_reference_production_merge(accel, lora_golden, dit_files) -> None:
    """README L: the reference merges in bf16 on a GPU (LoRA tensors cast to bf16 first), m1 landing at a
    relative L2 of `m1_bf16_production_merge_vs_fp32_relL2_changed_tensors` from the float32 merge. Ours
    keeps the time embedder and the norms float32, so it may only be closer."""
    manifest = json.loads((ACCEL_GOLDEN_DIR / "golden_manifest.json").read_text())
    bound = manifest["precision"]["m1_bf16_production_merge_vs_fp32_relL2_changed_tensors"]
    merge = accel["merges"]["m1_single"]
    model = load_multitalk_transformer(*dit_files, dtype=torch.bfloat16)
    merge_loras(model, _loras(merge["lora_dir"], merge["lora_scales"]), dtype=torch.bfloat16)
    state = _reference_state(model)
    want = {n: lora_golden[f"m1_single.merged.{n}"].double() for n in merge["changed_tensors"]}
    err = sum(((state[n].double() - w) ** 2).sum() for n, w in want.items())
    rel = (err / sum((w**2).sum() for w in want.values())).sqrt().item()
    assert rel <= bound, f"bf16 merge: relative L2 {rel:.3g} > {bound:.3g}"
    assert {state[n].dtype for n in want} == {torch.bfloat16, torch.float32}  # both kinds merged


# ------------------------------------------------------------------------------------------ refusals
def _write_lora(tmp_path: Path, tensors: dict[str, torch.Tensor], name: str = "bad_LoRA") -> Path:
    path = tmp_path / f"{name}.safetensors"
    save_file(tensors, str(path))
    return path


def _unchanged(model: MultiTalkTransformer3DModel, dit_weights: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, dit_weights[k]) for k, v in _reference_state(model).items())


def test_targets_the_reference_crashes_on_are_refused_naming_file_and_key(
    tmp_path: Path, fresh_dit, dit_weights
) -> None:
    """README L: `.diff` on a bare parameter, a block the model lacks, pairs in the wrong orientation."""
    q = dit_weights["blocks.0.self_attn.q.weight"]
    out_dim, in_dim = q.shape
    blocks = 1 + max(int(k.split(".")[1]) for k in dit_weights if k.startswith("blocks."))
    good = _write_lora(  # listed first: a merge that did not check every file first would change it
        tmp_path,
        {"diffusion_model.time_embedding.0.diff_b": torch.ones(dit_weights["time_embedding.0.bias"].shape)},
        "good_LoRA",
    )
    modulation = dit_weights["blocks.0.modulation"]
    cases = {
        "diffusion_model.blocks.0.modulation.diff": {
            "diffusion_model.blocks.0.modulation.diff": torch.zeros(modulation.shape)
        },
        f"diffusion_model.blocks.{blocks}.self_attn.q.lora_down.weight": {
            f"diffusion_model.blocks.{blocks}.self_attn.q.lora_down.weight": torch.zeros(2, in_dim),
            f"diffusion_model.blocks.{blocks}.self_attn.q.lora_up.weight": torch.zeros(out_dim, 2),
        },
        "diffusion_model.blocks.0.self_attn.q.lora_down.weight": {
            "diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(in_dim, 3),
            "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(3, out_dim),
        },
        "diffusion_model.blocks.0.norm3.diff": {
            "diffusion_model.blocks.0.norm3.diff": torch.zeros(1)  # would broadcast in the reference
        },
    }
    for key, tensors in cases.items():
        bad = _write_lora(tmp_path, tensors)
        with pytest.raises(LoraError) as e:
            merge_loras(fresh_dit, [(good, 1.0), (bad, 1.0)], dtype=torch.float32)
        assert str(bad) in str(e.value) and key in str(e.value), str(e.value)
        assert _unchanged(fresh_dit, dit_weights)  # checked before any weight changed


def test_a_lora_whose_keys_match_nothing_is_refused(tmp_path: Path, fresh_dit, dit_weights) -> None:
    path = _write_lora(
        tmp_path,
        {
            "lora_unet_blocks_0_ffn_2.lora_down.weight": torch.zeros(2, 4),
            "lora_unet_blocks_0_ffn_2.lora_up.weight": torch.zeros(4, 2),
            "diffusion_model.blocks.0.diff_m": torch.zeros(4),
        },
    )
    with pytest.raises(LoraError, match="none of its 3 keys applies") as e:
        merge_loras(fresh_dit, [(path, 1.0)], dtype=torch.float32)
    assert str(path) in str(e.value)
    assert _unchanged(fresh_dit, dit_weights)


# ------------------------------------------------------------------------------------------ sampler
@pytest.mark.parametrize("name", ["s1_single_lora", "s2_multi_lora"])
def test_lora_sampler_reproduces_every_step(name: str, accel, lora_golden, dit_inputs, dit_files) -> None:
    case = accel["lora_samplers"][name]
    model = load_multitalk_transformer(*dit_files)
    merge_loras(model, _loras(case["lora_dir"], case["lora_scales"]), dtype=torch.float32)
    speakers = case["speakers"]
    denoise = chained_denoiser(model, dit_inputs, speakers)
    guidance = Guidance(text=case["text_guide_scale"], audio=case["audio_guide_scale"])
    assert guidance.evaluations == case["evals_per_step"]
    schedule = timesteps(case["steps"], case["shift"])
    assert torch.equal(schedule, torch.tensor(case["timesteps"], dtype=torch.float32))
    trajectory = lora_golden[f"{name}.trajectory"]
    if case["noise_equals_dit_inputs_x"]:
        assert torch.equal(trajectory[0], dit_inputs["x"])
    record: list[StepRecord] = []
    final = sample(denoise, trajectory[0], schedule, guidance, record=record)
    assert len(record) == case["steps"]
    kinds = [kind for step in record for kind in step.outputs]
    assert len(kinds) == case["steps"] * case["evals_per_step"]
    assert kinds[: len(case["call_kinds"])] == case["call_kinds"]
    for i, step in enumerate(record):
        err = _max_abs(step.latent_in, trajectory[i])
        assert err <= OUT_ATOL, f"{name} step {i}: max abs {err:.3g}"
    err = _max_abs(final, trajectory[-1])
    assert err <= OUT_ATOL, f"{name} final latent: max abs {err:.3g}"
