r"""The flat fast path: a param group's state in contiguous buffers, the spec's rule run once per
buffer instead of once per tensor.

For each param group, device and dtype (CPU or CUDA, real floating point, contiguous parameters), a
*bucket* holds
every slot of the spec as one flat buffer, and ``opt.state[p][slot]`` is a view of its piece, shaped
like ``p``; the step counters are views of one int64 buffer. Nothing else is kept: the state is
exactly the spec's slots. A step then runs the spec's own ``rule(param, grad, slots, scalars, xp)``

* on each large tensor (at least :data:`LARGE` elements for its device) in place, on 1-D views of the
  parameter, its gradient and its slot pieces (one kernel per tensor);
* once over all small tensors together: their gradients and parameters are gathered into two
  vectors, the rule runs on them and the slot region in place, and the new parameters are copied
  back. On the CPU the gather and scatter are plain ``memcpy`` loops (:func:`copier`, a few lines of
  C built on first use) over the tensors' data pointers, since a torch op per tensor would cost more
  than the arithmetic; the parameters' autograd version counters are bumped as an in-place op would.
  (Splitting the copies over two threads was measured slower within a step: torch's OpenMP workers
  still spin for the cores after the kernel.)
  On CUDA they are three ``torch._foreach_copy_`` calls (a few kernel launches for all tensors), so
  that a step launches a handful of kernels whatever the number of tensors. Without a C compiler,
  ``torch.cat`` and ``torch._foreach_copy_`` do the CPU's. The two vectors are gather buffers the
  bucket keeps (scratch, not state: 2 elements per gathered parameter, ``opt.scratch_bytes()``; a
  region of fewer than :data:`MIN_REGION` elements is padded to it).

The rule is elementwise, so running it over a concatenation computes, element by element, exactly the
ops it computes per tensor: a flat step is the per-tensor step executed differently, never another
formula. With ``compiled=True`` the rule is compiled by inductor (``torch.compile(fullgraph=True,
dynamic=True)``) into one loop that reads ``p, g, m, v`` and writes ``p, m, v`` once: the
memory-traffic minimum of 28 bytes per float32 parameter for Adam-type rules. Inductor's C++ takes the
square root with ``std::sqrt`` (correctly rounded) and does not contract ``a*b + c`` into fused
multiply-adds, so the compiled rule is bitwise equal to the eager one in float32 and float64; in
float16 and bfloat16 it is compiled with ``emulate_precision_casts`` so every op rounds to the dtype as
eager does. One graph is compiled per (spec, dtype, branch flags such as RAdam's rectified step): sizes
are symbolic and the kernel is handed plain 1-D tensors, not views (:func:`_alias`), so the small
region and every large tensor share it (torch specialises lengths 0 and 1, so the small region is
padded to :data:`MIN_REGION` elements; large tensors are never that short). Compiling costs a few
seconds per graph on first use (inductor's on-disk cache shortens later processes). On CUDA the rule
compiles to a Triton kernel with :func:`exact_options`: no implicit fused multiply-adds, correctly
rounded float32 division, no flushing of subnormals, as eager CUDA kernels compute.

On the CPU, in float32 and float64, a compiled step does neither: where the spec's rule translates to
C, :mod:`._native`'s kernel runs it over every tensor of the bucket in place (:meth:`Bucket.run_native`,
a table of the tensors' addresses), one call per bucket; the gather buffers are then never made.

DTensor parameters (FSDP2, tensor parallelism) are bucketed by their local shards, in buckets of
DTensor parameters only: the buffers hold this rank's shards of the slots, each ``opt.state[p][slot]``
is a DTensor over its piece with ``p``'s placements, and a step is handed the gradients' local shards
(see :mod:`uniopt.torch._dtensor`).

A bucket is rebuilt (state copied into new buffers) when the set of parameters with a gradient
changes, when ``opt.state`` was replaced (``load_state_dict``), when the slots change, when a
parameter's storage, dtype, shape or contiguity changed (``p.data = p.data.t()`` keeps its address),
when a step counter was edited in place, or after a step of the per-tensor path touched its
parameters (:meth:`Bucket.intact`). Parameters with different step counts go to different buckets,
since the per-step scalars depend on the count.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import operator
import types
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from uniopt import Spec

from . import _dtensor, _host, _native
from ._namespace import xp

__all__ = [
    "DEVICES",
    "FLAT_DTYPES",
    "LARGE",
    "MIN_REGION",
    "Bucket",
    "copier",
    "eligible",
    "exact_options",
    "kernel",
]

LARGE = {"cpu": 1 << 16, "cuda": 1 << 24}
"""Per device type, tensors with at least this many elements are updated in place one by one; smaller
ones are gathered into one vector, since their per-tensor dispatch would cost more than the gather.
On CUDA a compiled call costs the host about 0.1 ms, which the GPU spends on some 10M parameters of
an Adam-type step, so only tensors well above that are worth a call of their own."""

MIN_REGION = 2
"""The gathered vector of a bucket's small tensors is padded with zeros to at least this many elements,
so that a compiled rule sees one length class (torch specialises lengths 0 and 1): one graph per spec
and dtype. The padding is scratch, part of no parameter's state; the rule runs on it and its values
are never read."""

_ALIGN = 16
"""Large tensors' slot pieces start at multiples of 16 elements (64 bytes for float32)."""

FLAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_HALF = (torch.float16, torch.bfloat16)
DEVICES = ("cpu", "cuda")


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def eligible(p: torch.Tensor) -> bool:
    """Whether ``p`` can live in a bucket: a contiguous real floating CPU or CUDA tensor, not a
    tensor subclass (a DTensor parameter is bucketed by its local shard, a plain tensor)."""
    return type(p) in _PLAIN and p.device.type in DEVICES and p.dtype in FLAT_DTYPES and p.is_contiguous()


_TRITON_EXACT = {
    "emulate_precision_casts": True,  # also turns off Triton's implicit fma contraction (enable_fp_fusion)
    "eager_numerics.division_rounding": True,  # float32 x / y as div.rn, not Triton's approximate div.full
    "eager_numerics.disable_ftz": True,
}


def exact_options(
    dtype: torch.dtype, device_type: str, rounded_to: Sequence[torch.dtype] = ()
) -> dict[str, bool]:
    """Inductor options under which the compiled rule rounds as the eager one: every op rounded to
    ``dtype`` and every cast kept (half types, of the parameter or among ``rounded_to``, the other
    dtypes the rule rounds to: a slot stored narrower, whose ``state_dtypes`` rounding must not be
    folded away, or Muon's torch convention's bfloat16), and on CUDA no fma
    contraction, IEEE division and no flush-to-zero. Options this torch lacks are left out (the
    conformance rows of the compiled mode show what remains). On the CPU also
    ``cpp.dynamic_threads``: the kernel's OpenMP region takes the thread count of each call, not of
    the first step (which does not change the result: the rule is elementwise)."""
    half = dtype in _HALF or any(d in _HALF for d in rounded_to)
    if device_type != "cuda":
        # the C++ kernel asks OpenMP for its thread count at each call: otherwise inductor writes the
        # thread count of the first step into the kernel, and one compiled (or cached on disk) while
        # the process ran on one thread stays serial after torch.set_num_threads raises it
        return {"cpp.dynamic_threads": True, **({"emulate_precision_casts": True} if half else {})}
    import torch._inductor.config as inductor_config

    known = inductor_config.get_config_copy()
    return {k: v for k, v in _TRITON_EXACT.items() if k in known}


def write(target: torch.Tensor, value: torch.Tensor) -> None:
    """``target.copy_(value)``; a 0-d target is written through a 1-element view: under
    ``torch.compile`` (torch 2.13, CPU) dynamo takes a 0-d float64 input as a Python scalar and an
    in-place write to it is lost (the step silently left 0-d float64 parameters and slots unchanged;
    found by the conformance matrix's mixed_shapes stream in the compile mode)."""
    if target.dim() == 0:
        target.view(1).copy_(value.reshape(1))
    else:
        target.copy_(value)


