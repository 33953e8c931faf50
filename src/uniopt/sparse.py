r"""Sparse gradients: which rows a step changes, and torch.optim.SparseAdam's lazy Adam.

A sparse gradient (a PyTorch sparse COO tensor, a TensorFlow ``tf.IndexedSlices``) names some
*rows* of a parameter (indices along its leading axes; an embedding's rows) and gives their values;
the gradient of every other row is 0. Repeated indices are summed first (``Tensor.coalesce()``,
``tf.math.unsorted_segment_sum``), which is the gradient's own meaning. Two rules, chosen per spec
and hyperparameters by :meth:`uniopt.Spec.sparse_rule`:

* ``"rows"``: the spec's own rule, with the step's scalars as for a dense step, applied to the
  touched rows only: the parameter's rows and the same rows of every slot are gathered by the
  coalesced indices, updated, and written back. The parameter and every slot keep their other rows
  unchanged, and the step counter advances once for the whole parameter (a row's bias correction
  is that of the parameter's step count, not of the row's own updates). An empty gradient changes
  no row and still counts a step.
* ``"dense"``: the gradient is densified (zeros in the untouched rows) and the spec's rule runs over
  the whole parameter: every row steps, momentum keeps moving rows touched before, moments of
  untouched rows decay.

Where a zero gradient leaves a row of the parameter and of every slot unchanged under the rule, the
two coincide and ``"rows"`` is taken, at the cost of the touched rows: SGD without momentum and
weight decay (:math:`\theta - 0\cdot\eta = \theta`), Adagrad without weight decay
(:math:`s + 0 = s`, :math:`\theta - 0/(\sqrt{s}+\epsilon)\,\eta = \theta`), in every convention.
Bit for bit on every row, with two exceptions where the dense rule itself changes an untouched
element: with ``maximize=True`` a parameter element ``-0.0`` becomes ``+0.0`` (``-0.0 - (-0.0)``),
and an Adagrad accumulator holding NaN makes its parameter element NaN; ``"rows"`` leaves both.

Where a zero gradient still changes something, the frameworks offer different semantics, and the
spec says which it runs:

* SGD with momentum or weight decay: ``"dense"``. ``torch.optim.SGD`` keeps a sparse momentum
  buffer that decays and keeps stepping every row it ever held, and adds ``weight_decay * p`` to
  the sparse gradient, which makes it dense (``torch/optim/sgd.py``); ``keras.optimizers.SGD``
  densifies (``m = m*momentum - g*lr`` over the whole variable, ``keras/src/optimizers/sgd.py``).
  Both are the dense rule.
* Adagrad with weight decay: ``"dense"`` (Keras's decoupled decay shrinks every row);
  ``torch.optim.Adagrad`` refuses it ("weight_decay option is not compatible with sparse
  gradients", ``torch/optim/adagrad.py``), and so does ``uniopt.torch.Adagrad``.
* Every other spec: ``"dense"``. Keras 3 accepts an ``IndexedSlices`` gradient for every optimizer
  and its result is the dense gradient's (``keras/src/optimizers/optimizer_sparse_test.py``,
  ``test_sparse_correctness``); torch.optim's other optimizers refuse sparse gradients, and so does
  ``uniopt.torch``.
* :class:`SparseAdam` (``torch.optim.SparseAdam``): ``"rows"`` by definition, lazy Adam: the
  moments of untouched rows do not decay, and their parameters do not move.

Where a framework's own sparse update differs from the rule above, uniopt keeps the rule: Keras's
SGD and Adagrad scatter each slice of an ``IndexedSlices`` gradient with repeated indices
separately (``p - lr*g1 - lr*g2``; Adagrad adds ``g1**2 + g2**2`` to its accumulator, not
``(g1 + g2)**2``), in an order TensorFlow does not define on every device; uniopt sums repeated
indices first, as torch.optim does.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

from ._math import prepare_grad
from ._spec import Array, Spec
from ._validate import check_betas, check_interval

__all__ = ["RULES", "SparseAdam", "SparseAdamScalars", "sparse_rule"]

RULES = ("rows", "dense")
"""The sparse rules (see the module docstring)."""


def sparse_rule(spec: Spec) -> str:
    """``"rows"`` or ``"dense"``: how ``spec`` updates a parameter from a sparse gradient
    (:meth:`uniopt.Spec.sparse_rule`; see the module docstring)."""
    rule = spec.sparse_rule()
    if rule not in RULES:
        raise ValueError(f"{spec.name}: sparse_rule() returned {rule!r}; expected one of {RULES}")
    return rule


class SparseAdamScalars(NamedTuple):
    one_minus_beta1: float
    one_minus_beta2: float
    eps: float
    neg_step_size: float  # -(lr * sqrt(1 - beta2^t)) / (1 - beta1^t)


@dataclasses.dataclass(frozen=True)
class SparseAdam(Spec):
    r"""Lazy Adam for sparse gradients, ``torch.optim.SparseAdam``'s algorithm
    (``torch/optim/sparse_adam.py``, ``torch/optim/_functional.py``: ``sparse_adam``).

    On the rows a gradient touches (its sparse rule is ``"rows"``: the other rows of the parameter
    and of both moments are unchanged), with :math:`t` the parameter's step count:

    .. math::

        m &\leftarrow m + (g - m)(1 - \beta_1), \qquad v \leftarrow v + (g^2 - v)(1 - \beta_2) \\
        \theta &\leftarrow \theta + \frac{m}{\sqrt{v} + \epsilon}\cdot\left(-\frac{\eta
            \sqrt{1-\beta_2^t}}{1-\beta_1^t}\right)

    :math:`\epsilon` is added to :math:`\sqrt{v}`, not to :math:`\sqrt{\hat v}` as in
    ``torch.optim.Adam`` (:class:`uniopt.Adam`): SparseAdam is not Adam's rule on the rows.
    Op sequence (the scalars rounded once to the parameter dtype, the step size computed on the host
    in float64 as torch does in Python): ``m = m + (g - m)*(1-b1)``; ``v = v + (g*g - v)*(1-b2)``;
    ``p = p + (m / (sqrt(v) + eps)) * (-step_size)``, torch's order (``-step_size *
    numer.div_(denom)``, products commute). ``maximize`` negates the gradient first.

    Conventions: ``"uniopt"`` and ``"torch"``, the same formula and defaults (lr :math:`10^{-3}`,
    betas (0.9, 0.999), eps :math:`10^{-8}`). Keras and optax have no lazy Adam. Validation is
    torch's: ``lr > 0``, ``eps > 0``, each beta in :math:`[0, 1)`; ``ValueError`` naming the
    argument otherwise. On dense arrays (the core's :meth:`update`) every element is a touched row.
    """

    name: ClassVar[str] = "SparseAdam"
    reference: ClassVar[str] = "torch.optim.SparseAdam (torch/optim/_functional.py, sparse_adam)"
    conventions: ClassVar[Mapping[str, Mapping[str, Any]]] = {"uniopt": {}, "torch": {}}
    real_only: ClassVar[bool] = True  # torch.optim.SparseAdam refuses complex parameters
    unavailable_conventions: ClassVar[Mapping[str, str]] = {
        "keras": "Keras has no lazy Adam: keras.optimizers.Adam densifies an IndexedSlices gradient",
        "optax": "optax has no lazy Adam",
    }

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    maximize: bool = False
    convention: str = "uniopt"

    def _check(self) -> None:
        check_interval(self.name, "lr", self.lr, 0.0, low_open=True)  # torch: "Invalid learning rate"
        object.__setattr__(self, "betas", check_betas(self.name, self.betas))
        check_interval(self.name, "eps", self.eps, 0.0, low_open=True)

    def slot_names(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def sparse_rule(self) -> str:
        return "rows"

    def step_scalars(self, step: int, lr: float | None = None) -> SparseAdamScalars:
        lr = float(self.lr if lr is None else lr)
        beta1, beta2 = self.betas
        bias_correction1 = 1 - beta1**step  # torch's Python arithmetic, in float64
        bias_correction2 = 1 - beta2**step
        step_size = lr * math.sqrt(bias_correction2) / bias_correction1
        return SparseAdamScalars(
            one_minus_beta1=1 - beta1,
            one_minus_beta2=1 - beta2,
            eps=float(self.eps),
            neg_step_size=-step_size,
        )

    def rule(
        self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any
    ) -> tuple[Array, dict[str, Array]]:
        g = prepare_grad(grad, param, xp, maximize=self.maximize, weight_decay=None)
        m_old, v_old = slots["exp_avg"], slots["exp_avg_sq"]
        m = xp.add(m_old, xp.multiply(xp.subtract(g, m_old), sc.one_minus_beta1))
        v = xp.add(v_old, xp.multiply(xp.subtract(xp.multiply(g, g), v_old), sc.one_minus_beta2))
        denom = xp.add(xp.sqrt(v), sc.eps)
        new_param = xp.add(param, xp.multiply(xp.divide(m, denom), sc.neg_step_size))
        return new_param, {"exp_avg": m, "exp_avg_sq": v}
