"""The flat implementations on CUDA: the same bits as the per-tensor loop on the same device, buckets
per device, and no host-device synchronisation in a step. Skipped where torch sees no CUDA device
(CI); run on a GPU with ``pytest tests/torch_adapter/test_cuda.py`` (bench/gpu_checks.sh does).

``flat`` runs the elementwise rules only (the others refuse it); ``compiled`` every row but Muon's
(refused: inductor would choose its matrix products' kernel). Muon's uniopt and torch conventions
take matrices: their vectors and scalars are reshaped (``cases.shapes_for``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cases import shapes_for

import uniopt.torch as ut
from uniopt.registry import TABLE
from uniopt.torch import _flat

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CASES = [pytest.param(info, case, id=f"{info.name}-{case.desc}") for info in TABLE for case in info.cases]
FLAT_CASES = [p for p in CASES if p.values[0].spec.elementwise]
COMPILED_CASES = [p for p in CASES if p.values[0].name != "Muon"]
SHAPES = [(3, 4), (40,), (), (5, 2, 3), (7,), (64, 33)]


@pytest.fixture(autouse=True)
def _small_large(monkeypatch):
    # (40,), (5, 2, 3) and (64, 33) run in place, the rest gathered
    monkeypatch.setattr(_flat, "LARGE", {"cpu": 30, "cuda": 30})


def _run(name, hyper, implementation, dtype, devices, steps=9):
    """``steps`` steps with seeded gradients; parameter ``i`` lives on ``devices[i % len(devices)]``;
    parameter 1 has no gradient at step 3."""
    rng = np.random.default_rng(0)
    spec = next(info for info in TABLE if info.name == name).spec(**hyper)
    params = [
        torch.from_numpy(rng.standard_normal(s)).to(dtype).to(devices[i % len(devices)])
        for i, s in enumerate(shapes_for(spec, SHAPES))
    ]
    opt = getattr(ut, name)(params, implementation=implementation, **hyper)
    for t in range(steps):
        rng = np.random.default_rng(100 + t)
        for i, p in enumerate(params):
            g = torch.from_numpy(rng.standard_normal(p.shape)).to(dtype).to(p.device)
            p.grad = None if (t, i) == (3, 1) else g
        opt.step()
    return params, opt


def _assert_same(a, b):
    (pa, oa), (pb, ob) = a, b
    for x, y in zip(pa, pb, strict=True):
        assert x.device == y.device
        assert torch.equal(x, y)
        for key in oa.state[x]:
            assert oa.state[x][key].device == (torch.device("cpu") if key == "step" else x.device)
            assert torch.equal(oa.state[x][key], ob.state[y][key]), key


@pytest.mark.parametrize(("info", "case"), FLAT_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_flat_on_cuda_equals_the_loop_on_cuda_bitwise(info, case, dtype):
    loop = _run(info.name, case.kwargs, "loop", dtype, ["cuda"])
    _assert_same(_run(info.name, case.kwargs, "flat", dtype, ["cuda"]), loop)


@pytest.mark.parametrize(("info", "case"), COMPILED_CASES)
def test_compiled_on_cuda_equals_the_loop_on_cuda_bitwise_in_float32(info, case):
    """The Triton kernel, compiled with exact_options, rounds every op as the eager kernels do."""
    loop = _run(info.name, case.kwargs, "loop", torch.float32, ["cuda"])
    _assert_same(_run(info.name, case.kwargs, "compiled", torch.float32, ["cuda"]), loop)


def test_cpu_and_cuda_parameters_of_one_group_get_a_bucket_each():
    flat = _run("RAdam", {"lr": 1e-2}, "flat", torch.float32, ["cuda", "cpu"])
    _assert_same(flat, _run("RAdam", {"lr": 1e-2}, "loop", torch.float32, ["cuda", "cpu"]))
    (_, opt) = flat
    (_, _, _, loop, buckets) = opt._buckets[0]
    assert loop == []
    assert {b.device.type for b, _ in buckets} == {"cpu", "cuda"}  # parameter 1's lost step: its own bucket
    assert all(p.device == b.device for b, _ in buckets for p in b.params)


@pytest.mark.parametrize(("implementation", "warmup"), [("auto", 0), ("flat", 7), ("compiled", 7)])
def test_a_cuda_step_never_synchronises(implementation, warmup):
    """From the first step on (lazy state, buckets built), or after ``warmup`` steps: past RAdam's
    first rectified step, every graph compiled."""
    params = [torch.ones(s, device="cuda") for s in SHAPES]
    opt = ut.RAdam(params, lr=1e-3, implementation=implementation)
    for p in params:
        p.grad = torch.full_like(p, 0.5)
    for _ in range(warmup):
        opt.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(8 - warmup + 2):
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(opt.state[p]["exp_avg"].device == p.device for p in params)


def test_the_gather_buffers_are_reported_as_scratch():
    params, opt = _run("Adam", {"lr": 1e-3}, "flat", torch.float32, ["cuda"], steps=2)
    gathered = sum(p.numel() for p in params if p.numel() < 30)  # (3, 4), () and (7,)
    assert opt.scratch_bytes() == 2 * 4 * gathered
