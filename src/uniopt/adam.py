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

Conventions (``convention=``), each with its framework's defaults for arguments left out. Scalar
divisions are multiplications by host reciprocals in every convention (compilers rewrite a division
by a scalar into one, differently per backend):

* ``"torch"`` (``torch.optim.Adam``/``AdamW``): uniopt's formula in PyTorch's op order where it does
  not hinge on a compiler, ``denom = sqrt(v) * (1 / sqrt(1 - beta2^t)) + eps``,
  ``p = p + (-step_size * m) / denom``.
* ``"keras"`` (``keras.optimizers.Adam``/``AdamW``): the "epsilon hat" form, ``m = m + (g - m)*(1-b1)``,
  ``v = v + (g*g - v)*(1-b2)``, ``p = p - (m * alpha) / (sqrt(v) + eps)`` with
  ``alpha = (lr * sqrt(1 - beta2^t)) / (1 - beta1^t)`` computed by the rule in the parameter dtype
  from host values of ``1 - beta1^t`` and ``sqrt(1 - beta2^t)`` that are Keras's own in-graph
  values (:func:`keras_adam_scalars`: float32 arithmetic for parameters of 32 bits or fewer,
  float64 with float32-rounded betas for float64); weight decay is Keras's decoupled
  ``p = p - (p*wd)*lr`` before the step; eps :math:`10^{-7}` (AdamW: weight decay 0.004); lr and
  weight decay go through float32 as in Keras (``keras_float32``).
* ``"optax"`` (``optax.adam``/``adamw``/``amsgrad``): ``m_hat = m * (1 / (1 - beta1^t))``,
  ``v_hat = v * (1 / (1 - beta2^t))``, ``u = m_hat / (sqrt(v_hat) + eps)``, AMSGrad keeps the maximum of
  ``v_hat``; AdamW adds ``wd * p`` to ``u``; ``p = p + (-lr) * u``. Adam takes no weight decay there
  (AdamW: weight decay :math:`10^{-4}`). For parameters of 32 bits or fewer the bias corrections are
  optax's at jax's default (``jax_enable_x64`` off): ``1 - beta^t`` in float32 with float32 ``beta``
  (``optax.tree.bias_correction``, ``optax/tree_utils/_tree_math.py``), emulated on the host by
  :func:`uniopt._math.float32_bias_correction`; their reciprocals are then taken in float64 and
  rounded once. float64 parameters (which need ``jax_enable_x64``) take them in float64.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

from ._math import (
    abs_sq,
    adam_moments,
    adam_step,
    bias_correction,
    divide_by_scalar,
    dtype_name,
    ema,
    float32_bias_correction,
    float_bits,
    from_parts,
    is_complex,
    keras_bias_correction,
    keras_weight_decay,
    prepare_grad,
    real_scalars,
    round_to_dtype,
    stored,
    stored_product,
    widened,
)
from ._spec import Array, Spec
from ._validate import check_betas, check_interval

__all__ = ["Adam", "AdamScalars", "keras_adam_scalars"]


