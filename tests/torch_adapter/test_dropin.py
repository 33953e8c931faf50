"""uniopt.torch is a drop-in for torch.optim: the inputs torch.optim users pass work the same way.

Each test runs torch.optim's own optimizer side by side with the same input (generators, named
parameters, positional arguments, implementation switches, tensor hyperparameters, older
state_dicts, duplicates, hooks, copies) and compares what torch.optim does; where numbers are
compared bitwise, the expected values come from the NumPy run of the core spec. uniopt and
torch.optim round differently (docs/torch.md), so side-by-side training is compared in float64 to a
relative 1e-9.
"""

from __future__ import annotations

import copy
import io
import pickle
import re
import warnings

import numpy as np
import pytest
import torch

import uniopt
import uniopt.torch as ut
from uniopt.registry import TABLE

# every row of the table that torch.optim has, but those twinned in their own file
TWINNED_ELSEWHERE = {
    "Muon": (
        "test_muon_torch.py: torch.optim.Muon refuses the biases of these nets (2-D parameters only), "
        "and its bfloat16 Newton-Schulz puts it further from the torch convention than these twins' "
        "1e-9 (a bfloat16 ulp where torch's fused kernels cross a rounding boundary): it is compared "
        "there within a stated bound, with its own refusals, positions and state_dict"
    )
}
NAMES = [
    info.name
    for info in TABLE
    if info.torch is not None and info.torch.native is not None and info.name not in TWINNED_ELSEWHERE
]
# hyperparameters that make every optimizer keep state and use its main branches
KWARGS = {
    "SGD": {"lr": 0.05, "momentum": 0.9},
    "Adagrad": {"lr": 0.05},
    "RMSprop": {"lr": 0.01, "momentum": 0.5},
    "Adam": {"lr": 0.05},
    "AdamW": {"lr": 0.05},
    "RAdam": {"lr": 0.05},
    "Adamax": {"lr": 0.05},
    "NAdam": {"lr": 0.05},
    "Adadelta": {"lr": 1.0},
    "Adafactor": {"lr": 0.05, "weight_decay": 0.01},
}
# the torch.optim optimizers with a fused argument, with a capturable one
FUSED = [name for name in NAMES if "fused" in getattr(torch.optim, name).__init__.__code__.co_varnames]
DIFFERENTIABLE = [
    name for name in NAMES if "differentiable" in getattr(torch.optim, name).__init__.__code__.co_varnames
]
CAPTURABLE = [
    name for name in NAMES if "capturable" in getattr(torch.optim, name).__init__.__code__.co_varnames
]
DERIVED = {"mu_product"}  # torch.optim.NAdam's state entry that uniopt derives from the step count


def _extensions(name: str) -> set[str]:
    """The keys uniopt.torch's groups hold beyond torch.optim's: ``convention``, RAdam's
    ``degenerated_to_sgd``, and the row's ``TorchNames.extensions`` (Adafactor's optax arguments)."""
    info = next(info for info in TABLE if info.name == name)
    return {"convention", "degenerated_to_sgd", *info.torch.extensions}


def _net(seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2)).double()


def _train(net: torch.nn.Module, opt: torch.optim.Optimizer, steps: int = 6, sched=None) -> None:
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(8, 4, generator=gen, dtype=torch.float64)
        opt.zero_grad()
        net(x).pow(2).sum().backward()
        opt.step()
        if sched is not None:
            sched.step()


def _assert_close(net: torch.nn.Module, twin: torch.nn.Module) -> None:
    for p, q in zip(net.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)


def _assert_equal(net: torch.nn.Module, twin: torch.nn.Module) -> None:
    for p, q in zip(net.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


def _pair(name: str, make_params, **kwargs):
    """Two identical nets, one with ``uniopt.torch.<name>`` and one with ``torch.optim.<name>``,
    each built by ``make_params(net)`` (called once per net, so generators are fresh)."""
    net, twin = _net(), _net()
    convention = {} if "convention" in kwargs else {"convention": "torch"}
    opt = getattr(ut, name)(make_params(net), **kwargs, **convention)
    ref = getattr(torch.optim, name)(make_params(twin), **kwargs)
    return net, opt, twin, ref


# -- 1. params given as generators, read once ---------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_dict_groups_whose_params_are_generators_train_like_torch_optim(name):
    def groups(net):
        return [{"params": net[0].parameters()}, {"params": net[2].parameters(), "lr": 1e-3}]

    net, opt, twin, ref = _pair(name, groups, **KWARGS[name])
    assert [len(g["params"]) for g in opt.param_groups] == [len(g["params"]) for g in ref.param_groups]
    assert [len(g["params"]) for g in opt.param_groups] == [2, 2]
    before = [p.detach().clone() for p in net.parameters()]
    _train(net, opt)
    _train(twin, ref)
    assert all(not torch.equal(p, b) for p, b in zip(net.parameters(), before, strict=True))
    _assert_close(net, twin)


@pytest.mark.parametrize("name", NAMES)
def test_add_param_group_with_a_generator_adds_and_trains_its_params(name):
    net, opt, twin, ref = _pair(name, lambda n: n[0].parameters(), **KWARGS[name])
    opt.add_param_group({"params": net[2].parameters(), "lr": 1e-3})
    ref.add_param_group({"params": twin[2].parameters(), "lr": 1e-3})
    assert len(opt.param_groups[1]["params"]) == len(ref.param_groups[1]["params"]) == 2
    last = net[2].weight.detach().clone()
    _train(net, opt)
    _train(twin, ref)
    assert not torch.equal(net[2].weight, last)
    _assert_close(net, twin)


def test_top_level_params_may_be_a_one_shot_iterator():
    net, opt, twin, ref = _pair("Adam", lambda n: map(lambda p: p, n.parameters()), lr=0.05)
    assert len(opt.param_groups[0]["params"]) == len(ref.param_groups[0]["params"]) == 4
    _train(net, opt)
    _train(twin, ref)
    _assert_close(net, twin)


def test_a_set_of_params_in_a_group_is_refused_as_torch_optim_refuses_it():
    params = set(_net().parameters())
    with pytest.raises(TypeError, match="ordered collections") as native:
        torch.optim.Adam([{"params": params}])
    with pytest.raises(TypeError, match=re.escape(str(native.value))):
        ut.Adam([{"params": params}])


# -- 2. named parameters -------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_named_parameters_are_accepted_and_their_names_recorded(name):
    net, opt, twin, ref = _pair(name, lambda n: n.named_parameters(), **KWARGS[name])
    expected = ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert ref.param_groups[0]["param_names"] == expected
    assert opt.param_groups[0]["param_names"] == expected
    assert opt.param_groups[0]["params"] == list(net.parameters())
    _train(net, opt)
    _train(twin, ref)
    _assert_close(net, twin)
    assert opt.state_dict()["param_groups"][0]["param_names"] == expected
    assert ref.state_dict()["param_groups"][0]["param_names"] == expected


def test_named_parameters_inside_dict_groups_and_a_resumed_run():
    def groups(net):
        return [
            {"params": net[0].named_parameters(prefix="0")},
            {"params": net[2].named_parameters(prefix="2"), "lr": 1e-3},
        ]

    net, opt, twin, ref = _pair("Adam", groups, lr=0.05)
    assert [g["param_names"] for g in opt.param_groups] == [g["param_names"] for g in ref.param_groups]
    _train(net, opt, steps=3)
    _train(twin, ref, steps=3)
    resumed = ut.Adam(groups(net), lr=0.05, convention="torch")
    resumed.load_state_dict(opt.state_dict())
    assert resumed.param_groups[1]["param_names"] == ["2.weight", "2.bias"]
    _train(net, resumed, steps=3)
    _train(twin, ref, steps=3)
    _assert_close(net, twin)


def test_mixing_named_and_unnamed_params_is_refused_as_torch_optim_does():
    net = _net()
    mixed = [("0.weight", net[0].weight), net[0].bias]
    with pytest.raises(ValueError, match="with/without names") as native:
        torch.optim.Adam(mixed)
    with pytest.raises(ValueError, match=re.escape(str(native.value))):
        ut.Adam(mixed)
    opt = ut.Adam(net[0].named_parameters())
    with pytest.raises(ValueError, match="cannot add param group without names"):
        opt.add_param_group({"params": net[2].parameters()})
    assert len(opt.param_groups) == 1


# -- 2b. parameters torch.optim accepts without stepping them yet ---------------------------------


def _lazy_net() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.LazyLinear(3, dtype=torch.float64),
        torch.nn.Tanh(),
        torch.nn.Linear(3, 2, dtype=torch.float64),
    )


