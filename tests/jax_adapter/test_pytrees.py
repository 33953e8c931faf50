"""Arbitrary pytrees in, the same structure out; the state is a pytree of arrays that survives
jax.tree_util and a save/load through .npz."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
from ujax_helpers import same_bits

import uniopt
import uniopt.jax as ujax

# short scalar tables in every dtype (beta2 = 0.99), so float64 stays quick
SPEC = uniopt.Adam(lr=0.01, betas=(0.8, 0.99), eps=1e-3, weight_decay=0.01)


def _tree(seed: int, scale: float = 1.0):
    rng = np.random.default_rng(seed)

    def draw(shape, dtype):
        return (1.0 + np.abs(scale * rng.standard_normal(shape))).astype(dtype)

    return {
        "dense": {"w": draw((3, 4), np.float32), "b": None},
        "emb": [draw((5,), ml_dtypes.bfloat16), (draw((2, 2), np.float64), None)],
        "scale": draw((), np.float32),
    }


def _reference(params0, grads_seq):
    leaves0 = jax.tree.leaves(params0)
    state = SPEC.init(leaves0)
    params = list(leaves0)
    for grads in grads_seq:
        params, state = SPEC.update(jax.tree.leaves(grads), state, params)
    return params, state


def _run(tx, params, grads_seq, jit):
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    step = jax.jit(step) if jit else step
    state = tx.init(params)
    for grads in grads_seq:
        params, state = step(params, state, grads)
    return params, state


def test_nested_tree_with_none_leaves_and_mixed_dtypes():
    with jax.enable_x64(True):
        params0 = _tree(0)
        grads_seq = [_tree(s, scale=0.1) for s in range(1, 5)]
        want, want_state = _reference(params0, grads_seq)
        tx = ujax.from_spec(SPEC)
        for jit in (False, True):
            params, state = _run(tx, jax.tree.map(jnp.asarray, params0), grads_seq, jit)
            assert jax.tree.structure(params) == jax.tree.structure(params0)
            assert params["dense"]["b"] is None and params["emb"][1][1] is None
            for got, ref, orig in zip(jax.tree.leaves(params), want, jax.tree.leaves(params0), strict=True):
                assert got.dtype == orig.dtype
                assert same_bits(got, ref), (jit, got.dtype)
            for name in SPEC.slot_names():
                slot_tree = state.slots[name]
                assert jax.tree.structure(slot_tree) == jax.tree.structure(params0)
                for got, ref in zip(jax.tree.leaves(slot_tree), want_state.slots, strict=True):
                    assert same_bits(got, ref[name]), (jit, name)
            assert int(state.count) == 4


def test_state_is_a_namedtuple_pytree_of_arrays():
    params = {"a": jnp.ones((2, 3)), "b": [jnp.zeros(4), None]}
    tx = ujax.rmsprop(0.01, centered=True, momentum=0.5)
    state = tx.init(params)
    assert isinstance(state, ujax.UnioptState) and state._fields == ("count", "slots", "history")
    assert set(state.slots) == {"square_avg", "grad_avg", "momentum_buffer"}
    assert state.history is None  # RMSprop keeps no history: no leaf
    leaves, treedef = jax.tree_util.tree_flatten(state)
    assert all(isinstance(x, jax.Array) for x in leaves)
    assert len(leaves) == 1 + 3 * 2  # the count and three slots of two arrays
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    assert isinstance(rebuilt, ujax.UnioptState)
    assert jax.tree_util.tree_structure(rebuilt) == treedef
    doubled = jax.tree_util.tree_map(lambda x: x * 2, state)
    assert isinstance(doubled, ujax.UnioptState)


def _save(path, state) -> None:
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    arrays = {}
    for key, leaf in flat:
        a = np.asarray(leaf)
        arrays[jax.tree_util.keystr(key)] = a.view(np.uint16) if a.dtype == ml_dtypes.bfloat16 else a
    np.savez(path, **arrays)


def _load(path, like):
    """Leaves by key path into the structure (and dtypes) of ``like``, e.g. ``tx.init(params)``."""
    stored = np.load(path)
    flat, treedef = jax.tree_util.tree_flatten_with_path(like)
    leaves = []
    for key, leaf in flat:
        a = stored[jax.tree_util.keystr(key)]
        leaves.append(jnp.asarray(a.view(leaf.dtype) if a.dtype != leaf.dtype else a))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def test_state_survives_npz_and_training_resumes_bitwise(tmp_path):
    with jax.enable_x64(True):
        tx = ujax.from_spec(SPEC)
        params0 = jax.tree.map(jnp.asarray, _tree(0))
        grads_seq = [_tree(s, scale=0.1) for s in range(1, 7)]
        straight, straight_state = _run(tx, params0, grads_seq, jit=True)

        params, state = _run(tx, params0, grads_seq[:3], jit=True)
        _save(tmp_path / "opt.npz", state)
        np.savez(tmp_path / "params.npz", *[np.asarray(x, np.float64) for x in jax.tree.leaves(params)])
        del state
        loaded = _load(tmp_path / "opt.npz", tx.init(params0))
        assert loaded.count.dtype == jnp.int32 and int(loaded.count) == 3
        assert loaded.slots["exp_avg"]["emb"][0].dtype == ml_dtypes.bfloat16

        def step(p, s, g):
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        for grads in grads_seq[3:]:
            params, loaded = jax.jit(step)(params, loaded, grads)
        for a, b in zip(
            jax.tree.leaves((params, loaded)), jax.tree.leaves((straight, straight_state)), strict=True
        ):
            assert same_bits(a, b)
