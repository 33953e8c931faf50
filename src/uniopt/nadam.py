r"""NAdam, Adam with Nesterov momentum (Dozat 2016, "Incorporating Nesterov Momentum into Adam",
ICLR 2016 workshop, Algorithm 2), with NAdamW (``decoupled_weight_decay=True``).

With :math:`g_t \leftarrow \pm g_t + \lambda\,\theta_{t-1}` (L2 decay; see
``decoupled_weight_decay``), the momentum schedule
:math:`\mu_t = \beta_1 (1 - \tfrac12\, 0.96^{t\psi})` (:math:`\psi` = ``momentum_decay``,
default :math:`4\cdot 10^{-3}`) and its running product :math:`\Pi_t = \prod_{i=1}^t \mu_i`:

.. math::

    m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
    \bar m_t &= \frac{1-\mu_t}{1-\Pi_t}\, g_t + \frac{\mu_{t+1}}{1-\Pi_{t+1}}\, m_t \\
    \theta_t &= \theta_{t-1} - \eta\, \frac{\bar m_t}{\sqrt{v_t / (1-\beta_2^t)} + \epsilon}

``decoupled_weight_decay=True`` (NAdamW) first applies :math:`\theta \leftarrow (1-\eta\lambda)\theta`
and leaves the gradient alone.

Choices where frameworks disagree:

* the schedule. Dozat's :math:`\mu_t = \beta_1(1 - \frac12 0.96^{t/250})` is PyTorch's with
  ``momentum_decay`` :math:`= 1/250 = 0.004`, uniopt's default. Keras's
  :math:`\beta_1(1 - \frac12 0.96^t)` is the same schedule with ``momentum_decay=1`` (the
  ``"keras"`` convention fixes it there); optax has no schedule, :math:`\mu_t = \beta_1` for every
  :math:`t`, which is the limit ``momentum_decay`` :math:`\to\infty` (``momentum_decay=math.inf``,
  the ``"optax"`` convention's value; PyTorch computes the same, ``0.96 ** inf == 0``).
* the product :math:`\Pi_t`: uniopt keeps it exactly on the host in float64 (the state holds only
  the step count; the product is a function of it). PyTorch keeps it in a float32 tensor and Keras
  in a variable of the parameters' dtype; those conventions reproduce their framework's value.
* the second moment: Dozat's Algorithm 2 also multiplies :math:`\hat v_t` by :math:`\beta_2`;
  PyTorch, Keras and optax do not, nor does uniopt. :math:`\epsilon` (default :math:`10^{-8}`) is
  added to :math:`\sqrt{\hat v_t}` as in :class:`uniopt.Adam` (PyTorch, optax; Keras adds its
  :math:`10^{-7}` there too, to :math:`\sqrt{\hat v_t}`, unlike its Adam).
* the moment :math:`m_t` decays with the constant :math:`\beta_1` (every framework; the schedule
  enters only through :math:`\bar m_t`).

Op sequence, with host float64 scalars ``c_g = (1-mu_t)/(1-prod_t)``, ``c_m =
mu_{t+1}/(1-prod_{t+1})`` and ``inv_sqrt_bc2 = 1/sqrt(1-beta2^t)``: ``m = m*b1 + g*(1-b1)``;
``v = v*b2 + (g*g)*(1-b2)``; ``p = p - ((g*c_g + m*c_m) / (sqrt(v)*inv_sqrt_bc2 + eps)) * lr``.

Conventions (``convention=``), each with its framework's defaults for arguments left out:

* ``"torch"`` (``torch.optim.NAdam``, ``torch/optim/nadam.py``, ``_single_tensor_nadam``): lr
  :math:`2\cdot 10^{-3}`, eps :math:`10^{-8}`, ``momentum_decay`` 0.004. PyTorch's ``mu_product``
  is a float32 0-d tensor multiplied by the Python float :math:`\mu_t` each step (``mu_product *=
  mu``: both rounded to float32, one float32 product; measured bitwise over 3000 steps) and read
  back as a Python float; :func:`torch_mu_product` emulates it (under torch's default dtype; a
  float64 default dtype makes it float64). Op sequence: ``m = m + (g - m)*(1-b1)`` (``lerp_``, its
  small-weight form; ``g - (g - m)*b1`` when :math:`1-\beta_1 \ge 0.5`), ``v = v*b2 +
  ((1-b2)*g)*g`` (``addcmul_``), ``denom = sqrt(v / bc2) + eps`` (a true division by
  ``bc2 = 1 - beta2**t``), ``p = p + (c1*g)/denom``, ``p = p + (c2*m)/denom`` (two ``addcdiv_``)
  with the Python floats ``c1 = -lr*(1-mu)/(1-mu_product)`` and
  ``c2 = (-lr*mu_next)/(1-mu_product*mu_next)``; weight decay L2 ``g + p*wd`` or decoupled
  ``p*(1-lr*wd)`` first. torch.optim's CPU kernels fuse ``lerp_``/``addcmul_``/``addcdiv_`` into
  multiply-adds, which no backend's rounded ops reproduce.
* ``"keras"`` (``keras.optimizers.Nadam``, ``keras/src/optimizers/nadam.py``): lr
  :math:`10^{-3}`, eps :math:`10^{-7}`, the schedule :math:`u_t = \beta_1(1 - \frac12 0.96^t)`
  (``momentum_decay`` must be 1). Keras updates an optimizer variable ``_u_product`` of the
  parameters' dtype before the step, ``u_product = (u_product * beta_1) * (1 - 0.5 *
  0.96**t)``, and computes in ``update_step``, in the parameter dtype, ``u_t``, ``u_t_1`` (with
  ``beta_1`` and ``0.96`` cast to that dtype, i.e. through float32), ``u_product_t_1 = u_product *
  u_t_1`` and ``1 - beta_2**t``; :func:`keras_nadam_scalars` emulates both (float32 ``powf`` and
  flush-to-zero for parameters of 32 bits or fewer; float64 with the Python constants in
  ``_backend_update_step`` and float32-rounded ones in ``update_step``, measured bitwise). Op
  sequence: Keras's decoupled weight decay ``p - (p*wd)*lr`` first; ``m = m + (g - m)*(1-b1)``,
  ``v = v + (g*g - v)*(1-b2)`` with ``1 - b1`` computed from the float32-rounded ``b1``;
  ``m_hat = (u_t_1*m) / (1-u_product_t_1) + ((1-u_t)*g) / (1-u_product_t)``,
  ``v_hat = v / (1-beta_2**t)`` (true divisions), ``p = p - (m_hat*lr) / (sqrt(v_hat) + eps)``.
  Weight decay is always decoupled there (``decoupled_weight_decay`` defaults to True and False is
  refused); lr and weight decay go through float32 as in Keras.
* ``"optax"`` (``optax.nadam``/``optax.nadamw``: ``optax/_src/alias.py``,
  ``transform.scale_by_adam(nesterov=True)``): no schedule (``momentum_decay=inf``), eps
  :math:`10^{-8}`; ``m_hat = (m * (1/(1-b1^(t+1)))) * b1 + (g * (1/(1-b1^t))) * (1-b1)``,
  ``v_hat = v * (1/(1-b2^t))``, ``u = m_hat / (sqrt(v_hat) + eps)``; NAdamW
  (``decoupled_weight_decay=True``, ``optax.nadamw``'s ``add_decayed_weights``) adds ``p * wd``;
  ``p = p + u * (-lr)``. optax divides by its bias corrections where this multiplies by their
  reciprocals; for parameters of 32 bits or fewer the bias corrections are optax's float32 values
  at jax's default (``jax_enable_x64`` off), emulated by
  :func:`uniopt._math.float32_bias_correction`. optax.nadam has no weight decay (L2 with
  ``weight_decay != 0`` is refused; ``optax.nadamw``'s default is :math:`10^{-4}`).

Complex parameters are refused by every rule (``ValueError``).

Scalars converge: :math:`\mu_t \to \beta_1` and :math:`\Pi_t \to 0`; with the default
``momentum_decay`` 0.004 the float64 scalars reach their limit after about 225,000 steps (float32
about 110,000), within :func:`uniopt.scalar_table.scalar_table`'s reach; a schedule too slow to
settle within 900,000 steps (``momentum_decay`` below about 0.001, or :math:`\beta_1` within
:math:`4\cdot 10^{-5}` of 1) reports ``scalars_converge() == False`` and its scalars are computed
on the host at every step.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple

from ._math import (
    adam_moments,
    bias_correction,
    divide_by_scalar,
    dtype_name,
    ema,
    float32_bias_correction,
    float32_pow,
    float_bits,
    is_complex,
    keras_float32,
    keras_weight_decay,
    prepare_grad,
    round_to_dtype,
    stored,
    stored_product,
    widened,
)
from ._spec import Array, Spec
from ._validate import check_betas, check_interval, check_real

__all__ = [
    "NAdam",
    "NAdamKerasScalars",
    "NAdamOptaxScalars",
    "NAdamScalars",
    "NAdamTorchScalars",
    "keras_nadam_scalars",
    "momentum_schedule",
    "torch_mu_product",
]

SCHEDULE_BASE = 0.96
"""The base of Dozat's warm-up :math:`\\mu_t = \\beta_1 (1 - \\frac12 0.96^{t\\psi})`."""

