"""torch's OptimizerInfo database as the referee for ``uniopt.torch`` (``convention="torch"``).

``torch.testing._internal.common_optimizers.optim_db`` drives torch's own optimizer suite
(``TestOptimRenewed`` in test/test_optim.py). Here its entries for the table's optimizers that
torch.optim has (:data:`NAMES`: SGD, Adagrad, RMSprop, Adam, AdamW, RAdam, Adamax, NAdam, Adadelta, Adafactor)
drive the same tests with ``uniopt.torch``'s class in place of torch.optim's:

* every input set (``optim_inputs_func``, with the ``fused``/``differentiable`` variants torch's
  suite adds on the CPU, and ``foreach=True``, which it leaves out there but torch.optim accepts)
  against the native torch.optim optimizer with the same arguments,
  on the same model, init and data for several steps, with the tolerances torch's
  ``assertEqual`` applies; the one-step max ulp distance of each is written to
  ``build/peer/torch_inputs.json``;
* every error input (``optim_error_inputs_func``): the exception type (``test_error_type``) and
  torch's own check of type and message (``test_errors``); ``test_error_type`` first checks that
  torch.optim itself raises as the database says;
* the contract tests ``TestOptimRenewed`` runs from the database on the CPU (state_dict round trip,
  older and named state_dicts, hooks, deepcopy, complex parameters, param groups, tensor ``lr``,
  closures, steps without gradients), plus the contract points torch's older suite checks (pickle,
  ``zero_grad``, duplicate parameters, param groups as generators, Adagrad's state at construction).

Not here, as torch's suite does not run them on the CPU: the CUDA-only tests (multi-GPU,
mixed devices, default dtype with foreach, peak memory, found_inf, CPU-to-CUDA state_dicts, fused
CPU against CUDA, the foreach default, which also mocks torch.optim's ``_multi_tensor_*``),
``test_cpu_load_state_dict`` (skipped on the CPU), the 2**32-element large-tensor tests (64-72 GB)
and LBFGS's ``test_second_order_optims_return_consistent_types``.
``test_optim_infos_do_not_specify_global_cliquey_kwargs`` checks the database, not an optimizer.
"""

from __future__ import annotations

import copy
import functools
import inspect
import io
import json
import math
import os
import pickle
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.nn import Parameter
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)
from torch.testing._internal.common_device_type import toleranceOverride
from torch.testing._internal.common_methods_invocations import DecorateInfo
from torch.testing._internal.common_optimizers import (
    OptimizerErrorEnum,
    OptimizerInfo,
    OptimizerInput,
    TensorTracker,
    _get_optim_inputs_including_global_cliquey_kwargs,
    optim_db,
)

import uniopt.torch
from uniopt.registry import TABLE
from uniopt.torch._porting import _DERIVED

DEVICE = os.environ.get("UNIOPT_PEER_DEVICE", "cpu")
"""Where the tests run (``UNIOPT_PEER_DEVICE=cuda`` on a GPU); torch's suite runs this list on the CPU."""
NAMES = tuple(
    info.name
    for info in TABLE
    if info.torch is not None and info.torch.native is not None and info.torch.native == info.name
)
"""The table's rows that torch.optim has (under the same name): SGD, Adagrad, RMSprop, Adam, AdamW,
RAdam, Adamax, NAdam, Adadelta, Adafactor."""
INFOS: dict[str, OptimizerInfo] = {
    info.optim_cls.__name__: info for info in optim_db if info.optim_cls.__name__ in NAMES
}
REPORT = Path(__file__).resolve().parent.parent / "build" / "peer" / "torch_inputs.json"
DERIVED = _DERIVED
"""torch.optim state entries uniopt keeps no slot for, derived from the step count (NAdam's
``mu_product``): compared with torch's value instead of looked up."""
SKIP_DIFF = ("differentiable",)
SKIP_DIFF_FUSED = ("differentiable", "fused")


def uni(name: str) -> Callable[..., Optimizer]:
    """uniopt.torch's optimizer of that name, with torch.optim's conventions."""
    return functools.partial(getattr(uniopt.torch, name), convention="torch")


def _spec_of(factory: Callable[..., Optimizer], kwargs: dict[str, Any]) -> Any:
    """The spec of the first param group of ``factory`` built with ``kwargs`` (a tensor lr as its
    value)."""
    optimizer = factory([Parameter(torch.zeros(1, 1))], **copy.deepcopy(kwargs))  # 2-D: Muon refuses others
    return optimizer._spec_of(optimizer.param_groups[0])


def native(name: str) -> Callable[..., Optimizer]:
    return INFOS[name].optim_cls


# -- the database's inputs, one test per input --------------------------------------------------
def all_inputs(name: str, skip: tuple[str, ...] = ()) -> list[OptimizerInput]:
    """The input sets torch's suite loops over (fresh objects: a tensor ``lr`` is mutable)."""
    return _get_optim_inputs_including_global_cliquey_kwargs(DEVICE, torch.float32, INFOS[name], skip=skip)


def base_inputs(name: str) -> list[OptimizerInput]:
    return INFOS[name].optim_inputs_func(device=DEVICE, dtype=torch.float32)


def _unique(descs: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for d in descs:
        k = seen.get(d, 0)
        seen[d] = k + 1
        out.append(d if k == 0 else f"{d}#{k}")
    return out


def cases(source: Callable[[str], list[Any]], desc: Callable[[Any], str]) -> list[Any]:
    """pytest params ``(name, index)`` with ids ``Name-desc`` over :data:`NAMES`."""
    params = []
    for name in NAMES:
        items = source(name)
        for i, d in enumerate(_unique([desc(x) for x in items])):
            params.append(pytest.param(name, i, id=f"{name}-{d}"))
    return params


def user_inputs(name: str) -> list[OptimizerInput]:
    """``all_inputs`` plus a ``foreach=True`` variant of each input set: torch's helper leaves
    foreach out on the CPU (no foreach kernels there), but torch.optim accepts it there and users
    pass it."""
    inputs = all_inputs(name)
    if "foreach" in INFOS[name].supported_impls:
        descs = {i.desc for i in inputs}
        for base in base_inputs(name):
            if f"{base.desc} & foreach" not in descs:
                kwargs = copy.deepcopy(next(i for i in inputs if i.desc == base.desc).kwargs)
                kwargs["foreach"] = True
                inputs.append(OptimizerInput(None, kwargs, f"{base.desc} & foreach"))
    return inputs


ALL = cases(all_inputs, lambda x: x.desc)
USER = cases(user_inputs, lambda x: x.desc)
NO_DIFF = cases(lambda n: all_inputs(n, SKIP_DIFF), lambda x: x.desc)
NO_DIFF_FUSED = cases(lambda n: all_inputs(n, SKIP_DIFF_FUSED), lambda x: x.desc)
BASE = cases(base_inputs, lambda x: x.desc)
ERRORS = cases(
    lambda n: INFOS[n].optim_error_inputs_func(device=DEVICE, dtype=torch.float32),
    lambda e: e.optimizer_error_input.desc,
)
OPTIMS = [pytest.param(name, id=name) for name in NAMES]


def pick(name: str, index: int, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    return all_inputs(name, skip)[index].kwargs


def tolerance(name: str, test_name: str, dtype: torch.dtype) -> dict[str, float]:
    """The tolerance override the database declares for that test and dtype (torch's
    ``toleranceOverride``), else ``{}`` (torch's default ``assertEqual`` tolerances)."""
    for deco in INFOS[name].decorators:
        if isinstance(deco, DecorateInfo) and deco.is_active(
            "TestOptimRenewed", test_name, DEVICE, dtype, {}
        ):
            for d in deco.decorators:
                if isinstance(d, toleranceOverride) and dtype in d.d:
                    return {"atol": d.d[dtype].atol, "rtol": d.d[dtype].rtol}
    return {}


def assert_equal(actual: Any, expected: Any, **tol: float) -> None:
    """torch's ``TestCase.assertEqual`` on tensors and containers of them (``exact_dtype``)."""
    if isinstance(expected, torch.Tensor) or isinstance(actual, torch.Tensor):
        torch.testing.assert_close(actual, expected, equal_nan=True, **tol)
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), (
            f"keys {sorted(map(str, actual))} != {sorted(map(str, expected))}"
        )
        for k in expected:
            assert_equal(actual[k], expected[k], **tol)
    elif isinstance(expected, list | tuple):
        assert isinstance(actual, list | tuple) and len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            assert_equal(a, e, **tol)
    else:
        assert actual == expected, f"{actual!r} != {expected!r}"


class Case:
    """A ``unittest.TestCase``-like shim so the contract tests read as torch's do."""

    def assertEqual(self, a: Any, b: Any, **tol: float) -> None:  # noqa: N802
        assert_equal(a, b, **tol)

    def assertTrue(self, x: Any, msg: str = "") -> None:  # noqa: N802
        assert x, msg

    def assertGreater(self, a: Any, b: Any, msg: str = "") -> None:  # noqa: N802
        assert a > b, msg


# -- ulp figures ---------------------------------------------------------------------------------
FIGURES: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="module", autouse=True)
def _write_figures() -> Iterator[None]:
    yield
    if FIGURES:
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        REPORT.write_text(json.dumps(FIGURES, indent=1, sort_keys=True) + "\n")


