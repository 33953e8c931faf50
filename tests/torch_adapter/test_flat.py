"""The implementations of ``step()`` (``loop``, ``flat``, ``compiled``, ``auto``) give the same bits,
and the flat state is exactly the spec's slots, kept through every bookkeeping event.

``_flat.LARGE`` is lowered in these tests so that small tensors take both flat paths: the gathered
vector (below it) and the in-place per-tensor kernel (at or above it).
"""

from __future__ import annotations

import collections
import copy
import io
import math
import pickle
import warnings

import numpy as np
import pytest
import torch
from cases import shapes_for

import uniopt
import uniopt.torch as ut
from uniopt.registry import TABLE
from uniopt.torch import _flat, _native

CASES = [pytest.param(info, case, id=f"{info.name}-{case.desc}") for info in TABLE for case in info.cases]
SHAPES = [(3, 4), (40,), (), (5, 2, 3), (7,)]


@pytest.fixture(autouse=True)
def _small_large(monkeypatch):
    # (40,) and (5, 2, 3) run in place, the rest gathered
    monkeypatch.setattr(_flat, "LARGE", {"cpu": 30, "cuda": 30})


@pytest.fixture
def inductor_kernels(monkeypatch):
    """The compiled flat path with inductor's kernels only: no rule runs as a C kernel
    (:mod:`uniopt.torch._native`, tested in test_native.py), as for bfloat16 and on CUDA."""
    monkeypatch.setattr(_native, "kernel", lambda spec, dtype, scalars, slot_dtypes=(): None)


def _params(dtype=torch.float32, shapes=SHAPES, seed=0):
    rng = np.random.default_rng(seed)
    return [torch.from_numpy(rng.standard_normal(s)).to(dtype) for s in shapes]


def _run(name, hyper, implementation, steps=9, dtype=torch.float32, skip=None, shapes=SHAPES):
    """``steps`` steps with seeded gradients; ``skip(t, i)`` leaves param ``i`` without a gradient."""
    params = _params(dtype, shapes)
    opt = getattr(ut, name)(params, implementation=implementation, **hyper)
    for t in range(steps):
        rng = np.random.default_rng(100 + t)
        for i, p in enumerate(params):
            g = torch.from_numpy(rng.standard_normal(p.shape)).to(dtype)
            p.grad = None if skip and skip(t, i) else g
        opt.step()
    return params, opt


def _assert_same(a, b):
    (pa, oa), (pb, ob) = a, b
    for x, y in zip(pa, pb, strict=True):
        assert torch.equal(x, y)
        assert oa.state[x].keys() == ob.state[y].keys()
        for key in oa.state[x]:
            assert torch.equal(oa.state[x][key], ob.state[y][key]), key


ELEMENTWISE_CASES = [c for c in CASES if c.values[0].elementwise]


