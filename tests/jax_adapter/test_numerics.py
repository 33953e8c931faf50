"""uniopt.jax gives the NumPy reference's numbers bit for bit: eagerly and under jax.jit with
default XLA flags, through tx.step and through optax's update + apply_updates contract."""

from __future__ import annotations

import os
from pathlib import Path

import array_api_compat.numpy
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from cases import per_convention, shapes_for, table_for
from ujax_helpers import (
    SHAPES,
    assert_history_equal,
    assert_history_within,
    grads_at,
    initial,
    reference,
    run_contract,
    run_direct,
    same_bits,
    ulp_distance,
)

import uniopt
import uniopt.jax as ujax
from uniopt.scalar_table import scalar_table

DEFAULTS = [pytest.param(info, info.cases[0], id=info.name) for info in table_for("jax")]
STEPS = 8


def _tx(spec):
    name, kwargs = ujax.optax_arguments(spec)
    return getattr(ujax, name)(**kwargs)


def _inputs(dtype, steps=STEPS, scale=1.0, spec=None):
    """Parameters and gradients of :data:`SHAPES`; with ``spec``, each shape it refuses as a matrix
    (Muon's uniopt and torch conventions take 2-D parameters only)."""
    shapes = SHAPES if spec is None else shapes_for(spec, SHAPES)
    params0 = initial(shapes, dtype)
    return params0, [grads_at(t, shapes, dtype, scale) for t in range(1, steps + 1)]


@pytest.mark.parametrize(("info", "case"), per_convention("jax"))
def test_every_case_is_bitwise_eager_and_jit(info, case):
    """Bitwise, unless the table states a bound for the cell (Muon's backend matrix products: XLA's
    dot sums in another order than NumPy's BLAS)."""
    spec = info.make(case)
    tx = _tx(spec)
    params0, grads = _inputs("float32", spec=spec)
    want, want_state = reference(spec, params0, grads)
    got, state = run_direct(tx, params0, grads, jit=False)
    assert_history_within(got, want, info.tolerance("jax", "eager", case.desc), "eager tx.step")
    # |p| >= 1 and small steps: p + (new - p) == new exactly, so the optax contract is bitwise too
    bound = info.tolerance("jax", "optax", case.desc)
    assert_history_within(run_contract(tx, params0, grads, jit=False)[0], want, bound, "eager update")
    got, state = run_contract(tx, params0, grads, jit=True)
    assert_history_within(got, want, bound, "jit update")
    assert int(state.count) == want_state.step == STEPS
    assert set(state.slots) == set(spec.slot_names())
    for name in spec.slot_names():
        for i, slots in enumerate(want_state.slots):
            if bound == 0:
                assert same_bits(state.slots[name][i], slots[name]), (name, i)
            else:
                assert ulp_distance(state.slots[name][i], slots[name]) <= bound, (name, i)


@pytest.mark.parametrize(("info", "case"), per_convention("jax"))
def test_the_updates_themselves_are_the_same_eager_and_jit(info, case):
    """Not only ``p + u``: the update ``tx.update`` returns is the same bits eagerly and under
    ``jax.jit`` at every step, as a transformation chained after it (``optax.scale``, clipping)
    reads it. RAdam's rectification, a ``where`` of its two branches under jit, had returned the
    parameter's change there and the rule's own increment eagerly (up to 1.2e-7 apart). Cells the
    table bounds (Muon's backend products) are compared within twice their bound."""
    spec = info.make(case)
    tx = _tx(spec)
    params0, grads = _inputs("float32", spec=spec)
    bound = info.tolerance("jax", "optax", case.desc)
    update = jax.jit(tx.update)
    eager = jitted = [jnp.asarray(p) for p in params0]
    eager_state = jitted_state = tx.init(eager)
    for t, g in enumerate(grads, start=1):
        g = [jnp.asarray(x) for x in g]
        u_eager, eager_state = tx.update(g, eager_state, eager)
        u_jit, jitted_state = update(g, jitted_state, jitted)
        for i, (a, b) in enumerate(zip(u_eager, u_jit, strict=True)):
            if bound == 0:
                assert same_bits(a, b), (t, i)
            else:
                assert ulp_distance(a, b) <= 2 * bound, (t, i)
        eager, jitted = optax.apply_updates(eager, u_eager), optax.apply_updates(jitted, u_jit)


