"""Low VRAM: the DiT's parameters beyond a budget stay on the host and visit the device one layer at a time.

MeiGen MultiTalk's `--num_persistent_param_in_dit N` (commit c1ad840: `generate_multitalk.py` ->
`wan/multitalk.py` `enable_vram_management` -> `src/vram_management/layers.py`), rebuilt on forward
hooks instead of wrapper classes, so the DiT keeps its own modules, names and state_dict.

Units. A *unit* is one module of the DiT that holds tensors of its own (parameters and buffers, its
children's not included): a Linear, an optimum-quanto QLinear (its weight a QTensor), the Conv3d, a
norm; and the modulation tables the model and each block hold directly. In module order
(`named_modules`), units are *resident* while their parameters, added up, fit in the budget; the first
unit that does not fit and every unit after it are *offloaded* (a prefix, as the reference's running
total makes it).

Budget. A number of parameters (tensor elements, `numel`), the reference's unit, not bytes: resident
bytes are 2 x the count for a bf16 DiT, about 1 x for an int8 one (a QTensor counts its logical
elements; its scales travel with it). Buffers (quanto's scalar input/output scales, diffusers' RoPE
tables, which our forward does not read) travel with their module and are not counted. 0: no unit
resident. The renderer's None (MT_PERSISTENT_PARAMS unset) does not use this module: the whole DiT
sits on the device.

Placement:
    resident unit            its tensors are put on the device once, by `LowVram(...)`
    offloaded leaf module    its tensors stay on the host (the CPU); a forward pre-hook puts device
                             copies in their place and a forward hook (run also when the forward
                             raises) puts the host tensors back; the copies are dropped, nothing is
                             copied back (inference: weights do not change)
    offloaded owner with     the modulation tables of the model and of each block, read by the DiT's
    children                 own code rather than by a forward of their module: they stay on the host
                             and the DiT copies them where it adds them (dit.py, as the reference's
                             `self.modulation.to(e.device)`); 6 x dim numbers per block, temporaries
                             like activations, not counted

Accounting (`LowVram.stats`, updated by the hooks): `on_device` is the number of parameters of the
units whose tensors are on the device now (resident, plus offloaded ones visiting), `peak` its maximum,
`most_at_once` the most offloaded units visiting at one time. What it guarantees, and the tests check:

    persistent  <= budget                                   (the resident units, fixed when enabled)
    on_device   <= persistent + the largest offloaded unit   at every moment
    most_at_once <= 1                                        (leaves do not nest: one layer at a time)

Placement is tracked here, not read from `tensor.device`: on a CPU-only machine the device and the
host are both the CPU and a "copy" is the same memory, yet the hooks swap the module's tensor objects
exactly as on a GPU (a unit holding its host objects is on the host; one holding other objects is on
the device), so the CPU tests see the swaps and the accounting a GPU run makes. Seconds per step and GPU
memory are measured on a GPU machine only.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

HOST = torch.device("cpu")

# The models low VRAM is enabled on, to its device (compute_device; one manager per model). The
# device, not the manager, which holds the model: a model dropped without remove() is still freed.
_MANAGED: weakref.WeakKeyDictionary[nn.Module, torch.device] = weakref.WeakKeyDictionary()


class LowVramError(ValueError):
    """Low VRAM cannot be set up as asked (a negative budget, a model already managed)."""


@dataclass
class Unit:
    """One module's own tensors, and where they are."""

    name: str  # the module's name in the model ("" for the model itself)
    module: nn.Module
    params: int  # numel of its own parameters (buffers not counted)
    resident: bool
    hooked: bool  # offloaded and a leaf: visits the device while its forward runs
    # an offloaded unit's host tensors, by (kind, key); empty for a resident one
    host: dict[tuple[str, str], Any] = field(default_factory=dict, repr=False)
    on_device: bool = False


@dataclass
class ResidencyStats:
    """The accounting; see the module docstring for what it guarantees."""

    budget: int
    total: int  # parameters of every unit
    persistent: int  # parameters of the resident units
    largest_offloaded: int  # parameters of the largest offloaded unit (0 when none)
    on_device: int = 0  # parameters on the device now
    peak: int = 0  # the most on the device at one time
    visiting: int = 0  # offloaded units on the device now
    most_at_once: int = 0  # the most offloaded units on the device at one time
    visits: int = 0  # offloaded units put on the device, over the manager's life

    def to_json(self) -> dict[str, int]:
        return {
            "budget": self.budget,
            "total": self.total,
            "persistent": self.persistent,
            "largest_offloaded": self.largest_offloaded,
            "peak": self.peak,
            "most_at_once": self.most_at_once,
            "visits": self.visits,
        }


def own_tensors(module: nn.Module) -> list[tuple[str, str, Any]]:
    """(kind, key, tensor) of the module's own parameters ("_parameters") and buffers ("_buffers")."""
    return [
        (kind, key, tensor)
        for kind in ("_parameters", "_buffers")
        for key, tensor in getattr(module, kind).items()
        if tensor is not None
    ]


