"""uniopt.torch.ScheduleFreeAdamW: the authors' package's contract (schedulefree.AdamWScheduleFree,
the native of the uniopt convention), its history per param group, and bitwise agreement with the
core under schedules, train/eval switches, checkpoints and skipped gradients."""

from __future__ import annotations

import io

import numpy as np
import pytest
import schedulefree
import torch

import uniopt
import uniopt.torch as ut

SHAPES = [(16, 8), (8,), ()]


def stream(steps, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    params = [np.asarray(rng.standard_normal(s), dtype=dtype) for s in SHAPES]
    grads = [
        [np.asarray(rng.standard_normal(s) * (30.0 if t % 7 == 6 else 1.0), dtype=dtype) for s in SHAPES]
        for t in range(steps)
    ]
    return params, grads


def leaves(params0):
    return [torch.tensor(p.copy(), requires_grad=True) for p in params0]


def set_grads(params, grads):
    for p, g in zip(params, grads, strict=True):
        p.grad = None if g is None else torch.from_numpy(g.copy())


def core_run(spec, params0, grads, lrs=None):
    params, state = list(params0), spec.init(params0)
    for t, g in enumerate(grads):
        params, state = spec.update(g, state, params, **({} if lrs is None else {"lr": lrs[t]}))
    return params, state


def normwise(actual, expected):
    """max |actual - expected| in units of the largest |expected|."""
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"lr": 0.01, "warmup_steps": 5},
        {"lr": 0.01, "weight_decay": 0.1},
        {"lr": 0.01, "betas": (0.5, 0.99)},
    ],
    ids=["defaults", "warmup", "weight_decay", "beta1_half"],
)
def test_the_package_within_its_fused_kernels(kwargs, dtype):
    """Against schedulefree.AdamWScheduleFree (foreach and single-tensor), 30 steps: the history
    (weight_sum, lr_max, k) equal, y, x and z within a few ulp of the largest parameter (the
    package's lerp_, addcmul_ and add_(alpha=) are fused multiply-adds, and torch's CPU sqrt is not
    correctly rounded: measured at most 1.2e-7 normwise in float32, 2.4e-16 in float64)."""
    params0, grads = stream(30, dtype)
    ours, theirs = leaves(params0), leaves(params0)
    opt = ut.ScheduleFreeAdamW(ours, **kwargs)
    package = schedulefree.AdamWScheduleFree(theirs, **kwargs, foreach=dtype == np.float32)
    opt.train(), package.train()
    for g in grads:
        set_grads(ours, g), set_grads(theirs, g)
        opt.step(), package.step()
    bound = 8 * float(np.finfo(dtype).eps)
    mine, native = opt.param_groups[0], package.param_groups[0]
    assert (mine["k"], mine["weight_sum"], mine["lr_max"]) == (
        native["k"],
        native["weight_sum"],
        native["lr_max"],
    )
    for a, b in zip(ours, theirs, strict=True):
        assert normwise(a.detach().numpy(), b.detach().numpy()) <= bound
        assert normwise(opt.state[a]["z"].numpy(), package.state[b]["z"].numpy()) <= bound
    opt.eval(), package.eval()
    for a, b in zip(ours, theirs, strict=True):
        assert normwise(a.detach().numpy(), b.detach().numpy()) <= bound


@pytest.mark.parametrize("implementation", ["loop", "flat", "auto"])
def test_a_scheduled_lr_and_the_views_are_the_cores_bitwise(implementation):
    """A scheduler's lr enters the history (lr_max, weight_sum) exactly as the core's update(lr=);
    eval() gives the core's eval_params and train() its train_params, bit for bit."""
    params0, grads = stream(24)
    spec = uniopt.ScheduleFreeAdamW(lr=0.01, warmup_steps=3, weight_decay=0.01)
    params = leaves(params0)
    opt = ut.ScheduleFreeAdamW(
        params, lr=0.01, warmup_steps=3, weight_decay=0.01, implementation=implementation
    )
    schedule = torch.optim.lr_scheduler.CyclicLR(opt, 0.002, 0.02, step_size_up=5, cycle_momentum=False)
    lrs = []
    for g in grads:
        lrs.append(opt.param_groups[0]["lr"])
        set_grads(params, g)
        opt.step()
        schedule.step()
    assert len(set(lrs)) > 5
    want, state = core_run(spec, params0, grads, lrs)
    for p, w, s in zip(params, want, state.slots, strict=True):
        np.testing.assert_array_equal(p.detach().numpy(), w)
        np.testing.assert_array_equal(opt.state[p]["z"].numpy(), s["z"])
    group = opt.param_groups[0]
    assert (group["k"], group["weight_sum"], group["lr_max"]) == (
        24,
        state.history.weight_sum,
        state.history.lr_max,
    )
    opt.eval()
    for p, x in zip(params, spec.eval_params(want, state), strict=True):
        np.testing.assert_array_equal(p.detach().numpy(), x)
    opt.train()
    for p, y in zip(params, spec.train_params(spec.eval_params(want, state), state), strict=True):
        np.testing.assert_array_equal(p.detach().numpy(), y)


