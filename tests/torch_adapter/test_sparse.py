"""Sparse COO gradients in uniopt.torch (uniopt.sparse's rules; docs/sparse.md).

Expected values come from outside the adapter: the NumPy run of the core spec on the densified
gradient (bitwise, where the rule is "dense" or "rows" coincides with it), a NumPy float64 lazy Adam
written out from torch/optim/_functional.py (``sparse_adam``), and torch.optim's own optimizers fed
the same sparse gradients: their slots bitwise (the moments and Adagrad's sum are the same op
sequence), their parameters to a relative 1e-9 in float64 (torch's CPU ``sqrt`` is not correctly
rounded, and its sparse ``add_`` with ``alpha`` fuses the multiply-add; docs/torch.md).
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

import uniopt
import uniopt.sparse
import uniopt.torch as ut
from uniopt._spec import cast_scalars, namespace_of

ROWS, COLS = 12, 5


def _sparse(indices: list[int], values: np.ndarray, shape=(ROWS, COLS)) -> torch.Tensor:
    """A sparse COO gradient of ``shape`` naming ``indices`` (repeats kept: uncoalesced)."""
    return torch.sparse_coo_tensor(torch.tensor([indices]), torch.from_numpy(values), shape)


def _dense(indices: list[int], values: np.ndarray, shape=(ROWS, COLS)) -> np.ndarray:
    """The gradient as a dense array, repeated indices summed (at most two per row: one rounding)."""
    out = np.zeros(shape, values.dtype)
    for i, row in zip(indices, values, strict=True):
        out[i] = out[i] + row
    return out


def _stream(dtype, steps: int = 5, seed: int = 0):
    """Per step: touched row indices (one of them twice) and their gradient rows."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        rows = sorted(rng.choice(ROWS, size=4, replace=False).tolist())
        indices = [*rows, rows[1]]  # a repeated index
        out.append((indices, rng.standard_normal((len(indices), COLS)).astype(dtype)))
    return out


def _start(dtype, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((ROWS, COLS)).astype(dtype)


CASES = [
    ("SGD", {"lr": 0.1}),
    ("SGD", {"lr": 0.1, "maximize": True}),
    ("SGD", {"lr": 0.1, "momentum": 0.9}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01}),
    ("Adagrad", {"lr": 0.1}),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.01, "initial_accumulator_value": 0.1}),
]


@pytest.mark.parametrize("implementation", ["loop", "flat"])
@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=lambda c: str(c))
def test_sparse_steps_equal_the_core_spec_on_the_densified_gradient(name, kwargs, implementation):
    """SGD and Adagrad give the dense gradient's values bit for bit, whatever their sparse rule:
    "rows" (no momentum or weight decay) coincides with the dense rule, "dense" densifies."""
    spec = getattr(uniopt, name)(**kwargs)
    start = _start(np.float32)
    p = torch.nn.Parameter(torch.from_numpy(start.copy()))
    opt = getattr(ut, name)([p], implementation=implementation, **kwargs)
    params, state = [start.copy()], spec.init([start])
    for indices, values in _stream(np.float32):
        p.grad = _sparse(indices, values)
        opt.step()
        params, state = spec.update([_dense(indices, values)], state, params)
    np.testing.assert_array_equal(p.detach().numpy(), params[0])
    for slot, value in state.slots[0].items():
        np.testing.assert_array_equal(opt.state[p][slot].numpy(), value)


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=lambda c: str(c))
def test_sparse_steps_match_torch_optim_with_sparse_gradients(name, kwargs):
    """Side by side with torch.optim fed the same sparse gradients: slots bitwise, parameters to a
    relative 1e-9 in float64. torch.optim.SGD raises on weight decay with a sparse gradient
    (``add(sparse, dense) is not supported``): that case is compared without it."""
    kwargs = {k: v for k, v in kwargs.items() if k != "weight_decay"}
    start = _start(np.float64)
    p = torch.nn.Parameter(torch.from_numpy(start.copy()))
    q = torch.nn.Parameter(torch.from_numpy(start.copy()))
    mine, theirs = getattr(ut, name)([p], **kwargs), getattr(torch.optim, name)([q], **kwargs)
    for indices, values in _stream(np.float64):
        p.grad, q.grad = _sparse(indices, values), _sparse(indices, values)
        mine.step()
        theirs.step()
    torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)
    if name == "Adagrad":
        assert torch.equal(mine.state[p]["sum"], theirs.state[q]["sum"])
    elif kwargs.get("momentum"):  # torch.optim's buffer is sparse; as dense, to a relative 1e-12
        torch.testing.assert_close(
            mine.state[p]["momentum_buffer"],
            theirs.state[q]["momentum_buffer"].to_dense(),
            rtol=1e-12,
            atol=0,
        )


