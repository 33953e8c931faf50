r"""Lion, EvoLved Sign Momentum (Chen et al. 2023, arXiv 2302.06675, Program 1 and Algorithm 2).

With :math:`g_t \leftarrow \pm g_t` (``maximize``), :math:`m_0 = 0`, learning rate :math:`\eta`
and decoupled weight decay :math:`\lambda`:

.. math::

    c_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t \\
    \theta_t &= \theta_{t-1} - \eta\,\bigl(\operatorname{sign}(c_t) + \lambda\,\theta_{t-1}\bigr) \\
    m_t &= \beta_2 m_{t-1} + (1-\beta_2) g_t

Every element moves by exactly :math:`\pm\eta` (plus the decay), or not at all where
:math:`c_t = 0`: :math:`\operatorname{sign}(0) = 0` in every framework (``jnp.sign``, ``tf.sign``,
``torch.sign``, NumPy and the array API), and ``sign(NaN)`` is NaN in the array API that the rule
uses (``torch.sign`` itself maps NaN to 0; ``array_api_compat.torch.sign`` keeps the NaN). The one
state slot is the momentum :math:`m` (``exp_avg``). Lion has no bias correction, so its per-step
scalars do not depend on the step.

Choices where the implementations disagree:

* decoupled weight decay is applied first, as a multiplication ``p * (1 - lr*wd)`` (the widely used
  ``lion-pytorch`` package, and :class:`uniopt.AdamW`); the paper writes the same step as
  :math:`\theta - \eta(\operatorname{sign}(c) + \lambda\theta)` in one expression, optax adds
  ``wd * p`` to the sign, Keras subtracts ``(p*wd)*lr`` before the step. All are the same real
  number; the roundings differ (each convention follows its framework).
* defaults: torch.optim has no Lion, so uniopt's own convention takes the defaults of
  ``lion-pytorch`` (``Lion(params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0)``,
  ``lion_pytorch/lion_pytorch.py``), which are also the paper's :math:`\beta_1 = 0.9`,
  :math:`\beta_2 = 0.99`; ``uniopt.torch.Lion`` uses this convention with those names.
* ``betas``: each in :math:`[0, 1]` (``lion-pytorch`` accepts the closed interval;
  :math:`\beta_1 = 0` is sign descent on the gradient, signSGD). Keras refuses :math:`\beta_1 = 0`
  (``0 < beta_1 <= 1``), so ``convention="keras"`` does too.
* complex parameters are refused: the sign of a complex number (``z / |z|`` in the array API and
  jax, an error in torch) is not one correctly rounded operation, so no backend could agree with
  another on it. ``uniopt.torch`` hands torch's complex parameters to the rule as real
  ``(re, im)`` pairs, and Lion then takes the sign of each part.

Op sequence of ``convention="uniopt"`` (host scalars ``decay = 1 - lr*wd``, ``1 - b1``, ``1 - b2``
computed in float64 and rounded once): ``c = m*b1 + g*(1-b1)``; ``p = p * decay`` (only when
``wd != 0``); ``p = p - sign(c)*lr``; ``m = m*b2 + g*(1-b2)``. ``sign(c)*lr`` is exact, so the step
itself rounds once.

Conventions (``convention=``), each with its framework's defaults for arguments left out:

* ``"keras"`` (``keras.optimizers.Lion``, ``keras/src/optimizers/lion.py``; learning rate
  :math:`10^{-3}`, :math:`\beta = (0.9, 0.99)`, no weight decay): the betas are cast to the
  parameter dtype through float32 (``ops.cast(self.beta_1, variable.dtype)``) and ``1 - beta`` is
  computed in the parameter dtype, as the rule does from the rounded scalars; weight decay is
  Keras's ``p = p - (p*wd)*lr`` before the step (``base_optimizer._apply_weight_decay``); then
  ``p = p - lr*sign(m*b1 + g*(1-b1))`` and ``m = m*b2 + g*(1-b2)``. The learning rate and weight
  decay go through float32 as Keras holds them (``keras_float32``).
* ``"optax"`` (``optax.lion``, ``optax/_src/alias.py``: ``scale_by_lion`` then
  ``add_decayed_weights(weight_decay)`` then ``scale_by_learning_rate``; weight decay
  :math:`10^{-3}`, :math:`\beta = (0.9, 0.99)`; optax has no default learning rate, uniopt's is
  taken): ``c = (1-b1)*g + b1*m`` (``optax/_src/transform.py``), ``u = sign(c)``, ``u = u + wd*p``
  (only when ``wd != 0``, as optax skips a zero constant), ``p = p + (-lr)*u``;
  ``m = (1-b2)*g + b2*m``. With ``exp_avg`` stored narrower (optax's ``mu_dtype``), ``b1*m`` and
  ``b2*m`` are products in the stored dtype, as jax forms them (docs/conventions.md,
  "Lower-precision state").
* ``"torch"`` is not available: torch.optim has no Lion.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

from ._math import (
    dtype_name,
    ema,
    keras_float32,
    keras_weight_decay,
    prepare_grad,
    refuse_complex,
    round_to_dtype,
    stored,
    stored_product,
    widened,
)
from ._spec import Array, Spec
from ._validate import check_interval

__all__ = ["Lion", "LionScalars"]


class LionScalars(NamedTuple):
    beta1: float  # keras: float32(beta1), from which the rule takes 1 - beta1 in the parameter dtype
    one_minus_beta1: float  # 1 - beta1 in float64 (uniopt, optax)
    beta2: float
    one_minus_beta2: float
    one: float  # keras: the 1.0 from which Keras subtracts each beta in the parameter dtype
    lr: float
    neg_lr: float  # optax: the update is scaled by -lr
    weight_decay: float
    decay: float  # uniopt: 1 - lr * weight_decay (decoupled weight decay)
    beta1_bfloat16: float  # optax, exp_avg stored in bfloat16: the betas rounded to bfloat16
    beta2_bfloat16: float
    beta1_float16: float  # optax, exp_avg stored in float16: the betas rounded to float16
    beta2_float16: float
    beta1_float32: float  # optax, exp_avg stored in float32 beside float64: the betas rounded to float32
    beta2_float32: float


@dataclasses.dataclass(frozen=True)
class Lion(Spec):
    """Lion, sign momentum with decoupled weight decay (see the module docstring)."""

    name: ClassVar[str] = "Lion"
    reference: ClassVar[str] = "Chen et al. 2023, arXiv 2302.06675, Algorithm 2"

    conventions: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "uniopt": {"lr": 1e-4, "weight_decay": 0.0},  # lion-pytorch's defaults
        "keras": {"lr": 1e-3, "weight_decay": 0.0},  # keras.optimizers.Lion
        "optax": {"lr": 1e-4, "weight_decay": 1e-3},  # optax.lion (learning_rate has no default)
    }
    unavailable_conventions: ClassVar[Mapping[str, str]] = {
        "torch": (
            "torch.optim has no Lion; uniopt.torch.Lion takes torch-style names with uniopt's "
            "convention, whose defaults are the lion-pytorch package's"
        )
    }

    lower_precision_slots: ClassVar[tuple[str, ...]] = ("exp_avg",)  # optax's mu_dtype

    lr: float = None  # type: ignore[assignment]  # None: the convention's default
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = None  # type: ignore[assignment]
    maximize: bool = False
    convention: str = "uniopt"

    def _check(self) -> None:
        betas = self.betas
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(
                f"Lion: betas={betas!r} is not a pair; expected (beta1, beta2) with "
                "0 <= beta1 <= 1 and 0 <= beta2 <= 1"
            )
        beta1 = check_interval(self.name, "betas[0]", betas[0], 0.0, 1.0)
        beta2 = check_interval(self.name, "betas[1]", betas[1], 0.0, 1.0)
        if self.convention == "keras" and beta1 == 0:
            raise ValueError(
                f"Lion: betas[0]={betas[0]!r} is out of range with convention='keras'; expected "
                "0 < betas[0] <= 1 (keras.optimizers.Lion refuses beta_1=0, signSGD)"
            )
        object.__setattr__(self, "betas", (beta1, beta2))
        check_interval(self.name, "weight_decay", self.weight_decay, 0.0)

    def slot_names(self) -> tuple[str, ...]:
        return ("exp_avg",)

    # -- uniopt: the paper's Algorithm 2, decoupled decay first ------------------------------------
    def uniopt_scalars(self, step: int, lr: float) -> LionScalars:
        """Host float64 scalars; none depends on ``step`` (Lion has no bias correction)."""
        beta1, beta2 = self.betas
        wd = float(self.weight_decay)
        return LionScalars(
            beta1=beta1,
            one_minus_beta1=1.0 - beta1,
            beta2=beta2,
            one_minus_beta2=1.0 - beta2,
            one=1.0,
            lr=lr,
            neg_lr=-lr,
            weight_decay=wd,
            decay=1.0 - lr * wd,
            beta1_bfloat16=round_to_dtype(beta1, "bfloat16"),
            beta2_bfloat16=round_to_dtype(beta2, "bfloat16"),
            beta1_float16=round_to_dtype(beta1, "float16"),
            beta2_float16=round_to_dtype(beta2, "float16"),
            beta1_float32=round_to_dtype(beta1, "float32"),
            beta2_float32=round_to_dtype(beta2, "float32"),
        )

    def uniopt_rule(
        self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any
    ) -> tuple[Array, dict[str, Array]]:
        r""":math:`c = \beta_1 m + (1-\beta_1) g`, :math:`\theta \leftarrow \theta(1-\eta\lambda)`,
        :math:`\theta \leftarrow \theta - \eta\,\mathrm{sign}(c)`,
        :math:`m \leftarrow \beta_2 m + (1-\beta_2) g`. ``param``, ``grad`` and ``exp_avg`` share
        shape and real floating dtype; raises ``ValueError`` for complex parameters."""
        g = self._grad(param, grad, xp)
        m = widened(slots["exp_avg"], param, xp)
        c = ema(m, g, sc.beta1, sc.one_minus_beta1, xp)
        if self.nonzero("weight_decay"):
            param = xp.multiply(param, sc.decay)
        new_param = xp.subtract(param, xp.multiply(xp.sign(c), sc.lr))
        return new_param, {
            "exp_avg": stored(ema(m, g, sc.beta2, sc.one_minus_beta2, xp), slots["exp_avg"], xp)
        }

    # -- keras.optimizers.Lion ----------------------------------------------------------------------
    def keras_scalars(self, step: int, lr: float) -> LionScalars:
        """uniopt's scalars with the betas rounded to float32 first (``ops.cast`` of a Python float)."""
        beta1, beta2 = (keras_float32(b) for b in self.betas)
        return self.uniopt_scalars(step, lr)._replace(beta1=beta1, beta2=beta2)

    def keras_rule(
        self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any
    ) -> tuple[Array, dict[str, Array]]:
        """``keras.optimizers.Lion.update_step`` after Keras's weight decay, op for op."""
        g = self._grad(param, grad, xp)
        if self.nonzero("weight_decay"):  # Keras's base optimizer, before update_step
            param = keras_weight_decay(param, sc.weight_decay, sc.lr, xp)
        m = widened(slots["exp_avg"], param, xp)
        take1, take2 = xp.subtract(sc.one, sc.beta1), xp.subtract(sc.one, sc.beta2)  # in the param dtype
        c = xp.add(xp.multiply(m, sc.beta1), xp.multiply(g, take1))
        new_param = xp.subtract(param, xp.multiply(sc.lr, xp.sign(c)))
        new_m = xp.add(xp.multiply(m, sc.beta2), xp.multiply(g, take2))
        return new_param, {"exp_avg": stored(new_m, slots["exp_avg"], xp)}

    # -- optax.lion -----------------------------------------------------------------------------------
    def optax_rule(
        self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any
    ) -> tuple[Array, dict[str, Array]]:
        """``optax.lion``: ``scale_by_lion``, ``add_decayed_weights``, ``scale_by_learning_rate``
        and ``apply_updates``, op for op (``(1-b1)*g + b1*m`` is ``ema``'s sum, reordered)."""
        g = self._grad(param, grad, xp)
        mu = slots["exp_avg"]
        b1, b2 = sc.beta1, sc.beta2
        if mu.dtype != param.dtype:  # b1*m and b2*m formed in the stored dtype (jax's weak typing)
            name = dtype_name(mu.dtype)
            b1, b2 = getattr(sc, f"beta1_{name}"), getattr(sc, f"beta2_{name}")
        u = xp.sign(xp.add(stored_product(mu, b1, param, xp), xp.multiply(g, sc.one_minus_beta1)))
        if self.nonzero("weight_decay"):  # optax skips a zero constant weight decay
            u = xp.add(u, xp.multiply(param, sc.weight_decay))
        new_param = xp.add(param, xp.multiply(u, sc.neg_lr))
        new_m = xp.add(stored_product(mu, b2, param, xp), xp.multiply(g, sc.one_minus_beta2))
        return new_param, {"exp_avg": stored(new_m, mu, xp)}

    def _grad(self, param: Array, grad: Array, xp: Any) -> Array:
        """The gradient, negated when ``maximize``; complex parameters are refused."""
        why = "the sign of a complex number is not one correctly rounded operation"
        refuse_complex(self.name, why, param, xp)
        return prepare_grad(grad, param, xp, maximize=self.maximize, weight_decay=None)
