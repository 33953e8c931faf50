"""Drop-in fidelity of ``convention="keras"``: code written for ``keras.optimizers`` means the same
with ``uniopt.tf``. Every expected value is Keras's own optimizer run side by side (or, for the
refusals, Keras's own constructor)."""

from __future__ import annotations

import inspect
import math
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import uniopt.tf as ut
from uniopt.registry import TABLE

NATIVE = tuple(info.keras.native for info in TABLE if info.keras is not None and info.keras.native)
"""Keras's optimizers that uniopt.tf offers under Keras's own name (SGD ... AdamW, Adamax, Nadam, ...)."""
UNIOPT_ONLY = {
    "dampening",
    "lr_decay",
    "maximize",
    "convention",
    "decoupled_weight_decay",
    "degenerated_to_sgd",
    "momentum_decay",
    "r",  # ScheduleFreeAdamW's (Keras averages uniformly)
    "weight_lr_power",
    # Adafactor's: optax.adafactor's arguments (the optax convention)
    "momentum",
    "decay_offset",
    "min_dim_size_to_factor",
    "factored",
    "multiply_by_parameter_scale",
    # Muon's: the normalisation's eps (Keras hard-codes 1e-7), torch's and optax's scalings, the
    # products, the Adam step for every matrix
    "eps",
    "adjust_lr_fn",
    "matmul",
    "adam_2d",
}


def _positional(cls) -> list[str]:
    return [
        name
        for name, p in inspect.signature(cls).parameters.items()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]


def _keyword_only(cls) -> set[str]:
    return {name for name, p in inspect.signature(cls).parameters.items() if p.kind == p.KEYWORD_ONLY}


# -- positional arguments --------------------------------------------------------------------------
@pytest.mark.parametrize("name", NATIVE)
def test_positional_order_is_keras_own(name):
    """Name by name, the positional parameters are those of Keras's class, base arguments included;
    what Keras lacks is keyword-only."""
    assert _positional(getattr(ut, name)) == _positional(getattr(keras.optimizers, name))
    assert _keyword_only(getattr(ut, name)) <= UNIOPT_ONLY
    assert "convention" in _keyword_only(getattr(ut, name))


def test_radam_positional_order_is_adams_without_amsgrad():
    adam = [n for n in _positional(keras.optimizers.Adam) if n != "amsgrad"]
    assert _positional(ut.RAdam) == adam
    assert _keyword_only(ut.RAdam) == {
        "decoupled_weight_decay",
        "degenerated_to_sgd",
        "maximize",
        "convention",
    }


def test_positional_calls_mean_what_they_mean_in_keras():
    ours, theirs = ut.Adagrad(0.01, 0.5, convention="keras"), keras.optimizers.Adagrad(0.01, 0.5)
    assert ours.initial_accumulator_value == theirs.initial_accumulator_value == 0.5
    assert ours.spec.lr_decay == 0.0
    ours, theirs = (
        ut.SGD(0.1, 0.9, False, 0.01, convention="keras"),
        keras.optimizers.SGD(0.1, 0.9, False, 0.01),
    )
    assert ours.weight_decay == pytest.approx(theirs.weight_decay, rel=1e-7)
    assert ours.spec.dampening == 0.0
    base = (None, None, None, True, 0.5, 3, 4.0, 2, "opt")  # clipnorm .. name, positionally
    for name in NATIVE:
        positional = _positional(getattr(keras.optimizers, name))
        lead = positional.index("clipnorm")  # Keras's own before the base ones (Muon's after them too)
        defaults = [
            inspect.signature(getattr(keras.optimizers, name)).parameters[n].default for n in positional
        ]
        args, tail = defaults[:lead], defaults[lead + len(base) :]
        ours = getattr(ut, name)(*args, *base, *tail, convention="keras")
        theirs = getattr(keras.optimizers, name)(*args, *base, *tail)
        for attr in (
            "use_ema",
            "ema_momentum",
            "ema_overwrite_frequency",
            "loss_scale_factor",
            "gradient_accumulation_steps",
            "name",
        ):
            assert getattr(ours, attr) == getattr(theirs, attr), (name, attr)


@pytest.mark.parametrize("name", [*NATIVE, "RAdam"])
def test_uniopt_only_arguments_are_keyword_only(name):
    cls = getattr(ut, name)
    with pytest.raises(TypeError):
        cls(*([None] * len(_positional(cls))), "uniopt")