def test_step_in_eval_mode_is_refused_before_any_change():
    params0, grads = stream(2)
    params = leaves(params0)
    opt = ut.ScheduleFreeAdamW(params, lr=0.01)
    set_grads(params, grads[0])
    opt.step()
    opt.eval()
    before = [p.detach().clone() for p in params]
    set_grads(params, grads[1])
    with pytest.raises(
        RuntimeError, match=r"ScheduleFreeAdamW: the optimizer is in eval mode.*optimizer\.train\(\)"
    ):
        opt.step()
    assert opt.param_groups[0]["k"] == 1 and not opt.param_groups[0]["train_mode"]
    for p, b in zip(params, before, strict=True):
        assert torch.equal(p.detach(), b)
    opt.eval()  # a second eval() changes nothing
    for p, b in zip(params, before, strict=True):
        assert torch.equal(p.detach(), b)


def test_starts_in_train_mode_and_train_eval_before_any_step_change_nothing():
    params0, _ = stream(1)
    params = leaves(params0)
    opt = ut.ScheduleFreeAdamW(params)
    assert opt.param_groups[0]["train_mode"] and opt.param_groups[0]["k"] == 0
    assert opt.param_groups[0]["lr_max"] == -1.0 and opt.param_groups[0]["weight_sum"] == 0.0
    opt.eval(), opt.train()
    for p, p0 in zip(params, params0, strict=True):
        np.testing.assert_array_equal(p.detach().numpy(), p0)


def test_a_parameter_that_misses_steps_takes_its_groups_step_as_the_package():
    """The group's k counts every step() (as the package's group['k']); a parameter without a
    gradient in some steps is then stepped with the group's bias correction and weights."""
    params0, grads = stream(12)
    for t in (2, 3, 7):
        grads[t][1] = None
    ours, theirs = leaves(params0), leaves(params0)
    opt = ut.ScheduleFreeAdamW(ours, lr=0.01)
    package = schedulefree.AdamWScheduleFree(theirs, lr=0.01, foreach=False)
    package.train()
    for g in grads:
        set_grads(ours, g), set_grads(theirs, g)
        opt.step(), package.step()
    assert opt.param_groups[0]["k"] == package.param_groups[0]["k"] == 12
    assert int(opt.state[ours[1]]["step"]) == 9
    for a, b in zip(ours, theirs, strict=True):
        assert normwise(a.detach().numpy(), b.detach().numpy()) <= 8 * float(np.finfo(np.float32).eps)


def test_state_dict_round_trip_continues_bitwise():
    params0, grads = stream(20)
    first = leaves(params0)
    opt = ut.ScheduleFreeAdamW(first, lr=0.01, warmup_steps=4)
    for g in grads[:10]:
        set_grads(first, g)
        opt.step()
    opt.eval()  # the package's advice: save in eval mode (the parameters are x)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)  # a checkpoint file: the live dict would share tensors
    buffer.seek(0)
    saved, weights = torch.load(buffer), [p.detach().clone() for p in first]
    for key in ("k", "train_mode", "weight_sum", "lr_max"):
        assert key in saved["param_groups"][0]
    second = [torch.tensor(w.numpy(), requires_grad=True) for w in weights]
    other = ut.ScheduleFreeAdamW(second, lr=0.01, warmup_steps=4)
    other.load_state_dict(saved)
    assert not other.param_groups[0]["train_mode"] and other.param_groups[0]["k"] == 10
    opt.train(), other.train()
    for g in grads[10:]:
        set_grads(first, g), set_grads(second, g)
        opt.step(), other.step()
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a.detach(), b.detach())


