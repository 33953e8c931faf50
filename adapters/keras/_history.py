"""The uniopt Keras optimizers whose spec carries a history and an evaluation view (Schedule-Free AdamW).

**History.** The spec's history (:meth:`uniopt.Spec.init_history`: Schedule-Free's running weight
sum and largest learning rate) depends on every learning rate used so far, so it lives in
optimizer variables, one float64 scalar per field (``weight_sum``, ``lr_max``, ``weight_sum_f32``,
``lr_max_f32``; on JAX without ``jax_enable_x64``, which has no float64, each field's 64 bits as a
``uint32`` pair), created by ``build`` and tracked like the slots: ``optimizer.variables``, Keras's
``.keras`` files and ``tf.train.Checkpoint`` save and restore them. Once per update
(``_backend_update_step``, which Keras calls once per step, also under gradient accumulation) the
host computes ``spec.history_scalars(iterations + 1, lr, history)`` in float64, as the core's
``update`` does, rounds each scalar once to every variable dtype, runs the spec's rule on each
variable with them and then assigns the next history. Eagerly that is plain Python; traced, one
host call per step (the backend binding's ``history_step``: TensorFlow's ``tf.numpy_function``,
JAX's ``jax.pure_callback``). TensorFlow's XLA (``jit_compile=True``) cannot call the host; there
the spec's float64 formula runs in-graph (the TensorFlow binding's ``history_in_graph``: the
step-only terms, ``1 - beta2**t``, from a table, the rest with :mod:`uniopt.scalar_ops`), for the
uniopt convention and the keras convention (which keeps no history but whose scalars hold the step
count ``t``, which never reaches a limit). The optax convention, whose float32 history has no such
formula, is refused there with a ``ValueError`` saying to compile without XLA. JAX's XLA calls the
host, so ``jit_compile=True`` runs there. The keras convention keeps no history (it averages
uniformly, ``c = 1/t``) and takes its scalars as every other optimizer does.

**Train and eval.** The parameters hold the training sequence ``y`` (where gradients are taken) in
train mode and the evaluation sequence ``x`` in eval mode, as in the authors' package:
:meth:`~HistoryOptimizer.eval` and :meth:`~HistoryOptimizer.train` rewrite the model variables the
optimizer was built for in place (the spec's ``eval_param``/``train_param``), and ``apply`` refuses
to run in eval mode. The mode is an optimizer variable too (``train_mode``, int64, 1 = train), so a
checkpoint saved in eval mode comes back in eval mode. For evaluating during ``fit``,
:class:`EvalAtX` (a Keras callback) evaluates and predicts at ``x`` and puts the exact ``y`` back
afterwards; :meth:`~HistoryOptimizer.evaluating` does the same around any block. The optimizer
starts in train mode (Keras's own ScheduleFreeAdamW has no modes; the package starts in eval mode
and refuses a step until ``train()``: before the first step both hold the same values).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any, NamedTuple

import keras
import numpy as np

from uniopt import Spec

from ._binding import PACKAGE, binding, dtype_name
from .optimizers import UnioptOptimizer, _SlotInit

__all__ = ["EvalAtX", "HistoryOptimizer"]

_AFTER = ("history", "after")
"""The scalar cache's entry of this step's next history, where ``apply`` computed it."""


class HistoryOptimizer(UnioptOptimizer):
    """A :class:`~uniopt.keras.UnioptOptimizer` whose spec keeps a history and an evaluation view (see
    the module docstring). Adds :meth:`train`, :meth:`eval`, :attr:`train_mode`,
    :meth:`evaluating` and :meth:`history` to the Keras optimizer contract."""

    def __init__(self, learning_rate: Any, **kwargs: Any):
        super().__init__(learning_rate, **kwargs)
        with keras.name_scope(self.name, caller=self):
            mode = keras.Variable(
                1,
                name="train_mode",
                dtype=binding().MODE_DTYPE,
                trainable=False,
                aggregation="only_first_replica",
            )
        self._track_variable(mode)
        self._uniopt_mode = mode
        self._uniopt_history: list[Any] = []
        self._uniopt_initial: list[tuple[str, int]] = []  # slots built inside XLA (build)

    # -- Keras contract -----------------------------------------------------------------------
    def build(self, variables: list[Any]) -> None:
        """Keras's ``build``, then the spec's slots of every variable, each initialised from that
        variable's value (``z`` is a copy of the parameter: the initial value is read when the
        slot is created, also when the first ``apply`` runs inside a ``tf.function``), then the
        history variables (the spec's ``init_history()``). Built inside a function compiled by
        TensorFlow's XLA (``fit(jit_compile=True)`` builds the optimizer in its first step), whose
        variables must be created from values known outside it, the slots start at zeros and take
        the spec's initial values from the variables in the first step
        (:meth:`_initialize_slots_in_first_step`)."""
        if self.built:
            return
        self._check_state_dtypes(variables)
        keras.optimizers.Optimizer.build(self, variables)
        later = binding().host_calls_refused()  # inside XLA: nothing read from the variables here
        self._uniopt_slots = {
            name: [
                None
                if self._overwrite_variable_with_gradient(v)
                else self.add_variable_from_reference(
                    v, name, initializer="zeros" if later else _SlotInit(self._spec, name, v)
                )
                for v in variables
            ]
            for name in self._spec.slot_names()
        }
        # (slot name, variable index) pairs, not the variables: Keras's tracker would take a
        # model variable held by the optimizer for one of its own
        self._uniopt_initial = (
            [
                (name, i)
                for name, slots in self._uniopt_slots.items()
                for i, slot in enumerate(slots)
                if slot is not None
            ]
            if later
            else []
        )
        start = self._spec.init_history()
        if start is not None:
            self._uniopt_history = binding().history_variables(self, start)

    def _initialize_slots_in_first_step(self) -> None:
        """For slots created inside XLA (:meth:`build`): each takes the spec's initial value from its
        variable in the update whose ``iterations`` is 0 (the first; with gradient accumulation, the
        first that updates, before which the variables have not moved)."""
        if self._uniopt_initial:
            initial = [
                (self._uniopt_slots[name][i], self._trainable_variables[i], name)
                for name, i in self._uniopt_initial
            ]
            binding().initialize_in_first_step(self, self._spec, initial)

    def apply(self, grads: Any, trainable_variables: Any = None) -> Any:
        """Keras's ``apply``; refused in eval mode, before anything changes: eagerly (and when a
        ``tf.function`` is traced) with a ``RuntimeError``, in a traced TensorFlow function called
        later with TensorFlow's ``InvalidArgumentError`` carrying the same message (an in-graph
        check that every op of the step waits for); a learning rate out of range likewise
        (``ValueError`` eagerly). On JAX and torch the mode is read on the host when ``apply`` (or
        ``stateless_apply``) is called."""
        lr_message = (
            f"{PACKAGE}.{type(self).__name__}: the learning_rate is out of range; expected a finite "
            "learning_rate >= 0 (the history of learning rates would keep it; nothing was changed); "
            "learning_rate ="
        )
        # a learning rate set after construction (or a schedule's) is checked before any op of the
        # step, the step count's included: the history of learning rates would keep a bad one
        self._refuse_xla()  # before anything is built: the optax convention under XLA
        self._check_xla()
        if trainable_variables is not None and not self.built and len(grads):
            # built as Keras's apply builds, but before the guard: a variable created under its
            # control dependencies could not be lifted out of an XLA function (fit(jit_compile=True)
            # on TensorFlow builds the optimizer in its first step)
            trainable_variables = list(trainable_variables)
            with keras.name_scope(self.name, caller=self):
                self.build(trainable_variables)
            self.built = True
        return binding().history_guard(
            self,
            self._eval_mode_message(),
            lr_message,
            lambda: super(HistoryOptimizer, self).apply(grads, trainable_variables),
        )

    def _scalars_when_applied(self, variables: list[Any]) -> None:
        """Where the binding computes the scalars when ``apply`` is called (torch: before Keras's
        ``apply`` enters its name scope, see ``uniopt.keras._torch.before_apply``), a spec with a
        history computes its step there: every spec and dtype's scalars and the next history, which
        :meth:`_backend_update_step` assigns (on TensorFlow and JAX it computes them itself)."""
        if not self._uniopt_history:
            return super()._scalars_when_applied(variables)
        self._uniopt_cache.entries[_AFTER] = (None, self._history_step(self.learning_rate))
        return None

    def _train_before_an_xla_step(self) -> None:
        """Inside an XLA function, which cannot raise: where the optimizer is in eval mode when the
        step runs, switch back to train mode in-graph first (what :meth:`train` does: every
        variable from ``x`` back to ``y``), then step. The step's gradients were taken where the
        variables stood, at ``x``. :meth:`eval` warns once steps have been traced for XLA."""
        self._uniopt_xla_steps = True
        b = binding()

        def to_train() -> None:
            b.run_if(keras.ops.greater(self.iterations, 0), lambda: self._rewrite(self._spec.train_param))
            self._uniopt_mode.assign(1)

        b.run_if(keras.ops.not_equal(self._uniopt_mode, 1), to_train)

    def _eval_mode_message(self) -> str:
        return (
            f"{PACKAGE}.{type(self).__name__}: the optimizer is in eval mode (the model's variables "
            "hold x, the average to evaluate at); call optimizer.train() before training, and "
            "optimizer.eval() before evaluating or saving"
        )

    def _backend_update_step(self, grads: Any, trainable_variables: Any, learning_rate: Any) -> None:
        """One update: the step's scalars and next history from the host, the rule on every
        variable (Keras's own loop, tf.distribute included), then the history assigned."""
        self._initialize_slots_in_first_step()
        if not self._uniopt_history:  # no history (the keras convention): the plain scalars
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        hit = self._uniopt_cache.entries.get(_AFTER)  # computed when apply was called
        # else every spec and dtype's scalars, at once
        after = self._history_step(learning_rate) if hit is None else hit[1]
        # Keras's own loop (UnioptOptimizer's would compute the plain scalars before it)
        super(UnioptOptimizer, self)._backend_update_step(grads, trainable_variables, learning_rate)
        for variable, value in zip(self._uniopt_history, after, strict=True):
            variable.assign(value)
        return None

    def _specs(self) -> list[Spec]:
        specs = [self._spec]
        if self._spec_without_decay is not self._spec:
            specs.append(self._spec_without_decay)
        return specs

    def _dtypes(self) -> list[str]:
        return sorted({dtype_name(v.dtype) for v in self._trainable_variables})

    def _refuse_xla(self) -> None:
        in_graph = all(spec.step_terms(1) is not None for spec in self._specs())
        if binding().host_calls_refused() and not in_graph:
            raise ValueError(
                f"{PACKAGE}.{type(self).__name__}: Schedule-Free AdamW's per-step scalars depend on "
                "the history of learning rates, and with convention='optax' (a float32 history) "
                "they are computed on the host, which XLA cannot call. Run without jit_compile "
                "(model.compile(..., jit_compile=False), tf.function(..., jit_compile=False))"
            )

    def _history_step(self, learning_rate: Any) -> list[Any]:
        """Fill the scalar cache of this step (every spec and dtype) and return the next history
        (the values to assign to the history variables)."""
        self._refuse_xla()
        specs, dtypes = self._specs(), self._dtypes()
        np_dtypes = [_np_dtype(d) for d in dtypes]
        kinds = [type(spec.step_scalars(1)) for spec in specs]

        def compute(step: int, lr: float, before_values: tuple[float, ...]) -> list[Any]:
            """The host's float64 step: the next history's fields, then each spec's scalars in
            each dtype (floats rounded once; flags as bools)."""
            before = type(self._spec.init_history())(*before_values)
            after, out = None, []
            for spec in specs:
                sc, new = spec.history_scalars(step, lr, before)
                after = new if after is None else after
                for dtype in np_dtypes:
                    out.extend(np.asarray(v, dtype) for v in sc)
            return [tuple(float(v) for v in after), *out]

        types = [d for kind in kinds for d in dtypes for _ in kind._fields]
        in_graph = binding().host_calls_refused() and binding().history_in_graph(
            self, specs, dtypes, learning_rate
        )
        if in_graph:  # XLA (TensorFlow): the spec's float64 formula, in-graph
            after, results, key = in_graph
        else:
            after, results, key = binding().history_step(self, compute, learning_rate, types)
        position = 0
        for spec, kind in zip(specs, kinds, strict=True):
            for d in dtypes:
                width = len(kind._fields)
                scalars = kind(*results[position : position + width])
                self._uniopt_cache.entries[(key, spec, d)] = (None, scalars)
                position += width
        return after

    def _scalars(self, spec: Spec, dtype: str, learning_rate: Any) -> Any:
        self._refuse_xla()
        if not self._uniopt_history:
            return super()._scalars(spec, dtype, learning_rate)
        key = binding().trace_key()
        hit = self._uniopt_cache.entries.get((key, spec, dtype))
        if hit is None:  # pragma: no cover - update_step is only called through _backend_update_step
            raise RuntimeError(
                f"{PACKAGE}.{type(self).__name__}: update_step ran outside apply(); its scalars "
                "come from the step's history"
            )
        return hit[1]

    # -- train / eval -------------------------------------------------------------------------
    @property
    def train_mode(self) -> bool:
        """Whether the model's variables hold ``y`` (train mode) rather than ``x`` (eval mode)."""
        return int(self._uniopt_mode.value) == 1

    def eval(self) -> None:
        """Eval mode: every model variable this optimizer was built for becomes ``x``, the spec's
        ``eval_param`` of it and its ``z`` (uniopt: the package's ``p.lerp_(z, 1 - 1/beta1)``;
        optax: ``schedule_free_eval_params``; keras: Keras's in-step recovery of ``x``). Before
        the first step ``x = y`` and nothing is assigned. No-op in eval mode; eager only.
        ``RuntimeError`` where steps were taken but the optimizer is not built (a checkpoint restored
        into an optimizer not built yet: its ``z`` slots come back only when ``build`` creates
        them), before anything changes."""
        if getattr(self, "_uniopt_xla_steps", False):
            warnings.warn(
                f"{PACKAGE}.{type(self).__name__}: this optimizer's steps run compiled by XLA, which "
                "cannot refuse a step in eval mode; call optimizer.train() before training again "
                "(a step taken in eval mode switches back to train mode first, with gradients taken "
                "at x)",
                stacklevel=2,
            )
        self._switch(to_eval=True)

    def train(self) -> None:
        """Train mode: every model variable becomes ``y`` again (the spec's ``train_param``; the
        package's ``p.lerp_(z, 1 - beta1)``, which rounds, so ``eval()`` then ``train()`` moves
        ``y`` by about an ulp of the larger of ``y`` and ``z``, as the package's does;
        :meth:`evaluating` restores ``y`` exactly).
        No-op in train mode; eager only; ``RuntimeError`` as :meth:`eval` where not built."""
        self._switch(to_eval=False)

    def _switch(self, *, to_eval: bool) -> None:
        if not binding().eager():
            raise RuntimeError(
                f"{PACKAGE}.{type(self).__name__}: train() and eval() rewrite the model's variables; "
                "call them eagerly, outside tf.function"
            )
        if self.train_mode != to_eval:
            return
        if self._steps_without_slots():
            raise RuntimeError(self._unbuilt_message("train() and eval() rewrite"))
        if self.built and int(self.iterations.value) > 0:
            self._rewrite(self._spec.eval_param if to_eval else self._spec.train_param)
        self._uniopt_mode.assign(0 if to_eval else 1)

    def _steps_without_slots(self) -> bool:
        """Whether steps were taken (``iterations > 0``) but the optimizer is not built: restored
        from a checkpoint (``tf.train.Checkpoint``) into an optimizer built later, whose ``z`` slots
        the checkpoint restores only when :meth:`build` creates them. ``x`` and ``y`` differ then,
        and neither can be computed."""
        return not self.built and int(self.iterations.value) > 0

    def _unbuilt_message(self, what: str) -> str:
        steps = int(self.iterations.value)
        return (
            f"{PACKAGE}.{type(self).__name__}: {what} the model's variables from the "
            f"optimizer's slots (z), but the optimizer has taken {steps} steps and is not built (a "
            "checkpoint restored into it restores the slots only when build creates them); call "
            "optimizer.build(model.trainable_variables) first (nothing was changed)"
        )

    def _rewrite(self, convert: Any) -> None:
        """Assign every model variable this optimizer was built for ``convert(variable, its slots,
        xp)`` (the spec's ``eval_param`` or ``train_param``), eagerly or in-graph."""
        b = binding()
        for variable in self._trainable_variables:
            if self._overwrite_variable_with_gradient(variable):
                continue  # no slots: Keras overwrites it with its gradient
            slots = {n: b.as_array(s) for n, s in self.slots(variable).items()}
            value = b.as_array(variable)
            variable.assign(convert(value, slots, b.namespace(self, value)))

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """``with optimizer.evaluating():`` the model's variables hold ``x`` inside the block; after
        it they hold exactly the ``y`` they held before (saved, not recomputed) and the optimizer is
        in train mode. A no-op wrapper in eval mode; ``RuntimeError`` as :meth:`eval` where not
        built."""
        if not self.train_mode:
            yield
            return
        if self._steps_without_slots():
            raise RuntimeError(self._unbuilt_message("evaluating() rewrites"))
        as_array = binding().as_array
        saved = [keras.ops.copy(as_array(v)) for v in self._trainable_variables] if self.built else []
        # not eval(): its warning (a step under XLA cannot be refused in eval mode) is moot here,
        # where train mode comes back when the block ends
        self._switch(to_eval=True)
        try:
            yield
        finally:
            for variable, value in zip(self._trainable_variables if self.built else [], saved, strict=True):
                variable.assign(value)
            self._uniopt_mode.assign(1)

    def history(self) -> NamedTuple | None:
        """The spec's history after the steps taken (``uniopt.schedule_free_adamw.History``), read
        from the optimizer's variables; ``None`` for a convention that keeps none (keras)."""
        start = self._spec.init_history()
        if start is None:
            return None
        if not self._uniopt_history:
            return start
        return type(start)(*binding().history_values(self))

    def _set_history(self, history: NamedTuple) -> None:
        """Assign ``history`` (the spec's NamedTuple) to the built optimizer's variables (porting)."""
        binding().history_assign(self, tuple(float(v) for v in history))


class EvalAtX(keras.callbacks.Callback):
    """A Keras callback that evaluates and predicts at ``x``: ``model.evaluate``, ``predict`` and
    ``fit``'s validation run inside :meth:`HistoryOptimizer.evaluating` of ``optimizer`` (the
    model's compiled optimizer when ``None``), so training continues from exactly the same ``y``.

    >>> model.fit(x, y, validation_data=(vx, vy), callbacks=[uniopt.keras.EvalAtX()])  # doctest: +SKIP
    """

    def __init__(self, optimizer: HistoryOptimizer | None = None):
        super().__init__()
        self._optimizer = optimizer
        self._stack: contextlib.ExitStack | None = None

    def _opt(self) -> HistoryOptimizer:
        opt = self._optimizer if self._optimizer is not None else getattr(self.model, "optimizer", None)
        if not isinstance(opt, HistoryOptimizer):
            raise TypeError(
                f"{PACKAGE}.EvalAtX: expected a {PACKAGE} optimizer with an evaluation view "
                f"({PACKAGE}.ScheduleFreeAdamW), got {type(opt).__module__}.{type(opt).__qualname__}"
            )
        return opt

    def _begin(self) -> None:
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(self._opt().evaluating())

    def _end(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            stack.close()

    def on_test_begin(self, logs: Any = None) -> None:
        self._begin()

    def on_test_end(self, logs: Any = None) -> None:
        self._end()

    def on_predict_begin(self, logs: Any = None) -> None:
        self._begin()

    def on_predict_end(self, logs: Any = None) -> None:
        self._end()


def _np_dtype(name: str) -> np.dtype:
    """The NumPy dtype of a dtype name (ml_dtypes' for bfloat16)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)
