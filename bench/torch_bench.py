"""uniopt.torch against torch.optim: for-loop, foreach, fused (where torch has it) and compiled."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .common import Copy, ParamSet, PeakProbe, Variant, bench_hyperparameters

FRAMEWORK = "torch"

OPTIMIZERS: dict[str, dict[str, Any]] = bench_hyperparameters()
"""optimizer -> hyperparameters shared by uniopt.torch and torch.optim (every row of the table)."""


def _native_name(optimizer: str) -> str | None:
    """The torch.optim class of ``optimizer`` (the table's ``TorchNames.native``), if torch has one."""
    from uniopt.registry import get

    names = get(optimizer).torch
    return names.native if names is not None else None


NATIVE_WORK_CONVENTIONS: dict[str, str] = {
    # torch.optim.Muon runs its Newton-Schulz iteration in bfloat16; uniopt.torch.Muon's default
    # ("uniopt") runs it in the parameter's dtype (float32 here: several times the arithmetic).
    # The convention that does the native's work (its large products on torch's bfloat16
    # kernels) is timed beside the default.
    "Muon": "torch",
}
"""optimizer -> the convention whose step does the same arithmetic as the torch.optim native, where
uniopt.torch's default convention does other work."""

LOWER_PRECISION_STATE: dict[str, dict[str, str]] = {"Adam": {"exp_avg": "bfloat16"}}
"""Optimizers also timed with a lower-precision state: their ``state_dtypes`` (torch dtype names).
torch.optim has no Adam with a bfloat16 first moment, so these rows have no native of their own."""

COMPILE_LIMIT_TENSORS = 64
"""Above this many tensors torch.compile of a torch.optim step is left out unless asked for: its
graph unrolls every tensor, and compiling 2000 takes many minutes on 2 cores."""


def _device(device: str) -> str:
    return "cuda" if device == "gpu" else "cpu"


def unavailable(device: str) -> str:
    """Why the benchmark cannot run on ``device`` (empty: it can)."""
    import torch

    return "" if device == "cpu" or torch.cuda.is_available() else "torch sees no CUDA device"


@contextlib.contextmanager
def sparse_threads(options: dict[str, Any]) -> Iterator[None]:
    """The sparse set runs with one intra-op thread, uniopt and torch.optim alike (recorded in
    ``options["sparse_threads"]``): a step touches 32 rows, which a second thread cannot speed up,
    and with two threads on a shared 2-core machine torch.optim's sparse ``add_`` waited on its
    other thread (0.015 to 12 ms a step from run to run, measured)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    options["sparse_threads"] = 1
    try:
        yield
    finally:
        torch.set_num_threads(before)


def versions(device: str = "cpu") -> dict[str, str]:
    import torch

    from uniopt.torch import _host

    out = {"torch": torch.__version__, "threads": str(torch.get_num_threads())}
    # uniopt.torch builds its C++ host loops in the background on first use and steps with the Python
    # code meanwhile; the benchmark times the steady state, so it waits for the build here
    out["host loops"] = "C++" if _host.wait() is not None else "Python (no C++ extension here)"
    if device == "gpu":
        out["gpu"] = torch.cuda.get_device_name()
    return out


def peak_probe(device: str) -> PeakProbe:
    """CUDA memory a step allocates above what is allocated before it."""
    import torch

    def start() -> int:
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()

    return PeakProbe(start, torch.cuda.max_memory_allocated)


def device_sync(device: str) -> Callable[[], None]:
    """Waits for the queued GPU work (nothing on the CPU)."""
    import torch

    return torch.cuda.synchronize if device == "gpu" else (lambda: None)


def _tensors(arrays: list[np.ndarray], device: str) -> list[Any]:
    """``nn.Parameter``s, as in training (leaves that require grad)."""
    import torch

    return [torch.nn.Parameter(torch.from_numpy(a.copy()).to(_device(device))) for a in arrays]


def _state_bytes(opt: Any) -> Callable[[], int]:
    import torch

    def count() -> int:
        seen: dict[int, int] = {}
        for state in opt.state.values():
            for value in state.values():
                if isinstance(value, torch.Tensor):
                    storage = value.untyped_storage()
                    seen[storage.data_ptr()] = storage.nbytes()
        # buffers kept besides the state (uniopt.torch's gather buffers on CUDA) count too
        return sum(seen.values()) + getattr(opt, "scratch_bytes", lambda: 0)()

    return count


def variants(optimizer: str, pset: ParamSet, options: dict[str, Any]) -> list[Variant]:
    import torch

    import uniopt.torch as ut

    device = options.get("device", "cpu")

    def _variant(
        name: str,
        kind: str,
        make: Callable[[list[Any]], Any],
        compiled: bool = False,
        note: str = "",
        skip: str = "",
    ) -> Variant:
        holder: dict[str, Any] = {}

        def build(params: list[np.ndarray], grads: list[np.ndarray]) -> Callable[[], None]:
            ps = _tensors(params, device)
            for p, g in zip(ps, grads, strict=True):
                p.grad = torch.from_numpy(g).to(p.device)
            opt = holder["opt"] = make(ps)
            return torch.compile(opt.step) if compiled else opt.step

        return Variant(
            name,
            kind,
            build,
            state_bytes=lambda: _state_bytes(holder["opt"])(),
            sync=device_sync(device),
            note=note,
            skip=skip,
        )

    hyper = OPTIMIZERS[optimizer]
    uniopt_cls = getattr(ut, optimizer)
    native_name = _native_name(optimizer)
    out = [_variant(f"uniopt.torch.{optimizer}", "uniopt", lambda ps: uniopt_cls(ps, **hyper))]
    if optimizer in NATIVE_WORK_CONVENTIONS:
        convention = NATIVE_WORK_CONVENTIONS[optimizer]
        out.append(
            _variant(
                f"uniopt.torch.{optimizer}(convention={convention!r})",
                "uniopt-mode",
                lambda ps: uniopt_cls(ps, convention=convention, **hyper),
                note=f"the {convention} convention: the native's arithmetic",
            )
        )
    if optimizer in LOWER_PRECISION_STATE:
        # the state bytes a bfloat16 first moment saves, and what it costs a step
        dtypes = LOWER_PRECISION_STATE[optimizer]
        narrow = {slot: getattr(torch, dtype) for slot, dtype in dtypes.items()}
        shown = ", ".join(f"{slot!r}: torch.{dtype}" for slot, dtype in dtypes.items())
        out.append(
            _variant(
                f"uniopt.torch.{optimizer}(state_dtypes={{{shown}}})",
                "uniopt-mode",
                lambda ps: uniopt_cls(ps, state_dtypes=narrow, **hyper),
                note="lower-precision state; torch.optim has none",
            )
        )
    modes = getattr(ut, "IMPLEMENTATIONS", ()) if options.get("implementations") else ()
    for impl in modes:
        # flat and compiled run the rule over concatenated tensors: elementwise rules only
        if impl != "auto" and (uniopt_cls.spec_class.elementwise or impl == "loop"):
            out.append(
                _variant(
                    f"uniopt.torch.{optimizer}(implementation={impl!r})",
                    "uniopt-mode",
                    lambda ps, impl=impl: uniopt_cls(ps, implementation=impl, **hyper),
                )
            )
    if native_name is not None:
        out += _native_variants(native_name, hyper, _variant)
    if optimizer == "ScheduleFreeAdamW":  # torch.optim has none: the authors' package is the native
        out += _schedulefree_variants(hyper, _variant)
    if optimizer != "Adam":  # the yardstick for every optimizer: fused Adam, timed in the same rounds
        out.append(
            _variant(
                "torch.optim.Adam(fused=True)",
                "reference",
                lambda ps: torch.optim.Adam(ps, fused=True, lr=1e-3),
                note="yardstick: torch's fastest Adam-type step",
            )
        )
    too_many = len(pset.shapes) > COMPILE_LIMIT_TENSORS and not options.get("compile_all")
    if native_name is not None:
        native = getattr(torch.optim, native_name)
        out.append(
            _variant(
                f"torch.compile(torch.optim.{native_name}.step)",
                "native",
                lambda ps: native(ps, **hyper),
                compiled=True,
                skip=(
                    f"not run on {len(pset.shapes)} tensors: compiling the unrolled step takes many "
                    "minutes (--compile-all runs it)"
                )
                if too_many
                else "",
            )
        )
    return out


def _native_variants(native_name: str, hyper: dict[str, Any], make: Callable[..., Variant]) -> list[Variant]:
    """torch.optim's for-loop, foreach and (where it has one) fused steps; the one step of an
    optimizer without ``foreach`` (Muon)."""
    import torch

    native = getattr(torch.optim, native_name)
    base = f"torch.optim.{native_name}"
    accepted = inspect.signature(native.__init__).parameters
    if "foreach" not in accepted:  # torch.optim.Muon: one implementation
        return [make(base, "native", lambda ps: native(ps, **hyper))]
    out = [
        make(f"{base}(foreach=False)", "native", lambda ps: native(ps, foreach=False, **hyper)),
        make(f"{base}(foreach=True)", "native", lambda ps: native(ps, foreach=True, **hyper)),
    ]
    if "fused" in accepted:
        out.append(make(f"{base}(fused=True)", "native", lambda ps: native(ps, fused=True, **hyper)))
    return out


SPARSE_OPTIMIZERS: dict[str, dict[str, Any]] = {
    "SGD": {"lr": 1e-3},
    "Adagrad": {"lr": 1e-2},
    "SparseAdam": {"lr": 1e-3},
}
"""The sparse set's optimizers (those torch.optim steps with a sparse gradient) and their
hyperparameters, the same for uniopt.torch and torch.optim: SGD without momentum (with momentum
both step every row the buffer holds), each one's default lr."""


def sparse_variants(optimizer: str, options: dict[str, Any]) -> list[Variant]:
    """uniopt.torch against torch.optim on the sparse set: each step sets ``.grad`` to the same
    uncoalesced sparse COO gradient (as ``nn.Embedding(sparse=True)`` gives one) and steps."""
    import torch

    import uniopt.torch as ut

    device = options.get("device", "cpu")
    hyper = SPARSE_OPTIMIZERS[optimizer]

    def variant(name: str, kind: str, make: Callable[[list[Any]], Any]) -> Variant:
        holder: dict[str, Any] = {}

        def build(params: list[np.ndarray], grads: list[Any]) -> Callable[[], None]:
            (indices, values) = grads[0]
            p = _tensors(params, device)[0]
            grad = torch.sparse_coo_tensor(
                torch.from_numpy(indices)[None], torch.from_numpy(values), p.shape, device=p.device
            )
            opt = holder["opt"] = make([p])

            def step() -> None:
                p.grad = grad
                opt.step()

            return step

        return Variant(
            name, kind, build, state_bytes=lambda: _state_bytes(holder["opt"])(), sync=device_sync(device)
        )

    return [
        variant(f"uniopt.torch.{optimizer}", "uniopt", lambda ps: getattr(ut, optimizer)(ps, **hyper)),
        variant(
            f"torch.optim.{optimizer}", "native", lambda ps: getattr(torch.optim, optimizer)(ps, **hyper)
        ),
    ]


def copies(device: str = "cpu") -> dict[str, Copy]:
    """Copies the bandwidth bound may use: torch's (all threads, or the GPU's) and, on the CPU,
    NumPy's."""
    import torch

    from .common import numpy_copy

    def torch_copy(elements: int) -> Callable[[], None]:
        src = torch.ones(elements, device=_device(device))
        dst = torch.empty_like(src)
        return lambda: dst.copy_(src)

    if device == "gpu":
        return {"torch copy_ (CUDA)": torch_copy}
    return {"torch copy_": torch_copy, "numpy copyto": numpy_copy}


def _schedulefree_variants(hyper: dict[str, Any], make: Callable[..., Variant]) -> list[Variant]:
    """The authors' ``schedulefree.AdamWScheduleFree`` (foreach and single-tensor), in train mode."""
    import schedulefree

    def build(foreach: bool) -> Callable[[list[Any]], Any]:
        def make_opt(ps: list[Any]) -> Any:
            opt = schedulefree.AdamWScheduleFree(ps, foreach=foreach, **hyper)
            opt.train()
            return opt

        return make_opt

    return [
        make(f"schedulefree.AdamWScheduleFree(foreach={foreach})", "native", build(foreach))
        for foreach in (False, True)
    ]
