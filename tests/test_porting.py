"""The framework-neutral state record: files, validation, and resuming the core bit for bit."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest
from porting_cases import PARAMS, assert_bitwise, assert_state_bitwise, reference, stream

import uniopt
from uniopt.porting import check_compatible, export_state, import_state


@pytest.mark.parametrize(("spec", "split", "dtype"), PARAMS)
def test_checkpoint_file_resumes_the_core_bitwise(tmp_path, spec, split, dtype):
    params0, grads = stream(dtype, spec=spec)
    expected_params, expected_state = reference(spec, params0, grads)
    params, state = reference(spec, params0, grads[:split])
    uniopt.save_state(tmp_path / "state.npz", export_state(spec, state, params))
    loaded = uniopt.load_state(tmp_path / "state.npz")
    resumed_spec = loaded.to_spec()
    assert resumed_spec == spec
    state = import_state(loaded, resumed_spec, params)
    for g in grads[split:]:
        params, state = resumed_spec.update(g, state, params)
    assert_bitwise(params, expected_params, "params")
    assert_state_bitwise(state.slots, expected_state, len(grads), state.step)


def test_the_file_keeps_every_field_and_bit(tmp_path):
    spec = uniopt.Adam(lr=0.003, betas=(0.8, 0.95), amsgrad=True)
    params, grads = stream("float32", steps=2)
    params, state = reference(spec, params, grads)
    record = export_state(spec, state, params)
    uniopt.save_state(tmp_path / "s.npz", record)
    loaded = uniopt.load_state(tmp_path / "s.npz")
    assert (loaded.optimizer, loaded.step, loaded.convention) == ("Adam", 2, "uniopt")
    assert loaded.hyperparameters == {**spec.hyperparameters, "betas": [0.8, 0.95]}
    assert loaded.shapes == tuple(p.shape for p in params) and loaded.dtypes == ("float32",) * 3
    for mine, ref in zip(loaded.slots, record.slots, strict=True):
        assert_bitwise(list(mine.values()), list(ref.values()), "slots")


def test_bfloat16_and_mixed_dtypes_round_trip(tmp_path):
    bf16 = np.dtype(ml_dtypes.bfloat16)
    slots = ({"exp_avg": np.array([1.5, -2.0], bf16)}, {"exp_avg": np.array(3.0, np.float64)})
    record = uniopt.PortableState("X", {"lr": 0.1}, 1, slots, ((2,), ()), ("bfloat16", "float64"))
    uniopt.save_state(tmp_path / "s.npz", record)
    loaded = uniopt.load_state(tmp_path / "s.npz")
    assert loaded.slots[0]["exp_avg"].dtype == bf16 and loaded.dtypes == ("bfloat16", "float64")
    assert_bitwise([loaded.slots[0]["exp_avg"]], [slots[0]["exp_avg"]], "bf16")


def test_a_stateless_optimizer_keeps_shapes_and_dtypes(tmp_path):
    spec = uniopt.SGD(lr=0.1)
    params, grads = stream("float64", steps=3)
    params, state = reference(spec, params, grads)
    uniopt.save_state(tmp_path / "s.npz", export_state(spec, state, params))
    loaded = uniopt.load_state(tmp_path / "s.npz")
    assert loaded.slot_names == () and loaded.step == 3
    assert loaded.shapes == ((3, 4), (5,), ()) and loaded.dtypes == ("float64",) * 3


# -- mismatches: a clear error, nothing changed --------------------------------------------------


def _record(spec=None, dtype="float32"):
    spec = spec or uniopt.RAdam(lr=0.01)
    params, grads = stream(dtype, steps=2)
    params, state = reference(spec, params, grads)
    return spec, params, export_state(spec, state, params)


@pytest.mark.parametrize(
    ("target", "params_of", "match"),
    [
        (uniopt.Adam(lr=0.01), None, "the state is from RAdam, the optimizer is Adam"),
        (None, lambda ps: ps[:2], "the state holds 3 parameters, the optimizer has 2"),
        (None, lambda ps: [ps[0], np.zeros(4, ps[1].dtype), ps[2]], r"parameter 1 has shape \(4,\)"),
        (None, lambda ps: [ps[0], ps[1].astype(np.float64), ps[2]], "parameter 1 has dtype float64"),
        (uniopt.RAdam(lr=0.02), None, "hyperparameter lr is 0.02 in the optimizer and 0.01 in the state"),
    ],
)
def test_mismatch_names_the_first_difference(target, params_of, match):
    spec, params, record = _record()
    with pytest.raises(ValueError, match=match):
        import_state(record, target or spec, params_of(params) if params_of else params)


def test_slot_mismatch_and_kept_hyperparameters():
    _, params, record = _record(uniopt.Adam(lr=0.01))
    with pytest.raises(
        ValueError, match=r"slots \['exp_avg', 'exp_avg_sq'\], Adam .* needs .*'max_exp_avg_sq'"
    ):
        import_state(record, uniopt.Adam(lr=0.01, amsgrad=True), params)
    state = import_state(record, uniopt.Adam(lr=0.5), params, hyperparameters=False)
    assert state.step == 2


def test_import_copies_the_arrays():
    spec, params, record = _record()
    state = import_state(record, spec, params)
    state.slots[0]["exp_avg"][...] = 7
    assert not np.any(record.slots[0]["exp_avg"] == 7)


def test_check_compatible_without_dtypes_checks_shapes_only():
    spec, params, record = _record()
    check_compatible(record, spec, [p.shape for p in params])
    with pytest.raises(ValueError, match=r"parameter 2 has shape \(1,\), the state holds shape \(\)"):
        check_compatible(record, spec, [params[0].shape, params[1].shape, (1,)])


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"step": -1}, "step must be an integer >= 0"),
        ({"convention": "mxnet"}, "convention 'mxnet' is not one of"),
        ({"dtypes": ("float32", "int32", "float32")}, "parameter 1: dtype 'int32'"),
        (
            {"shapes": ((3, 4), (6,), ())},
            r"parameter 1 slot 'exp_avg' is float32\[5\], the parameter is float32\[6\]",
        ),
        ({"hyperparameters": {"lr": float("nan")}}, "lr=nan is not finite"),
    ],
)
def test_the_record_validates_itself(changes, match):
    _, _, record = _record()
    with pytest.raises(ValueError, match=match):
        record.replace(**changes)


def test_to_spec_refuses_unknown_optimizers_and_fields():
    _, _, record = _record()
    with pytest.raises(ValueError, match="unknown optimizer 'Shampoo'"):
        record.replace(optimizer="Shampoo").to_spec()
    with pytest.raises(ValueError, match=r"hyperparameters \['foreach'\] are not fields of uniopt.RAdam"):
        record.replace(hyperparameters={**record.hyperparameters, "foreach": False}).to_spec()
    with pytest.raises(ValueError, match="betas"):  # the spec's own validation
        record.replace(hyperparameters={**record.hyperparameters, "betas": [0.9, 1.0]}).to_spec()


# -- files that are not (good) state files -------------------------------------------------------


def _rewrite(path, out, edit):
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    edit(arrays)
    np.savez(out, **arrays)


def _edit_meta(key, value):
    def edit(arrays):
        meta = json.loads(arrays["__uniopt_state__"].tobytes())
        meta[key] = value
        arrays["__uniopt_state__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)

    return edit


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda a: a.pop("slots/1/exp_avg"), r"arrays \['slots/1/exp_avg'\] are missing"),
        (lambda a: a.update(extra=np.zeros(1)), r"arrays \['extra'\] are unexpected"),
        (lambda a: a.update({"slots/0/exp_avg": np.zeros((3, 4), np.uint64)}), "slot 'exp_avg' is uint64"),
        (lambda a: a.update({"slots/2/exp_avg_sq": np.zeros(2, np.uint32)}), r"uint32\[2\]"),
        (lambda a: a.pop("__uniopt_state__"), "not a uniopt state file"),
        (_edit_meta("format", 99), "format 99, expected 1"),
        (_edit_meta("dtypes", ["float32", "float32"]), "equal length"),
        (_edit_meta("step", -3), "step must be an integer >= 0"),
    ],
)
def test_load_rejects_bad_files(tmp_path, edit, match):
    _, _, record = _record()
    uniopt.save_state(tmp_path / "good.npz", record)
    _rewrite(tmp_path / "good.npz", tmp_path / "bad.npz", edit)
    with pytest.raises(ValueError, match=match):
        uniopt.load_state(tmp_path / "bad.npz")


def test_load_never_unpickles(tmp_path):
    np.savez(tmp_path / "p.npz", __uniopt_state__=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        uniopt.load_state(tmp_path / "p.npz")
