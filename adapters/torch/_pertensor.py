"""The compiled per-tensor step of a spec that is not elementwise: one inductor kernel per shape (CPU).

The rule of Adafactor or LAMB reads a whole parameter (its RMS, norms, row and column statistics), so
the flat buffers of :mod:`._flat` do not apply, and eagerly each of the rule's ops is its own pass
over memory: on 8 (1260, 1250) and 8 (1575000,) float32 parameters an eager Adafactor step took 2.9
times torch.optim.Adafactor's (``docs/benchmarks.md``), most of it the pairwise reductions' slices,
the exact divisions' multiplications by ones and NumPy's single-threaded ``sqrt``. Compiled by
inductor, the same ops fuse into a few C++ loops over each parameter.

Bit for bit the eager per-tensor step: the rules reduce with uniopt's own elementwise formulations
(:func:`uniopt._math.sum_pairwise`: additions of slices, which no compiler reassociates), divide
with :func:`uniopt._math.divide_exactly` (a full-size divisor, which inductor keeps a division), and
inductor's C++ takes ``std::sqrt`` (correctly rounded) and contracts no multiply-add (the same
reasons :mod:`._flat`'s compiled rule is exact; half types with ``emulate_precision_casts``,
:func:`uniopt.torch._flat.exact_options`). The conformance matrix's ``torch@compiled`` rows run
these specs through this path and compare with the NumPy reference.

Each (spec class and convention, dtype, shape, slot layout) compiles its own function
(``dynamic=False``: the pairwise reductions' slices depend on the shape anyway), with its own code
object, so that dynamo's per-function recompile limit counts only what varies within one: the
scalars' branch flags (the torch convention of Adafactor takes torch's other ``lerp`` formula
from its third step, so a shape compiles twice there) and the hyperparameters the rule branches
on. The spec is an argument, not a constant: its per-step values are the scalars' 0-d tensors, so
a new spec object with other ``betas`` (a scheduler's) reuses the kernel. The first step of a new
shape pays inductor's compile (about 1 to 5 s on 2 cores; inductor caches it on disk for later
processes).

Taken for the specs of :data:`SPECS`, outside ``torch.compile``, by ``implementation="compiled"`` for
every dense, contiguous CPU parameter with at least one dimension and one element, and by
``"auto"`` (the default) for those of at least :data:`uniopt.torch.AUTO_COMPILE_MIN` elements (below
it, inductor's compile outweighs what it saves; ``auto`` stacks the small ones, :mod:`._stacked`).
CUDA parameters and DTensors take the per-tensor loop: this path is proved bitwise on the CPU only.
"""

from __future__ import annotations

import functools
import types
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

from uniopt import Spec

from . import _flat
from ._namespace import xp

__all__ = ["SPECS", "UNTRACEABLE", "kernel_products", "run", "split"]

SPECS = frozenset({"Adafactor", "Lamb"})
"""The specs whose rule is elementwise ops and uniopt's own reductions only, so that inductor's
kernel is bitwise the eager rule. Muon is not one: its Newton-Schulz matrix products would be
inductor's choice of matrix-multiply kernel, whose summation order is its own; except where they
are torch's own bfloat16 kernels (:func:`kernel_products`)."""


def kernel_products(spec: Spec, param: torch.Tensor) -> bool:
    """Whether ``param``'s step is Muon's torch convention with every Newton-Schulz product on
    torch's bfloat16 kernels (``matmul="backend"``, a matrix whose Gram product has at least
    ``uniopt_bfloat16_min_work`` multiply-adds: :func:`uniopt.muon._newton_schulz_bf16`). Compiled,
    those products stay torch's kernels (the custom operator ``uniopt::addmm_bfloat16``, which
    inductor calls as it is), and inductor fuses the elementwise ops around them (the momentum, the
    bfloat16 roundings, the norm, the division, the update): bitwise the eager rule, as the other
    specs' kernels (tests/torch_adapter/test_muon_torch.py). Its roundings to bfloat16 are kept
    whatever the parameter's dtype (``emulate_precision_casts``)."""
    if spec.name != "Muon" or getattr(spec, "convention", None) != "torch" or spec.matmul != "backend":
        return False
    if param.dim() != 2:
        return False
    rows, cols = sorted(int(n) for n in param.shape)
    return rows * rows * cols >= xp.uniopt_bfloat16_min_work


