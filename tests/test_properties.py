"""Invariants of the update rules, checked on generated inputs (hypothesis)."""

from __future__ import annotations

import array_api_compat.numpy
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from namespaces import to_namespace, to_numpy

import uniopt
from uniopt._spec import cast_scalars
from uniopt.registry import TABLE

DTYPES = [np.float32, np.float64]
finite = {"allow_nan": False, "allow_infinity": False}


def vectors(dtype):
    return st.integers(1, 6).flatmap(
        lambda size: st.tuples(
            arrays(dtype, size, elements=st.floats(-1e3, 1e3, width=32, **finite)),
            arrays(dtype, size, elements=st.floats(-1e3, 1e3, width=32, **finite)),
        )
    )


def as_accepted(spec, array):
    """``array`` as a matrix where ``spec`` refuses vectors (Muon's uniopt and torch conventions
    take 2-D parameters only): a row for an even size, a column otherwise (Muon iterates on the
    transpose of a tall matrix), so both orientations are exercised."""
    if spec.param_refusal(tuple(array.shape)) is None:
        return array
    n = array.shape[0]
    return array.reshape((1, n) if n % 2 == 0 else (n, 1))


def run(spec, param, grads, xp_name="numpy"):
    """The parameter after ``grads`` (flattened back to ``param``'s shape) and the state."""
    params = [to_namespace(xp_name, as_accepted(spec, param))]
    state = spec.init(params)
    for g in grads:
        params, state = spec.update([to_namespace(xp_name, as_accepted(spec, g))], state, params)
    return to_numpy(params[0]).reshape(param.shape), state


ALL_CASES = [(info, case) for info in TABLE for case in info.cases]
case_strategy = st.sampled_from(ALL_CASES)
# the optimizers with a maximize flag (torch.optim's; the Schedule-Free package has none)
MAXIMIZING = st.sampled_from([(i, c) for i, c in ALL_CASES if "maximize" in i.spec.__dataclass_fields__])


def decays_without_lr(info, case) -> bool:
    """Whether the case's weight decay is not scaled by the learning rate, so that lr = 0 still
    decays the parameters: Adafactor's optax convention (optax.adafactor appends
    ``add_decayed_weights(weight_decay_rate)`` after ``scale_by_learning_rate``, optax
    ``_src/alias.py``)."""
    optax = info.name == "Adafactor" and case.kwargs.get("convention") == "optax"
    return optax and bool(case.kwargs.get("weight_decay"))


def recomputes_params(info, case) -> bool:
    """Whether the case's rule rebuilds the parameter from other state every step, as its framework
    does, so that lr = 0 still moves it by rounding: Schedule-Free AdamW's keras and optax
    conventions recover x from y and z and form y again (Keras's update_step; optax's
    schedule_free, whose lr-0 runs move by a few ulp natively too)."""
    return info.name == "ScheduleFreeAdamW" and case.kwargs.get("convention") in ("keras", "optax")


@settings(max_examples=60, deadline=None)
@given(data=vectors(np.float32), steps=st.integers(1, 4), mu=st.floats(0, 0.99), nesterov=st.booleans())
def test_zero_gradients_leave_sgd_without_weight_decay_unchanged(data, steps, mu, nesterov):
    param, _ = data
    spec = uniopt.SGD(lr=0.1, momentum=mu if mu > 0 or not nesterov else 0.5, nesterov=nesterov)
    out, _ = run(spec, param, [np.zeros_like(param)] * steps)
    np.testing.assert_array_equal(out, param)


@settings(max_examples=80, deadline=None)
@given(data=vectors(np.float32), steps=st.integers(1, 8), case=MAXIMIZING)
def test_maximize_is_descent_on_the_negated_gradient(data, steps, case):
    info, c = case
    kwargs = {**c.kwargs, "maximize": False}
    if kwargs.get("weight_decay"):
        kwargs["weight_decay"] = 0.0  # with L2 decay the sign flip applies before the decay term
    param, g = data
    grads = [g * np.float32(k + 1) for k in range(steps)]
    up, _ = run(info.spec(**{**kwargs, "maximize": True}), param, grads)
    down, _ = run(info.spec(**kwargs), param, [-x for x in grads])
    np.testing.assert_array_equal(up, down)


@settings(max_examples=80, deadline=None)
@given(data=vectors(np.float64), steps=st.integers(1, 8), case=case_strategy)
def test_zero_learning_rate_changes_nothing(data, steps, case):
    info, c = case
    param, g = data
    out, state = run(info.spec(**{**c.kwargs, "lr": 0.0}), param, [g] * steps)
    if decays_without_lr(info, c):  # optax.adafactor: add_decayed_weights after the lr scaling
        want, wd = np.array(param, copy=True), c.kwargs["weight_decay"]
        for _ in range(steps):
            want = want - wd * want
        np.testing.assert_array_equal(out, want)
    elif recomputes_params(info, c):  # a rounding of the round trip y -> x -> y per step, no more
        np.testing.assert_allclose(out, param, rtol=8 * steps * np.finfo(np.float64).eps, atol=0)
    else:
        np.testing.assert_array_equal(out, param)
    assert state.step == steps