def write_back(
    param: torch.Tensor,
    slots: Mapping[str, torch.Tensor],
    new_param: torch.Tensor,
    new_slots: Mapping[str, torch.Tensor],
) -> None:
    """A rule's results written into its parameter and slots in place (every implementation's last
    step); a slot the rule passed through (a placeholder) is left as it is."""
    write(param, new_param)
    for name, value in new_slots.items():
        if value is not slots[name]:
            write(slots[name], value)


def _apply_rule(
    spec: Spec, p: torch.Tensor, g: torch.Tensor, slots: tuple[torch.Tensor, ...], sc: Any
) -> None:
    """The spec's rule on one set of (flat) tensors, written back in place."""
    by_name = dict(zip(spec.slot_names(), slots, strict=True))
    new_p, new_slots = spec.rule(p, g, by_name, sc, xp)
    write_back(p, by_name, new_p, new_slots)


_KERNEL_CACHE_SIZE = 64
_KERNELS: OrderedDict[tuple, Callable[..., None] | None] = OrderedDict()


def kernel(
    spec: Spec,
    dtype: torch.dtype,
    compiled: bool,
    device_type: str = "cpu",
    slot_dtypes: tuple[torch.dtype, ...] = (),
) -> Callable[..., None]:
    """``f(p, g, slots, scalars)``: the spec's rule in place, eager or compiled by inductor;
    ``slot_dtypes``: the slot buffers' dtypes (in ``spec.slot_names()`` order) where a group's
    ``state_dtypes`` stores some narrower than ``dtype``.

    Each compiled kernel (per spec class and convention, dtype, device and slot dtypes) gets its
    own code object, so dynamo's per-function recompile limit counts only its branch flags and the
    hyperparameters its rule branches on, not every spec, dtype and device in the process; a spec
    with other values (a scheduler's ``betas``) reuses it.
    """
    if not compiled:
        return functools.partial(_apply_rule, spec)
    slot_dtypes = tuple(slot_dtypes) if any(d != dtype for d in slot_dtypes) else ()
    # keyed by the spec's class and convention, not its values: a scheduler that sets ``betas`` or
    # ``momentum`` at every step (OneCycleLR) makes a new spec each step, whose values reach the
    # rule as the step's scalars; the spec is an argument, and dynamo guards on what it reads
    key = (type(spec), getattr(spec, "convention", None), dtype, device_type, slot_dtypes)
    if key in _KERNELS:
        _KERNELS.move_to_end(key)
    else:
        narrow = "".join(f"_{str(d).split('.')[-1]}" for d in slot_dtypes)
        name = f"uniopt_{spec.name}_{str(dtype).split('.')[-1]}{narrow}_{device_type}_rule"
        own = types.FunctionType(_apply_rule.__code__.replace(co_name=name), _apply_rule.__globals__, name)
        options = exact_options(dtype, device_type, slot_dtypes)
        _KERNELS[key] = torch.compile(own, fullgraph=True, dynamic=True, options=options)
        if len(_KERNELS) > _KERNEL_CACHE_SIZE:
            _KERNELS.popitem(last=False)
    compiled_fn = _KERNELS[key]
    if compiled_fn is None:  # recompiled past dynamo's limit before: eager (the same bits)
        return functools.partial(_apply_rule, spec)
    return functools.partial(_call_on_aliases, compiled_fn, spec, key)


