"""The torch backend: the real ``uniopt.torch`` optimizers, in each way ``step()`` can run.

* ``eager``: ``opt.step()`` as constructed by default (``implementation="auto"``: the flat path, eager
  for these small parameter sets);
* ``loop``: ``implementation="loop"``, the rule per tensor;
* ``flat`` and ``compiled``: ``implementation="flat"`` (eager) and ``"compiled"`` (inductor), with
  :data:`uniopt.torch._flat.LARGE` lowered to :data:`SPLIT_LARGE` so that both flat paths run: the
  parameters with at least that many elements take the in-place per-tensor kernel, the others the
  gathered vector;
* ``compile``: ``torch.compile(opt.step)``, the way torch's documentation compiles an optimizer step
  (dynamo traces the per-tensor rule).

Gradients are assigned to ``p.grad`` as a training loop would; snapshots read the parameters and
``opt.state``.
"""

from __future__ import annotations

import functools

import numpy as np

from .backends import QUICK_STREAMS, WIDE, Backend, GradsAt, Runner, selection, torch_device
from .cells import Cell, convention_of
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


_last_spec: list = []

SPLIT_LARGE = 6
"""``_flat.LARGE`` (every device's) in the ``flat`` and ``compiled`` modes (the suite's tensors are
small)."""

IMPLEMENTATION = {"eager": "auto", "loop": "loop", "flat": "flat", "compiled": "compiled", "compile": "auto"}


def _runner(mode: str) -> Runner:
    import torch

    import uniopt.torch as uniopt_torch
    from uniopt.torch import _flat
    from uniopt.torch._namespace import xp

    default_large = _flat.LARGE
    device = torch_device()

    def run(spec, params0: list[np.ndarray], grads_at: GradsAt, steps: int):
        if mode == "compile" and _last_spec[:1] != [spec]:
            torch._dynamo.reset()  # a new case: drop the previous case's graphs and guards
            _last_spec[:] = [spec]
        params = [to_torch(p).to(device) for p in params0]
        split = mode in ("flat", "compiled")
        _flat.LARGE = dict.fromkeys(default_large, SPLIT_LARGE) if split else default_large
        opt = getattr(uniopt_torch, spec.name)(
            params, implementation=IMPLEMENTATION[mode], **spec.hyperparameters
        )
        if mode in ("compile", "compiled"):
            # graphs are reused across cells with the same hyperparameters, dtype and shapes; never
            # fall back to eager silently: a recompile past the limit is an error
            torch._dynamo.config.recompile_limit = 256
            torch._dynamo.config.fail_on_recompile_limit_hit = True
            # round every intermediate to the parameter dtype, as eager (and the reference) do; on
            # CUDA also no implicit fma and IEEE division (the options the flat kernels compile with)
            exact = {"emulate_precision_casts": True, **_flat.exact_options(torch.float32, device)}
            for key, value in exact.items():
                *path, name = key.split(".")
                setattr(functools.reduce(getattr, path, torch._inductor.config), name, value)
        step = torch.compile(opt.step) if mode == "compile" else opt.step

        def slots_of(p: torch.Tensor) -> dict[str, np.ndarray]:
            state = opt.state[p]
            if not state:  # before the first step: the adapter's lazy init, done here to record it
                return {n: to_numpy(spec.init_slot(n, p, xp)) for n in spec.slot_names()}
            return {n: to_numpy(state[n]) for n in spec.slot_names()}

        def snapshot():
            return [to_numpy(p) for p in params], [slots_of(p) for p in params]

        yield snapshot()
        for t in range(1, steps + 1):
            for p, g in zip(params, grads_at(t), strict=True):
                p.grad = to_torch(g).to(device)
            step()
            yield snapshot()

    return run


def _uniopt_case(cell: Cell) -> bool:
    """Framework-convention cases compile a graph each too; their rule runs bitwise in eager, loop
    and flat, so the inductor rows leave them to --full."""
    return convention_of(cell.optimizer, cell.case) == "uniopt"


BACKEND = Backend(
    "torch",
    "torch",
    ("eager", "loop", "flat", "compiled", "compile"),
    ("float32", "float64", "float16", "bfloat16"),
    _runner,
    default_cells={
        "loop": (
            selection(QUICK_STREAMS, WIDE),
            "left to --full: the per-tensor loop (the path for CUDA and complex parameters) runs the "
            "normal, nonfinite and mixed_shapes streams in float32 and float64 by default",
        ),
        "flat": (
            selection(QUICK_STREAMS, WIDE),
            "left to --full: flat (in-place large tensors forced) runs the normal, nonfinite and "
            "mixed_shapes streams in float32 and float64 by default; eager runs the gathered flat "
            "path on every stream and dtype",
        ),
        "compiled": (
            lambda cell: _uniopt_case(cell) and cell.stream != "long" and cell.dtype == "float32",
            "compiled mode covers the uniopt-convention cases in float32 by default (inductor "
            "compiles one graph per case, dtype and RAdam branch, a few seconds each on 2 cores); "
            "--full compiles the convention cases, the other dtypes and the long cases",
        ),
        "compile": (
            lambda cell: _uniopt_case(cell) and selection(("normal", "nonfinite"), ("float32",))(cell),
            "compile mode (torch.compile of step) covers the uniopt-convention cases on the normal "
            "and nonfinite streams in float32 by default (inductor needs about 2.5 s "
            "per graph on 2 cores, and each case, dtype and parameter set is a graph); --full "
            "compiles the rest",
        ),
    },
)
