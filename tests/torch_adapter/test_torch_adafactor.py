"""uniopt.torch.Adafactor beside torch.optim.Adafactor: state keys, checkpoints, refusals."""

from __future__ import annotations

import copy

import pytest
import torch

import uniopt.torch as ut

SHAPES = [(6, 5), (3, 4, 7), (8,), ()]


def _params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_() for s in SHAPES]


def _step(params, opt, gen):
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
    opt.step()


def test_state_holds_torch_optim_keys_and_shapes():
    """row_var (..., n, 1) and col_var (..., 1, m) for 2+ dimensions, variance otherwise, and no
    entry for the unused statistic, as torch/optim/_adafactor.py's _init_group creates them."""
    ours, theirs = _params(), _params()
    opt, ref = ut.Adafactor(ours, convention="torch"), torch.optim.Adafactor(theirs)
    gen, gen2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    _step(ours, opt, gen)
    _step(theirs, ref, gen2)
    for p, q in zip(ours, theirs, strict=True):
        assert set(opt.state[p]) == set(ref.state[q])
        for key, value in ref.state[q].items():
            assert opt.state[p][key].shape == value.shape, key
            if key != "step":
                assert opt.state[p][key].dtype == value.dtype


def test_a_torch_optim_checkpoint_continues_like_torch_optim():
    """torch.optim.Adafactor's state_dict (float32 step, no placeholder entries) loads into
    uniopt.torch.Adafactor(convention='torch'), which then takes the steps torch.optim takes, to
    rounding (float64: relative 1e-12)."""
    theirs = _params()
    ref = torch.optim.Adafactor(theirs, lr=0.05, weight_decay=0.01)
    gen = torch.Generator().manual_seed(2)
    for _ in range(4):
        _step(theirs, ref, gen)
    ours = [p.detach().clone().requires_grad_() for p in theirs]
    opt = ut.Adafactor(ours, convention="torch")
    ut.load_torch_optim_state_dict(opt, copy.deepcopy(ref.state_dict()))
    assert opt.param_groups[0]["lr"] == 0.05 and opt.param_groups[0]["weight_decay"] == 0.01
    assert all(int(opt.state[p]["step"]) == 4 for p in ours)
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(5):
        _step(theirs, ref, gen_a)
        _step(ours, opt, gen_b)
    for p, q in zip(ours, theirs, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    # and back: the record holds the placeholders, torch.optim gets its own keys only
    record = ut.export_state(opt)
    assert record.slots[0]["variance"].shape == () and record.slots[2]["row_var"].shape == ()
    twin = torch.optim.Adafactor([p.detach().clone() for p in ours], lr=0.05, weight_decay=0.01)
    ut.to_torch_optim(record, twin, hyperparameters=False)
    saved = twin.state_dict()["state"]
    assert set(saved[0]) == {"step", "row_var", "col_var"} and set(saved[2]) == {"step", "variance"}
    assert saved[0]["step"].dtype == torch.float32


def test_a_slot_of_the_parameter_shape_is_refused_by_load_state_dict():
    params = _params()
    opt = ut.Adafactor(params)
    _step(params, opt, torch.Generator().manual_seed(4))
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][0]["row_var"] = torch.zeros(6, 5, dtype=torch.float64)
    with pytest.raises(
        ValueError, match=r"param 0 slot 'row_var' has shape \(6, 5\) .* slot has shape \(6, 1\)"
    ):
        opt.load_state_dict(sd)
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][0]["variance"] = torch.zeros(())
    with pytest.raises(
        ValueError, match=r"param 0 has state .*'variance'.*, expected \['col_var', 'row_var', 'step'\]"
    ):
        opt.load_state_dict(sd)


def test_complex_parameters_and_flat_implementations_are_refused():
    z = torch.zeros(2, 3, dtype=torch.complex64, requires_grad=True)
    with pytest.raises(RuntimeError, match="Adafactor does not support complex parameters"):
        ref = torch.optim.Adafactor([z])
        z.grad = torch.ones_like(z)
        ref.step()
    with pytest.raises(ValueError, match=r"uniopt.torch.Adafactor: complex parameters are not supported"):
        ut.Adafactor([z])
    with pytest.raises(ValueError, match=r"implementation='flat' runs the rule over a"):
        ut.Adafactor(_params(), implementation="flat")


