r"""Muon, momentum orthogonalized by Newton-Schulz (Jordan et al. 2024, "Muon: An optimizer for hidden
layers in neural networks", https://kellerjordan.github.io/posts/muon/; Liu et al. 2025, arXiv
2502.16982 for the RMS-matching learning rate).

For a 2-D parameter :math:`\theta \in \mathbb{R}^{A\times B}` with momentum :math:`\mu`, learning
rate :math:`\eta`, decoupled weight decay :math:`\lambda` and Newton-Schulz coefficients
:math:`(a, b, c)`:

.. math::

    M_t &= \mu M_{t-1} + (1-\mu) g_t, \qquad
    U_t = \begin{cases} \mu M_t + (1-\mu) g_t & \text{nesterov} \\ M_t & \text{otherwise}\end{cases} \\
    X_0 &= U_t / \max(\|U_t\|_F, \epsilon) \quad (\text{transposed first when } A > B) \\
    X_{k+1} &= a X_k + \bigl(b\, X_k X_k^\top + c\, (X_k X_k^\top)^2\bigr) X_k,
        \qquad k = 0, \dots, n-1 \quad (n = \texttt{ns\_steps}) \\
    \theta_t &= (1 - \eta\lambda)\,\theta_{t-1} - \eta\, s(A, B)\, X_n

(``X_n`` transposed back). :math:`s(A,B)` is the learning-rate adjustment by shape: ``"original"``
:math:`\sqrt{\max(1, A/B)}` (Keller Jordan's), ``"match_rms_adamw"``
:math:`r\sqrt{\max(A, B)}` with :math:`r` = ``rms_rate`` = 0.2 (Moonlight's), or ``"none"``
(:math:`s = 1`). One state slot, ``momentum_buffer`` (:math:`M`), shaped like the parameter; the
``keras`` and ``optax`` conventions add ``exp_avg_sq`` for the Adam step of non-2-D parameters.

**Not elementwise; matrix products.** The Frobenius norm sums in the spec's defined order
(:func:`uniopt._math.norm`, every backend the same bits). The matrix products are chosen by the
field ``matmul``: ``"backend"`` (the default) is ``xp.matmul``, and no two libraries (nor one
library across CPU kinds, shapes or GPUs) sum a dot product in the same order (NumPy/OpenBLAS, MKL,
oneDNN and XLA block the sums differently; NumPy even turns ``X @ X.T`` into a ``syrk``), so Muon
is then **not bitwise across backends**: the spec fixes every op around the products (which scalar
multiplies what, where each rounding happens, the norm's order), and the distance between two
backends is the products' rounding, carried through the steps. ``"exact"`` is
:func:`matmul_exact`, the elementwise products summed in a defined pairwise order: the same bits
on every backend, at 7x to 180x the cost of a BLAS product (measured in
``docs/optimizers/muon.md``, with the per-operation decision table and the measured distances of
``"backend"``: on torch against NumPy at most 2.6e-7 (float32) and 4.6e-16 (float64) of the
largest value, normwise, over the conformance streams). Everything that is not a product is the
same bits on every backend (the non-2-D Adam steps of the ``keras`` and ``optax`` conventions
included).

Choices where the frameworks disagree:

* momentum: the exponential average :math:`M = \mu M + (1-\mu) g` (torch.optim.Muon's ``lerp_``,
  optax); Keras keeps the sum :math:`M = \mu M + g` (a scale of :math:`1/(1-\mu)`, which the
  normalisation removes up to ``eps``). optax bias-corrects :math:`M` (``1/(1-\mu^t)``).
* normalisation: torch divides by ``max(norm, eps)`` (``clamp(min=eps)``, eps :math:`10^{-7}`);
  Keras and optax by ``norm + eps`` (Keras hard-codes :math:`10^{-7}`, optax's ``eps`` is
  :math:`10^{-8}` and also Adam's).
* quintic: torch ``addmm(A, A, A, beta=b, alpha=c)`` is :math:`bA + c(AA)`; Keras and optax write
  ``b * A + c * A @ A``, which Python parses as :math:`bA + (cA)A`: another rounding.
* the shape adjustment: torch's ``"original"`` is :math:`\sqrt{\max(1, A/B)}` for a tensor of
  shape ``(A, B)`` (``nn.Linear`` stores ``(out, in)``); optax's width scaling is
  :math:`\sqrt{\max(1, \mathrm{fan\_out}/\mathrm{fan\_in})}` with ``fan_in = shape[0]``, i.e.
  :math:`\sqrt{\max(1, B/A)}` (a jax ``Dense`` kernel is ``(in, out)``). Both mean "fan-out over
  fan-in" in their framework's layout, so each convention keeps its own. Keras has no
  ``"original"``: its ``rms_rate`` (default 0.2) gives Moonlight's, ``rms_rate=None`` none.
* weight decay: always decoupled and multiplied by the unadjusted :math:`\eta`; torch multiplies
  ``p * (1 - lr*wd)`` first, Keras subtracts ``(p*wd)*lr`` first, optax adds ``wd * p`` to the
  update before the ``-lr`` scaling.
* precision: torch.optim.Muon runs the whole Newton-Schulz iteration in **bfloat16**
  (``grad.bfloat16()``, whatever the parameter dtype) with float32 accumulation; Keras and optax
  in the parameter's dtype. The ``torch`` convention rounds to bfloat16 exactly where torch does
  (``xp.astype`` through the namespace's ``bfloat16``, values held in float32); uniopt's own
  convention keeps the parameter's dtype (a float64 run is then a float64-accurate yardstick).
* parameters that are not 2-D: torch.optim.Muon refuses them (``ValueError``), and so do the
  ``uniopt`` and ``torch`` conventions (at ``init`` and in the rule). Keras and optax step them
  with Adam(W) instead (below), as do those conventions. No convention reshapes higher-rank
  tensors (optax's ``muon_weight_dimension_numbers``, Keras's 3-D "flatten" are not offered).

Op sequence of ``convention="uniopt"`` (host scalars ``1 - mu``, ``1 - lr*wd`` in float64, rounded
once; ``s`` computed on the host from the static shape and rounded once; ``@`` is ``xp.matmul``,
``.T`` ``xp.matrix_transpose``): ``m = m*mu + g*(1-mu)``; ``u = m*mu + g*(1-mu)`` (nesterov) else
``m``; ``x = u.T`` when ``A > B``; ``x = x / max(norm(x), eps)`` (a division of every element);
``ns_steps`` times ``A = x @ x.T``, ``B = A*b + (A @ A)*c``, ``x = x*a + B @ x``; ``x = x.T`` back;
``p = p * (1 - lr*wd)`` (only when ``wd != 0``); ``p = p - x * (lr * s)`` (``lr * s`` one rounded
product of 0-d arrays). Defaults: torch.optim.Muon's, lr :math:`10^{-3}`, weight decay 0.1,
momentum 0.95, nesterov, coefficients (3.4445, -4.7750, 2.0315), eps :math:`10^{-7}`, 5 steps,
``"original"``.

Conventions (``convention=``), each with its framework's defaults for arguments left out:

* ``"torch"`` (``torch.optim.Muon``, ``torch/optim/_muon.py``: ``_single_tensor_muon``,
  ``_zeropower_via_newtonschulz``, ``_adjust_lr``): ``m = lerp(m, g, 1-mu)`` and ``u = lerp(g, m,
  mu)`` written as torch's lerp kernel computes them (``start + (end-start)*w`` for ``w < 0.5``,
  else ``end - (end-start)*(1 - w)`` with ``1 - w`` taken from ``w`` rounded to the parameter
  dtype); then bfloat16 as torch: ``x = bf(u)`` (through float32, as torch converts float64), ``x =
  x.T`` when ``A > B``, ``x = bf(x / max(bf(norm(x)), bf(eps)))`` (the norm's squares summed in
  ``bf(u)``'s own element order, before the transposition), ``ns_steps`` times ``A = bf(x @
  x.T)``, ``B = bf(A*b + (A @ A)*c)``, ``x = bf(x*a + B @ x)`` (``a, b, c`` rounded once to float32
  from the Python floats, whatever the parameter's dtype, as torch's bfloat16 kernels take them;
  each ``addmm`` rounded once to bfloat16 from float32, as measured against torch 2.13's CPU
  kernels: 0 mismatches over 4 shapes; with ``matmul="backend"`` a namespace may form these products
  with its own bfloat16 kernels, :func:`_newton_schulz_bf16`: uniopt.torch's are torch's, the sums in
  their order), where ``bf`` rounds float32 to bfloat16 and back; ``x.T`` back; ``p = p * (1 -
  lr*wd)``; ``p = p + x * (-(lr * s))``. torch's CPU kernels fuse ``lerp_`` and ``add_(alpha=)``
  into multiply-adds (measured: 0 mismatches against an FMA model), which the spec rounds twice;
  torch also takes ``lr * s`` in float64 where the spec multiplies the rounded ``lr`` and ``s``.
  ``adjust_lr_fn`` ``"none"`` and ``rms_rate != 0.2`` are refused (torch.optim.Muon has neither),
  and so are ``ns_steps >= 100``.
* ``"keras"`` (``keras.optimizers.Muon``, ``keras/src/optimizers/muon.py``; lr :math:`10^{-3}`,
  weight decay 0.004, ``adam_weight_decay`` 0.004, ``epsilon`` (Adam's) :math:`10^{-7}`,
  ``rms_rate`` 0.2, so ``adjust_lr_fn="match_rms_adamw"``): weight decay Keras's
  ``p = p - (p*wd)*lr`` first (``_apply_weight_decay``; ``adam_weight_decay`` for non-2-D
  parameters); 2-D: ``m = m + (g + m*(mu-1))``, ``u = g + m*mu`` (nesterov) else ``m``;
  ``x = x / (norm(x) + 1e-7)``; ``A = x @ x.T``, ``B = A*b + (A*c) @ A``, ``x = x*a + B @ x``;
  ``p = p - ((lr*x) * sqrt32(max(A, B))) * rms_rate`` (``sqrt32``: Keras's ``ops.sqrt`` of an
  int, float32), or ``p = p - lr*x`` for ``adjust_lr_fn="none"`` (``rms_rate=None``). Keras's
  float64 2-D variables fail there (``lr_adjust`` multiplies float64 by float32:
  ``InvalidArgumentError``); the spec widens the float32 root. non-2-D: Keras's
  ``_adamw_update_step``, which is :class:`uniopt.Adam`'s keras rule with ``adam_betas`` and
  ``adam_eps`` at the learning rate ``lr * adam_lr_ratio`` (Keras's ``learning_rate *
  self.adam_lr_ratio``: a float32 product of its float32 learning rate, then cast to the
  variable's dtype; the spec rounds ``lr * float32(adam_lr_ratio)`` to float32 in the rule for
  wider parameters, and once to the dtype for narrower ones, where Keras rounds through float32
  first); the weight decay before it takes the unscaled ``lr``, as Keras's
  ``_apply_weight_decay`` does. Keras's NS eps is not an argument: ``eps`` other than
  :math:`10^{-7}` and ``adjust_lr_fn="original"`` are refused. Keras also steps a 2-D variable
  with Adam when its path names an embedding (``exclude_embeddings``) or matches a regex of
  ``exclude_layers``: choosing the variables is an adapter's business (``uniopt.tf.Muon`` reads
  the paths), the step is the spec's, asked for with ``adam_2d=True`` (below). lr, weight decays
  go through float32 as Keras holds them.
* ``"optax"`` (``optax.contrib.muon``, ``optax/contrib/_muon.py``: ``scale_by_muon``,
  ``orthogonalize_via_newton_schulz``, ``scale_by_shape``, then ``add_decayed_weights``,
  ``scale_by_learning_rate``; weight decay 0, eps :math:`10^{-8}` shared with Adam, beta 0.95;
  optax has no default learning rate, uniopt's is taken): 2-D: ``m = m*mu + g*(1-mu)``,
  ``u = (m * (1/(1-mu^(t+1))))*mu + (g * (1/(1-mu^t)))*(1-mu)`` (nesterov) else
  ``m * (1/(1-mu^t))`` (optax's bias corrections, float32 at jax's default for parameters of 32
  bits or fewer, reciprocals on the host as in :class:`uniopt.NAdam`'s optax convention: optax's
  ``tree.bias_correction`` is a jitted division by a broadcast scalar, which XLA turns into a
  multiplication by its reciprocal); ``x = x * (1 / (norm(x) + eps))`` (optax writes
  ``x /= norm + eps``; XLA multiplies by the reciprocal, measured eagerly: 0 mismatches, a true
  division 678 of 2048); ``A = x @ x.T``, ``B = A*b + (A*c) @ A``, ``x = x*a + B @ x``;
  ``u = x * s`` with optax's ``s`` (``"original"``: ``sqrt(max(1, B/A))``, ``"match_rms_adamw"``:
  ``sqrt(max(A, B)) * rms_rate`` = ``consistent_rms``, each in float32 for parameters of 32 bits or
  fewer); ``u = u + p*wd`` (only when ``wd != 0``); ``p = p + u*(-lr)``. non-2-D:
  ``optax.adamw(nesterov=nesterov, eps=eps, weight_decay=adam_weight_decay)``, i.e.
  :class:`uniopt.NAdam`'s optax rule (nesterov) or :class:`uniopt.AdamW`'s, except that a 0-d
  parameter is divided by its bias corrections (there is no broadcast, and XLA divides: measured,
  multiplying by the reciprocal moved 1049 of 3000 values). ``adjust_lr_fn="none"`` is refused
  (optax always scales), and so is ``adam_eps`` other than ``eps``. optax runs its Newton-Schulz
  loop as one compiled ``fori_loop`` even eagerly (XLA fuses it its own way), so no convention can
  follow it op for op there; with optax's compiled loop substituted, the spec's other ops gave
  optax's bits over 20 steps (measured with optax 0.2.8 eagerly).

The Adam step of a 2-D parameter (``adam_2d``): the ``keras`` and ``optax`` conventions step
every parameter whose shape is not 2-D with their Adam step; with ``adam_2d=True`` they step the
2-D ones with it too (the field :meth:`Muon.adam_routed` reads). That is what Keras does for the
variables its ``exclude_embeddings`` and ``exclude_layers`` pick, and optax for a matrix whose
``muon_weight_dimension_numbers`` entry is ``None``: an adapter that routes some matrices to Adam
runs those with ``spec.replace(adam_2d=True)`` (both slots are in every parameter's state
already). The ``uniopt`` and ``torch`` conventions have no Adam step and refuse ``adam_2d=True``.
``adam_lr_ratio`` (Keras's, default 1) scales the Adam step's learning rate in the ``keras``
convention only (optax's ``adam_learning_rate`` is an absolute rate, not a ratio: the ``optax``
convention refuses a ratio other than 1; ``uniopt`` and ``torch`` never read it).

Complex parameters are refused (torch.optim.Muon refuses them too). An empty matrix (a zero
dimension) is not moved; its scale :math:`s` is taken as 1 (torch.optim.Muon's ``_adjust_lr``
divides by zero there).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

from ._math import (
    bias_correction,
    divide_by_scalar,
    dtype_name,
    ema,
    float32_bias_correction,
    float_bits,
    is_complex,
    keras_weight_decay,
    materialized,
    norm,
    round_to_dtype,
    stored,
    stored_product,
    sum_pairwise_axis,
    widened,
)
from ._spec import Array, Spec, _device, select
from ._validate import check_betas, check_bool, check_interval, check_real
from .adam import keras_adam_scalars

__all__ = ["MATMULS", "Muon", "MuonScalars", "matmul_exact", "round_to_bfloat16"]

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
"""Keller Jordan's quintic coefficients, the default of all three frameworks."""

