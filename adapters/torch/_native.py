r"""The CPU multi-tensor kernel: the spec's elementwise rule translated to C once, run in place over
lists of pointers.

A rule is traced by running it on symbolic arrays (:class:`Tracer`): each array op the rule calls on
the namespace becomes one C statement in the rule's dtype, in the order the rule calls them, so the C
loop computes, element by element, the rule's own sequence of correctly rounded operations. It is
compiled with ``-ffp-contract=off`` (no fused multiply-adds) and without ``-ffast-math``, so the
compiler may vectorise the loop but not re-associate, contract or approximate anything: ``+ - * /``
and ``sqrt`` are IEEE 754 operations, each rounded once, as the reference computes them. Constants
(``zeros_like``, ``ones_like``, ``full_like``) are translated only where the dtype holds them exactly;
``greater`` makes a condition for ``where``. A rule that calls anything else (an operator such as ``x
> 0``, an operand that is a Python number, a cast, a reduction) is not translated
(:class:`UntranslatableError` while tracing) and keeps inductor's kernel (:mod:`._flat`); every
elementwise rule of uniopt translates today but optax's Adagrad with ``eps=0`` (its ``where`` tests
``sum > 0``, an operator).

The kernel takes a table of *segments*: each a length and the addresses of its parameter, gradient
and slot pieces. A small tensor is one segment; a large one is split into tiles of :data:`TILE`
elements. The segments are shared out over torch's OpenMP threads (``torch.get_num_threads()``,
the same libgomp torch runs) in work items of about :data:`TILE` elements (:func:`work_items`: runs
of consecutive small tensors, or one tile; handing out 2000 small tensors one at a time cost 0.6 ms
of a 1.4 ms step), and each reads ``p, g`` and the slots and writes ``p`` and the slots
once: no gather into a buffer and no scatter back. The step's scalars are arguments, read once per
call; the table's parameter and slot columns are fixed per bucket, only the gradients' addresses are
written each step.

Built with the system C compiler on first use (a fraction of a second per rule variant: the spec,
dtype and branch flags such as RAdam's rectified step) and cached on disk; where no compiler is
available, or the rule is not translatable, :func:`kernel` returns ``None`` and the flat path runs
inductor's kernel instead. The conformance matrix's ``compiled`` mode runs this kernel for every
translatable case (float32 and float64 on the CPU).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from uniopt import Spec

__all__ = [
    "DTYPES",
    "TILE",
    "Kernel",
    "Tracer",
    "c_compiler",
    "compiler_command",
    "kernel",
    "shared_library",
    "translate",
    "work_items",
]

TILE = 1 << 15
"""Elements per segment of a large tensor (128 KiB of float32 per array): small enough for the
threads to share a tensor evenly, large enough that a segment's bookkeeping is negligible."""

_CTYPES = {torch.float32: ("float", "sqrtf", "fabsf"), torch.float64: ("double", "sqrt", "fabs")}
DTYPES = tuple(_CTYPES)
"""The parameter dtypes the kernel is built for."""

_STORAGE = {torch.float32: "float", torch.float64: "double", torch.bfloat16: "uint16_t"}
"""The C type an array of each dtype is read and written as (a bfloat16 by its bits)."""
SLOT_DTYPES = {torch.float32: (torch.float32, torch.bfloat16), torch.float64: tuple(_STORAGE)}
"""The slot dtypes the kernel takes beside each parameter dtype: the parameter's own and the narrower
ones of ``state_dtypes`` it converts exactly (:meth:`Tracer.astype`); float16 slots take inductor's
kernel."""

_CONVERSIONS = {
    (torch.bfloat16, torch.float32): "uniopt_bf16_widen({})",
    (torch.bfloat16, torch.float64): "(double)uniopt_bf16_widen({})",
    (torch.float32, torch.float64): "(double){}",
    (torch.float64, torch.float32): "(float){}",
    (torch.float32, torch.bfloat16): "uniopt_bf16_round({})",
}
"""``astype``'s C expression from one dtype to another: widening is exact; ``(float)`` of a double
rounds to nearest, ties to even (C's default rounding mode); :data:`_BF16` rounds a float to
bfloat16 so too. float64 to bfloat16 has no entry: the spec's ``stored`` goes through float32
(:func:`uniopt._math.stored`), two conversions of this table."""

