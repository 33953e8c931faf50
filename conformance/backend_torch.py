"""The torch backend: the real ``uniopt.torch`` optimizers, eager and under ``torch.compile``.

``eager`` calls ``opt.step()``; ``compile`` calls ``torch.compile(opt.step)``, the way torch's
documentation compiles an optimizer step. Gradients are assigned to ``p.grad`` as a training loop
would; snapshots read the parameters and ``opt.state``.
"""

from __future__ import annotations

import numpy as np

from .backends import Backend, GradsAt, Runner


def _runner(mode: str) -> Runner:
    import torch

    import uniopt.torch as uniopt_torch
    from uniopt.torch._namespace import xp

    def run(spec, params0: list[np.ndarray], grads_at: GradsAt, steps: int):
        params = [torch.from_numpy(p.copy()) for p in params0]
        opt = getattr(uniopt_torch, spec.name)(params, **spec.hyperparameters)
        if mode == "compile":
            torch._dynamo.reset()  # each cell compiles afresh; no cache from another cell's spec
            # never fall back to eager silently: a recompile past the limit is an error
            torch._dynamo.config.fail_on_recompile_limit_hit = True
        step = opt.step if mode == "eager" else torch.compile(opt.step)

        def slots_of(p: torch.Tensor) -> dict[str, np.ndarray]:
            state = opt.state[p]
            if not state:  # before the first step: the adapter's lazy init, done here to record it
                return {n: spec.init_slot(n, p, xp).numpy().copy() for n in spec.slot_names()}
            return {n: state[n].numpy().copy() for n in spec.slot_names()}

        def snapshot():
            return [p.numpy().copy() for p in params], [slots_of(p) for p in params]

        yield snapshot()
        for t in range(1, steps + 1):
            for p, g in zip(params, grads_at(t), strict=True):
                p.grad = torch.from_numpy(g)
            step()
            yield snapshot()

    return run


BACKEND = Backend(
    "torch",
    "torch",
    ("eager", "compile"),
    ("float32", "float64"),
    _runner,
    default_cells={
        "compile": (
            lambda cell: cell.stream in ("normal", "nonfinite"),
            "compile mode covers the normal and nonfinite streams by default (inductor takes "
            "about 2.5 s per graph on 2 cores); --full runs every stream",
        )
    },
)
