"""uniopt.jax as a drop-in for optax's aliases: optax's signatures, ``mask=``, ``mu_dtype=``,
complex parameters, ``eps=0`` Adagrad, ``optax.inject_hyperparams`` and ``update`` without params.

Expected values come from optax's own aliases run side by side, or are computed by hand.
"""

from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import uniopt
import uniopt.jax as ujax

NAMES = (
    "sgd",
    "adagrad",
    "rmsprop",
    "adam",
    "adamw",
    "radam",
    "adamax",
    "nadam",
    "nadamw",
    "adadelta",
    "lion",
)


def _run(tx, params, grads_seq, jit=True):
    """Updates and final params of ``tx`` over the gradient sequence."""
    update = jax.jit(tx.update) if jit else tx.update
    state = tx.init(params)
    for grads in grads_seq:
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def _grads(shape, steps, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.normal(size=shape).astype(dtype)) for _ in range(steps)]


# -- signatures -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_signature_is_optaxs_name_by_name(name):
    """Same names, same positional order (then keyword-only), and under convention="optax" the
    same meaning of each default."""
    ours = inspect.signature(getattr(ujax, name)).parameters
    theirs = inspect.signature(getattr(optax, name)).parameters
    assert list(ours)[: len(theirs)] == [
        p for p in theirs if theirs[p].kind is not inspect.Parameter.KEYWORD_ONLY
    ] + [p for p in theirs if theirs[p].kind is inspect.Parameter.KEYWORD_ONLY]
    for arg, param in theirs.items():
        assert ours[arg].kind is param.kind, arg
    tx = getattr(ujax, name)(1e-3, convention="optax")
    _, resolved = ujax.optax_arguments(tx.spec)
    spec_args = ujax.ALIASES[name][1]
    for arg, param in theirs.items():
        if arg == "learning_rate":
            continue
        default = param.default
        if arg in spec_args:  # the resolved value means optax's default
            want = 0.0 if default is None else default  # optax's momentum=None: no momentum
            assert resolved[arg] == want, arg
            assert ours[arg].default in (None, default), arg  # None: the convention's default
        else:  # optax-only: optax's default is accepted with convention="optax", and so is None
            getattr(ujax, name)(1e-3, convention="optax", **{arg: default})
            assert ours[arg].default in (None, default), arg
            getattr(ujax, name)(1e-3, convention="optax", **{arg: ours[arg].default})


@pytest.mark.parametrize(
    ("name", "arg", "value"),
    [
        ("adam", "eps_root", 1e-8),
        ("adamw", "eps_root", 1e-8),
        ("radam", "eps_root", 1e-8),
        ("radam", "threshold", 4.0),
        ("adam", "nesterov", True),
        ("radam", "nesterov", True),
        ("rmsprop", "nesterov", True),
        ("rmsprop", "initial_scale", 1.0),
        ("rmsprop", "bias_correction", True),
        ("rmsprop", "eps_in_sqrt", False),
        ("nadam", "nesterov", False),
        ("nadamw", "nesterov", False),
        ("nadam", "eps_root", 1e-8),
    ],
)
def test_optax_arguments_uniopt_cannot_honour_are_refused_by_name(name, arg, value):
    with pytest.raises(ValueError, match=rf"uniopt.jax.{name}: {arg}={value!r} .* expected {arg}="):
        getattr(ujax, name)(1e-3, convention="optax", **{arg: value})


def test_positional_arguments_mean_what_optax_means():
    assert ujax.adam(1e-3, 0.8, 0.99, 1e-6, convention="optax").spec.betas == (0.8, 0.99)
    assert ujax.sgd(0.1, 0.9, True, convention="optax").spec.nesterov is True
    assert ujax.rmsprop(0.1, 0.95, 1e-6, convention="optax").spec.alpha == 0.95
    assert ujax.adamw(1e-3, 0.9, 0.999, 1e-8, 0.0, None, 0.3, convention="optax").spec.weight_decay == 0.3
    # the threshold uniopt's convention would misread is refused there, accepted where it means >= 5
    assert ujax.radam(1e-3, convention="optax", threshold=5.0).spec.convention == "optax"
    with pytest.raises(ValueError, match=r"threshold=5\.0 with convention='uniopt'"):
        ujax.radam(1e-3, threshold=5.0)


