"""uniopt.torch honours the torch.optim.Optimizer contract, with the spec's numbers bit for bit.

Expected values come from the NumPy run of the core spec (``uniopt.<Name>.update``), an
implementation that shares no code with the adapter's tensor handling.
"""

from __future__ import annotations

import re

import ml_dtypes
import numpy as np
import pytest
import torch
from cases import shapes_for

import uniopt
import uniopt.registry
import uniopt.torch as ut
from conformance.ulp import max_ulp
from uniopt.registry import TABLE

CASES = [pytest.param(info, case, id=f"{info.name}-{case.desc}") for info in TABLE for case in info.cases]
NUMPY_DTYPE = {
    torch.float64: np.float64,
    torch.float32: np.float32,
    torch.float16: np.float16,
    torch.bfloat16: ml_dtypes.bfloat16,
}


def _grads(step: int, shapes, dtype) -> list[np.ndarray]:
    rng = np.random.default_rng(1000 + step)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def _core_run(spec, params0, steps, lrs=None):
    params, state = list(params0), spec.init(params0)
    for t in range(1, steps + 1):
        lr = None if lrs is None else lrs[t - 1]
        params, state = spec.update(
            _grads(t, [p.shape for p in params0], params0[0].dtype), state, params, lr=lr
        )
    return params, state


def _torch_params(params0):
    """Exact copies (bfloat16, which torch cannot take from NumPy, goes through float32 exactly)."""
    return [
        torch.tensor(p.astype(np.float32)).to(torch.bfloat16)
        if p.dtype == ml_dtypes.bfloat16
        else torch.from_numpy(p.copy())
        for p in params0
    ]


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    return t.float().numpy().astype(NUMPY_DTYPE[t.dtype]) if t.dtype == torch.bfloat16 else t.numpy()