def keras_adam_scalars(beta1: float, beta2: float, step: int) -> tuple[float, float, float, float]:
    r"""The step-dependent pieces of Keras's ``alpha``, as ``keras.optimizers.Adam.update_step``
    (``keras/src/optimizers/adam.py``) computes them in the variable dtype:
    ``beta_power = ops.power(ops.cast(beta, dtype), ops.cast(iterations + 1, dtype))``, then
    ``1 - beta_1_power`` and ``ops.sqrt(1 - beta_2_power)``.

    Returns ``(1 - b1^t, sqrt(1 - b2^t))`` in float32 (float32 betas, ``powf``, flush-to-zero:
    TensorFlow's CPU kernels, measured bitwise against :func:`uniopt._math.float32_pow`), then the
    same two in float64, where ``ops.cast`` has turned the Python-float betas into float32 values
    first (``ops.cast(0.999, "float64") == float32(0.999)``) and TensorFlow's float64 ``pow`` on
    0-d tensors is the C library's ``pow`` (measured bitwise, bases 0.9 and 0.999, steps up to
    3000). Each is a Python float holding the exact value.
    """
    import numpy as np

    bc1_32, bc1_64 = keras_bias_correction(beta1, step)
    bc2_32, bc2_64 = keras_bias_correction(beta2, step)
    return bc1_32, float(np.sqrt(np.float32(bc2_32))), bc1_64, math.sqrt(bc2_64)


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
    lr: float
    neg_lr: float  # optax: the update is scaled by -lr
    neg_step_size: float  # torch: -lr / (1 - beta1^t)
    inv_bc1: float  # optax: 1 / (1 - beta1^t)
    inv_bc2: float  # optax: 1 / (1 - beta2^t)
    alpha: float  # keras: lr * sqrt(1 - beta2^t) / (1 - beta1^t)
    inv_bc1_f32: float  # optax, parameters of 32 bits or fewer: 1 / float32(1 - beta1^t)
    inv_bc2_f32: float  # optax, parameters of 32 bits or fewer: 1 / float32(1 - beta2^t)
    keras_bc1: float  # keras, 32 bits or fewer: 1 - beta1^t in float32
    keras_sqrt_bc2: float  # keras, 32 bits or fewer: sqrt(1 - beta2^t) in float32
    keras_bc1_64: float  # keras, float64: 1 - float32(beta1)^t in float64
    keras_sqrt_bc2_64: float  # keras, float64: sqrt(1 - float32(beta2)^t) in float64
    bc1: float  # optax, complex parameters: 1 - beta1^t (divided by)
    bc2: float  # optax, complex parameters: 1 - beta2^t
    bc1_f32: float  # optax, complex parameters of 32-bit parts: float32(1 - beta1^t)
    bc2_f32: float  # optax, complex parameters of 32-bit parts: float32(1 - beta2^t)
    beta1_bfloat16: float  # optax, exp_avg stored in bfloat16: beta1 rounded to bfloat16
    beta1_float16: float  # optax, exp_avg stored in float16: beta1 rounded to float16
    beta1_float32: float  # optax, exp_avg stored in float32 beside float64: beta1 rounded to float32


