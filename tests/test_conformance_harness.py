"""The conformance harness: ulp arithmetic, the run -> compare pipeline, and that it can fail."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conformance import backends
from conformance.__main__ import main
from conformance.backends import Backend, batched, one_cell, run_namespace
from conformance.cells import Cell, cells
from conformance.compare import compare_dir
from conformance.native import NONFINITE_REASON
from conformance.run import batches, run_backend, run_batch, run_cell
from conformance.streams import NONFINITE_STEP, STREAMS, gradients, initial_params
from conformance.ulp import NAN_MISMATCH, max_ulp, ulp_distance
from uniopt.registry import TABLE


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_ulp_distance_counts_representable_steps(dtype):
    one = dtype(1)
    up = np.nextafter(one, dtype(2))
    two_up = np.nextafter(up, dtype(2))
    smallest = np.nextafter(dtype(0), dtype(1))
    a = np.array([one, one, dtype(0), -smallest, np.nan, np.nan, np.inf, -one], dtype)
    b = np.array([up, two_up, dtype(-0.0), smallest, np.nan, one, np.inf, -up], dtype)
    assert ulp_distance(a, b).tolist() == [1, 2, 0, 2, 0, NAN_MISMATCH, 0, 1]


def test_ulp_distance_across_the_whole_range_does_not_overflow():
    big = np.finfo(np.float64).max
    assert max_ulp(np.array([big]), np.array([-big])) == 2 * 0x7FEFFFFFFFFFFFFF
    with pytest.raises(ValueError, match="cannot compare float32"):
        ulp_distance(np.zeros(2, np.float32), np.zeros(2, np.float64))


def test_streams_are_deterministic_and_rounded_from_float64():
    stream = STREAMS["normal"]
    a = gradients(stream, 3, "float32")
    b = gradients(stream, 3, "float32")
    c = gradients(stream, 3, "float64")
    for x, y, z in zip(a, b, c, strict=True):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z.astype(np.float32))
    assert [p.shape for p in initial_params("mixed", "float32")] == [(), (0,), (3, 1, 5), (2, 0, 3), (7,)]
    bad = gradients(STREAMS["nonfinite"], NONFINITE_STEP, "float32")[0]
    assert np.isnan(bad[0]) and bad[1] == np.inf and bad[2] == -np.inf


def test_nonfinite_gradients_propagate_identically():
    runner = backends.get("numpy").make_runner("eager")
    traj = run_cell(runner, Cell("Adam", "default", "nonfinite", "float32", NONFINITE_STEP + 1))
    assert np.isfinite(traj["param0"][NONFINITE_STEP - 1]).all()
    assert np.isnan(traj["param0"][NONFINITE_STEP][:3]).all()  # NaN, +Inf, -Inf entries
    assert np.isfinite(traj["param0"][NONFINITE_STEP][3:]).all()


def _one_ulp_late(step_to_perturb: int) -> Backend:
    """A backend that is numpy except for a 1-ulp nudge of the first parameter at one step."""
    import array_api_compat.numpy as xp

    inner = one_cell(run_namespace(xp, lambda a: a.copy(), lambda a: np.array(a, copy=True)))

    def runner(mode):
        def run(spec, params0, grads_at, steps):
            for step, (params, slots) in enumerate(inner(spec, params0, grads_at, steps)):
                if step == step_to_perturb and params[0].size:
                    params[0].reshape(-1)[0] = np.nextafter(params[0].reshape(-1)[0], np.inf)
                yield params, slots

        return batched(run)

    return Backend("nudged", "numpy", ("eager",), ("float32",), runner)


def _full_precision_state(selected: list[Cell]) -> list[Cell]:
    """The cells whose case keeps every slot in the parameters' dtype (no ``Case.slot_dtypes``: the
    one-cell runners here and array_api_strict run no lower-precision state)."""
    from uniopt.registry import get

    return [c for c in selected if not get(c.optimizer).case(c.case).slot_dtypes]


def _numpy_batch_runner():
    import array_api_compat.numpy as xp

    return run_namespace(xp, lambda a: a.copy(), lambda a: np.array(a, copy=True))


def _nudging_one_member(victim: Cell, step_to_perturb: int) -> Backend:
    """numpy's batch runner, except that the member made from ``victim`` has its first parameter's
    first entry nudged 1 ulp up at one step; every member runs in the same batch."""
    from conformance.run import member_of

    inner = _numpy_batch_runner()
    victim_spec = member_of(victim).spec

    def runner(mode):
        def run(batch, steps):
            # the victim: the member with the victim's spec and the mixed stream's five parameters
            hit = [k for k, m in enumerate(batch) if m.spec == victim_spec and len(m.params0) == 5]
            assert len(hit) == 1
            for step, snapshots in enumerate(inner(batch, steps)):
                if step == step_to_perturb:
                    params = snapshots[hit[0]][0]
                    params[0] = np.nextafter(params[0], np.asarray(np.inf, params[0].dtype)).copy()
                yield snapshots

        return run

    # numpy's runner stores the cases' lower-precision slots (registry.Case.slot_dtypes) too
    return Backend("nudged", "numpy", ("eager",), ("float32",), runner, slot_dtypes=True)


def test_batches_run_every_cell_of_an_optimizer_dtype_and_length_together():
    selected = cells(["float32", "float64"], steps=6, optimizers=["Adam", "SGD"])
    groups = batches(selected)
    assert sorted(c for g in groups for c in g) == sorted(selected)
    for group in groups:
        assert len({(c.optimizer, c.dtype, c.steps) for c in group}) == 1
    assert len(groups) == len({(c.optimizer, c.dtype, c.steps) for c in selected})


def test_a_batch_gives_each_cell_the_numbers_it_gets_alone():
    """The reference runs batched: every cell of a batch equals the same cell run on its own."""
    runner = _numpy_batch_runner()
    selected = cells(
        ["float32"], steps=9, optimizers=["RAdam"], streams=["normal", "nonfinite", "mixed_shapes"]
    )
    together = run_batch(runner, selected)
    assert len(together) == len(selected) > 10
    for cell in selected:
        alone = run_cell(runner, cell)
        assert together[cell].keys() == alone.keys()
        for name, value in alone.items():
            np.testing.assert_array_equal(together[cell][name], value)


def test_a_one_ulp_change_in_one_cell_of_a_batch_fails_that_cell_and_only_that_cell(tmp_path):
    selected = cells(["float32"], steps=6, optimizers=["Adam"], streams=["normal", "huge", "mixed_shapes"])
    victim = Cell("Adam", "amsgrad", "mixed_shapes", "float32", 6)
    assert victim in selected and len(batches(selected)) == 1  # every cell in one batch
    traj = tmp_path / "trajectories"
    run_backend(backends.get("numpy"), selected, traj)
    run_backend(_nudging_one_member(victim, 4), selected, traj)
    results = [r for r in compare_dir(traj) if r.backend == "nudged"]
    failed = [r for r in results if r.verdict == "FAIL"]
    assert [(r.optimizer, r.case, r.stream, r.dtype) for r in failed] == [
        ("Adam", "amsgrad", "mixed_shapes", "float32")
    ]
    assert failed[0].ulp == 1 and failed[0].first_step == 4
    others = [r for r in results if r is not failed[0]]
    assert len(others) == len(selected) - 1 and all(r.verdict == "pass" and r.ulp == 0 for r in others)


def test_a_deadline_defers_the_batches_not_started_and_still_writes_the_file(tmp_path, monkeypatch):
    import conformance.run as run_module

    selected = cells(["float32"], steps=4, optimizers=["SGD", "Adam"], streams=["normal"])
    first, second = batches(selected)  # SGD's cells, then Adam's
    traj = tmp_path / "trajectories"
    run_backend(backends.get("numpy"), selected, traj)
    clock = {"now": 0.0}  # a batch takes 100 s on this clock
    fake_time = {"perf_counter": lambda: clock["now"], "time": lambda: clock["now"]}
    monkeypatch.setattr(run_module, "time", type("Clock", (), fake_time))
    real_batch = run_module.run_batch

    def slow_batch(runner, batch):
        clock["now"] += 100.0
        return real_batch(runner, batch)

    monkeypatch.setattr(run_module, "run_batch", slow_batch)
    run_backend(backends.get("array_api_strict"), selected, traj, deadline=50.0)
    meta = json.loads((traj / "array_api_strict@eager.json").read_text())
    assert meta["cells"] and {k.split("/")[0] for k in meta["cells"]} == {"SGD"}  # (a few it skips)
    assert meta["deferred"] and set(meta["deferred"]) | set(meta["skipped"]) >= {c.key for c in second}
    assert not set(meta["deferred"]) & {c.key for c in first}
    assert all("--deadline" in why for why in meta["deferred"].values())
    results = {r.optimizer: r.verdict for r in compare_dir(traj) if r.backend == "array_api_strict"}
    assert results == {"SGD": "pass", "Adam": "deferred"}


def test_pipeline_passes_bitwise_backends_and_catches_a_one_ulp_difference(tmp_path):
    selected = _full_precision_state(
        cells(
            ["float32", "float64"], steps=8, optimizers=["RAdam", "SGD"], streams=["normal", "mixed_shapes"]
        )
    )
    traj = tmp_path / "trajectories"
    run_backend(backends.get("numpy"), selected, traj)
    run_backend(backends.get("array_api_strict"), selected, traj)
    run_backend(_one_ulp_late(3), selected, traj)
    results = compare_dir(traj)
    strict = [r for r in results if r.backend == "array_api_strict"]
    assert len(strict) == len(selected) and all(r.verdict == "pass" and r.ulp == 0 for r in strict)
    nudged = [r for r in results if r.backend == "nudged"]
    assert {r.verdict for r in nudged if r.dtype == "float32"} == {"FAIL"}
    assert all(r.ulp == 1 and r.first_step == 3 for r in nudged if r.dtype == "float32")
    # float64 is not in the nudged backend's dtypes: skipped with the reason, never passed
    skipped = [r for r in nudged if r.dtype == "float64"]
    assert skipped and all(r.verdict == "skipped" and "float64" in r.reason for r in skipped)
    reference = [r for r in results if r.backend == "numpy"]
    assert all(r.verdict == "reference" for r in reference)
    assert all(
        r.rel_error_f64 is not None and 0 < r.rel_error_f64 < 1e-3
        for r in reference
        if r.dtype == "float32" and r.stream == "normal"
    )


def test_cli_exits_nonzero_on_a_failing_cell_and_writes_reports(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    args = [
        "--out",
        str(out),
        "run",
        "--optimizers",
        "Adagrad",
        "--streams",
        "normal",
        "--steps",
        "5",
        "--dtypes",
        "float32",
    ]
    assert main([*args[:2], *args[2:], "--backend", "numpy", "array_api_strict"]) == 0
    assert main(["--out", str(out), "compare"]) == 0
    report = json.loads((out / "conformance.json").read_text())
    n = len(cells(["float32"], 5, ["Adagrad"], ["normal"]))  # one cell per Adagrad case
    assert n == len(TABLE[1].cases) and TABLE[1].name == "Adagrad"
    assert report["summary"] == {"reference": n, "pass": n}
    assert (out / "conformance.md").read_text().startswith("# uniopt conformance matrix")
    assert (out / "conformance.png").stat().st_size > 1000

    monkeypatch.setitem(backends.BACKENDS, "nudged", _one_ulp_late(2))
    assert main([*args, "--backend", "nudged"]) == 0
    assert main(["--out", str(out), "compare"]) == 1
    assert "FAIL nudged@eager Adagrad/default/normal/float32: 1 ulp > 0" in capsys.readouterr().out


def test_compare_refuses_to_pass_with_nothing_compared(tmp_path):
    selected = cells(["float32"], steps=3, optimizers=["SGD"], streams=["zeros"])
    run_backend(backends.get("numpy"), selected, tmp_path / "out" / "trajectories")
    assert main(["--out", str(tmp_path / "out"), "compare"]) == 1


def test_ulp_distance_handles_bfloat16_bits():
    import ml_dtypes

    bf16 = ml_dtypes.bfloat16
    one = np.array([1.0], bf16)
    up = np.array([1.0078125], bf16)  # 1 + 2**-7: the next bfloat16 after 1
    assert ulp_distance(one, up).tolist() == [1]
    assert ulp_distance(np.array([np.nan], bf16), np.array([np.nan], bf16)).tolist() == [0]


def test_long_cells_are_float32_adam_and_radam_past_float32_saturation():
    from conformance.cells import LONG_STEPS

    long_cells = [c for c in cells(["float32", "float64"]) if c.stream == "long"]
    assert {(c.optimizer, c.case, c.dtype) for c in long_cells} == {
        ("Adam", "default", "float32"),
        ("RAdam", "default", "float32"),
    }
    # 1 - 0.999**t is exactly 1.0 in float32 well before the end of the run
    assert all(c.steps == LONG_STEPS >= 20_000 for c in long_cells)
    assert np.float32(1) - np.float32(0.999) ** np.float32(LONG_STEPS) == np.float32(1)


def test_cells_whose_hyperparameters_vanish_in_the_dtype_are_skipped_with_the_reason(tmp_path):
    selected = cells(["float16"], steps=3, optimizers=["Adam"], streams=["normal"])
    run_backend(backends.get("numpy"), selected, tmp_path)
    meta = json.loads((tmp_path / "numpy@eager.json").read_text())
    default = "Adam/default/normal/float16/3"
    assert meta["skipped"][default] == "eps=1e-08 rounds to 0 in float16"
    assert "Adam/betas/normal/float16/3" in meta["cells"]  # eps=1e-6 survives in float16


COMPILERS = {"torch@compile", "torch@compiled", "tf@xla", "jax@optax"}
"""The compiled modes that run only the training dtypes by default (backends.training_dtypes_only)."""


def test_the_default_run_leaves_only_the_long_streams_to_full_and_runs_them_in_one_mode_each():
    """Every row runs every cell it can by default, except the 20,000-step long stream, which runs in
    the reference, the native rows and one mode per framework, the 1,000-step parity stream, which
    runs in the reference and the native rows (Keras's on TensorFlow only), and the float64 and
    float16 cells of four compiled modes, which run in the same framework's other modes (and the
    per-convention rule below)."""
    long_cell = Cell("Adam", "default", "long", "float32", 20_000)
    parity = Cell("Adam", "keras", "parity", "float64", 1000)
    short = [
        Cell("Adam", case, stream, dtype, 50)
        for case in ("default", "keras")
        for stream in ("normal", "tiny", "huge", "zeros", "sparse", "mixed_shapes", "nonfinite")
        for dtype in ("float32", "float64", "float16", "bfloat16")
    ]
    every_mode = [(b, m) for b in backends.BACKENDS.values() for m in b.modes]
    for b, m in every_mode:
        for c in short:
            reason = b.skip_by_default(m, c)
            if f"{b.name}@{m}" in COMPILERS and c.dtype not in backends.TRAINING_DTYPES:
                assert reason is not None and "every float64 and float16 cell" in reason, (b.name, m, c)
            else:
                assert reason is None, (b.name, m, c)
    # every framework still runs each dtype's short cells by default in some mode
    for framework in ("torch", "tf", "jax"):
        backend = backends.get(framework)
        for c in short:
            assert any(backend.skip_by_default(m, c) is None for m in backend.modes), (framework, c)
    runs_long = {f"{b.name}@{m}" for b, m in every_mode if b.skip_by_default(m, long_cell) is None}
    assert runs_long == {
        "numpy@eager",
        "torch@eager",
        "tf@function",
        "jax@jit",
        "torch.optim@native",
        "keras@native",
        "optax@native",
        "keras_jax@native",
        "keras_torch@native",
    } & {f"{b.name}@{m}" for b, m in every_mode}
    runs_parity = {f"{b.name}@{m}" for b, m in every_mode if b.skip_by_default(m, parity) is None}
    natives = {f"{b.name}@{m}" for b, m in every_mode if m == "native"}  # each takes its convention
    # the parity stream is the native rows'; Keras's own optimizers run it on TensorFlow (keras@native),
    # on its JAX and torch backends with --full
    keras_elsewhere = {"keras_jax@native", "keras_torch@native"}
    assert runs_parity == {"numpy@eager", *(natives - keras_elsewhere)}
    for row in keras_elsewhere & natives:
        backend, mode = row.split("@")
        assert "keras@native" in backends.get(backend).skip_by_default(mode, parity)
    why = backends.get("tf").skip_by_default("function", parity)
    assert "parity stream, the native rows' stream" in why
    reason = backends.get("torch").skip_by_default("compile", long_cell)
    assert reason.startswith("left to --full") and "torch@eager" in reason


PER_CONVENTION_MODES = {
    "torch@compile",
    "tf@eager",
    "tf@xla",
    "jax@eager",
    "jax@optax",
    "keras_jax@eager",
    "keras_jax@jit",
    "keras_torch@eager",
}
"""The modes that run only the first case of each optimizer and convention by default
(backends.per_convention_only)."""


def test_the_cases_after_the_first_per_convention_run_in_one_mode_per_framework_by_default():
    """Adam's amsgrad case (not the first of its convention) is left to --full in the modes of
    PER_CONVENTION_MODES, with the reason, and runs by default in every other mode; every case of
    every optimizer runs by default in some mode of each framework that runs the optimizer."""
    later = Cell("Adam", "amsgrad", "normal", "float32", 50)
    for b in backends.BACKENDS.values():
        for m in b.modes:
            reason = b.skip_by_default(m, later)
            if f"{b.name}@{m}" in PER_CONVENTION_MODES:
                assert reason is not None and "the cases after the first of each convention" in reason
            elif b.name not in ("keras", "optax", "torch.optim"):  # native rows: their conventions
                assert reason is None, (b.name, m)
    for framework in ("torch", "tf", "jax"):
        backend = backends.get(framework)
        for info in TABLE:
            if info.skip_reason(framework) is not None:
                continue
            for case in info.cases:
                cell = Cell(info.name, case.desc, "normal", "float32", 50)
                assert any(backend.skip_by_default(m, cell) is None for m in backend.modes), (framework, cell)
    firsts = backends.first_case_per_convention()
    assert {("Adam", "default"), ("Adam", "torch"), ("Adam", "keras"), ("Adam", "optax")} == {
        f for f in firsts if f[0] == "Adam"
    }


def test_torch_compiled_runs_bfloat16_for_the_first_case_per_convention_and_float32_for_every_case():
    """torch@compiled (inductor, one compile per case and dtype) leaves the bfloat16 cells of a case
    after the first of its convention (Adam's amsgrad) to --full, with the reason; it runs that
    case's float32 cells and the first cases' bfloat16 cells by default, and torch's uncompiled
    modes run the bfloat16 cells of every case."""
    torch_backend = backends.get("torch")
    later = Cell("Adam", "amsgrad", "normal", "bfloat16", 50)
    reason = torch_backend.skip_by_default("compiled", later)
    assert reason is not None and "the bfloat16 cells of each optimizer's cases after the first" in reason
    for case, dtype in (("amsgrad", "float32"), ("default", "bfloat16"), ("keras", "bfloat16")):
        cell = Cell("Adam", case, "normal", dtype, 50)
        assert torch_backend.skip_by_default("compiled", cell) is None, cell
    for mode in ("eager", "loop", "flat"):
        assert torch_backend.skip_by_default(mode, later) is None, mode
    for b in backends.BACKENDS.values():  # the rule is torch@compiled's alone
        for m in b.modes:
            if f"{b.name}@{m}" != "torch@compiled":
                why = b.skip_by_default(m, later)
                assert why is None or "the bfloat16 cells of each" not in why, (b.name, m)


def test_an_optimizer_that_reduces_runs_every_stream_in_one_mode_per_framework():
    """A non-elementwise optimizer's cells are not stacked, so the modes listed below run only the
    normal and mixed-shape streams by default (torch@compiled, which compiles each parameter shape,
    the normal stream of each convention's first case); every other mode runs all of them."""
    short = {
        stream: Cell("Lamb", "default", stream, "float32", 50)
        for stream in ("normal", "tiny", "huge", "zeros", "sparse", "mixed_shapes", "nonfinite")
    }
    every_mode = [(b, m) for b in backends.BACKENDS.values() for m in b.modes]
    reduced = {
        "tf@eager",
        "tf@xla",
        "jax@eager",
        "jax@optax",
        "keras_jax@eager",
        "keras_jax@jit",
        "keras_torch@eager",
        "array_api_strict@eager",  # NumPy's kernels, each call checked in Python: numpy@eager runs them
    }
    for b, m in every_mode:
        runs = {name for name, c in short.items() if b.skip_by_default(m, c) is None}
        if f"{b.name}@{m}" == "torch@compile":  # compiled in tests/torch_adapter/test_compile.py
            assert runs == set(), runs
            assert "every stream" in b.skip_by_default(m, short["normal"])
        elif f"{b.name}@{m}" == "torch@compiled":  # compiled per shape: one stream per convention
            assert runs == {"normal"}, runs
            reason = b.skip_by_default(m, short["mixed_shapes"])
            assert "compiled per parameter shape" in reason
            other_case = Cell("Lamb", "weight_decay", "normal", "float32", 50)  # a later case
            assert b.skip_by_default(m, other_case) is not None
        elif f"{b.name}@{m}" in reduced:
            assert runs == set(backends.REDUCING_STREAMS), f"{b.name}@{m}"
            reason = b.skip_by_default(m, short["tiny"])
            assert reason.startswith("left to --full") and "not elementwise" in reason
        else:
            assert runs == set(short), f"{b.name}@{m}"
    # an elementwise optimizer's short cells run everywhere
    adam = Cell("Adam", "default", "tiny", "float32", 50)
    assert all(b.skip_by_default(m, adam) is None for b, m in every_mode)


def test_merge_joins_runs_and_a_later_run_replaces_a_row_but_never_with_a_skip(tmp_path):
    def report(name, *cells_):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"cells": [dict(zip(FIELDS, c, strict=True)) for c in cells_]}))
        return path

    FIELDS = ("backend", "mode", "optimizer", "case", "stream", "dtype", "steps", "verdict", "ulp")
    ref = ("numpy", "eager", "SGD", "default", "normal", "float32", 50, "reference", None)
    first = report(
        "first",
        ref,
        ("torch", "eager", "SGD", "default", "normal", "float32", 50, "FAIL", 3),
        ("jax", "jit", "SGD", "default", "normal", "float32", 50, "pass", 0),
    )
    second = report(
        "second",
        ref,
        ("torch", "eager", "SGD", "default", "normal", "float32", 50, "pass", 0),
        ("jax", "jit", "SGD", "default", "normal", "float32", 50, "skipped", None),
    )
    out = tmp_path / "merged"
    assert main(["--out", str(out), "merge", str(first), str(second)]) == 0
    assert json.loads((out / "conformance.json").read_text())["summary"] == {"reference": 1, "pass": 2}
    assert main(["--out", str(out), "merge", str(second), str(first)]) == 1  # the FAIL came last