OPTAX_NADAMW_WEIGHT_DECAY = 1e-4
"""``optax.nadamw``'s default ``weight_decay``."""

_CONVERGE_WITHIN = 900_000
"""Steps within which the scalars must settle for :meth:`NAdam.scalars_converge`."""


def momentum_schedule(beta1: float, momentum_decay: float, step: int | float) -> float:
    r""":math:`\mu_t = \beta_1 (1 - \frac12\, 0.96^{t\psi})` in float64, as PyTorch writes it
    (``beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))``); :math:`\psi = \infty` gives
    :math:`\beta_1`."""
    return beta1 * (1.0 - 0.5 * (SCHEDULE_BASE ** (step * momentum_decay)))


class _RunningProduct:
    r"""Prefix products :math:`\Pi_t = \prod_{i=1}^t f(i)` of a factor sequence in ``0 <= f <= b``,
    memoized so that consecutive steps cost O(1) each, computed by ``multiply(previous, i)`` (the
    arithmetic of the framework emulated).

    A step far beyond the memo whose product is provably below :math:`2^{-80}` (from the last
    memoized value and the bound ``b``, with a margin for float32 rounding) is answered 0: every
    scalar reads the product only through :math:`1 - \Pi` and :math:`1 - \Pi\mu`, which round to 1
    in float64 below :math:`2^{-54}`, so the scalars are exact (this serves ``LIMIT_STEP``)."""

    _FAR = 1 << 20

    def __init__(self, multiply: Callable[[float, int], float], bound: float):
        self.multiply, self.bound = multiply, bound
        self.values = [1.0]
        self.lock = threading.Lock()  # host callbacks of compiled steps may run on other threads

    def at(self, step: int, exact: bool = False) -> float:
        r""":math:`\Pi_t` at ``step``; ``exact`` always iterates (no answer 0 far ahead)."""
        values = self.values
        if step < len(values):
            return values[step]
        with self.lock:
            last = values[-1]
            if last == 0.0:
                return 0.0
            ahead = step - (len(values) - 1)
            if not exact and ahead > self._FAR and self.bound < 1.0:
                margin = math.log(self.bound) + 2.0**-20  # float32 rounding: at most 2^-23 per step
                if margin < 0 and math.log(last) + ahead * margin < -80 * math.log(2.0):
                    return 0.0
            for i in range(len(values), step + 1):
                values.append(self.multiply(values[-1], i))
            return values[step]