def _ordered(t: torch.Tensor) -> torch.Tensor:
    """Float bits as integers ordered like the floats (so a difference counts ulp)."""
    ints = {torch.float32: torch.int32, torch.float64: torch.int64}[t.dtype]
    i = t.detach().contiguous().view(ints).to(torch.int64)
    mask = (1 << 31) - 1 if t.dtype == torch.float32 else (1 << 63) - 1
    return torch.where(i < 0, -(i & mask), i)


def max_ulp(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> int:
    worst = 0
    for a, e in zip(actual, expected, strict=True):
        if a.numel():
            worst = max(worst, int((_ordered(a) - _ordered(e)).abs().max()))
    return worst


def normwise(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    """||actual - expected|| / ||expected|| over all parameters together (float64)."""
    pairs = zip(actual, expected, strict=True)
    diff = sum(float((a.double() - e.double()).square().sum()) for a, e in pairs)
    ref = sum(float(e.double().square().sum()) for e in expected)
    return math.sqrt(diff / ref) if ref else math.sqrt(diff)


# -- the numbers: every input set against the native optimizer -----------------------------------
def _model(dtype: torch.dtype) -> tuple[torch.nn.Module, list[torch.Tensor], torch.Tensor]:
    """``_test_derived_optimizers``' model and data, with its trailing 0-d parameter."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1), torch.nn.Sigmoid()
    ).to(dtype=dtype, device=DEVICE)
    # torch.empty(()) there; a fixed value here, so that both runs start from the same bits
    extra = torch.full((), 0.5, device=DEVICE, dtype=dtype, requires_grad=True)
    extra.grad = torch.rand_like(extra)
    data = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=dtype, device=DEVICE).reshape(3, 2)
    return model, [*model.parameters(), extra], data


MATRICES_ONLY = ("Muon",)
"""Optimizers that take 2-D parameters only (torch.optim.Muon refuses others at construction): the
native comparison gives them the model's weight matrices alone, as torch.optim.Muon's documentation
has users do (biases and the 0-d parameter go to another optimizer)."""


def _run(
    factory: Callable[..., Optimizer], kwargs: dict[str, Any], dtype: torch.dtype, matrices_only: bool = False
) -> Any:
    """``_compare_between``'s schedule: 7 steps, no gradients at step 2, the middle layer frozen
    at steps 3 and 4; returns the parameters and states after each step (of the 2-D parameters
    only where ``matrices_only``)."""
    model, params, data = _model(dtype)
    if matrices_only:
        params = [p for p in params if p.ndim == 2]
    opt = factory(params, **copy.deepcopy(kwargs))
    history = []
    for i in range(7):
        opt.zero_grad()
        if i == 3:
            model[2].requires_grad_(False)
        if i == 5:
            model[2].requires_grad_(True)
        if i != 2:
            model(data).sum().backward()
        opt.step()
        history.append(
            (
                [p.detach().clone() for p in params],
                [{k: _clone(v) for k, v in opt.state[p].items()} for p in params],
            )
        )
    return history


def _clone(v: Any) -> Any:
    return v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)


def _run_differentiable(
    factory: Callable[..., Optimizer], kwargs: dict[str, Any], dtype: torch.dtype
) -> list[torch.Tensor]:
    """``differentiable=True`` as torch means it: non-leaf parameters (clones of leaves), updated
    out of place under autograd; 3 steps with fixed gradients."""
    torch.manual_seed(2)
    leaves = [torch.randn(3, 2, dtype=dtype, requires_grad=True), torch.randn(3, dtype=dtype)]
    leaves[1].requires_grad_(True)
    grads = [[torch.randn_like(leaf) for leaf in leaves] for _ in range(3)]
    params = [leaf.clone() for leaf in leaves]
    opt = factory(params, **copy.deepcopy(kwargs))
    for g in grads:
        for p, gi in zip(params, g, strict=True):
            p.grad = gi.clone()
        opt.step()
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(("name", "index"), USER)
def test_matches_native(name: str, index: int, dtype: torch.dtype) -> None:
    """uniopt.torch against torch.optim with the same input set: same parameters and state after
    each of 7 steps, elementwise with torch's default ``assertEqual`` tolerances for the dtype
    (float32: rtol 1.3e-6, atol 1e-5; float64: 1e-7, 1e-7), which implies max-normwise closeness;
    the database's looser overrides for ``test_<flag>_matches_forloop`` are not needed. ``step``
    is compared by value (its dtype: ``test_step_state_dtype_device``)."""
    optim_input = user_inputs(name)[index]
    kwargs = optim_input.kwargs
    figure_key = f"{name}-{optim_input.desc}-{str(dtype).removeprefix('torch.')}"
    tol: dict[str, float] = {}  # torch's assertEqual defaults for the dtype (no override)
    if kwargs.get("differentiable"):
        expected = _run_differentiable(native(name), kwargs, dtype)
        actual = _run_differentiable(uni(name), kwargs, dtype)
        FIGURES[figure_key] = {
            "max_ulp_after_3_steps": max_ulp(actual, expected),
            "normwise_rel_after_3_steps": normwise(actual, expected),
        }
        assert_equal(actual, expected, **tol)
        return
    expected = _run(native(name), kwargs, dtype, name in MATRICES_ONLY)
    actual = _run(uni(name), kwargs, dtype, name in MATRICES_ONLY)
    FIGURES[figure_key] = {
        "one_step_max_ulp": max_ulp(actual[0][0], expected[0][0]),
        "one_step_normwise_rel": normwise(actual[0][0], expected[0][0]),
        "final_max_ulp": max_ulp(actual[-1][0], expected[-1][0]),
    }
    for step, ((p_a, s_a), (p_e, s_e)) in enumerate(zip(actual, expected, strict=True)):
        for i, (a, e) in enumerate(zip(p_a, p_e, strict=True)):
            assert_equal(a, e, msg=f"param {i} after step {step}", **tol)
        for i, (a, e) in enumerate(zip(s_a, s_e, strict=True)):
            derived = DERIVED.get(name, {})  # no slot: a function of the step count (NAdam's mu_product)
            missing = set(e) - set(a) - set(derived)
            assert not missing, f"state of param {i} lacks {sorted(missing)}"
            for k in e:
                if k == "step":
                    assert float(a[k]) == float(e[k]), f"param {i} step {a[k]} != {e[k]}"
                elif k in derived:  # what uniopt derives from its step count is torch's value, exactly
                    spec = _spec_of(uni(name), kwargs)
                    value = torch.tensor(derived[k](spec, int(a["step"])), dtype=e[k].dtype)
                    assert float(value) == float(e[k]), f"{k} of param {i} at step {step}: {value} != {e[k]}"
                else:
                    assert_equal(a[k], e[k], msg=f"state {k} of param {i}, step {step}", **tol)


# -- errors ---------------------------------------------------------------------------------------
def _error_input(name: str, index: int) -> Any:
    return INFOS[name].optim_error_inputs_func(device=DEVICE, dtype=torch.float32)[index]


def _raise_or_warn(factory: Callable[..., Optimizer], error_input: Any, regex: str) -> None:
    """test_errors' body: the error (or warning) at construction or at the first step."""
    optim_input = error_input.optimizer_error_input
    params, kwargs = optim_input.params, optim_input.kwargs
    error_type = error_input.error_type
    checker = (
        pytest.warns(error_type, match=regex)
        if issubclass(error_type, Warning)
        else pytest.raises(error_type, match=regex)
    )
    if error_input.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
        with checker:
            factory(params, **kwargs)
    elif error_input.error_on == OptimizerErrorEnum.STEP_ERROR:
        optim = factory(params, **kwargs)
        with checker:
            optim.step()
    else:
        raise NotImplementedError(f"Unknown error type {error_input.error_on}")


@pytest.mark.parametrize(("name", "index"), ERRORS)
def test_error_type(name: str, index: int) -> None:
    """The same exception (or warning) type as torch.optim, at the same point, any message."""
    error_input = _error_input(name, index)
    _raise_or_warn(native(name), error_input, error_input.error_regex)  # the referee agrees
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        _raise_or_warn(uni(name), error_input, "")


@pytest.mark.parametrize(("name", "index"), ERRORS)
def test_errors(name: str, index: int) -> None:
    """torch's test_errors: type and message regex (``assertRaisesRegex``/``assertWarnsRegex``)."""
    error_input = _error_input(name, index)
    _raise_or_warn(uni(name), error_input, error_input.error_regex)


def _linear_loss(
    optimizer: Optimizer, weight: torch.Tensor, bias: torch.Tensor, inpt: torch.Tensor
) -> torch.Tensor:
    """The loss of torch's tests, ``(weight @ input + bias)^2`` summed, with its backward."""
    optimizer.zero_grad()
    loss = (weight.mv(inpt) + bias).pow(2).sum()
    loss.backward()
    return loss


# -- TestOptimRenewed's contract tests ------------------------------------------------------------
@pytest.mark.parametrize("with_lrsched", [True, False], ids=["lrsched", "nosched"])
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize(("name", "index"), BASE)
def test_forloop_goes_right_direction(name: str, index: int, contiguous: bool, with_lrsched: bool) -> None:
    info = INFOS[name]
    optim_cls = uni(name)
    schedulers_constructors = info.scheduler_inputs if with_lrsched else [None]
    for schedulers_constructor in schedulers_constructors:
        optim_input = base_inputs(name)[index]
        if "foreach" in info.supported_impls:
            optim_input.kwargs["foreach"] = False  # force forloop
        if contiguous:
            weight = Parameter(torch.randn((10, 5), device=DEVICE))
            bias = Parameter(torch.randn((10), device=DEVICE))
        else:
            weight = Parameter(torch.randn((10, 5, 2), device=DEVICE)[..., 0])
            bias = Parameter(torch.randn((10, 2), device=DEVICE)[..., 0])
        inpt = torch.randn(5, device=DEVICE)
        optimizer = optim_cls([weight, bias], **optim_input.kwargs)
        schedulers = [s(optimizer) for s in (schedulers_constructor or [])]

        closure = functools.partial(_linear_loss, optimizer, weight, bias, inpt)
        initial_value = closure().item()
        for _ in range(20):
            loss = closure()
            optimizer.step()
            for scheduler in schedulers:
                if isinstance(scheduler, ReduceLROnPlateau):
                    scheduler.step(loss)
                else:
                    scheduler.step()
        if optim_input.kwargs.get("maximize", False):
            assert closure().item() > initial_value
        else:
            assert closure().item() < initial_value


@pytest.mark.parametrize("name", OPTIMS)
def test_param_group_with_lrscheduler_goes_right_direction(name: str) -> None:
    optim_cls = uni(name)
    for schedulers_c in INFOS[name].scheduler_inputs:
        weight = Parameter(torch.randn((10, 5)))
        bias = Parameter(torch.randn(10))
        inpt = torch.randn(5)
        optimizer = optim_cls([{"params": [weight]}, {"params": [bias], "lr": 0.01}])
        schedulers = [scheduler_c(optimizer) for scheduler_c in schedulers_c]

        closure = functools.partial(_linear_loss, optimizer, weight, bias, inpt)
        initial_value = closure().item()
        for _ in range(20):
            loss = optimizer.step(closure)
            for scheduler in schedulers:
                if isinstance(scheduler, ReduceLROnPlateau):
                    scheduler.step(loss)
                else:
                    scheduler.step()
        assert closure().item() < initial_value


@pytest.mark.parametrize(("name", "index"), NO_DIFF)
def test_tensor_lr(name: str, index: int) -> None:
    """A 0-d tensor ``lr`` steps as the same float ``lr`` (torch's test computes the closures but
    never steps, so it compares untouched weights; here both optimizers step)."""
    optim_cls = uni(name)
    weight = Parameter(torch.randn((10, 5)))
    weight_c = weight.detach().clone().requires_grad_(True)
    bias = Parameter(torch.randn(10))
    bias_c = bias.detach().clone().requires_grad_(True)
    inpt = torch.randn(5)
    kwargs = pick(name, index, SKIP_DIFF)
    kwargs.pop("lr", None)
    kwargs["lr"] = 1e-3
    optimizer_r = optim_cls([weight, bias], **kwargs)
    kwargs["lr"] = torch.tensor(kwargs["lr"])
    try:
        optimizer = optim_cls([weight_c, bias_c], **kwargs)
    except ValueError as e:
        # torch accepts this refusal only for configurations it cannot run (foreach, not capturable)
        try:
            native(name)([weight.detach().clone()], **kwargs)
        except ValueError as n:
            assert re.search(".*lr as a Tensor is not supported.*", str(n))
            return
        raise AssertionError(f"torch.optim accepts a tensor lr here; uniopt refused: {e}") from e

    def closure(optim: Optimizer, w: torch.Tensor, b: torch.Tensor, i: torch.Tensor) -> Any:
        optim.zero_grad()
        loss = (w.mv(i) + b).pow(2).sum()
        loss.backward()
        return loss

    before = weight.detach().clone()
    for _ in range(5):
        closure(optimizer_r, weight, bias, inpt)
        closure(optimizer, weight_c, bias_c, inpt)
        optimizer_r.step()
        optimizer.step()
        assert_equal(weight, weight_c)
        assert_equal(bias, bias_c)
    assert not torch.equal(weight.detach(), before)


@pytest.mark.parametrize("with_lrsched", [True, False], ids=["lrsched", "nosched"])
@pytest.mark.parametrize(
    ("name", "index"),
    [p for p in NO_DIFF_FUSED if p.values[0] in ("SGD", "Adagrad")],  # supports_sparse
)
def test_rosenbrock_sparse(name: str, index: int, with_lrsched: bool) -> None:
    """Sparse gradients against dense ones (float64), as torch's test_rosenbrock_sparse."""
    info = INFOS[name]
    dtype = torch.float64
    optim_cls = uni(name)
    all_optim_inputs = _get_optim_inputs_including_global_cliquey_kwargs(
        DEVICE, dtype, info, skip=SKIP_DIFF_FUSED
    )
    kwarg_updates, schedulers_constructors = info.metadata_for_sparse
    if with_lrsched and len(schedulers_constructors) == 0:
        pytest.skip("no sparse schedulers for this optimizer (torch returns early)")
    optim_input = all_optim_inputs[index]
    if kwarg_updates:
        seen: set[Any] = set()
        supported = []
        for i in all_optim_inputs:
            for k in kwarg_updates:
                i.kwargs.pop(k, None)
            hashable = tuple(sorted((k, str(v)) for k, v in i.kwargs.items()))
            if len(i.kwargs) > 0 and hashable not in seen:
                supported.append(i)
                seen.add(hashable)
                if "lr" in kwarg_updates:
                    i.kwargs["lr"] = kwarg_updates["lr"]
        if optim_input not in supported:
            pytest.skip("torch drops this input set here (duplicate once the sparse kwargs are set)")
    kwargs = optim_input.kwargs
    multi_tensor = kwargs.get("foreach", False)
    params_t = (
        [torch.tensor([1.5, 1.5]), torch.tensor([1.5, 1.5], dtype=dtype)]
        if multi_tensor
        else [torch.tensor([1.5, 1.5])]
    )
    params = [Parameter(t) for t in params_t]
    optimizer = optim_cls(params, **kwargs)
    schedulers = [s(optimizer) for s in (schedulers_constructors if with_lrsched else [])]
    params_c = [Parameter(t.clone()) for t in params_t]
    optimizer_c = optim_cls(params_c, **kwargs)
    schedulers_c = [s(optimizer_c) for s in (schedulers_constructors if with_lrsched else [])]
    solution = torch.tensor([1, 1])
    with torch.no_grad():
        initial_dist = sum(p.dist(solution) for p in params)

    def get_grad(param: torch.Tensor, sparse_grad: bool, w: int) -> torch.Tensor:
        grad = drosenbrock(param)
        if sparse_grad:
            if w:
                i = torch.tensor([[0, 0]], dtype=torch.int64)
                x = grad[0]
                v = torch.tensor([x / 4.0, x - x / 4.0])
            else:
                i = torch.tensor([[1, 1]], dtype=torch.int64)
                y = grad[1]
                v = torch.tensor([y - y / 4.0, y / 4.0])
            return torch.sparse_coo_tensor(i, v, (2,), dtype=v.dtype)
        if w:
            return torch.tensor([grad[0], 0], dtype=param.dtype)
        return torch.tensor([0, grad[1]], dtype=param.dtype)

    def evaluate(ps: list[Parameter], sparse_grad: bool, w: int) -> torch.Tensor:
        optimizer.zero_grad()
        loss = sum(rosenbrock(p) for p in ps) if multi_tensor else rosenbrock(ps[0])
        loss.backward()
        grads_out = [get_grad(p, sparse_grad, w) for p in ps]
        with torch.no_grad():
            ps[0].grad = grads_out[0]
            if multi_tensor:
                ps[1].grad = grads_out[1].to(dtype=dtype)
        return loss

    for i in range(1800):
        w = i % 2
        optimizer.step(functools.partial(evaluate, params, True, w))
        for scheduler in schedulers:
            if isinstance(scheduler, ReduceLROnPlateau):
                scheduler.step(rosenbrock(params[0]))
            else:
                scheduler.step()
        optimizer_c.step(functools.partial(evaluate, params_c, False, w))
        for scheduler in schedulers_c:
            if isinstance(scheduler, ReduceLROnPlateau):
                scheduler.step(rosenbrock(params_c[0]))
            else:
                scheduler.step()
        assert_equal(params, params_c, atol=5e-6, rtol=5e-6)
    if not kwargs.get("maximize", False):
        assert sum(p.dist(solution) for p in params) <= initial_dist
    else:
        assert sum(rosenbrock(p) for p in params) >= sum(rosenbrock(t) for t in params_t)


def rosenbrock(tensor: torch.Tensor) -> torch.Tensor:
    x, y = tensor
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def drosenbrock(tensor: torch.Tensor) -> torch.Tensor:
    x, y = tensor
    return torch.stack((-400 * x * (y - x**2) - 2 * (1 - x), 200 * (y - x**2)))


COMPLEX = [p for p in NO_DIFF_FUSED if INFOS[p.values[0]].supports_complex]
"""torch's test_complex and test_complex_2d run the database's optimizers with ``supports_complex``
(``@optims([o for o in optim_db if o.supports_complex], ...)``): not Adafactor, which refuses
complex parameters."""


@pytest.mark.parametrize(("name", "index"), COMPLEX)
def test_complex(name: str, index: int) -> None:
    """Complex parameters step as their real views, bitwise (torch's test_complex)."""
    dtype = torch.complex64
    optim_cls = uni(name)
    kwargs = pick(name, index, SKIP_DIFF_FUSED)
    complex_params = [
        torch.randn(10, 5, dtype=dtype, requires_grad=True),
        torch.randn(10, dtype=dtype, requires_grad=True),
        torch.randn(10, 5, dtype=torch.float32, requires_grad=True),
    ]
    real_params = [
        (
            torch.view_as_real(p).detach().clone().requires_grad_()
            if p.is_complex()
            else p.detach().clone().requires_grad_()
        )
        for p in complex_params
    ]
    complex_optimizer = optim_cls(complex_params, **kwargs)
    real_optimizer = optim_cls(real_params, **copy.deepcopy(kwargs))
    real_steps: list[torch.Tensor] = []
    complex_steps: list[torch.Tensor] = []
    grads_losses: list[torch.Tensor] = []

    def real_closure() -> torch.Tensor:
        for param in real_params:
            grad = torch.randn_like(param)
            param.grad = grad
            real_steps.append(param.detach().clone())
            grads_losses.append(grad.clone())
        loss = torch.randn(1)
        grads_losses.append(loss.clone())
        return loss

    def complex_closure() -> torch.Tensor:
        for param in complex_params:
            if torch.is_complex(param):
                grad = torch.view_as_complex(grads_losses.pop(0))
                complex_steps.append(torch.view_as_real_copy(param.detach()))
            else:
                grad = grads_losses.pop(0)
                complex_steps.append(param.detach().clone())
            param.grad = grad
        return grads_losses.pop(0)

    for _ in range(3):
        real_closure()
        complex_closure()
        real_optimizer.step()
        complex_optimizer.step()
    complex_params_asreal = [torch.view_as_real(p) if p.is_complex() else p for p in complex_params]
    assert_equal(real_params, complex_params_asreal)
    assert_equal(complex_steps, real_steps)


@pytest.mark.parametrize(("name", "index"), COMPLEX)
def test_complex_2d(name: str, index: int) -> None:
    """A complex parameter against its real and imaginary parts as two parameters."""
    case = Case()
    optim_cls = uni(name)
    kwargs = pick(name, index, SKIP_DIFF_FUSED)
    a1 = torch.randn(2, dtype=torch.complex64, requires_grad=True)
    a1_real = a1.real.detach().clone()
    a1_imag = a1.imag.detach().clone()
    a1_real.requires_grad_()
    a1_imag.requires_grad_()
    optim1 = optim_cls([a1], **kwargs)
    optim2 = optim_cls([a1_real, a1_imag], **copy.deepcopy(kwargs))
    a1_reals, a1_imags = TensorTracker(), TensorTracker()
    a1_grad_reals, a1_grad_imags = TensorTracker(), TensorTracker()
    losses = TensorTracker()

    def closure1() -> torch.Tensor:
        optim1.zero_grad()
        loss = rosenbrock(a1).abs()
        loss.backward()
        a1_reals.add(a1.real)
        a1_imags.add(a1.imag)
        a1_grad_reals.add(a1.grad.real)
        a1_grad_imags.add(a1.grad.imag)
        losses.add(loss)
        return loss

    def closure2() -> torch.Tensor:
        optim2.zero_grad()
        a1_reals.pop_check_set(a1_real, case)
        a1_imags.pop_check_set(a1_imag, case)
        a2 = torch.complex(a1_real, a1_imag)
        loss = rosenbrock(a2).abs()
        losses.pop_check_set(loss, case)
        loss.backward()
        a1_grad_reals.pop_check_set(a1_real.grad, case)
        a1_grad_imags.pop_check_set(a1_imag.grad, case)
        return loss

    for _ in range(3):
        closure1()
        closure2()
        optim1.step()
        optim2.step()
        assert_equal(a1.real, a1_real)
        assert_equal(a1.imag, a1_imag)
    assert a1_reals.all_popped() and a1_imags.all_popped() and losses.all_popped()
    assert a1_grad_reals.all_popped() and a1_grad_imags.all_popped()


def _derived(name: str, flag: str, dtype: torch.dtype) -> None:
    """_test_derived_optimizers: the flag False against True, both uniopt.torch."""
    case = Case()
    tol = tolerance(name, f"test_{flag}_matches_forloop", dtype)
    for optim_input in INFOS[name].optim_inputs_func(device=DEVICE, dtype=dtype):
        kwargs = copy.deepcopy(optim_input.kwargs)
        models, optimizers, inputs = [], [], []
        for flag_value in (False, True):
            kwargs[flag] = flag_value
            inpt = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=dtype).reshape(3, 2)
            torch.manual_seed(1)
            model = torch.nn.Sequential(
                torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1), torch.nn.Sigmoid()
            ).to(dtype=dtype)
            empty_param = torch.full((), 0.5, dtype=dtype, requires_grad=True)
            empty_param.grad = torch.rand_like(empty_param)
            params = [*model.parameters(), empty_param]
            optimizers.append(uni(name)(params, **copy.deepcopy(kwargs)))
            models.append(model)
            inputs.append(inpt)
        tracker = TensorTracker(tol)
        for i in range(7):
            state, updated = [], []
            for inpt, model, optimizer in zip(inputs, models, optimizers, strict=True):
                optimizer.zero_grad()
                if i == 3:
                    model[2].requires_grad_(False)
                if i == 5:
                    model[2].requires_grad_(True)
                if i != 2:
                    model(inpt).sum().backward()
                optimizer.step()
                state.append(optimizer.state)
                updated.append(model.parameters())
            og_state, new_state = state
            for og_p, new_p in zip(updated[0], updated[1], strict=True):
                tracker.add(og_p)
                tracker.pop_check_set(new_p, case)
                for k in og_state[og_p]:
                    tracker.add(og_state[og_p][k])
                    tracker.pop_check_set(new_state[new_p][k], case)
        assert tracker.all_popped()


