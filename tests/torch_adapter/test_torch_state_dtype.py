"""uniopt.torch's ``state_dtypes``: slots of ``Spec.lower_precision_slots`` stored in bfloat16 or
float16 beside float32 parameters (docs/torch.md, docs/conventions.md "Lower-precision state").

Expected values: the NumPy reference (the core's ``init(slot_dtypes=...)``/``update`` on NumPy
arrays, ml_dtypes' bfloat16) bit for bit, and for one optimizer a hand-written NumPy float32 step
with ml_dtypes' rounding (each operation of the formula written out here, not the spec's rule)."""

from __future__ import annotations

import io
import math

import ml_dtypes
import numpy as np
import pytest
import torch
from cases import float32_draws

import uniopt
import uniopt.porting
import uniopt.torch as ut
from uniopt.registry import TABLE

NUMPY = {torch.bfloat16: np.dtype(ml_dtypes.bfloat16), torch.float16: np.dtype(np.float16)}
TORCH = {"bfloat16": torch.bfloat16, "float16": torch.float16}
STEPS = 6

STATE_CASES = [  # flat and compiled only for elementwise rules (Muon's runs per tensor there)
    pytest.param(info, case, implementation, id=f"{info.name}-{case.desc}-{implementation}")
    for info in TABLE
    if info.torch is not None
    for case in info.state_cases
    for implementation in ("loop", "flat", "compiled")
    if implementation == "loop" or info.elementwise
]