_PRODUCTS: OrderedDict[tuple[Any, ...], _RunningProduct] = OrderedDict()
_PRODUCTS_KEPT = 32  # (kind, beta1, momentum_decay) memos kept, least recently used out


def _product(kind: str, beta1: float, momentum_decay: float, step: int, exact: bool = False) -> float:
    key = (kind, beta1, momentum_decay)
    running = _PRODUCTS.get(key)
    if running is None:
        running = _PRODUCTS[key] = _make_product(kind, beta1, momentum_decay)
        while len(_PRODUCTS) > _PRODUCTS_KEPT:
            _PRODUCTS.popitem(last=False)
    else:
        _PRODUCTS.move_to_end(key)
    return running.at(step, exact)


def _make_product(kind: str, beta1: float, momentum_decay: float) -> _RunningProduct:
    import numpy as np

    f32 = np.float32
    if kind == "float64":  # uniopt: exact float64 products of the float64 schedule
        return _RunningProduct(lambda p, i: p * momentum_schedule(beta1, momentum_decay, i), beta1)
    if kind == "torch":  # torch: float32(prod) * float32(mu), one float32 rounding

        def torch_step(p: float, i: int) -> float:
            return float(f32(p) * f32(momentum_schedule(beta1, momentum_decay, float(i))))

        return _RunningProduct(torch_step, beta1)
    if kind == "keras32":  # keras, float32 variable: (prod * b1) * (1 - 0.5 * 0.96**t), FTZ
        b1, half, one = f32(beta1), f32(0.5), f32(1.0)

        def keras32_step(p: float, i: int) -> float:
            with np.errstate(all="ignore"):
                value = (f32(p) * b1) * (one - half * float32_pow(SCHEDULE_BASE, i))
            return 0.0 if abs(value) < np.finfo(np.float32).tiny else float(value)

        return _RunningProduct(keras32_step, beta1)
    # keras, float64 variable: the Python constants 0.9 and 0.96 enter as float64
    return _RunningProduct(lambda p, i: (p * beta1) * (1.0 - 0.5 * SCHEDULE_BASE**i), beta1)