def _lazy_adam(param, m, v, step, indices, values, lr, betas, eps, maximize=False):
    """torch/optim/_functional.py's sparse_adam in NumPy float64, written out: touched rows only."""
    rows = sorted(set(indices))
    g = np.zeros((len(rows), param.shape[1]))
    for i, row in zip(indices, values, strict=True):
        g[rows.index(i)] += row
    g = -g if maximize else g
    b1, b2 = betas
    m_new = m[rows] + (g - m[rows]) * (1 - b1)
    v_new = v[rows] + (g * g - v[rows]) * (1 - b2)
    step_size = lr * math.sqrt(1 - b2**step) / (1 - b1**step)
    param, m, v = param.copy(), m.copy(), v.copy()
    param[rows] = param[rows] + (-step_size) * (m_new / (np.sqrt(v_new) + eps))
    m[rows], v[rows] = m_new, v_new
    return param, m, v


@pytest.mark.parametrize("kwargs", [{"lr": 0.05}, {"lr": 0.05, "betas": (0.8, 0.99), "maximize": True}])
def test_sparse_adam_is_lazy_adam_on_the_touched_rows(kwargs):
    """Against the float64 NumPy lazy Adam (to a relative 1e-13: sqrt on the host), and bitwise
    against the core spec's rule on the gathered rows; untouched rows of the parameter and both
    moments keep their bits."""
    spec = uniopt.sparse.SparseAdam(**kwargs)
    start = _start(np.float64)
    p = torch.nn.Parameter(torch.from_numpy(start.copy()))
    opt = ut.SparseAdam([p], **kwargs)
    ref = (start.copy(), np.zeros_like(start), np.zeros_like(start))
    core = {"p": start.copy(), "exp_avg": np.zeros_like(start), "exp_avg_sq": np.zeros_like(start)}
    for step, (indices, values) in enumerate(_stream(np.float64), start=1):
        before = {"p": p.detach().clone(), **{k: v.clone() for k, v in opt.state[p].items() if k != "step"}}
        p.grad = _sparse(indices, values)
        opt.step()
        betas, maximize = kwargs.get("betas", (0.9, 0.999)), kwargs.get("maximize", False)
        ref = _lazy_adam(*ref, step, indices, values, kwargs["lr"], betas, 1e-8, maximize)
        rows = sorted(set(indices))
        sc = cast_scalars(spec.step_scalars(step), core["p"], namespace_of(core["p"]))
        new_p, new_s = spec.rule(
            core["p"][rows],
            _dense(indices, values)[rows],
            {k: core[k][rows] for k in spec.slot_names()},
            sc,
            np,
        )
        core["p"][rows] = new_p
        for k, val in new_s.items():
            core[k][rows] = val
        untouched = [r for r in range(ROWS) if r not in rows]
        for key, tensor in (("p", p.detach()), ("exp_avg", opt.state[p]["exp_avg"])):
            if key in before:
                assert torch.equal(tensor[untouched], before[key][untouched])
        np.testing.assert_array_equal(p.detach().numpy(), core["p"])
        np.testing.assert_array_equal(opt.state[p]["exp_avg_sq"].numpy(), core["exp_avg_sq"])
    np.testing.assert_allclose(p.detach().numpy(), ref[0], rtol=1e-13, atol=0)
    np.testing.assert_allclose(opt.state[p]["exp_avg"].numpy(), ref[1], rtol=1e-13, atol=0)
    np.testing.assert_allclose(opt.state[p]["exp_avg_sq"].numpy(), ref[2], rtol=1e-13, atol=0)
    assert int(opt.state[p]["step"]) == 5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sparse_adam_matches_torch_optim_sparse_adam(dtype):
    """An embedding trained with nn.Embedding(sparse=True) on a loss linear in it, so that the
    gradients do not depend on the parameters: the moments bitwise equal to
    torch.optim.SparseAdam's, the parameters within torch's CPU sqrt rounding (float64: relative
    1e-9; float32: relative 1e-5). (With a squared error the gradients would follow the parameters,
    and a parameter one ulp apart from torch's rounding would move the moments too.)"""
    torch.manual_seed(0)
    emb_a = torch.nn.Embedding(200, 16, sparse=True, dtype=dtype)
    emb_b = torch.nn.Embedding(200, 16, sparse=True, dtype=dtype)
    emb_b.load_state_dict(emb_a.state_dict())
    initial = emb_a.weight.detach().clone()
    mine = ut.SparseAdam(emb_a.parameters(), lr=0.01)
    theirs = torch.optim.SparseAdam(emb_b.parameters(), lr=0.01)
    for _ in range(8):
        ids = torch.randint(0, 200, (64,))
        target = torch.randn(64, 16, dtype=dtype)
        for emb, opt in ((emb_a, mine), (emb_b, theirs)):
            opt.zero_grad()
            (emb(ids) * target).sum().backward()
            opt.step()
    sa, sb = mine.state[emb_a.weight], theirs.state[emb_b.weight]
    assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert int(sa["step"]) == sb["step"] == 8
    rtol, atol = (1e-9, 1e-12) if dtype == torch.float64 else (1e-5, 1e-6)
    torch.testing.assert_close(emb_a.weight, emb_b.weight, rtol=rtol, atol=atol)
    assert not torch.equal(emb_a.weight, initial)  # it trained