ADJUST_LR_FNS = ("original", "match_rms_adamw", "none")

MATMULS = ("backend", "exact")
"""The two ways a spec forms its matrix products (``Muon.matmul``): the backend's ``xp.matmul``,
or :func:`matmul_exact`, the elementwise products summed in one defined order."""

EXACT_BLOCK = 1 << 22
""":func:`matmul_exact` forms at most this many elementwise products at once (16 MiB of float32),
a block of output rows at a time; the block size does not change any sum."""


class MuonScalars(NamedTuple):
    lr: float
    neg_lr: float  # optax: the update is scaled by -lr
    decay: float  # uniopt, torch: 1 - lr * weight_decay
    weight_decay: float  # keras (before the step), optax (added to the update)
    momentum: float
    one_minus_momentum: float  # 1 - mu in float64 (uniopt, optax; torch's first lerp weight)
    momentum_minus_one: float  # keras: m * (momentum - 1), the Python float
    lerp_m_complement_32: float  # torch, lerp(m, g, 1-mu) when 1-mu >= 0.5: 1 - float32(1-mu)
    lerp_m_complement_64: float  # ... for float64: 1 - (1-mu)
    lerp_u_complement_32: float  # torch, lerp(g, m, mu) when mu >= 0.5: 1 - float32(mu)
    lerp_u_complement_64: float  # ... for float64: 1 - mu
    lerp_m_small_32: bool  # torch: lerp(m, g, 1-mu) takes its first formula (|float32(1-mu)| < 0.5)
    lerp_m_small_64: bool  # ... for float64: |1-mu| < 0.5
    lerp_u_small_32: bool  # torch: lerp(g, m, mu) takes its first formula (|float32(mu)| < 0.5)
    lerp_u_small_64: bool  # ... for float64: |mu| < 0.5
    ns_a: float
    ns_b: float
    ns_c: float
    eps: float  # Newton-Schulz eps
    rms_rate: float  # keras: multiplied in the parameter dtype
    inv_bc: float  # optax: 1 / (1 - mu^t), float64
    inv_bc_next: float  # optax: 1 / (1 - mu^(t+1)), float64
    inv_bc_f32: float  # optax at jax's default: 1 / float32(1 - mu^t)
    inv_bc_next_f32: float
    # -- the Adam step of non-2-D parameters (keras, optax) --
    adam_beta1: float
    adam_one_minus_beta1: float
    adam_beta2: float
    adam_one_minus_beta2: float
    adam_eps: float
    adam_weight_decay: float
    adam_inv_bc1: float  # optax, float64
    adam_inv_bc1_next: float
    adam_inv_bc2: float
    adam_inv_bc1_f32: float  # optax at jax's default
    adam_inv_bc1_next_f32: float
    adam_inv_bc2_f32: float
    adam_bc1: float  # optax, 0-d parameters (a true division there): 1 - beta1^t, float64
    adam_bc1_next: float
    adam_bc2: float
    adam_bc1_f32: float  # ... float32 at jax's default
    adam_bc1_next_f32: float
    adam_bc2_f32: float
    adam_lr: float  # the Adam step's lr: keras lr * float32(adam_lr_ratio) (exact in float64); lr
    keras_bc1: float  # keras, 32 bits or fewer: 1 - beta1^t in float32
    keras_sqrt_bc2: float
    keras_bc1_64: float  # keras, float64
    keras_sqrt_bc2_64: float
    # -- momentum_buffer stored narrower (optax's mu_dtype): the decays rounded to its dtype --
    momentum_bfloat16: float
    momentum_float16: float
    momentum_float32: float  # beside float64 parameters
    adam_beta1_bfloat16: float
    adam_beta1_float16: float
    adam_beta1_float32: float


