"""uniopt.jax's ScheduleFreeAdamW: the history in the optax state, the evaluation view, the factory
with optax.contrib.schedule_free_adamw's names, porting, and optax's own implementation.

Expected values come from the core run on NumPy (``spec.update`` step by step, with
``lr=schedule(count)`` for a schedule) and from ``optax.contrib.schedule_free_adamw`` itself.
"""

from __future__ import annotations

import dataclasses
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ujax_helpers import (
    SHAPES,
    assert_history_equal,
    grads_at,
    initial,
    reference,
    run_direct,
    same_bits,
    ulp_distance,
)

import uniopt
import uniopt.jax as ujax
from uniopt.jax._transform import history_of
from uniopt.registry import get

STEPS = 30
ROW = get("ScheduleFreeAdamW")
# every convention, with and without warmup and weight decay (the row's own cases)
CASES = [
    pytest.param(ROW.case(desc), id=desc)
    for desc in ("default", "warmup", "weight_decay", "optax", "optax_defaults", "keras", "keras_defaults")
]
# exact values (halving and quadrupling): the same float32 numbers eagerly and under jit; the
# learning rate falls at step 9 and rises above its start at step 17 (lr_max moves again)
SCHEDULE = optax.piecewise_constant_schedule(0.01, {8: 0.5, 16: 4.0})


def _inputs(dtype, steps=STEPS, shapes=SHAPES):
    return initial(shapes, dtype), [grads_at(t, shapes, dtype) for t in range(1, steps + 1)]


def _core_eval(spec, params, state):
    """The core's evaluation view on NumPy."""
    return [np.asarray(x) for x in spec.eval_params([np.asarray(p) for p in params], state)]