@pytest.mark.parametrize("name", OPTIMS)
def test_foreach_matches_forloop(name: str) -> None:
    _derived(name, "foreach", torch.float64)


@pytest.mark.parametrize(
    "dtype",
    [torch.float64, torch.float32, torch.bfloat16, torch.float16],
    ids=["float64", "float32", "bfloat16", "float16"],
)
@pytest.mark.parametrize("name", [p for p in OPTIMS if "cpu" in INFOS[p.values[0]].supports_fused_on])
def test_fused_matches_forloop(name: str, dtype: torch.dtype) -> None:
    _derived(name, "fused", dtype)


@pytest.mark.parametrize("name", [p for p in OPTIMS if "cpu" in INFOS[p.values[0]].supports_fused_on])
def test_fused_error_on_params_on_meta(name: str) -> None:
    """``fused=True`` over parameters on the meta device: the step raises torch's RuntimeError;
    once the module is materialised on the CPU, steps work."""
    with torch.device("meta"):
        model = torch.nn.Sequential(
            torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1), torch.nn.Sigmoid()
        ).to(torch.float32)
    optimizer = uni(name)(model.parameters(), fused=True)
    with torch.device("meta"):
        for p in model.parameters():
            p.grad = torch.rand_like(p)
    with pytest.raises(
        RuntimeError, match="`fused=True` requires all the params to be floating point Tensors"
    ):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.to_empty(device=DEVICE)
    for p in model.parameters():
        p.grad = torch.rand_like(p)
    optimizer.step()