@pytest.mark.parametrize(("info", "case"), ELEMENTWISE_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_flat_equals_loop_bitwise_in_every_case(info, case, dtype):
    hyper = info.make(case).hyperparameters
    if dtype == torch.bfloat16 and "eps" in hyper:
        hyper = {**hyper, "eps": max(hyper["eps"], 1e-3)}
    skip = lambda t, i: t == 2 and i == 1  # noqa: E731 - one parameter falls one step behind
    _assert_same(
        _run(info.name, hyper, "flat", skip=skip, dtype=dtype),
        _run(info.name, hyper, "loop", skip=skip, dtype=dtype),
    )


@pytest.mark.parametrize(
    ("name", "hyper"),
    [("RAdam", {"lr": 1e-2, "weight_decay": 0.1}), ("Adam", {"lr": 1e-2, "amsgrad": True, "maximize": True})],
)
@pytest.mark.usefixtures("inductor_kernels")
def test_compiled_equals_loop_bitwise_in_float32(name, hyper):
    # 9 steps: RAdam's unrectified (1-5) and rectified branches, each its own graph
    _assert_same(_run(name, hyper, "compiled"), _run(name, hyper, "loop"))


def test_state_is_views_of_one_buffer_per_slot_and_nothing_else():
    params, opt = _run("Adam", {"lr": 1e-2}, "flat", steps=2)
    storages = {
        n: {opt.state[p][n].untyped_storage().data_ptr() for p in params} for n in opt.state[params[0]]
    }
    assert all(len(ptrs) == 1 for ptrs in storages.values())  # one buffer per slot and one for steps
    assert set(opt.state[params[0]]) == {"step", "exp_avg", "exp_avg_sq"}
    for p in params:
        assert opt.state[p]["exp_avg"].shape == p.shape and opt.state[p]["step"].dim() == 0
    total = sum(p.numel() for p in params)
    slot_bytes = opt.state[params[0]]["exp_avg"].untyped_storage().nbytes()
    assert total * 4 <= slot_bytes < (total + _flat._ALIGN * len(params)) * 4  # alignment only


def test_resume_from_state_dict_is_bitwise_and_rebuilds_the_buckets():
    hyper = {"lr": 1e-2, "weight_decay": 0.01}
    params, opt = _run("RAdam", hyper, "flat", steps=4)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    resumed_params = [p.clone() for p in params]
    resumed = ut.RAdam(resumed_params, implementation="flat", **hyper)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer))
    for t in range(3):
        rng = np.random.default_rng(7 + t)
        for a, b in zip(params, resumed_params, strict=True):
            a.grad = b.grad = torch.from_numpy(rng.standard_normal(a.shape)).float()
        opt.step()
        resumed.step()
    _assert_same((params, opt), (resumed_params, resumed))
    ptr = resumed.state[resumed_params[0]]["exp_avg"].untyped_storage().data_ptr()
    assert all(resumed.state[p]["exp_avg"].untyped_storage().data_ptr() == ptr for p in resumed_params)


def test_a_compiled_step_between_flat_steps_keeps_the_counters():
    hyper = {"lr": 1e-2}
    params = _params()
    ref_params = _params()
    opt = ut.Adam(params, implementation="flat", **hyper)
    ref = ut.Adam(ref_params, implementation="loop", **hyper)
    compiled = torch.compile(opt.step)
    for t in range(4):
        rng = np.random.default_rng(t)
        for a, b in zip(params, ref_params, strict=True):
            a.grad = b.grad = torch.from_numpy(rng.standard_normal(a.shape)).float()
        (compiled if t == 1 else opt.step)()
        ref.step()
    _assert_same((params, opt), (ref_params, ref))


def test_replacing_a_parameters_storage_is_seen():
    params, opt = _run("SGD", {"lr": 0.1, "momentum": 0.9}, "flat", steps=2)
    ref_params, ref = _run("SGD", {"lr": 0.1, "momentum": 0.9}, "loop", steps=2)
    for p, q in zip(params, ref_params, strict=True):
        p.data = p.data.clone()  # what module.to() and friends do
        p.grad = q.grad = torch.ones_like(p)
    opt.step()
    ref.step()
    _assert_same((params, opt), (ref_params, ref))


def test_implementation_survives_pickle_and_deepcopy_and_bad_values_are_refused():
    params, opt = _run("Adam", {"lr": 1e-2}, "flat", steps=2)
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert clone.implementation == "flat"
        clone.step()  # the copy's state gets buckets of its own
    with pytest.raises(ValueError, match=r"implementation='fast'; expected one of 'auto'"):
        ut.Adam(params, implementation="fast")


@pytest.mark.usefixtures("inductor_kernels")
def test_auto_compiles_large_groups_only(monkeypatch):
    compiled_flags = []
    real = _flat.kernel
    monkeypatch.setattr(
        _flat,
        "kernel",
        lambda spec, dtype, compiled, device_type, slot_dtypes=(): (
            compiled_flags.append(compiled) or real(spec, dtype, False, device_type, slot_dtypes)
        ),
    )
    _run("SGD", {"lr": 0.1}, "auto", steps=1)
    _run("SGD", {"lr": 0.1}, "auto", steps=1, shapes=[(ut.AUTO_COMPILE_MIN,)])
    assert compiled_flags == [False, True]


