r"""Adafactor (Shazeer and Stern 2018, arXiv 1804.04235, Algorithm 4 with update clipping).

With :math:`g_t \leftarrow \pm g_t` (``maximize``), :math:`\hat\beta_{2,t} = 1 - t^{c}`
(``beta2_decay`` :math:`c \le 0`), relative step size :math:`\rho_t = \min(\eta, 1/\sqrt t)` and
parameter scale :math:`\alpha_t = \max(\epsilon_2, \mathrm{RMS}(\theta_{t-1}))\,\rho_t`, for a
parameter of two or more dimensions (factored over its last two, rows :math:`n`, columns :math:`m`):

.. math::

    R_t &= \hat\beta_{2,t} R_{t-1} + (1-\hat\beta_{2,t})\,\mathrm{mean}_{cols}(g_t^2), \qquad
    C_t = \hat\beta_{2,t} C_{t-1} + (1-\hat\beta_{2,t})\,\mathrm{mean}_{rows}(g_t^2) \\
    \hat V_t &= R_t C_t / \max(\mathrm{mean}_{rows}(R_t), \epsilon_1)

(for 0-d and 1-d parameters :math:`\hat V_t = \hat\beta_{2,t} \hat V_{t-1} + (1-\hat\beta_{2,t})g_t^2`),
then :math:`U_t = g_t / \sqrt{\max(\hat V_t, \epsilon_1^2)}`,
:math:`\hat U_t = U_t / \max(1, \mathrm{RMS}(U_t)/d)` and
:math:`\theta_t = (1 - \eta\lambda)\theta_{t-1} - \alpha_t \hat U_t`. This is torch.optim.Adafactor's
algorithm (``torch/optim/_adafactor.py``): :math:`\epsilon_1` (default the dtype's machine epsilon)
bounds the variance estimate, not the squared gradient as in the paper, Keras and optax; ``lr`` is
the cap of :math:`\rho_t` and the decoupled weight decay's rate.

Slots (state shapes differ from the parameter's, see :meth:`Adafactor.slot_shape`): ``row_var``
:math:`(\ldots, n, 1)`, ``col_var`` :math:`(\ldots, 1, m)` for parameters of 2+ dimensions,
``variance`` (the parameter's shape) for the others; the slot a parameter does not use is a 0-d
placeholder (zero, never read).

**Not elementwise.** Row and column means and the RMS are sums in one defined order
(:func:`uniopt._math.sum_pairwise_axis`: pairwise halving along one axis with elementwise adds),
divided by the count with a correctly rounded division that no compiler turns into a reciprocal
multiply (:func:`uniopt._math.divide_exactly`), so NumPy, torch, TensorFlow and XLA give the same
bits. The natives sum in their own orders, so they are compared within a measured bound.

**Empty parameters** (a zero in the shape) are left as they are, with their slots: their RMS would
be ``0/0``. torch.optim.Adafactor raises ``ZeroDivisionError`` for them.

Op sequence of ``convention="uniopt"`` (host float64 scalars ``beta2 = 1 - t^c``,
``one_minus_beta2 = t^c``, ``rho = min(lr, 1/sqrt(t))``, ``decay = 1 - lr*wd``, ``inv_d = 1/d``,
rounded once): ``scale = max(eps2, rms(p)) * rho`` (before the decay, as torch);
``p = p * decay`` (only when ``wd != 0``); ``gg = g*g``; factored:
``R = R*beta2 + mean(gg, -1)*(1-beta2)``, ``C = C*beta2 + mean(gg, -2)*(1-beta2)``,
``v = (R*C) / max(mean(R, -2), eps1)``; else ``V = V*beta2 + gg*(1-beta2)``, ``v = V``;
``u = g / sqrt(max(v, eps1*eps1))``; ``clip = max(1, rms(u)*inv_d)``;
``p = p - u*(scale/clip)``. ``rms(x) = sqrt(sum(x*x)/numel)``, ``mean`` = ``sum / count``; a
float16 tensor's sums, norms, means and RMS (every convention's) are computed in float32 and rounded
once to float16 (``uniopt._math.accumulated``: its counts and sums of squares overflow float16).

Conventions (``convention=``), each with its framework's defaults for arguments left out:

* ``"torch"`` (``torch.optim.Adafactor``: lr :math:`10^{-2}`, ``beta2_decay=-0.8``,
  ``eps=(None, 1e-3)``, ``d=1``, ``weight_decay=0``): uniopt's formula in torch's op order: row and
  column means as ``norm(g, dim)**2 / count`` (torch squares a rounded norm), moving averages as
  ``torch.lerp`` (``R + w*(mean - R)`` for ``w = t^c < 0.5``, else ``mean - (mean - R)*(1 - w)``,
  without torch's fused multiply-add), ``u = (1/sqrt(max(v, eps1^2))) * g`` (torch's ``rsqrt`` is
  exactly ``1/sqrt``), ``alpha = max(eps2, norm(p)/sqrt(numel)) * rho`` and
  ``denom = max(1, norm(u)/(sqrt(numel)*d))`` in the parameter dtype (torch: in float64 on the host,
  from norms rounded to the dtype), ``p = p + u*(-alpha/denom)`` (torch: one FMA).
* ``"keras"`` (``keras.optimizers.Adafactor``, ``keras/src/optimizers/adafactor.py``; lr
  :math:`10^{-3}`, ``epsilon_1=1e-30``, ``epsilon_2=1e-3``, ``clip_threshold=1``): slots ``r``
  :math:`(\ldots, n)`, ``c`` :math:`(\ldots, m)` and ``v`` (the parameter's shape: Keras stores the
  reconstructed variance there for factored parameters too); Keras's decoupled weight decay
  ``p - (p*wd)*lr`` first; then in the parameter dtype, as Keras computes in-graph:
  ``rho = min(lr, 1/sqrt(t))`` and ``beta = 1 - t^c`` (float32 ``powf`` for parameters of 32 bits
  or fewer), ``alpha = max(eps2, rms(p)) * rho``, ``gg = g*g + eps1`` (:math:`\epsilon_1` on the
  squared gradient), ``r = beta*r + (1-beta)*mean(gg, -1)``, ``c = beta*c + (1-beta)*mean(gg, -2)``,
  ``v = (r / mean(r, -1))[..., None] * c[..., None, :]`` or ``v = beta*v + (1-beta)*gg``,
  ``u = g / sqrt(v)``, ``u = u / max(1, rms(u)/d)``, ``p = p - alpha*u``. ``epsilon_2`` goes through
  float32 (``ops.cast``), lr and weight decay too (Keras's variables). ``relative_step`` is a no-op in
  Keras (``rho_t`` is ``min(lr, 1/sqrt(t))`` either way) and has no field here.
* ``"optax"`` (``optax.adafactor``, ``optax/_src/alias.py`` chaining
  ``factorized.scale_by_factored_rms``, ``clip_by_block_rms``, ``scale_by_learning_rate``,
  ``scale_by_param_block_rms``, ``ema`` (momentum), ``add_decayed_weights``, ``scale(-1)``; lr
  ``None`` = 1, ``eps=1e-30``, ``min_dim_size_to_factor=128``): no relative step size; factored only
  where the two largest dimensions are both >= ``min_dim_size_to_factor``, over those two axes
  (wherever they are), slots ``v_row`` (the shape without the largest axis), ``v_col`` (without the
  second largest) and ``v``, the unused ones of shape ``(1,)`` as optax keeps them;
  ``beta = 1 - powf(float32(t - offset), float32(c))`` in float32 for every dtype;
  ``gg = g*g + eps1``, ``v_row = beta*v_row + (1-beta)*mean(gg, d0)``, likewise ``v_col`` over
  ``d1``, ``u = g * rsqrt(v_row * (1/mean(v_row))) * rsqrt(v_col)`` (or ``g * rsqrt(v)``), with
  ``rsqrt(x) = sqrt(1/x)`` (XLA's ``x**-0.5`` is its own approximation, 0.07% of results off the
  correctly rounded value) and every ``mean`` as ``sum * (1/count)``, as XLA computes ``jnp.mean``;
  ``u = u * (1/max(1, rms(u)*(1/d)))``; ``u = lr*u``; ``u = u * max(rms(p), eps2)``;
  ``m = (1-mom)*u + mom*m``, ``u = m`` (``momentum``; stored as float32, optax's
  ``dtype_momentum``); ``u = u + wd*p``; ``p = p - u``. Divisions by a broadcast value are XLA's
  reciprocal multiplies (measured: jit always; eagerly too for a 0-d or ``(1,)`` divisor, so for 2-d
  parameters; eager optax divides a batched ``v_row`` of 3+-d parameters by its mean exactly).
  Not reproduced: XLA's contraction of ``a*b + c`` into FMAs under jit.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

from ._math import (
    accumulated,
    divide_exactly,
    ema,
    float_bits,
    is_complex,
    keras_float32,
    keras_weight_decay,
    mean_axis,
    norm,
    prepare_grad,
    rms,
    rounded_as,
    size,
    sum_pairwise,
    sum_pairwise_axis,
)
from ._spec import Array, Spec, select
from ._validate import check_bool, check_interval
from .scalar_ops import HOST

__all__ = ["Adafactor", "AdafactorScalars"]


def _machine_eps(x: Array, xp: Any) -> float:
    """``finfo(x.dtype).eps`` for the real floating dtypes, read from the dtype's width (bfloat16
    told apart by name): torch's default :math:`\\epsilon_1`."""
    if "bfloat16" in str(x.dtype):
        return 2.0**-7
    return {64: 2.0**-52, 32: 2.0**-23, 16: 2.0**-10}[float_bits(x, xp)]


