"""The array namespace the spec runs on for torch tensors.

``array_api_compat.torch`` with two replacements, ``sqrt`` and ``sign``, and one addition. torch's
CPU kernels compute ``sqrt`` with a vectorised approximation that is not correctly rounded (measured
with torch 2.13 on AVX-512: 17% of float32 and 1.2% of float64 results 1 ulp off), while IEEE 754,
NumPy, CUDA and XLA round it correctly. On CPU the tensor's memory is handed to NumPy's ``sqrt``
(hardware ``vsqrtps``/``vsqrtpd``, correctly rounded) without a copy; bfloat16, which NumPy lacks,
goes through float32, where double rounding of a square root is still correct (24 >= 2*8 + 2 bits).
On other devices torch's own ``sqrt`` is used. Under ``torch.compile`` tracing, torch's ``sqrt`` is
emitted and inductor generates the correctly rounded instruction.

``sign``: ``torch.sign`` of a NaN is 0 or NaN depending on the tensor (torch 2.13 on CPU: 0 for a
tensor of NaNs of any length and dtype; inductor's lowering always gives 0), so NaN is put back where
the input is NaN, as NumPy and the array API have it, eagerly and under ``torch.compile``
(tests/torch_adapter/test_namespace.py). array_api_compat does the same with a masked write,
``out[isnan(x)] = nan``, which on a 0-d tensor is a data-dependent branch that ``torch.compile``
cannot trace (a graph break per 0-d parameter: 39 graphs for one step of the conformance Lion batch);
for real floating tensors uniopt selects with ``torch.where`` instead, the same values.

``uniopt_addmm_bfloat16`` and ``uniopt_bfloat16_min_work``: the products of Muon's
``convention="torch"`` go to torch's own bfloat16 ``mm`` and ``addmm``, the kernels torch.optim.Muon
runs (under ``torch.compile`` as the custom operator ``uniopt::addmm_bfloat16``), for a matrix whose
Gram product has at least that many multiply-adds (:func:`uniopt_addmm_bfloat16`); the spec forms
them in float32 (bfloat16 values held in float32) otherwise. ``uniopt_materialized``: a one-element
iterate of Muon's Newton-Schulz stored under ``torch.compile`` (the custom operator
``uniopt::materialized``), where inductor would inline it into the next iterate.

The other elementwise ops the rules use (``abs``, ``maximum`` (NaN-propagating), ``where``,
``negative``) are exact in torch eagerly and compiled. Only the sign of a zero chosen by ``maximum``
between ``-0.0`` and ``+0.0`` is left unspecified, as by the array API (NumPy itself returns the
first argument in float16 and the second in float32).
"""

from __future__ import annotations

from typing import Any

import array_api_compat.torch as _compat
import numpy as np
import torch

__all__ = ["xp"]