UNTRACEABLE: dict[tuple[str, str], str] = {
    ("Adafactor", "optax"): "its factored axes come from np.argsort(shape) (optax's own call, for "
    "the same order of ties), which dynamo traces as a data-dependent tensor op",
}
"""(spec, convention) -> why its rule does not trace into one graph; those run eagerly (the same
bits), as under ``torch.compile(opt.step)`` (tests/torch_adapter/test_compile.py)."""

_PLAIN = (torch.Tensor, torch.nn.Parameter)

_BUILD_FAILED: list[str] = []
"""Set (the first failure's words) once inductor failed to build a kernel under ``"auto"``."""

_KERNEL_CACHE_SIZE = 4096
"""Kernels kept (one per spec class and convention, dtype, shape and slot layout): enough that a
model's every shape under ``implementation="compiled"`` stays compiled (with 128, a model of more
shapes evicted and recompiled every kernel at every step: 37 s a step for 132 shapes, measured)."""
_KERNELS: OrderedDict[tuple, Callable[..., None] | None] = OrderedDict()


_WARNED: set[tuple[str, str]] = set()


def _traceable(spec: Spec, explicit: bool) -> bool:
    """Whether ``spec``'s rule traces whole (:data:`UNTRACEABLE`); under an explicit
    ``implementation="compiled"`` one that does not is said once per process."""
    key = (spec.name, getattr(spec, "convention", ""))
    if key not in UNTRACEABLE:
        return True
    if explicit and key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(
            f"uniopt.torch.{spec.name}: implementation='compiled' runs the {key[1]} convention's "
            f"rule eagerly (the same bits): {UNTRACEABLE[key]}",
            RuntimeWarning,
            stacklevel=5,
        )
    return False


def _eligible(entry: tuple, minimum: int, explicit: bool) -> bool:
    spec, param, grad, slots, _ = entry
    return (
        isinstance(spec, Spec)
        and (spec.name in SPECS or kernel_products(spec, param))
        and _traceable(spec, explicit)
        and type(param) in _PLAIN
        and type(grad) in _PLAIN
        and param.device.type == "cpu"
        and param.dtype in _flat.FLAT_DTYPES
        and param.dim() > 0
        and param.numel() >= max(minimum, 1)
        and grad.layout == torch.strided
        and grad.dtype == param.dtype
        and param.is_contiguous()
        and grad.is_contiguous()
        and all(type(s) in _PLAIN and s.device.type == "cpu" and s.is_contiguous() for s in slots.values())
    )


def split(plan: list[tuple], minimum: int, *, explicit: bool) -> tuple[list[tuple], list[tuple]]:
    """``(compiled, rest)``: the entries of ``plan`` (spec, parameter, gradient, slots, scalars) this
    path takes (parameters of at least ``minimum`` elements, see the module docstring), and the
    others. ``explicit``: the user asked for ``implementation="compiled"`` (a convention that runs
    eagerly is then said, once); otherwise ``"auto"``."""
    if not explicit and _BUILD_FAILED:  # "auto" where inductor could not build: eager from then on
        return [], plan
    taken, rest = [], []
    for entry in plan:
        (taken if _eligible(entry, minimum, explicit) else rest).append(entry)
    if taken and not _flat.stance_is_default():  # a torch.compiler.set_stance the user set: eager
        return [], plan
    return taken, rest


def _step_one(spec: Spec, param: torch.Tensor, grad: torch.Tensor, slots: dict, scalars: Any) -> None:
    """The spec's rule on one parameter, written back in place (the body of the per-tensor loop)."""
    new_param, new_slots = spec.rule(param, grad, slots, scalars, xp)
    _flat.write_back(param, slots, new_param, new_slots)


def _key(spec: Spec, param: torch.Tensor, slots: dict) -> tuple:
    """What a kernel is compiled for: the spec's class and convention (not its values: a scheduler
    that sets ``betas`` at every step, as OneCycleLR does, makes a new spec each step, and dynamo
    guards on the values the rule reads as constants, recompiling only where one changes a branch
    or a constant of the graph), the parameter's dtype and shape, and its slots' layout."""
    layout = tuple((name, s.dtype, tuple(s.shape)) for name, s in slots.items())
    return (type(spec), getattr(spec, "convention", None), param.dtype, tuple(param.shape), layout)