def torch_mu_product(beta1: float, momentum_decay: float, step: int) -> float:
    r"""``state["mu_product"]`` of ``torch.optim.NAdam`` after ``step`` steps (float32, under
    torch's default dtype), as a Python float: :math:`\prod_{i \le t} \mu_i` with each product
    rounded to float32 (``mu_product *= mu``). Always the iterated value: a float32 product that
    stops in the subnormal range (where ``k * 2**-149 * mu`` rounds back to itself) stays there,
    which the scalars may ignore but a ported state may not."""
    return _product("torch", beta1, momentum_decay, step, exact=True)


def keras_nadam_scalars(beta1: float, beta2: float, step: int, narrow: bool) -> tuple[float, ...]:
    r"""``(1-b1, 1-b2, u_t_1, 1-u_product_t_1, 1-u_t, 1-u_product_t, 1-beta_2**t)`` as
    ``keras.optimizers.Nadam`` (``keras/src/optimizers/nadam.py``) computes them in the parameter
    dtype at 1-based ``step``: float32 arithmetic (``powf``, flush-to-zero) when ``narrow``, else
    float64 with ``beta_1``, ``beta_2`` and ``0.96`` cast through float32 in ``update_step``
    (``ops.cast(0.9, "float64") == float32(0.9)``) and the exact Python constants in
    ``_backend_update_step``'s ``_u_product``. Each is a Python float holding the exact value."""
    import numpy as np

    if narrow:
        f32 = np.float32
        one, half, b1, b2 = f32(1.0), f32(0.5), f32(beta1), f32(beta2)
        with np.errstate(all="ignore"):
            u_t = b1 * (one - half * float32_pow(SCHEDULE_BASE, step))
            u_t_1 = b1 * (one - half * float32_pow(SCHEDULE_BASE, step + 1))
            u_product_t = f32(_product("keras32", beta1, 1.0, step))
            u_product_t_1 = u_product_t * u_t_1
            if abs(u_product_t_1) < np.finfo(np.float32).tiny:
                u_product_t_1 = f32(0.0)
            values = (one - b1, one - b2, u_t_1, one - u_product_t_1, one - u_t, one - u_product_t)
            values += (one - float32_pow(beta2, step),)
        return tuple(float(v) for v in values)
    b1, b2, decay = (keras_float32(x) for x in (beta1, beta2, SCHEDULE_BASE))
    u_t = b1 * (1.0 - 0.5 * decay**step)
    u_t_1 = b1 * (1.0 - 0.5 * decay ** (step + 1))
    u_product_t = _product("keras64", beta1, 1.0, step)
    u_product_t_1 = u_product_t * u_t_1
    return (1.0 - b1, 1.0 - b2, u_t_1, 1.0 - u_product_t_1, 1.0 - u_t, 1.0 - u_product_t, 1.0 - b2**step)


class NAdamScalars(NamedTuple):
    """uniopt's scalars (float64 on the host)."""

    weight_decay: float
    decay: float  # 1 - lr * weight_decay (decoupled weight decay)
    beta1: float
    one_minus_beta1: float
    beta2: float
    one_minus_beta2: float
    grad_coef: float  # (1 - mu_t) / (1 - prod_t)
    momentum_coef: float  # mu_{t+1} / (1 - prod_{t+1})
    inv_sqrt_bc2: float  # 1 / sqrt(1 - beta2^t)
    eps: float
    lr: float


class NAdamTorchScalars(NamedTuple):
    """torch.optim.NAdam's scalars (Python floats there too)."""

    weight_decay: float
    decay: float  # 1 - lr * weight_decay
    lerp_weight: float  # 1 - beta1
    one: float  # lerp's large-weight form g - (g - m) * (1 - weight): 1 - weight in the dtype
    beta2: float
    one_minus_beta2: float
    bc2: float  # 1 - beta2**t (divided by)
    eps: float
    grad_value: float  # -lr * (1 - mu) / (1 - mu_product)
    momentum_value: float  # (-lr * mu_next) / (1 - mu_product * mu_next)


