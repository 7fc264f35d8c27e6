"""Low VRAM (render/low_vram.py): the same outputs with any budget, and the accounting's guarantee.

On this CPU-only machine the device and the host are both the CPU; the manager still swaps each
unit's tensor objects (device copies in, host objects back), so these tests check the swaps and the
accounting a GPU run makes, through an observer of their own: a global forward hook that, whenever
a module of the DiT finishes its forward, counts the parameters of the units not holding their host
objects at that moment. Seconds and GPU memory are a GPU machine's to measure.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from optimum.quanto import QTensor
from torch import nn

from mt_assets.jobs.reader import load_job
from mt_assets.manifest import load_profile
from mt_assets.models.dit import MultiTalkTransformer3DModel
from mt_assets.models.dit_loading import load_multitalk_transformer
from mt_assets.models.pipeline import load_pipeline_components
from mt_assets.render.low_vram import LowVram, LowVramError, compute_device
from mt_assets.render.pipeline import MultiTalkRenderer
from mt_assets.render.run import render_job
from mt_assets.render.sampler import timesteps
from mt_assets.render.teacache import COEFFICIENTS, plan_teacache
from mt_assets.tiny.dit import write_tiny_dit
from mt_assets.tiny.quant import quantize_dit
from mt_assets.volume import LocalVolume
from mt_assets.worker.environment import WorkerSettings
from mt_assets_tests.conftest import run_cli
from mt_assets_tests.render.test_render import decode, write_job


@pytest.fixture(scope="module")
def tiny_dit(tmp_path_factory: pytest.TempPathFactory) -> MultiTalkTransformer3DModel:
    root = tmp_path_factory.mktemp("low-vram-dit")
    write_tiny_dit(root / "wan", root / "mt")
    return load_multitalk_transformer(root / "wan", root / "mt" / "multitalk.safetensors")


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    """Two speakers with masks: every branch of the forward runs (label RoPE, audio cross-attention)."""
    gen = torch.Generator().manual_seed(0)
    masks = torch.zeros(3, 8, 8)
    masks[0, :, :4] = masks[1, :, 4:] = masks[2] = 1
    return {
        "hidden_states": torch.randn(1, 36, 3, 8, 8, generator=gen),
        "timestep": torch.tensor([500.0]),
        "encoder_hidden_states": torch.randn(1, 512, 32, generator=gen),
        "encoder_hidden_states_image": torch.randn(1, 257, 160, generator=gen),
        "audio": torch.randn(2, 9, 5, 2, 32, generator=gen),
        "ref_target_masks": masks,
    }


def run(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).sample


def total_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# The managers the `observed` fixture's hook counts for (a test appends the one it set up).
observing: list[LowVram] = []


@dataclass(frozen=True)
class Seen:
    """One forward that finished, as the observer saw it."""

    manager: LowVram
    on_device: int  # parameters of the units not holding their host objects, then
    module: nn.Module
    on_copies: bool  # the module's own unit held device copies (not its host objects), then


@pytest.fixture
def observed() -> Iterator[list[Seen]]:
    """Every forward that finishes while the hook is set, for each manager in `observing`."""
    seen: list[Seen] = []
    observing.clear()

    def after(module: nn.Module, args: object, output: object) -> None:
        for manager in observing:
            on_device = sum(u.params for u in manager.units if not manager.on_host(u))
            unit = next((u for u in manager.units if u.module is module), None)
            seen.append(Seen(manager, on_device, module, unit is not None and not manager.on_host(unit)))

    # Global forward hooks run before a module's own, so the unit's device copies are still in place.
    handle = nn.modules.module.register_module_forward_hook(after)
    try:
        yield seen
    finally:
        handle.remove()
        observing.clear()


def budgets(model: nn.Module) -> list[int]:
    return [0, total_params(model) // 2, total_params(model)]


@pytest.mark.parametrize("which", ["none", "half", "all"])
def test_the_outputs_are_identical_with_any_budget(tiny_dit, inputs, which: str) -> None:
    budget = {"none": 0, "half": total_params(tiny_dit) // 2, "all": total_params(tiny_dit)}[which]
    reference = run(tiny_dit, inputs)
    manager = LowVram(tiny_dit, "cpu", budget)
    try:
        assert torch.equal(run(tiny_dit, inputs), reference)
        assert torch.equal(run(tiny_dit, inputs), reference)  # and again: every layer went back home
    finally:
        manager.remove()
    assert torch.equal(run(tiny_dit, inputs), reference)


@pytest.mark.parametrize("which", ["none", "half"])
def test_resident_parameters_fit_the_budget_and_one_layer_at_most_visits(
    tiny_dit, inputs, observed, which: str
) -> None:
    budget = 0 if which == "none" else total_params(tiny_dit) // 2
    manager = LowVram(tiny_dit, "cpu", budget)
    observing.append(manager)
    try:
        run(tiny_dit, inputs)
    finally:
        manager.remove()
    s = manager.stats
    resident = [u for u in manager.units if u.resident]
    offloaded = [u for u in manager.units if not u.resident]
    # The guarantee (low_vram.py): resident <= budget; on top, at most one offloaded unit at a time.
    assert s.persistent == sum(u.params for u in resident) <= budget
    assert s.largest_offloaded == max(u.params for u in offloaded)
    assert s.most_at_once == 1
    assert s.persistent < s.peak <= s.persistent + s.largest_offloaded
    # The observer's own count, from the tensor objects the units hold at the end of every forward.
    counts = [o.on_device for o in observed if o.manager is manager]
    assert counts and max(counts) <= s.persistent + s.largest_offloaded
    assert max(counts) == s.peak
    # The resident units are the first in module order, and the next one would not have fit.
    assert manager.units[: len(resident)] == resident
    assert s.persistent + offloaded[0].params > budget
    assert s.visits > 0 and s.on_device == 0  # after remove()


def test_every_offloaded_layer_runs_on_device_copies_and_goes_back_to_its_host_tensors(
    tiny_dit, inputs, observed
) -> None:
    manager = LowVram(tiny_dit, "cpu", 0)
    observing.append(manager)
    try:
        run(tiny_dit, inputs)
        hooked = {u.module: u for u in manager.units if u.hooked}
        ran = {o.module for o in observed if o.module in hooked}
        # Every Linear, norm and the Conv3d the forward used visited; diffusers' RoPE module is never
        # called by our forward (it computes its rotation in float64 itself), so its tables never visit.
        assert {hooked[m].name for m in set(hooked) - ran} == {"rope"}
        # While it ran, each held device copies (not its host objects); afterwards its host objects.
        assert all(o.on_copies for o in observed if o.module in hooked)
        assert all(manager.on_host(u) for u in manager.units if not u.resident)
        # The modulation tables (owned by modules with children) stay on the host, read where they are.
        owners = [u.name for u in manager.units if not u.hooked]
        assert owners == ["", "blocks.0", "blocks.1"]
    finally:
        manager.remove()


def test_a_budget_of_everything_keeps_the_dit_resident_and_moves_nothing(tiny_dit, inputs) -> None:
    manager = LowVram(tiny_dit, "cpu", total_params(tiny_dit))
    try:
        run(tiny_dit, inputs)
        assert all(u.resident for u in manager.units)
        assert manager.stats.persistent == manager.stats.peak == total_params(tiny_dit)
        assert manager.stats.visits == 0 and manager.stats.largest_offloaded == 0
    finally:
        manager.remove()


def test_an_int8_quantized_dit_gives_identical_outputs_and_its_qtensor_weights_visit(
    tiny_dit, inputs, observed
) -> None:
    """optimum-quanto's QLinear is handled like any module: its QTensor weight moves as it is."""
    quantized = copy.deepcopy(tiny_dit)
    quantize_dit(quantized, "qint8")
    reference = run(quantized, inputs)
    qlinears = [m for m in quantized.modules() if isinstance(getattr(m, "weight", None), QTensor)]
    assert qlinears
    for budget in budgets(quantized)[:2]:
        manager = LowVram(quantized, "cpu", budget)
        observing[:] = [manager]
        try:
            assert torch.equal(run(quantized, inputs), reference)
        finally:
            manager.remove()
        s = manager.stats
        assert s.persistent <= budget and s.peak <= s.persistent + s.largest_offloaded
        assert s.most_at_once == 1
        visited = {o.module for o in observed if o.module in qlinears and o.on_copies}
        assert visited and all(isinstance(m.weight, QTensor) for m in visited)
        observed.clear()