@pytest.mark.parametrize(("info", "case"), DEFAULTS)
def test_jitted_step_is_bitwise(info, case):
    spec = info.make(case)
    params0, grads = _inputs("float32", spec=spec)
    assert_history_within(
        run_direct(_tx(spec), params0, grads, jit=True)[0],
        reference(spec, params0, grads)[0],
        info.tolerance("jax", "jit", case.desc),
    )


@pytest.mark.parametrize(("info", "case"), DEFAULTS)
def test_float64_is_bitwise_eager_and_jit(info, case):
    spec = info.make(case)
    with jax.enable_x64(True):
        tx = _tx(spec)
        params0, grads = _inputs("float64", steps=6, spec=spec)
        want = reference(spec, params0, grads)[0]
        bound = info.tolerance("jax", "optax", case.desc)
        assert_history_within(run_contract(tx, params0, grads, jit=False)[0], want, bound, "eager")
        assert_history_within(run_contract(tx, params0, grads, jit=True)[0], want, bound, "jit")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(
    "spec", [uniopt.SGD(lr=0.05, momentum=0.9), uniopt.Adam(lr=0.01, eps=1e-4), uniopt.RMSprop(eps=1e-4)]
)
def test_half_precision_is_bitwise_eager_and_jit(spec, dtype):
    params0, grads = _inputs(dtype, steps=6)
    want = reference(spec, params0, grads)[0]
    tx = ujax.from_spec(spec)
    assert_history_equal(run_direct(tx, params0, grads, jit=False)[0], want, "eager")
    assert_history_equal(run_direct(tx, params0, grads, jit=True)[0], want, "jit")


@pytest.mark.parametrize(("info", "case"), DEFAULTS)
def test_nonfinite_gradients_propagate_like_the_reference(info, case):
    spec = info.make(case)
    params0, grads = _inputs("float32", steps=6, spec=spec)
    grads[2][0].reshape(-1)[:3] = [np.nan, np.inf, -np.inf]
    want = reference(spec, params0, grads)[0]
    assert any(np.isnan(p).any() or np.isinf(p).any() for p in want[-1])
    bound = info.tolerance("jax", "optax", case.desc)
    assert_history_within(run_contract(_tx(spec), params0, grads, jit=True)[0], want, bound, "jit update")
    assert_history_within(run_contract(_tx(spec), params0, grads, jit=False)[0], want, bound, "eager update")


def test_adagrad_lr_decay_scalars_come_from_the_host_and_are_bitwise():
    spec = uniopt.Adagrad(lr=0.1, lr_decay=0.01)
    tx = _tx(spec)
    params0, grads = _inputs("float32")
    want = reference(spec, params0, grads)[0]
    assert_history_equal(run_contract(tx, params0, grads, jit=False)[0], want, "eager")
    assert_history_equal(run_contract(tx, params0, grads, jit=True)[0], want, "jit")
    params = [jnp.asarray(p) for p in params0]
    jaxpr = str(jax.make_jaxpr(tx.step)(grads[0], tx.init(params), params))
    assert "pure_callback" in jaxpr
    assert "pure_callback" not in str(
        jax.make_jaxpr(ujax.adagrad(0.1).step)(grads[0], tx.init(params), params)
    )


@pytest.mark.parametrize("spec", [uniopt.Adam(lr=0.01), uniopt.RAdam(lr=0.01, weight_decay=0.1)])
def test_steps_past_the_table_use_its_limit_row(spec):
    """The traced step count gathers row min(t, T); past T every scalar equals its limit."""
    length = scalar_table(spec, "float32").length
    params0, grads = _inputs("float32", steps=1)
    tx = _tx(spec)
    step = jax.jit(tx.step)
    params = [jnp.asarray(p) for p in params0]
    core_slots = [{n: np.full(p.shape, 0.5, np.float32) for n in spec.slot_names()} for p in params0]
    for count in (length - 2, length - 1, length, length + 7, 10**9):
        state = ujax.UnioptState(
            count=jnp.asarray(count, jnp.int32),
            slots={n: [jnp.asarray(s[n]) for s in core_slots] for n in spec.slot_names()},
        )
        got, _ = step(grads[0], state, params)
        want, _ = spec.update(grads[0], uniopt.State(count, tuple(core_slots)), params0)
        for g, w in zip(got, want, strict=True):
            assert same_bits(g, w), count


