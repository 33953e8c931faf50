r"""Adadelta (Zeiler 2012, arXiv 1212.5701, Algorithm 1) with a learning rate and L2 weight decay.

With :math:`g_t \leftarrow \pm g_t + \lambda\,\theta_{t-1}` (L2 decay) and
:math:`\mathrm{RMS}[y]_t = \sqrt{E[y^2]_t + \epsilon}`:

.. math::

    E[g^2]_t &= \rho\, E[g^2]_{t-1} + (1-\rho)\, g_t^2 \\
    \Delta x_t &= \frac{\mathrm{RMS}[\Delta x]_{t-1}}{\mathrm{RMS}[g]_t}\, g_t
        = \frac{\sqrt{E[\Delta x^2]_{t-1} + \epsilon}}{\sqrt{E[g^2]_t + \epsilon}}\, g_t \\
    E[\Delta x^2]_t &= \rho\, E[\Delta x^2]_{t-1} + (1-\rho)\, \Delta x_t^2 \\
    \theta_t &= \theta_{t-1} - \eta\, \Delta x_t

Both accumulators start at 0. Slots: ``square_avg`` (:math:`E[g^2]`) and ``acc_delta``
(:math:`E[\Delta x^2]`), PyTorch's names, shaped and typed like the parameter.

Choices (every framework agrees on the first three; uniopt follows them):

* :math:`\epsilon` sits *inside* both square roots, as in the paper; it is what starts the method
  (:math:`E[\Delta x^2]_0 = 0`, so the first step is :math:`\sqrt{\epsilon}\, g_1 /
  \sqrt{(1-\rho) g_1^2 + \epsilon}`). ``eps`` must be positive: with 0 no step is ever taken.
* the learning rate :math:`\eta` multiplies the step applied to the parameter, and the paper's
  method is :math:`\eta = 1` (PyTorch's default). :math:`E[\Delta x^2]` accumulates the *unscaled*
  :math:`\Delta x_t`, so with :math:`\eta \ne 1` it is not the square of the applied step.
* weight decay is L2, added to the gradient before both accumulators (PyTorch;
  ``optax.adadelta``'s ``weight_decay`` chains ``add_decayed_weights`` before the transform, the
  same thing). Keras's weight decay is its base optimizer's decoupled one.
* defaults are PyTorch's: ``lr=1.0``, ``rho=0.9``, ``eps=1e-6``, ``weight_decay=0`` (the paper's
  experiments use :math:`\rho = 0.95`, :math:`\epsilon = 10^{-6}`; Keras defaults to
  ``learning_rate=0.001``, ``rho=0.95``, ``epsilon=1e-7``).
* complex parameters (uniopt and torch conventions): each real and imaginary part is its own real
  Adadelta, as ``torch.optim.Adadelta`` does through ``torch.view_as_real``; the slots are complex
  and hold the two parts' accumulators. The keras and optax conventions refuse complex parameters
  (TensorFlow's Keras has none; ``optax.adadelta`` squares complex gradients, ``g**2`` rather than
  :math:`|g|^2`, and optax's own tests skip it for complex).

Op sequence of ``convention="uniopt"``, host scalars rounded once to the parameter dtype:
``s = s*rho + (g*g)*(1-rho)``; ``d = (sqrt(a + eps) / sqrt(s + eps)) * g``;
``a = a*rho + (d*d)*(1-rho)``; ``p = p - d*lr``.

Conventions (``convention=``), each with its framework's defaults for arguments left out:

* ``"torch"`` (``torch.optim.Adadelta``, ``torch/optim/adadelta.py``, ``_single_tensor_adadelta``):
  ``square_avg.mul_(rho).addcmul_(grad, grad, value=1-rho)``, i.e. ``s = s*rho + ((1-rho)*g)*g``
  (the CPU ``addcmul`` kernel multiplies the scalar into the first factor first);
  ``std = sqrt(s + eps)``, ``d = (sqrt(a + eps) / std) * g``;
  ``a = a*rho + ((1-rho)*d)*d``; ``param.add_(d, alpha=-lr)``, i.e. ``p = p + d*(-lr)``.
  Defaults ``lr=1.0``, ``rho=0.9``, ``eps=1e-6``; L2 weight decay ``g = g + p*wd``.
* ``"keras"`` (``keras.optimizers.Adadelta``, ``keras/src/optimizers/adadelta.py``):
  ``s = rho*s + (1-rho)*square(g)``; ``d = -((sqrt(a + eps) * g) / sqrt(s + eps))`` (Keras
  multiplies the gradient into the numerator before dividing); ``a = rho*a + (1-rho)*square(d)``;
  ``p = p + lr*d``. Keras's weight decay is decoupled, ``p = p - (p*wd)*lr`` before the step
  (:func:`uniopt._math.keras_weight_decay`); ``lr`` and ``weight_decay`` pass through float32 as
  Keras holds them (:func:`uniopt._math.keras_float32`). Defaults ``lr=0.001``, ``rho=0.95``,
  ``eps=1e-7``.
* ``"optax"`` (``optax.adadelta``, ``optax/_src/alias.py``; ``optax/_src/transform.py``,
  ``scale_by_adadelta``, state ``e_g``/``e_x``): ``chain(add_decayed_weights(wd),
  scale_by_adadelta(rho, eps), scale_by_learning_rate(lr))``: ``g = g + wd*p`` (L2);
  ``e_g = (1-rho)*g**2 + rho*e_g``; ``u = (sqrt(e_x + eps) / sqrt(e_g + eps)) * g``;
  ``e_x = (1-rho)*u**2 + rho*e_x``; ``p = p + u*(-lr)``. Its scalars are Python floats, weak-typed
  and rounded once to the parameter dtype, as here. Defaults ``rho=0.9``, ``eps=1e-6``; optax's
  ``learning_rate`` defaults to ``None``, which chains ``optax.identity()``: no scaling *and no sign
  flip*, so ``optax.adadelta()`` adds :math:`+\Delta x_t` and climbs the loss. That default has no
  ``lr`` here (for ``weight_decay=0`` it equals ``lr=1.0, maximize=True`` bit for bit, Adadelta's
  step being odd in the gradient); this convention defaults to ``lr=1.0``, the paper's descent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

from ._math import ema, from_parts, is_complex, keras_weight_decay, prepare_grad, real_scalars
from ._spec import Array, Spec
from ._validate import check_interval

__all__ = ["Adadelta", "AdadeltaScalars"]


class AdadeltaScalars(NamedTuple):
    rho: float
    one_minus_rho: float  # 1 - rho, computed in float64 on the host (every framework's Python float)
    eps: float
    lr: float
    neg_lr: float  # torch (add_ with alpha=-lr) and optax (scale by -lr)
    weight_decay: float


@dataclasses.dataclass(frozen=True)
class Adadelta(Spec):
    """Adadelta with a learning rate and L2 weight decay (see the module docstring)."""

    name: ClassVar[str] = "Adadelta"
    reference: ClassVar[str] = "Zeiler 2012, arXiv 1212.5701, Algorithm 1"

    conventions: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "uniopt": {"lr": 1.0, "rho": 0.9, "eps": 1e-6},
        "torch": {"lr": 1.0, "rho": 0.9, "eps": 1e-6},
        "keras": {"lr": 1e-3, "rho": 0.95, "eps": 1e-7},
        # optax's learning_rate=None (no scaling, no sign flip) is no lr; see the module docstring
        "optax": {"lr": 1.0, "rho": 0.9, "eps": 1e-6},
    }

    lr: float = None  # type: ignore[assignment]  # None: the convention's default
    rho: float = None  # type: ignore[assignment]
    eps: float = None  # type: ignore[assignment]
    weight_decay: float = 0.0
    maximize: bool = False
    convention: str = "uniopt"

    def _check(self) -> None:
        check_interval(self.name, "rho", self.rho, 0.0, 1.0)
        check_interval(self.name, "eps", self.eps, 0.0, low_open=True)
        check_interval(self.name, "weight_decay", self.weight_decay, 0.0)

    def slot_names(self) -> tuple[str, ...]:
        return ("square_avg", "acc_delta")

    # -- uniopt: Zeiler's Algorithm 1 ------------------------------------------------------------
    def uniopt_scalars(self, step: int, lr: float) -> AdadeltaScalars:
        """The same constants at every step: ``rho``, ``1 - rho``, ``eps``, ``lr``, ``-lr``,
        ``weight_decay`` (float64, each rounded once to the parameter dtype by the caller)."""
        rho = float(self.rho)
        return AdadeltaScalars(
            rho=rho,
            one_minus_rho=1.0 - rho,
            eps=float(self.eps),
            lr=lr,
            neg_lr=-lr,
            weight_decay=float(self.weight_decay),
        )

    def uniopt_rule(
        self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any
    ) -> tuple[Array, dict[str, Array]]:
        r"""Algorithm 1, lines 6 to 9, with :math:`\theta_t = \theta_{t-1} - \eta\,\Delta x_t`."""
        if is_complex(param, xp):
            return self._on_parts(self.uniopt_rule, param, grad, slots, sc, xp)
        g = prepare_grad(grad, param, xp, maximize=self.maximize, weight_decay=self._l2(sc))
        square_avg = ema(slots["square_avg"], xp.multiply(g, g), sc.rho, sc.one_minus_rho, xp)
        rms_delta = xp.sqrt(xp.add(slots["acc_delta"], sc.eps))
        rms_grad = xp.sqrt(xp.add(square_avg, sc.eps))
        delta = xp.multiply(xp.divide(rms_delta, rms_grad), g)
        acc_delta = ema(slots["acc_delta"], xp.multiply(delta, delta), sc.rho, sc.one_minus_rho, xp)
        new_param = xp.subtract(param, xp.multiply(delta, sc.lr))
        return new_param, {"square_avg": square_avg, "acc_delta": acc_delta}

    # -- torch.optim.Adadelta --------------------------------------------------------------------
    def torch_rule(
        self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any
    ) -> tuple[Array, dict[str, Array]]:
        """``_single_tensor_adadelta`` op for op (``addcmul`` as ``s + (value*t1)*t2``)."""
        if is_complex(param, xp):  # torch.view_as_real: each part its own real Adadelta
            return self._on_parts(self.torch_rule, param, grad, slots, sc, xp)
        g = prepare_grad(grad, param, xp, maximize=self.maximize, weight_decay=self._l2(sc))
        square_avg = xp.multiply(slots["square_avg"], sc.rho)
        square_avg = xp.add(square_avg, xp.multiply(xp.multiply(g, sc.one_minus_rho), g))
        std = xp.sqrt(xp.add(square_avg, sc.eps))
        delta = xp.sqrt(xp.add(slots["acc_delta"], sc.eps))
        delta = xp.multiply(xp.divide(delta, std), g)
        acc_delta = xp.multiply(slots["acc_delta"], sc.rho)
        acc_delta = xp.add(acc_delta, xp.multiply(xp.multiply(delta, sc.one_minus_rho), delta))
        new_param = xp.add(param, xp.multiply(delta, sc.neg_lr))
        return new_param, {"square_avg": square_avg, "acc_delta": acc_delta}

    # -- keras.optimizers.Adadelta ---------------------------------------------------------------
    def keras_rule(
        self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any
    ) -> tuple[Array, dict[str, Array]]:
        """``Adadelta.update_step`` op for op, after the base optimizer's decoupled weight decay."""
        self._refuse_complex(param, xp)
        g = prepare_grad(grad, param, xp, maximize=self.maximize, weight_decay=None)
        if self.nonzero("weight_decay"):  # Keras's weight decay is always decoupled, applied first
            param = keras_weight_decay(param, sc.weight_decay, sc.lr, xp)
        square_avg = xp.add(
            xp.multiply(sc.rho, slots["square_avg"]), xp.multiply(sc.one_minus_rho, xp.multiply(g, g))
        )
        numerator = xp.multiply(xp.sqrt(xp.add(slots["acc_delta"], sc.eps)), g)
        delta_var = xp.negative(xp.divide(numerator, xp.sqrt(xp.add(square_avg, sc.eps))))
        acc_delta = xp.add(
            xp.multiply(sc.rho, slots["acc_delta"]),
            xp.multiply(sc.one_minus_rho, xp.multiply(delta_var, delta_var)),
        )
        new_param = xp.add(param, xp.multiply(sc.lr, delta_var))
        return new_param, {"square_avg": square_avg, "acc_delta": acc_delta}

    # -- optax.adadelta ----------------------------------------------------------------------------
    def optax_rule(
        self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any
    ) -> tuple[Array, dict[str, Array]]:
        """``add_decayed_weights``, ``scale_by_adadelta``, ``scale_by_learning_rate``, then
        ``apply_updates`` (``p + u``)."""
        self._refuse_complex(param, xp)
        g = prepare_grad(grad, param, xp, maximize=self.maximize, weight_decay=self._l2(sc))
        e_g = xp.add(
            xp.multiply(sc.one_minus_rho, xp.multiply(g, g)), xp.multiply(sc.rho, slots["square_avg"])
        )
        ratio = xp.divide(xp.sqrt(xp.add(slots["acc_delta"], sc.eps)), xp.sqrt(xp.add(e_g, sc.eps)))
        u = xp.multiply(ratio, g)
        e_x = xp.add(
            xp.multiply(sc.one_minus_rho, xp.multiply(u, u)), xp.multiply(sc.rho, slots["acc_delta"])
        )
        new_param = xp.add(param, xp.multiply(u, sc.neg_lr))
        return new_param, {"square_avg": e_g, "acc_delta": e_x}

    # -- helpers -----------------------------------------------------------------------------------
    def _l2(self, sc: Any) -> Array | None:
        """The L2 coefficient added to the gradient (``None`` without weight decay)."""
        return sc.weight_decay if self.nonzero("weight_decay") else None

    def _refuse_complex(self, param: Array, xp: Any) -> None:
        if is_complex(param, xp):
            raise ValueError(
                f"Adadelta: complex parameters are not supported with convention={self.convention!r} "
                "(TensorFlow's Keras has no complex variables; optax.adadelta squares complex gradients, "
                "g**2 rather than |g|**2); expected real parameters, or convention='uniopt' or 'torch' "
                "(each part its own Adadelta, as torch.view_as_real)"
            )

    def _on_parts(self, rule: Any, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any):
        """``rule`` on the real and on the imaginary parts separately (``torch.view_as_real``):
        complex slots hold each part's accumulators; ``maximize`` and L2 decay act per part as on
        the complex numbers (both are linear)."""
        sc = real_scalars(sc, xp)
        outs = []
        for part in (xp.real, xp.imag):
            outs.append(rule(part(param), part(grad), {k: part(v) for k, v in slots.items()}, sc, xp))
        (re, re_slots), (im, im_slots) = outs
        new_slots = {k: from_parts(re_slots[k], im_slots[k], param, xp) for k in re_slots}
        return from_parts(re, im, param, xp), new_slots