@settings(max_examples=60, deadline=None)
@given(data=vectors(np.float64), case=case_strategy)
def test_update_is_pure(data, case):
    info, c = case
    spec = info.make(c)
    param, g = data
    params, grads = [as_accepted(spec, param.copy())], [as_accepted(spec, g.copy())]
    state = spec.init(params)
    before = [{k: v.copy() for k, v in s.items()} for s in state.slots]
    spec.update(grads, state, params)
    np.testing.assert_array_equal(params[0].reshape(param.shape), param)
    np.testing.assert_array_equal(grads[0].reshape(g.shape), g)
    for slots, saved in zip(state.slots, before, strict=True):
        for name, value in saved.items():
            np.testing.assert_array_equal(slots[name], value)


@settings(max_examples=40, deadline=None)
@given(data=vectors(np.float32), steps=st.integers(1, 6), case=case_strategy, dtype=st.sampled_from(DTYPES))
def test_array_api_strict_matches_numpy_bitwise(data, steps, case, dtype):
    info, c = case
    param, g = (a.astype(dtype) for a in data)
    grads = [g * dtype(k - 2) for k in range(steps)]
    a, sa = run(info.make(c), param, grads, "numpy")
    if info.name == "Muon" and c.kwargs.get("convention") == "torch":
        # torch.optim.Muon's bfloat16 rounding: the array API standard has no bfloat16
        with pytest.raises(ValueError, match="array_api_strict has no bfloat16 dtype"):
            run(info.make(c), param, grads, "array_api_strict")
        return
    b, sb = run(info.make(c), param, grads, "array_api_strict")
    np.testing.assert_array_equal(a, b)
    for name in sa.slots[0]:
        np.testing.assert_array_equal(sa.slots[0][name], to_numpy(sb.slots[0][name]))


@settings(max_examples=50, deadline=None)
@given(data=vectors(np.float64), steps=st.integers(1, 10))
def test_adagrad_accumulator_never_decreases(data, steps):
    param, g = data
    spec = uniopt.Adagrad(lr=0.1)
    params = [param]
    state = spec.init(params)
    previous = state.slots[0]["sum"]
    for k in range(steps):
        params, state = spec.update([g * (k % 3 - 1)], state, params)
        assert np.all(state.slots[0]["sum"] >= previous)
        previous = state.slots[0]["sum"]


@settings(max_examples=50, deadline=None)
@given(data=vectors(np.float64), steps=st.integers(1, 10), name=st.sampled_from(["Adam", "AdamW"]))
def test_amsgrad_keeps_the_running_maximum_of_v(data, steps, name):
    param, g = data
    spec = getattr(uniopt, name)(lr=0.01, amsgrad=True)
    params = [param]
    state = spec.init(params)
    for k in range(steps):
        previous = state.slots[0]["max_exp_avg_sq"]
        params, state = spec.update([g / (k + 1)], state, params)
        slots = state.slots[0]
        assert np.all(slots["max_exp_avg_sq"] >= slots["exp_avg_sq"])
        assert np.all(slots["max_exp_avg_sq"] >= previous)


@settings(max_examples=50, deadline=None)
@given(data=vectors(np.float64), name=st.sampled_from(["Adam", "AdamW", "RAdam"]))
def test_adam_family_first_step_moves_each_entry_at_most_lr(data, name):
    param, g = data
    spec = getattr(uniopt, name)(lr=0.05, weight_decay=0.0)
    out, _ = run(spec, param, [g])
    # Adam: lr * g / (|g| + eps); RAdam's unrectified first step: lr * (1-b1) g / (1-b1) = lr * g
    bound = 0.05 if name != "RAdam" else 0.05 * np.abs(g)
    # plus the rounding of p - delta, at most one spacing of |p| (and of the moved value)
    rounding = np.spacing(np.abs(param)) + np.spacing(np.abs(out))
    assert np.all(np.abs(out - param) <= bound * (1 + 1e-12) + rounding)


@pytest.mark.parametrize("dtype", DTYPES)
def test_scalars_are_rounded_once_to_the_param_dtype(dtype):
    spec = uniopt.RAdam(lr=0.003)
    params = [np.ones(2, dtype)]
    sc = spec.step_scalars(7)
    rounded = cast_scalars(sc, params[0], array_api_compat.numpy)
    for host, value in zip(sc, rounded, strict=True):
        if isinstance(host, bool):
            assert value is host
        else:
            assert value.dtype == dtype
            assert value == dtype(host)  # numpy's float64 -> dtype is round-to-nearest-even
