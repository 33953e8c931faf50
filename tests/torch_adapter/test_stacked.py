"""The stacked step (:mod:`uniopt.torch._stacked`): under ``implementation="auto"``, Adafactor's and
LAMB's small parameters of one shape stacked, one rule call per stack under ``torch.func.vmap``.
Bit for bit the NumPy reference and the per-tensor loop, in every case of the two optimizers, with
parameters of several shapes (some alone of their shape), one falling a step behind (no gradient
for a step: a stack of another step count), and two parameter groups."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cases import shapes_for
from trajectories import assert_trajectories, reference

import uniopt.torch as ut
from uniopt.registry import TABLE
from uniopt.torch import _stacked

# Muon stacks too, but its matmul="backend" products are torch's, not the reference's bits:
# tests/torch_adapter/test_muon_torch.py
STACKED_CASES = [
    pytest.param(info, case, id=f"{info.name}-{case.desc}")
    for info in TABLE
    if info.name in _stacked.SPECS and info.name != "Muon"
    for case in info.cases
]
# three (4, 5) and three (6,) parameters stack; (3, 1, 2) and () are alone of their shape
SHAPES = [(4, 5), (6,), (4, 5), (3, 1, 2), (6,), (), (4, 5), (6,)]
STEPS = 4


def _draws(shapes, dtype, steps=STEPS):
    rng = np.random.default_rng(7)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(steps)]
    return params, grads


def _run(spec, params0, grads, implementation, skip=None, groups=1):
    """The uniopt.torch optimizer of ``spec`` over the steps; ``skip(t, i)``: param ``i`` gets no
    gradient at step ``t``. Returns each step's (params, slots) as NumPy arrays."""
    params = [torch.from_numpy(p.copy()) for p in params0]
    hyper = spec.hyperparameters
    if groups == 1:
        opt = getattr(ut, spec.name)(params, implementation=implementation, **hyper)
    else:
        halves = [{"params": params[i::groups]} for i in range(groups)]
        opt = getattr(ut, spec.name)(halves, implementation=implementation, **hyper)
    out = []
    for t, step in enumerate(grads):
        for i, (p, g) in enumerate(zip(params, step, strict=True)):
            p.grad = None if skip and skip(t, i) else torch.from_numpy(g.copy())
        opt.step()
        slots = []
        for p in params:
            full = {name: opt.state[p][name] for name in spec.slot_names() if name in opt.state[p]}
            slots.append({k: v.numpy().copy() for k, v in full.items()})
        out.append(([p.numpy().copy() for p in params], slots))
    return out, opt


def _comparable(trajectory, spec, shapes):
    """The slots a step keeps (a placeholder, as torch.optim.Adafactor's ``variance`` of a matrix,
    is kept by neither run's state)."""
    return [
        (
            ps,
            [
                {k: v for k, v in s.items() if k in spec.slots_in_use(shape)}
                for s, shape in zip(ss, shapes, strict=True)
            ],
        )
        for ps, ss in trajectory
    ]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("info", "case"), STACKED_CASES)
def test_stacked_is_the_numpy_reference_and_the_loop(info, case, dtype, monkeypatch):
    spec = info.make(case)
    shapes = [tuple(s) for s in shapes_for(spec, SHAPES)]
    params, grads = _draws(shapes, dtype)
    calls = []
    run = _stacked.run
    monkeypatch.setattr(_stacked, "run", lambda members: calls.append(len(members)) or run(members))
    got, _ = _run(spec, params, grads, "auto")
    assert calls and max(calls) >= 3  # the stacked path ran, on stacks of three
    want = reference(spec, params, grads)
    assert_trajectories(_comparable(got, spec, shapes), _comparable(want, spec, shapes))
    loop, _ = _run(spec, params, grads, "loop")
    assert_trajectories(got, loop)


@pytest.mark.parametrize(("info", "case"), STACKED_CASES[:1] + STACKED_CASES[-1:])
def test_a_parameter_a_step_behind_and_two_groups_step_as_the_loop(info, case):
    """Parameter 2 has no gradient at step 2 (its step count lags: it stacks with no other (4, 5)
    parameter of its count), and the parameters in two groups (a stack per group)."""
    spec = info.make(case)
    shapes = [tuple(s) for s in shapes_for(spec, SHAPES)]
    params, grads = _draws(shapes, "float32", steps=5)
    skip = lambda t, i: t == 2 and i == 2  # noqa: E731
    for groups in (1, 2):
        got, opt = _run(spec, params, grads, "auto", skip=skip, groups=groups)
        loop, _ = _run(spec, params, grads, "loop", skip=skip, groups=groups)
        assert_trajectories(got, loop)
    steps = sorted(int(state["step"]) for state in opt.state.values())
    assert steps == [4] + [5] * (len(shapes) - 1)


def test_a_large_parameter_and_a_lone_shape_take_the_loop(monkeypatch):
    """At or above ``_flat.LARGE`` elements a parameter is stepped alone, as is one without a
    twin of its shape; the stack is what remains."""
    from uniopt.torch import _flat

    monkeypatch.setattr(_flat, "LARGE", {"cpu": 20, "cuda": 20})
    calls = []
    run = _stacked.run

    def counted(members):
        calls.append([m[1].shape for m in members])
        run(members)

    monkeypatch.setattr(_stacked, "run", counted)
    params = [torch.ones(4, 5), torch.ones(4, 5), torch.ones(6), torch.ones(6), torch.ones(3)]
    opt = ut.Lamb(params, lr=0.01)
    for p in params:
        p.grad = torch.full_like(p, 0.5)
    opt.step()
    assert calls == [[torch.Size([6]), torch.Size([6])]]