_BF16 = r"""
/* bfloat16 by its bits: the upper half of a float32 */
static inline float uniopt_bf16_widen(uint16_t h) {
  const uint32_t u = (uint32_t)h << 16;
  float f;
  __builtin_memcpy(&f, &u, sizeof f);
  return f;
}
/* rounded to nearest, ties to even (c10::BFloat16's and ml_dtypes' rounding): the bias 0x7FFF plus
   the kept part's last bit, carried into the exponent where it rounds up (to infinity past the
   largest finite value); a NaN stays NaN (its sign and upper payload kept, the quiet bit set) */
static inline uint16_t uniopt_bf16_round(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, sizeof u);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return (uint16_t)(f != f ? (u >> 16) | 0x40u : rounded);
}
"""


class UntranslatableError(Exception):
    """The rule calls something the C translation does not cover."""


class Value:
    """A symbolic array (or 0-d scalar) of the traced rule: the C expression naming it."""

    __slots__ = ("dtype", "name", "tracer")

    def __init__(self, name: str, dtype: torch.dtype, tracer: Tracer):
        self.name, self.dtype, self.tracer = name, dtype, tracer

    def __getattr__(self, name: str) -> Any:
        raise UntranslatableError(f"attribute {name!r} of an array")

    def __bool__(self) -> bool:
        raise UntranslatableError("an array used as a Python bool")

    def _refused(self, *args: Any) -> Any:
        raise UntranslatableError("an operator on an array (the rules call the namespace's functions)")

    # a comparison or operator would otherwise fall back to object identity, or to another type's
    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = _refused
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _refused
    __truediv__ = __rtruediv__ = __neg__ = __pow__ = __rpow__ = _refused
    __float__ = __int__ = __index__ = __array__ = _refused
    __hash__ = None  # type: ignore[assignment]