# -- hyperparameter validation against Keras's ------------------------------------------------------
VALUES = (-1.0, 0.0, 0.5, 1.0, 2.0, 0, 1, None, math.nan, np.float32(0.5), tf.constant(0.5), True)
KERAS_HYPER = {
    name: [n for n in _positional(getattr(keras.optimizers, name)) if n != "name"] for name in NATIVE
}


def _outcome(make):
    try:
        make()
    except Exception as exc:
        return type(exc)
    return None


# where Keras's refusal is an accident of its code, uniopt refuses with ValueError, as it refuses
# every bad hyperparameter: Keras's Lion compares beta_1 with 0 (None <= 0 is a TypeError)
OTHER_EXCEPTION = {("Lion", "beta_1", None): ValueError}


@pytest.mark.parametrize("name", NATIVE)
def test_what_keras_refuses_is_refused_with_the_same_exception(name):
    refused = 0
    for arg in KERAS_HYPER[name]:
        for value in VALUES:
            extra = {"use_ema": True} if arg.startswith("ema_") else {}
            kwargs = {arg: value, **extra}
            theirs = _outcome(lambda kw=kwargs: getattr(keras.optimizers, name)(**kw))
            if theirs is None:
                continue
            refused += 1
            ours = _outcome(lambda kw=kwargs: getattr(ut, name)(convention="keras", **kw))
            other = OTHER_EXCEPTION.get((name, arg, value)) if value is None else None
            assert ours is (other or theirs), (name, arg, value)
    assert refused > 0


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("SGD", {"momentum": 2.0}),
        ("SGD", {"momentum": -0.1}),
        ("SGD", {"momentum": 1}),  # Keras wants a float
        ("SGD", {"learning_rate": 1}),
        ("Adam", {"learning_rate": np.float32(0.1)}),
        ("AdamW", {"weight_decay": None}),
    ],
)
def test_keras_refusals(name, kwargs):
    with pytest.raises(ValueError):
        getattr(keras.optimizers, name)(**kwargs)  # the referee
    with pytest.raises(ValueError, match="|".join(kwargs)):
        getattr(ut, name)(convention="keras", **kwargs)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("SGD", {"momentum": 1.0}),
        ("SGD", {"momentum": 0.0, "nesterov": True}),
        ("SGD", {"weight_decay": None}),
        ("Adam", {"weight_decay": None}),
        ("AdamW", {"weight_decay": 0.0}),
    ],
)
def test_keras_acceptances(name, kwargs):
    getattr(keras.optimizers, name)(**kwargs)  # the referee
    getattr(ut, name)(convention="keras", **kwargs)


def test_adamw_refuses_weight_decay_none_in_every_convention():
    for convention in ("keras", "uniopt", "torch"):
        with pytest.raises(ValueError, match=r"weight_decay=None"):
            ut.AdamW(weight_decay=None, convention=convention)


def test_torch_convention_still_refuses_nesterov_without_momentum():
    with pytest.raises(ValueError, match="nesterov"):
        ut.SGD(momentum=0.0, nesterov=True, convention="torch")


# -- side by side with Keras's optimizer ------------------------------------------------------------
def _run_both(name, dtype, steps, configure, mode="eager", **kwargs):
    rng = np.random.default_rng(7)
    start = rng.standard_normal((3, 4)).astype(dtype)
    native, ours = keras.Variable(start, dtype=dtype), keras.Variable(start, dtype=dtype)
    theirs = getattr(keras.optimizers, name)(**kwargs)
    mine = getattr(ut, name)(convention="keras", **kwargs)
    configure(theirs), configure(mine)
    grads = [tf.constant(rng.standard_normal((3, 4)).astype(dtype)) for _ in range(steps)]

    def stepper(opt, var, mode):
        def step(g):
            opt.apply([g], [var])

        if mode == "eager":
            return step
        return tf.function(step, jit_compile=mode == "xla")

    # ours runs eagerly, in a tf.function or under XLA (conftest sets the bitwise XLA flags);
    # Keras's native step runs eagerly: in a tf.function TensorFlow's graph optimizer rewrites its
    # Adagrad's x / sqrt(s) into x * rsqrt(s) (1 ulp apart in float64); uniopt is the same in both
    s_theirs, s_mine = stepper(theirs, native, "eager"), stepper(mine, ours, mode)
    for g in grads:
        s_theirs(g)
        s_mine(g)
    assert not np.array_equal(ours.numpy(), start)
    bits = f"uint{start.itemsize * 8}"
    np.testing.assert_array_equal(ours.numpy().view(bits), native.numpy().view(bits))