def test_parameters_that_cannot_be_flattened_take_the_loop_with_the_rest_flat():
    shapes = [(4, 6), (5,)]
    hyper = {"lr": 1e-2}

    def run(implementation):
        params = _params(shapes=shapes)
        params.append(_params(shapes=[(6, 4)])[0].t())  # non-contiguous
        opt = ut.Adam(params, implementation=implementation, **hyper)
        for t in range(3):
            rng = np.random.default_rng(t)
            for p in params:
                p.grad = torch.from_numpy(rng.standard_normal(p.shape)).float()
            opt.step()
        return params, opt

    _assert_same(run("flat"), run("loop"))


@pytest.mark.parametrize("implementation", ["flat", "compiled", "loop"])
def test_a_step_between_forward_and_backward_is_caught_by_autograd(implementation):
    weights = [torch.nn.Parameter(torch.randn(s)) for s in [(3,), (50,)]]  # gathered and in place
    opt = ut.Adam(weights, implementation=implementation, lr=0.1)
    for w in weights:
        w.grad = torch.ones_like(w)
    losses = [(w * w).sum() for w in weights]  # saves w for backward
    opt.step()
    for loss in losses:
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()


@pytest.mark.usefixtures("inductor_kernels")
def test_a_kernel_compiled_on_one_thread_runs_on_every_thread_given_later(monkeypatch):
    """A kernel compiled while torch runs on one thread (a worker that called
    ``torch.set_num_threads(1)``, ``OMP_NUM_THREADS=1``) is not serial: inductor would otherwise write
    the thread count of the first step into the C++ kernel (no OpenMP region at all for one thread),
    and that kernel, kept by dynamo and cached on disk, stays serial after the count is raised. The
    kernel asks OpenMP for its thread count at each call instead."""
    from torch._inductor.utils import run_and_get_code

    monkeypatch.setattr(_flat, "_KERNELS", collections.OrderedDict())
    p = torch.nn.Parameter(torch.randn(64, 8))
    p.grad = torch.randn_like(p)
    opt = ut.Adam([p], lr=1e-3, implementation="compiled")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch._inductor.config.patch(force_disable_caches=True):
            _, sources = run_and_get_code(opt.step)
    finally:
        torch.set_num_threads(threads)
    assert len(sources) == 1, "the step compiled no kernel (or several)"
    assert "#pragma omp parallel" in sources[0]


@pytest.mark.usefixtures("inductor_kernels")
def test_the_compiled_kernel_compiles_once_for_tensors_of_many_shapes(monkeypatch):
    """Stacked, empty, 0-d and 3-d parameters, most of them in place, and a gathered region of one
    element: the kernel compiles once. The region is padded to two elements (torch specialises
    lengths 0 and 1, which compiled a second graph), and the kernels see plain 1-D tensors, not
    views, so dynamo has no base sizes, strides or storage offsets to guard on (views compiled this
    set five times)."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(_flat, "LARGE", {"cpu": 6, "cuda": 6})
    torch._dynamo.reset()
    counters.clear()
    shapes = [(6, 16), (6, 4, 8), (), (0,), (3, 1, 5), (2, 0, 3), (7,)]
    _assert_same(
        _run("Adam", {"lr": 1e-2}, "compiled", shapes=shapes, steps=3),
        _run("Adam", {"lr": 1e-2}, "loop", shapes=shapes, steps=3),
    )
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("shapes", [[(0,), (2, 0)], [()], [(1,), (4,)]], ids=["empty", "one", "five"])
def test_a_short_gathered_region_is_padded_and_steps_like_the_loop(monkeypatch, shapes):
    """Small tensors of 0, 1 and 5 elements in all: the gathered region is at least MIN_REGION long,
    its padding is zero and no parameter's state, and the step equals the per-tensor loop."""
    monkeypatch.setattr(_flat, "LARGE", {"cpu": 64, "cuda": 64})
    params = [torch.nn.Parameter(torch.linspace(-1.0, 1.0, math.prod(s)).reshape(s)) for s in shapes]
    opt = ut.Adam(params, lr=0.1, implementation="flat")
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    ((bucket, _),) = next(iter(opt._buckets.values()))[4]
    total = sum(p.numel() for p in params)
    assert bucket.small_end == total
    assert bucket.region_size == max(total, _flat.MIN_REGION)
    assert all(piece.shape == (bucket.region_size,) for piece in bucket.region)
    assert all(torch.equal(piece[total:], torch.zeros(bucket.region_size - total)) for piece in bucket.region)
    _assert_same(
        _run("Adam", {"lr": 1e-2}, "flat", shapes=shapes, steps=3),
        _run("Adam", {"lr": 1e-2}, "loop", shapes=shapes, steps=3),
    )