def _dry_run(net: torch.nn.Module) -> None:
    torch.manual_seed(1)  # the lazy layer's initial values
    net(torch.zeros(1, 4, dtype=torch.float64))


@pytest.mark.parametrize("name", NAMES)
def test_a_lazy_modules_parameters_are_accepted_before_they_are_materialized(name):
    # torch.optim.Adam, SGD and most others take a LazyLinear's uninitialized parameters (their
    # state comes at the first step); uniopt checks them at the first step after they get a shape
    net = _lazy_net()
    opt = getattr(ut, name)(net.parameters(), **KWARGS[name], convention="torch")
    assert torch.nn.parameter.is_lazy(net[0].weight)
    _dry_run(net)
    twin = _lazy_net()
    _dry_run(twin)  # torch's documented order: materialize, then build the optimizer
    ref = getattr(torch.optim, name)(twin.parameters(), **KWARGS[name])
    before = net[0].weight.detach().clone()
    assert torch.equal(before, twin[0].weight)
    _train(net, opt)
    _train(twin, ref)
    assert not torch.equal(net[0].weight, before)
    _assert_close(net, twin)


def test_a_lazy_parameter_is_checked_once_it_has_a_shape():
    # Muon takes 2-D parameters only: a lazy 1-D bias passes construction and is refused at the
    # first step, before anything changes
    torch.manual_seed(0)
    lazy = torch.nn.LazyLinear(3)
    opt = ut.Muon(lazy.parameters(), lr=0.02)
    lazy(torch.randn(2, 4)).sum().backward()
    weight = lazy.weight.detach().clone()
    with pytest.raises(ValueError, match=r"uniopt\.torch\.Muon: .*2-D"):
        opt.step()
    assert torch.equal(lazy.weight, weight) and not opt.state


@pytest.mark.parametrize("name", NAMES)
def test_a_frozen_integer_parameter_is_accepted_and_left_alone_as_by_torch_optim(name):
    # a quantized weight registered as a Parameter with requires_grad=False (torch forbids a
    # gradient on an integer tensor): torch.optim accepts it and never steps it
    def frozen(net):
        net.q = torch.nn.Parameter(torch.arange(-3, 3, dtype=torch.int8), requires_grad=False)
        return net.parameters()

    net, opt, twin, ref = _pair(name, frozen, **KWARGS[name])
    _train(net, opt)
    _train(twin, ref)
    _assert_close(net, twin)
    assert torch.equal(net.q, torch.arange(-3, 3, dtype=torch.int8)) and net.q not in opt.state
    opt.load_state_dict(opt.state_dict())
    _train(net, opt, steps=1)


def test_an_integer_parameter_given_a_gradient_is_refused_before_any_change():
    w = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    q = torch.nn.Parameter(torch.zeros(3, dtype=torch.int8), requires_grad=False)
    opt = ut.Adam([w, q], lr=0.1)
    w.grad = torch.ones(3, dtype=torch.float64)
    opt.step()
    q.grad = torch.ones(3, dtype=torch.int8)  # torch allows assigning it
    state, value = copy.deepcopy(opt.state_dict()), w.detach().clone()
    with pytest.raises(ValueError, match=r"uniopt\.torch\.Adam: parameters must be floating point .*int8"):
        opt.step()
    assert torch.equal(w, value) and torch.equal(q, torch.zeros(3, dtype=torch.int8))
    assert str(opt.state_dict()) == str(state)
    with pytest.raises(ValueError, match=r"floating point or complex, got torch\.int8"):
        ut.SGD([w, q], lr=0.1)  # at construction, where it already has one


