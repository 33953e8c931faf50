"""uniopt.jax.muon: optax.contrib.muon's signature, its numbers (against optax.contrib.muon itself and
steps computed by hand in float64), the NumPy reference bit for bit with ``matmul="exact"`` eagerly
and under jax.jit, and refusals that name the argument or the parameter.

Expected values come from optax.contrib.muon run side by side, from NumPy float64 arithmetic written
out here from optax/contrib/_muon.py and torch/optim/_muon.py, or from the core spec run on NumPy
arrays. Porting of optax's state: tests/jax_adapter/test_jax_porting.py.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest
from ujax_helpers import contract_steps

import uniopt
import uniopt.jax as uj

# 2-D parameters tall (transposed for Newton-Schulz) and wide, and a vector and a scalar (optax's Adam
# partition, and the same in uniopt's optax convention); few leaves, as each compiles its own loop
SHAPES = {"tall": (4, 2), "wide": (2, 3), "vec": (3,), "scalar": ()}
MATRICES = {k: s for k, s in SHAPES.items() if len(s) == 2}
NS = (3.4445, -4.7750, 2.0315)


def _tree(seed: int, dtype=np.float32, shapes=SHAPES) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    return {k: jnp.asarray(rng.standard_normal(s).astype(dtype)) for k, s in shapes.items()}


def _grads(steps: int, dtype=np.float32, shapes=SHAPES) -> list[dict[str, jax.Array]]:
    return [_tree(100 + t, dtype, shapes) for t in range(steps)]


def _steps(tx, params, grads, jit=True):
    """``tx.step`` over ``grads`` (compiled once, or eagerly): (params, state)."""
    step = jax.jit(tx.step) if jit else tx.step
    state = tx.init(params)
    for g in grads:
        params, state = step(g, state, params)
    return params, state


def _close(ours, theirs, rtol):
    """Each leaf within ``rtol`` of its largest magnitude (normwise: the products sum in other
    orders, and an element near 0 keeps the absolute error of the step's scale)."""
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        scale = float(np.max(np.abs(b))) if b.size else 0.0
        np.testing.assert_allclose(a, b, rtol=0, atol=rtol * scale)


# -- signature and defaults -------------------------------------------------------------------------


def test_signature_is_optax_contrib_muons_then_uniopts_keyword_only_arguments():
    ours = inspect.signature(uj.muon).parameters
    theirs = inspect.signature(optax.contrib.muon).parameters
    assert list(ours)[: len(theirs)] == list(theirs)
    assert list(ours)[len(theirs) :] == [
        "adjust_lr_fn",
        "adam_eps",
        "matmul",
        "adam_2d",
        "adam_lr_ratio",
        "convention",
    ]
    for arg, param in list(theirs.items())[1:]:  # after learning_rate (optax has no default)
        assert ours[arg].kind is param.kind, arg  # positional where optax's are, keyword-only after
        # the same default, or None where None stands for optax's default (checked on the spec below)
        assert ours[arg].default is None or ours[arg].default == param.default, arg
    assert ours["learning_rate"].default == 1e-3  # optax has none; uniopt's
    assert ours["convention"].default == "optax"
    assert uj.Muon is uj.muon


def test_defaults_resolve_to_optax_contrib_muons_own():
    # optax/contrib/_muon.py muon: ns_coeffs (3.4445, -4.775, 2.0315), 5 steps, beta 0.95, eps 1e-8
    # (Newton-Schulz and Adam), no weight decay, nesterov, width scaling sqrt(max(1, fan_out/fan_in)),
    # adam_b1 0.9, adam_b2 0.999, adam_weight_decay 0
    assert uj.muon(0.02).spec == uniopt.Muon(
        lr=0.02,
        weight_decay=0.0,
        momentum=0.95,
        nesterov=True,
        ns_coefficients=NS,
        eps=1e-8,
        ns_steps=5,
        adjust_lr_fn="original",
        adam_betas=(0.9, 0.999),
        adam_eps=1e-8,
        adam_weight_decay=0.0,
        convention="optax",
    )
    # optax's positional order: learning_rate, ns_coeffs, ns_steps, beta, eps, weight_decay
    spec = uj.muon(0.1, (2.0, -1.5, 0.5), 3, 0.9, 1e-6, 0.01, adam_b1=0.8, adam_weight_decay=0.1).spec
    assert (spec.lr, spec.ns_coefficients, spec.ns_steps, spec.momentum) == (0.1, (2.0, -1.5, 0.5), 3, 0.9)
    assert (spec.eps, spec.adam_eps, spec.weight_decay) == (1e-6, 1e-6, 0.01)  # one eps, as optax
    assert (spec.adam_betas, spec.adam_weight_decay) == ((0.8, 0.999), 0.1)


def test_consistent_rms_is_moonlights_scaling():
    # consistent_rms=r: sqrt(max(fan_in, fan_out)) * r, uniopt's adjust_lr_fn="match_rms_adamw"
    spec = uj.muon(0.02, consistent_rms=0.3).spec
    assert (spec.adjust_lr_fn, spec.rms_rate) == ("match_rms_adamw", 0.3)
    assert uj.muon(0.02, consistent_rms=None).spec.adjust_lr_fn == "original"
    name, arguments = uj.optax_arguments(spec)  # read backwards: consistent_rms, and the spec again
    assert (name, arguments["consistent_rms"]) == ("muon", 0.3)
    assert uj.muon(**arguments).spec == spec
    assert uj.optax_arguments(uj.muon(0.02).spec)[1]["consistent_rms"] is None
    with pytest.raises(ValueError, match=r"consistent_rms=0\.3 means adjust_lr_fn='match_rms_adamw'"):
        uj.muon(0.02, consistent_rms=0.3, adjust_lr_fn="original")
    with pytest.raises(
        ValueError, match=r"rms_rate=0\.0 is out of range.*consistent_rms is uniopt's rms_rate"
    ):
        uj.muon(0.02, consistent_rms=0.0)


def test_other_conventions_take_their_own_defaults():
    torch_like = uj.muon(0.02, convention="torch").spec
    assert (torch_like.weight_decay, torch_like.eps, torch_like.adjust_lr_fn) == (0.1, 1e-7, "original")
    keras_like = uj.muon(0.02, convention="keras").spec  # Keras holds the weight decay in float32
    assert (keras_like.weight_decay, keras_like.adjust_lr_fn, keras_like.rms_rate) == (
        float(np.float32(0.004)),
        "match_rms_adamw",
        0.2,
    )


# -- against optax.contrib.muon ---------------------------------------------------------------------


@pytest.mark.parametrize("x64", [False, True])
def test_matches_optax_contrib_muon_at_its_defaults(x64):
    """optax.contrib.muon(learning_rate) and uniopt.jax.muon(learning_rate) on one dict of 2-D and
    other parameters, under jax.jit, six steps: parameters and state (optax's mu of both partitions,
    the Adam partition's nu) within a few float32 (float64) roundings normwise. Not bitwise: optax
    runs its Newton-Schulz loop as one fused XLA loop, and the Adam leaves' bias corrections depend
    on how XLA fuses the whole tree."""
    dtype = np.float64 if x64 else np.float32
    rtol = 1e-13 if x64 else 5e-6
    with jax.enable_x64(x64):
        params, grads = _tree(0, dtype), _grads(6, dtype)
        theirs_p, theirs_s = contract_steps(optax.contrib.muon(0.02), params, grads)
        tx = uj.muon(0.02)
        ours_p, ours_s = contract_steps(tx, params, grads)
        _close(ours_p, theirs_p, rtol)
        inner = theirs_s.inner_states
        muon_mu = inner["muon"].inner_state[0].mu
        adam = inner["adam"].inner_state[0]
        assert int(inner["muon"].inner_state[0].count) == int(adam.count) == int(ours_s.count) == 6
        for k, shape in SHAPES.items():
            mu = muon_mu[k] if len(shape) == 2 else adam.mu[k]
            _close(ours_s.slots["momentum_buffer"][k], mu, rtol)
            if len(shape) == 2:  # optax keeps no second moment for a matrix; uniopt's placeholder: zeros
                assert isinstance(adam.nu[k], optax.MaskedNode)
                assert not np.any(np.asarray(ours_s.slots["exp_avg_sq"][k]))
            else:
                _close(ours_s.slots["exp_avg_sq"][k], adam.nu[k], rtol)
        assert all(leaf.dtype == dtype for leaf in jax.tree.leaves(ours_p))


def test_matches_optax_with_weight_decay_a_mask_and_consistent_rms():
    """weight_decay on the 2-D parameters (masked off for ``tall``), adam_weight_decay on the others,
    Moonlight's scaling, without nesterov: as optax.contrib.muon with the same arguments."""
    kwargs = {
        "weight_decay": 0.05,
        "weight_decay_mask": {k: k != "tall" for k in SHAPES},
        "adam_weight_decay": 0.1,
        "consistent_rms": 0.2,
        "nesterov": False,
        "beta": 0.9,
    }
    params, grads = _tree(1), _grads(4)
    theirs, _ = contract_steps(optax.contrib.muon(0.05, **kwargs), params, grads)
    ours, _ = contract_steps(uj.muon(0.05, **kwargs), params, grads)
    _close(ours, theirs, 5e-6)
    unmasked = {**kwargs, "weight_decay_mask": None}
    other, _ = contract_steps(uj.muon(0.05, **unmasked), params, grads)
    assert not np.array_equal(np.asarray(other["tall"]), np.asarray(ours["tall"]))  # the mask acted
    np.testing.assert_array_equal(np.asarray(other["wide"]), np.asarray(ours["wide"]))


# -- steps by hand, in float64 ----------------------------------------------------------------------


def _newton_schulz(x: np.ndarray, coefficients, steps: int, eps: float, clamp: bool, torch_quintic: bool):
    a, b, c = coefficients
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    norm = np.linalg.norm(x)
    x = x / (max(norm, eps) if clamp else norm + eps)
    for _ in range(steps):
        gram = x @ x.T
        poly = b * gram + (c * (gram @ gram) if torch_quintic else (c * gram) @ gram)
        x = a * x + poly @ x
    return x.T if tall else x


def _optax_by_hand(params, grads, lr, beta=0.95, eps=1e-8, wd=0.0, b1=0.9, b2=0.999):
    """optax.contrib.muon (optax/contrib/_muon.py; optax.adamw(nesterov=True) for non-2-D) in float64."""
    params = {k: np.asarray(v, np.float64) for k, v in params.items()}
    mu = {k: np.zeros_like(v) for k, v in params.items()}
    nu = {k: np.zeros_like(v) for k, v in params.items()}
    for t, g in enumerate(grads, start=1):
        for k, p in params.items():
            gk = np.asarray(g[k], np.float64)
            if p.ndim == 2:
                mu[k] = beta * mu[k] + (1 - beta) * gk
                mu_hat = beta * mu[k] / (1 - beta ** (t + 1)) + (1 - beta) * gk / (1 - beta**t)
                x = _newton_schulz(mu_hat, NS, 5, eps, clamp=False, torch_quintic=False)
                fan_in, fan_out = p.shape  # scale_by_shape: sqrt(max(1, fan_out / fan_in))
                update = np.sqrt(max(1.0, fan_out / fan_in)) * x + wd * p
            else:
                mu[k] = b1 * mu[k] + (1 - b1) * gk
                nu[k] = b2 * nu[k] + (1 - b2) * gk * gk
                m_hat = b1 * mu[k] / (1 - b1 ** (t + 1)) + (1 - b1) * gk / (1 - b1**t)
                update = m_hat / (np.sqrt(nu[k] / (1 - b2**t)) + eps)
            params[k] = p - lr * update
    return params, mu, nu


def _torch_by_hand(params, grads, lr, momentum=0.95, eps=1e-7, wd=0.1):
    """torch.optim.Muon (torch/optim/_muon.py, without its bfloat16 iteration: the uniopt
    convention) in float64."""
    params = {k: np.asarray(v, np.float64) for k, v in params.items()}
    buf = {k: np.zeros_like(v) for k, v in params.items()}
    for g in grads:
        for k, p in params.items():
            gk = np.asarray(g[k], np.float64)
            buf[k] = momentum * buf[k] + (1 - momentum) * gk  # buf.lerp_(grad, 1 - momentum)
            update = momentum * buf[k] + (1 - momentum) * gk  # grad.lerp(buf, momentum)
            x = _newton_schulz(update, NS, 5, eps, clamp=True, torch_quintic=True)
            rows, cols = p.shape  # _adjust_lr "original": sqrt(max(1, A / B))
            params[k] = p * (1 - lr * wd) - lr * np.sqrt(max(1.0, rows / cols)) * x
    return params, buf


def test_three_optax_convention_steps_by_hand_in_float64():
    with jax.enable_x64(True):
        params, grads = _tree(2, np.float64), _grads(3, np.float64)
        ours, state = contract_steps(uj.muon(0.03, weight_decay=0.02), params, grads)
        want, mu, nu = _optax_by_hand(params, grads, 0.03, wd=0.02)
        _close(ours, want, 1e-14)
        _close(state.slots["momentum_buffer"], mu, 1e-15)
        _close(state.slots["exp_avg_sq"], {k: v if v.ndim != 2 else 0 * v for k, v in nu.items()}, 1e-15)


def test_three_uniopt_convention_steps_by_hand_in_float64():
    with jax.enable_x64(True):
        params, grads = _tree(3, np.float64, MATRICES), _grads(3, np.float64, MATRICES)
        tx = uj.muon(0.02, convention="uniopt")
        assert tx.spec.weight_decay == 0.1 and tx.spec.eps == 1e-7  # torch.optim.Muon's defaults
        ours, state = _steps(tx, params, grads)
        want, buf = _torch_by_hand(params, grads, 0.02)
        _close(ours, want, 1e-14)
        _close(state.slots["momentum_buffer"], buf, 1e-15)


# -- the NumPy reference, bit for bit ---------------------------------------------------------------

EXACT = [
    pytest.param(convention, jit, id=f"{convention}-{'jit' if jit else 'eager'}")
    for convention in ("optax", "uniopt", "torch", "keras")
    for jit in (False, True)
]


@pytest.mark.parametrize(("convention", "jit"), EXACT)
def test_exact_products_are_the_numpy_reference_bit_for_bit(convention, jit):
    """``matmul="exact"``: every product summed in the spec's order, so jax (eagerly and compiled)
    gives the core's NumPy bits in every convention (torch's: bfloat16 rounding after each
    product, through the float32 -> bfloat16 -> float32 conversions XLA must keep)."""
    shapes = {"tall": (3, 2), "wide": (2, 3)}
    if convention in ("optax", "keras"):
        shapes |= {"vec": (3,), "scalar": ()}  # Adam's
    params, grads = _tree(4, shapes=shapes), _grads(2, shapes=shapes)
    tx = uj.muon(0.02, weight_decay=0.01, ns_steps=3, matmul="exact", convention=convention)
    ours, state = _steps(tx, params, grads, jit=jit)
    keys = sorted(shapes)  # jax.tree.leaves order of a dict
    arrays = [np.asarray(params[k]) for k in keys]
    ref_state = tx.spec.init(arrays)
    for g in grads:
        arrays, ref_state = tx.spec.update([np.asarray(g[k]) for k in keys], ref_state, arrays)
    for k, expected in zip(keys, arrays, strict=True):
        np.testing.assert_array_equal(np.asarray(ours[k]), expected, err_msg=k)
    for i, k in enumerate(keys):
        for name, value in ref_state.slots[i].items():
            np.testing.assert_array_equal(np.asarray(state.slots[name][k]), value, err_msg=f"{k} {name}")


def test_products_run_at_highest_precision():
    """Every matrix product of the traced step asks XLA for ``Precision.HIGHEST`` (true float32 on
    GPUs and TPUs, whose default rounds float32 inputs to TF32 or bfloat16)."""
    params, grads = _tree(5, shapes=MATRICES), _tree(6, shapes=MATRICES)
    tx = uj.muon(0.02)
    jaxpr = jax.make_jaxpr(tx.step)(grads, tx.init(params), params)
    dots = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]
    assert len(dots) == 3 * 5 * len(MATRICES)  # three products per Newton-Schulz step
    highest = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
    assert all(e.params["precision"] == highest for e in dots)