def test_remove_leaves_an_ordinary_model(tiny_dit, inputs) -> None:
    before = {name: p for name, p in tiny_dit.named_parameters()}
    manager = LowVram(tiny_dit, "cpu", 0)
    manager.remove()
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in tiny_dit.modules())
    assert all(p is before[name] for name, p in tiny_dit.named_parameters())  # the host objects
    LowVram(tiny_dit, "cpu", 0).remove()  # and it can be enabled again


@pytest.mark.parametrize("at", ["second", "last"])
def test_a_failure_part_way_through_enabling_leaves_the_model_as_it_was(
    tiny_dit, inputs, monkeypatch, at: str
) -> None:
    """A device out of memory while placing a unit: no hook stays, every tensor object is back, and
    low VRAM can be enabled again (not a second manager stacked on the first)."""
    from mt_assets.render import low_vram

    reference = run(tiny_dit, inputs)
    budget = total_params(tiny_dit) // 2
    put = low_vram._put
    calls: list[int] = []
    monkeypatch.setattr(low_vram, "_put", lambda *a: (calls.append(1), put(*a))[1])
    counted = LowVram(tiny_dit, "cpu", budget)
    # the second tensor put (a resident unit's, before any hook) or the last (offloaded leaves hooked)
    fail_at = 2 if at == "second" else len(calls)
    counted.remove()
    # the tensor objects now (remove() put new host copies in place of the resident units')
    before = {(m, kind, key): t for m in tiny_dit.modules() for kind, key, t in low_vram.own_tensors(m)}
    calls.clear()
    hooked_when_failed: list[bool] = []

    def failing_put(module: nn.Module, kind: str, key: str, tensor: object) -> None:
        calls.append(1)
        if len(calls) == fail_at:
            hooked_when_failed.append(any(m._forward_pre_hooks for m in tiny_dit.modules()))
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        put(module, kind, key, tensor)

    monkeypatch.setattr(low_vram, "_put", failing_put)
    with pytest.raises(torch.OutOfMemoryError, match="injected"):
        LowVram(tiny_dit, "cpu", budget)
    monkeypatch.setattr(low_vram, "_put", put)
    assert hooked_when_failed == [at == "last"]
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in tiny_dit.modules())
    after = {(m, kind, key): t for m in tiny_dit.modules() for kind, key, t in low_vram.own_tensors(m)}
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert torch.equal(run(tiny_dit, inputs), reference)
    manager = LowVram(tiny_dit, "cpu", budget)  # not refused as "already enabled"
    try:
        assert torch.equal(run(tiny_dit, inputs), reference)
    finally:
        manager.remove()


