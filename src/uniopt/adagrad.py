r"""Adagrad (Duchi, Hazan and Singer 2011), diagonal form.

With :math:`g_t \leftarrow \pm g_t + \lambda\,\theta_{t-1}` and the decayed learning rate
:math:`\tilde\eta_t = \eta / (1 + (t-1)\,\delta)` (:math:`\delta` = ``lr_decay``):

.. math::

    s_t &= s_{t-1} + g_t^2, \qquad s_0 = \text{initial\_accumulator\_value} \\
    \theta_t &= \theta_{t-1} - \tilde\eta_t\, \frac{g_t}{\sqrt{s_t} + \epsilon}

Choices where frameworks disagree: uniopt follows PyTorch: the accumulator starts at 0 and
:math:`\epsilon = 10^{-10}` sits outside the square root (Keras and optax start at 0.1 with
:math:`\epsilon` inside). Op sequence: ``s = s + g*g``; ``p = p - (g / (sqrt(s) + eps)) * clr``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

from ._math import prepare_grad
from ._spec import Array, Spec
from ._validate import check_interval

__all__ = ["Adagrad", "AdagradScalars"]


class AdagradScalars(NamedTuple):
    clr: float  # lr / (1 + (step - 1) * lr_decay)
    weight_decay: float
    eps: float


@dataclasses.dataclass(frozen=True)
class Adagrad(Spec):
    """Adagrad with learning-rate decay and L2 weight decay (see the module docstring)."""

    name: ClassVar[str] = "Adagrad"
    # uniopt's formula is PyTorch's; Keras's and optax's forms are not specified here yet
    conventions: ClassVar[Mapping[str, Mapping[str, Any]]] = {"uniopt": {}, "torch": {}}
    unavailable_conventions: ClassVar[Mapping[str, str]] = {
        "keras": "not yet specified for this optimizer",
        "optax": "not yet specified for this optimizer",
    }
    reference: ClassVar[str] = "Duchi, Hazan and Singer 2011, JMLR 12"

    lr: float = 1e-2
    lr_decay: float = 0.0
    eps: float = 1e-10
    initial_accumulator_value: float = 0.0
    weight_decay: float = 0.0
    maximize: bool = False
    convention: str = "uniopt"

    def _check(self) -> None:
        check_interval(self.name, "lr_decay", self.lr_decay, 0.0)
        check_interval(self.name, "eps", self.eps, 0.0, low_open=True)
        check_interval(self.name, "initial_accumulator_value", self.initial_accumulator_value, 0.0)
        check_interval(self.name, "weight_decay", self.weight_decay, 0.0)

    def slot_names(self) -> tuple[str, ...]:
        return ("sum",)

    def init_slot(self, name: str, param: Array, xp: Any) -> Array:
        return xp.full_like(param, float(self.initial_accumulator_value))

    def scalars_converge(self) -> bool:
        return self.lr_decay == 0  # lr / (1 + (t-1) lr_decay) keeps shrinking

    def step_scalars(self, step: int, lr: float | None = None) -> AdagradScalars:
        base = float(self.lr if lr is None else lr)
        return AdagradScalars(
            clr=base / (1.0 + (step - 1) * float(self.lr_decay)),
            weight_decay=float(self.weight_decay),
            eps=float(self.eps),
        )

    def rule(
        self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any
    ) -> tuple[Array, dict[str, Array]]:
        wd = sc.weight_decay if self.weight_decay != 0 else None
        g = prepare_grad(grad, param, xp, maximize=self.maximize, weight_decay=wd)
        total = xp.add(slots["sum"], xp.multiply(g, g))
        std = xp.add(xp.sqrt(total), sc.eps)
        new_param = xp.subtract(param, xp.multiply(xp.divide(g, std), sc.clr))
        return new_param, {"sum": total}
