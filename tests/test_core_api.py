"""The core's public API: init/update over a namespace, state shape, and framework independence."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import numpy as np
import pytest
from namespaces import to_namespace, to_numpy

import uniopt
from uniopt.radam import rho
from uniopt.registry import TABLE


@pytest.mark.parametrize("info", TABLE, ids=lambda i: i.name)
def test_init_creates_the_declared_slots_in_param_dtype(info, xp_name):
    for case in info.cases:
        spec = info.make(case)
        params = [
            to_namespace(xp_name, np.ones((2, 3), np.float32)),
            to_namespace(xp_name, np.zeros((), np.float64)),
        ]
        refused = [p for p in params if spec.param_refusal(tuple(p.shape)) is not None]
        for p in refused:  # Muon's torch and uniopt conventions: 2-D parameters only
            with pytest.raises(ValueError, match=re.escape(spec.param_refusal(tuple(p.shape)))):
                spec.init([p])
        params = [p for p in params if spec.param_refusal(tuple(p.shape)) is None]
        state = spec.init(params)
        assert state.step == 0
        for p, slots in zip(params, state.slots, strict=True):
            assert tuple(slots) == spec.slot_names()
            for name, value in slots.items():
                # the parameter's shape, except where the spec keeps smaller statistics (Adafactor)
                assert value.dtype == p.dtype and tuple(value.shape) == spec.slot_shape(name, tuple(p.shape))


def test_the_core_imports_no_framework():
    code = (
        "import sys, uniopt, uniopt.registry; "
        "print(sorted(m for m in ('torch','tensorflow','jax','keras') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_lr_override_equals_a_spec_with_that_lr():
    params = [np.linspace(-1, 1, 5)]
    grads = [np.linspace(2, -3, 5)]
    base = uniopt.RAdam(lr=0.1)
    state = base.init(params)
    for _ in range(7):
        a, state_a = base.update(grads, state, params, lr=0.02)
        b, _ = uniopt.RAdam(lr=0.02).update(grads, state, params)
        np.testing.assert_array_equal(a[0], b[0])
        params, state = a, state_a


def test_radam_rectification_schedule_for_beta2_0999():
    spec = uniopt.RAdam()
    assert [spec.step_scalars(t).rectified for t in range(1, 8)] == [False] * 5 + [True] * 2
    assert round(rho(0.999, 5)[1], 3) == 4.996 and round(rho(0.999, 6)[1], 3) == 5.994


def test_empty_parameter_list_is_a_no_op():
    params, state = uniopt.Adam().update([], uniopt.Adam().init([]), [])
    assert params == [] and state.step == 1


def test_readme_quick_start_runs_on_array_api_strict():
    import array_api_strict as xp

    opt = uniopt.RAdam(lr=1e-3)
    params = [xp.ones((3,), dtype=xp.float32)]
    state = opt.init(params)
    params, state = opt.update([xp.full((3,), 0.5, dtype=xp.float32)], state, params)
    # first step is unrectified: p - lr * m_hat = 1 - 1e-3 * 0.5, rounded to float32
    assert np.all(to_numpy(params[0]) == np.float32(1.0) - np.float32(1e-3) * np.float32(0.5))


def test_nonzero_names_the_numeric_hyperparameters_that_are_not_zero():
    """The branches the rules take on a value (``weight_decay != 0``, SGD's ``momentum != 0``),
    recorded when the spec is made: after the keras convention's float32 rounding (a decay below
    float32's smallest subnormal is zero there), never for a bool switch or an unknown name, and
    afresh for a spec made by :meth:`uniopt.Spec.replace`."""
    sgd = uniopt.SGD(lr=0.1, momentum=0.9, weight_decay=0.0, nesterov=True)
    assert sgd.nonzero("lr") and sgd.nonzero("momentum")
    assert not sgd.nonzero("weight_decay")
    assert not sgd.nonzero("nesterov") and not sgd.nonzero("maximize") and not sgd.nonzero("no_such_field")
    assert sgd.replace(weight_decay=1e-4).nonzero("weight_decay")
    assert not sgd.replace(momentum=0.0, nesterov=False).nonzero("momentum")
    assert uniopt.AdamW(weight_decay=1e-50).nonzero("weight_decay")
    assert not uniopt.AdamW(weight_decay=1e-50, convention="keras").nonzero("weight_decay")
    assert uniopt.Muon(adam_weight_decay=0.1).nonzero("adam_weight_decay")


def test_a_spec_pickled_without_the_nonzero_record_makes_it_on_first_use():
    """A spec pickled before :meth:`uniopt.Spec.nonzero` existed holds only its fields, and so does
    the pickle of a subclass declared with ``slots=True`` (dataclasses restore its fields only):
    the record is made on first use, and the spec steps as the original does."""
    import copy
    import pickle

    import array_api_compat.numpy as npx

    spec = uniopt.AdamW(weight_decay=0.05, convention="torch")
    old = pickle.loads(pickle.dumps(spec))
    del old.__dict__["_nonzero"]  # as a spec pickled before the record existed loads
    for other in (pickle.loads(pickle.dumps(spec)), copy.deepcopy(spec), old):
        assert other == spec and other.nonzero("weight_decay") and other.nonzero("lr")
        assert not other.nonzero("amsgrad")

    made = _Slotted(lr=0.1, momentum=0.9, weight_decay=0.01)
    for other in (made, pickle.loads(pickle.dumps(made)), copy.deepcopy(made)):
        params = [np.ones(3, np.float32)]
        state = other.init(params, npx)
        out, _ = other.update([np.full(3, 0.5, np.float32)], state, params, npx)
        expected = np.float32(1) - np.float32(0.1) * (np.float32(0.5) + np.float32(0.01) * np.float32(1))
        assert out[0].tobytes() == np.full(3, expected, np.float32).tobytes()


@dataclasses.dataclass(frozen=True, slots=True)
class _Slotted(uniopt.SGD):
    """A user's SGD with a field of its own, declared with ``slots=True`` (module level: pickled)."""

    note: str = "a field of the user's"