def round_to_bfloat16(x: Array, xp: Any) -> Array:
    r"""``x`` (float32) rounded to the nearest bfloat16 (ties to even) and held again in float32:
    ``xp.astype`` through the namespace's ``bfloat16`` (``ml_dtypes.bfloat16`` for NumPy, which
    has none of its own). The conversion is correctly rounded in NumPy (ml_dtypes), torch, jax and
    TensorFlow, so every backend gets the same bits. (Veltkamp's split ``c = x * 65537``,
    ``c - (c - x)`` gives the same values with float32 multiplies and subtractions alone, measured
    on every bfloat16 tie and 4.6 million random normal floats; not used, as it overflows above
    :math:`5\cdot 10^{33}` and a compiler may fuse it.)

    Raises ``ValueError`` for a namespace without bfloat16 (``array_api_strict``: the array API
    standard has no bfloat16), naming it."""
    bf16 = getattr(xp, "bfloat16", None)
    if bf16 is None:
        module = getattr(xp, "__name__", type(xp).__name__)
        if "numpy" not in module:
            raise ValueError(
                f"Muon: convention='torch' rounds to bfloat16 as torch.optim.Muon does, and the "
                f"namespace {module} has no bfloat16 dtype (the array API standard defines none); run "
                "it on NumPy (ml_dtypes), torch, jax or TensorFlow, or use convention='uniopt'"
            )
        try:
            import ml_dtypes  # NumPy's bfloat16 (jax and TensorFlow depend on it)
        except ImportError as error:
            raise ValueError(
                "Muon: convention='torch' on NumPy rounds to bfloat16 through ml_dtypes, which is not "
                "installed (pip install ml-dtypes)"
            ) from error
        bf16 = ml_dtypes.bfloat16
    return xp.astype(xp.astype(x, bf16), x.dtype)


