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

Conventions (``convention=``), each with its framework's defaults for arguments left out:

* ``"torch"`` (``torch.optim.RMSprop``): uniopt's formula without the clamp (a negative centered
  variance gives NaN, as in PyTorch); lr :math:`10^{-2}`, :math:`\alpha = 0.99`, eps :math:`10^{-8}`.
* ``"keras"`` (``keras.optimizers.RMSprop``): eps inside the root and the learning rate inside the
  momentum buffer, :math:`s = \sqrt{v_t - \bar g_t^2 + \epsilon}`, :math:`b_t = \mu b_{t-1} +
  \eta g_t / s`, :math:`\theta_t = \theta_{t-1} - b_t`; weight decay is Keras's decoupled
  :math:`\theta \leftarrow \theta - (\theta\lambda)\eta` first; lr :math:`10^{-3}`, :math:`\rho = 0.9`,
  eps :math:`10^{-7}`; lr and weight decay go through float32 as in Keras (``keras_float32``).
* ``"optax"`` (``optax.rmsprop``, ``eps_in_sqrt=True``, ``initial_scale=0``): update
  :math:`u_t = -\eta\, g / \sqrt{v_t - \bar g_t^2 + \epsilon}`, then momentum as
  ``optax.trace`` (:math:`b_t = u_t + \mu b_{t-1}`, the learning rate inside the buffer),
  :math:`\theta_t = \theta_{t-1} + b_t`; decay 0.9, eps :math:`10^{-8}`, lr
  :math:`10^{-2}` (optax has no default); no weight decay.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

from ._math import abs_sq, ema, from_parts, is_complex, keras_weight_decay, prepare_grad, real_scalars
from ._spec import Array, Spec
from ._validate import CHAIN_DECAY, check_interval

__all__ = ["RMSprop", "RMSpropScalars"]