def test_a_groups_own_initial_accumulator_value_is_honoured_and_said_to_differ_from_torch_optim():
    # torch.optim.Adagrad starts every sum at its constructor's value, ignoring a group's own
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    ref = torch.optim.Adagrad([{"params": [a]}, {"params": [b], "initial_accumulator_value": 1.0}], lr=0.1)
    assert torch.equal(ref.state[b]["sum"], torch.zeros(2))  # what the warning says torch does
    with pytest.warns(
        UserWarning, match=r"initial_accumulator_value=1\.0 in a param group is honoured"
    ) as seen:
        opt = ut.Adagrad([{"params": [a]}, {"params": [b], "initial_accumulator_value": 1.0}], lr=0.1)
    assert len(seen) == 1 and seen[0].filename == __file__
    assert torch.equal(opt.state[a]["sum"], torch.zeros(2)) and torch.equal(
        opt.state[b]["sum"], torch.ones(2)
    )
    c = torch.zeros(2, requires_grad=True)
    with pytest.warns(UserWarning, match=r"initial_accumulator_value=0\.5 .*constructor's, 0\.0"):
        opt.add_param_group({"params": [c], "initial_accumulator_value": 0.5})
    c.grad = torch.ones(2)
    opt.step()  # a param added later gets its state at its first step (torch.optim's too)
    assert torch.equal(opt.state[c]["sum"], torch.full((2,), 1.5))  # 0.5 + 1**2
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the constructor's own value, given again: nothing to say
        ut.Adagrad(
            [{"params": [a], "initial_accumulator_value": 0.25}], lr=0.1, initial_accumulator_value=0.25
        )


@pytest.mark.parametrize("name", NAMES)
def test_the_signature_lists_torch_optims_arguments_with_their_defaults(name):
    # configuration tools (jsonargparse, LightningCLI) read inspect.signature(cls)
    import inspect

    ours = inspect.signature(getattr(ut, name)).parameters
    theirs = inspect.signature(getattr(torch.optim, name)).parameters
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD

    def by_position(params):
        return [n for n, p in params.items() if p.kind == positional]

    assert by_position(ours) == by_position(theirs)
    for n, p in theirs.items():
        if n != "params":
            assert n in ours and ours[n].default == p.default, n
    assert {"convention", "implementation", "state_dtypes"} <= set(ours)
    # the signature tells the truth: every argument it lists, passed by keyword with its default,
    # builds the optimizer the defaults build
    w = torch.zeros(3, requires_grad=True)
    given = {n: p.default for n, p in ours.items() if n != "params"}
    assert getattr(ut, name)([w], **given).defaults == getattr(ut, name)([w]).defaults


def test_a_subclass_with_its_own_init_has_its_own_signature():
    import inspect

    class Tuned(ut.AdamW):
        def __init__(self, params, warm: float = 0.1):
            super().__init__(params, lr=warm)

    assert list(inspect.signature(Tuned).parameters) == ["params", "warm"]
    assert Tuned([torch.zeros(2, requires_grad=True)]).defaults["lr"] == 0.1


# -- 3. torch.optim's implementation switches ----------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_defaults_hold_torch_optim_keys_and_values(name):
    params = [torch.zeros(2, requires_grad=True)]
    opt, ref = getattr(ut, name)(params), getattr(torch.optim, name)(params)
    for key, value in ref.defaults.items():
        assert opt.defaults[key] == value, key
    assert set(opt.defaults) - set(ref.defaults) <= _extensions(name)
    assert set(opt.param_groups[0]) - set(ref.param_groups[0]) <= _extensions(name)


def _switch_cases():
    for name in NAMES:
        yield name, {"foreach": False}
        yield name, {"foreach": True}
        if name in DIFFERENTIABLE:  # torch.optim.Adafactor has no such argument
            yield name, {"differentiable": False}
        if name in FUSED:
            yield name, {"fused": True}
            yield name, {"fused": False, "foreach": True}
        if name in CAPTURABLE:
            yield name, {"capturable": False}


@pytest.mark.parametrize(("name", "switches"), list(_switch_cases()))
def test_switches_torch_optim_accepts_are_stored_and_never_change_the_numbers(name, switches):
    net, opt, twin, ref = _pair(name, lambda n: n.parameters(), **KWARGS[name], **switches)
    plain = _net()
    plain_opt = getattr(ut, name)(plain.parameters(), **KWARGS[name], convention="torch")
    for key, value in switches.items():
        assert opt.defaults[key] == ref.defaults[key] == value
        assert opt.param_groups[0][key] == value
    _train(net, opt)
    _train(twin, ref)
    _train(plain, plain_opt)
    _assert_equal(net, plain)
    _assert_close(net, twin)


@pytest.mark.parametrize("name", FUSED)
def test_fused_and_foreach_together_raise_as_in_torch_optim(name):
    params = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(RuntimeError, match="cannot be `True` together") as native:
        getattr(torch.optim, name)(params, fused=True, foreach=True)
    with pytest.raises(RuntimeError, match=re.escape(str(native.value))):
        getattr(ut, name)(params, fused=True, foreach=True)


@pytest.mark.parametrize("name", ["Adam", "SGD"])
def test_fused_with_a_complex_param_raises_as_torch_optim_does(name):
    p = torch.zeros(2, dtype=torch.complex64, requires_grad=True)
    p.grad = torch.ones_like(p)
    with pytest.raises(RuntimeError, match="requires all the params to be floating point") as native:
        getattr(torch.optim, name)([p], lr=0.1, fused=True).step()
    with pytest.raises(RuntimeError, match=re.escape(str(native.value))):
        getattr(ut, name)([p], lr=0.1, fused=True)  # here before anything is built
    opt = getattr(ut, name)([torch.zeros(2, requires_grad=True)], fused=True)
    with pytest.raises(RuntimeError, match="requires all the params to be floating point"):
        opt.add_param_group({"params": [p]})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("name", CAPTURABLE)
def test_capturable_true_is_refused_with_the_reason(name):
    with pytest.raises(ValueError, match=r"capturable=True is not supported: .* on the host"):
        getattr(ut, name)([torch.zeros(2, requires_grad=True)], capturable=True)
    opt = getattr(ut, name)([torch.zeros(2, requires_grad=True)])
    with pytest.raises(ValueError, match=r"capturable=True is not supported"):
        opt.add_param_group({"params": [torch.zeros(3, requires_grad=True)], "capturable": True})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_differentiable_true_is_refused_with_the_reason(name):
    with pytest.raises(ValueError, match=r"differentiable=True is not supported: .*torch.no_grad"):
        getattr(ut, name)([torch.zeros(2, requires_grad=True)], differentiable=True)


@pytest.mark.parametrize(
    ("name", "switch"), [("RMSprop", "fused"), ("RAdam", "fused"), ("SGD", "capturable")]
)
def test_a_switch_the_torch_optimizer_lacks_is_an_unexpected_argument(name, switch):
    params = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(TypeError, match=switch):
        getattr(torch.optim, name)(params, **{switch: False})
    with pytest.raises(TypeError, match=re.escape(f"unexpected argument(s) ['{switch}']")):
        getattr(ut, name)(params, **{switch: False})


