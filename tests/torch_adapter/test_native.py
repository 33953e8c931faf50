"""The CPU multi-tensor kernel (:mod:`uniopt.torch._native`): the spec's rule translated to C and run in
place over pointer tables gives the bits of the per-tensor loop in every case it translates, and
everything it cannot take (an untranslatable rule, no C compiler, a non-contiguous gradient) runs
the other flat path instead.

``_flat.LARGE`` and ``_native.TILE`` are lowered so that a small set of tensors has gathered-size
tensors, tensors of one tile and tensors split over several tiles.
"""

from __future__ import annotations

import ctypes
import itertools
import shlex
import subprocess

import numpy as np
import pytest
import torch
from test_flat import _assert_same  # parameters and every state entry, bitwise

import uniopt
import uniopt.torch as ut
from uniopt.registry import TABLE
from uniopt.torch import _flat, _native
from uniopt.torch._optimizer import _round

SHAPES = [(3, 4), (40,), (), (5, 2, 3), (7,), (0,), (2, 33)]
ELEMENTWISE_CASES = [
    pytest.param(info, case, id=f"{info.name}-{case.desc}")
    for info in TABLE
    if info.elementwise
    for case in info.cases
]


@pytest.fixture(autouse=True)
def _small_tiles(monkeypatch):
    monkeypatch.setattr(_flat, "LARGE", {"cpu": 30, "cuda": 30})
    monkeypatch.setattr(_native, "TILE", 16)  # (40,) in 3 tiles, (2, 33) in 5


def _run(name, hyper, implementation, dtype=torch.float32, steps=9, grad=None, shapes=SHAPES):
    rng = np.random.default_rng(0)
    params = [torch.nn.Parameter(torch.from_numpy(rng.standard_normal(s)).to(dtype)) for s in shapes]
    opt = getattr(ut, name)(params, implementation=implementation, **hyper)
    for t in range(steps):
        rng = np.random.default_rng(100 + t)
        for p in params:
            g = torch.from_numpy(rng.standard_normal(p.shape)).to(dtype)
            p.grad = g if grad is None else grad(g)
        opt.step()
    return params, opt


@pytest.fixture
def native_steps(monkeypatch):
    """How many bucket steps the C kernel ran."""
    ran = []
    real = _flat.Bucket.run_native

    def counted(self, *args):
        done = real(self, *args)
        ran.append(done)
        return done

    monkeypatch.setattr(_flat.Bucket, "run_native", counted)
    return ran