class Tracer:
    """The array namespace a rule is traced with: each supported op appends one C statement."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype
        self.ctype, self.csqrt, self.cabs = _CTYPES[dtype]
        self.lines: list[str] = []

    def _operand(self, x: Any) -> str:
        if not isinstance(x, Value) or x.tracer is not self or x.dtype != self.dtype:
            raise UntranslatableError(f"an operand of type {type(x).__name__}")
        return x.name

    def _emit(self, expr: str) -> Value:
        name = f"t{len(self.lines)}"
        self.lines.append(f"const {self.ctype} {name} = {expr};")
        return Value(name, self.dtype, self)

    def add(self, a: Any, b: Any, /) -> Value:
        return self._emit(f"{self._operand(a)} + {self._operand(b)}")

    def subtract(self, a: Any, b: Any, /) -> Value:
        return self._emit(f"{self._operand(a)} - {self._operand(b)}")

    def multiply(self, a: Any, b: Any, /) -> Value:
        return self._emit(f"{self._operand(a)} * {self._operand(b)}")

    def divide(self, a: Any, b: Any, /) -> Value:
        return self._emit(f"{self._operand(a)} / {self._operand(b)}")

    def negative(self, a: Any, /) -> Value:
        return self._emit(f"-{self._operand(a)}")

    def sqrt(self, a: Any, /) -> Value:
        return self._emit(f"{self.csqrt}({self._operand(a)})")

    def abs(self, a: Any, /) -> Value:
        return self._emit(f"{self.cabs}({self._operand(a)})")

    def maximum(self, a: Any, b: Any, /) -> Value:
        # NaN-propagating, as torch.maximum and the array API: a NaN ``a`` is kept by ``a != a``, a
        # NaN ``b`` by the failed comparison
        x, y = self._operand(a), self._operand(b)
        return self._emit(f"({x} > {y} || {x} != {x}) ? {x} : {y}")

    def greater(self, a: Any, b: Any, /) -> Value:
        name = f"t{len(self.lines)}"
        self.lines.append(f"const int {name} = {self._operand(a)} > {self._operand(b)};")  # false for NaN
        return Value(name, torch.bool, self)

    def where(self, condition: Any, a: Any, b: Any, /) -> Value:
        if not isinstance(condition, Value) or condition.tracer is not self or condition.dtype != torch.bool:
            raise UntranslatableError("where on a condition the translation did not make")
        return self._emit(f"{condition.name} ? {self._operand(a)} : {self._operand(b)}")

    def sign(self, a: Any, /) -> Value:
        # uniopt's sign (:mod:`._namespace`): -1 or +1, +0 for either zero (1 - 1 cannot occur;
        # 0 - 0 is +0), NaN for NaN. Written as selects of constants and one subtraction, which
        # GCC's vectoriser if-converts; the nested form `x > 0 ? 1 : (x < 0 ? -1 : ...)` left the
        # loop scalar with a branch per element ("control flow in loop"; Lion on 25.2M float32
        # parameters took 112 ms where Adam takes 16)
        x = self._operand(a)
        one, zero = f"({self.ctype})1", f"({self.ctype})0"
        return self._emit(f"{x} != {x} ? {x} : ({x} > 0 ? {one} : {zero}) - ({x} < 0 ? {one} : {zero})")

    def full_like(self, a: Any, fill_value: Any, /) -> Value:
        """A constant: ``fill_value`` must be a float the dtype holds exactly (no rounding to agree on)."""
        self._operand(a)
        if type(fill_value) not in (float, int) or not _exact(float(fill_value), self.dtype):
            raise UntranslatableError(f"full_like with {fill_value!r}")
        return self._emit(f"({self.ctype}){float(fill_value).hex()}")

    def zeros_like(self, a: Any, /) -> Value:
        return self.full_like(a, 0.0)

    def ones_like(self, a: Any, /) -> Value:
        return self.full_like(a, 1.0)

    float32, float64, bfloat16 = torch.float32, torch.float64, torch.bfloat16

    def astype(self, a: Any, dtype: Any, /, *, copy: bool = False) -> Value:
        """A slot's conversion (:func:`uniopt._math.widened`, :func:`uniopt._math.stored`): one of
        :data:`_CONVERSIONS`; the same dtype is ``a`` itself."""
        if not isinstance(a, Value) or a.tracer is not self:
            raise UntranslatableError(f"astype of {type(a).__name__}")
        if dtype == a.dtype:
            return a
        form = _CONVERSIONS.get((a.dtype, dtype))
        if form is None:
            raise UntranslatableError(f"astype from {a.dtype} to {dtype}")
        name = f"t{len(self.lines)}"
        self.lines.append(f"const {_STORAGE[dtype]} {name} = {form.format(a.name)};")
        return Value(name, dtype, self)

    def isdtype(self, dtype: Any, kind: Any) -> bool:
        return torch.empty(0, dtype=dtype).is_complex() if kind == "complex floating" else _refuse(kind)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("uniopt_"):  # a fusing compiler's scheduling hint (uniopt._math.after):
            raise AttributeError(name)  # absent here, where the rule is one loop already
        raise UntranslatableError(f"xp.{name}")


def _exact(value: float, dtype: torch.dtype) -> bool:
    """Whether ``value`` is finite and held exactly by ``dtype``."""
    return np.isfinite(value) and float(torch.tensor(value, dtype=dtype)) == value


def _refuse(what: Any) -> Any:
    raise UntranslatableError(f"xp.isdtype(..., {what!r})")


def translate(
    spec: Spec, dtype: torch.dtype, scalars: Any, slot_dtypes: tuple[torch.dtype, ...] = ()
) -> tuple[str, tuple[int, ...]] | None:
    """The C source of ``spec``'s rule in ``dtype`` for the branch flags of ``scalars`` (the step's
    scalars: a NamedTuple of floats, 0-d tensors and bools), and the indices of ``scalars``'s fields
    the kernel takes as arguments, in order; ``None`` if the rule is not translatable.
    ``slot_dtypes``: each slot's dtype (``spec.slot_names()`` order; empty: the parameter's), one
    of :data:`SLOT_DTYPES`; the rule widens and stores a narrower one itself (``astype``)."""
    names = spec.slot_names()
    slot_dtypes = tuple(slot_dtypes) or (dtype,) * len(names)
    if dtype not in _CTYPES or len(slot_dtypes) != len(names):
        return None
    if any(d not in SLOT_DTYPES[dtype] for d in slot_dtypes):
        return None
    tracer = Tracer(dtype)
    fields: list[int] = []

    def scalar(i: int, value: Any) -> Any:
        if isinstance(value, bool):
            return value
        fields.append(i)
        return Value(f"k{i}", dtype, tracer)

    try:
        sc = type(scalars)(*(scalar(i, v) for i, v in enumerate(scalars)))
        param, grad = Value("p[i]", dtype, tracer), Value("g[i]", dtype, tracer)
        pairs = enumerate(zip(names, slot_dtypes, strict=True))
        slots = {n: Value(f"s{j}[i]", d, tracer) for j, (n, d) in pairs}
        new_param, new_slots = spec.rule(param, grad, slots, sc, tracer)
        outputs = [tracer._operand(new_param)]
        for n, d in zip(names, slot_dtypes, strict=True):  # each stored in its slot's dtype
            out = new_slots[n]
            if not isinstance(out, Value) or out.tracer is not tracer or out.dtype != d:
                raise UntranslatableError(f"slot {n!r} not returned in its dtype")
            outputs.append(out.name)
    except UntranslatableError:
        return None
    used = set(re.findall(r"\bk(\d+)\b", " ".join(tracer.lines + outputs)))
    fields = [i for i in fields if str(i) in used]  # the scalars the rule reads
    t = tracer.ctype
    width = 2 + len(names)
    narrow = any(d == torch.bfloat16 for d in slot_dtypes)
    lines = [
        "#include <math.h>",
        "#include <stdint.h>",
        *([_BF16] if narrow else []),
        f"void uniopt_rule(int64_t nwork, const int64_t *restrict start, const int64_t *restrict len,"
        f" void *const *restrict ptr, const {t} *restrict k, int threads) {{",
        *(f"  const {t} k{i} = k[{j}];" for j, i in enumerate(fields)),
        # a work item is a run of segments of about TILE elements (Bucket.native_segments): a
        # thread takes one at a time, so 2000 small tensors cost some 30 grabs, not 2000
        "  #pragma omp parallel for num_threads(threads) schedule(dynamic, 1)",
        "  for (int64_t w = 0; w < nwork; ++w) {",
        "    for (int64_t s = start[w]; s < start[w + 1]; ++s) {",
        f"      {t} *restrict p = ({t} *)ptr[s * {width}];",
        f"      const {t} *restrict g = (const {t} *)ptr[s * {width} + 1];",
        *(
            f"      {_STORAGE[d]} *restrict s{j} = ({_STORAGE[d]} *)ptr[s * {width} + {2 + j}];"
            for j, d in enumerate(slot_dtypes)
        ),
        "      const int64_t n = len[s];",
        "      for (int64_t i = 0; i < n; ++i) {",
        *(f"        {line}" for line in tracer.lines),
        # every input is read before any output is written: the outputs are stored last
        f"        p[i] = {outputs[0]};",
        *(f"        s{j}[i] = {out};" for j, out in enumerate(outputs[1:])),
        "      }",
        "    }",
        "  }",
        "}",
    ]
    # a rule that returns an input unchanged stores it back (``p[i] = p[i]``): harmless
    return "\n".join(lines) + "\n", tuple(fields)


_FLAGS = ("-O3", "-ffp-contract=off", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC")
"""No fused multiply-adds, no fast-math: the loop vectorises with exact IEEE operations only.
``-fno-math-errno`` lets ``sqrt`` be the (correctly rounded) instruction without an ``errno`` branch."""


def arch_flags() -> tuple[str, ...]:
    """``-mavx2`` where torch's CPU kernels run AVX2 or AVX-512 (``torch.backends.cpu``): eight
    float32 lanes where the x86-64 baseline has four (measured: 25.2M float32 parameters of RAdam in
    10.6-10.9 ms against 13.1-14.6 ms). Only instruction selection: AVX2's ``vdivps`` and
    ``vsqrtps`` are IEEE operations like SSE's, and without ``-mfma`` (and with
    ``-ffp-contract=off``) no fused multiply-add is formed."""
    return ("-mavx2",) if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") else ()


class Kernel:
    """A compiled rule: ``kernel(lengths, pointers, scalars)`` runs it over the segments."""

    def __init__(self, fn: Any, fields: tuple[int, ...], dtype: torch.dtype):
        self.fn, self.fields, self.dtype = fn, fields, dtype
        self.numpy_dtype = np.float32 if dtype == torch.float32 else np.float64

    def scalar_values(self, scalars: Any) -> np.ndarray:
        """The kernel's scalar arguments from the step's scalars (rounded 0-d tensors or floats)."""
        return np.array([float(scalars[i]) for i in self.fields], dtype=self.numpy_dtype)

    def __call__(
        self, starts: np.ndarray, lengths: np.ndarray, pointers: np.ndarray, values: np.ndarray
    ) -> None:
        """Run over the segments (``lengths``, ``pointers``: see ``Bucket.native_segments``), shared
        out over torch's threads by work items: item ``w`` is segments ``starts[w]`` to
        ``starts[w + 1] - 1`` (int64, one more entry than items)."""
        self.fn(
            len(starts) - 1,
            starts.ctypes.data,
            lengths.ctypes.data,
            pointers.ctypes.data,
            values.ctypes.data,
            torch.get_num_threads(),
        )


def work_items(lengths: np.ndarray) -> np.ndarray:
    """The work items' starts over segments of ``lengths``: consecutive segments packed while their
    elements stay within :data:`TILE` (a tile of a large tensor is an item of its own), and the
    number of segments last."""
    starts, held = [0], 0
    for s, n in enumerate(lengths.tolist()):
        if held and held + n > TILE:
            starts.append(s)
            held = 0
        held += n
    starts.append(len(lengths))
    return np.array(starts, dtype=np.int64)


_KERNELS: OrderedDict[tuple, Kernel | None] = OrderedDict()
_KERNEL_CACHE_SIZE = 64


def kernel(
    spec: Spec, dtype: torch.dtype, scalars: Any, slot_dtypes: tuple[torch.dtype, ...] = ()
) -> Kernel | None:
    """The compiled rule of ``spec`` in ``dtype`` for the branch flags of ``scalars`` and the slots'
    dtypes (:func:`translate`), or ``None`` (not translatable, or no C compiler)."""
    flags = tuple(v for v in scalars if isinstance(v, bool))
    slot_dtypes = tuple(slot_dtypes) if any(d != dtype for d in slot_dtypes) else ()
    key = (spec, dtype, flags, slot_dtypes)
    if key in _KERNELS:
        _KERNELS.move_to_end(key)
        return _KERNELS[key]
    translated = translate(spec, dtype, scalars, slot_dtypes)
    made = None
    if translated is not None:
        source, fields = translated
        fn = _build(source)
        made = Kernel(fn, fields, dtype) if fn is not None else None
    _KERNELS[key] = made
    if len(_KERNELS) > _KERNEL_CACHE_SIZE:
        _KERNELS.popitem(last=False)
    return made


_LIBRARIES: dict[str, Any] = {}


def compiler_command(variable: str, programs: tuple[str, ...]) -> tuple[str, ...] | None:
    """A compiler command as ``subprocess`` arguments: the environment ``variable`` split as a shell
    splits it (``CC="ccache gcc"`` is the program ``ccache`` and its argument ``gcc``, as make and
    setuptools read it), else the first of ``programs`` on the ``PATH``; ``None`` where there is
    none or the variable cannot be split (an unclosed quote)."""
    try:
        command = tuple(shlex.split(os.environ.get(variable, "")))
    except ValueError:
        return None
    if command:
        return command
    found = next(filter(None, map(shutil.which, programs)), None)
    return (found,) if found else None


def c_compiler() -> tuple[str, ...] | None:
    """The command the kernels are built with (:func:`compiler_command`): ``$CC``, else ``cc``,
    ``gcc`` or ``clang`` on the ``PATH``."""
    return compiler_command("CC", ("cc", "gcc", "clang"))


def shared_library(stem: str, source: str, flags: tuple[str, ...]) -> ctypes.CDLL | None:
    """``source`` (C) compiled with the system C compiler (:func:`c_compiler`: ``$CC``, else
    ``cc``, ``gcc`` or ``clang``) and ``flags`` into ``<cache>/uniopt/<stem>-<digest>.so``, the
    digest covering the source, the compiler command and the flags, and loaded; built once per
    machine and reused by later processes. ``None`` where there is no compiler or the build fails."""
    compiler = c_compiler()
    if not compiler or os.name != "posix":
        return None
    digest = hashlib.sha256("\0".join((source, *compiler, *flags)).encode()).hexdigest()[:20]
    folder = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "uniopt"
    library = folder / f"{stem}-{digest}.so"
    try:
        if not library.exists():
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=folder) as tmp:
                (Path(tmp) / f"{stem}.c").write_text(source)
                subprocess.run(
                    [*compiler, *flags, f"{stem}.c", "-o", f"{stem}.so"],
                    cwd=tmp,
                    check=True,
                    capture_output=True,
                    timeout=120,
                )
                # atomic: concurrent processes see a whole file
                os.replace(Path(tmp) / f"{stem}.so", library)
        return ctypes.CDLL(str(library))
    except (OSError, subprocess.SubprocessError):
        return None


def _build(source: str) -> Any:
    """``uniopt_rule`` of ``source``, compiled (:func:`shared_library`, once per process and source)."""
    if source not in _LIBRARIES:
        lib = shared_library("rule", source, (*_FLAGS, *arch_flags()))
        fn = None if lib is None else lib.uniopt_rule
        if fn is not None:
            fn.argtypes = [
                ctypes.c_int64,
                ctypes.c_void_p,
                ctypes.c_void_p,
                ctypes.c_void_p,
                ctypes.c_void_p,
                ctypes.c_int,
            ]
            fn.restype = None
        _LIBRARIES[source] = fn
    return _LIBRARIES[source]
