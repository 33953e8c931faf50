"""uniopt.torch.Muon against torch.optim.Muon (torch/optim/_muon.py): names, defaults, refusals,
state, and the torch convention's numbers against torch's own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import uniopt
import uniopt.torch
from uniopt.torch import load_torch_optim_state_dict
from uniopt.torch._namespace import xp

TORCH_DEFAULTS = {
    "lr": 1e-3,
    "weight_decay": 0.1,
    "momentum": 0.95,
    "nesterov": True,
    "ns_coefficients": (3.4445, -4.7750, 2.0315),
    "eps": 1e-7,
    "ns_steps": 5,
}


def _params(shapes=((6, 4), (4, 6), (5, 5)), dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in shapes]


def _grads(params, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params] for _ in range(steps)]


def _run(opt, params, grads):
    for step in grads:
        for p, g in zip(params, step, strict=True):
            p.grad = g.clone()
        opt.step()


def test_names_defaults_and_positional_order_are_torch_optims():
    a, b = _params(), _params()
    ours, theirs = uniopt.torch.Muon(a), torch.optim.Muon(b)
    for name, value in TORCH_DEFAULTS.items():
        assert ours.defaults[name] == theirs.defaults[name] == value, name
    assert theirs.defaults["adjust_lr_fn"] is None and ours.defaults["adjust_lr_fn"] == "original"
    args = (0.02, 0.01, 0.9, False, (3.0, -4.0, 2.0), 1e-6, 3, "match_rms_adamw")
    ours, theirs = uniopt.torch.Muon(_params(), *args), torch.optim.Muon(_params(), *args)
    for name in (*TORCH_DEFAULTS, "adjust_lr_fn"):
        assert ours.defaults[name] == theirs.defaults[name], name
    with pytest.raises(TypeError, match="at most 8 positional arguments"):
        uniopt.torch.Muon(_params(), *args, 1)


@pytest.mark.parametrize("shape", [(4,), (), (2, 3, 4)])
def test_parameters_that_are_not_matrices_are_refused_at_construction(shape):
    """torch.optim.Muon raises ValueError in its constructor; so does uniopt.torch.Muon, naming the
    shape and the conventions that take it. keras and optax step them with Adam."""
    bad = [torch.nn.Parameter(torch.zeros(shape)), *_params()]
    with pytest.raises(ValueError, match="Muon only supports 2D parameters"):
        torch.optim.Muon(bad)
    refused = r"uniopt\.torch\.Muon: a parameter of shape .* Muon only supports 2-D"
    with pytest.raises(ValueError, match=refused):
        uniopt.torch.Muon(bad)
    opt = uniopt.torch.Muon(_params())
    with pytest.raises(ValueError, match="Muon only supports 2-D"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(shape))]})
    assert len(opt.param_groups) == 1 and not opt.state
    for convention in ("keras", "optax"):
        opt = uniopt.torch.Muon(bad, convention=convention)
        for p in bad:
            p.grad = torch.ones_like(p)
        opt.step()
        assert set(opt.state[bad[0]]) == {"step", "momentum_buffer", "exp_avg_sq"}


def test_complex_parameters_are_refused():
    with pytest.raises(ValueError, match="complex parameters are not supported"):
        uniopt.torch.Muon([torch.nn.Parameter(torch.zeros((2, 2), dtype=torch.complex64))])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": -1.0}, r"lr=-1\.0 is out of range"),
        ({"momentum": -0.1}, r"momentum=-0\.1 is out of range"),
        ({"weight_decay": -0.1}, r"weight_decay=-0\.1 is out of range"),
        ({"adjust_lr_fn": "sqrt"}, r"adjust_lr_fn='sqrt' is not supported"),
    ],
)
def test_bad_arguments_torch_optim_refuses_are_refused(kwargs, match):
    with pytest.raises(ValueError):
        torch.optim.Muon(_params(), **kwargs)
    with pytest.raises(ValueError, match=match):
        uniopt.torch.Muon(_params(), **kwargs)


def test_the_step_is_the_specs_bit_for_bit():
    """uniopt.torch.Muon runs the spec's rule on uniopt.torch's namespace: every convention equals
    the core fed the same tensors, bit for bit."""
    for convention in ("uniopt", "torch"):
        params = _params()
        grads = _grads(params, 7)
        spec = uniopt.Muon(lr=0.02, convention=convention)
        core = [p.detach().clone() for p in params]
        state = spec.init(core, xp)
        for step in grads:
            core, state = spec.update(step, state, core, xp)
        opt = uniopt.torch.Muon(params, lr=0.02, convention=convention)
        _run(opt, params, grads)
        for p, c, s in zip(params, core, state.slots, strict=True):
            assert torch.equal(p.detach(), c)
            assert torch.equal(opt.state[p]["momentum_buffer"], s["momentum_buffer"])


# Measured 2026-12-01 (torch 2.13 CPU, 2-core x86-64), 30 steps of lr 0.02 on 6x4, 4x6 and 5x5: the
# torch convention differs from torch.optim.Muon from step 1 in float32 (from step 1 or 6 in
# float64), as torch's fused lerp_ and add_(alpha=) (multiply-adds) move the momentum and the
# parameters by an ulp: at most 1.5e-4 of how far torch.optim.Muon moved the parameters in float32,
# 1.2e-14 in float64. Where such an ulp of the momentum crosses a bfloat16 rounding boundary in the
# iteration, that element's update moves by a bfloat16 ulp (2**-8 of it, up to 8e-4 of the
# displacement measured over 20 steps of larger matrices), hence the bound, in both dtypes.
NATIVE_RELATIVE_BOUND = 2e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("adjust_lr_fn", [None, "match_rms_adamw"])
def test_torch_convention_follows_torch_optim_muon(dtype, adjust_lr_fn):
    a, b = _params(dtype=dtype), _params(dtype=dtype)
    start = [p.detach().clone() for p in a]
    grads = _grads(a, 30)
    ours = uniopt.torch.Muon(a, lr=0.02, adjust_lr_fn=adjust_lr_fn, convention="torch")
    theirs = torch.optim.Muon(b, lr=0.02, adjust_lr_fn=adjust_lr_fn)
    _run(ours, a, grads)
    _run(theirs, b, grads)
    for p, q, p0 in zip(a, b, start, strict=True):
        moved = (q.detach() - p0).abs().max()
        assert moved > 0.05
        assert ((p.detach() - q.detach()).abs().max() / moved) <= NATIVE_RELATIVE_BOUND
        # and the momentum, which is elementwise (torch's fused lerp_: a rounding apart per step)
        m, n = ours.state[p]["momentum_buffer"], theirs.state[q]["momentum_buffer"]
        assert torch.allclose(m, n, rtol=1e-5 if dtype == torch.float32 else 1e-13, atol=0)


def test_a_torch_optim_muon_state_dict_continues_under_uniopt():
    """torch.optim.Muon keeps ``momentum_buffer`` and no step count: its state_dict loads with
    ``step=`` (any count: Muon's torch convention reads none), and the run continues as the spec
    continues from that momentum."""
    a = _params()
    grads = _grads(a, 8)
    native = torch.optim.Muon(a, lr=0.02)
    _run(native, a, grads[:5])
    saved = native.state_dict()
    assert set(saved["state"][0]) == {"momentum_buffer"}
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    ours = uniopt.torch.Muon(b, lr=0.5, convention="torch")
    with pytest.raises(ValueError, match="no step count"):
        load_torch_optim_state_dict(ours, saved)
    load_torch_optim_state_dict(ours, saved, step=5)
    assert ours.param_groups[0]["lr"] == 0.02  # the saved group's
    for p, q in zip(a, b, strict=True):
        assert torch.equal(ours.state[q]["momentum_buffer"], native.state[p]["momentum_buffer"])
    spec = uniopt.Muon(lr=0.02, convention="torch")
    core = [p.detach().clone() for p in b]
    state = uniopt.State(5, tuple({"momentum_buffer": native.state[p]["momentum_buffer"].clone()} for p in a))
    for step in grads[5:]:
        core, state = spec.update(step, state, core, xp)
    _run(ours, b, grads[5:])
    for q, c in zip(b, core, strict=True):
        assert torch.equal(q.detach(), c)


def test_uniopt_state_dict_round_trip_keeps_momentum_buffer():
    a = _params()
    grads = _grads(a, 3)
    opt = uniopt.torch.Muon(a, lr=0.02)
    _run(opt, a, grads)
    saved = opt.state_dict()
    assert set(saved["state"][0]) == {"step", "momentum_buffer"}
    other = uniopt.torch.Muon([torch.nn.Parameter(p.detach().clone()) for p in a], lr=0.02)
    other.load_state_dict(saved)
    loaded = other.state_dict()["state"][1]["momentum_buffer"]
    assert torch.equal(loaded, saved["state"][1]["momentum_buffer"])


def test_flat_implementations_are_refused():
    with pytest.raises(ValueError, match="only an elementwise rule allows"):
        uniopt.torch.Muon(_params(), implementation="flat")
    with pytest.raises(ValueError, match="its rule multiplies matrices"):
        uniopt.torch.Muon(_params(), implementation="compiled")


# the Gram product of the wide orientation, m * m * k multiply-adds, from 128**3 (2097152) the kernels
KERNEL_SHAPES = [(181, 191), (191, 181), (256, 384), (300, 100), (110, 180), (64, 1024)]


@pytest.mark.parametrize("shape", [*KERNEL_SHAPES, (20, 25)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_the_torch_conventions_iteration_is_torch_optim_muons_bit_for_bit(shape, dtype):
    """The torch convention's Newton-Schulz iteration on uniopt.torch's namespace gives the bits of
    torch.optim.Muon's own (``_zeropower_via_newtonschulz``), whatever the parameter's dtype (its
    coefficients are float32 roundings of the Python floats, as torch's bfloat16 kernels take
    them): an iteration whose Gram product has at least 128**3 multiply-adds runs all three
    products on torch's bfloat16 ``mm`` and ``addmm`` (the same kernels); 20x25 is formed in
    float32, which agrees with them there. The float32 expression alone differs from torch's
    iteration in most elements of the large shapes (the order of the sums, carried through five
    iterations; measured 64% to 71% on the first three)."""
    from torch.optim._muon import _zeropower_via_newtonschulz

    from uniopt._spec import cast_scalars

    g = torch.randn(shape, generator=torch.Generator().manual_seed(3)).to(dtype)
    spec = uniopt.Muon(lr=0.02, convention="torch")
    sc = cast_scalars(spec.step_scalars(1, 0.02), g, xp)
    theirs = _zeropower_via_newtonschulz(g, spec.ns_coefficients, spec.ns_steps, spec.eps)
    ours = spec._torch_newton_schulz(g, sc, xp)
    assert ours.dtype == torch.float32 and theirs.dtype == torch.bfloat16
    assert torch.equal(ours, theirs.float())
    if shape in KERNEL_SHAPES[:3]:  # the float32 expression (no kernels) is another order of sums
        assert not torch.equal(spec._torch_newton_schulz(g, sc, xp, kernels=False), theirs.float())


@pytest.mark.parametrize("shape", [(64, 64), (127, 129), (20, 25)])
def test_an_iteration_below_the_threshold_forms_the_float32_expression(shape, monkeypatch):
    """Below 128**3 multiply-adds in the Gram product (127x129: 2080641), every product of the
    iteration is the spec's float32 expression, the reference's formulation (no bfloat16 kernel
    call: oneDNN's set-up outweighs such products); from it, all three products of every iteration
    are the kernels'."""
    from uniopt._spec import cast_scalars

    calls = []
    hook = type(xp).uniopt_addmm_bfloat16

    def spy(*args):
        calls.append(args[1].shape)
        return hook(*args)

    monkeypatch.setattr(type(xp), "uniopt_addmm_bfloat16", staticmethod(spy))
    spec = uniopt.Muon(lr=0.02, convention="torch")
    for size, kernels in ((shape, False), ((128, 128), True)):
        g = torch.randn(size, generator=torch.Generator().manual_seed(4))
        sc = cast_scalars(spec.step_scalars(1, 0.02), g, xp)
        assert (size[0] * size[0] * size[1] >= xp.uniopt_bfloat16_min_work) is kernels
        calls.clear()
        ours = spec._torch_newton_schulz(g, sc, xp)
        assert len(calls) == (3 * spec.ns_steps if kernels else 0)
    g = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    sc = cast_scalars(spec.step_scalars(1, 0.02), g, xp)
    ours = spec._torch_newton_schulz(g, sc, xp)
    assert torch.equal(ours, spec._torch_newton_schulz(g, sc, xp, kernels=False))


@pytest.mark.parametrize(
    ("shape", "options", "copies"),
    [
        ((1, 1), {}, 5),
        ((1, 1), {"convention": "torch"}, 5),
        ((3, 4), {"matmul": "exact"}, 0),  # bitwise compiled (inductor's mm is not eager's here)
    ],
)
def test_a_one_element_iterate_is_stored_under_compilation(shape, options, copies):
    """On a 1x1 matrix inductor lowers every product of the Newton-Schulz iteration to elementwise
    ops and inlined the five iterates into one expression (the compiled step of the default
    convention: 115 s of compilation on a 2-core AMD EPYC against 11 to 14 s for 1x5, 5x1 and 3x4).
    Each one-element iterate goes through ``uniopt::materialized``, a copy inductor stores (none for
    larger matrices); the compiled steps are the eager steps' bits (inductor rounding each cast
    as eager torch does: ``emulate_precision_casts``, which the torch convention's bfloat16
    roundings need, as docs/torch.md says)."""
    from torch._inductor.compile_fx import compile_fx

    seen = []

    def backend(gm, example_inputs):
        seen.append([n.target for n in gm.graph.nodes if n.op == "call_function"])
        return compile_fx(gm, example_inputs)

    def run(step_with):
        params = _params((shape,))
        opt = uniopt.torch.Muon(params, lr=0.02, **options)
        for grads in _grads(params, 3):
            params[0].grad = grads[0].clone()
            step_with(opt)()
        return params[0].detach()

    torch._dynamo.reset()
    eager = run(lambda opt: opt.step)
    with torch._inductor.config.patch(emulate_precision_casts=True):
        compiled = run(lambda opt: torch.compile(opt.step, backend=backend))
    assert torch.equal(compiled, eager)
    stored = [targets.count(torch.ops.uniopt.materialized.default) for targets in seen]
    assert max(stored) == copies, stored  # the graph holding the iteration: one copy per iterate


def test_the_stored_copy_is_differentiable_under_compilation():
    """``uniopt::materialized`` is a copy to autograd too: a compiled function through it has the
    eager function's value and gradient."""

    def f(u):
        return (xp.uniopt_materialized(u * 2.0) ** 2).sum()

    x = torch.tensor([[0.5]], requires_grad=True)
    f(x).backward()
    eager = x.grad.clone()
    x.grad = None
    value = torch.compile(f, backend="aot_eager", fullgraph=True)(x)
    value.backward()
    assert value.item() == 1.0 and torch.equal(x.grad, eager)


def test_a_step_under_inference_mode_runs_the_kernels_as_outside_it():
    """torch.inference_mode() (as torch.optim.Muon allows): the step, its kernel iterations
    included, is the same bits as under no_grad."""
    params = _params(((256, 384),))
    grads = _grads(params, 3)
    twin = [torch.nn.Parameter(p.detach().clone()) for p in params]
    plain = uniopt.torch.Muon(params, lr=0.02, convention="torch")
    inferred = uniopt.torch.Muon(twin, lr=0.02, convention="torch")
    _run(plain, params, grads)
    with torch.inference_mode():
        _run(inferred, twin, grads)
    assert torch.equal(params[0].detach(), twin[0].detach())


@pytest.mark.parametrize("convention", ["uniopt", "torch"])
def test_a_step_under_autocast_is_the_step_without_it_and_its_closure_keeps_autocast(convention):
    """torch.autocast would run the spec's float32 products in bfloat16 (measured: 91% of a 64x64
    torch-convention step's elements changed); the update runs with autocast off, as
    torch.optim.Muon's bfloat16 products are unaffected by it, while the closure (the forward
    pass) keeps it."""
    params = _params(((64, 64), (200, 300)))
    grads = _grads(params, 2)
    twin = [torch.nn.Parameter(p.detach().clone()) for p in params]
    plain = uniopt.torch.Muon(params, lr=0.02, convention=convention)
    under = uniopt.torch.Muon(twin, lr=0.02, convention=convention)
    _run(plain, params, grads)
    seen = []

    def closure():
        seen.append((twin[0] @ twin[0]).dtype)
        return torch.zeros(())

    with torch.autocast("cpu", dtype=torch.bfloat16):
        for step in grads:
            for p, g in zip(twin, step, strict=True):
                p.grad = g.clone()
            under.step(closure)
        assert torch.is_autocast_enabled("cpu")
    assert seen == [torch.bfloat16, torch.bfloat16]
    for p, q in zip(params, twin, strict=True):
        assert torch.equal(p.detach(), q.detach())


@pytest.mark.parametrize("name", ["Adam", "Muon"])
def test_a_compiled_step_under_autocast_breaks_no_graph_at_turning_it_off(name):
    """torch.compile traces the update's autocast-off region (plain ``with`` statements): no graph
    break names autocast or a context manager (an ExitStack of them broke the graph), and the
    compiled step under autocast is the compiled step without it."""
    from torch._dynamo.utils import counters

    results = []
    for enabled in (False, True):
        torch._dynamo.reset()
        counters.clear()
        params = _params(((64, 32),))
        grads = _grads(params, 2)
        opt = getattr(uniopt.torch, name)(params, lr=1e-2)
        step = torch.compile(opt.step, backend="eager")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            for g in grads:
                params[0].grad = g[0].clone()
                step()
        breaks = " ".join(counters["graph_break"])
        assert "autocast" not in breaks and "ContextWrapping" not in breaks and "ExitStack" not in breaks
        results.append(params[0].detach().clone())
    assert torch.equal(*results)


def test_the_bfloat16_kernels_are_torchs_own_on_bfloat16_tensors():
    """uniopt_addmm_bfloat16 takes and returns bfloat16 tensors: torch's own ``mm`` and ``addmm``
    (the kernels torch.optim.Muon calls) on them; float32 operands are declined (None)."""
    gen = torch.Generator().manual_seed(0)
    x16 = torch.randn(200, 150, generator=gen).bfloat16()
    gram = xp.uniopt_addmm_bfloat16(None, x16, x16.mT, 0.0, 1.0)
    assert gram.dtype == torch.bfloat16 and torch.equal(gram, torch.mm(x16, x16.mT))
    poly = xp.uniopt_addmm_bfloat16(gram, gram, gram, -4.775, 2.0315)
    assert torch.equal(poly, torch.addmm(gram, gram, gram, beta=-4.775, alpha=2.0315))
    new = xp.uniopt_addmm_bfloat16(x16, poly, x16, 3.4445, 1.0)
    assert torch.equal(new, torch.addmm(x16, poly, x16, beta=3.4445))
    assert xp.uniopt_addmm_bfloat16(None, x16.float(), x16.mT.float(), 0.0, 1.0) is None
    assert xp.uniopt_addmm_bfloat16(gram, gram, gram.float(), -4.775, 2.0315) is None


def test_a_kernel_iteration_keeps_its_iterates_in_bfloat16(monkeypatch):
    """Every product of an iteration on the kernels takes bfloat16 tensors (converted from float32
    once, before the first product) and hands back bfloat16 ones, which the next product takes
    as they are: no conversion to float32 and back between the products."""
    calls = []
    hook = type(xp).uniopt_addmm_bfloat16

    def spy(*args):
        out = hook(*args)
        calls.append((args, out))
        return out

    monkeypatch.setattr(type(xp), "uniopt_addmm_bfloat16", staticmethod(spy))
    spec = uniopt.Muon(lr=0.02, convention="torch")
    g = torch.randn(256, 384, generator=torch.Generator().manual_seed(4))
    from uniopt._spec import cast_scalars

    spec._torch_newton_schulz(g, cast_scalars(spec.step_scalars(1, 0.02), g, xp), xp)
    assert len(calls) == 3 * spec.ns_steps
    for args, out in calls:
        assert all(t.dtype == torch.bfloat16 for t in args[:3] if t is not None)
        assert out.dtype == torch.bfloat16
    for k in range(spec.ns_steps):
        (gram_args, gram), (poly_args, poly), (next_args, _) = calls[3 * k : 3 * k + 3]
        assert poly_args[0] is poly_args[1] is poly_args[2] is gram  # addmm(A, A, A)
        assert next_args[1] is poly and next_args[0] is next_args[2]  # addmm(X, B, X)
        if k:  # X is the previous iteration's result, as the kernel returned it
            assert next_args[0] is calls[3 * k - 1][1] and gram_args[1] is calls[3 * k - 1][1]


@pytest.mark.parametrize("declined", [2, 3, 7])  # an X, a Gram and a B product
def test_a_product_the_kernels_decline_mid_iteration_is_the_float32_expression(declined, monkeypatch):
    """The namespace may decline a later product of a kernel iteration (None): that product is the
    float32 expression of the same bfloat16 values, rounded once to bfloat16, and the iteration
    goes on on the kernels. Checked against torch.optim.Muon's own loop with that one product
    replaced by the float32 expression, written here with torch's ops: the declined product, as
    the next kernel call receives it, is that expression's bits, which differ from the kernel's
    product there, and the result is the loop's. (The result alone would not tell the two apart:
    an AMD EPYC's kernels ended on the same bits from a Gram product that differed.)"""
    from torch.optim._muon import _zeropower_via_newtonschulz

    from uniopt._spec import cast_scalars

    calls = []
    hook = type(xp).uniopt_addmm_bfloat16

    def spy(*args):
        calls.append(args)
        return None if len(calls) == declined + 1 else hook(*args)

    spec = uniopt.Muon(lr=0.02, convention="torch")
    a, b, c = (float(torch.tensor(v, dtype=torch.float32)) for v in spec.ns_coefficients)
    g = torch.randn(256, 384, generator=torch.Generator().manual_seed(5))
    sc = cast_scalars(spec.step_scalars(1, 0.02), g, xp)
    x = _zeropower_via_newtonschulz(g, spec.ns_coefficients, 0, spec.eps)  # normalised, no iteration
    f = lambda t: t.float()  # noqa: E731
    plain_product = kernel_product = None  # the declined product: its float32 expression, the kernel's
    for k in range(spec.ns_steps):
        plain = [3 * k + i == declined for i in range(3)]
        gram = x @ x.mT
        if plain[0]:
            plain_product, kernel_product = (f(x) @ f(x).mT).bfloat16(), gram
            gram = plain_product
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        if plain[1]:
            plain_product, kernel_product = (f(gram) * b + (f(gram) @ f(gram)) * c).bfloat16(), poly
            poly = plain_product
        new_x = torch.addmm(x, poly, x, beta=a)
        if plain[2]:
            plain_product, kernel_product = (f(x) * a + f(poly) @ f(x)).bfloat16(), new_x
            new_x = plain_product
        x = new_x
    monkeypatch.setattr(type(xp), "uniopt_addmm_bfloat16", staticmethod(spy))
    ours = spec._torch_newton_schulz(g, sc, xp)
    assert len(calls) == 3 * spec.ns_steps
    # the next call takes the declined product: a Gram product as addmm(A, A, A)'s first argument,
    # a B product as addmm(X, B, X)'s second, an X as the next Gram product's second
    received = calls[declined + 1][0 if declined % 3 == 0 else 1]
    assert torch.equal(received, plain_product)
    assert not torch.equal(plain_product, kernel_product)  # the check can tell them apart
    assert torch.equal(ours, x.float())


def test_under_compilation_the_kernels_are_the_custom_operator_and_a_scaled_plain_product_is_declined():
    """Under torch.compile the hook calls the custom operator uniopt::addmm_bfloat16, which inductor
    calls as it is: torch's own bfloat16 kernels, the eager bits (fullgraph: no graph break). A
    scaled product without an addend, which the spec never asks for, is declined."""
    gen = torch.Generator().manual_seed(2)
    large = torch.randn(128, 160, generator=gen).bfloat16()
    assert xp.uniopt_addmm_bfloat16(None, large, large.mT, 0.0, 2.0) is None

    def products(x):
        gram = xp.uniopt_addmm_bfloat16(None, x, x.mT, 0.0, 1.0)
        poly = xp.uniopt_addmm_bfloat16(gram, gram, gram, -4.775, 2.0315)
        return xp.uniopt_addmm_bfloat16(x, poly, x, 3.4445, 1.0)

    compiled = torch.compile(products, fullgraph=True)
    gram = torch.mm(large, large.mT)
    poly = torch.addmm(gram, gram, gram, beta=-4.775, alpha=2.0315)
    assert torch.equal(compiled(large), torch.addmm(large, poly, large, beta=3.4445))


def test_exact_products_give_the_numpy_references_bits():
    """matmul='exact' through uniopt.torch equals the spec on NumPy, bit for bit."""
    import array_api_compat.numpy as npx

    params = _params(dtype=torch.float32)
    grads = _grads(params, 5)
    spec = uniopt.Muon(lr=0.02, matmul="exact")
    ref = [p.detach().numpy().copy() for p in params]
    state = spec.init(ref, npx)
    for step in grads:
        ref, state = spec.update([g.numpy() for g in step], state, ref, npx)
    opt = uniopt.torch.Muon(params, lr=0.02, matmul="exact")
    _run(opt, params, grads)
    for p, r in zip(params, ref, strict=True):
        np.testing.assert_array_equal(p.detach().numpy(), r)


def test_the_drop_in_suite_names_this_file_for_muon():
    """tests/torch_adapter/test_dropin.py twins every other torch.optim row on small nets with biases,
    which torch.optim.Muon refuses; it sends Muon here."""
    from test_dropin import NAMES, TWINNED_ELSEWHERE

    assert "Muon" not in NAMES and TWINNED_ELSEWHERE["Muon"].startswith("test_muon_torch.py")


def test_implementation_switches_torch_optim_muon_lacks_are_refused_as_it_refuses_them():
    for name in ("foreach", "fused", "capturable", "differentiable", "maximize"):
        with pytest.raises(TypeError):
            torch.optim.Muon(_params(), **{name: False})
        with pytest.raises(TypeError, match=rf"unexpected argument\(s\) \['{name}'\]"):
            uniopt.torch.Muon(_params(), **{name: False})


def test_torch_optim_muon_state_ports_through_a_record_and_back():
    """from_torch_optim reads torch.optim.Muon's momentum buffers (it keeps no step count: step=);
    to_torch_optim writes them back under the same key and no step entry, bit for bit."""
    from uniopt.torch import from_torch_optim, to_torch_optim

    a = _params()
    native = torch.optim.Muon(a, lr=0.02)
    _run(native, a, _grads(a, 4))
    with pytest.raises(ValueError, match="keeps no step count; pass step="):
        from_torch_optim(native)
    record = from_torch_optim(native, step=4)
    assert record.optimizer == "Muon" and record.convention == "torch" and record.step == 4
    for p, slots in zip(a, record.slots, strict=True):
        np.testing.assert_array_equal(slots["momentum_buffer"], native.state[p]["momentum_buffer"].numpy())
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    other = torch.optim.Muon(b, lr=0.02)
    to_torch_optim(record, other)
    for p, q in zip(a, b, strict=True):
        assert set(other.state[q]) == {"momentum_buffer"}
        assert torch.equal(other.state[q]["momentum_buffer"], native.state[p]["momentum_buffer"])


KERNEL_SIZED = (16, 16384)
"""A matrix ``implementation="auto"`` compiles per shape under the torch convention: 2**18 elements
(AUTO_COMPILE_MIN) and a Gram product of 16*16*16384 = 2**22 multiply-adds, twice the bfloat16
kernels' threshold (128**3), at about a hundredth of the arithmetic of a 512x640 matrix, whose
bfloat16 products took most of this file's time on a CPU without bfloat16 instructions (an AMD
EPYC, Zen 3: 48 s for the momentum-schedule test's 20 steps alone)."""


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((16, 16384), torch.float32), ((16384, 16), torch.float32), ((16, 16384), torch.bfloat16)],
)
def test_a_large_matrix_steps_compiled_and_is_the_eager_loops_bits(shape, dtype):
    """implementation='auto' compiles the torch convention's rule per shape for a matrix of at
    least AUTO_COMPILE_MIN elements whose products are torch's bfloat16 kernels (the custom
    operator inductor calls as it is; the elementwise ops around them fused): the same bits as the
    eager loop, its bfloat16 roundings kept for a float32 parameter too. Wide, tall (transposed
    for the iteration) and a bfloat16 parameter, each of 2**18 elements with few multiply-adds for
    this path (:data:`KERNEL_SIZED`)."""
    from uniopt.torch import _pertensor

    params = _params((shape,), dtype=dtype)
    twin = [torch.nn.Parameter(p.detach().clone()) for p in params]
    grads = _grads(params, 3)
    auto = uniopt.torch.Muon(params, lr=0.02, convention="torch")
    loop = uniopt.torch.Muon(twin, lr=0.02, convention="torch", implementation="loop")
    spec = auto._spec_of(auto.param_groups[0])
    assert _pertensor.kernel_products(spec, params[0]) and params[0].numel() >= uniopt.torch.AUTO_COMPILE_MIN
    _run(auto, params, grads)
    _run(loop, twin, grads)
    assert torch.equal(params[0].detach(), twin[0].detach())
    assert torch.equal(auto.state[params[0]]["momentum_buffer"], loop.state[twin[0]]["momentum_buffer"])
    compiled = [key for key in _pertensor._KERNELS if key[0] is uniopt.Muon and key[2:4] == (dtype, shape)]
    assert compiled and _pertensor._KERNELS[compiled[0]] is not None


