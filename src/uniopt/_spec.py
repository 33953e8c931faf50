"""The shape every optimizer spec shares.

An optimizer is a frozen hyperparameter record (a subclass of :class:`Spec`) that knows

* ``slot_names()``: the per-parameter state it keeps, besides the shared step count;
* ``step_scalars(step, lr)``: every scalar the update needs at 1-based step ``step``, computed on
  the host in float64 (bias corrections, rectification terms, products such as ``lr / bc1``);
* ``rule(param, grad, slots, scalars, xp)``: the elementwise update as one explicit op sequence over
  the array namespace ``xp``, returning the new parameter and the new slots.

:meth:`Spec.update` glues them together: it computes the scalars once on the host, rounds each one
once to the parameter's dtype, and applies the rule to every parameter. Because the scalars are
rounded exactly once and the elementwise ops are fixed, every backend whose ``add``, ``subtract``,
``multiply``, ``divide`` and ``sqrt`` round to nearest as IEEE 754 requires, and whose ``negative``,
``maximum`` (NaN-propagating), ``where``, ``zeros_like`` and ``full_like`` are exact, produces
bit-identical results.

Nothing here imports a deep-learning framework; ``xp`` is any array-API namespace (NumPy through
array-api-compat, ``array_api_strict``, and the adapters' own namespaces).
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

from ._validate import check_bool, check_interval, check_lacking

__all__ = ["Array", "Scalars", "Spec", "State", "cast_scalars", "namespace_of"]

Array = Any
"""An array of whatever namespace ``xp`` is (``numpy.ndarray``, ``torch.Tensor``, ...)."""

Scalars = NamedTuple
"""Per-step scalars: a NamedTuple whose float fields become 0-d arrays and bool fields stay bools."""


class State(NamedTuple):
    """Optimizer state: the number of steps taken, one slot mapping per parameter, and the history.

    ``slots[i]`` maps each name of :meth:`Spec.slot_names` to an array of ``params[i]``'s dtype (or of
    the narrower dtype :meth:`Spec.init` was asked to store a slot of
    :attr:`Spec.lower_precision_slots` in: "Lower-precision state" in docs/conventions.md) and of
    the shape :meth:`Spec.slot_shape` gives for ``params[i]``'s shape: ``params[i]``'s own shape
    for every elementwise spec; Adafactor's factored row and column statistics are smaller.
    ``history`` is what a spec carries from step to step besides the step count and the slots
    (:meth:`Spec.init_history`): ``None`` for every spec whose per-step scalars are a function of the
    step and the learning rate alone, a NamedTuple of Python floats otherwise (Schedule-Free AdamW's
    running weight sum and largest learning rate, which depend on every learning rate used so far).
    """

    step: int
    slots: tuple[dict[str, Array], ...]
    history: Any = None


def namespace_of(*arrays: Array) -> Any:
    """The array-API namespace of ``arrays`` (array-api-compat's wrapper for NumPy and torch)."""
    from array_api_compat import array_namespace

    return array_namespace(*arrays)


def cast_scalars(scalars: NamedTuple, like: Array, xp: Any) -> NamedTuple:
    """Round each float field of ``scalars`` once to ``like``'s dtype, as a 0-d array on its device.

    Bool fields (branches chosen by the step count) stay Python bools, and so do fields already
    holding arrays (a jit backend may pass traced values).
    """
    dev = _device(like)

    def cast(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, float):
            return value
        return xp.asarray(value, dtype=like.dtype, device=dev)

    return type(scalars)(*(cast(v) for v in scalars))


@dataclasses.dataclass(frozen=True)
class Spec:
    """Base of every optimizer spec: validated hyperparameters plus pure ``init``/``update``.

    Subclasses are frozen dataclasses whose fields are the hyperparameters. ``lr`` is always the
    first field; an adapter may override it per step (schedulers) through ``update(..., lr=...)``.
    """

    name: ClassVar[str]
    reference: ClassVar[str] = ""
    # convention -> defaults of the hyperparameters whose default depends on the convention (those
    # fields default to None and are filled in here); "uniopt" is the spec's own semantics
    conventions: ClassVar[Mapping[str, Mapping[str, Any]]] = {"uniopt": {}}
    # convention -> why this optimizer does not offer it (e.g. the framework has no such optimizer)
    unavailable_conventions: ClassVar[Mapping[str, str]] = {}
    # convention -> (its framework's optimizer, {argument that optimizer lacks: what to use instead});
    # a nonzero value of such an argument is refused with that convention
    lacking: ClassVar[Mapping[str, tuple[str, Mapping[str, str]]]] = {}
    # whether the rule updates each element from that element's gradient and slots alone (plus the
    # per-step host scalars): no norm, factorisation or matrix product over a parameter. Only then
    # may an adapter run the rule over a concatenation of parameters (uniopt.torch's flat path)
    elementwise: ClassVar[bool] = True
    # whether complex parameters are refused outright: an adapter that hands a complex parameter to
    # the rule as real (re, im) pairs (uniopt.torch) must not, where the rule reads the parameter's
    # shape (Adafactor factors the last two axes, and the pairs would be one of them)
    real_only: ClassVar[bool] = False
    # fields the keras convention stores rounded to float32, as Keras holds them (see keras_float32)
    keras_float32_fields: ClassVar[tuple[str, ...]] = ("lr", "weight_decay")
    # slots that :meth:`init` may store in a narrower float dtype than their parameter's (optax's
    # mu_dtype / accumulator_dtype): the rule widens such a slot exactly to the parameter's dtype,
    # computes in that dtype, and rounds the slot's new value once (to nearest, ties to even) to
    # the stored dtype (:func:`uniopt._math.widened`, :func:`uniopt._math.stored`)
    lower_precision_slots: ClassVar[tuple[str, ...]] = ()

    # -- to be provided by each optimizer -------------------------------------------------------
    def _check(self) -> None:
        """Validate the optimizer's own hyperparameters (``lr`` is checked by the base)."""

    def slot_names(self) -> tuple[str, ...]:
        """Names of the per-parameter state slots for these hyperparameters."""
        raise NotImplementedError

    def slot_shape(self, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of slot ``name`` for a parameter of ``shape``: ``shape`` itself unless the spec
        overrides this (Adafactor's factored statistics, whose shapes drop or shrink axes). The
        adapters and :mod:`uniopt.porting` check saved slots against it."""
        return tuple(int(n) for n in shape)

    def slots_in_use(self, shape: tuple[int, ...]) -> tuple[str, ...]:
        """The slots the rule reads and writes for a parameter of ``shape``: every one of
        :meth:`slot_names` unless the spec overrides this. The others are placeholders (zeros of
        their :meth:`slot_shape`, passed through unchanged), kept so that every parameter has the
        same slot names; a framework that stores no such entry (torch.optim.Adafactor keeps no
        ``variance`` for a matrix) has them filled in or dropped when its state is ported."""
        return self.slot_names()

    def init_slot(self, name: str, param: Array, xp: Any) -> Array:
        """Initial value of slot ``name`` for ``param``: zeros of its dtype, of the shape
        :meth:`slot_shape` gives (on its device), unless overridden."""
        if type(self).slot_shape is Spec.slot_shape:  # every slot parameter-shaped: as it was
            return xp.zeros_like(param)
        shape = self.slot_shape(name, tuple(param.shape))
        if shape == tuple(int(n) for n in param.shape):
            return xp.zeros_like(param)
        return xp.zeros(shape, dtype=param.dtype, device=_device_or_none(param))

    def step_scalars(self, step: int, lr: float | None = None) -> NamedTuple:
        """Host-side float64 scalars for 1-based ``step``; ``lr`` overrides ``self.lr``.

        By default the convention's own method ``<convention>_scalars(step, lr)`` where the spec
        defines one (``keras_scalars``, ...), else ``uniopt_scalars``: each convention computes
        the scalars its rule reads, as its framework computes them.
        """
        return self._of_convention("scalars")(step, float(self.lr if lr is None else lr))

    def rule(
        self, param: Array, grad: Array, slots: Mapping[str, Array], sc: Any, xp: Any
    ) -> tuple[Array, dict[str, Array]]:
        """Elementwise update of one parameter: returns ``(new_param, new_slots)``.

        By default the convention's own rule, a sibling method ``<convention>_rule`` (``torch_rule``,
        ``keras_rule``, ``optax_rule``, ...) where the spec defines one, else ``uniopt_rule``, the
        spec's own formula (the paper's algorithm box). Each is short and reads like its source.
        """
        return self._of_convention("rule")(param, grad, slots, sc, xp)

    def _of_convention(self, kind: str) -> Callable[..., Any]:
        """``<convention>_<kind>`` of this spec, else ``uniopt_<kind>``."""
        convention = getattr(self, "convention", "uniopt")
        # ``is None``, not ``or``: dynamo before torch 2.13 cannot take the truth of a bound method
        # (a "data-dependent branching" error in every compiled rule)
        method = getattr(self, f"{convention}_{kind}", None)
        if method is None:
            method = getattr(self, f"uniopt_{kind}", None)
        if method is None:
            raise NotImplementedError(f"{self.name} defines neither {kind}() nor uniopt_{kind}()")
        return method

    def underflowing(self, round_to: Callable[[float], float]) -> list[str]:
        """``name=value`` of each nonzero float hyperparameter that ``round_to`` (rounding to a
        parameter dtype) turns into 0, such as Adam's ``eps=1e-08`` in float16."""
        return [
            f"{name}={value!r}"
            for name, value in self.hyperparameters.items()
            if isinstance(value, float) and value != 0 and round_to(value) == 0
        ]

    def param_refusal(self, shape: tuple[int, ...], is_complex: bool = False) -> str | None:
        """Why this spec refuses a parameter of ``shape`` (complex when ``is_complex``), in words
        for a ``ValueError``, or ``None`` where it takes it (every spec takes every shape unless it
        says otherwise: ``Muon``'s torch and uniopt conventions take 2-D parameters only). Adapters
        ask it when a parameter is handed to them (``uniopt.torch`` at construction, as torch.optim
        refuses there), the rules when they run."""
        return None

    def scalars_converge(self) -> bool:
        """Whether every per-step scalar tends to a limit as the step grows (for a fixed lr)."""
        return True

    def run_constants(self) -> dict[str, Any]:
        """The hyperparameters (name -> value) whose value at step ``t`` the scalars assume held at
        every earlier step: the spec computes from the step count what the framework's optimizer
        accumulates step by step (NAdam's product of momentum-schedule factors). A value changed
        mid-run (a scheduler cycling ``betas``) makes the framework's running product and the
        spec's differ from then on; adapters say so where it happens (``uniopt.torch`` warns).
        Empty (the default) where every scalar is a function of the step and the current values
        alone."""
        return {}

    def sparse_rule(self) -> str:
        """How a sparse gradient (some rows of the parameter, the others 0) updates it:
        ``"rows"`` (the rule on the touched rows only; the other rows of the parameter and of every
        slot unchanged) or ``"dense"`` (the gradient densified, the rule over every row). ``"dense"``
        unless the spec says otherwise: a spec returns ``"rows"`` where a zero gradient leaves a row
        of the parameter and of every slot unchanged under its rule (then the two agree; SGD without
        momentum, Adagrad), or where its algorithm is lazy by definition
        (:class:`uniopt.sparse.SparseAdam`). See :mod:`uniopt.sparse`."""
        return "dense"

    # -- a history, for the specs that carry one ----------------------------------------------
    # whether the parameters the rule updates are not the ones to evaluate the model at, so that
    # an adapter offers the switch (eval_param / train_param; Schedule-Free AdamW's x and y)
    has_eval_view: ClassVar[bool] = False

    def init_history(self) -> Any:
        """The history before the first step (:attr:`State.history`): ``None`` unless the spec's
        scalars depend on more than the step and the learning rate of that step."""
        return None

    def history_scalars(self, step: int, lr: float, history: Any) -> tuple[NamedTuple, Any]:
        """The scalars of 1-based ``step`` at learning rate ``lr`` after ``history``, and the
        history after the step. Without a history: ``(step_scalars(step, lr), None)``."""
        return self.step_scalars(step, lr), history

    def step_terms(self, step: int) -> tuple[float, ...] | None:
        """The part of 1-based ``step``'s scalars that depends on the step alone, as float64 values
        each monotone in the step and reaching its limit after finitely many steps (so that a table
        holds it: :func:`uniopt.scalar_table.term_table`); ``()`` where no part converges and
        :meth:`scalars_from_terms` computes every scalar from the step (Adafactor); ``None`` (the
        default) where the spec has no such split (:mod:`uniopt.scalar_ops`)."""
        return None

    def scalars_from_terms(
        self, terms: tuple[Any, ...], step: Any, lr: Any, history: Any, ops: Any
    ) -> tuple[NamedTuple, Any]:
        """:meth:`history_scalars` from :meth:`step_terms`'s ``terms``, the step, the learning rate
        and the history, computed with the scalar operations ``ops`` (:mod:`uniopt.scalar_ops`:
        :data:`~uniopt.scalar_ops.HOST` gives :meth:`history_scalars`' own floats). Only for a spec
        whose ``step_terms`` is not ``None``."""
        raise NotImplementedError(f"{self.name}: no in-graph formula for the per-step scalars")

    def eval_param(self, param: Array, slots: Mapping[str, Array], xp: Any) -> Array:
        """The parameter to evaluate the model at, from the one the rule updates (the identity
        unless :attr:`has_eval_view`)."""
        return param

    def train_param(self, param: Array, slots: Mapping[str, Array], xp: Any) -> Array:
        """The inverse of :meth:`eval_param`: the parameter the rule updates."""
        return param

    # -- shared machinery ---------------------------------------------------------------------
    def __post_init__(self) -> None:
        self._resolve_convention()
        check_interval(self.name, "lr", self.lr, 0.0)
        for field in dataclasses.fields(self):
            if field.type in ("bool", bool):
                check_bool(self.name, field.name, getattr(self, field.name))
        convention = getattr(self, "convention", "uniopt")
        native, lacks = self.lacking.get(convention, ("", {}))
        for name, hint in lacks.items():
            check_lacking(self.name, convention, native, name, getattr(self, name), hint)
        self._check()
        if convention == "keras":
            from ._math import keras_float32  # _math imports this module

            for name in self.keras_float32_fields:
                object.__setattr__(self, name, keras_float32(getattr(self, name)))
        # once every value is final (the keras convention's float32 rounding can take a tiny value
        # to zero): see nonzero()
        self._record_nonzero()

    def _record_nonzero(self) -> frozenset[str]:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        nonzero = frozenset(n for n, v in values.items() if _is_number(v) and v != 0)
        object.__setattr__(self, "_nonzero", nonzero)
        return nonzero

    def nonzero(self, name: str) -> bool:
        """Whether the numeric hyperparameter ``name`` is not zero: the branches a rule takes on a
        value (``weight_decay != 0``: the decay's ops at all; SGD's ``momentum != 0``: a momentum
        buffer). ``False`` for a name that is no numeric field.

        Recorded as a set of names when the spec is made, so that a compiled rule is guarded on the
        branch and not on the value: torch.compile guards on every Python value the traced code
        reads, and a scheduler that sets ``weight_decay`` or ``momentum`` at every step makes a new
        spec each step, whose values reach the rule through the step's scalars; reading
        ``self.weight_decay != 0`` in the rule recompiled uniopt.torch's kernels for each value
        until dynamo's recompile limit, then ran them eagerly. A spec that arrives without the
        record (unpickled from before it existed, or a subclass declared with ``slots=True``, whose
        pickling restores its fields only) makes it on first use."""
        record = getattr(self, "_nonzero", None)
        if record is None:
            record = self._record_nonzero()
        return name in record

    def _resolve_convention(self) -> None:
        """Check ``convention`` and give each hyperparameter left at ``None`` its default there."""
        convention = getattr(self, "convention", "uniopt")
        if convention not in self.conventions:
            known = ", ".join(repr(c) for c in self.conventions)
            why = self.unavailable_conventions.get(convention) if isinstance(convention, str) else None
            raise ValueError(
                f"{self.name}: convention={convention!r} is not available"
                + (f" ({why})" if why else "")
                + f"; expected one of {known}"
            )
        for name, default in self.conventions[convention].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """The hyperparameters as a plain dict (field name -> value)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def replace(self, **changes: Any) -> Spec:
        """A validated copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def slot_dtype_refusal(self, name: str, dtype: Any, param_dtype: Any) -> str | None:
        """Why slot ``name`` cannot be stored in ``dtype`` beside a parameter of ``param_dtype``
        (dtype objects of any backend, or their names), in words for a ``ValueError``; ``None``
        where it can. Accepted: the parameter's own dtype, and for a slot of
        :attr:`lower_precision_slots` a real floating dtype every value of which the parameter's
        dtype holds exactly (``bfloat16`` and ``float16`` beside ``float32`` or ``float64``,
        ``float32`` beside ``float64``), so that widening the stored slot is exact."""
        from ._math import EXACTLY_WIDENS, dtype_name  # _math imports this module

        asked, own = dtype_name(dtype), dtype_name(param_dtype)
        if asked == own:
            return None
        if name not in self.lower_precision_slots:
            kept = ", ".join(self.lower_precision_slots) or "none"
            return (
                f"slot {name!r} is stored in its parameter's dtype, {own} (the slots stored narrower: {kept})"
            )
        narrower = EXACTLY_WIDENS.get(own, ())
        if asked not in narrower:
            return (
                f"expected {' or '.join((own, *narrower))}: the parameter's dtype or a narrower real "
                "floating dtype it holds exactly (wider, complex or non-float state is not offered)"
            )
        return None

    def init_slots(
        self, param: Array, xp: Any, slot_dtypes: Mapping[str, Any] | None = None
    ) -> dict[str, Array]:
        """All slots of one parameter; ``slot_dtypes`` as :meth:`init`'s."""
        from ._math import dtype_in  # _math imports this module

        slots = {name: self.init_slot(name, param, xp) for name in self.slot_names()}
        for name, dtype in (slot_dtypes or {}).items():
            slots[name] = xp.astype(slots[name], dtype_in(dtype, xp))  # zeros: exact
        return slots

    def init(
        self, params: Sequence[Array], xp: Any = None, *, slot_dtypes: Mapping[str, Any] | None = None
    ) -> State:
        """State before the first step: step 0, the initial slots of every parameter and the
        initial history.

        ``slot_dtypes`` maps slots of :attr:`lower_precision_slots` to the dtype to store them in
        (a dtype name, ``"bfloat16"``, or a dtype object), for every parameter: each must be
        accepted beside each parameter's dtype (:meth:`slot_dtype_refusal`), else ``ValueError``
        before any state exists. A slot stored narrower is rounded once per step (see
        :attr:`lower_precision_slots`)."""
        from ._math import dtype_name  # _math imports this module

        params = list(params)
        xp = xp if xp is not None else _namespace_or_none(params)
        slot_dtypes = dict(slot_dtypes or {})
        unknown = sorted(set(slot_dtypes) - set(self.slot_names()))
        if unknown:
            raise ValueError(
                f"{self.name}: slot_dtypes names {', '.join(map(repr, unknown))}, not a slot of this "
                f"optimizer; its slots: {', '.join(self.slot_names())}"
            )
        for i, p in enumerate(params):
            for name, dtype in slot_dtypes.items():
                why = self.slot_dtype_refusal(name, dtype, p.dtype)
                if why is not None:
                    raise ValueError(
                        f"{self.name}: slot_dtypes[{name!r}]={dtype_name(dtype)} for params[{i}] of "
                        f"dtype {dtype_name(p.dtype)}: {why}"
                    )
        return State(0, tuple(self.init_slots(p, xp, slot_dtypes) for p in params), self.init_history())

    def update_one(
        self, param: Array, grad: Array, slots: Mapping[str, Array], sc: NamedTuple, xp: Any
    ) -> tuple[Array, dict[str, Array]]:
        """Apply the rule to one parameter with host scalars ``sc`` (rounded here to its dtype)."""
        return self.rule(param, grad, slots, cast_scalars(sc, param, xp), xp)

    def update(
        self,
        grads: Sequence[Array],
        state: State,
        params: Sequence[Array],
        xp: Any = None,
        *,
        lr: float | None = None,
    ) -> tuple[list[Array], State]:
        """One optimizer step: returns the new parameters and the new state. Pure."""
        params, grads = list(params), list(grads)
        if not (len(params) == len(grads) == len(state.slots)):
            raise ValueError(
                f"{self.name}: got {len(params)} params, {len(grads)} grads and state for "
                f"{len(state.slots)} params; they must match"
            )
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            if tuple(p.shape) != tuple(g.shape):
                raise ValueError(
                    f"{self.name}: grads[{i}] has shape {tuple(g.shape)} but params[{i}] has "
                    f"shape {tuple(p.shape)}"
                )
        if lr is not None:
            check_interval(self.name, "lr", lr, 0.0)
        xp = xp if xp is not None else _namespace_or_none(params)
        step = state.step + 1
        if self.init_history() is None:
            sc, history = self.step_scalars(step, lr), None
        else:
            sc, history = self.history_scalars(step, float(self.lr if lr is None else lr), state.history)
        rounded: dict[tuple[str, str], NamedTuple] = {}  # scalars cast once per dtype and device
        new_params, new_slots = [], []
        for p, g, s in zip(params, grads, state.slots, strict=True):
            where = (str(p.dtype), str(_device(p)))
            if where not in rounded:
                rounded[where] = cast_scalars(sc, p, xp)
            new_p, new_s = self.rule(p, g, s, rounded[where], xp)
            new_params.append(new_p)
            new_slots.append(new_s)
        return new_params, State(step, tuple(new_slots), history)


def _device(array: Array) -> Any:
    from array_api_compat import device

    return device(array)


def _device_or_none(array: Array) -> Any:
    """``array``'s device, or ``None`` where array-api-compat cannot tell (a namespace without
    devices, such as :mod:`uniopt.tf`'s)."""
    try:
        return _device(array)
    except Exception:  # any backend's refusal means: no device to pass
        return None


def _namespace_or_none(params: list[Array]) -> Any:
    if not params:
        return None
    return namespace_of(*params)


def select(cond: Any, when_true: Callable[[], Array], when_false: Callable[[], Array], xp: Any):
    """Choose between two computations by a step-dependent condition.

    A Python bool (the host knows the step) evaluates only the chosen branch; an array condition
    (a traced step inside a compiled function) evaluates both and picks with ``xp.where``.
    """
    if isinstance(cond, bool):
        return when_true() if cond else when_false()
    return xp.where(cond, when_true(), when_false())


def _is_number(value: Any) -> bool:
    """Whether ``value`` is a number and not a bool (a bool field is a switch, not a value)."""
    return isinstance(value, numbers.Number) and not isinstance(value, bool)
