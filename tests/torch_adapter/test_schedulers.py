"""torch.optim.lr_scheduler drives uniopt.torch: what a scheduler writes into a param group (``lr``,
and for OneCycleLR also ``betas`` or ``momentum``) is what the spec uses at the next ``step()``.

Each test runs a uniopt.torch optimizer under a scheduler and, step by step, the NumPy core
(``uniopt.<Name>.update(..., lr=...)``) on the same gradients, and requires bitwise equality of the
parameters and of the optimizer state. The learning rates (and cycled momenta) the core is given do
not come from the optimizer under test: an identical scheduler drives a stock ``torch.optim``
optimizer whose param group is read instead.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import uniopt
import uniopt.torch
from uniopt import registry

STEPS = 12
SHAPES = ((7, 5), (5,), (2, 3, 2))

# One TABLE case per optimizer, chosen so that the per-step lr enters every kind of scalar
# (SGD's lr, Adagrad's decayed lr, Adam's step size, AdamW's decay, RAdam's rectified step, Adamax's
# and NAdam's step sizes, NAdamW's and Lion's decay, Adadelta's applied step).
CASES = {
    "SGD": "momentum",
    "Adagrad": "lr_decay",
    "RMSprop": "centered_momentum",
    "Adam": "amsgrad",
    "AdamW": "strong_decay",
    "RAdam": "default",
    "Adamax": "weight_decay",
    "NAdam": "decoupled",
    "Adadelta": "lr",
    "Lion": "weight_decay",
}
DTYPES = {"float32": (np.float32, torch.float32), "float64": (np.float64, torch.float64)}


def _cycled_field(name: str) -> str | None:
    """The hyperparameter OneCycleLR cycles for optimizer ``name`` (None: no momentum to cycle)."""
    fields = {f.name for f in dataclasses.fields(getattr(uniopt, name))}
    if "betas" in fields:
        return "betas"
    if "momentum" in fields:
        return "momentum"
    return None


def _make_scheduler(kind: str, opt: torch.optim.Optimizer, cycle_momentum: bool):
    sched = torch.optim.lr_scheduler
    if kind == "StepLR":
        return sched.StepLR(opt, step_size=3, gamma=0.5)
    if kind == "LambdaLR":
        return sched.LambdaLR(opt, lambda t: 1.0 / (1.0 + 0.7 * t))
    if kind == "CosineAnnealingLR":
        return sched.CosineAnnealingLR(opt, T_max=STEPS - 2, eta_min=1e-4)
    if kind == "OneCycleLR":
        max_lr = 4 * opt.param_groups[0]["lr"]
        return sched.OneCycleLR(opt, max_lr=max_lr, total_steps=STEPS, cycle_momentum=cycle_momentum)
    raise AssertionError(kind)


def _reference_optimizer(spec: uniopt.Spec, cycled: str | None) -> torch.optim.Optimizer:
    """A stock torch.optim optimizer with the same lr (and betas/momentum) for the scheduler to
    drive; it never updates anything (its one parameter never gets a gradient)."""
    dummy = [torch.zeros(1, requires_grad=True)]
    if cycled == "betas":
        return torch.optim.Adam(dummy, lr=spec.lr, betas=spec.betas)
    return torch.optim.SGD(dummy, lr=spec.lr, momentum=getattr(spec, "momentum", 0.0))


def _stream(np_dtype, seed: int = 0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(np_dtype) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(np_dtype) for s in SHAPES] for _ in range(STEPS)]
    return params, grads


def _slot_arrays(opt: torch.optim.Optimizer, params: list[torch.Tensor], names) -> list[dict]:
    return [{n: opt.state[p][n].numpy() for n in names} for p in params]


# NAdam under OneCycleLR warns that torch.optim's running mu_product would differ (tested below)
@pytest.mark.filterwarnings(r"ignore:uniopt\.torch\.NAdam.*betas\[0\]:UserWarning")
@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("kind", ["StepLR", "LambdaLR", "OneCycleLR", "CosineAnnealingLR"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_scheduler_reaches_the_spec_bitwise(name: str, kind: str, dtype: str) -> None:
    np_dtype, torch_dtype = DTYPES[dtype]
    info = registry.get(name)
    kwargs = dict(info.case(CASES[name]).kwargs)
    base = info.make(info.case(CASES[name]))
    cycled = _cycled_field(name) if kind == "OneCycleLR" else None

    init, grads = _stream(np_dtype)
    tparams = [torch.tensor(p, dtype=torch_dtype, requires_grad=True) for p in init]
    opt = getattr(uniopt.torch, name)(tparams, **kwargs)
    sched = _make_scheduler(kind, opt, cycle_momentum=cycled is not None)
    ref_opt = _reference_optimizer(base, cycled)
    ref_sched = _make_scheduler(kind, ref_opt, cycle_momentum=cycled is not None)

    np_params = [p.copy() for p in init]
    state = base.init(np_params)
    const_params, const_state = [p.copy() for p in init], base.init(init)
    lrs, cycled_values = [], []
    for t in range(STEPS):
        ref_group = ref_opt.param_groups[0]
        lr = ref_group["lr"]
        changes = {}
        if cycled == "betas":
            changes["betas"] = tuple(ref_group["betas"])
        elif cycled == "momentum":
            changes["momentum"] = ref_group["momentum"]
        lrs.append(lr)
        cycled_values.append(changes.get(cycled))
        assert opt.param_groups[0]["lr"] == lr
        for key, value in changes.items():
            assert tuple(np.atleast_1d(opt.param_groups[0][key])) == tuple(np.atleast_1d(value))

        for p, g in zip(tparams, grads[t], strict=True):
            p.grad = torch.from_numpy(g.copy())
        opt.step()
        spec = base.replace(**changes) if changes else base
        np_params, state = spec.update(grads[t], state, np_params, lr=lr)
        const_params, const_state = base.update(grads[t], const_state, const_params)
        for i, (p, expected) in enumerate(zip(tparams, np_params, strict=True)):
            assert p.dtype == torch_dtype
            np.testing.assert_array_equal(p.detach().numpy(), expected, err_msg=f"step {t + 1}, param {i}")

        ref_opt.step()
        ref_sched.step()
        sched.step()

    # The schedule really varied what the spec was given, so a binding that ignored the group's
    # values would have failed above.
    assert len(set(lrs)) > 2
    if cycled is not None:
        assert len(set(cycled_values)) > 2
    assert any(not np.array_equal(a, b) for a, b in zip(np_params, const_params, strict=True))

    names = base.replace(**changes).slot_names() if cycled else base.slot_names()
    for i, (got, expected) in enumerate(zip(_slot_arrays(opt, tparams, names), state.slots, strict=True)):
        assert set(got) == set(expected)
        for n in names:
            np.testing.assert_array_equal(got[n], expected[n], err_msg=f"param {i}, slot {n}")
        assert int(opt.state[tparams[i]]["step"]) == STEPS


def test_per_group_lambdas_reach_each_group() -> None:
    """LambdaLR with one lambda per param group: each group's spec sees its own learning rate."""
    init, grads = _stream(np.float32, seed=1)
    tparams = [torch.tensor(p, requires_grad=True) for p in init]
    groups = [{"params": tparams[:2], "lr": 0.01}, {"params": tparams[2:], "lr": 0.003}]
    lambdas = [lambda t: 0.9**t, lambda t: 1.0 + t]
    opt = uniopt.torch.Adam(groups)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambdas)
    ref_opt = torch.optim.SGD(
        [{"params": [torch.zeros(1, requires_grad=True)], "lr": g["lr"]} for g in groups]
    )
    ref_sched = torch.optim.lr_scheduler.LambdaLR(ref_opt, lambdas)

    spec = uniopt.Adam()
    expected = [[p.copy() for p in init[:2]], [p.copy() for p in init[2:]]]
    states = [spec.init(expected[0]), spec.init(expected[1])]
    for t in range(STEPS):
        lrs = [g["lr"] for g in ref_opt.param_groups]
        assert lrs[0] != lrs[1]
        for p, g in zip(tparams, grads[t], strict=True):
            p.grad = torch.from_numpy(g.copy())
        opt.step()
        for k, (lo, hi) in enumerate(((0, 2), (2, 3))):
            expected[k], states[k] = spec.update(grads[t][lo:hi], states[k], expected[k], lr=lrs[k])
        for p, e in zip(tparams, expected[0] + expected[1], strict=True):
            np.testing.assert_array_equal(p.detach().numpy(), e, err_msg=f"step {t + 1}")
        ref_opt.step()
        ref_sched.step()
        sched.step()