def _bits(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach()
        return a.view(torch.int16 if a.element_size() == 2 else torch.int32).numpy()
    a = np.asarray(a)
    return a.view(np.uint16 if a.dtype.itemsize == 2 else np.uint32).astype(
        np.int16 if a.dtype.itemsize == 2 else np.int32
    )


def _optimizer(info, case, params, implementation="loop", **extra):
    cls = getattr(ut, info.name)
    dtypes = {name: TORCH[d] for name, d in case.slot_dtypes.items()}
    return cls(params, **dict(case.kwargs), state_dtypes=dtypes, implementation=implementation, **extra)


@pytest.mark.parametrize(("info", "case", "implementation"), STATE_CASES)
def test_matches_the_numpy_reference(info, case, implementation):
    """Every state case of a row with torch names, against the core run on NumPy: parameters and
    every slot (in its stored dtype) bit for bit after each step."""
    shapes = [(8, 6), (5, 4)]
    params0, grads = float32_draws(shapes, STEPS, seed=3)
    spec = info.make(case)
    state = spec.init(params0, slot_dtypes=case.slot_dtypes)
    ref = list(params0)
    ps = [torch.tensor(p, requires_grad=True) for p in params0]
    opt = _optimizer(info, case, ps, implementation)
    for t, g in enumerate(grads, start=1):
        ref, state = spec.update(g, state, ref)
        for p, gi in zip(ps, g, strict=True):
            p.grad = torch.tensor(gi)
        opt.step()
        for i, p in enumerate(ps):
            np.testing.assert_array_equal(_bits(p), _bits(ref[i]), err_msg=f"param {i} step {t}")
            for name, want in state.slots[i].items():
                got = opt.state[p][name]
                assert str(got.dtype).rsplit(".")[-1] == want.dtype.name, (name, got.dtype)
                np.testing.assert_array_equal(_bits(got), _bits(want), err_msg=f"{name} {i} step {t}")
    # the stored slot really is narrower than the parameters
    narrow = next(iter(case.slot_dtypes))
    assert opt.state[ps[0]][narrow].dtype == TORCH[case.slot_dtypes[narrow]]
    if implementation != "loop":  # the flat paths bucket narrow slots: each slot a view of a buffer
        assert all(opt.state[p][narrow]._base is not None for p in ps)
        buckets = opt._buckets[0][4]  # the group's (bucket, compiled) pairs
        want = tuple(TORCH.get(case.slot_dtypes.get(n), torch.float32) for n in spec.slot_names())
        assert buckets and {bucket.slot_dtypes for bucket, _ in buckets} == {want}


@pytest.mark.parametrize("narrow", ["bfloat16", "float16"])
def test_adam_hand_steps(narrow):
    """Two steps of uniopt's Adam formula written out in NumPy float32, the moment rounded once per
    step to the stored dtype by ml_dtypes/NumPy (m1 = g*(1-b1); the step from the unrounded m)."""
    dt = np.dtype(ml_dtypes.bfloat16) if narrow == "bfloat16" else np.dtype(np.float16)
    (p0,), grads = float32_draws([(300,)], 2, seed=4)
    p = torch.tensor(p0, requires_grad=True)
    opt = ut.Adam([p], lr=1e-2, state_dtypes={"exp_avg": narrow})
    b1, b2, eps = np.float32(0.9), np.float32(0.999), np.float32(1e-8)
    m, v, q = np.zeros(p0.shape, dt), np.zeros_like(p0), p0.copy()
    for t, (g,) in enumerate(grads, start=1):
        p.grad = torch.tensor(g)
        opt.step()
        m32 = m.astype(np.float32) * b1 + g * np.float32(1 - 0.9)
        v = v * b2 + (g * g) * np.float32(1 - 0.999)
        step_size = np.float32(1e-2 / (1 - 0.9**t))
        inv_sqrt_bc2 = np.float32(1 / math.sqrt(1 - 0.999**t))
        q = q - (m32 / (np.sqrt(v) * inv_sqrt_bc2 + eps)) * step_size
        m = m32.astype(dt)
        np.testing.assert_array_equal(_bits(opt.state[p]["exp_avg"]), _bits(m), err_msg=f"step {t}")
        np.testing.assert_array_equal(_bits(opt.state[p]["exp_avg_sq"]), _bits(v))
        np.testing.assert_array_equal(_bits(p), _bits(q))
    assert opt.state[p]["exp_avg"].dtype == TORCH[narrow]
    assert opt.state[p]["exp_avg_sq"].dtype == torch.float32
    assert np.any(m32 != m.astype(np.float32))  # rounding happened: float32 would keep more bits


def test_state_dict_round_trip_keeps_the_dtype_and_continues_bitwise():
    """torch.optim's load_state_dict casts state to the parameter's dtype; uniopt's keeps the
    stored dtype, and the run continues as the uninterrupted one, through torch.save/torch.load."""
    (p0, w0), grads = float32_draws([(50,), (7, 3)], 6, seed=5)
    a = [torch.tensor(x, requires_grad=True) for x in (p0, w0)]
    opt = ut.Adam(a, lr=1e-2, state_dtypes={"exp_avg": torch.bfloat16})
    for g in grads[:3]:
        for p, gi in zip(a, g, strict=True):
            p.grad = torch.tensor(gi)
        opt.step()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    b = [p.detach().clone().requires_grad_() for p in a]
    resumed = ut.Adam(b, lr=1e-2)  # the state_dict's groups carry state_dtypes
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["state_dtypes"] == {"exp_avg": torch.bfloat16}
    for p in b:
        assert resumed.state[p]["exp_avg"].dtype == torch.bfloat16
    for g in grads[3:]:
        for p, q, gi in zip(a, b, g, strict=True):
            p.grad, q.grad = torch.tensor(gi), torch.tensor(gi)
        opt.step()
        resumed.step()
    for p, q in zip(a, b, strict=True):
        np.testing.assert_array_equal(_bits(p), _bits(q))
        for name in ("exp_avg", "exp_avg_sq"):
            assert resumed.state[q][name].dtype == opt.state[p][name].dtype
            np.testing.assert_array_equal(_bits(resumed.state[q][name]), _bits(opt.state[p][name]))


def test_load_refuses_a_narrow_slot_its_group_does_not_store():
    p = torch.randn(10, requires_grad=True)
    opt = ut.Adam([p], lr=1e-2, state_dtypes={"exp_avg": torch.bfloat16})
    p.grad = torch.randn(10)
    opt.step()
    saved = opt.state_dict()
    del saved["param_groups"][0]["state_dtypes"]
    target = ut.Adam([p.detach().clone().requires_grad_()], lr=1e-2)
    with pytest.raises(ValueError, match=r"slot 'exp_avg' is torch.bfloat16 beside a torch.float32"):
        target.load_state_dict(saved)
    assert not target.state
    # and a float32 slot where the group says bfloat16: not rounded silently
    saved = opt.state_dict()
    saved["state"][0]["exp_avg"] = saved["state"][0]["exp_avg"].float()
    with pytest.raises(ValueError, match=r"stores it in torch.bfloat16 \(state_dtypes\)"):
        target.load_state_dict(saved)


def test_per_group_dtypes_and_flat_path_agree_with_loop():
    """A group with a bfloat16 moment beside one without: the flat implementations run the narrow
    group per tensor and give the loop's bits."""
    params0, grads = float32_draws([(40,), (6, 5), (9,)], 4, seed=6)
    results = {}
    for implementation in ("loop", "flat", "compiled"):
        ps = [torch.tensor(x, requires_grad=True) for x in params0]
        opt = ut.Adam(
            [{"params": ps[:2], "state_dtypes": {"exp_avg": "bfloat16"}}, {"params": ps[2:]}],
            lr=1e-2,
            implementation=implementation,
        )
        for g in grads:
            for p, gi in zip(ps, g, strict=True):
                p.grad = torch.tensor(gi)
            opt.step()
        assert [opt.state[p]["exp_avg"].dtype for p in ps] == [torch.bfloat16] * 2 + [torch.float32]
        results[implementation] = [_bits(p) for p in ps] + [_bits(opt.state[p]["exp_avg"]) for p in ps]
    for implementation in ("flat", "compiled"):
        for got, want in zip(results[implementation], results["loop"], strict=True):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"state_dtypes": {"exp_avg_sq": torch.bfloat16}},
            r"state_dtypes\['exp_avg_sq'\]=torch.bfloat16 .* slot 'exp_avg_sq' is stored in its parameter's",
        ),
        (
            {"state_dtypes": {"exp_avg": torch.float64}},
            r"state_dtypes\['exp_avg'\]=torch.float64 .*expected float32 or bfloat16 or float16",
        ),
        ({"state_dtypes": {"exp_avg": torch.int8}}, r"state_dtypes\['exp_avg'\]=torch.int8; expected a real"),
        ({"state_dtypes": {"exp_avg": "bf16"}}, r"state_dtypes\['exp_avg'\]='bf16'; expected a real"),
        ({"state_dtypes": {"mu": torch.bfloat16}}, r"state_dtypes names 'mu', not a slot"),
        ({"state_dtypes": torch.bfloat16}, r"state_dtypes=torch.bfloat16; expected a dict"),
    ],
)
def test_bad_values_are_refused_before_any_state(kwargs, message):
    p = torch.randn(4, requires_grad=True)
    with pytest.raises(ValueError, match=message):
        ut.Adam([p], lr=1e-2, **kwargs)