@pytest.mark.parametrize(("name", "index"), NO_DIFF)
def test_param_groups_weight_decay(name: str, index: int) -> None:
    optim_cls = uni(name)
    weight_kwargs = pick(name, index, SKIP_DIFF)
    bias_kwargs = copy.deepcopy(weight_kwargs)
    bias_kwargs["weight_decay"] = 0.0
    weight = Parameter(torch.randn((10, 5)))
    bias = Parameter(torch.randn(10))
    inpt = torch.randn(5)
    optimizer = optim_cls([dict(params=[weight], **weight_kwargs), dict(params=[bias], **bias_kwargs)])
    loss = (weight.mv(inpt) + bias).pow(2).sum()
    initial_value = loss.item()
    for _ in range(20):
        optimizer.zero_grad()
        loss = (weight.mv(inpt) + bias).pow(2).sum()
        loss.backward()
        optimizer.step()
    if weight_kwargs.get("maximize", False):
        assert loss.item() > initial_value
    else:
        assert loss.item() < initial_value


@pytest.mark.parametrize(("name", "index"), NO_DIFF)
def test_param_groups_lr(name: str, index: int) -> None:
    optim_cls = uni(name)
    kwargs = pick(name, index, SKIP_DIFF)
    if "lr" not in kwargs or kwargs["lr"] == 0:
        kwargs["lr"] = 1e-3
    weight = Parameter(torch.randn((10, 5)))
    bias = Parameter(torch.randn(10))
    irrelevant = Parameter(torch.randn(2))
    irrelevant_clone = irrelevant.clone()
    inpt = torch.randn(5)
    optimizer = optim_cls([dict(params=[weight, bias], **kwargs), dict(params=[irrelevant])], lr=1e-28)
    loss = (weight.mv(inpt) + bias).pow(2).sum()
    initial_value = loss.item()
    for _ in range(20):
        optimizer.zero_grad()
        loss = (weight.mv(inpt) + bias).pow(2).sum()
        loss.backward()
        irrelevant.grad = torch.rand_like(irrelevant)
        optimizer.step()
    if kwargs.get("maximize", False):
        assert loss.item() > initial_value
    else:
        assert loss.item() < initial_value
    assert_equal(irrelevant, irrelevant_clone)


