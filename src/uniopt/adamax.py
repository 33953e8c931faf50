r"""Adamax, Adam with the infinity norm (Kingma and Ba 2015, arXiv 1412.6980, Algorithm 2).

With :math:`g_t \leftarrow \pm g_t + \lambda\,\theta_{t-1}` (L2 weight decay):

.. math::

    m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t \\
    u_t &= \max(\beta_2 u_{t-1},\ |g_t| + \epsilon) \\
    \theta_t &= \theta_{t-1} - \frac{\eta}{1-\beta_1^t}\,\frac{m_t}{u_t}

The paper's Algorithm 2 (its defaults :math:`\eta = 0.002`, :math:`\beta_1 = 0.9`,
:math:`\beta_2 = 0.999`) has no :math:`\epsilon`: :math:`u_t = \max(\beta_2 u_{t-1}, |g_t|)`, and
:math:`u_t = 0` where every gradient so far was 0, which divides 0 by 0.

Choices where frameworks disagree:

* :math:`\epsilon` (default :math:`10^{-8}`) is added to :math:`|g_t|` *inside* the maximum and so
  is kept in :math:`u_t`, as in PyTorch (``exp_inf = max(beta2*exp_inf, |g| + eps)``) and optax
  (``optax.tree.update_infinity_moment``: ``max(|g| + eps, decay*nu)``); Keras adds its
  :math:`10^{-7}` to :math:`u_t` outside the maximum, at the division only. Inside the maximum,
  :math:`u_t \ge \epsilon` always, so the division is safe without a second addition, and the state
  holds the very denominator of the step.
* the default learning rate is the paper's and PyTorch's :math:`0.002` (Keras: :math:`0.001`;
  optax has no default).
* :math:`\lambda` is L2 weight decay added to the gradient (PyTorch); Keras's ``weight_decay`` is
  its decoupled ``p = p - (p*wd)*lr`` before the step; ``optax.adamax`` has none.

Op sequence, with the host scalar ``step_size = lr / (1 - beta1^t)``: ``m = m*b1 + g*(1-b1)``;
``u = maximum(u*b2, abs(g) + eps)``; ``p = p - (m / u) * step_size``.

Conventions (``convention=``), each with its framework's defaults for arguments left out:

* ``"torch"`` (``torch.optim.Adamax``, ``torch/optim/adamax.py``, ``_single_tensor_adamax``):
  ``m = lerp(m, g, 1-b1)`` written as torch's lerp kernel computes it, ``m + (g - m)*w`` for a
  weight ``w = 1-b1 < 0.5`` and ``g - (g - m)*(1 - w)`` otherwise (the branch is chosen on the
  host from ``1 - beta1``; the CPU kernel fuses the multiply-add, which the spec rounds twice);
  ``u = maximum(u*b2, abs(g) + eps)``; ``p = p + (m * (-clr)) / u`` with ``clr = lr/(1-beta1^t)``
  (``addcdiv``); lr :math:`0.002`, eps :math:`10^{-8}`. Complex parameters are updated as their
  real view (``torch.view_as_real``): each part has its own maximum.
* ``"keras"`` (``keras.optimizers.Adamax``, ``keras/src/optimizers/adamax.py``): weight decay is
  Keras's decoupled ``p = p - (p*wd)*lr`` first; ``m = m + (g - m)*(1-b1)``;
  ``u = maximum(b2*u, abs(g))``; ``p = p - (lr*m) / ((1 - beta1^t) * (u + eps))``, the bias
  correction Keras's in-graph ``1 - ops.power(ops.cast(beta_1, dtype), t)``: float32 ``powf`` for
  parameters of 32 bits or fewer, float64 ``pow`` of the float32-rounded ``beta_1`` for float64
  (:func:`uniopt.adam.keras_adam_scalars`); lr :math:`0.001`, eps :math:`10^{-7}`; lr and weight
  decay go through float32 as in Keras (``keras_float32``).
* ``"optax"`` (``optax.adamax``, ``optax/_src/alias.py`` and ``transform.py``,
  ``scale_by_adamax``): ``mu = (1-b1)*g + b1*mu``; ``nu = maximum(abs(g) + eps, b2*nu)``;
  ``u = (mu * (1 / (1 - b1^t))) / nu``; ``p = p + u * (-lr)``. optax divides by the bias
  correction (``optax.tree.bias_correction``); the spec multiplies by its reciprocal, taken in
  float64 and rounded once, as every convention does: XLA rewrites the quotient of two divisions,
  ``(mu / bc) / nu``, into ``mu / (bc * nu)`` (measured under TensorFlow's ``jit_compile``, which
  also drops :func:`uniopt._math.divide_by_scalar`'s multiplication by ones), which no backend
  would reproduce. Against eager optax this costs at most 2 ulp (measured, 20 steps); ``jax.jit``
  contracts optax's multiply-adds into FMAs anyway. For parameters of 32 bits or fewer the bias
  correction is optax's float32 one at jax's default (``jax_enable_x64`` off,
  :func:`uniopt._math.float32_bias_correction`). No weight decay (``optax.adamaxw`` is decoupled;
  chain ``optax.add_decayed_weights`` before ``optax.adamax`` for L2); eps :math:`10^{-8}`; optax
  has no default learning rate, PyTorch's :math:`0.002` is used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

from ._math import (
    bias_correction,
    ema,
    float32_bias_correction,
    float_bits,
    keras_weight_decay,
    prepare_grad,
)
from ._spec import Array, Spec
from ._validate import CHAIN_DECAY, check_betas, check_interval
from .adam import keras_adam_scalars

__all__ = ["Adamax", "AdamaxScalars"]


class AdamaxScalars(NamedTuple):
    weight_decay: float
    beta1: float
    one_minus_beta1: float  # also torch's lerp weight
    beta2: float
    eps: float
    lr: float  # keras: lr * m, and the decoupled weight decay
    one: float  # torch, lerp weight of 0.5 or more: 1 - weight is computed in the parameter dtype
    step_size: float  # uniopt: lr / (1 - beta1^t)
    neg_step_size: float  # torch: -(lr / (1 - beta1^t))
    neg_lr: float  # optax: the update is scaled by -lr
    inv_bc1: float  # optax, float64: 1 / (1 - beta1^t)
    inv_bc1_f32: float  # optax, 32 bits or fewer: 1 / float32(1 - beta1^t)
    keras_bc1: float  # keras, 32 bits or fewer: 1 - powf(float32(beta1), t)
    keras_bc1_64: float  # keras, float64: 1 - float32(beta1)^t in float64


@dataclasses.dataclass(frozen=True)
class Adamax(Spec):
    """Adamax, the infinity-norm variant of Adam, with L2 weight decay (see the module docstring).

    Slots per parameter (shape and dtype of the parameter): ``exp_avg`` (:math:`m`) and
    ``exp_inf`` (:math:`u`, the exponentially weighted infinity norm; without :math:`\\epsilon`
    under ``convention="keras"``).

    Raises ``ValueError`` for ``lr < 0``, ``betas`` outside :math:`[0, 1)^2`, ``eps <= 0``,
    ``weight_decay < 0``, non-bool flags, an unknown convention, and ``weight_decay != 0`` with
    ``convention="optax"``.
    """

    name: ClassVar[str] = "Adamax"
    reference: ClassVar[str] = "Kingma and Ba 2015, arXiv 1412.6980, Algorithm 2"

    lacking: ClassVar[Mapping[str, tuple[str, Mapping[str, str]]]] = {
        "optax": ("optax.adamax", {"weight_decay": CHAIN_DECAY})
    }
    conventions: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "uniopt": {"lr": 2e-3, "eps": 1e-8},
        "torch": {"lr": 2e-3, "eps": 1e-8},
        "keras": {"lr": 1e-3, "eps": 1e-7},
        "optax": {"lr": 2e-3, "eps": 1e-8},
    }

    lr: float = None  # type: ignore[assignment]  # None: the convention's default
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = None  # type: ignore[assignment]
    weight_decay: float = 0.0
    maximize: bool = False
    convention: str = "uniopt"

    def _check(self) -> None:
        object.__setattr__(self, "betas", check_betas(self.name, self.betas))
        check_interval(self.name, "eps", self.eps, 0.0, low_open=True)
        check_interval(self.name, "weight_decay", self.weight_decay, 0.0)

    def slot_names(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_inf")

    # -- scalars ----------------------------------------------------------------------------------
    def uniopt_scalars(self, step: int, lr: float) -> AdamaxScalars:
        """Every convention's scalars at 1-based ``step`` in float64 (Keras's and optax's float32
        bias corrections only where the convention is theirs)."""
        beta1, beta2 = self.betas
        bc1 = bias_correction(beta1, step)
        keras_bc1 = keras_bc1_64 = inv_bc1_f32 = 0.0
        if self.convention == "keras":
            keras_bc1, _, keras_bc1_64, _ = keras_adam_scalars(beta1, beta2, step)
        if self.convention == "optax":  # optax at jax's defaults: a float32 bias correction
            inv_bc1_f32 = 1.0 / float(float32_bias_correction(beta1, step))
        return AdamaxScalars(
            weight_decay=float(self.weight_decay),
            beta1=beta1,
            one_minus_beta1=1.0 - beta1,
            beta2=beta2,
            eps=float(self.eps),
            lr=lr,
            one=1.0,
            step_size=lr / bc1,
            neg_step_size=-(lr / bc1),
            neg_lr=-lr,
            inv_bc1=1.0 / bc1,
            inv_bc1_f32=inv_bc1_f32,
            keras_bc1=keras_bc1,
            keras_bc1_64=keras_bc1_64,
        )

    # -- rules ------------------------------------------------------------------------------------
    def uniopt_rule(
        self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any
    ) -> tuple[Array, dict[str, Array]]:
        """Algorithm 2 with :math:`\\epsilon` inside the maximum and L2 weight decay."""
        wd = sc.weight_decay if self.nonzero("weight_decay") else None
        g = prepare_grad(grad, param, xp, maximize=self.maximize, weight_decay=wd)
        m = ema(slots["exp_avg"], g, sc.beta1, sc.one_minus_beta1, xp)
        u = xp.maximum(xp.multiply(slots["exp_inf"], sc.beta2), xp.add(xp.abs(g), sc.eps))
        new_param = xp.subtract(param, xp.multiply(xp.divide(m, u), sc.step_size))
        return new_param, {"exp_avg": m, "exp_inf": u}

    def torch_rule(
        self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any
    ) -> tuple[Array, dict[str, Array]]:
        """``torch.optim.Adamax``'s single-tensor step, op for op (fused ops rounded twice)."""
        wd = sc.weight_decay if self.nonzero("weight_decay") else None
        g = prepare_grad(grad, param, xp, maximize=self.maximize, weight_decay=wd)
        m, diff = slots["exp_avg"], xp.subtract(g, slots["exp_avg"])
        if 1.0 - self.betas[0] < 0.5:  # torch's lerp: self + w * (end - self)
            m = xp.add(m, xp.multiply(diff, sc.one_minus_beta1))
        else:  # end - (end - self) * (1 - w)
            m = xp.subtract(g, xp.multiply(diff, xp.subtract(sc.one, sc.one_minus_beta1)))
        u = xp.maximum(xp.multiply(slots["exp_inf"], sc.beta2), xp.add(xp.abs(g), sc.eps))
        new_param = xp.add(param, xp.divide(xp.multiply(m, sc.neg_step_size), u))
        return new_param, {"exp_avg": m, "exp_inf": u}

    def keras_rule(
        self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any
    ) -> tuple[Array, dict[str, Array]]:
        """``keras.optimizers.Adamax.update_step`` after Keras's decoupled weight decay."""
        g = prepare_grad(grad, param, xp, maximize=self.maximize, weight_decay=None)
        if self.nonzero("weight_decay"):  # Keras's weight decay is always decoupled
            param = keras_weight_decay(param, sc.weight_decay, sc.lr, xp)
        m = xp.add(slots["exp_avg"], xp.multiply(xp.subtract(g, slots["exp_avg"]), sc.one_minus_beta1))
        u = xp.maximum(xp.multiply(sc.beta2, slots["exp_inf"]), xp.abs(g))
        bc1 = sc.keras_bc1 if float_bits(param, xp) <= 32 else sc.keras_bc1_64
        step = xp.divide(xp.multiply(sc.lr, m), xp.multiply(bc1, xp.add(u, sc.eps)))
        return xp.subtract(param, step), {"exp_avg": m, "exp_inf": u}

    def optax_rule(
        self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any
    ) -> tuple[Array, dict[str, Array]]:
        """``optax.adamax``: ``scale_by_adamax`` then ``scale_by_learning_rate``."""
        g = prepare_grad(grad, param, xp, maximize=self.maximize, weight_decay=None)
        m = ema(slots["exp_avg"], g, sc.beta1, sc.one_minus_beta1, xp)
        u = xp.maximum(xp.add(xp.abs(g), sc.eps), xp.multiply(slots["exp_inf"], sc.beta2))
        inv_bc1 = sc.inv_bc1_f32 if float_bits(param, xp) <= 32 else sc.inv_bc1
        update = xp.divide(xp.multiply(m, inv_bc1), u)
        return xp.add(param, xp.multiply(update, sc.neg_lr)), {"exp_avg": m, "exp_inf": u}