@pytest.mark.parametrize("lr", ["constant", "schedule"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES)
def test_bitwise_with_the_core_eagerly_and_under_jit(case, dtype, lr):
    spec = ROW.make(case)
    with jax.enable_x64(dtype == "float64"):
        params0, grads = _inputs(dtype)
        lrs = None if lr == "constant" else [float(SCHEDULE(t)) for t in range(STEPS)]
        assert lrs is None or len(set(lrs)) == 3
        want, want_state = reference(spec, params0, grads, lrs)
        tx = ujax.from_spec(spec, learning_rate=None if lr == "constant" else SCHEDULE)
        for jit in (False, True):
            got, state = run_direct(tx, params0, grads, jit=jit)
            what = f"{'jit' if jit else 'eager'} {lr}"
            assert_history_equal(got, want, what)
            assert int(state.count) == STEPS
            for name in spec.slot_names():
                for i, core in enumerate(want_state.slots):
                    assert same_bits(state.slots[name][i], core[name]), (what, name, i)
            assert history_of(spec, state.history) == want_state.history, what
            evaluate = jax.jit(tx.eval_params) if jit else tx.eval_params
            x = evaluate(state, [jnp.asarray(p) for p in got[-1]])
            assert_history_equal([x], [_core_eval(spec, want[-1], want_state)], f"{what} eval_params")


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_under_jit_a_parameter_past_the_hint_size_is_bitwise_with_the_core(weight_decay):
    """A parameter of at least uniopt.jax._transform.HINT_MIN_SIZE elements, where y's update
    recomputes u from v under jit (uniopt._math.recomputed) instead of reading a stored u: the
    core's NumPy run bit for bit, beside a small parameter that takes the unhinted step, eagerly
    (no hint) and under jit (the hint taken for the large parameter only)."""
    from uniopt.jax._transform import HINT_MIN_SIZE

    shapes = [(1024, HINT_MIN_SIZE // 1024 + 3), (3, 5)]
    spec = uniopt.ScheduleFreeAdamW(lr=0.02, weight_decay=weight_decay, warmup_steps=2)
    params0, grads = _inputs("float32", steps=4, shapes=shapes)
    want, want_state = reference(spec, params0, grads)
    tx = ujax.from_spec(spec)
    for jit in (False, True):
        got, state = run_direct(tx, params0, grads, jit=jit)
        assert_history_equal(got, want, "jit" if jit else "eager")
        for name in spec.slot_names():
            for i, core in enumerate(want_state.slots):
                assert same_bits(state.slots[name][i], core[name]), (jit, name, i)
    recomputed = []
    hook = ujax._transform._Unfused.uniopt_recomputed

    def spy(self, x):
        out = hook(self, x)
        recomputed.append((x.shape, out is not None))
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ujax._transform._Unfused, "uniopt_recomputed", spy)
        jax.jit(lambda g, s, p: tx.step(g, s, p))(grads[0], tx.init(params0), params0)
    assert sorted(set(recomputed)) == [((3, 5), False), (shapes[0], True)]


def test_the_history_is_exact_without_x64():
    """jax has no float64 with x64 off: the history rides as the float64 bits in uint32 pairs."""
    spec = uniopt.ScheduleFreeAdamW(lr=0.01, warmup_steps=3)
    params0, grads = _inputs("float32", steps=5)
    _, want = reference(spec, params0, grads)
    assert not jax.config.jax_enable_x64
    state = run_direct(ujax.from_spec(spec), params0, grads, jit=True)[1]
    assert state.history.dtype == jnp.uint32 and state.history.shape == (4, 2)
    assert history_of(spec, state.history) == want.history
    # a float32 copy could not hold it: the weight sum is not a float32 number
    assert float(np.float32(want.history.weight_sum)) != want.history.weight_sum
    assert ujax.adam().init([jnp.ones(2)]).history is None  # every other spec: no history


def test_one_host_callback_per_step_for_every_dtype():
    """The history advances once per step: one callback returns the scalars of every leaf dtype,
    each rounded once from the host's float64 values, and the next history."""
    tx = ujax.schedule_free_adamw(0.01, eps=1e-3)
    params0 = [initial([(3,)], d)[0] for d in ("float32", "bfloat16", "float16")]
    grads = [[grads_at(t, [p.shape], p.dtype)[0] for p in params0] for t in range(1, 6)]
    params = [jnp.asarray(p) for p in params0]
    jaxpr = str(jax.make_jaxpr(tx.step)(grads[0], tx.init(params), params))
    assert jaxpr.count("pure_callback") == 1
    want, want_state = reference(tx.spec, params0, grads)
    for jit in (False, True):
        got, state = run_direct(tx, params0, grads, jit=jit)
        assert_history_equal(got, want, f"jit={jit}")
        assert history_of(tx.spec, state.history) == want_state.history


def test_a_weight_decay_mask_shares_the_one_history():
    """transformation(spec, mask=...): the masked leaves run the spec without weight decay, every
    leaf reads the one history (it does not depend on the decay), still one callback per step."""
    spec = uniopt.ScheduleFreeAdamW(lr=0.01, weight_decay=0.1, warmup_steps=3)
    shapes = [(4,), (3, 2)]
    params0, grads = _inputs("float32", steps=8, shapes=shapes)
    tx = ujax.transformation(spec, mask=[True, False])
    decayed = reference(spec, params0[:1], [g[:1] for g in grads])[0]
    undecayed = reference(spec.replace(weight_decay=0.0), params0[1:], [g[1:] for g in grads])[0]
    want = [a + b for a, b in zip(decayed, undecayed, strict=True)]
    for jit in (False, True):
        assert_history_equal(run_direct(tx, params0, grads, jit=jit)[0], want, f"jit={jit}")
    params = [jnp.asarray(p) for p in params0]
    assert str(jax.make_jaxpr(tx.step)(grads[0], tx.init(params), params)).count("pure_callback") == 1


def test_a_general_schedule_eagerly():
    """A schedule whose values XLA might round differently inside a compiled step (a cosine):
    eagerly the schedule's values are jax's eager ones, which the core reference reads too."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, 0.02, 5, 40)
    spec = uniopt.ScheduleFreeAdamW(weight_decay=0.05)
    params0, grads = _inputs("float32", steps=12)
    want = reference(spec, params0, grads, [float(schedule(t)) for t in range(12)])[0]
    got = run_direct(ujax.from_spec(spec, learning_rate=schedule), params0, grads, jit=False)[0]
    assert_history_equal(got, want, "eager cosine")


def test_injected_hyperparameters_and_a_learning_rate_changed_between_steps():
    """optax.inject_hyperparams: the injected values reach the host computation of each step (the
    history advances with the learning rate of the state, changed after 5 steps)."""
    tx = optax.inject_hyperparams(ujax.schedule_free_adamw)(learning_rate=0.01, b1=0.5, weight_decay=0.1)
    params0, grads = _inputs("float32", steps=10)

    @jax.jit
    def step(params, state, g):
        updates, state = tx.update(g, state, params)
        return optax.apply_updates(params, updates), state

    params = [jnp.asarray(p) for p in params0]
    state = tx.init(params)
    got = []
    for t, g in enumerate(grads):
        if t == 5:
            state.hyperparams["learning_rate"] = jnp.asarray(0.02, jnp.float32)
        params, state = step(params, state, g)
        got.append([np.asarray(p) for p in params])
    f32 = [float(np.float32(v)) for v in (0.01, 0.02, 0.5, 0.999, 1e-8, 0.1)]
    spec = uniopt.ScheduleFreeAdamW(lr=f32[0], betas=(f32[2], f32[3]), eps=f32[4], weight_decay=f32[5])
    assert_history_equal(got, reference(spec, params0, grads, [f32[0]] * 5 + [f32[1]] * 5)[0], "injected")


def test_eval_params_and_schedule_free_eval_params():
    tx = ujax.schedule_free_adamw(0.01, convention="optax")
    params0, grads = _inputs("float32", steps=4)
    got, state = run_direct(tx, params0, grads, jit=False)
    params = [jnp.asarray(p) for p in got[-1]]
    x = tx.eval_params(state, params)
    assert_history_equal([ujax.schedule_free_eval_params(tx, state, params)], [x])
    assert not any(same_bits(a, b) for a, b in zip(x, params, strict=True))  # x is not y
    # inside a chain: the chain's state holds the UnioptState; the transformation is the inner one
    chain = optax.chain(optax.identity(), tx)
    chained = (optax.identity().init(params), state)
    assert_history_equal([ujax.schedule_free_eval_params(tx, chained, params)], [x])
    # a spec without an evaluation view: the identity for the method, refused by the function
    adam = ujax.adam(0.01)
    adam_state = adam.init(params)
    assert adam.eval_params(adam_state, params) is params
    with pytest.raises(ValueError, match=r"schedule_free_eval_params: Adam has no evaluation view"):
        ujax.schedule_free_eval_params(adam, adam_state, params)
    with pytest.raises(TypeError, match=r"tx must be the uniopt\.jax transformation"):
        ujax.schedule_free_eval_params(chain, chained, params)


def test_update_needs_the_parameters():
    tx = ujax.schedule_free_adamw()
    params = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match=r"ScheduleFreeAdamW: update needs `params` for ScheduleFreeAdamW"):
        tx.update({"w": jnp.ones(3)}, tx.init(params))
    with pytest.raises(ValueError, match=r"ScheduleFreeAdamW: the state has no history"):
        tx.step({"w": jnp.ones(3)}, tx.init(params)._replace(history=None), params)


# -- the factory --------------------------------------------------------------------------------------


def test_the_factory_takes_optax_contribs_arguments_in_their_order():
    theirs = inspect.signature(optax.contrib.schedule_free_adamw).parameters
    ours = inspect.signature(ujax.schedule_free_adamw).parameters
    positional = [n for n, p in ours.items() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert positional == list(theirs)
    assert [n for n, p in ours.items() if p.kind is inspect.Parameter.KEYWORD_ONLY] == ["r", "convention"]
    for name in theirs:  # optax's defaults, except weight_lr_power: the convention's (None)
        if name != "weight_lr_power":
            assert ours[name].default == theirs[name].default, name
    assert ours["weight_lr_power"].default is None and theirs["weight_lr_power"].default == 2.0
    assert ujax.schedule_free_adamw().spec == uniopt.ScheduleFreeAdamW()
    assert ujax.schedule_free_adamw(convention="optax").spec.weight_lr_power == 2.0
    assert ujax.schedule_free_adamw(convention="keras").spec.weight_lr_power == 0.0
    tx = ujax.schedule_free_adamw(0.01, 5, 0.8, 0.99, 1e-6, 0.1, 1.0)
    assert tx.spec == uniopt.ScheduleFreeAdamW(
        lr=0.01, warmup_steps=5, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, weight_lr_power=1.0
    )


def test_warmup_steps_none_is_no_warmup_and_zero_is_refused():
    assert ujax.schedule_free_adamw(warmup_steps=None).spec.warmup_steps == 0
    assert ujax.schedule_free_adamw(warmup_steps=5).spec.warmup_steps == 5
    assert ujax.schedule_free_adamw(warmup_steps=np.int64(3)).spec.warmup_steps == 3
    for zero in (0, 0.0, np.int64(0), np.asarray(0)):
        with pytest.raises(
            ValueError,
            match=r"uniopt\.jax\.schedule_free_adamw: warmup_steps=\S*0\S* is refused: .*never trains; "
            r"pass warmup_steps=None for no warmup",
        ):
            ujax.schedule_free_adamw(warmup_steps=zero)
    # a negative count: the core's message offers 0, which this factory refuses; the factory says so
    for negative in (-2, -0.5, np.int64(-1)):
        with pytest.raises(
            ValueError,
            match=r"ScheduleFreeAdamW: warmup_steps=\S+ is not an integer >= 0.*\[uniopt\.jax\."
            r"schedule_free_adamw: warmup_steps=None is the spec's 0 here, and warmup_steps=0 is "
            r"refused: .*pass warmup_steps=None for no warmup\]",
        ):
            ujax.schedule_free_adamw(warmup_steps=negative)
    with pytest.raises(ValueError, match=r"ScheduleFreeAdamW: warmup_steps=2\.5 is not an integer >= 0"):
        ujax.schedule_free_adamw(warmup_steps=2.5)
    with pytest.raises(ValueError, match=r"warmup_steps is a jax array; pass a Python number or None"):
        ujax.schedule_free_adamw(warmup_steps=jnp.asarray(5))
    # the reverse mapping spells the spec's 0 as None, and the table's cases go through the factory
    for case in ROW.cases:
        spec = ROW.make(case)
        name, kwargs = ujax.optax_arguments(spec)
        assert name == "schedule_free_adamw"
        assert (kwargs["warmup_steps"] is None) == (spec.warmup_steps == 0)
        assert ujax.schedule_free_adamw(**kwargs).spec == spec


def test_arguments_optax_has_and_uniopt_cannot_honour_are_refused():
    with pytest.raises(ValueError, match=r"state_dtype='float32' .* expected state_dtype=None"):
        ujax.schedule_free_adamw(state_dtype="float32")
    with pytest.raises(ValueError, match=r"ScheduleFreeAdamW: .*r.*optax"):
        ujax.schedule_free_adamw(r=1.0, convention="optax")
    with pytest.raises(ValueError, match=r"betas\[0\]=1\.0 is out of range.*b1 is uniopt's betas\[0\]"):
        ujax.schedule_free_adamw(b1=1.0)


# -- porting ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("convention", ["uniopt", "optax"])
def test_export_and_import_through_a_file_continue_bitwise(tmp_path, convention, jit):
    spec = uniopt.ScheduleFreeAdamW(lr=0.01, warmup_steps=4, weight_decay=0.05, convention=convention)
    params0, grads = _inputs("float32", steps=10)
    want, want_state = reference(spec, params0, grads)
    tx = ujax.from_spec(spec)
    step = jax.jit(tx.step) if jit else tx.step
    params = [jnp.asarray(p) for p in params0]
    state = tx.init(params)
    for g in grads[:6]:
        params, state = step(g, state, params)
    record = ujax.export_state(tx, state, params)
    assert record.history == reference(spec, params0, grads[:6])[1].history._asdict()
    uniopt.save_state(tmp_path / "sf.npz", record)
    loaded = uniopt.load_state(tmp_path / "sf.npz")
    fresh = ujax.from_spec(loaded.to_spec())
    state = ujax.import_state(fresh, loaded, params)
    assert not same_bits(state.history, tx.init(params).history)  # not the start: the run's
    step = jax.jit(fresh.step) if jit else fresh.step
    for g in grads[6:]:
        params, state = step(g, state, params)
    assert_history_equal([params], [want[-1]], "resumed")
    assert history_of(spec, state.history) == want_state.history
    # the core continues a record exported by uniopt.jax, and the other way round
    arrays = [np.asarray(p) for p in reference(spec, params0, grads[:6])[0][-1]]
    core_state = uniopt.porting.import_state(loaded, spec, arrays)
    for g in grads[6:]:
        arrays, core_state = spec.update(g, core_state, arrays)
    assert_history_equal([arrays], [want[-1]], "core resumed")


def test_a_record_without_the_history_is_refused():
    tx = ujax.schedule_free_adamw(0.01)
    params = [jnp.ones(3)]
    state = tx.init(params)
    with pytest.raises(
        ValueError, match=r"export_state: ScheduleFreeAdamW keeps a history and the state has none"
    ):
        ujax.export_state(tx, state._replace(history=None), params)
    record = ujax.export_state(tx, state, params)
    with pytest.raises(ValueError, match=r"keeps the history .*; the state holds none"):
        ujax.import_state(tx, dataclasses.replace(record, history=None), params)


# -- optax's own implementation -----------------------------------------------------------------------

# rank >= 1 leaves only: eagerly XLA divides a 0-d leaf by b1 where it multiplies the others by
# 1/b1 (the spec follows the latter for every shape; measured 3 to 5 ulp on a 0-d leaf)
OPTAX_SHAPES = ((64, 32), (8,), (3, 1, 2))
OPTAX_CASES = [
    pytest.param({}, id="defaults"),
    pytest.param({"learning_rate": 0.01, "warmup_steps": 5, "weight_decay": 0.01}, id="warmup_decay"),
    pytest.param({"learning_rate": 0.01, "b1": 0.5, "b2": 0.99, "eps": 1e-6}, id="beta1_half"),
    pytest.param({"learning_rate": 0.01, "weight_lr_power": 1.0}, id="power1"),
]
# under jax.jit XLA contracts optax's multiply-adds into FMAs and folds (1/b1)*(1-c) into one
# scalar (uniopt's namespace keeps the spec's roundings): measured 2026-12-01 over these cases, 30
# steps, at most 13 ulp in float32 (y; relative 9.2e-7) and 12 in float64 (x; relative 1.8e-15);
# with warmup and x64, optax's float32 warmup schedule itself is contracted, which moves the float64
# weights: relative 2.2e-9 (16,220,951 ulp). Bounds: 4x those
JIT_ULP = 4 * 13
JIT_X64_WARMUP_RELATIVE = 4 * 2.2e-9


def _relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), np.finfo(np.float64).tiny)))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kwargs", OPTAX_CASES)
def test_the_optax_convention_is_optax_contribs_schedule_free_adamw(kwargs, dtype):
    """Eagerly bit for bit: y (optax's update + apply_updates against the rule's y), x
    (schedule_free_eval_params against eval_params), z, nu and the history (optax keeps it in the
    parameter dtype: the spec's float32 fields, or its float64 ones with x64). Under jit within the
    measured bound above."""
    with jax.enable_x64(dtype == "float64"):
        params0 = [jnp.asarray(p) for p in initial(OPTAX_SHAPES, dtype)]
        grads = [[jnp.asarray(g) for g in grads_at(t, OPTAX_SHAPES, dtype)] for t in range(1, STEPS + 1)]
        theirs = optax.contrib.schedule_free_adamw(**kwargs)
        ours = ujax.schedule_free_adamw(**kwargs, convention="optax")

        def native(params, state, g):
            updates, state = theirs.update(g, state, params)
            return optax.apply_updates(params, updates), state

        for jit in (False, True):
            native_step = jax.jit(native) if jit else native
            our_step = jax.jit(ours.step) if jit else ours.step
            tp, ts, op, os_ = params0, theirs.init(params0), params0, ours.init(params0)
            worst, relative, history_equal = 0, 0.0, True
            for g in grads:
                tp, ts = native_step(tp, ts, g)
                op, os_ = our_step(g, os_, op)
                pairs = [
                    *zip(op, tp, strict=True),
                    *zip(
                        ours.eval_params(os_, op),
                        optax.contrib.schedule_free_eval_params(ts, tp),
                        strict=True,
                    ),
                    *zip(os_.slots["z"], ts.z, strict=True),
                    *zip(os_.slots["exp_avg_sq"], ts.base_optimizer_state[0].nu, strict=True),
                ]
                if not jit:
                    for i, (a, b) in enumerate(pairs):
                        assert same_bits(a, b), i
                worst = max(worst, *(ulp_distance(a, b) for a, b in pairs))
                relative = max(relative, *(_relative(a, b) for a, b in pairs))
                h = history_of(ours.spec, os_.history)
                mine = (h.weight_sum, h.lr_max) if dtype == "float64" else (h.weight_sum_f32, h.lr_max_f32)
                history_equal &= (float(ts.weight_sum), float(ts.max_lr)) == mine
                if not jit:
                    assert history_equal
            if not jit:
                assert worst == 0
            elif dtype == "float64" and "warmup_steps" in kwargs:
                assert relative <= JIT_X64_WARMUP_RELATIVE, relative
            else:
                assert worst <= JIT_ULP, worst
