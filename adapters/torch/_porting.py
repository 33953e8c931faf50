"""Optimizer state between ``uniopt.torch`` (or ``torch.optim``) and :class:`uniopt.PortableState`.

Parameters are taken in ``param_groups`` order (group 0's parameters, then group 1's, ...), which is
the order of ``state_dict()``'s indices. A record holds one step count and one set of
hyperparameters, so every parameter must have taken the same number of steps and every group must
have the same hyperparameters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

import uniopt
from uniopt import PortableState, Spec
from uniopt.porting import check_compatible, make_state
from uniopt.registry import TABLE, OptimizerInfo, get

from ._history import HistoryOptimizer
from ._namespace import xp
from ._optimizer import (
    _SELECTING,
    _STATE_DICT_KEY,
    STATE_DTYPES,
    UnioptOptimizer,
    _new_slot,
    _plain,
    _selected,
    _step_count,
    _tag_of,
)

__all__ = [
    "export_state",
    "from_torch_optim",
    "import_state",
    "load_torch_optim_state_dict",
    "to_torch_optim",
]

_ROWS: dict[type[Spec], OptimizerInfo] = {
    info.spec: info for info in TABLE if info.torch is not None and info.torch.native is not None
}
_NATIVE: dict[type[torch.optim.Optimizer], type[Spec]] = {
    getattr(torch.optim, info.torch.native): spec
    for spec, info in _ROWS.items()
    if info.torch is not None and hasattr(torch.optim, str(info.torch.native))
}
"""torch.optim classes whose state uniopt reads, from the table's rows (``TorchNames.native``): their
hyperparameters carry the names and meanings of the uniopt spec's fields, and their state the spec's
slots under the names ``TorchNames.state`` gives (the same names where it is silent: ``exp_avg``,
``exp_avg_sq``, ``max_exp_avg_sq``, ``momentum_buffer``, ``square_avg``, ``grad_avg``, ``sum``,
``exp_inf``, ``acc_delta``), except the entries of :data:`_DERIVED`."""


_NO_STEP_COUNT = (uniopt.SGD, uniopt.Muon)
"""Specs whose torch.optim optimizer keeps no ``step`` in its state."""


def _torch_mu_product(spec: Spec, step: int) -> float:
    from uniopt.nadam import torch_mu_product

    h = spec.hyperparameters
    return torch_mu_product(h["betas"][0], h["momentum_decay"], step)


_DERIVED: dict[str, dict[str, Any]] = {"NAdam": {"mu_product": _torch_mu_product}}
"""torch.optim state entries that are no spec slot but a function ``(spec, step) -> float`` of the
hyperparameters and the step count (torch.optim.NAdam's ``mu_product``, the float32 product of its
momentum coefficients): dropped on the way in once checked against that function (a run whose
``betas`` or ``momentum_decay`` changed holds another value and is refused), recomputed on the way
out as torch.optim keeps it (a 0-d float32 tensor)."""


def _slot_names_of(spec: Spec) -> dict[str, str]:
    """torch.optim's state key -> the spec's slot, for each slot of ``spec``."""
    info = _ROWS.get(type(spec))
    renamed = {slot: key for key, slot in info.torch.state.items()} if info and info.torch else {}
    return {renamed.get(slot, slot): slot for slot in spec.slot_names()}


def _take_derived(spec: Spec, entry: Mapping[str, Any], step: int | None, owner: str, where: str) -> None:
    """Check ``entry``'s derived entries (:data:`_DERIVED`) against what ``step`` gives; raises
    ``ValueError`` naming ``where`` on a mismatch."""
    for key, derive in _DERIVED.get(spec.name, {}).items():
        if key not in entry or step is None:
            continue
        saved, expected = float(entry[key]), float(torch.tensor(derive(spec, step), dtype=torch.float32))
        if saved != expected:
            raise ValueError(
                f"{owner}: {where} has {key}={saved!r}, but {step} steps with these hyperparameters "
                f"give {expected!r} (were they changed during the run?); uniopt derives {key} from the "
                "step count and cannot continue it; nothing was loaded"
            )


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A host copy with the same bits (bfloat16 through ml_dtypes)."""
    t = tensor.detach().to("cpu", copy=True)
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    """A fresh CPU tensor with the array's bits."""
    if str(array.dtype) == "bfloat16":
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(array.copy())