def test_refusals_per_parameter_and_per_group():
    half = torch.randn(4, dtype=torch.float16, requires_grad=True)
    with pytest.raises(ValueError, match=r"state_dtypes\['exp_avg'\]=torch.bfloat16 .* dtype torch.float16"):
        ut.Adam([half], lr=1e-2, eps=1e-3, state_dtypes={"exp_avg": torch.bfloat16})
    cplx = torch.randn(4, dtype=torch.complex64, requires_grad=True)
    with pytest.raises(ValueError, match=r"dtype torch.complex64"):
        ut.Adam([cplx], lr=1e-2, state_dtypes={"exp_avg": torch.bfloat16})
    with pytest.raises(ValueError, match=r"state_dtypes names 'momentum_buffer'.*its slots: none"):
        ut.SGD([torch.randn(3, requires_grad=True)], lr=0.1, state_dtypes={"momentum_buffer": "bfloat16"})
    opt = ut.Adam([torch.randn(3, requires_grad=True)], lr=1e-2, eps=1e-3)
    with pytest.raises(ValueError, match=r"state_dtypes\['exp_avg'\]=torch.bfloat16 .* dtype torch.float16"):
        opt.add_param_group({"params": [half], "state_dtypes": {"exp_avg": torch.bfloat16}})
    assert len(opt.param_groups) == 1 and not opt.state
    # Adagrad creates its state in the constructor: nothing is made when the check fails
    with pytest.raises(ValueError, match=r"slot 'sum' is stored in its parameter's dtype"):
        ut.Adagrad([torch.randn(3, requires_grad=True)], state_dtypes={"sum": torch.bfloat16})


