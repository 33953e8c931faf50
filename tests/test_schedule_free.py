"""Schedule-Free AdamW's own contract in the core: its history, the evaluation view x and the
porting of both (the update itself: test_hand_steps.py and test_paper_reference.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import uniopt
from uniopt.porting import export_state, import_state
from uniopt.schedule_free_adamw import History

P0 = np.array([1.0, -2.0, 0.5, 0.0])


def grads(n, seed=3):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(P0.shape) for _ in range(n)]


def run(spec, gs, lrs=None, params=None, state=None):
    params = [P0.copy()] if params is None else params
    state = spec.init(params) if state is None else state
    for t, g in enumerate(gs):
        kwargs = {} if lrs is None else {"lr": lrs[t]}
        params, state = spec.update([g], state, params, **kwargs)
    return params, state


def test_history_is_the_packages_running_sums():
    """weight_sum = sum of lr_max_t^2, lr_max the largest warmed-up lr so far (the package's
    group['weight_sum'] and group['lr_max']), by hand for a learning rate that rises and falls."""
    spec = uniopt.ScheduleFreeAdamW(lr=0.01, warmup_steps=2)
    lrs = [0.02, 0.01, 0.05, 0.01]
    _, state = run(spec, grads(4), lrs)
    warmed = [0.02 * 1 / 2, 0.01 * 2 / 2, 0.05, 0.01]
    lr_max = [max(warmed[: t + 1]) for t in range(4)]
    assert state.history.lr_max == lr_max[-1] == 0.05
    assert math.isclose(state.history.weight_sum, sum(m * m for m in lr_max), rel_tol=1e-15)
    assert state.step == 4


def test_keras_convention_keeps_no_history():
    spec = uniopt.ScheduleFreeAdamW(convention="keras")
    assert spec.init_history() is None
    _, state = run(spec, grads(3))
    assert state.history is None


def test_a_state_without_its_history_is_refused_before_any_change():
    spec = uniopt.ScheduleFreeAdamW()
    params = [P0.copy()]
    state = spec.init(params)
    with pytest.raises(ValueError, match="ScheduleFreeAdamW: the state has no history"):
        spec.update([grads(1)[0]], uniopt.State(state.step, state.slots), params)
    np.testing.assert_array_equal(state.slots[0]["z"], P0)


@pytest.mark.parametrize("convention", ["uniopt", "keras", "optax"])
def test_step_scalars_replays_the_history_of_a_constant_lr(convention):
    """step_scalars(t, lr) (what an adapter without the history reads) equals the carried history's
    scalars while the learning rate has not changed, in any call order."""
    spec = uniopt.ScheduleFreeAdamW(lr=0.01, warmup_steps=3, convention=convention)
    history, carried = spec.init_history(), []
    for t in range(1, 9):
        sc, history = spec.history_scalars(t, 0.01, history)
        carried.append(sc)
    for t in (5, 2, 8, 8, 1, 7):
        assert spec.step_scalars(t, 0.01) == carried[t - 1]


def test_eval_view_is_the_average_x_and_train_view_inverts_it():
    """x from the uniopt convention's view equals the explicitly averaged sequence
    x_{t+1} = (1-c) x_t + c z_{t+1} (c = lr^2 / sum lr^2 = 1/t for a constant lr); y back from x
    within a rounding (the package's eval()/train() round trip also moves y by a few ulp)."""
    spec = uniopt.ScheduleFreeAdamW(lr=0.01)
    params, state = [P0.copy()], spec.init([P0.copy()])
    x = P0.copy()
    for t, g in enumerate(grads(20), start=1):
        params, state = spec.update([g], state, params)
        x = (1 - 1 / t) * x + (1 / t) * state.slots[0]["z"]
    (evaluated,) = spec.eval_params(params, state)
    np.testing.assert_allclose(evaluated, x, rtol=1e-13, atol=1e-15)
    (back,) = spec.train_params([evaluated], state)
    np.testing.assert_allclose(back, params[0], rtol=1e-14, atol=1e-15)


def test_other_specs_have_no_eval_view():
    spec = uniopt.Adam()
    assert not spec.has_eval_view and spec.init_history() is None
    p = np.arange(3.0)
    assert spec.eval_param(p, {}, None) is p and spec.train_param(p, {}, None) is p


@pytest.mark.parametrize("convention", ["uniopt", "optax", "keras"])
def test_porting_carries_the_history_through_a_file_bitwise(tmp_path, convention):
    spec = uniopt.ScheduleFreeAdamW(lr=0.01, warmup_steps=2, convention=convention)
    gs = grads(10)
    params, state = run(spec, gs[:5], lrs=[0.01, 0.03, 0.02, 0.01, 0.01])
    uniopt.save_state(tmp_path / "s.npz", export_state(spec, state, params))
    loaded = uniopt.load_state(tmp_path / "s.npz")
    assert loaded.history == (None if state.history is None else state.history._asdict())
    resumed = import_state(loaded, spec, params)
    assert resumed.history == state.history
    a, _ = run(spec, gs[5:], params=[p.copy() for p in params], state=resumed)
    b, _ = run(spec, gs[5:], params=[p.copy() for p in params], state=state)
    np.testing.assert_array_equal(a[0], b[0])


def test_a_record_without_history_is_refused_for_a_spec_that_keeps_one():
    spec = uniopt.ScheduleFreeAdamW()
    params, state = run(spec, grads(2))
    record = export_state(spec, state, params).replace(history=None)
    with pytest.raises(ValueError, match=r"keeps the history \['weight_sum', 'lr_max'"):
        import_state(record, spec, params)
    record = export_state(spec, state, params).replace(history={"weight_sum": 1.0})
    with pytest.raises(ValueError, match="the state holds"):
        import_state(record, spec, params)
    with pytest.raises(ValueError, match="keeps no history"):
        import_state(export_state(spec, state, params), uniopt.ScheduleFreeAdamW(convention="keras"), params)


def test_history_values_are_validated():
    spec = uniopt.ScheduleFreeAdamW()
    params, state = run(spec, grads(1))
    record = export_state(spec, state, params)
    with pytest.raises(ValueError, match="not finite"):
        record.replace(history={**record.history, "weight_sum": math.inf})
    assert isinstance(state.history, History)