@pytest.mark.parametrize(("name", "index"), ALL)
def test_step_is_noop_when_params_have_no_grad(name: str, index: int) -> None:
    params = [torch.randn(2, 3, requires_grad=False) for _ in range(2)]
    old_params = [p.detach().clone() for p in params]

    def closure() -> torch.Tensor:
        return torch.tensor([1.0])

    optimizer = uni(name)(params, **pick(name, index))
    assert_equal(optimizer.step(closure), torch.tensor([1.0]))
    assert_equal(params, old_params)


@pytest.mark.parametrize(("name", "index"), ALL)
def test_step_is_noop_for_zero_grads(name: str, index: int) -> None:
    param = torch.randn((5, 1), requires_grad=True)
    old_param = param.detach().clone()
    kwargs = pick(name, index)
    if kwargs.get("weight_decay", 0) != 0:
        pytest.skip("torch skips input sets with weight decay (parameters decay without gradient)")
    if name == "AdamW":
        kwargs["lr"] = torch.tensor(1e-5) if isinstance(kwargs.get("lr", 1e-5), torch.Tensor) else 1e-5
    params = [param.clone()] if kwargs.get("differentiable", False) else [param]
    optimizer = uni(name)(params, **kwargs)
    params[0].grad = torch.zeros_like(params[0])
    optimizer.step(lambda: torch.tensor([1.0]))
    assert_equal(params[0], old_param)


@pytest.mark.parametrize(("name", "index"), ALL)
def test_optimizer_can_be_printed(name: str, index: int) -> None:
    params = [Parameter(torch.randn(2, 3)) for _ in range(2)]
    optimizer = uni(name)(params, **pick(name, index))
    text = repr(optimizer)
    assert text.startswith(name) and "Parameter Group 0" in text


def _named(params: list[torch.Tensor], is_named: bool) -> Any:
    return [(f"name{i}", p) for i, p in enumerate(params)] if is_named else params


def _without_param_names(state_dict: dict[str, Any]) -> dict[str, Any]:
    new = copy.deepcopy(state_dict)
    for pg in new["param_groups"]:
        pg.pop("param_names", None)
    return new


@pytest.mark.parametrize("is_named_optim1", [True, False], ids=["named1", "plain1"])
@pytest.mark.parametrize("is_named_optim0", [True, False], ids=["named0", "plain0"])
@pytest.mark.parametrize(("name", "index"), NO_DIFF)
def test_state_dict_deterministic(
    name: str, index: int, is_named_optim0: bool, is_named_optim1: bool
) -> None:
    optim_cls = uni(name)
    kwargs = pick(name, index, SKIP_DIFF)
    weight = Parameter(torch.randn(2, 3))
    bias = Parameter(torch.randn(2))
    inpt = torch.randn(3, requires_grad=True)

    def fwd_bwd(optim: Optimizer, w: torch.Tensor, b: torch.Tensor, i: torch.Tensor) -> Any:
        optim.zero_grad()
        loss = (w.mv(i) + b).pow(2).sum()
        loss.backward()
        return loss

    optimizer = optim_cls(_named([weight, bias], is_named_optim0), **copy.deepcopy(kwargs))
    closure = functools.partial(fwd_bwd, optimizer, weight, bias, inpt)
    for _ in range(10):
        closure()
        optimizer.step()
    with torch.no_grad():
        weight_c = Parameter(weight.clone())
        bias_c = Parameter(bias.clone())
    optimizer_c = optim_cls(_named([weight_c, bias_c], is_named_optim1), **copy.deepcopy(kwargs))
    closure_c = functools.partial(fwd_bwd, optimizer_c, weight_c, bias_c, inpt)
    optimizer_c.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for _ in range(10):
        closure()
        closure_c()
        optimizer.step()
        optimizer_c.step()
        assert_equal(weight, weight_c)
        assert_equal(bias, bias_c)
    assert_equal(_without_param_names(optimizer.state_dict()), _without_param_names(optimizer_c.state_dict()))
    optimizer_c.param_groups.extend(optimizer_c.param_groups)
    assert_equal(
        _without_param_names(optimizer.state_dict())["param_groups"][-1],
        _without_param_names(optimizer_c.state_dict())["param_groups"][-1],
    )


def _conv_model() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(4, 2, 1, stride=2), torch.nn.BatchNorm2d(2, eps=1e-05, momentum=0.1)
    )
    return model, torch.rand(1, 4, 16, 16)


