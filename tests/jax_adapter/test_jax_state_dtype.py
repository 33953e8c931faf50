"""uniopt.jax's ``mu_dtype`` / ``accumulator_dtype``: the moment stored in bfloat16 or float16
beside float32 parameters, against optax itself (its own aliases, eagerly: every jnp op rounds to
its dtype there) and the NumPy reference (the core's ``init(slot_dtypes=...)``/``update``), bit
for bit, eagerly and under ``jax.jit``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

import uniopt
import uniopt.jax as ujax
from uniopt._math import round_to_dtype

NARROW = (jnp.bfloat16, jnp.float16)
STEPS = 8


def _draws(seed: int = 0) -> tuple[dict, list[dict]]:
    rng = np.random.default_rng(seed)
    params = {
        "w": rng.standard_normal((16, 12)).astype(np.float32),
        "b": rng.standard_normal(12).astype(np.float32),
    }
    grads = [
        {
            k: (rng.standard_normal(v.shape) * 10 ** rng.uniform(-3, 2)).astype(np.float32)
            for k, v in params.items()
        }
        for _ in range(STEPS)
    ]
    return params, grads


def _bits(tree):
    return [
        np.asarray(a).view(np.uint16 if a.dtype.itemsize == 2 else np.uint32) for a in jax.tree.leaves(tree)
    ]


def _assert_same(ours, theirs):
    for a, b in zip(_bits(ours), _bits(theirs), strict=True):
        np.testing.assert_array_equal(a, b)


def _field(state, name, params):
    """optax's state field ``name`` as one tree like ``params``: optax.contrib.muon keeps ``mu`` in
    its Muon and its Adam partition, each holding MaskedNode where the other has the leaf."""
    found = [v for _, v in optax.tree.get_all_with_path(state, name)]
    if len(found) == 1:
        return found[0]
    masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
    flat = [jax.tree.leaves(f, is_leaf=masked) for f in found]
    leaves = [next(x for x in column if not masked(x)) for column in zip(*flat, strict=True)]
    return jax.tree.unflatten(jax.tree.structure(params), leaves)


CASES = [
    ("adam", "mu_dtype", "exp_avg", "mu", {}),
    ("adamw", "mu_dtype", "exp_avg", "mu", {"weight_decay": 0.01}),
    ("nadam", "mu_dtype", "exp_avg", "mu", {}),
    ("nadamw", "mu_dtype", "exp_avg", "mu", {"weight_decay": 0.01}),
    ("lion", "mu_dtype", "exp_avg", "mu", {}),
    ("lion", "mu_dtype", "exp_avg", "mu", {"weight_decay": 0.01}),
    ("muon", "mu_dtype", "momentum_buffer", "mu", {}),
    ("muon", "mu_dtype", "momentum_buffer", "mu", {"nesterov": False, "weight_decay": 0.01}),
    ("sgd", "accumulator_dtype", "momentum_buffer", "trace", {"momentum": 0.9}),
    ("sgd", "accumulator_dtype", "momentum_buffer", "trace", {"momentum": 0.9, "nesterov": True}),
]


@pytest.mark.parametrize("dtype", NARROW, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize(("alias", "arg", "slot", "field", "extra"), CASES, ids=lambda v: str(v))
def test_matches_optax_bitwise_over_several_steps(alias, arg, slot, field, extra, dtype):
    params, grads = _draws()
    theirs = ujax.optax_function(alias)(0.01, **extra, **{arg: dtype})
    ours = getattr(ujax, alias)(0.01, **extra, convention="optax", **{arg: dtype})
    p_t, s_t = jax.tree.map(jnp.asarray, params), None
    s_t = theirs.init(p_t)
    s_o = ours.init(p_t)
    for g in grads:
        u_o, s_o = ours.update(g, s_o, p_t)  # each step from optax's parameters
        u_t, s_t = theirs.update(g, s_t, p_t)
        p_o, p_t = optax.apply_updates(p_t, u_o), optax.apply_updates(p_t, u_t)
        stored = s_o.slots[slot]
        assert all(a.dtype == jnp.dtype(dtype) for a in jax.tree.leaves(stored))
        _assert_same(stored, _field(s_t, field, p_t))
        if alias != "sgd":
            if "exp_avg_sq" in s_o.slots and alias != "muon":  # Muon's matrices: a placeholder
                _assert_same(s_o.slots["exp_avg_sq"], _field(s_t, "nu", p_t))
            # optax divides by the bias corrections where the spec multiplies by their host
            # reciprocals: one step from the same parameters differs in the last bits of the step,
            # as with mu_dtype=None: within 1e-6 here (parameters of magnitude up to about 4, whose
            # float32 spacing is 4.8e-7; steps of about lr = 0.01)
            for a, b in zip(jax.tree.leaves(p_o), jax.tree.leaves(p_t), strict=True):
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)
        else:
            _assert_same(p_o, p_t)


WITH_CONVENTIONS = [
    pytest.param(*case, convention, dtype, id=f"{case[0]}-{case[4]}-{convention}-{jnp.dtype(dtype).name}")
    for case in CASES
    for convention in ("optax", "uniopt", "torch", "keras")
    if convention in ujax.ALIASES[case[0]][0].conventions
    # float16 under optax's convention (its own product); bfloat16 under every convention
    for dtype in (NARROW if convention == "optax" else (jnp.bfloat16,))
]


@pytest.mark.parametrize(("alias", "arg", "slot", "field", "extra", "convention", "dtype"), WITH_CONVENTIONS)
def test_eager_and_jit_are_the_numpy_reference(alias, arg, slot, field, extra, convention, dtype):
    params, grads = _draws(1)
    exact = {"matmul": "exact"} if alias == "muon" else {}  # the backends' matmuls differ otherwise
    tx = getattr(ujax, alias)(0.01, **extra, **exact, convention=convention, **{arg: dtype})
    # Muon's uniopt and torch conventions take matrices only
    params = {k: v for k, v in params.items() if tx.spec.param_refusal(v.shape) is None}
    grads = [{k: g[k] for k in params} for g in grads]
    names = list(params)
    ref_p = [params[k] for k in names]
    ref_s = tx.spec.init(ref_p, slot_dtypes={slot: jnp.dtype(dtype).name})
    for mode in ("eager", "jit"):
        step = tx.step if mode == "eager" else jax.jit(tx.step)
        p, s = jax.tree.map(jnp.asarray, params), tx.init(jax.tree.map(jnp.asarray, params))
        want_p, want_s = ref_p, ref_s
        for g in grads:
            p, s = step(g, s, p)
            want_p, want_s = tx.spec.update([g[k] for k in names], want_s, want_p)
            assert all(a.dtype == jnp.dtype(dtype) for a in jax.tree.leaves(s.slots[slot]))
        _assert_same([p[k] for k in names], want_p)
        for n in tx.spec.slot_names():
            _assert_same([s.slots[n][k] for k in names], [slots[n] for slots in want_s.slots])


def test_state_dtype_survives_jit_init_and_is_the_canonical_dtype():
    params = {"w": jnp.ones((3, 2))}
    tx = ujax.adam(1e-3, mu_dtype="bfloat16")
    state = jax.jit(tx.init)(params)
    assert state.slots["exp_avg"]["w"].dtype == jnp.bfloat16
    assert state.slots["exp_avg_sq"]["w"].dtype == jnp.float32
    # float64 with jax_enable_x64 off is float32, as optax canonicalizes mu_dtype
    if not jax.config.jax_enable_x64:
        state = ujax.adam(1e-3, mu_dtype=jnp.float64).init(params)
        assert state.slots["exp_avg"]["w"].dtype == jnp.float32


def test_refused_state_dtypes_name_the_argument_before_any_state_exists():
    with pytest.raises(ValueError, match=r"uniopt.jax.adam: mu_dtype=int32 is not a real floating dtype"):
        ujax.adam(1e-3, mu_dtype=jnp.int32)
    tx = ujax.adam(1e-3, mu_dtype=jnp.bfloat16)
    with pytest.raises(ValueError, match=r"Adam: mu_dtype=bfloat16 for a parameter of dtype complex64"):
        tx.init({"w": jnp.ones(2, jnp.complex64)})
    with pytest.raises(
        ValueError, match=r"mu_dtype=float32 for a parameter of dtype float16: expected float16"
    ):
        ujax.adam(1e-3, mu_dtype=jnp.float32).init({"w": jnp.ones(2, jnp.float16)})


def test_a_state_whose_narrow_slot_has_another_dtype_is_refused_not_rounded():
    params = {"w": jnp.ones(3)}
    full = ujax.adam(1e-3).init(params)  # exp_avg in float32
    tx = ujax.adam(1e-3, mu_dtype=jnp.bfloat16)
    with pytest.raises(
        ValueError, match=r"slot 'exp_avg' is float32; this transformation stores it in bfloat16"
    ):
        tx.update({"w": jnp.ones(3)}, full, params)


def test_the_hosts_rounding_of_a_decay_is_jaxs_weak_typed_conversion():
    """optax multiplies the stored moment by a Python float: jax converts it to the moment's dtype.
    The spec rounds it on the host (round_to_dtype); both agree on the decays one uses and on
    random ones."""
    rng = np.random.default_rng(4)
    decays = [0.9, 0.95, 0.99, 0.999, 0.5, 0.8, 0.0, 1.0, *rng.uniform(0, 1, 3000)]
    for dtype in NARROW:
        ones = jnp.ones((), dtype)
        for d in decays:
            want = float(np.asarray(jnp.multiply(float(d), ones)).astype(np.float64))
            assert round_to_dtype(float(d), jnp.dtype(dtype).name) == want, (dtype, d)


def test_bytes_saved():
    params = {"w": jnp.ones((256, 128)), "b": jnp.ones(128)}
    size = lambda tree: sum(a.nbytes for a in jax.tree.leaves(tree))  # noqa: E731
    full = ujax.adam(1e-3).init(params)
    half = ujax.adam(1e-3, mu_dtype=jnp.bfloat16).init(params)
    assert size(full.slots) == 2 * 4 * (256 * 128 + 128)
    assert size(half.slots) == (4 + 2) * (256 * 128 + 128)  # exp_avg in 2 bytes, exp_avg_sq in 4
    assert isinstance(ml_dtypes.bfloat16, type) and uniopt.Adam.lower_precision_slots == ("exp_avg",)


def test_float32_moment_beside_float64_parameters_matches_optax():
    """With ``jax_enable_x64`` (a subprocess: the flag is process-global), ``mu_dtype=jnp.float32``
    beside float64 parameters: optax rounds the decay that multiplies the stored moment to float32
    (weak typing), and so does the spec; until 2026-12-06 the spec had no float32 field for it and
    the first step raised ``AttributeError``. Slots bitwise with optax's eager run
    (x64_state_dtype_worker.py)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    worker = Path(__file__).with_name("x64_state_dtype_worker.py")
    env = {**os.environ, "JAX_ENABLE_X64": "1", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, str(worker)], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "OK" and len(lines) == 6, done.stdout
