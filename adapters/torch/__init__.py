"""uniopt.torch: ``torch.optim.Optimizer`` subclasses that run the uniopt spec, bit for bit.

>>> import torch, uniopt.torch
>>> model = torch.nn.Linear(4, 2)
>>> opt = uniopt.torch.RAdam(model.parameters(), lr=1e-3)   # in place of torch.optim.RAdam

One class per row of :data:`uniopt.registry.TABLE` with torch names (``TorchNames``), generated from
the row (:data:`OPTIMIZERS`): SGD, Adagrad, RMSprop, Adam, AdamW, RAdam, Adamax, NAdam, Adadelta,
Adafactor, Lion, Lamb and ScheduleFreeAdamW. Argument names, positions and defaults are
torch.optim's (``lr``, ``betas``, ``eps``, ``weight_decay``, ``momentum``, ``dampening``,
``nesterov``, ``alpha``, ``rho``, ``centered``, ``lr_decay``, ``initial_accumulator_value``,
``amsgrad``, ``momentum_decay``, ``decoupled_weight_decay``, ``beta2_decay``, ``d``,
``maximize``; RAdam adds ``degenerated_to_sgd``, Adafactor optax's arguments; Lion and Lamb, which
torch.optim lacks, take the spec's names); ``lr`` (and Adam's ``betas``) may be 1-element tensors,
and params may be tensors, ``(name, tensor)`` pairs or param group dicts, as torch.optim takes them.
What differs from torch.optim is documented in docs/torch.md: the formulas are the spec's (RAdam's
epsilon sits on sqrt(v-hat) as in Adam; centered RMSprop clamps its variance at 0), and every result
is correctly rounded the same way as the NumPy reference. torch.optim's implementation switches
(``foreach``, ``fused``) are accepted and stored as torch.optim stores them, and never change the
numbers; ``capturable=True`` and ``differentiable=True`` are refused. A torch.optim checkpoint of
the same algorithm continues under uniopt with :func:`load_torch_optim_state_dict`.
``implementation`` (:data:`IMPLEMENTATIONS`, default ``"auto"``) chooses how the rule is executed,
always with the same bits: per tensor, or over flat state buffers, eager or compiled by inductor.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import torch

import uniopt.sparse
from uniopt import Spec
from uniopt.registry import TABLE, OptimizerInfo

from ._history import HistoryOptimizer
from ._optimizer import AUTO_COMPILE_MIN, IMPLEMENTATIONS, STATE_DTYPES, UnioptOptimizer, _selected
from ._porting import (
    export_state,
    from_torch_optim,
    import_state,
    load_torch_optim_state_dict,
    to_torch_optim,
)

__all__ = [
    "AUTO_COMPILE_MIN",
    "IMPLEMENTATIONS",
    "OPTIMIZERS",
    "HistoryOptimizer",
    "UnioptOptimizer",
    "export_state",
    "from_torch_optim",
    "import_state",
    "load_torch_optim_state_dict",
    "to_torch_optim",
]


def _share_memory(self: UnioptOptimizer) -> None:
    """Move each parameter's slots into shared memory (``Tensor.share_memory_``), as
    torch.optim.Adagrad does with its ``sum``, for Hogwild-style training in several processes."""
    for group in self.param_groups:
        for p in group["params"]:
            state = self.state.get(p)
            for name in self._spec_of(group).slot_names() if state else ():
                if name in state:
                    state[name].share_memory_()


def _value(value: Any) -> str:
    return f"``{value!r}``"


def _defaults(spec: type[Spec]) -> list[str]:
    """One line per spec field: its default, per convention where the conventions differ."""
    resolved: dict[str, dict[str, Any]] = {}
    for convention in spec.conventions:
        try:
            resolved[convention] = spec(convention=convention).hyperparameters
        except (TypeError, ValueError):  # a convention without defaults for every field
            continue
    lines = []
    for field in dataclasses.fields(spec):
        if field.name == "convention":
            continue
        values: dict[str, list[str]] = {}
        for convention, hyper in resolved.items():
            values.setdefault(repr(hyper[field.name]), []).append(convention)
        if len(values) == 1:
            lines.append(f"``{field.name}={next(iter(values))}``")
        else:
            per = "; ".join(f"{v} ({', '.join(cs)})" for v, cs in values.items())
            lines.append(f"``{field.name}``: {per}")
    return lines


def _docstring(info: OptimizerInfo) -> str:
    """The class's docstring, from the row and the spec (its summary, fields, conventions,
    reference)."""
    spec, names = info.spec, info.torch
    assert names is not None
    summary = (spec.__doc__ or info.name).strip().splitlines()[0].removesuffix(" (see the module docstring).")
    summary = summary.rstrip(".")
    if names.native is not None:
        source = getattr(torch.optim, names.native).__module__.replace(".", "/") + ".py"
        origin = f"a drop-in for ``torch.optim.{names.native}`` ({source}'s arguments)"
    else:
        origin = f"torch.optim has no {info.name}: the arguments are the spec's names"
    lines = [
        f"{summary}; the math is :class:`uniopt.{info.name}`'s, {origin}.",
        "",
        f"Positional arguments after ``params``: {', '.join(f'``{n}``' for n in names.positional)}; "
        "every argument may be given by keyword.",
        "",
        "Hyperparameters (the spec's fields, a param group's keys; defaults per ``convention``):",
        "",
        *(f"* {line}" for line in _defaults(spec)),
        f"* ``convention``: {', '.join(_value(c) for c in spec.conventions)} (default ``'uniopt'``)",
        "",
    ]
    if names.options:
        options = ", ".join(f"``{k}={v!r}``" for k, v in names.options.items())
        lines += [
            f"torch.optim's switches, stored in every group and never changing the numbers: {options} "
            "(``capturable=True`` and ``differentiable=True`` are refused).",
            "",
        ]
    if names.options.get("decoupled_weight_decay") is not None:
        fixed = names.options["decoupled_weight_decay"]
        other = _selected(spec, "decoupled_weight_decay", not fixed)
        lines += [
            f"Its groups hold ``decoupled_weight_decay={fixed!r}``, as torch.optim.{names.native}'s "
            f"do; ``decoupled_weight_decay={not fixed!r}`` is refused"
            + (f" (that is :class:`{other}`)." if other else "."),
            "",
        ]
    if names.state_at_construction:
        lines += [
            f"As torch.optim.{names.native}, the state of the parameters given to the constructor "
            "(``step`` 0 and the spec's initial slots) exists from construction, so that "
            ":meth:`share_memory` can share it before training starts.",
            "",
        ]
    if names.constructor_only:
        lines += [
            f"torch.optim.{names.native} reads {', '.join(f'``{n}``' for n in names.constructor_only)} "
            "from its constructor only and ignores a param group's own value; uniopt.torch honours a "
            "group's value and warns (``UserWarning``) where it differs from the constructor's.",
            "",
        ]
    if names.extensions:
        lines += [
            f"{', '.join(f'``{n}``' for n in names.extensions)} are no torch.optim.{names.native} "
            "arguments (the spec's optax convention reads them): keyword-only here, kept in the "
            "groups like ``convention`` but not in ``defaults``, which holds torch.optim's keys (so "
            "``OneCycleLR(cycle_momentum=True)`` refuses it as it refuses torch.optim's).",
            "",
        ]
    if spec.reference:
        lines += [f"Reference: {spec.reference}.", ""]
    return "\n".join(lines).rstrip() + "\n"


def _init_signature(info: OptimizerInfo) -> inspect.Signature:
    """``__init__``'s signature as a user reads it (``inspect.signature``, configuration tools such
    as jsonargparse): ``self, params``, torch.optim's positional arguments in its order, then
    keyword-only every other spec field, torch.optim option, ``implementation`` and
    ``state_dtypes``; each default the class's (the spec's default convention)."""
    names = info.torch
    assert names is not None
    defaults = {**info.spec().hyperparameters, **dict(names.options)}
    fields = [f.name for f in dataclasses.fields(info.spec)]
    kind, keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY
    out = [inspect.Parameter("self", kind), inspect.Parameter("params", kind)]
    out += [inspect.Parameter(n, kind, default=defaults[n]) for n in names.positional]
    rest = [n for n in (*fields, *names.options) if n not in names.positional]
    out += [inspect.Parameter(n, keyword, default=defaults[n]) for n in dict.fromkeys(rest)]
    out += [
        inspect.Parameter("implementation", keyword, default="auto"),
        inspect.Parameter(STATE_DTYPES, keyword, default=None),
    ]
    return inspect.Signature(out)


def _make(info: OptimizerInfo) -> type[UnioptOptimizer]:
    """``uniopt.torch.<Name>`` for a table row with torch names."""
    names = info.torch
    assert names is not None
    namespace: dict[str, Any] = {
        "__module__": __name__,
        "__qualname__": info.name,
        "__doc__": _docstring(info),
        "spec_class": info.spec,
        "positional": tuple(names.positional),
        "torch_options": dict(names.options),
        "state_at_construction": names.state_at_construction,
        "extensions": tuple(names.extensions),
        "constructor_only": tuple(names.constructor_only),
    }
    if names.state_at_construction:
        namespace["share_memory"] = _share_memory
    keeps_history = info.spec.init_history is not Spec.init_history
    base = HistoryOptimizer if keeps_history or info.spec.has_eval_view else UnioptOptimizer

    def __init__(self: Any, params: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N807
        base.__init__(self, params, *args, **kwargs)

    __init__.__doc__ = base.__init__.__doc__
    __init__.__qualname__ = f"{info.name}.__init__"
    __init__.__signature__ = _init_signature(info)  # type: ignore[attr-defined]
    namespace["__init__"] = __init__
    return type(info.name, (base,), namespace)


OPTIMIZERS: dict[str, type[UnioptOptimizer]] = {
    info.name: _make(info) for info in TABLE if info.torch is not None
}
"""Every optimizer of :data:`uniopt.registry.TABLE` whose row has torch names, by name."""
globals().update(OPTIMIZERS)

__all__ += OPTIMIZERS  # the table's, generated


class SparseAdam(UnioptOptimizer):
    """Lazy Adam for sparse gradients, a drop-in for ``torch.optim.SparseAdam``
    (torch/optim/sparse_adam.py's arguments); the math is :class:`uniopt.sparse.SparseAdam`'s.

    ``SparseAdam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, maximize=False)``, positional in
    that order; ``convention`` ``'uniopt'`` or ``'torch'`` (the same formula). Only the rows a
    sparse COO gradient touches change, in the parameter and in ``exp_avg``/``exp_avg_sq``; the
    bias corrections take the parameter's step count. A dense gradient raises ``RuntimeError`` and
    a sparse or complex parameter ``ValueError``, as with torch.optim.SparseAdam; ``lr`` and ``eps``
    must be > 0 and each beta in [0, 1) (``ValueError``). See docs/sparse.md.
    """

    spec_class = uniopt.sparse.SparseAdam
    positional = ("lr", "betas", "eps", "maximize")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """As :meth:`UnioptOptimizer.add_param_group`, refusing sparse parameters first (torch.optim
        .SparseAdam's refusal: it requires dense parameter tensors)."""
        params = param_group.get("params") if isinstance(param_group, dict) else None
        if params is not None and not isinstance(params, (torch.Tensor, set)):
            param_group["params"] = params = list(params)  # the one pass over a generator
        tensors = [params] if isinstance(params, torch.Tensor) else list(params or ())
        tensors = [p[1] if isinstance(p, tuple) and len(p) == 2 else p for p in tensors]
        if any(isinstance(p, torch.Tensor) and p.is_sparse for p in tensors):
            raise ValueError(
                "uniopt.torch.SparseAdam: sparse parameters are not supported (as in "
                "torch.optim.SparseAdam, which requires dense parameter tensors); expected dense "
                "parameters with sparse gradients"
            )
        super().add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        """:meth:`UnioptOptimizer.state_dict` with each ``step`` a Python int, as
        torch.optim.SparseAdam keeps it (torch/optim/sparse_adam.py): that optimizer takes its bias
        corrections ``1 - beta ** step`` in float64 from an int, and in float32 from the int64
        tensor uniopt keeps, so a dict of tensor steps loaded into it would change its numbers.
        :meth:`load_state_dict` takes either form."""
        out = super().state_dict()
        out["state"] = {
            index: {**entry, "step": int(entry["step"])} if "step" in entry else entry
            for index, entry in out["state"].items()
        }
        return out


__all__ += ["SparseAdam"]
__all__.sort()


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
