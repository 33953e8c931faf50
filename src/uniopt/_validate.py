"""Hyperparameter validation shared by every spec.

Each checker raises :class:`ValueError` naming the optimizer, the parameter, the offending value and
the accepted range, e.g. ``RAdam: betas[1]=1.0 is out of range; expected 0 <= betas[1] < 1``.
Checks run in the hyperparameter record's ``__post_init__``, so no state exists yet when one fails.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Real

__all__ = [
    "CHAIN_DECAY",
    "check_betas",
    "check_bool",
    "check_interval",
    "check_lacking",
    "check_real",
    "check_state_dtypes_mapping",
]

CHAIN_DECAY = " (chain optax.add_decayed_weights instead)"
"""What an optax user chains for the weight decay an optax alias lacks."""


def check_real(owner: str, name: str, value: object) -> float:
    """Return ``value`` as a float, refusing bools, non-numbers, NaN and infinities."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{owner}: {name}={value!r} is not a real number; expected a finite float")
    as_float = float(value)
    if not math.isfinite(as_float):
        raise ValueError(f"{owner}: {name}={value!r} is not finite; expected a finite float")
    return as_float


def check_interval(
    owner: str,
    name: str,
    value: object,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Check ``low <(=) value <(=) high``; open ends are strict. Returns the value as float."""
    as_float = check_real(owner, name, value)
    too_low = low is not None and (as_float <= low if low_open else as_float < low)
    too_high = high is not None and (as_float >= high if high_open else as_float > high)
    if too_low or too_high:
        raise ValueError(
            f"{owner}: {name}={value!r} is out of range; expected "
            f"{_describe(name, low, high, low_open, high_open)}"
        )
    return as_float


def check_bool(owner: str, name: str, value: object) -> bool:
    """Accept only real bools (``0``/``1`` and strings are refused)."""
    if not isinstance(value, bool):
        raise ValueError(f"{owner}: {name}={value!r} is not a bool; expected True or False")
    return value


def check_betas(owner: str, betas: object, field: str = "betas") -> tuple[float, float]:
    """Check a pair of moment decay rates, each in ``[0, 1)``; messages name ``field`` (Muon's
    ``adam_betas``)."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(
            f"{owner}: {field}={betas!r} is not a pair; expected (beta1, beta2) with "
            "0 <= beta1 < 1 and 0 <= beta2 < 1"
        )
    return (
        check_interval(owner, f"{field}[0]", betas[0], 0.0, 1.0, high_open=True),
        check_interval(owner, f"{field}[1]", betas[1], 0.0, 1.0, high_open=True),
    )


def check_state_dtypes_mapping(
    owner: str, value: object, narrow_slots: tuple[str, ...], example: str
) -> None:
    """Refuse a ``state_dtypes`` that is not a mapping of slot names (str) to dtypes; ``example`` is
    the framework's spelling of bfloat16 in the message (``'bfloat16'``, ``torch.bfloat16``)."""
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        narrow = ", ".join(narrow_slots) or "none"
        raise ValueError(
            f"{owner}: state_dtypes={value!r}; expected a dict mapping slot names to dtypes, such as "
            f"{{{(narrow_slots or ('exp_avg',))[0]!r}: {example}}} (the slots stored narrower: {narrow})"
        )


def check_lacking(owner: str, convention: str, native: str, name: str, value: object, hint: str) -> None:
    """Refuse a nonzero ``value`` of argument ``name``, which ``native`` (the convention's framework
    optimizer) lacks; ``hint`` (for example what to chain instead) follows the reason."""
    if value != 0:
        raise ValueError(
            f"{owner}: {name}={value!r} with convention={convention!r}: {native} has no "
            f"{name.replace('_', ' ')}{hint}; expected {name}=0"
        )


def _describe(name: str, low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    left = "" if low is None else f"{low:g} {'<' if low_open else '<='} "
    right = "" if high is None else f" {'<' if high_open else '<='} {high:g}"
    return f"{left}{name}{right}"