def test_the_step_counter_is_int32_and_saturates_instead_of_overflowing():
    spec = uniopt.RAdam(lr=0.01)
    tx = _tx(spec)
    params0, grads = _inputs("float32", steps=3)
    params = [jnp.asarray(p) for p in params0]
    state = tx.init(params)
    assert state.count.dtype == jnp.int32 and int(state.count) == 0
    top = np.iinfo(np.int32).max
    state = state._replace(count=jnp.asarray(top - 1, jnp.int32))
    core = uniopt.State(top - 1, spec.init(params0).slots)
    step = jax.jit(tx.step)
    ref = [p.copy() for p in params0]
    for g in grads:
        params, state = step(g, state, params)
        ref, core = spec.update(g, core, ref)
        core = core._replace(step=min(core.step, top))  # the reference at the same (saturated) step
        assert state.count.dtype == jnp.int32
        for a, b in zip(params, ref, strict=True):
            assert same_bits(a, b)
    assert int(state.count) == top


def test_apply_updates_keeps_infinities_and_signed_zeros():
    tx = ujax.sgd(0.1)
    params = [jnp.asarray([np.inf, -np.inf, -0.0, 0.0, 1.5, np.nan], jnp.float32)]
    grads = [jnp.zeros(6, jnp.float32)]
    updates, _ = tx.update(grads, tx.init(params), params)
    after = optax.apply_updates(params, updates)
    assert same_bits(after[0], params[0])  # inf - inf would have made NaN; -0 + 0 would be +0


def test_apply_updates_is_exact_unless_no_float_update_exists():
    """optax adds updates: p + u. Where the new parameter n is within a factor 2 of p (same sign),
    u = n - p is exact and p + u == n. Where the step is about as large as the parameter (here
    AdamW's first step of size lr on parameters of that size) p + u may miss n; then no float32 u
    hits n at all, and the miss is within the rounding of u. tx.step returns n itself."""
    rng = np.random.default_rng(0)
    p = rng.uniform(-2e-2, 2e-2, 4096).astype(np.float32)
    g = rng.standard_normal(4096).astype(np.float32)
    tx = ujax.adamw(0.01, weight_decay=0.5)
    state = tx.init([p])
    new = np.asarray(tx.step([g], state, [p])[0][0])
    assert same_bits(new, reference(tx.spec, [p], [[g]])[0][0][0])
    updates, _ = tx.update([g], state, [p])
    applied = np.asarray(optax.apply_updates([p], updates)[0])
    sterbenz = (np.sign(new) == np.sign(p)) & (np.abs(new) <= 2 * np.abs(p)) & (np.abs(p) <= 2 * np.abs(new))
    assert sterbenz.sum() > 1000 and same_bits(applied[sterbenz], new[sterbenz])
    missed = np.flatnonzero(applied != new)
    assert 0 < missed.size < 1000
    for i in missed:
        pi, ni, ui = p[i], new[i], np.float32(np.asarray(updates[0])[i])
        assert ui == np.float32(ni - pi)
        near = [ui]
        for direction in (np.inf, -np.inf):
            x = ui
            for _ in range(8):
                x = np.nextafter(x, np.float32(direction))
                near.append(x)
        assert all(np.float32(pi + c) != ni for c in near), i  # irreducible
        bound = (np.spacing(np.abs(ui)) + np.spacing(np.abs(ni))) / 2
        assert abs(float(applied[i]) - float(ni)) <= bound, i


def _cpu_contracts_fma() -> bool:
    if jax.default_backend() != "cpu" or "max_isa" in os.environ.get("XLA_FLAGS", ""):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "fma" in flags