def test_untouched_rows_and_their_state_keep_their_bits():
    """Adagrad and plain SGD ("rows"): untouched rows are neither read nor written."""
    start = _start(np.float32)
    for opt_cls in (ut.SGD, ut.Adagrad, ut.SparseAdam):
        p = torch.nn.Parameter(torch.from_numpy(start.copy()))
        opt = opt_cls([p], lr=0.1)
        p.grad = _sparse([0, 3], np.ones((2, COLS), np.float32))
        opt.step()
        before = p.detach().clone()
        slots = {k: v.clone() for k, v in opt.state[p].items() if k != "step"}
        p.grad = _sparse([5], np.full((1, COLS), 2.0, np.float32))
        opt.step()
        untouched = [r for r in range(ROWS) if r != 5]
        assert torch.equal(p.detach()[untouched], before[untouched]), opt_cls
        assert not torch.equal(p.detach()[5], before[5])
        for k, v in slots.items():
            assert torch.equal(opt.state[p][k][untouched], v[untouched]), (opt_cls, k)


@pytest.mark.parametrize("opt_cls", [ut.SGD, ut.Adagrad, ut.SparseAdam])
def test_an_empty_sparse_gradient_changes_nothing_but_the_step_count(opt_cls):
    start = _start(np.float32)
    p = torch.nn.Parameter(torch.from_numpy(start.copy()))
    opt = opt_cls([p], lr=0.1)
    p.grad = torch.sparse_coo_tensor(
        torch.zeros((1, 0), dtype=torch.int64), torch.zeros((0, COLS)), (ROWS, COLS)
    )
    opt.step()
    np.testing.assert_array_equal(p.detach().numpy(), start)
    assert int(opt.state[p]["step"]) == 1
    for k, v in opt.state[p].items():
        if k != "step":
            assert torch.equal(v, torch.full_like(v, float(v.flatten()[0]))), k  # still the initial value


def test_a_gradient_sparse_in_two_dimensions_updates_those_elements():
    """sparse_dim 2 (elements, not rows): Adagrad equals the dense step bit for bit."""
    start = _start(np.float32)
    p = torch.nn.Parameter(torch.from_numpy(start.copy()))
    opt = ut.Adagrad([p], lr=0.1)
    idx = torch.tensor([[0, 3, 3], [1, 2, 4]])
    vals = torch.tensor([0.5, -1.0, 2.0])
    p.grad = torch.sparse_coo_tensor(idx, vals, (ROWS, COLS))
    opt.step()
    spec = uniopt.Adagrad(lr=0.1)
    dense = np.zeros((ROWS, COLS), np.float32)
    dense[0, 1], dense[3, 2], dense[3, 4] = 0.5, -1.0, 2.0
    params, _ = spec.update([dense], spec.init([start]), [start.copy()])
    np.testing.assert_array_equal(p.detach().numpy(), params[0])


