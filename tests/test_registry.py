"""The table itself: every optimizer is listed once, and every hyperparameter is exercised."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

import uniopt
from uniopt.registry import TABLE, get

SPEC_CLASSES = [
    obj
    for obj in vars(uniopt).values()
    if inspect.isclass(obj) and issubclass(obj, uniopt.Spec) and obj is not uniopt.Spec
]


def test_every_public_spec_has_exactly_one_row():
    assert sorted(info.name for info in TABLE) == sorted(cls.name for cls in SPEC_CLASSES)
    assert len({info.name for info in TABLE}) == len(TABLE)


@pytest.mark.parametrize("info", TABLE, ids=lambda i: i.name)
def test_every_hyperparameter_is_varied_by_some_case(info):
    defaults = info.spec()
    varied = {
        name for case in info.cases for name, value in case.kwargs.items() if value != getattr(defaults, name)
    }
    fields = {f.name for f in dataclasses.fields(info.spec)}
    missing = fields - varied
    assert not missing, f"{info.name}: no case varies {sorted(missing)}"


@pytest.mark.parametrize("info", TABLE, ids=lambda i: i.name)
def test_every_case_constructs_and_is_named_uniquely(info):
    assert len({c.desc for c in info.cases}) == len(info.cases)
    for case in info.cases:
        assert isinstance(info.make(case), info.spec)


@pytest.mark.parametrize("info", TABLE, ids=lambda i: i.name)
def test_every_row_has_error_inputs_and_a_reference(info):
    assert len(info.error_cases) >= 4
    assert info.spec.reference


def test_tolerance_defaults_to_bitwise_and_lookup_errors_are_clear():
    assert all(info.tolerance("array_api_strict") == 0 for info in TABLE)
    assert get("RAdam").spec is uniopt.RAdam
    with pytest.raises(KeyError, match="unknown optimizer 'Nope'; known: SGD"):
        get("Nope")


def test_cell_specific_tolerances_win_over_backend_wide_ones():
    from uniopt.registry import OptimizerInfo

    info = OptimizerInfo(
        uniopt.SGD,
        cases=(),
        error_cases=(),
        ulp_tolerance={"x:jit:plain/huge": 9, "x:plain/zeros": 5, "x:jit": 2, "x": 1},
    )
    assert info.tolerance("x", "jit", "plain", "huge") == 9
    assert info.tolerance("x", "eager", "plain", "zeros") == 5
    assert info.tolerance("x", "jit", "plain", "normal") == 2
    assert info.tolerance("x", "eager", "plain", "normal") == 1
    assert info.tolerance("y", "eager", "plain", "huge") == 0


def test_a_case_wide_tolerance_or_skip_covers_every_stream_of_that_case():
    from uniopt.registry import OptimizerInfo

    info = OptimizerInfo(
        get("SGD").spec,
        cases=(),
        error_cases=(),
        ulp_tolerance={"x:plain/huge": 9, "x:jit:plain/*": 3, "x:plain/*": 0, "x": 7},
        skips={"x:odd/*": "odd", "x:jit:even/*": "even"},
    )
    assert info.tolerance("x", "jit", "plain", "huge") == 9  # a stream's own key first
    assert info.tolerance("x", "jit", "plain", "zeros") == 3
    assert info.tolerance("x", "eager", "plain", "zeros") == 0  # 0: bitwise, over the backend's 7
    assert info.tolerance("x", "eager", "other", "zeros") == 7
    assert info.skip_reason("x", "eager", "odd") == "odd" and info.skip_reason("x", "jit", "even") == "even"
    assert info.skip_reason("x", "eager", "even") is None and info.skip_reason("x") is None


def test_a_backend_running_another_ones_kernels_takes_its_bounds_after_its_own():
    """``same_as`` (a mode that runs another backend's kernels: uniopt.keras on JAX runs uniopt.jax's
    namespaces): the backend's own keys first, then those of ``same_as``'s backend and mode, most
    specific first; without ``same_as`` the other backend's bounds do not apply."""
    from uniopt.registry import OptimizerInfo

    info = OptimizerInfo(
        uniopt.SGD,
        cases=(),
        error_cases=(),
        ulp_tolerance={"x:jit": 4, "x:plain/zeros": 6, "k:plain/huge": 2},
        relative_tolerance={"x:plain/*": (1e-6, "why")},
    )
    same = ("x", "jit")
    assert info.tolerance("k", "jit", "plain", "huge", same) == 2  # its own key wins
    assert info.tolerance("k", "jit", "plain", "zeros", same) == 6  # x's cell key, before x:jit
    assert info.tolerance("k", "jit", "plain", "normal", same) == 4
    assert info.tolerance("k", "eager", "plain", "normal", ("x", "eager")) == 0
    assert info.tolerance("k", "jit", "plain", "normal") == 0
    assert info.relative_bound("k", "jit", "plain", "normal", same) == (1e-6, "why")
    assert info.relative_bound("k", "jit", "plain", "normal") is None
