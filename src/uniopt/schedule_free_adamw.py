r"""Schedule-Free AdamW (Defazio et al. 2024, arXiv 2405.15682, "The Road Less Scheduled").

Three sequences: gradients are taken at :math:`y`, steps are taken on :math:`z`, and :math:`x` is a
weighted average of the :math:`z`'s, where the model should be evaluated. With :math:`g_t` the
gradient at :math:`y_t`, :math:`\gamma_t` the warmed-up learning rate
(:math:`\gamma_t = \eta\,\min(t/T_w, 1)`), weight decay :math:`\lambda` and
:math:`x_1 = y_1 = z_1 = \theta_0`:

.. math::

    v_t &= \beta_2 v_{t-1} + (1-\beta_2)\, g_t^2, \qquad
    d_t = \sqrt{v_t / (1-\beta_2^t)} + \epsilon, \qquad
    u_t = g_t / d_t + \lambda\, y_t \\
    z_{t+1} &= z_t - \gamma_t u_t \\
    c_{t+1} &= \frac{w_t}{\sum_{i \le t} w_i}, \qquad w_t = t^r\,(\max_{i\le t}\gamma_i)^{p} \\
    x_{t+1} &= (1 - c_{t+1})\, x_t + c_{t+1} z_{t+1} \\
    y_{t+1} &= (1-\beta_1)\, z_{t+1} + \beta_1 x_{t+1}

(:math:`p` is ``weight_lr_power``). No first moment is stored: :math:`\beta_1` is the interpolation
between :math:`z` and :math:`x`. Only two sequences need storing; the parameters hold :math:`y`
during training (what gradients are taken at) and :math:`x` is a pure function of :math:`(y, z)`:
:math:`x = (y - (1-\beta_1) z) / \beta_1`, and back :math:`y = (1-\beta_1) z + \beta_1 x`.

Slots per parameter (its shape and dtype): ``z`` (initialised to a copy of the parameter) and
``exp_avg_sq`` (:math:`v`, zeros). **History** (per optimizer, not per parameter):
``weight_sum`` :math:`\sum_i w_i` and ``lr_max`` :math:`\max_i \gamma_i`. These two depend on the
whole learning-rate history, not on ``(step, lr)``; for a constant ``lr`` they are a function of
the step (:meth:`ScheduleFreeAdamW.step_scalars` replays it), but :math:`c_t \approx 1/t` never
converges, so no finite scalar table holds it (``scalars_converge() == False``).

Every division of an array by a 0-d scalar is :func:`uniopt._math.divide_by_scalar` (the divisor
made a full array first): XLA rewrites a division by a broadcast scalar into a multiplication by its
reciprocal even eagerly, which would make jax differ from NumPy.

Conventions (``convention=``), each with its framework's defaults for arguments left out. Every
convention keeps the parameters at :math:`y`; :meth:`ScheduleFreeAdamW.eval_params` gives
:math:`x`, :meth:`ScheduleFreeAdamW.train_params` gives :math:`y` back from :math:`x`.

* ``"uniopt"``: the authors' package ``schedulefree`` (PyPI 1.4.1,
  ``schedulefree/adamw_schedulefree.py``, ``AdamWScheduleFree``), torch-style names
  ``lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, warmup_steps=0, r=0,
  weight_lr_power=2``. Host float64, exactly the package's Python expressions:
  ``sched = t/warmup_steps`` while ``t <= warmup_steps`` else 1; ``lr_t = lr*sched``;
  ``lr_max = max(lr_t, lr_max)`` (from -1); ``weight = t**r * lr_max**weight_lr_power``;
  ``weight_sum += weight``; ``c = weight/weight_sum`` (0 while the sum is 0). Op sequence:
  ``v = v*b2 + (g*g)*(1-b2)``; ``u = g / (sqrt(v / bc2) + eps)``; ``u = u + y*wd`` (only when
  ``wd != 0``); ``y = y + c*(z - y)`` (the package's ``y.lerp_(z, c)``; torch's lerp takes this
  form for weights below 0.5 and ``z - (z - y)*(1 - c)`` above, which the spec does not follow:
  a branch that flips with the step would recompile a compiled step);
  ``y = y + u*(lr_t*(b1*(1-c)-1))``; ``z = z - u*lr_t``.
  ``eval_params``: ``x = lerp(y, z, 1 - 1/b1)`` (the package's ``optimizer.eval()``);
  ``train_params``: ``y = lerp(x, z, 1 - b1)`` (``optimizer.train()``), with torch's two forms
  (:func:`torch_lerp`: the weight is fixed, so the form is too). torch's CPU kernels fuse
  ``lerp_``, ``addcmul_`` and ``add_(alpha=)`` into fused multiply-adds and its ``sqrt`` is not
  correctly rounded, so the package itself is matched within a measured ulp bound, not bitwise.
* ``"keras"`` (``keras.optimizers.ScheduleFreeAdamW``, ``keras/src/optimizers/schedule_free_adamw.py``,
  Keras 3.15; ``learning_rate=0.0025, beta_1=0.9, beta_2=0.999, epsilon=1e-8, warmup_steps=0``):
  uniform averaging, :math:`c_{t+1} = 1/t` (``weight_lr_power=0, r=0``; other values refused);
  Keras's decoupled weight decay ``y = y - (y*wd)*lr`` with the *un*-warmed ``lr``, before the
  step (``base_optimizer._apply_weight_decay``), so the decay acts on :math:`y` only. In the
  parameter dtype: ``lr_t = lr * min(t/W, 1)``; ``v = v + (g*g - v)*(1-b2)``;
  ``d = sqrt(v / bc2) + eps`` (``bc2 = 1 - b2^t`` as Keras's in-graph ``ops.power``);
  ``z = z - (lr_t*g) / d``; ``x = (y - (1-b1)*z) / b1``; ``x = (1-1/t)*x + (1/t)*z``;
  ``y = (1-b1)*z + b1*x``. **Note the z in the recovery of x**: Keras reads
  ``momentum_old = momentum.value`` before ``assign_sub``, but under the TensorFlow (and torch)
  backend ``.value`` is the live variable, so :math:`x_t` is recovered from the *new* :math:`z`
  (measured: only that form is bitwise with Keras on TF; see the report). betas and eps go through
  float32 (``ops.cast`` of a Python float), as do lr and weight decay (``keras_float32``). Keras
  has no train/eval switch: ``model.evaluate`` sees :math:`y`. Keras's ``build`` copies the
  parameters into ``momentum`` with an ``assign``; built for the first time inside a
  ``tf.function`` (``model.fit``, a compiled custom loop) that assign is lost and :math:`z`
  starts at 0 (measured: the first step sets the parameters to about ``-lr*sign(g)``). The spec
  follows a Keras optimizer built eagerly.
* ``"optax"`` (``optax.contrib.schedule_free_adamw``, ``optax/contrib/_schedule_free.py``,
  optax 0.2.8; ``learning_rate=0.0025, warmup_steps=None (here 0), b1=0.9, b2=0.999, eps=1e-8,
  weight_decay=0.0, weight_lr_power=2.0``; no ``r``): ``scale_by_rms(b2, eps, eps_in_sqrt=False,
  bias_correction=True)``, ``add_decayed_weights(wd)``, ``scale_by_learning_rate`` inside
  ``schedule_free``. History in the parameter dtype (optax keeps ``max_lr`` and ``weight_sum``
  in the lowest parameter dtype: float32 at jax's default): ``max_lr = max(max_lr, lr_w)``,
  ``weight = max_lr*max_lr`` (optax's ``max_lr**2.0``: eager jax takes XLA's ``pow``, not always
  the correctly rounded square, jit rewrites it to the product; equal on every value measured
  here), ``weight_sum += weight``, ``c = weight/weight_sum`` (0 for 0/0). With
  ``warmup_steps=W`` optax's ``linear_schedule(0, lr, W)`` (float32 arithmetic on the int32
  count, even with x64) is read at ``step_count = t`` for the weight (``lr_w``) but at the inner
  ``count = t-1`` for the step (``lr_z``): the first step of :math:`z` has learning rate 0.
  Op sequence: ``nu = (1-b2)*(g*g) + b2*nu``; ``s = 1 / (sqrt(nu / bc2) + eps)`` (a true
  division by the bias correction, as XLA computes ``optax.tree.bias_correction`` on a tree of two
  or more leaves; on a single leaf of rank >= 1 it multiplies by the reciprocal instead);
  ``u = s*g``; ``u = u + wd*y`` (only when ``wd != 0``); ``u = (-lr_z)*u``; ``z' = z + u``;
  ``x = (y - (1-b1)*z) * (1/b1)`` (eagerly XLA multiplies each leaf of rank >= 1 by the
  reciprocal of the scalar divisor; it divides a 0-d leaf, which the spec does not follow:
  its rule is elementwise); ``x = (1-c)*x + c*z'``;
  ``y' = b1*x + (1-b1)*z'``; ``y = y + (y' - y)`` (``optax.apply_updates`` of the update
  ``y' - y``). ``eval_params`` is ``schedule_free_eval_params``: the same recovery of ``x`` with
  ``1 - b1`` computed in the parameter dtype (``b1`` is an array in optax's state).
  The spec's ``warmup_steps=0`` is optax's ``warmup_steps=None`` (no warmup); optax's own
  ``warmup_steps=0`` builds ``linear_schedule(0, lr, 0)``, the constant 0, and never moves, so an
  optax-named entry point (``uniopt.jax``) maps ``None`` to 0 and refuses a literal 0. Bitwise
  with optax eagerly; under ``jax.jit`` XLA contracts FMAs (also in optax's warmup schedule) and
  folds ``(1/b1)*(1-c)`` into one scalar (measured distances in the report).
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

from ._math import (
    after,
    divide_by_scalar,
    float32_pow,
    float_bits,
    is_complex,
    keras_float32,
    keras_weight_decay,
    recomputed,
)
from ._spec import Array, Spec, State, _namespace_or_none, cast_scalars
from ._validate import check_interval
from .scalar_ops import HOST

__all__ = ["History", "KerasSFScalars", "OptaxSFScalars", "ScheduleFreeAdamW", "UnioptSFScalars"]


class History(NamedTuple):
    """Schedule-Free AdamW's history (:attr:`uniopt.State.history`): the learning-rate history's
    running sums, carried from step to step as exact Python floats.

    ``weight_sum`` and ``lr_max`` in float64 (the uniopt convention: the authors' package keeps
    them as Python floats per param group; optax with ``jax_enable_x64``: its float64 state),
    ``weight_sum_f32`` and ``lr_max_f32`` the same sums in float32 arithmetic (optax at jax's
    default, read by parameters of 32 bits or fewer; the uniopt convention leaves them at their
    start).
    """

    weight_sum: float
    lr_max: float
    weight_sum_f32: float
    lr_max_f32: float


class UnioptSFScalars(NamedTuple):
    beta2: float
    one_minus_beta2: float
    bc2: float  # 1 - beta2^t (divided by, as the package does)
    eps: float
    weight_decay: float
    lr: float  # lr_t = lr * sched (the z step)
    c: float  # c_{t+1} = weight / weight_sum (lerp weight of y towards z)
    one: float  # 1 (the rule's constant in the parameter dtype)
    y_coef: float  # lr_t * (beta1 * (1 - c) - 1), host float64 as in the package


class KerasSFScalars(NamedTuple):
    lr: float  # Keras's float32 learning rate (un-warmed; also the weight decay's)
    weight_decay: float
    t: float  # the 1-based step as a float (exact)
    warmup: float  # warmup_steps as a float (exact); unused when no warmup
    one: float
    beta1: float  # float32(beta1): ops.cast of a Python float
    beta2: float
    eps: float
    bc2_32: float  # 1 - float32(beta2)^t in float32 (powf, flush-to-zero), parameters <= 32 bits
    bc2_64: float  # 1 - float32(beta2)^t in float64, float64 parameters


class OptaxSFScalars(NamedTuple):
    one_minus_beta2: float  # (1 - decay): a Python float in optax, rounded once
    beta2: float
    bc2_32: float  # float32(1 - b2^t) (powf, flush-to-zero), parameters <= 32 bits
    bc2_64: float  # 1 - b2^t in float64, float64 parameters (x64)
    one: float
    eps: float
    weight_decay: float
    neg_lr_z_32: float  # -lr of the step (optax's schedule at count t-1), float32 arithmetic
    neg_lr_z_64: float  # the same in float64 (x64)
    c_32: float  # c_{t+1} from the float32 history
    c_64: float  # from the float64 history
    beta1: float
    one_minus_beta1: float  # (1.0 - b1): a Python float in optax, rounded once
    inv_beta1_32: float  # float32(1) / float32(b1): XLA's reciprocal of the scalar divisor
    inv_beta1_64: float


@dataclasses.dataclass(frozen=True)
class ScheduleFreeAdamW(Spec):
    """Schedule-Free AdamW (see the module docstring).

    Slots ``z`` (a copy of the parameter) and ``exp_avg_sq``; the parameters hold :math:`y`.
    Raises ``ValueError`` for ``lr < 0``, ``betas`` outside :math:`(0, 1) \\times [0, 1)`,
    ``eps <= 0``, ``weight_decay < 0``, ``warmup_steps`` not a non-negative integer, ``r`` or
    ``weight_lr_power`` not finite,
    and the arguments a convention's framework lacks (Keras: ``r``, ``weight_lr_power``; optax:
    ``r``).
    """

    name: ClassVar[str] = "ScheduleFreeAdamW"
    reference: ClassVar[str] = "Defazio et al. 2024, arXiv 2405.15682, Algorithm 1 (AdamW form)"
    conventions: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "uniopt": {"r": 0.0, "weight_lr_power": 2.0},
        "keras": {"r": 0.0, "weight_lr_power": 0.0},
        "optax": {"r": 0.0, "weight_lr_power": 2.0},
    }
    unavailable_conventions: ClassVar[Mapping[str, str]] = {
        "torch": (
            "torch.optim has no Schedule-Free optimizer; uniopt's own convention is the authors' "
            "schedulefree.AdamWScheduleFree, with its torch-style names"
        )
    }
    lacking: ClassVar[Mapping[str, tuple[str, Mapping[str, str]]]] = {
        "keras": (
            "keras.optimizers.ScheduleFreeAdamW",
            {
                "r": " (it averages uniformly, c = 1/t)",
                "weight_lr_power": " (it averages uniformly, c = 1/t)",
            },
        ),
        "optax": ("optax.contrib.schedule_free_adamw", {"r": " (polynomial weighting)"}),
    }
    keras_float32_fields: ClassVar[tuple[str, ...]] = ("lr", "weight_decay", "eps")
    has_eval_view: ClassVar[bool] = True

    lr: float = 0.0025
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 0
    r: float = None  # type: ignore[assignment]
    weight_lr_power: float = None  # type: ignore[assignment]
    convention: str = "uniopt"

    # -- validation -------------------------------------------------------------------------------
    def _check(self) -> None:
        betas = self.betas
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(
                f"{self.name}: betas={betas!r} is not a pair; expected (beta1, beta2) with "
                "0 < beta1 < 1 and 0 <= beta2 < 1"
            )
        beta1 = check_interval(self.name, "betas[0]", betas[0], 0.0, 1.0, low_open=True, high_open=True)
        beta2 = check_interval(self.name, "betas[1]", betas[1], 0.0, 1.0, high_open=True)
        if self.convention == "keras":  # ops.cast of a Python float: float32 in every dtype
            beta1, beta2 = keras_float32(beta1), keras_float32(beta2)
        object.__setattr__(self, "betas", (beta1, beta2))
        check_interval(self.name, "eps", self.eps, 0.0, low_open=True)
        check_interval(self.name, "weight_decay", self.weight_decay, 0.0)
        check_interval(self.name, "r", self.r)
        check_interval(self.name, "weight_lr_power", self.weight_lr_power)
        w = self.warmup_steps
        # an integral value of any type (NumPy's, a whole float from a config: the package takes
        # any number), stored as an int
        whole = isinstance(w, numbers.Integral) or (isinstance(w, numbers.Real) and float(w).is_integer())
        if isinstance(w, bool) or not whole or w < 0:
            raise ValueError(
                f"{self.name}: warmup_steps={w!r} is not an integer >= 0; expected 0 (no warmup) "
                "or the length of the linear warmup"
            )
        object.__setattr__(self, "warmup_steps", int(w))

    def slot_names(self) -> tuple[str, ...]:
        return ("z", "exp_avg_sq")

    def init_slot(self, name: str, param: Array, xp: Any) -> Array:
        if is_complex(param, xp):
            raise ValueError(f"{self.name}: complex parameters are not supported")
        if name == "z":  # a copy (times 1: exact, -0 kept; a new array, never a view of param)
            return xp.multiply(param, xp.ones_like(param))
        return xp.zeros_like(param)

    def scalars_converge(self) -> bool:
        return False  # c_t ~ 1/t changes at every step, in every dtype

    def warmed_lr(self, step: int, lr: float) -> float:
        """The learning rate of the z step at 1-based ``step`` for the base ``lr``, in float64 (the
        package's ``group['scheduled_lr']``, for logging): ``lr * min(1, t / warmup_steps)``;
        optax's warmup at ``t - 1``."""
        w = self.warmup_steps
        if self.convention == "optax":
            return lr * min(1.0, (step - 1) / w) if w else lr
        return lr * min(1.0, step / w) if w else lr

    # -- history ----------------------------------------------------------------------------------
    def init_history(self) -> History | None:
        """Before the first step: nothing summed; ``lr_max`` from -1 (the package) or 0 (optax).
        ``None`` in the keras convention, which averages uniformly (:math:`c_{t+1} = 1/t`) and
        keeps no history."""
        if self.convention == "keras":
            return None
        start = 0.0 if self.convention == "optax" else -1.0
        return History(0.0, start, 0.0, start)

    def history_scalars(
        self, step: int, lr: float, history: History | None
    ) -> tuple[NamedTuple, History | None]:
        """The scalars of 1-based ``step`` for the base learning rate ``lr`` after ``history``, and
        the history after this step. Each convention computes it as its framework does. Raises
        ``ValueError`` for a missing history (a state saved without one)."""
        if history is None and self.convention != "keras":
            raise ValueError(
                f"{self.name}: the state has no history (weight_sum, lr_max); expected the "
                "History of init_history() and the previous steps"
            )
        return self._of_convention("history_scalars")(step, float(lr), history)

    def step_scalars(self, step: int, lr: float | None = None) -> NamedTuple:
        """The scalars of 1-based ``step`` for a learning rate held at ``lr`` since the first
        step: the history replayed (cached for consecutive calls). With a learning rate that
        changed, only :meth:`history_scalars` with the carried history is right."""
        lr = float(self.lr if lr is None else lr)
        if self.convention == "keras":
            return self.keras_history_scalars(step, lr, None)[0]
        cache = self.__dict__.setdefault("_replay", {})
        start, history = cache.get(lr, (0, self.init_history()))
        if start >= step:
            start, history = 0, self.init_history()
        sc = None
        for t in range(start + 1, step + 1):
            sc, history = self.history_scalars(t, lr, history)
        cache[lr] = (step, history)
        return sc if sc is not None else self.history_scalars(step, lr, history)[0]

    # -- the scalars in two parts (uniopt.scalar_ops), for a step counted on the device -----------
    def step_terms(self, step: int) -> tuple[float, ...] | None:
        """The bias corrections, functions of the step alone that converge (to 1): the uniopt
        convention's ``(1 - beta2**t,)``, the keras convention's ``(bc2_32, bc2_64)``; ``None`` for
        the optax convention (its float32 history has no float64 form)."""
        beta2 = self.betas[1]
        if self.convention == "uniopt":
            return (1 - beta2**step,)
        if self.convention == "keras":
            import numpy as np

            return (float(np.float32(1.0) - float32_pow(beta2, step)), 1.0 - beta2**step)
        return None

    def scalars_from_terms(
        self, terms: tuple[Any, ...], step: Any, lr: Any, history: Any, ops: Any
    ) -> tuple[NamedTuple, Any]:
        if self.convention == "uniopt":
            return self._uniopt_from_terms(terms, step, lr, history, ops)
        if self.convention == "keras":
            return self._keras_from_terms(terms, step, lr, ops), history
        return super().scalars_from_terms(terms, step, lr, history, ops)

    # -- uniopt: schedulefree.AdamWScheduleFree -----------------------------------------------------
    def uniopt_history_scalars(self, step: int, lr: float, h: History):
        return self._uniopt_from_terms(self.step_terms(step), step, lr, h, HOST)

    def _uniopt_from_terms(self, terms: tuple[Any, ...], t: Any, lr: Any, h: History, ops: Any):
        """The package's float64 expressions (``k = t - 1``): ``sched = (k+1)/warmup_steps`` while
        ``k < warmup_steps`` (here ``min(t/W, 1)``, the same value), ``lr_max = max(lr_t,
        lr_max)``, ``weight = (k+1)**r * lr_max**weight_lr_power``, ``c = weight/weight_sum`` (0 on a
        zero sum); ``t`` is the host's int step or an adapter's float64 value."""
        beta1, beta2 = self.betas
        (bias_correction2,) = terms
        one = ops.const(1.0)
        w = self.warmup_steps
        sched = ops.minimum(ops.divide(t, ops.const(w)), one) if w else one
        lr_t = lr * sched
        lr_max = ops.maximum(lr_t, h.lr_max)
        weight = ops.pow(t, self.r) * ops.pow(lr_max, self.weight_lr_power)
        weight_sum = h.weight_sum + weight
        c = ops.div_or_zero(weight, weight_sum)
        sc = UnioptSFScalars(
            beta2=beta2,
            one_minus_beta2=1 - beta2,
            bc2=bias_correction2,
            eps=float(self.eps),
            weight_decay=float(self.weight_decay),
            lr=lr_t,
            c=c,
            one=1.0,
            y_coef=lr_t * (ops.const(beta1) * (one - c) - one),
        )
        return sc, h._replace(weight_sum=weight_sum, lr_max=lr_max)

    def uniopt_rule(self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any):
        """``AdamWScheduleFree.step`` for one parameter (``param`` is :math:`y`)."""
        y, z = param, slots["z"]
        v = xp.add(
            xp.multiply(slots["exp_avg_sq"], sc.beta2),
            xp.multiply(xp.multiply(grad, grad), sc.one_minus_beta2),
        )
        u = self._uniopt_normalized(grad, v, y, sc, xp)
        # y's step reads the old z and u, and z's step replaces z: under XLA (no multi-output
        # fusion) y's loop computes u again from v rather than reading a stored u, and z's loop
        # runs after it, in place, rather than on a copy of z (the same bits; docs/tf.md)
        v_again = recomputed(v, xp)
        u_y = u if v_again is None else self._uniopt_normalized(grad, v_again, y, sc, xp)
        # y.lerp_(z, c): torch's form for |c| < 0.5, taken for every c (no branch that flips
        # with the step, which would recompile a compiled step; the package's fused lerp_ differs
        # from either form by a rounding anyway)
        new_y = xp.add(y, xp.multiply(sc.c, xp.subtract(z, y)))
        new_y = xp.add(new_y, xp.multiply(u_y, sc.y_coef))
        z = after(xp.subtract(z, xp.multiply(u, sc.lr)), new_y, xp)
        return new_y, {"z": z, "exp_avg_sq": v}

    def _uniopt_normalized(self, grad: Array, v: Array, y: Array, sc: Any, xp: Any) -> Array:
        """``u = grad / (sqrt(v / bc2) + eps) + weight_decay * y`` (weight decay at ``y``)."""
        denom = xp.add(xp.sqrt(divide_by_scalar(v, sc.bc2, xp)), sc.eps)
        u = xp.divide(grad, denom)
        if self.nonzero("weight_decay"):
            u = xp.add(u, xp.multiply(y, sc.weight_decay))
        return u

    # -- keras.optimizers.ScheduleFreeAdamW -------------------------------------------------------
    def keras_history_scalars(self, step: int, lr: float, h: None):
        return self._keras_from_terms(self.step_terms(step), step, lr, HOST), h  # c = 1/t: no history

    def _keras_from_terms(self, terms: tuple[Any, ...], t: Any, lr: Any, ops: Any) -> KerasSFScalars:
        beta1, beta2 = self.betas  # float32 values already (_check)
        bc2_32, bc2_64 = terms
        return KerasSFScalars(
            lr=lr,
            weight_decay=float(self.weight_decay),
            t=ops.const(t),
            warmup=ops.const(self.warmup_steps),
            one=1.0,
            beta1=beta1,
            beta2=beta2,
            eps=float(self.eps),
            bc2_32=bc2_32,
            bc2_64=bc2_64,
        )

    def keras_rule(self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any):
        """``ScheduleFreeAdamW.update_step`` after Keras's weight decay, op for op in the parameter
        dtype (the small scalar arithmetic too, from exact host inputs)."""
        if self.nonzero("weight_decay"):  # base_optimizer._apply_weight_decay, with the un-warmed lr
            param = keras_weight_decay(param, sc.weight_decay, sc.lr, xp)
        lr = sc.lr
        # lr * minimum(t / warmup_steps, 1); the branch is the hyperparameter's, not a per-step
        # scalar's (a compiled step may hold those traced: uniopt.jax's host callback)
        if self.warmup_steps > 0:
            frac = xp.divide(sc.t, sc.warmup)
            lr = xp.multiply(lr, xp.where(xp.greater(frac, sc.one), sc.one, frac))
        bc2 = sc.bc2_32 if float_bits(param, xp) <= 32 else sc.bc2_64
        z, v = slots["z"], slots["exp_avg_sq"]
        v = xp.add(v, xp.multiply(xp.subtract(xp.multiply(grad, grad), v), xp.subtract(sc.one, sc.beta2)))
        denom = xp.add(xp.sqrt(divide_by_scalar(v, bc2, xp)), sc.eps)
        z = xp.subtract(z, xp.divide(xp.multiply(lr, grad), denom))
        one_minus_b1 = xp.subtract(sc.one, sc.beta1)
        # x from y and the *updated* z (Keras's momentum_old is the live variable under TF/torch)
        x = divide_by_scalar(xp.subtract(param, xp.multiply(one_minus_b1, z)), sc.beta1, xp)
        w = xp.divide(sc.one, sc.t)
        x = xp.add(xp.multiply(xp.subtract(sc.one, w), x), xp.multiply(w, z))
        y = xp.add(xp.multiply(one_minus_b1, z), xp.multiply(sc.beta1, x))
        return y, {"z": z, "exp_avg_sq": v}

    # -- optax.contrib.schedule_free_adamw --------------------------------------------------------
    def _optax_schedule(self, lr: float, count: int) -> float:
        """optax's learning rate at ``count``: ``lr`` itself without warmup (a Python float, rounded
        where it is used), else ``linear_schedule(0, lr, W)(count)``:
        ``(-lr) * (1 - min(count, W)/W) + lr`` in float32 *also with* ``jax_enable_x64`` (the
        count is int32, and jax promotes int32 to float32), cast to the parameter dtype after."""
        import numpy as np

        if self.warmup_steps == 0:  # optax's warmup_steps=None
            return lr
        f = np.float32
        count = min(max(count, 0), self.warmup_steps)
        frac = f(1) - f(count) / f(self.warmup_steps)
        return float(f(-lr) * frac + f(lr))

    def optax_history_scalars(self, step: int, lr: float, h: History):
        import numpy as np

        beta1, beta2 = self.betas
        out = {}
        new = {}
        for wide, f, (ws, lm) in (
            (False, np.float32, (h.weight_sum_f32, h.lr_max_f32)),
            (True, np.float64, (h.weight_sum, h.lr_max)),
        ):
            lr_w = f(self._optax_schedule(lr, step))  # learning_rate(step_count), from 1
            lr_z = f(self._optax_schedule(lr, step - 1))  # scale_by_schedule's count, from 0
            with np.errstate(all="ignore"):
                max_lr = np.maximum(f(lm), lr_w)
                p = self.weight_lr_power
                weight = max_lr * max_lr if p == 2 else f(max_lr ** f(p))
                total = f(ws) + weight
                ratio = weight / total
            if np.isnan(weight) or np.isnan(total):
                c = f(np.nan)
            else:
                c = f(np.nan_to_num(ratio, nan=0.0, posinf=np.inf))
            key = "64" if wide else "32"
            out[f"c_{key}"] = float(c)
            out[f"neg_lr_z_{key}"] = float(-lr_z)
            new[key] = (float(total), float(max_lr))
        bc2_32 = np.float32(1.0) - float32_pow(beta2, step)
        sc = OptaxSFScalars(
            one_minus_beta2=1.0 - beta2,
            beta2=beta2,
            bc2_32=float(bc2_32),
            bc2_64=1.0 - beta2**step,
            one=1.0,
            eps=float(self.eps),
            weight_decay=float(self.weight_decay),
            beta1=beta1,
            one_minus_beta1=1.0 - beta1,
            inv_beta1_32=float(np.float32(1.0) / np.float32(beta1)),
            inv_beta1_64=1.0 / beta1,
            **out,
        )
        return sc, History(new["64"][0], new["64"][1], new["32"][0], new["32"][1])

    def optax_rule(self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any):
        """``schedule_free(chain(scale_by_rms, add_decayed_weights, scale_by_learning_rate))``'s
        update followed by ``optax.apply_updates``, op for op."""
        narrow = float_bits(param, xp) <= 32
        y, z = param, slots["z"]
        nu = xp.add(
            xp.multiply(xp.multiply(grad, grad), sc.one_minus_beta2),
            xp.multiply(slots["exp_avg_sq"], sc.beta2),
        )
        nu_hat = divide_by_scalar(nu, sc.bc2_32 if narrow else sc.bc2_64, xp)  # tree_bias_correction
        u = xp.multiply(xp.divide(sc.one, xp.add(xp.sqrt(nu_hat), sc.eps)), grad)
        if self.nonzero("weight_decay"):  # add_decayed_weights skips a zero constant
            u = xp.add(u, xp.multiply(y, sc.weight_decay))
        u = xp.multiply(u, sc.neg_lr_z_32 if narrow else sc.neg_lr_z_64)
        new_z = xp.add(z, u)
        x = self._optax_x(y, z, sc, narrow, xp)
        c = sc.c_32 if narrow else sc.c_64
        x = xp.add(xp.multiply(xp.subtract(sc.one, c), x), xp.multiply(c, new_z))
        new_y = xp.add(xp.multiply(x, sc.beta1), xp.multiply(new_z, sc.one_minus_beta1))
        y = xp.add(y, xp.subtract(new_y, y))  # optax.apply_updates(params, new_params - params)
        return y, {"z": new_z, "exp_avg_sq": nu}

    @staticmethod
    def _optax_x(y: Array, z: Array, sc: Any, narrow: bool, xp: Any, *, in_dtype: bool = False) -> Array:
        """``(y - (1.0 - b1) * z) / b1`` as XLA computes it eagerly, one leaf at a time: its
        algebraic simplifier turns a division by a broadcast scalar into a multiplication by the
        scalar's reciprocal (computed in the dtype), so a leaf of rank 1 or more is multiplied by
        ``1/b1``. The spec does so for every shape: eager XLA divides a 0-d leaf (no broadcast),
        but a rule whose rounding depended on the rank would not be elementwise (uniopt.torch runs
        it over concatenations of parameters), as for the optax conventions of Adam and NAdam.
        ``in_dtype``: ``1.0 - b1`` computed in the parameter dtype (``schedule_free_eval_params``
        reads ``b1`` from the state, an array of the lowest parameter dtype), else rounded from
        the Python float (the update's ``b1`` is a Python float)."""
        one_minus_b1 = xp.subtract(sc.one, sc.beta1) if in_dtype else sc.one_minus_beta1
        t = xp.subtract(y, xp.multiply(z, one_minus_b1))
        return xp.multiply(t, sc.inv_beta1_32 if narrow else sc.inv_beta1_64)

    # -- train / eval views -------------------------------------------------------------------------
    def eval_param(self, param: Array, slots: Mapping[str, Array], xp: Any) -> Array:
        """:math:`x` from the training parameter :math:`y` and the slot :math:`z`, as the
        convention's framework computes it (uniopt: ``optimizer.eval()``; optax:
        ``schedule_free_eval_params``; keras: Keras's own recovery of x inside the step)."""
        return self._view(param, slots["z"], xp, to_eval=True)

    def train_param(self, param: Array, slots: Mapping[str, Array], xp: Any) -> Array:
        """:math:`y` from the evaluation parameter :math:`x` (uniopt: ``optimizer.train()``)."""
        return self._view(param, slots["z"], xp, to_eval=False)

    def eval_params(self, params: Sequence[Array], state: State, xp: Any = None) -> list[Array]:
        """:meth:`eval_param` of every parameter (``params`` hold :math:`y`, ``state`` their
        slots): the parameters to evaluate the model at."""
        params = list(params)
        xp = xp if xp is not None else _namespace_or_none(params)
        return [self.eval_param(p, s, xp) for p, s in zip(params, state.slots, strict=True)]

    def train_params(self, params: Sequence[Array], state: State, xp: Any = None) -> list[Array]:
        """:meth:`train_param` of every parameter (the inverse of :meth:`eval_params`)."""
        params = list(params)
        xp = xp if xp is not None else _namespace_or_none(params)
        return [self.train_param(p, s, xp) for p, s in zip(params, state.slots, strict=True)]

    def _view(self, p: Array, z: Array, xp: Any, *, to_eval: bool) -> Array:
        import numpy as np

        beta1 = self.betas[0]
        narrow = float_bits(p, xp) <= 32
        sc = cast_scalars(
            _ViewScalars(
                w=1 - 1 / beta1 if to_eval else 1 - beta1,
                one=1.0,
                beta1=beta1,
                one_minus_beta1=1.0 - beta1,
                inv_beta1_32=float(np.float32(1.0) / np.float32(beta1)),
                inv_beta1_64=1.0 / beta1,
            ),
            p,
            xp,
        )
        if self.convention == "uniopt":  # optimizer.eval() / optimizer.train(): p.lerp_(z, w)
            w = 1 - 1 / beta1 if to_eval else 1 - beta1
            small = bool(abs(np.float32(w)) < 0.5) if narrow else abs(w) < 0.5
            return torch_lerp(p, z, sc.w, sc.one, small, xp)
        if self.convention == "optax":
            if to_eval:  # schedule_free_eval_params
                return self._optax_x(p, z, sc, narrow, xp, in_dtype=True)
            return xp.add(xp.multiply(p, sc.beta1), xp.multiply(z, sc.one_minus_beta1))
        one_minus_b1 = xp.subtract(sc.one, sc.beta1)  # keras: its in-step recovery of x, and of y
        if to_eval:
            return divide_by_scalar(xp.subtract(p, xp.multiply(one_minus_b1, z)), sc.beta1, xp)
        return xp.add(xp.multiply(one_minus_b1, z), xp.multiply(sc.beta1, p))


class _ViewScalars(NamedTuple):
    w: float  # uniopt: the lerp weight of optimizer.eval() (1 - 1/b1) or optimizer.train() (1 - b1)
    one: float
    beta1: float
    one_minus_beta1: float
    inv_beta1_32: float
    inv_beta1_64: float


def torch_lerp(a: Array, b: Array, w: Array, one: Array, small: bool, xp: Any) -> Array:
    """torch's ``a.lerp_(b, w)`` (``ATen/native/Lerp.h``) without its fused multiply-add:
    ``a + w*(b - a)`` for ``|w| < 0.5`` (``small``, decided on the host from the rounded weight),
    else ``b - (b - a)*(1 - w)`` with ``1 - w`` in the parameter dtype (exact ``b`` for ``w = 1``)."""
    diff = xp.subtract(b, a)
    if small:
        return xp.add(a, xp.multiply(w, diff))
    return xp.subtract(b, xp.multiply(diff, xp.subtract(one, w)))