def test_a_bad_budget_or_a_second_manager_is_refused(tiny_dit) -> None:
    for bad in (-1, True, 1.5):
        with pytest.raises(LowVramError, match="persistent_params: expected a whole number"):
            LowVram(tiny_dit, "cpu", bad)  # type: ignore[arg-type]
    manager = LowVram(tiny_dit, "cpu", 0)
    try:
        with pytest.raises(LowVramError, match="already enabled"):
            LowVram(tiny_dit, "cpu", 0)
    finally:
        manager.remove()


def test_teacache_plans_the_same_on_a_managed_dit(tiny_dit) -> None:
    """plan_teacache asks where the DiT computes (its first parameter may be on the host)."""
    schedule = timesteps(6, 7.0)
    plain = plan_teacache(tiny_dit, schedule, 3, 1e9, COEFFICIENTS["multitalk-480"])
    manager = LowVram(tiny_dit, "cpu", 0)
    try:
        assert compute_device(tiny_dit) == torch.device("cpu")
        assert plan_teacache(tiny_dit, schedule, 3, 1e9, COEFFICIENTS["multitalk-480"]) == plain
    finally:
        manager.remove()


# ---- the renderer ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mt_assets.tiny.samples import write_face_image, write_speech

    folder = tmp_path_factory.mktemp("media")
    write_face_image(folder / "face.png", 160, 120)
    write_speech(folder / "a.wav", 1.0, pitch=130, seed=1)
    return folder