# -- mu_dtype / accumulator_dtype -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "arg"), [("adam", "mu_dtype"), ("adamw", "mu_dtype"), ("sgd", "accumulator_dtype")]
)
def test_state_dtype_is_taken_or_refused_naming_the_argument(name, arg):
    params = {"w": jnp.ones(3, jnp.float32)}
    extra = {"momentum": 0.9} if name == "sgd" else {}
    for ok in (None, jnp.float32, "float32"):
        state = getattr(ujax, name)(0.1, convention="optax", **extra, **{arg: ok}).init(params)
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.slots))
    # a moment wider than its parameter is refused at init, before any state exists
    wide = getattr(ujax, name)(0.1, convention="optax", **extra, **{arg: jnp.float32})
    with pytest.raises(
        ValueError, match=rf"{arg}=float32 for a parameter of dtype bfloat16: expected bfloat16: .*{arg}=None"
    ):
        wide.init({"w": jnp.ones(3, jnp.bfloat16)})
    with pytest.raises(ValueError, match=rf"{arg}=int32 is not a real floating dtype; expected {arg}=None"):
        getattr(ujax, name)(0.1, **extra, **{arg: jnp.int32})
    with pytest.raises(ValueError, match=rf"{arg}=complex64 is not a real floating dtype"):
        getattr(ujax, name)(0.1, **extra, **{arg: "complex64"})
    with pytest.raises(TypeError, match=rf"{arg}='nonsense' is not a dtype"):
        getattr(ujax, name)(0.1, **{arg: "nonsense"})


# -- complex parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize("nesterov", [False, True])
def test_complex_sgd_matches_optax(nesterov):
    rng = np.random.default_rng(1)
    params = jnp.asarray((rng.normal(size=5) + 1j * rng.normal(size=5)).astype(np.complex64))
    grads = [
        jnp.asarray((rng.normal(size=5) + 1j * rng.normal(size=5)).astype(np.complex64)) for _ in range(6)
    ]
    ours, state = _run(ujax.sgd(0.1, 0.9, nesterov, convention="optax"), params, grads)
    theirs, _ = _run(optax.sgd(0.1, 0.9, nesterov), params, grads)
    assert ours.dtype == jnp.complex64
    assert state.slots["momentum_buffer"].dtype == jnp.complex64
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_complex_params_follow_the_real_pairs_with_the_torch_convention():
    """torch.optim (and uniopt.torch) treat a complex number as a (real, imag) pair: the result is
    the NumPy reference run on the pairs."""
    rng = np.random.default_rng(2)
    z = (rng.normal(size=4) + 1j * rng.normal(size=4)).astype(np.complex64)
    gs = [(rng.normal(size=4) + 1j * rng.normal(size=4)).astype(np.complex64) for _ in range(3)]
    tx = ujax.adam(0.01, convention="torch")
    state, params = tx.init(jnp.asarray(z)), jnp.asarray(z)
    for g in gs:
        params, state = tx.step(jnp.asarray(g), state, params)
    spec = uniopt.Adam(lr=0.01, convention="torch")
    pair = lambda c: np.stack([c.real, c.imag], axis=-1)  # noqa: E731
    ref_params, ref_state = [pair(z)], spec.init([pair(z)])
    for g in gs:
        ref_params, ref_state = spec.update([pair(g)], ref_state, ref_params)
    want = ref_params[0][..., 0] + 1j * ref_params[0][..., 1]
    np.testing.assert_array_equal(np.asarray(params), want.astype(np.complex64))