def _params(optimizer: torch.optim.Optimizer, owner: str) -> list[torch.Tensor]:
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for i, p in enumerate(params):
        if p.is_complex():
            raise ValueError(
                f"{owner}: parameter {i} is complex ({p.dtype}); a PortableState holds real arrays only"
            )
    return params


def _one_spec(specs: list[Spec], owner: str) -> Spec:
    for g, spec in enumerate(specs[1:], start=1):
        for name, value in spec.hyperparameters.items():
            if specs[0].hyperparameters[name] != value:
                raise ValueError(
                    f"{owner}: param group {g} has {name}={value!r}, group 0 has "
                    f"{specs[0].hyperparameters[name]!r}; a PortableState holds one set of hyperparameters"
                )
    return specs[0]


def _group_spec(optimizer: UnioptOptimizer, group: Mapping[str, Any]) -> Spec:
    """The spec of one param group (its hyperparameters are the spec's fields)."""
    owner = optimizer.spec_class.name
    return optimizer.spec_class(**{n: _plain(owner, n, group[n]) for n in optimizer._fields()})


def _common_step(steps: list[int | None], owner: str) -> int:
    """The one step count of all parameters (``None``: no state yet, i.e. 0 steps)."""
    counts = [0 if s is None else s for s in steps]
    for i, count in enumerate(counts):
        if count != counts[0]:
            raise ValueError(
                f"{owner}: parameter {i} has taken {count} steps and parameter 0 {counts[0]}; a "
                "PortableState holds one step count (parameters without gradients do not advance)"
            )
    return counts[0] if counts else 0


def export_state(optimizer: UnioptOptimizer) -> PortableState:
    """The state of a ``uniopt.torch`` optimizer as a :class:`uniopt.PortableState`.

    Reads ``optimizer.state[p]`` (``step``, a CPU int64 tensor, and the spec's slots) for every
    parameter in ``param_groups`` order; a parameter without state yet gets step 0 and the spec's
    initial slots. Raises ``ValueError`` if the groups' hyperparameters or the parameters' step
    counts differ, or a parameter is complex.
    """
    owner = "uniopt.torch.export_state"
    if not isinstance(optimizer, UnioptOptimizer):
        raise TypeError(
            f"{owner}: expected a uniopt.torch optimizer, got {type(optimizer).__name__}; for a "
            "torch.optim optimizer use uniopt.torch.from_torch_optim"
        )
    spec = _one_spec([_group_spec(optimizer, g) for g in optimizer.param_groups], owner)
    params = _params(optimizer, owner)
    # each parameter's group's state_dtypes: the slots stored narrower (a record holds them so)
    dtypes_of = {id(p): g.get(STATE_DTYPES) for g in optimizer.param_groups for p in g["params"]}
    steps: list[int | None] = []
    slots = []
    for p in params:
        entry = optimizer.state.get(p)
        if not entry:
            steps.append(None)
            slots.append(
                {n: _to_numpy(_new_slot(spec, n, p.detach(), dtypes_of[id(p)])) for n in spec.slot_names()}
            )
            continue
        steps.append(int(entry["step"]))
        slots.append(  # the placeholders the state does not keep (slots_in_use) as their zeros
            {
                n: _to_numpy(entry[n] if n in entry else spec.init_slot(n, p.detach(), xp))
                for n in spec.slot_names()
            }
        )
    step, history = _common_step(steps, owner), None
    if isinstance(optimizer, HistoryOptimizer):
        step, history = _group_history(optimizer, spec, owner)
    return make_state(
        spec,
        step,
        slots,
        [tuple(p.shape) for p in params],
        [_dtype_name(p.dtype) for p in params],
        history=history,
    )


