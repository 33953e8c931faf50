r"""SGD with optional (Nesterov) momentum, dampening and L2 weight decay.

Plain SGD, heavy-ball Momentum and Nesterov momentum are cases of one spec. With the gradient
:math:`g_t` prepared as :math:`g_t \leftarrow \pm g_t + \lambda\,\theta_{t-1}` (sign ``-`` when
``maximize``; :math:`\lambda` = ``weight_decay``):

.. math::

    b_t &= \begin{cases} g_t & t = 1 \\ \mu\, b_{t-1} + (1-\tau)\, g_t & t > 1 \end{cases} \\
    d_t &= \begin{cases} g_t + \mu\, b_t & \text{nesterov} \\ b_t & \text{otherwise} \end{cases}
        \qquad (d_t = g_t \text{ when } \mu = 0) \\
    \theta_t &= \theta_{t-1} - \eta\, d_t

Choices where frameworks disagree (see docs/conventions.md): uniopt follows PyTorch
(``torch.optim.SGD``): the buffer holds gradients, not learning-rate-scaled velocities as in Keras
(``v = \mu v - \eta g``), so a learning-rate schedule does not rescale the accumulated momentum; the
first step seeds the buffer with the undampened gradient. The first-step rule is branch-free: step 1
uses coefficients :math:`(0, 1)` on the zero-initialised buffer, which gives :math:`b_1 = g_1`
exactly (a ``-0.0`` gradient gives a ``+0.0`` buffer).

Op sequence (scalars rounded once to the parameter dtype):
``b = b*keep + g*take``; ``d = g + b*mu`` (nesterov) or ``d = b``; ``p = p - d*lr``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

from ._math import ema, prepare_grad
from ._spec import Array, Spec
from ._validate import check_interval

__all__ = ["SGD", "SGDScalars"]


class SGDScalars(NamedTuple):
    lr: float
    weight_decay: float
    momentum: float
    keep: float  # buffer coefficient: 0 at step 1, momentum afterwards
    take: float  # gradient coefficient: 1 at step 1, 1 - dampening afterwards


@dataclasses.dataclass(frozen=True)
class SGD(Spec):
    """Stochastic gradient descent with optional momentum (see the module docstring)."""

    name: ClassVar[str] = "SGD"
    # uniopt's formula is PyTorch's; Keras's and optax's forms are not specified here yet
    conventions: ClassVar[Mapping[str, Mapping[str, Any]]] = {"uniopt": {}, "torch": {}}
    unavailable_conventions: ClassVar[Mapping[str, str]] = {
        "keras": "not yet specified for this optimizer",
        "optax": "not yet specified for this optimizer",
    }
    reference: ClassVar[str] = (
        "Robbins and Monro 1951; Polyak 1964 (momentum); Sutskever et al. 2013 (Nesterov)"
    )

    lr: float = 1e-3
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    maximize: bool = False
    convention: str = "uniopt"

    def _check(self) -> None:
        check_interval(self.name, "momentum", self.momentum, 0.0)
        check_interval(self.name, "dampening", self.dampening, 0.0, 1.0)
        check_interval(self.name, "weight_decay", self.weight_decay, 0.0)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError(
                f"{self.name}: nesterov=True needs momentum > 0 and dampening = 0; got "
                f"momentum={self.momentum!r}, dampening={self.dampening!r}"
            )

    def slot_names(self) -> tuple[str, ...]:
        return ("momentum_buffer",) if self.momentum != 0 else ()

    def step_scalars(self, step: int, lr: float | None = None) -> SGDScalars:
        first = step == 1
        return SGDScalars(
            lr=float(self.lr if lr is None else lr),
            weight_decay=float(self.weight_decay),
            momentum=float(self.momentum),
            keep=0.0 if first else float(self.momentum),
            take=1.0 if first else 1.0 - float(self.dampening),
        )

    def rule(
        self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any
    ) -> tuple[Array, dict[str, Array]]:
        wd = sc.weight_decay if self.weight_decay != 0 else None
        g = prepare_grad(grad, param, xp, maximize=self.maximize, weight_decay=wd)
        if self.momentum == 0:
            return xp.subtract(param, xp.multiply(g, sc.lr)), {}
        buf = ema(slots["momentum_buffer"], g, sc.keep, sc.take, xp)
        d = xp.add(g, xp.multiply(buf, sc.momentum)) if self.nesterov else buf
        return xp.subtract(param, xp.multiply(d, sc.lr)), {"momentum_buffer": buf}
