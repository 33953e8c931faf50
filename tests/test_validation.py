"""Bad hyperparameters: a ValueError naming the parameter, the value and the range, before any state."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import uniopt
from uniopt.registry import TABLE

ERROR_CASES = [
    pytest.param(info, err, id=f"{info.name}-{'-'.join(map(str, err.kwargs))}-{i}")
    for info in TABLE
    for i, err in enumerate(info.error_cases)
]


@pytest.mark.parametrize(("info", "err"), ERROR_CASES)
def test_error_inputs_raise_with_the_table_message(info, err):
    with pytest.raises(ValueError, match=err.match):
        info.spec(**dict(err.kwargs))


@pytest.mark.parametrize("info", TABLE, ids=lambda i: i.name)
def test_message_names_the_parameter_value_and_range(info):
    with pytest.raises(ValueError) as excinfo:
        info.spec(lr=-0.5)
    message = str(excinfo.value)
    assert message.startswith(f"{info.name}: lr=-0.5 ")
    assert "expected 0 <= lr" in message


@pytest.mark.parametrize("info", TABLE, ids=lambda i: i.name)
def test_replace_validates_too(info):
    spec = info.make()
    with pytest.raises(ValueError, match=rf"{info.name}: lr=-1"):
        spec.replace(lr=-1.0)
    assert spec.lr == info.spec().lr  # the original is untouched (frozen)


@pytest.mark.parametrize("info", TABLE, ids=lambda i: i.name)
def test_records_are_frozen(info):
    spec = info.make()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.lr = 1.0  # type: ignore[misc]


bad_reals = st.one_of(
    st.floats(max_value=-1e-300, allow_nan=False, allow_infinity=False),  # negative
    st.sampled_from([math.nan, math.inf, -math.inf]),
)


@given(lr=bad_reals, name=st.sampled_from([info.name for info in TABLE]))
def test_any_negative_or_non_finite_lr_is_refused(lr, name):
    with pytest.raises(ValueError, match=rf"^{name}: lr="):
        getattr(uniopt, name)(lr=lr)


@given(
    beta=st.one_of(st.floats(min_value=1.0), st.floats(max_value=-1e-300)),
    which=st.integers(0, 1),
    name=st.sampled_from(["Adam", "AdamW", "RAdam"]),
)
def test_betas_outside_unit_interval_are_refused(beta, which, name):
    betas = [0.9, 0.999]
    betas[which] = beta
    with pytest.raises(ValueError, match=rf"^{name}: betas\[{which}\]="):
        getattr(uniopt, name)(betas=tuple(betas))


@given(beta1=st.floats(0.0, 1.0, exclude_max=True), beta2=st.floats(0.0, 1.0, exclude_max=True))
def test_betas_inside_unit_interval_are_accepted(beta1, beta2):
    assert uniopt.RAdam(betas=(beta1, beta2)).betas == (beta1, beta2)


@given(
    eps=st.floats(max_value=0.0, allow_nan=False),
    name=st.sampled_from(["Adagrad", "RMSprop", "Adam", "AdamW", "RAdam"]),
)
def test_non_positive_eps_is_refused(eps, name):
    with pytest.raises(ValueError, match=rf"^{name}: eps="):
        getattr(uniopt, name)(eps=eps)


def test_betas_given_as_list_are_stored_as_tuple():
    assert uniopt.Adam(betas=[0.8, 0.9]).betas == (0.8, 0.9)


def test_update_refuses_mismatched_inputs_before_touching_state():
    opt = uniopt.Adam()
    params = [np.ones(3, np.float32)]
    state = opt.init(params)
    with pytest.raises(ValueError, match=re.escape("grads[0] has shape (2,) but params[0] has shape (3,)")):
        opt.update([np.ones(2, np.float32)], state, params)
    with pytest.raises(ValueError, match="got 1 params, 2 grads"):
        opt.update([np.ones(3, np.float32)] * 2, state, params)
    assert state.step == 0
    np.testing.assert_array_equal(state.slots[0]["exp_avg"], np.zeros(3, np.float32))


def test_a_bad_lr_override_is_refused_before_the_step():
    opt = uniopt.SGD()
    params = [np.ones(2)]
    state = opt.init(params)
    with pytest.raises(ValueError, match=r"SGD: lr=-0\.1 is out of range; expected 0 <= lr"):
        opt.update([np.ones(2)], state, params, lr=-0.1)
    with pytest.raises(ValueError, match=r"SGD: lr=nan is not finite"):
        opt.update([np.ones(2)], state, params, lr=float("nan"))