def _fwd_bwd(optim: Optimizer, mod: torch.nn.Module, i: torch.Tensor) -> torch.Tensor:
    optim.zero_grad()
    loss = mod(i).sum()
    loss.backward()
    return loss


@pytest.mark.parametrize(("name", "index"), NO_DIFF)
def test_can_load_older_state_dict(name: str, index: int) -> None:
    """A state_dict without the group keys torch.optim added later (``not_og_supported_flags``)."""
    kwargs = pick(name, index, SKIP_DIFF)
    model, inpt = _conv_model()
    optimizer = uni(name)(model.parameters(), **kwargs)
    for _ in range(3):
        _fwd_bwd(optimizer, model, inpt)
        optimizer.step()
    old_state_dict = copy.deepcopy(optimizer.state_dict())
    for group in old_state_dict["param_groups"]:
        for flag in INFOS[name].not_og_supported_flags:
            group.pop(flag, None)
    optimizer.load_state_dict(old_state_dict)
    _fwd_bwd(optimizer, model, inpt)
    optimizer.step()


@pytest.mark.parametrize(("name", "index"), NO_DIFF)
def test_can_load_older_state_dict_steps_as_native(name: str, index: int) -> None:
    """After loading a state_dict without those keys, uniopt steps as torch.optim does after
    loading the same (older) dict: the missing keys take the constructor's values. (On the linear
    model: the conv+batchnorm model's summed output has gradients of rounding-noise size.)"""
    kwargs = pick(name, index, SKIP_DIFF)
    results = []
    for factory in (native(name), uni(name)):
        torch.manual_seed(5)
        weight = Parameter(torch.randn(10, 5))
        bias = Parameter(torch.randn(10))
        inpt = torch.randn(5)
        optimizer = factory([weight, bias], **copy.deepcopy(kwargs))
        for _ in range(3):
            _linear_loss(optimizer, weight, bias, inpt)
            optimizer.step()
        old = copy.deepcopy(optimizer.state_dict())
        for group in old["param_groups"]:
            for flag in INFOS[name].not_og_supported_flags:
                group.pop(flag, None)
        optimizer.load_state_dict(old)
        _linear_loss(optimizer, weight, bias, inpt)
        optimizer.step()
        results.append([weight.detach().clone(), bias.detach().clone()])
    assert_equal(results[1], results[0])


@pytest.mark.parametrize(("name", "index"), NO_DIFF)
def test_continues_torch_optim_checkpoint(name: str, index: int) -> None:
    """A torch.optim checkpoint (state_dict after 3 steps) loaded with
    ``uniopt.torch.load_torch_optim_state_dict`` continues as torch.optim continues it: the same
    parameters after 4 more steps on the same gradients (torch's default tolerances)."""
    kwargs = pick(name, index, SKIP_DIFF)
    torch.manual_seed(6)
    weight = Parameter(torch.randn(10, 5))
    bias = Parameter(torch.randn(10))
    inpt = torch.randn(5)
    ref = native(name)([weight, bias], **copy.deepcopy(kwargs))
    for _ in range(3):
        _linear_loss(ref, weight, bias, inpt)
        ref.step()
    checkpoint = copy.deepcopy(ref.state_dict())
    weight_c = Parameter(weight.detach().clone())
    bias_c = Parameter(bias.detach().clone())
    opt = uni(name)([weight_c, bias_c], **copy.deepcopy(kwargs))
    step = {"step": 3} if name == "SGD" and kwargs.get("momentum", 0) else {}
    uniopt.torch.load_torch_optim_state_dict(opt, checkpoint, **step)
    for _ in range(4):
        _linear_loss(ref, weight, bias, inpt)
        _linear_loss(opt, weight_c, bias_c, inpt)
        ref.step()
        opt.step()
    assert_equal([weight_c, bias_c], [weight, bias])


@pytest.mark.parametrize("is_named_optim1", [True, False], ids=["named1", "plain1"])
@pytest.mark.parametrize("is_named_optim0", [True, False], ids=["named0", "plain0"])
@pytest.mark.parametrize(("name", "index"), NO_DIFF)
def test_can_load_from_to_named_state_dict(
    name: str, index: int, is_named_optim0: bool, is_named_optim1: bool
) -> None:
    kwargs = pick(name, index, SKIP_DIFF)
    model, inpt = _conv_model()
    optimizer = uni(name)(
        model.named_parameters() if is_named_optim0 else model.parameters(), **copy.deepcopy(kwargs)
    )
    for _ in range(3):
        _fwd_bwd(optimizer, model, inpt)
        optimizer.step()
    old_state_dict = copy.deepcopy(optimizer.state_dict())
    optimizer2 = uni(name)(
        model.named_parameters() if is_named_optim1 else model.parameters(), **copy.deepcopy(kwargs)
    )
    optimizer2.load_state_dict(old_state_dict)
    _fwd_bwd(optimizer2, model, inpt)
    optimizer2.step()
    if is_named_optim0 or is_named_optim1:
        assert optimizer2.state_dict()["param_groups"][0]["param_names"] == [
            "0.weight",
            "0.bias",
            "1.weight",
            "1.bias",
        ]


@pytest.mark.parametrize("is_named_optim", [True, False], ids=["named", "plain"])
@pytest.mark.parametrize(("name", "index"), NO_DIFF)
def test_save_load_equality_with_weights_only(name: str, index: int, is_named_optim: bool) -> None:
    weight = Parameter(torch.randn(2, 3))
    bias = Parameter(torch.randn(2))
    inpt = torch.randn(3, requires_grad=True)
    optimizer = uni(name)(_named([weight, bias], is_named_optim), **pick(name, index, SKIP_DIFF))

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = (weight.mv(inpt) + bias).pow(2).sum()
        loss.backward()
        return loss

    for _ in range(3):
        optimizer.step(closure)
    sd = optimizer.state_dict()
    with tempfile.TemporaryFile() as f:
        torch.save(sd, f)
        f.seek(0)
        assert_equal(torch.load(f), sd)
        f.seek(0)
        assert_equal(torch.load(f, weights_only=True), sd)


@pytest.mark.parametrize(("name", "index"), NO_DIFF)
def test_load_nontensor_step(name: str, index: int) -> None:
    params = [Parameter(torch.randn(2, 3)) for _ in range(2)]
    for p in params:
        p.grad = torch.rand_like(p)
    optimizer = uni(name)(params, **pick(name, index, SKIP_DIFF))
    for _ in range(3):
        optimizer.step()
    state_dict = copy.deepcopy(optimizer.state_dict())
    for p_state in state_dict["state"].values():
        if "step" in p_state and torch.is_tensor(p_state["step"]):
            p_state["step"] = p_state["step"].item()
    optimizer.load_state_dict(state_dict)
    optimizer.step()


def _state_dict_pre_hook(optimizer: Optimizer) -> None:
    optimizer.state["test"] = 1