@pytest.mark.parametrize(("bound", "verdict"), [(1e-3, "pass"), (1e-12, "FAIL")])
def test_a_relative_bound_admits_a_cell_beyond_its_ulp_tolerance_only_within_it(
    tmp_path, monkeypatch, bound, verdict
):
    import dataclasses

    from uniopt import registry

    row = dataclasses.replace(registry.get("SGD"), relative_tolerance={"nudged": (bound, "a stated reason")})
    monkeypatch.setitem(registry._BY_NAME, "SGD", row)
    selected = _full_precision_state(cells(["float32"], steps=5, optimizers=["SGD"], streams=["normal"]))
    traj = tmp_path / "trajectories"
    run_backend(backends.get("numpy"), selected, traj)
    run_backend(_one_ulp_late(2), selected, traj)
    nudged = [r for r in compare_dir(traj) if r.backend == "nudged"]
    assert nudged and all(r.ulp == 1 and r.tolerance == 0 and r.rel_tolerance == bound for r in nudged)
    assert all(0 < r.rel_diff < 1e-6 for r in nudged)  # one float32 ulp of a value of order 1
    assert {r.verdict for r in nudged} == {verdict}
    if verdict == "pass":
        assert all("within 0.001: a stated reason" in r.reason for r in nudged)


def test_a_spec_that_takes_matrices_only_runs_the_matrix_sets():
    from conformance.run import member_of
    from conformance.streams import MATRIX_SETS, PARAM_SETS

    for stream, own in (("normal", "standard"), ("mixed_shapes", "mixed")):
        for case, matrices in (("default", True), ("keras", False), ("exact", True)):
            if stream == "mixed_shapes" and case == "keras":
                continue  # convention cases run normal, huge, nonfinite and parity
            member = member_of(Cell("Muon", case, stream, "float32", 3))
            expected = PARAM_SETS[MATRIX_SETS[own] if matrices else own]
            assert [p.shape for p in member.params0] == list(expected)
            assert [g.shape for g in member.grads_at(1)] == list(expected)