def test_switch_values_must_be_bools_and_adam_decoupled_weight_decay_is_adamw():
    params = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match=r"foreach='yes'; expected None, True or False"):
        ut.Adam(params, foreach="yes")
    with pytest.raises(ValueError, match=r"capturable=None; expected True or False"):
        ut.Adam(params, capturable=None)
    with pytest.raises(ValueError, match=r"decoupled_weight_decay=True is uniopt.torch.AdamW"):
        ut.Adam(params, decoupled_weight_decay=True)
    assert ut.Adam(params, decoupled_weight_decay=False).defaults["decoupled_weight_decay"] is False
    assert ut.AdamW(params).defaults["decoupled_weight_decay"] is True
    assert torch.optim.AdamW(params).defaults["decoupled_weight_decay"] is True


POSITIONAL = {
    "SGD": (0.1, 0.9, 0.0, 0.01, True),
    "Adagrad": (0.1, 0.01, 0.02, 0.5, 1e-9, False),
    "RMSprop": (0.1, 0.9, 1e-7, 0.01, 0.5, True, False, False, True, False),
    "Adam": (0.1, (0.8, 0.99), 1e-7, 0.01, True),
    "AdamW": (0.1, (0.8, 0.99), 1e-7, 0.01, True),
    "RAdam": (0.1, (0.8, 0.99), 1e-7, 0.01, True),
    "Adamax": (0.1, (0.8, 0.99), 1e-7, 0.01, False),
    "NAdam": (0.1, (0.8, 0.99), 1e-7, 0.01, 0.005, True),
    "Adadelta": (0.5, 0.8, 1e-5, 0.01, False),
    "Adafactor": (0.05, -0.5, (1e-3, 1e-2), 1.5, 0.01),
}


@pytest.mark.parametrize("name", NAMES)
def test_positional_arguments_take_torch_optim_positions(name):
    params = [torch.zeros(2, requires_grad=True)]
    args = POSITIONAL[name]
    opt, ref = getattr(ut, name)(params, *args), getattr(torch.optim, name)(params, *args)
    assert len(args) == len(type(opt).positional)
    for key in type(opt).positional:
        assert opt.defaults[key] == ref.defaults[key], key
    with pytest.raises(TypeError, match="positional arguments"):
        getattr(ut, name)(params, *args, None)
    with pytest.raises(TypeError, match="multiple values for argument 'lr'"):
        getattr(ut, name)(params, 0.1, lr=0.2)


# -- 4. older state_dicts and torch.optim's ------------------------------------------------------

P0 = np.array([1.0, -2.0, 3.0, 0.5])


def _grad(t: int) -> np.ndarray:
    return np.random.default_rng(t).standard_normal(4)


def _core(spec, steps):
    params, state = [P0.copy()], spec.init([P0])
    for t in range(1, steps + 1):
        params, state = spec.update([_grad(t)], state, params)
    return params[0], state


def _older_adam_state_dict(amsgrad: bool = False, convention: str = "uniopt"):
    """An Adam state_dict as uniopt.torch wrote it before the implementation switches were
    accepted (no foreach, fused, capturable, differentiable or decoupled_weight_decay keys), after
    3 steps of the core spec."""
    spec = uniopt.Adam(lr=0.05, amsgrad=amsgrad, convention=convention)
    _, state = _core(spec, 3)
    entry = {"step": torch.tensor(3)} | {k: torch.from_numpy(v.copy()) for k, v in state.slots[0].items()}
    group = {
        "lr": 0.05,
        "betas": (0.9, 0.999),
        "eps": spec.eps,
        "weight_decay": 0.0,
        "amsgrad": amsgrad,
        "maximize": False,
        "convention": convention,
        "params": [0],
    }
    return {"state": {0: entry}, "param_groups": [group], "uniopt": {"optimizer": "Adam", "format": 1}}


@pytest.mark.parametrize(
    "missing",
    [
        (),  # as written before the switches were stored: none of their keys
        ("maximize",),
        ("amsgrad",),
        ("eps",),
        ("convention",),
        ("maximize", "amsgrad", "eps", "convention", "weight_decay", "betas"),
    ],
)
def test_a_state_dict_group_lacking_keys_loads_with_their_defaults(missing):
    older = _older_adam_state_dict()
    for key in missing:
        del older["param_groups"][0][key]
    p = torch.from_numpy(_core(uniopt.Adam(lr=0.05), 3)[0].copy())
    opt = ut.Adam([p], lr=0.9, amsgrad=True, eps=0.1, maximize=True)  # other values than saved
    opt.load_state_dict(older)
    group = opt.param_groups[0]
    assert (group["maximize"], group["amsgrad"], group["eps"], group["convention"]) == (
        False,
        False,
        1e-8,
        "uniopt",
    )
    assert (group["foreach"], group["fused"], group["capturable"], group["differentiable"]) == (
        None,
        None,
        False,
        False,
    )
    for t in (4, 5):
        p.grad = torch.from_numpy(_grad(t))
        opt.step()
    expected, state = _core(uniopt.Adam(lr=0.05), 5)
    np.testing.assert_array_equal(p.numpy(), expected)
    np.testing.assert_array_equal(opt.state[p]["exp_avg_sq"].numpy(), state.slots[0]["exp_avg_sq"])


def test_torch_optim_fills_the_same_switch_keys_of_an_older_state_dict():
    p = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    p.grad = torch.ones_like(p)
    ref = torch.optim.Adam([p], lr=0.05)
    ref.step()
    saved = ref.state_dict()
    for key in ("foreach", "fused", "capturable", "differentiable", "maximize", "amsgrad"):
        del saved["param_groups"][0][key]
    ref.load_state_dict(saved)
    older = _older_adam_state_dict()
    for key in ("foreach", "fused", "capturable", "differentiable", "maximize", "amsgrad"):
        older["param_groups"][0].pop(key, None)
    opt = ut.Adam([torch.zeros(4, dtype=torch.float64)])
    opt.load_state_dict(older)
    for key in ("foreach", "fused", "capturable", "differentiable", "maximize", "amsgrad"):
        assert opt.param_groups[0][key] == ref.param_groups[0][key], key


