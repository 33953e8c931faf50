"""uniopt.torch state export/import: files between runs resume bit for bit (against the uninterrupted
NumPy reference of the core), mismatches change nothing, and torch.optim's own state is read."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from porting_cases import PARAMS, STEPS, assert_bitwise, assert_state_bitwise, reference, stream

import uniopt
import uniopt.torch as ut
from uniopt.porting import export_state as core_export
from uniopt.porting import import_state as core_import


def _optimizer(spec, params, **kwargs):
    return getattr(ut, spec.name)(params, **spec.hyperparameters, **kwargs)


def _torch_run(opt, params, grads):
    for g in grads:
        for p, gi in zip(params, g, strict=True):
            p.grad = torch.from_numpy(gi.copy())
        opt.step()


def _tensors(arrays):
    return [torch.from_numpy(np.array(a, copy=True)).requires_grad_() for a in arrays]


@pytest.mark.parametrize("route", ["torch->torch", "numpy->torch", "torch->numpy"])
@pytest.mark.parametrize(("spec", "split", "dtype"), PARAMS)
def test_resume_from_a_file_is_bitwise(tmp_path, spec, split, dtype, route):
    params0, grads = stream(dtype, spec=spec)
    expected_params, expected_state = reference(spec, params0, grads)
    source, target = route.split("->")
    if source == "torch":
        params = _tensors(params0)
        opt = _optimizer(spec, params)  # implementation="auto": flat buffers
        _torch_run(opt, params, grads[:split])
        record, arrays = ut.export_state(opt), [p.detach().numpy().copy() for p in params]
    else:
        arrays, state = reference(spec, params0, grads[:split])
        record = core_export(spec, state, arrays)
    uniopt.save_state(tmp_path / "s.npz", record)
    loaded = uniopt.load_state(tmp_path / "s.npz")
    if target == "torch":
        params = _tensors(arrays)
        opt = _optimizer(loaded.to_spec(), params, implementation="loop")
        ut.import_state(opt, loaded)
        _torch_run(opt, params, grads[split:])
        final = ut.export_state(opt)
        assert_bitwise([p.detach().numpy() for p in params], expected_params, "params")
        assert_state_bitwise(final.slots, expected_state, STEPS, final.step)
    else:
        state = core_import(loaded, spec, arrays)
        for g in grads[split:]:
            arrays, state = spec.update(g, state, arrays)
        assert_bitwise(arrays, expected_params, "params")
        assert_state_bitwise(state.slots, expected_state, STEPS, state.step)


def test_import_gives_the_state_of_a_native_run():
    spec = uniopt.Adam(lr=0.01, amsgrad=True)
    params0, grads = stream("float32", steps=3)
    native_params = _tensors(params0)
    native = _optimizer(spec, native_params, implementation="loop")
    _torch_run(native, native_params, grads)
    params = _tensors(params0)
    opt = _optimizer(spec, params)
    ut.import_state(opt, ut.export_state(native))
    for p, q in zip(params, native_params, strict=True):
        mine, theirs = opt.state[p], native.state[q]
        assert set(mine) == set(theirs)
        assert mine["step"].dtype == torch.int64 and mine["step"].device.type == "cpu"
        for name in theirs:
            assert mine[name].dtype == theirs[name].dtype and mine[name].shape == theirs[name].shape
            assert torch.equal(mine[name], theirs[name])


def test_export_before_any_step_is_the_initial_state():
    spec = uniopt.Adagrad(initial_accumulator_value=0.25)
    params = _tensors(stream("float64", steps=0)[0])
    record = ut.export_state(_optimizer(spec, params))
    assert record.step == 0 and record.dtypes == ("float64",) * 3
    for slots, p in zip(record.slots, params, strict=True):
        np.testing.assert_array_equal(slots["sum"], np.full(p.shape, 0.25))


def _snapshot(opt):
    return {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}, [
        {k: v for k, v in g.items() if k != "params"} for g in opt.param_groups
    ]


def _same(a, b):
    states_a, groups_a = a
    states_b, groups_b = b
    assert groups_a == groups_b and states_a.keys() == states_b.keys()
    for key, entry in states_a.items():
        assert entry.keys() == states_b[key].keys()
        assert all(torch.equal(v, states_b[key][k]) for k, v in entry.items())


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda ps: ut.Adam(ps, lr=0.01), "the state is from RAdam, the optimizer is Adam"),
        (lambda ps: ut.RAdam(ps[:2], lr=0.01), "the state holds 3 parameters, the optimizer has 2"),
        (
            lambda ps: ut.RAdam([ps[0], torch.zeros(6, requires_grad=True), ps[2]], lr=0.01),
            r"parameter 1 has shape \(6,\), the state holds shape \(5,\)",
        ),
        (
            lambda ps: ut.RAdam([ps[0], ps[1].detach().double().requires_grad_(), ps[2]], lr=0.01),
            "parameter 1 has dtype float64, the state holds float32",
        ),
        (
            lambda ps: ut.RAdam(ps, lr=0.02),
            "hyperparameter lr is 0.02 in the optimizer and 0.01 in the state",
        ),
        (
            lambda ps: ut.RAdam([{"params": ps[:1]}, {"params": ps[1:], "eps": 1e-6}], lr=0.01),
            "hyperparameter eps is 1e-06 in the optimizer and 1e-08",
        ),
    ],
)
def test_a_mismatch_raises_and_changes_nothing(make, match):
    spec = uniopt.RAdam(lr=0.01)
    params0, grads = stream("float32", steps=4)
    params = _tensors(params0)
    source = _optimizer(spec, params)
    _torch_run(source, params, grads[:2])
    record = ut.export_state(source)
    target = make(_tensors(params0))
    before = _snapshot(target)
    with pytest.raises(ValueError, match=match):
        ut.import_state(target, record)
    _same(before, _snapshot(target))


def test_a_mismatch_leaves_a_stepped_optimizer_as_it_was():
    params0, grads = stream("float32", steps=3)
    params = _tensors(params0)
    opt = ut.RMSprop(params, lr=0.01, centered=True)
    _torch_run(opt, params, grads)
    record = ut.export_state(ut.RMSprop(_tensors(params0), lr=0.01))  # no grad_avg slot
    before = _snapshot(opt)
    with pytest.raises(
        ValueError, match=r"slots \['square_avg'\], RMSprop .* needs \['grad_avg', 'square_avg'\]"
    ):
        ut.import_state(opt, record)
    _same(before, _snapshot(opt))


def test_hyperparameters_false_keeps_the_optimizers():
    params0, grads = stream("float32", steps=2)
    params = _tensors(params0)
    source = ut.Adam(params, lr=0.01)
    _torch_run(source, params, grads)
    target = ut.Adam(_tensors(params0), lr=0.5)
    ut.import_state(target, ut.export_state(source), hyperparameters=False)
    assert target.param_groups[0]["lr"] == 0.5 and ut.export_state(target).step == 2


def test_export_refuses_what_one_record_cannot_hold():
    params = _tensors(stream("float32", steps=0)[0])
    groups = ut.Adam([{"params": params[:1]}, {"params": params[1:], "lr": 0.1}], lr=0.01)
    with pytest.raises(ValueError, match=r"param group 1 has lr=0\.1, group 0 has 0\.01"):
        ut.export_state(groups)
    opt = ut.Adam(params, lr=0.01)
    params[1].grad = torch.ones(5)
    opt.step()
    with pytest.raises(ValueError, match=r"parameter 1 has taken 1 steps and parameter 0 0"):
        ut.export_state(opt)
    with pytest.raises(TypeError, match=r"use uniopt.torch.from_torch_optim"):
        ut.export_state(torch.optim.Adam(params))
    with pytest.raises(ValueError, match="parameter 0 is complex"):
        ut.export_state(ut.Adam([torch.zeros(2, dtype=torch.complex64, requires_grad=True)]))


# -- torch.optim's own optimizers -----------------------------------------------------------------

NATIVE = [
    (torch.optim.Adam, {"lr": 0.01, "amsgrad": True, "weight_decay": 0.1}, "Adam"),
    (torch.optim.Adam, {"lr": 0.01, "decoupled_weight_decay": True, "weight_decay": 0.1}, "AdamW"),
    (torch.optim.AdamW, {"lr": 0.01}, "AdamW"),
    (torch.optim.RAdam, {"lr": 0.01, "decoupled_weight_decay": True, "weight_decay": 0.1}, "RAdam"),
    (torch.optim.SGD, {"lr": 0.01, "momentum": 0.9, "dampening": 0.1}, "SGD"),
    (torch.optim.RMSprop, {"lr": 0.01, "centered": True, "momentum": 0.5}, "RMSprop"),
    (torch.optim.Adagrad, {"lr": 0.1, "lr_decay": 0.01, "initial_accumulator_value": 0.1}, "Adagrad"),
    (torch.optim.Adamax, {"lr": 0.01, "betas": (0.8, 0.99), "weight_decay": 0.1}, "Adamax"),
    (torch.optim.NAdam, {"lr": 0.01, "momentum_decay": 0.01, "weight_decay": 0.1}, "NAdam"),
    (
        torch.optim.NAdam,
        {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True},
        "NAdam",
    ),
    (torch.optim.Adadelta, {"lr": 0.5, "rho": 0.8, "eps": 1e-5, "weight_decay": 0.1}, "Adadelta"),
]
DERIVED = {"mu_product"}  # torch.optim.NAdam's product of its momentum coefficients: from the step count


@pytest.mark.parametrize(("cls", "kwargs", "name"), NATIVE, ids=[f"{c.__name__}-{n}" for c, _, n in NATIVE])
def test_torch_optim_state_is_read_and_written_back(cls, kwargs, name):
    params0, grads = stream("float32", steps=5)
    params = _tensors(params0)
    native = cls(params, **kwargs)
    _torch_run(native, params, grads[:4])
    step = {"step": 4} if cls is torch.optim.SGD else {}
    record = ut.from_torch_optim(native, **step)
    assert (record.optimizer, record.convention, record.step) == (name, "torch", 4)
    spec = record.to_spec()
    for key, value in kwargs.items():
        if key != "decoupled_weight_decay" or name in ("RAdam", "NAdam"):
            assert spec.hyperparameters[key] == value
    assert set(record.slot_names) == {k for k in native.state[params[0]] if k not in {"step", *DERIVED}}
    for p, slots in zip(params, record.slots, strict=True):
        for slot, value in slots.items():
            assert_bitwise([value], [native.state[p][slot].numpy()], slot)
    # back into a fresh torch.optim optimizer: the next step is the uninterrupted one, bit for bit
    copies = _tensors([p.detach().numpy() for p in params])
    resumed = cls(copies, **kwargs)
    ut.to_torch_optim(record, resumed)
    _torch_run(native, params, grads[4:])
    _torch_run(resumed, copies, grads[4:])
    assert_bitwise([p.detach().numpy() for p in copies], [p.detach().numpy() for p in params], "params")
    # and into uniopt.torch, which then holds the same numbers under its own rules
    target = _optimizer(spec, _tensors(params0))
    ut.import_state(target, record)
    assert_bitwise(ut.export_state(target).slots[1].values(), record.slots[1].values(), "slots")


def test_torch_optim_errors():
    params = _tensors(stream("float32", steps=0)[0])
    sgd = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    for p in params:
        p.grad = torch.ones_like(p)
    sgd.step()
    with pytest.raises(ValueError, match="keeps no step count; pass step="):
        ut.from_torch_optim(sgd)
    with pytest.raises(TypeError, match=r"not one of torch.optim's"):
        ut.from_torch_optim(torch.optim.ASGD(params))
    with pytest.raises(TypeError, match=r"use uniopt.torch.export_state"):
        ut.from_torch_optim(ut.SGD(params))
    record = ut.from_torch_optim(sgd, step=1)
    adam = torch.optim.Adam(params)
    with pytest.raises(ValueError, match="the state is from SGD, the optimizer is Adam"):
        ut.to_torch_optim(record, adam)
    assert not adam.state


def test_a_torch_convention_run_moves_into_torch_optim_and_back_with_its_hyperparameters():
    """A record of uniopt.torch.Adam(convention='torch') loads into torch.optim.Adam with the
    hyperparameter check on (the convention says whose formulas ran and is not compared), and
    torch.optim's record loads into uniopt's default convention: the slots arrive bit for bit."""
    params = _tensors(stream("float32", steps=0)[0])
    ours = ut.Adam(params, lr=0.01, convention="torch")
    for _ in range(3):
        for p in params:
            p.grad = torch.full_like(p, 0.25)
        ours.step()
    record = ut.export_state(ours)
    copies = _tensors([p.detach().numpy() for p in params])
    native = torch.optim.Adam(copies, lr=0.01)
    ut.to_torch_optim(record, native)
    for p, q in zip(params, copies, strict=True):
        assert int(native.state[q]["step"]) == 3
        for key in ("exp_avg", "exp_avg_sq"):
            assert_bitwise([native.state[q][key].numpy()], [ours.state[p][key].numpy()], key)
    back = ut.Adam(_tensors([p.detach().numpy() for p in copies]), lr=0.01)
    ut.import_state(back, ut.from_torch_optim(native))
    assert_bitwise(ut.export_state(back).slots[0].values(), record.slots[0].values(), "slots")
    with pytest.raises(ValueError, match=r"hyperparameter lr is 0.02 in the optimizer and 0.01"):
        ut.to_torch_optim(record, torch.optim.Adam(copies, lr=0.02))


# -- a bad record changes nothing, flat buffers included -------------------------------------------


def _changed_slot(record):
    record.slots[1]["exp_avg"] = record.slots[1]["exp_avg"].astype(np.float64)  # after its checks
    return record


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (_changed_slot, r"parameter 1 slot 'exp_avg' is float64, the state holds the parameter as float32"),
        (lambda r: r.replace(step=2**63), "step 9223372036854775808 does not fit a 64-bit step counter"),
        (
            lambda r: ut.export_state(
                ut.Adam(_tensors(stream("float32", 0, ((3, 4), (6,), ()))[0]), lr=0.01)
            ),
            r"parameter 1 has shape \(5,\), the state holds shape \(6,\)",
        ),
        (
            lambda r: ut.export_state(ut.RAdam(_tensors(stream("float32", steps=0)[0]), lr=0.01)),
            "the state is from RAdam, the optimizer is Adam",
        ),
    ],
)
@pytest.mark.parametrize("implementation", ["flat", "loop"])
def test_a_bad_record_leaves_a_stepped_optimizer_able_to_continue_bitwise(bad, match, implementation):
    """A stepped optimizer (its state in flat buffers, or per tensor) refuses a bad record with its
    state unchanged bit for bit, and then continues exactly like a twin that never saw the record."""
    params0, grads = stream("float32", steps=4)
    params, twin_params = _tensors(params0), _tensors(params0)
    opt = ut.Adam(params, lr=0.01, amsgrad=True, implementation=implementation)
    twin = ut.Adam(twin_params, lr=0.01, amsgrad=True, implementation=implementation)
    _torch_run(opt, params, grads[:2])
    _torch_run(twin, twin_params, grads[:2])
    source = _tensors(params0)
    record = bad(ut.export_state(_optimizer(uniopt.Adam(lr=0.01, amsgrad=True), source)))
    before = _snapshot(opt)
    with pytest.raises(ValueError, match=match):
        ut.import_state(opt, record)
    _same(before, _snapshot(opt))
    _torch_run(opt, params, grads[2:])
    _torch_run(twin, twin_params, grads[2:])
    assert_bitwise([p.detach().numpy() for p in params], [p.detach().numpy() for p in twin_params], "params")
    mine, theirs = ut.export_state(opt), ut.export_state(twin)
    assert mine.step == theirs.step == 4
    for a, b in zip(mine.slots, theirs.slots, strict=True):
        assert_bitwise([a[k] for k in sorted(a)], [b[k] for k in sorted(b)], "slots")


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (_changed_slot, r"parameter 1 slot 'exp_avg' is float64, the state holds the parameter as float32"),
        (lambda r: r.replace(step=2**63), "does not fit a 64-bit step counter"),
    ],
)
def test_a_bad_record_leaves_a_torch_optim_optimizer_unchanged(bad, match):
    params0, grads = stream("float32", steps=2)
    params = _tensors(params0)
    native = torch.optim.Adam(params, lr=0.01)
    _torch_run(native, params, grads)
    record = bad(ut.from_torch_optim(native))
    before = _snapshot(native)
    with pytest.raises(ValueError, match=match):
        ut.to_torch_optim(record, native)
    _same(before, _snapshot(native))


def _adam_run() -> tuple[torch.nn.Parameter, torch.nn.Parameter, torch.optim.Adam]:
    a, b = torch.nn.Parameter(torch.zeros(4, 2)), torch.nn.Parameter(torch.zeros(3))
    native = torch.optim.Adam([a, b])
    a.grad, b.grad = torch.ones(4, 2), torch.ones(3)
    native.step()
    return a, b, native


@pytest.mark.parametrize(
    ("target", "edit", "message"),
    [
        ("two groups", None, r"the state_dict has 1 param groups, this optimizer has 2"),
        ("one param", None, r"group 0 has 2 params in the state_dict and 1 here"),
        ("same", "exp_avg of shape (5,)", r"param 0 slot 'exp_avg' has shape \(5,\)"),
    ],
)
def test_load_torch_optim_state_dict_refusals_name_the_function_called(target, edit, message):
    """The checks ``load_state_dict`` makes, reached through ``load_torch_optim_state_dict``, name
    that function (the one the user called), and load nothing."""
    a, b, native = _adam_run()
    state_dict = native.state_dict()
    if edit:
        state_dict["state"][0]["exp_avg"] = torch.zeros(5)
    params = {"two groups": [{"params": [a]}, {"params": [b]}], "one param": [a], "same": [a, b]}[target]
    opt = ut.Adam(params)
    with pytest.raises(ValueError, match=rf"^uniopt\.torch\.load_torch_optim_state_dict: {message}"):
        ut.load_torch_optim_state_dict(opt, state_dict)
    assert not opt.state


def test_import_state_refusals_name_the_function_called():
    """A record with a bfloat16 ``exp_avg`` imported into an optimizer without ``state_dtypes``:
    ``load_state_dict``'s checks refuse it, and the refusal names ``import_state``."""
    a = torch.nn.Parameter(torch.zeros(4, 2))
    source = ut.Adam([a], state_dtypes={"exp_avg": torch.bfloat16})
    a.grad = torch.ones(4, 2)
    source.step()
    record = ut.export_state(source)
    target = ut.Adam([torch.nn.Parameter(torch.zeros(4, 2))])
    with pytest.raises(ValueError, match=r"^uniopt\.torch\.import_state: ") as caught:
        ut.import_state(target, record)
    assert "load_state_dict" not in str(caught.value).split(":")[0]
    assert not target.state
