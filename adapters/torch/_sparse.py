"""Sparse COO gradients in ``uniopt.torch``: the core's sparse rules (:mod:`uniopt.sparse`) bound to
torch, with no update math of their own.

A parameter whose ``.grad`` is a sparse COO tensor (``torch.nn.Embedding(..., sparse=True)``) is
updated by the spec's :meth:`~uniopt.Spec.sparse_rule`:

* ``"rows"``: the gradient is coalesced (repeated indices summed, ``Tensor.coalesce()``), the
  touched rows of the parameter and of every slot are gathered (``index_select``), the spec's rule
  runs on them with the step's scalars, and the results are written back (``index_copy_``); the
  other rows are not read or written. An empty gradient writes nothing (the step still counts).
* ``"dense"``: the coalesced gradient is densified (``to_dense()``) and the step is a dense one.

Sparse gradients are accepted where torch.optim accepts them: ``SGD`` (any options; with momentum
or weight decay the rule is ``"dense"``, which torch.optim.SGD's sparse momentum buffer also
computes), ``Adagrad`` without ``weight_decay`` (torch.optim.Adagrad refuses it), and
``SparseAdam``, which in turn refuses dense gradients as torch.optim.SparseAdam does. Every other
optimizer refuses them with ``RuntimeError``, as its torch.optim namesake does. Complex parameters
with sparse gradients are refused, and so are sparse gradients in a group with ``fused=True`` (as
torch.optim's fused kernels refuse them). A step with a sparse gradient runs per tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from uniopt import Spec
from uniopt.sparse import sparse_rule

from ._namespace import xp

__all__ = ["ACCEPTING", "check", "prepared", "step_rows"]

ACCEPTING = ("SGD", "Adagrad", "SparseAdam")
"""The optimizers whose torch.optim namesake takes sparse gradients (torch/optim/sgd.py,
adagrad.py, sparse_adam.py)."""

_SPARSE_ONLY = ("SparseAdam",)


def check(spec: Spec, p: torch.Tensor, fused: bool = False) -> None:
    """Raise ``RuntimeError`` (torch.optim's type for these refusals) if ``p.grad``'s layout is not
    one this optimizer takes, or a sparse gradient does not fit ``p``, or is in a group with
    ``fused=True`` (torch.optim's fused SGD and Adagrad refuse sparse gradients; ``fused``: the
    group's option); nothing is changed."""
    owner = f"uniopt.torch.{spec.name}"
    grad = p.grad
    if not grad.is_sparse:
        if spec.name in _SPARSE_ONLY:  # torch.optim.SparseAdam's refusal, in its words
            raise RuntimeError(
                f"{owner} does not support dense gradients, please consider Adam instead "
                "(uniopt.torch.Adam; SparseAdam's rule is for sparse gradients)"
            )
        return
    if spec.name not in ACCEPTING:
        native = f", as torch.optim.{spec.name} does not" if hasattr(torch.optim, spec.name) else ""
        raise RuntimeError(
            f"{owner} does not support sparse gradients{native}; use "
            "dense gradients (torch.nn.Embedding(..., sparse=False)), or an optimizer that takes "
            f"them: {', '.join(f'uniopt.torch.{n}' for n in ACCEPTING)}"
        )
    if fused:  # torch/optim/sgd.py _fused_sgd, adagrad.py _fused_adagrad
        raise RuntimeError(
            f"{owner}: `fused` does not support sparse gradients (torch.optim.{spec.name}(fused=True) "
            "refuses them too); use fused=None or fused=False with sparse gradients"
        )
    if spec.name == "Adagrad" and spec.weight_decay != 0:  # type: ignore[attr-defined]
        raise RuntimeError(  # torch.optim.Adagrad's refusal
            f"{owner}: weight_decay={spec.weight_decay!r} is not compatible with sparse gradients "  # type: ignore[attr-defined]
            "(as in torch.optim.Adagrad); expected weight_decay=0, or dense gradients"
        )
    if p.is_complex():
        raise RuntimeError(
            f"{owner}: sparse gradients of complex parameters are not supported, got {p.dtype}; "
            "expected a real floating parameter, or a dense gradient"
        )
    if grad.shape != p.shape or grad.dtype != p.dtype:
        raise RuntimeError(
            f"{owner}: a sparse gradient of shape {tuple(grad.shape)} and dtype {grad.dtype} does "
            f"not match its parameter ({tuple(p.shape)}, {p.dtype})"
        )
    if grad.sparse_dim() < 1:
        raise RuntimeError(
            f"{owner}: a sparse gradient with sparse_dim()=0 names no rows; expected sparse_dim() >= 1"
        )


def prepared(spec: Spec, grad: torch.Tensor) -> torch.Tensor:
    """The gradient the step takes: for the ``"rows"`` rule the coalesced sparse gradient (the
    per-tensor loop sends it to :func:`step_rows`), for ``"dense"`` the coalesced gradient densified."""
    grad = grad.coalesce()
    return grad if sparse_rule(spec) == "rows" else grad.to_dense()


def step_rows(
    spec: Spec, param: torch.Tensor, grad: torch.Tensor, slots: Mapping[str, torch.Tensor], scalars: Any
) -> None:
    """The spec's rule on the rows ``grad`` (coalesced, see :func:`prepared`) touches, written back
    into ``param`` and ``slots`` in place; the other rows are not touched."""
    values = grad._values()
    if values.shape[0] == 0:
        return
    indices = grad._indices()
    if indices.shape[0] == 1:  # rows of the first dimension: index_select / index_copy_
        rows = indices[0]
        new_param, new_slots = spec.rule(
            param.index_select(0, rows),
            values,
            {n: s.index_select(0, rows) for n, s in slots.items()},
            scalars,
            xp,
        )
        param.index_copy_(0, rows, new_param)
        for name, value in new_slots.items():
            slots[name].index_copy_(0, rows, value)
        return
    where = tuple(indices)  # elements of several sparse dimensions: advanced indexing
    gathered = {n: s[where] for n, s in slots.items()}
    new_param, new_slots = spec.rule(param[where], values, gathered, scalars, xp)
    param.index_put_(where, new_param)
    for name, value in new_slots.items():
        slots[name].index_put_(where, value)