@dataclasses.dataclass(frozen=True)
class Adam(Spec):
    """Adam with optional AMSGrad and L2 weight decay (see the module docstring)."""

    name: ClassVar[str] = "Adam"
    reference: ClassVar[str] = "Kingma and Ba 2015, arXiv 1412.6980, Algorithm 1"
    decoupled: ClassVar[bool] = False

    lacking: ClassVar[Mapping[str, tuple[str, Mapping[str, str]]]] = {
        "optax": ("optax.adam", {"weight_decay": " (use AdamW, optax.adamw)"})
    }
    conventions: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "uniopt": {"eps": 1e-8, "weight_decay": 0.0},
        "torch": {"eps": 1e-8, "weight_decay": 0.0},
        "keras": {"eps": 1e-7, "weight_decay": 0.0},
        "optax": {"eps": 1e-8, "weight_decay": 0.0},
    }

    lower_precision_slots: ClassVar[tuple[str, ...]] = ("exp_avg",)  # optax's mu_dtype

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = None  # type: ignore[assignment]  # None: the convention's default
    weight_decay: float = None  # type: ignore[assignment]
    amsgrad: bool = False
    maximize: bool = False
    convention: str = "uniopt"

    def _check(self) -> None:
        object.__setattr__(self, "betas", check_betas(self.name, self.betas))
        check_interval(self.name, "eps", self.eps, 0.0, low_open=True)
        check_interval(self.name, "weight_decay", self.weight_decay, 0.0)

    def slot_names(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if self.amsgrad else ("exp_avg", "exp_avg_sq")

    def step_scalars(self, step: int, lr: float | None = None) -> AdamScalars:
        lr = float(self.lr if lr is None else lr)
        beta1, beta2 = self.betas
        bc1, bc2 = bias_correction(beta1, step), bias_correction(beta2, step)
        bc1_f32, bc2_f32 = bc1, bc2
        if self.convention == "optax":  # optax at jax's defaults: float32 bias corrections
            bc1_f32 = float(float32_bias_correction(beta1, step))
            bc2_f32 = float(float32_bias_correction(beta2, step))
        inv_bc1_f32, inv_bc2_f32 = 1.0 / bc1_f32, 1.0 / bc2_f32
        keras = (bc1, math.sqrt(bc2), bc1, math.sqrt(bc2))
        if self.convention == "keras":
            keras = keras_adam_scalars(beta1, beta2, step)
        return AdamScalars(
            weight_decay=float(self.weight_decay),
            decay=1.0 - lr * float(self.weight_decay),
            beta1=beta1,
            one_minus_beta1=1.0 - beta1,
            beta2=beta2,
            one_minus_beta2=1.0 - beta2,
            step_size=lr / bc1,
            inv_sqrt_bc2=1.0 / math.sqrt(bc2),
            eps=float(self.eps),
            lr=lr,
            neg_lr=-lr,
            neg_step_size=-lr / bc1,
            inv_bc1=1.0 / bc1,
            inv_bc2=1.0 / bc2,
            alpha=lr * math.sqrt(bc2) / bc1,
            inv_bc1_f32=inv_bc1_f32,
            inv_bc2_f32=inv_bc2_f32,
            keras_bc1=keras[0],
            keras_sqrt_bc2=keras[1],
            keras_bc1_64=keras[2],
            keras_sqrt_bc2_64=keras[3],
            bc1=bc1,
            bc2=bc2,
            bc1_f32=bc1_f32,
            bc2_f32=bc2_f32,
            beta1_bfloat16=round_to_dtype(beta1, "bfloat16"),
            beta1_float16=round_to_dtype(beta1, "float16"),
            beta1_float32=round_to_dtype(beta1, "float32"),
        )

    def rule(
        self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any
    ) -> tuple[Array, dict[str, Array]]:
        if self.convention == "keras":
            return self._keras_rule(param, grad, slots, sc, xp)
        if self.convention == "optax":
            return self._optax_rule(param, grad, slots, sc, xp)
        coupled = sc.weight_decay if (self.nonzero("weight_decay") and not self.decoupled) else None
        g = prepare_grad(grad, param, xp, maximize=self.maximize, weight_decay=coupled)
        if self.decoupled and self.nonzero("weight_decay"):
            param = xp.multiply(param, sc.decay)
        m, v = adam_moments(widened(slots["exp_avg"], param, xp), slots["exp_avg_sq"], g, sc, xp)
        new = {"exp_avg": stored(m, slots["exp_avg"], xp), "exp_avg_sq": v}
        if self.amsgrad:
            v = new["max_exp_avg_sq"] = xp.maximum(slots["max_exp_avg_sq"], v)
        if self.convention == "torch":
            denom = xp.add(xp.multiply(xp.sqrt(v), sc.inv_sqrt_bc2), sc.eps)
            return xp.add(param, xp.divide(xp.multiply(m, sc.neg_step_size), denom)), new
        step = adam_step(m, v, sc.step_size, sc.inv_sqrt_bc2, sc.eps, xp)
        return xp.subtract(param, step), new

    def _keras_rule(self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any):
        g = prepare_grad(grad, param, xp, maximize=self.maximize, weight_decay=None)
        if self.nonzero("weight_decay"):  # Keras's weight decay is always decoupled
            param = keras_weight_decay(param, sc.weight_decay, sc.lr, xp)
        m = widened(slots["exp_avg"], param, xp)
        m = xp.add(m, xp.multiply(xp.subtract(g, m), sc.one_minus_beta1))
        v = xp.multiply(g, g)
        v = xp.add(slots["exp_avg_sq"], xp.multiply(xp.subtract(v, slots["exp_avg_sq"]), sc.one_minus_beta2))
        new = {"exp_avg": stored(m, slots["exp_avg"], xp), "exp_avg_sq": v}
        if self.amsgrad:
            v = new["max_exp_avg_sq"] = xp.maximum(slots["max_exp_avg_sq"], v)
        # alpha = lr * sqrt(1 - b2^t) / (1 - b1^t) in the parameter dtype, as Keras computes it in-graph
        narrow = float_bits(param, xp) <= 32
        sqrt_bc2, bc1 = (
            (sc.keras_sqrt_bc2, sc.keras_bc1) if narrow else (sc.keras_sqrt_bc2_64, sc.keras_bc1_64)
        )
        alpha = xp.divide(xp.multiply(sc.lr, sqrt_bc2), bc1)
        step = xp.divide(xp.multiply(m, alpha), xp.add(xp.sqrt(v), sc.eps))
        return xp.subtract(param, step), new

    def _optax_rule(self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any):
        g = prepare_grad(grad, param, xp, maximize=self.maximize, weight_decay=None)
        if is_complex(param, xp):
            return self._optax_complex_rule(param, g, slots, sc, xp)
        # m = b1*m + (1-b1)*g, with b1*m formed in the stored dtype (optax's weak-typed product)
        mu = slots["exp_avg"]
        b1 = sc.beta1 if mu.dtype == param.dtype else getattr(sc, f"beta1_{dtype_name(mu.dtype)}")
        m = xp.add(stored_product(mu, b1, param, xp), xp.multiply(g, sc.one_minus_beta1))
        v = ema(slots["exp_avg_sq"], xp.multiply(g, g), sc.beta2, sc.one_minus_beta2, xp)
        new = {"exp_avg": stored(m, mu, xp), "exp_avg_sq": v}
        narrow = float_bits(param, xp) <= 32  # optax's bias corrections are float32 there
        inv_bc1, inv_bc2 = (sc.inv_bc1_f32, sc.inv_bc2_f32) if narrow else (sc.inv_bc1, sc.inv_bc2)
        m_hat, v_hat = xp.multiply(m, inv_bc1), xp.multiply(v, inv_bc2)
        if self.amsgrad:  # optax.amsgrad: the maximum of the bias-corrected v
            v_hat = new["max_exp_avg_sq"] = xp.maximum(slots["max_exp_avg_sq"], v_hat)
        update = xp.divide(m_hat, xp.add(xp.sqrt(v_hat), sc.eps))
        if self.decoupled and self.nonzero("weight_decay"):  # optax.add_decayed_weights
            update = xp.add(update, xp.multiply(param, sc.weight_decay))
        return xp.add(param, xp.multiply(update, sc.neg_lr)), new

    def _optax_complex_rule(self, param: Array, g: Array, slots: Mapping[str, Array], sc: Any, xp: Any):
        r"""optax's Adam on complex parameters (``optax/_src/transform.py``, ``scale_by_adam`` and
        ``scale_by_amsgrad``; ``optax/tree_utils/_tree_math.py``, ``update_moment_per_elem_norm``
        and ``bias_correction``): :math:`m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t`,
        :math:`v_t = \beta_2 v_{t-1} + (1-\beta_2) |g_t|^2` in complex buffers (the imaginary
        part of :math:`v` stays 0), :math:`\hat m = m / (1-\beta_1^t)`,
        :math:`\hat v = v / (1-\beta_2^t)`, :math:`u = \hat m / (\sqrt{\hat v} + \epsilon)`.

        Op sequence on the parts (``re``, ``im``): ``m = m*b1 + g*(1-b1)``,
        ``v = v*b2 + abs_sq(g)*(1-b2)`` (complex buffers); ``m_hat = m / bc1`` and
        ``v_hat = re(v) / bc2``, true divisions as XLA's complex division by ``bc + 0j`` does;
        AMSGrad keeps ``maximum(re(v_max), v_hat)`` (imaginary part 0, as optax's from its zero
        state); ``u = m_hat / (sqrt(v_hat) + eps)`` per part (the real part of optax's complex root
        of ``v_hat + 0j`` is the real root, measured bitwise); AdamW adds ``p * wd``;
        ``p = p + u * (-lr)`` per part.
        """
        sc = real_scalars(sc, xp)
        m = ema(slots["exp_avg"], g, sc.beta1, sc.one_minus_beta1, xp)
        v = ema(slots["exp_avg_sq"], abs_sq(g, xp), sc.beta2, sc.one_minus_beta2, xp)
        new = {"exp_avg": m, "exp_avg_sq": v}
        p_re, p_im = xp.real(param), xp.imag(param)
        narrow = float_bits(p_re, xp) <= 32  # optax's bias corrections are float32 there
        bc1, bc2 = (sc.bc1_f32, sc.bc2_f32) if narrow else (sc.bc1, sc.bc2)
        m_re = divide_by_scalar(xp.real(m), bc1, xp)
        m_im = divide_by_scalar(xp.imag(m), bc1, xp)
        v_hat = divide_by_scalar(xp.real(v), bc2, xp)
        if self.amsgrad:  # optax.amsgrad: the maximum of the bias-corrected v
            v_hat = xp.maximum(xp.real(slots["max_exp_avg_sq"]), v_hat)
            new["max_exp_avg_sq"] = from_parts(v_hat, xp.zeros_like(v_hat), param, xp)
        denom = xp.add(xp.sqrt(v_hat), sc.eps)
        u_re, u_im = xp.divide(m_re, denom), xp.divide(m_im, denom)
        if self.decoupled and self.nonzero("weight_decay"):  # optax.add_decayed_weights
            u_re = xp.add(u_re, xp.multiply(p_re, sc.weight_decay))
            u_im = xp.add(u_im, xp.multiply(p_im, sc.weight_decay))
        new_re = xp.add(p_re, xp.multiply(u_re, sc.neg_lr))
        new_im = xp.add(p_im, xp.multiply(u_im, sc.neg_lr))
        return from_parts(new_re, new_im, param, xp), new