class RMSpropScalars(NamedTuple):
    lr: float
    neg_lr: float  # -lr (optax's scale by -lr)
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

    lacking: ClassVar[Mapping[str, tuple[str, Mapping[str, str]]]] = {
        "optax": ("optax.rmsprop", {"weight_decay": CHAIN_DECAY})
    }
    conventions: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "uniopt": {"lr": 1e-2, "alpha": 0.99, "eps": 1e-8},
        "torch": {"lr": 1e-2, "alpha": 0.99, "eps": 1e-8},
        "keras": {"lr": 1e-3, "alpha": 0.9, "eps": 1e-7},
        "optax": {"lr": 1e-2, "alpha": 0.9, "eps": 1e-8},
    }

    lr: float = None  # type: ignore[assignment]  # None: the convention's default
    alpha: float = None  # type: ignore[assignment]
    eps: float = None  # type: ignore[assignment]
    weight_decay: float = 0.0
    momentum: float = 0.0
    centered: bool = False
    maximize: bool = False
    convention: str = "uniopt"

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
        lr = float(self.lr if lr is None else lr)
        return RMSpropScalars(
            lr=lr,
            neg_lr=-lr,
            weight_decay=float(self.weight_decay),
            alpha=float(self.alpha),
            one_minus_alpha=1.0 - float(self.alpha),
            eps=float(self.eps),
            momentum=float(self.momentum),
        )

    def rule(
        self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any
    ) -> tuple[Array, dict[str, Array]]:
        keras = self.convention == "keras"
        wd = sc.weight_decay if self.nonzero("weight_decay") and not keras else None
        g = prepare_grad(grad, param, xp, maximize=self.maximize, weight_decay=wd)
        if keras and self.nonzero("weight_decay"):
            param = keras_weight_decay(param, sc.weight_decay, sc.lr, xp)
        if self.convention == "optax" and is_complex(param, xp):
            return self._optax_complex_rule(param, g, slots, sc, xp)
        new: dict[str, Array] = {}
        new["square_avg"] = ema(slots["square_avg"], xp.multiply(g, g), sc.alpha, sc.one_minus_alpha, xp)
        variance = new["square_avg"]
        if self.centered:
            new["grad_avg"] = ema(slots["grad_avg"], g, sc.alpha, sc.one_minus_alpha, xp)
            variance = xp.subtract(variance, xp.multiply(new["grad_avg"], new["grad_avg"]))
            if self.convention == "uniopt":
                variance = xp.maximum(variance, xp.zeros_like(variance))
        if keras or self.convention == "optax":  # eps inside the root
            root = xp.sqrt(xp.add(variance, sc.eps))
            # a no-op clamp (the root is never negative) that keeps compilers from rewriting
            # x / sqrt(y) into x * rsqrt(y), whose rounding differs between backends
            root = xp.maximum(root, xp.zeros_like(root))
            if keras:
                step_dir = xp.divide(xp.multiply(g, sc.lr), root)
            else:  # optax scales by -lr before its momentum trace
                step_dir = xp.multiply(xp.divide(g, root), sc.neg_lr)
        else:
            step_dir = xp.divide(g, xp.add(xp.sqrt(variance), sc.eps))
        if self.nonzero("momentum"):
            new["momentum_buffer"] = xp.add(xp.multiply(slots["momentum_buffer"], sc.momentum), step_dir)
            step_dir = new["momentum_buffer"]
        if keras:
            return xp.subtract(param, step_dir), new
        if self.convention == "optax":
            return xp.add(param, step_dir), new
        return xp.subtract(param, xp.multiply(step_dir, sc.lr)), new

    def _optax_complex_rule(self, param: Array, g: Array, slots: Mapping[str, Array], sc: Any, xp: Any):
        r"""optax's RMSprop on complex parameters (``optax/_src/transform.py``, ``scale_by_rms``
        and ``scale_by_stddev``; ``optax/_src/alias.py``, ``rmsprop``): :math:`v_t = \alpha
        v_{t-1} + (1-\alpha)|g_t|^2` in a complex buffer (imaginary part 0), centered
        :math:`\bar g_t = \alpha \bar g_{t-1} + (1-\alpha) g_t` and variance
        :math:`v_t - |\bar g_t|^2`; :math:`u_t = -\eta\, g_t / \sqrt{\mathrm{var} + \epsilon}`,
        momentum :math:`b_t = u_t + \mu b_{t-1}`, :math:`\theta_t = \theta_{t-1} + b_t`.

        Op sequence: ``v = v*a + abs_sq(g)*(1-a)`` (complex), ``root = sqrt(re(v) [- abs_sq(gbar)]
        + eps)``, per part ``u = (g / root) * (-lr)``, then the complex ``b = b*mu + u`` and
        ``p = p + b``. optax multiplies by ``rsqrt`` of the complex ``var + eps``, whose real part
        is the real ``rsqrt`` (measured bitwise): the spec divides by the correctly rounded root,
        as for real parameters.
        """
        sc = real_scalars(sc, xp)
        new = {"square_avg": ema(slots["square_avg"], abs_sq(g, xp), sc.alpha, sc.one_minus_alpha, xp)}
        variance = xp.real(new["square_avg"])
        if self.centered:
            new["grad_avg"] = ema(slots["grad_avg"], g, sc.alpha, sc.one_minus_alpha, xp)
            variance = xp.subtract(variance, abs_sq(new["grad_avg"], xp))
        root = xp.sqrt(xp.add(variance, sc.eps))
        root = xp.maximum(root, xp.zeros_like(root))  # no-op; blocks x / sqrt -> x * rsqrt
        step_re = xp.multiply(xp.divide(xp.real(g), root), sc.neg_lr)
        step_im = xp.multiply(xp.divide(xp.imag(g), root), sc.neg_lr)
        step_dir = from_parts(step_re, step_im, param, xp)
        if self.nonzero("momentum"):  # optax.trace
            new["momentum_buffer"] = xp.add(xp.multiply(slots["momentum_buffer"], sc.momentum), step_dir)
            step_dir = new["momentum_buffer"]
        return xp.add(param, step_dir), new
