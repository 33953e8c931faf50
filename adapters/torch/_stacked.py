"""The stacked step of a spec that is not elementwise: many small parameters of one shape, one rule call.

The rule of Adafactor or LAMB reads a whole parameter (its RMS, norms, row and column statistics), so
the flat buffers of :mod:`._flat`, which run an elementwise rule over many parameters at once, do
not apply, and the per-tensor loop pays the rule's Python and op dispatch once per parameter (on
2,000 small tensors about 250 us each, most of a step). Here the parameters of one group that
share a shape, dtype, device, step and slot layout are stacked along a new leading axis, the rule
runs once on the stack under ``torch.func.vmap`` (each parameter its own batch element: every
reduction stays within it), and the results are copied back into the parameters and slots.

Bit for bit the per-tensor step: the rules reduce with uniopt's own elementwise formulations
(:func:`uniopt._math.sum_pairwise` and those built on it: additions of slices, each element rounded
as it is alone), and every other op of these rules is elementwise, so a batch element sees the
same operations on the same values. The conformance matrix's ``torch@eager`` rows (this path) and
``torch@loop`` rows (per tensor) both compare with the NumPy reference. The correctly rounded
``sqrt`` of :mod:`._namespace` hands the tensor's memory to NumPy, which a batched tensor has not:
under ``vmap`` it is a custom operator whose batching rule applies it to the whole stack.

Muon's small matrices stack too (:func:`_stackable`). Its Newton-Schulz products are not batched
products: torch's ``bmm`` sums differently from ``mm`` (a loop of its own below 400 multiply-adds;
above, measured with 2 threads, for long shared sides: 60x1000 float32, 96x200 float64), so under
``vmap`` a product is the custom operator ``uniopt::matmul_each``, whose batching rule forms each
stacked matrix's product with ``torch.matmul``, as the per-tensor loop does (the same operands'
strides, the same threads); the elementwise ops around them run once per stack. The same bits as
the loop (tests/torch_adapter/test_muon_torch.py).

Taken by ``implementation="auto"`` (the default) for the specs of :data:`SPECS`, outside
``torch.compile``, for dense, non-distributed parameters below :data:`uniopt.torch._flat.LARGE`
elements (a large parameter gains nothing and its stack would double its memory), at least
:data:`MIN_STACK` of one kind; the others take the per-tensor loop.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from uniopt import Spec

from . import _flat, _pertensor
from ._namespace import _TorchNamespace, sqrt

__all__ = ["MIN_STACK", "SPECS", "STACK_ELEMENTS", "run", "split"]

SPECS = frozenset({"Adafactor", "Lamb", "Muon"})
"""The specs stepped stacked (Muon's matrices only where :func:`_stackable`)."""

MIN_STACK = 2
"""The fewest parameters of one kind stacked."""

STACK_ELEMENTS = 1 << 20
"""The most elements one stack holds (more parameters of a kind make several stacks): a stack's
arrays are scratch the size of the parameters they hold, for the rule's call only. Adafactor on
1,000 (20, 25) and 1,000 (500,) parameters took 528, 221, 145 and 132 ms a step with stacks of at
most 2**12, 2**14, 2**16 and 2**18 elements, 130 ms unbounded (LAMB: 401, 153, 86, 66 and 76 ms):
each op of the rule costs its dispatch once per stack."""

_PLAIN = (torch.Tensor, torch.nn.Parameter)


@functools.cache
def _namespace() -> Any:
    """uniopt.torch's namespace with ``sqrt`` as the custom operator ``uniopt::sqrt``, batched by
    applying it to the stack, and ``matmul`` as ``uniopt::matmul_each``, batched by one product per
    stacked matrix (made on first use, so that importing uniopt.torch registers nothing)."""

    @torch.library.custom_op("uniopt::sqrt", mutates_args=())
    def sqrt_op(x: torch.Tensor) -> torch.Tensor:
        return sqrt(x)

    @sqrt_op.register_fake
    def _(x: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(x)

    def batched(info: Any, in_dims: tuple[int | None], x: torch.Tensor) -> tuple[torch.Tensor, int | None]:
        return sqrt_op(x), in_dims[0]

    sqrt_op.register_vmap(batched)

    @torch.library.custom_op("uniopt::matmul_each", mutates_args=())
    def matmul_op(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.matmul(a, b)

    @matmul_op.register_fake
    def _(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a.new_empty((*a.shape[:-1], b.shape[-1]))

    def each(info: Any, in_dims: tuple[int | None, int | None], a: torch.Tensor, b: torch.Tensor) -> tuple:
        # the stack's matrices one at a time, each the product the per-tensor loop forms (the same
        # operands' strides, the same threads): a batched product (bmm) is not (module docstring)
        a_dim, b_dim = in_dims
        pick = lambda t, d, i: t if d is None else t.select(d, i)  # noqa: E731
        return torch.stack(
            [torch.matmul(pick(a, a_dim, i), pick(b, b_dim, i)) for i in range(info.batch_size)]
        ), 0

    matmul_op.register_vmap(each)

    class _Stacked(_TorchNamespace):
        pass

    _Stacked.sqrt = staticmethod(sqrt_op)
    _Stacked.matmul = staticmethod(matmul_op)
    return _Stacked()


def _stackable(spec: Spec, param: torch.Tensor) -> bool:
    """Whether ``param``'s step may run stacked: every spec of :data:`SPECS` but Muon's matrices
    whose products are torch's bfloat16 kernels (:func:`uniopt.torch._pertensor.kernel_products`,
    the large ones' path) or ``matmul="exact"`` (elementwise, but its products' scratch would grow
    with the stack). Muon's other products are ``uniopt::matmul_each`` under ``vmap``, one product
    per stacked matrix (:func:`_namespace`)."""
    if spec.name != "Muon":
        return True
    return spec.matmul == "backend" and not _pertensor.kernel_products(spec, param)


def _kind(entry: tuple) -> tuple | None:
    """What parameters must share to be stacked together, or None where this one cannot be."""
    spec, param, grad, slots, scalars = entry
    if (
        not _stackable(spec, param)
        or type(param) not in _PLAIN
        or type(grad) not in _PLAIN
        or grad.layout != torch.strided
        or grad.dtype != param.dtype
        or param.numel() >= _flat.LARGE.get(param.device.type, 0)
    ):
        return None
    layout = tuple((s.shape, s.dtype) for s in slots.values())
    return (id(spec), param.shape, param.dtype, param.device, id(scalars), layout)


def split(plan: list[tuple]) -> tuple[list[list[tuple]], list[tuple]]:
    """``(stacks, rest)``: the entries of ``plan`` stepped stacked, in groups of one kind of at least
    :data:`MIN_STACK`, and the others (per tensor)."""
    groups: dict[tuple, list[tuple]] = {}
    rest = []
    for entry in plan:
        kind = _kind(entry) if isinstance(entry[0], Spec) and entry[0].name in SPECS else None
        if kind is None:
            rest.append(entry)
        else:
            groups.setdefault(kind, []).append(entry)
    stacks = []
    for members in groups.values():
        if len(members) < MIN_STACK:
            rest.extend(members)
            continue
        per_stack = max(1, STACK_ELEMENTS // max(1, members[0][1].numel()))
        stacks.extend(members[i : i + per_stack] for i in range(0, len(members), per_stack))
    return stacks, rest


def run(members: list[tuple]) -> None:
    """One rule call for the stack of ``members`` (entries of one kind: spec, parameter, gradient,
    slots, scalars), its results copied back in place."""
    spec, _, _, first, scalars = members[0]
    names = list(first)
    params = [m[1] for m in members]
    stack = torch.stack(params)
    grads = torch.stack([m[2] for m in members])
    slots = {name: torch.stack([m[3][name] for m in members]) for name in names}
    xp = _namespace()
    rule = torch.func.vmap(lambda p, g, s: spec.rule(p, g, s, scalars, xp))
    new_params, new_slots = rule(stack, grads, slots)
    torch._foreach_copy_(params, list(new_params.unbind(0)))
    for name, value in new_slots.items():
        if value is not slots[name]:  # a slot passed through (a placeholder) is left as it is
            torch._foreach_copy_([m[3][name] for m in members], list(value.unbind(0)))
