r"""DTensor parameters: FSDP2 (``torch.distributed.fsdp.fully_shard``) and tensor parallelism
(``torch.distributed.tensor.parallel.parallelize_module``).

A DTensor parameter holds one shard of a global tensor on each rank (its ``placements`` on its
``device_mesh``); its gradient is a DTensor too. The state follows torch.optim's convention for
DTensor parameters (torch/optim/adam.py creates ``torch.zeros_like(p)``): every slot of the
parameter's shape is a DTensor with the parameter's placements, so each rank keeps only its shard of
the state, and ``torch.distributed.checkpoint`` saves and reshards it like the parameters. A slot of
another shape (Adafactor's factored row and column statistics, ``uniopt.Spec.slot_shape``) has no
shard that the parameter's placements define; it is a replicated DTensor, a full copy on every rank
(``rows + cols`` elements for a ``rows x cols`` matrix). The step counter stays the plain CPU int64
tensor of every uniopt.torch parameter (torch.optim keeps a plain ``step`` tensor too).

How a step runs the spec's rule, chosen by :attr:`uniopt.Spec.elementwise`:

* elementwise rule: on the local shards (``DTensor._local_tensor``: parameter, gradient, slots), the
  results written back in place: per tensor (``"loop"``), or over flat buffers of the local shards
  (:class:`uniopt.torch._flat.Bucket`, whose slot entries are DTensors over their pieces). An
  element's update depends on that element alone, so the local update is the single-process update
  restricted to the shard, bit for bit, with no communication. A gradient whose placements differ
  from the parameter's (a replicated gradient of a sharded parameter) is first redistributed to the
  parameter's placements.
* not elementwise (``Lamb``'s norms, ``Adafactor``'s row and column means, ``Muon``'s matrix
  products): the rule reads the whole tensor, so the parameter, its gradient and its slots are
  gathered (``DTensor.full_tensor()``, an all-gather per tensor), the rule runs on the full tensors
  on every rank (the same inputs and the spec's fixed order of operations: the same bits on every
  rank, and those of a single process), and each rank keeps its shard of the results
  (``distribute_tensor(..., src_data_rank=None)``, which splits locally without communicating).
  One parameter at a time: the memory this costs is the largest parameter's full tensor with its
  gradient and slots, besides the shards; the communication is an all-gather of each of them per
  step.

Nothing here is update math: the rule is the spec's, run on other tensors.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import torch

from uniopt import Spec

from ._namespace import xp

__all__ = [
    "GatheredRule",
    "check_grads",
    "is_dtensor",
    "like",
    "local",
    "local_grads",
    "new_slot",
    "plan_entry",
]


def is_dtensor(t: Any) -> bool:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor`` (without importing
    torch.distributed: a DTensor exists only once that module is loaded)."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor, a plain tensor sharing its memory (writes reach the DTensor);
    ``t`` itself for a plain tensor."""
    return t._local_tensor if is_dtensor(t) else t


def _shard(full: torch.Tensor, like: Any, placements: Any = None) -> Any:
    """``full`` (the same global tensor on every rank) as a DTensor on ``like``'s mesh with
    ``placements`` (default ``like``'s): each rank takes its shard locally, no communication."""
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(
        full, like.device_mesh, like.placements if placements is None else placements, src_data_rank=None
    )


def new_slot(spec: Spec, name: str, p: Any) -> Any:
    """The initial slot ``name`` of the DTensor parameter ``p`` (see the module docstring).

    A slot of ``p``'s shape has ``p``'s placements: for an elementwise spec its shard is the spec's
    ``init_slot`` of ``p``'s shard; otherwise ``init_slot`` runs on the gathered parameter and each
    rank keeps its shard. A slot of another shape is replicated, from ``init_slot`` on the gathered
    parameter. ``init_slot`` of the gathered parameter is what a single process computes, so every
    rank's shard is the single-process slot's."""
    from torch.distributed.tensor import Replicate

    shape = spec.slot_shape(name, tuple(p.shape))
    if shape == tuple(p.shape) and spec.elementwise:
        return like(p, spec.init_slot(name, p._local_tensor, xp))
    full = spec.init_slot(name, p.full_tensor(), xp)
    if shape == tuple(p.shape):
        return _shard(full, p)
    return _shard(full, p, [Replicate()] * p.device_mesh.ndim)


