"""uniopt.jax.adafactor: optax.adafactor's signature, its numbers (against optax.adafactor itself and a
step computed by hand), its state (optax's FactoredState shapes, porting both ways), the NumPy
reference bit for bit eagerly and under jax.jit, and refusals that name the argument.

Expected values come from optax.adafactor run side by side, from NumPy float64 arithmetic written out
here from optax/_src/factorized.py and alias.py, or from the core spec run on NumPy arrays.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import uniopt
import uniopt.jax as uj

# a vector, a matrix, a rank-3 tensor and a scalar; min_dim_size_to_factor=3 factors the matrix over
# both axes and the rank-3 tensor over its two largest (axes 1 and 2)
SHAPES = {"vec": (6,), "mat": (5, 7), "rank3": (3, 4, 5), "scalar": ()}


def _tree(seed: int, dtype=np.float32, shapes=SHAPES, scale: float = 1.0) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    return {k: jnp.asarray((scale * rng.standard_normal(s)).astype(dtype)) for k, s in shapes.items()}


def _grads(steps: int, dtype=np.float32, shapes=SHAPES) -> list[dict[str, jax.Array]]:
    return [_tree(100 + t, dtype, shapes) for t in range(steps)]


def _contract(tx, params, grads, state=None, jit=False):
    """``tx.update`` + ``optax.apply_updates`` over ``grads``: (params, state)."""
    update = jax.jit(tx.update) if jit else tx.update
    state = tx.init(params) if state is None else state
    for g in grads:
        updates, state = update(g, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def _close(ours, theirs, rtol=2e-6, atol=0.0):
    """Each leaf within ``rtol`` of its largest magnitude (normwise: the sums' orders differ, and a
    value that a step takes near 0 keeps the absolute error of the step's scale), or ``atol``."""
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        scale = float(np.max(np.abs(b))) if b.size else 0.0
        np.testing.assert_allclose(a, b, rtol=0, atol=max(atol, rtol * scale))


def _factored_state(state):
    nodes = jax.tree.leaves(state, is_leaf=lambda n: hasattr(n, "v_row"))
    return next(s for s in nodes if hasattr(s, "v_row"))


# -- signature -------------------------------------------------------------------------------------


def test_signature_is_optax_adafactors_then_uniopts_keyword_only_arguments():
    ours = inspect.signature(uj.adafactor).parameters
    theirs = inspect.signature(optax.adafactor).parameters
    assert list(ours)[: len(theirs)] == list(theirs)
    assert list(ours)[len(theirs) :] == ["min_scale", "maximize", "convention"]
    for arg in theirs:
        assert ours[arg].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, arg
    for arg in ("min_scale", "maximize", "convention"):
        assert ours[arg].kind is inspect.Parameter.KEYWORD_ONLY, arg
    # the same default, or None where None stands for optax's default (checked on the spec below)
    for arg, param in theirs.items():
        assert ours[arg].default == param.default or ours[arg].default is None, arg
    assert ours["dtype_momentum"].default is jnp.float32
    assert ours["convention"].default == "optax"


def test_defaults_resolve_to_optax_adafactors_own():
    # optax/_src/alias.py adafactor: learning_rate=None (no scale_by_learning_rate), decay 0.8,
    # offset 0, min_dim_size_to_factor=128, clipping 1.0, no momentum, no weight decay, eps=1e-30;
    # scale_by_param_block_rms's min_scale 1e-3
    spec = uj.adafactor().spec
    assert spec == uniopt.Adafactor(
        lr=1.0,
        beta2_decay=-0.8,
        eps=(1e-30, 1e-3),
        d=1.0,
        weight_decay=0.0,
        momentum=0.0,
        decay_offset=0,
        min_dim_size_to_factor=128,
        factored=True,
        multiply_by_parameter_scale=True,
        convention="optax",
    )
    assert uj.adafactor(0.1, 64, 0.5, 3, False, None, 0.9, jnp.float32, 1e-4, 1e-20, False).spec == (
        uniopt.Adafactor(
            lr=0.1,
            beta2_decay=-0.5,
            decay_offset=3,
            min_dim_size_to_factor=64,
            multiply_by_parameter_scale=False,
            d=None,
            momentum=0.9,
            weight_decay=1e-4,
            eps=(1e-20, 1e-3),
            factored=False,
            convention="optax",
        )
    )


def test_other_conventions_take_their_own_defaults():
    torch_like = uj.adafactor(convention="torch").spec
    assert (torch_like.lr, torch_like.eps, torch_like.min_dim_size_to_factor) == (1e-2, (None, 1e-3), None)
    assert uj.adafactor(0.05, convention="uniopt", eps=1e-3, min_scale=1e-2).spec.eps == (1e-3, 1e-2)
    assert uj.Adafactor is uj.adafactor
    assert uj.optax_arguments(torch_like) == (
        "adafactor",
        {
            "learning_rate": 0.01,
            "min_dim_size_to_factor": None,
            "decay_rate": 0.8,
            "decay_offset": 0,
            "multiply_by_parameter_scale": True,
            "clipping_threshold": 1.0,
            "momentum": 0.0,
            "weight_decay_rate": 0.0,
            "eps": None,
            "factored": True,
            "min_scale": 0.001,
            "maximize": False,
            "convention": "torch",
        },
    )


# -- numbers ---------------------------------------------------------------------------------------

OPTAX_CONFIGS = {
    "defaults_factoring_small": {"min_dim_size_to_factor": 3},
    "lr_momentum_decay": {
        "learning_rate": 0.01,
        "min_dim_size_to_factor": 4,
        "momentum": 0.9,
        "weight_decay_rate": 1e-3,
        "clipping_threshold": 1.5,
    },
    "unfactored_unclipped": {
        "learning_rate": 0.01,
        "decay_rate": 0.7,
        "decay_offset": -5,
        "factored": False,
        "multiply_by_parameter_scale": False,
        "clipping_threshold": None,
        "eps": 1e-20,
    },
}


@pytest.mark.parametrize("config", OPTAX_CONFIGS)
def test_matches_optax_adafactor_with_its_state(config):
    """Params and every state array after 6 steps against optax.adafactor: the same up to the
    order of the sums (optax's jnp.mean, XLA's rsqrt); state shapes and dtypes exactly optax's."""
    kwargs = OPTAX_CONFIGS[config]
    params, grads = _tree(0), _grads(6)
    ours_p, ours_s = _contract(uj.adafactor(**kwargs), params, grads)
    theirs_p, theirs_s = _contract(optax.adafactor(**kwargs), params, grads)
    _close(ours_p, theirs_p, rtol=1e-5, atol=1e-7)
    factored = _factored_state(theirs_s)
    for name in ("v_row", "v_col", "v"):
        for k in SHAPES:
            ours_leaf, theirs_leaf = ours_s.slots[name][k], getattr(factored, name)[k]
            assert (ours_leaf.shape, ours_leaf.dtype) == (theirs_leaf.shape, theirs_leaf.dtype), (name, k)
            _close(ours_leaf, theirs_leaf, rtol=1e-5, atol=1e-30)
    assert int(ours_s.count) == int(factored.count) == 6
    if "momentum" in kwargs:
        ema = next(s for s in theirs_s if hasattr(s, "ema")).ema
        _close(ours_s.slots["momentum"], ema, rtol=1e-5, atol=1e-9)


def test_default_factoring_threshold_and_axes_are_optaxs():
    """At min_dim_size_to_factor=128: (130, 3, 140) factors over axes 0 and 2, (64, 200) not at all."""
    shapes = {"a": (130, 3, 140), "b": (64, 200), "c": (128, 128)}
    params = _tree(1, shapes=shapes)
    ours, theirs = uj.adafactor().init(params), _factored_state(optax.adafactor().init(params))
    for name in ("v_row", "v_col", "v"):
        got = {k: v.shape for k, v in ours.slots[name].items()}
        assert got == {k: v.shape for k, v in getattr(theirs, name).items()}, name
    assert ours.slots["v_row"]["a"].shape == (130, 3) and ours.slots["v_col"]["a"].shape == (3, 140)
    assert ours.slots["v"]["b"].shape == (64, 200)
    grads = _grads(3, shapes=shapes)
    _close(_contract(uj.adafactor(), params, grads)[0], _contract(optax.adafactor(), params, grads)[0], 1e-5)


def _by_hand(p, gs, lr=0.1, decay=0.8, eps=1e-30, clip=1.0, min_scale=1e-3, factor=True):
    """optax.adafactor's steps in NumPy float64 (optax/_src/factorized.py scale_by_factored_rms,
    transforms/_clipping.py clip_by_block_rms, transform.py scale_by_param_block_rms), for a 2-d
    parameter factored over (rows, cols) = (axis 0, axis 1) where axis 1 is the larger, or a
    parameter kept whole."""
    p = p.astype(np.float64)
    v_row = np.zeros(p.shape[0]) if factor else None
    v_col = np.zeros(p.shape[1]) if factor else None
    v = None if factor else np.zeros(p.shape)
    for t, g in enumerate(gs, start=1):
        g = g.astype(np.float64)
        beta = 1.0 - float(np.float32(t) ** np.float32(-decay))  # _decay_rate_pow: float32
        gg = g * g + eps
        if factor:
            v_row = beta * v_row + (1 - beta) * gg.mean(axis=1)  # mean over d0, the larger axis
            v_col = beta * v_col + (1 - beta) * gg.mean(axis=0)
            u = g * (v_row / v_row.mean())[:, None] ** -0.5 * v_col[None, :] ** -0.5
        else:
            v = beta * v + (1 - beta) * gg
            u = g * v**-0.5
        u = u / max(1.0, np.sqrt(np.mean(u * u)) / clip)
        u = lr * u
        u = u * max(np.sqrt(np.mean(p * p)), min_scale)
        p = p - u
    return p


@pytest.mark.parametrize("factor", [True, False])
def test_three_steps_by_hand(factor):
    rng = np.random.default_rng(7)
    p0 = rng.standard_normal((3, 4)).astype(np.float32)
    gs = [rng.standard_normal((3, 4)).astype(np.float32) for _ in range(3)]
    tx = uj.adafactor(0.1, min_dim_size_to_factor=3 if factor else 5)
    got, state = _contract(tx, jnp.asarray(p0), [jnp.asarray(g) for g in gs])
    assert (state.slots["v"].shape == (1,)) is factor
    np.testing.assert_allclose(np.asarray(got), _by_hand(p0, gs, factor=factor), rtol=3e-6)


def test_learning_rate_none_scales_by_nothing_and_a_schedule_as_optax():
    params, grads = _tree(2), _grads(4)
    _close(
        _contract(uj.adafactor(min_dim_size_to_factor=3), params, grads)[0],
        _contract(optax.adafactor(1.0, min_dim_size_to_factor=3), params, grads)[0],
        rtol=1e-5,
        atol=1e-7,
    )
    schedule = optax.linear_schedule(0.1, 0.01, 3)
    _close(
        _contract(uj.adafactor(schedule, 3), params, grads, jit=True)[0],
        _contract(optax.adafactor(schedule, 3), params, grads)[0],
        rtol=1e-5,
        atol=1e-7,
    )


def test_weight_decay_mask_as_optax():
    params, grads = _tree(3), _grads(4)
    mask = {"vec": False, "mat": True, "rank3": True, "scalar": False}
    kwargs = {"learning_rate": 0.05, "min_dim_size_to_factor": 3, "weight_decay_rate": 0.1}
    ours = _contract(uj.adafactor(**kwargs, weight_decay_mask=mask), params, grads)[0]
    _close(ours, _contract(optax.adafactor(**kwargs, weight_decay_mask=mask), params, grads)[0], 1e-5, 1e-7)
    unmasked = _contract(uj.adafactor(**kwargs), params, grads)[0]
    assert not np.array_equal(np.asarray(ours["vec"]), np.asarray(unmasked["vec"]))
    np.testing.assert_array_equal(np.asarray(ours["mat"]), np.asarray(unmasked["mat"]))


# -- the NumPy reference, eagerly and under jit ---------------------------------------------------

CONVENTIONS = {
    "optax": {"learning_rate": 0.01, "min_dim_size_to_factor": 4, "momentum": 0.9, "weight_decay_rate": 1e-3},
    "optax_defaults": {},
    "uniopt": {"learning_rate": 0.05, "weight_decay_rate": 0.1, "convention": "uniopt"},
    "torch": {"convention": "torch", "eps": 1e-3, "clipping_threshold": 1.2},
    "keras": {"learning_rate": 0.01, "convention": "keras"},
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", CONVENTIONS)
def test_eager_and_jit_are_the_numpy_reference_bit_for_bit(name, dtype):
    tx = uj.adafactor(**CONVENTIONS[name])
    spec = tx.spec
    keys = sorted(SHAPES)
    with jax.enable_x64(dtype == np.float64):
        params, grads = _tree(4, dtype), _grads(5, dtype)
        ref_p = [np.asarray(params[k]) for k in keys]
        ref_s = spec.init(ref_p)
        for g in grads:
            ref_p, ref_s = spec.update([np.asarray(g[k]) for k in keys], ref_s, ref_p)
        for step in (tx.step, jax.jit(tx.step)):
            p, s = params, tx.init(params)
            for g in grads:
                p, s = step(g, s, p)
            for i, k in enumerate(keys):
                np.testing.assert_array_equal(np.asarray(p[k]), ref_p[i], err_msg=k)
                for slot in spec.slot_names():
                    got = np.asarray(s.slots[slot][k])
                    np.testing.assert_array_equal(got, ref_s.slots[i][slot], (slot, k))


# -- refusals --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"decay_rate": -0.1}, ValueError, r"beta2_decay=0\.1 is out of range.*decay_rate is uniopt's"),
        ({"clipping_threshold": 0.5}, ValueError, r"d=0\.5 is out of range.*clipping_threshold"),
        ({"momentum": 1.5}, ValueError, r"momentum=1\.5 is out of range"),
        ({"min_dim_size_to_factor": -1}, ValueError, r"min_dim_size_to_factor=-1; expected an int >= 0"),
        ({"eps": -1.0}, ValueError, r"eps\[0\]=-1\.0 is out of range.*eps is uniopt's eps\[0\]"),
        ({"weight_decay_rate": -1.0}, ValueError, r"weight_decay=-1\.0 .*weight_decay_rate"),
        (
            {"weight_decay_rate": lambda c: 0.1},
            ValueError,
            r"weight_decay_rate is a callable \(a schedule\?\).*optax\.inject_hyperparams",
        ),
        ({"decay_offset": 1.5}, ValueError, r"decay_offset=1\.5 is not an int"),
        ({"dtype_momentum": "not a dtype"}, TypeError, r"dtype_momentum='not a dtype' is not a dtype"),
        ({"convention": "torch", "min_dim_size_to_factor": 128}, ValueError, r"only optax\.adafactor"),
        ({"convention": "torch", "clipping_threshold": None}, ValueError, r"d=None \(no update clipping\)"),
        ({"convention": "keras", "momentum": 0.9}, ValueError, r"momentum=0\.9 with convention='keras'"),
        ({"convention": "jax"}, ValueError, r"convention='jax'"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        uj.adafactor(**kwargs)


def test_dtype_momentum_is_checked_at_init_against_each_parameter():
    bf16 = {"w": jnp.ones((2, 3), jnp.bfloat16)}
    with pytest.raises(ValueError, match=r"momentum=float32 .* dtype bfloat16: .*dtype_momentum=bfloat16"):
        uj.adafactor(momentum=0.9).init(bf16)
    state = uj.adafactor(momentum=0.9, dtype_momentum=jnp.bfloat16).init(bf16)
    assert state.slots["momentum"]["w"].dtype == jnp.bfloat16
    refused = r"dtype_momentum=float64 .*expected dtype_momentum=float32"
    with jax.enable_x64(True), pytest.raises(ValueError, match=refused):
        uj.adafactor(momentum=0.9, dtype_momentum=None).init({"w": jnp.ones(3, jnp.float64)})
    uj.adafactor(dtype_momentum=None).init(bf16)  # no momentum: optax ignores it too


def test_bad_updates_raise_and_leave_the_state_as_it_was():
    params = _tree(5)
    tx = uj.adafactor(0.1, 3)
    _, state = _contract(tx, params, _grads(2))
    before = jax.tree.map(np.array, state)
    with pytest.raises(ValueError, match=r"update needs `params` for Adafactor"):
        tx.update(_grads(1)[0], state)  # optax's scale_by_factored_rms needs them too
    with pytest.raises(ValueError, match=r"a gradient of shape \(7, 5\) for a parameter of shape \(5, 7\)"):
        tx.update({**_grads(1)[0], "mat": jnp.ones((7, 5))}, state, params)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state), before)


# -- porting ---------------------------------------------------------------------------------------


def test_export_import_round_trip_resumes_bit_for_bit(tmp_path):
    params, grads = _tree(6), _grads(6)
    tx = uj.adafactor(0.01, 3, momentum=0.9, weight_decay_rate=1e-3)
    straight, _ = _contract(tx, params, grads, jit=True)
    half, state = _contract(tx, params, grads[:3], jit=True)
    uniopt.save_state(tmp_path / "s.npz", uj.export_state(tx, state, half))
    record = uniopt.load_state(tmp_path / "s.npz")
    assert record.convention == "optax" and record.step == 3
    assert record.slots[0]["v_row"].shape == (5,)  # sorted keys: mat (5, 7) first; v_row drops axis 1
    resumed, _ = _contract(tx, half, grads[3:], state=uj.import_state(tx, record, half), jit=True)
    jax.tree.map(np.testing.assert_array_equal, resumed, straight)
    with pytest.raises(ValueError, match=r"slot 'v_row' has shape \(5,\), .* keeps shape \(1,\)"):
        uj.import_state(uj.adafactor(0.01, 8, momentum=0.9, weight_decay_rate=1e-3), record, half)


@pytest.mark.parametrize("x64", [False, True])
def test_continue_a_run_of_optax_adafactor(x64):
    """optax.adafactor's FactoredState and EmaState (count twice, equal) read as is; the run goes on
    under uniopt.jax as it goes on under optax; to_optax writes the same state back."""
    dtype = np.float64 if x64 else np.float32
    kwargs = {"learning_rate": 0.01, "min_dim_size_to_factor": 3, "momentum": 0.9}
    with jax.enable_x64(x64):
        params, grads = _tree(8, dtype), _grads(6, dtype)
        theirs = optax.adafactor(**kwargs)
        half, optax_state = _contract(theirs, params, grads[:3])
        record = uj.from_optax(optax_state, "adafactor", half, **kwargs)
        assert record.step == 3 and record.convention == "optax"
        factored = _factored_state(optax_state)
        ema = next(s for s in optax_state if hasattr(s, "ema")).ema
        for i, k in enumerate(sorted(SHAPES)):
            for name in ("v_row", "v_col", "v"):
                np.testing.assert_array_equal(record.slots[i][name], np.asarray(getattr(factored, name)[k]))
            assert ema[k].dtype == jnp.float32
            np.testing.assert_array_equal(record.slots[i]["momentum"], np.asarray(ema[k]).astype(dtype))
        tx = uj.adafactor(**kwargs)
        ours, _ = _contract(tx, half, grads[3:], state=uj.import_state(tx, record, half))
        want, _ = _contract(theirs, half, grads[3:], state=optax_state)
        _close(ours, want, rtol=1e-5 if not x64 else 1e-12, atol=1e-7 if not x64 else 1e-15)
        back = uj.to_optax(record, "adafactor", half, **kwargs)
        jax.tree.map(
            lambda a, b: (np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), a.dtype == b.dtype),
            back,
            optax_state,
        )
        assert jax.tree.map(lambda a, b: a.dtype == b.dtype, back, optax_state)


def test_optax_learning_rate_none_ports_and_mismatches_are_refused():
    params = _tree(9)
    _, state = _contract(optax.adafactor(min_dim_size_to_factor=3), params, _grads(2))
    record = uj.from_optax(state, "adafactor", params, min_dim_size_to_factor=3)
    assert record.hyperparameters["lr"] == 1.0
    uj.import_state(uj.adafactor(min_dim_size_to_factor=3), record, params)
    with pytest.raises(ValueError, match=r"slot 'v_row' is float32\[5\].*\(the slot: float32\[1\]\)"):
        uj.from_optax(state, "adafactor", params)  # built with min_dim_size_to_factor=3, read at 128
    with pytest.raises(ValueError, match=r"weight_decay_mask=.* has no uniopt counterpart"):
        uj.from_optax(state, "adafactor", params, min_dim_size_to_factor=3, weight_decay_mask={"a": 1})
