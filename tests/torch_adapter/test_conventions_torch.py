"""``convention=`` through uniopt.torch: a param-group hyperparameter like any other."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import uniopt.torch as ut


def test_convention_defaults_and_param_groups():
    w, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    opt = ut.RMSprop([w], convention="keras")
    assert {k: opt.defaults[k] for k in ("lr", "alpha", "eps", "convention")} == {
        "lr": float(np.float32(1e-3)),  # Keras keeps its learning rate in a float32 variable
        "alpha": 0.9,
        "eps": 1e-7,
        "convention": "keras",
    }
    opt.add_param_group({"params": [b], "convention": "torch", "alpha": 0.99, "eps": 1e-8, "lr": 1e-2})
    assert [g["convention"] for g in opt.param_groups] == ["keras", "torch"]


def test_a_convention_torch_lacks_is_refused():
    with pytest.raises(ValueError, match=r"degenerated_to_sgd=False has no counterpart"):
        ut.RAdam([torch.nn.Parameter(torch.zeros(1))], convention="torch", degenerated_to_sgd=False)