def _put(module: nn.Module, kind: str, key: str, tensor: Any) -> None:
    getattr(module, kind)[key] = tensor


def _moved(kind: str, tensor: Any, device: torch.device) -> Any:
    """A copy of `tensor` on `device`, as a new object (a Parameter stays a Parameter; QTensors move
    through optimum-quanto's own dispatch). On the same device the data is shared, the object is new."""
    moved = tensor.detach().to(device)
    if kind == "_parameters":
        return nn.Parameter(moved, requires_grad=tensor.requires_grad)
    return moved


def check_budget(budget: int) -> int:
    """`budget` if it is a whole number of parameters >= 0; else LowVramError naming the setting."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise LowVramError(f"persistent_params: expected a whole number of parameters >= 0, got {budget!r}")
    return budget


class LowVram:
    """Budgeted residency of one model's units on `device`; `remove()` undoes it (everything on the host).
    A failure while enabling (a device out of memory) leaves the model as it was: no hooks, its own
    tensor objects back."""

    def __init__(self, model: nn.Module, device: str | torch.device, budget: int) -> None:
        check_budget(budget)
        if model in _MANAGED:
            raise LowVramError(f"low VRAM is already enabled on this {type(model).__name__}")
        self.model = model
        self.device = torch.device(device)
        self.units: list[Unit] = []
        self._handles: list[RemovableHandle] = []
        # every module's tensor objects as they were: a failure part-way (a device out of memory)
        # puts them back, so the model is as before and enabling again starts from it
        originals = [(m, kind, key, t) for m in model.modules() for kind, key, t in own_tensors(m)]
        try:
            spent = self._enable(budget)
        except BaseException:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            for module, kind, key, tensor in originals:
                _put(module, kind, key, tensor)
            self.units.clear()
            raise
        offloaded = [u.params for u in self.units if not u.resident]
        self.stats = ResidencyStats(
            budget=budget,
            total=sum(u.params for u in self.units),
            persistent=spent,
            largest_offloaded=max(offloaded, default=0),
            on_device=spent,
            peak=spent,
        )
        _MANAGED[model] = self.device

    def _enable(self, budget: int) -> int:
        """Place or offload every unit and hook the offloaded leaves; the resident parameters."""
        fits = True
        spent = 0
        for name, module in self.model.named_modules():
            tensors = own_tensors(module)
            if not tensors:
                continue
            params = sum(t.numel() for kind, _, t in tensors if kind == "_parameters")
            fits = fits and spent + params <= budget
            leaf = next(module.children(), None) is None
            unit = Unit(name, module, params, resident=fits, hooked=not fits and leaf)
            if fits:
                spent += params
                self._place(unit, self.device)
                unit.on_device = True
            else:
                for kind, key, tensor in tensors:
                    host = tensor if tensor.device == HOST else _moved(kind, tensor, HOST)
                    _put(module, kind, key, host)
                    unit.host[kind, key] = host
            if unit.hooked:
                self._handles.append(module.register_forward_pre_hook(partial(self._visit, unit)))
                self._handles.append(
                    module.register_forward_hook(partial(self._leave, unit), always_call=True)
                )
            self.units.append(unit)
        return spent

    @staticmethod
    def _place(unit: Unit, device: torch.device) -> None:
        for kind, key, tensor in own_tensors(unit.module):
            _put(unit.module, kind, key, _moved(kind, tensor, device))

    def _visit(self, unit: Unit, module: nn.Module, args: Any) -> None:
        if unit.on_device:  # not expected (a leaf does not run inside its own forward); counted once
            return
        self._place(unit, self.device)
        unit.on_device = True
        s = self.stats
        s.on_device += unit.params
        s.peak = max(s.peak, s.on_device)
        s.visiting += 1
        s.most_at_once = max(s.most_at_once, s.visiting)
        s.visits += 1

    def _leave(self, unit: Unit, module: nn.Module, args: Any, output: Any) -> None:
        if not unit.on_device:
            return
        for (kind, key), host in unit.host.items():
            _put(module, kind, key, host)  # the device copies are dropped here
        unit.on_device = False
        self.stats.on_device -= unit.params
        self.stats.visiting -= 1

    def on_host(self, unit: Unit) -> bool:
        """Whether the unit's module holds exactly its host tensors (the objects, not equal copies)."""
        return bool(unit.host) and all(
            getattr(unit.module, kind)[key] is host for (kind, key), host in unit.host.items()
        )

    def remove(self) -> None:
        """Remove the hooks and put every unit's tensors on the host; the model is then an ordinary one."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for unit in self.units:
            if unit.resident:
                self._place(unit, HOST)
            else:
                for (kind, key), host in unit.host.items():
                    _put(unit.module, kind, key, host)
            unit.on_device = False
        self.stats.on_device = 0
        _MANAGED.pop(self.model, None)


def compute_device(model: nn.Module) -> torch.device:
    """Where `model` computes: its low-VRAM device when managed (its first parameter may be on the
    host), else the device of its first parameter."""
    managed = _MANAGED.get(model)
    return managed if managed is not None else next(model.parameters()).device