def test_a_keras_convention_group_lacking_eps_gets_the_keras_default():
    older = _older_adam_state_dict(convention="keras")
    del older["param_groups"][0]["eps"]
    opt = ut.Adam([torch.zeros(4, dtype=torch.float64)], convention="keras")
    opt.load_state_dict(older)
    assert opt.param_groups[0]["eps"] == 1e-7  # keras.optimizers.Adam's epsilon


def test_a_pickled_optimizer_of_the_older_format_unpickles_with_the_switches():
    p = torch.zeros(4, dtype=torch.float64)
    opt = ut.Adam([p])
    state = opt.__getstate__()
    for key in ("foreach", "fused", "capturable", "differentiable", "decoupled_weight_decay"):
        del state["defaults"][key]
        del state["param_groups"][0][key]
    older = ut.Adam.__new__(ut.Adam)
    older.__setstate__(state)
    assert older.defaults["fused"] is None and older.param_groups[0]["capturable"] is False


def _torch_groups(net):
    return [
        {"params": net[0].parameters()},
        {"params": net[2].parameters(), "lr": 0.01, "weight_decay": 0.1},
    ]


def test_a_torch_optim_state_dict_names_the_function_that_loads_it():
    net, twin = _net(), _net()
    ref = torch.optim.Adam(twin.parameters(), lr=0.05)
    _train(twin, ref, steps=3)
    opt = ut.Adam(net.parameters(), lr=0.05)
    with pytest.raises(ValueError, match=r"non-uniopt optimizer") as err:
        opt.load_state_dict(ref.state_dict())
    assert "uniopt.torch.load_torch_optim_state_dict(optimizer, state_dict)" in str(err.value)
    assert not opt.state  # nothing was loaded


@pytest.mark.parametrize("name", NAMES)
def test_a_torch_optim_checkpoint_with_two_groups_continues_under_uniopt(name):
    net, twin = _net(), _net()
    ref = getattr(torch.optim, name)(_torch_groups(twin), **KWARGS[name])
    _train(twin, ref, steps=3)
    checkpoint = torch.load(_saved(ref.state_dict()), weights_only=True)
    net.load_state_dict(twin.state_dict())
    opt = getattr(ut, name)(_torch_groups(net), lr=0.5, convention="torch")  # other lr: the dict's wins
    ut.load_torch_optim_state_dict(opt, checkpoint, step=3 if name == "SGD" else None)
    for group, ref_group in zip(opt.param_groups, ref.param_groups, strict=True):
        assert (group["lr"], group["weight_decay"]) == (ref_group["lr"], ref_group["weight_decay"])
        assert group["convention"] == "torch"
    for p, q in zip(net.parameters(), twin.parameters(), strict=True):
        assert int(opt.state[p]["step"]) == 3 and opt.state[p]["step"].dtype == torch.int64
        assert set(opt.state[p]) - {"step"} == set(ref.state[q]) - {"step", *DERIVED}
        for key in set(ref.state[q]) - {"step", *DERIVED}:
            assert torch.equal(opt.state[p][key], ref.state[q][key])
    _train(net, opt, steps=3)
    _train(twin, ref, steps=3)
    _assert_close(net, twin)


def test_a_nadam_checkpoint_whose_mu_product_the_step_count_does_not_give_is_refused():
    # torch.optim.NAdam multiplies mu_product by each step's mu: after betas changed during the run
    # it is no function of the step count, which is all uniopt keeps
    net, twin = _net(), _net()
    ref = torch.optim.NAdam(twin.parameters(), lr=0.05)
    _train(twin, ref, steps=2)
    ref.param_groups[0]["betas"] = (0.8, 0.999)
    _train(twin, ref, steps=1)
    opt = ut.NAdam(net.parameters(), convention="torch")
    with pytest.raises(ValueError, match=r"has mu_product=.* but 3 steps with these hyperparameters give"):
        ut.load_torch_optim_state_dict(opt, ref.state_dict())
    assert not opt.state
    with pytest.raises(ValueError, match=r"has mu_product="):
        ut.from_torch_optim(ref)


def _saved(state_dict) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return buffer


def test_load_torch_optim_state_dict_refuses_what_does_not_fit():
    net = _net()
    sgd = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    _train(net, sgd, steps=2)
    opt = ut.SGD(net.parameters(), lr=0.1, momentum=0.9)
    keeps_none = r"no step count \(torch.optim.SGD and torch.optim.Muon keep none\); pass step="
    with pytest.raises(ValueError, match=keeps_none):
        ut.load_torch_optim_state_dict(opt, sgd.state_dict())
    with pytest.raises(ValueError, match=r"step=0; expected the number of steps taken"):
        ut.load_torch_optim_state_dict(opt, sgd.state_dict(), step=0)
    captured = sgd.state_dict()  # as a CUDA run with capturable=True (or differentiable) saves it
    captured["param_groups"][0].update(capturable=True, differentiable=True, foreach=True)
    loaded = ut.SGD(net.parameters(), lr=0.1, momentum=0.9)
    ut.load_torch_optim_state_dict(loaded, captured, step=2)
    assert "capturable" not in loaded.param_groups[0]  # torch.optim.SGD has no such argument
    assert (loaded.param_groups[0]["differentiable"], loaded.param_groups[0]["foreach"]) == (False, None)
    adam_run = torch.optim.Adam(net.parameters())
    _train(net, adam_run, steps=1)
    captured = adam_run.state_dict()
    captured["param_groups"][0]["capturable"] = True
    adam_loaded = ut.Adam(net.parameters())
    ut.load_torch_optim_state_dict(adam_loaded, captured)
    assert adam_loaded.param_groups[0]["capturable"] is False
    plain_sgd = torch.optim.SGD(net.parameters(), lr=0.1)  # momentum 0: a None buffer per param
    _train(net, plain_sgd, steps=1)
    ut.load_torch_optim_state_dict(ut.SGD(net.parameters()), plain_sgd.state_dict())
    adamw = torch.optim.AdamW(net.parameters())
    _train(net, adamw, steps=1)
    adam = ut.Adam(net.parameters(), lr=0.3)
    with pytest.raises(ValueError, match=r"decoupled_weight_decay=True is uniopt.torch.AdamW"):
        ut.load_torch_optim_state_dict(adam, adamw.state_dict())
    assert adam.param_groups[0]["lr"] == 0.3 and not adam.state
    with pytest.raises(ValueError, match=r"saved by uniopt.torch; use optimizer.load_state_dict"):
        ut.load_torch_optim_state_dict(adam, adam.state_dict())
    with pytest.raises(TypeError, match=r"expected a uniopt\.torch optimizer"):
        ut.load_torch_optim_state_dict(adamw, adamw.state_dict())