def _group_history(optimizer: HistoryOptimizer, spec: Spec, owner: str) -> tuple[int, Any]:
    """The step count and history every group of a :class:`HistoryOptimizer` shares (a record
    holds one), refused in eval mode: a record continues training, whose parameters are y."""
    if not all(group["train_mode"] for group in optimizer.param_groups):
        raise ValueError(
            f"{owner}: the optimizer is in eval mode (its parameters hold x); call optimizer.train() "
            "first: the state continues training, from the parameters y"
        )
    kept = {(group["k"], optimizer._history(group, spec)) for group in optimizer.param_groups}
    if len(kept) != 1:
        raise ValueError(f"{owner}: the param groups have taken different steps or hold different histories")
    return next(iter(kept))


def import_state(optimizer: UnioptOptimizer, state: PortableState, *, hyperparameters: bool = True) -> None:
    """Load ``state`` into a ``uniopt.torch`` optimizer, so that it continues the saved run.

    Everything is checked first (:func:`uniopt.porting.check_compatible` against every group: the
    optimizer, parameter count, shapes, dtypes, slots and, unless ``hyperparameters=False``, each
    hyperparameter); then the state goes through ``optimizer.load_state_dict``, which validates
    again, as the state a native run would hold: per parameter ``step`` (a CPU int64 tensor) and the
    slots, in the parameter's dtype and on its device. Nothing is changed if any check fails.
    """
    owner = "uniopt.torch.import_state"
    if not isinstance(optimizer, UnioptOptimizer):
        raise TypeError(
            f"{owner}: expected a uniopt.torch optimizer, got {type(optimizer).__name__}; for a "
            "torch.optim optimizer use uniopt.torch.to_torch_optim"
        )
    params = _params(optimizer, owner)
    shapes = [tuple(p.shape) for p in params]
    dtypes = [_dtype_name(p.dtype) for p in params]
    for group in optimizer.param_groups:
        spec = _group_spec(optimizer, group)
        check_compatible(state, spec, shapes, dtypes, hyperparameters=hyperparameters, owner=owner)
    current = optimizer.state_dict()
    if isinstance(optimizer, HistoryOptimizer):
        if not all(group["train_mode"] for group in optimizer.param_groups):
            raise ValueError(
                f"{owner}: the optimizer is in eval mode (its parameters hold x); call "
                "optimizer.train() first: the state continues training, from the parameters y"
            )
        for group in current["param_groups"]:  # the record's step count and history, in every group
            group.update(k=state.step, **(state.history or {}))
    indices = [i for group in current["param_groups"] for i in group["params"]]
    native = {
        index: {"step": torch.tensor(state.step, dtype=torch.int64)}
        | {name: _to_tensor(value) for name, value in slots.items() if name in spec.slots_in_use(shape)}
        for index, slots, shape in zip(indices, state.slots, state.shapes, strict=True)
    }
    _load(optimizer, {**current, "state": native}, owner)


def _load(optimizer: UnioptOptimizer, state_dict: dict[str, Any], owner: str) -> None:
    """``optimizer.load_state_dict(state_dict)``, its ``ValueError`` (raised before anything is
    loaded) naming ``owner``, the function the user called, instead of ``load_state_dict``."""
    try:
        optimizer.load_state_dict(state_dict)
    except ValueError as exc:
        message = str(exc)
        prefix = f"uniopt.torch.{optimizer.spec_class.name}.load_state_dict: "
        if not message.startswith(prefix):
            raise
        raise ValueError(f"{owner}: {message[len(prefix) :]}") from None


# -- torch.optim's own optimizers ----------------------------------------------------------------


def _native_spec(optimizer: torch.optim.Optimizer, owner: str) -> type[Spec]:
    for cls in type(optimizer).__mro__:
        if cls in _NATIVE:
            return _NATIVE[cls]
    raise TypeError(
        f"{owner}: {type(optimizer).__name__} is not one of torch.optim's "
        f"{', '.join(c.__name__ for c in _NATIVE)}"
    )


