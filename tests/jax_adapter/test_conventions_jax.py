"""``convention=`` through uniopt.jax: optax's defaults where uniopt's differ, and a clear refusal."""

from __future__ import annotations

import pytest

import uniopt.jax as uj


def test_optax_convention_defaults():
    assert uj.rmsprop(1e-2).spec.alpha == 0.99  # uniopt (PyTorch) by default
    spec = uj.rmsprop(1e-2, convention="optax").spec
    assert (spec.alpha, spec.eps, spec.convention) == (0.9, 1e-8, "optax")
    assert uj.adamw(1e-3, convention="optax").spec.weight_decay == 1e-4
    assert uj.adamw(1e-3).spec.weight_decay == 1e-2


def test_convention_errors_name_what_exists():
    with pytest.raises(ValueError, match=r"optax\.adam has no weight decay"):
        uj.adam(1e-3, weight_decay=0.1, convention="optax")
    with pytest.raises(ValueError, match=r"RAdam: convention='keras' is not available"):
        uj.radam(1e-3, convention="keras")