def _complex(rng, shape, dtype=np.complex64):
    return jnp.asarray((rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(dtype))


# (uniopt.jax factory and arguments, optax alias and arguments, our slot -> optax's state field)
COMPLEX_CASES = {
    "adam": (("adam", {}), ("adam", {}), {"exp_avg": "mu", "exp_avg_sq": "nu"}),
    "adamw": (
        ("adamw", {"weight_decay": 0.1}),
        ("adamw", {"weight_decay": 0.1}),
        {"exp_avg": "mu", "exp_avg_sq": "nu"},
    ),
    "amsgrad": (
        ("adam", {"amsgrad": True}),
        ("amsgrad", {}),
        {"exp_avg": "mu", "exp_avg_sq": "nu", "max_exp_avg_sq": "nu_max"},
    ),
    "radam": (("radam", {}), ("radam", {}), {"exp_avg": "mu", "exp_avg_sq": "nu"}),
    "adagrad": (("adagrad", {}), ("adagrad", {}), {"sum": "sum_of_squares"}),
    "adagrad_eps0": (
        ("adagrad", {"eps": 0.0, "initial_accumulator_value": 0.0}),
        ("adagrad", {"eps": 0.0, "initial_accumulator_value": 0.0}),
        {"sum": "sum_of_squares"},
    ),
    "rmsprop": (("rmsprop", {}), ("rmsprop", {}), {"square_avg": "nu"}),
    "adamax": (("adamax", {}), ("adamax", {}), {"exp_avg": "mu", "exp_inf": "nu"}),
    "rmsprop_centered_momentum": (
        ("rmsprop", {"centered": True, "momentum": 0.9}),
        ("rmsprop", {"centered": True, "momentum": 0.9}),
        {"square_avg": "nu", "grad_avg": "mu", "momentum_buffer": "trace"},
    ),
}


def _complex_pair(case):
    (ours, ours_kw), (theirs, theirs_kw), fields = COMPLEX_CASES[case]
    return (
        getattr(ujax, ours)(0.01, convention="optax", **ours_kw),
        getattr(optax, theirs)(0.01, **theirs_kw),
        fields,
    )


def _optax_field(state, field):
    """The leaf of optax's (chained) state named ``field``."""
    for part in jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, "_fields")):
        if hasattr(part, "_fields") and field in part._fields:
            return getattr(part, field)
    raise KeyError(field)


def _complex_run(case, jit, steps=20, size=2000):
    rng = np.random.default_rng(7)
    params = _complex(rng, (size,))
    grads = [_complex(rng, (size,)) for _ in range(steps)]
    if case == "adagrad_eps0":  # an entry whose accumulator stays 0: optax's update there is 0
        grads = [g.at[0].set(0) for g in grads]
    ours, theirs, fields = _complex_pair(case)
    p1, s1 = _run(ours, params, grads, jit=jit)
    p2, s2 = _run(theirs, params, grads, jit=jit)
    return (p1, s1), (p2, s2), fields


@pytest.mark.parametrize("case", ["adam", "adamw", "amsgrad"])
def test_complex_adam_matches_optax_bit_for_bit_eagerly(case):
    """optax keeps |g|^2 (numerics.abs_sq) in a complex second moment; op by op, every part of the
    parameters and of each state buffer is optax's."""
    (p1, s1), (p2, s2), fields = _complex_run(case, jit=False)
    assert p1.dtype == jnp.complex64
    np.testing.assert_array_equal(np.asarray(p1), np.asarray(p2))
    for ours, theirs in fields.items():
        np.testing.assert_array_equal(np.asarray(s1.slots[ours]), np.asarray(_optax_field(s2, theirs)))


