"""uniopt.torch: ``torch.optim.Optimizer`` subclasses that run the uniopt spec, bit for bit.

>>> import torch, uniopt.torch
>>> model = torch.nn.Linear(4, 2)
>>> opt = uniopt.torch.RAdam(model.parameters(), lr=1e-3)   # in place of torch.optim.RAdam

Argument names, positions and defaults are torch.optim's (``lr``, ``betas``, ``eps``,
``weight_decay``, ``momentum``, ``dampening``, ``nesterov``, ``alpha``, ``centered``, ``lr_decay``,
``initial_accumulator_value``, ``amsgrad``, ``decoupled_weight_decay``, ``maximize``; RAdam adds
``degenerated_to_sgd``); ``lr`` (and Adam's ``betas``) may be 1-element tensors, and params may be
tensors, ``(name, tensor)`` pairs or param group dicts, as torch.optim takes them. What differs from
torch.optim is documented in docs/torch.md: the formulas are the spec's (RAdam's epsilon sits on
sqrt(v-hat) as in Adam; centered RMSprop clamps its variance at 0), and every result is correctly
rounded the same way as the NumPy reference. torch.optim's implementation switches (``foreach``,
``fused``) are accepted and stored as torch.optim stores them, and never change the numbers;
``capturable=True`` and ``differentiable=True`` are refused. A torch.optim checkpoint of the same
algorithm continues under uniopt with :func:`load_torch_optim_state_dict`. ``implementation``
(:data:`IMPLEMENTATIONS`, default ``"auto"``) chooses how the rule is executed, always with the same
bits: per tensor, or over flat state buffers, eager or compiled by inductor.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import uniopt

from ._optimizer import AUTO_COMPILE_MIN, IMPLEMENTATIONS, UnioptOptimizer
from ._porting import (
    export_state,
    from_torch_optim,
    import_state,
    load_torch_optim_state_dict,
    to_torch_optim,
)

__all__ = [
    "AUTO_COMPILE_MIN",
    "IMPLEMENTATIONS",
    "SGD",
    "Adagrad",
    "Adam",
    "AdamW",
    "RAdam",
    "RMSprop",
    "UnioptOptimizer",
    "export_state",
    "from_torch_optim",
    "import_state",
    "load_torch_optim_state_dict",
    "to_torch_optim",
]


class SGD(UnioptOptimizer):
    """SGD with optional (Nesterov) momentum; the math is :class:`uniopt.SGD`'s (torch/optim/sgd.py's
    arguments)."""

    spec_class = uniopt.SGD
    positional = ("lr", "momentum", "dampening", "weight_decay", "nesterov")
    torch_options: ClassVar[dict[str, Any]] = {"foreach": None, "differentiable": False, "fused": None}


class Adagrad(UnioptOptimizer):
    """Adagrad; the math is :class:`uniopt.Adagrad`'s (torch/optim/adagrad.py's arguments).

    As torch.optim.Adagrad, the state of the parameters given to the constructor (``step`` 0 and
    ``sum`` filled with ``initial_accumulator_value``) exists from construction, so that
    :meth:`share_memory` can share it before training starts.
    """

    spec_class = uniopt.Adagrad
    positional = ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps", "foreach")
    torch_options: ClassVar[dict[str, Any]] = {"foreach": None, "differentiable": False, "fused": None}

    def __init__(self, params: Iterable[Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(params, *args, **kwargs)
        for group in self.param_groups:
            spec = self._spec_of(group)
            for p in group["params"]:
                self._init_state(spec, p)

    def share_memory(self) -> None:
        """Move each parameter's ``sum`` into shared memory (``Tensor.share_memory_``), as
        torch.optim.Adagrad does, for Hogwild-style training in several processes."""
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if state and "sum" in state:
                    state["sum"].share_memory_()


class RMSprop(UnioptOptimizer):
    """RMSprop (centered, momentum); the math is :class:`uniopt.RMSprop`'s
    (torch/optim/rmsprop.py's arguments)."""

    spec_class = uniopt.RMSprop
    positional = (
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
    )
    torch_options: ClassVar[dict[str, Any]] = {"capturable": False, "foreach": None, "differentiable": False}


class Adam(UnioptOptimizer):
    """Adam (AMSGrad); the math is :class:`uniopt.Adam`'s (torch/optim/adam.py's arguments;
    ``decoupled_weight_decay=True`` is :class:`AdamW`)."""

    spec_class = uniopt.Adam
    positional = ("lr", "betas", "eps", "weight_decay", "amsgrad")
    torch_options: ClassVar[dict[str, Any]] = {
        "foreach": None,
        "capturable": False,
        "differentiable": False,
        "fused": None,
        "decoupled_weight_decay": False,
    }


class AdamW(UnioptOptimizer):
    """AdamW; the math is :class:`uniopt.AdamW`'s (torch/optim/adamw.py's arguments; its groups hold
    ``decoupled_weight_decay=True``, as torch.optim.AdamW's do)."""

    spec_class = uniopt.AdamW
    positional = ("lr", "betas", "eps", "weight_decay", "amsgrad")
    torch_options: ClassVar[dict[str, Any]] = {
        "foreach": None,
        "capturable": False,
        "differentiable": False,
        "fused": None,
        "decoupled_weight_decay": True,
    }


class RAdam(UnioptOptimizer):
    """Rectified Adam; the math is :class:`uniopt.RAdam`'s (torch/optim/radam.py's arguments)."""

    spec_class = uniopt.RAdam
    positional = ("lr", "betas", "eps", "weight_decay", "decoupled_weight_decay")
    torch_options: ClassVar[dict[str, Any]] = {"foreach": None, "capturable": False, "differentiable": False}
