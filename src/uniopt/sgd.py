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

Conventions (``convention=``), each with its framework's defaults for arguments left out:

* ``"torch"`` (``torch.optim.SGD``): uniopt's formula; lr :math:`10^{-3}`.
* ``"keras"`` (``keras.optimizers.SGD``): the buffer is a velocity that includes the learning rate,
  :math:`v_t = \mu v_{t-1} - \eta g_t` from :math:`v_0 = 0`, and
  :math:`\theta_t = \theta_{t-1} + v_t`, or :math:`\theta_{t-1} + (\mu v_t - \eta g_t)` with
  Nesterov; ``momentum_buffer`` holds :math:`v`. Weight decay is Keras's decoupled
  :math:`\theta \leftarrow \theta - (\theta\lambda)\eta` first; no dampening; lr
  :math:`10^{-2}`; lr, momentum and weight decay go through float32 as in Keras
  (``keras_float32``). Op sequence: ``v = v*mu - g*lr``; ``p = p + v`` or
  ``p = p + (v*mu - g*lr)``. Validation is Keras's: ``momentum`` a float in :math:`[0, 1]`;
  ``nesterov=True`` with momentum 0 is a plain step.
* ``"optax"`` (``optax.sgd``, momentum through ``optax.trace``): :math:`t_t = g_t + \mu t_{t-1}`
  from :math:`t_0 = 0`, :math:`d_t = g_t + \mu t_t` (Nesterov) or :math:`t_t`, and
  :math:`\theta_t = \theta_{t-1} + (-\eta) d_t`: uniopt's formula rounded the same way (the
  zero buffer makes step 1 :math:`g_1`; ``p + d*(-lr)`` equals ``p - d*lr``), without dampening or
  weight decay (chain ``optax.add_decayed_weights``); lr :math:`10^{-3}` (optax has no default).
  ``nesterov=True`` with momentum 0 is a plain step, as ``optax.sgd`` takes it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

from ._math import (
    dtype_name,
    ema,
    keras_weight_decay,
    prepare_grad,
    round_to_dtype,
    stored,
    stored_product,
    widened,
)
from ._spec import Array, Spec
from ._validate import CHAIN_DECAY, check_interval

__all__ = ["SGD", "SGDScalars"]


class SGDScalars(NamedTuple):
    lr: float
    weight_decay: float
    momentum: float
    keep: float  # buffer coefficient: 0 at step 1, momentum afterwards
    take: float  # gradient coefficient: 1 at step 1, 1 - dampening afterwards
    keep_bfloat16: float  # optax, buffer stored in bfloat16: keep rounded to bfloat16
    keep_float16: float  # optax, buffer stored in float16: keep rounded to float16
    keep_float32: float  # optax, buffer stored in float32 beside float64: keep rounded to float32