WIDE_CASES = [
    ("Adam", {"lr": 1e-2}, "exp_avg"),
    ("Adam", {"lr": 1e-2, "convention": "optax"}, "exp_avg"),
    ("NAdam", {"lr": 1e-2, "convention": "optax"}, "exp_avg"),
    ("Lion", {"lr": 1e-2, "convention": "optax"}, "exp_avg"),
    ("SGD", {"lr": 1e-2, "momentum": 0.9, "convention": "optax"}, "momentum_buffer"),
    ("Muon", {"lr": 1e-2, "convention": "optax"}, "momentum_buffer"),
]


@pytest.mark.parametrize(
    ("name", "kwargs", "slot", "implementation"),
    [
        pytest.param(*case, implementation, id=f"{case[0]}-{case[1].get('convention', '')}-{implementation}")
        for case in WIDE_CASES
        # Muon's rule reduces over each matrix: no flat paths
        for implementation in (("loop", "auto") if case[0] == "Muon" else ("loop", "flat", "compiled"))
    ],
)
def test_float32_slot_beside_float64_parameters(name, kwargs, slot, implementation):
    """float32 is narrower than float64 too: the slot stored in float32, against the core, over
    several steps. Under optax's convention the decay that multiplies the stored slot is rounded to
    float32 first (jax's weak typing; tests/jax_adapter/test_jax_state_dtype.py checks optax
    itself): until 2026-12-06 those scalars had no float32 field and the first step raised
    ``AttributeError``."""
    rng = np.random.default_rng(7)
    params0 = [rng.standard_normal((6, 5)), rng.standard_normal(30)]
    grads = [[rng.standard_normal(p.shape) for p in params0] for _ in range(STEPS)]
    spec = getattr(uniopt, name)(**kwargs)
    state = spec.init(params0, slot_dtypes={slot: "float32"})
    ref = list(params0)
    ps = [torch.tensor(p, requires_grad=True) for p in params0]
    opt = getattr(ut, name)(ps, **kwargs, state_dtypes={slot: torch.float32}, implementation=implementation)
    for g in grads:
        ref, state = spec.update(g, state, ref)
        for p, gi in zip(ps, g, strict=True):
            p.grad = torch.tensor(gi)
        opt.step()
        for i, p in enumerate(ps):
            if slot in state.slots[i]:
                assert opt.state[p][slot].dtype == torch.float32
                np.testing.assert_array_equal(opt.state[p][slot].numpy(), state.slots[i][slot])
            if name == "Muon":  # float64 matrix products: torch's BLAS sums in its own order
                np.testing.assert_allclose(p.detach().numpy(), ref[i], rtol=1e-13, atol=0)
            else:
                np.testing.assert_array_equal(p.detach().numpy(), ref[i])