def test_a_step_count_above_2_to_the_24_survives_a_fused_group():
    p = torch.zeros(3, dtype=torch.float64)
    p.grad = torch.ones_like(p)
    opt = ut.Adam([p], lr=0.1, fused=True)
    opt.step()
    opt.state[p]["step"].fill_(2**24 + 1)  # float32, as torch.optim casts a fused group's step, rounds it
    saved = opt.state_dict()
    resumed = ut.Adam([torch.zeros(3, dtype=torch.float64)], fused=True)
    resumed.load_state_dict(saved)
    (q,) = resumed.param_groups[0]["params"]
    assert int(resumed.state[q]["step"]) == 2**24 + 1 and resumed.state[q]["step"].device.type == "cpu"


# -- 5. tensor hyperparameters -------------------------------------------------------------------


@pytest.mark.parametrize("implementation", ["auto", "loop"])
@pytest.mark.parametrize("name", NAMES)
def test_a_tensor_lr_gives_the_numbers_of_its_value(name, implementation):
    kwargs = {k: v for k, v in KWARGS[name].items() if k != "lr"}
    lr = torch.tensor(0.05, dtype=torch.float64)
    net, opt, twin, ref = _pair(name, lambda n: n.parameters(), lr=lr, **kwargs)
    assert opt.param_groups[0]["lr"] is lr  # kept as torch.optim keeps it
    plain = _net()
    plain_opt = getattr(ut, name)(
        plain.parameters(), lr=0.05, implementation=implementation, convention="torch", **kwargs
    )
    opt.implementation = implementation
    _train(net, opt)
    _train(twin, ref)
    _train(plain, plain_opt)
    _assert_equal(net, plain)
    _assert_close(net, twin)


def test_a_scheduler_writes_a_tensor_lr_in_place_as_with_torch_optim():
    net, twin = _net(), _net()
    opt = ut.Adam(net.parameters(), lr=torch.tensor(0.05, dtype=torch.float64), convention="torch")
    ref = torch.optim.Adam(twin.parameters(), lr=torch.tensor(0.05, dtype=torch.float64))
    group_lr = opt.param_groups[0]["lr"]
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    ref_sched = torch.optim.lr_scheduler.StepLR(ref, step_size=2, gamma=0.5)
    _train(net, opt, steps=5, sched=sched)
    _train(twin, ref, steps=5, sched=ref_sched)
    assert opt.param_groups[0]["lr"] is group_lr
    assert float(group_lr) == float(ref.param_groups[0]["lr"]) == 0.05 * 0.25
    _assert_close(net, twin)
    resumed = ut.Adam(net.parameters(), lr=torch.tensor(0.3, dtype=torch.float64))
    resumed.load_state_dict(opt.state_dict())
    assert float(resumed.param_groups[0]["lr"]) == 0.05 * 0.25


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_betas_as_tensors_give_the_numbers_of_their_values(name):
    betas = (torch.tensor(0.8, dtype=torch.float64), torch.tensor(0.99, dtype=torch.float64))
    net, opt, twin, ref = _pair(name, lambda n: n.parameters(), lr=0.05, betas=betas)
    plain = _net()
    plain_opt = getattr(ut, name)(plain.parameters(), lr=0.05, betas=(0.8, 0.99), convention="torch")
    _train(net, opt)
    _train(twin, ref)
    _train(plain, plain_opt)
    _assert_equal(net, plain)
    _assert_close(net, twin)


def test_a_tensor_hyperparameter_of_several_elements_is_refused():
    params = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match="1-element"):
        torch.optim.Adam(params, lr=torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match=r"lr is a tensor of 2 elements; expected a float or a 1-element"):
        ut.Adam(params, lr=torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match=r"Adam: lr=-1\.0 is out of range"):
        ut.Adam(params, lr=torch.tensor(-1.0))


# -- 6. Adagrad's state from construction, share_memory -----------------------------------------


def test_adagrad_creates_its_state_at_construction_as_torch_optim():
    net, opt, twin, ref = _pair("Adagrad", lambda n: n.parameters(), initial_accumulator_value=0.5)
    assert len(opt.state) == len(ref.state) == 4
    for p, q in zip(net.parameters(), twin.parameters(), strict=True):
        assert set(opt.state[p]) == set(ref.state[q]) == {"step", "sum"}
        assert int(opt.state[p]["step"]) == 0
        assert torch.equal(opt.state[p]["sum"], ref.state[q]["sum"])
    _train(net, opt)
    _train(twin, ref)
    _assert_close(net, twin)


def test_adagrad_share_memory_keeps_the_state_shared_while_training():
    net, opt, twin, ref = _pair("Adagrad", lambda n: n.parameters(), lr=0.05)
    opt.share_memory()
    ref.share_memory()
    pointers = [opt.state[p]["sum"].data_ptr() for p in net.parameters()]
    assert all(opt.state[p]["sum"].is_shared() for p in net.parameters())
    _train(net, opt)
    _train(twin, ref)
    assert [opt.state[p]["sum"].data_ptr() for p in net.parameters()] == pointers
    assert all(opt.state[p]["sum"].is_shared() for p in net.parameters())
    _assert_close(net, twin)


# -- 7. duplicates -------------------------------------------------------------------------------


def test_a_parameter_listed_twice_in_a_group_is_refused_by_name():
    net = _net()
    twice = [net[0].weight, net[0].bias, net[0].weight]
    with pytest.warns(UserWarning, match="duplicate parameters"):
        torch.optim.Adam(twice)  # torch.optim would update it twice per step
    with pytest.raises(ValueError, match=r"lists a parameter of shape \(3, 4\) twice \(positions 0 and 2\)"):
        ut.Adam(twice)
    named = [("w", net[0].weight), ("b", net[0].bias), ("w again", net[0].weight)]
    with pytest.raises(ValueError, match=r"lists a parameter 'w again' twice"):
        ut.Adam(named)
    opt = ut.Adam([net[2].weight])
    with pytest.raises(ValueError, match="twice"):
        opt.add_param_group({"params": twice})
    assert len(opt.param_groups) == 1