def _needs_host_sqrt(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and not torch.compiler.is_compiling()


def sqrt(x: torch.Tensor) -> torch.Tensor:
    """Correctly rounded elementwise square root (see the module docstring)."""
    if not _needs_host_sqrt(x):
        return torch.sqrt(x)
    if x.dtype == torch.bfloat16:
        return sqrt(x.float()).to(torch.bfloat16)
    out = torch.empty(x.shape, dtype=x.dtype)
    np.sqrt(x.detach().resolve_conj().resolve_neg().numpy(), out=out.numpy())
    return out


def sign(x: Any, /) -> Any:
    """The array API's elementwise sign: -1, 0 or +1 (signed zeros kept), NaN for NaN (see the module
    docstring); array_api_compat's for other dtypes (complex: ``x / |x|``)."""
    if isinstance(x, torch.Tensor) and x.dtype.is_floating_point:
        return torch.where(torch.isnan(x), torch.nan, torch.sign(x))
    return _compat.sign(x)


uniopt_bfloat16_min_work = 128**3
"""The fewest multiply-adds (``m * m * k``) of an iteration's largest product, its Gram product
``X @ X.T`` of the wide ``(m, k)`` orientation, from which the spec hands all of that iteration's
products to :func:`uniopt_addmm_bfloat16` (:func:`uniopt.muon._newton_schulz_bf16`). Measured with
torch 2.13 on 2 cores of an Intel Xeon (AMX), one Newton-Schulz iteration of an ``(m, k)`` matrix
(its three products and their roundings) in microseconds, float32 expression against bfloat16
kernels: 32x48 28 against 72, 64x128 55 against 78, 128x128 100 against 94, 256x256 346 against
192, 512x512 2446 against 800; below, oneDNN's set-up of a bfloat16 product (about 20 us)
outweighs its arithmetic."""


def _bfloat16_product(
    c: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor, beta: float, alpha: float
) -> torch.Tensor:
    return torch.mm(a, b) if c is None else torch.addmm(c, a, b, beta=beta, alpha=alpha)


def _custom_op(name: str, impl: Any, fake: Any, backward: Any = None) -> Any:
    """``uniopt::<name>``, ``impl`` as a custom operator (``fake``: its output's shape and dtype;
    ``backward``: its gradient, where it has one): under ``torch.compile`` inductor calls it as it
    is, an opaque call it neither lowers its own way nor inlines. Registered as this module is
    imported (a compiled step may be the process's first: dynamo cannot register an operator while
    it traces); an operator already registered (the module imported again) is reused."""
    existing = getattr(getattr(torch.ops, "uniopt", None), name, None)
    if existing is not None:
        return existing
    op = torch.library.custom_op(f"uniopt::{name}", mutates_args=())(impl)
    op.register_fake(fake)
    if backward is not None:
        op.register_autograd(backward)
    return op


# torch's own bfloat16 ``mm``/``addmm`` kernels, where inductor would lower an ``addmm`` its own way
_PRODUCT = _custom_op(
    "addmm_bfloat16", _bfloat16_product, lambda c, a, b, beta, alpha: a.new_empty((a.shape[0], b.shape[1]))
)


def uniopt_addmm_bfloat16(
    c: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor, beta: float, alpha: float
) -> torch.Tensor | None:
    """``bf(c*beta + (a @ b)*alpha)``, or ``bf(a @ b)`` without ``c``, for bfloat16 tensors (Muon's
    ``convention="torch"``, :func:`uniopt.muon._newton_schulz_bf16`): torch's own ``addmm``
    (``mm``), the kernels torch.optim.Muon runs (float32 accumulation, one rounding to bfloat16), as
    a bfloat16 tensor (on CUDA cuBLAS's, under torch's settings for bfloat16 products, as for
    torch.optim.Muon). Under ``torch.compile`` the same kernels as the custom operator
    ``uniopt::addmm_bfloat16`` (:func:`_custom_op`), which inductor calls as it is. ``None``
    (the spec then forms the float32 expression, the same values up to the order of the sums) for
    tensor subclasses (DTensor), for operands that are not bfloat16, and for a scaled product
    without ``c`` (which the spec does not ask for)."""
    operands = (a, b) if c is None else (c, a, b)
    if not all(type(t) is torch.Tensor for t in operands):
        return None
    if any(t.dtype != torch.bfloat16 for t in operands) or (c is None and alpha != 1.0):
        return None
    if torch.compiler.is_compiling():
        return _PRODUCT(c, a, b, beta, alpha)
    return _bfloat16_product(c, a, b, beta, alpha)


def _copy(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


# a copy inductor stores instead of inlining (a ``clone`` it inlines into the ops that read it); the
# gradient passes through unchanged
_COPY = _custom_op("materialized", _copy, torch.empty_like, lambda ctx, grad: grad)


def uniopt_materialized(x: Any) -> Any:
    """``x`` (the same bits) stored by inductor before the ops that read it
    (:func:`uniopt._math.materialized`): under ``torch.compile``, for a plain tensor of one element,
    the custom operator ``uniopt::materialized``, a copy inductor does not inline; ``x`` itself
    otherwise (eagerly nothing is inlined, and larger iterates of Muon's Newton-Schulz reach
    ``mm`` kernels, which store their operands). On a 1x1 matrix inductor turns every product of
    the iteration into elementwise ops (``torch/_inductor/decomposition.py``, ``mm``) and inlined the
    five iterates into one expression: uniopt.torch.Muon's compiled step took 115 s to compile,
    against 11 to 14 s for 1x5, 5x1 and 3x4 matrices (torch.optim.Muon's 27 s and 8 s; torch 2.13,
    2-core AMD EPYC)."""
    if type(x) is torch.Tensor and x.numel() == 1 and torch.compiler.is_compiling():
        return _COPY(x)
    return x


def _same_dtype(op: Any, compat: Any) -> Any:
    """``op`` called directly when both arguments are tensors of one dtype, where
    ``array_api_compat``'s wrapper would call it unchanged (its promotion fix-up converts a 0-d
    argument to the result dtype, here the dtype it already has); ``compat`` otherwise. The same
    torch op on the same tensors, with far less Python for ``torch.compile`` to trace."""

    def call(x1: Any, x2: Any, /) -> Any:
        if isinstance(x1, torch.Tensor) and isinstance(x2, torch.Tensor) and x1.dtype == x2.dtype:
            return op(x1, x2)
        return compat(x1, x2)

    call.__name__ = call.__qualname__ = compat.__name__
    return staticmethod(call)


class _TorchNamespace:
    """``array_api_compat.torch`` with :func:`sqrt` and :func:`sign` replaced, and its binary
    arithmetic called directly on same-dtype tensors (:func:`_same_dtype`)."""

    sqrt = staticmethod(sqrt)
    sign = staticmethod(sign)
    uniopt_addmm_bfloat16 = staticmethod(uniopt_addmm_bfloat16)
    uniopt_bfloat16_min_work = uniopt_bfloat16_min_work
    uniopt_materialized = staticmethod(uniopt_materialized)
    add = _same_dtype(torch.add, _compat.add)
    subtract = _same_dtype(torch.subtract, _compat.subtract)
    multiply = _same_dtype(torch.multiply, _compat.multiply)
    divide = _same_dtype(torch.divide, _compat.divide)
    maximum = _same_dtype(torch.maximum, _compat.maximum)

    def __getattr__(self, name: str) -> Any:
        return getattr(_compat, name)


xp = _TorchNamespace()
"""The namespace uniopt.torch passes to the spec's rules."""