# Measured distances from optax under jax.jit (2000 complex64 parameters of unit scale, 20 steps of
# lr 0.01, CPU): at most 6e-7 in any part of a parameter, the same as for real float32 parameters.
# Why not 0: optax's compiled update contracts (1 - b2) * |g|^2 + b2 * v into a fused multiply-add
# (the spec rounds the product); adagrad and rmsprop multiply by rsqrt, which is not correctly
# rounded, where the spec divides by the correctly rounded root; optax's radam computes its
# scalars op by op when eager, differently from its compiled graph, which the spec follows.
COMPLEX_JIT_ATOL = 1e-6


@pytest.mark.parametrize("case", sorted(COMPLEX_CASES))
def test_complex_params_match_optax_under_jit(case):
    (p1, s1), (p2, s2), fields = _complex_run(case, jit=True)
    np.testing.assert_allclose(np.asarray(p1), np.asarray(p2), rtol=0, atol=COMPLEX_JIT_ATOL)
    for ours, theirs in fields.items():
        mine, optaxs = np.asarray(s1.slots[ours]), np.asarray(_optax_field(s2, theirs))
        assert mine.dtype == optaxs.dtype == np.complex64, ours  # optax's state dtype
        np.testing.assert_allclose(mine, optaxs, rtol=1e-5, atol=1e-7)
    # the second moment is |g|^2 per complex entry: real, in a complex buffer
    second = {"exp_avg_sq", "sum", "square_avg"} & set(fields)
    for name in second:
        assert not np.any(np.asarray(s1.slots[name]).imag)


@pytest.mark.parametrize("name", ["adam", "adamw", "radam"])
def test_complex_first_step_moves_by_lr_along_the_gradients_phase(name):
    """By hand: at step 1, m_hat = g and v_hat = |g|^2 * c, so Adam's (and AdamW's, here without
    decay) update is -lr * g / (|g| sqrt(c)), a step of length lr whatever the phase; RAdam's
    unrectified first step is -lr * g. (Real pairs with their own moments would move each part by
    lr.) c = float32(1 - 0.999) / (1 - float32(0.999)) = 1 - 1.3e-5: optax's float32 bias
    correction at jax's defaults."""
    g = jnp.asarray([3 + 4j, -1j, 0.5 - 0.5j], jnp.complex64)
    kwargs = {"weight_decay": 0.0} if name == "adamw" else {}
    tx = getattr(ujax, name)(0.01, convention="optax", **kwargs)
    new, _ = tx.step(g, tx.init(jnp.zeros(3, jnp.complex64)), jnp.zeros(3, jnp.complex64))
    gn = np.asarray(g, np.complex128)
    c = float(np.float32(1 - 0.999)) / (1 - float(np.float32(0.999)))
    want = -0.01 * gn if name == "radam" else -0.01 * gn / (np.abs(gn) * np.sqrt(c))
    np.testing.assert_allclose(np.asarray(new), want, rtol=1e-6)


NUMPY_COMPLEX_DIVISION = pytest.mark.xfail(
    strict=True,
    reason="Adamax's optax rule divides a complex array by a complex one with zero imaginary part: "
    "NumPy's complex division rounds differently from XLA's, which divides each part (measured: 8 "
    "of 300 elements 1 ulp apart after 8 steps); the spec would have to divide the parts itself",
)


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, marks=NUMPY_COMPLEX_DIVISION) if c == "adamax" else c for c in sorted(COMPLEX_CASES)],
)
def test_complex_numpy_reference_eager_and_jit_agree_bit_for_bit(case):
    """The spec's complex branch is one op sequence: uniopt.jax eagerly and under jax.jit give the
    NumPy reference's bits."""
    rng = np.random.default_rng(11)
    z = np.asarray(_complex(rng, (3, 50)))
    gs = [np.array(_complex(rng, (3, 50))) for _ in range(8)]
    for g in gs if case == "adagrad_eps0" else ():
        g[0, 0] = 0
    tx = _complex_pair(case)[0]
    spec = tx.spec
    ref_params, ref_state = [z], spec.init([z])
    for g in gs:
        ref_params, ref_state = spec.update([g], ref_state, ref_params)
    for step in (tx.step, jax.jit(tx.step)):
        params, state = jnp.asarray(z), tx.init(jnp.asarray(z))
        for g in gs:
            params, state = step(jnp.asarray(g), state, params)
        assert params.dtype == jnp.complex64
        np.testing.assert_array_equal(np.asarray(params).view(np.uint32), ref_params[0].view(np.uint32))
        for name in spec.slot_names():
            np.testing.assert_array_equal(
                np.asarray(state.slots[name]).view(np.uint32), ref_state.slots[0][name].view(np.uint32)
            )