def test_the_large_stream_runs_its_listed_cases_over_matrices_for_muon():
    """The large stream runs the cases of LARGE_CASES in float32, a framework convention's case
    included (Muon's torch case, whose products there pass uniopt.torch's bfloat16-kernel
    threshold), over the large matrices for a spec that takes matrices only."""
    from conformance.cells import LARGE_CASES, cells
    from conformance.run import member_of
    from conformance.streams import PARAM_SETS

    large = cells(["float32", "float64"], streams=["large"])
    assert sorted({(c.optimizer, c.case) for c in large}) == sorted(
        (name, case) for name, cases in LARGE_CASES.items() for case in cases
    )
    assert {c.dtype for c in large} == {"float32"}
    member = member_of(Cell("Muon", "torch", "large", "float32", 2))
    assert [p.shape for p in member.params0] == list(PARAM_SETS["matrices_large"])
    for a, b in PARAM_SETS["matrices_large"]:  # the Gram product X @ X.T of the wide orientation
        assert min(a, b) ** 2 * max(a, b) >= 128**3


def test_later_cases_leave_all_but_float32_to_torch_in_tf_function_and_jax_jit():
    """tf@function and jax@jit (every case of every optimizer) leave the float64, float16 and
    bfloat16 cells of each optimizer's cases after the first of each convention (Lamb's
    weight_decay, Adam's amsgrad) to --full, with the reason, and a non-elementwise optimizer's
    later cases' float32 cells on the streams other than normal and mixed_shapes; they keep the
    first cases' cells in every dtype and stream; torch's eager and loop modes run every cell they
    leave."""
    torch = backends.get("torch")
    for backend, mode in (("tf", "function"), ("jax", "jit")):
        b = backends.get(backend)
        left = [
            Cell(opt, case, "normal", dtype, 50)
            for opt, case in (("Lamb", "weight_decay"), ("Adam", "amsgrad"))
            for dtype in backends.NOT_FLOAT32
        ]
        left += [
            Cell("Lamb", "weight_decay", stream, "float32", 50)
            for stream in ("tiny", "huge", "zeros", "sparse")
        ]
        for cell in left:
            reason = b.skip_by_default(mode, cell)
            assert reason is not None and "float64, float16 and bfloat16 cells" in reason, (backend, cell)
            for torch_mode in ("eager", "loop"):
                assert torch.skip_by_default(torch_mode, cell) is None, (torch_mode, cell)
        kept = [
            Cell(opt, case, stream, "float32", 50)
            for opt, case in (("Lamb", "weight_decay"), ("Adam", "amsgrad"))
            for stream in ("normal", "mixed_shapes")
        ]
        kept += [
            Cell("Adam", "amsgrad", stream, "float32", 50) for stream in ("tiny", "huge", "zeros", "sparse")
        ]
        kept += [
            Cell(opt, case, stream, dtype, 50)
            for opt, case in (("Lamb", "keras"), ("Adam", "default"))
            for stream in ("normal", "huge")
            for dtype in ("float32", *backends.NOT_FLOAT32)
        ]
        for cell in kept:
            assert b.skip_by_default(mode, cell) is None, (backend, cell)