def frames(video: Path) -> list[np.ndarray]:
    return decode(video)[0]


def test_a_render_with_low_vram_gives_the_same_frames_and_records_the_budget(
    tiny_volume, media, tmp_path
) -> None:
    """The DiT loads in the background (as the CLI's does): low VRAM is set up once it is in."""
    tiny = load_profile("tiny")
    job = load_job(write_job(media, "low-vram"))
    whole = MultiTalkRenderer(load_pipeline_components(LocalVolume(tiny_volume), tiny))
    components = load_pipeline_components(LocalVolume(tiny_volume), tiny, background=["transformer"])
    low = MultiTalkRenderer(components, persistent_params=0)
    assert low.low_vram is None  # the DiT is not in yet
    ours = render_job(job, low, tiny, tmp_path / "low")
    theirs = render_job(job, whole, tiny, tmp_path / "whole")
    assert low.low_vram is not None and low.low_vram.stats.persistent == 0
    assert low.low_vram.stats.visits > 0 and low.low_vram.stats.most_at_once == 1
    assert all(
        np.array_equal(a, b)
        for a, b in zip(frames(ours.output.video), frames(theirs.output.video), strict=True)
    )
    assert json.loads(ours.output.job_json.read_text())["renderer"]["persistent_params"] == 0
    assert json.loads(theirs.output.job_json.read_text())["renderer"]["persistent_params"] is None


def test_from_volume_reads_mt_persistent_params_and_the_worker_passes_it(tiny_volume, monkeypatch) -> None:
    monkeypatch.setenv("MT_PERSISTENT_PARAMS", "5000")
    renderer = MultiTalkRenderer.from_volume(LocalVolume(tiny_volume), load_profile("tiny"), device="cpu")
    assert renderer.settings.persistent_params == 5000
    assert renderer.low_vram is not None and renderer.low_vram.stats.persistent <= 5000  # set up at once
    assert WorkerSettings.from_env({"MT_PERSISTENT_PARAMS": "0"}).persistent_params == 0
    with pytest.raises(LowVramError, match="persistent_params"):
        MultiTalkRenderer.from_volume(
            LocalVolume(tiny_volume), load_profile("tiny"), device="cpu", persistent_params=-5
        )


def test_cli_render_with_mt_persistent_params_0_gives_the_same_frames(tiny_volume, media, tmp_path) -> None:
    import os

    job = write_job(media, "cli-low-vram")
    args = ("render", str(job), "--profile", "tiny", "--volume", str(tiny_volume), "--json")
    env = {k: v for k, v in os.environ.items() if k != "MT_PERSISTENT_PARAMS"}
    low = run_cli(*args, "--out", str(tmp_path / "low"), env={**env, "MT_PERSISTENT_PARAMS": "0"})
    assert low.returncode == 0, low.stderr
    whole = run_cli(*args, "--out", str(tmp_path / "whole"), env=env)
    assert whole.returncode == 0, whole.stderr
    ours, theirs = (frames(tmp_path / w / "cli-low-vram" / "video.mp4") for w in ("low", "whole"))
    assert len(ours) == 13
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))
    record = json.loads((tmp_path / "low" / "cli-low-vram" / "job.json").read_text())
    assert record["renderer"]["persistent_params"] == 0
    flag = run_cli(*args, "--out", str(tmp_path / "flag"), "--persistent-params", "-1", env=env)
    assert flag.returncode == 2 and "--persistent-params" in flag.stderr