def test_porting_refuses_eval_mode_and_carries_the_history():
    params0, grads = stream(6)
    params = leaves(params0)
    opt = ut.ScheduleFreeAdamW(params, lr=0.01)
    for g in grads:
        set_grads(params, g)
        opt.step()
    opt.eval()
    with pytest.raises(ValueError, match=r"export_state: the optimizer is in eval mode"):
        ut.export_state(opt)
    opt.train()
    record = ut.export_state(opt)
    assert record.step == 6 and record.history["lr_max"] == 0.01
    fresh = ut.ScheduleFreeAdamW(leaves(params0), lr=0.01)
    fresh.eval()
    with pytest.raises(ValueError, match=r"import_state: the optimizer is in eval mode"):
        ut.import_state(fresh, record)
    fresh.train()
    ut.import_state(fresh, record)
    assert (
        fresh.param_groups[0]["k"] == 6
        and fresh.param_groups[0]["weight_sum"] == opt.param_groups[0]["weight_sum"]
    )


def test_compiled_step_is_eager_bitwise():
    """torch.compile(opt.step): the history's host work stays outside the graph."""
    params0, grads = stream(6)
    a, b = leaves(params0), leaves(params0)
    eager = ut.ScheduleFreeAdamW(a, lr=0.01, warmup_steps=2)
    compiled_opt = ut.ScheduleFreeAdamW(b, lr=0.01, warmup_steps=2)
    step = torch.compile(compiled_opt.step)
    for g in grads:
        set_grads(a, g), set_grads(b, g)
        eager.step(), step()
    assert compiled_opt.param_groups[0]["k"] == 6
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.detach(), y.detach())


def test_a_package_state_dict_loads_and_continues_as_the_package():
    """schedulefree's state_dict (no per-parameter step: its groups count them in k) loads through
    load_torch_optim_state_dict with its history and mode, and the run continues as the package's."""
    params0, grads = stream(16)
    theirs, ours = leaves(params0), leaves(params0)
    package = schedulefree.AdamWScheduleFree(theirs, lr=0.01, warmup_steps=3)
    package.train()
    for g in grads[:8]:
        set_grads(theirs, g)
        package.step()
    buffer = io.BytesIO()
    torch.save(package.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    with torch.no_grad():
        for a, b in zip(ours, theirs, strict=True):
            a.copy_(b)
    opt = ut.ScheduleFreeAdamW(ours, lr=0.01, warmup_steps=3)
    with pytest.raises(
        ValueError, match=r"non-uniopt optimizer .*another ScheduleFreeAdamW.*load_torch_optim"
    ):
        opt.load_state_dict(saved)
    ut.load_torch_optim_state_dict(opt, saved)
    group = opt.param_groups[0]
    assert (group["k"], group["weight_sum"], group["lr_max"]) == (
        8,
        saved["param_groups"][0]["weight_sum"],
        0.01,
    )
    for g in grads[8:]:
        set_grads(theirs, g), set_grads(ours, g)
        package.step(), opt.step()
    assert group["scheduled_lr"] == package.param_groups[0]["scheduled_lr"]
    for a, b in zip(ours, theirs, strict=True):
        assert normwise(a.detach().numpy(), b.detach().numpy()) <= 8 * float(np.finfo(np.float32).eps)


def test_the_packages_argument_spellings():
    """foreach is the package's ninth positional argument; warmup_steps may be any integral value
    (NumPy's, a whole float, a 1-element tensor), as the package takes it; 2.5 is refused."""
    params0, _ = stream(1)
    opt = ut.ScheduleFreeAdamW(leaves(params0), 0.01, (0.9, 0.99), 1e-8, 0.01, 5, 0.5, 1.0, True)
    assert opt.param_groups[0]["foreach"] is True and opt.param_groups[0]["warmup_steps"] == 5
    for w in (np.int64(3), 3.0, torch.tensor(3)):
        assert ut.ScheduleFreeAdamW(leaves(params0), warmup_steps=w).param_groups[0]["warmup_steps"] == 3
    with pytest.raises(ValueError, match=r"warmup_steps=2\.5 is not an integer >= 0"):
        ut.ScheduleFreeAdamW(leaves(params0), warmup_steps=2.5)