class NAdamKerasScalars(NamedTuple):
    """keras.optimizers.Nadam's scalars, in float32 (``*_32``) and float64 (``*_64``) variables."""

    weight_decay: float
    lr: float
    eps: float
    one_minus_beta1_32: float
    one_minus_beta2_32: float
    u_next_32: float  # u_t_1
    one_minus_u_product_next_32: float  # 1 - u_product_t_1
    one_minus_u_32: float  # 1 - u_t
    one_minus_u_product_32: float  # 1 - u_product_t
    bc2_32: float  # 1 - beta_2**t
    one_minus_beta1_64: float
    one_minus_beta2_64: float
    u_next_64: float
    one_minus_u_product_next_64: float
    one_minus_u_64: float
    one_minus_u_product_64: float
    bc2_64: float


class NAdamOptaxScalars(NamedTuple):
    """optax.nadam's scalars: bias corrections in float32 (``*_f32``, jax's default) or float64."""

    weight_decay: float
    beta1: float
    one_minus_beta1: float
    beta2: float
    one_minus_beta2: float
    inv_bc1: float  # 1 / (1 - b1^t)
    inv_bc1_next: float  # 1 / (1 - b1^(t+1))
    inv_bc2: float  # 1 / (1 - b2^t)
    inv_bc1_f32: float
    inv_bc1_next_f32: float
    inv_bc2_f32: float
    eps: float
    neg_lr: float
    beta1_bfloat16: float  # exp_avg stored in bfloat16: beta1 rounded to bfloat16 (optax's b1 * mu)
    beta1_float16: float  # exp_avg stored in float16: beta1 rounded to float16
    beta1_float32: float  # exp_avg stored in float32 beside float64: beta1 rounded to float32


