"""Keras's own optimizer tests, run against ``uniopt.keras`` with ``convention="keras"``.

Loaded as a pytest plugin from the repository root::

    KERAS_BACKEND=tensorflow python -m pytest -p peer.keras <SUITES>

on any Keras backend (``python -m peer run keras --backend jax`` sets ``KERAS_BACKEND``); on
TensorFlow the classes are uniopt.tf's.

``pytest_configure`` replaces every Keras optimizer the table names (:data:`SUBSTITUTED`: ``SGD,
Adagrad, RMSprop, Adam, AdamW, Adamax, Nadam, Adadelta, Lion, Lamb, ScheduleFreeAdamW, Adafactor,
Muon``,
each row's
``KerasNames.native``) by uniopt.tf's class whose ``convention`` defaults to ``"keras"``
(:func:`keras_default`), in every namespace Keras's tests read them from:
each loaded module holding Keras's class
(``keras.optimizers``, ``keras.src.optimizers``, ``keras.src.optimizers.sgd``, ...) and the name
tables behind ``keras.optimizers.get``/``deserialize``. The test bodies are unchanged. Tests that
only exercise optimizers uniopt does not have (Ftrl, ...) or Keras's base
class alone are deselected (the harness counts them, :mod:`peer._collect`); :data:`EXPECTED` lists
the expected failures, each with a category reason.
"""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import pytest

import peer
from uniopt.registry import TABLE

_HERE = Path(keras.__file__).parent / "src" / "optimizers"

_SUITE_NAMES = {"ScheduleFreeAdamW": "schedule_free_adamw"}
"""Keras classes whose test module is not named by the lowercased class name."""

SUITES: list[str] = [
    str(_HERE / f"{name}_test.py")
    for name in (
        # each Keras optimizer the table names has its own suite (keras/src/optimizers/<name>_test.py)
        *(
            _SUITE_NAMES.get(info.keras.native, info.keras.native.lower())
            for info in TABLE
            if info.keras is not None and info.keras.native
        ),
        "optimizer",
        "optimizer_sparse",
        "loss_scale_optimizer",
    )
]

SUBSTITUTED = tuple(info.keras.native for info in TABLE if info.keras is not None and info.keras.native)
"""Keras optimizers replaced by uniopt.tf's classes (``convention="keras"`` by default): every one
the table names."""

DESELECT_REASON = "tests a Keras optimizer uniopt does not implement (or Keras's base class alone)"

# -- expected failures: short category reasons, each defined once ------------------------------
SPARSE = (
    "the rule changes the slots of untouched rows (their moments decay), so the spec's sparse rule is "
    '"dense": one dense write of the variable where Keras scatters its rows (the same values)'
)
HOST_PRODUCT = (
    "reads Keras's private _u_product variable: uniopt keeps Nadam's momentum-schedule product on "
    "the host, a function of the step"
)
WORDING = "checks Keras's error wording; uniopt's spec refuses the same value in its own words"
HELPER = (
    "calls a helper method of Keras's Muon (zeropower_via_newtonschulz5, lr_adjust); uniopt.keras.Muon "
    "runs the spec's Newton-Schulz iteration and scaling inside the core's rule and offers no helpers"
)
DECAY_IN_RULE = (
    "calls Keras's _apply_weight_decay, or update_step expecting no decay: uniopt.keras turns Keras's "
    "separate decay off and applies weight_decay and adam_weight_decay in the spec's rule, inside "
    "update_step (the same values in one step of apply)"
)

EXPECTED: dict[str, str] = {
    # Keras's RMSprop, Adadelta and Adafactor scatter an IndexedSlices gradient's update into the
    # model variable and update their slots densely; uniopt's sparse rule for them is "dense" (SGD
    # and Adagrad scatter, uniopt.sparse)
    **{
        f"OptimizerSparseTest::test_sparse_gradients_{name}": SPARSE
        for name in ("rmsprop", "adadelta", "adafactor")
    },
    "NadamTest::test_build_with_empty_var_list": HOST_PRODUCT,
    "LionTest::test_invalid_beta_1": WORDING,
    "MuonTest::test_Newton_Schulz": HELPER,
    "MuonTest::test_lr_adjust_none": HELPER,
    "MuonTest::test_lr_adjust_2d": HELPER,
    "MuonTest::test_adamw_single_step": DECAY_IN_RULE,
    "MuonTest::test_muon_weight_decay": DECAY_IN_RULE,
    "MuonTest::test_adamw_weight_decay": DECAY_IN_RULE,
}


