"""The uniopt Keras optimizers that step some variables with the spec's Adam step, chosen by path (Muon).

``keras.optimizers.Muon`` (``keras/src/optimizers/muon.py``, ``_should_use_adamw``) steps a variable
with its AdamW step when the variable is not 2-D, when ``exclude_embeddings`` is true and
``"embedding"`` is in ``variable.path.lower()``, or when a regular expression of ``exclude_layers``
matches ``variable.path`` (``re.search``); every other variable takes the Muon step. Which
variable is which is a matter of names, so it is decided here; the steps are the spec's:
:meth:`uniopt.Muon.adam_routed` says which step the spec's rule takes for a shape, and a 2-D
variable picked by its path runs with ``spec.replace(adam_2d=True)``, whose rule takes the Adam step
(the same op sequence as for a vector). No update math lives here.

Slots are Keras's: ``build`` makes, variable by variable as Keras does, a ``momentum`` for each
(the spec's ``momentum_buffer``) and a ``velocity`` (``exp_avg_sq``) only for a variable the Adam step
takes, named ``<path>_momentum`` and ``<path>_velocity`` (``add_variable_from_reference``). The
rule of a Muon-stepped variable reads no ``exp_avg_sq``: it gets the spec's initial value (zeros)
and passes it through, and nothing is stored. A variable excluded from weight decay
(``exclude_from_weight_decay``) runs without ``weight_decay`` and without ``adam_weight_decay``, as
Keras's ``_apply_weight_decay`` skips both there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

import keras
import numpy as np

from uniopt import Spec

from ._binding import PACKAGE
from .optimizers import UnioptOptimizer, _SlotInit

__all__ = ["AdamRoutedOptimizer"]


def _path(variable: Any) -> str:
    """``variable.path`` (Keras's variables), else its name (a ``tf.Variable`` has no path)."""
    path = getattr(variable, "path", None)
    return path if isinstance(path, str) else str(variable.name)


class AdamRoutedOptimizer(UnioptOptimizer):
    """A :class:`~uniopt.keras.UnioptOptimizer` whose spec has a Muon step and an Adam step, with
    Keras's ``exclude_layers`` (``None`` or a list of regular expressions searched in each
    variable's path) and ``exclude_embeddings`` (a bool) choosing the Adam step by path (see the
    module docstring). Both are fixed at construction and kept in ``get_config``.

    Raises ``ValueError``, before anything is built: ``exclude_layers`` a string (Keras would
    iterate its characters as patterns), not a list or tuple of strings, or holding a pattern that
    does not compile; ``exclude_embeddings`` not a bool (0 and 1 are read as bools with
    ``convention="keras"``, as Keras reads it by truth value); and, in ``build``, a variable routed to
    the Adam step under a convention that has none (``"uniopt"``, ``"torch"``), naming the variable
    and why it was routed.
    """

    KERAS_ROUTING: ClassVar[Mapping[str, Any]] = {}

    def __init__(
        self, learning_rate: Any, exclude_layers: Any = None, exclude_embeddings: Any = True, **kwargs
    ):
        owner = f"{PACKAGE}.{type(self).__name__}"
        keras_flags = kwargs.get("convention") == "keras"
        layers = _check_exclude_layers(owner, exclude_layers)
        embeddings = _check_flag(owner, "exclude_embeddings", exclude_embeddings, keras_flags)
        super().__init__(learning_rate, **kwargs)
        object.__setattr__(self, "exclude_layers", layers)  # frozen below: see _keras_hyper_names
        object.__setattr__(self, "exclude_embeddings", embeddings)
        spec = self._spec
        decays = {f: 0.0 for f in ("weight_decay", "adam_weight_decay") if getattr(spec, f) != 0}
        self._spec_without_decay = spec.replace(**decays) if decays else spec
        self._routed_specs: dict[int, Spec] = {}  # id of a spec -> that spec with adam_2d=True

    def _keras_hyper_names(self) -> set[str]:
        return super()._keras_hyper_names() | set(self.KERAS_ROUTING)

    # -- routing --------------------------------------------------------------------------------
    def _should_use_adamw(self, variable: Any) -> bool:
        """Keras's ``Muon._should_use_adamw``: whether ``variable`` takes the Adam step (not 2-D;
        ``"embedding"`` in its lowercased path with ``exclude_embeddings``; a pattern of
        ``exclude_layers`` found in its path by ``re.search``)."""
        if len(variable.shape) != 2:
            return True
        return self._routed_by_path(variable) is not None

    def _routed_by_path(self, variable: Any) -> str | None:
        """Why a 2-D ``variable`` takes the Adam step by its path, in words; ``None`` if it does not."""
        path = _path(variable)
        if self.exclude_embeddings and "embedding" in path.lower():
            return f"exclude_embeddings=True and its path {path!r} names an embedding"
        for pattern in self.exclude_layers:
            if re.search(pattern, path):
                return f"exclude_layers pattern {pattern!r} matches its path {path!r}"
        return None

    def _portable_spec_for(self, variable: Any) -> Spec:
        """The spec with this variable's weight decay (the optimizer's hyperparameters): the spec,
        or the spec without ``weight_decay`` and ``adam_weight_decay`` for a variable excluded from
        weight decay (Keras's ``_use_weight_decay``)."""
        if self._spec is self._spec_without_decay or self._use_weight_decay(variable):
            return self._spec
        return self._spec_without_decay

    def _spec_for(self, variable: Any) -> Spec:
        """:meth:`_portable_spec_for`, with ``adam_2d=True`` for a 2-D variable that takes the
        Adam step by its path (Keras's ``exclude_embeddings``, ``exclude_layers``)."""
        spec = self._portable_spec_for(variable)
        if len(variable.shape) != 2 or self._routed_by_path(variable) is None:
            return spec
        key = id(spec)  # the spec or the spec without decay, both held by the optimizer
        routed = self._routed_specs.get(key)
        if routed is None:
            try:
                routed = spec.replace(adam_2d=True)
            except ValueError as error:
                raise ValueError(
                    f"{PACKAGE}.{type(self).__name__}: variable {_path(variable)!r} takes the Adam "
                    f"step ({self._routed_by_path(variable)}), and convention={spec.convention!r} "
                    f"has none ({error}); use convention='keras' or 'optax', or leave it out of "
                    "exclude_layers and pass exclude_embeddings=False"
                ) from None
            self._routed_specs[key] = routed
        return routed

    # -- Keras contract -----------------------------------------------------------------------
    def build(self, variables: list[Any]) -> None:
        """Keras's ``build``, then variable by variable (as Keras's Muon does) a ``momentum`` and,
        for a variable the Adam step takes, a ``velocity`` (:meth:`uniopt.Muon.adam_routed` of its
        spec, the spec's ``adam_slots``); ``None`` where Keras keeps none. Every routing and shape
        is checked (``ValueError``) before any slot variable is made."""
        if self.built:
            return
        specs = [None if self._overwrite_variable_with_gradient(v) else self._spec_for(v) for v in variables]
        for v, spec in zip(variables, specs, strict=True):
            if spec is not None:
                refusal = spec.param_refusal(tuple(int(n) for n in v.shape))
                if refusal is not None:
                    raise ValueError(f"{PACKAGE}.{type(self).__name__}: variable {_path(v)!r}: {refusal}")
        self._check_state_dtypes(variables)
        keras.optimizers.Optimizer.build(self, variables)
        names = self._spec.slot_names()
        slots: dict[str, list[Any]] = {name: [] for name in names}
        for v, spec in zip(variables, specs, strict=True):
            adam = spec is not None and spec.adam_routed(tuple(int(n) for n in v.shape))
            for name in names:
                keep = spec is not None and (adam or name not in spec.adam_slots)
                slots[name].append(
                    self.add_variable_from_reference(
                        v, self.KERAS_VARIABLES.get(name, name), initializer=_SlotInit(spec, name)
                    )
                    if keep
                    else None
                )
        self._uniopt_slots = slots

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {"exclude_layers": list(self.exclude_layers), "exclude_embeddings": self.exclude_embeddings}
        )
        return config