def test_the_keras_backends_run_uniopt_keras_on_every_case_and_keras_own_on_the_keras_convention():
    """keras_jax and keras_torch: uniopt.keras's modes run every case; their ``native`` mode
    (Keras's own optimizers) only the keras convention's; Keras on JAX runs without
    jax_enable_x64, so no float64 there (jax@eager and jax@jit run those cells)."""
    keras_case = Cell("Adam", "keras", "normal", "float32", 50)
    uniopt_case = Cell("Adam", "default", "normal", "float32", 50)
    wide = Cell("Adam", "default", "normal", "float64", 50)
    for name in ("keras_jax", "keras_torch"):
        b = backends.get(name)
        assert b.unsupported("native", keras_case) is None
        assert "whose convention is keras" in b.unsupported("native", uniopt_case)
        assert b.unsupported("native", Cell("Adam", "keras", "nonfinite", "float32", 50)) == NONFINITE_REASON
        for mode in b.modes:
            if mode != "native":
                assert b.unsupported(mode, uniopt_case) is None, (name, mode)
    assert "jax_enable_x64" in backends.get("keras_jax").unsupported("eager", wide)
    assert backends.get("keras_torch").unsupported("eager", wide) is None


def test_the_keras_backends_take_the_bounds_of_the_adapter_whose_kernels_they_run():
    """uniopt.keras runs the rule on uniopt.jax's namespaces on JAX and on uniopt.torch's on torch:
    keras_jax@eager and @jit take jax@eager's and jax@jit's bounds (XLA flushes Adagrad's subnormal
    parameters to zero), keras_torch@eager torch@loop's (Muon's products by torch's matmul); a
    backend without such a declaration takes none of another's."""
    from uniopt.registry import get

    adagrad = get("Adagrad")
    for mode in ("eager", "jit"):
        same = backends.bounds_of("keras_jax", mode)
        assert same == ("jax", mode)
        want = adagrad.tolerance("jax", mode, "weight_decay", "zeros")
        assert want > 0 and adagrad.tolerance("keras_jax", mode, "weight_decay", "zeros", same) == want
    assert backends.bounds_of("keras_torch", "eager") == ("torch", "loop")
    muon = get("Muon")
    same = backends.bounds_of("keras_torch", "eager")
    backend_products = muon.tolerance("torch", "loop")
    assert muon.tolerance("keras_torch", "eager", "default", "normal", same) == backend_products > 0
    assert muon.tolerance("keras_torch", "eager", "exact", "normal", same) == 0
    assert backends.bounds_of("keras_jax", "native") is None and backends.bounds_of("tf", "eager") is None
    assert backends.bounds_of("no_such_backend", "eager") is None