# -- jit ---------------------------------------------------------------------------------------------


def test_jit_compiles_once():
    """The second call of a jitted training step reuses the first compilation (the state's arrays
    are placed like the parameters)."""
    tx = uj.muon(0.02)
    params, grads = _tree(7), _grads(2)

    @jax.jit
    def train(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for g in grads:
        params, state = train(params, state, g)
    assert train._cache_size() == 1


# -- refusals ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("convention", ["uniopt", "torch"])
def test_a_parameter_that_is_not_a_matrix_is_refused_at_init(convention):
    tx = uj.muon(0.02, convention=convention)
    with pytest.raises(ValueError, match=r"Muon: parameter \['vec'\]: a parameter of shape \(5,\) with "):
        tx.init({"vec": jnp.ones(5), "w": jnp.ones((2, 3))})
    with pytest.raises(ValueError, match=r"parameter \[1\]: a parameter of shape \(\)"):
        jax.jit(tx.init)([jnp.ones((2, 2)), jnp.ones(())])
    tx.init({"w": jnp.ones((2, 3))})  # matrices only: accepted


def test_complex_parameters_are_refused_at_init():
    with pytest.raises(ValueError, match=r"parameter \['w'\]: complex parameters are not supported"):
        uj.muon(0.02).init({"w": jnp.ones((2, 2), jnp.complex64)})


def test_update_needs_params():
    tx = uj.muon(0.02)
    params = {"w": jnp.ones((2, 3))}
    with pytest.raises(ValueError, match=r"Muon: update needs `params` for Muon"):
        tx.update(params, tx.init(params))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"adaptive": True}, r"adaptive=True .* is not supported; expected adaptive=False"),
        ({"preconditioning": "aol"}, r"preconditioning='aol' .* expected preconditioning='frobenius'"),
        ({"adam_eps_root": 1e-8}, r"adam_eps_root=1e-08 .* expected adam_eps_root=None or 0\.0"),
        ({"adam_learning_rate": 0.1}, r"adam_learning_rate=0\.1 .* expected adam_learning_rate=None"),
        (
            {"muon_weight_dimension_numbers": optax.contrib.MuonDimensionNumbers()},
            r"muon_weight_dimension_numbers=.* expected muon_weight_dimension_numbers=None",
        ),
        ({"ns_coeffs": "dion"}, r"ns_coeffs='dion' is not supported; expected three numbers \(a, b, c\)"),
        ({"ns_coeffs": ((3.0, -4.0, 2.0),) * 5}, r"per-step coefficient tuples .* are not offered"),
        ({"ns_coeffs": jnp.asarray(NS)}, r"ns_coeffs=Array\(.* is not supported; expected three numbers"),
        ({"ns_coeffs": (1.0, 2.0)}, r"ns_coefficients=\(1\.0, 2\.0\) is not three numbers"),
        (
            {"beta": 1.0},
            r"momentum=1\.0 is out of range; expected 0 <= momentum < 1.*beta is uniopt's momentum",
        ),
        ({"ns_steps": 100}, r"ns_steps=100 is out of range"),
        (
            {"adjust_lr_fn": "none"},
            r"adjust_lr_fn='none' with convention='optax': optax\.contrib\.muon always",
        ),
        ({"adam_eps": 1e-6}, r"adam_eps=1e-06 with convention='optax': optax\.contrib\.muon passes eps"),
        ({"ns_steps": jnp.asarray(5)}, r"ns_steps is a jax array; it sets the number of Newton-Schulz"),
        ({"consistent_rms": jnp.asarray(0.2)}, r"consistent_rms is a jax array; it sets the shape scale"),
    ],
)
def test_arguments_uniopt_cannot_honour_raise_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        uj.muon(0.02, **kwargs)