def test_export_save_load_import_continues_the_numpy_run():
    """A bfloat16 moment goes out through export_state/save_state and back through
    load_state/import_state in its dtype; the NumPy core continues the exported record, the
    re-imported optimizer continues bit for bit with it; an optimizer keeping float32 refuses it."""
    params0, grads = float32_draws([(6, 4), (4,)], 6, seed=12)
    ps = [torch.tensor(p, requires_grad=True) for p in params0]
    unstepped = ut.export_state(ut.Adam(ps, lr=1e-2, state_dtypes={"exp_avg": torch.bfloat16}))
    assert unstepped.slot_dtypes == ({"exp_avg": "bfloat16"},) * 2  # initial slots in their dtype
    opt = ut.Adam(ps, lr=1e-2, state_dtypes={"exp_avg": torch.bfloat16})
    for g in grads[:3]:
        for p, gi in zip(ps, g, strict=True):
            p.grad = torch.tensor(gi)
        opt.step()
    buffer = io.BytesIO()
    uniopt.save_state(buffer, ut.export_state(opt))
    buffer.seek(0)
    record = uniopt.load_state(buffer)
    assert record.slot_dtypes == ({"exp_avg": "bfloat16"},) * 2
    assert record.slots[0]["exp_avg"].dtype == np.dtype(ml_dtypes.bfloat16)
    spec = uniopt.Adam(lr=1e-2)
    params = [p.detach().numpy().copy() for p in ps]
    state = uniopt.porting.import_state(record, spec, params)
    qs = [torch.tensor(p, requires_grad=True) for p in params]
    wide = ut.Adam(qs, lr=1e-2)
    with pytest.raises(ValueError, match=r"slot 'exp_avg' is torch.bfloat16 beside a torch.float32"):
        ut.import_state(wide, record)
    assert not wide.state
    resumed = ut.Adam(qs, lr=1e-2, state_dtypes={"exp_avg": torch.bfloat16})
    ut.import_state(resumed, record)
    for g in grads[3:]:
        params, state = spec.update(g, state, params)
        for q, gi in zip(qs, g, strict=True):
            q.grad = torch.tensor(gi)
        resumed.step()
    for i, q in enumerate(qs):
        np.testing.assert_array_equal(_bits(q), _bits(params[i]))
        for name in ("exp_avg", "exp_avg_sq"):
            assert str(resumed.state[q][name].dtype).rsplit(".")[-1] == state.slots[i][name].dtype.name
            np.testing.assert_array_equal(_bits(resumed.state[q][name]), _bits(state.slots[i][name]))


def test_a_record_refuses_a_narrow_slot_the_spec_keeps_wide():
    p = np.zeros(3, np.float32)
    slots = {"exp_avg": p.copy(), "exp_avg_sq": p.astype(ml_dtypes.bfloat16)}
    with pytest.raises(
        ValueError, match=r"slot 'exp_avg_sq' is bfloat16\[3\], the parameter is float32\[3\]"
    ):
        uniopt.PortableState("Adam", uniopt.Adam(lr=1e-2).hyperparameters, 1, (slots,), ((3,),), ("float32",))


def _hand_adam(p0, grads, stored):
    """uniopt's Adam (lr 1e-2, betas (0.9, 0.999), eps 1e-8) written out in NumPy float32 as in
    test_adam_hand_steps; ``stored[t - 1]``: the NumPy dtype the moment is kept in from step ``t``
    on (widened exactly, or rounded once by ml_dtypes/NumPy, where it changes). Returns, per step,
    (param, exp_avg, exp_avg_sq)."""
    b1, b2, eps = np.float32(0.9), np.float32(0.999), np.float32(1e-8)
    m, v, q = np.zeros(p0.shape, stored[0]), np.zeros_like(p0), p0.copy()
    out = []
    for t, (g, dt) in enumerate(zip(grads, stored, strict=True), start=1):
        m = m.astype(dt)  # the slot as the group now stores it, before the step
        m32 = m.astype(np.float32) * b1 + g * np.float32(1 - 0.9)
        v = v * b2 + (g * g) * np.float32(1 - 0.999)
        step_size = np.float32(1e-2 / (1 - 0.9**t))
        inv_sqrt_bc2 = np.float32(1 / math.sqrt(1 - 0.999**t))
        q = q - (m32 / (np.sqrt(v) * inv_sqrt_bc2 + eps)) * step_size
        m = m32.astype(dt)
        out.append((q, m, v))
    return out


BF16 = np.dtype(ml_dtypes.bfloat16)