def test_jit_bitwise_is_not_an_accident_plain_jax_numpy_would_differ():
    """The same rule traced with plain jax.numpy (no rounded products) is not bitwise under jit on
    a CPU with FMA, so the bitwise jit results above are the namespace's doing."""
    if not _cpu_contracts_fma():
        pytest.skip("needs an x86 CPU with FMA and default XLA flags to show the contraction")
    spec = uniopt.Adam(lr=0.01)
    rng = np.random.default_rng(0)
    p, g = (rng.standard_normal(4096).astype(np.float32) for _ in range(2))
    slots = {"exp_avg": np.full(4096, 0.01, np.float32), "exp_avg_sq": np.full(4096, 0.5, np.float32)}
    sc = spec.step_scalars(3)
    want, _ = spec.update_one(p, g, slots, sc, array_api_compat.numpy)
    scalars = type(sc)(*(jnp.asarray(v, jnp.float32) for v in sc))
    plain = jax.jit(lambda p, g, s: spec.rule(p, g, s, scalars, jnp)[0])(p, g, slots)
    assert not same_bits(plain, want)
    tx = ujax.from_spec(spec)
    state = ujax.UnioptState(jnp.asarray(2, jnp.int32), {k: [jnp.asarray(v)] for k, v in slots.items()})
    ours = jax.jit(tx.step)([g], state, [p])[0][0]
    assert same_bits(ours, want)


def test_a_root_divided_stays_a_correctly_rounded_root_under_jit():
    """XLA rewrites ``a / sqrt(b)`` into ``a * rsqrt(b)`` (not correctly rounded); Adadelta's
    ``sqrt(acc_delta + eps) / sqrt(square_avg + eps)`` then moved by an ulp under jit. Plain
    jax.numpy under jit differs from the reference; the traced namespace does not."""
    spec = uniopt.Adadelta(lr=1.0)
    rng = np.random.default_rng(1)
    p, g = (rng.standard_normal(4096).astype(np.float32) for _ in range(2))
    slots = {
        "square_avg": rng.uniform(1e-3, 2.0, 4096).astype(np.float32),
        "acc_delta": rng.uniform(1e-3, 2.0, 4096).astype(np.float32),
    }
    sc = spec.step_scalars(3)
    want, _ = spec.update_one(p, g, slots, sc, array_api_compat.numpy)
    scalars = type(sc)(*(jnp.asarray(v, jnp.float32) for v in sc))
    plain = jax.jit(lambda p, g, s: spec.rule(p, g, s, scalars, jnp)[0])(p, g, slots)
    assert not same_bits(plain, want)
    tx = ujax.from_spec(spec)
    state = ujax.UnioptState(jnp.asarray(2, jnp.int32), {k: [jnp.asarray(v)] for k, v in slots.items()})
    ours = jax.jit(tx.step)([g], state, [p])[0][0]
    assert same_bits(ours, want)


SPECIAL = np.asarray([0.0, -0.0, 1.0, -1.0, 2.5, -3.75, 1e-40, -1e-40, np.inf, -np.inf, np.nan, 4.0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, jnp.bfloat16])
@pytest.mark.parametrize("op", ["sqrt", "abs", "sign", "maximum", "minimum", "divide", "negative"])
def test_the_namespaces_elementwise_ops_are_numpys_bit_for_bit(op, dtype):
    """The ops the rules use (Lion's sign, Adamax's abs and maximum, Adadelta's roots), eagerly
    (one compiled op each) and traced (inside one jitted function), against NumPy: signed zeros,
    infinities and NaN included (maximum and minimum propagate NaN; sign(NaN) is NaN). Elements
    where an input or NumPy's result is subnormal are left out: XLA:CPU flushes them to zero."""
    from uniopt.jax._transform import _OP_BY_OP, _Unfused

    rng = np.random.default_rng(2)
    with np.errstate(over="ignore"):  # float16 overflows to infinities, which are kept
        x = np.concatenate([SPECIAL, rng.standard_normal(500) * 10.0 ** rng.integers(-30, 30, 500)])
        x, y = x.astype(dtype), np.concatenate([SPECIAL[::-1], rng.standard_normal(500)]).astype(dtype)
    args = (x, y) if op in ("maximum", "minimum", "divide") else (np.abs(x) if op == "sqrt" else x,)
    with np.errstate(all="ignore"):
        want = getattr(np, op)(*args)
    tiny = float(jnp.finfo(dtype).tiny)
    keep = np.all([~((a != 0) & (np.abs(a) < tiny)) for a in (*args, want)], axis=0)

    @jax.jit
    def traced(count, *arrays):
        return getattr(_Unfused(jnp.minimum(count, 0)), op)(*arrays)

    with jax.enable_x64(dtype == np.float64):
        eager = np.asarray(getattr(_OP_BY_OP, op)(*args))
        jitted = np.asarray(traced(jnp.asarray(3, jnp.int32), *args))
    assert keep.sum() > 200
    assert same_bits(eager[keep], want[keep])
    assert same_bits(jitted[keep], want[keep])


