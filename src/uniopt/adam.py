r"""Adam (Kingma and Ba 2015, Algorithm 1) with optional AMSGrad and L2 weight decay.

With :math:`g_t \leftarrow \pm g_t + \lambda\,\theta_{t-1}`:

.. math::

    m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
    v_t^{\max} &= \max(v_{t-1}^{\max}, v_t) \quad \text{(AMSGrad; replaces } v_t
        \text{ below)} \\
    \theta_t &= \theta_{t-1} - \eta\, \frac{m_t / (1-\beta_1^t)}{\sqrt{v_t / (1-\beta_2^t)} + \epsilon}

Choices where frameworks disagree: uniopt follows the paper and PyTorch/optax: :math:`\epsilon`
(default :math:`10^{-8}`) is added to :math:`\sqrt{\hat v_t}`, not in Keras's "epsilon hat" form
(:math:`10^{-7}` added to :math:`\sqrt{v_t}`). AMSGrad keeps the maximum of the *uncorrected*
:math:`v_t` (PyTorch, Keras), not of :math:`\hat v_t` (optax).

Op sequence, with host scalars ``step_size = lr / (1 - beta1^t)`` and
``inv_sqrt_bc2 = 1 / sqrt(1 - beta2^t)``: ``m = m*b1 + g*(1-b1)``; ``v = v*b2 + (g*g)*(1-b2)``;
``p = p - (m / (sqrt(v)*inv_sqrt_bc2 + eps)) * step_size``. :class:`uniopt.AdamW` adds
``p = p * (1 - lr*wd)`` first.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

from ._math import adam_moments, adam_step, bias_correction, prepare_grad
from ._spec import Array, Spec
from ._validate import check_betas, check_interval

__all__ = ["Adam", "AdamScalars"]


class AdamScalars(NamedTuple):
    weight_decay: float
    decay: float  # 1 - lr * weight_decay (decoupled weight decay)
    beta1: float
    one_minus_beta1: float
    beta2: float
    one_minus_beta2: float
    step_size: float  # lr / (1 - beta1^t)
    inv_sqrt_bc2: float  # 1 / sqrt(1 - beta2^t)
    eps: float


@dataclasses.dataclass(frozen=True)
class Adam(Spec):
    """Adam with optional AMSGrad and L2 weight decay (see the module docstring)."""

    name: ClassVar[str] = "Adam"
    reference: ClassVar[str] = "Kingma and Ba 2015, arXiv 1412.6980, Algorithm 1"
    decoupled: ClassVar[bool] = False

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    amsgrad: bool = False
    maximize: bool = False

    def _check(self) -> None:
        object.__setattr__(self, "betas", check_betas(self.name, self.betas))
        check_interval(self.name, "eps", self.eps, 0.0, low_open=True)
        check_interval(self.name, "weight_decay", self.weight_decay, 0.0)

    def slot_names(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if self.amsgrad else ("exp_avg", "exp_avg_sq")

    def step_scalars(self, step: int, lr: float | None = None) -> AdamScalars:
        lr = float(self.lr if lr is None else lr)
        beta1, beta2 = self.betas
        return AdamScalars(
            weight_decay=float(self.weight_decay),
            decay=1.0 - lr * float(self.weight_decay),
            beta1=beta1,
            one_minus_beta1=1.0 - beta1,
            beta2=beta2,
            one_minus_beta2=1.0 - beta2,
            step_size=lr / bias_correction(beta1, step),
            inv_sqrt_bc2=1.0 / math.sqrt(bias_correction(beta2, step)),
            eps=float(self.eps),
        )

    def rule(
        self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any
    ) -> tuple[Array, dict[str, Array]]:
        coupled = sc.weight_decay if (self.weight_decay != 0 and not self.decoupled) else None
        g = prepare_grad(grad, param, xp, maximize=self.maximize, weight_decay=coupled)
        if self.decoupled and self.weight_decay != 0:
            param = xp.multiply(param, sc.decay)
        m, v = adam_moments(slots["exp_avg"], slots["exp_avg_sq"], g, sc, xp)
        new = {"exp_avg": m, "exp_avg_sq": v}
        if self.amsgrad:
            v = new["max_exp_avg_sq"] = xp.maximum(slots["max_exp_avg_sq"], v)
        step = adam_step(m, v, sc.step_size, sc.inv_sqrt_bc2, sc.eps, xp)
        return xp.subtract(param, step), new