def _expand(x: Array, axis: int, xp: Any) -> Array:
    """``expand_dims(x, axis)`` as a reshape (the TF namespace has reshape only)."""
    shape = [int(s) for s in x.shape]
    axis = axis % (len(shape) + 1)
    return xp.reshape(x, tuple([*shape[:axis], 1, *shape[axis:]]))


# == the spec =======================================================================================


class AdafactorScalars(NamedTuple):
    one: float
    beta2: float  # uniopt: 1 - t^c
    one_minus_beta2: float  # uniopt: t^c; torch: lerp's weight
    lerp_small: bool  # torch: t^c < 0.5 (torch.lerp's branch)
    rho: float  # uniopt, torch: min(lr, 1/sqrt(t))
    eps1: float  # eps[0] (0.0 when None: the dtype's machine epsilon is used)
    eps1_sq: float  # eps[0]**2 in float64 (torch squares on the host)
    eps2: float  # eps[1]
    decay: float  # 1 - lr*wd
    lr: float
    weight_decay: float
    d: float  # clipping threshold (keras, optax: divided by)
    inv_d: float  # uniopt: 1/d
    keras_rho_f32: float  # keras, 32 bits or fewer: min(float32 lr, 1/sqrt(float32 t)) in float32
    keras_beta2_f32: float  # keras, 32 bits or fewer: 1 - powf(t, c)
    keras_one_minus_beta2_f32: float  # 1 - beta2, in float32
    keras_rho_64: float  # keras, float64
    keras_beta2_64: float
    keras_one_minus_beta2_64: float
    optax_beta2: float  # optax: 1 - powf(float32(t - offset), float32(c)), float32 in every dtype
    optax_one_minus_beta2: float  # float32(1 - that)
    momentum: float  # optax
    one_minus_momentum: float
    momentum_f32: float  # optax, float64 parameters: momentum as the float32 accumulator's op sees it