def _state_dict_post_hook(optimizer: Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    if "test" in state_dict["state"]:
        state_dict["state"].pop("test")
        state_dict["ran_state_dict_pre_hook"] = True
    else:
        state_dict["ran_state_dict_pre_hook"] = False
    return state_dict


def _load_state_dict_pre_hook1(optimizer: Optimizer, state_dict: dict[str, Any]) -> None:
    state_dict["param_groups"][0]["lr"] = 0.002


def _load_state_dict_pre_hook2(optimizer: Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    my_state_dict = copy.deepcopy(state_dict)
    my_state_dict["param_groups"][0]["lr"] = 0.003
    return my_state_dict


def _load_state_dict_post_hook(optimizer: Optimizer) -> None:
    optimizer.state["ran_load_state_dict_pre_hook2"] = optimizer.param_groups[0]["lr"] == 0.003
    optimizer.state["ran_load_state_dict_post_hook"] = True


def _one_param_optim(name: str, index: int) -> Optimizer:
    param = torch.rand(2, 3, requires_grad=True)
    return uni(name)([param], **pick(name, index))


@pytest.mark.parametrize(("name", "index"), ALL)
def test_state_dict_pre_hook(name: str, index: int) -> None:
    optim = _one_param_optim(name, index)
    optim.register_state_dict_pre_hook(_state_dict_pre_hook)
    assert optim.state_dict()["state"]["test"] == 1


@pytest.mark.parametrize(("name", "index"), ALL)
def test_state_dict_post_hook(name: str, index: int) -> None:
    optim = _one_param_optim(name, index)
    optim.register_state_dict_post_hook(_state_dict_post_hook)
    assert not optim.state_dict()["ran_state_dict_pre_hook"]


@pytest.mark.parametrize(("name", "index"), ALL)
def test_state_dict_pre_post_hook(name: str, index: int) -> None:
    optim = _one_param_optim(name, index)
    optim.register_state_dict_pre_hook(_state_dict_pre_hook)
    optim.register_state_dict_post_hook(_state_dict_post_hook)
    state_dict = optim.state_dict()
    assert "test" not in state_dict["state"]
    assert state_dict["ran_state_dict_pre_hook"]


@pytest.mark.parametrize(("name", "index"), ALL)
def test_load_state_dict_pre_hook_and_prepend(name: str, index: int) -> None:
    optim = _one_param_optim(name, index)
    state_dict = optim.state_dict()
    optim.register_load_state_dict_pre_hook(_load_state_dict_pre_hook1)
    optim.load_state_dict(state_dict)
    assert optim.param_groups[0]["lr"] == 0.002
    optim.register_load_state_dict_pre_hook(_load_state_dict_pre_hook2, prepend=True)
    optim.load_state_dict(state_dict)
    assert optim.param_groups[0]["lr"] == 0.002


@pytest.mark.parametrize(("name", "index"), ALL)
def test_load_state_dict_post_hook(name: str, index: int) -> None:
    optim = _one_param_optim(name, index)
    optim.register_load_state_dict_post_hook(_load_state_dict_post_hook)
    optim.load_state_dict(optim.state_dict())
    assert not optim.state["ran_load_state_dict_pre_hook2"]
    assert optim.state["ran_load_state_dict_post_hook"]


@pytest.mark.parametrize(("name", "index"), ALL)
def test_load_state_dict_pre_post_hook(name: str, index: int) -> None:
    optim = _one_param_optim(name, index)
    optim.register_load_state_dict_pre_hook(_load_state_dict_pre_hook2)
    optim.register_load_state_dict_post_hook(_load_state_dict_post_hook)
    optim.load_state_dict(optim.state_dict())
    assert optim.state["ran_load_state_dict_pre_hook2"]
    assert optim.state["ran_load_state_dict_post_hook"]


@pytest.mark.parametrize(("name", "index"), ALL)
def test_step_post_hook(name: str, index: int) -> None:
    data = 2

    def post_hook(opt: Optimizer, args: tuple[Any], kwargs: dict[Any, Any]) -> None:
        nonlocal data
        data += 2

    optim = uni(name)([torch.tensor([1.0, 1.0])], **pick(name, index))
    hook_handle = optim.register_step_post_hook(post_hook)
    optim.step()
    optim.step()
    assert data == 6
    hook_handle.remove()
    optim.step()
    assert data == 6


@pytest.mark.parametrize(("name", "index"), ALL)
def test_step_pre_hook(name: str, index: int) -> None:
    data = 5

    def pre_hook(opt: Optimizer, args: tuple[Any], kwargs: dict[Any, Any]) -> None:
        nonlocal data
        data += 2

    optim = uni(name)([torch.tensor([1.0, 1.0])], **pick(name, index))
    hook_handle = optim.register_step_pre_hook(pre_hook)
    optim.step()
    optim.step()
    assert data == 9
    hook_handle.remove()
    optim.step()
    assert data == 9


@pytest.mark.parametrize(("name", "index"), ALL)
def test_step_all_hooks(name: str, index: int) -> None:
    data: list[int] = []

    def global_pre_hook(opt: Optimizer, args: Any, kwargs: Any) -> None:
        data.append(0)

    def global_post_hook(opt: Optimizer, args: Any, kwargs: Any) -> None:
        data.append(5)

    def local_pre_hook(opt: Optimizer, args: Any, kwargs: Any) -> None:
        data.append(1)

    def local_post_hook(opt: Optimizer, args: Any, kwargs: Any) -> None:
        data.append(2)

    params = [torch.tensor([1.0, 1.0])]
    optim = uni(name)(params, **pick(name, index))
    optim2 = torch.optim.SGD(params)
    handles = [
        register_optimizer_step_pre_hook(global_pre_hook),
        register_optimizer_step_post_hook(global_post_hook),
        optim.register_step_pre_hook(local_pre_hook),
        optim.register_step_post_hook(local_post_hook),
        optim2.register_step_pre_hook(local_pre_hook),
        optim2.register_step_post_hook(local_post_hook),
    ]
    try:
        optim.step()
        assert data == [0, 1, 2, 5]
        optim2.step()
        assert data == [0, 1, 2, 5, 0, 1, 2, 5]
        optim.step()
        assert data == [0, 1, 2, 5, 0, 1, 2, 5, 0, 1, 2, 5]
    finally:
        for h in handles:
            h.remove()
    optim.step()
    optim2.step()
    assert data == [0, 1, 2, 5, 0, 1, 2, 5, 0, 1, 2, 5]


@pytest.mark.parametrize(("name", "index"), NO_DIFF)
def test_deepcopy_copies_all_public_attrs(name: str, index: int) -> None:
    params = [Parameter(torch.randn(2, 3)) for _ in range(2)]
    for p in params:
        p.grad = torch.rand_like(p)
    optimizer = uni(name)(params, **pick(name, index, SKIP_DIFF))
    for _ in range(3):
        optimizer.step()

    def public(obj: Any) -> set[str]:
        return {k for k in obj.__dict__ if not k.startswith("_")}

    assert public(optimizer) == public(copy.deepcopy(optimizer))


@pytest.mark.parametrize(("name", "index"), BASE)
def test_non_empty_state(name: str, index: int) -> None:
    model = torch.nn.Linear(5, 5)
    optim = uni(name)(model.parameters(), **base_inputs(name)[index].kwargs)
    optim.zero_grad()
    model(torch.rand(2, 5)).sum().backward()
    optim.step()
    # torch.optim.SGD without momentum keeps no state, so torch's loop below checks nothing there;
    # uniopt keeps ``step`` for every optimizer (docs/torch.md), so both parameters have state
    assert len(optim.state) == 2
    for state in optim.state.values():
        assert len(state) > 0


# -- contract points of torch's older suite, judged against the native optimizer -----------------
def _both(name: str, build: Callable[[Callable[..., Optimizer]], Any]) -> tuple[Any, Any]:
    return build(native(name)), build(uni(name))


@pytest.mark.parametrize("capturable", [False, True], ids=["capturable_off", "capturable_on"])
@pytest.mark.parametrize("name", [p for p in OPTIMS if INFOS[p.values[0]].has_capturable_arg])
def test_capturable_argument(name: str, capturable: bool) -> None:
    """``capturable=`` is a constructor argument of torch.optim's RMSprop, Adam, AdamW and RAdam:
    it is accepted at construction and kept in the group, as torch.optim does (stepping
    ``capturable=True`` on CPU parameters is refused by torch.optim's step, not compared here)."""
    groups = []
    for factory in (native(name), uni(name)):
        opt = factory([Parameter(torch.randn(3))], capturable=capturable)
        groups.append(opt.param_groups[0].get("capturable"))
    assert groups[1] == groups[0]
    if not capturable:
        p = Parameter(torch.randn(3))
        opt = uni(name)([p], capturable=False)
        p.grad = torch.randn(3)
        opt.step()


@pytest.mark.parametrize("name", OPTIMS)
def test_positional_arguments(name: str) -> None:
    """torch.optim's positional arguments at their positions: every positional parameter of the
    native constructor after ``params``, given by position (``lr`` changed so that a shift shows),
    makes the same param group as torch.optim's."""
    sig = inspect.signature(native(name).__init__)
    positional = [
        p
        for p in list(sig.parameters.values())[2:]  # after self, params
        if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    ]
    assert positional and positional[0].name == "lr"
    values = [0.0123] + [p.default for p in positional[1:]]
    ref, opt = _both(name, lambda f: f([Parameter(torch.randn(3))], *values))
    common = set(ref.param_groups[0]) - {"params"}
    assert common <= set(opt.param_groups[0])
    assert {k: opt.param_groups[0][k] for k in common} == {k: ref.param_groups[0][k] for k in common}


@pytest.mark.parametrize("name", OPTIMS)
def test_duplicate_params_in_param_group(name: str) -> None:
    """torch's test_duplicate_params_in_param_group: exactly one UserWarning naming the duplicate;
    the group keeps the parameter once or twice as torch.optim does."""
    param = Parameter(torch.randn(5, 5))
    results = []
    for factory in (native(name), uni(name)):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            opt = factory([param, param], lr=0.1)
        messages = [str(x.message) for x in w if issubclass(x.category, UserWarning)]
        results.append((messages, len(opt.param_groups[0]["params"])))
    (_, native_len), (msgs, n) = results
    assert len(msgs) == 1 and "a parameter group with duplicate parameters" in msgs[0], msgs
    assert n == native_len


@pytest.mark.parametrize("name", OPTIMS)
def test_params_as_generator_of_tensors(name: str) -> None:
    model = torch.nn.Linear(3, 2)
    ref, opt = _both(name, lambda f: f(p for p in model.parameters()))
    assert [len(g["params"]) for g in opt.param_groups] == [len(g["params"]) for g in ref.param_groups]


@pytest.mark.parametrize("name", OPTIMS)
def test_param_groups_as_generator_of_dicts(name: str) -> None:
    """Param groups given as a generator of dicts, each with a generator of parameters."""
    model = torch.nn.Linear(3, 2)

    def groups() -> Iterator[dict[str, Any]]:
        yield {"params": (p for p in [model.weight])}
        yield {"params": iter([model.bias]), "lr": 0.5}

    ref, opt = _both(name, lambda f: f(groups()))
    assert [[id(p) for p in g["params"]] for g in opt.param_groups] == [
        [id(p) for p in g["params"]] for g in ref.param_groups
    ]
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in ref.param_groups]


@pytest.mark.parametrize("name", OPTIMS)
def test_param_groups_with_named_params(name: str) -> None:
    """Named parameters in param groups (dicts of ``(name, tensor)`` lists): the same groups,
    ``param_names`` and steps as torch.optim; state_dict carries the names."""
    results = []
    for factory in (native(name), uni(name)):
        torch.manual_seed(3)
        model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
        named = list(model.named_parameters())
        opt = factory(
            [
                {"params": [(n, p) for n, p in named if n.endswith("weight")]},
                {"params": [(n, p) for n, p in named if n.endswith("bias")], "lr": 0.01},
            ]
        )
        x = torch.randn(5, 4)
        for _ in range(3):
            opt.zero_grad()
            model(x).sum().backward()
            opt.step()
        sd = opt.state_dict()
        results.append(
            (
                [g.get("param_names") for g in opt.param_groups],
                [g.get("param_names") for g in sd["param_groups"]],
                [p.detach().clone() for p in model.parameters()],
            )
        )
    (n_groups, n_sd, n_params), (u_groups, u_sd, u_params) = results
    assert u_groups == n_groups
    assert u_sd == n_sd
    assert_equal(u_params, n_params)


@pytest.mark.parametrize("name", OPTIMS)
def test_add_param_group_with_named_params(name: str) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
    named = list(model.named_parameters())
    ref, opt = _both(name, lambda f: f(named[:2]))
    for o in (ref, opt):
        o.add_param_group({"params": named[2:], "lr": 0.5})
    assert [g.get("param_names") for g in opt.param_groups] == [
        g.get("param_names") for g in ref.param_groups
    ]


@pytest.mark.parametrize("set_to_none", [True, False], ids=["set_to_none", "zeros"])
@pytest.mark.parametrize("name", OPTIMS)
def test_zero_grad(name: str, set_to_none: bool) -> None:
    for factory in (native(name), uni(name)):
        p = Parameter(torch.randn(3))
        p.grad = torch.randn(3)
        factory([p]).zero_grad(set_to_none=set_to_none)
        if set_to_none:
            assert p.grad is None
        else:
            assert_equal(p.grad, torch.zeros(3))


@pytest.mark.parametrize("name", OPTIMS)
def test_step_returns_closure_loss(name: str) -> None:
    p = Parameter(torch.randn(3))

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (p * p).sum()
        loss.backward()
        return loss

    opt = uni(name)([p])
    before = p.detach().clone()
    loss = opt.step(closure)
    assert_equal(loss, (before * before).sum())
    assert not torch.equal(p.detach(), before)


@pytest.mark.parametrize("name", OPTIMS)
def test_pickle_round_trip(name: str) -> None:
    """A pickled and unpickled optimizer continues as the original (torch.optim's contract;
    pickled together with its parameters, as in a checkpointed module)."""
    model = torch.nn.Linear(3, 2)
    opt = uni(name)(model.parameters(), **({"momentum": 0.9} if name in ("SGD", "RMSprop") else {}))
    x = torch.randn(4, 3)
    for _ in range(2):
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
    buf = io.BytesIO()
    pickle.dump((model, opt), buf)
    model2, opt2 = pickle.loads(buf.getvalue())
    assert [id(p) for p in opt2.param_groups[0]["params"]] == [id(p) for p in model2.parameters()]
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(x).sum().backward()
        o.step()
    assert_equal(list(model2.parameters()), list(model.parameters()))


@pytest.mark.parametrize("name", OPTIMS)
def test_step_state_dtype_device(name: str) -> None:
    """``state[p]["step"]``: dtype and device as torch.optim's (non-capturable, non-fused)."""
    native_step, uni_step = _both(name, lambda f: _step_of(f))
    if native_step is None:
        assert uni_step is None or torch.is_tensor(uni_step)
        return
    assert torch.is_tensor(uni_step)
    assert (uni_step.dtype, uni_step.device, uni_step.shape) == (
        native_step.dtype,
        native_step.device,
        native_step.shape,
    )


def _step_of(factory: Callable[..., Optimizer]) -> Any:
    p = Parameter(torch.randn(3))
    p.grad = torch.randn(3)
    opt = factory([p])
    opt.step()
    return opt.state[p].get("step")


@pytest.mark.parametrize("name", OPTIMS)
def test_state_at_construction(name: str) -> None:
    """The state an optimizer holds before its first step (torch.optim.Adagrad creates ``sum`` and
    ``step`` in its constructor; the others create nothing)."""
    keys = []
    for factory in (native(name), uni(name)):
        p = Parameter(torch.randn(3))
        opt = factory([p])
        keys.append(sorted(opt.state[p]) if p in opt.state else [])
    assert keys[1] == keys[0]


@pytest.mark.parametrize("name", OPTIMS)
def test_share_memory(name: str) -> None:
    """``share_memory()`` (torch.optim.Adagrad's) moves the same state entries to shared memory
    as torch.optim's, before and after a step."""
    if not hasattr(native(name), "share_memory"):
        pytest.skip(f"torch.optim.{name} has no share_memory()")
    shared = []
    for factory in (native(name), uni(name)):
        p = Parameter(torch.randn(3))
        opt = factory([p])
        opt.share_memory()
        before = {k: v.is_shared() for k, v in opt.state[p].items() if torch.is_tensor(v)}
        p.grad = torch.randn(3)
        opt.step()
        after = {k: v.is_shared() for k, v in opt.state[p].items() if torch.is_tensor(v)}
        shared.append((before, after))
    assert shared[1] == shared[0]
    assert any(shared[0][0].values())  # the native shares something: the check can fail


@pytest.mark.parametrize("name", OPTIMS)
def test_lr_tensor_in_state_dict(name: str) -> None:
    """A tensor ``lr`` stays a tensor in the group and in state_dict, as in torch.optim."""
    ref, opt = _both(name, lambda f: f([Parameter(torch.randn(3))], lr=torch.tensor(0.01)))
    assert torch.is_tensor(ref.param_groups[0]["lr"])
    assert torch.is_tensor(opt.param_groups[0]["lr"])
    assert torch.is_tensor(opt.state_dict()["param_groups"][0]["lr"])


@pytest.mark.parametrize("name", OPTIMS)
def test_maximize_is_negated_minimize(name: str) -> None:
    """maximize=True on g steps exactly as maximize=False on -g (both uniopt, as torch's own
    maximize is defined)."""
    torch.manual_seed(4)
    grads = [torch.randn(4) for _ in range(4)]
    out = []
    for maximize, sign in ((True, 1.0), (False, -1.0)):
        p = Parameter(torch.ones(4))
        opt = uni(name)([p], maximize=maximize)
        for g in grads:
            p.grad = sign * g
            opt.step()
        out.append(p.detach().clone())
    assert_equal(out[0], out[1], atol=0.0, rtol=0.0)
