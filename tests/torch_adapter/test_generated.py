"""uniopt.torch's classes are generated from the table: one per row with torch names, carrying the
row's torch.optim names, and a row added to the table becomes a working class with no adapter code.
Numbers are checked against the NumPy run of the core spec."""

from __future__ import annotations

import dataclasses
import inspect
from typing import ClassVar

import numpy as np
import pytest
import torch

import uniopt
import uniopt.torch as ut
from uniopt.registry import TABLE, OptimizerInfo, TorchNames
from uniopt.torch import _make

ROWS = [pytest.param(info, id=info.name) for info in TABLE if info.torch is not None]


@pytest.mark.parametrize("info", ROWS)
def test_every_row_with_torch_names_is_an_exported_class_of_its_names(info):
    cls = getattr(ut, info.name)
    assert info.name in ut.__all__ and ut.OPTIMIZERS[info.name] is cls
    assert (cls.__module__, cls.__qualname__) == ("uniopt.torch", info.name)
    assert issubclass(cls, ut.UnioptOptimizer) and cls.spec_class is info.spec
    assert cls.positional == info.torch.positional and cls.torch_options == dict(info.torch.options)
    assert cls.state_at_construction is info.torch.state_at_construction
    assert hasattr(cls, "share_memory") == info.torch.state_at_construction  # torch.optim: Adagrad's only
    doc = inspect.getdoc(cls)
    assert f":class:`uniopt.{info.name}`" in doc and info.spec.reference in doc
    for field in dataclasses.fields(info.spec):
        assert f"``{field.name}" in doc, field.name
    if info.torch.native is not None:
        assert f"``torch.optim.{info.torch.native}``" in doc
        native = inspect.signature(getattr(torch.optim, info.torch.native)).parameters
        # torch.optim's positional parameters after params, in its order
        positional = [
            n
            for n, p in native.items()
            if n != "params" and p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        ]
        assert list(info.torch.positional) == positional
    else:
        assert f"torch.optim has no {info.name}" in doc


def test_lion_has_no_torch_native_and_takes_the_spec_names():
    p = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = ut.Lion([p], 1e-2, (0.8, 0.9), 0.1)
    assert (opt.defaults["lr"], opt.defaults["betas"], opt.defaults["weight_decay"]) == (
        1e-2,
        (0.8, 0.9),
        0.1,
    )
    assert not hasattr(torch.optim, "Lion")


@dataclasses.dataclass(frozen=True)
class Doubled(uniopt.Adam):
    """An Adam under another name, standing for a spec added to the table."""

    name: ClassVar[str] = "Doubled"
    reference: ClassVar[str] = "a test"


def test_a_new_row_becomes_a_working_class_with_no_adapter_code():
    info = OptimizerInfo(
        Doubled, cases=(), error_cases=(), torch=TorchNames(None, ("lr", "betas"), {"foreach": None})
    )
    cls = _make(info)
    assert cls.__name__ == "Doubled" and "torch.optim has no Doubled" in cls.__doc__
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(7).astype(np.float32)
    grads = [rng.standard_normal(7).astype(np.float32) for _ in range(4)]
    p = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = cls([p], 0.01, (0.8, 0.99), eps=1e-6)
    assert opt.defaults["foreach"] is None
    spec = Doubled(lr=0.01, betas=(0.8, 0.99), eps=1e-6)
    params, state = [p0.copy()], spec.init([p0.copy()])
    for g in grads:
        p.grad = torch.from_numpy(g.copy())
        opt.step()
        params, state = spec.update([g], state, params)
    np.testing.assert_array_equal(p.detach().numpy().view(np.int32), params[0].view(np.int32))
    assert opt.state_dict()["uniopt"]["optimizer"] == "Doubled"


def test_state_at_construction_creates_state_and_shares_it():
    info = OptimizerInfo(
        Doubled, cases=(), error_cases=(), torch=TorchNames(None, ("lr",), state_at_construction=True)
    )
    cls = _make(info)
    p = torch.nn.Parameter(torch.zeros(4))
    opt = cls([p])
    assert set(opt.state[p]) == {"step", "exp_avg", "exp_avg_sq"} and int(opt.state[p]["step"]) == 0
    opt.share_memory()
    assert opt.state[p]["exp_avg"].is_shared() and opt.state[p]["exp_avg_sq"].is_shared()
    assert not hasattr(ut.Adam, "share_memory")