def test_a_mixed_model_in_the_flat_implementation_equals_the_loop():
    """A dense Linear and a sparse Embedding in one group: the step with a sparse gradient runs
    per tensor, the same bits as implementation="loop", and flat steps resume afterwards."""
    results = []
    for implementation in ("loop", "flat"):
        torch.manual_seed(0)
        emb, lin = torch.nn.Embedding(30, 8, sparse=True), torch.nn.Linear(8, 1)
        opt = ut.SGD([*emb.parameters(), *lin.parameters()], lr=0.1, implementation=implementation)
        for step in range(4):
            opt.zero_grad()
            ids = torch.randint(0, 30, (10,))
            lin(emb(ids)).pow(2).sum().backward()
            if step == 3:  # a dense step after the sparse ones
                emb.weight.grad = emb.weight.grad.to_dense()
            opt.step()
        results.append([t.detach().clone() for t in (emb.weight, lin.weight, lin.bias)])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["Adam", "AdamW", "RMSprop", "Adadelta", "Lion"])
def test_optimizers_torch_optim_refuses_sparse_gradients_for_refuse_them(name):
    p = torch.nn.Parameter(torch.zeros(ROWS, COLS))
    opt = getattr(ut, name)([p])
    p.grad = _sparse([1], np.ones((1, COLS), np.float32))
    with pytest.raises(
        RuntimeError, match=rf"uniopt.torch.{name} does not support sparse gradients.*SparseAdam"
    ):
        opt.step()
    assert not opt.state[p] and torch.equal(p, torch.zeros(ROWS, COLS))


@pytest.mark.parametrize("name", ["Adam", "Lamb", "ScheduleFreeAdamW"])
def test_the_refusal_names_a_torch_optim_class_only_where_torch_has_one(name):
    p = torch.nn.Parameter(torch.zeros(ROWS, COLS))
    opt = getattr(ut, name)([p])
    p.grad = _sparse([1], np.ones((1, COLS), np.float32))
    with pytest.raises(RuntimeError) as refused:
        opt.step()
    named = f"as torch.optim.{name} does not" in str(refused.value)
    assert named == (name == "Adam"), str(refused.value)  # torch 2.13 has no Lamb or ScheduleFreeAdamW


def test_adagrad_weight_decay_with_a_sparse_gradient_is_refused_before_any_change():
    a, b = torch.nn.Parameter(torch.ones(ROWS, COLS)), torch.nn.Parameter(torch.ones(ROWS, COLS))
    opt = ut.Adagrad([{"params": [a]}, {"params": [b], "weight_decay": 0.1}], lr=0.1)
    a.grad = torch.ones(ROWS, COLS)
    b.grad = _sparse([1], np.ones((1, COLS), np.float32))
    with pytest.raises(RuntimeError, match=r"weight_decay=0.1 is not compatible with sparse gradients"):
        opt.step()
    assert torch.equal(a, torch.ones(ROWS, COLS)) and int(opt.state[a]["step"]) == 0


def test_sparse_adam_refuses_what_torch_optim_sparse_adam_refuses():
    p = torch.nn.Parameter(torch.zeros(ROWS, COLS))
    opt = ut.SparseAdam([p])
    p.grad = torch.ones(ROWS, COLS)
    with pytest.raises(RuntimeError, match="does not support dense gradients, please consider Adam"):
        opt.step()
    assert not opt.state[p]
    with pytest.raises(ValueError, match="sparse parameters are not supported"):
        ut.SparseAdam([torch.zeros(ROWS, COLS).to_sparse()])
    with pytest.raises(ValueError, match="complex parameters are not supported"):
        ut.SparseAdam([torch.zeros(3, dtype=torch.complex64)])
    for kwargs, field in (({"lr": 0.0}, "lr"), ({"eps": 0.0}, "eps"), ({"betas": (1.0, 0.9)}, r"betas\[0\]")):
        with pytest.raises(ValueError, match=rf"SparseAdam: {field}="):
            ut.SparseAdam([p], **kwargs)


def test_sparse_adam_takes_torch_optim_positions_and_defaults():
    p = torch.nn.Parameter(torch.zeros(ROWS, COLS))
    opt = ut.SparseAdam([p], 0.02, (0.8, 0.9), 1e-6, True)
    group = opt.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["maximize"]) == (0.02, (0.8, 0.9), 1e-6, True)
    native = torch.optim.SparseAdam([torch.nn.Parameter(torch.zeros(1))]).defaults
    mine = ut.SparseAdam([torch.nn.Parameter(torch.zeros(1))]).defaults
    assert {k: mine[k] for k in native} == native