@pytest.mark.parametrize(("info", "case"), CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_case_matches_the_numpy_spec_bitwise(info, case, dtype):
    spec = info.make(case)
    params0 = [np.linspace(-2, 2, 12).reshape(3, 4).astype(dtype), np.array(0.5, dtype)]
    accepted = shapes_for(spec, [p.shape for p in params0])  # Muon's conventions: matrices only
    params0 = [p.reshape(s) for p, s in zip(params0, accepted, strict=True)]
    expected, state = _core_run(spec, params0, 12)
    params = _torch_params(params0)
    opt = getattr(ut, info.name)(params, **spec.hyperparameters)
    for t in range(1, 13):
        for p, g in zip(params, _grads(t, [p.shape for p in params0], dtype), strict=True):
            p.grad = torch.from_numpy(g)
        opt.step()
    # 0 ulp (bitwise) unless the table states a bound for torch (Muon's backend matrix products)
    bound = info.tolerance("torch", "loop", case.desc)
    for p, want, slots in zip(params, expected, state.slots, strict=True):
        assert max_ulp(p.numpy(), want) <= bound
        assert int(opt.state[p]["step"]) == 12
        # the slots in use; placeholders (Adafactor's unused statistics) are not kept, as in
        # torch.optim.Adafactor, and stay zero in the core
        used = spec.slots_in_use(tuple(p.shape))
        assert set(opt.state[p]) == {"step", *used}
        for name, value in slots.items():
            if name in used:
                assert max_ulp(opt.state[p][name].numpy(), value) <= bound
            else:
                assert not np.any(value)


def test_the_bitwise_contract_has_one_exception_muons_backend_products():
    """Every case of every row is bitwise on torch but the cases of Muon that multiply matrices with
    torch's BLAS (``matmul="backend"``): matmul="exact" and the bfloat16 torch convention are 0."""
    loose = {(i.name, c.desc) for i, c in (p.values for p in CASES) if i.tolerance("torch", "loop", c.desc)}
    muon = uniopt.registry.get("Muon")
    assert loose == {("Muon", c.desc) for c in muon.cases if muon.make(c).matmul == "backend"} - {
        ("Muon", "torch"),
        ("Muon", "torch_match_rms_adamw"),
    }


@pytest.mark.parametrize("name", ["SGD", "Adam", "RAdam", "RMSprop"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_params_keep_state_in_their_dtype_and_match_numpy(name, dtype):
    # NumPy (float16) and ml_dtypes (bfloat16) round every op to the dtype, as torch's CPU kernels do
    kwargs = {"lr": 0.01} if name == "SGD" else {"lr": 0.01, "eps": 1e-3}
    spec = getattr(uniopt, name)(**kwargs)
    params0 = [np.linspace(-2, 2, 8).astype(NUMPY_DTYPE[dtype])]
    expected, state = _core_run(spec, params0, 8)
    params = _torch_params(params0)
    opt = getattr(ut, name)(params, **kwargs)
    for t in range(1, 9):
        (grad,) = _torch_params(_grads(t, [(8,)], NUMPY_DTYPE[dtype]))
        params[0].grad = grad
        opt.step()
    assert _as_numpy(params[0]).tobytes() == expected[0].tobytes()
    for slot, value in state.slots[0].items():
        assert opt.state[params[0]][slot].dtype == dtype
        assert _as_numpy(opt.state[params[0]][slot]).tobytes() == value.tobytes()


def test_an_eps_that_underflows_in_the_param_dtype_is_refused():
    p = torch.zeros(3, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"uniopt.torch.Adam: eps=1e-08 rounds to 0 in torch.float16"):
        ut.Adam([p])


@pytest.mark.parametrize(("info", "err"), [(i, e) for i in TABLE for e in i.error_cases])
def test_bad_hyperparameters_raise_the_core_message_before_any_state(info, err):
    p = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match=err.match):
        getattr(ut, info.name)([p], **dict(err.kwargs))


def test_unknown_arguments_are_refused_by_name():
    # torch.optim.RMSprop has no fused kernel, so no fused argument either
    with pytest.raises(TypeError, match=re.escape("unexpected argument(s) ['fused']")):
        ut.RMSprop([torch.zeros(2)], fused=True)


def test_param_groups_use_their_own_hyperparameters():
    a0, b0 = np.ones(4, np.float32), np.full(3, -1.0, np.float32)
    a, b = torch.tensor(a0), torch.tensor(b0)
    opt = ut.Adam([{"params": [a]}, {"params": [b], "lr": 0.1, "betas": (0.5, 0.9)}], lr=0.01)
    core_a, core_b = uniopt.Adam(lr=0.01), uniopt.Adam(lr=0.1, betas=(0.5, 0.9))
    pa, sa = [a0], core_a.init([a0])
    pb, sb = [b0], core_b.init([b0])
    for t in range(1, 8):
        ga, gb = _grads(t, [(4,), (3,)], np.float32)
        a.grad, b.grad = torch.from_numpy(ga), torch.from_numpy(gb)
        opt.step()
        pa, sa = core_a.update([ga], sa, pa)
        pb, sb = core_b.update([gb], sb, pb)
    np.testing.assert_array_equal(a.numpy(), pa[0])
    np.testing.assert_array_equal(b.numpy(), pb[0])


def test_add_param_group_validates_before_adding():
    opt = ut.SGD([torch.zeros(2)], lr=0.1)
    with pytest.raises(ValueError, match=r"SGD: momentum=-1\.0 is out of range"):
        opt.add_param_group({"params": [torch.zeros(3)], "momentum": -1.0})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": [torch.zeros(3)], "lr": 0.5})
    assert opt.param_groups[1]["lr"] == 0.5 and opt.param_groups[1]["momentum"] == 0.0


def test_step_with_closure_returns_its_loss_and_zero_grad_clears():
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    opt = ut.SGD([w], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == 5.0
    torch.testing.assert_close(w.detach(), torch.tensor([0.8, -1.6]), rtol=0, atol=1e-7)
    opt.zero_grad()
    assert w.grad is None


def test_params_without_grad_are_skipped_and_their_step_does_not_advance():
    a, b = torch.ones(2), torch.ones(2)
    opt = ut.RAdam([a, b], lr=0.1)
    a.grad = torch.ones(2)
    opt.step()
    opt.step()
    assert int(opt.state[a]["step"]) == 2
    assert b not in opt.state
    torch.testing.assert_close(b, torch.ones(2), rtol=0, atol=0)
    b.grad = torch.ones(2)
    opt.step()
    assert int(opt.state[a]["step"]) == 3 and int(opt.state[b]["step"]) == 1


def test_a_sparse_gradient_raises_and_changes_nothing():
    dense, emb = torch.ones(2), torch.ones(4, 2)
    opt = ut.Adam([dense, emb])
    dense.grad = torch.ones(2)
    emb.grad = torch.sparse_coo_tensor([[0]], [[1.0, 1.0]], (4, 2))
    with pytest.raises(RuntimeError, match=r"uniopt\.torch\.Adam does not support sparse gradients"):
        opt.step()
    assert not opt.state and torch.equal(dense, torch.ones(2))


def test_complex_params_follow_the_real_view():
    z0 = np.array([1 + 2j, -0.5 + 0j, 3 - 1j], np.complex64)
    z = torch.tensor(z0)
    r = torch.view_as_real(torch.tensor(z0)).clone()
    opt_z, opt_r = ut.Adam([z], lr=0.05), ut.Adam([r], lr=0.05)
    for t in range(1, 6):
        g = torch.tensor(_grads(t, [(3,)], np.float32)[0] + 1j * _grads(t + 50, [(3,)], np.float32)[0])
        z.grad, r.grad = g, torch.view_as_real(g).clone()
        opt_z.step()
        opt_r.step()
    assert torch.equal(torch.view_as_real(z), r)
    assert opt_z.state[z]["exp_avg"].dtype == torch.complex64


@pytest.mark.parametrize("name", ["SGD", "Adam", "RMSprop"])
def test_a_lazily_conjugated_complex_gradient_steps_as_its_value(name):
    """A complex parameter's gradient from autograd through ``p.conj()`` carries torch's lazy
    conjugate bit, which ``view_as_real`` refuses: the step takes its value (``resolve_conj``), the
    same bits as the plain gradient; it had raised for every optimizer (torch.optim.SGD steps it)."""
    z0 = torch.tensor(np.array([1 + 2j, -0.5 + 0j, 3 - 1j], np.complex64))
    lazy, plain = z0.clone(), z0.clone()
    opt_lazy, opt_plain = getattr(ut, name)([lazy], lr=0.05), getattr(ut, name)([plain], lr=0.05)
    for t in range(1, 4):
        g = torch.tensor(_grads(t, [(3,)], np.float32)[0] + 1j * _grads(t + 50, [(3,)], np.float32)[0])
        lazy.grad, plain.grad = g.conj(), g.conj().resolve_conj()
        assert lazy.grad.is_conj() and not plain.grad.is_conj()
        opt_lazy.step()
        opt_plain.step()
    assert torch.equal(lazy, plain)
    for key, value in opt_plain.state[plain].items():
        assert torch.equal(opt_lazy.state[lazy][key], value), key


def test_state_dict_round_trip_continues_bitwise():
    shapes = [(3, 2), (4,)]
    base = [torch.tensor(np.linspace(-1, 1, int(np.prod(s))).reshape(s).astype(np.float32)) for s in shapes]
    ref = [p.clone() for p in base]
    opt_ref = ut.RAdam(ref, lr=0.01, weight_decay=0.1)
    first = [p.clone() for p in base]
    opt_first = ut.RAdam(first, lr=0.01, weight_decay=0.1)
    for t in range(1, 11):
        for pr, pf, g in zip(ref, first, _grads(t, shapes, np.float32), strict=True):
            pr.grad = torch.from_numpy(g.copy())
            if t <= 5:
                pf.grad = torch.from_numpy(g.copy())
        opt_ref.step()
        if t <= 5:
            opt_first.step()
        if t == 5:
            saved = opt_first.state_dict()
            resumed = [p.clone() for p in first]
            opt_resumed = ut.RAdam(resumed, lr=0.5)  # hyperparameters come from the state_dict
            opt_resumed.load_state_dict(saved)
            assert opt_resumed.param_groups[0]["lr"] == 0.01
        if t > 5:
            for p, g in zip(resumed, _grads(t, shapes, np.float32), strict=True):
                p.grad = torch.from_numpy(g.copy())
            opt_resumed.step()
    for a, b in zip(ref, resumed, strict=True):
        assert torch.equal(a, b)
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt_ref.state[a][name], opt_resumed.state[b][name])


def _trained(opt_cls, params, **kwargs):
    opt = opt_cls(params, **kwargs)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    return opt


def test_foreign_or_mismatched_state_dicts_raise_and_change_nothing():
    p = torch.ones(3)
    opt = _trained(ut.Adam, [p], lr=0.1)
    before = {k: v.clone() for k, v in opt.state[p].items()}
    sgd_state = _trained(ut.SGD, [torch.ones(3)], momentum=0.9).state_dict()
    with pytest.raises(ValueError, match=r"saved by SGD, not by uniopt.torch.Adam; nothing was loaded"):
        opt.load_state_dict(sgd_state)
    native = _trained(torch.optim.Adam, [torch.ones(3)]).state_dict()
    with pytest.raises(ValueError, match=r"saved by a non-uniopt optimizer"):
        opt.load_state_dict(native)
    wrong_shape = _trained(ut.Adam, [torch.ones(4)]).state_dict()
    with pytest.raises(
        ValueError, match=r"slot 'exp_avg' has shape \(4,\) but the parameter has shape \(3,\)"
    ):
        opt.load_state_dict(wrong_shape)
    two_groups = ut.Adam([{"params": [torch.ones(3)]}, {"params": [torch.ones(1)]}]).state_dict()
    with pytest.raises(ValueError, match=r"has 2 param groups, this optimizer has 1"):
        opt.load_state_dict(two_groups)
    plain = _trained(ut.Adam, [torch.ones(3)]).state_dict()
    plain["param_groups"][0]["amsgrad"] = True  # a slot these hyperparameters use is missing
    with pytest.raises(ValueError, match=r"has state \['exp_avg', 'exp_avg_sq', 'step'\], expected"):
        opt.load_state_dict(plain)
    unknown = _trained(ut.Adam, [torch.ones(3)]).state_dict()
    unknown["state"][0]["momentum_buffer"] = torch.zeros(3)  # no setting of Adam keeps it
    with pytest.raises(ValueError, match=r"'momentum_buffer', 'step'\], expected"):
        opt.load_state_dict(unknown)
    assert opt.param_groups[0]["lr"] == 0.1
    for k, v in before.items():
        assert torch.equal(opt.state[p][k], v)


def test_correctly_rounded_sqrt_is_what_makes_float32_bitwise():
    # torch's CPU sqrt is not correctly rounded on this kind of machine; the namespace's is
    from uniopt.torch._namespace import xp

    x = torch.rand(200_000, dtype=torch.float32) * 100
    np.testing.assert_array_equal(xp.sqrt(x).numpy(), np.sqrt(x.numpy()))
    y = torch.rand(50_000, dtype=torch.float64) * 100
    np.testing.assert_array_equal(xp.sqrt(y).numpy(), np.sqrt(y.numpy()))


def test_the_spec_cache_stays_bounded_when_a_scheduler_cycles_betas():
    p = torch.zeros(2)
    opt = ut.Adam([p], lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=300)
    for _ in range(300):
        p.grad = torch.ones(2)
        opt.step()
        sched.step()
    from uniopt.torch._optimizer import _SPEC_CACHE_SIZE, _SPECS

    assert len(_SPECS) <= _SPEC_CACHE_SIZE


@pytest.mark.parametrize(
    ("allowed", "refused", "why"),
    [
        (1, True, "weight_decay=True is not a real number"),
        (0, False, "weight_decay=False is not a real number"),
        (0.1, np.array(0.1), "weight_decay=array(0.1) is not a real number"),
    ],
)
def test_a_group_value_refused_by_the_spec_is_refused_after_an_equal_one(allowed, refused, why):
    """The validated specs are kept by their hyperparameters' values and types: ``True == 1``, and a
    spec made for ``weight_decay=1`` must not stand for ``weight_decay=True``, which the spec
    refuses (a bool is no number); an unhashable value (a NumPy array, which torch.optim.Adam's
    step also rejects) is validated, not looked up. Each is refused with a ``ValueError`` naming
    it, before anything changes."""
    p = torch.nn.Parameter(torch.ones(4))
    opt = ut.Adam([p], lr=0.1)
    opt.param_groups[0]["weight_decay"] = allowed
    p.grad = torch.ones(4)
    opt.step()
    before = (p.detach().clone(), int(opt.state[p]["step"]))
    opt.param_groups[0]["weight_decay"] = refused
    with pytest.raises(ValueError, match=re.escape(why)):
        opt.step()
    assert torch.equal(p.detach(), before[0]) and int(opt.state[p]["step"]) == before[1]


def test_importing_the_adapter_does_not_load_the_compiler():
    import subprocess
    import sys

    code = "import sys, uniopt.torch; print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _run_then_reload(module, cls, kwargs, change, grads):
    """One step, ``change`` applied to the group, one step, state_dict saved and loaded into a new
    optimizer built with ``kwargs``, one step, the change undone, one step: torch.optim's sequence
    (``module`` torch.optim) or uniopt's. Returns the parameter and the reloaded optimizer."""
    p = torch.tensor([0.5, -1.0, 2.0, 0.25], requires_grad=True)
    opt = getattr(module, cls)([p], **kwargs)
    p.grad = grads[0].clone()
    opt.step()
    opt.param_groups[0].update(change)
    p.grad = grads[1].clone()
    opt.step()
    saved = opt.state_dict()
    q = p.detach().clone().requires_grad_()
    resumed = getattr(module, cls)([q], **kwargs)
    resumed.load_state_dict(saved)
    q.grad = grads[2].clone()
    resumed.step()
    resumed.param_groups[0].update({k: kwargs[k] for k in change})
    q.grad = grads[3].clone()
    resumed.step()
    return q, resumed


@pytest.mark.parametrize(
    ("cls", "kwargs", "change", "stale"),
    [
        ("SGD", {"lr": 0.1, "momentum": 0.9}, {"momentum": 0.0}, "momentum_buffer"),
        ("Adam", {"lr": 0.1, "amsgrad": True}, {"amsgrad": False}, "max_exp_avg_sq"),
    ],
)
def test_a_slot_of_a_former_setting_is_saved_loaded_and_kept_as_torch_optim_keeps_it(
    cls, kwargs, change, stale
):
    """A group's ``momentum`` (``amsgrad``) switched off mid-run leaves its slot in the state, which
    state_dict() writes; that dict loads back into the same optimizer (it was refused), the slot
    kept unused until the setting returns, as in torch.optim: the same parameters and slots as
    torch.optim's run of the same sequence."""
    grads = [torch.tensor(g) for g in ([0.3, -0.2, 0.1, 1.0], [-0.5, 0.4, 0.2, 0.1], [0.1, 0.1, -0.3, 0.2])]
    grads.append(torch.tensor([0.2, -0.1, 0.4, -0.6]))
    want, native = _run_then_reload(torch.optim, cls, kwargs, change, grads)
    got, ours = _run_then_reload(ut, cls, kwargs, change, grads)
    assert stale in ours.state[got]
    torch.testing.assert_close(ours.state[got][stale], native.state[want][stale])
    torch.testing.assert_close(got, want)


def test_a_narrow_slot_of_a_former_setting_loads_back():
    """SGD with momentum_buffer stored in bfloat16, momentum then set to 0: the dict it writes
    (state_dtypes still naming momentum_buffer) loads back, the slot kept in bfloat16."""
    p = torch.randn(5, requires_grad=True)
    opt = ut.SGD([p], lr=0.1, momentum=0.9, state_dtypes={"momentum_buffer": torch.bfloat16})
    p.grad = torch.randn(5)
    opt.step()
    buffer = opt.state[p]["momentum_buffer"].clone()
    opt.param_groups[0]["momentum"] = 0.0
    p.grad = torch.randn(5)
    opt.step()
    resumed = ut.SGD([p], lr=0.1, momentum=0.9, state_dtypes={"momentum_buffer": torch.bfloat16})
    resumed.load_state_dict(opt.state_dict())
    assert resumed.param_groups[0]["momentum"] == 0.0
    assert resumed.state[p]["momentum_buffer"].dtype == torch.bfloat16
    assert torch.equal(resumed.state[p]["momentum_buffer"], buffer)
    before = p.detach().clone()
    g = torch.randn(5)
    p.grad = g
    resumed.step()
    torch.testing.assert_close(p.detach(), before - 0.1 * g)  # plain SGD: the buffer unused


def _adam_reference(p0: np.ndarray, grads: list[np.ndarray], betas_per_step, lr: float = 0.01) -> np.ndarray:
    """Adam (torch's convention, bias-corrected, eps outside the root) by hand in float64, each
    step with its own betas: an independent check that a changed option reaches the step."""
    p, m, v = p0.astype(np.float64), np.zeros_like(p0, np.float64), np.zeros_like(p0, np.float64)
    for t, (g, (b1, b2)) in enumerate(zip(grads, betas_per_step, strict=True), start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr / (1 - b1**t) * m / (np.sqrt(v) / np.sqrt(1 - b2**t) + 1e-8)
    return p


@pytest.mark.parametrize("how", ["list mutated in place", "tuple replaced"])
def test_options_changed_between_steps_reach_the_next_step(how):
    """The spec a group's options give is reused while they are unchanged; a change between steps,
    even in place in a list (torch.optim reads ``group["betas"]`` afresh each step), reaches the
    next step."""
    p0 = np.array([0.5, -1.0, 2.0, 0.25])
    grads = [np.array(g) for g in ([0.3, -0.2, 0.1, 1.0], [-0.5, 0.4, 0.2, 0.1], [0.1, 0.1, -0.3, 0.2])]
    p = torch.tensor(p0, dtype=torch.float64, requires_grad=True)
    opt = ut.Adam([p], lr=0.01, convention="torch")
    for t, g in enumerate(grads):
        if t == 1:
            opt.param_groups[0]["betas"] = [0.9, 0.999]  # a list, as a user sets it
        if t == 2:
            if how == "list mutated in place":
                opt.param_groups[0]["betas"][0] = 0.5
            else:
                opt.param_groups[0]["betas"] = (0.5, 0.999)
        p.grad = torch.tensor(g)
        opt.step()
    want = _adam_reference(p0, grads, [(0.9, 0.999), (0.9, 0.999), (0.5, 0.999)])
    np.testing.assert_allclose(p.detach().numpy(), want, rtol=1e-12)


def test_a_tensor_lr_changed_in_place_reaches_the_next_step():
    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    lr = torch.tensor(0.1, dtype=torch.float64)
    opt = ut.SGD([p], lr=lr)
    p.grad = torch.ones(3, dtype=torch.float64)
    opt.step()
    lr.fill_(0.5)  # the group holds this very tensor
    opt.step()
    torch.testing.assert_close(p.detach(), torch.full((3,), -0.6, dtype=torch.float64))


def test_an_invalid_option_set_after_steps_is_refused_before_anything_changes():
    p = torch.ones(3, requires_grad=True)
    opt = ut.SGD([p], lr=0.1, momentum=0.9)
    p.grad = torch.ones(3)
    opt.step()
    before = p.detach().clone(), opt.state[p]["momentum_buffer"].clone()
    opt.param_groups[0]["momentum"] = -0.5
    with pytest.raises(ValueError, match="momentum"):
        opt.step()
    assert torch.equal(p.detach(), before[0]) and torch.equal(opt.state[p]["momentum_buffer"], before[1])
    opt.param_groups[0]["momentum"] = 0.9
    opt.step()  # valid again: steps


@pytest.mark.parametrize("implementation", ["auto", "loop"])
def test_a_convention_set_mid_run_that_refuses_a_groups_parameter_is_refused_before_any_group_steps(
    implementation,
):
    """Muon's ``torch`` convention takes 2-D parameters only; a group holding a 1-D parameter under
    ``convention="keras"`` (stepped with Adam there) switched to ``"torch"`` in ``param_groups``
    is refused when the step starts, naming the parameter's shape, with every group's parameters,
    state and step counts as they were; switched back, the run goes on. Until 2026-12-07 the rule
    refused it halfway through the step, after the first group had been updated and every step
    counter advanced (found by a user trial)."""
    g = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(16, 16, generator=g))
    b = torch.nn.Parameter(torch.randn(5, generator=g))
    groups = [{"params": [w]}, {"params": [b], "convention": "keras"}]
    opt = ut.Muon(groups, convention="torch", implementation=implementation)
    w.grad, b.grad = torch.randn(16, 16, generator=g), torch.randn(5, generator=g)
    opt.step()
    before = [t.detach().clone() for t in (w, b, opt.state[w]["momentum_buffer"])]
    opt.param_groups[1].update(convention="torch", adjust_lr_fn="original")
    with pytest.raises(
        ValueError, match=r"uniopt\.torch\.Muon: a parameter of shape \(5,\) with convention='torch'"
    ):
        opt.step()
    after = [w.detach(), b.detach(), opt.state[w]["momentum_buffer"]]
    assert all(torch.equal(x, y) for x, y in zip(before, after, strict=True))
    assert [int(opt.state[p]["step"]) for p in (w, b)] == [1, 1]
    opt.param_groups[1].update(convention="keras", adjust_lr_fn=None)
    opt.step()
    assert [int(opt.state[p]["step"]) for p in (w, b)] == [2, 2] and not torch.equal(w.detach(), before[0])


@pytest.mark.parametrize("implementation", ["auto", "loop"])
def test_an_eps_set_mid_run_that_rounds_to_zero_in_the_parameters_dtype_is_refused_as_at_construction(
    implementation,
):
    """The constructor refuses ``eps=1e-50`` for float32 parameters (it rounds to 0 there, so the
    update would ignore it); set in ``param_groups`` after a step, the next step refuses it too,
    before anything changes, on the flat path (``"auto"``) as on the per-tensor loop. Until
    2026-12-07 the flat path stepped with it."""
    p = torch.nn.Parameter(torch.ones(4, 3))
    with pytest.raises(ValueError, match=r"eps=1e-50 rounds to 0 in torch\.float32"):
        ut.Adam([torch.nn.Parameter(torch.ones(2))], lr=1e-3, eps=1e-50)
    opt = ut.Adam([p], lr=1e-3, implementation=implementation)
    p.grad = torch.full((4, 3), 0.5)
    opt.step()
    before = p.detach().clone(), opt.state[p]["exp_avg"].clone()
    opt.param_groups[0]["eps"] = 1e-50
    with pytest.raises(ValueError, match=r"eps=1e-50 rounds to 0 in torch\.float32"):
        opt.step()
    assert torch.equal(p.detach(), before[0]) and torch.equal(opt.state[p]["exp_avg"], before[1])
    assert int(opt.state[p]["step"]) == 1
    opt.param_groups[0]["eps"] = 1e-8
    opt.step()
    assert int(opt.state[p]["step"]) == 2


def test_a_flag_given_as_an_int_after_a_bool_is_refused_as_at_construction():
    """``maximize=True`` then ``maximize=1`` (equal as Python values): the step validates what was
    set, and refuses the int as the constructor and a first step do (uniopt takes only real bools
    for its switches; torch.optim reads any truthy value), before anything changes. Until
    2026-12-06 the validated specs were kept by value alone, so a spec made for ``True`` stood for
    ``1`` and the run went on."""
    p = torch.ones(3, dtype=torch.float64, requires_grad=True)
    opt = ut.SGD([p], lr=0.1, momentum=0.9, maximize=True, convention="torch")
    p.grad = torch.full((3,), 0.5, dtype=torch.float64)
    opt.step()
    before = p.detach().clone()
    opt.param_groups[0]["maximize"] = 1
    with pytest.raises(ValueError, match="maximize=1 is not a bool"):
        opt.step()
    assert torch.equal(p.detach(), before) and int(opt.state[p]["step"]) == 1
    with pytest.raises(ValueError, match="maximize=1 is not a bool"):
        ut.SGD([torch.ones(3, requires_grad=True)], lr=0.1, maximize=1)
    opt.param_groups[0]["maximize"] = True  # and the run goes on as before
    opt.step()
    assert int(opt.state[p]["step"]) == 2


def test_a_tuple_item_given_as_a_bool_after_an_int_is_refused_as_at_construction():
    """``betas=(0, 0.9)`` then ``betas=(False, 0.9)``: equal tuples, but the second holds a bool,
    which the constructor refuses as a hyperparameter (a bool is no number); the step refuses it
    too, before anything changes. Until 2026-12-06 the step's cache compared the tuple's type
    alone, so the spec made for ``(0, 0.9)`` stood for ``(False, 0.9)``."""
    p = torch.ones(3, dtype=torch.float64, requires_grad=True)
    p.grad = torch.full((3,), 0.5, dtype=torch.float64)
    opt = ut.Adam([p], lr=0.1, betas=(0, 0.9))
    opt.step()
    before = p.detach().clone()
    opt.param_groups[0]["betas"] = (False, 0.9)
    with pytest.raises(ValueError, match=r"betas\[0\]=False is not a real number"):
        opt.step()
    assert torch.equal(p.detach(), before) and int(opt.state[p]["step"]) == 1
    with pytest.raises(ValueError, match=r"betas\[0\]=False is not a real number"):
        ut.Adam([torch.ones(3, requires_grad=True)], betas=(False, 0.9))
    opt.param_groups[0]["betas"] = (0, 0.9)  # and the run goes on as before
    opt.step()
    assert int(opt.state[p]["step"]) == 2
