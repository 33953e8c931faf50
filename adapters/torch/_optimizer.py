"""The binding of a uniopt spec to the ``torch.optim.Optimizer`` contract.

A param group's hyperparameters are exactly the spec's fields (torch.optim's names), so schedulers
that write ``group['lr']`` (or ``group['betas']``/``group['momentum']``, as OneCycleLR does) are seen
by the spec at the next ``step()``. Per parameter the state holds ``step`` (a CPU int64 tensor, like
torch.optim's CPU step counters) and the spec's slots, in the parameter's dtype (or the narrower one
the group's ``state_dtypes`` gives a slot of ``Spec.lower_precision_slots``) and on its device.
``step()`` validates every group and gradient first and only then updates, so an error leaves
parameters and state untouched. The update itself is the spec's ``rule``; this module holds none of
its math.

How the rule is executed is the ``implementation`` argument (see :data:`IMPLEMENTATIONS`): per
tensor (``"loop"``), or over flat state buffers (``"flat"``, and ``"compiled"`` with inductor; see
:mod:`uniopt.torch._flat`). Every implementation gives the same bits.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import operator
import warnings
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch.nn.parameter import is_lazy
from torch.optim import Optimizer

from uniopt import Spec
from uniopt._math import stored as _stored
from uniopt._validate import check_interval, check_state_dtypes_mapping

from . import _dtensor, _flat, _host, _native, _pertensor, _sparse, _stacked
from ._namespace import xp

__all__ = ["AUTO_COMPILE_MIN", "IMPLEMENTATIONS", "UnioptOptimizer"]

IMPLEMENTATIONS = ("auto", "compiled", "flat", "loop")
"""How ``step()`` executes the rule. ``loop``: per tensor, eager. ``flat``: the group's state in flat
buffers per device and dtype, the rule run eagerly once over all small tensors and once per large one.
``compiled``: as ``flat``, with the rule compiled: on the CPU in float32 and float64, where the rule
translates, one C kernel per bucket over every tensor in place (:mod:`._native`); otherwise by
inductor into one loop (CPU) or one Triton kernel (CUDA) per buffer. ``auto`` (the default): the C
kernel wherever it applies (CPU, float32 and float64, a rule it translates), whatever the size;
elsewhere ``compiled`` for a group's parameters of one device and dtype holding at least
:data:`AUTO_COMPILE_MIN` elements, ``flat`` below that. Parameters that cannot be flattened (neither
on the CPU nor on CUDA, complex, non-contiguous) always take ``loop``, and so do those of a group
whose ``state_dtypes`` stores a slot narrower than the parameter (the flat buffers hold one dtype),
and a step traced by ``torch.compile``. A spec that is not elementwise (``Lamb``: a norm per
parameter) takes ``loop``, under ``auto`` with its small parameters of one shape stacked, one rule
call per stack (Adafactor, LAMB, Muon's matrices but torch's bfloat16 kernels': :mod:`._stacked`,
bitwise the per-tensor step), and its CPU parameters of at least :data:`AUTO_COMPILE_MIN` elements
compiled by inductor per shape (Adafactor, LAMB, and Muon's torch convention where its products are
torch's bfloat16 kernels: :mod:`._pertensor`, bitwise the per-tensor step); ``compiled`` compiles
every such parameter; ``flat`` is refused for it (and ``compiled`` for Muon, whose other matrix
products inductor would choose)."""

AUTO_COMPILE_MIN = 1 << 18
"""Below this many elements ``auto`` does not compile with inductor (where the C kernel does not apply:
a bucket's elements in all; for Adafactor and LAMB, one parameter's): the few seconds inductor
takes on first use would outweigh what it saves."""

_STATE_DICT_KEY = "uniopt"
_SPEC_CACHE_SIZE = 64
_SPECS: OrderedDict[tuple[type[Spec], tuple], Spec] = OrderedDict()
"""One spec object per hyperparameter set, shared by every optimizer (and every compiled graph
that guards on it): bounded, least recently used first out."""


_DISABLED_PREPARE: list[Callable[[UnioptOptimizer], list]] = []


def _compiler_disabled_prepare() -> Callable[[UnioptOptimizer], list]:
    """``UnioptOptimizer._prepare`` excluded from dynamo tracing; built on first use under
    ``torch.compile`` so that importing uniopt.torch does not load torch._dynamo."""
    if not _DISABLED_PREPARE:
        _DISABLED_PREPARE.append(torch.compiler.disable(UnioptOptimizer._prepare))
    return _DISABLED_PREPARE[0]


class WatchedState(defaultdict):
    """``opt.state``: torch.optim's ``defaultdict(dict)`` that counts the changes made to it (an entry
    set, deleted, popped or cleared), so that a flat step can tell in one comparison that no
    parameter's state dict was replaced since the last step, instead of looking up every parameter
    (a Python-level ``Tensor.__hash__`` each)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.changes = 0

    def __setitem__(self, key: Any, value: Any) -> None:
        self.changes += 1
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        self.changes += 1
        super().__delitem__(key)

    def __ior__(self, other: Any) -> WatchedState:
        self.changes += 1
        return super().__ior__(other)

    def _changing(name: str) -> Callable[..., Any]:  # noqa: N805 (a helper of the class body)
        method = getattr(defaultdict, name)

        def changing(self: WatchedState, *args: Any, **kwargs: Any) -> Any:
            self.changes += 1
            return method(self, *args, **kwargs)

        changing.__name__ = name
        return changing

    pop = _changing("pop")
    popitem = _changing("popitem")
    clear = _changing("clear")
    update = _changing("update")
    setdefault = _changing("setdefault")
    del _changing


def _watched(state: Any) -> WatchedState:
    return state if isinstance(state, WatchedState) else WatchedState(dict, state)


_AUTOCAST_DEVICES = ("cpu", "cuda")
"""Device types whose autocast :meth:`UnioptOptimizer.step` turns off for its update (the closure
keeps it): under ``torch.autocast`` torch runs a float32 ``matmul`` in bfloat16 or float16, which
would change Muon's products (measured, a 64x64 matrix of the torch convention under CPU autocast:
91% of the elements changed); torch.optim.Muon's products are bfloat16 already."""


