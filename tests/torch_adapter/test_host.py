"""The C++ host loops of a flat step (:mod:`uniopt.torch._host`, ``_host.cpp``) against the Python
code they replace: each function answers "not here" for anything but the plain case, the steps of
both paths are bitwise the same and bitwise the per-tensor loop's, and both refuse the same inputs
with the same errors before anything changes.

The extension is built here if this machine has not cached it (about 15 s); where it cannot be built
(no C++ compiler or no ``Python.h``) these tests are skipped, and the skip says so.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_flat import _assert_same  # parameters and every state entry, bitwise
from torch.overrides import TorchFunctionMode

import uniopt.torch as ut
from uniopt.torch import _flat, _host, _native

pytestmark = pytest.mark.xdist_group("test_host")  # one worker builds (or loads) the extension once

SHAPES = [(3, 4), (40,), (), (5, 2, 3), (7,), (0,), (2, 33), (64,)]


@pytest.fixture(scope="module")
def host():
    built = _host.wait()
    if built is None:
        pytest.skip("the C++ host extension cannot be built here (no C++ compiler or no Python.h)")
    return built


@pytest.fixture(autouse=True)
def _small_tiles(monkeypatch):
    monkeypatch.setattr(_flat, "LARGE", {"cpu": 30, "cuda": 30})
    monkeypatch.setattr(_native, "TILE", 16)


class _Calls:
    """Counts the calls of the extension's functions (a stand-in module forwarding to the real one)."""

    def __init__(self, real):
        self.real, self.counts = real, {}

    def __getattr__(self, name):
        fn = getattr(self.real, name)

        def counted(*args):
            self.counts[name] = self.counts.get(name, 0) + 1
            return fn(*args)

        return counted


@pytest.fixture
def path(monkeypatch, host):
    """``path("host")`` or ``path("python")``: the extension the steps see (a counting proxy, or none)."""

    def use(which):
        calls = _Calls(host) if which == "host" else None
        monkeypatch.setattr(_host, "module", lambda start=True: calls)
        return calls

    return use


def _params(dtype=torch.float32, seed=0):
    rng = np.random.default_rng(seed)
    return [torch.nn.Parameter(torch.from_numpy(rng.standard_normal(s)).to(dtype)) for s in SHAPES]


def _grad(rng, p):
    return torch.from_numpy(rng.standard_normal(p.shape)).to(p.dtype)


def _train(name, hyper, implementation="auto", steps=8, dtype=torch.float32):
    """Steps through what real loops do between steps: a parameter without a gradient, a gradient
    that is not contiguous, a state entry replaced, a parameter's storage replaced, a gradient
    reused (accumulated into)."""
    params = _params(dtype)
    opt = getattr(ut, name)(params, implementation=implementation, **hyper)
    for t in range(steps):
        rng = np.random.default_rng(100 + t)
        for p in params:
            p.grad = _grad(rng, p)
        if t == 2:
            params[1].grad = None
        if t == 3:
            params[0].grad = params[0].grad.mT.contiguous().mT  # (3, 4), column-major
        if t == 4:
            state = opt.state[params[3]]
            key = next(k for k in state if k != "step")
            state[key] = state[key].clone()
        if t == 5:
            params[6].data = params[6].data.clone()
        if t == 6:
            params[7].grad.add_(1.0)
        opt.step()
    return params, opt


CASES = [
    ("RAdam", {"lr": 1e-2}),
    ("Adam", {"lr": 1e-2, "amsgrad": True, "weight_decay": 0.1}),
    ("AdamW", {"lr": 1e-2}),
    ("SGD", {"lr": 1e-2, "momentum": 0.9, "nesterov": True}),
    ("Adagrad", {"lr": 1e-2}),
]