# -- mask= ----------------------------------------------------------------------------------------


def test_adamw_mask_masks_only_the_weight_decay_as_optax_does():
    params = {"kernel": jnp.asarray([1.0, -2.0]), "bias": jnp.asarray([1.0])}
    grads = {"kernel": jnp.asarray([0.5, 0.5]), "bias": jnp.asarray([0.5])}
    mask = {"kernel": True, "bias": False}
    ours, _ = _run(ujax.adamw(1e-2, weight_decay=0.1, mask=mask, convention="optax"), params, [grads])
    theirs, _ = _run(optax.adamw(1e-2, weight_decay=0.1, mask=mask), params, [grads])
    # by hand: the first Adam step is lr * sign(g); the bias is not decayed: 1 - 0.01 = 0.99
    np.testing.assert_allclose(np.asarray(ours["bias"]), [0.99], rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(ours["kernel"]), [1 - 0.01 * (1 + 0.1), -2 - 0.01 * (1 - 0.2)], rtol=1e-6
    )
    for key in params:
        np.testing.assert_array_equal(np.asarray(ours[key]), np.asarray(theirs[key]))
    # optax.masked means something else: masked-out leaves get the raw gradient as their update
    wrapped, _ = _run(
        optax.masked(ujax.adamw(1e-2, weight_decay=0.1, convention="optax"), mask), params, [grads]
    )
    assert float(wrapped["bias"][0]) == 1.5


@pytest.mark.parametrize("convention", ["optax", "uniopt"])
def test_adamw_mask_as_a_callable_over_several_steps(convention):
    params = {"a": {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.zeros(3)}, "c": jnp.ones(2)}
    grads = [jax.tree.map(lambda p, g=g: g[: p.size].reshape(p.shape), params) for g in _grads((6,), 5)]
    decay_matrices = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)  # noqa: E731
    masked, _ = _run(
        ujax.adamw(1e-2, weight_decay=0.5, mask=decay_matrices, convention=convention), params, grads
    )
    decayed, _ = _run(ujax.adamw(1e-2, weight_decay=0.5, convention=convention), params, grads)
    undecayed, _ = _run(ujax.adamw(1e-2, weight_decay=0.0, convention=convention), params, grads)
    np.testing.assert_array_equal(np.asarray(masked["a"]["w"]), np.asarray(decayed["a"]["w"]))
    np.testing.assert_array_equal(np.asarray(masked["a"]["b"]), np.asarray(undecayed["a"]["b"]))
    np.testing.assert_array_equal(np.asarray(masked["c"]), np.asarray(undecayed["c"]))
    if convention == "optax":
        theirs, _ = _run(optax.adamw(1e-2, weight_decay=0.5, mask=decay_matrices), params, grads)
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), masked, theirs)


def test_mask_prefix_and_bad_masks():
    params = {"layer": {"w": jnp.ones(2), "b": jnp.ones(2)}}
    grads = {"layer": {"w": jnp.ones(2), "b": jnp.ones(2)}}
    ours, _ = _run(
        ujax.adamw(0.1, weight_decay=0.1, mask={"layer": False}, convention="optax"), params, [grads]
    )
    theirs, _ = _run(optax.adamw(0.1, weight_decay=0.1, mask={"layer": False}), params, [grads])
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), ours, theirs)
    tx = ujax.adamw(0.1, mask={"other": True})
    with pytest.raises(ValueError, match="mask must be a pytree of bools shaped like"):
        tx.update(grads, tx.init(params), params)
    tx = ujax.adamw(0.1, mask={"layer": jnp.asarray(True)})
    with pytest.raises(TypeError, match="mask leaves must be Python bools"):
        tx.update(grads, tx.init(params), params)
    with pytest.raises(TypeError, match="unexpected keyword argument 'mask'"):
        ujax.adam(0.1, mask={"layer": True})