def _float64_grad(p):
    p.grad_dtype = None  # torch refuses a gradient of another dtype unless told to allow it
    p.grad = torch.ones(p.shape, dtype=torch.float64)


def _sparse_grad(p):
    p.grad = torch.ones_like(p).to_sparse()


@pytest.mark.parametrize("implementation", ["flat", "loop"])
@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (_float64_grad, r"a gradient of shape \(3, 4\) and dtype torch.float64 does not match"),
        (_sparse_grad, r"does not support sparse gradients"),
    ],
)
def test_a_mismatched_gradient_after_good_steps_is_refused_before_any_change(implementation, bad, match):
    """The per-step gradient check (one comparison against the layouts cached from earlier steps)
    still names a gradient whose dtype or layout is wrong, and nothing is updated (torch itself
    refuses a gradient of another shape)."""
    params = [torch.nn.Parameter(p) for p in _params()]
    opt = ut.Adam(params, lr=0.1, implementation=implementation)
    for _ in range(2):
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
    before = [p.detach().clone() for p in params]
    state = copy.deepcopy(opt.state_dict())
    bad(params[0])
    with pytest.raises(RuntimeError, match=match):
        opt.step()
    for p, old in zip(params, before, strict=True):
        assert torch.equal(p.detach(), old)
    after = opt.state_dict()["state"]
    for i, slots in state["state"].items():
        for name, value in slots.items():
            assert torch.equal(after[i][name], value), (i, name)
    params[0].grad = None
    params[0].grad_dtype = params[0].dtype
    params[0].grad = torch.ones_like(params[0])
    opt.step()  # a good gradient again: the step goes on from the same state
    assert int(opt.state[params[0]]["step"]) == 3


@pytest.mark.parametrize("implementation", ["flat", "compiled"])
def test_parameters_that_require_grad_step_past_a_recompile(implementation):
    """nn.Parameters (leaves that require grad) through RAdam's branch change at step 6, which makes
    the compiled kernel recompile: the kernels get detached views (a no_grad view of such a leaf
    made dynamo's recompile fail), and the result is the loop's, bit for bit."""
    results = []
    for impl in ("loop", implementation):
        params = [torch.nn.Parameter(p) for p in _params()]
        opt = ut.RAdam(params, lr=0.01, implementation=impl)
        rng = np.random.default_rng(5)
        for _ in range(8):
            for p in params:
                p.grad = torch.from_numpy(rng.standard_normal(tuple(p.shape))).float()
            opt.step()
        assert all(p.requires_grad and p.is_leaf for p in params)
        results.append([p.detach().clone() for p in params])
    for got, want in zip(results[1], results[0], strict=True):
        assert torch.equal(got.view(torch.int32), want.view(torch.int32))


def test_the_gather_buffers_are_reported_as_scratch():
    params, opt = _run("Adam", {"lr": 1e-3}, "flat")
    gathered = sum(p.numel() for p in params if p.numel() < 30)  # (3, 4), () and (7,)
    assert opt.scratch_bytes() == 2 * 4 * gathered
    assert ut.Adam(params).scratch_bytes() == 0  # nothing before the first step