@dataclasses.dataclass(frozen=True)
class Adafactor(Spec):
    """Adafactor with factored second moments (see the module docstring).

    Raises ``ValueError`` for ``lr < 0``, ``beta2_decay > 0``, ``eps`` not a pair
    ``(None or >= 0, >= 0)``, ``d < 1`` (``convention="keras"``: ``d <= 0``; Keras's
    ``clip_threshold`` may be below 1), ``weight_decay < 0``, non-bool ``maximize``, an optax-only
    argument with another convention, and, in the rule, complex parameters.
    """

    name: ClassVar[str] = "Adafactor"
    reference: ClassVar[str] = "Shazeer and Stern 2018, arXiv 1804.04235, Algorithm 4"
    elementwise: ClassVar[bool] = False
    real_only: ClassVar[bool] = True  # torch.optim.Adafactor refuses complex parameters too
    keras_float32_fields: ClassVar[tuple[str, ...]] = ("lr", "weight_decay")

    conventions: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "uniopt": {"lr": 1e-2, "eps": (None, 1e-3)},
        "torch": {"lr": 1e-2, "eps": (None, 1e-3)},
        "keras": {"lr": 1e-3, "eps": (1e-30, 1e-3)},
        # optax.adafactor(learning_rate=None) scales by nothing: lr = 1 is the same bits
        "optax": {"lr": 1.0, "eps": (1e-30, 1e-3), "min_dim_size_to_factor": 128},
    }
    lacking: ClassVar[Mapping[str, tuple[str, Mapping[str, str]]]] = {
        convention: (native, {"momentum": "", "decay_offset": ""})
        for convention, native in (
            ("uniopt", "uniopt's Adafactor (torch.optim.Adafactor's algorithm)"),
            ("torch", "torch.optim.Adafactor"),
            ("keras", "keras.optimizers.Adafactor"),
        )
    }

    lr: float = None  # type: ignore[assignment]  # None: the convention's default
    beta2_decay: float = -0.8
    eps: tuple[float | None, float] = None  # type: ignore[assignment]
    d: float | None = 1.0
    weight_decay: float = 0.0
    maximize: bool = False
    # optax.adafactor's own arguments (refused with the other conventions where they would matter)
    momentum: float = 0.0
    decay_offset: int = 0
    min_dim_size_to_factor: int | None = None
    factored: bool = True
    multiply_by_parameter_scale: bool = True
    convention: str = "uniopt"

    # -- validation --------------------------------------------------------------------------------
    def _check(self) -> None:
        name = self.name
        check_interval(name, "beta2_decay", self.beta2_decay, None, 0.0)
        eps = self.eps
        if not isinstance(eps, (tuple, list)) or len(eps) != 2:
            raise ValueError(f"{name}: eps={eps!r} is not a pair; expected (eps1 or None, eps2)")
        eps1 = None if eps[0] is None else check_interval(name, "eps[0]", eps[0], 0.0)
        eps2 = check_interval(name, "eps[1]", eps[1], 0.0)
        object.__setattr__(self, "eps", (eps1, eps2))
        if self.d is None:
            if self.convention != "optax":
                raise ValueError(
                    f"{name}: d=None (no update clipping) with convention={self.convention!r}; "
                    "only optax.adafactor (clipping_threshold=None) disables clipping; expected d >= 1"
                )
        elif self.convention == "keras":  # Keras divides by any clip_threshold (its tests use 0.5)
            check_interval(name, "d", self.d, 0.0, low_open=True)
        else:
            check_interval(name, "d", self.d, 1.0)
        check_interval(name, "weight_decay", self.weight_decay, 0.0)
        check_interval(name, "momentum", self.momentum, 0.0, 1.0)
        if isinstance(self.decay_offset, bool) or not isinstance(self.decay_offset, int):
            raise ValueError(f"{name}: decay_offset={self.decay_offset!r} is not an int")
        check_bool(name, "factored", self.factored)
        check_bool(name, "multiply_by_parameter_scale", self.multiply_by_parameter_scale)
        if self.convention != "optax":
            for field, ok in (
                ("min_dim_size_to_factor", self.min_dim_size_to_factor is None),
                ("factored", self.factored),
                ("multiply_by_parameter_scale", self.multiply_by_parameter_scale),
            ):
                if not ok:
                    raise ValueError(
                        f"{name}: {field}={getattr(self, field)!r} with convention="
                        f"{self.convention!r}: only optax.adafactor has it; expected the default"
                    )
        else:
            size = self.min_dim_size_to_factor
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ValueError(f"{name}: min_dim_size_to_factor={size!r}; expected an int >= 0")

    # -- state -----------------------------------------------------------------------------------
    def slot_names(self) -> tuple[str, ...]:
        if self.convention == "keras":
            return ("r", "c", "v")
        if self.convention == "optax":
            return ("v_row", "v_col", "v") + (("momentum",) if self.momentum != 0 else ())
        return ("row_var", "col_var", "variance")

    def factored_axes(self, shape: tuple[int, ...]) -> tuple[int, int] | None:
        """``(rows, cols)`` axes of the factored second moment for a parameter of ``shape``, or
        ``None`` where it is kept whole. uniopt, torch, keras: the last two axes of any parameter of
        2+ dimensions. optax (``_factored_dims``): ``(d1, d0)``, the second largest and the largest
        axis (``np.argsort`` order, stable for up to 16 dimensions), when the second largest is at
        least ``min_dim_size_to_factor``; the row statistic is the mean over ``d0``, the column
        statistic the mean over ``d1``."""
        shape = tuple(int(s) for s in shape)
        if self.convention != "optax":
            return (len(shape) - 2, len(shape) - 1) if len(shape) >= 2 else None
        if not self.factored or len(shape) < 2:
            return None
        import numpy as np

        order = np.argsort(shape)  # optax's own call: the same order for ties
        if shape[order[-2]] < self.min_dim_size_to_factor:
            return None
        return int(order[-2]), int(order[-1])

    def slot_shape(self, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of slot ``name`` for a parameter of ``shape`` (the proposed ``Spec`` hook;
        the base's default would be ``shape`` itself)."""
        shape = tuple(int(s) for s in shape)
        axes = self.factored_axes(shape)
        if self.convention == "optax":
            placeholder: tuple[int, ...] = (1,)  # optax's jnp.zeros((1,)) for the unused ones
            if name == "momentum":
                return shape
            if axes is None:
                return shape if name == "v" else placeholder
            d1, d0 = axes
            if name == "v_row":
                return shape[:d0] + shape[d0 + 1 :]
            if name == "v_col":
                return shape[:d1] + shape[d1 + 1 :]
            return placeholder
        if self.convention == "keras":
            if name == "v":
                return shape  # Keras keeps the reconstructed variance, parameter-sized
            if axes is None:
                return ()  # Keras's 0-d dummy variables
            return shape[:-1] if name == "r" else shape[:-2] + shape[-1:]
        if axes is None:
            return shape if name == "variance" else ()
        if name == "row_var":
            return (*shape[:-1], 1)
        if name == "col_var":
            return (*shape[:-2], 1, *shape[-1:])
        return ()

    def slots_in_use(self, shape: tuple[int, ...]) -> tuple[str, ...]:
        """The slots the rule reads and writes for a parameter of ``shape``; the others are
        placeholders (``()`` zeros for uniopt, torch and Keras, optax's ``(1,)``), passed through.
        torch.optim.Adafactor stores no entry for them."""
        factored = self.factored_axes(tuple(int(s) for s in shape)) is not None
        if self.convention == "keras":
            return ("r", "c", "v") if factored else ("v",)
        if self.convention == "optax":
            kept = ("v_row", "v_col") if factored else ("v",)
            return kept + (("momentum",) if self.momentum != 0 else ())
        return ("row_var", "col_var") if factored else ("variance",)

    def scalars_converge(self) -> bool:
        # 1 - t^c and 1/sqrt(t) keep changing in float32 until t is about 2^31
        return False

    # -- host scalars ------------------------------------------------------------------------------
    def uniopt_scalars(self, step: int, lr: float) -> AdafactorScalars:
        """Every convention's scalars at 1-based ``step`` in float64 (Keras's and optax's float32
        in-graph values emulated one float32 op at a time)."""
        return self._scalars(step, lr, HOST)

    # -- the same scalars in-graph (uniopt.scalar_ops), for a step counted on the device ----------
    def step_terms(self, step: int) -> tuple[()]:
        """No tabulated terms: none of the scalars reaches a limit (``t^c``, ``1/sqrt(t)``), so
        :meth:`scalars_from_terms` computes all of them from the step itself, ``pow`` and ``sqrt``
        included (the scalar namespace's, the C library's ``pow``/``powf`` on the host)."""
        return ()

    def scalars_from_terms(
        self, terms: tuple[Any, ...], step: Any, lr: Any, history: Any, ops: Any
    ) -> tuple[AdafactorScalars, Any]:
        return self._scalars(step, lr, ops), history

    def _scalars(self, step: Any, lr: Any, ops: Any) -> AdafactorScalars:
        """The scalars with the scalar operations ``ops`` (:mod:`uniopt.scalar_ops`): ``w = t^c``
        (``pow``), ``rho = min(lr, 1/sqrt(t))``, ``decay = 1 - lr*wd``; Keras's float32 values as
        float64 operations each rounded to float32 (exact for ``+ - * /`` and ``sqrt``), its
        ``powf`` as ``pow32``; optax's ``1 - powf(float32(t - offset), float32(c))``. ``step`` is the
        host's int step or an adapter's float64 value; the constant fields are host floats."""
        t = ops.const(step)
        one = ops.const(1.0)
        c = ops.const(self.beta2_decay)
        w = ops.pow(t, c)
        rho = ops.minimum(lr, ops.divide(one, ops.sqrt(t)))
        eps1, eps2 = self.eps
        d = math.inf if self.d is None else float(self.d)
        f32 = ops.float32
        keras: tuple[Any, ...] = (0.0,) * 6
        if self.convention == "keras":
            t32 = f32(t)
            rho32 = ops.minimum(f32(lr), f32(ops.divide(one, f32(ops.sqrt(t32)))))
            beta32 = f32(one - ops.pow32(t32, c))  # 1 - powf(float32 t, float32 c)
            beta64 = one - w  # ops.power in float64 (C pow)
            keras = (rho32, beta32, f32(one - beta32), rho, beta64, one - beta64)
        optax_beta: Any = 0.0
        optax_omb: Any = 0.0
        if self.convention == "optax":
            count = t - ops.const(self.decay_offset)  # optax's count - offset + 1, count 0-based
            optax_beta = f32(one - ops.pow32(f32(count), c))
            optax_omb = f32(one - optax_beta)
        return AdafactorScalars(
            one=1.0,
            beta2=one - w,
            one_minus_beta2=w,
            lerp_small=abs(w) < 0.5,
            rho=rho,
            eps1=0.0 if eps1 is None else float(eps1),
            eps1_sq=0.0 if eps1 is None else float(eps1) * float(eps1),
            eps2=float(keras_float32(eps2) if self.convention == "keras" else eps2),
            decay=one - lr * ops.const(self.weight_decay),
            lr=lr,
            weight_decay=float(self.weight_decay),
            d=d,
            inv_d=1.0 / d,
            keras_rho_f32=keras[0],
            keras_beta2_f32=keras[1],
            keras_one_minus_beta2_f32=keras[2],
            keras_rho_64=keras[3],
            keras_beta2_64=keras[4],
            keras_one_minus_beta2_64=keras[5],
            optax_beta2=optax_beta,
            optax_one_minus_beta2=optax_omb,
            momentum=float(self.momentum),
            one_minus_momentum=1.0 - float(self.momentum),
            momentum_f32=keras_float32(self.momentum),
        )

    # -- rules -------------------------------------------------------------------------------------
    def rule(
        self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any
    ) -> tuple[Array, dict[str, Array]]:
        """The convention's rule; a parameter with no element is returned unchanged with its slots
        (its RMS would be ``0/0``), after the complex check."""
        if size(param) == 0:
            self._grad(param, grad, xp)  # complex parameters are refused all the same
            return param, dict(slots)
        return super().rule(param, grad, slots, sc, xp)

    def _grad(self, param: Array, grad: Array, xp: Any) -> Array:
        if is_complex(param, xp):
            raise ValueError(
                "Adafactor: complex parameters are not supported (torch.optim.Adafactor refuses "
                "them; the factored moments have no complex form); expected real floating "
                "parameters"
            )
        return prepare_grad(grad, param, xp, maximize=self.maximize, weight_decay=None)

    def _eps1(self, param: Array, sc: Any, xp: Any) -> tuple[Array, Array]:
        """``(eps1, eps1**2)`` as 0-d arrays: the given value (squared on the host, as torch), or
        the dtype's machine epsilon (a power of two: its square is exact)."""
        if self.eps[0] is not None:
            return sc.eps1, sc.eps1_sq
        eps = _machine_eps(param, xp)
        return xp.full_like(sc.one, eps), xp.full_like(sc.one, eps * eps)

    def uniopt_rule(
        self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any
    ) -> tuple[Array, dict[str, Array]]:
        """torch.optim.Adafactor's algorithm in uniopt's op order (module docstring)."""
        g = self._grad(param, grad, xp)
        one = sc.one
        scale = xp.multiply(xp.maximum(sc.eps2, rms(param, xp, one)), sc.rho)
        if self.nonzero("weight_decay"):
            param = xp.multiply(param, sc.decay)
        eps1, eps1_sq = self._eps1(param, sc, xp)
        gg = xp.multiply(g, g)
        new = dict(slots)
        if len(param.shape) >= 2:
            row = ema(
                slots["row_var"], mean_axis(gg, -1, xp, one, keepdims=True), sc.beta2, sc.one_minus_beta2, xp
            )
            col = ema(
                slots["col_var"], mean_axis(gg, -2, xp, one, keepdims=True), sc.beta2, sc.one_minus_beta2, xp
            )
            row_mean = xp.maximum(mean_axis(row, -2, xp, one, keepdims=True), eps1)
            v = divide_exactly(xp.multiply(row, col), row_mean, xp)
            new.update(row_var=row, col_var=col)
        else:
            v = new["variance"] = ema(slots["variance"], gg, sc.beta2, sc.one_minus_beta2, xp)
        u = xp.divide(g, xp.sqrt(xp.maximum(v, eps1_sq)))
        clip = xp.maximum(one, xp.multiply(rms(u, xp, one), sc.inv_d))
        step = divide_exactly(scale, clip, xp)
        return xp.subtract(param, xp.multiply(u, step)), new

    def torch_rule(
        self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any
    ) -> tuple[Array, dict[str, Array]]:
        """``torch/optim/_adafactor.py``, ``_single_tensor_adafactor``, op for op where torch works
        on the device; its float64 host arithmetic on the norms is done in the parameter dtype."""
        g = self._grad(param, grad, xp)
        one = sc.one
        n = size(param)
        sqrt_n = xp.full_like(one, math.sqrt(n))
        norm_p = norm(param, xp)  # torch.norm: float16 accumulated in float32
        alpha = xp.multiply(xp.maximum(sc.eps2, divide_exactly(norm_p, sqrt_n, xp)), sc.rho)
        if self.nonzero("weight_decay"):
            param = xp.multiply(param, sc.decay)  # param.mul_(1 - lr * weight_decay)
        eps1, eps1_sq = self._eps1(param, sc, xp)
        w = sc.one_minus_beta2

        def lerp(start: Array, end: Array) -> Array:  # torch.lerp, without its fused multiply-add
            return select(
                sc.lerp_small,
                lambda: xp.add(start, xp.multiply(w, xp.subtract(end, start))),
                lambda: xp.subtract(end, xp.multiply(xp.subtract(end, start), xp.subtract(one, w))),
                xp,
            )

        def norm_sq_mean(axis: int) -> Array:  # torch.norm(g, dim).square_().div_(size)
            root = norm(g, xp, axis)
            count = xp.full_like(accumulated(one, xp), float(g.shape[axis]))  # float16: in float32
            return rounded_as(divide_exactly(accumulated(xp.multiply(root, root), xp), count, xp), g, xp)

        new = dict(slots)
        if len(param.shape) >= 2:
            row = lerp(slots["row_var"], norm_sq_mean(-1))
            col = lerp(slots["col_var"], norm_sq_mean(-2))
            row_mean = xp.maximum(mean_axis(row, -2, xp, one, keepdims=True), eps1)
            v = divide_exactly(xp.multiply(row, col), row_mean, xp)  # (row_var @ col_var) / ...
            new.update(row_var=row, col_var=col)
        else:
            v = new["variance"] = lerp(slots["variance"], xp.multiply(g, g))
        update = xp.multiply(xp.divide(one, xp.sqrt(xp.maximum(v, eps1_sq))), g)  # rsqrt_().mul_(g)
        norm_u = norm(update, xp)
        d = float(self.d)
        denom = xp.maximum(one, divide_exactly(norm_u, xp.full_like(one, math.sqrt(n) * d), xp))
        step = divide_exactly(xp.negative(alpha), denom, xp)
        return xp.add(param, xp.multiply(update, step)), new

    def keras_rule(
        self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any
    ) -> tuple[Array, dict[str, Array]]:
        """``keras.optimizers.Adafactor.update_step`` after Keras's decoupled weight decay, op for
        op (means in the spec's order)."""
        g = self._grad(param, grad, xp)
        one = sc.one
        if self.nonzero("weight_decay"):  # Keras's base optimizer, before update_step
            param = keras_weight_decay(param, sc.weight_decay, sc.lr, xp)
        narrow = float_bits(param, xp) <= 32
        if narrow:
            rho, beta, omb = sc.keras_rho_f32, sc.keras_beta2_f32, sc.keras_one_minus_beta2_f32
        else:
            rho, beta, omb = sc.keras_rho_64, sc.keras_beta2_64, sc.keras_one_minus_beta2_64
        alpha = xp.multiply(xp.maximum(sc.eps2, rms(param, xp, one)), rho)
        gg = xp.add(xp.multiply(g, g), sc.eps1)
        new = dict(slots)
        shape = tuple(int(s) for s in param.shape)
        if len(shape) >= 2:
            r = xp.add(xp.multiply(beta, slots["r"]), xp.multiply(omb, mean_axis(gg, -1, xp, one)))
            c = xp.add(xp.multiply(beta, slots["c"]), xp.multiply(omb, mean_axis(gg, -2, xp, one)))
            r_norm = divide_exactly(r, mean_axis(r, -1, xp, one, keepdims=True), xp)
            v = xp.multiply(_expand(r_norm, -1, xp), _expand(c, -2, xp))
            new.update(r=r, c=c)
        else:
            v = xp.add(xp.multiply(beta, slots["v"]), xp.multiply(omb, gg))
        new["v"] = v
        u = xp.divide(g, xp.sqrt(v))
        clip = xp.maximum(one, divide_exactly(rms(u, xp, one), sc.d, xp))
        u = divide_exactly(u, clip, xp)
        return xp.subtract(param, xp.multiply(alpha, u)), new

    def optax_rule(
        self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any
    ) -> tuple[Array, dict[str, Array]]:
        """``optax.adafactor``'s chain (module docstring), XLA's arithmetic as compiled under
        ``jax.jit``: means and divisions by a broadcast value as multiplications by a rounded
        reciprocal."""
        g = self._grad(param, grad, xp)
        one = sc.one
        shape = tuple(int(s) for s in param.shape)
        beta, omb = sc.optax_beta2, sc.optax_one_minus_beta2

        def inv(count: int) -> Array:  # XLA folds 1/count in the dtype (float32 for float16)
            wide_one = accumulated(one, xp)
            return xp.divide(wide_one, xp.full_like(wide_one, float(count)))

        def mean(x: Array, axis: int, keepdims: bool = False) -> Array:  # jnp.mean under XLA
            total = sum_pairwise_axis(accumulated(x, xp), axis, xp, keepdims=keepdims)
            return rounded_as(xp.multiply(total, inv(x.shape[axis])), x, xp)

        def block_rms(x: Array) -> Array:  # sqrt(jnp.mean(abs_sq(x))): the squares in x's dtype
            n = size(x)
            # the squares in x's dtype, then widened, in the first halving (of=): no stored squares
            total = sum_pairwise(x, xp, of=lambda t: accumulated(xp.multiply(t, t), xp))
            return xp.sqrt(rounded_as(xp.multiply(total, inv(n)), x, xp))

        def rsqrt(x: Array) -> Array:  # x ** -0.5
            return xp.sqrt(xp.divide(one, x))

        new = dict(slots)
        gg = xp.add(xp.multiply(g, g), sc.eps1)
        axes = self.factored_axes(shape)
        if axes is not None:
            d1, d0 = axes
            v_row = xp.add(xp.multiply(beta, slots["v_row"]), xp.multiply(omb, mean(gg, d0)))
            v_col = xp.add(xp.multiply(beta, slots["v_col"]), xp.multiply(omb, mean(gg, d1)))
            reduced_d1 = d1 - 1 if d1 > d0 else d1
            row_col_mean = mean(v_row, reduced_d1, keepdims=True)
            row_factor = rsqrt(xp.multiply(v_row, xp.divide(one, row_col_mean)))
            col_factor = rsqrt(v_col)
            u = xp.multiply(xp.multiply(g, _expand(row_factor, d0, xp)), _expand(col_factor, d1, xp))
            new.update(v_row=v_row, v_col=v_col)
        else:
            v = new["v"] = xp.add(xp.multiply(beta, slots["v"]), xp.multiply(omb, gg))
            u = xp.multiply(g, rsqrt(v))
        if self.d is not None:  # clip_by_block_rms
            clip = xp.maximum(one, xp.multiply(block_rms(u), _reciprocal(sc.d, one, xp)))
            u = xp.multiply(u, xp.divide(one, clip))
        u = xp.multiply(sc.lr, u)  # scale_by_learning_rate (lr = 1: learning_rate=None)
        if self.multiply_by_parameter_scale:  # scale_by_param_block_rms(min_scale=eps2)
            u = xp.multiply(u, xp.maximum(block_rms(param), sc.eps2))
        if self.nonzero("momentum"):  # ema(momentum, debias=False, accumulator_dtype=float32)
            m = slots["momentum"]
            if float_bits(param, xp) > 32:  # decay * t in float32 (t is the float32 accumulator)
                f32 = _float32_of(xp)
                kept = xp.astype(xp.multiply(xp.astype(m, f32), xp.astype(sc.momentum_f32, f32)), param.dtype)
            else:
                kept = xp.multiply(sc.momentum, m)
            u = xp.add(xp.multiply(sc.one_minus_momentum, u), kept)
            stored = u
            if float_bits(param, xp) > 32:
                stored = xp.astype(xp.astype(u, _float32_of(xp)), param.dtype)
            new["momentum"] = stored
        if self.nonzero("weight_decay"):  # add_decayed_weights (optax skips a zero constant)
            u = xp.add(u, xp.multiply(sc.weight_decay, param))
        return xp.subtract(param, u), new  # scale(-1), apply_updates: p + (-u)


def _reciprocal(value: Array, one: Array, xp: Any) -> Array:
    """``1 / value`` of a 0-d host scalar, as XLA folds a division by a constant."""
    return xp.divide(one, value)


def _float32_of(xp: Any) -> Any:
    return xp.float32