def test_nesterov_without_momentum_is_a_plain_step_as_in_keras():
    _run_both("SGD", "float64", 3, lambda o: None, nesterov=True, learning_rate=0.1)
    opt = ut.SGD(convention="keras", nesterov=True)
    v = keras.Variable(np.array([1.0]))
    opt.apply([tf.constant([1.0], tf.float64)], [v])
    assert v.numpy()[0] == 1.0 - float(np.float32(0.01))  # Keras's float32 default lr, once


def _set_after(opt):
    opt.learning_rate = 0.1


LR_WAYS = {
    "float": ({"learning_rate": 0.1}, lambda o: None),
    "set_after_construction": ({}, _set_after),
    "callable": ({"learning_rate": lambda: 0.1}, lambda o: None),
    "schedule": ({"learning_rate": keras.optimizers.schedules.ExponentialDecay(0.1, 3, 0.7)}, lambda o: None),
}


@pytest.mark.parametrize("way", list(LR_WAYS))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("SGD", {}),
        ("SGD", {"momentum": 0.9, "weight_decay": 0.01}),
        ("Adagrad", {}),
        ("RMSprop", {"momentum": 0.5}),
    ],
    ids=["SGD", "SGD-momentum", "Adagrad", "RMSprop"],
)
@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
def test_learning_rate_passes_through_float32_however_it_is_set(way, dtype, name, kwargs, mode):
    lr_kwargs, configure = LR_WAYS[way]
    _run_both(name, dtype, 4, configure, mode, **lr_kwargs, **kwargs)


def test_single_sgd_step_in_float64_sees_keras_float32_rate():
    """One SGD step from 1.0 with gradient 1.0 in float64: 1 - float32(0.1) = 0.8999999985098839
    (hand-computed), whichever way 0.1 was given."""
    want = 1.0 - float(np.float32(0.1))
    constant = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 1.0)  # 0.1 at every step
    ways = [({"learning_rate": 0.1}, None), ({}, 0.1), ({"learning_rate": lambda: 0.1}, None)]
    ways += [({"learning_rate": constant}, None), ({}, lambda: 0.1), ({}, constant)]
    for kwargs, later in ways:
        opt = ut.SGD(convention="keras", **kwargs)
        if later is not None:
            opt.learning_rate = later
        v = keras.Variable(np.array([1.0]))
        opt.apply([tf.constant([1.0], tf.float64)], [v])
        assert v.numpy()[0] == want == 0.8999999985098839, (kwargs, later)


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
def test_the_default_convention_reads_a_callable_rate_unrounded_in_every_mode(mode):
    """One SGD step from 1.0 with gradient 1.0 in float64 under the default convention: 1 - 0.1 =
    0.9 (hand-computed: the rate is the Python float), whether 0.1 is a float or a callable's
    value, eagerly and traced (traced, a callable's float had gone through float32 first:
    0.8999999985098839)."""

    def one_step(learning_rate) -> float:
        opt = ut.SGD(learning_rate=learning_rate)
        v = keras.Variable(np.array([1.0]))
        opt.build([v])

        def step():
            opt.apply([tf.constant([1.0], tf.float64)], [v])

        if mode != "eager":
            step = tf.function(step, jit_compile=mode == "xla")
        step()
        return v.numpy()[0]

    for learning_rate in (0.1, lambda: 0.1):
        assert one_step(learning_rate) == 1.0 - 0.1 == 0.9, learning_rate


@pytest.mark.parametrize(
    ("name", "flag"),
    [("SGD", "nesterov"), ("RMSprop", "centered"), ("Adam", "amsgrad"), ("AdamW", "amsgrad")],
)
@pytest.mark.parametrize("value", [0, 1, np.bool_(True)])
def test_flags_given_as_zero_or_one_mean_what_keras_reads(name, flag, value):
    """Keras tests its flags by truth value, so ``amsgrad=1`` is AMSGrad there; the same holds here,
    side by side with Keras's optimizer."""
    kwargs = {flag: value, "momentum": 0.5} if name == "SGD" else {flag: value}
    assert getattr(ut, name)(convention="keras", **kwargs).spec.hyperparameters[flag] is bool(value)
    _run_both(name, "float32", 3, lambda o: None, learning_rate=0.1, **kwargs)
    with pytest.raises(ValueError, match=flag):  # other conventions keep uniopt's strict bools
        getattr(ut, name)(**{flag: value})


