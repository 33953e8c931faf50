"""The compiled per-tensor step of Adafactor and LAMB (:mod:`uniopt.torch._pertensor`): inductor's
kernel per parameter shape, taken by ``implementation="compiled"`` for every parameter and by
``"auto"`` for those of at least ``AUTO_COMPILE_MIN`` elements. Bit for bit the per-tensor loop
(itself checked against the NumPy reference by the conformance matrix, which also runs this path's
float32 cells per convention), with the parameters' version counters moved as an in-place step
moves them, and the fallbacks said where they happen."""

from __future__ import annotations

import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
from cases import PER_CONVENTION

import uniopt.torch as ut
from uniopt.torch import _flat, _pertensor

PER_TENSOR_CASES = [p for p in PER_CONVENTION if p.values[0].name in _pertensor.SPECS]
# a 3-d parameter (factored over its last two axes), a 0-d and an empty one (these two take the
# loop); the conformance matrix runs each convention's vectors and matrices through this path
SHAPES = [(3, 1, 2), (), (0, 3)]
STEPS = 3


def _run(name, hyper, implementation, shapes=SHAPES, dtype=torch.float32, steps=STEPS):
    """Params and state after ``steps`` steps (seeded draws), and the optimizer."""
    rng = np.random.default_rng(3)
    params = [torch.nn.Parameter(torch.from_numpy(rng.standard_normal(s)).to(dtype)) for s in shapes]
    opt = getattr(ut, name)(params, implementation=implementation, **hyper)
    for _ in range(steps):
        for p in params:
            p.grad = torch.from_numpy(rng.standard_normal(tuple(p.shape))).to(dtype)
        opt.step()
    return params, opt


def _bits(t: torch.Tensor) -> torch.Tensor:
    """``t``'s bits as integers (``torch.equal`` on floats takes -0 for +0)."""
    return t.detach().reshape(-1).view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _assert_same(a, b):
    (pa, oa), (pb, ob) = a, b
    for x, y in zip(pa, pb, strict=True):
        assert torch.equal(_bits(x), _bits(y))
        sa, sb = oa.state[x], ob.state[y]
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(_bits(sa[key]), _bits(sb[key])), key