def test_a_keras_backend_sets_keras_backend_before_keras_is_imported_and_refuses_another(monkeypatch):
    """Keras reads KERAS_BACKEND once, at its first import: a Keras row sets it where Keras is not
    imported yet, runs where Keras already runs on its backend, and otherwise says why it cannot
    run in this process (the availability check, before any job's work); keras_jax also refuses a
    process where jax_enable_x64 is on (Keras runs on jax's defaults)."""
    import os
    import sys
    import types

    from conformance.native import keras_on

    monkeypatch.delitem(sys.modules, "keras", raising=False)
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    assert keras_on("torch")() is None
    assert os.environ["KERAS_BACKEND"] == "torch"
    fake = types.SimpleNamespace(backend=types.SimpleNamespace(backend=lambda: "tensorflow"))
    monkeypatch.setitem(sys.modules, "keras", fake)
    assert keras_on("tensorflow")() is None
    why = keras_on("jax")()
    assert why is not None and "Keras runs on tensorflow in this process" in why
    assert backends.get("keras_torch").unavailable() == keras_on("torch")()
    assert backends.get("keras").unavailable() is None  # Keras's own on TensorFlow: this Keras's backend
    x64 = types.SimpleNamespace(config=types.SimpleNamespace(jax_enable_x64=True))
    monkeypatch.setitem(sys.modules, "jax", x64)
    assert "jax_enable_x64 is on" in backends.get("keras_jax").unavailable()