DENSE_ON_JAX = (
    "uniopt.keras on JAX applies a BCOO gradient densely (one dense write of the variable, the same "
    "values); Keras's SGD and Adagrad write only its rows there"
)

if keras.backend.backend() == "jax":  # the other backends' own expectations
    EXPECTED.update(
        {
            f"OptimizerSparseTest::test_sparse_gradients_{name}": DENSE_ON_JAX
            for name in ("adagrad", "sgd", "loss_scale_optimizer_sgd")
        }
    )

_SUBSTITUTES: dict[type, type] = {}  # Keras's class -> its substitute, filled by pytest_configure


def keras_default(cls: type) -> type:
    """``cls`` (a uniopt.tf class) with ``convention="keras"`` as its default, named as Keras's."""

    def init(self: Any, *args: Any, convention: str = "keras", **kwargs: Any) -> None:
        cls.__init__(self, *args, convention=convention, **kwargs)

    namespace = {"__init__": init, "__module__": __name__, "__doc__": cls.__doc__}
    if keras.backend.backend() == "torch":
        # TorchOptimizer.__new__ swaps keras.optimizers.Adam (which this plugin rebinds to the
        # substitute) for Keras's torch class; the substitute is made as any other class
        from keras.src.backend.torch.optimizers.torch_optimizer import TorchOptimizer

        namespace["__new__"] = lambda klass, *args, **kwargs: super(TorchOptimizer, klass).__new__(klass)
    wrapped = type(cls.__name__, (cls,), namespace)
    # serialized as a registered custom object, as uniopt.tf's own classes are ("uniopt>SGD")
    return keras.saving.register_keras_serializable(package="uniopt_keras_default")(wrapped)


def _substitute() -> dict[type, type]:
    import keras.src.optimizers as kso

    import uniopt.keras as ut  # on TensorFlow, uniopt.tf's classes themselves

    # keras.optimizers, the public namespace: keras.src.optimizers does not import every class (Lamb)
    replacements = {getattr(keras.optimizers, name): keras_default(getattr(ut, name)) for name in SUBSTITUTED}
    for cls in replacements.values():  # where pickle finds them by qualified name
        globals()[cls.__name__] = cls
    for module in list(sys.modules.values()):
        if not (getattr(module, "__name__", "") or "").startswith("keras"):
            continue
        for attr, value in list(vars(module).items()):
            if isinstance(value, type) and value in replacements:
                setattr(module, attr, replacements[value])
    kso.ALL_OBJECTS = {replacements.get(cls, cls) for cls in kso.ALL_OBJECTS}
    for key, cls in list(kso.ALL_OBJECTS_DICT.items()):
        kso.ALL_OBJECTS_DICT[key] = replacements.get(cls, cls)
    return replacements


def pytest_configure(config: pytest.Config) -> None:
    _SUBSTITUTES.update(_substitute())


def _case_parameters(function: Any) -> tuple[Any, ...] | None:
    """The parameters of an absl parameterized case (``None`` for a plain test)."""
    if function is None or getattr(function, "__closure__", None) is None:
        return None
    closure = inspect.getclosurevars(function).nonlocals.get("testcase_params")
    if closure is None:
        return None
    return tuple(closure.values()) if isinstance(closure, dict) else tuple(closure)


def _optimizer_of(value: Any) -> bool | None:
    """For a case parameter naming or building an optimizer, whether that is a substituted one;
    ``None`` for any other parameter (a flag, an argument name, ...)."""
    import keras.src.optimizers as kso

    if isinstance(value, str):
        known = value.lower() in kso.ALL_OBJECTS_DICT
        return value.lower() in {name.lower() for name in SUBSTITUTED} if known else None
    if isinstance(value, type):
        return value in _SUBSTITUTES.values() if issubclass(value, keras.optimizers.Optimizer) else None
    code = getattr(value, "__code__", None)  # a factory such as lambda: LossScaleOptimizer(SGD(...))
    return bool(set(code.co_names) & set(SUBSTITUTED)) if code is not None else None


def _exercised(item: Any) -> bool:
    """Every plain test of these suites builds a substituted optimizer (SGD, Adam, ...); so does a
    parameterized case unless its parameters name only other optimizers (Adadelta, Lion, ...)."""
    params = _case_parameters(getattr(item, "function", None))
    optimizers = [o for o in map(_optimizer_of, params or ()) if o is not None]
    return not optimizers or any(optimizers)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    peer.select_and_mark(config, items, EXPECTED, _exercised)