@pytest.mark.parametrize("name", NATIVE)
def test_a_callback_compounding_the_rate_sees_kerass_float32_values(name):
    """``LearningRateScheduler(lambda epoch, lr: lr * 0.9)`` reads the rate back and multiplies it:
    Keras's float32 variable re-rounds each product, so uniopt's must store it the same way."""
    results = []
    for make in (
        lambda: getattr(ut, name)(0.01, convention="keras"),
        lambda: getattr(keras.optimizers, name)(0.01),
    ):
        opt = make()
        var = keras.Variable(np.ones(3, "float64"))
        for _ in range(8):
            opt.learning_rate = float(keras.ops.convert_to_numpy(opt.learning_rate)) * 0.9
            opt.apply_gradients([(tf.constant([0.5, -0.25, 1.0], tf.float64), var)])
        results.append((float(keras.ops.convert_to_numpy(opt.learning_rate)), var.numpy()))
    (uni_lr, uni_var), (native_lr, native_var) = results
    assert uni_lr == native_lr
    assert np.array_equal(uni_var, native_var)


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_tensor_hyperparameters_are_taken_as_keras_takes_them(name):
    """``beta_1=tf.constant(0.9)``: Keras reads the tensor's (float32) value; so does uniopt."""
    trajectories = []
    for make in (
        lambda: getattr(ut, name)(beta_1=tf.constant(0.9), beta_2=np.float32(0.99), convention="keras"),
        lambda: getattr(keras.optimizers, name)(beta_1=tf.constant(0.9), beta_2=np.float32(0.99)),
    ):
        opt = make()
        var = keras.Variable(np.ones(3, "float32"))
        for _ in range(3):
            opt.apply_gradients([(tf.constant([0.5, -0.25, 1.0]), var)])
        trajectories.append(var.numpy())
    np.testing.assert_array_equal(*trajectories)


def _sparse_steps(opt, steps=2):
    # row 0 twice, with slices of different signs (|g1| + |g2| is not |g1 + g2|: Adamax)
    grad = tf.IndexedSlices(tf.constant([[1.0, 1.0], [-0.5, 2.0]]), tf.constant([0, 0]), tf.constant([3, 2]))
    var = keras.Variable(np.ones((3, 2), "float32"))
    for _ in range(steps):
        opt.apply_gradients([(grad, var)])
    return var.numpy()


@pytest.mark.parametrize(
    "name",
    [
        info.keras.native
        for info in TABLE
        if info.keras and info.keras.native and not info.keras.sparse_duplicates_match_keras
    ],
)
def test_a_sparse_gradient_with_repeated_indices_warns_where_keras_differs(name):
    """Keras updates its slots from each slice separately (scatter updates); uniopt densifies first
    (duplicates summed): the rows hit twice differ (measured here against Keras), and uniopt says
    so once."""
    with pytest.warns(UserWarning, match="repeated indices") as caught:
        got = _sparse_steps(getattr(ut, name)(convention="keras"))
    assert len([w for w in caught if "repeated indices" in str(w.message)]) == 1
    native = _sparse_steps(getattr(keras.optimizers, name)())
    assert not np.array_equal(got[0], native[0])  # the row with repeated indices differs
    np.testing.assert_array_equal(got[1:], native[1:])  # rows without a gradient agree


@pytest.mark.parametrize(
    "name",
    [info.keras.native for info in TABLE if info.keras and info.keras.sparse_duplicates_match_keras],
)
def test_linear_updates_with_repeated_sparse_indices_are_kerass_and_do_not_warn(name):
    """SGD's update and Lion's moment are linear in the gradient: summing duplicates first is
    what Keras computes too."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        got = _sparse_steps(getattr(ut, name)(convention="keras"))
    np.testing.assert_array_equal(got, _sparse_steps(getattr(keras.optimizers, name)()))