@pytest.mark.parametrize(("info", "case"), PER_TENSOR_CASES)
def test_compiled_is_the_loop_bit_for_bit(info, case):
    spec = info.make(case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the optax convention's eager fallback
        compiled = _run(info.name, spec.hyperparameters, "compiled")
    _assert_same(compiled, _run(info.name, spec.hyperparameters, "loop"))


@pytest.mark.parametrize("name", sorted(_pertensor.SPECS))
def test_bfloat16_parameters_compile_with_their_roundings(name):
    shapes = [(4, 5), (6,)]
    got = _run(name, {}, "compiled", shapes=shapes, dtype=torch.bfloat16)
    _assert_same(got, _run(name, {}, "loop", shapes=shapes, dtype=torch.bfloat16))


def test_auto_compiles_the_large_parameters_only(monkeypatch):
    """Under ``auto`` a parameter of ``AUTO_COMPILE_MIN`` elements takes a compiled kernel and a
    smaller one does not; both end as the loop leaves them, and the version counter of each moved
    once per step (a graph that saved the parameter refuses to backpropagate through it)."""
    compiled_shapes = []
    kernel = _pertensor._kernel

    def spy(spec, param, slots, key):
        compiled_shapes.append(tuple(param.shape))
        return kernel(spec, param, slots, key)

    monkeypatch.setattr(_pertensor, "_kernel", spy)
    large = (512, ut.AUTO_COMPILE_MIN // 512)
    shapes = [large, (4, 5)]
    params, opt = _run("Adafactor", {}, "auto", shapes=shapes, steps=2)
    assert set(compiled_shapes) == {large}
    assert [p._version for p in params] == [2, 2]
    _assert_same((params, opt), _run("Adafactor", {}, "loop", shapes=shapes, steps=2))


def test_explicit_compiled_says_when_a_convention_runs_eagerly():
    _pertensor._WARNED.clear()
    with pytest.warns(RuntimeWarning, match="runs the optax convention's rule eagerly"):
        _run("Adafactor", {"convention": "optax"}, "compiled", shapes=[(4, 5)], steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # auto: the documented fallback, no warning
        _run("Adafactor", {"convention": "optax"}, "auto", shapes=[(4, 5)], steps=1)


class _BuildError(RuntimeError):
    pass


def test_a_failed_build_falls_back_under_auto_and_raises_when_compiled_was_asked(monkeypatch):
    """Inductor builds before it runs (nothing written): ``auto`` warns once and steps eagerly from
    then on, the same bits; ``implementation="compiled"`` lets the error through."""

    def failing(spec, param, slots, key):
        def build(*args):
            raise _BuildError("no C++ compiler")

        return build

    monkeypatch.setattr(_pertensor, "_KERNELS", OrderedDict())  # the failures stay in this test
    monkeypatch.setattr(_pertensor, "_BUILD_FAILED", [])
    monkeypatch.setattr(_pertensor, "_kernel", failing)
    monkeypatch.setattr(_pertensor, "_errors", lambda: ((), (_BuildError,)))
    monkeypatch.setattr(ut, "AUTO_COMPILE_MIN", 1)
    from uniopt.torch import _optimizer

    monkeypatch.setattr(_optimizer, "AUTO_COMPILE_MIN", 1)
    shapes = [(4, 5), (6,)]
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        got = _run("Lamb", {}, "auto", shapes=shapes, steps=2)
    # said once (two parameters, two steps): after the first failure "auto" does not try again
    failures = [str(w.message) for w in said if "could not compile" in str(w.message)]
    assert len(failures) == 1, failures
    assert "runs the rule of large parameters eagerly from now on" in failures[0]
    _assert_same(got, _run("Lamb", {}, "loop", shapes=shapes, steps=2))
    with pytest.raises(_BuildError, match="no C\\+\\+ compiler"):
        _run("Lamb", {}, "compiled", shapes=shapes, steps=1)


def test_only_the_concatenating_implementation_is_refused():
    params = [torch.nn.Parameter(torch.ones(4, 5))]
    with pytest.raises(
        ValueError,
        match=r"implementation='flat' runs the rule over a concatenation.*"
        r"expected 'auto', 'compiled' or 'loop'",
    ):
        ut.Adafactor(params, implementation="flat")
    ut.Adafactor(params, implementation="compiled")
    ut.Lamb(params, implementation="compiled")
    with pytest.raises(ValueError, match=r"implementation='compiled' is not offered for Muon"):
        ut.Muon(params, implementation="compiled")


def test_a_scheduler_changing_betas_every_step_reuses_the_kernel():
    """OneCycleLR sets ``betas`` at every step, which makes a new spec each step; its values reach
    the rule as the step's scalars, so the kernel compiled for the shape is reused: the graphs
    dynamo builds over 5 steps are those of the first step's (LAMB has no branch flag)."""
    from torch._dynamo.utils import counters

    rng = np.random.default_rng(1)
    param = torch.nn.Parameter(torch.from_numpy(rng.standard_normal((5, 7)).astype(np.float32)))
    opt = ut.Lamb([param], lr=0.01, implementation="compiled")
    loop_param = torch.nn.Parameter(param.detach().clone())
    loop = ut.Lamb([loop_param], lr=0.01, implementation="loop")
    graphs = []
    for t in range(5):
        beta1 = 0.95 - 0.01 * t
        for o, p in ((opt, param), (loop, loop_param)):
            o.param_groups[0]["betas"] = (beta1, 0.999)
            p.grad = torch.from_numpy(np.sin(np.arange(35, dtype=np.float32) * (t + 1)).reshape(5, 7))
            o.step()
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[1:] == [graphs[0]] * 4, graphs
    assert torch.equal(_bits(param), _bits(loop_param))


@pytest.mark.parametrize(
    ("name", "hyper"),
    [
        ("Lamb", {}),
        ("Adafactor", {}),
        ("Adafactor", {"convention": "torch"}),
        ("Lamb", {"convention": "keras"}),
    ],
)
def test_a_weight_decay_schedule_compiles_once_per_branch(name, hyper):
    """A scheduler that sets ``weight_decay`` at every step makes a new spec each step. The rules
    branch on ``weight_decay != 0`` through :meth:`uniopt.Spec.nonzero`, so dynamo guards on the
    branch, not on the value: 12 decays (past dynamo's recompile limit of 8) build no graph after
    the first step's, one of 0 builds its branch once, and there is no "recompile limit" warning
    (reading ``self.weight_decay`` had recompiled the kernel per value, then stepped eagerly). Every
    step is the loop's bits."""
    from torch._dynamo.utils import counters

    rng = np.random.default_rng(2)
    param = torch.nn.Parameter(torch.from_numpy(rng.standard_normal((4, 5)).astype(np.float32)))
    loop_param = torch.nn.Parameter(param.detach().clone())
    make = getattr(ut, name)
    opts = {
        "compiled": (make([param], weight_decay=0.01, implementation="compiled", **hyper), param),
        "loop": (make([loop_param], weight_decay=0.01, implementation="loop", **hyper), loop_param),
    }
    decays = [0.01 * (t + 1) for t in range(12)] + [0.0, 0.0, 0.05]
    graphs = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # uniopt's "recompile limit" warning
        for t, decay in enumerate(decays):
            grad = torch.from_numpy(rng.standard_normal((4, 5)).astype(np.float32))
            for opt, p in opts.values():
                opt.param_groups[0]["weight_decay"] = decay
                p.grad = grad.clone()
                opt.step()
            graphs.append(counters["stats"]["unique_graphs"])
            assert torch.equal(_bits(param), _bits(loop_param)), t
    # the torch convention of Adafactor takes torch's other lerp formula from its third step
    settled = 2 if hyper.get("convention") == "torch" else 0
    assert len(set(graphs[settled:12])) == 1, graphs
    assert graphs[12] == graphs[11] + 1 and graphs[14] == graphs[12], graphs


def test_a_kernel_past_the_recompile_limit_gives_way_to_the_eager_rule(monkeypatch):
    """dynamo stops a ``fullgraph`` function at its recompile limit with an error, before the graph
    runs. The shape's kernel then steps eagerly, for that call and every later one, with one
    warning: the loop's bits. (No rule guards on a scheduled hyperparameter's value today, see
    above; the error is raised here by hand.)"""
    from torch._dynamo.exc import FailOnRecompileLimitHit

    monkeypatch.setattr(_pertensor, "_KERNELS", OrderedDict())
    monkeypatch.setattr(_flat, "_SAID_RECOMPILED", set())
    rng = np.random.default_rng(2)
    param = torch.nn.Parameter(torch.from_numpy(rng.standard_normal((4, 5)).astype(np.float32)))
    loop_param = torch.nn.Parameter(param.detach().clone())
    opts = {
        "compiled": (ut.Lamb([param], weight_decay=0.01, implementation="compiled"), param),
        "loop": (ut.Lamb([loop_param], weight_decay=0.01, implementation="loop"), loop_param),
    }

    def past_the_limit(*args):
        raise FailOnRecompileLimitHit("recompile_limit reached with fullgraph=True")

    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        for t in range(4):
            if t == 1:  # the kernel compiled at the first step, now past its limit
                for key in _pertensor._KERNELS:
                    _pertensor._KERNELS[key] = past_the_limit
            grad = torch.from_numpy(rng.standard_normal((4, 5)).astype(np.float32))
            for opt, p in opts.values():
                p.grad = grad.clone()
                opt.step()
            assert torch.equal(_bits(param), _bits(loop_param)), t
    limits = [str(w.message) for w in said if "recompile limit" in str(w.message)]
    assert len(limits) == 1 and "runs eagerly from now on" in limits[0], limits
    assert all(kernel is None for kernel in _pertensor._KERNELS.values())


@pytest.mark.parametrize("stance", ["fail_on_recompile", "force_eager"])
def test_a_stance_the_user_set_runs_the_rule_eagerly(stance):
    """Under a ``torch.compiler.set_stance`` other than the default, the kernels step eagerly: the
    torch convention of Adafactor recompiles at its third step, which ``fail_on_recompile`` would
    refuse half-way through a step (step counts advanced, parameters not)."""
    compiled = _run("Adafactor", {"convention": "torch"}, "compiled", shapes=[(6, 7)], steps=1)
    loop = _run("Adafactor", {"convention": "torch"}, "loop", shapes=[(6, 7)], steps=1)
    with torch.compiler.set_stance(stance):
        for params, opt in (compiled, loop):
            for t in range(3):
                params[0].grad = torch.full_like(params[0], 0.1 * (t + 1))
                opt.step()
    _assert_same(compiled, loop)
