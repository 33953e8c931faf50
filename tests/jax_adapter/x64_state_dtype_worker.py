"""Run by test_jax_state_dtype.py in a process with ``JAX_ENABLE_X64=1``: float64 parameters with
the moment stored in float32 (``mu_dtype`` / ``accumulator_dtype=jnp.float32``), uniopt.jax under
``convention="optax"`` (jitted) against optax's own alias run eagerly (every jnp op rounded to its
dtype there), each step from optax's parameters. Prints one line per case, then ``OK``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import uniopt.jax as ujax

assert jax.config.jax_enable_x64

CASES = [  # alias, optax's argument, uniopt's slot, optax's state field, extra arguments
    ("adam", "mu_dtype", "exp_avg", "mu", {}),
    ("nadam", "mu_dtype", "exp_avg", "mu", {}),
    ("lion", "mu_dtype", "exp_avg", "mu", {}),
    ("sgd", "accumulator_dtype", "momentum_buffer", "trace", {"momentum": 0.9}),
    ("muon", "mu_dtype", "momentum_buffer", "mu", {}),
]


def field(state, name):
    found = [v for _, v in optax.tree.get_all_with_path(state, name)]
    leaves = [x for f in found for x in jax.tree.leaves(f) if not isinstance(x, optax.MaskedNode)]
    return leaves


rng = np.random.default_rng(0)
params = {"w": jnp.asarray(rng.standard_normal((12, 10))), "b": jnp.asarray(rng.standard_normal(10))}
grads = [
    {k: jnp.asarray(rng.standard_normal(v.shape) * 10 ** rng.uniform(-3, 2)) for k, v in params.items()}
    for _ in range(6)
]
for alias, arg, slot, name, extra in CASES:
    theirs = ujax.optax_function(alias)(0.01, **extra, **{arg: jnp.float32})
    ours = getattr(ujax, alias)(0.01, **extra, convention="optax", **{arg: jnp.float32})
    update = jax.jit(ours.update)
    p_t = params
    s_t, s_o = theirs.init(p_t), ours.init(p_t)
    worst = 0.0
    for g in grads:
        u_o, s_o = update(g, s_o, p_t)
        u_t, s_t = theirs.update(g, s_t, p_t)
        p_o, p_t = optax.apply_updates(p_t, u_o), optax.apply_updates(p_t, u_t)
        stored = jax.tree.leaves(s_o.slots[slot])
        assert all(a.dtype == jnp.float32 for a in stored), alias
        want = field(s_t, name)
        assert len(stored) == len(want) or alias == "muon", alias
        for a, b in zip(sorted(stored, key=np.size), sorted(want, key=np.size), strict=False):
            assert b.dtype == jnp.float32 and np.asarray(a).tobytes() == np.asarray(b).tobytes(), alias
        for a, b in zip(jax.tree.leaves(p_o), jax.tree.leaves(p_t), strict=True):
            assert a.dtype == jnp.float64
            a, b = np.asarray(a), np.asarray(b)
            worst = max(worst, float(np.max(np.abs(a - b) / np.abs(b))))
    # SGD's and Lion's steps are optax's ops; Adam, NAdam and Muon multiply by host reciprocals of
    # the bias corrections (and Muon's products are XLA's), so the last bits of a step may differ
    bound = 0.0 if alias in ("sgd", "lion") else 1e-13
    assert worst <= bound, (alias, worst)
    print(f"{alias}: {arg}=float32 beside float64, slots bitwise, parameters within {worst:.1e}")
print("OK")