def _nadam_under_one_cycle(library, steps: int = 6, **kwargs) -> torch.Tensor:
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(50, dtype=torch.float64))
    opt = library.NAdam([w], lr=0.01, **kwargs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=20)  # cycles betas[0]
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        w.grad = torch.randn(50, generator=gen, dtype=torch.float64)
        opt.step()
        sched.step()
    return w.detach()


def test_nadam_warns_once_where_betas0_changes_after_a_step_and_the_warning_is_true() -> None:
    # torch.optim.NAdam multiplies each step's own mu into state["mu_product"]; uniopt computes the
    # product from the step count with the current betas[0]: a cycled betas[0] parts them, said once
    with pytest.warns(
        UserWarning, match=r"uniopt\.torch\.NAdam: betas\[0\] from 0\.95 to .*mu_product"
    ) as seen:
        got = _nadam_under_one_cycle(uniopt.torch, convention="torch")
    ours = [w for w in seen if "betas[0]" in str(w.message)]
    assert len(ours) == 1 and ours[0].filename == __file__  # names the user's step() line
    ref = _nadam_under_one_cycle(torch.optim)
    assert (got - ref).abs().max() > 1e-6  # what the warning says: torch.optim's numbers differ


def test_nadam_is_silent_where_only_the_lr_or_another_optimizers_betas_change() -> None:
    import warnings

    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    v = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    nadam = uniopt.torch.NAdam([w], lr=0.01, betas=(0.9, 0.99))
    adam = uniopt.torch.Adam([v], lr=0.01)
    scheds = [
        torch.optim.lr_scheduler.StepLR(nadam, step_size=1, gamma=0.5),
        torch.optim.lr_scheduler.OneCycleLR(adam, max_lr=0.05, total_steps=20),  # cycles Adam's betas
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for t in range(4):
            w.grad, v.grad = torch.ones(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64)
            nadam.step()
            adam.step()
            for sched in scheds:
                sched.step()
            if t == 1:
                nadam.param_groups[0]["betas"] = (0.9, 0.95)  # betas[1]: its bias correction follows it


def test_nadam_groups_of_their_own_and_a_loaded_state_with_other_betas_do_not_warn() -> None:
    # torch's own test_param_groups_lr builds groups with their own momentum_decay; a loaded
    # state_dict brings new groups whose values are those the loaded run took its steps with
    import warnings

    w = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    v = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt = uniopt.torch.NAdam([dict(params=[w], momentum_decay=0.01), dict(params=[v])], lr=1e-3)
        for _ in range(2):
            w.grad, v.grad = torch.ones_like(w), torch.ones_like(v)
            opt.step()
        saved = opt.state_dict()
        saved["param_groups"][0]["betas"] = (0.8, 0.999)
        for _ in range(3):  # ids of the replaced groups may be reused by the loaded ones
            opt.load_state_dict(saved)
            opt.step()
