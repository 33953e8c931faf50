"""Optimizer cases shared by the hand-computed and paper-reference tests: every case of the
registry table, plus feature combinations the table does not hold."""

from __future__ import annotations

import numpy as np
import pytest

from uniopt.registry import TABLE, Case

CASES = [pytest.param(info, case, id=f"{info.name}-{case.desc}") for info in TABLE for case in info.cases]


def table_for(backend: str) -> list:
    """The table's rows that ``backend``'s adapter runs eagerly (``OptimizerInfo.skip_reason`` names
    the others; a row may still refuse one mode: ScheduleFreeAdamW under tf's XLA)."""
    return [info for info in TABLE if info.skip_reason(backend) is None]


def per_convention(backend: str) -> list:
    """:data:`PER_CONVENTION` of the rows ``backend`` runs."""
    return [p for p in PER_CONVENTION if p.values[0].skip_reason(backend) is None]


def _first_per_convention() -> list:
    params, seen = [], set()
    for info in TABLE:
        for case in info.cases:
            key = (info.name, info.make(case).convention)
            if key not in seen:
                seen.add(key)
                params.append(pytest.param(info, case, id=f"{info.name}-{case.desc}"))
    return params


PER_CONVENTION = _first_per_convention()
"""The first case of each optimizer and convention in the table: the adapters' per-case tests run
these (each convention is its own rule and its own scalars); the conformance matrix, which ``nox -s
check`` runs too, runs every case of the table on every stream in every mode."""

# Feature combinations the table does not hold (maximize, weight decay, centering, momentum, AMSGrad,
# skipping together), so that, for example, every slot is checked to see the prepared gradient.
_COMBOS = {
    "SGD": [
        {"lr": 0.05, "weight_decay": 0.1, "maximize": True},
        {"lr": 0.02, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1, "maximize": True},
        {"lr": 0.02, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.1, "maximize": True},
    ],
    "Adagrad": [
        {
            "lr": 0.1,
            "lr_decay": 0.01,
            "eps": 1e-6,
            "initial_accumulator_value": 0.1,
            "weight_decay": 0.05,
            "maximize": True,
        },
    ],
    "RMSprop": [
        {
            "lr": 0.01,
            "alpha": 0.9,
            "eps": 1e-6,
            "centered": True,
            "momentum": 0.5,
            "weight_decay": 0.1,
            "maximize": True,
        },
    ],
    "Adam": [
        {
            "lr": 0.01,
            "betas": (0.8, 0.99),
            "eps": 1e-6,
            "amsgrad": True,
            "weight_decay": 0.1,
            "maximize": True,
        },
    ],
    "AdamW": [
        {
            "lr": 0.01,
            "betas": (0.8, 0.99),
            "eps": 1e-6,
            "amsgrad": True,
            "weight_decay": 0.5,
            "maximize": True,
        },
    ],
    "RAdam": [
        {"lr": 0.01, "weight_decay": 0.1, "degenerated_to_sgd": False, "maximize": True},
        {
            "lr": 0.01,
            "betas": (0.8, 0.99),
            "eps": 1e-6,
            "weight_decay": 0.1,
            "decoupled_weight_decay": True,
            "degenerated_to_sgd": False,
            "maximize": True,
        },
    ],
    # every uniopt field of Adafactor at once: decay, maximize, a given eps1, clipping above 1
    "Adafactor": [
        {
            "lr": 0.05,
            "beta2_decay": -0.5,
            "eps": (1e-3, 1e-2),
            "d": 1.5,
            "weight_decay": 0.1,
            "maximize": True,
        },
    ],
}
COMBOS = [
    pytest.param(info, Case(f"combo{k}", kwargs), id=f"{info.name}-combo{k}")
    for info in TABLE
    for k, kwargs in enumerate(_COMBOS.get(info.name, ()))
]


def as_matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """A 2-D shape holding the same elements: ``()`` -> ``(1, 1)``, ``(n,)`` -> ``(1, n)``,
    ``(a, b, c, ...)`` -> ``(a, b*c*...)``."""
    if len(shape) == 0:
        return (1, 1)
    if len(shape) == 1:
        return (1, shape[0])
    rest = 1
    for n in shape[1:]:
        rest *= n
    return (shape[0], rest)


def shapes_for(spec, shapes):
    """``shapes`` with each shape ``spec`` refuses (``Spec.param_refusal``: Muon's uniopt and torch
    conventions take matrices only) replaced by :func:`as_matrix_shape`; the others unchanged."""
    return [tuple(s) if spec.param_refusal(tuple(s)) is None else as_matrix_shape(tuple(s)) for s in shapes]


def float32_draws(shapes, steps: int, seed: int = 0) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """float32 parameters (standard normal) of ``shapes`` and ``steps`` lists of gradients, each
    scaled by a random power of ten in [1e-3, 1e2) so that moments span many binades."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [
        [(rng.standard_normal(s) * 10 ** rng.uniform(-3, 2)).astype(np.float32) for s in shapes]
        for _ in range(steps)
    ]
    return params, grads