@contextlib.contextmanager
def compiler_warnings_ignored() -> Iterator[None]:
    """Around a call of one of uniopt's compiled kernels (this module's and
    :mod:`._pertensor`'s): dynamo's and inductor's own warnings while they trace and build it are
    not the user's code (torch 2.13's DeprecationWarning of ``torch.jit.script_method`` at a flat
    kernel's build, 7 UserWarnings on array_api_compat's lru_cache helpers at a Muon kernel's first
    step), and under ``warnings.simplefilter("error")`` (pytest ``-W error``) they failed the build
    after the step counts had advanced, the parameters not updated. Ignored there."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def stance_is_default() -> bool:
    """Whether ``torch.compiler.set_stance`` is at its default. Under another stance the user set
    (``"force_eager"``, ``"fail_on_recompile"``, ``"eager_on_recompile"``) uniopt.torch's own
    compiled kernels step eagerly instead, the same bits: they are how a step is run, not the
    user's compiled code, and a recompile refused mid-step would leave a step half done (step
    counts advanced, parameters not)."""
    stance = getattr(_eval_frame(), "_stance", None)
    return getattr(stance, "stance", "default") == "default"


@functools.cache
def _eval_frame() -> Any:
    """``torch._dynamo.eval_frame``, imported on first use (importing uniopt.torch does not load
    torch._dynamo)."""
    import torch._dynamo.eval_frame as eval_frame

    return eval_frame


def recompile_limit_error() -> type[BaseException]:
    """dynamo's error for a ``fullgraph`` function past its recompile limit (imported on first use:
    importing uniopt.torch does not load torch._dynamo)."""
    import torch._dynamo.exc as dynamo_exc

    return getattr(dynamo_exc, "FailOnRecompileLimitHit", _AbsentError)


class _AbsentError(Exception):
    """Stands for an error this torch does not have."""


_SAID_RECOMPILED: set[tuple] = set()


def past_recompile_limit(name: str, key: tuple, exc: BaseException) -> None:
    """Said once per kernel: dynamo recompiled it up to its limit (every guard it failed was a value
    the rule reads as a constant, set to a new one at every step; the rules read a scheduled
    hyperparameter's value through the step's scalars and branch on :meth:`uniopt.Spec.nonzero`,
    so none is known to), so it runs eagerly from now on, the same bits. Nothing was written:
    dynamo stops before the graph runs. Re-raised where
    ``torch._dynamo.config.fail_on_recompile_limit_hit`` asks for the error (as the conformance
    matrix's compiled modes do)."""
    if torch._dynamo.config.fail_on_recompile_limit_hit:
        raise exc
    if key in _SAID_RECOMPILED:
        return
    _SAID_RECOMPILED.add(key)
    warnings.warn(
        f"uniopt.torch.{name}: the compiled rule was recompiled up to torch._dynamo's recompile "
        "limit (a hyperparameter the rule reads as a constant changed at every step?); it runs "
        f"eagerly from now on, the same bits ({type(exc).__name__})",
        RuntimeWarning,
        stacklevel=6,
    )


def _alias(t: torch.Tensor) -> torch.Tensor:
    """A 1-D tensor over the memory of the contiguous ``t``, not a view of it (no ``_base``).

    Dynamo guards a view input on its base's sizes and strides; the kernels' inputs are 1-D views of
    parameters, gradients and slot buffers of many shapes and offsets, and those guards recompiled
    a compiled rule up to five times per spec (a stream of mixed shapes). Given plain tensors it
    compiles once (lengths 0 and 1, which torch specialises, never reach it: see :data:`MIN_REGION`)."""
    if not t.is_contiguous():
        return t
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(
        t.untyped_storage(), t.storage_offset(), (t.numel(),), (1,)
    )


def _call_on_aliases(
    compiled: Callable[..., None],
    spec: Spec,
    key: tuple,
    p: torch.Tensor,
    g: torch.Tensor,
    slots: tuple,
    sc: Any,
) -> None:
    """``compiled(spec, ...)`` on :func:`_alias` es of the tensors. An alias does not share the
    parameter's autograd version counter, so the write to ``p`` is recorded on ``p`` afterwards, as
    an in-place op would record it. Past dynamo's recompile limit (``key``'s kernel), the rule
    eagerly, for this call and every later one (:func:`past_recompile_limit`)."""
    if not stance_is_default():
        _apply_rule(spec, p, g, slots, sc)
        return
    try:
        with compiler_warnings_ignored():
            compiled(spec, _alias(p), _alias(g), tuple(map(_alias, slots)), sc)
    except recompile_limit_error() as exc:
        past_recompile_limit(spec.name, key, exc)
        if key in _KERNELS:
            _KERNELS[key] = None
        _apply_rule(spec, p, g, slots, sc)
        return
    torch.autograd.graph.increment_version(p)


_COPY_SOURCE = r"""
#include <stdint.h>
#include <string.h>
void uniopt_gather(char *dst, char *const *src, const int64_t *nbytes, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        if (nbytes[i]) memcpy(dst, src[i], (size_t)nbytes[i]);
        dst += nbytes[i];
    }
}
void uniopt_scatter(const char *src, char *const *dst, const int64_t *nbytes, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        if (nbytes[i]) memcpy(dst[i], src, (size_t)nbytes[i]);
        src += nbytes[i];
    }
}
"""
_COPIER: list[Any] = []


def copier() -> Any:
    """The gather/scatter helper (two ``memcpy`` loops, :data:`_COPY_SOURCE`), built with the
    system C compiler on first use and cached on disk; ``None`` where none is available (then the
    gather and scatter use torch ops)."""
    if not _COPIER:
        _COPIER.append(_build_copier())
    return _COPIER[0]


def _build_copier() -> Any:
    import ctypes

    lib = _native.shared_library("copy", _COPY_SOURCE, ("-O2", "-shared", "-fPIC"))
    if lib is None:
        return None
    for fn in (lib.uniopt_gather, lib.uniopt_scatter):
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        fn.restype = None
    return lib


_DATA_PTR = torch.Tensor.data_ptr


def _picker(at: list[int]) -> Callable[[Sequence[torch.Tensor]], Sequence[torch.Tensor]]:
    """``grads -> tuple(grads[i] for i in at)``, in one C call where ``at`` has two or more."""
    return operator.itemgetter(*at) if len(at) > 1 else lambda grads: tuple(grads[i] for i in at)


_LOCAL_TENSOR = operator.attrgetter("_local_tensor")
_DTYPE = operator.attrgetter("dtype")
_SHAPE = operator.attrgetter("shape")


class Bucket:
    """The flat state of some parameters of one group, one device, one dtype and one step count."""

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        names: tuple[str, ...],
        states: Sequence[dict[str, Any]],
        position: dict[int, int],
        slot_dtypes: Sequence[torch.dtype] | None = None,
    ):
        """Move each ``states[i]`` (``opt.state[params[i]]``: ``step`` and every slot in ``names``) into
        new flat buffers; the dicts stay the same objects, their entries become views. ``position``
        maps ``id(p)`` to ``p``'s index among the group's parameters with a gradient, so that a step
        picks the gathered parameters' gradients from the group's list in one C call.

        DTensor parameters (all of the bucket's or none) are bucketed by their local shards: the
        buffers hold the shards of their slots, each slot entry a DTensor over its piece with the
        parameter's placements, and a step is handed the gradients' local shards.

        ``slot_dtypes`` (in ``names`` order; default: the parameters' dtype): each slot buffer's
        dtype, as the group's ``state_dtypes`` stores the slot (the states' slots are in it)."""
        self.distributed = _dtensor.is_dtensor(params[0])
        tensors = [p._local_tensor for p in params] if self.distributed else list(params)
        threshold = LARGE[tensors[0].device.type]
        small = [i for i, p in enumerate(tensors) if p.numel() < threshold]
        large = [i for i, p in enumerate(tensors) if p.numel() >= threshold]
        offsets: dict[int, int] = {}
        end = 0
        for i in small:
            offsets[i], end = end, end + tensors[i].numel()
        self.small_end = end
        # the gathered region is at least MIN_REGION elements (zero padding after the small tensors):
        # a compiled rule specialises lengths 0 and 1, and would compile a graph for each
        end = self.region_size = max(end, MIN_REGION) if small else 0
        for i in large:
            end = -(-end // _ALIGN) * _ALIGN
            offsets[i], end = end, end + tensors[i].numel()
        p0 = tensors[0]
        self.size = end
        self.dtype = p0.dtype
        self.device = p0.device
        self.params = tuple(params)
        self.names = names
        self.slot_dtypes = tuple(slot_dtypes) if slot_dtypes is not None else (p0.dtype,) * len(names)
        self.slots = {
            n: torch.empty(end, dtype=d, device=p0.device)
            for n, d in zip(names, self.slot_dtypes, strict=True)
        }
        self.steps = torch.tensor([int(s["step"]) for s in states], dtype=torch.int64)
        self.step = int(self.steps[0])  # what every counter holds, unless one was edited in place
        self.steps_held = self.steps.numpy()  # the counters, read by intact() at each step
        self.states = tuple(states)
        for i, (p, state) in enumerate(zip(tensors, states, strict=True)):
            lo, hi = offsets[i], offsets[i] + p.numel()
            state["step"] = self.steps[i]
            for n in names:
                view = self.slots[n][lo:hi].view(p.shape)
                view.copy_(_dtensor.local(state[n]))
                state[n] = _dtensor.like(params[i], view) if self.distributed else view
        self.keys = ("step", *names)
        self.columns = tuple(tuple(s[k] for s in states) for k in self.keys)
        # flat views keep each parameter's storage alive, so an unchanged data_ptr means unchanged storage.
        # Detached: the kernels see plain tensors (a no_grad view of a leaf that requires grad breaks
        # dynamo's recompiles), and a detached tensor shares its parameter's version counter, so an
        # in-place write is still seen by autograd.
        self.flat_views = tuple(p.detach().view(-1) for p in tensors)
        self.ptrs = tuple(map(_DATA_PTR, tensors))
        # with the addresses, the shapes the buffers were laid out for (contiguous, as eligible): a
        # parameter whose data was replaced by a smaller piece of the same storage, or by its own
        # memory in another shape or order, keeps its address
        self.shapes = tuple(tuple(p.shape) for p in tensors)
        self.probe = torch.empty(0, dtype=p0.dtype)  # the bucket's dtype, for the C++ check
        self.small = [tensors[i] for i in small]
        self.small_flat = [self.flat_views[i] for i in small]
        self.small_sizes = [tensors[i].numel() for i in small]
        itemsize = p0.element_size()
        self.small_nbytes = np.array([n * itemsize for n in self.small_sizes], dtype=np.int64)
        self.small_ptrs = np.array([self.ptrs[i] for i in small], dtype=np.uintp)
        # each large tensor: its flat view, its gradient's index in a step's list and its slot pieces
        self.large = [
            (
                self.flat_views[i],
                position[id(params[i])],
                tuple(self.slots[n][offsets[i] : offsets[i] + tensors[i].numel()] for n in names),
            )
            for i in large
        ]
        self.region = tuple(self.slots[n][: self.region_size] for n in names)
        for piece in self.region:
            piece[self.small_end :].zero_()  # the padding (no parameter's state)
        self.seen_changes: int | None = None  # opt.state's change count when last found intact
        self._offsets = offsets
        self._tensors = tensors
        self.small_indices = small
        # the gather buffers (:meth:`gather_buffers`), made on first use and kept: memory fresh from the
        # allocator is paged in on first touch, which on the CPU cost more than the copies themselves
        # (measured: 1.9 ms against 0.75 ms for 1M float32 parameters in 2000 tensors)
        self.gathers: tuple[torch.Tensor, torch.Tensor, list | None, list | None] | None = None
        self.segments: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        self.work = np.zeros(1, dtype=np.int64)  # the kernel's work items (_native.work_items)
        self.pick = _picker([position[id(params[i])] for i in small])
        self.pick_every = _picker([position[id(p)] for p in params])
        self.every_at = np.array([position[id(p)] for p in params], dtype=np.intp)

    def gather_buffers(self) -> tuple[torch.Tensor, torch.Tensor, list | None, list | None]:
        """The small tensors' gradient and parameter vectors (and, on CUDA, their views per tensor),
        made on first use. Two allocations, not two rows of one: a compiled rule given inputs that
        share storage would have AOTAutograd treat them as aliases of one base."""
        if self.gathers is None:
            flat_g = torch.zeros(self.region_size, dtype=self.dtype, device=self.device)
            flat_p = torch.zeros_like(flat_g)
            grad_views = param_views = None
            if self.device.type != "cpu":
                tensors, offsets = self._tensors, self._offsets
                pieces = [
                    (offsets[i], offsets[i] + tensors[i].numel(), tensors[i].shape)
                    for i in self.small_indices
                ]
                grad_views = [flat_g[lo:hi].view(shape) for lo, hi, shape in pieces]
                param_views = [flat_p[lo:hi] for lo, hi, _ in pieces]
            self.gathers = (flat_g, flat_p, grad_views, param_views)
        return self.gathers

    def native_segments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        """The segment table of :mod:`._native`'s kernel over this bucket's tensors, in place: each
        small tensor one segment, each large one tiles of :data:`_native.TILE` elements. Returns
        ``(lengths, pointers, tensor, offset)``: the segments' lengths; their addresses, a row per
        segment (parameter, gradient, then each slot; the gradient column is written each step);
        and per segment the index of its tensor among the bucket's and its byte offset in it.
        ``None`` where the kernel does not apply: not on the CPU, a dtype other than float32 and
        float64, a slot stored in a dtype the kernel does not take (``_native.SLOT_DTYPES``: float16),
        DTensor parameters."""
        if self.segments is None:
            if (
                self.distributed
                or self.device.type != "cpu"
                or self.dtype not in _native.DTYPES
                or any(d not in _native.SLOT_DTYPES[self.dtype] for d in self.slot_dtypes)
            ):
                return None
            itemsize = self._tensors[0].element_size()
            lengths, tensor, offset, pointers = [], [], [], []
            slot_ptrs = [(self.slots[n].data_ptr(), self.slots[n].element_size()) for n in self.names]
            for i, p in enumerate(self._tensors):
                n, base, at = p.numel(), p.data_ptr(), self._offsets[i]
                for start in range(0, n, _native.TILE):
                    lengths.append(min(_native.TILE, n - start))
                    tensor.append(i)
                    offset.append(start * itemsize)
                    pointers.append(
                        [base + start * itemsize, 0, *(s + (at + start) * size for s, size in slot_ptrs)]
                    )
            self.work = _native.work_items(np.array(lengths, dtype=np.int64))
            self.segments = (
                np.array(lengths, dtype=np.int64),
                np.array(pointers, dtype=np.uintp).reshape(len(lengths), 2 + len(self.names)),
                np.array(tensor, dtype=np.intp),
                np.array(offset, dtype=np.uintp),
            )
        return self.segments

    def run_native(
        self, kern: _native.Kernel, values: np.ndarray, group_grads: Sequence[torch.Tensor]
    ) -> bool:
        """A step by :mod:`._native`'s kernel ``kern`` (``values``: its scalar arguments) over every
        tensor in place; ``False``, with nothing done, where it does not apply
        (:meth:`native_segments`) or a gradient is not contiguous."""
        segments = self.native_segments()
        if segments is None:
            return False
        lengths, pointers, tensor, offset = segments
        host = _host.module(start=False)
        if host is not None:  # the gradients' addresses written in C++ (False: one not contiguous)
            every = self.every_at
            if not host.fill(
                group_grads,
                every.ctypes.data,
                len(every),
                tensor.ctypes.data,
                offset.ctypes.data,
                len(tensor),
                pointers.ctypes.data,
                pointers.shape[1],
            ):
                return False
        else:
            grads = self.pick_every(group_grads)
            if not all(map(torch.Tensor.is_contiguous, grads)):
                return False
            grad_ptrs = np.fromiter(map(_DATA_PTR, grads), dtype=np.uintp, count=len(grads))
            pointers[:, 1] = grad_ptrs[tensor] + offset
        self.steps.add_(1)
        self.step += 1
        kern(self.work, lengths, pointers, values)
        # written behind autograd's back: bump the version counters as an in-place op would, so a
        # graph that saved these parameters still refuses to backpropagate through them
        if host is not None:
            host.bump(self._tensors)
        else:
            torch.autograd.graph.increment_version(self._tensors)
        return True

    def intact(self, state: dict[Any, Any]) -> bool:
        """Whether ``state`` still holds this bucket's dicts and views, and the parameters the storage,
        shape and contiguous layout they had (C-level passes: this runs every step; ``p.data =
        p.data.t()`` keeps the address and the element count, and the kernel would pair the
        transposed memory with the gradient's and the slots' order), and every step counter the
        count the bucket steps with (``state["step"].fill_(0)`` edits one in place, and the
        per-tensor loop and torch.optim read it at the next step). The parameters' entries are
        looked up only when ``state`` counts changes (``changes``, see ``WatchedState``) and has
        changed since they were last found intact."""
        changes = getattr(state, "changes", None)
        if changes is None or changes != self.seen_changes:
            if not all(map(operator.is_, map(state.get, self.params), self.states)):
                return False
            self.seen_changes = changes
        if not self.distributed:
            host = _host.module(start=False)
            if host is not None:  # the same checks in C++
                return host.intact(
                    self.states,
                    self.keys,
                    self.columns,
                    self.params,
                    self.ptrs,
                    self.shapes,
                    self.probe,
                    self.steps,
                    self.step,
                )
        for key, column in zip(self.keys, self.columns, strict=True):
            if not all(map(operator.is_, map(dict.get, self.states, itertools.repeat(key)), column)):
                return False
        tensors = tuple(map(_LOCAL_TENSOR, self.params)) if self.distributed else self.params
        return (
            tuple(map(_DATA_PTR, tensors)) == self.ptrs
            and all(map(operator.is_, map(_DTYPE, tensors), itertools.repeat(self.dtype)))
            and tuple(map(_SHAPE, tensors)) == self.shapes
            and all(map(torch.Tensor.is_contiguous, tensors))
            and bool((self.steps_held == self.step).all())
        )

    def run(self, fn: Callable[..., None], scalars: Any, group_grads: Sequence[torch.Tensor]) -> None:
        """Advance the step counters and apply ``fn`` (see :func:`kernel`) to every parameter.
        ``group_grads``: the gradients of the group's parameters with one, in order (their local
        shards for DTensor parameters)."""
        self.steps.add_(1)
        self.step += 1
        if self.small:
            region = self.region
            grads = self.pick(group_grads)
            flat_g, flat_p, grad_views, param_views = self.gather_buffers()
            lib = copier() if grad_views is None else None
            if grad_views is not None:
                torch._foreach_copy_(grad_views, grads)
                torch._foreach_copy_(param_views, self.small_flat)
                fn(flat_p, flat_g, region, scalars)
                torch._foreach_copy_(self.small_flat, param_views)
            elif lib is not None and all(map(torch.Tensor.is_contiguous, grads)):
                # gradients and parameters are contiguous, of the parameter's dtype and shape (checked
                # by the optimizer), so each is nbytes of plain memory
                n = len(grads)
                grad_ptrs = np.fromiter(map(_DATA_PTR, grads), dtype=np.uintp, count=n)
                sizes = self.small_nbytes.ctypes.data
                lib.uniopt_gather(flat_g.data_ptr(), grad_ptrs.ctypes.data, sizes, n)
                lib.uniopt_gather(flat_p.data_ptr(), self.small_ptrs.ctypes.data, sizes, n)
                fn(flat_p, flat_g, region, scalars)
                lib.uniopt_scatter(flat_p.data_ptr(), self.small_ptrs.ctypes.data, sizes, n)
                # written behind autograd's back: bump the version counters as an in-place op would,
                # so a graph that saved these parameters still refuses to backpropagate through them
                torch.autograd.graph.increment_version(self.small)
            else:
                end = self.small_end
                torch.cat([g.reshape(-1) for g in grads], out=flat_g[:end])
                torch.cat(self.small_flat, out=flat_p[:end])
                fn(flat_p, flat_g, region, scalars)
                torch._foreach_copy_(self.small_flat, list(torch.split(flat_p[:end], self.small_sizes)))
        for flat, at, pieces in self.large:
            fn(flat, group_grads[at].reshape(-1), pieces, scalars)
