"""The elementwise ops the rules take from uniopt.torch's namespace equal NumPy's, bit for bit,
eagerly and compiled by inductor: ``sign``, ``abs``, ``maximum`` (the ops Adamax, Adadelta and Lion
add to the rules), on the values where implementations differ (NaN, infinities, signed zeros,
subnormals). The expected values are NumPy's (ml_dtypes' for bfloat16)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch

from uniopt.torch._namespace import xp

VALUES = [0.0, -0.0, 1.5, -2.0, np.nan, np.inf, -np.inf, 1e-45, -1e-45, 3e-39, 7.0, -0.25]
DTYPES = {
    torch.float32: np.float32,
    torch.float64: np.float64,
    torch.float16: np.float16,
    torch.bfloat16: ml_dtypes.bfloat16,
}


def _assert_same(got: torch.Tensor, expected: np.ndarray, what: str) -> None:
    """Bit for bit, NaNs compared as NaNs (their payloads are not specified)."""
    nan = np.isnan(expected.astype(np.float64))
    np.testing.assert_array_equal(torch.isnan(got).numpy(), nan, err_msg=what)
    bits = got.detach().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[got.element_size()]).numpy()
    want = expected.view({2: np.int16, 4: np.int32, 8: np.int64}[expected.itemsize])
    np.testing.assert_array_equal(bits[~nan], want[~nan], err_msg=what)


def _tensor(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(a.astype(np.float64)).to(dtype)


@pytest.fixture(params=[False, True], ids=["eager", "compiled"])
def run(request):
    if not request.param:
        return lambda fn, *args: fn(*args)

    def compiled(fn, *args):
        torch._dynamo.reset()  # each call compiles afresh (the recompile limit counts code objects)
        return torch.compile(fn, fullgraph=True, dynamic=False)(*args)

    return compiled


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("n", [1, 12, 40])
def test_sign_and_abs_equal_numpy_bitwise(dtype, n, run):
    values = np.resize(np.array(VALUES), n)
    a = values.astype(DTYPES[dtype])
    x = _tensor(a, dtype)
    for ours, ref in ((xp.sign, np.sign), (xp.abs, np.abs)):
        wide = np.float32 if dtype == torch.bfloat16 else DTYPES[dtype]  # exact for sign and abs
        expected = ref(a.astype(wide)).astype(DTYPES[dtype])
        got = run(lambda t, f=ours: f(t), x)
        _assert_same(got, expected, f"{ours.__name__} {dtype}")


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_sign_of_nan_is_nan_in_a_tensor_of_nans(dtype, run):
    # torch.sign gives 0 here (torch 2.13, CPU); the spec's rules need NaN to propagate
    got = run(lambda t: xp.sign(t), torch.full((5,), float("nan"), dtype=dtype))
    assert bool(torch.isnan(got).all())


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("value", [np.nan, -0.0, -3.0, 0.5])
def test_sign_of_a_zero_dim_tensor_compiles_into_one_graph(dtype, value, run):
    """A 0-d parameter (a scalar temperature, a gate) traces into the graph: array_api_compat's
    masked NaN write is a data-dependent branch on a 0-d tensor, which broke the graph."""
    x = torch.tensor(value, dtype=dtype)
    expected = np.sign(np.asarray(value, np.float32)).astype(DTYPES[dtype])
    _assert_same(run(lambda t: xp.sign(t), x), np.asarray(expected), f"sign({value}) {dtype}")


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_maximum_propagates_nan_and_equals_numpy_off_signed_zero_ties(dtype, run):
    rng = np.random.default_rng(0)
    a = np.concatenate([np.array(VALUES), rng.standard_normal(20)])
    b = np.concatenate([np.array(VALUES)[::-1], rng.standard_normal(20)])
    tie = (a == 0) & (b == 0)  # maximum(-0.0, +0.0): unspecified (NumPy differs by dtype)
    a, b = a[~tie].astype(DTYPES[dtype]), b[~tie].astype(DTYPES[dtype])
    expected = np.maximum(a.astype(np.float64), b.astype(np.float64)).astype(DTYPES[dtype])
    got = run(lambda s, t: xp.maximum(s, t), _tensor(a, dtype), _tensor(b, dtype))
    _assert_same(got, expected, f"maximum {dtype}")
    assert int(torch.isnan(got).sum()) == 2


def test_maximum_with_a_0d_scalar_keeps_the_tensor_dtype():
    x = torch.tensor([1.0, -3.0, float("nan")], dtype=torch.bfloat16)
    got = xp.maximum(x, torch.tensor(0.5, dtype=torch.bfloat16))
    assert got.dtype == torch.bfloat16
    assert got[:2].tolist() == [1.0, 0.5] and bool(torch.isnan(got[2]))


@pytest.mark.parametrize("name", ["add", "subtract", "multiply", "divide", "maximum"])
def test_binary_ops_keep_array_api_compat_results(name):
    """The namespace calls torch directly on two tensors of one dtype and array_api_compat otherwise:
    the same results and dtypes as array_api_compat's wrappers, whose array-API promotion of a 0-d
    tensor of another dtype (torch alone would keep the other operand's dtype) is kept."""
    import array_api_compat.torch as compat

    ours, theirs = getattr(xp, name), getattr(compat, name)
    x = torch.tensor([1.5, -2.0, 3e-39, float("nan")], dtype=torch.float32)
    for y in (
        torch.tensor([0.25, 7.0, -1e-45, 2.0], dtype=torch.float32),  # same dtype: torch directly
        torch.tensor(0.1, dtype=torch.float32),
        torch.tensor(0.1, dtype=torch.float64),  # 0-d of another dtype: promoted to float64
        torch.tensor([0.25, 7.0, -1e-45, 2.0], dtype=torch.float16),
        0.1,
    ):
        for a, b in ((x, y), (y, x)):
            got, want = ours(a, b), theirs(a, b)
            assert got.dtype == want.dtype, (name, a, b)
            assert torch.equal(got, want) or torch.equal(torch.isnan(got), torch.isnan(want))
    assert ours(x, torch.tensor(0.1, dtype=torch.float64)).dtype == torch.float64