def test_a_state_dtype_wider_than_the_parameters_is_refused_at_init():
    tx = uj.muon(0.02, mu_dtype=jnp.float32)
    with pytest.raises(
        ValueError, match=r"mu_dtype=float32 for a parameter of dtype bfloat16: expected bfloat16"
    ):
        tx.init({"w": jnp.ones((2, 2), jnp.bfloat16)})
    state = uj.muon(0.02, mu_dtype=jnp.bfloat16).init({"w": jnp.ones((2, 2))})
    assert state.slots["momentum_buffer"]["w"].dtype == jnp.bfloat16


def test_inject_hyperparams():
    """uniopt.jax.inject_hyperparams injects the learning rate alone; optax's own would inject
    ns_steps too, which decides the rule's structure: refused, naming static_args."""
    shapes = {"wide": (2, 3)}
    params, grads = _tree(8, shapes=shapes), _grads(2, shapes=shapes)
    injected = uj.inject_hyperparams(uj.muon)(learning_rate=0.02)
    state = injected.init(params)
    assert float(state.hyperparams["learning_rate"]) == np.float32(0.02)
    ours, _ = contract_steps(injected, params, grads)
    plain, _ = contract_steps(uj.muon(0.02), params, grads)
    _close(ours, plain, 1e-6)  # the learning rate enters in-graph (a + lr * b), plain is constant
    with pytest.raises(ValueError, match=r"ns_steps is a jax array.*static_args=\('ns_steps',\)"):
        optax.inject_hyperparams(uj.muon)(learning_rate=0.02).init(params)