EDITS = {
    "setitem": lambda state, p, fresh: state.__setitem__(p, fresh),
    "update": lambda state, p, fresh: state.update({p: fresh}),
    "ior": lambda state, p, fresh: state.__ior__({p: fresh}),
    "delitem": lambda state, p, fresh: state.__delitem__(p),
    "pop": lambda state, p, fresh: state.pop(p),
    "clear": lambda state, p, fresh: state.clear(),
}


@pytest.mark.parametrize("edit", [*EDITS, "new_dict"])
def test_a_state_dict_replaced_between_flat_steps_is_seen(edit):
    """Each way of changing ``opt.state`` (a parameter's dict replaced, removed, or the whole state
    replaced) is seen by the next flat step, which then runs on the new state as the loop does."""

    def run(implementation, edited=True):
        params = _params()
        opt = ut.Adam(params, lr=1e-2, implementation=implementation)
        for t in range(6):
            rng = np.random.default_rng(100 + t)
            for p in params:
                p.grad = torch.from_numpy(rng.standard_normal(p.shape)).to(torch.float32)
            opt.step()
            if t == 2 and edited:
                p = params[1]
                fresh = {k: v.clone() for k, v in opt.state[p].items()}
                fresh["exp_avg"] = torch.full_like(fresh["exp_avg"], 3.0)
                if edit == "new_dict":
                    opt.state = collections.defaultdict(dict, {**opt.state, p: fresh})
                else:
                    EDITS[edit](opt.state, p, fresh)
        return params, opt

    loop = run("loop")
    assert not torch.equal(loop[0][1], run("loop", edited=False)[0][1])  # the edit changes the run
    _assert_same(run("flat"), loop)


NOT_ELEMENTWISE = [info.name for info in TABLE if not info.elementwise]


@pytest.mark.parametrize("name", NOT_ELEMENTWISE)
def test_a_rule_that_reduces_refuses_the_flat_implementation(name):
    """A norm over a concatenation of parameters is not the norm of each: refused by name
    (``"compiled"`` compiles such a rule per parameter: tests/torch_adapter/test_pertensor.py)."""
    params = _params(torch.float32, [(3,), (2, 4)])
    with pytest.raises(ValueError, match=rf"{name}: implementation='flat' runs the rule over"):
        getattr(ut, name)(params, implementation="flat")


@pytest.mark.parametrize("name", NOT_ELEMENTWISE)
def test_a_rule_that_reduces_steps_per_tensor_under_auto(name):
    """``auto`` runs such a rule per tensor, for a group large enough to compile (Adafactor's and
    LAMB's large parameter compiled for its shape, :mod:`uniopt.torch._pertensor`): the loop's
    bits, and no flat bucket is built."""
    shapes = shapes_for(getattr(uniopt, name)(), [(3,), (700, 400)])  # 280,003 >= AUTO_COMPILE_MIN
    auto = _run(name, {"lr": 0.01}, "auto", shapes=shapes)
    assert not auto[1]._buckets
    _assert_same(auto, _run(name, {"lr": 0.01}, "loop", shapes=shapes))


@pytest.mark.usefixtures("inductor_kernels")
def test_a_scheduler_changing_betas_every_step_reuses_the_compiled_kernel():
    """OneCycleLR sets ``betas`` (and ``momentum``) at every step, which makes a new spec each
    step; its values reach the rule as the step's scalars, so the kernel compiled for the first
    step is reused (no graph after the first step's) and the steps are the loop's bits."""
    from torch._dynamo.utils import counters

    compiled = [torch.nn.Parameter(p) for p in _params(torch.bfloat16, [(30, 20), (7,)])]
    looped = [torch.nn.Parameter(p.detach().clone()) for p in compiled]
    opts = [ut.Adam(compiled, implementation="compiled"), ut.Adam(looped, implementation="loop")]
    graphs = []
    for t in range(5):
        for opt, params in zip(opts, (compiled, looped), strict=True):
            opt.param_groups[0]["betas"] = (0.95 - 0.01 * t, 0.999)
            for i, p in enumerate(params):
                p.grad = torch.full_like(p, 0.1 * (t + 1) - 0.05 * i)
            opt.step()
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[1:] == [graphs[0]] * 4, graphs
    for a, b in zip(compiled, looped, strict=True):
        assert torch.equal(a.detach().view(torch.int16), b.detach().view(torch.int16))


