r"""LAMB, layer-wise adaptive moments (You et al. 2020, arXiv 1904.00962, Algorithm 2).

With :math:`g_t \leftarrow \pm g_t` (``maximize``), weight decay :math:`\lambda` and learning rate
:math:`\eta`, for each parameter tensor :math:`\theta` (a "layer"):

.. math::

    m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
    r_t &= \frac{m_t / (1-\beta_1^t)}{\sqrt{v_t / (1-\beta_2^t)} + \epsilon}, \qquad
    u_t = r_t + \lambda\,\theta_{t-1} \\
    \theta_t &= \theta_{t-1} - \eta\,\frac{\|\theta_{t-1}\|}{\|u_t\|}\,u_t

The trust ratio :math:`\|\theta\| / \|u\|` (Euclidean norms over the whole tensor, the paper's
:math:`\phi` the identity) is 1 where either norm is 0, as in Keras and optax. Two state slots per
parameter, shaped like it: ``exp_avg`` (:math:`m`) and ``exp_avg_sq`` (:math:`v`).

**Not elementwise.** Each norm is a sum over the tensor; the spec fixes its order
(:func:`uniopt._math.sum_pairwise`, pairwise halving with elementwise additions), so every backend
and mode computes the same bits. The natives sum in their own orders (``jnp.linalg.norm``, Keras's
``ops.sum``), so their rows are compared within a measured bound.

Op sequence of ``convention="uniopt"`` (host scalars ``1 - beta``, ``1/(1 - beta1^t)``,
``1/sqrt(1 - beta2^t)`` in float64, rounded once): ``m = m*b1 + g*(1-b1)``,
``v = v*b2 + (g*g)*(1-b2)``, ``r = (m * inv_bc1) / (sqrt(v) * inv_sqrt_bc2 + eps)``,
``u = r + p*wd`` (only when ``wd != 0``), ``ratio = trust_ratio(norm(p), norm(u))``,
``p = p - u * (lr * ratio)``. Defaults: lr :math:`10^{-3}`, betas (0.9, 0.999), eps
:math:`10^{-6}` (the paper's and optax's), no weight decay.

Conventions (``convention=``), each with its framework's defaults for arguments left out:

* ``"keras"`` (``keras.optimizers.Lamb``, ``keras/src/optimizers/lamb.py``; lr :math:`10^{-3}`,
  eps :math:`10^{-7}`): weight decay is Keras's decoupled ``p = p - (p*wd)*lr`` before the step,
  outside the trust ratio; ``m = m + (g - m)*(1-b1)``, ``v = v + (g*g - v)*(1-b2)``;
  ``m_hat = m * (1/(1 - b1^t))``, ``v_sqrt = sqrt(v * (1/(1 - b2^t))) + eps``: the bias
  corrections are Keras's in-graph values (float32 ``powf`` of the float32-cast beta for
  parameters of 32 bits or fewer, as :func:`uniopt.adam.keras_adam_scalars`), and Keras divides by
  them where the spec multiplies by their reciprocals, taken on the host in float64 and rounded
  once: XLA and TensorFlow's graph optimizer rewrite a division by a broadcast scalar into that
  multiplication anyway, and the native row differs from the spec in the norms' order already;
  ``u = m_hat / v_sqrt``; the trust ratio with Keras's comparisons (a NaN norm gives 1);
  ``p = p - (ratio * lr) * u``. lr and weight decay go through float32 as Keras holds them.
* ``"optax"`` (``optax.lamb``, ``optax/_src/alias.py``: ``scale_by_adam(eps=1e-6)``,
  ``add_decayed_weights``, ``scale_by_trust_ratio``, ``scale_by_learning_rate``; no default
  learning rate, uniopt's is taken): ``mu = (1-b1)*g + b1*mu``, ``nu = (1-b2)*(g*g) + b2*nu``,
  ``u = (mu * (1/bc1)) / (sqrt(nu * (1/bc2)) + eps)`` (optax's float32 bias corrections at jax's
  default for parameters of 32 bits or fewer; reciprocals taken on the host, as in
  :class:`uniopt.Adam`'s optax convention), ``u = u + wd*p`` (only when ``wd != 0``, as optax skips
  a zero constant), ``u = u * ratio`` (a NaN norm gives NaN), ``p = p + u * (-lr)``.
* ``"torch"`` is not available: torch.optim has no LAMB. ``uniopt.torch.Lamb`` takes torch-style
  names (``lr``, ``betas``, ``eps``, ``weight_decay``, ``maximize``) with uniopt's convention.

Complex parameters are refused (the spec has no complex norm); ``uniopt.torch`` hands torch's
complex parameters to the rule as real ``(re, im)`` pairs, whose norm is the complex norm.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

from ._math import (
    adam_moments,
    bias_correction,
    float32_bias_correction,
    float_bits,
    keras_bias_correction,
    keras_weight_decay,
    norm,
    prepare_grad,
    refuse_complex,
    trust_ratio,
)
from ._spec import Array, Spec
from ._validate import check_betas, check_interval

__all__ = ["Lamb", "LambScalars"]


class LambScalars(NamedTuple):
    beta1: float
    one_minus_beta1: float
    beta2: float
    one_minus_beta2: float
    eps: float
    lr: float
    neg_lr: float  # optax: the update is scaled by -lr
    weight_decay: float
    inv_bc1: float  # 1 / (1 - beta1^t) (uniopt; optax in float64)
    inv_sqrt_bc2: float  # uniopt: 1 / sqrt(1 - beta2^t)
    inv_bc2: float  # optax in float64: 1 / (1 - beta2^t)
    inv_bc1_f32: float  # optax, parameters of 32 bits or fewer: 1 / float32(1 - beta1^t)
    inv_bc2_f32: float  # optax, parameters of 32 bits or fewer: 1 / float32(1 - beta2^t)
    keras_inv_bc1: float  # keras, 32 bits or fewer: 1 / (float32(1) - powf(float32(beta1), t))
    keras_inv_bc2: float
    keras_inv_bc1_64: float  # keras, float64: 1 / (1 - float32(beta1)^t in float64)
    keras_inv_bc2_64: float


@dataclasses.dataclass(frozen=True)
class Lamb(Spec):
    """LAMB: Adam's direction scaled per tensor by the trust ratio (see the module docstring).

    Slots per parameter (its shape and dtype): ``exp_avg`` and ``exp_avg_sq``. Raises
    ``ValueError`` for ``lr < 0``, ``betas`` outside :math:`[0, 1)^2`, ``eps <= 0``,
    ``weight_decay < 0``, non-bool ``maximize``, an unknown convention (``"torch"``: torch.optim
    has no LAMB), and, in the rule, complex parameters.
    """

    name: ClassVar[str] = "Lamb"
    reference: ClassVar[str] = "You et al. 2020, arXiv 1904.00962, Algorithm 2"
    elementwise: ClassVar[bool] = False

    conventions: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "uniopt": {"eps": 1e-6, "weight_decay": 0.0},
        "keras": {"eps": 1e-7, "weight_decay": 0.0},
        "optax": {"eps": 1e-6, "weight_decay": 0.0},
    }
    unavailable_conventions: ClassVar[Mapping[str, str]] = {
        "torch": (
            "torch.optim has no LAMB; uniopt.torch.Lamb takes torch-style names with uniopt's "
            "convention, the paper's algorithm"
        )
    }

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = None  # type: ignore[assignment]  # None: the convention's default
    weight_decay: float = None  # type: ignore[assignment]
    maximize: bool = False
    convention: str = "uniopt"

    def _check(self) -> None:
        object.__setattr__(self, "betas", check_betas(self.name, self.betas))
        check_interval(self.name, "eps", self.eps, 0.0, low_open=True)
        check_interval(self.name, "weight_decay", self.weight_decay, 0.0)

    def slot_names(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def uniopt_scalars(self, step: int, lr: float) -> LambScalars:
        """Every convention's scalars at 1-based ``step``, in float64 (Keras's and optax's float32
        bias corrections only where the convention is theirs)."""

        beta1, beta2 = self.betas
        bc1, bc2 = bias_correction(beta1, step), bias_correction(beta2, step)
        bc1_f32, bc2_f32 = bc1, bc2
        if self.convention == "optax":  # optax at jax's defaults: float32 bias corrections
            bc1_f32 = float(float32_bias_correction(beta1, step))
            bc2_f32 = float(float32_bias_correction(beta2, step))
        keras = (bc1, bc2, bc1, bc2)
        if self.convention == "keras":  # 1 - ops.power(ops.cast(beta, dtype), t), in the dtype
            (bc1_32, bc1_64), (bc2_32, bc2_64) = (keras_bias_correction(b, step) for b in self.betas)
            keras = (bc1_32, bc2_32, bc1_64, bc2_64)
        return LambScalars(
            beta1=beta1,
            one_minus_beta1=1.0 - beta1,
            beta2=beta2,
            one_minus_beta2=1.0 - beta2,
            eps=float(self.eps),
            lr=lr,
            neg_lr=-lr,
            weight_decay=float(self.weight_decay),
            inv_bc1=1.0 / bc1,
            inv_sqrt_bc2=1.0 / math.sqrt(bc2),
            inv_bc2=1.0 / bc2,
            inv_bc1_f32=1.0 / bc1_f32,
            inv_bc2_f32=1.0 / bc2_f32,
            keras_inv_bc1=1.0 / keras[0],
            keras_inv_bc2=1.0 / keras[1],
            keras_inv_bc1_64=1.0 / keras[2],
            keras_inv_bc2_64=1.0 / keras[3],
        )

    # -- rules ------------------------------------------------------------------------------------
    def uniopt_rule(
        self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any
    ) -> tuple[Array, dict[str, Array]]:
        """Algorithm 2: Adam's bias-corrected direction plus L2 decay, scaled by the trust ratio.
        ``param``, ``grad`` and both slots share shape and real floating dtype."""
        g = self._grad(param, grad, xp)
        m, v = adam_moments(slots["exp_avg"], slots["exp_avg_sq"], g, sc, xp)
        denom = xp.add(xp.multiply(xp.sqrt(v), sc.inv_sqrt_bc2), sc.eps)
        u = xp.divide(xp.multiply(m, sc.inv_bc1), denom)
        if self.nonzero("weight_decay"):
            u = xp.add(u, xp.multiply(param, sc.weight_decay))
        ratio = trust_ratio(norm(param, xp), norm(u, xp), xp)
        new_param = xp.subtract(param, xp.multiply(u, xp.multiply(sc.lr, ratio)))
        return new_param, {"exp_avg": m, "exp_avg_sq": v}

    def keras_rule(
        self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any
    ) -> tuple[Array, dict[str, Array]]:
        """``keras.optimizers.Lamb.update_step`` after Keras's decoupled weight decay, op for op,
        except the norms (the spec's order) and the bias corrections (multiplications by their
        host reciprocals where Keras divides; see the module docstring)."""
        g = self._grad(param, grad, xp)
        if self.nonzero("weight_decay"):  # Keras's base optimizer, before update_step
            param = keras_weight_decay(param, sc.weight_decay, sc.lr, xp)
        m, v = slots["exp_avg"], slots["exp_avg_sq"]
        m = xp.add(m, xp.multiply(xp.subtract(g, m), sc.one_minus_beta1))
        v = xp.add(v, xp.multiply(xp.subtract(xp.multiply(g, g), v), sc.one_minus_beta2))
        narrow = float_bits(param, xp) <= 32
        inv_bc1, inv_bc2 = (
            (sc.keras_inv_bc1, sc.keras_inv_bc2) if narrow else (sc.keras_inv_bc1_64, sc.keras_inv_bc2_64)
        )
        m_hat = xp.multiply(m, inv_bc1)  # Keras divides by 1 - b1^t: here its reciprocal
        v_sqrt = xp.add(xp.sqrt(xp.multiply(v, inv_bc2)), sc.eps)
        u = xp.divide(m_hat, v_sqrt)
        ratio = trust_ratio(norm(param, xp), norm(u, xp), xp, keras=True)
        new_param = xp.subtract(param, xp.multiply(xp.multiply(ratio, sc.lr), u))
        return new_param, {"exp_avg": m, "exp_avg_sq": v}

    def optax_rule(
        self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any
    ) -> tuple[Array, dict[str, Array]]:
        """``optax.lamb``: ``scale_by_adam``, ``add_decayed_weights``, ``scale_by_trust_ratio``,
        ``scale_by_learning_rate`` and ``apply_updates`` (norms in the spec's order)."""
        g = self._grad(param, grad, xp)
        m, v = adam_moments(slots["exp_avg"], slots["exp_avg_sq"], g, sc, xp)
        narrow = float_bits(param, xp) <= 32  # optax's bias corrections are float32 there
        inv_bc1, inv_bc2 = (sc.inv_bc1_f32, sc.inv_bc2_f32) if narrow else (sc.inv_bc1, sc.inv_bc2)
        u = xp.divide(xp.multiply(m, inv_bc1), xp.add(xp.sqrt(xp.multiply(v, inv_bc2)), sc.eps))
        if self.nonzero("weight_decay"):  # optax.add_decayed_weights skips a zero constant
            u = xp.add(u, xp.multiply(param, sc.weight_decay))
        u = xp.multiply(u, trust_ratio(norm(param, xp), norm(u, xp), xp))
        return xp.add(param, xp.multiply(u, sc.neg_lr)), {"exp_avg": m, "exp_avg_sq": v}

    def _grad(self, param: Array, grad: Array, xp: Any) -> Array:
        """The gradient, negated when ``maximize``; complex parameters are refused."""
        refuse_complex(self.name, "the spec defines no complex norm", param, xp)
        return prepare_grad(grad, param, xp, maximize=self.maximize, weight_decay=None)
