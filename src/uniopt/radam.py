r"""RAdam, rectified Adam (Liu et al. 2020, arXiv 1908.03265, Algorithm 2).

With :math:`g_t \leftarrow \pm g_t + \lambda\,\theta_{t-1}` (L2 decay; see ``decoupled_weight_decay``),
:math:`\rho_\infty = 2/(1-\beta_2) - 1` and :math:`\rho_t = \rho_\infty - 2 t \beta_2^t/(1-\beta_2^t)`:

.. math::

    m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,
        \qquad \hat m_t = m_t / (1-\beta_1^t) \\
    r_t &= \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_t}} \\
    \theta_t &= \begin{cases}
        \theta_{t-1} - \eta\, r_t\, \hat m_t / (\sqrt{v_t/(1-\beta_2^t)} + \epsilon)
            & \rho_t > 5 \text{ (rectified)} \\
        \theta_{t-1} - \eta\, \hat m_t & \text{otherwise, if degenerated\_to\_sgd} \\
        \theta_{t-1} & \text{otherwise (the moments still advance)}
    \end{cases}

Choices where frameworks disagree:

* threshold :math:`\rho_t > 5` (PyTorch; optax and the official repository use :math:`\ge 5`, the
  paper :math:`> 4`). For :math:`\beta_2 = 0.999`, :math:`\rho_5 = 4.996` and :math:`\rho_6 = 5.994`,
  so steps 1 to 5 are unrectified and step 6 is the first rectified step under every threshold but
  the paper's, which would rectify step 5 with :math:`r_5 \approx 0.017` from a variance estimate of
  barely four samples.
* :math:`\epsilon` is added to :math:`\sqrt{\hat v_t}` exactly as in :class:`uniopt.Adam` (optax),
  so a rectified step is Adam's step scaled by :math:`r_t`; PyTorch and the official repository use
  the "epsilon hat" form :math:`\sqrt{1-\beta_2^t}/(\sqrt{v_t}+\epsilon)`.
* unrectified steps take the momentum step by default (PyTorch, optax); ``degenerated_to_sgd=False``
  skips the parameter update entirely (decoupled decay included), the official repository's
  current default (``convention="official"`` defaults to it).
* ``decoupled_weight_decay=True`` applies :math:`\theta \leftarrow (1-\eta\lambda)\theta` (PyTorch),
  on every step that updates the parameter.

Op sequence, all scalars from the host: rectified ``p = p - (m / (sqrt(v)*inv_sqrt_bc2 + eps)) *
(lr*r/bc1)``; unrectified ``p = p - m * (lr/bc1)``.

Conventions (``convention=``), each with its implementation's defaults for arguments left out:

* ``"torch"`` (``torch.optim.RAdam``): :math:`\rho_t > 5`; the "epsilon hat" form in PyTorch's op
  order, ``p = p - ((m * (1/bc1)) * lr) * (sqrt(bc2) / (sqrt(v) + eps)) * r``; unrectified
  ``p = p - (m * (1/bc1)) * lr``; weight decay L2 or ``decoupled_weight_decay``; always a momentum step
  before rectification.
* ``"optax"`` (``optax.radam``): :math:`\rho_t \ge 5`, ``u = r * m_hat / (sqrt(v_hat) + eps)``
  (``u = m_hat`` unrectified), ``p = p + (-lr) * u``; no weight decay. For parameters of 32 bits or
  fewer :math:`\rho_t`, :math:`r_t`, the threshold test and the bias corrections are optax's float32
  values at jax's default (``jax_enable_x64`` off), emulated on the host by
  :func:`optax_float32_r` and :func:`uniopt._math.float32_bias_correction`; float64 parameters
  (which need ``jax_enable_x64``) take them in float64.
* ``"official"`` (``radam/radam.py`` of the authors' repository, class ``RAdam``): :math:`\rho_t
  \ge 5`; rectified ``p = p + (-lr*r*sqrt(bc2)/bc1 * m) / (sqrt(v) + eps)``, unrectified
  ``p = p + (-lr/bc1) * m`` if ``degenerated_to_sgd`` and no update otherwise (its default, False,
  since the repository's commit d9fd30a of 2021-07-31: with :math:`\beta_2 = 0.999` steps 1 to 5
  leave the parameters unchanged while the moments advance); weight decay ``p = p + (-wd*lr) * p`` on
  the steps that update.
* ``"keras"`` is not available: Keras 3 has no RAdam.
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
    ema,
    float32_bias_correction,
    float32_pow,
    float_bits,
    from_parts,
    is_complex,
    prepare_grad,
    real_scalars,
)
from ._spec import Array, Spec, select
from ._validate import CHAIN_DECAY, check_betas, check_interval

__all__ = ["RECTIFY_THRESHOLD", "RAdam", "RAdamScalars", "optax_float32_r", "rho"]

RECTIFY_THRESHOLD = 5.0
"""Steps with :math:`\\rho_t` strictly above this take the rectified Adam step."""


class RAdamScalars(NamedTuple):
    rectified: bool
    weight_decay: float
    decay: float  # 1 - lr * weight_decay (decoupled weight decay)
    beta1: float
    one_minus_beta1: float
    beta2: float
    one_minus_beta2: float
    rect_step_size: float  # lr * r_t / (1 - beta1^t); 0 when unrectified
    sgd_step_size: float  # lr / (1 - beta1^t)
    inv_sqrt_bc2: float  # 1 / sqrt(1 - beta2^t)
    eps: float
    lr: float
    neg_lr: float  # optax: the update is scaled by -lr
    r: float  # the rectification term r_t (0 when unrectified)
    inv_bc1: float  # 1 / (1 - beta1^t)
    inv_bc2: float  # 1 / (1 - beta2^t)
    sqrt_bc2: float  # torch: (1 - beta2^t) ** 0.5
    neg_wd_lr: float  # official: -weight_decay * lr
    official_step: float  # official: -lr * (rectified or momentum) step size
    rectified_f32: bool  # optax, parameters of 32 bits or fewer: rho_t >= 5 in float32
    r_f32: float  # optax, parameters of 32 bits or fewer: r_t in float32 (0 when unrectified)
    inv_bc1_f32: float  # optax, parameters of 32 bits or fewer: 1 / float32(1 - beta1^t)
    inv_bc2_f32: float  # optax, parameters of 32 bits or fewer: 1 / float32(1 - beta2^t)
    bc1: float  # optax, complex parameters: 1 - beta1^t (divided by)
    bc2: float  # optax, complex parameters: 1 - beta2^t
    bc1_f32: float  # optax, complex parameters of 32-bit parts: float32(1 - beta1^t)
    bc2_f32: float  # optax, complex parameters of 32-bit parts: float32(1 - beta2^t)


def optax_float32_r(beta2: float, step: int) -> tuple[bool, float]:
    r"""``(rho_t >= 5, r_t)`` as ``optax.scale_by_radam`` computes them under ``jax.jit`` at jax's
    default (``jax_enable_x64`` off; ``optax/_src/transform.py``), one float32 operation at a time.

    optax writes ``b2t = b2**count`` (float32 ``powf``), ``x = 2*count*b2t / (1 - b2t)``,
    ``ro = ro_inf - x`` with the Python float ``ro_inf = 2/(1-b2) - 1`` rounded to float32, and
    ``r = sqrt((ro-4)*(ro-2)*ro_inf / ((ro_inf-4)*(ro_inf-2)*ro))`` whose constant
    ``(ro_inf-4)*(ro_inf-2)`` is a Python float rounded once. XLA's algebraic simplifier folds the
    constants of ``(ro_inf - x) - 4`` into ``(ro_inf - 4) - x`` (and likewise ``- 2``), a different
    rounding, which is what runs; this function follows the compiled graph (jax 0.10.2: every
    step up to 20000 bitwise for beta2 in 0.99, 0.999, 0.9999). ``r_t`` is 0 when unrectified.

    The subtraction in ``ro`` cancels: for :math:`\beta_2 = 0.999` the float32 :math:`\rho_6` is
    5.9747 against 5.9942 in float64, which makes :math:`r_6`, and the first rectified step, 0.6%
    smaller; for :math:`\beta_2 = 0.9999` it passes 5 at step 2 instead of step 6."""
    import numpy as np

    f32 = np.float32
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    b2t = float32_pow(beta2, step)
    with np.errstate(all="ignore"):
        x = f32(f32(2 * step) * b2t) / (f32(1.0) - b2t)
        ro = f32(rho_inf) - x
        rectified = bool(ro >= f32(RECTIFY_THRESHOLD))
        if not rectified:
            return False, 0.0
        num = ((f32(rho_inf) - f32(4.0)) - x) * ((f32(rho_inf) - f32(2.0)) - x) * f32(rho_inf)
        den = ro * f32((rho_inf - 4.0) * (rho_inf - 2.0))
        return True, float(np.sqrt(num / den))


def rho(beta2: float, step: int) -> tuple[float, float]:
    r""":math:`(\rho_\infty, \rho_t)` in float64 on the host."""
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    bc2 = bias_correction(beta2, step)
    return rho_inf, rho_inf - 2.0 * step * beta2**step / bc2


@dataclasses.dataclass(frozen=True)
class RAdam(Spec):
    """Rectified Adam (see the module docstring)."""

    name: ClassVar[str] = "RAdam"
    reference: ClassVar[str] = "Liu et al. 2020, arXiv 1908.03265, Algorithm 2"

    lacking: ClassVar[Mapping[str, tuple[str, Mapping[str, str]]]] = {
        "optax": ("optax.radam", {"weight_decay": CHAIN_DECAY})
    }
    conventions: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "uniopt": {"degenerated_to_sgd": True},
        "torch": {"degenerated_to_sgd": True},
        "optax": {"degenerated_to_sgd": True},
        "official": {"degenerated_to_sgd": False},  # radam/radam.py since commit d9fd30a
    }
    unavailable_conventions: ClassVar[Mapping[str, str]] = {
        "keras": "Keras 3 has no RAdam; keras.optimizers offers Adam, AdamW, Adamax, Nadam, Lion and others"
    }

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled_weight_decay: bool = False
    degenerated_to_sgd: bool = None  # type: ignore[assignment]  # None: the convention's default
    maximize: bool = False
    convention: str = "uniopt"

    def _check(self) -> None:
        unsupported = {
            "torch": {"degenerated_to_sgd": False},
            "optax": {"degenerated_to_sgd": False, "decoupled_weight_decay": True},
            "official": {"decoupled_weight_decay": True},
        }.get(self.convention, {})
        for field, value in unsupported.items():
            if getattr(self, field) == value:
                raise ValueError(
                    f"RAdam: {field}={value!r} has no counterpart in convention={self.convention!r}; "
                    f"expected {field}={not value!r}"
                )
        object.__setattr__(self, "betas", check_betas(self.name, self.betas))
        check_interval(self.name, "eps", self.eps, 0.0, low_open=True)
        check_interval(self.name, "weight_decay", self.weight_decay, 0.0)

    def slot_names(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def step_scalars(self, step: int, lr: float | None = None) -> RAdamScalars:
        lr = float(self.lr if lr is None else lr)
        beta1, beta2 = self.betas
        rho_inf, rho_t = rho(beta2, step)
        inclusive = self.convention in ("optax", "official")  # rectify from rho_t >= 5
        rectified = rho_t >= RECTIFY_THRESHOLD if inclusive else rho_t > RECTIFY_THRESHOLD
        r = 0.0
        if rectified and self.convention == "torch":  # PyTorch's expression, ** 0.5
            r = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
        elif rectified:
            r = math.sqrt(
                (rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)
            )
        bc1, bc2 = bias_correction(beta1, step), bias_correction(beta2, step)
        official_step = 0.0
        if rectified:  # the official repository's step_size, as written there
            n_sma, n_max, b2t = rho_t, rho_inf, 1 - bc2
            official_step = -(
                math.sqrt((1 - b2t) * (n_sma - 4) / (n_max - 4) * (n_sma - 2) / n_sma * n_max / (n_max - 2))
                / bc1
                * lr
            )
        elif self.degenerated_to_sgd:
            official_step = -(1.0 / bc1 * lr)
        rectified_f32, r_f32, bc1_f32, bc2_f32 = rectified, r, bc1, bc2
        if self.convention == "optax":  # optax at jax's defaults: float32 scalars
            rectified_f32, r_f32 = optax_float32_r(beta2, step)
            bc1_f32 = float(float32_bias_correction(beta1, step))
            bc2_f32 = float(float32_bias_correction(beta2, step))
        inv_bc1_f32, inv_bc2_f32 = 1.0 / bc1_f32, 1.0 / bc2_f32
        return RAdamScalars(
            rectified=rectified,
            weight_decay=float(self.weight_decay),
            decay=1.0 - lr * float(self.weight_decay),
            beta1=beta1,
            one_minus_beta1=1.0 - beta1,
            beta2=beta2,
            one_minus_beta2=1.0 - beta2,
            rect_step_size=lr * r / bc1,
            sgd_step_size=lr / bc1,
            inv_sqrt_bc2=1.0 / math.sqrt(bc2),
            eps=float(self.eps),
            lr=lr,
            neg_lr=-lr,
            r=r,
            inv_bc1=1.0 / bc1,
            inv_bc2=1.0 / bc2,
            sqrt_bc2=bc2**0.5,
            neg_wd_lr=-float(self.weight_decay) * lr,
            official_step=official_step,
            rectified_f32=rectified_f32,
            r_f32=r_f32,
            inv_bc1_f32=inv_bc1_f32,
            inv_bc2_f32=inv_bc2_f32,
            bc1=bc1,
            bc2=bc2,
            bc1_f32=bc1_f32,
            bc2_f32=bc2_f32,
        )

    # -- the rules: uniopt's (the paper's algorithm box) and one beside it per convention ----------
    def uniopt_rule(
        self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any
    ) -> tuple[Array, dict[str, Array]]:
        """Algorithm 2 with eps on :math:`\\sqrt{\\hat v_t}`, rectified where :math:`\\rho_t > 5`."""
        decay = self.nonzero("weight_decay")
        coupled = sc.weight_decay if decay and not self.decoupled_weight_decay else None
        g = prepare_grad(grad, param, xp, maximize=self.maximize, weight_decay=coupled)
        m, v = adam_moments(slots["exp_avg"], slots["exp_avg_sq"], g, sc, xp)
        decayed = xp.multiply(param, sc.decay) if decay and self.decoupled_weight_decay else param

        def rectified() -> Array:
            return xp.subtract(decayed, adam_step(m, v, sc.rect_step_size, sc.inv_sqrt_bc2, sc.eps, xp))

        def unrectified() -> Array:
            if not self.degenerated_to_sgd:
                return param
            return xp.subtract(decayed, xp.multiply(m, sc.sgd_step_size))

        return select(sc.rectified, rectified, unrectified, xp), {"exp_avg": m, "exp_avg_sq": v}

    def torch_rule(self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any):
        """``torch.optim.RAdam`` (``_single_tensor_radam``): the "epsilon hat" form, always a
        momentum step before rectification."""
        l2 = sc.weight_decay if self.nonzero("weight_decay") and not self.decoupled_weight_decay else None
        g = prepare_grad(grad, param, xp, maximize=self.maximize, weight_decay=l2)
        m, v = adam_moments(slots["exp_avg"], slots["exp_avg_sq"], g, sc, xp)
        if self.nonzero("weight_decay") and self.decoupled_weight_decay:
            param = xp.multiply(param, sc.decay)
        momentum = xp.multiply(xp.multiply(m, sc.inv_bc1), sc.lr)

        def rectified() -> Array:
            adaptive = xp.divide(sc.sqrt_bc2, xp.add(xp.sqrt(v), sc.eps))
            return xp.subtract(param, xp.multiply(xp.multiply(momentum, adaptive), sc.r))

        new = {"exp_avg": m, "exp_avg_sq": v}
        return select(sc.rectified, rectified, lambda: xp.subtract(param, momentum), xp), new

    def optax_rule(self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any):
        """``optax.radam`` (``scale_by_radam``, then ``scale(-lr)``), its scalars in float32 for
        parameters of 32 bits or fewer."""
        g = prepare_grad(grad, param, xp, maximize=self.maximize, weight_decay=None)
        if is_complex(param, xp):
            return self._optax_complex_rule(param, g, slots, sc, xp)
        m, v = adam_moments(slots["exp_avg"], slots["exp_avg_sq"], g, sc, xp)
        narrow = float_bits(param, xp) <= 32  # optax's scalars are float32 there
        flag, r, inv_bc1, inv_bc2 = (
            (sc.rectified_f32, sc.r_f32, sc.inv_bc1_f32, sc.inv_bc2_f32)
            if narrow
            else (sc.rectified, sc.r, sc.inv_bc1, sc.inv_bc2)
        )
        m_hat = xp.multiply(m, inv_bc1)

        def rectified() -> Array:
            v_hat = xp.multiply(v, inv_bc2)
            u = xp.divide(xp.multiply(r, m_hat), xp.add(xp.sqrt(v_hat), sc.eps))
            return xp.add(param, xp.multiply(u, sc.neg_lr))

        def unrectified() -> Array:
            return xp.add(param, xp.multiply(m_hat, sc.neg_lr))

        return select(flag, rectified, unrectified, xp), {"exp_avg": m, "exp_avg_sq": v}

    def official_rule(self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any):
        """The authors' ``RAdam.step`` (radam/radam.py): weight decay and the step only on the
        steps that update."""
        g = prepare_grad(grad, param, xp, maximize=self.maximize, weight_decay=None)
        m, v = adam_moments(slots["exp_avg"], slots["exp_avg_sq"], g, sc, xp)
        decay = self.nonzero("weight_decay")
        decayed = xp.add(param, xp.multiply(param, sc.neg_wd_lr)) if decay else param

        def rectified() -> Array:
            denom = xp.add(xp.sqrt(v), sc.eps)
            return xp.add(decayed, xp.divide(xp.multiply(m, sc.official_step), denom))

        def unrectified() -> Array:
            if not self.degenerated_to_sgd:
                return param
            return xp.add(decayed, xp.multiply(m, sc.official_step))

        return select(sc.rectified, rectified, unrectified, xp), {"exp_avg": m, "exp_avg_sq": v}

    def _optax_complex_rule(self, param: Array, g: Array, slots: Mapping[str, Array], sc: Any, xp: Any):
        r"""optax's RAdam on complex parameters (``optax/_src/transform.py``, ``scale_by_radam``):
        the moments as in :meth:`uniopt.Adam._optax_complex_rule` (:math:`v` accumulates
        :math:`|g|^2` in a complex buffer), :math:`\hat m = m / (1-\beta_1^t)`, and
        :math:`u = r_t \hat m / (\sqrt{v / (1-\beta_2^t)} + \epsilon)` when
        :math:`\rho_t \ge 5`, else :math:`u = \hat m`; :math:`\theta = \theta - \eta u`.

        Op sequence on the parts: ``m_hat = m / bc1`` (a true division, as XLA's complex division
        by ``bc1 + 0j``), rectified ``u = (r * m_hat) / (sqrt(re(v) / bc2) + eps)``, then
        ``p = p + u * (-lr)``.
        """
        sc = real_scalars(sc, xp)
        m = ema(slots["exp_avg"], g, sc.beta1, sc.one_minus_beta1, xp)
        v = ema(slots["exp_avg_sq"], abs_sq(g, xp), sc.beta2, sc.one_minus_beta2, xp)
        p_re, p_im = xp.real(param), xp.imag(param)
        narrow = float_bits(p_re, xp) <= 32  # optax's scalars are float32 there
        flag, r, bc1, bc2 = (
            (sc.rectified_f32, sc.r_f32, sc.bc1_f32, sc.bc2_f32)
            if narrow
            else (sc.rectified, sc.r, sc.bc1, sc.bc2)
        )
        m_re = divide_by_scalar(xp.real(m), bc1, xp)
        m_im = divide_by_scalar(xp.imag(m), bc1, xp)

        def rectified() -> Array:
            denom = xp.add(xp.sqrt(divide_by_scalar(xp.real(v), bc2, xp)), sc.eps)
            u_re = xp.divide(xp.multiply(r, m_re), denom)
            u_im = xp.divide(xp.multiply(r, m_im), denom)
            new_re = xp.add(p_re, xp.multiply(u_re, sc.neg_lr))
            return from_parts(new_re, xp.add(p_im, xp.multiply(u_im, sc.neg_lr)), param, xp)

        def unrectified() -> Array:
            new_re = xp.add(p_re, xp.multiply(m_re, sc.neg_lr))
            return from_parts(new_re, xp.add(p_im, xp.multiply(m_im, sc.neg_lr)), param, xp)

        return select(flag, rectified, unrectified, xp), {"exp_avg": m, "exp_avg_sq": v}