def test_lion_and_nadamw_masks_mask_only_the_weight_decay_as_optax_does():
    params = {"kernel": jnp.asarray([1.0, -2.0]), "bias": jnp.asarray([1.0])}
    grads = [{"kernel": jnp.asarray([0.5, -0.25]), "bias": jnp.asarray([0.5])}] * 3
    mask = {"kernel": True, "bias": False}
    ours, _ = _run(ujax.lion(1e-2, weight_decay=0.5, mask=mask, convention="optax"), params, grads)
    theirs, _ = _run(optax.lion(1e-2, weight_decay=0.5, mask=mask), params, grads)
    # by hand: Lion moves by lr * sign each step; the bias is not decayed: 1 - 3 * 0.01
    np.testing.assert_allclose(np.asarray(ours["bias"]), [0.97], rtol=1e-6)
    for key in params:
        np.testing.assert_array_equal(np.asarray(ours[key]), np.asarray(theirs[key]))
    ours, _ = _run(ujax.nadamw(1e-2, weight_decay=0.5, convention="optax"), params, grads)
    theirs, _ = _run(optax.nadamw(1e-2, weight_decay=0.5), params, grads)
    for key in params:
        np.testing.assert_allclose(np.asarray(ours[key]), np.asarray(theirs[key]), rtol=2e-6)


# -- Adagrad eps=0 --------------------------------------------------------------------------------


def test_adagrad_eps_zero_matches_optax():
    params = jnp.asarray([1.0, 2.0, 3.0])
    grads = [jnp.asarray([0.0, 0.5, -1e-3]), jnp.asarray([0.0, -0.25, 2.0])]
    tx = ujax.adagrad(0.1, initial_accumulator_value=0.0, eps=0.0, convention="optax")
    ours, state = _run(tx, params, grads)
    theirs, _ = _run(optax.adagrad(0.1, initial_accumulator_value=0.0, eps=0.0), params, grads)
    # by hand: the first step is -lr * sign(g) where g != 0, 0 where the accumulator is 0
    first, _ = _run(tx, params, grads[:1])
    np.testing.assert_allclose(np.asarray(first), [1.0, 1.9, 3.1], rtol=1e-6)
    assert float(first[0]) == 1.0 and float(state.slots["sum"][0]) == 0.0
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-6)
    assert np.all(np.isfinite(np.asarray(ours)))
    with pytest.raises(ValueError, match=r"Adagrad: eps=0\.0 is out of range; expected 0 < eps"):
        ujax.adagrad(0.1, eps=0.0)  # uniopt's eps is outside the root: 0/0 at a zero accumulator