def _native_group_spec(spec_class: type[Spec], group: Mapping[str, Any], owner: str, index: int) -> Spec:
    """The uniopt spec with a torch.optim group's hyperparameters (torch's names are the spec's).

    An option of :data:`uniopt.torch._optimizer._SELECTING` that is no spec field picks the row:
    torch.optim.Adam with ``decoupled_weight_decay=True`` is read as AdamW; torch.optim.AdamW
    (whose subclass of Adam always holds True) with False is refused."""
    fields = [f.name for f in dataclasses.fields(spec_class)]
    info = _ROWS[spec_class]
    options = info.torch.options if info.torch is not None else {}
    for name in _SELECTING:
        if name in fields or name not in options or group.get(name, options[name]) == options[name]:
            continue
        other = _selected(spec_class, name, group[name])
        if other is None or not issubclass(get(other).spec, spec_class):
            raise ValueError(f"{owner}: group {index} is {spec_class.name} with {name}={group[name]!r}")
        spec_class = get(other).spec
    fields = [f.name for f in dataclasses.fields(spec_class)]
    kwargs = {name: _plain(owner, name, group[name]) for name in fields if name in group}
    try:
        return spec_class(**kwargs)
    except ValueError as exc:
        raise ValueError(f"{owner}: group {index}: {exc}") from None


def from_torch_optim(optimizer: torch.optim.Optimizer, *, step: int | None = None) -> PortableState:
    """The state of a ``torch.optim`` optimizer of the table (:data:`_NATIVE`: SGD, Adagrad, RMSprop,
    Adam, AdamW, RAdam, Adamax, NAdam, Adadelta, Adafactor, Muon) as a record with ``convention="torch"``.

    Conventions assumed (torch 2.x): the hyperparameters' names and meanings are the uniopt spec's
    (``Adam(decoupled_weight_decay=True)`` is read as AdamW; RAdam's ``degenerated_to_sgd`` is
    torch's behaviour, True); the slots are the spec's slots under the same names and meanings
    (``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` (AMSGrad's maximum of the uncorrected
    ``exp_avg_sq``), ``momentum_buffer`` (unscaled, seeded with the first gradient), ``square_avg``,
    ``grad_avg``, ``sum``, ``exp_inf``, ``acc_delta``, Adafactor's ``row_var``, ``col_var`` and
    ``variance``, of which torch.optim keeps only those a parameter uses: the record gets the
    others as the spec's placeholders), copied bit for bit; ``state[p]["step"]`` (a
    float tensor) is the step count; NAdam's ``mu_product`` is checked against the step count and
    dropped (:data:`_DERIVED`). ``torch.optim.SGD`` and ``torch.optim.Muon`` keep no step count:
    pass ``step`` (any value >= 1 continues the same way once a momentum buffer exists; Muon's
    torch convention reads no step count at all). ``foreach``, ``fused``,
    ``capturable`` and ``differentiable`` do not change the state and are ignored. Continuing under
    uniopt's rules is torch's algorithm except where docs/torch.md lists a difference (RAdam's eps
    placement, centered RMSprop's clamp) and rounding.
    """
    owner = "uniopt.torch.from_torch_optim"
    if isinstance(optimizer, UnioptOptimizer):
        raise TypeError(
            f"{owner}: {type(optimizer).__name__} is a uniopt optimizer; use uniopt.torch.export_state"
        )
    spec_class = _native_spec(optimizer, owner)
    specs = [_native_group_spec(spec_class, g, owner, i) for i, g in enumerate(optimizer.param_groups)]
    spec = _one_spec(specs, owner)
    params = _params(optimizer, owner)
    keys = _slot_names_of(spec)  # torch.optim's state key -> the spec's slot
    steps: list[int | None] = []
    slots = []
    for i, p in enumerate(params):
        entry = {k: v for k, v in optimizer.state.get(p, {}).items() if v is not None}
        in_use = set(spec.slots_in_use(tuple(p.shape)))  # torch.optim keeps no placeholders
        missing = [k for k, n in keys.items() if k not in entry and n in in_use]
        if missing and len(missing) < len(keys):
            raise ValueError(f"{owner}: parameter {i} has state {sorted(entry)} but lacks {missing}")
        slots.append(
            {
                n: _to_numpy(entry[k]) if k in entry else _to_numpy(spec.init_slot(n, p.detach(), xp))
                for k, n in keys.items()
            }
        )
        if "step" in entry:
            _take_derived(spec, entry, int(entry["step"]), owner, f"parameter {i}")
            steps.append(int(entry["step"]))
        elif entry:  # SGD, Muon: no counter of their own
            if step is None:
                raise ValueError(
                    f"{owner}: torch.optim.{type(optimizer).__name__} keeps no step count; pass step= "
                    "(the number of steps taken)"
                )
            steps.append(step)
        else:
            steps.append(None)
    count = _common_step(steps, owner)
    if step is not None and count not in (0, step):
        raise ValueError(f"{owner}: step={step} but the optimizer's state says {count}")
    return dataclasses.replace(
        make_state(
            spec,
            step if step is not None else count,
            slots,
            [tuple(p.shape) for p in params],
            [_dtype_name(p.dtype) for p in params],
        ),
        convention="torch",
    )