@dataclasses.dataclass(frozen=True)
class Muon(Spec):
    """Muon: momentum orthogonalized by a Newton-Schulz iteration (see the module docstring).

    Slots per parameter (its shape and dtype): ``momentum_buffer``, and ``exp_avg_sq`` with the
    ``keras`` and ``optax`` conventions (read only for the parameters the Adam step takes:
    :meth:`adam_routed`). Raises ``ValueError`` for ``lr < 0``, ``weight_decay < 0``,
    ``momentum`` outside :math:`[0, 1]` (optax: :math:`[0, 1)`), ``eps <= 0``,
    ``ns_coefficients`` not three finite floats, ``ns_steps`` not an int in :math:`[0, 100)`, an
    unknown ``adjust_lr_fn``, ``rms_rate <= 0``, ``matmul`` other than ``"backend"`` or
    ``"exact"``, ``adam_lr_ratio`` not a finite float ``>= 0``, ``adam_2d`` not a bool, a
    convention's refusals (module docstring: ``adam_2d=True`` with ``uniopt`` and ``torch``,
    ``adam_lr_ratio != 1`` with ``optax``), and, at ``init`` and in the rule, parameters that
    are not 2-D (``uniopt``, ``torch``) and complex parameters.
    """

    name: ClassVar[str] = "Muon"
    reference: ClassVar[str] = (
        "Jordan et al. 2024, kellerjordan.github.io/posts/muon; Liu et al. 2025, arXiv 2502.16982"
    )
    elementwise: ClassVar[bool] = False
    keras_float32_fields: ClassVar[tuple[str, ...]] = ("lr", "weight_decay", "adam_weight_decay")
    # the slots only the Adam step reads and writes (the Muon step passes them through unchanged)
    adam_slots: ClassVar[tuple[str, ...]] = ("exp_avg_sq",)

    conventions: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        # adam_*: unused by uniopt and torch (they refuse non-2-D parameters)
        "uniopt": {
            "weight_decay": 0.1,
            "eps": 1e-7,
            "adjust_lr_fn": "original",
            "adam_eps": 1e-8,
            "adam_weight_decay": 0.0,
        },
        "torch": {
            "weight_decay": 0.1,
            "eps": 1e-7,
            "adjust_lr_fn": "original",
            "adam_eps": 1e-8,
            "adam_weight_decay": 0.0,
        },
        "keras": {
            "weight_decay": 0.004,
            "eps": 1e-7,
            "adjust_lr_fn": "match_rms_adamw",
            "adam_eps": 1e-7,
            "adam_weight_decay": 0.004,
        },
        # optax: adam_eps defaults to eps (one argument), see _resolve_convention
        "optax": {"weight_decay": 0.0, "eps": 1e-8, "adjust_lr_fn": "original", "adam_weight_decay": 0.0},
    }

    lower_precision_slots: ClassVar[tuple[str, ...]] = ("momentum_buffer",)  # optax's mu_dtype

    # torch.optim.Muon's arguments, in its positional order

    lr: float = 1e-3
    weight_decay: float = None  # type: ignore[assignment]  # None: the convention's default
    momentum: float = 0.95
    nesterov: bool = True
    ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS
    eps: float = None  # type: ignore[assignment]
    ns_steps: int = 5
    adjust_lr_fn: str = None  # type: ignore[assignment]
    # Moonlight's factor (Keras's rms_rate, optax's consistent_rms; torch fixes 0.2)
    rms_rate: float = 0.2
    # the Adam step of non-2-D parameters (keras, optax; unused by uniopt and torch, which refuse them)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = None  # type: ignore[assignment]  # optax: eps (one eps for both)
    adam_weight_decay: float = None  # type: ignore[assignment]
    # how the matrix products are formed: "backend" (xp.matmul) or "exact" (matmul_exact)
    matmul: str = "backend"
    convention: str = "uniopt"
    # the Adam step's learning rate over lr (Keras's adam_lr_ratio; keras convention only)
    adam_lr_ratio: float = 1.0
    # step 2-D parameters with the Adam step too (keras, optax: what Keras's exclude_embeddings and
    # exclude_layers, optax's None dimension numbers ask for one matrix); see adam_routed
    adam_2d: bool = False

    def _resolve_convention(self) -> None:
        """The convention's defaults; optax's ``adam_eps`` defaults to ``eps`` (one argument)."""
        if getattr(self, "convention", "uniopt") == "optax" and self.adam_eps is None:
            eps = 1e-8 if self.eps is None else self.eps
            object.__setattr__(self, "adam_eps", eps)
        super()._resolve_convention()

    def _check(self) -> None:
        name, convention = self.name, self.convention
        check_interval(name, "weight_decay", self.weight_decay, 0.0)
        high_open = convention == "optax"  # optax divides by 1 - momentum^t
        check_interval(name, "momentum", self.momentum, 0.0, 1.0, high_open=high_open)
        check_bool(name, "nesterov", self.nesterov)
        coefficients = self.ns_coefficients
        if not isinstance(coefficients, (tuple, list)) or len(coefficients) != 3:
            raise ValueError(
                f"Muon: ns_coefficients={coefficients!r} is not three numbers; expected (a, b, c), "
                f"e.g. {NS_COEFFICIENTS}"
            )
        coefficients = tuple(check_real(name, f"ns_coefficients[{i}]", c) for i, c in enumerate(coefficients))
        object.__setattr__(self, "ns_coefficients", coefficients)
        check_interval(name, "eps", self.eps, 0.0, low_open=True)
        steps = self.ns_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or not 0 <= steps < 100:
            raise ValueError(
                f"Muon: ns_steps={steps!r} is out of range; expected an int, 0 <= ns_steps < 100"
            )
        if self.adjust_lr_fn not in ADJUST_LR_FNS:
            raise ValueError(
                f"Muon: adjust_lr_fn={self.adjust_lr_fn!r} is not supported; expected one of "
                + ", ".join(repr(f) for f in ADJUST_LR_FNS)
            )
        check_interval(name, "rms_rate", self.rms_rate, 0.0, low_open=True)
        if self.matmul not in MATMULS:
            raise ValueError(
                f"Muon: matmul={self.matmul!r} is not supported; expected one of "
                + ", ".join(repr(m) for m in MATMULS)
            )
        check_interval(name, "adam_lr_ratio", self.adam_lr_ratio, 0.0)
        object.__setattr__(self, "adam_betas", check_betas(name, self.adam_betas, "adam_betas"))
        check_interval(name, "adam_eps", self.adam_eps, 0.0, low_open=True)
        check_interval(name, "adam_weight_decay", self.adam_weight_decay, 0.0)
        no_adam = (
            self.adam_2d,
            "adam_2d=True",
            "this convention has no Adam step (the keras and optax conventions step parameters with Adam)",
        )
        refusals = {
            "uniopt": [no_adam],
            "torch": [
                no_adam,
                (
                    self.adjust_lr_fn == "none",
                    "adjust_lr_fn='none'",
                    "torch.optim.Muon scales by 'original' or 'match_rms_adamw'",
                ),
                (self.rms_rate != 0.2, f"rms_rate={self.rms_rate!r}", "torch.optim.Muon fixes 0.2"),
            ],
            "keras": [
                (
                    self.adjust_lr_fn == "original",
                    "adjust_lr_fn='original'",
                    "keras.optimizers.Muon has no width scaling (rms_rate=None is adjust_lr_fn='none')",
                ),
                (self.eps != 1e-7, f"eps={self.eps!r}", "keras.optimizers.Muon hard-codes 1e-7"),
            ],
            "optax": [
                (
                    self.adjust_lr_fn == "none",
                    "adjust_lr_fn='none'",
                    "optax.contrib.muon always scales by shape",
                ),
                (
                    self.adam_eps != self.eps,
                    f"adam_eps={self.adam_eps!r}",
                    "optax.contrib.muon passes eps to Adam",
                ),
                (
                    self.adam_lr_ratio != 1,
                    f"adam_lr_ratio={self.adam_lr_ratio!r}",
                    "optax.contrib.muon takes adam_learning_rate, an absolute rate, not a ratio",
                ),
            ],
        }
        for refused, what, why in refusals.get(convention, []):
            if refused:
                raise ValueError(f"Muon: {what} with convention={convention!r}: {why}")

    def underflowing(self, round_to: Any) -> list[str]:
        """:meth:`Spec.underflowing`, leaving out the Adam fields where the convention never reads
        them (``uniopt`` and ``torch`` refuse the parameters Adam would step)."""
        no_adam = self.convention in ("uniopt", "torch")
        unused = ("adam_eps=", "adam_weight_decay=", "adam_lr_ratio=") if no_adam else ()
        return [s for s in super().underflowing(round_to) if not s.startswith(unused)]

    def slot_names(self) -> tuple[str, ...]:
        if self.convention in ("keras", "optax"):
            return ("momentum_buffer", "exp_avg_sq")
        return ("momentum_buffer",)

    def init_slot(self, name: str, param: Array, xp: Any) -> Array:
        self._check_param(param, xp)
        return xp.zeros_like(param)

    def adam_routed(self, shape: tuple[int, ...]) -> bool:
        """Whether the rule steps a parameter of ``shape`` with the convention's Adam step (the
        ``keras`` and ``optax`` conventions: a shape that is not 2-D, or any with ``adam_2d``);
        the Muon step otherwise. ``exp_avg_sq`` is read and written only for such a parameter
        (Keras keeps its ``velocity`` for those variables alone)."""
        if self.convention not in ("keras", "optax"):
            return False
        return self.adam_2d or len(tuple(shape)) != 2

    # -- host scalars -------------------------------------------------------------------------------
    def uniopt_scalars(self, step: int, lr: float) -> MuonScalars:
        """Every convention's scalars at 1-based ``step``, in float64 (Keras's and optax's float32
        values only where the convention is theirs)."""
        import numpy as np

        mu, wd = float(self.momentum), float(self.weight_decay)
        b1, b2 = self.adam_betas
        optax = self.convention == "optax"
        keras = self.convention == "keras"

        def bc64(beta: float, t: int) -> float:  # optax's bias corrections (only read there)
            return bias_correction(beta, t) if optax else 1.0

        def bc32(beta: float, t: int) -> float:  # ... at jax's default, float32
            return float(float32_bias_correction(beta, t)) if optax else 1.0

        kbc = keras_adam_scalars(b1, b2, step) if keras else (1.0, 1.0, 1.0, 1.0)
        a, b, c = self.ns_coefficients
        return MuonScalars(
            lr=lr,
            neg_lr=-lr,
            decay=1.0 - lr * wd,
            weight_decay=wd,
            momentum=mu,
            one_minus_momentum=1.0 - mu,
            momentum_minus_one=mu - 1.0,
            lerp_m_complement_32=1.0 - float(np.float32(1.0 - mu)),
            lerp_m_complement_64=1.0 - (1.0 - mu),
            lerp_u_complement_32=1.0 - float(np.float32(mu)),
            lerp_u_complement_64=1.0 - mu,
            lerp_m_small_32=abs(float(np.float32(1.0 - mu))) < 0.5,
            lerp_m_small_64=abs(1.0 - mu) < 0.5,
            lerp_u_small_32=abs(float(np.float32(mu))) < 0.5,
            lerp_u_small_64=abs(mu) < 0.5,
            ns_a=a,
            ns_b=b,
            ns_c=c,
            eps=float(self.eps),
            rms_rate=float(self.rms_rate),
            inv_bc=1.0 / bc64(mu, step),
            inv_bc_next=1.0 / bc64(mu, step + 1),
            inv_bc_f32=1.0 / bc32(mu, step),
            inv_bc_next_f32=1.0 / bc32(mu, step + 1),
            adam_beta1=b1,
            adam_one_minus_beta1=1.0 - b1,
            adam_beta2=b2,
            adam_one_minus_beta2=1.0 - b2,
            adam_eps=float(self.adam_eps),
            adam_weight_decay=float(self.adam_weight_decay),
            adam_inv_bc1=1.0 / bc64(b1, step),
            adam_inv_bc1_next=1.0 / bc64(b1, step + 1),
            adam_inv_bc2=1.0 / bc64(b2, step),
            adam_inv_bc1_f32=1.0 / bc32(b1, step),
            adam_inv_bc1_next_f32=1.0 / bc32(b1, step + 1),
            adam_inv_bc2_f32=1.0 / bc32(b2, step),
            adam_bc1=bc64(b1, step),
            adam_bc1_next=bc64(b1, step + 1),
            adam_bc2=bc64(b2, step),
            adam_bc1_f32=bc32(b1, step),
            adam_bc1_next_f32=bc32(b1, step + 1),
            adam_bc2_f32=bc32(b2, step),
            adam_lr=lr * float(np.float32(self.adam_lr_ratio)) if keras else lr,
            momentum_bfloat16=round_to_dtype(mu, "bfloat16"),
            momentum_float16=round_to_dtype(mu, "float16"),
            momentum_float32=round_to_dtype(mu, "float32"),
            adam_beta1_bfloat16=round_to_dtype(b1, "bfloat16"),
            adam_beta1_float16=round_to_dtype(b1, "float16"),
            adam_beta1_float32=round_to_dtype(b1, "float32"),
            keras_bc1=kbc[0],
            keras_sqrt_bc2=kbc[1],
            keras_bc1_64=kbc[2],
            keras_sqrt_bc2_64=kbc[3],
        )

    def shape_scale(self, shape: tuple[int, ...], narrow: bool) -> float:
        r"""The learning-rate factor :math:`s` of a ``shape`` parameter as a Python float, computed
        on the host as the convention's framework computes it (``narrow``: parameters of 32 bits or
        fewer, where Keras's root and optax's (at jax's default) are float32 values)."""
        import numpy as np

        rows, cols = int(shape[0]), int(shape[1])
        fn = self.adjust_lr_fn
        if fn == "none" or rows == 0 or cols == 0:  # an empty matrix has nothing to scale (torch's
            return 1.0  # _adjust_lr divides by zero for a (A, 0) parameter: ZeroDivisionError)
        if self.convention == "keras":  # ops.sqrt(ops.maximum(A, B)): float32, widened for float64
            return float(np.sqrt(np.float32(max(rows, cols))))
        if self.convention == "optax":
            if fn == "original":  # jnp.sqrt(jnp.maximum(1, fan_out / fan_in)), fan_in = shape[0]
                ratio = max(1.0, cols / rows)
                return float(np.sqrt(np.float32(ratio))) if narrow else math.sqrt(ratio)
            # jnp.sqrt(jnp.maximum(fan_in, fan_out)) * consistent_rms
            if narrow:
                return float(np.sqrt(np.float32(max(rows, cols))) * np.float32(self.rms_rate))
            return math.sqrt(max(rows, cols)) * float(self.rms_rate)
        if fn == "original":  # torch._adjust_lr: sqrt(max(1, A / B)), (A, B) = shape[:2]
            return math.sqrt(max(1.0, rows / cols))
        rate = 0.2 if self.convention == "torch" else self.rms_rate  # torch: 0.2 * sqrt(max(A, B))
        return rate * math.sqrt(max(rows, cols))

    # -- rules --------------------------------------------------------------------------------------
    def uniopt_rule(
        self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any
    ) -> tuple[Array, dict[str, Array]]:
        """torch.optim.Muon's algorithm in the parameter's dtype, each op rounded (no bfloat16)."""
        self._check_param(param, xp)
        m = ema(widened(slots["momentum_buffer"], param, xp), grad, sc.momentum, sc.one_minus_momentum, xp)
        u = ema(m, grad, sc.momentum, sc.one_minus_momentum, xp) if self.nesterov else m
        x = _newton_schulz(u, sc, self.ns_steps, xp, self._product, norm_form="clamp", quintic="torch")
        if self.nonzero("weight_decay"):
            param = xp.multiply(param, sc.decay)
        step_size = xp.multiply(sc.lr, self._scale(param, xp))
        return xp.subtract(param, xp.multiply(x, step_size)), {
            "momentum_buffer": stored(m, slots["momentum_buffer"], xp)
        }

    def torch_rule(
        self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any
    ) -> tuple[Array, dict[str, Array]]:
        """``torch.optim.Muon`` (``_single_tensor_muon``), op for op without its fused kernels; the
        Newton-Schulz iteration in bfloat16 held in float32."""
        self._check_param(param, xp)
        narrow = float_bits(param, xp) <= 32
        g = grad
        m = _torch_lerp(
            widened(slots["momentum_buffer"], param, xp),
            g,
            sc.one_minus_momentum,
            sc.lerp_m_complement_32 if narrow else sc.lerp_m_complement_64,
            sc.lerp_m_small_32 if narrow else sc.lerp_m_small_64,
            xp,
        )
        u = m
        if self.nesterov:
            u = _torch_lerp(
                g,
                m,
                sc.momentum,
                sc.lerp_u_complement_32 if narrow else sc.lerp_u_complement_64,
                sc.lerp_u_small_32 if narrow else sc.lerp_u_small_64,
                xp,
            )
        x = self._torch_newton_schulz(u, sc, xp)
        x = xp.astype(x, param.dtype)  # bfloat16 values: exact
        if self.nonzero("weight_decay"):  # torch multiplies even by 1 - lr*0 == 1 (exact)
            param = xp.multiply(param, sc.decay)
        neg_step = xp.negative(xp.multiply(sc.lr, self._scale(param, xp)))
        return xp.add(param, xp.multiply(x, neg_step)), {
            "momentum_buffer": stored(m, slots["momentum_buffer"], xp)
        }

    def _torch_newton_schulz(self, u: Array, sc: Any, xp: Any, kernels: bool = True) -> Array:
        """The torch convention's iteration of ``u`` (the parameter's dtype; ``sc`` cast to it), as
        float32 holding bfloat16 values. With ``matmul="backend"`` and ``kernels``, its products
        go to the namespace's bfloat16 kernels where it offers them (:func:`_newton_schulz_bf16`);
        ``kernels=False`` forms the float32 expression (the reference's)."""
        use = kernels and self.matmul == "backend"
        return _newton_schulz_bf16(u, sc, self.ns_steps, xp, self._product, self.ns_coefficients, use)

    def keras_rule(
        self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any
    ) -> tuple[Array, dict[str, Array]]:
        """``keras.optimizers.Muon``: the base optimizer's weight decay, then ``_muon_update_step``
        (2-D) or ``_adamw_update_step``, op for op (norms in the spec's order)."""
        self._check_param(param, xp)
        if self.adam_routed(tuple(param.shape)):
            return self._keras_adam(param, grad, slots, sc, xp)
        g = grad
        if self.nonzero("weight_decay"):
            param = keras_weight_decay(param, sc.weight_decay, sc.lr, xp)
        m = widened(slots["momentum_buffer"], param, xp)
        m = xp.add(m, xp.add(g, xp.multiply(m, sc.momentum_minus_one)))
        u = xp.add(g, xp.multiply(sc.momentum, m)) if self.nesterov else m
        x = _newton_schulz(u, sc, self.ns_steps, xp, self._product, norm_form="add", quintic="python")
        step = xp.multiply(sc.lr, x)
        if self.adjust_lr_fn == "match_rms_adamw":
            step = xp.multiply(xp.multiply(step, self._scale(param, xp)), sc.rms_rate)
        new = {"momentum_buffer": stored(m, slots["momentum_buffer"], xp), "exp_avg_sq": slots["exp_avg_sq"]}
        return xp.subtract(param, step), new

    def optax_rule(
        self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any
    ) -> tuple[Array, dict[str, Array]]:
        """``optax.contrib.muon``: the ``'muon'`` chain (2-D) or ``optax.adamw`` (``'adam'``), then
        ``apply_updates`` (norms in the spec's order)."""
        self._check_param(param, xp)
        if self.adam_routed(tuple(param.shape)):
            return self._optax_adam(param, grad, slots, sc, xp)
        g = grad
        narrow = float_bits(param, xp) <= 32  # optax's bias corrections are float32 there
        inv_bc, inv_bc_next = (sc.inv_bc_f32, sc.inv_bc_next_f32) if narrow else (sc.inv_bc, sc.inv_bc_next)
        mu = slots["momentum_buffer"]  # beta*mu formed in the stored dtype (jax's weak typing)
        m = xp.add(
            stored_product(mu, self._decay(mu, "momentum", sc, param), param, xp),
            xp.multiply(g, sc.one_minus_momentum),
        )
        if self.nesterov:
            u = xp.add(
                xp.multiply(xp.multiply(m, inv_bc_next), sc.momentum),
                xp.multiply(xp.multiply(g, inv_bc), sc.one_minus_momentum),
            )
        else:
            u = xp.multiply(m, inv_bc)
        x = _newton_schulz(u, sc, self.ns_steps, xp, self._product, norm_form="reciprocal", quintic="python")
        update = xp.multiply(x, self._scale(param, xp))
        if self.nonzero("weight_decay"):  # optax.add_decayed_weights skips a zero constant
            update = xp.add(update, xp.multiply(param, sc.weight_decay))
        new_param = xp.add(param, xp.multiply(update, sc.neg_lr))
        return new_param, {"momentum_buffer": stored(m, mu, xp), "exp_avg_sq": slots["exp_avg_sq"]}

    # -- the Adam steps of non-2-D parameters --------------------------------------------------------
    def _keras_adam(self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any):
        """``Muon._adamw_update_step`` after ``_apply_weight_decay`` with ``adam_weight_decay``:
        :class:`uniopt.Adam`'s keras rule at the learning rate ``lr * adam_lr_ratio`` (the decay
        at ``lr``, as Keras)."""
        g = grad
        if self.nonzero("adam_weight_decay"):
            param = keras_weight_decay(param, sc.adam_weight_decay, sc.lr, xp)
        m0, v0 = widened(slots["momentum_buffer"], param, xp), slots["exp_avg_sq"]
        m = xp.add(m0, xp.multiply(xp.subtract(g, m0), sc.adam_one_minus_beta1))
        v = xp.add(v0, xp.multiply(xp.subtract(xp.multiply(g, g), v0), sc.adam_one_minus_beta2))
        narrow = float_bits(param, xp) <= 32
        if narrow:
            sqrt_bc2, bc1 = sc.keras_sqrt_bc2, sc.keras_bc1
        else:
            sqrt_bc2, bc1 = sc.keras_sqrt_bc2_64, sc.keras_bc1_64
        adam_lr = sc.adam_lr
        if self.adam_lr_ratio != 1 and not narrow:  # Keras's float32 product, widened
            adam_lr = xp.astype(xp.astype(adam_lr, xp.float32), param.dtype)
        alpha = xp.divide(xp.multiply(adam_lr, sqrt_bc2), bc1)
        step = xp.divide(xp.multiply(m, alpha), xp.add(xp.sqrt(v), sc.adam_eps))
        return xp.subtract(param, step), {
            "momentum_buffer": stored(m, slots["momentum_buffer"], xp),
            "exp_avg_sq": v,
        }

    def _optax_adam(self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any):
        """``optax.adamw(b1, b2, eps, eps_root=0, weight_decay=adam_weight_decay, nesterov=nesterov)``:
        :class:`uniopt.NAdam`'s optax rule (nesterov) or :class:`uniopt.AdamW`'s."""
        g = grad
        mu = slots["momentum_buffer"]  # b1*mu formed in the stored dtype (jax's weak typing)
        m = xp.add(
            stored_product(mu, self._decay(mu, "adam_beta1", sc, param), param, xp),
            xp.multiply(g, sc.adam_one_minus_beta1),
        )
        v = ema(slots["exp_avg_sq"], xp.multiply(g, g), sc.adam_beta2, sc.adam_one_minus_beta2, xp)
        narrow = float_bits(param, xp) <= 32
        width = "_f32" if narrow else ""
        if len(param.shape) == 0:  # no broadcast: XLA divides by the bias correction itself
            bc1, bc1_next, bc2 = (getattr(sc, f"adam_{n}{width}") for n in ("bc1", "bc1_next", "bc2"))
            correct = lambda x, bc: xp.divide(x, bc)  # noqa: E731
        else:  # by a broadcast scalar XLA multiplies by its reciprocal (measured, eagerly too)
            bc1, bc1_next, bc2 = (getattr(sc, f"adam_inv_{n}{width}") for n in ("bc1", "bc1_next", "bc2"))
            correct = lambda x, inv: xp.multiply(x, inv)  # noqa: E731
        if self.nesterov:
            m_hat = xp.add(
                xp.multiply(correct(m, bc1_next), sc.adam_beta1),
                xp.multiply(correct(g, bc1), sc.adam_one_minus_beta1),
            )
        else:
            m_hat = correct(m, bc1)
        v_hat = correct(v, bc2)
        update = xp.divide(m_hat, xp.add(xp.sqrt(v_hat), sc.adam_eps))
        if self.nonzero("adam_weight_decay"):  # optax.add_decayed_weights
            update = xp.add(update, xp.multiply(param, sc.adam_weight_decay))
        return xp.add(param, xp.multiply(update, sc.neg_lr)), {
            "momentum_buffer": stored(m, mu, xp),
            "exp_avg_sq": v,
        }

    # -- helpers --------------------------------------------------------------------------------------
    @staticmethod
    def _decay(slot: Array, name: str, sc: Any, param: Array) -> Array:
        """The scalar ``name`` (``momentum``, ``adam_beta1``) as optax multiplies ``slot`` by it: the
        parameter-dtype scalar where the slot is stored in the parameter's dtype, else the decay
        rounded to the slot's dtype (``<name>_bfloat16``, ``<name>_float16``)."""
        if slot.dtype == param.dtype:
            return getattr(sc, name)
        return getattr(sc, f"{name}_{dtype_name(slot.dtype)}")

    def _product(self, a: Array, b: Array, xp: Any) -> Array:
        """The matrix product ``a @ b`` as :attr:`matmul` says: ``xp.matmul`` or
        :func:`matmul_exact`."""
        if self.matmul == "exact":
            return matmul_exact(a, b, xp)
        product = xp.matmul(a, b)
        # ml_dtypes' bfloat16 matmul returns its float32 accumulation: rounded once here, as torch's
        # bfloat16 matmul rounds its float32 accumulation
        return product if product.dtype == a.dtype else xp.astype(product, a.dtype)

    def _scale(self, param: Array, xp: Any) -> Array:
        """:meth:`shape_scale` as a 0-d array of ``param``'s dtype (rounded once)."""
        value = self.shape_scale(tuple(param.shape), float_bits(param, xp) <= 32)
        return xp.asarray(value, dtype=param.dtype, device=_device(param))

    def param_refusal(self, shape: tuple[int, ...], is_complex: bool = False) -> str | None:
        """Complex parameters (every convention: torch.optim.Muon refuses them, and Keras and optax
        define no complex Newton-Schulz); parameters that are not 2-D with the ``uniopt`` and
        ``torch`` conventions (torch.optim.Muon refuses them at construction)."""
        if is_complex:
            return "complex parameters are not supported; expected a real floating dtype"
        if len(shape) != 2 and self.convention in ("uniopt", "torch"):
            return (
                f"a parameter of shape {tuple(shape)} with convention={self.convention!r}; Muon only "
                "supports 2-D parameters (as torch.optim.Muon); step the others with AdamW, or use "
                "convention='keras' or 'optax', which step them with Adam"
            )
        return None

    def _check_param(self, param: Array, xp: Any) -> None:
        """Raise ``ValueError`` with :meth:`param_refusal`'s reason, if any."""
        why = self.param_refusal(tuple(param.shape), is_complex(param, xp))
        if why is not None:
            raise ValueError(f"Muon: {why}")