def like(p: Any, value: torch.Tensor) -> Any:
    """A DTensor whose local shard is ``value`` (shared, not copied), with ``p``'s mesh,
    placements, shape and stride.

    ``value`` may be a view at a nonzero offset into a flat buffer (:class:`uniopt.torch._flat.Bucket`).
    torch 2.13's DTensor constructor (``torch.Tensor._dtensor__new__``, behind ``DTensor.from_local``)
    gives the wrapper tensor the local tensor's ``storage_offset``; the wrapper has no memory of its
    own (a null data pointer), and a nonzero offset makes ``pickle``, ``torch.save`` and
    ``copy.deepcopy`` take it for a tensor with memory and fail ("Attempted to access the data
    pointer on an invalid python storage"; the same holds for torch's own ``dtensor[1:]``). Such a
    wrapper is therefore built over an alias of ``value`` at offset 0 (the same shape, stride, dtype
    and device, in the same buffer) and then given ``value`` as its local tensor: the constructor
    itself sets ``_local_tensor`` as a plain attribute after building the wrapper, so the result is
    the DTensor ``from_local(value)`` describes, with the wrapper offset 0 that pickling expects.
    A torch whose constructor leaves the offset 0 takes the first branch only."""
    from torch.distributed.tensor import DTensor

    def wrap(local: torch.Tensor) -> Any:
        return DTensor.from_local(
            local, p.device_mesh, p.placements, run_check=False, shape=p.shape, stride=p.stride()
        )

    out = wrap(value)
    if out.storage_offset() == 0:
        return out
    out = wrap(value.as_strided(value.shape, value.stride(), 0))
    out._local_tensor = value
    return out


def local_grads(params: list[Any], grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """The local shards of the DTensor parameters' gradients (with the parameters' placements), the
    other gradients as they are; each shard checked against its parameter's."""
    out = []
    for p, g in zip(params, grads, strict=True):
        if is_dtensor(p):
            g = _grad_like(p)._local_tensor
            if g.shape != p._local_tensor.shape:
                raise RuntimeError(
                    f"the local shard of a gradient has shape {tuple(g.shape)}, its parameter's "
                    f"{tuple(p._local_tensor.shape)}"
                )
        out.append(g)
    return out


def check_grads(owner: str, groups: list[dict[str, Any]]) -> None:
    """Raise ``RuntimeError`` for a DTensor parameter whose gradient is not a DTensor on its mesh (a
    gradient assigned by hand): checked for every parameter before a step changes anything."""
    for group in groups:
        for p in group["params"]:
            grad = p.grad
            if (
                grad is not None
                and is_dtensor(p)
                and not (is_dtensor(grad) and grad.device_mesh == p.device_mesh)
            ):
                raise RuntimeError(
                    f"uniopt.torch.{owner}: a DTensor parameter of shape {tuple(p.shape)} has a "
                    f"gradient of type {type(grad).__name__}; expected a DTensor on the parameter's "
                    "device mesh (the gradient autograd computes for it)"
                )


def _grad_like(p: Any) -> Any:
    """``p.grad`` with ``p``'s placements (redistributed when they differ)."""
    grad = p.grad
    if not is_dtensor(grad):
        raise RuntimeError(
            "a DTensor parameter has a plain tensor gradient; expected a DTensor gradient (the "
            "gradient autograd computes for a DTensor parameter)"
        )
    if grad.device_mesh != p.device_mesh or tuple(grad.placements) != tuple(p.placements):
        grad = grad.redistribute(p.device_mesh, p.placements)
    return grad


class GatheredRule:
    """The spec's rule for one DTensor parameter of a spec that is not elementwise, in the shape
    of a plan entry's spec: ``rule(...)`` ignores the local shards it is handed, gathers the
    parameter, the gradient and the slots it holds, runs the spec's rule on the full tensors and
    returns the local shards of the results, which the per-tensor loop writes in place."""

    __slots__ = ("grad", "param", "slots", "spec")

    def __init__(self, spec: Spec, param: Any, grad: Any, slots: Mapping[str, Any]) -> None:
        self.spec, self.param, self.grad, self.slots = spec, param, grad, slots

    def rule(
        self, param: torch.Tensor, grad: torch.Tensor, slots: Mapping[str, torch.Tensor], sc: Any, _: Any
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        full_slots = {n: s.full_tensor() for n, s in self.slots.items()}
        new_p, new_slots = self.spec.rule(
            self.param.full_tensor(), self.grad.full_tensor(), full_slots, sc, xp
        )
        return (
            _shard(new_p, self.param)._local_tensor,
            {n: _shard(v, self.slots[n])._local_tensor for n, v in new_slots.items()},
        )


def plan_entry(
    spec: Spec, p: Any, slots: Mapping[str, Any], scalars: Any
) -> tuple[Any, torch.Tensor, torch.Tensor, dict[str, torch.Tensor], Any]:
    """The per-tensor plan entry ``(spec, param, grad, slots, scalars)`` of the DTensor parameter
    ``p`` (its slots DTensors too): the local shards, which the loop writes in place, and for a spec
    that is not elementwise a :class:`GatheredRule` in place of the spec."""
    grad = _grad_like(p)
    local_slots = {n: s._local_tensor for n, s in slots.items()}
    if spec.elementwise:
        if grad._local_tensor.shape != p._local_tensor.shape:
            raise RuntimeError(
                f"uniopt.torch.{spec.name}: the local shard of a gradient has shape "
                f"{tuple(grad._local_tensor.shape)}, its parameter's {tuple(p._local_tensor.shape)}"
            )
        return spec, p._local_tensor, grad._local_tensor, local_slots, scalars
    return GatheredRule(spec, p, grad, slots), p._local_tensor, grad._local_tensor, local_slots, scalars