@pytest.mark.parametrize(("info", "case"), ELEMENTWISE_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_c_kernel_equals_the_loop_bitwise_where_it_translates_the_rule(
    info, case, dtype, native_steps, monkeypatch
):
    """Nine steps (RAdam's unrectified and rectified branches, NAdam's and Adam's bias
    corrections) of every elementwise case: the C kernel where it translates the rule (every case,
    :func:`test_every_elementwise_rule_translates`), bitwise with ``implementation="loop"``; a step
    it does not translate would be the other flat path's (here the eager rule, standing in for
    inductor's kernel)."""
    spec = info.make(case)
    translated = [
        _native.translate(spec, dtype, _round(spec.step_scalars(t, lr=spec.lr), dtype)) is not None
        for t in range(1, 10)
    ]
    real = _flat.kernel
    monkeypatch.setattr(_flat, "kernel", lambda s, d, compiled, *a: real(s, d, False, *a))  # no inductor
    hyper = spec.hyperparameters
    _assert_same(_run(info.name, hyper, "compiled", dtype), _run(info.name, hyper, "loop", dtype))
    assert native_steps == [True] * sum(translated)  # one bucket: a step is the kernel's or not


UNTRANSLATED = {("Adagrad", "optax_eps0")}
"""optax's Adagrad with ``eps=0`` selects with ``where(sum > 0, ...)``: an operator on an array with a
Python number, not translated."""


@pytest.mark.parametrize(("info", "case"), ELEMENTWISE_CASES)
def test_every_elementwise_rule_translates(info, case):
    """Every elementwise case of the table, at steps on either side of RAdam's rectification: a
    regression that made a rule untranslatable would otherwise only show as a slower step; the one
    rule that is not translated takes inductor's kernel."""
    spec = info.make(case)
    expected = (info.name, case.desc) not in UNTRANSLATED
    for step in (1, 10):
        for dtype in _native.DTYPES:
            sc = _round(spec.step_scalars(step, lr=spec.lr), dtype)
            assert (_native.translate(spec, dtype, sc) is not None) == expected, (step, dtype)


def test_auto_takes_the_c_kernel_at_any_size_and_flat_never(native_steps):
    """``auto`` (the default) runs the C kernel even on a few small tensors (it builds in a fraction
    of a second, unlike inductor's); ``flat`` stays the eager rule over the gathered vector."""
    assert sum(p.numel() for p in _run("Adam", {"lr": 1e-2}, "loop", steps=1)[0]) < ut.AUTO_COMPILE_MIN
    _assert_same(_run("RAdam", {"lr": 1e-2}, "auto"), _run("RAdam", {"lr": 1e-2}, "loop"))
    assert native_steps == [True] * 9
    native_steps.clear()
    _assert_same(_run("RAdam", {"lr": 1e-2}, "flat"), _run("RAdam", {"lr": 1e-2}, "loop"))
    assert native_steps == []


def test_the_kernel_is_handed_each_tensor_in_tiles():
    params, opt = _run("Adam", {"lr": 1e-2}, "compiled", steps=1)
    ((bucket, compiled),) = next(iter(opt._buckets.values()))[4]
    lengths, pointers, tensor, offset = bucket.native_segments()
    assert compiled
    want = [min(16, p.numel() - s) for p in params for s in range(0, p.numel(), 16)]
    assert lengths.tolist() == want  # (0,) has no segment
    assert pointers.shape == (len(want), 4)  # parameter, gradient, exp_avg, exp_avg_sq
    for row, (i, at) in enumerate(zip(tensor, offset, strict=True)):
        assert pointers[row, 0] == params[i].data_ptr() + at
        assert pointers[row, 2] == opt.state[params[i]]["exp_avg"].data_ptr() + at
        assert pointers[row, 3] == opt.state[params[i]]["exp_avg_sq"].data_ptr() + at


def test_a_non_contiguous_gradient_takes_the_other_flat_path(native_steps):
    transposed = lambda g: g.mT.contiguous().mT if g.dim() == 2 and g.shape[0] > 1 else g  # noqa: E731
    _assert_same(
        _run("RAdam", {"lr": 1e-2}, "compiled", grad=transposed),
        _run("RAdam", {"lr": 1e-2}, "loop", grad=transposed),
    )
    assert native_steps and not any(native_steps)


def test_without_a_c_compiler_the_step_runs_inductors_kernel(monkeypatch, tmp_path, native_steps):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing cached
    monkeypatch.setattr(_native, "_KERNELS", type(_native._KERNELS)())
    monkeypatch.setattr(_native, "_LIBRARIES", {})
    real = _flat.kernel
    used = []
    monkeypatch.setattr(
        _flat, "kernel", lambda s, d, compiled, *a: used.append(compiled) or real(s, d, False, *a)
    )
    _assert_same(_run("Adam", {"lr": 1e-2}, "compiled", steps=3), _run("Adam", {"lr": 1e-2}, "loop", steps=3))
    assert used == [True] * 3 and not native_steps


def test_a_cc_with_a_wrapper_builds_with_the_wrapper(monkeypatch, tmp_path, native_steps):
    """``CC="ccache gcc"``, as make and setuptools read it, is a program and its arguments: the
    kernel is built through the wrapper and runs, where taking the whole string as one program's
    name found none and fell back to inductor's kernel without a word."""
    compiler = _native.c_compiler()
    if compiler is None:
        pytest.skip("no C compiler here")
    log = tmp_path / "calls"
    wrapper = tmp_path / "wrap cc"  # a space in its path too: quoted as a shell quotes it
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {shlex.quote(str(log))}\nexec "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("CC", f"{shlex.quote(str(wrapper))} {shlex.join(compiler)}")
    assert _native.c_compiler() == (str(wrapper), *compiler)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing cached
    monkeypatch.setattr(_native, "_KERNELS", type(_native._KERNELS)())
    monkeypatch.setattr(_native, "_LIBRARIES", {})
    real = _flat.kernel
    monkeypatch.setattr(_flat, "kernel", lambda s, d, compiled, *a: real(s, d, False, *a))  # no inductor
    _assert_same(_run("Adam", {"lr": 1e-2}, "compiled", steps=3), _run("Adam", {"lr": 1e-2}, "loop", steps=3))
    assert native_steps == [True] * 3
    assert log.read_text().startswith(compiler[0])  # the wrapper ran the compiler


@pytest.mark.parametrize("cc", ["'unclosed", ""])
def test_an_unsplittable_or_empty_cc(monkeypatch, cc):
    """An unclosed quote in ``$CC`` is no compiler (the step runs inductor's kernel, as without
    one); an empty ``$CC`` is unset: the one on the ``PATH``."""
    monkeypatch.setenv("CC", cc)
    got = _native.c_compiler()
    if cc:
        assert got is None
    else:
        assert got is None or (len(got) == 1 and got[0].rsplit("/", 1)[-1] in ("cc", "gcc", "clang"))


def test_the_translation_refuses_what_it_does_not_cover():
    tracer = _native.Tracer(torch.float32)
    a = _native.Value("a", torch.float32, tracer)
    other = _native.Value("b", torch.float64, _native.Tracer(torch.float64))
    for refused in (
        lambda: tracer.multiply(a, 2.0),  # a Python number: its rounding would be the compiler's
        lambda: tracer.add(a, other),  # another dtype
        lambda: tracer.where(a, a, a),  # a condition that is no comparison's
        lambda: tracer.conj(a),  # not translated
        lambda: a == 0,  # a comparison would otherwise be object identity
        lambda: a * a,
        lambda: bool(a),
        lambda: a.shape,
    ):
        with pytest.raises(_native.UntranslatableError):
            refused()
    assert tracer.lines == []
    assert _native.translate(uniopt.Adam(), torch.bfloat16, ()) is None


def test_the_c_source_is_the_rules_ops_in_order():
    spec = uniopt.SGD(lr=0.1, momentum=0.9)
    source, fields = _native.translate(
        spec, torch.float32, _round(spec.step_scalars(2, lr=0.1), torch.float32)
    )
    body = [
        line.strip()
        for line in source.splitlines()
        if line.strip().startswith(("const float t", "p[i]", "s0[i]"))
    ]
    assert "-ffp-contract=off" in _native._FLAGS and "-ffast-math" not in _native._FLAGS
    assert len(body) >= 3 and body[-2].startswith("p[i] = ") and body[-1].startswith("s0[i] = ")
    assert all(("*" in line) + ("+" in line) + ("-" in line.split("=", 1)[1]) <= 1 for line in body[:-2])
    assert len(fields) >= 2


SPECIAL = [float("nan"), -0.0, 0.0, float("inf"), -float("inf"), 1e-45, -1e-45, 2.0, -3.0, 0.25]
"""Gradients whose Lion update direction ``sign(c)`` (``c = (1-beta1) g`` at the first step) meets
each case of the sign: NaN, either zero (also from the subnormals, which ``(1-beta1) g`` rounds to
zero in float32), either infinity and either sign of a finite value."""


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_c_kernels_sign_is_the_namespaces_on_nan_zeros_and_infinities(dtype, native_steps):
    """``xp.sign`` as the kernel computes it: NaN for NaN, +0 for either zero, -1 and +1 otherwise,
    as NumPy's ``sign`` (the expected first step below) and the namespace's (the ``loop`` run)."""
    grad = lambda g: torch.tensor(SPECIAL, dtype=dtype).reshape(g.shape)  # noqa: E731
    hyper = {"lr": 0.5, "betas": (0.9, 0.99)}
    runs = {
        impl: _run("Lion", hyper, impl, dtype, steps=1, grad=grad, shapes=[(len(SPECIAL),)])
        for impl in ("compiled", "loop")
    }
    assert native_steps == [True]
    real = torch.empty(0, dtype=dtype).numpy().dtype.type
    start = np.random.default_rng(0).standard_normal(len(SPECIAL)).astype(real)  # _run's parameter
    expected = start - np.sign(real(0.1) * np.array(SPECIAL, dtype=real)) * real(0.5)
    for impl, ((param,), opt) in runs.items():
        got = param.detach().numpy()
        assert np.array_equal(np.isnan(got), np.isnan(expected)), impl
        finite = ~np.isnan(expected)
        assert got[finite].tobytes() == expected[finite].tobytes(), impl
        assert np.isnan(opt.state[param]["exp_avg"].numpy()[0]), impl


def test_every_translated_rule_compiles_to_a_vectorised_loop(tmp_path):
    """Every elementwise case's float32 kernel, on either side of RAdam's rectification, has its
    inner loop vectorised (GCC's ``-fopt-info-vec`` report): a branch per element, as Lion's nested
    ``sign`` select once left, ran Lion's large step 9x slower with the same bits. (float64's
    source differs in its type names only.)"""
    compiler = _native.c_compiler()  # the one the kernels are built with
    version = compiler and subprocess.run([*compiler, "--version"], capture_output=True, text=True).stdout
    if not version or "Free Software Foundation" not in version:
        pytest.skip(f"the vectorisation report is GCC's; the C compiler here is {compiler!r}")
    sources = set()
    for info in TABLE:
        for case in info.cases if info.elementwise else ():
            spec = info.make(case)
            for step in (1, 10):
                sc = _round(spec.step_scalars(step, lr=spec.lr), torch.float32)
                # the parameter's dtype for every slot, and each narrower slot in bfloat16
                for slot_dtypes in ((), *_narrow(spec, torch.float32, torch.bfloat16)):
                    translated = _native.translate(spec, torch.float32, sc, slot_dtypes)
                    if translated is not None:
                        sources.add(translated[0])
    sources = sorted(sources)
    assert sum("uniopt_bf16_round" in source for source in sources) >= 10
    names = []
    for i, source in enumerate(sources):
        (tmp_path / f"rule{i}.c").write_text(source)
        lines = source.splitlines()
        names.append(f"rule{i}.c:{lines.index(next(line for line in lines if 'i < n' in line)) + 1}:")
    flags = [*(f for f in _native._FLAGS if f != "-shared"), *_native.arch_flags(), "-fopt-info-vec"]
    report = subprocess.run(
        [*compiler, *flags, "-c", *(f"rule{i}.c" for i in range(len(names)))],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stderr.splitlines()
    assert len(names) > 40
    scalar = [n for n in names if not any(r.startswith(n) and "loop vectorized" in r for r in report)]
    assert not scalar, [(n, sources[names.index(n)]) for n in scalar[:2]]


def test_work_items_pack_small_tensors_up_to_a_tile():
    """Consecutive segments share a work item while their elements stay within a tile (here 16): a
    thread takes an item at a time, so many small tensors are not handed out one by one."""
    lengths = np.array([5, 5, 5, 16, 16, 3, 0, 7, 9, 1, 16], dtype=np.int64)
    starts = _native.work_items(lengths)
    assert starts.tolist() == [0, 3, 4, 5, 8, 10, 11]  # [5 5 5] [16] [16] [3 0 7] [9 1] [16]
    assert _native.work_items(np.array([], dtype=np.int64)).tolist() == [0, 0]
    rng = np.random.default_rng(0)
    for _ in range(50):
        lengths = rng.integers(0, 20, size=rng.integers(1, 60))
        starts = _native.work_items(lengths)
        assert starts[0] == 0 and starts[-1] == len(lengths) and np.all(np.diff(starts) > 0)
        for lo, hi in itertools.pairwise(starts):
            assert hi - lo == 1 or lengths[lo:hi].sum() <= 16
            if hi < len(lengths):  # closed only when the next segment would not fit
                assert lengths[lo:hi].sum() + lengths[hi] > 16


def test_a_bucket_of_many_small_tensors_and_tiles_steps_bitwise_as_the_loop(native_steps):
    """Small tensors packed into shared work items beside the tiles of larger ones."""
    shapes = [(int(n),) for n in np.random.default_rng(3).integers(0, 12, size=60)] + [(70,), (3, 40)]
    run = lambda implementation: _run("RAdam", {"lr": 1e-2}, implementation, steps=7, shapes=shapes)  # noqa: E731

    compiled = run("compiled")
    _assert_same(compiled, run("loop"))
    assert native_steps == [True] * 7
    ((bucket, _),) = compiled[1]._buckets[0][4]
    assert 2 < len(bucket.work) - 1 < len(bucket.native_segments()[0])  # packed, and more than one item


def _narrow(spec, dtype, narrow):
    """The slot dtypes (``spec.slot_names()`` order) with each of the spec's lower-precision slots
    in ``narrow`` in turn, where its settings keep that slot (SGD without momentum keeps none)."""
    names = spec.slot_names()
    return [
        tuple(narrow if n == name else dtype for n in names)
        for name in spec.lower_precision_slots
        if name in names
    ]


NARROW_CASES = [
    pytest.param(
        info, case, dtype, narrow, id=f"{info.name}-{case.desc}-{dtype}-{narrow}".replace("torch.", "")
    )
    for info in TABLE
    if info.elementwise and info.torch is not None and info.spec.lower_precision_slots
    for case in info.cases
    for dtype, narrow in (
        (torch.float32, torch.bfloat16),
        (torch.float64, torch.float32),
        (torch.float64, torch.bfloat16),
    )
    if _narrow(info.make(case), dtype, narrow)
]


@pytest.mark.parametrize(("info", "case", "dtype", "narrow"), NARROW_CASES)
def test_the_c_kernel_takes_narrower_slots_bitwise(info, case, dtype, narrow, native_steps, monkeypatch):
    """A slot stored narrower (``state_dtypes``: bfloat16 beside float32 or float64, float32 beside
    float64) is widened and stored by the C kernel itself, bitwise with ``implementation="loop"``
    (torch's own conversions) over nine steps: every step is the kernel's. float16 slots are not
    taken (inductor's kernel, here the eager rule)."""
    spec = info.make(case)
    (slot_dtypes, *_) = _narrow(spec, dtype, narrow)
    state_dtypes = {n: d for n, d in zip(spec.slot_names(), slot_dtypes, strict=True) if d != dtype}
    real = _flat.kernel
    monkeypatch.setattr(_flat, "kernel", lambda s, d, compiled, *a: real(s, d, False, *a))  # no inductor
    hyper = {**spec.hyperparameters, "state_dtypes": state_dtypes}
    _assert_same(_run(info.name, hyper, "compiled", dtype), _run(info.name, hyper, "loop", dtype))
    assert native_steps == [True] * 9
    native_steps.clear()
    if dtype == torch.float32:
        hyper["state_dtypes"] = {n: torch.float16 for n in state_dtypes}
        _assert_same(_run(info.name, hyper, "compiled", dtype), _run(info.name, hyper, "loop", dtype))
        assert not any(native_steps)  # never the kernel's: a float16 slot is not translated
        sc = _round(spec.step_scalars(1, lr=spec.lr), dtype)
        narrow16 = tuple(torch.float16 if d != dtype else d for d in slot_dtypes)
        assert _native.translate(spec, dtype, sc, narrow16) is None


def test_the_c_kernels_bfloat16_conversions_are_torchs(tmp_path):
    """``uniopt_bf16_round`` and ``uniopt_bf16_widen`` (:mod:`uniopt.torch._native`) against torch's
    own conversions (c10::BFloat16, round to nearest, ties to even) on every float32 bit pattern of
    interest: each exponent with the mantissas around a bfloat16 halfway point (ties, one below,
    one above), subnormals, the largest finite values (rounding to infinity), zeros, infinities,
    NaNs, and 2**20 random patterns; NaN stays NaN."""
    source = "\n".join(
        [
            "#include <stdint.h>",
            _native._BF16,
            "void round_all(const float *x, uint16_t *y, float *back, int64_t n) {",
            "  for (int64_t i = 0; i < n; ++i) { y[i] = uniopt_bf16_round(x[i]);",
            "    back[i] = uniopt_bf16_widen(y[i]); }",
            "}",
        ]
    )
    lib = _native.shared_library("bf16_test", source, ("-O2", "-shared", "-fPIC"))
    if lib is None:
        pytest.skip("no C compiler: the kernel is not built here either")
    rng = np.random.default_rng(0)
    high = np.arange(0, 1 << 16, dtype=np.uint32) << 16  # every bfloat16
    around = np.array([0x7FFF, 0x8000, 0x8001, 0x0001, 0xFFFF, 0x7FFE, 0x18000 & 0xFFFF], dtype=np.uint32)
    bits = np.concatenate(
        [
            (high[:, None] | around[None, :]).ravel(),
            rng.integers(0, 1 << 32, size=1 << 20, dtype=np.uint64).astype(np.uint32),
            np.array(
                [0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F8000, 0x7F7F7FFF, 0x7F800001, 0xFFC00000], dtype=np.uint32
            ),
        ]
    )
    x = bits.view(np.float32)
    got = np.empty(len(x), dtype=np.uint16)
    back = np.empty(len(x), dtype=np.float32)
    lib.round_all.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    lib.round_all(x.ctypes.data, got.ctypes.data, back.ctypes.data, len(x))
    want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    nan = np.isnan(x)
    assert np.array_equal(got[~nan], want[~nan])
    assert np.all((got[nan] & 0x7F80) == 0x7F80) and np.all((got[nan] & 0x7F) != 0)  # NaN stays NaN
    widened = torch.from_numpy(got.view(np.int16)).view(torch.bfloat16).float().numpy()
    assert np.array_equal(back.view(np.uint32), widened.view(np.uint32))