def test_the_sparse_rule_of_each_spec():
    assert uniopt.SGD().sparse_rule() == "rows"
    assert uniopt.SGD(momentum=0.9).sparse_rule() == "dense"
    assert uniopt.SGD(weight_decay=0.1).sparse_rule() == "dense"
    assert uniopt.Adagrad(convention="keras").sparse_rule() == "rows"
    assert uniopt.Adagrad(weight_decay=0.1).sparse_rule() == "dense"
    assert uniopt.Adam().sparse_rule() == "dense"
    assert uniopt.sparse.SparseAdam().sparse_rule() == "rows"


def test_a_sparse_adam_state_dict_resumes_bit_for_bit():
    start = _start(np.float32)
    stream = _stream(np.float32, steps=4)
    p = torch.nn.Parameter(torch.from_numpy(start.copy()))
    opt = ut.SparseAdam([p], lr=0.05)
    for indices, values in stream:
        p.grad = _sparse(indices, values)
        opt.step()
    q = torch.nn.Parameter(torch.from_numpy(start.copy()))
    first = ut.SparseAdam([q], lr=0.05)
    for indices, values in stream[:2]:
        q.grad = _sparse(indices, values)
        first.step()
    resumed = ut.SparseAdam([q], lr=0.05)
    resumed.load_state_dict(first.state_dict())
    for indices, values in stream[2:]:
        q.grad = _sparse(indices, values)
        resumed.step()
    assert torch.equal(p, q)
    assert torch.equal(opt.state[p]["exp_avg_sq"], resumed.state[q]["exp_avg_sq"])


@pytest.mark.parametrize("opt_cls", [ut.SGD, ut.SparseAdam])
def test_a_sparse_step_under_torch_compile_gives_the_eager_values(opt_cls):
    results = []
    for compiled in (False, True):
        p = torch.nn.Parameter(torch.from_numpy(_start(np.float32)))
        opt = opt_cls([p], lr=0.1)
        step = torch.compile(opt.step) if compiled else opt.step
        for indices, values in _stream(np.float32, steps=3):
            p.grad = _sparse(indices, values)
            step()
        results.append(p.detach().clone())
    assert torch.equal(*results)


def test_a_torch_optim_sgd_checkpoint_with_a_sparse_momentum_buffer_loads_dense_and_continues():
    """torch.optim.SGD keeps a sparse COO momentum buffer for a sparse gradient; loading it densifies
    it (exactly), and the next steps run (they failed with ``add(sparse, dense)`` when it stayed sparse)."""
    torch.manual_seed(0)
    native_table = torch.nn.Embedding(10, 3, sparse=True)
    table = torch.nn.Embedding(10, 3, sparse=True)
    native = torch.optim.SGD(native_table.parameters(), lr=0.1, momentum=0.9)
    batches = [torch.tensor([1, 2, 2]), torch.tensor([2, 5]), torch.tensor([7, 1])]

    def step(module, opt, batch):
        opt.zero_grad()
        module(batch).pow(2).sum().backward()
        opt.step()

    for batch in batches[:2]:
        step(native_table, native, batch)
    saved = native.state[native_table.weight]["momentum_buffer"]
    assert saved.is_sparse
    with torch.no_grad():
        table.weight.copy_(native_table.weight)
    opt = ut.SGD(table.parameters(), lr=0.1, momentum=0.9, convention="torch")
    ut.load_torch_optim_state_dict(opt, native.state_dict(), step=2)
    loaded = opt.state[table.weight]["momentum_buffer"]
    assert loaded.layout == torch.strided and torch.equal(loaded, saved.to_dense())
    step(native_table, native, batches[2])
    step(table, opt, batches[2])
    torch.testing.assert_close(table.weight, native_table.weight, rtol=1e-6, atol=1e-7)