@pytest.mark.parametrize("implementation", ["loop", "flat"])
@pytest.mark.parametrize(
    ("before", "after"),
    [
        ({"exp_avg": torch.bfloat16}, None),
        (None, {"exp_avg": torch.bfloat16}),
        (None, {"exp_avg": "bfloat16"}),
    ],
    ids=["bf16-to-none", "none-to-bf16", "none-to-bf16-by-name"],
)
def test_state_dtypes_changed_mid_run_applies_at_the_next_step(before, after, implementation):
    """``group['state_dtypes']`` set between steps (as torch.optim's options are) is what the next
    step stores the slot in: bfloat16 -> float32 widened exactly, float32 -> bfloat16 rounded once
    (ml_dtypes' rounding in the hand-written NumPy run); the state_dict then saved loads back into
    an optimizer built with the former setting, and continues bit for bit."""
    (p0,), grads = float32_draws([(300,)], 5, seed=7)
    p = torch.tensor(p0, requires_grad=True)
    opt = ut.Adam([p], lr=1e-2, state_dtypes=before, implementation=implementation)
    dt_before = BF16 if before else np.dtype(np.float32)
    dt_after = BF16 if after else np.dtype(np.float32)
    want = _hand_adam(p0, [g for (g,) in grads], [dt_before] * 2 + [dt_after] * 3)
    for t, (g,) in enumerate(grads[:3], start=1):
        if t == 3:
            opt.param_groups[0]["state_dtypes"] = after
        p.grad = torch.tensor(g)
        opt.step()
    q, m, v = want[2]
    assert opt.state[p]["exp_avg"].dtype == (torch.bfloat16 if after else torch.float32)
    np.testing.assert_array_equal(_bits(opt.state[p]["exp_avg"]), _bits(m))
    np.testing.assert_array_equal(_bits(opt.state[p]["exp_avg_sq"]), _bits(v))
    np.testing.assert_array_equal(_bits(p), _bits(q))
    if after is not None:  # kept as torch.dtype values, as add_param_group keeps them
        assert opt.param_groups[0]["state_dtypes"] == {"exp_avg": torch.bfloat16}
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    b = torch.tensor(np.asarray(q), requires_grad=True)
    resumed = ut.Adam([b], lr=1e-2, state_dtypes=before, implementation=implementation)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.param_groups[0]["state_dtypes"] == opt.param_groups[0]["state_dtypes"]
    for (g,) in grads[3:]:
        b.grad = torch.tensor(g)
        resumed.step()
    q, m, v = want[4]
    assert resumed.state[b]["exp_avg"].dtype == (torch.bfloat16 if after else torch.float32)
    np.testing.assert_array_equal(_bits(resumed.state[b]["exp_avg"]), _bits(m))
    np.testing.assert_array_equal(_bits(b), _bits(q))


@pytest.mark.parametrize(
    ("dtypes", "message"),
    [
        ({"exp_avg_sq": torch.bfloat16}, r"state_dtypes\['exp_avg_sq'\]=torch\.bfloat16 .* stored in its"),
        ({"exp_avg": torch.float64}, r"state_dtypes\['exp_avg'\]=torch\.float64 .* expected float32 or"),
        ({"nu": torch.bfloat16}, r"state_dtypes names 'nu', not a slot"),
        ("bfloat16", r"state_dtypes='bfloat16'; expected a dict"),
    ],
)
def test_a_bad_state_dtypes_set_mid_run_is_refused_before_anything_changes(dtypes, message):
    p = torch.randn(6, requires_grad=True)
    opt = ut.Adam([p], lr=1e-2)
    p.grad = torch.randn(6)
    opt.step()
    before = {k: v.clone() for k, v in opt.state[p].items()}
    p0 = p.detach().clone()
    opt.param_groups[0]["state_dtypes"] = dtypes
    with pytest.raises(ValueError, match=message):
        opt.step()
    assert torch.equal(p, p0)
    for k, v in before.items():
        assert opt.state[p][k].dtype == v.dtype and torch.equal(opt.state[p][k], v)


