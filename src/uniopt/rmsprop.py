r"""RMSprop (Hinton, Srivastava and Swersky 2012, lecture 6e), with centering and momentum.

With :math:`g_t \leftarrow \pm g_t + \lambda\,\theta_{t-1}` and :math:`\alpha` the smoothing constant:

.. math::

    v_t &= \alpha\, v_{t-1} + (1-\alpha)\, g_t^2 \\
    \bar g_t &= \alpha\, \bar g_{t-1} + (1-\alpha)\, g_t \quad \text{(centered only)} \\
    \sigma_t &= \sqrt{\max(v_t - \bar g_t^2,\ 0)} + \epsilon \ \text{(centered)}, \quad
        \sqrt{v_t} + \epsilon \ \text{(otherwise)} \\
    b_t &= \mu\, b_{t-1} + g_t / \sigma_t, \qquad
        \theta_t = \theta_{t-1} - \eta\, b_t \quad (\mu > 0) \\
    \theta_t &= \theta_{t-1} - \eta\, g_t / \sigma_t \quad (\mu = 0)

Choices where frameworks disagree: uniopt follows PyTorch: :math:`\alpha = 0.99`,
:math:`\epsilon = 10^{-8}` outside the square root, lr :math:`10^{-2}`, momentum buffer without the
learning rate (Keras: :math:`\rho = 0.9`, eps inside the root, momentum includes lr). One deliberate
difference from PyTorch: the centered variance is clamped at 0 before the square root, so rounding
can never turn a near-zero variance into NaN.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

from ._math import ema, prepare_grad
from ._spec import Array, Spec
from ._validate import check_interval

__all__ = ["RMSprop", "RMSpropScalars"]


class RMSpropScalars(NamedTuple):
    lr: float
    weight_decay: float
    alpha: float
    one_minus_alpha: float
    eps: float
    momentum: float


@dataclasses.dataclass(frozen=True)
class RMSprop(Spec):
    """RMSprop with optional centering and momentum (see the module docstring)."""

    name: ClassVar[str] = "RMSprop"
    reference: ClassVar[str] = "Hinton, Srivastava and Swersky 2012, Neural Networks lecture 6e"

    lr: float = 1e-2
    alpha: float = 0.99
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum: float = 0.0
    centered: bool = False
    maximize: bool = False

    def _check(self) -> None:
        check_interval(self.name, "alpha", self.alpha, 0.0, 1.0, high_open=True)
        check_interval(self.name, "eps", self.eps, 0.0, low_open=True)
        check_interval(self.name, "weight_decay", self.weight_decay, 0.0)
        check_interval(self.name, "momentum", self.momentum, 0.0)

    def slot_names(self) -> tuple[str, ...]:
        names = ("square_avg",)
        if self.centered:
            names += ("grad_avg",)
        if self.momentum != 0:
            names += ("momentum_buffer",)
        return names

    def step_scalars(self, step: int, lr: float | None = None) -> RMSpropScalars:
        return RMSpropScalars(
            lr=float(self.lr if lr is None else lr),
            weight_decay=float(self.weight_decay),
            alpha=float(self.alpha),
            one_minus_alpha=1.0 - float(self.alpha),
            eps=float(self.eps),
            momentum=float(self.momentum),
        )

    def rule(
        self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any
    ) -> tuple[Array, dict[str, Array]]:
        wd = sc.weight_decay if self.weight_decay != 0 else None
        g = prepare_grad(grad, param, xp, maximize=self.maximize, weight_decay=wd)
        new: dict[str, Array] = {}
        new["square_avg"] = ema(slots["square_avg"], xp.multiply(g, g), sc.alpha, sc.one_minus_alpha, xp)
        if self.centered:
            new["grad_avg"] = ema(slots["grad_avg"], g, sc.alpha, sc.one_minus_alpha, xp)
            variance = xp.subtract(new["square_avg"], xp.multiply(new["grad_avg"], new["grad_avg"]))
            variance = xp.maximum(variance, xp.zeros_like(variance))
        else:
            variance = new["square_avg"]
        sigma = xp.add(xp.sqrt(variance), sc.eps)
        step_dir = xp.divide(g, sigma)
        if self.momentum != 0:
            new["momentum_buffer"] = xp.add(xp.multiply(slots["momentum_buffer"], sc.momentum), step_dir)
            step_dir = new["momentum_buffer"]
        return xp.subtract(param, xp.multiply(step_dir, sc.lr)), new
