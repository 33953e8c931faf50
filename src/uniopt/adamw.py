r"""AdamW (Loshchilov and Hutter 2019, Algorithm 2): Adam with decoupled weight decay.

.. math::

    \theta_t = (1 - \eta\lambda)\,\theta_{t-1}
        - \eta\, \frac{m_t / (1-\beta_1^t)}{\sqrt{v_t / (1-\beta_2^t)} + \epsilon}

with :math:`m_t, v_t` (and AMSGrad) exactly as in :mod:`uniopt.adam`, computed on the raw gradient.
Choices where frameworks disagree: the decay is multiplied by the learning rate (PyTorch, optax,
Keras; the paper's schedule multiplier :math:`\eta_t` is folded into ``lr``), default
:math:`\lambda = 10^{-2}` (PyTorch; optax uses :math:`10^{-4}`, Keras 0.004). The factor
``1 - lr*wd`` is one host scalar; the op sequence is ``p = p * decay`` followed by Adam's.
Conventions as for :mod:`uniopt.adam`, with each framework's default weight decay.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from .adam import Adam

__all__ = ["AdamW"]


@dataclasses.dataclass(frozen=True)
class AdamW(Adam):
    """Adam with decoupled weight decay (see the module docstring)."""

    name: ClassVar[str] = "AdamW"
    reference: ClassVar[str] = "Loshchilov and Hutter 2019, arXiv 1711.05101, Algorithm 2"
    decoupled: ClassVar[bool] = True

    lacking: ClassVar[Mapping[str, tuple[str, Mapping[str, str]]]] = {}  # optax.adamw decays
    conventions: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "uniopt": {"eps": 1e-8, "weight_decay": 1e-2},
        "torch": {"eps": 1e-8, "weight_decay": 1e-2},
        "keras": {"eps": 1e-7, "weight_decay": 0.004},
        "optax": {"eps": 1e-8, "weight_decay": 1e-4},
    }