@pytest.mark.parametrize(("name", "hyper"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_both_paths_step_bitwise_as_the_loop(name, hyper, dtype, path):
    calls = path("host")
    with_host = _train(name, hyper, dtype=dtype)
    assert calls.counts.get("dense_grads", 0) >= 6  # the steps with every gradient plain
    assert calls.counts.get("fill", 0) >= 6 and calls.counts.get("bump", 0) >= 6
    assert calls.counts.get("intact", 0) >= 1
    path("python")
    without = _train(name, hyper, dtype=dtype)
    _assert_same(with_host, without)
    _assert_same(with_host, _train(name, hyper, implementation="loop", dtype=dtype))


def test_dense_grads_answers_only_the_plain_case(host):
    params = _params()
    assert host.dense_grads(params) is None  # no gradient yet
    for p in params:
        p.grad = torch.zeros_like(p)
    got = host.dense_grads(params)
    assert isinstance(got, list) and all(g is p.grad for g, p in zip(got, params, strict=True))
    assert host.dense_grads(tuple(params)) == got
    assert host.dense_grads(params[:0]) == []

    class Sub(torch.Tensor):
        pass

    refused = {
        "a None gradient": lambda ps: setattr(ps[2], "grad", None),
        "another dtype": lambda ps: (
            setattr(ps[1], "grad_dtype", None),  # torch allows another dtype only when told to
            setattr(ps[1], "grad", ps[1].grad.double()),
        ),
        "a sparse gradient": lambda ps: setattr(ps[1], "grad", ps[1].grad.to_sparse()),
        "a tensor subclass gradient": lambda ps: setattr(ps[1], "grad", ps[1].grad.as_subclass(Sub)),
    }
    for what, change in refused.items():
        ps = _params()
        for p in ps:
            p.grad = torch.zeros_like(p)
        change(ps)
        assert host.dense_grads(ps) is None, what
    # another shape (torch refuses to assign one; a resize in place reaches the same state)
    ps = _params()
    for p in ps:
        p.grad = torch.zeros_like(p)
    ps[0].grad.resize_(12)
    assert host.dense_grads(ps) is None
    # a parameter of a tensor subclass, and anything that is no list or tuple
    sub = [torch.zeros(3).as_subclass(Sub)]
    sub[0].grad = torch.zeros(3)
    assert host.dense_grads(sub) is None
    assert host.dense_grads(iter(params)) is None


def test_intact_is_the_python_check(host, path):
    path("host")
    params, opt = _train("Adam", {"lr": 1e-2}, steps=2)
    ((bucket, _),) = opt._buckets[0][4]

    def python_intact():
        path("python")
        try:
            return bucket.intact(opt.state)
        finally:
            path("host")

    args = lambda: (  # noqa: E731
        bucket.states,
        bucket.keys,
        bucket.columns,
        bucket.params,
        bucket.ptrs,
        bucket.shapes,
        bucket.probe,
        bucket.steps,
        bucket.step,
    )
    assert host.intact(*args()) is True and python_intact() is True
    opt.state[params[4]]["exp_avg"] = opt.state[params[4]]["exp_avg"].clone()
    assert host.intact(*args()) is False and python_intact() is False
    params, opt = _train("Adam", {"lr": 1e-2}, steps=2)
    ((bucket, _),) = opt._buckets[0][4]
    del opt.state[params[0]]["exp_avg_sq"]
    assert host.intact(*args()) is False and python_intact() is False
    params, opt = _train("Adam", {"lr": 1e-2}, steps=2)
    ((bucket, _),) = opt._buckets[0][4]
    params[2].data = params[2].data.clone()
    assert host.intact(*args()) is False and python_intact() is False
    params, opt = _train("Adam", {"lr": 1e-2}, steps=2)
    ((bucket, _),) = opt._buckets[0][4]
    params[1].data = params[1].data[:5]  # a smaller piece of the same storage: the same address
    assert params[1].data_ptr() == bucket.ptrs[1]
    assert host.intact(*args()) is False and python_intact() is False
    params, opt = _train("Adam", {"lr": 1e-2}, steps=2)
    ((bucket, _),) = opt._buckets[0][4]
    params[1].requires_grad_(False)  # torch allows an integer dtype then
    params[1].data = params[1].data.view(torch.int32)  # another dtype over the same bytes
    assert params[1].data_ptr() == bucket.ptrs[1] and params[1].shape == bucket.shapes[1]
    assert host.intact(*args()) is False and python_intact() is False
    for change in (lambda d: d.t(), lambda d: d.view(4, 3)):  # the same memory in another order or shape
        params, opt = _train("Adam", {"lr": 1e-2}, steps=2)
        ((bucket, _),) = opt._buckets[0][4]
        params[0].data = change(params[0].data)  # (3, 4)
        assert params[0].data_ptr() == bucket.ptrs[0] and params[0].numel() == math.prod(bucket.shapes[0])
        assert host.intact(*args()) is False and python_intact() is False
    params, opt = _train("Adam", {"lr": 1e-2}, steps=2)
    ((bucket, _),) = opt._buckets[0][4]
    opt.state[params[3]]["step"].fill_(0)  # a counter edited in place: the same entry
    assert host.intact(*args()) is False and python_intact() is False
    with pytest.raises(ValueError, match="mismatched lengths"):
        host.intact(*args()[:3], bucket.params[:1], *args()[4:])


def test_fill_writes_the_addresses_python_would(host, path):
    path("host")
    params, opt = _train("RAdam", {"lr": 1e-2}, steps=1)
    ((bucket, _),) = opt._buckets[0][4]
    _, pointers, tensor, offset = bucket.native_segments()
    rng = np.random.default_rng(5)
    grads = [_grad(rng, p) for p in params]
    every = bucket.every_at
    pointers[:, 1] = 0
    args = (every.ctypes.data, len(every), tensor.ctypes.data, offset.ctypes.data, len(tensor))
    assert host.fill(grads, *args, pointers.ctypes.data, pointers.shape[1]) is True
    want = np.array([g.data_ptr() for g in grads], dtype=np.uintp)[every][tensor] + offset
    assert np.array_equal(pointers[:, 1], want)
    grads[0] = grads[0].mT.contiguous().mT
    before = pointers.copy()
    assert host.fill(grads, *args, pointers.ctypes.data, pointers.shape[1]) is False
    assert np.array_equal(pointers, before)  # nothing written


def test_a_step_still_bumps_the_version_counters(path):
    """The kernel writes behind autograd's back; both paths advance each parameter's version, so a
    graph that saved a parameter refuses to backpropagate after the step, as after torch.optim's."""
    for which in ("host", "python"):
        path(which)
        params = _params()
        opt = ut.RAdam(params, lr=1e-2)
        loss = sum((p * p).sum() for p in params)
        for p in params:
            p.grad = torch.ones_like(p)
        versions = [p._version for p in params]
        opt.step()
        assert [p._version for p in params] == [v + 1 for v in versions], which
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()


@pytest.mark.parametrize("which", ["host", "python"])
def test_a_refused_gradient_is_refused_alike_before_anything_changes(which, path):
    path(which)
    params = _params()
    opt = ut.Adam(params, lr=1e-2)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    params[3].grad_dtype = None  # torch allows a gradient of another dtype only when told to
    params[3].grad = torch.ones(params[3].shape, dtype=torch.float64)
    before = [p.detach().clone() for p in params]
    with pytest.raises(RuntimeError, match=r"a gradient of shape \(5, 2, 3\) and dtype torch.float64"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, params, strict=True))


def test_a_torch_function_mode_sees_the_gradients_read(path):
    """Under a TorchFunctionMode, ``p.grad`` is an event the mode sees; the step reads the gradients
    in Python there, as torch.optim does."""
    calls = path("host")
    seen = []

    class Watch(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    params = _params()
    opt = ut.RAdam(params, lr=1e-2)
    for p in params:
        p.grad = torch.ones_like(p)
    with Watch():
        opt.step()
    assert "dense_grads" not in calls.counts
    assert "__get__" in seen


def test_without_a_compiler_the_python_code_steps(monkeypatch, tmp_path):
    """A machine without a C++ compiler (or whose build fails) never loads the extension, and steps
    as before."""
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for name, value in (("_loaded", None), ("_failed", False), ("_builder", None)):
        monkeypatch.setattr(_host, name, value)
    assert _host.wait() is None
    assert _host._failed and _host.module() is None
    _assert_same(_train("RAdam", {"lr": 1e-2}), _train("RAdam", {"lr": 1e-2}, implementation="loop"))


def test_while_the_build_runs_a_step_does_no_build_work(monkeypatch):
    """Until the background build ends, ``module()`` answers ``None`` at once: each step of a
    process's first seconds used to look up the compiler, read the source and hash the build's
    identity again (measured: a sparse SGD step 0.60 ms against 0.16 ms once built)."""
    import threading

    release = threading.Event()
    builder = threading.Thread(target=release.wait, daemon=True)
    builder.start()

    def no_build_work(*args, **kwargs):
        raise AssertionError("build work during a step")

    for name, value in (("_loaded", None), ("_failed", False), ("_builder", builder)):
        monkeypatch.setattr(_host, name, value)
    monkeypatch.setattr(_host, "_compiler", no_build_work)
    monkeypatch.setattr(_host, "_target", no_build_work)
    try:
        assert _host.module() is None
        assert _host.module(start=False) is None
    finally:
        release.set()
        builder.join()


@pytest.mark.parametrize(
    ("cxx", "expected"), [("'unclosed", None), ("ccache  g++ -v", ("ccache", "g++", "-v"))]
)
def test_cxx_is_split_as_a_shell_splits_it(monkeypatch, cxx, expected):
    monkeypatch.setenv("CXX", cxx)
    assert _host._compiler() == expected


def test_the_switch_turns_it_off(monkeypatch):
    monkeypatch.setenv("UNIOPT_TORCH_HOST", "0")
    for name, value in (("_loaded", None), ("_failed", False), ("_builder", None)):
        monkeypatch.setattr(_host, name, value)
    assert _host.module() is None and _host._builder is None


def test_processes_building_at_once_run_the_compiler_once(tmp_path, host):
    """Parallel processes (pytest workers, conformance batches) that find no cached library: one
    compiles, the others wait for it in their background threads and load its library. ``$CXX`` is
    a wrapper given the compiler as its argument (``CXX="ccache g++"``), split as a shell splits it.

    The wrapper records its arguments and hands over the library the ``host`` fixture built from
    the same source and flags instead of compiling it again (a minute of a 2-core CI machine): its
    arguments must be the command :func:`_host._target` makes, the one the fixture's build ran."""
    import os
    import shlex
    import subprocess
    import sys

    real = _host._compiler()
    log = tmp_path / "compiler-calls"
    wrapper = tmp_path / "wrap cxx"  # a space in its path: quoted in $CXX as a shell quotes it
    wrapper.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" > "{log}.$$"\nsleep 1\ncp {shlex.quote(host.__file__)} host.so\n'
    )
    wrapper.chmod(0o755)
    cxx = f"{shlex.quote(str(wrapper))} {shlex.join(real)}"
    env = {**os.environ, "CXX": cxx, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    script = "from uniopt.torch import _host; print(_host.wait() is not None)"
    runs = [
        subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE) for _ in range(3)
    ]
    outs = [r.communicate(timeout=600)[0].decode().strip() for r in runs]
    assert outs == ["True"] * 3
    calls = list(tmp_path.glob("compiler-calls.*"))  # one file per run
    assert len(calls) == 1  # one process ran the compiler, the others loaded its library
    _, command = _host._target(real, _host._SOURCE.read_text())
    assert calls[0].read_text().splitlines() == command  # the compiler and its arguments, unquoted
    assert len(list((tmp_path / "cache" / "uniopt").glob("host-*.so"))) == 1


@pytest.mark.parametrize("which", ["host", "python"])
def test_a_gradient_with_the_negative_bit_steps_with_its_value(which, path):
    """A gradient whose memory holds the negation of its values (the imaginary part of a conjugated
    complex tensor) steps with its values, as in the per-tensor loop."""
    path(which)

    def run(implementation):
        p = torch.nn.Parameter(torch.zeros(3))
        opt = ut.RAdam([p], lr=0.1, implementation=implementation)
        for _ in range(3):
            p.grad = torch.tensor([1 + 2j, 3 - 1j, -2 + 0.5j]).conj().imag
            assert p.grad.is_neg()
            opt.step()
        return [p], opt

    _assert_same(run("auto"), run("loop"))


@pytest.mark.parametrize("which", ["host", "python"])
@pytest.mark.parametrize("change", ["smaller piece", "other dtype", "other shape"])
def test_a_parameter_changed_under_its_old_gradient_is_refused_as_in_the_loop(which, change, path):
    """``p.data`` replaced after a step, before the next (``grad_dtype=None``: torch allows a
    gradient of another dtype only when told): the next step refuses what the per-tensor loop
    refuses, with its error, and reads no memory outside the tensors."""

    def run(implementation):
        path(which)
        p = torch.nn.Parameter(torch.zeros(4096))
        p.grad_dtype = None
        opt = ut.RAdam([p], lr=0.1, implementation=implementation)
        p.grad = torch.ones(4096)
        opt.step()
        if change == "smaller piece":
            p.data = p.data[:1]
            p.grad = torch.ones(1)
        elif change == "other dtype":
            p.data = p.data.double()
        else:
            p.data = p.data.view(64, 64)
        with pytest.raises(RuntimeError) as raised:
            opt.step()
        return str(raised.value).replace(implementation, "")

    assert run("auto") == run("loop")


def test_copy_on_write_parameter_storage_is_not_written_through(path):
    """A parameter whose storage became copy-on-write (``torch._lazy_clone``) gets storage of its own
    before the kernel writes, as ``Tensor.data_ptr()`` gives it in Python: the clone's source keeps
    its values."""
    if not hasattr(torch, "_lazy_clone"):
        pytest.skip("this torch has no torch._lazy_clone")
    for which in ("host", "python"):
        path(which)
        p = torch.nn.Parameter(torch.zeros(2))
        opt = ut.RAdam([p], lr=0.1)
        p.grad = torch.ones(2)
        opt.step()
        snapshot = torch._lazy_clone(p.detach())
        kept = snapshot.clone()
        p.grad = torch.ones(2)
        opt.step()
        assert torch.equal(snapshot, kept), which


@pytest.mark.parametrize("which", ["host", "python"])
def test_inference_tensor_parameters_step_as_before(which, path):
    """Inference tensors have no version counter: both paths skip them when bumping counters (as
    ``torch.autograd.graph.increment_version`` does) instead of raising after the update."""
    path(which)
    with torch.inference_mode():
        p = torch.zeros(2)
    opt = ut.RAdam([p], lr=0.1)
    p.grad = torch.ones(2)
    opt.step()
    assert torch.all(p != 0)