# -- optax.inject_hyperparams ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs", "changes"),
    [
        ("adam", {"learning_rate": 0.1}, {"learning_rate": 0.01, "b1": 0.5}),
        ("adamw", {"learning_rate": 0.1, "weight_decay": 0.01}, {"learning_rate": 0.05, "weight_decay": 0.1}),
        ("sgd", {"learning_rate": 0.1, "momentum": 0.9}, {"momentum": 0.5}),
        ("rmsprop", {"learning_rate": 0.01, "decay": 0.9, "momentum": 0.9}, {"decay": 0.5}),
        ("adagrad", {"learning_rate": 0.1}, {"learning_rate": 0.2}),
        ("radam", {"learning_rate": 0.1}, {"b2": 0.99}),
        ("adamax", {"learning_rate": 0.1}, {"b1": 0.5}),
        ("nadam", {"learning_rate": 0.1}, {"b2": 0.9}),
        ("nadamw", {"learning_rate": 0.1, "weight_decay": 0.01}, {"weight_decay": 0.1}),
        ("adadelta", {"learning_rate": 0.5, "rho": 0.9}, {"rho": 0.5}),
        ("lion", {"learning_rate": 0.1, "weight_decay": 0.01}, {"b1": 0.5, "weight_decay": 0.1}),
    ],
)
def test_plain_optax_inject_hyperparams_matches_optax(name, kwargs, changes):
    """optax's idiom: hyperparameters live in the state and may be changed between steps."""
    params = {"w": jnp.linspace(-1.0, 1.0, 4)}
    grads = [{"w": g} for g in _grads((4,), 8)]
    ours = optax.inject_hyperparams(functools.partial(getattr(ujax, name), convention="optax"))(**kwargs)
    theirs = optax.inject_hyperparams(getattr(optax, name))(**kwargs)
    results = []
    for tx in (ours, theirs):
        p, state = params, jax.jit(tx.init)(params)
        update = jax.jit(tx.update)
        for i, g in enumerate(grads):
            if i == 4:
                for key, value in changes.items():
                    state.hyperparams[key] = jnp.asarray(value, state.hyperparams[key].dtype)
            updates, state = update(g, state, p)
            p = optax.apply_updates(p, updates)
        results.append(p["w"])
    np.testing.assert_allclose(np.asarray(results[0]), np.asarray(results[1]), rtol=2e-6, atol=1e-7)


def test_injected_hyperparameters_change_the_steps():
    params = {"w": jnp.ones(3)}
    tx = optax.inject_hyperparams(ujax.adam)(learning_rate=0.1)
    state = tx.init(params)
    assert set(state.hyperparams) == {"learning_rate", "b1", "b2"}  # None defaults stay static
    updates, state = tx.update({"w": jnp.full(3, 0.5)}, state, params)
    np.testing.assert_allclose(np.asarray(updates["w"]), -0.1, rtol=1e-6)  # first Adam step: lr
    state.hyperparams["learning_rate"] = jnp.asarray(0.02)
    updates, _ = tx.update({"w": jnp.full(3, 0.5)}, state, params)
    np.testing.assert_allclose(np.asarray(updates["w"]), -0.02, rtol=1e-5)
    with pytest.raises(ValueError, match=r"uniopt.jax.adam: eps_root is a jax array; .*static_args"):
        optax.inject_hyperparams(ujax.adam)(learning_rate=0.1, eps_root=0.0).init(params)


def test_an_injected_default_names_static_args_as_the_way_out():
    """optax.inject_hyperparams makes an array of a numeric default the call leaves out (Adafactor's
    ``dtype_momentum``, read once ``momentum`` is set): the error says to list it in
    ``static_args``, not to leave it out (it was), and with it listed the step runs."""
    params = {"w": jnp.ones((7, 5))}
    said = r"dtype_momentum is a jax array; .*static_args=\('dtype_momentum',\)"
    with pytest.raises(ValueError, match=said):
        optax.inject_hyperparams(ujax.adafactor)(learning_rate=0.01, momentum=0.9).init(params)
    injected = optax.inject_hyperparams(ujax.adafactor, static_args=("dtype_momentum",))
    tx = injected(learning_rate=0.01, momentum=0.9)
    state = tx.init(params)
    updates, _ = tx.update({"w": jnp.full((7, 5), 0.5)}, state, params)
    assert np.all(np.isfinite(np.asarray(updates["w"]))) and np.any(np.asarray(updates["w"]) != 0)


# -- update without params ------------------------------------------------------------------------