@pytest.mark.usefixtures("inductor_kernels")
def test_a_kernel_past_the_recompile_limit_gives_way_to_the_eager_rule(monkeypatch):
    """dynamo stops a ``fullgraph`` function at its recompile limit with an error, before the graph
    runs (every guard it failed was a value the rule reads as a constant). The compiled flat kernel
    then steps eagerly, for that call and every later one, with one warning: the loop's bits.
    (No elementwise rule guards on a scheduled hyperparameter today: betas, momentum, alpha,
    dampening, lr_decay and weight_decay set at every step compiled once, measured; the error is
    raised here by hand.)"""
    from torch._dynamo.exc import FailOnRecompileLimitHit

    monkeypatch.setattr(_flat, "_KERNELS", collections.OrderedDict())
    monkeypatch.setattr(_flat, "_SAID_RECOMPILED", set())
    compiled = [torch.nn.Parameter(p) for p in _params(torch.bfloat16, [(30, 20), (7,)])]
    looped = [torch.nn.Parameter(p.detach().clone()) for p in compiled]
    opts = [ut.Adam(compiled, implementation="compiled"), ut.Adam(looped, implementation="loop")]

    def past_the_limit(*args):
        raise FailOnRecompileLimitHit("recompile_limit reached with fullgraph=True")

    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        for t in range(4):
            if t == 1:  # the kernel compiled at the first step, now past its limit
                for key in _flat._KERNELS:
                    _flat._KERNELS[key] = past_the_limit
            for opt, params in zip(opts, (compiled, looped), strict=True):
                for i, p in enumerate(params):
                    p.grad = torch.full_like(p, 0.1 * (t + 1) - 0.05 * i)
                opt.step()
            for a, b in zip(compiled, looped, strict=True):
                assert torch.equal(a.detach().view(torch.int16), b.detach().view(torch.int16)), t
    limits = [str(w.message) for w in said if "recompile limit" in str(w.message)]
    assert len(limits) == 1 and "runs eagerly from now on" in limits[0], limits
    assert all(kernel is None for kernel in _flat._KERNELS.values())


@pytest.mark.usefixtures("inductor_kernels")
def test_warnings_as_errors_do_not_fail_the_compiled_flat_kernel(monkeypatch):
    """dynamo and inductor warn while they trace and build uniopt's kernel (torch 2.13 imports
    ``torch.jit.script_method`` there, a DeprecationWarning, in a fresh process). Under
    ``warnings.simplefilter("error")`` (pytest ``-W error``) such a warning failed the build after
    the step counts had advanced, at every step, the parameters never updated. Their warnings are
    not the user's: the kernel's call ignores them, and the steps are the loop's bits. (The
    warning is raised here by the kernel itself: in this process inductor is long imported.)"""
    monkeypatch.setattr(_flat, "_KERNELS", collections.OrderedDict())
    compiled = [torch.nn.Parameter(p) for p in _params(torch.bfloat16, [(30, 20), (7,)])]
    looped = [torch.nn.Parameter(p.detach().clone()) for p in compiled]
    opts = [
        ut.SGD(compiled, lr=0.1, momentum=0.9, implementation="compiled"),
        ut.SGD(looped, lr=0.1, momentum=0.9, implementation="loop"),
    ]
    built = []

    def warning_kernel(spec, p, g, slots, sc):
        warnings.warn("torch.jit.script_method is deprecated", DeprecationWarning, stacklevel=1)
        built.append(spec.name)
        _flat._apply_rule(spec, p, g, slots, sc)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for t in range(3):
            for opt, params in zip(opts, (compiled, looped), strict=True):
                for i, p in enumerate(params):
                    p.grad = torch.full_like(p, 0.5 - 0.25 * i + 0.125 * t)
                if t == 0 and opt is opts[0]:  # the compiled kernel, made on first use, replaced
                    _flat.kernel(opt._spec_of(opt.param_groups[0]), torch.bfloat16, True)
                    for key in _flat._KERNELS:
                        _flat._KERNELS[key] = warning_kernel
                opt.step()
            for a, b in zip(compiled, looped, strict=True):
                assert torch.equal(a.detach().view(torch.int16), b.detach().view(torch.int16)), t
    assert built and set(built) == {"SGD"} and len(built) % 3 == 0  # every step, every bucket
    assert int(opts[0].state[compiled[0]]["step"]) == 3