def test_a_parameter_in_two_groups_is_refused_as_in_torch_optim():
    net = _net()
    groups = [{"params": [net[0].weight]}, {"params": [net[0].weight, net[0].bias]}]
    with pytest.raises(ValueError, match="more than one parameter group") as native:
        torch.optim.Adam(copy.copy(g) for g in groups)
    with pytest.raises(ValueError, match=re.escape(str(native.value))):
        ut.Adam(copy.copy(g) for g in groups)
    opt = ut.Adam([net[0].weight])
    with pytest.raises(ValueError, match=re.escape(str(native.value))):
        opt.add_param_group({"params": [net[0].bias, net[0].weight]})
    assert len(opt.param_groups) == 1


# -- the rest of the Optimizer contract ----------------------------------------------------------


def _hook_calls(opt: torch.optim.Optimizer, net: torch.nn.Module) -> list[str]:
    calls: list[str] = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("step_pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("step_post"))
    opt.register_state_dict_pre_hook(lambda o: calls.append("state_dict_pre"))
    opt.register_state_dict_post_hook(lambda o, sd: calls.append("state_dict_post"))
    opt.register_load_state_dict_pre_hook(lambda o, sd: calls.append("load_pre"))
    opt.register_load_state_dict_post_hook(lambda o: calls.append("load_post"))
    _train(net, opt, steps=2)
    opt.load_state_dict(opt.state_dict())
    return calls


def test_step_and_state_dict_hooks_run_as_with_torch_optim():
    net, opt, twin, ref = _pair("Adam", lambda n: n.parameters(), lr=0.05)
    assert _hook_calls(opt, net) == _hook_calls(ref, twin)
    assert _hook_calls(ref, twin).count("step_pre") == 2


def test_zero_grad_set_to_none_false_zeroes_as_torch_optim_does():
    net, opt, twin, ref = _pair("SGD", lambda n: n.parameters(), lr=0.05)
    _train(net, opt, steps=1)
    _train(twin, ref, steps=1)
    opt.zero_grad(set_to_none=False)
    ref.zero_grad(set_to_none=False)
    for p, q in zip(net.parameters(), twin.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None
        assert torch.equal(p.grad, torch.zeros_like(p)) and torch.equal(q.grad, torch.zeros_like(q))
    opt.zero_grad()
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copied_optimizer_continues_as_the_original(how):
    net, opt, twin, ref = _pair("Adam", lambda n: n.parameters(), lr=0.05)
    _train(net, opt, steps=3)
    _train(twin, ref, steps=3)
    if how == "deepcopy":
        net_copy, opt_copy = copy.deepcopy((net, opt))
    else:
        net_copy, opt_copy = pickle.loads(pickle.dumps((net, opt)))
    assert opt_copy.implementation == opt.implementation
    assert opt_copy.param_groups[0]["params"] == list(net_copy.parameters())
    _train(net_copy, opt_copy, steps=3)
    _train(twin, ref, steps=3)
    _assert_close(net_copy, twin)
    assert int(opt.state[net[0].weight]["step"]) == 3  # the original is untouched


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("name", [info.name for info in TABLE if info.skip_reason("torch") is None])
def test_every_optimizer_copied_mid_run_steps_as_the_original(name, how):
    """A deep copy or an unpickled copy taken after two steps takes the next two steps as the
    original does, bit for bit (parameters and every state entry). Schedule-Free AdamW's copy
    had failed to load (AttributeError: its groups were completed before the spec cache existed)."""
    torch.manual_seed(0)
    shapes = ((8, 8), (8,)) if name != "Muon" else ((8, 8), (6, 10))
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    opt = getattr(ut, name)(params)
    grads = [
        [torch.randn(s, generator=torch.Generator().manual_seed(10 * t + i)) for i, s in enumerate(shapes)]
        for t in range(4)
    ]

    def step(ps, o, t):
        for p, g in zip(ps, grads[t], strict=True):
            p.grad = g.clone()
        o.step()

    for t in range(2):
        step(params, opt, t)
    copied_params, copied = (
        copy.deepcopy((params, opt)) if how == "deepcopy" else pickle.loads(pickle.dumps((params, opt)))
    )
    for t in range(2, 4):
        step(params, opt, t)
        step(copied_params, copied, t)
    for p, q in zip(params, copied_params, strict=True):
        assert torch.equal(p, q)
        assert opt.state[p].keys() == copied.state[q].keys()
        for key, value in opt.state[p].items():
            assert torch.equal(value, copied.state[q][key]), key


@pytest.mark.parametrize("name", NAMES)
def test_maximize_ascends_as_torch_optim_does(name):
    net, opt, twin, ref = _pair(name, lambda n: n.parameters(), maximize=True, **KWARGS[name])
    _train(net, opt)
    _train(twin, ref)
    _assert_close(net, twin)


@pytest.mark.parametrize("name", NAMES)
def test_repr_lists_the_keys_torch_optim_lists(name):
    params = [torch.zeros(2, requires_grad=True)]
    opt, ref = getattr(ut, name)(params), getattr(torch.optim, name)(params)

    def keys(text: str) -> set[str]:
        return {line.split(":")[0].strip() for line in text.splitlines() if ":" in line}

    assert repr(opt).startswith(f"{name} (\nParameter Group 0\n")
    assert keys(repr(opt)) - keys(repr(ref)) <= _extensions(name)
    assert keys(repr(ref)) <= keys(repr(opt))


def test_convention_is_a_keyword_stored_per_group():
    net = _net()
    opt = ut.Adam(net[0].parameters(), convention="keras")
    assert opt.param_groups[0]["convention"] == "keras" and opt.param_groups[0]["eps"] == 1e-7
    with pytest.raises(TypeError, match="positional arguments"):
        ut.Adam(net.parameters(), 1e-3, (0.9, 0.999), 1e-8, 0.0, False, "torch")
    with pytest.raises(ValueError, match=r"convention='tf' is not available"):
        ut.Adam(net.parameters(), convention="tf")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _train(net, opt, steps=1)


def test_a_group_with_another_convention_takes_that_conventions_defaults():
    net = _net()
    opt = ut.Adam(net[0].parameters(), convention="keras")
    opt.add_param_group({"params": net[2].parameters(), "convention": "torch"})
    # torch.optim.Adam's defaults, not Keras's eps=1e-7 and its float32-rounded lr
    assert (opt.param_groups[1]["eps"], opt.param_groups[1]["lr"]) == (1e-8, 1e-3)
    assert opt.param_groups[0]["lr"] == float(np.float32(1e-3))
    given = ut.Adam(net[0].parameters(), lr=0.01, eps=1e-3, convention="keras")
    given.add_param_group({"params": net[2].parameters(), "convention": "torch"})
    assert (given.param_groups[1]["eps"], given.param_groups[1]["lr"]) == (1e-3, 0.01)  # as given
    same = ut.Adam(net[0].parameters(), convention="keras")
    same.add_param_group({"params": net[2].parameters()})
    assert same.param_groups[1]["eps"] == 1e-7 and same.param_groups[1]["convention"] == "keras"
    unpickled = pickle.loads(pickle.dumps(opt))
    unpickled.add_param_group({"params": [torch.zeros(2, requires_grad=True)], "convention": "torch"})
    assert unpickled.param_groups[2]["eps"] == 1e-8


@pytest.mark.parametrize(
    "step", [3, 3.0, torch.tensor(3.0), torch.tensor([3])], ids=["int", "float", "float32", "1-element"]
)
def test_a_step_saved_as_a_number_or_float_tensor_loads_as_torch_optim_loads_it(step):
    older = _older_adam_state_dict()
    older["state"][0]["step"] = step
    p = torch.from_numpy(_core(uniopt.Adam(lr=0.05), 3)[0].copy())
    opt = ut.Adam([p], lr=0.05)
    opt.load_state_dict(older)
    assert opt.state[p]["step"].dtype == torch.int64 and int(opt.state[p]["step"]) == 3
    for t in (4, 5):
        p.grad = torch.from_numpy(_grad(t))
        opt.step()
    np.testing.assert_array_equal(p.numpy(), _core(uniopt.Adam(lr=0.05), 5)[0])


@pytest.mark.parametrize("step", [2.5, -1, True, "3", torch.tensor([1, 2])])
def test_a_step_that_is_no_step_count_is_refused_before_loading(step):
    older = _older_adam_state_dict()
    older["state"][0]["step"] = step
    opt = ut.Adam([torch.zeros(4, dtype=torch.float64)], lr=0.7)
    with pytest.raises(ValueError, match=r"param 0 has step .*expected a step count.*nothing was loaded"):
        opt.load_state_dict(older)
    assert opt.param_groups[0]["lr"] == 0.7 and not opt.state


def test_load_state_dict_pre_hooks_run_before_the_checks_as_in_torch_optim():
    def fix_lr(optimizer, state_dict):
        state_dict["param_groups"][0]["lr"] = 0.002

    def copy_with_lr(optimizer, state_dict):
        adapted = copy.deepcopy(state_dict)
        adapted["param_groups"][0]["lr"] = 0.003
        return adapted

    for make in (ut.Adam, torch.optim.Adam):
        opt = make([torch.zeros(4, dtype=torch.float64, requires_grad=True)], lr=0.05)
        saved = opt.state_dict()
        saved["param_groups"][0]["lr"] = -1.0  # invalid until a hook fixes it
        opt.register_load_state_dict_pre_hook(fix_lr)
        opt.load_state_dict(saved)
        assert opt.param_groups[0]["lr"] == 0.002
        opt.register_load_state_dict_pre_hook(copy_with_lr)
        opt.load_state_dict(saved)
        assert opt.param_groups[0]["lr"] == 0.003
        assert saved["param_groups"][0]["lr"] == 0.002  # the first hook wrote into the given dict
    opt = ut.Adam([torch.zeros(4, dtype=torch.float64)], lr=0.05)
    opt.register_load_state_dict_pre_hook(
        lambda o, sd: {**sd, "param_groups": [{**sd["param_groups"][0], "lr": -1.0}]}
    )
    with pytest.raises(ValueError, match=r"lr=-1\.0 is out of range"):
        opt.load_state_dict(opt.state_dict())
    assert opt.param_groups[0]["lr"] == 0.05


def test_a_state_dict_pre_hook_may_keep_a_non_parameter_entry_in_the_state():
    net, opt, twin, ref = _pair("Adam", lambda n: n.parameters(), lr=0.05)
    for o in (opt, ref):
        o.register_state_dict_pre_hook(lambda optimizer: optimizer.state.__setitem__("test", 1))
    _train(net, opt, steps=2)
    _train(twin, ref, steps=2)
    assert opt.state_dict()["state"]["test"] == ref.state_dict()["state"]["test"] == 1
    _train(net, opt, steps=2)
    _train(twin, ref, steps=2)
    _assert_close(net, twin)


@pytest.mark.parametrize("name", NAMES)
def test_a_state_dict_survives_torch_load_with_weights_only(name):
    net, opt, twin, ref = _pair(name, lambda n: n.named_parameters(), **KWARGS[name])
    _train(net, opt, steps=2)
    _train(twin, ref, steps=2)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)  # torch.load's default since torch 2.6
    resumed = getattr(ut, name)(net.named_parameters(), convention="torch")
    resumed.load_state_dict(loaded)
    _train(net, resumed, steps=2)
    _train(twin, ref, steps=2)
    _assert_close(net, twin)


@pytest.mark.parametrize("name", NAMES)
def test_an_optimizer_rebuilt_from_its_defaults_has_the_same_defaults(name):
    """What wrappers such as ZeroRedundancyOptimizer do: ``type(opt)(params, **opt.defaults)``."""
    params = [torch.zeros(2, requires_grad=True)]
    opt = getattr(ut, name)(params, lr=torch.tensor(0.01), foreach=False, convention="torch")
    rebuilt = type(opt)([torch.zeros(3, requires_grad=True)], **opt.defaults)
    assert rebuilt.defaults == opt.defaults


@pytest.mark.parametrize("name", FUSED)
def test_grad_scaler_with_fused_true_steps_as_torch_optim_fused(name):
    net, opt, twin, ref = _pair(name, lambda n: n.parameters(), fused=True, **KWARGS[name])
    assert getattr(ref, "_step_supports_amp_scaling", False)  # torch.optim takes the scale itself
    for model, optimizer in ((net, opt), (twin, ref)):
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        gen = torch.Generator().manual_seed(1)
        for _ in range(4):
            optimizer.zero_grad()
            x = torch.randn(8, 4, generator=gen, dtype=torch.float64)
            scaler.scale(model(x).pow(2).sum()).backward()
            scaler.step(optimizer)
            scaler.update()
    _assert_close(net, twin)
