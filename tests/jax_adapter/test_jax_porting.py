"""uniopt.jax state export/import: files between runs resume bit for bit (against the uninterrupted
NumPy reference of the core), mismatches raise before anything is built, and optax's own states
are read and written back."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from porting_cases import STEPS, assert_bitwise, assert_state_bitwise, params_for, reference, stream
from ujax_helpers import contract_steps

import uniopt
import uniopt.jax as uj
from uniopt.porting import export_state as core_export


def _run(tx, params, state, grads, jit):
    step = jax.jit(tx.step) if jit else tx.step
    for g in grads:
        params, state = step(list(g), state, params)
    return params, state


@pytest.mark.parametrize("route", ["jax->jax", "jit->jit", "numpy->jax", "jax->numpy"])
@pytest.mark.parametrize(("spec", "split", "dtype"), params_for("jax"))
def test_resume_from_a_file_is_bitwise(tmp_path, spec, split, dtype, route):
    jit = route == "jit->jit"
    route = route.replace("jit", "jax")
    params0, grads = stream(dtype, spec=spec)
    expected_params, expected_state = reference(spec, params0, grads)
    source, target = route.split("->")
    with jax.enable_x64(dtype == "float64"):
        if source == "jax":
            tx = uj.from_spec(spec)
            params = [jnp.asarray(p) for p in params0]
            params, state = _run(tx, params, tx.init(params), grads[:split], jit)
            record = uj.export_state(tx, state, params)
            arrays = [np.asarray(p) for p in params]
        else:
            arrays, state = reference(spec, params0, grads[:split])
            record = core_export(spec, state, arrays)
        uniopt.save_state(tmp_path / "s.npz", record)
        loaded = uniopt.load_state(tmp_path / "s.npz")
        if target == "jax":
            tx = uj.from_spec(loaded.to_spec())
            params = [jnp.asarray(a) for a in arrays]
            state = uj.import_state(tx, loaded, params)
            params, state = _run(tx, params, state, grads[split:], jit)
            final = uj.export_state(tx, state, params)
            assert_bitwise([np.asarray(p) for p in params], expected_params, "params")
            assert_state_bitwise(final.slots, expected_state, STEPS, final.step)
        else:
            state = uniopt.porting.import_state(loaded, spec, arrays)
            for g in grads[split:]:
                arrays, state = spec.update(g, state, arrays)
            assert_bitwise(arrays, expected_params, "params")
            assert_state_bitwise(state.slots, expected_state, STEPS, state.step)


def test_import_gives_the_state_of_a_native_run_inside_a_chain():
    spec = uniopt.RAdam(lr=0.01)
    params0, grads = stream("float32", steps=3)
    tx = optax.chain(optax.identity(), uj.from_spec(spec))
    params = {"a": jnp.asarray(params0[0]), "b": [jnp.asarray(params0[1]), None, jnp.asarray(params0[2])]}
    native = tx.init(params)
    for g in grads:
        _, native = tx.update({"a": g[0], "b": [g[1], None, g[2]]}, native, params)
    record = uj.export_state(spec, native, params)
    assert record.shapes == ((3, 4), (5,), ())
    fresh = uj.import_state(spec, record, params, into=tx.init(params))
    assert jax.tree.structure(fresh) == jax.tree.structure(native)
    for mine, theirs in zip(jax.tree.leaves(fresh), jax.tree.leaves(native), strict=True):
        assert mine.dtype == theirs.dtype and mine.shape == theirs.shape
        assert_bitwise([mine], [theirs], "leaf")


def test_a_schedule_records_the_learning_rate_in_effect():
    schedule = optax.linear_schedule(0.1, 0.0, 10)
    tx = uj.adam(schedule)
    params = [jnp.ones(3)]
    state = tx.init(params)
    params, state = tx.step([jnp.ones(3)], state, params)
    assert uj.export_state(tx, state, params).hyperparameters["lr"] == float(schedule(1))


@pytest.mark.parametrize(
    ("tx", "params_of", "match"),
    [
        (uj.adam(0.01), None, "the state is from RAdam, the optimizer is Adam"),
        (uj.radam(0.01), lambda ps: ps[:2], "the state holds 3 parameters, the optimizer has 2"),
        (uj.radam(0.01), lambda ps: [ps[0], jnp.zeros(6), ps[2]], r"parameter 1 has shape \(6,\)"),
        (
            uj.radam(0.01),
            lambda ps: [ps[0], ps[1].astype(jnp.bfloat16), ps[2]],
            "parameter 1 has dtype bfloat16",
        ),
        (uj.radam(0.02), None, "hyperparameter lr is 0.02 in the optimizer and 0.01 in the state"),
    ],
)
def test_a_mismatch_raises(tx, params_of, match):
    spec = uniopt.RAdam(lr=0.01)
    params0, grads = stream("float32", steps=2)
    arrays, state = reference(spec, params0, grads)
    record = core_export(spec, state, arrays)
    params = [jnp.asarray(a) for a in arrays]
    with pytest.raises(ValueError, match=match):
        uj.import_state(tx, record, params_of(params) if params_of else params)


def test_float64_without_x64_is_a_dtype_mismatch():
    spec = uniopt.SGD(lr=0.1, momentum=0.9)
    params0, grads = stream("float64", steps=2)
    arrays, state = reference(spec, params0, grads)
    with pytest.raises(ValueError, match="parameter 0 has dtype float32, the state holds float64"):
        uj.import_state(spec, core_export(spec, state, arrays), arrays)


def test_find_state_needs_exactly_one():
    tx = optax.chain(uj.adam(0.1), uj.sgd(0.1))
    with pytest.raises(ValueError, match=r"exactly one UnioptState .* found 2"):
        uj.export_state(uj.adam(0.1), tx.init([jnp.ones(2)]), [jnp.ones(2)])


# -- optax's own aliases --------------------------------------------------------------------------

NATIVE = [
    ("adam", {"learning_rate": 0.01, "b1": 0.8}, None, "Adam"),
    ("adamw", {"learning_rate": 0.01, "weight_decay": 0.1}, None, "AdamW"),
    ("radam", {"learning_rate": 0.01}, None, "RAdam"),
    ("sgd", {"learning_rate": 0.01, "momentum": 0.9, "nesterov": True}, 4, "SGD"),
    ("rmsprop", {"learning_rate": 0.5, "centered": True, "momentum": 0.5}, 4, "RMSprop"),
    ("adagrad", {"learning_rate": 0.1}, 4, "Adagrad"),
    ("adamax", {"learning_rate": 0.01, "b2": 0.99}, None, "Adamax"),
    ("nadam", {"learning_rate": 0.01, "b1": 0.8}, None, "NAdam"),
    ("nadamw", {"learning_rate": 0.01, "weight_decay": 0.1}, None, "NAdam"),
    ("adadelta", {"learning_rate": 0.5, "rho": 0.95}, 4, "Adadelta"),
    ("lion", {"learning_rate": 0.01, "weight_decay": 0.1}, 4, "Lion"),
]
OPTAX_SLOTS = {  # where optax keeps each uniopt slot: (state class, field, factor)
    "exp_avg": (optax.ScaleByAdamState, "mu", 1.0),
    "exp_avg_sq": (optax.ScaleByAdamState, "nu", 1.0),
    "exp_inf": (optax.ScaleByAdamState, "nu", 1.0),  # optax.adamax: the infinity norm in nu
    "momentum_buffer": (optax.TraceState, "trace", None),
    "grad_avg": (optax.ScaleByRStdDevState, "mu", 1.0),
    "square_avg": (optax.ScaleByRStdDevState, "nu", 1.0),
    "sum": (optax.ScaleByRssState, "sum_of_squares", 1.0),
}
OPTAX_SLOTS_OF = {  # where an alias keeps a slot elsewhere
    "lion": {"exp_avg": (optax.ScaleByLionState, "mu", 1.0)},
    "adadelta": {
        "square_avg": (optax.ScaleByAdaDeltaState, "e_g", 1.0),
        "acc_delta": (optax.ScaleByAdaDeltaState, "e_x", 1.0),
    },
}


def _find(state, cls):
    return next(n for n in jax.tree.leaves(state, is_leaf=lambda n: isinstance(n, cls)) if isinstance(n, cls))


@pytest.mark.parametrize(("alias", "kwargs", "step", "name"), NATIVE, ids=[n[0] for n in NATIVE])
def test_optax_state_is_read_and_written_back(alias, kwargs, step, name):
    params0, grads = stream("float32", steps=5)
    tx = getattr(optax, alias)(**kwargs)
    params = [jnp.asarray(p) for p in params0]
    state = tx.init(params)

    def advance(params, state, g):
        updates, state = tx.update(list(g), state, params)
        return optax.apply_updates(params, updates), state

    for g in grads[:4]:
        params, state = advance(params, state, g)
    record = uj.from_optax(state, alias, params, step=step, **kwargs)
    assert (record.optimizer, record.convention, record.step) == (name, "optax", 4)
    assert record.hyperparameters["lr"] == kwargs["learning_rate"]
    for slot in record.slot_names:
        cls, field, factor = {**OPTAX_SLOTS, **OPTAX_SLOTS_OF.get(alias, {})}[slot]
        factor = -kwargs["learning_rate"] if factor is None and alias == "rmsprop" else 1.0
        for i, leaf in enumerate(getattr(_find(state, cls), field)):
            np.testing.assert_array_equal(
                record.slots[i][slot] * np.float32(factor), np.asarray(leaf), err_msg=slot
            )
    back = uj.to_optax(record, alias, params, **kwargs)
    assert jax.tree.structure(back) == jax.tree.structure(state)
    for mine, theirs in zip(jax.tree.leaves(back), jax.tree.leaves(state), strict=True):
        assert_bitwise([mine], [theirs], "leaf")
    resumed, _ = advance(params, back, grads[4])
    uninterrupted, _ = advance(params, state, grads[4])
    assert_bitwise(resumed, uninterrupted, "params")


def test_optax_errors():
    params = [jnp.ones(2)]
    state = optax.sgd(0.1, momentum=0.9).init(params)
    with pytest.raises(ValueError, match="keeps no step count; pass step="):
        uj.from_optax(state, "sgd", params, learning_rate=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"optax.adam\(eps_root=1e-08\) has no uniopt counterpart"):
        uj.from_optax(optax.adam(0.1).init(params), "adam", params, learning_rate=0.1, eps_root=1e-8)
    with pytest.raises(ValueError, match="alias 'adabelief' is not one of"):
        uj.from_optax(state, "adabelief", params, learning_rate=0.1)
    with pytest.raises(ValueError, match=r"optax.lion\(mask=.*\) has no uniopt counterpart"):
        uj.from_optax(optax.lion(0.1).init(params), "lion", params, learning_rate=0.1, mask=[False], step=1)
    with pytest.raises(ValueError, match=r"optax.nadam\(nesterov=False\) has no uniopt counterpart"):
        uj.from_optax(optax.adam(0.1).init(params), "nadam", params, learning_rate=0.1, nesterov=False)
    with pytest.raises(ValueError, match="learning_rate must be a number"):
        uj.from_optax(state, "sgd", params, learning_rate=optax.constant_schedule(0.1), momentum=0.9, step=1)
    with pytest.raises(ValueError, match=r"lacks \['momentum_buffer'\]"):
        uj.from_optax(optax.sgd(0.1).init(params), "sgd", params, learning_rate=0.1, momentum=0.9, step=1)
    record = uj.from_optax(state, "sgd", params, learning_rate=0.1, momentum=0.9, step=1)
    with pytest.raises(ValueError, match=r"hyperparameter momentum is 0\.5 in the optimizer and 0\.9"):
        uj.to_optax(record, "sgd", params, learning_rate=0.1, momentum=0.5)


# -- optax.contrib.muon: a partition of MuonState and ScaleByAdamState -------------------------------

MUON_SHAPES = {"tall": (4, 2), "wide": (2, 3), "vec": (3,), "scalar": ()}
MUON_KWARGS = {"learning_rate": 0.02, "weight_decay": 0.01, "adam_weight_decay": 0.05}


def _muon_tree(seed, dtype):
    rng = np.random.default_rng(seed)
    return {k: jnp.asarray(rng.standard_normal(s).astype(dtype)) for k, s in MUON_SHAPES.items()}


@pytest.mark.parametrize("x64", [False, True])
def test_optax_muon_state_is_read_and_written_back(x64):
    """optax.contrib.muon's mu (MuonState for the matrices, ScaleByAdamState for the others:
    MaskedNode in the other partition) is one slot, momentum_buffer; nu is exp_avg_sq, zeros for the
    matrices (optax keeps none). Read as is, written back bit for bit; the run goes on under
    uniopt.jax as it goes on under optax (within the products' rounding: optax's fused loop)."""
    dtype = np.float64 if x64 else np.float32
    with jax.enable_x64(x64):
        params = _muon_tree(0, dtype)
        grads = [_muon_tree(10 + t, dtype) for t in range(5)]
        theirs = optax.contrib.muon(**MUON_KWARGS)
        half, state = contract_steps(theirs, params, grads[:3])
        record = uj.from_optax(state, "muon", half, **MUON_KWARGS)
        assert (record.optimizer, record.convention, record.step) == ("Muon", "optax", 3)
        assert record.hyperparameters["adam_weight_decay"] == 0.05
        muon_state = state.inner_states["muon"].inner_state[0]
        adam_state = state.inner_states["adam"].inner_state[0]
        for i, k in enumerate(sorted(MUON_SHAPES)):  # the record's order: jax.tree.leaves of the dict
            matrix = len(MUON_SHAPES[k]) == 2
            mu = (muon_state if matrix else adam_state).mu[k]
            np.testing.assert_array_equal(record.slots[i]["momentum_buffer"], np.asarray(mu), err_msg=k)
            assert record.slots[i]["momentum_buffer"].dtype == dtype
            nu = np.zeros(MUON_SHAPES[k], dtype) if matrix else np.asarray(adam_state.nu[k])
            np.testing.assert_array_equal(record.slots[i]["exp_avg_sq"], nu, err_msg=k)
        back = uj.to_optax(record, "muon", half, **MUON_KWARGS)
        is_masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
        assert jax.tree.structure(back, is_leaf=is_masked) == jax.tree.structure(state, is_leaf=is_masked)
        for mine, theirs_leaf in zip(jax.tree.leaves(back), jax.tree.leaves(state), strict=True):
            assert mine.dtype == theirs_leaf.dtype
            np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs_leaf))
        tx = uj.muon(**MUON_KWARGS)
        ours, _ = contract_steps(tx, half, grads[3:], state=uj.import_state(tx, record, half))
        want, _ = contract_steps(theirs, half, grads[3:], state=state)
        for k in MUON_SHAPES:
            a, b = np.asarray(ours[k], np.float64), np.asarray(want[k], np.float64)
            np.testing.assert_allclose(a, b, rtol=0, atol=(1e-13 if x64 else 5e-6) * np.max(np.abs(b)))


def test_uniopt_muon_state_goes_to_optax_and_back_bit_for_bit():
    """A uniopt.jax.muon state: export, to_optax (each momentum in its partition's node), from_optax,
    import: the same arrays; a matrix's exp_avg_sq that is not zeros cannot go to optax."""
    params = _muon_tree(1, np.float32)
    tx = uj.muon(**MUON_KWARGS)
    params, state = contract_steps(tx, params, [_muon_tree(20 + t, np.float32) for t in range(2)])
    record = uj.export_state(tx, state, params)
    native = uj.to_optax(record, "muon", params, **MUON_KWARGS)
    assert int(native.inner_states["muon"].inner_state[0].count) == 2
    again = uj.import_state(tx, uj.from_optax(native, "muon", params, **MUON_KWARGS), params)
    assert int(again.count) == 2
    for name in ("momentum_buffer", "exp_avg_sq"):
        for k in MUON_SHAPES:
            np.testing.assert_array_equal(np.asarray(again.slots[name][k]), np.asarray(state.slots[name][k]))
    slots = [dict(s) for s in record.slots]
    slots[sorted(MUON_SHAPES).index("tall")]["exp_avg_sq"] = np.ones((4, 2), np.float32)
    bad = dataclasses.replace(record, slots=tuple(slots))
    with pytest.raises(ValueError, match=r"keeps no 'exp_avg_sq' for parameter 1 \(shape \(4, 2\)\)"):
        uj.to_optax(bad, "muon", params, **MUON_KWARGS)


def test_optax_muon_porting_errors():
    params = _muon_tree(2, np.float32)
    state = optax.contrib.muon(0.02).init(params)
    with pytest.raises(ValueError, match=r"holds ns_coeffs=\[3\.444.*the arguments give ns_coefficients"):
        uj.from_optax(state, "muon", params, learning_rate=0.02, ns_coeffs=(3.0, -4.0, 2.0))
    with pytest.raises(ValueError, match=r"optax\.contrib\.muon\(adaptive=True\) has no uniopt counterpart"):
        uj.from_optax(state, "muon", params, learning_rate=0.02, adaptive=True)
    with pytest.raises(ValueError, match=r"optax\.contrib\.muon\(ns_coeffs='dion'\): uniopt accepts three"):
        uj.from_optax(state, "muon", params, learning_rate=0.02, ns_coeffs="dion")
    with pytest.raises(ValueError, match=r"weight_decay_mask=.* has no uniopt counterpart"):
        uj.from_optax(state, "muon", params, learning_rate=0.02, weight_decay_mask={"tall": False})
    record = uj.from_optax(state, "muon", params, learning_rate=0.02, consistent_rms=0.2)
    assert (record.hyperparameters["adjust_lr_fn"], record.hyperparameters["rms_rate"]) == (
        "match_rms_adamw",
        0.2,
    )
    with pytest.raises(
        ValueError, match=r"hyperparameter rms_rate is 0\.3 in the optimizer and 0\.2 in the state"
    ):
        uj.to_optax(record, "muon", params, learning_rate=0.02, consistent_rms=0.3)


def _changed_slot(record):
    record.slots[1]["exp_avg"] = record.slots[1]["exp_avg"].astype(np.float64)  # after its checks
    return record


def _listed_slot(record):
    record.slots[2]["exp_avg_sq"] = record.slots[2]["exp_avg_sq"].tolist()  # after its checks
    return record


def _bad_record(bad):
    spec = uniopt.Adam(lr=0.01)
    params0, grads = stream("float32", steps=2)
    arrays, state = reference(spec, params0, grads)
    return bad(core_export(spec, state, arrays)), [jnp.asarray(a) for a in arrays]


_CHANGED = (_changed_slot, r"parameter 1 slot 'exp_avg' is float64, the state holds the parameter as float32")


@pytest.mark.parametrize(
    ("bad", "match"),
    [_CHANGED, (lambda r: r.replace(step=2**31), "step 2147483648 does not fit uniopt.jax's int32 count")],
)
def test_a_bad_record_is_refused_and_the_given_state_kept(bad, match):
    """uniopt.jax builds a new state (nothing is assigned in place): a bad record raises, and the
    state passed as ``into`` keeps its leaves, bit for bit."""
    record, params = _bad_record(bad)
    tx = uj.adam(0.01)
    into = tx.init(params)
    leaves = [np.asarray(leaf).copy() for leaf in jax.tree.leaves(into)]
    with pytest.raises(ValueError, match=match):
        uj.import_state(tx, record, params, into=into)
    for mine, kept in zip(jax.tree.leaves(into), leaves, strict=True):
        assert np.asarray(mine).tobytes() == kept.tobytes()


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        _CHANGED,
        (_listed_slot, "parameter 2 slot 'exp_avg_sq' is float, the state holds the parameter as float32"),
    ],
)
def test_a_bad_record_is_refused_by_to_optax(bad, match):
    record, params = _bad_record(bad)
    with pytest.raises(ValueError, match=match):
        uj.to_optax(record, "adam", params, learning_rate=0.01)