def test_torch_optim_validation_messages_name_the_same_arguments():
    params = _params()
    for kwargs, torch_says, we_say in [
        ({"beta2_decay": 0.5}, "beta2_decay should be <= 0", r"beta2_decay=0\.5 is out of range"),
        ({"eps": (-1.0, 1e-3)}, "epsilon1 should be >= 0", r"eps\[0\]=-1\.0 is out of range"),
        ({"eps": (None, -1.0)}, "epsilon2 should be >= 0", r"eps\[1\]=-1\.0 is out of range"),
        ({"d": 0.5}, "Clipping threshold d should be >= 1", r"d=0\.5 is out of range"),
        ({"weight_decay": -0.1}, "weight_decay should be >= 0", r"weight_decay=-0\.1 is out of range"),
    ]:
        with pytest.raises(ValueError, match=torch_says):
            torch.optim.Adafactor(params, **kwargs)
        with pytest.raises(ValueError, match=we_say):
            ut.Adafactor(params, **kwargs)


@pytest.mark.parametrize("convention", ["torch", "optax"])
def test_defaults_hold_torch_optims_keys_and_the_groups_every_field(convention):
    """optax's arguments (momentum, ...) are kept in the groups, not in ``defaults``: a scheduler
    that looks for momentum in ``defaults`` (OneCycleLR and CyclicLR with cycle_momentum=True)
    refuses uniopt.torch.Adafactor as it refuses torch.optim.Adafactor, instead of writing a
    momentum that the optax convention would run."""
    ref = torch.optim.Adafactor([torch.ones(3, requires_grad=True)], lr=0.01)
    opt = ut.Adafactor([torch.ones(3, requires_grad=True)], lr=0.01, convention=convention)
    for scheduler in (
        lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=10),
        lambda o: torch.optim.lr_scheduler.CyclicLR(o, base_lr=0.01, max_lr=0.1),
    ):
        with pytest.raises(ValueError) as native:
            scheduler(ref)
        with pytest.raises(ValueError) as ours:
            scheduler(opt)
        assert str(ours.value) == str(native.value)
    assert "momentum" not in opt.defaults and "momentum" in opt.param_groups[0]
    assert set(opt.defaults) - {"convention"} == set(ref.defaults)
    extra = torch.ones(2, requires_grad=True)
    opt.add_param_group({"params": [extra]})
    assert opt.param_groups[1]["momentum"] == opt.param_groups[0]["momentum"]


def test_optax_arguments_given_reach_every_group_and_survive_a_pickle():
    """momentum given to the constructor is every group's (added groups too, after a pickle round
    trip), and the steps run it: the parameter differs from a run without momentum."""
    import pickle

    def run(**kwargs):
        p = torch.ones(3, 2, dtype=torch.float64, requires_grad=True)
        opt = ut.Adafactor([p], lr=0.1, convention="optax", **kwargs)
        opt = pickle.loads(pickle.dumps(opt))
        q = torch.ones(4, dtype=torch.float64, requires_grad=True)
        opt.add_param_group({"params": [q]})
        p, q = opt.param_groups[0]["params"][0], opt.param_groups[1]["params"][0]
        for _ in range(3):
            p.grad, q.grad = torch.full_like(p, 0.5), torch.full_like(q, -0.25)
            opt.step()
        return opt, p, q

    with_momentum, p1, q1 = run(momentum=0.9)
    plain, p0, q0 = run()
    assert [g["momentum"] for g in with_momentum.param_groups] == [0.9, 0.9]
    assert [g["momentum"] for g in plain.param_groups] == [0.0, 0.0]
    assert not torch.equal(p1, p0) and not torch.equal(q1, q0)


@pytest.mark.parametrize("shape", [(256, 256), (70000,)], ids=str)
def test_float16_past_its_range_steps_like_torch_optim(shape):
    """float16 parameters of 65,520+ elements: torch.optim's norms accumulate in float32, and so
    does the spec (its counts and sums of squares would overflow float16). Random values, five
    steps of the torch convention against torch.optim.Adafactor: finite, and within 2**-9 of it
    (torch's float64 host arithmetic and fused multiply-adds are not reproduced; measured 2**-9
    also on (64, 64), which never left float16's range)."""
    gen = torch.Generator().manual_seed(3)
    start = torch.randn(shape, generator=gen).to(torch.float16)
    ours, theirs = start.clone().requires_grad_(), start.clone().requires_grad_()
    opt, ref = ut.Adafactor([ours], convention="torch"), torch.optim.Adafactor([theirs])
    for _ in range(5):
        grad = torch.randn(shape, generator=gen).to(torch.float16)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        opt.step()
        ref.step()
    assert torch.isfinite(theirs).all() and torch.isfinite(ours).all()
    assert not torch.equal(ours, start)
    assert (ours.detach().float() - theirs.detach().float()).abs().max().item() <= 2**-9