def test_a_sparse_gradient_naming_no_rows_is_refused_after_valid_sparse_steps():
    """A step with sparse gradients is checked once per layout; a gradient of the same layout,
    dtype and shape but with ``sparse_dim() == 0`` (all dimensions dense) is still refused."""
    p = torch.zeros(4, 2, requires_grad=True)
    opt = ut.SGD([p], lr=0.1)
    for _ in range(2):
        p.grad = torch.sparse_coo_tensor([[1]], torch.ones(1, 2), (4, 2))
        opt.step()
    before = p.detach().clone()
    # indices of shape (0, 1): one entry whose value is the whole (4, 2) block
    p.grad = torch.sparse_coo_tensor(torch.zeros(0, 1, dtype=torch.long), torch.ones(1, 4, 2), (4, 2))
    assert p.grad.sparse_dim() == 0
    with pytest.raises(RuntimeError, match=r"sparse_dim\(\)=0"):
        opt.step()
    assert torch.equal(p.detach(), before)


@pytest.mark.parametrize("name", ["SGD", "Adagrad"])
def test_fused_refuses_sparse_gradients_as_torch_optim_does(name):
    """torch.optim.SGD(fused=True) and Adagrad(fused=True) raise RuntimeError at a step with a sparse
    gradient (torch/optim/sgd.py, adagrad.py); so does uniopt.torch, before anything changes."""
    grad = torch.sparse_coo_tensor([[1]], torch.ones(1, 2), (4, 2))
    native_p = torch.nn.Parameter(torch.zeros(4, 2))
    native = getattr(torch.optim, name)([native_p], lr=0.1, fused=True)
    native_p.grad = grad
    with pytest.raises(RuntimeError, match="does not support sparse"):
        native.step()
    p = torch.nn.Parameter(torch.zeros(4, 2))
    opt = getattr(ut, name)([p], lr=0.1, fused=True)
    before = {k: v.clone() for k, v in opt.state[p].items()}
    p.grad = grad
    refusal = rf"uniopt.torch.{name}: `fused` does not support sparse gradients"
    with pytest.raises(RuntimeError, match=refusal):
        opt.step()
    assert torch.equal(p.detach(), torch.zeros(4, 2))
    assert set(opt.state[p]) == set(before)
    assert all(torch.equal(opt.state[p][k], v) for k, v in before.items())
    opt.param_groups[0]["fused"] = None  # as torch.optim: the same gradient steps without fused
    opt.step()
    assert (p.detach()[1] < 0).all()  # the touched row moved against its gradient, the others not
    assert torch.equal(p.detach()[[0, 2, 3]], torch.zeros(3, 2))


def test_sparse_adam_state_dict_continues_in_torch_optim_sparse_adam_bitwise():
    """uniopt.torch.SparseAdam's state_dict holds ``step`` as a Python int, as torch.optim.SparseAdam
    keeps it; loaded into torch.optim.SparseAdam (after torch.save/torch.load), that optimizer
    continues exactly as from its own state (the moments are bitwise torch's, see above). A tensor
    step would make its bias corrections float32."""
    torch.manual_seed(0)
    embs = [torch.nn.Embedding(50, 4, sparse=True) for _ in range(3)]
    for emb in embs[1:]:
        emb.load_state_dict(embs[0].state_dict())
    mine = ut.SparseAdam(embs[0].parameters(), lr=0.01)
    theirs = torch.optim.SparseAdam(embs[1].parameters(), lr=0.01)
    batches = [(torch.randint(0, 50, (16,)), torch.randn(16, 4)) for _ in range(5)]

    def train(emb, opt, part):
        for ids, target in part:
            opt.zero_grad()
            ((emb(ids) - target) ** 2).sum().backward()
            opt.step()

    train(embs[0], mine, batches[:3])
    train(embs[1], theirs, batches[:3])
    saved = mine.state_dict()
    assert type(saved["state"][0]["step"]) is int and saved["state"][0]["step"] == 3
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    with torch.no_grad():
        embs[2].weight.copy_(embs[1].weight)  # torch's parameters: only the state comes from uniopt
    moved = torch.optim.SparseAdam(embs[2].parameters(), lr=0.01)
    moved.load_state_dict(torch.load(buffer, weights_only=True))
    train(embs[1], theirs, batches[3:])
    train(embs[2], moved, batches[3:])
    assert torch.equal(embs[2].weight, embs[1].weight)
    resumed = ut.SparseAdam(embs[0].parameters(), lr=0.01)
    resumed.load_state_dict(saved)  # uniopt takes the int steps back
    assert resumed.state[embs[0].weight]["step"].dtype == torch.int64