def test_only_the_torch_conventions_kernel_sized_matrices_are_compiled():
    """The default convention's float32 products, matmul='exact', and a matrix below the kernels'
    threshold stay on the eager loop (inductor would choose their products' kernels)."""
    from uniopt.torch._pertensor import kernel_products

    large, small = torch.zeros(512, 640), torch.zeros(100, 120)
    assert kernel_products(uniopt.Muon(convention="torch"), large)
    assert not kernel_products(uniopt.Muon(convention="torch"), small)
    assert not kernel_products(uniopt.Muon(), large)
    assert not kernel_products(uniopt.Muon(convention="torch", matmul="exact"), large)
    assert not kernel_products(uniopt.Adam(), large)


STACKED_CASES = [
    ("uniopt", torch.float32, {}),
    ("uniopt", torch.float64, {"nesterov": False, "weight_decay": 0.0}),
    ("uniopt", torch.bfloat16, {}),
    ("torch", torch.float32, {}),
    ("torch", torch.bfloat16, {}),
    ("torch", torch.float64, {"adjust_lr_fn": "match_rms_adamw"}),
    ("keras", torch.float32, {}),
    ("optax", torch.float64, {}),
]


@pytest.mark.parametrize(("convention", "dtype", "options"), STACKED_CASES)
def test_many_small_matrices_step_stacked_and_are_the_loops_bits(convention, dtype, options, monkeypatch):
    """implementation='auto' stacks a group's small matrices of one shape and runs the rule once per
    stack under torch.func.vmap, each product formed per matrix (uniopt::matmul_each): the same bits
    as the per-tensor loop, for wide and tall matrices (and the vectors the keras and optax
    conventions step with Adam), parameters and momentum, over four steps. Batched products (bmm)
    were not: 6x6 (ATen's own loop below 400 multiply-adds) and 30x2000 (a long shared side, two
    threads) differed from the loop within four steps."""
    from uniopt.torch import _stacked

    shapes = [(20, 25)] * 3 + [(25, 20)] * 2 + [(6, 6)] * 2 + [(30, 2000)] * 2
    if convention in ("keras", "optax"):
        shapes += [(7,)] * 3
    params = _params(shapes, dtype=dtype, seed=7)
    twin = [torch.nn.Parameter(p.detach().clone()) for p in params]
    grads = _grads(params, 4, seed=8)
    stacked = []
    run = _stacked.run
    monkeypatch.setattr(_stacked, "run", lambda members: (stacked.append(len(members)), run(members)))
    auto = uniopt.torch.Muon(params, lr=0.02, convention=convention, **options)
    loop = uniopt.torch.Muon(twin, lr=0.02, convention=convention, implementation="loop", **options)
    _run(auto, params, grads)
    assert sum(stacked) == 4 * len(params)  # every parameter, every step
    _run(loop, twin, grads)
    for p, q in zip(params, twin, strict=True):
        assert torch.equal(p.detach(), q.detach())
        for name, value in auto.state[p].items():
            assert torch.equal(value, loop.state[q][name]), name