def to_torch_optim(
    state: PortableState, optimizer: torch.optim.Optimizer, *, hyperparameters: bool = True
) -> None:
    """Load a record into a ``torch.optim`` optimizer of the same algorithm (the inverse of
    :func:`from_torch_optim`: the slots under torch's names, ``step`` as torch's float32 tensor; SGD
    gets no counter). Checked first like :func:`import_state`; nothing changes on a mismatch."""
    owner = "uniopt.torch.to_torch_optim"
    if isinstance(optimizer, UnioptOptimizer):
        raise TypeError(
            f"{owner}: {type(optimizer).__name__} is a uniopt optimizer; use uniopt.torch.import_state"
        )
    spec_class = _native_spec(optimizer, owner)
    params = _params(optimizer, owner)
    shapes = [tuple(p.shape) for p in params]
    dtypes = [_dtype_name(p.dtype) for p in params]
    for i, group in enumerate(optimizer.param_groups):
        spec = _native_group_spec(spec_class, group, owner, i)
        check_compatible(state, spec, shapes, dtypes, hyperparameters=hyperparameters, owner=owner)
    current = optimizer.state_dict()
    indices = [i for group in current["param_groups"] for i in group["params"]]
    native: dict[int, dict[str, torch.Tensor]] = {}
    keys = {slot: key for key, slot in _slot_names_of(spec).items()}
    derived = _DERIVED.get(spec.name, {})
    for index, slots, shape in zip(indices, state.slots, state.shapes, strict=True):
        if spec_class is uniopt.SGD and state.step == 0:
            break  # torch.optim.SGD seeds its buffer with the first gradient: no state before that
        in_use = set(spec.slots_in_use(shape))
        entry = {keys.get(name, name): _to_tensor(value) for name, value in slots.items() if name in in_use}
        if spec_class not in _NO_STEP_COUNT:
            entry["step"] = torch.tensor(float(state.step), dtype=torch.float32)
        for key, derive in derived.items():  # as torch.optim keeps it: a 0-d float32 tensor
            entry[key] = torch.tensor(derive(spec, state.step), dtype=torch.float32)
        if entry:
            native[index] = entry
    optimizer.load_state_dict({**current, "state": native})


_SWITCHES = ("foreach", "fused", "capturable", "differentiable")
"""torch.optim's implementation switches: a torch.optim state_dict's say how that run was executed."""