def test_a_saved_group_without_state_dtypes_takes_defaults_and_a_float32_slot_is_refused():
    """An optimizer built with state_dtypes loading a dict whose groups have none (written by one
    built without): the groups take defaults' (not left without the key), so a float32 slot is
    refused as import_state refuses it, nothing loaded; a dict without state loads and the group
    keeps state_dtypes; the way the refusal names (load into one built without, then set the
    group's state_dtypes) stores the slot in bfloat16 from the next step."""
    src_p = torch.randn(5, requires_grad=True)
    src = ut.Adam([src_p], lr=1e-2)
    fresh_state = src.state_dict()  # no state yet
    src_p.grad = torch.randn(5)
    src.step()
    saved = src.state_dict()
    p = src_p.detach().clone().requires_grad_()
    opt = ut.Adam([p], lr=1e-2, state_dtypes={"exp_avg": torch.bfloat16})
    with pytest.raises(ValueError, match=r"the saved group 0 has no state_dtypes, so it takes this optim"):
        opt.load_state_dict(saved)
    assert opt.param_groups[0]["state_dtypes"] == {"exp_avg": torch.bfloat16}
    assert not opt.state
    q = src_p.detach().clone().requires_grad_()
    native = torch.optim.Adam([q], lr=1e-2)
    q.grad = torch.randn(5)
    native.step()
    with pytest.raises(ValueError, match=r"has no state_dtypes"):  # the torch.optim route alike
        ut.load_torch_optim_state_dict(opt, native.state_dict())
    assert not opt.state
    assert opt.param_groups[0]["state_dtypes"] == {"exp_avg": torch.bfloat16}
    opt.load_state_dict(fresh_state)
    assert opt.param_groups[0]["state_dtypes"] == {"exp_avg": torch.bfloat16}
    p.grad = torch.randn(5)
    opt.step()
    assert opt.state[p]["exp_avg"].dtype == torch.bfloat16
    # the way out the message gives
    wide = ut.Adam([p], lr=1e-2)
    wide.load_state_dict(saved)
    m = saved["state"][0]["exp_avg"]
    wide.param_groups[0]["state_dtypes"] = {"exp_avg": torch.bfloat16}
    g = torch.randn(5)
    p.grad = g
    wide.step()
    assert wide.state[p]["exp_avg"].dtype == torch.bfloat16
    expected = (
        m.to(torch.bfloat16).float().numpy() * np.float32(0.9) + g.numpy() * np.float32(1 - 0.9)
    ).astype(BF16)
    np.testing.assert_array_equal(_bits(wide.state[p]["exp_avg"]), _bits(expected))


@pytest.mark.parametrize(
    ("before", "after"), [({"exp_avg": torch.bfloat16}, None), (None, {"exp_avg": "bfloat16"})]
)
def test_state_dict_saved_right_after_a_change_holds_the_slots_as_the_next_step_stores_them(before, after):
    """state_dict() between the change and the next step: the saved slot is in the new dtype
    (widened exactly, or rounded by ml_dtypes' rounding), the live state unchanged, and the dict
    loads back into an optimizer built with the former setting."""
    p = torch.randn(40, requires_grad=True)
    opt = ut.Adam([p], lr=1e-2, state_dtypes=before)
    for _ in range(2):
        p.grad = torch.randn(40)
        opt.step()
    live = opt.state[p]["exp_avg"]
    opt.param_groups[0]["state_dtypes"] = after
    saved = opt.state_dict()
    assert opt.state[p]["exp_avg"] is live  # not changed until the next step
    got = saved["state"][0]["exp_avg"]
    if after is None:
        assert got.dtype == torch.float32
        np.testing.assert_array_equal(got.numpy(), live.float().numpy())
    else:
        assert got.dtype == torch.bfloat16
        np.testing.assert_array_equal(_bits(got), _bits(live.numpy().astype(BF16)))
    resumed = ut.Adam([p.detach().clone().requires_grad_()], lr=1e-2, state_dtypes=before)
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["state_dtypes"] == (after and {"exp_avg": torch.bfloat16})
    assert torch.equal(next(iter(resumed.state.values()))["exp_avg"], got)