def _check_exclude_layers(owner: str, value: Any) -> list[Any]:
    """Keras's ``exclude_layers or []``, each pattern checked to compile."""
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        raise ValueError(
            f"{owner}: exclude_layers={value!r} is a string; expected a list of regular expressions, "
            f"e.g. [{value!r}] (Keras would search each character of the string as a pattern)"
        )
    if not isinstance(value, (list, tuple)):
        raise ValueError(
            f"{owner}: exclude_layers={value!r} is not a list; expected None or a list of regular "
            "expressions searched in each variable's path"
        )
    for pattern in value:
        if not isinstance(pattern, (str, re.Pattern)):
            raise ValueError(
                f"{owner}: exclude_layers holds {pattern!r}, which is not a string; expected regular "
                "expressions searched in each variable's path"
            )
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(
                f"{owner}: exclude_layers pattern {pattern!r} is not a regular expression ({error})"
            ) from None
    return list(value)


def _check_flag(owner: str, name: str, value: Any, keras_flags: bool) -> bool:
    """A bool; 0 and 1 too with ``convention="keras"`` (Keras reads the flag by truth value)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if keras_flags and isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    accepted = (
        "True or False (or 0 or 1 with convention='keras')" if not keras_flags else "True, False, 0 or 1"
    )
    raise ValueError(f"{owner}: {name}={value!r} is not a bool; expected {accepted}")