def load_torch_optim_state_dict(
    optimizer: UnioptOptimizer, state_dict: Mapping[str, Any], *, step: int | None = None
) -> None:
    """Load a ``torch.optim`` state_dict of the same algorithm (``torch.optim.Adam``'s into
    ``uniopt.torch.Adam``, ...) into a ``uniopt.torch`` optimizer over the same parameters, so that
    a torch.optim run (a checkpoint file) continues under uniopt.

    Each param group keeps its saved hyperparameters, as ``load_state_dict`` keeps them (several
    groups with different values are fine, unlike :func:`from_torch_optim`'s single record), and
    takes the optimizer's own group's ``convention``, which a torch.optim dict lacks (build the
    optimizer with ``convention="torch"`` to continue with torch.optim's formulas), and its
    ``foreach``, ``fused``, ``capturable`` and ``differentiable`` (how the saving run was executed,
    for example ``capturable=True`` on CUDA, does not carry over). The slots are
    copied bit for bit (their names and meanings are the spec's, see :data:`_NATIVE`); ``step``
    (torch.optim's float tensor) becomes the int64 count; ``None`` entries (torch.optim.SGD's
    momentum buffer without momentum) are dropped. ``torch.optim.SGD`` and ``torch.optim.Muon``
    keep no step count: pass
    ``step`` (the number of steps taken, >= 1) when its state holds momentum buffers. A group that
    counts its steps (``k``: the authors' ``schedulefree.AdamWScheduleFree``, whose dict loads into
    ``uniopt.torch.ScheduleFreeAdamW`` with its history and mode) gives its parameters that count.

    Raises ``TypeError`` for an optimizer that is not a uniopt.torch one, and ``ValueError`` for a
    dict saved by uniopt.torch (use ``optimizer.load_state_dict``), a missing or bad ``step``, or
    whatever ``optimizer.load_state_dict`` refuses (group and parameter counts, the slots the
    hyperparameters need, shapes, hyperparameters; a torch.optim.AdamW dict into ``Adam`` is refused
    by its ``decoupled_weight_decay=True``); nothing is loaded then.
    """
    owner = "uniopt.torch.load_torch_optim_state_dict"
    if not isinstance(optimizer, UnioptOptimizer):
        raise TypeError(
            f"{owner}: expected a uniopt.torch optimizer, got {type(optimizer).__name__}; a "
            "torch.optim optimizer loads it with its own load_state_dict"
        )
    if _tag_of(state_dict) is not None:
        raise ValueError(f"{owner}: the state_dict was saved by uniopt.torch; use optimizer.load_state_dict")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 1):
        raise ValueError(f"{owner}: step={step!r}; expected the number of steps taken, an int >= 1")
    groups = [dict(group) for group in state_dict["param_groups"]]
    for group, current in zip(groups, optimizer.param_groups, strict=False):
        group.setdefault("convention", current["convention"])
        for name in _SWITCHES:  # the saving run's kernel choices are not this optimizer's
            if name in current:
                group[name] = current[name]
            else:
                group.pop(name, None)
    state: dict[Any, Any] = {}
    where = {index: g for g, group in enumerate(groups) for index in group["params"]}
    for index, entry in state_dict["state"].items():
        # torch.optim.SGD keeps a sparse momentum buffer for a sparse gradient (torch/optim/sgd.py
        # clones the first one); uniopt's slots are dense: densified, which is exact
        kept = {name: _dense(value) for name, value in entry.items() if value is not None}
        g = where.get(index)
        group = optimizer.param_groups[g] if g is not None and g < len(optimizer.param_groups) else None
        if group is not None:  # torch.optim's key names and derived entries (NAdam's mu_product)
            spec = optimizer._spec_of({**group, **{k: v for k, v in groups[g].items() if k in group}})
            for key, slot in _slot_names_of(spec).items():
                if key in kept and key != slot:
                    kept[slot] = kept.pop(key)
            if spec.name in _DERIVED and "step" in kept:
                count = _step_count(kept["step"])
                _take_derived(spec, kept, count, owner, f"param {index}")
                for key in _DERIVED[spec.name]:
                    kept.pop(key, None)
        if kept and "step" not in kept and step is None and g is not None and "k" in groups[g]:
            kept["step"] = _step_count(groups[g]["k"])  # schedulefree's: the group counts the steps
        if kept and "step" not in kept:
            if step is None:
                raise ValueError(
                    f"{owner}: param {index} has state {sorted(kept)} but no step count (torch.optim.SGD "
                    "and torch.optim.Muon keep none); pass step= (the number of steps taken); nothing was "
                    "loaded"
                )
            kept["step"] = step
        if kept:
            state[index] = kept
    _load(
        optimizer,
        {**state_dict, "state": state, "param_groups": groups, _STATE_DICT_KEY: optimizer._state_dict_tag()},
        owner,
    )


def _dense(value: Any) -> Any:
    """A sparse COO tensor as a dense one (exact: the absent entries are zeros); anything else as is."""
    return value.to_dense() if isinstance(value, torch.Tensor) and value.is_sparse else value
