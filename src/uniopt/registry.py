"""The table: every optimizer with its hyperparameter cases, error inputs and tolerances.

Tests, the conformance suite (and the docs and benchmarks) select rows from :data:`TABLE`; nothing
else keeps a list of optimizers or cases. A new optimizer is one spec module plus one row here.

Tolerances are in ulp of the parameter dtype, against the NumPy reference run in the same dtype,
keyed by ``"backend"`` or ``"backend:mode"``; a key that is absent means **0 ulp** (bitwise). Skips
are keyed the same way and carry the reason, which the report shows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ._spec import Spec
from .adadelta import Adadelta
from .adafactor import Adafactor
from .adagrad import Adagrad
from .adam import Adam
from .adamax import Adamax
from .adamw import AdamW
from .lamb import Lamb
from .lion import Lion
from .muon import Muon
from .nadam import NAdam
from .radam import RAdam
from .rmsprop import RMSprop
from .schedule_free_adamw import ScheduleFreeAdamW
from .sgd import SGD

__all__ = [
    "KERAS_COMMON_NAMES",
    "MODE_TOLERANCES",
    "TABLE",
    "Case",
    "ErrorCase",
    "KerasNames",
    "OptaxNames",
    "OptimizerInfo",
    "TorchNames",
    "bound_keys",
    "get",
]


@dataclasses.dataclass(frozen=True)
class Case:
    """One hyperparameter setting, named by what it exercises.

    ``slot_dtypes``: slots stored in a narrower dtype than the parameters' (``init``'s
    ``slot_dtypes``, optax's ``mu_dtype``: docs/conventions.md, "Lower-precision state"), by name;
    such a case runs on the backends that store them (:attr:`conformance.backends.Backend.slot_dtypes`)
    in the parameter dtypes that take them (:meth:`uniopt.Spec.slot_dtype_refusal`)."""

    desc: str
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    slot_dtypes: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ErrorCase:
    """Bad hyperparameters and a regex the ``ValueError`` message must match."""

    kwargs: Mapping[str, Any]
    match: str


KERAS_COMMON_NAMES: Mapping[str, str] = {
    "learning_rate": "lr",
    "epsilon": "eps",
    "beta_1": "betas[0]",
    "beta_2": "betas[1]",
}
"""Keras argument -> spec field, shared by every row (``"betas[i]"`` is one entry of the pair)."""


@dataclasses.dataclass(frozen=True)
class TorchNames:
    """How ``torch.optim`` spells an optimizer: uniopt.torch's class, porting and the native row.

    ``native`` is the ``torch.optim`` class name (``None`` where torch.optim has none: uniopt.torch
    still offers the optimizer, with the spec's names). ``positional`` are the constructor's
    positional arguments after ``params``, in torch.optim's order (spec field names, or names in
    ``options``). ``options`` are torch.optim arguments without a spec field, with the values
    torch.optim stores in each param group (``foreach``, ``capturable``, ...; uniopt.torch accepts
    them and never changes the numbers, except that it refuses ``capturable=True`` and
    ``differentiable=True``). ``state_at_construction``: torch.optim creates the state of every
    parameter in the constructor (Adagrad). ``state`` maps a torch.optim state key to the spec's
    slot where the names differ (the default: the same names). ``extensions`` are spec fields
    torch.optim's optimizer has no argument for (optax.adafactor's own, on Adafactor's spec):
    uniopt.torch's class takes them by keyword and keeps them in ``defaults`` and the groups, as it
    keeps ``convention``; left out, they take the spec's default for the group's convention.
    ``constructor_only`` are spec fields torch.optim reads from its constructor's value alone, never
    from a param group's own (Adagrad's ``initial_accumulator_value``: every ``sum`` starts at the
    constructor's value, a group's is ignored): uniopt.torch honours a group's value and warns
    where it differs from the constructor's.
    """

    native: str | None
    positional: tuple[str, ...]
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    state_at_construction: bool = False
    state: Mapping[str, str] = dataclasses.field(default_factory=dict)
    extensions: tuple[str, ...] = ()
    constructor_only: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class KerasNames:
    """How Keras 3 spells an optimizer: uniopt.tf's class, porting and the native row.

    ``native`` is the ``keras.optimizers`` class name (``None`` where Keras has none).
    ``positional`` are Keras's own arguments before the base ones (``clipnorm`` ... ``name``), by
    Keras name, in Keras's order (for an optimizer Keras lacks, the order Keras would use); every
    other spec field is keyword-only. ``names`` maps a Keras argument to the spec field it sets
    (beyond :data:`KERAS_COMMON_NAMES`; ``"rho": "alpha"`` for RMSprop). ``slots`` maps each spec
    slot to the attribute of Keras's optimizer holding its list of variables (porting, the native
    row). ``checks_float``: arguments Keras refuses unless they are Python floats.
    ``weight_decay_none_is_zero``: ``weight_decay=None`` means 0 (Keras's base optimizer; AdamW
    refuses None). ``sparse_duplicates_match_keras``: Keras's update of an IndexedSlices gradient
    with repeated indices equals that of the densified gradient (linear in the gradient).
    ``inert`` are Keras flags without a spec field because they change nothing in Keras's own
    optimizer either (Adafactor's ``relative_step``: Keras's step size is ``min(lr, 1/sqrt(t))``
    whatever it holds): flag -> Keras's default. uniopt.tf's class takes them where Keras does,
    refuses a value that is not a bool, and keeps them as attributes and in ``get_config``.
    ``positional_after_base`` are Keras's positional arguments after the base ones (Muon's
    ``exclude_layers`` ... ``rms_rate``), in Keras's order. ``routing`` are Keras arguments without
    a spec field that choose, by the variable's path, which of the spec's steps a variable takes
    (Muon's ``exclude_layers``, ``exclude_embeddings``: the Adam step, :meth:`uniopt.Muon.
    adam_routed`): argument -> Keras's default. ``none_means`` maps an argument whose ``None``
    Keras reads as a setting of another spec field: ``argument: (field, value)`` (Muon's
    ``rms_rate=None`` is ``adjust_lr_fn="none"``); the reverse holds when the record is written
    back (``get_config``, porting). ``variables`` maps a spec slot to the name Keras gives its
    variable (``add_variable_from_reference(name=...)``; the default: the slot's own name).
    ``default_convention`` is the class's default ``convention`` where Keras's arguments name
    another algorithm than the spec's ``"uniopt"`` convention (Muon: Keras's steps non-2-D and
    excluded variables with Adam, which the ``uniopt`` convention refuses).
    """

    native: str | None
    positional: tuple[str, ...]
    names: Mapping[str, str] = dataclasses.field(default_factory=dict)
    slots: Mapping[str, str] = dataclasses.field(default_factory=dict)
    checks_float: tuple[str, ...] = ()
    weight_decay_none_is_zero: bool = True
    sparse_duplicates_match_keras: bool = False
    inert: Mapping[str, bool] = dataclasses.field(default_factory=dict)
    positional_after_base: tuple[str, ...] = ()
    routing: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    none_means: Mapping[str, tuple[str, Any]] = dataclasses.field(default_factory=dict)
    variables: Mapping[str, str] = dataclasses.field(default_factory=dict)
    default_convention: str | None = None

    @property
    def all_names(self) -> dict[str, str]:
        """Every Keras argument that names a spec field -> that field. A shared name whose field
        the row names entry by entry is left out (Adafactor's ``epsilon_1``, ``epsilon_2`` are
        ``eps[0]``, ``eps[1]``: there is no ``epsilon``)."""
        split = {target.split("[")[0] for target in self.names.values() if "[" in target}
        common = {k: v for k, v in KERAS_COMMON_NAMES.items() if v not in split}
        return {**common, **self.names}


@dataclasses.dataclass(frozen=True)
class OptaxNames:
    """One optax-style factory of an optimizer (``uniopt.jax.<alias>``): porting, the native row.

    ``alias`` is the factory's name, optax's alias where optax has one (``native``: whether
    ``<module>.<alias>`` exists and uniopt.jax reads it: its signature, its state for porting, the
    native row; ``schedule_free_adamw``'s is not read). ``names`` maps each factory argument that
    sets a spec field to that field (``"b1": "betas[0]"``), in the order uniopt's own ones are
    listed. ``positional`` are
    optax's positional arguments in optax's order. ``only`` are optax arguments without a spec
    field: ``(accepts(value, convention), the accepted values in words)``. ``fixed`` are spec fields
    the factory sets (``optax.nadamw``: decoupled weight decay). ``state`` maps a field of optax's
    state (``mu``, ``nu``, ``trace``, ...) to the spec's slot. ``none_means`` maps an argument whose
    optax default ``None`` stands for a spec value that optax itself, given literally, reads
    otherwise: ``argument: (the spec value, why the literal value is refused)``; the factory's
    default is ``None``, ``None`` becomes that value and the value itself is refused
    (``optax.contrib.schedule_free_adamw``'s ``warmup_steps``: ``None`` is no warmup, the spec's 0;
    optax's own 0 builds a learning rate stuck at 0). A target ``"-field"`` is the field's negative
    (``optax.adafactor``'s ``decay_rate`` is ``-beta2_decay``). ``default_convention`` is the
    factory's default ``convention`` when it is not the spec's own: ``"optax"`` where optax's
    arguments name another algorithm than the spec's ``"uniopt"`` convention (``adafactor``: no
    relative step size, ``learning_rate=None`` scales by nothing, factoring from
    ``min_dim_size_to_factor``); such a row's optax state also ports with that convention.
    ``module`` is the module optax defines the alias in (``"optax.contrib"`` for
    ``optax.contrib.muon``); the factory's signature, porting, the native row and the peer suite
    read ``<module>.<alias>``. ``narrows`` are mapped arguments whose optax meaning is wider than
    their spec field's: ``argument: (accepts(value, convention), the accepted values in words and
    what optax means otherwise)``, checked before the spec is built (``optax.contrib.muon``'s
    ``ns_coeffs`` presets and per-step coefficient tuples); values it accepts go on to the spec's
    own checks. ``implies`` are arguments that, given (not ``None``), also set other spec fields:
    ``argument: {field: value}`` (``optax.contrib.muon``'s ``consistent_rms=r`` is
    ``rms_rate=r`` with ``adjust_lr_fn="match_rms_adamw"``; ``None`` leaves those fields to their
    own arguments); an argument for such a field given with another value raises ``ValueError``.
    ``state_hyperparameters`` maps a field of optax's state that holds a hyperparameter
    (``MuonState.ns_coeffs``) to its spec field: porting checks that it holds the spec's value.
    A state field found in several nodes of optax's state (``optax.contrib.muon`` keeps ``mu`` in
    its Muon and its Adam partition) is one slot: each parameter's value sits in one node, the
    others hold optax's ``MaskedNode`` there; a parameter no node holds a slot for keeps the
    spec's initial value (zeros: the Adam slot ``exp_avg_sq`` of a matrix).
    """

    alias: str
    names: Mapping[str, str]
    positional: tuple[str, ...]
    only: Mapping[str, tuple[Any, str]] = dataclasses.field(default_factory=dict)
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    state: Mapping[str, str] = dataclasses.field(default_factory=dict)
    native: bool = True
    none_means: Mapping[str, tuple[Any, str]] = dataclasses.field(default_factory=dict)
    default_convention: str | None = None
    module: str = "optax"
    narrows: Mapping[str, tuple[Any, str]] = dataclasses.field(default_factory=dict)
    implies: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    state_hyperparameters: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class OptimizerInfo:
    """A row of the table: the spec, its test cases, and how each framework names it."""

    spec: type[Spec]
    cases: tuple[Case, ...]
    error_cases: tuple[ErrorCase, ...]
    # cases with lower-precision slots (Case.slot_dtypes, optax's mu_dtype): the matrix runs them
    # (cells, on the backends that store such slots) beside ``cases``; the adapters' tests that walk
    # ``cases`` leave them out (each is one of the row's settings with a slot stored narrower)
    state_cases: tuple[Case, ...] = ()
    torch: TorchNames | None = None
    keras: KerasNames | None = None
    optax: tuple[OptaxNames, ...] = ()
    ulp_tolerance: Mapping[str, int] = dataclasses.field(default_factory=dict)
    skips: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # key (as ulp_tolerance's, "backend:native" for a native row) -> (bound, why): a cell beyond its
    # ulp tolerance still passes where its normwise relative distance to the reference (per array
    # and step, over the largest magnitude the array has had) is within the bound. For rules whose
    # last bits no spec can fix (a backend's matrix products), where values crossing 0 make ulp
    # counts meaningless (a sign change near 0 is ~2**31 float32 ulp, ~2**63 float64 ulp)
    relative_tolerance: Mapping[str, tuple[float, str]] = dataclasses.field(default_factory=dict)

    @property
    def elementwise(self) -> bool:
        """The spec's ``elementwise`` (:attr:`uniopt.Spec.elementwise`). The conformance harness
        stacks same-shape parameters of several cells of an elementwise optimizer into one array
        (the bits of each element are unchanged); any other optimizer keeps every parameter as it
        is."""
        return self.spec.elementwise

    @property
    def name(self) -> str:
        return self.spec.name

    def make(self, case: Case | None = None) -> Spec:
        """The spec for ``case`` (defaults when ``None``)."""
        return self.spec(**dict(case.kwargs)) if case is not None else self.spec()

    @property
    def all_cases(self) -> tuple[Case, ...]:
        """:attr:`cases` then :attr:`state_cases`: every case the matrix runs."""
        return (*self.cases, *self.state_cases)

    def case(self, desc: str) -> Case:
        for case in self.all_cases:
            if case.desc == desc:
                return case
        raise KeyError(f"{self.name} has no case {desc!r}")

    def tolerance(
        self,
        backend: str,
        mode: str = "eager",
        case: str | None = None,
        stream: str | None = None,
        same_as: tuple[str, str] | None = None,
    ) -> int:
        """Allowed ulp distance for ``backend`` in ``mode`` (0 = bitwise).

        The row's own ``ulp_tolerance`` wins, most specific key first (``backend:mode:case/stream``,
        ``backend:case/stream``, ``backend:mode:case/*`` and ``backend:case/*`` (every stream of a
        case), ``backend:mode``, ``backend``); then, given ``same_as`` (a backend and mode that run
        the same kernels: uniopt.keras on JAX runs uniopt.jax's namespaces), that backend and mode's
        keys in the same order; otherwise :data:`MODE_TOLERANCES` (compiled modes whose bound holds
        for every optimizer); otherwise 0. Native rows take :data:`NATIVE_TOLERANCES`.
        """
        if mode == "native":
            return NATIVE_TOLERANCES.get(self.name, {}).get(backend, (0, ""))[0]
        for key in bound_keys(backend, mode, case, stream, same_as):
            if key in self.ulp_tolerance:
                return self.ulp_tolerance[key]
        for b, m in ((backend, mode), *([same_as] if same_as else [])):
            if f"{b}:{m}" in MODE_TOLERANCES:
                return MODE_TOLERANCES[f"{b}:{m}"][0]
        return 0

    def relative_bound(
        self,
        backend: str,
        mode: str = "eager",
        case: str | None = None,
        stream: str | None = None,
        same_as: tuple[str, str] | None = None,
    ) -> tuple[float, str] | None:
        """The relative bound (and why) of :attr:`relative_tolerance` for this cell, most specific
        key first as in :meth:`tolerance` (a native row: then :data:`NATIVE_RELATIVE_TOLERANCES`);
        ``None`` where the ulp tolerance alone decides."""
        for key in bound_keys(backend, mode, case, stream, same_as):
            if key in self.relative_tolerance:
                return self.relative_tolerance[key]
        if mode == "native":
            return NATIVE_RELATIVE_TOLERANCES.get(self.name, {}).get(backend)
        return None

    def skip_reason(self, backend: str, mode: str = "eager", case: str | None = None) -> str | None:
        """Why ``backend`` in ``mode`` does not run this optimizer (or its ``case``), or ``None``.

        Keys, most specific first: ``backend:mode:case/*`` and ``backend:case/*`` (one case, every
        stream), ``backend:mode``, ``backend``."""
        keys = [f"{backend}:{mode}:{case}/*", f"{backend}:{case}/*"] if case is not None else []
        for key in (*keys, f"{backend}:{mode}", backend):
            if key in self.skips:
                return self.skips[key]
        return None


def bound_keys(
    backend: str,
    mode: str,
    case: str | None = None,
    stream: str | None = None,
    same_as: tuple[str, str] | None = None,
) -> tuple[str, ...]:
    """The keys of a row's ``ulp_tolerance`` and ``relative_tolerance`` that may bound a cell, most
    specific first (see :meth:`OptimizerInfo.tolerance`): ``backend``'s, then those of ``same_as``
    (a backend and mode that run the same kernels)."""
    keys: list[str] = []
    for b, m in ((backend, mode), *([same_as] if same_as else [])):
        cell, every = f"{case}/{stream}", f"{case}/*"  # every: one case, every stream
        keys += [f"{b}:{m}:{cell}", f"{b}:{cell}", f"{b}:{m}:{every}", f"{b}:{every}", f"{b}:{m}", b]
    return tuple(keys)


MODE_TOLERANCES: dict[str, tuple[int, str]] = {
    # "backend:mode": (measured ulp bound, why it cannot be bitwise). Eager modes never appear here.
}
"""Bounds of compiled modes that apply to every optimizer; a row's ``ulp_tolerance`` overrides."""

_TORCH_KERNELS = (
    "torch.optim's CPU kernels fuse what the spec rounds separately: lerp and addcmul are fused "
    "multiply-adds, and sqrt is not correctly rounded on CPU; ulp counts are large where a value "
    "passes near 0"
)
_OPTAX_SCALARS = (
    "optax divides by its bias corrections where the spec multiplies by their reciprocals (the "
    "values themselves are optax's: float32 at jax's default, float64 with x64), and XLA contracts "
    "multiply-adds into FMAs under jit"
)
_OPTAX_FMA = (
    "XLA contracts optax's p + u * (-lr) into a fused multiply-add under jit (the spec rounds the "
    "product); optax.adagrad and optax.rmsprop also take XLA's rsqrt, which is not correctly rounded"
)
_OPTAX_JIT = (
    "the optax convention reproduces optax's own update bit for bit eagerly; under jax.jit XLA "
    "contracts optax's moment updates into fused multiply-adds and rewrites its divisions (by a "
    "broadcast bias correction into a multiplication by the reciprocal, a / sqrt(b) into "
    "a * rsqrt(b), not correctly rounded)"
)
_NORM_ORDER = (
    "the framework sums a norm's squares in its own order (uniopt in one defined order, the same "
    "on every backend), so the trust ratio differs in its last bits"
)
_OPTAX_LAMB = (
    "under jit XLA contracts optax's multiply-adds into FMAs and rewrites its bias-correction divisions"
)
NATIVE_TOLERANCES: dict[str, dict[str, tuple[int, str]]] = {
    # optimizer -> native backend -> (ulp bound, why): 4x the worst distance measured on the team's
    # 2-core x86-64 machine over the normal, huge and 1000-step parity streams in float32 and float64
    # (kernels differ between CPUs); docs/porting.md has the measured table with relative distances.
    # A pair not listed is bitwise (every Keras row, in float32 and float64: the keras conventions
    # compute Adam's alpha as Keras does). optax runs its float32 cells at jax's default (x64 off)
    # and its float64 cells with x64: measured so, optax's Adam (45057, float64 amsgrad) and AdamW
    # (91985, float32) rows moved above their earlier x64-only measurements (42004, 51548).
    "SGD": {
        "torch.optim": (4 * 10098, _TORCH_KERNELS),
        "optax": (4 * 257496, _OPTAX_FMA),
    },
    "Adagrad": {
        "torch.optim": (4 * 29216, _TORCH_KERNELS),
        "optax": (4 * 32184, _OPTAX_FMA),
    },
    "RMSprop": {
        "torch.optim": (4 * 177399, _TORCH_KERNELS),
        "optax": (4 * 136448, _OPTAX_FMA),
    },
    "Adam": {
        "torch.optim": (4 * 42611, _TORCH_KERNELS),
        "optax": (4 * 45057, _OPTAX_SCALARS),
    },
    "AdamW": {
        "torch.optim": (4 * 91756, _TORCH_KERNELS),
        "optax": (4 * 91985, _OPTAX_SCALARS),
    },
    "RAdam": {"torch.optim": (4 * 91756, _TORCH_KERNELS), "optax": (4 * 37115, _OPTAX_SCALARS)},
    # the authors' schedulefree.AdamWScheduleFree (1.4.1) on the uniopt cases; measured 2026-12-01,
    # every default and long cell: 510 ulp (beta1_half, normal, float64; relative 2.2e-16), float32
    # 163 (relative 1.1e-7)
    "ScheduleFreeAdamW": {
        # 510 ulp on the 50-step streams; 9166 on the large stream (74,571 elements, at step 1),
        # measured 2026-12-05: more elements, more of the fused roundings' worst cases
        "torch.optim": (
            4 * 9166,
            f"{_TORCH_KERNELS}; the package's y.lerp_(z, c) is also z - (z - y)(1 - c) for c >= 0.5 "
            "(the first steps), which the spec writes y + c(z - y)",
        )
    },
    # Lion's parameters move by exactly +-lr: without weight decay they are bitwise (the signs agree);
    # the distances are in the momentum, which XLA computes with a fused multiply-add under jit
    # (largest near 0: 525357 ulp in float32 on the parity stream, relative 0.036), and in the
    # parameters with optax's default decay (33546 ulp float32, relative 2.2e-3 near 0)
    "Lion": {"optax": (4 * 525357, _OPTAX_FMA)},
    # torch.optim rows of Adamax, NAdam and Adadelta, measured 2026-11-30 (normal, huge and parity
    # streams, float32 and float64, every torch-convention case): the worst cells are all on the
    # 1,000-step parity stream, at relative distances of 1.4e-7 to 6.9e-7 (float32) and 2.4e-16 to
    # 4.4e-16 (float64): Adamax 35102 (torch, float64; float32 17065), NAdam 1430484 (torch,
    # float32; float64 562326), Adadelta 5760 (torch, float32; float64 104); on the 50-step
    # streams at most 4217, 4217 and 11
    # optax rows of Adamax, NAdam (nadam and nadamw) and Adadelta, measured 2026-11-30 (normal, huge
    # and parity streams, float32 at x64 off and float64 with x64, every optax-convention case;
    # eagerly optax's own update equals the convention's bit for bit): the worst cells are on the
    # 1,000-step parity stream, at relative distances of 1.9e-7 to 5.7e-7 (float32) and 3.9e-16 to
    # 1.1e-15 (float64): Adamax 37115 (float64; float32 13533), NAdam 221940 (nadam, float64;
    # float32 74647; nadamw 37115 and 24920), Adadelta 56 (float32; float64 20); on the 50-step
    # streams at most 1529, 1529 and 13
    # Lamb's natives sum the norms in their own orders (uniopt: pairwise halving, the same on every
    # backend), so the trust ratio differs in its last bits from the first step; measured
    # 2026-12-01 (normal, huge and parity streams): optax 311121 ulp (optax_defaults, parity,
    # float64; relative 9.7e-16; float32 149727, relative 4.7e-7; the 50-step streams at most
    # 2944), Keras 57344 (keras, parity, float32; relative 1.5e-7; float64 49152, relative
    # 2.9e-16; the 50-step streams at most 1664)
    "Lamb": {"keras": (4 * 57344, _NORM_ORDER), "optax": (4 * 311121, f"{_NORM_ORDER}; {_OPTAX_LAMB}")},
    # torch.optim.Adafactor against the torch convention, measured 2026-12-01 (normal, huge and
    # parity streams, float32 and float64, the torch, torch_defaults and torch_eps cases): 122090 ulp
    # (torch_eps, parity, float64; relative 1.4e-15; float32 63719, relative 4.1e-7); on the
    # 50-step streams at most 397 (relative 2.4e-16). torch sums its norms and row/column means in
    # its own order (the spec pairwise), fuses lerp_ and add_(alpha=) into multiply-adds, and takes
    # alpha and the clipping denominator in float64 on the host from norms rounded to the dtype
    "Adafactor": {
        "torch.optim": (
            4 * 122090,
            "torch.optim.Adafactor sums its norms and row and column means in its own order (the spec in "
            "one pairwise order), fuses lerp_ and add_(alpha=) into multiply-adds, and computes alpha "
            "and the clipping denominator in float64 on the host",
        ),
        # keras.optimizers.Adafactor against the keras convention, measured 2026-12-01 (normal,
        # huge and parity streams, float32 and float64, the keras and keras_defaults cases): 14912
        # ulp (keras, parity, float32; relative 1.7e-7; float64 5152, relative 3.8e-16); on the
        # 50-step streams at most 256 (relative 1.0e-16); every cell differs from the first step
        "keras": (
            4 * 14912,
            "keras.optimizers.Adafactor takes its row and column means and RMS with TensorFlow's "
            "reduce_mean, which sums in its own order (the spec in one pairwise order)",
        ),
        # optax.adafactor against the optax convention, measured 2026-12-01 (optax 0.2.8, jax 0.10.2;
        # normal, huge and parity streams, float32 at x64 off and float64 with x64, the optax,
        # optax_defaults and optax_unfactored cases): 132096 ulp (optax, parity, float32; relative
        # 7.8e-7; float64 108544, relative 1.3e-15); on the 50-step streams at most 2018 (relative
        # 2.2e-7)
        "optax": (
            4 * 132096,
            "optax sums its means in XLA's order (the spec pairwise), takes XLA's rsqrt for x**-0.5 "
            "(not correctly rounded; the spec sqrt(1/x)) and, under jit, fuses its moving averages "
            "into multiply-adds",
        ),
    },
    # torch.optim.Muon against the torch convention, measured 2026-12-01 (normal, huge and parity
    # streams over 16x8, 4x8 and 5x5, float32 and float64): from step 1 (torch's fused lerp_ and
    # add_(alpha=)), 2676086 ulp on the 50-step normal stream (float32; float64 5037 on huge); on
    # the parity stream elements near 0 change sign (2**31 / 2**63 ulp), normwise relative 1.8e-4 in
    # both dtypes: the row's relative_tolerance["torch.optim:native"] admits those cells
    # optax.contrib.muon against the optax convention, measured 2026-12-02 (optax 0.2.8, jax 0.10.2;
    # normal, huge and parity streams, float32 at x64 off and float64 with x64, the optax and
    # optax_defaults cases; the same ulp with the default thread pools and with one thread, as
    # conformance jobs run): 101972 ulp (parity, float64; relative 1.2e-15, 1.4e-15 with one thread;
    # float32 24175, relative 6.2e-7); on the 50-step streams at most 15573 (optax_defaults/huge,
    # float32; relative 1.7e-7); every cell differs from step 1
    # keras.optimizers.Muon against the keras convention, measured 2026-12-02 (--full: normal, huge
    # and parity streams, float32; Keras cannot step float64 matrices, KERAS_NATIVE_REFUSALS):
    # 8384 ulp (keras, parity; relative 2.0e-7; keras_adam 5632, 2.1e-7), on the 50-step streams at
    # most 320 (keras_adam/huge, 1.4e-7); keras_adam_2d (every matrix by Adam) bitwise in float32
    # and float64
    "Muon": {
        "torch.optim": (4 * 2676086, _TORCH_KERNELS),
        "optax": (
            4 * 101972,
            "optax runs its Newton-Schulz iteration as one compiled loop whose products XLA sums and "
            "fuses in its own order (the spec's are the backend's matmul, another order), and under "
            "jit XLA contracts optax's moving averages into multiply-adds and rewrites its "
            "bias-correction divisions",
        ),
        "keras": (
            4 * 8384,
            "keras.optimizers.Muon takes the Frobenius norm with TensorFlow's reduction, which sums in "
            "its own order (the spec in one pairwise order), and its products are TensorFlow's "
            "matmul (the reference's NumPy's BLAS)",
        ),
    },
    "Adamax": {"torch.optim": (4 * 35102, _TORCH_KERNELS), "optax": (4 * 37115, _OPTAX_JIT)},
    "NAdam": {"torch.optim": (4 * 1430484, _TORCH_KERNELS), "optax": (4 * 221940, _OPTAX_JIT)},
    "Adadelta": {"torch.optim": (4 * 5760, _TORCH_KERNELS), "optax": (4 * 56, _OPTAX_JIT)},
}
"""Bounds of the native-parity rows (``<framework>@native``: the framework's own optimizer against
uniopt's spec with that framework's ``convention``)."""

# keras.optimizers on Keras's JAX backend (keras_jax@native: apply eagerly, jax_enable_x64 off, so
# float32 only) against the keras convention, measured 2026-12-02 (keras 3.15.1, jax 0.10.2 on the
# CPU; normal, huge and 1,000-step parity streams, every keras-convention case): SGD, Adagrad,
# RMSprop, Adam, AdamW, Adamax, Adadelta and Lion bitwise; the others (worst cell, normwise relative
# distance; the 50-step streams' worst)
_KERAS_JAX = "keras.optimizers.{} on Keras's JAX backend"
_KERAS_JAX_NATIVE: dict[str, tuple[int, str]] = {
    # 18048 ulp (keras/parity; 2.9e-7); 50-step streams 80
    "Lamb": (4 * 18048, _NORM_ORDER),
    # 14592 ulp (keras/parity; 2.2e-7); 50-step streams 192, from step 1
    "Adafactor": (
        4 * 14592,
        f"{_KERAS_JAX.format('Adafactor')} takes its row and column means and RMS with jax's reductions, "
        "which sum in XLA's order (the spec in one pairwise order)",
    ),
    # 41760 ulp (keras/parity; 4.1e-7, keras_adam/parity 5.9e-7); 50-step streams 1016, from step 1
    "Muon": (
        4 * 41760,
        f"{_KERAS_JAX.format('Muon')} takes the Frobenius norm with jax's reduction, which sums in XLA's "
        "order (the spec in one pairwise order), and its products are XLA's dot (the reference's "
        "NumPy's BLAS)",
    ),
    # 5504 ulp (keras/parity; 6.6e-8); 50-step streams 12 (relative 7.2e-8), first at steps 1 to 7
    "NAdam": (
        4 * 5504,
        f"{_KERAS_JAX.format('Nadam')} rounds some of its step scalars otherwise than on TensorFlow (the "
        "keras convention's): its momentum schedule 0.96 ** (0.004 t) is XLA's pow, which is not "
        "correctly rounded, nor is TensorFlow's",
    ),
    # 2025337597 ulp (keras/parity; 0.03); 50-step streams 6929359 (relative 6.4e-3), from step 2:
    # docs/keras.md measured 54,784 ulp in 6 steps (keras.optimizers.ScheduleFreeAdamW on JAX
    # against the same class on TensorFlow)
    "ScheduleFreeAdamW": (
        4 * 2025337597,
        f"{_KERAS_JAX.format('ScheduleFreeAdamW')} is not its TensorFlow self, whose steps the keras "
        "convention follows: from the second step its averages differ by a relative 1e-3 and more "
        "(docs/keras.md)",
    ),
}
# keras.optimizers on Keras's torch backend (keras_torch@native: apply under torch.no_grad) against
# the keras convention, measured 2026-12-02 (keras 3.15.1, torch 2.13.0 CPU; normal, huge and
# 1,000-step parity streams, float32 and float64, every keras-convention case): most cells differ
# from step 1 (bitwise: 6 of Adagrad's 12 cells, 2 of Muon's 18, 4 of Schedule-Free AdamW's 12,
# none of the others'). The ulp bound is 4x the worst float32 cell; float64 cells differ by up to a relative
# 1.3e-5 (float32 roundings in Keras's torch steps: SGD's weight decay, Adam's update), 1e13 ulp
# and more, and are admitted by NATIVE_RELATIVE_TOLERANCES (4x the worst relative distance, both
# dtypes). Worst float32 cell, its relative distance; the worst relative distance
_KERAS_TORCH = (
    "Keras's own optimizers on torch are torch._foreach kernels (keras/src/backend/torch/optimizers/): "
    "fused multiply-adds (add_ with alpha, addcmul), torch's CPU sqrt (not correctly rounded) and "
    "their own op order, and for float64 variables some of their steps in float32"
)
_KERAS_TORCH_NATIVE: dict[str, tuple[int, float]] = {
    "SGD": (1399296, 1.3e-5),  # keras/parity; float32 relative 1.3e-5
    "Adagrad": (1478656, 5.3e-7),  # keras/parity
    "RMSprop": (935936, 5.9e-6),  # keras/parity
    "Adam": (1314592, 6.8e-6),  # keras/parity
    "AdamW": (575392, 6.8e-6),  # keras/parity
    "Adamax": (649600, 4.8e-6),  # keras/parity; the relative one float64
    "Adadelta": (73728, 1.2e-6),  # keras/parity; relative keras_defaults/parity
    "Lion": (4912128, 6.1e-6),  # keras/parity
    "NAdam": (4433920, 1.4e-5),  # keras/parity
    "Lamb": (309248, 9.5e-6),  # keras/parity
    "Adafactor": (75536, 6.1e-6),  # keras/parity
    "Muon": (13824, 2.9e-6),  # keras_adam/parity; relative keras/parity, float64
    "ScheduleFreeAdamW": (147456, 8.3e-6),  # keras/parity
}
for _name, _bound in _KERAS_JAX_NATIVE.items():
    NATIVE_TOLERANCES.setdefault(_name, {})["keras_jax"] = _bound
for _name, (_ulp, _relative) in _KERAS_TORCH_NATIVE.items():
    NATIVE_TOLERANCES.setdefault(_name, {})["keras_torch"] = (4 * _ulp, _KERAS_TORCH)

NATIVE_RELATIVE_TOLERANCES: dict[str, dict[str, tuple[float, str]]] = {
    name: {"keras_torch": (4 * relative, _KERAS_TORCH)} for name, (_, relative) in _KERAS_TORCH_NATIVE.items()
}
"""Relative bounds of native rows (as :attr:`OptimizerInfo.relative_tolerance`, for the rows whose
float64 cells sit a float32 rounding away: keras_torch@native): a cell beyond its ulp bound in
:data:`NATIVE_TOLERANCES` passes where its normwise relative distance is within this bound."""

KERAS_NATIVE_REFUSALS: dict[str, tuple[Any, str]] = {
    # keras.optimizers.Muon's Muon step of a float64 variable fails in lr_adjust (x * ops.sqrt(...)
    # * rms_rate: float64 times float32) or, with rms_rate=None, in lr * update (float32 learning
    # rate times float64): TensorFlow raises InvalidArgumentError. The keras cases' streams all
    # hold a 2-D parameter, which takes the Muon step unless the case routes matrices to Adam
    "Muon": (
        lambda spec, dtype: dtype == "float64" and not spec.adam_2d,
        "keras.optimizers.Muon fails on a float64 matrix it steps with Muon: it multiplies the float64 "
        "update by its float32 learning rate or root (TensorFlow's InvalidArgumentError); the keras "
        "convention widens them, and tf@ and torch@ run these cells",
    ),
}
"""Optimizer -> (predicate(spec, dtype), reason): the ``keras@native`` cells Keras's own optimizer
cannot run, skipped with the reason."""


def _common_errors(name: str, **extra: ErrorCase) -> tuple[ErrorCase, ...]:
    """Error inputs every optimizer shares (learning rate and the bool flags)."""
    return (
        ErrorCase({"lr": -1e-3}, rf"{name}: lr=-0\.001 is out of range; expected 0 <= lr"),
        ErrorCase({"lr": float("nan")}, rf"{name}: lr=nan is not finite"),
        ErrorCase({"lr": "0.1"}, rf"{name}: lr='0\.1' is not a real number"),
        ErrorCase({"maximize": 1}, rf"{name}: maximize=1 is not a bool"),
        *extra.values(),
    )


# optax arguments without a spec field that several aliases share: (accepts(value, convention), the
# accepted values in words)
_OPTAX_EPS_ROOT = (lambda v, c: v is None or v == 0, "None or 0.0 (optax's default)")
_OPTAX_MU_DTYPE = (
    lambda v, c: True,
    "None, or a real floating dtype each parameter's dtype holds exactly (checked at init)",
)


def _beta_errors(name: str) -> dict[str, ErrorCase]:
    return {
        "beta1": ErrorCase(
            {"betas": (1.0, 0.999)},
            rf"{name}: betas\[0\]=1\.0 is out of range; "
            r"expected 0 <= betas\[0\] < 1",
        ),
        "beta2": ErrorCase({"betas": (0.9, -0.1)}, rf"{name}: betas\[1\]=-0\.1 is out of range"),
        "pair": ErrorCase({"betas": 0.9}, rf"{name}: betas=0\.9 is not a pair"),
        "eps": ErrorCase({"eps": 0.0}, rf"{name}: eps=0\.0 is out of range; expected 0 < eps"),
        "wd": ErrorCase({"weight_decay": -0.1}, rf"{name}: weight_decay=-0\.1 is out of range"),
    }


_PER_TENSOR_FLAT = (
    "the rule reduces over each parameter (a norm), so uniopt.torch refuses implementation='flat', "
    "which runs the rule over a concatenation of parameters; torch@compiled compiles it per "
    "parameter, torch@loop and torch@eager run it"
)
_MATRIX_PRODUCTS = (
    "the rule multiplies matrices, so uniopt.torch refuses the flat implementations (a "
    "concatenation of parameters) and does not compile it per parameter (inductor would choose the "
    "matrix products' kernel and its summation order); torch@loop and torch@eager run it"
)

_SF_NO_XLA = (
    "uniopt.tf refuses ScheduleFreeAdamW's optax convention under XLA (jit_compile=True) with a "
    "ValueError: its float32 history has no in-graph formula, so its per-step scalars come from the "
    "host, which XLA cannot call; tf@eager and tf@function run it (the uniopt and keras conventions "
    "run in-graph under XLA)"
)

_BFLOAT16_BOUNDARY = (
    "the torch convention rounds every Newton-Schulz product to bfloat16, as torch.optim.Muon does: "
    "where a float32 product (summed in the backend's order: its BLAS, or on uniopt.torch torch's own "
    "bfloat16 kernels from 128**3 multiply-adds in the Gram product) or an ulp of the momentum lands on "
    "the other side of a bfloat16 rounding boundary, that element's update moves by a bfloat16 ulp "
    "(2**-8 of it), and an element near 0 can change sign, so the bound is on the normwise relative "
    "distance"
)

_KERAS_ADAM_SLOTS = {
    "exp_avg": "_momentums",
    "exp_avg_sq": "_velocities",
    "max_exp_avg_sq": "_velocity_hats",
}
"""Keras's Adam and AdamW keep the moments in these lists of variables."""

TABLE: tuple[OptimizerInfo, ...] = (
    OptimizerInfo(
        SGD,
        torch=TorchNames(
            "SGD",
            ("lr", "momentum", "dampening", "weight_decay", "nesterov"),
            {"foreach": None, "differentiable": False, "fused": None},
        ),
        keras=KerasNames(
            "SGD",
            ("learning_rate", "momentum", "nesterov", "weight_decay"),
            slots={"momentum_buffer": "momentums"},
            checks_float=("momentum",),
            sparse_duplicates_match_keras=True,
        ),
        optax=(
            OptaxNames(
                "sgd",
                names={
                    "learning_rate": "lr",
                    "momentum": "momentum",
                    "nesterov": "nesterov",
                    "dampening": "dampening",
                    "weight_decay": "weight_decay",
                    "maximize": "maximize",
                    "convention": "convention",
                },
                positional=("learning_rate", "momentum", "nesterov", "accumulator_dtype"),
                only={"accumulator_dtype": _OPTAX_MU_DTYPE},
                state={"trace": "momentum_buffer"},
            ),
        ),
        cases=(
            Case("plain", {"lr": 0.05}),
            Case("momentum", {"lr": 0.02, "momentum": 0.9}),
            Case("dampening", {"lr": 0.02, "momentum": 0.9, "dampening": 0.3}),
            Case("nesterov", {"lr": 0.02, "momentum": 0.9, "nesterov": True}),
            Case("weight_decay", {"lr": 0.02, "momentum": 0.5, "weight_decay": 0.1}),
            Case("maximize", {"lr": 0.02, "momentum": 0.9, "maximize": True}),
            Case(
                "torch",
                {"lr": 0.02, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01, "convention": "torch"},
            ),
            Case("keras", {"lr": 0.02, "momentum": 0.9, "weight_decay": 0.01, "convention": "keras"}),
            Case("keras_nesterov", {"lr": 0.02, "momentum": 0.9, "nesterov": True, "convention": "keras"}),
            # Keras takes a plain step when nesterov is set without momentum
            Case("keras_nesterov_no_momentum", {"lr": 0.02, "nesterov": True, "convention": "keras"}),
            Case("keras_defaults", {"convention": "keras"}),
            Case("optax", {"lr": 0.02, "momentum": 0.9, "nesterov": True, "convention": "optax"}),
        ),
        state_cases=(
            # lower-precision state: the buffer in bfloat16 (optax's accumulator_dtype)
            Case(
                "optax_accumulator_bfloat16",
                {"lr": 0.02, "momentum": 0.9, "convention": "optax"},
                {"momentum_buffer": "bfloat16"},
            ),
        ),
        error_cases=_common_errors(
            "SGD",
            momentum=ErrorCase({"momentum": -0.5}, r"SGD: momentum=-0\.5 is out of range"),
            dampening=ErrorCase(
                {"momentum": 0.9, "dampening": 1.5},
                r"SGD: dampening=1\.5 is out of range; expected 0 <= dampening <= 1",
            ),
            nesterov=ErrorCase(
                {"nesterov": True}, r"SGD: nesterov=True needs momentum > 0 and dampening = 0"
            ),
            nesterov_damp=ErrorCase(
                {"nesterov": True, "momentum": 0.9, "dampening": 0.1},
                r"SGD: nesterov=True needs momentum > 0 and dampening = 0",
            ),
            wd=ErrorCase({"weight_decay": -1.0}, r"SGD: weight_decay=-1\.0 is out of range"),
            flag=ErrorCase({"nesterov": "yes", "momentum": 0.9}, r"SGD: nesterov='yes' is not"),
            keras_momentum=ErrorCase(
                {"momentum": 2.0, "convention": "keras"}, r"SGD: `momentum` must be a float between \[0, 1\]"
            ),
        ),
        ulp_tolerance={
            # jax's optax row only (update + apply_updates), the keras case (Keras's decoupled weight
            # decay), measured 8 ulp in float32 (huge stream, from step 2): where a step leaves the
            # binade of p, u = new - p is rounded and p + u misses new p by an ulp that propagates;
            # float64 on the huge stream 128 ulp (from step 2; measured over the whole matrix)
            "jax:optax": 128,
            # the optax row on the 1,000-step parity stream (run by --full): the misses of p + u add up
            # over the steps; measured over the whole matrix (2026-11-30)
            "jax:optax:keras/parity": 4096,
        },
    ),
    OptimizerInfo(
        Adagrad,
        torch=TorchNames(
            "Adagrad",
            ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps", "foreach"),
            {"foreach": None, "differentiable": False, "fused": None},
            state_at_construction=True,
            constructor_only=("initial_accumulator_value",),
        ),
        keras=KerasNames(
            "Adagrad",
            ("learning_rate", "initial_accumulator_value", "epsilon", "weight_decay"),
            slots={"sum": "_accumulators"},
        ),
        optax=(
            OptaxNames(
                "adagrad",
                names={
                    "learning_rate": "lr",
                    "initial_accumulator_value": "initial_accumulator_value",
                    "eps": "eps",
                    "lr_decay": "lr_decay",
                    "weight_decay": "weight_decay",
                    "maximize": "maximize",
                    "convention": "convention",
                },
                positional=("learning_rate", "initial_accumulator_value", "eps"),
                state={"sum_of_squares": "sum"},
            ),
        ),
        cases=(
            Case("default", {"lr": 0.1}),
            Case("lr_decay", {"lr": 0.1, "lr_decay": 0.01}),
            Case("initial_accumulator", {"lr": 0.1, "initial_accumulator_value": 0.1, "eps": 1e-6}),
            Case("weight_decay", {"lr": 0.1, "weight_decay": 0.05}),
            Case("maximize", {"lr": 0.1, "maximize": True}),
            Case("torch", {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.05, "convention": "torch"}),
            Case("keras", {"lr": 0.1, "weight_decay": 0.05, "convention": "keras"}),
            Case("keras_defaults", {"convention": "keras"}),
            Case("optax", {"lr": 0.1, "convention": "optax"}),
            # optax accepts eps=0: the update is 0 where the accumulator is 0
            Case(
                "optax_eps0", {"lr": 0.1, "eps": 0.0, "initial_accumulator_value": 0.0, "convention": "optax"}
            ),
        ),
        error_cases=_common_errors(
            "Adagrad",
            lr_decay=ErrorCase({"lr_decay": -0.1}, r"Adagrad: lr_decay=-0\.1 is out of range"),
            eps=ErrorCase({"eps": -1e-10}, r"Adagrad: eps=-1e-10 is out of range; expected 0 < eps"),
            init=ErrorCase(
                {"initial_accumulator_value": -0.1},
                r"Adagrad: initial_accumulator_value=-0\.1 is out of range",
            ),
            wd=ErrorCase({"weight_decay": float("inf")}, r"Adagrad: weight_decay=inf is not finite"),
        ),
        ulp_tolerance={
            # measured: one cell, weight_decay/zeros (float32 49472240, bfloat16 672; every other
            # Adagrad cell 0). XLA:CPU flushes subnormals to zero (FTZ/DAZ) eagerly and under jit;
            # the parameters decay into the subnormal range at step 24 and stop there while NumPy
            # goes on towards 0. tests/jax_adapter asserts 0 ulp for every Adagrad case on normal inputs.
            "jax:weight_decay/zeros": 49472240,
            # the same cell on TensorFlow: its CPU kernels always run flush-to-zero (FTZ/DAZ), in
            # every mode; measured float32 49472240, bfloat16 672, every other Adagrad cell 0
            "tf:weight_decay/zeros": 49472240,
            # jax's optax row only (update + apply_updates), the keras case (decoupled decay): p + u
            # cannot reproduce every step (see SGD); measured 1024 ulp in float32 on the normal
            # stream, from step 2
            "jax:optax": 1024,
            # the optax row on the 1,000-step parity stream (run by --full): the misses of p + u add up
            # over the steps; measured over the whole matrix (2026-11-30)
            "jax:optax:keras/parity": 8192,
        },
    ),
    OptimizerInfo(
        RMSprop,
        torch=TorchNames(
            "RMSprop",
            (
                "lr",
                "alpha",
                "eps",
                "weight_decay",
                "momentum",
                "centered",
                "capturable",
                "foreach",
                "maximize",
                "differentiable",
            ),
            {"capturable": False, "foreach": None, "differentiable": False},
        ),
        ulp_tolerance={
            # jax's optax row only (update + apply_updates), the keras case (Keras's decoupled weight
            # decay), measured 64 ulp in float32 (2 in float64) on the normal stream, first at step 4:
            # the additive contract p + u cannot reproduce a sign-changing step, as for AdamW
            "jax:optax": 64,
            # the optax row on the 1,000-step parity stream (run by --full): the misses of p + u add up
            # over the steps; measured over the whole matrix (2026-11-30)
            "jax:optax:keras/parity": 4096,
        },
        keras=KerasNames(
            "RMSprop",
            ("learning_rate", "rho", "momentum", "epsilon", "centered", "weight_decay"),
            names={"rho": "alpha"},
            slots={
                "square_avg": "_velocities",
                "grad_avg": "_average_gradients",
                "momentum_buffer": "_momentums",
            },
        ),
        optax=(
            OptaxNames(
                "rmsprop",
                names={
                    "learning_rate": "lr",
                    "decay": "alpha",
                    "eps": "eps",
                    "centered": "centered",
                    "momentum": "momentum",
                    "weight_decay": "weight_decay",
                    "maximize": "maximize",
                    "convention": "convention",
                },
                positional=(
                    "learning_rate",
                    "decay",
                    "eps",
                    "initial_scale",
                    "eps_in_sqrt",
                    "centered",
                    "momentum",
                    "nesterov",
                    "bias_correction",
                ),
                only={
                    "initial_scale": (lambda v, c: v is None or v == 0, "None or 0.0 (optax's default)"),
                    "eps_in_sqrt": (
                        lambda v, c: v is None or bool(v) == (c in ("optax", "keras")),
                        "None (the convention's placement: inside the root with convention='optax' or "
                        "'keras', outside otherwise) or that placement as a bool",
                    ),
                    "nesterov": (
                        lambda v, c: v is False,
                        "False (RMSprop has no Nesterov momentum in uniopt)",
                    ),
                    "bias_correction": (lambda v, c: v is False, "False (optax's default)"),
                },
                # optax's trace holds the learning-rate-scaled step (-lr * momentum_buffer)
                state={"nu": "square_avg", "mu": "grad_avg", "trace": "momentum_buffer"},
            ),
        ),
        cases=(
            Case("default", {"lr": 0.01}),
            Case("centered", {"lr": 0.01, "centered": True}),
            Case("momentum", {"lr": 0.005, "momentum": 0.9}),
            Case("centered_momentum", {"lr": 0.01, "centered": True, "momentum": 0.5}),
            Case("weight_decay", {"lr": 0.01, "weight_decay": 0.1, "alpha": 0.9, "eps": 1e-6}),
            Case("maximize", {"lr": 0.01, "maximize": True}),
            Case(
                "torch",
                {"lr": 0.01, "centered": True, "momentum": 0.5, "weight_decay": 0.1, "convention": "torch"},
            ),
            Case(
                "keras",
                {"lr": 0.01, "centered": True, "momentum": 0.5, "weight_decay": 0.1, "convention": "keras"},
            ),
            Case("keras_defaults", {"convention": "keras"}),
            Case("optax", {"lr": 0.01, "centered": True, "momentum": 0.5, "convention": "optax"}),
        ),
        error_cases=_common_errors(
            "RMSprop",
            alpha=ErrorCase({"alpha": 1.0}, r"RMSprop: alpha=1\.0 is out of range; expected 0 <= alpha < 1"),
            eps=ErrorCase({"eps": 0}, r"RMSprop: eps=0 is out of range"),
            momentum=ErrorCase({"momentum": -0.9}, r"RMSprop: momentum=-0\.9 is out of range"),
            centered=ErrorCase({"centered": None}, r"RMSprop: centered=None is not a bool"),
        ),
    ),
    OptimizerInfo(
        Adam,
        torch=TorchNames(
            "Adam",
            ("lr", "betas", "eps", "weight_decay", "amsgrad"),
            {
                "foreach": None,
                "capturable": False,
                "differentiable": False,
                "fused": None,
                "decoupled_weight_decay": False,
            },
        ),
        keras=KerasNames(
            "Adam",
            ("learning_rate", "beta_1", "beta_2", "epsilon", "amsgrad", "weight_decay"),
            slots=_KERAS_ADAM_SLOTS,
        ),
        optax=(
            OptaxNames(
                "adam",
                names={
                    "learning_rate": "lr",
                    "b1": "betas[0]",
                    "b2": "betas[1]",
                    "eps": "eps",
                    "weight_decay": "weight_decay",
                    "amsgrad": "amsgrad",
                    "maximize": "maximize",
                    "convention": "convention",
                },
                positional=("learning_rate", "b1", "b2", "eps", "eps_root", "mu_dtype"),
                only={
                    "eps_root": _OPTAX_EPS_ROOT,
                    "mu_dtype": _OPTAX_MU_DTYPE,
                    "nesterov": (lambda v, c: v is False, "False (NAdam is uniopt.jax.nadam)"),
                },
                state={"count": "step", "mu": "exp_avg", "nu": "exp_avg_sq", "nu_max": "max_exp_avg_sq"},
            ),
        ),
        cases=(
            Case("default", {"lr": 0.01}),
            Case("amsgrad", {"lr": 0.01, "amsgrad": True}),
            Case("weight_decay", {"lr": 0.01, "weight_decay": 0.1}),
            Case("betas", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6}),
            Case("maximize", {"lr": 0.01, "maximize": True}),
            Case("torch", {"lr": 0.01, "amsgrad": True, "weight_decay": 0.1, "convention": "torch"}),
            Case("keras", {"lr": 0.01, "amsgrad": True, "weight_decay": 0.1, "convention": "keras"}),
            Case("keras_defaults", {"convention": "keras"}),
            Case("optax", {"lr": 0.01, "convention": "optax"}),
            Case("optax_amsgrad", {"lr": 0.01, "amsgrad": True, "convention": "optax"}),
        ),
        state_cases=(
            # lower-precision state: exp_avg stored in bfloat16 / float16 (optax's mu_dtype)
            Case("mu_bfloat16", {"lr": 0.01}, {"exp_avg": "bfloat16"}),
            Case("mu_float16", {"lr": 0.01}, {"exp_avg": "float16"}),
            Case("optax_mu_bfloat16", {"lr": 0.01, "convention": "optax"}, {"exp_avg": "bfloat16"}),
            Case("optax_mu_float16", {"lr": 0.01, "convention": "optax"}, {"exp_avg": "float16"}),
        ),
        error_cases=_common_errors("Adam", **_beta_errors("Adam")),
        ulp_tolerance={
            # jax's optax row only: the keras case (decoupled weight decay), measured 2 ulp in float32
            # and float64 from step 21, where apply_updates cannot reproduce a sign-changing step
            "jax:optax": 2,
            # the optax row on the 1,000-step parity stream (run by --full): the misses of p + u add up
            # over the steps; measured over the whole matrix (2026-11-30)
            "jax:optax:keras/parity": 264,
        },
    ),
    OptimizerInfo(
        AdamW,
        torch=TorchNames(
            "AdamW",
            ("lr", "betas", "eps", "weight_decay", "amsgrad"),
            {
                "foreach": None,
                "capturable": False,
                "differentiable": False,
                "fused": None,
                "decoupled_weight_decay": True,
            },
        ),
        keras=KerasNames(
            "AdamW",
            ("learning_rate", "weight_decay", "beta_1", "beta_2", "epsilon", "amsgrad"),
            slots=_KERAS_ADAM_SLOTS,
            weight_decay_none_is_zero=False,
        ),
        optax=(
            OptaxNames(
                "adamw",
                names={
                    "learning_rate": "lr",
                    "b1": "betas[0]",
                    "b2": "betas[1]",
                    "eps": "eps",
                    "weight_decay": "weight_decay",
                    "amsgrad": "amsgrad",
                    "maximize": "maximize",
                    "convention": "convention",
                },
                positional=(
                    "learning_rate",
                    "b1",
                    "b2",
                    "eps",
                    "eps_root",
                    "mu_dtype",
                    "weight_decay",
                    "mask",
                ),
                only={
                    "eps_root": _OPTAX_EPS_ROOT,
                    "mu_dtype": _OPTAX_MU_DTYPE,
                    "nesterov": (lambda v, c: v is False, "False (NAdam is uniopt.jax.nadam)"),
                },
                state={"count": "step", "mu": "exp_avg", "nu": "exp_avg_sq", "nu_max": "max_exp_avg_sq"},
            ),
        ),
        cases=(
            Case("default", {"lr": 0.01}),
            Case("strong_decay", {"lr": 0.01, "weight_decay": 0.5}),
            Case("betas", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6}),
            Case("amsgrad", {"lr": 0.01, "amsgrad": True}),
            Case("maximize", {"lr": 0.01, "maximize": True}),
            Case("torch", {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True, "convention": "torch"}),
            Case("keras", {"lr": 0.01, "convention": "keras"}),
            Case("optax", {"lr": 0.01, "weight_decay": 0.1, "convention": "optax"}),
        ),
        error_cases=_common_errors("AdamW", **_beta_errors("AdamW")),
        ulp_tolerance={
            # jax's optax row only (update + apply_updates); its eager and jit rows run tx.step (the
            # rule's new parameter itself) and are 0 ulp. Measured: float32 8 (7 cells), float64 2
            # (8 cells), bfloat16 1 (2 cells). optax's contract adds updates (p + u); where decoupled
            # decay plus the step changes a parameter's sign, no float u gives p + u == new p (22 of
            # ~1M float32/64 element-steps of the matrix) and the 1-ulp miss propagates.
            "jax:optax": 8,
            # the optax row on the 1,000-step parity stream (run by --full): the misses of p + u add up
            # over the steps; measured over the whole matrix (2026-11-30)
            "jax:optax:torch/parity": 16384,
            "jax:optax:keras/parity": 16,
        },
    ),
    OptimizerInfo(
        RAdam,
        torch=TorchNames(
            "RAdam",
            ("lr", "betas", "eps", "weight_decay", "decoupled_weight_decay"),
            {"foreach": None, "capturable": False, "differentiable": False},
        ),
        keras=KerasNames(None, ("learning_rate", "beta_1", "beta_2", "epsilon", "weight_decay")),
        optax=(
            OptaxNames(
                "radam",
                names={
                    "learning_rate": "lr",
                    "b1": "betas[0]",
                    "b2": "betas[1]",
                    "eps": "eps",
                    "weight_decay": "weight_decay",
                    "decoupled_weight_decay": "decoupled_weight_decay",
                    "degenerated_to_sgd": "degenerated_to_sgd",
                    "maximize": "maximize",
                    "convention": "convention",
                },
                positional=("learning_rate", "b1", "b2", "eps", "eps_root", "threshold"),
                only={
                    "eps_root": _OPTAX_EPS_ROOT,
                    "threshold": (
                        lambda v, c: v is None or (v == 5 and c in ("optax", "official")),
                        "None (the convention's threshold) or 5.0 with convention='optax' or 'official' "
                        "(rectified where rho_t >= 5; uniopt and torch: rho_t > 5)",
                    ),
                    "nesterov": (lambda v, c: v is False, "False (optax's default)"),
                },
                state={"count": "step", "mu": "exp_avg", "nu": "exp_avg_sq"},
            ),
        ),
        cases=(
            Case("default", {"lr": 0.01}),
            Case("skip_unrectified", {"lr": 0.01, "degenerated_to_sgd": False}),
            Case("weight_decay", {"lr": 0.01, "weight_decay": 0.1}),
            Case("decoupled", {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True}),
            Case("betas", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6}),
            Case("maximize", {"lr": 0.01, "maximize": True}),
            Case("torch", {"lr": 0.01, "weight_decay": 0.1, "convention": "torch"}),
            Case(
                "torch_decoupled",
                {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True, "convention": "torch"},
            ),
            Case("optax", {"lr": 0.01, "convention": "optax"}),
            # the official default skips unrectified steps; official_sgd takes the momentum step there
            Case("official", {"lr": 0.01, "weight_decay": 0.1, "convention": "official"}),
            Case("official_sgd", {"lr": 0.01, "degenerated_to_sgd": True, "convention": "official"}),
        ),
        error_cases=_common_errors(
            "RAdam",
            **_beta_errors("RAdam"),
            flag=ErrorCase(
                {"degenerated_to_sgd": "false"}, r"RAdam: degenerated_to_sgd='false' is not a bool"
            ),
        ),
        ulp_tolerance={
            # jax's optax row, measured at most 2 ulp (float32 and float64) in the cases with
            # decoupled decay (decoupled, torch_decoupled, official) on the huge stream: the additive
            # contract, as for AdamW (a sign-changing step that no float update reproduces).
            "jax:optax": 2,
            # the optax row on the 1,000-step parity stream (run by --full): the misses of p + u add up
            # over the steps; measured over the whole matrix (2026-11-30)
            "jax:optax:torch_decoupled/parity": 256,
            "jax:optax:official/parity": 4,
        },
    ),
    OptimizerInfo(
        Adamax,
        cases=(
            Case("default", {"lr": 0.01}),
            Case("weight_decay", {"lr": 0.01, "weight_decay": 0.1}),
            Case("betas", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6}),
            Case("maximize", {"lr": 0.01, "maximize": True}),
            Case("torch", {"lr": 0.01, "weight_decay": 0.1, "convention": "torch"}),
            # torch's lerp takes its other branch, end - (end - self) * (1 - w), for w = 1 - beta1 >= 0.5
            Case("torch_small_beta1", {"lr": 0.01, "betas": (0.3, 0.999), "convention": "torch"}),
            Case("keras", {"lr": 0.01, "weight_decay": 0.1, "convention": "keras"}),
            Case("keras_defaults", {"convention": "keras"}),
            Case("optax", {"lr": 0.01, "convention": "optax"}),
        ),
        error_cases=_common_errors("Adamax", **_beta_errors("Adamax")),
        torch=TorchNames(
            "Adamax",
            ("lr", "betas", "eps", "weight_decay", "foreach"),
            {"foreach": None, "capturable": False, "differentiable": False},
        ),
        keras=KerasNames(
            "Adamax",
            ("learning_rate", "beta_1", "beta_2", "epsilon", "weight_decay"),
            slots={"exp_avg": "_m", "exp_inf": "_u"},
        ),
        optax=(
            OptaxNames(
                alias="adamax",
                names={
                    "learning_rate": "lr",
                    "b1": "betas[0]",
                    "b2": "betas[1]",
                    "eps": "eps",
                    "weight_decay": "weight_decay",
                    "maximize": "maximize",
                    "convention": "convention",
                },
                positional=("learning_rate", "b1", "b2", "eps"),
                state={"count": "step", "mu": "exp_avg", "nu": "exp_inf"},
            ),
        ),
    ),
    OptimizerInfo(
        Adadelta,
        cases=(
            Case("default", {}),
            Case("lr", {"lr": 0.5}),
            Case("rho_eps", {"rho": 0.95, "eps": 1e-5}),
            Case("weight_decay", {"weight_decay": 0.1}),
            Case("maximize", {"maximize": True}),
            Case("torch", {"lr": 0.5, "rho": 0.95, "weight_decay": 0.1, "convention": "torch"}),
            Case("keras", {"lr": 0.5, "rho": 0.9, "eps": 1e-6, "weight_decay": 0.1, "convention": "keras"}),
            Case("keras_defaults", {"convention": "keras"}),
            Case("optax", {"lr": 0.5, "weight_decay": 0.1, "convention": "optax"}),
        ),
        error_cases=_common_errors(
            "Adadelta",
            rho=ErrorCase({"rho": 1.5}, r"Adadelta: rho=1\.5 is out of range; expected 0 <= rho <= 1"),
            rho_nan=ErrorCase({"rho": float("nan")}, r"Adadelta: rho=nan is not finite"),
            eps=ErrorCase({"eps": 0.0}, r"Adadelta: eps=0\.0 is out of range; expected 0 < eps"),
            wd=ErrorCase({"weight_decay": -0.1}, r"Adadelta: weight_decay=-0\.1 is out of range"),
        ),
        torch=TorchNames(
            "Adadelta",
            ("lr", "rho", "eps", "weight_decay", "foreach"),
            {"foreach": None, "capturable": False, "differentiable": False},
        ),
        keras=KerasNames(
            "Adadelta",
            ("learning_rate", "rho", "epsilon", "weight_decay"),
            names={"rho": "rho"},
            slots={"square_avg": "_accumulated_grads", "acc_delta": "_accumulated_delta_vars"},
        ),
        optax=(
            OptaxNames(
                "adadelta",
                names={
                    "learning_rate": "lr",
                    "rho": "rho",
                    "eps": "eps",
                    "weight_decay": "weight_decay",
                    "maximize": "maximize",
                    "convention": "convention",
                },
                positional=("learning_rate", "rho", "eps", "weight_decay", "weight_decay_mask"),
                only={"weight_decay_mask": (lambda v, c: v is None, "None (every parameter is decayed)")},
                state={"e_g": "square_avg", "e_x": "acc_delta"},
            ),
        ),
    ),
    OptimizerInfo(
        Lamb,
        cases=(
            Case("default", {"lr": 0.01}),
            Case("weight_decay", {"lr": 0.01, "weight_decay": 0.1}),
            Case("betas_eps", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-8}),
            Case("maximize", {"lr": 0.01, "maximize": True}),
            Case("keras", {"lr": 0.01, "weight_decay": 0.1, "convention": "keras"}),
            Case("keras_defaults", {"convention": "keras"}),
            Case("optax", {"lr": 0.01, "weight_decay": 0.1, "convention": "optax"}),
            Case("optax_defaults", {"lr": 0.01, "convention": "optax"}),
        ),
        error_cases=_common_errors(
            "Lamb",
            **_beta_errors("Lamb"),
            torch=ErrorCase(
                {"convention": "torch"},
                r"Lamb: convention='torch' is not available \(torch\.optim has no LAMB",
            ),
        ),
        # torch.optim has no LAMB: uniopt.torch.Lamb takes torch-style names in the order of the
        # torch-optimizer package's Lamb (lr, betas, eps, weight_decay)
        torch=TorchNames(
            None,
            ("lr", "betas", "eps", "weight_decay"),
            {"foreach": None, "capturable": False, "differentiable": False},
        ),
        keras=KerasNames(
            "Lamb",
            ("learning_rate", "beta_1", "beta_2", "epsilon", "weight_decay"),
            slots={"exp_avg": "_momentums", "exp_avg_sq": "_velocities"},
        ),
        optax=(
            OptaxNames(
                alias="lamb",
                names={
                    "learning_rate": "lr",
                    "b1": "betas[0]",
                    "b2": "betas[1]",
                    "eps": "eps",
                    "weight_decay": "weight_decay",
                    "maximize": "maximize",
                    "convention": "convention",
                },
                positional=("learning_rate", "b1", "b2", "eps", "eps_root", "weight_decay", "mask"),
                only={"eps_root": _OPTAX_EPS_ROOT},
                state={"count": "step", "mu": "exp_avg", "nu": "exp_avg_sq"},
            ),
        ),
        skips={
            "torch:flat": _PER_TENSOR_FLAT,
        },
        ulp_tolerance={
            # jax's optax row only (update + apply_updates), in the keras cases, whose decoupled
            # decay moves p before the step: optax's additive contract p + u cannot reproduce every
            # such step, as for AdamW and Lion; measured (2026-12-01) 2 ulp in float32, 1 in float64
            "jax:optax": 2,
        },
    ),
    OptimizerInfo(
        Lion,
        cases=(
            Case("default", {"lr": 0.01}),
            Case("weight_decay", {"lr": 0.01, "weight_decay": 0.5}),
            Case("betas", {"lr": 0.01, "betas": (0.95, 0.98)}),
            # beta1 = 0: the sign of the gradient itself (signSGD), with the momentum still kept
            Case("sign_sgd", {"lr": 0.01, "betas": (0.0, 0.99)}),
            Case("maximize", {"lr": 0.01, "maximize": True}),
            Case("keras", {"lr": 0.01, "weight_decay": 0.1, "convention": "keras"}),
            Case("keras_defaults", {"convention": "keras"}),
            Case("optax", {"lr": 0.01, "convention": "optax"}),
            Case("optax_no_decay", {"lr": 0.01, "weight_decay": 0.0, "convention": "optax"}),
        ),
        state_cases=(
            # lower-precision state: exp_avg stored in bfloat16 (optax's mu_dtype)
            Case("optax_mu_bfloat16", {"lr": 0.01, "convention": "optax"}, {"exp_avg": "bfloat16"}),
        ),
        error_cases=_common_errors(
            "Lion",
            beta1=ErrorCase(
                {"betas": (1.5, 0.99)},
                r"Lion: betas\[0\]=1\.5 is out of range; expected 0 <= betas\[0\] <= 1",
            ),
            beta2=ErrorCase({"betas": (0.9, -0.1)}, r"Lion: betas\[1\]=-0\.1 is out of range"),
            pair=ErrorCase({"betas": 0.9}, r"Lion: betas=0\.9 is not a pair"),
            wd=ErrorCase({"weight_decay": -0.1}, r"Lion: weight_decay=-0\.1 is out of range"),
            keras_beta1=ErrorCase(
                {"betas": (0.0, 0.99), "convention": "keras"},
                r"Lion: betas\[0\]=0\.0 is out of range with convention='keras'; "
                r"expected 0 < betas\[0\] <= 1",
            ),
            torch=ErrorCase(
                {"convention": "torch"},
                r"Lion: convention='torch' is not available \(torch\.optim has no Lion",
            ),
        ),
        # torch.optim has no Lion: uniopt.torch.Lion takes the names of the lion-pytorch package
        torch=TorchNames(
            None,
            ("lr", "betas", "weight_decay"),
            {"foreach": None, "capturable": False, "differentiable": False},
        ),
        keras=KerasNames(
            "Lion",
            ("learning_rate", "beta_1", "beta_2", "weight_decay"),
            slots={"exp_avg": "_momentums"},
            # Keras's moment and its sign argument are linear in the gradient (measured equal with
            # repeated indices of mixed signs, tests/tf_adapter/test_dropin.py)
            sparse_duplicates_match_keras=True,
        ),
        optax=(
            OptaxNames(
                alias="lion",
                names={
                    "learning_rate": "lr",
                    "b1": "betas[0]",
                    "b2": "betas[1]",
                    "weight_decay": "weight_decay",
                    "maximize": "maximize",
                    "convention": "convention",
                },
                positional=("learning_rate", "b1", "b2", "mu_dtype", "weight_decay", "mask"),
                only={"mu_dtype": _OPTAX_MU_DTYPE},
                state={"count": "step", "mu": "exp_avg"},
            ),
        ),
        ulp_tolerance={
            # jax's optax row only (update + apply_updates), in the cases with decoupled decay: optax's
            # additive contract p + u cannot reproduce every decayed step, as for AdamW; measured
            # (2026-11-30) float32 12 ulp (keras/nonfinite), float64 4, float16 8, bfloat16 2; every
            # other Lion cell of every backend and mode is bitwise
            "jax:optax": 12,
            # the same on the 1,000-step parity stream (run by --full): measured float64 120, float32 8
            "jax:optax:keras/parity": 128,
        },
    ),
    OptimizerInfo(
        NAdam,
        cases=(
            Case("default", {"lr": 0.01}),
            Case("weight_decay", {"lr": 0.01, "weight_decay": 0.1}),
            Case("decoupled", {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True}),
            Case("betas", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6}),
            # a faster warm-up of mu_t (the default 0.004 takes ~225k steps to settle in float64)
            Case("momentum_decay", {"lr": 0.01, "momentum_decay": 0.05}),
            Case("maximize", {"lr": 0.01, "maximize": True}),
            Case("torch", {"lr": 0.01, "weight_decay": 0.1, "convention": "torch"}),
            Case(
                "torch_decoupled",
                {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True, "convention": "torch"},
            ),
            # torch's lerp takes its other branch, end - (end - self) * (1 - w), for w = 1 - beta1 >= 0.5
            Case("torch_small_beta1", {"lr": 0.01, "betas": (0.3, 0.999), "convention": "torch"}),
            Case("keras", {"lr": 0.01, "weight_decay": 0.1, "convention": "keras"}),
            Case("keras_defaults", {"convention": "keras"}),
            Case("optax", {"lr": 0.01, "convention": "optax"}),
            Case(
                "optax_nadamw",
                {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True, "convention": "optax"},
            ),
        ),
        state_cases=(
            # lower-precision state: exp_avg stored in bfloat16 (optax's mu_dtype)
            Case("optax_mu_bfloat16", {"lr": 0.01, "convention": "optax"}, {"exp_avg": "bfloat16"}),
        ),
        error_cases=_common_errors(
            "NAdam",
            **_beta_errors("NAdam"),
            momentum_decay=ErrorCase(
                {"momentum_decay": -0.004},
                r"NAdam: momentum_decay=-0\.004 is out of range; expected 0 <= momentum_decay",
            ),
            momentum_decay_nan=ErrorCase(
                {"momentum_decay": float("nan")}, r"NAdam: momentum_decay=nan is not"
            ),
            flag=ErrorCase(
                {"decoupled_weight_decay": "yes"}, r"NAdam: decoupled_weight_decay='yes' is not a bool"
            ),
            keras_schedule=ErrorCase(
                {"momentum_decay": 0.004, "convention": "keras"},
                r"NAdam: momentum_decay=0\.004 has no counterpart in convention='keras'",
            ),
            keras_coupled=ErrorCase(
                {"decoupled_weight_decay": False, "convention": "keras"},
                r"NAdam: decoupled_weight_decay=False has no counterpart in convention='keras'",
            ),
            optax_schedule=ErrorCase(
                {"momentum_decay": 0.004, "convention": "optax"},
                r"NAdam: momentum_decay=0\.004 has no counterpart in convention='optax'",
            ),
            optax_l2=ErrorCase(
                {"weight_decay": 0.1, "convention": "optax"},
                r"NAdam: weight_decay=0\.1 with convention='optax': optax\.nadam has no weight decay",
            ),
        ),
        torch=TorchNames(
            "NAdam",
            ("lr", "betas", "eps", "weight_decay", "momentum_decay", "decoupled_weight_decay"),
            {"foreach": None, "capturable": False, "differentiable": False},
        ),
        keras=KerasNames(
            "Nadam",
            ("learning_rate", "beta_1", "beta_2", "epsilon", "weight_decay"),
            slots={"exp_avg": "_momentums", "exp_avg_sq": "_velocities"},
        ),
        optax=(
            OptaxNames(
                "nadam",
                names={
                    "learning_rate": "lr",
                    "b1": "betas[0]",
                    "b2": "betas[1]",
                    "eps": "eps",
                    "weight_decay": "weight_decay",
                    "momentum_decay": "momentum_decay",
                    "decoupled_weight_decay": "decoupled_weight_decay",
                    "maximize": "maximize",
                    "convention": "convention",
                },
                positional=("learning_rate", "b1", "b2", "eps", "eps_root", "mu_dtype"),
                only={
                    "eps_root": _OPTAX_EPS_ROOT,
                    "mu_dtype": _OPTAX_MU_DTYPE,
                    "nesterov": (lambda v, c: v is True, "True (optax.nadam's)"),
                },
                state={"count": "step", "mu": "exp_avg", "nu": "exp_avg_sq"},
            ),
            OptaxNames(
                "nadamw",
                names={
                    "learning_rate": "lr",
                    "b1": "betas[0]",
                    "b2": "betas[1]",
                    "eps": "eps",
                    "weight_decay": "weight_decay",
                    "momentum_decay": "momentum_decay",
                    "maximize": "maximize",
                    "convention": "convention",
                },
                positional=(
                    "learning_rate",
                    "b1",
                    "b2",
                    "eps",
                    "eps_root",
                    "mu_dtype",
                    "weight_decay",
                    "mask",
                ),
                only={
                    "eps_root": _OPTAX_EPS_ROOT,
                    "mu_dtype": _OPTAX_MU_DTYPE,
                    "mask": (lambda v, c: v is None, "None (every parameter is decayed)"),
                    "nesterov": (lambda v, c: v is True, "True (optax.nadamw's)"),
                },
                fixed={"decoupled_weight_decay": True},
                state={"count": "step", "mu": "exp_avg", "nu": "exp_avg_sq"},
            ),
        ),
        ulp_tolerance={
            # jax's optax row only (update + apply_updates; eager and jit are bitwise): the additive
            # contract p + u, as for AdamW. Measured (2026-11-30) at most 12 ulp (torch_small_beta1,
            # float32, normal stream, from step 16) in the decoupled, torch and keras cases; torch's
            # two addcdiv steps p + a + b are not one rounded addition either
            "jax:optax": 12,
            # the 1,000-step parity stream (run by --full): the misses of p + u add up; measured
            "jax:optax:torch_small_beta1/parity": 34600,
            "jax:optax:torch/parity": 4256,
            "jax:optax:torch_decoupled/parity": 360,
            "jax:optax:keras/parity": 32,
        },
    ),
    OptimizerInfo(
        Muon,
        cases=(
            Case("default", {"lr": 0.02}),
            Case("no_nesterov", {"lr": 0.02, "nesterov": False, "weight_decay": 0.0}),
            Case(
                "ns_custom",
                {
                    "lr": 0.02,
                    "momentum": 0.9,
                    "ns_coefficients": (2.0, -1.5, 0.5),
                    "ns_steps": 3,
                    "eps": 1e-6,
                },
            ),
            Case("match_rms_adamw", {"lr": 0.02, "adjust_lr_fn": "match_rms_adamw", "rms_rate": 0.3}),
            Case("no_adjust", {"lr": 0.02, "adjust_lr_fn": "none"}),
            Case("exact", {"lr": 0.02, "matmul": "exact"}),
            Case("torch", {"lr": 0.02, "convention": "torch"}),
            Case(
                "torch_match_rms_adamw",
                {"lr": 0.02, "adjust_lr_fn": "match_rms_adamw", "convention": "torch"},
            ),
            Case("keras", {"lr": 0.02, "convention": "keras"}),
            Case(
                "keras_adam",
                {
                    "lr": 0.02,
                    "adjust_lr_fn": "none",
                    "adam_betas": (0.8, 0.99),
                    "adam_eps": 1e-6,
                    "adam_weight_decay": 0.01,
                    "convention": "keras",
                },
            ),
            # every matrix takes Keras's Adam step too (Keras's exclude_layers / exclude_embeddings
            # pick such variables by path), at 0.3 times the learning rate
            Case("keras_adam_2d", {"lr": 0.02, "adam_2d": True, "adam_lr_ratio": 0.3, "convention": "keras"}),
            Case("optax", {"lr": 0.02, "weight_decay": 0.01, "convention": "optax"}),
            Case("optax_defaults", {"lr": 0.02, "convention": "optax"}),
        ),
        state_cases=(
            # lower-precision state: the momentum (both partitions) in bfloat16 (optax's mu_dtype);
            # matmul="exact", whose products every backend forms alike
            Case(
                "optax_mu_bfloat16",
                {"lr": 0.02, "matmul": "exact", "convention": "optax"},
                {"momentum_buffer": "bfloat16"},
            ),
        ),
        error_cases=(
            ErrorCase({"lr": -1e-3}, r"Muon: lr=-0\.001 is out of range; expected 0 <= lr"),
            ErrorCase({"lr": float("nan")}, r"Muon: lr=nan is not finite"),
            ErrorCase({"nesterov": 1}, r"Muon: nesterov=1 is not a bool"),
            ErrorCase(
                {"weight_decay": -0.1},
                r"Muon: weight_decay=-0\.1 is out of range; expected 0 <= weight_decay",
            ),
            ErrorCase({"momentum": 1.5}, r"Muon: momentum=1\.5 is out of range; expected 0 <= momentum <= 1"),
            ErrorCase(
                {"momentum": 1.0, "convention": "optax"},
                r"Muon: momentum=1\.0 is out of range; expected 0 <= momentum < 1",
            ),
            ErrorCase({"eps": 0.0}, r"Muon: eps=0\.0 is out of range; expected 0 < eps"),
            ErrorCase(
                {"ns_steps": 100}, r"Muon: ns_steps=100 is out of range; expected an int, 0 <= ns_steps < 100"
            ),
            ErrorCase({"ns_steps": 2.0}, r"Muon: ns_steps=2\.0 is out of range; expected an int"),
            ErrorCase(
                {"ns_coefficients": (1.0, 2.0)}, r"Muon: ns_coefficients=\(1\.0, 2\.0\) is not three numbers"
            ),
            ErrorCase(
                {"ns_coefficients": (1.0, 2.0, float("inf"))}, r"Muon: ns_coefficients\[2\]=inf is not finite"
            ),
            ErrorCase(
                {"adjust_lr_fn": "sqrt"}, r"Muon: adjust_lr_fn='sqrt' is not supported; expected one of"
            ),
            ErrorCase({"rms_rate": 0.0}, r"Muon: rms_rate=0\.0 is out of range; expected 0 < rms_rate"),
            ErrorCase(
                {"matmul": "blas"},
                r"Muon: matmul='blas' is not supported; expected one of 'backend', 'exact'",
            ),
            ErrorCase({"adam_betas": (0.9, 1.0)}, r"Muon: adam_betas\[1\]=1\.0 is out of range"),
            ErrorCase({"adam_eps": -1.0}, r"Muon: adam_eps=-1\.0 is out of range; expected 0 < adam_eps"),
            ErrorCase(
                {"adjust_lr_fn": "none", "convention": "torch"},
                r"Muon: adjust_lr_fn='none' with convention='torch': torch\.optim\.Muon scales",
            ),
            ErrorCase(
                {"rms_rate": 0.3, "convention": "torch"},
                r"Muon: rms_rate=0\.3 with convention='torch': torch\.optim\.Muon fixes 0\.2",
            ),
            ErrorCase(
                {"eps": 1e-8, "convention": "keras"},
                r"Muon: eps=1e-08 with convention='keras': keras\.optimizers\.Muon hard-codes 1e-7",
            ),
            ErrorCase(
                {"adjust_lr_fn": "original", "convention": "keras"},
                r"Muon: adjust_lr_fn='original' with convention='keras'",
            ),
            ErrorCase(
                {"adjust_lr_fn": "none", "convention": "optax"},
                r"Muon: adjust_lr_fn='none' with convention='optax': optax\.contrib\.muon always scales",
            ),
            ErrorCase(
                {"eps": 1e-7, "adam_eps": 1e-8, "convention": "optax"},
                r"Muon: adam_eps=1e-08 with convention='optax': optax\.contrib\.muon passes eps to Adam",
            ),
            ErrorCase(
                {"adam_lr_ratio": -0.5, "convention": "keras"},
                r"Muon: adam_lr_ratio=-0\.5 is out of range; expected 0 <= adam_lr_ratio",
            ),
            ErrorCase({"adam_lr_ratio": float("inf")}, r"Muon: adam_lr_ratio=inf is not finite"),
            ErrorCase({"adam_2d": 1}, r"Muon: adam_2d=1 is not a bool"),
            ErrorCase(
                {"adam_2d": True},
                r"Muon: adam_2d=True with convention='uniopt': this convention has no Adam step",
            ),
            ErrorCase(
                {"adam_2d": True, "convention": "torch"},
                r"Muon: adam_2d=True with convention='torch': this convention has no Adam step",
            ),
            ErrorCase(
                {"adam_lr_ratio": 0.5, "convention": "optax"},
                r"Muon: adam_lr_ratio=0\.5 with convention='optax': optax\.contrib\.muon takes "
                r"adam_learning_rate",
            ),
        ),
        # torch.optim.Muon (torch/optim/_muon.py): its names, positional order and state key
        torch=TorchNames(
            "Muon",
            (
                "lr",
                "weight_decay",
                "momentum",
                "nesterov",
                "ns_coefficients",
                "eps",
                "ns_steps",
                "adjust_lr_fn",
            ),
        ),
        # keras.optimizers.Muon(learning_rate=0.001, adam_beta_1=0.9, adam_beta_2=0.999,
        # adam_weight_decay=0.004, epsilon=1e-7, weight_decay=0.004, <base arguments>,
        # exclude_layers=None, exclude_embeddings=True, muon_a=3.4445, muon_b=-4.7750,
        # muon_c=2.0315, adam_lr_ratio=1, momentum=0.95, ns_steps=5, nesterov=True, rms_rate=0.2)
        # (Keras 3.15, keras/src/optimizers/muon.py): epsilon is Adam's; rms_rate=None scales by
        # nothing; its momentums and adam_velocities (only for the variables stepped with Adam)
        # are the keras convention's slots, variables named "momentum" and "velocity"
        keras=KerasNames(
            "Muon",
            (
                "learning_rate",
                "adam_beta_1",
                "adam_beta_2",
                "adam_weight_decay",
                "epsilon",
                "weight_decay",
            ),
            names={
                "adam_beta_1": "adam_betas[0]",
                "adam_beta_2": "adam_betas[1]",
                "epsilon": "adam_eps",
                "muon_a": "ns_coefficients[0]",
                "muon_b": "ns_coefficients[1]",
                "muon_c": "ns_coefficients[2]",
            },
            slots={"momentum_buffer": "momentums", "exp_avg_sq": "adam_velocities"},
            positional_after_base=(
                "exclude_layers",
                "exclude_embeddings",
                "muon_a",
                "muon_b",
                "muon_c",
                "adam_lr_ratio",
                "momentum",
                "ns_steps",
                "nesterov",
                "rms_rate",
            ),
            routing={"exclude_layers": None, "exclude_embeddings": True},
            # rms_rate=None scales by nothing; adam_weight_decay=None decays nothing (Keras's
            # _apply_weight_decay skips a None value)
            none_means={
                "rms_rate": ("adjust_lr_fn", "none"),
                "adam_weight_decay": ("adam_weight_decay", 0.0),
            },
            variables={"momentum_buffer": "momentum", "exp_avg_sq": "velocity"},
            default_convention="keras",
            # Keras's Muon has no scatter updates: its ops densify an IndexedSlices gradient (summing
            # repeated indices) before the step, as uniopt.tf does
            sparse_duplicates_match_keras=True,
        ),
        # Measured 2026-12-01 with --full (torch@eager and torch@loop, every cell): matmul="exact"
        # cells bitwise in every dtype; the backend's products in float32 up to 34496 ulp
        # (optax/parity; normwise relative distance 6.9e-7) and in float64 up to 52864 (optax/parity;
        # 1.4e-15), from step 1 (large ulp counts are values near 0); float16 and bfloat16 cells
        # bitwise (torch and NumPy/ml_dtypes round one float32 accumulation per product, and these
        # short sums agreed; not guaranteed). The torch convention (bfloat16 iteration) bitwise on
        # the 50-step streams; on the 1,000-step parity stream it first differs at step 561, where a
        # float32 product lands on the other side of a bfloat16 rounding boundary, and the update
        # moves by a bfloat16 ulp in an element that then crosses 0 (ulp counts of 2**31 float32,
        # 2**63 float64: meaningless), normwise 7.7e-5 in both dtypes: a relative bound there.
        # torch@compile (--full, normal and huge streams, float32 and float64; inductor's own mm):
        # backend products up to 58368 ulp (optax_defaults/huge, float32; relative 2.8e-7), 36864
        # in float64; exact products and the torch convention bitwise.
        # The torch convention's large stream (181x191 and 191x181, 8 steps, float32; measured
        # 2026-12-06): its Gram products pass 128**3 multiply-adds, where uniopt.torch runs torch's own
        # bfloat16 mm and addmm (torch.optim.Muon's kernels, float32 sums in oneDNN's order) and
        # the reference forms the float32 expression (NumPy's BLAS order): torch@eager,
        # torch@loop and keras_torch@eager differ from step 1, elements near 0 change sign, normwise
        # 3.7e-5, within the relative bound; torch@compile (--full), jax (eager, jit), keras_jax
        # and tf (eager, tf.function, XLA), which form the float32 expression as the reference
        # does, are bitwise, and jax@optax within 32 ulp (the additive contract)
        # uniopt.jax.muon, measured 2026-12-02 with --full (jax 0.10.2 on the CPU, every cell of
        # jax@eager, jax@jit and jax@optax): matmul="exact" and the torch convention (bfloat16
        # iteration) bitwise in every dtype, eagerly and under jit (parity included); the backend's
        # products (XLA's dot at Precision.HIGHEST, another summation order than NumPy's BLAS) in
        # each of the three modes up to 38912 ulp in float32 (match_rms_adamw/tiny; normwise relative
        # distance 1.2e-7; the worst relative one 1.1e-6, default/mixed_shapes under jit), 26944 on
        # the parity stream (keras, relative 5.3e-7), float64 24288 (keras/parity; 1.1e-15; with one
        # thread for NumPy's BLAS and XLA, as conformance jobs run, 26976, keras_adam/parity, the
        # other maxima unchanged), float16 10064 (default/mixed_shapes under jit; 1.3e-3, about one
        # float16 ulp of the largest value), bfloat16 bitwise, from step 1. jax@optax's additive
        # contract (p + (new - p) != new where a step changes a sign or halves a value) moves the
        # exact and torch-convention cells, measured: at most 192 ulp (exact/huge, bfloat16) on the
        # 50-step streams but exact/sparse (29152, bfloat16: an element near 0; relative 1.5e-4),
        # the torch convention 8 and 128 (torch_match_rms_adamw/huge, float64), on the parity
        # stream 256 and 1792 (torch_match_rms_adamw, float64; relative 9.6e-18)
        # uniopt.tf (--full, 2026-12-02, tensorflow-cpu 2.21, every cell of tf@eager, tf@function
        # and tf@xla with uniopt.tf.xla's flags): matmul="exact" cells bitwise in every dtype and
        # mode, and so are the torch convention (its bfloat16 products agree), keras_adam_2d (no
        # product) and every float16 and bfloat16 cell but under XLA; the backend's products
        # (Eigen's blocked sums eagerly; in tf.function grappler folds the transposes into the
        # MatMul kernel; XLA emits its own dot) in float64 up to 52864 ulp (optax/parity, every mode;
        # relative 1.4e-15), in float32 up to 288 ulp eagerly (mixed_shapes; the 50-step streams
        # over 16x8, 4x8, 5x5 are bitwise there), 47104 in tf.function (optax_defaults/huge;
        # relative 3.9e-7) and 38912 under XLA (match_rms_adamw/tiny; 1.7e-7), and float16 under
        # XLA up to 512 ulp (sparse; relative 6.8e-4): within torch's bound
        # torch@eager and torch@loop on an AMD EPYC (Zen 4, torch 2.13.0+cpu, 2026-12-07): the
        # sparse stream of match_rms_adamw 368,640 ulp from step 1 (relative 2.2e-7: float32
        # products summed in another order by that CPU's kernels, next to elements near 0), over
        # the Intel Xeon's bound above; the other cells of both CPUs within it.
        # The torch convention's large stream on an AMD EPYC without AVX-512 (Zen 3, 2026-12-07:
        # NumPy's OpenBLAS on its Haswell kernels, tensorflow-cpu 2.21, jax 0.10.2): tf@eager and
        # tf@function (Eigen's float32 sums) normwise 2.3e-5, tf@xla, jax@eager, jax@jit and
        # jax@optax (XLA's dot) 3.8e-5, from step 1, elements near 0 changing sign; bitwise on the
        # Intel Xeon and the Zen 4 EPYC, whose BLAS sums in the order of those backends there: the
        # bound is torch's relative one, for the same reason
        ulp_tolerance={
            "torch": 4 * 52864,
            "torch:match_rms_adamw/sparse": 4 * 368640,
            "torch:exact/*": 0,
            "torch:torch/*": 0,
            "torch:torch_match_rms_adamw/*": 0,
            "jax:eager": 4 * 38912,
            "jax:jit": 4 * 38912,
            "jax:optax": 4 * 38912,
            "jax:exact/*": 0,
            "jax:torch/*": 0,
            "jax:torch_match_rms_adamw/*": 0,
            "jax:optax:exact/*": 192,
            "jax:optax:exact/sparse": 29152,
            "jax:optax:torch/*": 8,
            "jax:optax:torch_match_rms_adamw/*": 128,
            "jax:optax:torch/parity": 256,
            "jax:optax:torch/large": 32,
            "jax:optax:torch_match_rms_adamw/parity": 1792,
            "tf": 4 * 52864,
            "tf:exact/*": 0,
            "tf:torch/*": 0,
            "tf:torch_match_rms_adamw/*": 0,
            "tf:keras_adam_2d/*": 0,
        },
        relative_tolerance={
            f"torch:{case}/*": (4 * 7.7e-5, _BFLOAT16_BOUNDARY) for case in ("torch", "torch_match_rms_adamw")
        }
        | {
            f"{backend}:{case}/large": (4 * 7.7e-5, _BFLOAT16_BOUNDARY)
            for backend in ("tf", "jax")
            for case in ("torch", "torch_match_rms_adamw")
        }
        | {"torch.optim:native": (4 * 1.8e-4, f"{_TORCH_KERNELS}; {_BFLOAT16_BOUNDARY}")},
        skips={
            "torch:flat": _MATRIX_PRODUCTS,
            "torch:compiled": _MATRIX_PRODUCTS,
            # the torch convention rounds to bfloat16 as torch.optim.Muon does
            **{
                f"array_api_strict:{case}/*": (
                    "the torch convention rounds to bfloat16 as torch.optim.Muon does, and the array API "
                    "standard (array_api_strict) has no bfloat16 dtype: the rule refuses the namespace"
                )
                for case in ("torch", "torch_match_rms_adamw")
            },
        },
        # optax.contrib.muon(learning_rate, ns_coeffs=(3.4445, -4.775, 2.0315), ns_steps=5,
        # beta=0.95, eps=1e-8, weight_decay=0.0, weight_decay_mask=None, mu_dtype=None, *,
        # nesterov=True, adaptive=False, preconditioning='frobenius', adam_b1=0.9, adam_b2=0.999,
        # adam_eps_root=0.0, adam_weight_decay=0.0, adam_learning_rate=None,
        # muon_weight_dimension_numbers=None, consistent_rms=None) (optax/contrib/_muon.py, optax
        # 0.2.8): uniopt.jax.muon's convention defaults to "optax" (the uniopt convention is
        # torch.optim.Muon's algorithm, which refuses non-2-D parameters); uniopt's adjust_lr_fn,
        # adam_eps and matmul are keyword-only. State: a partition of MuonState(count, mu,
        # ns_coeffs) for the 2-D parameters and optax.adamw's ScaleByAdamState(count, mu, nu) for
        # the others, each holding MaskedNode where the other partition has the parameter
        optax=(
            OptaxNames(
                "muon",
                names={
                    "learning_rate": "lr",
                    "ns_coeffs": "ns_coefficients",
                    "ns_steps": "ns_steps",
                    "beta": "momentum",
                    "eps": "eps",
                    "weight_decay": "weight_decay",
                    "nesterov": "nesterov",
                    "adam_b1": "adam_betas[0]",
                    "adam_b2": "adam_betas[1]",
                    "adam_weight_decay": "adam_weight_decay",
                    "consistent_rms": "rms_rate",
                    "adjust_lr_fn": "adjust_lr_fn",
                    "adam_eps": "adam_eps",
                    "matmul": "matmul",
                    "adam_2d": "adam_2d",
                    "adam_lr_ratio": "adam_lr_ratio",
                    "convention": "convention",
                },
                positional=(
                    "learning_rate",
                    "ns_coeffs",
                    "ns_steps",
                    "beta",
                    "eps",
                    "weight_decay",
                    "weight_decay_mask",
                    "mu_dtype",
                ),
                only={
                    "mu_dtype": _OPTAX_MU_DTYPE,
                    "adaptive": (
                        lambda v, c: v is None or v is False,
                        "False (optax's default; adaptive=True scales each update by the dual norm "
                        "<mu_hat, O(mu_hat)> of arXiv 2409.20325, which uniopt's Muon does not define)",
                    ),
                    "preconditioning": (
                        lambda v, c: v is None or v == "frobenius",
                        "'frobenius' (optax's default, the Frobenius normalisation of every "
                        "convention; optax's 'spectral', 'aol' and 'schatten' are not offered)",
                    ),
                    "adam_eps_root": _OPTAX_EPS_ROOT,
                    "adam_learning_rate": (
                        lambda v, c: v is None,
                        "None (optax's default: the Adam step of the non-2-D parameters takes "
                        "learning_rate, as uniopt's Muon always does)",
                    ),
                    "muon_weight_dimension_numbers": (
                        lambda v, c: v is None,
                        "None (optax's default: 2-D parameters are orthogonalised as they are, the "
                        "others stepped with Adam; uniopt's Muon reshapes no tensor)",
                    ),
                },
                module="optax.contrib",
                narrows={
                    "ns_coeffs": (
                        lambda v, c: (
                            not isinstance(v, str)
                            and not hasattr(v, "shape")
                            and not (isinstance(v, tuple | list) and v and isinstance(v[0], tuple | list))
                        ),
                        "three numbers (a, b, c) as a tuple, used at every step; optax's presets "
                        "('standard' is the default (3.4445, -4.775, 2.0315), 'dion'), per-step "
                        "coefficient tuples ((a, b, c), ...) and arrays are not offered",
                    )
                },
                implies={"consistent_rms": {"adjust_lr_fn": "match_rms_adamw"}},
                state={"count": "step", "mu": "momentum_buffer", "nu": "exp_avg_sq"},
                state_hyperparameters={"ns_coeffs": "ns_coefficients"},
                default_convention="optax",
            ),
        ),
    ),
    OptimizerInfo(
        ScheduleFreeAdamW,
        cases=(
            Case("default"),
            Case("warmup", {"lr": 0.01, "warmup_steps": 5}),
            Case("weight_decay", {"lr": 0.01, "weight_decay": 0.1}),
            # beta1 = 0.5: lerp weights 1 - 1/beta1 = -1 and 1 - beta1 = 0.5 take torch's other branch
            Case("beta1_half", {"lr": 0.01, "betas": (0.5, 0.99), "eps": 1e-6}),
            Case("polynomial", {"lr": 0.01, "r": 1.0, "weight_lr_power": 1.0}),
            Case("keras", {"lr": 0.01, "weight_decay": 0.01, "warmup_steps": 5, "convention": "keras"}),
            Case("keras_defaults", {"convention": "keras"}),
            Case("optax", {"lr": 0.01, "weight_decay": 0.01, "warmup_steps": 5, "convention": "optax"}),
            Case("optax_defaults", {"convention": "optax"}),
        ),
        error_cases=(
            ErrorCase({"lr": -1e-3}, r"ScheduleFreeAdamW: lr=-0\.001 is out of range; expected 0 <= lr"),
            ErrorCase({"lr": float("nan")}, r"ScheduleFreeAdamW: lr=nan is not finite"),
            ErrorCase({"lr": "0.1"}, r"ScheduleFreeAdamW: lr='0\.1' is not a real number"),
            ErrorCase(
                {"betas": (0.0, 0.999)},
                r"ScheduleFreeAdamW: betas\[0\]=0\.0 is out of range; expected 0 < betas\[0\] < 1",
            ),
            ErrorCase({"betas": (0.9, 1.0)}, r"ScheduleFreeAdamW: betas\[1\]=1\.0 is out of range"),
            ErrorCase({"betas": 0.9}, r"ScheduleFreeAdamW: betas=0\.9 is not a pair"),
            ErrorCase({"eps": 0.0}, r"ScheduleFreeAdamW: eps=0\.0 is out of range; expected 0 < eps"),
            ErrorCase({"weight_decay": -0.1}, r"ScheduleFreeAdamW: weight_decay=-0\.1 is out of range"),
            ErrorCase(
                {"warmup_steps": 2.5},
                r"ScheduleFreeAdamW: warmup_steps=2\.5 is not an integer >= 0",
            ),
            ErrorCase({"warmup_steps": -1}, r"ScheduleFreeAdamW: warmup_steps=-1 is not an integer >= 0"),
            ErrorCase({"r": float("inf")}, r"ScheduleFreeAdamW: r=inf is not finite"),
            ErrorCase(
                {"weight_lr_power": 1.0, "convention": "keras"},
                r"ScheduleFreeAdamW: .*weight_lr_power.*keras",
            ),
            ErrorCase({"r": 1.0, "convention": "optax"}, r"ScheduleFreeAdamW: .*r.*optax"),
            ErrorCase(
                {"convention": "torch"},
                r"ScheduleFreeAdamW: convention='torch' is not available \(torch\.optim has no "
                r"Schedule-Free",
            ),
        ),
        # torch.optim has none: uniopt.torch.ScheduleFreeAdamW takes the names, order and defaults
        # of the authors' package (schedulefree.AdamWScheduleFree), with its train()/eval() contract
        torch=TorchNames(
            None,
            ("lr", "betas", "eps", "weight_decay", "warmup_steps", "r", "weight_lr_power", "foreach"),
            {"foreach": None},
        ),
        # keras.optimizers.ScheduleFreeAdamW's names, order and defaults (Keras 3.15); r and
        # weight_lr_power keyword-only (Keras averages uniformly: the keras convention's 0)
        keras=KerasNames(
            "ScheduleFreeAdamW",
            ("learning_rate", "beta_1", "beta_2", "epsilon", "warmup_steps", "weight_decay"),
            slots={"z": "_momentums", "exp_avg_sq": "_velocities"},
        ),
        # optax.contrib.schedule_free_adamw's names and order (optax 0.2.8; not optax.<alias>: native
        # False), then uniopt's r (keyword-only; optax has none); weight_lr_power defaults to None,
        # the convention's (keras averages uniformly)
        optax=(
            OptaxNames(
                "schedule_free_adamw",
                names={
                    "learning_rate": "lr",
                    "warmup_steps": "warmup_steps",
                    "b1": "betas[0]",
                    "b2": "betas[1]",
                    "eps": "eps",
                    "weight_decay": "weight_decay",
                    "weight_lr_power": "weight_lr_power",
                    "r": "r",
                    "convention": "convention",
                },
                positional=(
                    "learning_rate",
                    "warmup_steps",
                    "b1",
                    "b2",
                    "eps",
                    "weight_decay",
                    "weight_lr_power",
                    "state_dtype",
                ),
                only={
                    "state_dtype": (lambda v, c: v is None, "None (the state takes each parameter's dtype)")
                },
                native=False,
                none_means={
                    "warmup_steps": (
                        0,
                        "optax.contrib.schedule_free_adamw(warmup_steps=0) builds linear_schedule(0, lr, 0), "
                        "a learning rate stuck at 0 that never trains; pass warmup_steps=None for no warmup",
                    )
                },
            ),
        ),
        ulp_tolerance={
            # jax's optax row only (update + optax.apply_updates); jax@eager and jax@jit run tx.step
            # and are 0 ulp in every cell. Measured 2026-12-01 with --full (all 144 cells): 10 cells
            # differ, float32 1 ulp, float64 8, float16 1, bfloat16 32 (polynomial/sparse), in the
            # beta1_half, polynomial and weight_decay cases; in each the first differing step is the
            # first where the reference's own p + (n - p) != n (a step no float update reproduces,
            # optax's additive contract), and the miss carries on. The default cells are bitwise.
            "jax:optax": 32,
            # the large stream (74,571 elements, 8 steps): more elements, more such steps; measured
            # 2026-12-05: 128 ulp in float32, first at step 3 (the same contract; jax@jit is bitwise)
            "jax:optax:default/large": 4 * 128,
        },
        skips={"tf:xla:optax/*": _SF_NO_XLA, "tf:xla:optax_defaults/*": _SF_NO_XLA},
    ),
    OptimizerInfo(
        Adafactor,
        cases=(
            Case("default"),
            Case("weight_decay", {"lr": 0.05, "weight_decay": 0.1}),
            Case("eps_d", {"beta2_decay": -0.5, "eps": (1e-3, 1e-2), "d": 1.5}),
            Case("maximize", {"maximize": True}),
            Case("torch", {"weight_decay": 0.1, "convention": "torch"}),
            Case("torch_defaults", {"convention": "torch"}),
            Case("torch_eps", {"lr": 0.05, "eps": (1e-3, 1e-3), "d": 1.2, "convention": "torch"}),
            Case("keras", {"lr": 0.01, "weight_decay": 0.004, "d": 1.3, "convention": "keras"}),
            Case("keras_defaults", {"convention": "keras"}),
            Case(
                "optax",
                {
                    "lr": 0.01,
                    "momentum": 0.9,
                    "weight_decay": 1e-3,
                    "min_dim_size_to_factor": 3,
                    "d": 1.5,
                    "convention": "optax",
                },
            ),
            Case("optax_defaults", {"convention": "optax"}),
            # optax.adafactor(factored=False, multiply_by_parameter_scale=False,
            # clipping_threshold=None, decay_offset=-5, decay_rate=0.7): no factoring, no clipping
            Case(
                "optax_unfactored",
                {
                    "lr": 0.01,
                    "beta2_decay": -0.7,
                    "decay_offset": -5,
                    "factored": False,
                    "multiply_by_parameter_scale": False,
                    "d": None,
                    "convention": "optax",
                },
            ),
        ),
        error_cases=_common_errors(
            "Adafactor",
            beta2_decay=ErrorCase(
                {"beta2_decay": 0.1},
                r"Adafactor: beta2_decay=0\.1 is out of range; expected beta2_decay <= 0",
            ),
            pair=ErrorCase(
                {"eps": 1e-3}, r"Adafactor: eps=0\.001 is not a pair; expected \(eps1 or None, eps2\)"
            ),
            eps1=ErrorCase(
                {"eps": (-1e-3, 1e-3)}, r"Adafactor: eps\[0\]=-0\.001 is out of range; expected 0 <= eps\[0\]"
            ),
            eps2=ErrorCase(
                {"eps": (None, -1.0)}, r"Adafactor: eps\[1\]=-1\.0 is out of range; expected 0 <= eps\[1\]"
            ),
            d=ErrorCase({"d": 0.5}, r"Adafactor: d=0\.5 is out of range; expected 1 <= d"),
            d_none=ErrorCase(
                {"d": None}, r"Adafactor: d=None \(no update clipping\) with convention='uniopt'"
            ),
            wd=ErrorCase(
                {"weight_decay": -0.1},
                r"Adafactor: weight_decay=-0\.1 is out of range; expected 0 <= weight_decay",
            ),
            momentum=ErrorCase(
                {"momentum": 0.9},
                r"Adafactor: momentum=0\.9 with convention='uniopt': .* has no momentum; expected momentum=0",
            ),
            optax_only=ErrorCase(
                {"factored": False, "convention": "torch"},
                r"Adafactor: factored=False with convention='torch': only optax\.adafactor has it",
            ),
            min_dim=ErrorCase(
                {"min_dim_size_to_factor": -1, "convention": "optax"},
                r"Adafactor: min_dim_size_to_factor=-1; expected an int >= 0",
            ),
            optax_momentum=ErrorCase(
                {"momentum": 1.5, "convention": "optax"},
                r"Adafactor: momentum=1\.5 is out of range; expected 0 <= momentum <= 1",
            ),
            jax=ErrorCase({"convention": "jax"}, r"Adafactor: convention='jax' is not available"),
        ),
        # torch.optim.Adafactor(params, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0,
        # weight_decay=0.0, *, foreach=None, maximize=False) (torch/optim/_adafactor.py); its state
        # keys are the spec's slots (row_var and col_var for 2+ dimensions, variance otherwise)
        torch=TorchNames(
            "Adafactor",
            ("lr", "beta2_decay", "eps", "d", "weight_decay"),
            {"foreach": None},
            extensions=(
                "momentum",
                "decay_offset",
                "min_dim_size_to_factor",
                "factored",
                "multiply_by_parameter_scale",
            ),
        ),
        # keras.optimizers.Adafactor(learning_rate=0.001, beta_2_decay=-0.8, epsilon_1=1e-30,
        # epsilon_2=1e-3, clip_threshold=1.0, relative_step=True, weight_decay=None, ...) (Keras
        # 3.15, keras/src/optimizers/adafactor.py); its r, c and v lists are the keras convention's
        # slots; relative_step changes nothing there (rho_t = min(lr, 1/sqrt(t)) either way)
        keras=KerasNames(
            "Adafactor",
            (
                "learning_rate",
                "beta_2_decay",
                "epsilon_1",
                "epsilon_2",
                "clip_threshold",
                "relative_step",
                "weight_decay",
            ),
            names={
                "beta_2_decay": "beta2_decay",
                "epsilon_1": "eps[0]",
                "epsilon_2": "eps[1]",
                "clip_threshold": "d",
            },
            slots={"r": "_r", "c": "_c", "v": "_v"},
            inert={"relative_step": True},
        ),
        ulp_tolerance={
            # jax's optax row only (update + optax.apply_updates); jax@eager and jax@jit run tx.step
            # and are 0 ulp in every cell (jit with --full: all 176). Measured 2026-12-01 with --full:
            # 22 of 176 cells differ, where a step's p + (new - p) != new (optax's additive contract,
            # as for AdamW): at most 256 ulp on the 50-step streams (weight_decay/tiny, float64;
            # relative 1.4e-17), on the 1,000-step parity stream 2048 (torch, float64) and 4096
            # (keras, float64; relative 2.9e-17)
            "jax:optax": 256,
            "jax:optax:torch/parity": 2048,
            "jax:optax:keras/parity": 4096,
        },
        # optax.adafactor(learning_rate=None, min_dim_size_to_factor=128, decay_rate=0.8,
        # decay_offset=0, multiply_by_parameter_scale=True, clipping_threshold=1.0, momentum=None,
        # dtype_momentum=jnp.float32, weight_decay_rate=None, eps=1e-30, factored=True,
        # weight_decay_mask=None) (optax/_src/alias.py, optax 0.2.8): uniopt.jax.adafactor's
        # convention defaults to "optax" (the uniopt convention is torch.optim's algorithm, whose
        # learning rate caps a relative step size); state FactoredState(count, v_row, v_col, v) and,
        # with momentum, EmaState(count, ema)
        optax=(
            OptaxNames(
                "adafactor",
                names={
                    "learning_rate": "lr",
                    "min_dim_size_to_factor": "min_dim_size_to_factor",
                    "decay_rate": "-beta2_decay",
                    "decay_offset": "decay_offset",
                    "multiply_by_parameter_scale": "multiply_by_parameter_scale",
                    "clipping_threshold": "d",
                    "momentum": "momentum",
                    "weight_decay_rate": "weight_decay",
                    "eps": "eps[0]",
                    "factored": "factored",
                    # optax.scale_by_param_block_rms's min_scale, which optax.adafactor fixes at 1e-3
                    "min_scale": "eps[1]",
                    "maximize": "maximize",
                    "convention": "convention",
                },
                positional=(
                    "learning_rate",
                    "min_dim_size_to_factor",
                    "decay_rate",
                    "decay_offset",
                    "multiply_by_parameter_scale",
                    "clipping_threshold",
                    "momentum",
                    "dtype_momentum",
                    "weight_decay_rate",
                    "eps",
                    "factored",
                    "weight_decay_mask",
                ),
                # the momentum accumulator's dtype: checked against each parameter's at init
                only={"dtype_momentum": (lambda v, c: True, "float32 (optax's default) or None")},
                state={"count": "step", "v_row": "v_row", "v_col": "v_col", "v": "v", "ema": "momentum"},
                default_convention="optax",
            ),
        ),
        skips={
            "torch:flat": _PER_TENSOR_FLAT,
        },
    ),
)

_BY_NAME = {info.name: info for info in TABLE}


def get(name: str) -> OptimizerInfo:
    """The table row of optimizer ``name`` (as in ``uniopt.<name>``)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown optimizer {name!r}; known: {', '.join(_BY_NAME)}") from None