def _kernel(spec: Spec, param: torch.Tensor, slots: dict, key: tuple) -> Callable[..., None] | None:
    """The compiled rule for ``param``'s shape and dtype and its slots' layout, cached under ``key``
    (:func:`_key`; ``None``: known not to compile)."""
    if key in _KERNELS:
        _KERNELS.move_to_end(key)
        return _KERNELS[key]
    dtype = str(param.dtype).split(".")[-1]
    shape = "x".join(map(str, param.shape))
    name = f"uniopt_{spec.name}_{dtype}_{shape}_rule"
    own = types.FunctionType(_step_one.__code__.replace(co_name=name), _step_one.__globals__, name)
    rounded_to = tuple(s.dtype for s in slots.values() if s.dtype != param.dtype)
    if kernel_products(spec, param):  # its bfloat16 roundings, kept for every parameter dtype
        rounded_to += (torch.bfloat16,)
    options = _flat.exact_options(param.dtype, "cpu", rounded_to)
    fn = torch.compile(own, fullgraph=True, dynamic=False, options=options)
    _KERNELS[key] = fn
    if len(_KERNELS) > _KERNEL_CACHE_SIZE:
        _KERNELS.popitem(last=False)
    return fn


@functools.cache
def _errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """``(untraceable, compile_failed)``: dynamo's error for a rule it cannot trace whole, and the
    errors of a failed inductor build (imported on first use: importing uniopt.torch does not load
    torch._dynamo)."""
    import torch._dynamo.exc as dynamo_exc
    import torch._inductor.exc as inductor_exc

    failed = tuple(
        e
        for e in (
            getattr(dynamo_exc, "BackendCompilerFailed", None),
            getattr(inductor_exc, "InductorError", None),
        )
        if isinstance(e, type)
    )
    return (dynamo_exc.Unsupported,), failed


def run(entries: list[tuple], *, fallback: bool) -> list[tuple]:
    """Each entry's rule by its compiled kernel, in place. With ``fallback`` (``"auto"``), an entry
    whose kernel inductor fails to build (no C++ compiler) is returned, untouched, for the eager loop
    (with one warning); otherwise the error propagates. Returns the entries left to the loop."""
    left = []
    untraceable, compile_failed = _errors() if entries else ((), ())
    for entry in entries:
        spec, param, grad, slots, scalars = entry
        if fallback and _BUILD_FAILED:
            left.append(entry)
            continue
        key = _key(spec, param, slots)
        fn = _kernel(spec, param, slots, key)
        if fn is None:
            left.append(entry)
            continue
        try:
            with _flat.compiler_warnings_ignored():
                fn(spec, param, grad, slots, scalars)
        except _flat.recompile_limit_error() as exc:  # dynamo stops before the graph runs
            _flat.past_recompile_limit(spec.name, key, exc)
            _KERNELS[key] = None
            left.append(entry)
        except untraceable as exc:  # dynamo stops while tracing, before anything runs
            # a convention whose rule leaves the graph (Adafactor's optax convention picks its
            # factored axes with np.argsort): eager, as under torch.compile(opt.step)
            _KERNELS[key] = None
            if not fallback:
                warnings.warn(
                    f"uniopt.torch.{spec.name}: the rule of {spec!r} cannot be traced whole "
                    f"({type(exc).__name__}), so implementation='compiled' runs it eagerly (the "
                    "same bits)",
                    RuntimeWarning,
                    stacklevel=4,
                )
            left.append(entry)
        except compile_failed as exc:  # inductor builds before it runs: nothing was written
            if not fallback:
                raise
            # a machine where inductor cannot build (no C++ compiler) fails for every shape: said
            # once, and "auto" stops trying in this process
            _BUILD_FAILED.append(f"{type(exc).__name__}: {exc}")
            warnings.warn(
                f"uniopt.torch.{spec.name}: inductor could not compile the rule for a parameter of "
                f"shape {tuple(param.shape)} ({type(exc).__name__}); implementation='auto' runs "
                "the rule of large parameters eagerly from now on in this process (the same bits, "
                "slower); implementation='loop' skips the attempt",
                RuntimeWarning,
                stacklevel=4,
            )
            left.append(entry)
    return left