def test_matrices_on_the_bfloat16_kernels_and_exact_products_are_not_stacked():
    """Not stacked: a matrix whose products are torch's bfloat16 kernels (kernel-sized, the torch
    convention), and matmul='exact' (its scratch would grow with the stack)."""
    from uniopt.torch._stacked import _stackable

    small, kernel_sized = torch.zeros(20, 25), torch.zeros(128, 160)
    assert _stackable(uniopt.Muon(convention="torch"), small)
    assert _stackable(uniopt.Muon(convention="torch"), small.bfloat16())
    assert not _stackable(uniopt.Muon(convention="torch"), kernel_sized)
    assert _stackable(uniopt.Muon(), kernel_sized)
    assert not _stackable(uniopt.Muon(matmul="exact"), small)
    assert _stackable(uniopt.Muon(), small.half())
    assert _stackable(uniopt.Adafactor(), small.half())


def test_a_momentum_schedule_does_not_recompile_the_compiled_step():
    """OneCycleLR cycles a Muon group's momentum at every step by default (``cycle_momentum``): the
    compiled per-shape step takes torch.lerp's branch as a flag of the step's scalars, so a new
    momentum is a new value, not a recompile (the momentum read from the spec had recompiled the
    kernel at every step up to dynamo's limit, with a warning), and so is a new weight decay (the
    rule branches on :meth:`uniopt.Spec.nonzero`); the same bits as the loop."""
    import warnings

    params = _params((KERNEL_SIZED,), seed=9)
    twin = [torch.nn.Parameter(p.detach().clone()) for p in params]
    grads = _grads(params, 10, seed=10)  # past dynamo's recompile limit (8)
    runs = []
    for implementation, ps in (("auto", params), ("loop", twin)):
        opt = uniopt.torch.Muon(ps, lr=0.02, convention="torch", implementation=implementation)
        schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=30)
        runs.append((opt, schedule))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # uniopt's "recompile limit" warning
        for k, step in enumerate(grads):
            for (opt, schedule), ps in zip(runs, (params, twin), strict=True):
                ps[0].grad = step[0].clone()
                opt.param_groups[0]["weight_decay"] = 0.1 * 0.9**k  # a decay schedule beside it
                opt.step()
                schedule.step()
    momenta = {opt.param_groups[0]["momentum"] for opt, _ in runs}
    assert len(momenta) == 1 and momenta != {0.95}
    assert torch.equal(params[0].detach(), twin[0].detach())


