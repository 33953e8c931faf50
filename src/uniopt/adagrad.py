r"""Adagrad (Duchi, Hazan and Singer 2011), diagonal form.

With :math:`g_t \leftarrow \pm g_t + \lambda\,\theta_{t-1}` and the decayed learning rate
:math:`\tilde\eta_t = \eta / (1 + (t-1)\,\delta)` (:math:`\delta` = ``lr_decay``):

.. math::

    s_t &= s_{t-1} + g_t^2, \qquad s_0 = \text{initial\_accumulator\_value} \\
    \theta_t &= \theta_{t-1} - \tilde\eta_t\, \frac{g_t}{\sqrt{s_t} + \epsilon}

Choices where frameworks disagree: uniopt follows PyTorch: the accumulator starts at 0 and
:math:`\epsilon = 10^{-10}` sits outside the square root (Keras and optax start at 0.1 with
:math:`\epsilon` inside). Op sequence: ``s = s + g*g``; ``p = p - (g / (sqrt(s) + eps)) * clr``.

Conventions (``convention=``), each with its framework's defaults for arguments left out:

* ``"torch"`` (``torch.optim.Adagrad``): uniopt's formula; lr :math:`10^{-2}`, eps
  :math:`10^{-10}`, initial accumulator 0.
* ``"keras"`` (``keras.optimizers.Adagrad``): eps inside the root,
  :math:`\theta_t = \theta_{t-1} - \eta g_t / \sqrt{s_t + \epsilon}`, Keras's decoupled weight
  decay :math:`\theta \leftarrow \theta - (\theta\lambda)\eta` first, no lr decay; lr
  :math:`10^{-3}`, eps :math:`10^{-7}`, initial accumulator 0.1; lr, the initial accumulator and
  weight decay go through float32 as in Keras (``keras_float32``). Op sequence: ``s = s + g*g``;
  ``p = p - (g*lr) / sqrt(s + eps)``.
* ``"optax"`` (``optax.adagrad``, ``optax.scale_by_rss``): eps inside the root, the inverse root
  first, :math:`u_t = -\eta\,(1/\sqrt{s_t + \epsilon})\, g_t`, :math:`\theta_t = \theta_{t-1}
  + u_t`; no lr decay or weight decay; lr :math:`10^{-2}` (optax has no default), eps
  :math:`10^{-7}`, initial accumulator 0.1. Op sequence: ``s = s + g*g`` (optax's ``g*g + s``, the
  same sum);
  ``p = p + ((1 / sqrt(s + eps)) * g) * (-lr)``. optax's ``where(s > 0, rsqrt(s + eps), 0)``
  gives the same update for every ``eps > 0`` where ``g*g`` does not underflow (``s = 0`` only where
  every gradient was 0); ``eps = 0`` is accepted, as by optax, and then the spec takes that
  ``where`` too (update 0 where ``s = 0``, instead of ``0 * inf``). optax's
  ``rsqrt`` is not correctly rounded on every device: the spec divides ``1`` by the correctly
  rounded root.

Where eps sits inside the root, a no-op clamp ``maximum(root, 0)`` keeps compilers from rewriting
the division into a multiplication by ``rsqrt``, whose rounding differs between backends.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

from ._math import abs_sq, from_parts, is_complex, keras_weight_decay, prepare_grad, real_scalars
from ._spec import Array, Spec
from ._validate import CHAIN_DECAY, check_interval

__all__ = ["Adagrad", "AdagradScalars"]


class AdagradScalars(NamedTuple):
    clr: float  # lr / (1 + (step - 1) * lr_decay)
    weight_decay: float
    eps: float
    lr: float  # the undecayed learning rate (Keras's decoupled weight decay)
    neg_lr: float  # -lr (optax's scale by -lr)


@dataclasses.dataclass(frozen=True)
class Adagrad(Spec):
    """Adagrad with learning-rate decay and L2 weight decay (see the module docstring)."""

    name: ClassVar[str] = "Adagrad"
    conventions: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "uniopt": {"lr": 1e-2, "eps": 1e-10, "initial_accumulator_value": 0.0},
        "torch": {"lr": 1e-2, "eps": 1e-10, "initial_accumulator_value": 0.0},
        "keras": {"lr": 1e-3, "eps": 1e-7, "initial_accumulator_value": 0.1},
        "optax": {"lr": 1e-2, "eps": 1e-7, "initial_accumulator_value": 0.1},
    }
    lacking: ClassVar[Mapping[str, tuple[str, Mapping[str, str]]]] = {
        "keras": ("keras.optimizers.Adagrad", {"lr_decay": ""}),
        "optax": ("optax.adagrad", {"lr_decay": "", "weight_decay": CHAIN_DECAY}),
    }
    keras_float32_fields: ClassVar[tuple[str, ...]] = (
        *Spec.keras_float32_fields,
        "initial_accumulator_value",
    )
    reference: ClassVar[str] = "Duchi, Hazan and Singer 2011, JMLR 12"

    lr: float = None  # type: ignore[assignment]  # None: the convention's default
    lr_decay: float = 0.0
    eps: float = None  # type: ignore[assignment]
    initial_accumulator_value: float = None  # type: ignore[assignment]
    weight_decay: float = 0.0
    maximize: bool = False
    convention: str = "uniopt"

    def _check(self) -> None:
        check_interval(self.name, "lr_decay", self.lr_decay, 0.0)
        # optax.adagrad accepts eps=0 (its update is 0 where the accumulator is 0)
        check_interval(self.name, "eps", self.eps, 0.0, low_open=self.convention != "optax")
        check_interval(self.name, "initial_accumulator_value", self.initial_accumulator_value, 0.0)
        check_interval(self.name, "weight_decay", self.weight_decay, 0.0)

    def slot_names(self) -> tuple[str, ...]:
        return ("sum",)

    def sparse_rule(self) -> str:
        """``"rows"`` without weight decay (a zero gradient leaves the sum and the parameter as they
        are, in every convention), as torch.optim.Adagrad and keras.optimizers.Adagrad scatter it;
        ``"dense"`` with weight decay, which shrinks every row (Keras's decoupled decay; torch.optim
        refuses it with sparse gradients) (:mod:`uniopt.sparse`)."""
        return "rows" if self.weight_decay == 0 else "dense"

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
            lr=base,
            neg_lr=-base,
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
        total = xp.add(slots["sum"], xp.multiply(g, g))
        if keras or self.convention == "optax":  # eps inside the root
            root = xp.sqrt(xp.add(total, sc.eps))
            root = xp.maximum(root, xp.zeros_like(root))  # no-op; blocks x / sqrt -> x * rsqrt
            if keras:
                return xp.subtract(param, xp.divide(xp.multiply(g, sc.lr), root)), {"sum": total}
            inv_root = xp.divide(xp.full_like(root, 1.0), root)
            if self.eps == 0:  # optax: where(s > 0, rsqrt(s + eps), 0), the same for s > 0
                inv_root = xp.where(total > 0, inv_root, xp.zeros_like(total))
            return xp.add(param, xp.multiply(xp.multiply(inv_root, g), sc.neg_lr)), {"sum": total}
        std = xp.add(xp.sqrt(total), sc.eps)
        new_param = xp.subtract(param, xp.multiply(xp.divide(g, std), sc.clr))
        return new_param, {"sum": total}

    def _optax_complex_rule(self, param: Array, g: Array, slots: Mapping[str, Array], sc: Any, xp: Any):
        r"""optax's Adagrad on complex parameters (``optax/_src/transform.py``, ``scale_by_rss``):
        :math:`s_t = s_{t-1} + |g_t|^2` in a complex buffer (imaginary part 0, initial value
        ``initial_accumulator_value + 0j``), :math:`u_t = -\eta\, g_t / \sqrt{s_t + \epsilon}`.

        Op sequence: ``s = s + abs_sq(g)`` (complex), ``inv = 1 / sqrt(re(s) + eps)`` (``0`` where
        ``re(s) = 0`` when ``eps = 0``), per part ``p = p + (inv * g) * (-lr)``. optax's
        ``rsqrt`` of the complex ``s + eps`` has the real ``rsqrt`` as its real part (measured
        bitwise); the spec divides 1 by the correctly rounded root, as for real parameters.
        """
        sc = real_scalars(sc, xp)
        total = xp.add(slots["sum"], abs_sq(g, xp))
        t_re = xp.real(total)
        root = xp.sqrt(xp.add(t_re, sc.eps))
        root = xp.maximum(root, xp.zeros_like(root))  # no-op; blocks x / sqrt -> x * rsqrt
        inv_root = xp.divide(xp.full_like(root, 1.0), root)
        if self.eps == 0:  # optax: where(s > 0, rsqrt(s + eps), 0)
            inv_root = xp.where(t_re > 0, inv_root, xp.zeros_like(t_re))
        new_re = xp.add(xp.real(param), xp.multiply(xp.multiply(inv_root, xp.real(g)), sc.neg_lr))
        new_im = xp.add(xp.imag(param), xp.multiply(xp.multiply(inv_root, xp.imag(g)), sc.neg_lr))
        return from_parts(new_re, new_im, param, xp), {"sum": total}