SPECIAL32 = np.array(
    [
        *(0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 1.5, 3.0, -2.5, 1e-3, 3e38, -3e38, 7.0),
        *(1.25, 1.7, 2.0, 2.9, 6.5, -1.3, -2.0, -3.7),
    ],
    dtype=np.float32,
)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_the_additive_update_of_a_step_keeps_unchanged_entries_bit_for_bit(dtype):
    """``_as_update(new, old)``, the ``u`` uniopt.jax's ``update`` returns for ``apply_updates``: on
    every pairing of special and ordinary values, an entry whose bits are unchanged gets ``-0.0``
    (so ``old + u`` is ``old``, infinities and signed zeros included, where ``new - old`` would
    give NaN or ``+0``), any other ``new - old``; and ``old + u`` is ``new`` wherever ``new - old``
    is exact, within a factor of 2 (the expected values computed here in NumPy, the test it
    replaced, ``new == old`` with equal sign bits, in the comment below)."""
    from uniopt.jax._transform import _as_update

    np_dtype = np.dtype(dtype)
    new = np.repeat(SPECIAL32, len(SPECIAL32)).astype(np_dtype)
    old = np.tile(SPECIAL32, len(SPECIAL32)).astype(np_dtype)
    u = np.asarray(_as_update(jnp.asarray(new), jnp.asarray(old)))
    same_bits = new.view(f"u{np_dtype.itemsize}") == old.view(f"u{np_dtype.itemsize}")
    # equal values of one sign are the same bits, except a NaN (unequal to itself)
    same_value = (new == old) & (np.signbit(new) == np.signbit(old))
    assert np.array_equal(same_bits & ~np.isnan(new), same_value)
    minus_zero = np.full_like(u, -0.0)
    assert u[same_bits].tobytes() == minus_zero[same_bits].tobytes()
    with np.errstate(invalid="ignore", over="ignore"):
        diff = (new - old).astype(np_dtype)
        back = (old + u).astype(np_dtype)
    changed = ~same_bits
    assert np.array_equal(np.isnan(u[changed]), np.isnan(diff[changed]))
    finite = changed & ~np.isnan(diff)
    assert u[finite].tobytes() == diff[finite].tobytes()
    kept = same_bits & ~np.isnan(new)
    assert back[kept].tobytes() == old[kept].tobytes()  # infinities, -0.0 and +0.0 kept
    # within a factor of 2 and of one sign, new - old is exact (Sterbenz) and so is old + u
    wide_new, wide_old = new.astype(np.float64), old.astype(np.float64)
    exact = (
        changed
        & np.isfinite(wide_new)
        & np.isfinite(wide_old)
        & (wide_new * wide_old > 0)
        & (np.abs(wide_new) <= 2 * np.abs(wide_old))
        & (np.abs(wide_old) <= 2 * np.abs(wide_new))
    )
    assert exact.sum() >= 10
    assert back[exact].tobytes() == new[exact].tobytes()