@pytest.mark.parametrize("implementation", ["auto", "flat", "compiled"])
def test_a_parameter_given_its_own_memory_in_another_order_or_shape(implementation):
    """``p.data = p.data.t()`` (or ``.view(...)``) keeps the address and the element count: the
    flat step takes the new layout as the per-tensor loop does, bitwise (a transposed parameter
    leaves the bucket for the per-tensor path); for a shape its state does not have, it raises as
    the loop and torch.optim do. The bucket's check had compared addresses and counts only, so the
    kernel paired the transposed memory with the gradient's and the slots' order."""

    def run(impl, change):
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.randn(4, 4))
        b = torch.nn.Parameter(torch.randn(6))
        opt = ut.Adam([w, b], lr=0.1, implementation=impl)
        g = torch.Generator().manual_seed(1)
        for t in range(3):
            if t == 1:
                w.data = change(w.data)
            w.grad, b.grad = torch.randn(w.shape, generator=g), torch.randn(6, generator=g)
            opt.step()
        return [w, b], opt

    transposed = run(implementation, lambda d: d.t())
    assert not transposed[0][0].is_contiguous()
    _assert_same(transposed, run("loop", lambda d: d.t()))
    for impl in (implementation, "loop"):
        with pytest.raises(RuntimeError, match="must match the size"):
            run(impl, lambda d: d.view(2, 8))


@pytest.mark.parametrize("implementation", ["auto", "flat", "compiled"])
def test_a_step_counter_edited_in_place_is_the_count_the_next_step_uses(implementation):
    """``opt.state[p]["step"].fill_(0)`` (a bias correction started over for one tensor) is read
    at the next step, as the per-tensor loop and torch.optim read it: the bucket had kept stepping
    with its own count (Adam: up to 0.08 off the loop after one such edit)."""

    def run(impl):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s)) for s in ((4, 4), (6,), (3, 5))]
        opt = ut.Adam(params, lr=0.1, implementation=impl)
        g = torch.Generator().manual_seed(1)
        for t in range(5):
            if t == 2:
                opt.state[params[1]]["step"].fill_(0)
            if t == 3:
                opt.state[params[0]]["step"].add_(7)
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
        return params, opt

    mine, loop = run(implementation), run("loop")
    _assert_same(mine, loop)
    assert [int(mine[1].state[p]["step"]) for p in mine[0]] == [12, 3, 5]


@pytest.mark.parametrize("name", ["Adam", "SGD", "Lion", "Adagrad"])
@pytest.mark.parametrize("implementation", ["auto", "flat"])
def test_slots_follow_a_parameter_whose_dtype_changed_mid_run(name, implementation):
    """``model.to(torch.float64)`` after two steps: every implementation converts the slots to the
    parameters' new dtype, as a rebuilt bucket stores them, and steps on bitwise alike (the
    per-tensor loop had kept float32 slots, rounding the float64 moments each step; torch.optim
    raises there)."""
    hyper = {"lr": 0.01, **({"momentum": 0.9} if name == "SGD" else {})}

    def run(impl):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        opt = getattr(ut, name)(model.parameters(), implementation=impl, **hyper)
        g = torch.Generator().manual_seed(1)
        for t in range(4):
            if t == 2:
                model.to(torch.float64)
            x = torch.randn(5, 4, generator=g, dtype=torch.float64).to(model.weight.dtype)
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
        return list(model.parameters()), opt

    mine, loop = run(implementation), run("loop")
    _assert_same(mine, loop)
    for p in mine[0]:
        assert all(v.dtype == torch.float64 for k, v in mine[1].state[p].items() if k != "step")