@dataclasses.dataclass(frozen=True)
class NAdam(Spec):
    """NAdam and NAdamW (see the module docstring)."""

    name: ClassVar[str] = "NAdam"
    reference: ClassVar[str] = (
        "Dozat 2016, ICLR workshop, Incorporating Nesterov Momentum into Adam, Algorithm 2"
    )

    conventions: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "uniopt": {
            "lr": 2e-3,
            "weight_decay": 0.0,
            "eps": 1e-8,
            "momentum_decay": 4e-3,
            "decoupled_weight_decay": False,
        },
        "torch": {
            "lr": 2e-3,
            "weight_decay": 0.0,
            "eps": 1e-8,
            "momentum_decay": 4e-3,
            "decoupled_weight_decay": False,
        },
        "keras": {
            "lr": 1e-3,
            "weight_decay": 0.0,
            "eps": 1e-7,
            "momentum_decay": 1.0,
            "decoupled_weight_decay": True,
        },
        "optax": {
            "lr": 2e-3,
            "weight_decay": 0.0,
            "eps": 1e-8,
            "momentum_decay": math.inf,
            "decoupled_weight_decay": False,
        },
    }

    lower_precision_slots: ClassVar[tuple[str, ...]] = ("exp_avg",)  # optax's mu_dtype

    lr: float = None  # type: ignore[assignment]  # None: the convention's default
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = None  # type: ignore[assignment]
    weight_decay: float = None  # type: ignore[assignment]
    momentum_decay: float = None  # type: ignore[assignment]
    decoupled_weight_decay: bool = None  # type: ignore[assignment]
    maximize: bool = False
    convention: str = "uniopt"

    def _resolve_convention(self) -> None:
        """The convention's defaults; ``convention="optax"`` with ``decoupled_weight_decay=True``
        (``optax.nadamw``) defaults ``weight_decay`` to optax.nadamw's :math:`10^{-4}`."""
        nadamw = self.decoupled_weight_decay is True and getattr(self, "convention", "uniopt") == "optax"
        if self.weight_decay is None and nadamw:
            object.__setattr__(self, "weight_decay", OPTAX_NADAMW_WEIGHT_DECAY)
        super()._resolve_convention()

    def _check(self) -> None:
        object.__setattr__(self, "betas", check_betas(self.name, self.betas))
        check_interval(self.name, "eps", self.eps, 0.0, low_open=True)
        check_interval(self.name, "weight_decay", self.weight_decay, 0.0)
        decay = self.momentum_decay
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or math.isnan(decay):
            check_real(self.name, "momentum_decay", decay)  # raises: not a real number / not finite
        if decay != math.inf:
            check_interval(self.name, "momentum_decay", decay, 0.0)
        fixed = {
            "keras": ("momentum_decay", 1.0, "keras.optimizers.Nadam's schedule is beta_1*(1 - 0.5*0.96**t)"),
            "optax": ("momentum_decay", math.inf, "optax.nadam has no schedule: mu_t = b1"),
        }.get(self.convention)
        if fixed is not None and float(decay) != fixed[1]:
            raise ValueError(
                f"NAdam: momentum_decay={decay!r} has no counterpart in convention={self.convention!r} "
                f"({fixed[2]}); expected momentum_decay={fixed[1]!r}"
            )
        if self.convention == "keras" and not self.decoupled_weight_decay:
            raise ValueError(
                "NAdam: decoupled_weight_decay=False has no counterpart in convention='keras' "
                "(Keras's weight decay is decoupled); expected decoupled_weight_decay=True"
            )
        if self.convention == "optax" and self.weight_decay != 0 and not self.decoupled_weight_decay:
            raise ValueError(
                f"NAdam: weight_decay={self.weight_decay!r} with convention='optax': optax.nadam has no "
                "weight decay (optax.nadamw has decoupled weight decay: decoupled_weight_decay=True); "
                "expected weight_decay=0 or decoupled_weight_decay=True"
            )
        object.__setattr__(self, "momentum_decay", float(decay))

    def slot_names(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def scalars_converge(self) -> bool:
        r"""Whether the scalars settle within 900,000 steps (see the module docstring): the schedule
        :math:`0.96^{t\psi}` must fall below :math:`2^{-54}` and :math:`\beta_1^t` too."""
        beta1, psi = self.betas[0], self.momentum_decay
        if self.convention in ("keras", "optax") or beta1 == 0.0 or psi == math.inf:
            schedule_steps = 0.0
        elif psi == 0.0:
            schedule_steps = 0.0  # a constant mu_t = beta1 / 2
        else:
            schedule_steps = 54 * math.log(2.0) / (psi * -math.log(SCHEDULE_BASE))
        product_steps = 0.0 if beta1 == 0.0 else 54 * math.log(2.0) / -math.log(beta1)
        return max(schedule_steps, product_steps) <= _CONVERGE_WITHIN

    def run_constants(self) -> dict[str, Any]:
        r"""``betas[0]`` and ``momentum_decay``: :math:`\prod_{i \le t} \mu_i` is computed from the
        step count with their current values, where torch.optim.NAdam multiplies each step's own
        :math:`\mu_t` into ``state["mu_product"]`` (and Keras's Nadam into ``_u_product``), so a
        scheduler changing ``betas[0]`` mid-run (OneCycleLR's and CyclicLR's ``cycle_momentum``)
        gives other numbers from then on."""
        return {"betas[0]": self.betas[0], "momentum_decay": self.momentum_decay}

    # -- the scalars: uniopt's and one beside it per convention -----------------------------------
    def uniopt_scalars(self, step: int, lr: float) -> NAdamScalars:
        beta1, beta2 = self.betas
        mu = momentum_schedule(beta1, self.momentum_decay, step)
        mu_next = momentum_schedule(beta1, self.momentum_decay, step + 1)
        product = _product("float64", beta1, self.momentum_decay, step)
        return NAdamScalars(
            weight_decay=self.weight_decay,
            decay=1.0 - lr * self.weight_decay,
            beta1=beta1,
            one_minus_beta1=1.0 - beta1,
            beta2=beta2,
            one_minus_beta2=1.0 - beta2,
            grad_coef=(1.0 - mu) / (1.0 - product),
            momentum_coef=mu_next / (1.0 - product * mu_next),
            inv_sqrt_bc2=1.0 / math.sqrt(bias_correction(beta2, step)),
            eps=self.eps,
            lr=lr,
        )

    def torch_scalars(self, step: int, lr: float) -> NAdamTorchScalars:
        beta1, beta2 = self.betas
        t = float(step)  # torch's step is a float32 tensor read back as a Python float
        mu = momentum_schedule(beta1, self.momentum_decay, t)
        mu_next = momentum_schedule(beta1, self.momentum_decay, t + 1)
        # the scalars read the product only through 1 - product: far ahead (LIMIT_STEP) it is 0
        # there, where torch's float32 product may sit in the subnormal range (1 - it is still 1)
        mu_product = _product("torch", beta1, self.momentum_decay, step)
        mu_product_next = mu_product * mu_next
        return NAdamTorchScalars(
            weight_decay=self.weight_decay,
            decay=1 - lr * self.weight_decay,
            lerp_weight=1 - beta1,
            one=1.0,
            beta2=beta2,
            one_minus_beta2=1 - beta2,
            bc2=1 - beta2**t,
            eps=self.eps,
            grad_value=(-lr * (1.0 - mu) / (1.0 - mu_product)),
            momentum_value=(-lr * mu_next) / (1.0 - mu_product_next),
        )

    def keras_scalars(self, step: int, lr: float) -> NAdamKerasScalars:
        beta1, beta2 = self.betas
        narrow = keras_nadam_scalars(beta1, beta2, step, narrow=True)
        wide = keras_nadam_scalars(beta1, beta2, step, narrow=False)
        return NAdamKerasScalars(self.weight_decay, lr, self.eps, *narrow, *wide)

    def optax_scalars(self, step: int, lr: float) -> NAdamOptaxScalars:
        beta1, beta2 = self.betas
        return NAdamOptaxScalars(
            weight_decay=self.weight_decay,
            beta1=beta1,
            one_minus_beta1=1.0 - beta1,
            beta2=beta2,
            one_minus_beta2=1.0 - beta2,
            inv_bc1=1.0 / bias_correction(beta1, step),
            inv_bc1_next=1.0 / bias_correction(beta1, step + 1),
            inv_bc2=1.0 / bias_correction(beta2, step),
            inv_bc1_f32=1.0 / float(float32_bias_correction(beta1, step)),
            inv_bc1_next_f32=1.0 / float(float32_bias_correction(beta1, step + 1)),
            inv_bc2_f32=1.0 / float(float32_bias_correction(beta2, step)),
            eps=self.eps,
            neg_lr=-lr,
            beta1_bfloat16=round_to_dtype(beta1, "bfloat16"),
            beta1_float16=round_to_dtype(beta1, "float16"),
            beta1_float32=round_to_dtype(beta1, "float32"),
        )

    # -- the rules: uniopt's (the paper's algorithm box) and one beside it per convention ----------
    def uniopt_rule(
        self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any
    ) -> tuple[Array, dict[str, Array]]:
        r"""Dozat's Algorithm 2 with PyTorch's schedule: :math:`\bar m_t = c_g g_t + c_m m_t`,
        :math:`\theta_t = \theta_{t-1} - \eta \bar m_t / (\sqrt{\hat v_t} + \epsilon)`."""
        _refuse_complex(param, xp)
        decay = self.nonzero("weight_decay")
        coupled = sc.weight_decay if decay and not self.decoupled_weight_decay else None
        g = prepare_grad(grad, param, xp, maximize=self.maximize, weight_decay=coupled)
        if decay and self.decoupled_weight_decay:
            param = xp.multiply(param, sc.decay)
        m, v = adam_moments(widened(slots["exp_avg"], param, xp), slots["exp_avg_sq"], g, sc, xp)
        nesterov = xp.add(xp.multiply(g, sc.grad_coef), xp.multiply(m, sc.momentum_coef))
        denom = xp.add(xp.multiply(xp.sqrt(v), sc.inv_sqrt_bc2), sc.eps)
        return xp.subtract(param, xp.multiply(xp.divide(nesterov, denom), sc.lr)), {
            "exp_avg": stored(m, slots["exp_avg"], xp),
            "exp_avg_sq": v,
        }

    def torch_rule(self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any):
        """``torch.optim.NAdam`` (``_single_tensor_nadam``), op for op without its fused kernels."""
        _refuse_complex(param, xp)
        l2 = sc.weight_decay if self.nonzero("weight_decay") and not self.decoupled_weight_decay else None
        if self.nonzero("weight_decay") and self.decoupled_weight_decay:
            param = xp.multiply(param, sc.decay)
        g = prepare_grad(grad, param, xp, maximize=self.maximize, weight_decay=l2)
        m = widened(slots["exp_avg"], param, xp)
        if 1.0 - self.betas[0] < 0.5:  # lerp_(g, 1 - beta1): its two forms by the weight
            m = xp.add(m, xp.multiply(xp.subtract(g, m), sc.lerp_weight))
        else:
            # torch's kernel takes 1 - weight in the parameter's dtype (exact: weight >= 0.5),
            # not the float64 1 - (1 - beta1), which rounds otherwise in 67% of float32 cases
            m = xp.subtract(g, xp.multiply(xp.subtract(g, m), xp.subtract(sc.one, sc.lerp_weight)))
        v = xp.multiply(slots["exp_avg_sq"], sc.beta2)
        v = xp.add(v, xp.multiply(xp.multiply(g, sc.one_minus_beta2), g))
        denom = xp.add(xp.sqrt(divide_by_scalar(v, sc.bc2, xp)), sc.eps)
        param = xp.add(param, xp.divide(xp.multiply(g, sc.grad_value), denom))
        param = xp.add(param, xp.divide(xp.multiply(m, sc.momentum_value), denom))
        return param, {"exp_avg": stored(m, slots["exp_avg"], xp), "exp_avg_sq": v}

    def keras_rule(self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any):
        """``keras.optimizers.Nadam.update_step`` after the base optimizer's weight decay."""
        _refuse_complex(param, xp)
        g = prepare_grad(grad, param, xp, maximize=self.maximize, weight_decay=None)
        if self.nonzero("weight_decay"):
            param = keras_weight_decay(param, sc.weight_decay, sc.lr, xp)
        width = "_32" if float_bits(param, xp) <= 32 else "_64"  # Keras's scalars in that dtype
        omb1, omb2, u_next, omup_next, omu, omup, bc2 = (
            getattr(sc, name + width)
            for name in (
                "one_minus_beta1",
                "one_minus_beta2",
                "u_next",
                "one_minus_u_product_next",
                "one_minus_u",
                "one_minus_u_product",
                "bc2",
            )
        )
        m = widened(slots["exp_avg"], param, xp)
        m = xp.add(m, xp.multiply(xp.subtract(g, m), omb1))
        v = xp.add(
            slots["exp_avg_sq"], xp.multiply(xp.subtract(xp.multiply(g, g), slots["exp_avg_sq"]), omb2)
        )
        m_hat = xp.add(
            divide_by_scalar(xp.multiply(u_next, m), omup_next, xp),
            divide_by_scalar(xp.multiply(omu, g), omup, xp),
        )
        v_hat = divide_by_scalar(v, bc2, xp)
        step = xp.divide(xp.multiply(m_hat, sc.lr), xp.add(xp.sqrt(v_hat), sc.eps))
        return xp.subtract(param, step), {"exp_avg": stored(m, slots["exp_avg"], xp), "exp_avg_sq": v}

    def optax_rule(self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any):
        """``optax.nadam``/``optax.nadamw``: ``scale_by_adam(nesterov=True)``, then decayed
        weights (NAdamW), then ``-lr``."""
        _refuse_complex(param, xp)
        g = prepare_grad(grad, param, xp, maximize=self.maximize, weight_decay=None)
        # m = b1*m + (1-b1)*g, with b1*m formed in the stored dtype (optax's weak-typed product)
        mu = slots["exp_avg"]
        b1 = sc.beta1 if mu.dtype == param.dtype else getattr(sc, f"beta1_{dtype_name(mu.dtype)}")
        m = xp.add(stored_product(mu, b1, param, xp), xp.multiply(g, sc.one_minus_beta1))
        v = ema(slots["exp_avg_sq"], xp.multiply(g, g), sc.beta2, sc.one_minus_beta2, xp)
        narrow = float_bits(param, xp) <= 32  # optax's bias corrections are float32 there
        inv_bc1, inv_bc1_next, inv_bc2 = (
            (sc.inv_bc1_f32, sc.inv_bc1_next_f32, sc.inv_bc2_f32)
            if narrow
            else (sc.inv_bc1, sc.inv_bc1_next, sc.inv_bc2)
        )
        m_hat = xp.add(
            xp.multiply(xp.multiply(m, inv_bc1_next), sc.beta1),
            xp.multiply(xp.multiply(g, inv_bc1), sc.one_minus_beta1),
        )
        update = xp.divide(m_hat, xp.add(xp.sqrt(xp.multiply(v, inv_bc2)), sc.eps))
        if self.decoupled_weight_decay and self.nonzero("weight_decay"):  # optax.add_decayed_weights
            update = xp.add(update, xp.multiply(param, sc.weight_decay))
        return xp.add(param, xp.multiply(update, sc.neg_lr)), {"exp_avg": stored(m, mu, xp), "exp_avg_sq": v}


def _refuse_complex(param: Array, xp: Any) -> None:
    if is_complex(param, xp):
        raise ValueError(
            f"NAdam: complex parameters are not supported (got dtype {param.dtype}); expected a real "
            "floating dtype"
        )