def matmul_exact(a: Array, b: Array, xp: Any) -> Array:
    r"""The matrix product :math:`C = AB` of ``a`` (``m x k``) and ``b`` (``k x n``), the same bits on
    every backend: each :math:`C_{ij} = \sum_l A_{il} B_{lj}` is its ``k`` elementwise products
    (``xp.multiply``, each rounded once) summed in the order of :func:`uniopt._math.sum_pairwise`
    (pairwise halving over ``l``), with elementwise ``xp.add`` only. A backend's ``xp.matmul`` sums
    in its BLAS's own order (blocked, vectorised, sometimes with fused multiply-adds), which differs
    between libraries, CPU kinds and shapes; this product does not depend on any of them. It costs
    what its definition costs: :math:`mkn` multiplications and :math:`m(k-1)n` additions as array
    ops over ``k x rows x n`` blocks of at most :data:`EXACT_BLOCK` products (tens to thousands of
    times slower than a BLAS ``matmul``, measured in ``docs/optimizers/muon.md``), and error
    bound :math:`\lceil\log_2 k\rceil` ulp of the partial sums (pairwise summation; a BLAS
    ``matmul`` in float32 is usually a sum with blocked partial sums, of the same order). Same dtype
    as the inputs; ``k = 0`` gives zeros."""
    m, k = int(a.shape[0]), int(a.shape[1])
    n = int(b.shape[1])
    if k == 0 or m == 0 or n == 0:
        return xp.zeros((m, n), dtype=a.dtype, device=_device(a))
    at = xp.expand_dims(xp.matrix_transpose(a), axis=2)  # (k, m, 1)
    bt = xp.expand_dims(b, axis=1)  # (k, 1, n)
    rows = max(1, EXACT_BLOCK // (k * n))
    blocks = []
    for start in range(0, m, rows):
        terms = xp.multiply(at[:, start : min(start + rows, m), :], bt)  # (k, rows, n)
        blocks.append(sum_pairwise_axis(terms, 0, xp))
    return blocks[0] if len(blocks) == 1 else xp.concat(blocks, axis=0)


def _orient(x: Array, xp: Any) -> tuple[Array, bool]:
    """``x`` transposed when it has more rows than columns (every framework iterates on the wide
    orientation, so that ``x @ x.T`` is the smaller Gram matrix)."""
    tall = int(x.shape[0]) > int(x.shape[1])
    return (xp.matrix_transpose(x) if tall else x), tall


def _newton_schulz(u: Array, sc: Any, steps: int, xp: Any, mm: Any, *, norm_form: str, quintic: str) -> Array:
    """The Newton-Schulz iteration in ``u``'s dtype. ``norm_form``: ``"clamp"`` divides by
    ``max(norm, eps)`` (torch), ``"add"`` by ``norm + eps`` (Keras), ``"reciprocal"`` multiplies by
    ``1 / (norm + eps)`` (optax, as XLA computes its division). ``quintic``:
    ``"torch"`` is ``A*b + (A @ A)*c`` (``addmm``), ``"python"`` ``A*b + (A*c) @ A``."""
    x, tall = _orient(u, xp)
    n = norm(x, xp)
    if norm_form == "clamp":  # torch: x / max(norm, eps)
        x = divide_by_scalar(x, xp.maximum(n, sc.eps), xp)
    elif norm_form == "add":  # Keras: x / (norm + eps), a division of every element
        x = divide_by_scalar(x, xp.add(n, sc.eps), xp)
    else:  # optax: XLA multiplies by the reciprocal of the broadcast norm + eps (measured, eagerly too)
        one = xp.ones_like(n)
        x = xp.multiply(x, xp.divide(one, xp.add(n, sc.eps)))
    for _ in range(steps):
        gram = mm(x, xp.matrix_transpose(x), xp)
        if quintic == "torch":
            poly = xp.add(xp.multiply(gram, sc.ns_b), xp.multiply(mm(gram, gram, xp), sc.ns_c))
        else:
            poly = xp.add(xp.multiply(gram, sc.ns_b), mm(xp.multiply(gram, sc.ns_c), gram, xp))
        x = materialized(xp.add(xp.multiply(x, sc.ns_a), mm(poly, x, xp)), xp)
    return xp.matrix_transpose(x) if tall else x


def _newton_schulz_bf16(
    u: Array, sc: Any, steps: int, xp: Any, mm: Any, coefficients: tuple[float, ...], kernels: bool
) -> Array:
    """torch's ``_zeropower_via_newtonschulz``: bfloat16 values, each torch op's result rounded once
    to bfloat16 (``bf``); returns float32. ``coefficients``: the iteration's ``a, b, c`` as Python
    floats, rounded once to float32 here, as torch's bfloat16 kernels take a Python float (whatever
    the parameter's dtype).

    The values are held in float32 (``bf`` rounds float32 to bfloat16 and back), and each product
    is the float32 expression, the reference's formulation. With ``kernels`` (``matmul="backend"``),
    an iteration whose Gram product ``X @ X.T`` has at least the namespace's
    ``uniopt_bfloat16_min_work`` multiply-adds runs on the namespace's bfloat16 kernels instead,
    where it offers them: ``X`` converted once to the namespace's ``bfloat16`` dtype (exact), each
    product one call of ``uniopt_addmm_bfloat16(c, a, b, beta, alpha)``, which takes and returns
    bfloat16 arrays, ``bf(c*beta + (a @ b)*alpha)`` (``bf(a @ b)`` without ``c``) as its kernels
    compute it (uniopt.torch's: torch's ``mm`` and ``addmm``, which torch.optim.Muon calls), and the
    last iterate converted back to float32 (exact). The iterates stay bfloat16 between the products.
    Each product of two bfloat16 values is exact in float32, and such a kernel accumulates in
    float32 and rounds once to bfloat16, as the spec's ``bf(...)`` of the float32 expression; what
    differs is the order of the sums, which ``matmul="backend"`` leaves to the backend (measured in
    ``docs/optimizers/muon.md``). The namespace may decline a call (``None``): the first one, and
    the whole iteration is the float32 expression; a later one, and that product is the float32
    expression of the same values, rounded once to bfloat16."""
    f32 = xp.float32
    bf = lambda v: round_to_bfloat16(v, xp)  # noqa: E731
    ca, cb, cc = (round_to_dtype(v, "float32") for v in coefficients)
    a, b, c = (xp.asarray(v, dtype=f32, device=_device(u)) for v in (ca, cb, cc))
    eps = xp.astype(sc.eps, f32)  # torch's float opmath of a Python float
    x = bf(xp.astype(u, f32))  # grad.bfloat16(): float64 goes through float32
    # norm().clamp(min=eps): max in float32, then bfloat16. The squares are summed in x's own
    # element order, before a tall x is transposed: torch's norm of the transposed view reads it in
    # that (memory) order too, and a compiled step then reads x contiguously, not down its columns
    # (the large set's step, 8 matrices of 1260x1250, compiled: 474 ms before, 372 after, each
    # timed beside torch.optim.Muon's 404 and 392; Intel Xeon; docs/optimizers/muon.md)
    n = bf(xp.maximum(bf(norm(x, xp)), eps))
    x, tall = _orient(x, xp)
    quotient = divide_by_scalar(x, n, xp)
    rows, cols = int(x.shape[0]), int(x.shape[1])  # rows <= cols
    least = getattr(xp, "uniopt_bfloat16_min_work", None)
    hook = getattr(xp, "uniopt_addmm_bfloat16", None)
    first = None
    if kernels and hook is not None and least is not None and rows * rows * cols >= least:
        x16 = xp.astype(quotient, xp.bfloat16)  # bf(quotient), held as bfloat16
        first = hook(None, x16, xp.matrix_transpose(x16), 0.0, 1.0)  # X @ X.T, or None: declined
    if first is None:
        kernel = lambda *operands: None  # noqa: E731
        hold, wide = bf, (lambda v: v)
        x = bf(quotient)
    else:
        kernel, x = hook, x16
        hold, wide = (lambda v: xp.astype(v, xp.bfloat16)), (lambda v: xp.astype(v, f32))
    for k in range(steps):
        gram = first if k == 0 and first is not None else kernel(None, x, xp.matrix_transpose(x), 0.0, 1.0)
        if gram is None:  # X @ X.T
            w = wide(x)
            gram = hold(mm(w, xp.matrix_transpose(w), xp))
        poly = kernel(gram, gram, gram, cb, cc)
        if poly is None:  # addmm(A, A, A, beta=b, alpha=c)
            g = wide(gram)
            poly = hold(xp.add(xp.multiply(g, b), xp.multiply(mm(g, g, xp), c)))
        new = kernel(x, poly, x, ca, 1.0)
        if new is None:  # addmm(X, B, X, beta=a)
            w = wide(x)
            new = hold(xp.add(xp.multiply(w, a), mm(wide(poly), w, xp)))
        x = materialized(new, xp)
    x = wide(x)
    return xp.matrix_transpose(x) if tall else x


def _torch_lerp(start: Array, end: Array, w: Array, complement: Array, small: Any, xp: Any) -> Array:
    """``torch.lerp(start, end, weight)`` as its CPU kernel computes it, the multiply-add rounded
    twice: ``start + (end - start)*w`` for a weight below 0.5 (``small``: decided on the host, on
    the weight as the kernel holds it, float32 for parameters of 32 bits or fewer), else
    ``end - (end - start)*(1 - w)``. The decision is a flag of the step's scalars, not a value the
    rule reads from the spec, so that a compiled rule depends on it only, not on the momentum
    (a scheduler that sets the momentum at every step, such as OneCycleLR's ``cycle_momentum``,
    recompiled uniopt.torch's per-shape kernel at every step). A flag an adapter computes in-graph
    (a tensor) selects with ``xp.where`` (:func:`uniopt._spec.select`)."""
    return select(
        small,
        lambda: xp.add(start, xp.multiply(xp.subtract(end, start), w)),
        lambda: xp.subtract(end, xp.multiply(xp.subtract(end, start), complement)),
        xp,
    )
