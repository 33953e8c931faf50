"""The torch backend: the real ``uniopt.torch`` optimizers, in each way ``step()`` can run.

* ``eager``: ``opt.step()`` as constructed by default (``implementation="auto"``: the flat path, with
  the C kernel of :mod:`uniopt.torch._native` in float32 and float64 where it translates the rule,
  eager otherwise for these small parameter sets);
* ``loop``: ``implementation="loop"``, the rule per tensor;
* ``flat`` and ``compiled``: ``implementation="flat"`` (eager) and ``"compiled"`` (the C kernel where
  it applies, inductor otherwise; Adafactor's and LAMB's rule compiled by inductor per parameter
  shape, :mod:`uniopt.torch._pertensor`), with
  :data:`uniopt.torch._flat.LARGE` lowered to :data:`SPLIT_LARGE` so that both flat paths run: the
  parameters with at least that many elements take the in-place per-tensor kernel, the others the
  gathered vector;
* ``compile``: ``torch.compile(opt.step)``, the way torch's documentation compiles an optimizer step
  (dynamo traces the per-tensor rule), for one optimizer per batch whose param groups are the
  batch's cases (each group with its case's settings and convention): one graph per batch.

Gradients are assigned to ``p.grad`` as a training loop would; snapshots read the parameters and
``opt.state``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import numpy as np

from .backends import (
    Backend,
    Member,
    Runner,
    Snapshot,
    bfloat16_per_convention,
    long_elsewhere,
    parity_for_natives,
    per_convention_only,
    reduced_elsewhere,
    reducing_per_convention,
    snapshots_of,
    split_flat,
    torch_device,
    training_dtypes_only,
    unit_arrays,
    units_of,
)
from .streams import dtype_of


def to_torch(array: np.ndarray):
    """An exact torch copy; bfloat16 (which torch cannot take from NumPy) goes by its bits."""
    import torch

    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(array.copy())


def to_numpy(tensor) -> np.ndarray:
    """An exact NumPy copy; bfloat16 comes back as ml_dtypes.bfloat16 by its bits."""
    import torch

    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().copy().view(dtype_of("bfloat16"))
    return tensor.numpy().copy()


SPLIT_LARGE = 6
"""``_flat.LARGE`` (every device's) in the ``flat`` and ``compiled`` modes (the suite's tensors are
small)."""

IMPLEMENTATION = {"eager": "auto", "loop": "loop", "flat": "flat", "compiled": "compiled", "compile": "auto"}


def _gather(tensors: list) -> list[np.ndarray]:
    """NumPy copies of tensors through one concatenation (a copy: no bits change; a slot stored
    narrower, ``state_dtypes``, widens exactly in the concatenation and is narrowed back exactly)."""
    import torch

    if not tensors:
        return []
    flat = to_numpy(torch.cat([t.detach().reshape(-1) for t in tensors]))
    split = split_flat(flat, [tuple(t.shape) for t in tensors])
    dtypes = [to_numpy(t.detach().reshape(-1)[:0]).dtype for t in tensors]
    return [a if a.dtype == d else a.astype(d) for a, d in zip(split, dtypes, strict=True)]


def _runner(mode: str) -> Runner:
    import torch

    import uniopt.torch as uniopt_torch
    from uniopt.torch import _flat
    from uniopt.torch._namespace import xp

    default_large = _flat.LARGE
    device = torch_device()

    def run(batch: Sequence[Member], steps: int) -> Iterator[list[Snapshot]]:
        units = units_of(batch)
        if mode == "compile":
            torch._dynamo.reset()  # a new batch: drop the previous batch's graphs and guards
        split = mode in ("flat", "compiled")
        _flat.LARGE = dict.fromkeys(default_large, SPLIT_LARGE) if split else default_large
        params = [[to_torch(p).to(device) for p in unit.params0] for unit in units]
        if mode == "compile":
            # one optimizer with a param group per unit (each case's settings, convention included),
            # so that dynamo traces every case's rule into one graph: one inductor compile per batch
            # where one per case cost most of this mode's time (a group's rule is the same per-tensor
            # rule, and each parameter is still compared alone)
            groups: dict[str, list[dict]] = {}
            for unit, ps in zip(units, params, strict=True):
                group = dict(params=ps, **unit.spec.hyperparameters)
                if unit.slot_dtypes:
                    group["state_dtypes"] = dict(unit.slot_dtypes)
                groups.setdefault(unit.spec.name, []).append(group)
            shared = {
                n: getattr(uniopt_torch, n)(gs, implementation=IMPLEMENTATION[mode])
                for n, gs in groups.items()
            }
            opts = [shared[unit.spec.name] for unit in units]
        else:
            opts = [
                getattr(uniopt_torch, unit.spec.name)(
                    ps,
                    implementation=IMPLEMENTATION[mode],
                    **unit.spec.hyperparameters,
                    **({"state_dtypes": dict(unit.slot_dtypes)} if unit.slot_dtypes else {}),
                )
                for unit, ps in zip(units, params, strict=True)
            ]
        if mode in ("compile", "compiled"):
            # never fall back to eager silently: a recompile past the limit is an error
            torch._dynamo.config.recompile_limit = 256
            torch._dynamo.config.fail_on_recompile_limit_hit = True
            # round every intermediate to the parameter dtype, as eager (and the reference) do; on
            # CUDA also no implicit fma and IEEE division (the options the flat kernels compile with)
            exact = {"emulate_precision_casts": True, **_flat.exact_options(torch.float32, device)}
            for key, value in exact.items():
                *path, name = key.split(".")
                setattr(functools.reduce(getattr, path, torch._inductor.config), name, value)

        # compile: torch.compile(opt.step), the way torch's documentation compiles an optimizer step
        # (dynamo traces the optimizer's per-tensor rule): the batch's one optimizer, one graph
        steps_of = [torch.compile(opt.step) if mode == "compile" else opt.step for opt in dict.fromkeys(opts)]

        def step() -> None:
            for step_one in steps_of:
                step_one()

        def slots_of(opt, spec, p: torch.Tensor, stored: dict) -> dict:
            state = opt.state[p]
            if not state:  # before the first step: the adapter's lazy init, done here to record it
                return {
                    n: spec.init_slot(n, p.detach(), xp).to(getattr(torch, stored.get(n, "float32")))
                    if n in stored
                    else spec.init_slot(n, p.detach(), xp)
                    for n in spec.slot_names()
                }
            # the placeholders uniopt.torch does not keep (Spec.slots_in_use) are their zeros
            return {
                n: state[n] if n in state else spec.init_slot(n, p.detach(), xp) for n in spec.slot_names()
            }

        def snapshot() -> list[Snapshot]:
            arrays = []
            for unit, opt, ps in zip(units, opts, params, strict=True):
                names = unit.spec.slot_names()
                slots = [slots_of(opt, unit.spec, p, unit.slot_dtypes) for p in ps]
                arrays.append(_gather(unit_arrays(ps, slots, names)))
            return snapshots_of(batch, units, arrays)

        yield snapshot()
        for t in range(1, steps + 1):
            for unit, ps in zip(units, params, strict=True):
                for p, g in zip(ps, unit.grads(batch, t), strict=True):
                    p.grad = to_torch(g).to(device)
            step()
            yield snapshot()

    return run


_ELSEWHERE = long_elsewhere("torch@eager")

BACKEND = Backend(
    "torch",
    "torch",
    ("eager", "loop", "flat", "compiled", "compile"),
    ("float32", "float64", "float16", "bfloat16"),
    _runner,
    default_cells={
        "eager": parity_for_natives("torch@eager"),
        **{mode: _ELSEWHERE for mode in ("loop", "flat")},
        # inductor compiles once per case and dtype: every case in float32, each convention's first
        # case in bfloat16 (torch@compiled took 1,140 of the matrix's 5,164 job seconds at 9318687)
        # Adafactor and LAMB compile per parameter shape (uniopt.torch._pertensor): each
        # convention's first case, float32, the normal stream
        "compiled": reducing_per_convention(
            bfloat16_per_convention(
                training_dtypes_only(_ELSEWHERE, "torch@eager, torch@loop and torch@flat"),
                "torch@eager, torch@loop and torch@flat",
            ),
            "torch@eager and torch@loop",
        ),
        # torch.compile traces a graph node per op of every parameter of such an optimizer (Lamb's
        # 38 normal and mixed-shape cells took 163 s): its step is compiled in the torch tests
        # (tests/torch_adapter/test_compile.py) and here with --full
        # and of each optimizer the first case per convention: inductor compiles every case's rule
        # in torch@compiled (cold cache: torch@compile took 745 s of a default run at 8ffffed)
        "compile": per_convention_only(
            training_dtypes_only(
                reduced_elsewhere("torch@eager", streams=()), "torch@eager, torch@loop and torch@flat"
            ),
            "torch@eager, torch@loop, torch@flat and torch@compiled",
        ),
    },
    slowest=("compile", "compiled"),
    slot_dtypes=True,
)
