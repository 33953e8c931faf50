"""uniopt.torch's optimizers whose spec carries a history and an evaluation view (Schedule-Free AdamW).

The spec's history (:meth:`uniopt.Spec.init_history`: Schedule-Free's running weight sum and
largest learning rate) depends on every learning rate a group has used, so it lives in each param
group, as the authors' package (``schedulefree.AdamWScheduleFree``) keeps it there: ``k`` (the steps
the group has taken), the history's fields by name (``weight_sum``, ``lr_max``, ...) and
``train_mode``. They travel in ``state_dict()["param_groups"]`` like any group key. A step computes
each group's scalars once from ``k + 1``, the group's current ``lr`` and its history
(:meth:`uniopt.Spec.history_scalars`), runs the spec's rule on every parameter with a gradient, and
only then stores the new history and ``k``: a step that raises changes nothing.

The contract is the package's: the parameters hold the training sequence ``y`` in train mode and the
evaluation sequence ``x`` in eval mode; :meth:`~HistoryOptimizer.eval` and
:meth:`~HistoryOptimizer.train` switch them in place (the spec's ``eval_param``/``train_param``) and
:meth:`~HistoryOptimizer.step` refuses to run in eval mode. One difference: the package starts in
eval mode and refuses ``step()`` until ``train()`` is called; uniopt starts in train mode (the two
modes hold the same values before the first step), so code written for the package, which calls
``train()`` first, runs unchanged, and code written for torch.optim runs too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from uniopt._spec import Spec

from ._dtensor import local
from ._namespace import xp
from ._optimizer import UnioptOptimizer, _lr


class HistoryOptimizer(UnioptOptimizer):
    """A :class:`UnioptOptimizer` whose spec keeps a history per param group and an evaluation view
    (see the module docstring)."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch.optim's ``add_param_group``; the group also gets ``k = 0``, ``train_mode`` (this
        optimizer's mode) and its spec's initial history, unless it already holds them."""
        super().add_param_group(param_group)
        mode = all(g.get("train_mode", True) for g in self.param_groups[:-1])
        self._start_group(self.param_groups[-1], mode)

    def _complete(self, group: dict[str, Any]) -> None:
        """As :meth:`UnioptOptimizer._complete`; a group without ``k``, ``train_mode`` or the
        history (saved by another optimizer) gets them at their start."""
        super()._complete(group)
        self._start_group(group, True)

    def _start_group(self, group: dict[str, Any], train_mode: bool) -> None:
        """``k = 0``, ``train_mode`` and the spec's initial history, where the group lacks them."""
        group.setdefault("k", 0)
        group.setdefault("train_mode", train_mode)
        start = self._spec_of(group).init_history()
        for name, value in (start._asdict() if start is not None else {}).items():
            group.setdefault(name, value)

    def _history(self, group: dict[str, Any], spec: Spec) -> Any:
        start = spec.init_history()
        if start is None:
            return None
        return type(start)(**{name: float(group[name]) for name in start._fields})

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step of every group (see the module docstring); returns the closure's loss.

        Raises ``RuntimeError`` in eval mode (the package's error), before anything changes."""
        if torch.compiler.is_compiling():
            begin, end = _host_work()
        else:
            begin, end = HistoryOptimizer._begin_step, HistoryOptimizer._end_step
        begin(self)
        try:
            loss = super().step(closure)
        except BaseException:
            self._upcoming = None
            raise
        end(self)
        return loss

    def _begin_step(self) -> None:
        """Host work before a step (kept out of ``torch.compile`` graphs, as the scalars of every
        uniopt.torch step are): check the mode, compute each group's scalars and next history."""
        if not all(group["train_mode"] for group in self.param_groups):
            raise RuntimeError(
                f"uniopt.torch.{self.spec_class.name}: the optimizer is in eval mode (its parameters "
                "hold x, the average to evaluate at); call optimizer.train() before step(), and "
                "optimizer.eval() before evaluating or saving"
            )
        upcoming = []
        for group in self.param_groups:
            spec = self._spec_of(group)
            history = self._history(group, spec)
            upcoming.append((spec, *spec.history_scalars(group["k"] + 1, _lr(group["lr"]), history)))
        self._upcoming = upcoming

    def _end_step(self) -> None:
        """After a step that ran: each group's ``k`` and history move on, and ``scheduled_lr`` (the
        package's logging key) holds the step's warmed-up learning rate."""
        for group, (spec, _, history) in zip(self.param_groups, self._upcoming, strict=True):
            group["k"] += 1
            if history is not None:
                group.update(history._asdict())
            if hasattr(spec, "warmed_lr"):
                group["scheduled_lr"] = spec.warmed_lr(group["k"], _lr(group["lr"]))
        self._upcoming = None

    def _scalars_of(self, index: int, spec: Spec, lr: float, step: int) -> Any:
        """The group's scalars of this step (from its ``k`` and history, whatever the parameter's
        own step count: a parameter that missed steps takes the group's, as in the package)."""
        upcoming = getattr(self, "_upcoming", None)
        if upcoming is None:
            raise RuntimeError(f"uniopt.torch.{self.spec_class.name}: scalars asked for outside step()")
        return upcoming[index][1]

    @torch.no_grad()
    def eval(self) -> None:
        """Switch to eval mode: every parameter with state becomes ``x`` (the spec's
        ``eval_param``, the package's ``p.lerp_(z, 1 - 1/beta1)``). No-op in eval mode."""
        self._switch(to_eval=True)

    @torch.no_grad()
    def train(self) -> None:
        """Switch to train mode: every parameter with state becomes ``y`` again (the spec's
        ``train_param``, the package's ``p.lerp_(z, 1 - beta1)``). No-op in train mode."""
        self._switch(to_eval=False)

    def _switch(self, *, to_eval: bool) -> None:
        for group in self.param_groups:
            if group["train_mode"] != to_eval:
                continue
            spec = self._spec_of(group)
            convert = spec.eval_param if to_eval else spec.train_param
            for p in group["params"]:
                state = self.state.get(p)
                if not state or any(name not in state for name in spec.slot_names()):
                    continue  # no step yet: x = y = z
                slots = {name: local(state[name]) for name in spec.slot_names()}
                local(p).copy_(convert(local(p), slots, xp))  # a DTensor's shard (elementwise)
            group["train_mode"] = not to_eval


_DISABLED: list[tuple[Callable[[HistoryOptimizer], None], Callable[[HistoryOptimizer], None]]] = []


def _host_work() -> tuple[Callable[[HistoryOptimizer], None], Callable[[HistoryOptimizer], None]]:
    """``_begin_step`` and ``_end_step`` excluded from dynamo tracing (host work, as every uniopt.torch
    step's scalars are), built on first use under ``torch.compile`` so that importing uniopt.torch
    does not load torch._dynamo."""
    if not _DISABLED:
        disable = torch.compiler.disable
        _DISABLED.append((disable(HistoryOptimizer._begin_step), disable(HistoryOptimizer._end_step)))
    return _DISABLED[0]