@pytest.mark.parametrize(
    ("alias", "kwargs"),
    [
        ("sgd", {}),
        ("sgd", {"momentum": 0.9, "convention": "torch"}),
        ("adam", {"convention": "optax"}),
        ("adam", {"convention": "torch"}),
        ("rmsprop", {"convention": "optax"}),
    ],
)
def test_a_jitted_update_is_the_rules_own_increment_and_apply_updates_is_the_step(alias, kwargs):
    """Under ``jax.jit`` the update of a rule whose result is ``p + d`` or ``p - d`` is ``d`` or
    ``-d`` itself (``uniopt.jax._transform._increment_of``), as optax's own updates are, and
    ``optax.apply_updates`` gives the step's parameters bit for bit (parameters and gradients over
    14 orders of magnitude). Plain SGD's update is ``-(lr * g)`` computed here in NumPy; until
    2026-12-06 it was the parameter's change ``new - p``, which differs from it wherever ``p -
    lr * g`` rounds."""
    rng = np.random.default_rng(5)
    p = (rng.standard_normal(4000) * 10.0 ** rng.integers(-6, 6, 4000)).astype(np.float32)
    g = (rng.standard_normal(4000) * 10.0 ** rng.integers(-6, 8, 4000)).astype(np.float32)
    tx = getattr(ujax, alias)(0.5, **kwargs)
    params, grads = {"w": jnp.asarray(p)}, {"w": jnp.asarray(g)}
    state = tx.init(params)
    for _ in range(3):
        u, _ = jax.jit(tx.update)(grads, state, params)
        new, state = jax.jit(tx.step)(grads, state, params)
        applied = optax.apply_updates(params, u)
        assert np.asarray(applied["w"]).tobytes() == np.asarray(new["w"]).tobytes()
        if alias == "sgd" and not kwargs:
            want = -(np.float32(0.5) * g)
            assert np.asarray(u["w"]).tobytes() == want.tobytes()
            change = np.asarray(new["w"]) - np.asarray(params["w"])
            assert change.tobytes() != want.tobytes()  # the old update differed
        params = new


@pytest.mark.parametrize(
    ("alias", "kwargs"),
    [("sgd", {}), ("adam", {"convention": "optax"}), ("rmsprop", {"convention": "optax"})],
)
def test_the_eager_update_is_the_jitted_one_bit_for_bit(alias, kwargs):
    """Eagerly as under ``jax.jit``, ``update`` hands ``apply_updates`` the rule's own increment:
    the two updates are the same bits, so a transformation chained after uniopt's
    (``optax.scale``) gives the same parameters either way. Found by a user trial: with the
    increment under jit only, SGD's eager update was ``new - p`` (``-0.00012207`` where the jitted
    one was ``-0.0001``)."""
    rng = np.random.default_rng(8)
    p = {"w": jnp.asarray((rng.standard_normal(500) * 10.0 ** rng.integers(-3, 4, 500)).astype(np.float32))}
    g = {"w": jnp.asarray(rng.standard_normal(500).astype(np.float32))}
    tx = optax.chain(getattr(ujax, alias)(0.01, **kwargs), optax.scale(100.0))
    s_eager = s_jit = tx.init(p)
    p_eager = p_jit = p
    for _ in range(3):
        u_eager, s_eager = tx.update(g, s_eager, p_eager)
        u_jit, s_jit = jax.jit(tx.update)(g, s_jit, p_jit)
        assert np.asarray(u_eager["w"]).tobytes() == np.asarray(u_jit["w"]).tobytes()
        p_eager, p_jit = optax.apply_updates(p_eager, u_eager), optax.apply_updates(p_jit, u_jit)


def test_an_update_of_a_python_float_leaf_is_optaxs():
    """A parameter given as a Python float (a leaf optax's aliases take): the eager and jitted
    updates are optax's (``-lr * g`` for SGD; optax computes it in Python floats here, uniopt in
    the parameter's jax dtype, float32). Found by a user trial: the eager update raised
    ``AttributeError`` ('float' object has no attribute 'dtype')."""
    tx, theirs = ujax.sgd(0.05), optax.sgd(0.05)
    params, grads = {"x": 2.0}, {"x": 1.0}
    want, _ = theirs.update(grads, theirs.init(params), params)
    for update in (tx.update, jax.jit(tx.update)):
        got, _ = update(grads, tx.init(params), params)
        assert np.asarray(got["x"]).dtype == np.float32
        assert np.float32(got["x"]) == np.float32(want["x"]) == np.float32(-0.05)
