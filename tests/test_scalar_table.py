"""The per-step scalar table used by backends whose step count is traced on the device."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import uniopt
from uniopt.registry import TABLE
from uniopt.scalar_table import NotConvergentError, rounded_scalars, scalar_table

CASES = [
    pytest.param(info, case, dtype, id=f"{info.name}-{case.desc}-{dtype}")
    for info in TABLE
    for case in info.cases
    if info.make(case).scalars_converge()
    # float64 tables of beta2 = 0.999 run to ~40k rows: check them on one case each
    for dtype in ("float32", "float64")
    if dtype == "float32" or getattr(info.make(case), "betas", (0, 0))[1] < 0.999
] + [
    # half precisions: rounded from the host's float64 rows as a whole array, like one value at a time
    pytest.param(info, info.cases[0], dtype, id=f"{info.name}-{info.cases[0].desc}-{dtype}")
    for info in TABLE
    if info.make(info.cases[0]).scalars_converge()
    for dtype in ("float16", "bfloat16")
]


def _dtype(name: str) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def _equal(a: tuple, b: tuple) -> bool:
    return all(
        (x is y) if isinstance(x, bool) else x.dtype == y.dtype and x == y for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize(("info", "case", "dtype"), CASES)
def test_table_rows_equal_the_host_scalars_before_and_after_its_end(info, case, dtype):
    spec, dtype = info.make(case), _dtype(dtype)
    table = scalar_table(spec, dtype)
    end = table.length
    for step in sorted({1, 2, 5, 6, 7, 50, max(end - 1, 1), end, end + 1, 3 * end + 11, 10**9}):
        assert _equal(table.row(step), rounded_scalars(spec, step, dtype)), step


def test_every_row_of_a_table_equals_the_host_scalars():
    spec = uniopt.RAdam(lr=3e-3, betas=(0.9, 0.99), weight_decay=0.1)
    for dtype in (np.dtype("float32"), _dtype("bfloat16")):
        table = scalar_table(spec, dtype)
        for step in range(1, table.length + 1):
            assert _equal(table.row(step), rounded_scalars(spec, step, dtype)), (dtype, step)


def test_an_extended_table_holds_the_rows_that_row_gives_past_its_end():
    """``extended(n)`` lays out steps 1..n as ``row`` reads them: the table, then its limit row."""
    spec = uniopt.RAdam(lr=3e-3)  # float fields and a flag (the rectified step)
    table = scalar_table(spec, np.dtype("float32"))
    assert table.extended(table.length) is table and table.extended(3) is table
    longer = table.extended(table.length + 7)
    assert longer.length == table.length + 7 and longer.is_flag == table.is_flag
    for step in (1, 2, table.length - 1, table.length, table.length + 1, table.length + 7):
        assert _equal(longer.row(step), table.row(step)), step
        assert _equal(longer.row(step), rounded_scalars(spec, step, np.dtype("float32"))), step


def test_adam_table_ends_where_float32_bias_correction_reaches_one():
    table = scalar_table(uniopt.Adam(), "float32")
    # 1 - 0.999^t rounds to 1.0f once 0.999^t <= 2^-25, i.e. t >= 25 ln2 / -ln(0.999) ~ 17,320;
    # the table holds every step before that (Keras's alpha = lr sqrt(bc2) / bc1 settles a few
    # hundred steps later), and its last row is the limit
    assert 17_320 < table.length < 18_000
    assert table.row(table.length) == table.row(10**9)


def test_a_never_converging_schedule_is_refused_at_once():
    with pytest.raises(NotConvergentError, match="Adagrad: the per-step scalars never reach a limit"):
        scalar_table(uniopt.Adagrad(lr_decay=0.01), "float32")


def _new_process(st) -> None:
    """Forget what this process computed and read, as another process would start."""
    st._HOST_ROWS.clear()
    st._READ.clear()
    st._UNSAVED.clear()


def test_host_rows_are_shared_through_the_cache_folder_and_equal_fresh_ones(tmp_path, monkeypatch):
    from uniopt import scalar_table as st

    spec = uniopt.Adam(lr=0.003, betas=(0.8, 0.99), convention="keras")
    monkeypatch.delenv(st.CACHE_VARIABLE, raising=False)
    _new_process(st)
    fresh = st.scalar_table(spec, np.float32)
    assert not any(tmp_path.iterdir())  # unset: nothing written
    monkeypatch.setenv(st.CACHE_VARIABLE, str(tmp_path))
    _new_process(st)
    st.scalar_table(spec, np.float32)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].name.startswith("Adam-")
    _new_process(st)  # another process: only the file
    calls = []
    original = type(spec).step_scalars

    def counted(self, *args, **kwargs):
        calls.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(spec), "step_scalars", counted)
    cached = st.scalar_table(spec, np.float32)
    assert len(calls) <= 2 < fresh.length  # the field names and the limit row; the rows are read
    np.testing.assert_array_equal(cached.floats, fresh.floats)
    np.testing.assert_array_equal(cached.flags, fresh.flags)
    monkeypatch.undo()
    other = spec.replace(lr=0.004)  # another spec: another file
    monkeypatch.setenv(st.CACHE_VARIABLE, str(tmp_path))
    st.scalar_table(other, np.float32)
    assert len(list(tmp_path.iterdir())) == 2


def test_a_shorter_cached_prefix_is_extended_not_recomputed(tmp_path, monkeypatch):
    from uniopt import scalar_table as st

    spec = uniopt.Adam(lr=0.002, betas=(0.9, 0.995))
    monkeypatch.setenv(st.CACHE_VARIABLE, str(tmp_path))
    _new_process(st)
    is_flag = tuple(isinstance(v, bool) for v in spec.step_scalars(1))
    short = st._host_rows(spec, is_flag, 100)  # another process computed 100 rows
    st._save_host_rows(spec)
    _new_process(st)
    calls = []
    original = type(spec).step_scalars

    def counted(self, *args, **kwargs):
        calls.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(spec), "step_scalars", counted)
    longer = st._host_rows(spec, is_flag, 250)
    assert [c[0] for c in calls] == list(range(101, 251))  # only the missing rows
    np.testing.assert_array_equal(longer[0][:100], short[0])
    monkeypatch.undo()
    _new_process(st)
    fresh = st._host_rows(spec, is_flag, 250)  # unset: computed here from step 1
    np.testing.assert_array_equal(longer[0], fresh[0])
    np.testing.assert_array_equal(longer[1], fresh[1])


def test_a_table_computes_rows_a_chunk_at_a_time_and_writes_the_cache_once(tmp_path, monkeypatch):
    """Adam's float64 table ends near step 36,700 (where ``1 - 0.999**t`` rounds to 1): the host
    rows stop within a chunk of that, and the cache file is written once, not once per chunk."""
    from uniopt import scalar_table as st

    spec = uniopt.Adam()
    monkeypatch.setenv(st.CACHE_VARIABLE, str(tmp_path))
    _new_process(st)
    calls, writes = [], []
    original, write = type(spec).step_scalars, st._write_cached

    def counted(self, *args, **kwargs):
        calls.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(spec), "step_scalars", counted)
    monkeypatch.setattr(st, "_write_cached", lambda *args: writes.append(args) or write(*args))
    table = st.scalar_table(spec, np.float64)
    assert 30_000 < table.length < 40_000
    assert table.length <= len(calls) <= table.length + st._CHUNK + 2  # + the field names and the limit
    assert len(writes) == 1 and len(writes[0][1]) == len(calls) - 2


def test_rows_evicted_from_memory_are_read_back_from_the_cache_not_recomputed(tmp_path, monkeypatch):
    from uniopt import scalar_table as st

    spec, other = uniopt.Adam(lr=0.001, betas=(0.5, 0.9)), uniopt.Adam(lr=0.002, betas=(0.5, 0.9))
    monkeypatch.setenv(st.CACHE_VARIABLE, str(tmp_path))
    monkeypatch.setattr(st, "_HOST_ROWS_CACHE_SIZE", 1)
    _new_process(st)
    first = st.scalar_table(spec, np.float64)
    st.scalar_table(other, np.float64)  # evicts spec's rows
    assert spec not in st._HOST_ROWS
    calls = []
    original = type(spec).step_scalars
    monkeypatch.setattr(
        type(spec), "step_scalars", lambda self, *a, **k: calls.append(a) or original(self, *a, **k)
    )
    again = st.scalar_table(spec, np.float32)
    assert len(calls) <= 2 < again.length  # the field names and the limit row; the rows are read
    np.testing.assert_array_equal(again.floats, first.floats[: again.length].astype(np.float32))


def test_a_process_does_not_read_back_the_rows_it_just_wrote(tmp_path, monkeypatch):
    """Its float32 table written, the float64 one extends the rows in memory: the cache file, which
    holds only those rows, is not loaded again."""
    from uniopt import scalar_table as st

    spec = uniopt.Adam(lr=0.003)  # float32 ends near step 17,000, float64 near 36,700
    monkeypatch.setenv(st.CACHE_VARIABLE, str(tmp_path))
    _new_process(st)
    st.scalar_table(spec, np.float32)
    assert len(list(tmp_path.iterdir())) == 1
    loads = []
    original = np.load
    monkeypatch.setattr(st.np, "load", lambda *a, **k: loads.append(a) or original(*a, **k))
    st.scalar_table(spec, np.float64)
    assert loads == []


# -- term tables (Spec.step_terms: the step-only part of scalars computed in-graph) -----------------
def test_a_term_table_holds_every_steps_terms_up_to_the_first_at_the_limit():
    """Schedule-Free AdamW's bias correction 1 - beta2**t, computed independently here: the table
    ends at the first step where it is 1.0 in float64, and every row is the host's value."""
    from uniopt.scalar_table import term_table

    for beta2 in (0.9, 0.99):
        spec = uniopt.ScheduleFreeAdamW(betas=(0.9, beta2))
        table = term_table(spec)
        expected = [1 - beta2**t for t in range(1, len(table) + 1)]
        assert table.shape == (len(expected), 1)
        assert table[:, 0].tolist() == expected
        assert expected[-1] == 1.0 and expected[-2] != 1.0
        keras = term_table(spec.replace(convention="keras", r=None, weight_lr_power=None))
        b2 = np.float32(beta2)
        for t in (1, 2, len(keras) // 2, len(keras)):
            assert keras[t - 1, 0] == float(np.float32(1) - b2 ** np.float32(t))
            assert keras[t - 1, 1] == 1.0 - float(b2) ** t
        assert keras[-1].tolist() == [1.0, 1.0]


def test_a_term_table_that_does_not_reach_its_limit_or_a_spec_without_terms_is_refused():
    from uniopt.scalar_table import term_table

    with pytest.raises(NotConvergentError, match=r"ScheduleFreeAdamW: the per-step terms .* 100 steps"):
        term_table(uniopt.ScheduleFreeAdamW(), max_steps=100)
    with pytest.raises(ValueError, match=r"Adam: .* has no per-step terms"):
        term_table(uniopt.Adam())
    assert uniopt.ScheduleFreeAdamW(convention="optax").step_terms(1) is None


def test_a_term_table_that_does_not_converge_is_refused_without_walking_every_step(monkeypatch):
    """beta2=0.99999: 1 - beta2**t is not 1.0 in float64 by step 1,000,000 (0.99999**1e6 is about
    4.5e-5), which the refusal finds from a handful of steps' terms, not a million."""
    from uniopt.scalar_table import term_table

    calls = []
    original = uniopt.ScheduleFreeAdamW.step_terms
    monkeypatch.setattr(
        uniopt.ScheduleFreeAdamW, "step_terms", lambda self, step: calls.append(step) or original(self, step)
    )
    assert 1 - 0.99999**1_000_000 != 1.0
    with pytest.raises(NotConvergentError, match=r"within 1000000 steps"):
        term_table(uniopt.ScheduleFreeAdamW(betas=(0.9, 0.99999)))
    assert len(calls) <= 3, calls
