"""uniopt.torch: ``torch.optim.Optimizer`` subclasses that run the uniopt spec, bit for bit.

>>> import torch, uniopt.torch
>>> model = torch.nn.Linear(4, 2)
>>> opt = uniopt.torch.RAdam(model.parameters(), lr=1e-3)   # in place of torch.optim.RAdam

Argument names are torch.optim's (``lr``, ``betas``, ``eps``, ``weight_decay``, ``momentum``,
``dampening``, ``nesterov``, ``alpha``, ``centered``, ``lr_decay``, ``initial_accumulator_value``,
``amsgrad``, ``decoupled_weight_decay``, ``maximize``; RAdam adds ``degenerated_to_sgd``). The
defaults are the spec's and equal torch.optim's. What differs from torch.optim is documented in
docs/torch.md: the formulas are the spec's (RAdam's epsilon sits on sqrt(v-hat) as in Adam; centered
RMSprop clamps its variance at 0), every result is correctly rounded the same way as the NumPy
reference, and torch.optim's implementation switches (``foreach``, ``fused``, ``capturable``,
``differentiable``) are not accepted; ``implementation`` (:data:`IMPLEMENTATIONS`, default ``"auto"``)
chooses how the rule is executed, always with the same bits: per tensor, or over flat state buffers,
eager or compiled by inductor.
"""

from __future__ import annotations

import uniopt

from ._optimizer import AUTO_COMPILE_MIN, IMPLEMENTATIONS, UnioptOptimizer
from ._porting import export_state, from_torch_optim, import_state, to_torch_optim

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
    "to_torch_optim",
]


class SGD(UnioptOptimizer):
    """SGD with optional (Nesterov) momentum; the math is :class:`uniopt.SGD`'s."""

    spec_class = uniopt.SGD


class Adagrad(UnioptOptimizer):
    """Adagrad; the math is :class:`uniopt.Adagrad`'s."""

    spec_class = uniopt.Adagrad


class RMSprop(UnioptOptimizer):
    """RMSprop (centered, momentum); the math is :class:`uniopt.RMSprop`'s."""

    spec_class = uniopt.RMSprop


class Adam(UnioptOptimizer):
    """Adam (AMSGrad); the math is :class:`uniopt.Adam`'s."""

    spec_class = uniopt.Adam


class AdamW(UnioptOptimizer):
    """AdamW; the math is :class:`uniopt.AdamW`'s."""

    spec_class = uniopt.AdamW


class RAdam(UnioptOptimizer):
    """Rectified Adam; the math is :class:`uniopt.RAdam`'s."""

    spec_class = uniopt.RAdam