@dataclasses.dataclass(frozen=True)
class SGD(Spec):
    """Stochastic gradient descent with optional momentum (see the module docstring)."""

    name: ClassVar[str] = "SGD"
    conventions: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "uniopt": {"lr": 1e-3},
        "torch": {"lr": 1e-3},
        "keras": {"lr": 1e-2},
        "optax": {"lr": 1e-3},
    }
    lacking: ClassVar[Mapping[str, tuple[str, Mapping[str, str]]]] = {
        "keras": ("keras.optimizers.SGD", {"dampening": ""}),
        "optax": ("optax.sgd", {"dampening": "", "weight_decay": CHAIN_DECAY}),
    }
    keras_float32_fields: ClassVar[tuple[str, ...]] = (*Spec.keras_float32_fields, "momentum")
    reference: ClassVar[str] = (
        "Robbins and Monro 1951; Polyak 1964 (momentum); Sutskever et al. 2013 (Nesterov)"
    )

    lower_precision_slots: ClassVar[tuple[str, ...]] = ("momentum_buffer",)  # optax's accumulator_dtype

    lr: float = None  # type: ignore[assignment]  # None: the convention's default
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    maximize: bool = False
    convention: str = "uniopt"

    def _check(self) -> None:
        keras = self.convention == "keras"
        if keras and not (isinstance(self.momentum, float) and 0 <= self.momentum <= 1):
            raise ValueError(  # keras.optimizers.SGD's check and wording (it refuses 0 and 1 as ints)
                f"{self.name}: `momentum` must be a float between [0, 1]. Received: "
                f"momentum={self.momentum!r} (convention='keras', as keras.optimizers.SGD)"
            )
        check_interval(self.name, "momentum", self.momentum, 0.0)
        check_interval(self.name, "dampening", self.dampening, 0.0, 1.0)
        check_interval(self.name, "weight_decay", self.weight_decay, 0.0)
        # Keras takes a plain step for nesterov=True without momentum, and so does optax (no trace
        # without momentum; a trace of decay 0 with momentum=0); PyTorch refuses it
        plain = keras or (self.convention == "optax" and self.momentum == 0)
        if self.nesterov and not plain and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError(
                f"{self.name}: nesterov=True needs momentum > 0 and dampening = 0 (as "
                f"torch.optim.SGD); got momentum={self.momentum!r}, dampening={self.dampening!r}. "
                "convention='optax' or 'keras' takes a plain step there, as optax.sgd and "
                "keras.optimizers.SGD do"
            )

    def slot_names(self) -> tuple[str, ...]:
        return ("momentum_buffer",) if self.momentum != 0 else ()

    def sparse_rule(self) -> str:
        """``"rows"`` without momentum and weight decay (a zero gradient moves nothing: ``p - 0*lr``);
        ``"dense"`` otherwise: momentum keeps moving rows touched before and weight decay shrinks
        every row, as torch.optim.SGD's sparse buffer and Keras's densified update do
        (:mod:`uniopt.sparse`)."""
        return "rows" if self.momentum == 0 and self.weight_decay == 0 else "dense"

    def step_scalars(self, step: int, lr: float | None = None) -> SGDScalars:
        first = step == 1
        keep = 0.0 if first else float(self.momentum)
        return SGDScalars(
            lr=float(self.lr if lr is None else lr),
            weight_decay=float(self.weight_decay),
            momentum=float(self.momentum),
            keep=keep,
            take=1.0 if first else 1.0 - float(self.dampening),
            keep_bfloat16=round_to_dtype(keep, "bfloat16"),
            keep_float16=round_to_dtype(keep, "float16"),
            keep_float32=round_to_dtype(keep, "float32"),
        )

    def rule(
        self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any
    ) -> tuple[Array, dict[str, Array]]:
        keras = self.convention == "keras"
        wd = sc.weight_decay if self.nonzero("weight_decay") and not keras else None
        g = prepare_grad(grad, param, xp, maximize=self.maximize, weight_decay=wd)
        if keras and self.nonzero("weight_decay"):
            param = keras_weight_decay(param, sc.weight_decay, sc.lr, xp)
        if not self.nonzero("momentum"):
            return xp.subtract(param, xp.multiply(g, sc.lr)), {}
        b = slots["momentum_buffer"]  # in its stored dtype (see Spec.lower_precision_slots)
        if keras:  # a velocity: v = v*mu - g*lr
            velocity = xp.subtract(xp.multiply(widened(b, param, xp), sc.momentum), xp.multiply(g, sc.lr))
            if self.nesterov:
                step = xp.subtract(xp.multiply(velocity, sc.momentum), xp.multiply(g, sc.lr))
                return xp.add(param, step), {"momentum_buffer": stored(velocity, b, xp)}
            return xp.add(param, velocity), {"momentum_buffer": stored(velocity, b, xp)}
        if self.convention == "optax" and b.dtype != param.dtype:
            # optax.trace's g + decay*t: decay*t formed in the stored dtype (jax's weak typing)
            keep = getattr(sc, f"keep_{dtype_name(b.dtype)}")
            buf = xp.add(stored_product(b, keep, param, xp), xp.multiply(g, sc.take))
        else:
            buf = ema(widened(b, param, xp), g, sc.keep, sc.take, xp)
        d = xp.add(g, xp.multiply(buf, sc.momentum)) if self.nesterov else buf
        return xp.subtract(param, xp.multiply(d, sc.lr)), {"momentum_buffer": stored(buf, b, xp)}
