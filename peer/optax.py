"""optax's own tests, from the installed wheel, run against ``uniopt.jax`` (``convention="optax"``).

``pytest_configure`` replaces each optax alias that uniopt.jax has a factory of (:data:`SUBSTITUTED`,
from the table) and ``amsgrad`` (``uniopt.jax.adam(amsgrad=True)``) by uniopt.jax's factories whose
``convention`` defaults to ``"optax"``, in every namespace the tests read them from (``optax``,
``optax._src.alias``), before the test modules are imported (``float64_test`` binds the aliases at
import). The test bodies are unchanged. Deselected: the tests of optax optimizers uniopt does not
implement (absl's parameterized cases are identified by their ``opt_name``; other tests by whether
their source calls a substituted alias).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import re
import unittest
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optax
import pytest

import peer
import uniopt.jax as ujax

_SRC = Path(optax.__file__).parent / "_src"

SUITES: list[str] = [
    str(_SRC / "alias_test.py"),
    str(_SRC / "float64_test.py"),
    str(_SRC / "combine_test.py"),
    str(_SRC / "transform_test.py"),
    str(_SRC / "sharding_test.py"),
    str(Path(optax.__file__).parent / "contrib" / "_schedule_free_test.py"),
    str(Path(optax.__file__).parent / "contrib" / "_muon_test.py"),
]

CONTRIB: dict[str, str] = {
    "schedule_free_adamw": "optax.contrib._schedule_free",
    **{
        alias: inspect.getmodule(ujax.optax_function(alias)).__name__
        for alias, names in ujax.OPTAX.items()
        if names.native and names.module != "optax"
    },
}
"""uniopt.jax factories of optax.contrib optimizers -> the contrib module the tests read them from
(``_schedule_free_test`` calls ``_schedule_free.schedule_free_adamw``, ``_muon_test``
``_muon.muon``): ``schedule_free_adamw``, and each factory of the table whose optax function lives
outside ``optax`` itself (:attr:`uniopt.registry.OptaxNames.module`), in its defining module."""

SUBSTITUTED: tuple[str, ...] = (
    *(a for a, names in ujax.OPTAX.items() if names.native and a not in CONTRIB),
    *CONTRIB,
    "amsgrad",
)
"""optax aliases replaced by uniopt.jax factories: every factory of the table that optax has (``sgd``,
``adagrad``, ``rmsprop``, ``adam``, ``adamw``, ``radam``, ``adamax``, ``nadam``, ``nadamw``,
``adadelta``, ``lion``, ``lamb``, ``adafactor``), the optax.contrib ones of :data:`CONTRIB`
(``schedule_free_adamw``, ``muon``), and ``amsgrad`` (uniopt's Adam with ``amsgrad=True``)."""

_CALLED_AS = ("alias", "optax", "contrib", *sorted({m.rsplit(".", 1)[-1] for m in CONTRIB.values()}))
"""The names a test calls a substituted alias through (``optax.adam(``, ``_muon.muon(``)."""

DESELECT_REASON = "tests an optax optimizer uniopt does not implement (or no optimizer)"

# -- expected failures: short category reasons, each defined once ------------------------------
STATE_DTYPE = (
    "optimizer state in a dtype uniopt does not offer beside the parameters' (a moment wider than "
    "its parameter, complex beside real, real beside complex): refused with a ValueError at init; "
    "uniopt stores mu_dtype/accumulator_dtype bfloat16 or float16 beside float32 or float64 "
    "parameters, float32 beside float64"
)
STATE_NAMES = "state layout: uniopt's slots are named by the spec (exp_avg), not optax's (mu, trace)"
INTEGER_PARAMS = "integer parameters: uniopt's optimizers take floating or complex leaves only"
COMPLEX_NADAM = "complex parameters: uniopt's NAdam refuses them (optax's nadam runs adam's complex moments)"
COMPLEX_ADAFACTOR = (
    "complex parameters: uniopt's Adafactor refuses them (as torch.optim.Adafactor; its factored "
    "moments have no complex form), optax's adafactor takes |g|^2 of complex gradients"
)
MUON_PRECONDITIONING = (
    "preconditioning other than 'frobenius' (optax's AOL and Schatten-4 first steps, and the 'dion' "
    "per-step coefficients): uniopt's Muon normalises by the Frobenius norm and uses one (a, b, c) at "
    "every step, in every convention, and refuses the others with a ValueError"
)
MUON_DIM_NUMS = (
    "muon_weight_dimension_numbers: uniopt's Muon orthogonalises 2-D parameters as they are and steps "
    "the others with Adam; it reshapes no tensor and takes no per-parameter choice (refused with a "
    "ValueError)"
)
COMPLEX_MUON = (
    "complex parameters: uniopt's Muon refuses them at init (as torch.optim.Muon; its Newton-Schulz "
    "iteration is real), optax's runs a complex one (X X^H)"
)
ADAPTIVE_MUON = (
    "adaptive=True (optax's dual-norm scaling of the orthogonalised update, arXiv 2409.20325): not "
    "part of uniopt's Muon, refused with a ValueError (the case's parameters are complex too)"
)
COMPLEX_LAMB = (
    "complex parameters: uniopt's Lamb refuses them under convention='optax' (optax's lamb runs "
    "adam's complex moments and a complex norm; uniopt's own convention takes (re, im) pairs)"
)

_STATE_DTYPES_TAKEN = {("float32", "bfloat16")}
"""(parameter dtype, state dtype) pairs of alias_test's ``test_explicit_dtype`` that uniopt.jax takes
(a moment stored narrower than its parameter; :meth:`uniopt.Spec.slot_dtype_refusal`): those cases
fail on the state's layout only (:data:`STATE_NAMES`)."""

# alias_test's parameterized cases, by their parameters (absl names them by index only):
# (test name, predicate on the case's parameters) -> reason
_RULES: list[tuple[str, Callable[[dict[str, str]], bool], str]] = [
    (
        "test_explicit_dtype",
        lambda p: (
            p["state_dtype"] not in ("None", p["params_dtype"].replace("None", "float32"))
            and (p["params_dtype"].replace("None", "float32"), p["state_dtype"]) not in _STATE_DTYPES_TAKEN
        ),
        STATE_DTYPE,
    ),
    ("test_explicit_dtype", lambda p: True, STATE_NAMES),
    *(
        (test, lambda p: p["opt_name"] in ("nadam", "nadamw") and "complex" in p["dtype"], COMPLEX_NADAM)
        for test in ("test_optimization", "test_state_shape_dtype_shard_stability")
    ),
    *(
        (test, lambda p: p["opt_name"] == "lamb" and "complex" in p["dtype"], COMPLEX_LAMB)
        for test in ("test_optimization", "test_state_shape_dtype_shard_stability")
    ),
    *(
        (test, lambda p: p["opt_name"] == "adafactor" and "complex" in p["dtype"], COMPLEX_ADAFACTOR)
        for test in ("test_optimization", "test_state_shape_dtype_shard_stability")
    ),
    # contrib/_muon_test.py
    ("test_complex_mixed_target", lambda p: p["adaptive"] == "True", ADAPTIVE_MUON),
    ("test_complex_mixed_target", lambda p: True, COMPLEX_MUON),
]

_MUON_EXPECTED: dict[str, str] = {
    "MuonTest::test_aol_numerical_difference": MUON_PRECONDITIONING,
    "MuonTest::test_callable_weight_dim_nums_*": MUON_DIM_NUMS,
    "MuonTest::test_muon_orthogonalization_modes_aol_*": MUON_PRECONDITIONING,
    "MuonTest::test_orthogonality_aol": MUON_PRECONDITIONING,
    "MuonTest::test_orthogonality_schatten": MUON_PRECONDITIONING,
    # the first check of each: optax's preconditioning (aol, schatten), else the dimension numbers
    **{
        f"MuonTest::{test}_{preconditioning}": MUON_DIM_NUMS
        if preconditioning == "frobenius"
        else MUON_PRECONDITIONING
        for test in (
            "test_reshape_update_for_square_parameter_matches_muon_without_dim_nums",
            "test_reshape_and_update_single_param",
            "test_dim_nums_combinations",
        )
        for preconditioning in ("frobenius", "aol", "schatten")
    },
}
"""contrib/_muon_test.py's expected failures by name (absl's named parameters)."""

_PARAM = re.compile(r"(\w+)=(?:'([^']*)'|<class '([^']*)'>|(\w+))")


def _parameters(function: Any) -> dict[str, str] | None:
    """An absl parameterized case's parameters (as text), or ``None`` for a plain test."""
    text = getattr(function, "__x_params_repr__", None)
    if text is None:
        return None
    return {m[1]: m[2] or m[3] or m[4] for m in _PARAM.finditer(text)}


def _alias_cases() -> dict[str, dict[str, str]]:
    """alias_test's (and contrib/_muon_test's) generated methods -> their parameters."""
    import optax._src.alias_test as alias_test
    import optax.contrib._muon_test as muon_test

    cases = {}
    for cls in (alias_test.AliasTest, muon_test.MuonTest):
        for name, function in vars(cls).items():
            params = _parameters(function)
            if name.startswith("test") and params is not None:
                cases[f"{cls.__name__}::{name}"] = params
    return cases


def _expected() -> dict[str, str]:
    table = {
        # update(params, state) with int "parameters" {'a': 1, 'b': 2}
        "ExtraArgsTest::test_extra_args": INTEGER_PARAMS,
        **_MUON_EXPECTED,
    }
    for test_id, params in _alias_cases().items():
        base = test_id.split("::")[1].rstrip("0123456789")
        for test, applies, reason in _RULES:
            if base == test and applies(params):
                table[test_id] = reason
                break
    return table


def _substitute(factory: Callable[..., Any], **fixed: Any) -> Callable[..., Any]:
    """``factory`` with ``convention`` defaulting to ``"optax"`` (and ``fixed`` arguments bound)."""
    signature = inspect.signature(factory)
    parameters = [
        p.replace(default="optax") if p.name == "convention" else p
        for p in signature.parameters.values()
        if p.name not in fixed
    ]
    new_signature = signature.replace(parameters=parameters)

    @functools.wraps(factory)
    def substitute(*args: Any, **kwargs: Any) -> Any:
        bound = new_signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return factory(*bound.args, **bound.kwargs, **fixed)

    substitute.__signature__ = new_signature  # type: ignore[attr-defined]
    return substitute


SUBSTITUTES: dict[str, Callable[..., Any]] = {}


def pytest_configure(config: Any) -> None:
    import importlib

    import optax._src.alias as alias
    import optax.contrib

    SUBSTITUTES.update(
        {name: _substitute(ujax.FACTORIES[name]) for name in SUBSTITUTED if name in ujax.FACTORIES}
    )
    SUBSTITUTES["amsgrad"] = _substitute(ujax.adam, amsgrad=True)
    for name, substitute in SUBSTITUTES.items():
        if name in CONTRIB:
            setattr(optax.contrib, name, substitute)
            setattr(importlib.import_module(CONTRIB[name]), name, substitute)
        else:
            setattr(optax, name, substitute)
            setattr(alias, name, substitute)


EXPECTED: dict[str, str] = _expected()
"""Expected failures (``fnmatch`` pattern on the test id -> reason), from :data:`_RULES`
(alias_test's cases are named by index, so they are matched by their parameters)."""


def _exercised(item: Any) -> bool:
    """Whether the test calls one of the substituted aliases."""
    params = _parameters(getattr(item, "function", None))
    if params is not None and "opt_name" in params:
        return params["opt_name"] in SUBSTITUTED or params["opt_name"] == "sgd_mom"
    module = getattr(item, "module", None)
    if module is not None and module.__name__.endswith("float64_test"):
        name = peer.test_id(item.nodeid).rsplit("test_mixed_dtype_input_outputs_", 1)[-1]
        constructor = {n: c for n, c, _ in module.ALL_MODULES}.get(name)
        return constructor in SUBSTITUTES.values()
    if module is not None and module.__name__.endswith("sharding_test"):
        name = peer.test_id(item.nodeid)
        keys = sorted((k for k in module.OPTIMIZERS if name.endswith(f"_{k}")), key=len)
        optimizer = module.OPTIMIZERS[keys[-1]] if keys else None  # noisy_sgd, not sgd
        return isinstance(optimizer, ujax.Transformation)
    try:
        source = inspect.getsource(item.function)
    except (OSError, TypeError):
        return False
    helpers = _helpers(module) if module is not None else set()
    return _calls_substituted(source) or any(re.search(rf"\b{h}\(", source) for h in helpers)


def _calls_substituted(source: str) -> bool:
    """Whether ``source`` calls a substituted alias (``optax.adam(``, ``_muon.muon(``)."""
    called_as = "|".join(_CALLED_AS)
    return any(re.search(rf"\b({called_as})\.{name}\(", source) for name in SUBSTITUTED)


@functools.cache
def _helpers(module: Any) -> frozenset[str]:
    """The test module's own functions that call a substituted alias (``_muon_test.get_updates``):
    a test calling one of them exercises the alias too."""
    names = set()
    for name, function in vars(module).items():
        if inspect.isfunction(function) and function.__module__ == module.__name__:
            try:
                if _calls_substituted(inspect.getsource(function)):
                    names.add(name)
            except (OSError, TypeError):
                continue
    return frozenset(names)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: Any) -> Any:
    """An expected failure runs with ``subTest`` as a plain block: its first failing check fails
    the test itself, so that the test is the expected failure (a failing subtest of a test that
    otherwise passes would leave the test passing, which strict xfail reports as XPASS), and a
    test whose every check passes is still an XPASS."""
    if item.get_closest_marker("xfail") is None:
        return (yield)
    original = unittest.TestCase.subTest
    unittest.TestCase.subTest = lambda self, msg=None, **params: contextlib.nullcontext()  # type: ignore[method-assign]
    try:
        return (yield)
    finally:
        unittest.TestCase.subTest = original  # type: ignore[method-assign]


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    peer.select_and_mark(config, items, EXPECTED, _exercised)