# optax.adadelta and optax.lion chain add_decayed_weights, which needs params even at weight_decay=0
@pytest.mark.parametrize("name", ["sgd", "adagrad", "rmsprop", "adam", "radam", "adamax", "nadam"])
def test_update_without_params_matches_optax(name):
    grads = _grads((5,), 4)
    kwargs = {"momentum": 0.9} if name in ("sgd", "rmsprop") else {}
    ours, theirs = getattr(ujax, name)(0.1, convention="optax", **kwargs), getattr(optax, name)(0.1, **kwargs)
    s1, s2 = ours.init(grads[0]), theirs.init(grads[0])
    for g in grads:
        u1, s1 = ours.update(g, s1)
        u2, s2 = theirs.update(g, s2)
        # a few float32 ulp of the update's largest element: a momentum trace can cancel to a value
        # far smaller than its terms (rmsprop's fourth step: 0.0036 from terms of 0.25, where a
        # 1-ulp difference of the terms in optax's XLA kernels, which differ by CPU, is 5.96e-8)
        scale = float(np.max(np.abs(np.asarray(u2))))
        np.testing.assert_allclose(np.asarray(u1), np.asarray(u2), rtol=2e-6, atol=4e-7 * scale)


def test_an_injected_initial_accumulator_is_refused_naming_static_args():
    with pytest.raises(
        ValueError, match=r"initial_accumulator_value is a jax array; it sets the initial state"
    ):
        optax.inject_hyperparams(ujax.adagrad)(learning_rate=0.1, initial_accumulator_value=0.2).init(
            jnp.ones(2)
        )
    tx = optax.inject_hyperparams(ujax.adagrad, static_args=("initial_accumulator_value",))
    state = tx(learning_rate=0.1, initial_accumulator_value=0.2).init(jnp.ones(2))
    np.testing.assert_array_equal(np.asarray(state.inner_state.slots["sum"]), np.full(2, 0.2, np.float32))


@pytest.mark.parametrize("name", NAMES)
def test_init_with_abstract_parameters_as_optax(name):
    abstract = {"w": jax.ShapeDtypeStruct((2, 3), jnp.bfloat16)}
    kwargs = {"momentum": 0.9} if name == "sgd" else {}
    state = getattr(ujax, name)(0.1, convention="optax", **kwargs).init(abstract)
    theirs = getattr(optax, name)(0.1, **kwargs).init(abstract)
    ours_slots = {(x.shape, x.dtype) for x in jax.tree.leaves(state.slots)}
    theirs_slots = {(x.shape, x.dtype) for x in jax.tree.leaves(theirs) if x.shape}
    assert ours_slots == theirs_slots == {((2, 3), jnp.dtype(jnp.bfloat16))}


def test_complex_params_with_the_uniopt_convention_are_real_pairs_and_keras_refuses_them():
    z = jnp.asarray([1 + 2j, -0.5 - 1j], jnp.complex64)
    g = jnp.asarray([0.25 - 1j, 2 + 0.5j], jnp.complex64)
    new, _ = ujax.rmsprop(0.01).step(g, ujax.rmsprop(0.01).init(z), z)
    spec, pair = uniopt.RMSprop(lr=0.01), np.stack([np.asarray(z).real, np.asarray(z).imag], axis=-1)
    gpair = np.stack([np.asarray(g).real, np.asarray(g).imag], axis=-1)
    want, _ = spec.update([gpair], spec.init([pair]), [pair])
    np.testing.assert_array_equal(
        np.asarray(new), (want[0][..., 0] + 1j * want[0][..., 1]).astype(np.complex64)
    )
    with pytest.raises(TypeError, match="convention='keras' defines no complex parameters"):
        ujax.sgd(0.1, convention="keras").init(z)


def test_porting_from_optax_refuses_the_same_arguments_the_factories_do():
    params = {"w": jnp.ones(2)}
    tx = optax.rmsprop(0.1, eps_in_sqrt=False)
    with pytest.raises(ValueError, match=r"optax.rmsprop\(eps_in_sqrt=False\) has no uniopt counterpart"):
        ujax.from_optax(tx.init(params), "rmsprop", params, step=0, learning_rate=0.1, eps_in_sqrt=False)