class UnioptOptimizer(Optimizer):
    """Base of ``uniopt.torch``'s optimizers: a ``torch.optim.Optimizer`` running a uniopt spec."""

    spec_class: ClassVar[type[Spec]]

    positional: ClassVar[tuple[str, ...]] = ()
    """The arguments after ``params`` that torch.optim's optimizer takes by position, in its order."""
    torch_options: ClassVar[Mapping[str, Any]] = {}
    """torch.optim's arguments that choose its implementation (``foreach``, ``fused``, ``capturable``,
    ``differentiable``; Adam's ``decoupled_weight_decay``) that this optimizer accepts, with
    torch.optim's defaults. They are stored in ``defaults`` and every param group as torch.optim
    stores them and never change the numbers (see :meth:`_check_options`)."""
    extensions: ClassVar[tuple[str, ...]] = ()
    """Spec fields that torch.optim's optimizer has no argument for (optax.adafactor's own, on
    Adafactor). They are kept in every param group but not in ``defaults``, so that code reading
    ``defaults`` sees torch.optim's keys: ``OneCycleLR(cycle_momentum=True)`` refuses Adafactor,
    which has no momentum in torch.optim, instead of cycling the optax convention's ``momentum``."""
    state_at_construction: ClassVar[bool] = False
    """Whether the state of the constructor's parameters (``step`` 0 and the spec's initial slots)
    is created by the constructor, as torch.optim.Adagrad creates it (so that ``share_memory`` can
    share it before training starts); otherwise it is created at a parameter's first step."""
    constructor_only: ClassVar[tuple[str, ...]] = ()
    """Spec fields torch.optim reads from its constructor alone (:attr:`uniopt.registry.TorchNames.
    constructor_only`): a param group's own value differing from the constructor's is honoured, with
    a ``UserWarning``."""

    def __init__(
        self, params: Iterable[Any], *args: Any, implementation: str = "auto", **kwargs: Any
    ) -> None:
        """Build the optimizer as torch.optim's namesake takes its arguments.

        ``params``: tensors, ``(name, tensor)`` pairs or param group dicts (any iterable, read once;
        see :meth:`add_param_group`). ``args``: the hyperparameters torch.optim takes by position
        (:attr:`positional`); ``kwargs``: the spec's fields (torch.optim's names, plus
        ``convention``) and :attr:`torch_options`. A hyperparameter may be a 1-element tensor
        where a float is expected; its value is used, and the tensor is kept in ``defaults`` and
        the groups. ``implementation``: see :data:`IMPLEMENTATIONS`. ``state_dtypes`` (optional,
        kept in ``defaults`` and every group where given, as torch.optim keeps its options; a group
        may give its own): slot name -> dtype (``torch.bfloat16``, ``torch.float16``,
        ``torch.float32`` or their names) for the slots of ``Spec.lower_precision_slots`` (Adam's
        ``exp_avg``, SGD's ``momentum_buffer``, ...) to store in that dtype, which each parameter's
        dtype must hold exactly (bfloat16/float16 beside float32 or float64, float32 beside
        float64): the state is created in it, and the rule widens it exactly, computes in the
        parameter's dtype and stores the new value rounded once to nearest, ties to even
        (docs/conventions.md, "Lower-precision state"). Raises ``TypeError`` for an
        unknown argument, too many positional ones or one given twice, ``ValueError`` for a bad
        value (the core's message; for ``state_dtypes`` a value that is not such a mapping, a name
        that is not a slot, a dtype the core's :meth:`uniopt.Spec.slot_dtype_refusal` refuses beside
        a parameter) and what :meth:`_check_options` raises; the state is empty then.
        """
        owner = f"uniopt.torch.{self.spec_class.name}"
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"{owner}: implementation={implementation!r}; expected one "
                f"of {', '.join(map(repr, IMPLEMENTATIONS))}"
            )
        if not self.spec_class.elementwise and implementation == "flat":
            accepted = (
                "'auto', 'compiled' or 'loop'"
                if self.spec_class.name in _pertensor.SPECS
                else "'auto' or 'loop'"
            )
            raise ValueError(
                f"{owner}: implementation={implementation!r} runs the rule over a concatenation of "
                f"parameters, which only an elementwise rule allows ({self.spec_class.name} reduces "
                f"over each parameter); expected {accepted}"
            )
        if (
            not self.spec_class.elementwise
            and implementation == "compiled"
            and self.spec_class.name not in _pertensor.SPECS
        ):
            raise ValueError(
                f"{owner}: implementation={implementation!r} is not offered for "
                f"{self.spec_class.name}: its rule multiplies matrices, which inductor would hand to "
                "a kernel of its own choice (another summation order); expected 'auto' or 'loop'"
            )
        state_dtypes = kwargs.pop(STATE_DTYPES, None)
        if len(args) > len(self.positional):
            raise TypeError(
                f"{owner}: takes at most {len(self.positional)} positional arguments after params "
                f"({', '.join(self.positional)}), got {len(args)}"
            )
        for name, value in zip(self.positional, args, strict=False):
            if name in kwargs:
                raise TypeError(f"{owner}: got multiple values for argument {name!r}")
            kwargs[name] = value
        self.implementation = implementation
        self._buckets: dict[int, tuple[Any, ...]] = {}  # group index -> its layout (see _layout)
        # group index -> (ids of the parameters with a gradient, their gradients' accepted
        # (layout, dtype, shape), and their sparse_dim()s if any is sparse, else None): one C-level
        # comparison checks every gradient of a step
        self._grad_layouts: dict[int, tuple[tuple[int, ...], list[tuple[Any, ...]], list[int] | None]] = {}
        # id(param group) -> (its options at its last step, their types, its spec): see _spec_of
        self._spec_hits: dict[int, tuple[tuple[Any, ...], tuple[type, ...], Spec]] = {}
        # group index -> the state_dtypes its state was last made to follow (see _state_dtypes_changes)
        self._dtypes_applied: dict[int, dict[str, torch.dtype] | None] = {}
        # group index -> (the spec its parameters were last checked against, their ids): see
        # _check_params_of
        self._params_checked: dict[int, tuple[Spec, tuple[int, ...]]] = {}
        unknown = set(kwargs) - set(self._fields()) - set(self.torch_options)
        if unknown:
            raise TypeError(
                f"{owner}: unexpected argument(s) {sorted(unknown)}; "
                f"accepted: {', '.join((*self._fields(), *self.torch_options))}"
            )
        hyperparameters = {k: v for k, v in kwargs.items() if k not in self.torch_options}
        # what the constructor was given, as given: a group with another convention takes these and
        # its own convention's defaults for the rest (see add_param_group)
        self._given: dict[str, Any] | None = dict(hyperparameters)
        options = {**self.torch_options, **{k: v for k, v in kwargs.items() if k in self.torch_options}}
        self._check_options(options, ())
        if state_dtypes is not None:  # in every group, as torch.optim keeps its options
            options[STATE_DTYPES] = _state_dtypes(owner, self.spec_class, state_dtypes)
        plain = {k: _plain(owner, k, v) for k, v in hyperparameters.items()}
        defaults = self.spec_class(**plain).hyperparameters  # validates first
        # tensor hyperparameters stay the caller's tensors, as torch.optim keeps them (a scheduler
        # writes a tensor lr in place)
        defaults.update({k: v for k, v in hyperparameters.items() if _holds_tensor(v)})
        self._extension_defaults = {k: defaults.pop(k) for k in self.extensions}
        super().__init__(params, {**defaults, **options})
        self.state = _watched(self.state)
        if self.state_at_construction:
            for group in self.param_groups:
                spec = self._spec_of(group)
                for p in group["params"]:
                    # a lazy module's parameter has no shape yet (torch.optim.Adagrad fails on it):
                    # its state comes at its first step, as any optimizer's; a frozen integer one
                    # is never stepped
                    if not (is_lazy(p) or _never_stepped(p)):
                        self._init_state(spec, p, group.get(STATE_DTYPES))

    # -- the contract -------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {
            **super().__getstate__(),
            "implementation": self.implementation,
            "_given": self._given,
            "_extension_defaults": self._extension_defaults,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # the caches first: completing a group may read the spec cache (Schedule-Free's history)
        self.__dict__["_grad_layouts"] = {}  # a cache (an older pickle's entries have another form)
        self.__dict__["_spec_hits"] = {}  # a cache: id(group) -> (its options, its spec)
        self.__dict__["_params_checked"] = {}  # a cache: group index -> (spec, parameter ids)
        for name, default in self.torch_options.items():
            self.defaults.setdefault(name, default)
        for group in self.param_groups:  # groups of older state_dicts or pickles
            self._complete(group)
            for p in group["params"]:
                entry = self.state.get(p)
                if entry and "step" in entry:
                    step = entry["step"]
                    if not (isinstance(step, torch.Tensor) and step.dtype == torch.int64 and step.is_cpu):
                        entry["step"] = torch.tensor(_step_count(step), dtype=torch.int64)
        self.state = _watched(self.state)
        self.__dict__.setdefault("implementation", "auto")
        self.__dict__.setdefault("_given", None)  # unknown: groups take ``defaults`` as they are
        # a pickle from before extensions left ``defaults``: they are in its ``defaults`` still
        self.__dict__.setdefault("_extension_defaults", {})
        self.__dict__.setdefault("_buckets", {})
        self.__dict__["_dtypes_applied"] = {}  # the groups may have changed: checked at the next step

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (torch.optim's ``add_param_group``); everything is checked before it is added.

        ``params`` may be a tensor or any iterable (a generator is read once) of tensors or of
        ``(name, tensor)`` pairs (``named_parameters()``: the names are kept as ``param_names``, as
        torch.optim does). Raises ``ValueError`` for bad hyperparameters, a parameter listed twice
        (torch.optim would update it twice per step) or in another group, ``TypeError`` for a
        non-tensor, and what :meth:`_check_options` raises; nothing is added then.

        A group missing a hyperparameter takes ``defaults``' value, as in torch.optim, except in a
        group whose ``convention`` differs from the constructor's: there a hyperparameter the
        constructor was not given takes that convention's default (``eps=1e-8`` for ``"torch"``
        in an optimizer built with ``convention="keras"``, not Keras's ``1e-7``).
        """
        owner = f"uniopt.torch.{self.spec_class.name}"
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group)}")
        params = param_group["params"]
        if isinstance(params, torch.Tensor):
            params = [params]
        elif not isinstance(params, set):  # torch.optim refuses sets (unordered)
            params = list(params)  # the one pass over a generator
        param_group["params"] = params
        supplied = {name: param_group[name] for name in self.constructor_only if name in param_group}
        convention = self.defaults.get("convention")
        if self._given is not None and param_group.get("convention", convention) != convention:
            # the defaults a convention chooses (eps, ...) are the group's convention's
            own = {**self._given, **{k: v for k, v in param_group.items() if k in self._fields()}}
            resolved = self.spec_class(**{k: _plain(owner, k, v) for k, v in own.items()}).hyperparameters
            for name in self._fields():
                param_group.setdefault(name, own[name] if _holds_tensor(own.get(name)) else resolved[name])
        for name, value in self._extension_defaults.items():  # not in ``defaults`` (see extensions)
            param_group.setdefault(name, value)
        if param_group.get(STATE_DTYPES) is not None:  # a group's own, checked as the constructor's
            param_group[STATE_DTYPES] = _state_dtypes(owner, self.spec_class, param_group[STATE_DTYPES])
        merged = {**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}}
        spec = self._spec_of(merged)
        _check_state_dtype_names(spec, merged.get(STATE_DTYPES))
        if isinstance(params, list):
            tensors = [p[1] if isinstance(p, tuple) and len(p) == 2 else p for p in params]
            names = [p[0] if isinstance(p, tuple) and len(p) == 2 else None for p in params]
            tensors_only = [p for p in tensors if isinstance(p, torch.Tensor)]
            self._check_options(merged, tensors_only)
            seen: dict[int, int] = {}
            for i, p in enumerate(tensors):
                if not isinstance(p, torch.Tensor):
                    continue  # torch.optim names the type
                if id(p) in seen:
                    first = seen[id(p)]
                    label = f"{names[i]!r}" if names[i] is not None else f"of shape {tuple(p.shape)}"
                    raise ValueError(
                        f"{owner}: the param group lists a parameter {label} twice (positions "
                        f"{first} and {i}); torch.optim would update it twice per step (deprecated), "
                        "uniopt refuses it: list each parameter once"
                    )
                seen[id(p)] = i
                _check_param(spec, p)
                _check_state_dtypes(spec, p, merged.get(STATE_DTYPES), names[i])
        super().add_param_group(param_group)
        for name, value in supplied.items():
            if value != self.defaults[name]:
                native = self.spec_class.name
                warnings.warn(
                    f"uniopt.torch.{native}: {name}={value!r} in a param group is honoured here; "
                    f"torch.optim.{native} ignores a group's {name} (it uses the constructor's, "
                    f"{self.defaults[name]!r}), so this group's numbers differ from torch.optim's",
                    UserWarning,
                    stacklevel=_caller_level(),
                )
        # DTensor parameters (FSDP2, tensor parallelism): their gradients are checked before a step
        distributed = any(map(_dtensor.is_dtensor, self.param_groups[-1]["params"]))
        self._distributed = getattr(self, "_distributed", False) or distributed

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step of the spec for every parameter that has a gradient; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if getattr(self, "_distributed", False):  # before anything changes
            _dtensor.check_grads(self.spec_class.name, self.param_groups)
        # the spec's ops run in their operands' dtypes: no autocast inside the update (a plain `with`
        # statement, which torch.compile traces; an ExitStack of them breaks its graph)
        if any(torch.is_autocast_enabled(kind) for kind in _AUTOCAST_DEVICES):
            with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
                self._update()
        else:
            self._update()
        return loss

    def _update(self) -> None:
        """The update of :meth:`step`, after its closure."""
        compiling = torch.compiler.is_compiling()
        if compiling or self.implementation == "loop" or not self.spec_class.elementwise:
            prepare = _compiler_disabled_prepare() if compiling else UnioptOptimizer._prepare
            plan = prepare(self)
            if not compiling and self.implementation == "auto" and self.spec_class.name in _stacked.SPECS:
                stacks, plan = _stacked.split(plan)  # many small parameters of one shape: one rule call
                for members in stacks:
                    _stacked.run(members)
            if (
                not compiling
                and self.implementation in ("auto", "compiled")
                and not self.spec_class.elementwise
            ):
                # large parameters (every one under "compiled"): the rule compiled per shape
                auto = self.implementation == "auto"
                taken, plan = _pertensor.split(plan, AUTO_COMPILE_MIN if auto else 0, explicit=not auto)
                plan += _pertensor.run(taken, fallback=auto)
            _run_loop(plan)
        else:
            self._step_flat()

    def _step_flat(self) -> None:
        """A step of the flat implementations: validate every group, then run each group's buckets
        (and the per-tensor path for parameters that cannot be flattened)."""
        groups, sparse = [], False
        # the C++ host loops (_host.py) where built, and no torch function mode would see `p.grad`
        host = None if torch._C._is_torch_function_mode_enabled() else _host.module()
        for index, group in enumerate(self.param_groups):  # validate everything before any update
            spec = self._spec_of(group)
            params = group["params"]
            # every gradient present, dense, of its parameter's dtype, shape and device: the layouts
            # are a function of the parameters, recorded as _MATCHING
            grads = host.dense_grads(params) if host is not None else None
            layouts: Any = _MATCHING
            if grads is None:
                grads = list(map(_GRAD, params))
                if any(map(operator.is_, grads, itertools.repeat(None))):
                    params = [p for p, g in zip(params, grads, strict=True) if g is not None]
                    grads = [g for g in grads if g is not None]
                # the flat kernels read a gradient's memory: one with the negative bit set (the
                # imaginary part of a conjugate) is materialised first
                if any(map(torch.Tensor.is_neg, grads)):
                    grads = [g.resolve_neg() for g in grads]
                # checked again when a gradient's or its parameter's layout changes
                layouts = (list(map(_GRAD_LAYOUT, grads)), list(map(_PARAM_LAYOUT, params)))
            ids = tuple(map(id, params))
            cached = self._grad_layouts.get(index)
            if (
                cached is None
                or cached[0] != ids
                or (layouts is not cached[1] and layouts != cached[1])
                or (cached[2] is not None and _sparse_dims(grads) != cached[2])
            ):
                for p in params:  # names the first culprit; the layouts are then accepted ones
                    _check_grad(spec, p, bool(group.get("fused")))
                any_sparse = any(g.is_sparse for g in grads)
                cached = (ids, layouts, _sparse_dims(grads) if any_sparse else None)
                self._grad_layouts[index] = cached
            self._check_params_of(index, spec, params, cached[0])
            sparse = sparse or cached[2] is not None
            groups.append((index, spec, _lr(group["lr"]), params, ids, grads))
        self._apply_state_dtypes(self._state_dtypes_changes())  # checked, then applied
        if sparse:  # a step with a sparse gradient runs per tensor (_sparse.step_rows)
            _run_loop(self._plan([(i, spec, lr, p) for i, spec, lr, params, _, _ in groups for p in params]))
            return
        host: dict[tuple[int, int, float, int], Any] = {}
        rounded: dict[tuple[int, int, float, int, torch.dtype], Any] = {}
        for index, spec, lr, params, ids, grads in groups:
            loop, buckets = self._layout(index, spec, params, ids)
            if loop:
                _run_loop(self._plan([(index, spec, lr, p) for p in loop], keep_buckets=True))
            if any(bucket.distributed for bucket, _ in buckets):  # DTensor parameters: local shards
                grads = _dtensor.local_grads(params, grads)
            for bucket, compiled in buckets:
                step_key = (index, id(spec), lr, bucket.step + 1)
                if step_key not in host:
                    host[step_key] = self._scalars_of(index, spec, lr, bucket.step + 1)
                # the C kernel builds in a fraction of a second, so ``auto`` takes it at any size;
                # it takes the host's float64 scalars, rounded once to its dtype by NumPy (as
                # _round rounds them into tensors for the other kernels)
                native_allowed = compiled or self.implementation == "auto"
                if native_allowed and bucket.native_segments() is not None:
                    native = _native.kernel(spec, bucket.dtype, host[step_key], bucket.slot_dtypes)
                    if native is not None and bucket.run_native(
                        native, native.scalar_values(host[step_key]), grads
                    ):
                        continue
                key = (*step_key, bucket.dtype)
                if key not in rounded:
                    rounded[key] = _round(host[step_key], bucket.dtype)
                fn = _flat.kernel(spec, bucket.dtype, compiled, bucket.device.type, bucket.slot_dtypes)
                bucket.run(fn, rounded[key], grads)

    def _layout(
        self, index: int, spec: Spec, params: list[torch.Tensor], ids: tuple[int, ...]
    ) -> tuple[list[torch.Tensor], list[tuple[_flat.Bucket, bool]]]:
        """Group ``index``'s parameters with a gradient (``ids``: their ``id``s): those the per-tensor
        path takes, and the buckets of the others, each with whether its rule is compiled. Kept from
        the previous step while the parameters, ``opt.state`` and every bucket are unchanged; rebuilt
        otherwise."""
        names = spec.slot_names()
        cached = self._buckets.get(index)
        if (
            cached is not None
            and cached[0] == ids
            and cached[1] is self.state
            and cached[2] == names
            and all(b.intact(self.state) for b, _ in cached[4])
        ):
            return cached[3], cached[4]
        loop, by_kind = [], {}
        position = {id(p): i for i, p in enumerate(params)}
        dtypes = self.param_groups[index].get(STATE_DTYPES)
        for p in params:
            # state in shared memory (Adagrad.share_memory) is updated in place per tensor: a
            # bucket would move it into buffers of this process. A DTensor parameter is bucketed
            # by its local shard, in buckets of DTensor parameters only; a bucket's slot buffers
            # are each of one dtype (the group's state_dtypes, else the parameter's)
            distributed = _dtensor.is_dtensor(p)
            if _flat.eligible(_dtensor.local(p)) and not _in_shared_memory(self.state.get(p)):
                slot_dtypes = tuple((dtypes or {}).get(n, p.dtype) for n in names)
                by_kind.setdefault((p.device, p.dtype, distributed, slot_dtypes), []).append(p)
            else:
                loop.append(p)
        buckets = []
        for (*_, slot_dtypes), members in by_kind.items():
            by_step: dict[int, tuple[list[torch.Tensor], list[dict[str, Any]]]] = {}
            for p in members:
                state = self._init_state(spec, p, dtypes)
                same_step = by_step.setdefault(int(state["step"]), ([], []))
                same_step[0].append(p)
                same_step[1].append(state)
            made = [_flat.Bucket(ps, names, states, position, slot_dtypes) for ps, states in by_step.values()]
            if self.implementation == "auto":
                compiled = sum(b.size for b in made) >= AUTO_COMPILE_MIN
            else:
                compiled = self.implementation == "compiled"
            buckets.extend((b, compiled) for b in made)
        self._buckets[index] = (ids, self.state, names, loop, buckets)
        return loop, buckets

    def _prepare(self) -> list[tuple[Spec, torch.Tensor, torch.Tensor, dict[str, Any], Any]]:
        """Host work of a step: validate everything, create missing state, advance the step
        counters and round each step's scalars once per dtype. Returns what the rule needs.

        Kept out of ``torch.compile`` graphs (see :func:`_compiler_disabled_prepare`): it is Python
        bookkeeping, and what it returns (the cached spec, 0-d scalar tensors) lets a compiled rule
        run without recompiling each step.
        """
        work = []
        for index, group in enumerate(self.param_groups):  # validate everything before any change
            spec = self._spec_of(group)
            self._check_params_of(index, spec, group["params"])
            for p in group["params"]:
                if p.grad is not None:
                    _check_grad(spec, p, bool(group.get("fused")))
                    work.append((index, spec, _lr(group["lr"]), p))
        self._apply_state_dtypes(self._state_dtypes_changes())  # checked, then applied
        return self._plan(work)

    def _check_params_of(
        self, index: int, spec: Spec, params: list[torch.Tensor], ids: tuple[int, ...] | None = None
    ) -> None:
        """Group ``index``'s parameters checked against ``spec`` as :meth:`add_param_group` checks
        them (:func:`_check_param`: Muon's 2-D rule, the dtypes, the scalars that would round to 0),
        again whenever the group's spec or its parameters changed since they were last checked: an
        option set in ``param_groups`` mid-run (``convention="torch"`` on a group holding a 1-D
        parameter) must be refused before any group is updated, not by the rule halfway through the
        step. ``ids``: the parameters' ``id``s where the caller has them (the flat step's, kept from
        step to step while they do not change: then no comparison of them is made here). Each kind
        of parameter (tensor type, dtype, shape: all the check reads) is checked once."""
        ids = tuple(map(id, params)) if ids is None else ids
        seen = self._params_checked.get(index)
        if seen is not None and seen[0] is spec and (seen[1] is ids or seen[1] == ids):
            return
        kinds = set()
        lazy = False
        for p in params:
            if is_lazy(p):  # no shape yet: checked once materialized (not marked checked until then)
                lazy = True
                continue
            kind = (type(p), p.dtype, p.shape, _never_stepped(p))
            if kind not in kinds:
                _check_param(spec, p)
                kinds.add(kind)
        if not lazy:
            self._params_checked[index] = (spec, ids)

    def _state_dtypes_changes(self) -> list[tuple[int, dict[str, torch.dtype] | None]]:
        """The groups whose ``state_dtypes`` changed since their state last followed it (set or
        replaced in ``param_groups``, as torch.optim's options are: ``None`` stores every slot in its
        parameter's dtype), each with the new value, checked as :meth:`add_param_group` checks it
        (``ValueError`` before anything changes), except that it may name a slot another setting of
        the optimizer keeps (SGD's ``momentum_buffer`` after ``momentum`` was set to 0)."""
        owner = f"uniopt.torch.{self.spec_class.name}"
        changed = []
        for index, group in enumerate(self.param_groups):
            current = group.get(STATE_DTYPES)
            if index in self._dtypes_applied and self._dtypes_applied[index] == current:
                continue
            dtypes = None if current is None else _state_dtypes(owner, self.spec_class, current)
            spec = self._spec_of(group)
            _check_state_dtype_names(spec, dtypes, _possible_slots(self.spec_class, spec))
            for p in group["params"]:
                _check_state_dtypes(spec, p, dtypes, None)
            changed.append((index, dtypes))
        return changed

    def _apply_state_dtypes(self, changed: list[tuple[int, dict[str, torch.dtype] | None]]) -> None:
        """Store the existing slots of each changed group in its new ``state_dtypes`` (the
        parameter's dtype for a slot it does not name): a wider dtype exactly, a narrower one rounded
        as the rule stores a narrower slot (:func:`uniopt._math.stored`: to nearest, ties to even)."""
        cast = False
        for index, dtypes in changed:
            group = self.param_groups[index]
            if dtypes is not None:
                group[STATE_DTYPES] = dtypes  # as add_param_group keeps it: torch.dtype values
            for p, name, value in self._recast(group["params"], dtypes):
                self.state[p][name] = value
                cast = True
            self._dtypes_applied[index] = None if dtypes is None else dict(dtypes)
        if cast:  # the flat buffers hold the old slots: rebuilt at the next flat step
            self._buckets.clear()

    def _recast(
        self, params: Iterable[torch.Tensor], dtypes: Mapping[str, torch.dtype] | None
    ) -> Iterable[tuple[torch.Tensor, str, torch.Tensor]]:
        """``(param, slot name, the slot stored as dtypes says)`` for each existing slot of
        ``params`` that ``dtypes`` (a group's ``state_dtypes``) stores in another dtype than it is in."""
        for p in params:
            entry = self.state.get(p)
            for name in self.spec_class.lower_precision_slots if entry else ():
                value = entry.get(name)
                if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
                    continue
                want = (dtypes or {}).get(name, p.dtype)
                if value.dtype != want:
                    yield p, name, _stored(value, value.new_empty((), dtype=want), xp)

    def _scalars_of(self, index: int, spec: Spec, lr: float, step: int) -> Any:
        """The host scalars of group ``index`` at 1-based ``step`` (a parameter's step count)."""
        return spec.step_scalars(step, lr=lr)

    def _plan(
        self, work: list[tuple[int, Spec, float, torch.Tensor]], keep_buckets: bool = False
    ) -> list[tuple[Spec, torch.Tensor, torch.Tensor, dict[str, Any], Any]]:
        """Per-tensor work: lazy state, step counters advanced, scalars rounded once per dtype.

        Unless ``keep_buckets`` (the work holds no flattened parameter), the flat buckets are
        dropped: per-tensor steps move counters they cache, so they are rebuilt at the next flat step.
        """
        if self._buckets and not keep_buckets:
            self._buckets.clear()
        # keyed by the spec's id (it outlives the step: ``work`` holds it), not by the spec, whose
        # dataclass hash goes through every field
        scalars: dict[tuple[int, int, float, int], Any] = {}
        rounded: dict[tuple[int, int, float, int, torch.dtype], Any] = {}
        plan = []
        for index, spec, lr, p in work:
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.int64)
            state["step"] += 1
            step = int(state["step"])
            at = (index, id(spec), lr, step)
            if at not in scalars:
                scalars[at] = self._scalars_of(index, spec, lr, step)
            real = torch.view_as_real(p) if p.is_complex() else p
            key = (*at, real.dtype)
            if key not in rounded:
                # 0-d CPU tensors: torch reads them as scalars on any device, with no transfer
                rounded[key] = _round(scalars[at], real.dtype)
            slots = self._slots(state, spec, p, self.param_groups[index].get(STATE_DTYPES))
            if _dtensor.is_dtensor(p):  # FSDP2, tensor parallelism: the rule on the local shards
                plan.append(_dtensor.plan_entry(spec, p, slots, rounded[key]))
                continue
            grad = p.grad
            if grad.is_sparse:  # coalesced; densified unless the spec's sparse rule is "rows"
                grad = _sparse.prepared(spec, grad)
            elif grad.is_complex():  # a lazily conjugated gradient (autograd of p.conj()) made plain
                grad = torch.view_as_real(grad.resolve_conj())
            plan.append((spec, real, grad, slots, rounded[key]))
        return plan

    def scratch_bytes(self) -> int:
        """Bytes the optimizer keeps between steps besides its state: the flat path's gather buffers
        (8 bytes per gathered float32 parameter)."""
        return sum(
            buffer.untyped_storage().nbytes()
            for entry in self._buckets.values()
            for bucket, _ in entry[4]
            if bucket.gathers is not None
            for buffer in bucket.gathers[:2]
        )

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's state_dict, plus which uniopt optimizer wrote it: a ``uniopt`` entry in the
        dict and in each saved param group. ``torch.distributed.checkpoint.state_dict``'s
        ``get_optimizer_state_dict`` keeps only ``state`` and ``param_groups`` (keyed by parameter
        names), so the groups' entries are what tells :meth:`load_state_dict` that such a dict was
        saved by this optimizer; a loaded group does not keep it. A group's ``state_dtypes`` set
        since the last step is saved with its slots in those dtypes (as the next step stores
        them; ``ValueError`` for a value the step would refuse), the live state unchanged."""
        out = super().state_dict()
        # a group's state_dtypes changed since the last step (applied at the next one): the dict
        # holds its slots as that step will store them, so that it loads back
        for index, dtypes in self._state_dtypes_changes():
            saved = out["param_groups"][index]
            if dtypes is not None:
                saved[STATE_DTYPES] = dtypes
            group = self.param_groups[index]
            position = {id(p): i for i, p in zip(saved["params"], group["params"], strict=True)}
            for p, name, value in self._recast(group["params"], dtypes):
                i = position[id(p)]
                out["state"][i] = {**out["state"][i], name: value}  # the live state is not changed
        tag = self._state_dict_tag()
        out[_STATE_DICT_KEY] = tag
        for group in out["param_groups"]:
            group[_STATE_DICT_KEY] = dict(tag)
        return out

    def _state_dict_tag(self) -> dict[str, Any]:
        """The ``uniopt`` entry of this optimizer's state_dicts."""
        return {"optimizer": self.spec_class.name, "format": 1}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch.optim's ``load_state_dict``, checking that the dict comes from this optimizer and
        fits these params before anything is loaded.

        The load-state-dict pre-hooks run first (they may adapt the dict, as torch.optim lets them),
        then the checks (``ValueError``, see docs/torch.md), then torch.optim's loading and the
        post-hooks. A group lacking keys gets their defaults (:meth:`_complete`); a ``step`` saved
        as a number or a float tensor becomes the int64 CPU tensor uniopt keeps. The saved groups'
        ``state_dtypes`` come with them (torch.optim restores every group key; a saved group without
        one takes ``defaults``' where this optimizer was built with one): a slot they store
        narrower must arrive in that dtype, and a narrower slot needs such an entry (``ValueError``
        otherwise, as :func:`uniopt.torch.import_state` refuses it), and it keeps its dtype
        (torch.optim's loading casts every floating state entry but ``step`` to its parameter's
        dtype; uniopt casts it back, exactly). A parameter's state must hold ``step`` and the slots
        its group's settings use; it may also hold slots that other settings of the optimizer keep
        (written after a group's ``momentum`` or ``amsgrad`` changed mid-run), which are loaded
        and kept unused, as torch.optim keeps them; any other entry is refused.
        """
        owner = f"uniopt.torch.{self.spec_class.name}"
        state_dict = state_dict.copy()
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            adapted = pre_hook(self, state_dict)
            if adapted is not None:
                state_dict = adapted
        self._check_state_dict(state_dict)
        plain = {k: v for k, v in state_dict.items() if k != _STATE_DICT_KEY}
        plain["param_groups"] = [
            {k: v for k, v in group.items() if k != _STATE_DICT_KEY} for group in state_dict["param_groups"]
        ]
        for group in plain["param_groups"]:  # dtype names as torch.dtype (checked above)
            if group.get(STATE_DTYPES) is not None:
                group[STATE_DTYPES] = _state_dtypes(owner, self.spec_class, group[STATE_DTYPES])
        # steps as Python ints: torch.optim would cast a step tensor to float32 on the parameter's
        # device in a group with fused=True, which rounds counts above 2**24
        indices = {index for group in state_dict["param_groups"] for index in group["params"]}
        plain["state"] = {
            index: {**entry, "step": _step_count(entry["step"])}
            if index in indices and "step" in entry
            else entry
            for index, entry in state_dict["state"].items()
        }
        hooks = self._optimizer_load_state_dict_pre_hooks
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()  # they ran above
        try:
            super().load_state_dict(plain)
        finally:
            self._optimizer_load_state_dict_pre_hooks = hooks
        # torch.optim casts every floating state entry but ``step`` to its parameter's dtype
        # (Optimizer._process_value_according_to_param_policy); a slot stored narrower
        # (state_dtypes, checked above to arrive in its dtype) goes back to it: exact both ways
        for group in self.param_groups:
            for p in group["params"] if group.get(STATE_DTYPES) else ():
                entry = self.state.get(p)
                for name, dtype in group[STATE_DTYPES].items() if entry else ():
                    value = entry.get(name)
                    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != dtype:
                        entry[name] = _stored(value, value.new_empty((), dtype=dtype), xp)

    # -- helpers -------------------------------------------------------------------------------
    def _check_options(self, group: Mapping[str, Any], params: Iterable[torch.Tensor]) -> None:
        """Check torch.optim's implementation switches in ``group`` as torch.optim does, and refuse
        the two that uniopt cannot honour.

        ``foreach`` and ``fused`` (``None`` or a bool) choose torch.optim's kernels; uniopt's
        numbers are the spec's whatever they say. Raises ``RuntimeError`` (torch.optim's message)
        for ``fused=True`` with ``foreach=True``, and for ``fused=True`` with a parameter that is not
        a floating-point tensor on a device with fused kernels (torch.optim raises this at its first
        step; here nothing is added). Raises ``ValueError`` for ``capturable=True`` (uniopt keeps the
        step counters and per-step scalars on the host, so a step captured in a CUDA graph would
        replay its first scalars), ``differentiable=True`` (the step runs under ``torch.no_grad``),
        a value that is not a bool, and Adam's ``decoupled_weight_decay=True`` (that is
        ``uniopt.torch.AdamW``). Source: torch/optim/optimizer.py and each optimizer's ``__init__``.
        """
        owner = f"uniopt.torch.{self.spec_class.name}"
        # a group's key this optimizer does not take is the user's own, as in torch.optim
        group = {name: value for name, value in group.items() if name in self.torch_options}
        for name in ("foreach", "fused"):
            if name in group and group[name] not in (None, True, False):
                raise ValueError(f"{owner}: {name}={group[name]!r}; expected None, True or False")
        for name in ("capturable", "differentiable", "decoupled_weight_decay"):
            if name in group and not isinstance(group[name], bool):
                raise ValueError(f"{owner}: {name}={group[name]!r}; expected True or False")
        if group.get("fused") and group.get("foreach"):
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        if group.get("capturable"):
            raise ValueError(
                f"{owner}: capturable=True is not supported: uniopt keeps the step counters and "
                "the per-step scalars on the host, so a step captured in a CUDA graph would replay "
                "its first step's scalars; expected capturable=False (torch.compile(opt.step) "
                "does not need it)"
            )
        if group.get("differentiable"):
            raise ValueError(
                f"{owner}: differentiable=True is not supported: step() runs under "
                "torch.no_grad and writes the parameters in place, so no gradient flows through "
                "it; expected differentiable=False"
            )
        for name in _SELECTING:  # an option whose value is another uniopt class (Adam, AdamW)
            fixed = self.torch_options.get(name)
            if fixed is not None and group.get(name) != fixed:
                other = _selected(self.spec_class, name, group[name])
                raise ValueError(
                    f"{owner}: {name}={group[name]!r} is "
                    f"{f'uniopt.torch.{other}' if other else 'another optimizer'}; expected {name}={fixed!r}"
                )
        if group.get("fused"):
            from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

            devices = _get_fused_kernels_supported_devices()
            for p in params:
                if not (p.device.type in devices and torch.is_floating_point(p)):
                    raise RuntimeError(
                        "`fused=True` requires all the params to be floating point Tensors of "
                        f"supported devices: {devices} but {p.dtype} and {p.device.type}"
                    )

    def _complete(self, group: dict[str, Any]) -> None:
        """Give a group from an older state_dict or pickle the keys it lacks, with their defaults:
        torch.optim's for its switches, the spec's for a hyperparameter (given the group's
        ``convention``), as torch.optim's ``__setstate__`` fills its groups; ``state_dtypes`` where
        ``defaults`` has it (a group saved by an optimizer built without it takes this one's)."""
        for name, default in self.torch_options.items():
            group.setdefault(name, default)
        if STATE_DTYPES in self.defaults:
            group.setdefault(STATE_DTYPES, self.defaults[STATE_DTYPES])
        missing = [name for name in self._fields() if name not in group]
        if missing:
            owner = self.spec_class.name
            given = {n: _plain(owner, n, group[n]) for n in self._fields() if n in group}
            filled = self.spec_class(**given).hyperparameters
            for name in missing:
                group[name] = filled[name]

    def _init_state(
        self, spec: Spec, p: torch.Tensor, dtypes: Mapping[str, torch.dtype] | None
    ) -> dict[str, Any]:
        """``p``'s state, created (step 0 and the spec's initial slots) where missing; ``dtypes``:
        the group's ``state_dtypes``."""
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.int64)
        for name in spec.slots_in_use(tuple(p.shape)):
            self._slot(state, spec, name, p, dtypes)
        return state

    @classmethod
    def _fields(cls) -> tuple[str, ...]:
        fields = _FIELDS.get(cls.spec_class)
        if fields is None:
            fields = _FIELDS[cls.spec_class] = tuple(f.name for f in dataclasses.fields(cls.spec_class))
        return fields

    def _spec_of(self, group: dict[str, Any]) -> Spec:
        """The group's spec, validated; ``lr`` is passed per step, so a scheduler changing it keeps
        the same (cached) spec object. A group whose options are all immutable values (floats,
        tuples: no tensor or list, which can change in place) equal to those of its previous step
        gets that step's spec without validating again."""
        raw = tuple(map(group.__getitem__, self._fields()))
        hit = self._spec_hits.get(id(group))
        # 1 == True and (0, 0.9) == (False, 0.9): the types, a tuple's items' too, must match
        if hit is not None and hit[0] == raw and hit[1] == _signature(raw):
            return hit[2]
        spec = self._validated_spec(group)
        if all(map(_immutable, raw)):
            self._spec_hits[id(group)] = (raw, _signature(raw), spec)
        self._check_run_constants(group, spec)
        return spec

    def _check_run_constants(self, group: dict[str, Any], spec: Spec) -> None:
        """Warn (once per optimizer) where a hyperparameter the spec's scalars assume constant over
        the run (:meth:`uniopt.Spec.run_constants`: NAdam's ``betas[0]``) changed after the group's
        parameters took a step: from then on the numbers are not torch.optim's."""
        constants = spec.run_constants()
        if not constants or "params" not in group:  # a group being merged, not yet added
            return
        seen = self.__dict__.setdefault("_run_constants", {})
        entry = seen.get(id(group))
        # the group is kept with its values, so that its id cannot name a later group
        before = entry[1] if entry is not None and entry[0] is group else None
        seen[id(group)] = (group, constants)
        if before is None or before == constants or self.__dict__.get("_run_constants_warned"):
            return
        if not any(int(self.state[p].get("step", 0)) > 0 for p in group["params"] if p in self.state):
            return
        self._run_constants_warned = True
        changed = ", ".join(
            f"{k} from {before[k]!r} to {v!r}" for k, v in constants.items() if before.get(k) != v
        )
        warnings.warn(
            f"uniopt.torch.{spec.name}: {changed} after the parameters took steps (a scheduler "
            "cycling momentum?). uniopt computes the product of the momentum-schedule factors from "
            "the step count with the current values, as if they had held from the first step; "
            f"torch.optim.{spec.name} multiplies each step's own factor into state['mu_product'], "
            "so from this step the numbers differ from torch.optim's (docs/optimizers/nadam.md)",
            UserWarning,
            stacklevel=_caller_level(),
        )

    def _validated_spec(self, group: dict[str, Any]) -> Spec:
        owner = self.spec_class.name
        values = tuple((name, _plain(owner, name, group[name])) for name in self._fields() if name != "lr")
        # keyed by the values and their types: 1 == True, and a spec made with weight_decay=1 must
        # not stand for weight_decay=True, which the spec refuses (a bool is no number)
        key = (self.spec_class, values, tuple(_signature(v) for _, v in values))
        try:
            hit = key in _SPECS
        except TypeError:  # an unhashable value (a NumPy array): validated afresh, not kept
            return self._checked_lr(self.spec_class(**dict(values)), group)
        if hit:
            _SPECS.move_to_end(key)
        else:
            _SPECS[key] = self.spec_class(**dict(values))
            if len(_SPECS) > _SPEC_CACHE_SIZE:  # e.g. schedulers that cycle betas or momentum
                _SPECS.popitem(last=False)
        return self._checked_lr(_SPECS[key], group)

    def _checked_lr(self, spec: Spec, group: dict[str, Any]) -> Spec:
        """``spec``, once the group's ``lr`` is checked (``ValueError`` naming it)."""
        owner = self.spec_class.name
        check_interval(spec.name, "lr", _plain(owner, "lr", group["lr"]), 0.0)
        return spec

    def _slots(
        self, state: dict[str, Any], spec: Spec, p: torch.Tensor, dtypes: Mapping[str, torch.dtype] | None
    ) -> dict[str, torch.Tensor]:
        """Every slot the rule takes: those in use from ``state`` (created where missing), the
        placeholders (:meth:`uniopt.Spec.slots_in_use`) as fresh zeros that ``state`` does not keep,
        as torch.optim.Adafactor keeps no ``variance`` for a matrix. ``dtypes``: the group's
        ``state_dtypes``."""
        used = spec.slots_in_use(tuple(p.shape))
        return {
            name: self._slot(state, spec, name, p, dtypes)
            if name in used
            else self._placeholder(spec, name, p, dtypes)
            for name in spec.slot_names()
        }

    def _placeholder(
        self, spec: Spec, name: str, p: torch.Tensor, dtypes: Mapping[str, torch.dtype] | None
    ) -> torch.Tensor:
        """A slot the rule does not use for ``p`` (:meth:`uniopt.Spec.slots_in_use`): zeros it
        passes through unchanged, made once per spec, slot, shape, dtype and device and shared by
        the parameters and steps that take it (a DTensor parameter's made each time)."""
        if _dtensor.is_dtensor(p):
            return _new_slot(spec, name, p, dtypes)
        key = (id(spec), name, p.shape, p.dtype, p.device, (dtypes or {}).get(name))
        cache = self.__dict__.setdefault("_placeholders", {})
        hit = cache.get(key)
        if hit is None:  # the spec kept with its zeros: its id is not reused while cached
            hit = cache[key] = (spec, _new_slot(spec, name, p, dtypes))
        return hit[1]

    def _slot(
        self,
        state: dict[str, Any],
        spec: Spec,
        name: str,
        p: torch.Tensor,
        dtypes: Mapping[str, torch.dtype] | None,
    ) -> torch.Tensor:
        """The slot's tensor, viewed as real for complex params; created if the group gained it (in
        its ``state_dtypes`` dtype where the group names one). A slot kept in another dtype than
        that (else its parameter's) is converted first, as the flat buckets store it: the parameter's
        dtype changed mid-run (``model.to(torch.float64)``), and the slots follow it."""
        if name not in state:
            state[name] = (
                _new_slot(spec, name, p, dtypes)
                if not p.is_complex()
                else torch.view_as_complex(spec.init_slot(name, torch.view_as_real(p), xp))
            )
        value = state[name]
        dtype = (dtypes or {}).get(name, p.dtype)
        if isinstance(value, torch.Tensor) and value.dtype != dtype:
            value = state[name] = value.to(dtype)
        return torch.view_as_real(value) if value.is_complex() else value

    def _check_state_dict(self, state_dict: dict[str, Any]) -> None:
        owner = f"uniopt.torch.{self.spec_class.name}"
        tag = _tag_of(state_dict)
        name = self.spec_class.name
        if not isinstance(tag, dict):
            other = f"torch.optim.{name}" if hasattr(torch.optim, name) else f"another {name}"
            groups = state_dict.get("param_groups") or []
            named = any(
                isinstance(i, str) for g in groups if isinstance(g, dict) for i in g.get("params", ())
            )
            hint = (
                " (a dict of torch.distributed.checkpoint.state_dict keeps the entry in its default "
                "form; StateDictOptions(flatten_optimizer_state_dict=True) drops it: save and load "
                "uniopt optimizers unflattened)"
                if named
                else ""
            )
            raise ValueError(
                f"{owner}.load_state_dict: the state_dict was saved by a non-uniopt optimizer (it "
                f"has no {_STATE_DICT_KEY!r} entry), for example {other}; nothing was "
                f"loaded. To continue that run, call "
                f"uniopt.torch.load_torch_optim_state_dict(optimizer, state_dict){hint}"
            )
        if tag.get("optimizer") != name:
            raise ValueError(
                f"{owner}.load_state_dict: the state_dict was saved by {tag.get('optimizer')}, not "
                f"by uniopt.torch.{name}; nothing was loaded"
            )
        groups = [
            {k: v for k, v in saved.items() if k != _STATE_DICT_KEY} for saved in state_dict["param_groups"]
        ]
        # the groups that take this optimizer's state_dtypes (_complete): named in a refusal
        filled = [STATE_DTYPES not in saved and STATE_DTYPES in self.defaults for saved in groups]
        for saved in groups:  # an older state_dict's group may lack keys: they get their defaults
            self._complete(saved)
            self._check_options(saved, ())
        if len(groups) != len(self.param_groups):
            raise ValueError(
                f"{owner}.load_state_dict: the state_dict has {len(groups)} param groups, this "
                f"optimizer has {len(self.param_groups)}; nothing was loaded"
            )
        saved_state = state_dict["state"]
        for g, (saved, group) in enumerate(zip(groups, self.param_groups, strict=True)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"{owner}.load_state_dict: group {g} has {len(saved['params'])} params in the "
                    f"state_dict and {len(group['params'])} here; nothing was loaded"
                )
            spec = self._spec_of(saved)  # the saved hyperparameters must be valid too
            if saved.get(STATE_DTYPES) is not None:
                saved[STATE_DTYPES] = _state_dtypes(owner, self.spec_class, saved[STATE_DTYPES])
                _check_state_dtype_names(spec, saved[STATE_DTYPES], _possible_slots(self.spec_class, spec))
                for p in group["params"]:
                    _check_state_dtypes(spec, p, saved[STATE_DTYPES], None)
            for index, p in zip(saved["params"], group["params"], strict=True):
                if index not in saved_state:
                    continue
                entry = saved_state[index]
                expected = {"step", *spec.slots_in_use(tuple(p.shape))}
                # a slot of the group's former settings (SGD's momentum_buffer after momentum was
                # set to 0) is kept unused, as torch.optim keeps it; a placeholder is not stored
                former = _possible_slots(self.spec_class, spec) - set(spec.slot_names())
                if not expected <= set(entry) or set(entry) - expected - former:
                    raise ValueError(
                        f"{owner}.load_state_dict: param {index} has state {sorted(entry)}, "
                        f"expected {sorted(expected)}"
                        + (f" (and possibly {sorted(former)}, kept by other settings)" if former else "")
                        + "; nothing was loaded"
                    )
                step = entry["step"]
                if _step_count(step) is None:
                    raise ValueError(
                        f"{owner}.load_state_dict: param {index} has step {step!r}; expected a "
                        "step count (an integer >= 0, as a number or a 1-element tensor); nothing "
                        "was loaded"
                    )
                dtypes = saved.get(STATE_DTYPES) or {}
                for name in spec.slots_in_use(tuple(p.shape)):  # in the spec's order
                    have = getattr(entry[name], "dtype", None)
                    stored = dtypes.get(name, p.dtype)
                    if stored != p.dtype and have != stored:
                        why = (
                            f"the saved group {g} has no state_dtypes, so it takes this optimizer's "
                            f"state_dtypes={dtypes!r}; expected a slot in {stored}. To continue in "
                            f"{stored}, load into an optimizer built without state_dtypes, then set "
                            f"param_groups[{g}]['state_dtypes'] (the next step() stores the slot in it)"
                            if filled[g]
                            else "expected the state it saved"
                        )
                        raise ValueError(
                            f"{owner}.load_state_dict: param {index} slot {name!r} is {have}, but its "
                            f"group stores it in {stored} (state_dtypes); {why}; nothing was loaded"
                        )
                    if stored == p.dtype and have in _NARROW_DTYPES and have != p.dtype:
                        raise ValueError(
                            f"{owner}.load_state_dict: param {index} slot {name!r} is {have} beside a "
                            f"{p.dtype} parameter, and its group has no state_dtypes entry for it; "
                            f"expected a group with state_dtypes={{{name!r}: {have}}} (as the optimizer "
                            "that saved a narrower slot has); nothing was loaded"
                        )
                    want = spec.slot_shape(name, tuple(p.shape))
                    if tuple(entry[name].shape) != want:
                        slot = "" if want == tuple(p.shape) else f", whose slot has shape {want}"
                        raise ValueError(
                            f"{owner}.load_state_dict: param {index} slot {name!r} has shape "
                            f"{tuple(entry[name].shape)} but the parameter has shape "
                            f"{tuple(p.shape)}{slot}; nothing was loaded"
                        )


def _tag_of(state_dict: Mapping[str, Any]) -> Any:
    """The ``uniopt`` entry of a state_dict: the dict's own, else the one every saved param group
    holds (a dict rebuilt from ``state`` and ``param_groups`` alone, as
    ``torch.distributed.checkpoint.state_dict.get_optimizer_state_dict`` returns it); ``None``
    if there is none or the groups disagree."""
    if _STATE_DICT_KEY in state_dict:
        return state_dict[_STATE_DICT_KEY]
    groups = state_dict.get("param_groups") or []
    tags = [group.get(_STATE_DICT_KEY) if isinstance(group, Mapping) else None for group in groups]
    if tags and all(isinstance(t, Mapping) and t == tags[0] for t in tags):
        return dict(tags[0])
    return None


_SELECTING = ("decoupled_weight_decay",)
"""torch.optim options (not spec fields) whose value chooses the algorithm: torch.optim.Adam with
``decoupled_weight_decay=True`` is AdamW. A class's :attr:`UnioptOptimizer.torch_options` fixes the
value it runs (``False`` for Adam, ``True`` for AdamW) and refuses the other."""


def _selected(spec_class: type[Spec], name: str, value: Any) -> str | None:
    """The table's optimizer of ``spec_class``'s family (a spec class deriving from the other)
    whose torch.optim option ``name`` has ``value`` (``AdamW`` for Adam's
    ``decoupled_weight_decay=True``), or ``None``."""
    from uniopt.registry import TABLE

    for info in TABLE:
        related = issubclass(info.spec, spec_class) or issubclass(spec_class, info.spec)
        if info.torch is not None and related and info.torch.options.get(name, not value) == value:
            return info.name
    return None


_GRAD = operator.attrgetter("grad")
_GRAD_LAYOUT = operator.attrgetter("layout", "dtype", "shape")
_PARAM_LAYOUT = operator.attrgetter("dtype", "shape")
_MATCHING = ("every gradient dense, of its parameter's dtype, shape and device",)
"""The layouts of a group whose gradients ``_host.dense_grads`` found all matching their parameters
(compared by identity: the layouts the Python code records are never this object)."""


def _sparse_dims(grads: list[torch.Tensor]) -> list[int]:
    """Each sparse gradient's ``sparse_dim()`` (``-1`` for a dense one): with the layouts, what
    :func:`_check_grad` accepted, kept so that a step with the same ones need not check again."""
    return [g.sparse_dim() if g.is_sparse else -1 for g in grads]


def _run_loop(plan: list[tuple[Spec, torch.Tensor, torch.Tensor, dict[str, Any], Any]]) -> None:
    """The rule per tensor, written back in place (traced by dynamo under ``torch.compile``)."""
    for spec, param, grad, slots, scalars in plan:
        if grad.is_sparse:  # the "rows" sparse rule: the touched rows only
            _sparse.step_rows(spec, param, grad, slots, scalars)
            continue
        new_param, new_slots = spec.rule(param, grad, slots, scalars, xp)
        _flat.write_back(param, slots, new_param, new_slots)


def _new_slot(
    spec: Spec, name: str, p: torch.Tensor, dtypes: Mapping[str, torch.dtype] | None = None
) -> torch.Tensor:
    """The spec's initial slot ``name`` for ``p`` (a DTensor parameter's: see :mod:`._dtensor`), in
    ``dtypes[name]`` where given (the group's ``state_dtypes``: zeros, so the conversion is exact)."""
    slot = _dtensor.new_slot(spec, name, p) if _dtensor.is_dtensor(p) else spec.init_slot(name, p, xp)
    dtype = (dtypes or {}).get(name)
    return slot if dtype is None or dtype == slot.dtype else slot.to(dtype)


STATE_DTYPES = "state_dtypes"
"""The option naming the slots stored in a narrower dtype than their parameter's (optax's
``mu_dtype``; docs/torch.md, "Lower-precision state")."""

_TORCH_DTYPES = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
    "float64": torch.float64,
}


def _state_dtypes(owner: str, spec_class: type[Spec], value: Any) -> dict[str, torch.dtype]:
    """``state_dtypes`` as every group keeps it: slot name -> ``torch.dtype`` (a name such as
    ``"bfloat16"`` or a ``torch.dtype``). ``ValueError`` for a value that is not such a mapping or a
    dtype that is not a real floating one; the names and whether each dtype fits each parameter
    are checked as the group is added (:func:`_check_state_dtypes`)."""
    accepted = ", ".join(f"torch.{n}" for n in _TORCH_DTYPES)
    check_state_dtypes_mapping(owner, value, spec_class.lower_precision_slots, "torch.bfloat16")
    out = {}
    for name, dtype in value.items():
        found = _TORCH_DTYPES.get(dtype) if isinstance(dtype, str) else dtype
        if found not in _TORCH_DTYPES.values():
            raise ValueError(
                f"{owner}: state_dtypes[{name!r}]={dtype!r}; expected a real floating dtype ({accepted}, "
                "or its name), one the parameters' dtype holds exactly"
            )
        out[name] = found
    return out


_NARROW_DTYPES = (torch.bfloat16, torch.float16)


def _check_state_dtype_names(
    spec: Spec, dtypes: Mapping[str, torch.dtype] | None, allowed: Iterable[str] | None = None
) -> None:
    """``ValueError`` where ``state_dtypes`` names a slot the group's spec does not keep, as the
    core's ``init(slot_dtypes=...)`` refuses it (SGD keeps ``momentum_buffer`` only with
    ``momentum``); ``allowed``: the names accepted instead (a group whose settings changed
    mid-run, or a saved one: :func:`_possible_slots`)."""
    unknown = sorted(set(dtypes or {}) - set(spec.slot_names() if allowed is None else allowed))
    if unknown:
        narrow = ", ".join(spec.lower_precision_slots) or "none"
        kept = ", ".join(spec.slot_names()) or "none"
        raise ValueError(
            f"uniopt.torch.{spec.name}: state_dtypes names {', '.join(map(repr, unknown))}, not a slot "
            f"of this optimizer with these hyperparameters; its slots: {kept} (those it may store "
            f"narrower: {narrow})"
        )


def _check_state_dtypes(
    spec: Spec, p: torch.Tensor, dtypes: Mapping[str, torch.dtype] | None, label: str | None
) -> None:
    """``ValueError`` where a slot of ``state_dtypes`` cannot be stored in its dtype beside ``p``
    (:meth:`uniopt.Spec.slot_dtype_refusal`: a slot the spec keeps in the parameter's dtype, a dtype
    wider than the parameter's, float16 beside bfloat16, complex parameters)."""
    for name, dtype in (dtypes or {}).items():
        why = spec.slot_dtype_refusal(name, dtype, p.dtype)
        if why is not None:
            which = f"parameter {label!r}" if label is not None else f"a parameter of shape {tuple(p.shape)}"
            raise ValueError(
                f"uniopt.torch.{spec.name}: state_dtypes[{name!r}]={dtype} for {which} of dtype "
                f"{p.dtype}: {why}"
            )


_POSSIBLE_SLOTS: dict[type[Spec], frozenset[str]] = {}


def _possible_slots(spec_class: type[Spec], spec: Spec) -> frozenset[str]:
    """The slots some setting of ``spec_class`` keeps: ``spec``'s and those of every case of the
    table's rows of its family (a spec class deriving from the other: Adam's ``max_exp_avg_sq``
    with ``amsgrad``, SGD's ``momentum_buffer`` with ``momentum``). A group whose settings change
    mid-run keeps the slots of the former ones, as torch.optim keeps them, unused; a state_dict
    holding them loads back (:meth:`UnioptOptimizer.load_state_dict`)."""
    if spec_class not in _POSSIBLE_SLOTS:
        from uniopt.registry import TABLE

        names: set[str] = set()
        for info in TABLE:
            if issubclass(info.spec, spec_class) or issubclass(spec_class, info.spec):
                for case in info.all_cases:
                    names.update(info.make(case).slot_names())
        _POSSIBLE_SLOTS[spec_class] = frozenset(names)
    return _POSSIBLE_SLOTS[spec_class] | set(spec.slot_names())


def _signature(value: Any) -> Any:
    """``value``'s type, and its items' for a tuple: with the value, what tells a cached spec's
    hyperparameters apart (``1 == True`` and ``(1, 0.9) == (True, 0.9)``)."""
    if isinstance(value, tuple):
        return tuple(map(_signature, value))
    return type(value)


def _plain(owner: str, name: str, value: Any) -> Any:
    """A hyperparameter as the spec takes it: a 1-element tensor (torch.optim accepts ``lr`` and
    Adam's ``betas`` as tensors) as its value as a Python float, a list as a tuple. Raises
    ``ValueError`` for a tensor of another size."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"{owner}: {name} is a tensor of {value.numel()} elements; expected a float or a "
                "1-element tensor"
            )
        return float(value)
    if isinstance(value, (list, tuple)):
        if any(isinstance(v, torch.Tensor) for v in value):
            return tuple(_plain(owner, f"{name}[{i}]", v) for i, v in enumerate(value))
        return tuple(value)
    return value


_FIELDS: dict[type[Spec], tuple[str, ...]] = {}
_IMMUTABLE = (float, int, str, type(None))


def _immutable(value: Any) -> bool:
    """Whether ``value`` cannot change in place (a number, a string, ``None``, a tuple of them)."""
    if isinstance(value, tuple):
        return all(map(_immutable, value))
    return type(value) in _IMMUTABLE or isinstance(value, (bool, float, int, str))


def _lr(value: Any) -> float:
    """A group's ``lr`` as a float (validated by ``_spec_of`` before it is used)."""
    return float(value) if isinstance(value, torch.Tensor) else value


def _step_count(step: Any) -> int | None:
    """A saved ``step`` (an int, a float as older torch.optim saved it, or a 1-element tensor of
    any dtype) as an int; ``None`` if it is not a whole number >= 0."""
    if isinstance(step, torch.Tensor):
        if step.numel() != 1:
            return None
        step = step.item()
    if isinstance(step, bool) or not isinstance(step, (int, float)):
        return None
    if not (math.isfinite(step) and step >= 0 and step == int(step)):
        return None
    return int(step)


def _in_shared_memory(state: dict[str, Any] | None) -> bool:
    """Whether a slot of ``state`` is a CPU tensor in shared memory (CUDA tensors count as shared
    for ``is_shared``, and the flat path keeps their storage in place)."""
    return bool(state) and any(
        isinstance(v, torch.Tensor) and v.device.type == "cpu" and _dtensor.local(v).is_shared()
        for k, v in state.items()
        if k != "step"
    )


def _holds_tensor(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return any(map(_holds_tensor, value))
    return isinstance(value, torch.Tensor)


_ROUNDED: OrderedDict[tuple, Any] = OrderedDict()
_ROUNDED_SIZE = 256


def _round(scalars: Any, dtype: torch.dtype) -> Any:
    """Each float field as a 0-d CPU tensor of ``dtype`` (rounded once); bools stay bools.

    Kept by the fields' values (and which of them are ``-0.0``) and ``dtype``, least recently used
    first out: a spec whose scalars reach their limit (SGD from its second step) gets the same
    tensors step after step instead of making new ones (the rules only read them)."""
    try:
        negative_zeros = tuple(i for i, v in enumerate(scalars) if v == 0 and math.copysign(1.0, v) < 0)
        key = (type(scalars), dtype, tuple(scalars), negative_zeros)
        hit = _ROUNDED.get(key)
    except TypeError:  # a field that is no number (unhashable, or without a sign)
        key, hit = None, None
    if hit is not None:
        _ROUNDED.move_to_end(key)
        return hit
    out = type(scalars)(*(v if isinstance(v, bool) else torch.tensor(v, dtype=dtype) for v in scalars))
    if key is not None:
        _ROUNDED[key] = out
        if len(_ROUNDED) > _ROUNDED_SIZE:
            _ROUNDED.popitem(last=False)
    return out


def _caller_level() -> int:
    """The ``stacklevel`` of :func:`warnings.warn` that names the first frame outside uniopt.torch
    and torch (the user's ``opt.step()``), counted from the caller of this function."""
    import sys

    frame, level = sys._getframe(2), 2
    while frame is not None and (
        frame.f_code.co_filename.startswith(_ADAPTER_DIR) or frame.f_code.co_filename.startswith(_TORCH_DIR)
    ):
        frame, level = frame.f_back, level + 1
    return level


_ADAPTER_DIR = __file__.rpartition("/")[0] + "/"
_TORCH_DIR = torch.__file__.rpartition("/")[0] + "/"


def _never_stepped(p: torch.Tensor) -> bool:
    """Whether ``p`` is a parameter no step can reach, as torch.optim accepts it: an integer or bool
    tensor that does not require a gradient and has none (a frozen quantized weight; torch allows
    ``requires_grad`` only on floating and complex tensors, so such a tensor never gets one from
    autograd)."""
    return not (p.is_floating_point() or p.is_complex()) and not p.requires_grad and p.grad is None


def _check_param(spec: Spec, p: torch.Tensor) -> None:
    """``ValueError`` for a parameter ``spec`` cannot step: not floating point or complex (unless it
    can never be stepped, :func:`_never_stepped`), complex where the rule has none, a shape the spec
    refuses (Muon: 2-D only), a dtype in which a hyperparameter rounds to 0. A lazy module's
    uninitialized parameter (``torch.nn.parameter.is_lazy``) has no shape yet: it is checked at
    the first step after it is materialized (:meth:`UnioptOptimizer._check_params_of`)."""
    owner = f"uniopt.torch.{spec.name}"
    if is_lazy(p) or _never_stepped(p):
        return
    if not (p.is_floating_point() or p.is_complex()):
        raise ValueError(f"{owner}: parameters must be floating point or complex, got {p.dtype}")
    if p.is_complex() and _dtensor.is_dtensor(p):
        raise ValueError(
            f"{owner}: complex DTensor parameters are not supported, got {p.dtype}; expected real "
            "floating DTensor parameters (or plain complex tensors)"
        )
    if spec.real_only and p.is_complex():
        raise ValueError(
            f"{owner}: complex parameters are not supported ({spec.name}'s rule has no complex form, "
            f"as torch.optim.{spec.name} has none), got {p.dtype}; expected real floating parameters"
        )
    refused = spec.param_refusal(tuple(p.shape), p.is_complex())
    if refused is not None:
        raise ValueError(f"{owner}: {refused}")
    real_dtype = p.real.dtype if p.is_complex() else p.dtype
    vanishing = spec.underflowing(lambda value: float(torch.tensor(value, dtype=real_dtype)))
    if vanishing:
        tiny = torch.finfo(real_dtype).smallest_normal
        raise ValueError(
            f"{owner}: {', '.join(vanishing)} rounds to 0 in {real_dtype}, so the update would "
            f"ignore it; use values >= {tiny:g} or higher-precision parameters"
        )


def _check_grad(spec: Spec, p: torch.Tensor, fused: bool = False) -> None:
    """``RuntimeError`` (torch.optim's type) for a gradient the step cannot take: a layout
    :func:`_sparse.check` refuses (a sparse one also in a ``fused=True`` group), or a dense one of
    another shape or dtype than ``p``; ``ValueError`` (as at construction) for a gradient given to
    a parameter that is not floating point or complex (accepted while it had none)."""
    owner = f"uniopt.torch.{spec.name}"
    if not (p.is_floating_point() or p.is_complex()):  # a frozen integer parameter given a gradient
        raise ValueError(f"{owner}: parameters must be floating point or complex, got {p.dtype}")
    _sparse.check(spec, p, fused)  # sparse gradients where torch.optim takes them (SparseAdam: only)
    if p.grad.is_sparse:
        return
    if p.grad.shape != p.shape or p.grad.dtype != p.dtype:
        raise RuntimeError(
            f"{owner}: a gradient of shape {tuple(p.grad.shape)} and dtype {p.grad.dtype} does "
            f"not match its parameter ({tuple(p.shape)}, {p.dtype})"
        )