@pytest.mark.parametrize("name", ["Muon", "Lamb"])
def test_warnings_as_errors_do_not_fail_a_compiled_per_shape_step(name, monkeypatch):
    """Under warnings.simplefilter("error") (pytest -W error), the first step of a parameter
    compiled per shape traces and builds as without it: dynamo's own UserWarnings while it traces
    uniopt's kernel are not the user's (they made the build fail after the step count had
    advanced, the parameter not updated). The step is the loop's."""
    import warnings
    from collections import OrderedDict

    from uniopt.torch import _pertensor

    monkeypatch.setattr(_pertensor, "_KERNELS", OrderedDict())  # this shape traced afresh
    torch._dynamo.reset()
    options = {"convention": "torch"} if name == "Muon" else {}
    params = _params((KERNEL_SIZED,), seed=11)
    twin = [torch.nn.Parameter(p.detach().clone()) for p in params]
    grads = _grads(params, 2, seed=12)
    auto = getattr(uniopt.torch, name)(params, lr=0.02, **options)
    loop = getattr(uniopt.torch, name)(twin, lr=0.02, implementation="loop", **options)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _run(auto, params, grads)
    _run(loop, twin, grads)
    assert any(key[3] == KERNEL_SIZED for key in _pertensor._KERNELS)
    assert torch.equal(params[0].detach(), twin[0].detach())
