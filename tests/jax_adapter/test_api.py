"""The public surface of uniopt.jax: factories, the name mapping, defaults and bad input."""

from __future__ import annotations

import importlib
import inspect

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from cases import table_for

import uniopt
import uniopt.jax as ujax
import uniopt.registry
from uniopt.registry import TABLE

CAMEL = {  # every factory uniopt.jax offers, and its CamelCase name (written out, not generated)
    "sgd": "SGD",
    "adagrad": "Adagrad",
    "rmsprop": "RMSprop",
    "adam": "Adam",
    "adamw": "AdamW",
    "radam": "RAdam",
    "adamax": "Adamax",
    "nadam": "NAdam",
    "nadamw": "NAdamW",
    "adadelta": "Adadelta",
    "lion": "Lion",
    "lamb": "Lamb",
    "adafactor": "Adafactor",
    "schedule_free_adamw": "ScheduleFreeAdamW",  # optax.contrib.schedule_free_adamw's name
    "muon": "Muon",  # optax.contrib.muon's name
}
NAMES = tuple(CAMEL)
# argument names uniopt.jax shares with the optax alias of the same name
SHARED_WITH_OPTAX = {
    "sgd": {"learning_rate", "momentum", "nesterov"},
    "adagrad": {"learning_rate", "initial_accumulator_value", "eps"},
    "rmsprop": {"learning_rate", "decay", "eps", "centered", "momentum"},
    "adam": {"learning_rate", "b1", "b2", "eps"},
    "adamw": {"learning_rate", "b1", "b2", "eps", "weight_decay"},
    "radam": {"learning_rate", "b1", "b2", "eps"},
    "adamax": {"learning_rate", "b1", "b2", "eps"},
    "nadam": {"learning_rate", "b1", "b2", "eps"},
    "nadamw": {"learning_rate", "b1", "b2", "eps", "weight_decay"},
    "adadelta": {"learning_rate", "rho", "eps", "weight_decay"},
    "lion": {"learning_rate", "b1", "b2", "weight_decay"},
    "lamb": {"learning_rate", "b1", "b2", "eps", "weight_decay"},
    "adafactor": {"learning_rate", "min_dim_size_to_factor", "momentum", "eps", "factored"},
    "muon": {"learning_rate", "ns_coeffs", "ns_steps", "beta", "eps", "weight_decay", "nesterov"},
}
JAX_TABLE = table_for("jax")
CASES = [pytest.param(info, case, id=f"{info.name}-{case.desc}") for info in JAX_TABLE for case in info.cases]


def _factory_of(spec_name: str):
    return next(ujax.FACTORIES[a] for a, (t, _) in ujax.ALIASES.items() if t.name == spec_name)


def _to_optax_names(spec_name: str, kwargs: dict) -> dict | None:
    """Core keyword arguments in the factory's names, or None if one has no counterpart."""
    alias = next(a for a, (t, _) in ujax.ALIASES.items() if t.name == spec_name)
    by_target = {target: arg for arg, target in ujax.ALIASES[alias][1].items()}
    out = {}
    for key, value in kwargs.items():
        if f"{key}[0]" in by_target:  # a pair given as two arguments (b1, b2; eps, min_scale)
            if not (isinstance(value, tuple) and len(value) == 2):
                return None  # separate arguments: "not a pair" cannot be said
            out[by_target[f"{key}[0]"]], out[by_target[f"{key}[1]"]] = value
        elif f"-{key}" in by_target:  # the field's negative (adafactor's decay_rate)
            out[by_target[f"-{key}"]] = -value
        else:
            out[by_target[key]] = value
    if "convention" in by_target and "convention" not in kwargs:  # the spec's default convention
        out[by_target["convention"]] = "uniopt"  # (uniopt.jax.adafactor's default is "optax")
    return out


def test_every_optimizer_has_a_factory_and_its_camel_case_alias_is_the_same_object():
    assert set(ujax.ALIASES) == set(NAMES)
    assert {t for t, _ in ujax.ALIASES.values()} == {info.spec for info in JAX_TABLE}
    assert ujax.CAMEL_CASE == CAMEL
    for name in NAMES:
        assert getattr(ujax, name) is getattr(ujax, CAMEL[name]) is ujax.FACTORIES[name]
        assert getattr(ujax, name).__name__ == name
        assert {name, CAMEL[name]} <= set(ujax.__all__)
    assert all(hasattr(ujax, name) for name in ujax.__all__)


def test_the_factories_are_the_tables_optax_names():
    # one factory per OptaxNames of a row, with the row's spec, mapping and positional order
    rows = {n.alias: (info.spec, n) for info in TABLE for n in info.optax}
    assert set(rows) == set(ujax.FACTORIES)
    for alias, (spec_type, names) in rows.items():
        assert ujax.ALIASES[alias] == (spec_type, dict(names.names))
        params = inspect.signature(ujax.FACTORIES[alias]).parameters.values()
        positional = [p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        assert tuple(positional) == names.positional
        assert set(names.names) | set(names.only) <= {p.name for p in params}
        # native: the factory stands for optax's <module>.<alias> (optax.contrib.muon)
        assert hasattr(importlib.import_module(names.module), alias) == names.native
        assert ujax.FACTORIES[alias]().spec.hyperparameters | dict(names.fixed) == (
            ujax.FACTORIES[alias]().spec.hyperparameters
        )


@pytest.mark.parametrize("name", NAMES)
def test_signature_follows_optax_and_defaults_are_uniopts(name):
    if name not in ujax.OPTAX or not ujax.OPTAX[name].native:
        pytest.skip(f"optax has no optax.{name}")
    sig = inspect.signature(getattr(ujax, name))
    params = list(sig.parameters.values())
    assert params[0].name == "learning_rate"
    native = getattr(importlib.import_module(ujax.OPTAX[name].module), name)  # optax.contrib.muon
    optax_positional = [
        p.name
        for p in inspect.signature(native).parameters.values()
        if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    ]
    positional = [p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert positional == optax_positional  # optax's positional order; the rest keyword-only
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[len(positional) :])
    optax_params = set(inspect.signature(native).parameters)
    assert SHARED_WITH_OPTAX[name] <= set(sig.parameters) & optax_params
    spec_type = ujax.ALIASES[name][0]
    fixed = dict(ujax.OPTAX[name].fixed)  # nadamw: decoupled weight decay
    convention = ujax.OPTAX[name].default_convention  # adafactor: optax's names mean optax's rule
    expected = spec_type(**fixed, **({"convention": convention} if convention else {}))
    assert getattr(ujax, name)().spec == expected  # defaults: uniopt's (of that convention)
    assert getattr(ujax, name)().learning_rate is None  # a constant learning rate lives in the spec


def test_defaults_that_differ_from_optax_are_uniopts():
    # None in a signature: the default of the chosen convention (uniopt's unless one is named)
    assert inspect.signature(ujax.rmsprop).parameters["decay"].default is None
    assert ujax.rmsprop(1e-2).spec.alpha == 0.99  # optax: 0.9
    assert inspect.signature(ujax.adagrad).parameters["initial_accumulator_value"].default is None
    assert ujax.adagrad().spec.initial_accumulator_value == 0.0  # optax: 0.1
    assert ujax.adagrad().spec.eps == 1e-10  # optax: 1e-7
    assert ujax.adagrad(convention="optax").spec.eps == 1e-7
    assert inspect.signature(ujax.adamw).parameters["weight_decay"].default is None
    assert ujax.adamw(1e-3).spec.weight_decay == 1e-2  # optax: 1e-4


@pytest.mark.parametrize(("info", "case"), CASES)
def test_every_table_case_is_reachable_through_optax_names(info, case):
    spec = info.make(case)
    name, kwargs = ujax.optax_arguments(spec)
    tx = getattr(ujax, name)(**kwargs)
    assert tx.spec == spec
    assert isinstance(tx, optax.GradientTransformationExtraArgs)
    assert repr(spec) in repr(tx)


ERRORS = [
    pytest.param(info, err, id=f"{info.name}-{i}")
    for info in JAX_TABLE
    for i, err in enumerate(info.error_cases)
]


@pytest.mark.parametrize(("info", "err"), ERRORS)
def test_bad_hyperparameters_raise_the_cores_message(info, err):
    kwargs = _to_optax_names(info.name, dict(err.kwargs))
    if kwargs is None:
        assert "is not a pair" in err.match  # the only inexpressible case, checked as a whole below
        return
    with pytest.raises(ValueError, match=err.match):
        _factory_of(info.name)(**kwargs)


def test_only_the_pair_errors_are_inexpressible_with_b1_and_b2():
    inexpressible = [
        (info.name, err.match)
        for info in JAX_TABLE
        for err in info.error_cases
        if _to_optax_names(info.name, dict(err.kwargs)) is None
    ]
    assert {"Adam", "AdamW", "RAdam"} <= {n for n, _ in inexpressible}
    assert all("is not a pair" in m for _, m in inexpressible)


def test_messages_name_the_argument_the_user_passed():
    with pytest.raises(ValueError, match=r"betas\[0\]=1\.0 is out of range.*b1 is uniopt's betas\[0\]"):
        ujax.adam(b1=1.0)
    with pytest.raises(ValueError, match=r"alpha=1\.0 is out of range.*decay is uniopt's alpha"):
        ujax.rmsprop(decay=1.0)
    with pytest.raises(ValueError, match=r"lr=-0\.5 is out of range.*learning_rate is uniopt's lr"):
        ujax.sgd(-0.5)


def test_learning_rate_kinds():
    assert ujax.adam(0.5).spec.lr == 0.5
    assert ujax.adam(np.asarray(0.25)).spec.lr == 0.25  # a 0-d NumPy array is a constant
    sched = optax.linear_schedule(1.0, 0.1, 10)
    assert ujax.adam(sched).learning_rate is sched
    assert ujax.adam(jnp.asarray(0.1)).learning_rate is not None
    with pytest.raises(ValueError, match=r"Adam: lr=-0\.10000000149011612 is out of range"):
        ujax.adam(jnp.asarray(-0.1, jnp.float32))
    with pytest.raises(ValueError, match="learning_rate must be a float, a 0-d array or a schedule"):
        ujax.adam(jnp.ones(2))
    with pytest.raises(ValueError, match=r"Adam: lr='0\.1' is not a real number"):
        ujax.adam("0.1")


def test_hyperparameters_given_as_arrays_are_validated_like_numbers():
    with pytest.raises(ValueError, match=r"Adam: betas\[0\]=1\.0 is out of range.*b1 is uniopt's betas\[0\]"):
        ujax.adam(b1=jnp.asarray(1.0))
    with pytest.raises(ValueError, match=r"b1 must be a number or a 0-d array"):
        ujax.adam(b1=jnp.ones(2))


def test_positional_hyperparameters_are_optaxs():
    # optax.adam(1e-3, 0.8) means b1=0.8: so does uniopt.jax.adam
    assert ujax.adam(1e-3, 0.8).spec.betas == (0.8, 0.999)
    with pytest.raises(TypeError):
        ujax.adam(1e-3, 0.9, 0.999, 1e-8, 0.0, None, 0.0)  # weight_decay is keyword-only


def test_bad_calls():
    tx = ujax.adam(0.1)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    with pytest.raises(ValueError, match="update needs `params` with weight decay"):
        ujax.adamw(0.1).update({"w": jnp.ones(3)}, state)
    with pytest.raises(ValueError, match=r"a gradient of shape \(2,\) for a parameter of shape \(3,\)"):
        tx.update({"w": jnp.ones(2)}, state, params)
    with pytest.raises(TypeError, match="parameters must be floating point"):
        tx.init({"w": jnp.ones(3, jnp.int32)})
    with pytest.raises(ValueError):  # another tree structure
        tx.update({"v": jnp.ones(3)}, state, params)


def test_extra_args_are_accepted_and_ignored():
    tx = ujax.radam(0.1)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    a, _ = tx.update({"w": jnp.ones(3)}, state, params, value=jnp.asarray(1.0))
    b, _ = tx.update({"w": jnp.ones(3)}, state, params)
    assert np.array_equal(a["w"], b["w"])


def test_from_spec_matches_the_factory():
    spec = uniopt.RAdam(lr=0.01, weight_decay=0.1)
    params = {"w": jnp.linspace(1.0, 2.0, 5)}
    grads = {"w": jnp.linspace(-1.0, 1.0, 5)}
    a = ujax.from_spec(spec).step(grads, ujax.from_spec(spec).init(params), params)[0]
    tx = ujax.radam(0.01, weight_decay=0.1)
    b = tx.step(grads, tx.init(params), params)[0]
    assert np.array_equal(a["w"], b["w"])


def test_a_new_row_is_a_working_factory_without_adapter_code(monkeypatch):
    """An OptaxNames entry optax has no alias for (native=False), with a fixed field: the generator
    alone gives its signature, docstring and a transformation equal to the spec's own."""
    from uniopt.jax import _names
    from uniopt.registry import OptaxNames

    names = OptaxNames(
        "myamsgrad",
        names={"learning_rate": "lr", "b1": "betas[0]", "b2": "betas[1]", "maximize": "maximize"},
        positional=("learning_rate", "b1", "b2"),
        fixed={"amsgrad": True},
        native=False,
    )
    monkeypatch.setitem(_names.OPTAX, "myamsgrad", names)
    monkeypatch.setitem(_names.ALIASES, "myamsgrad", (uniopt.Adam, dict(names.names)))
    monkeypatch.setitem(_names.POSITIONAL, "myamsgrad", names.positional)
    monkeypatch.setitem(_names.OPTAX_ONLY, "myamsgrad", {})
    factory = _names._factory("myamsgrad")
    assert str(inspect.signature(factory)) == (
        "(learning_rate=0.001, b1=0.9, b2=0.999, *, maximize=False) -> uniopt.jax._transform.Transformation"
    )
    assert (
        "it sets ``amsgrad=True``" in factory.__doc__
        and "optax has no ``optax.myamsgrad``" in factory.__doc__
    )
    tx = factory(0.01, 0.8)
    assert tx.spec == uniopt.Adam(lr=0.01, betas=(0.8, 0.999), amsgrad=True)
    params, grads = {"w": jnp.linspace(-1.0, 1.0, 5)}, {"w": jnp.linspace(0.5, -0.25, 5)}
    reference = ujax.from_spec(uniopt.Adam(lr=0.01, betas=(0.8, 0.999), amsgrad=True))
    ours, _ = tx.step(grads, tx.init(params), params)
    theirs, _ = reference.step(grads, reference.init(params), params)
    np.testing.assert_array_equal(np.asarray(ours["w"]), np.asarray(theirs["w"]))
    monkeypatch.setitem(_names.FACTORIES, "myamsgrad", factory)
    assert ujax.optax_arguments(tx.spec)[0] == "myamsgrad"  # the factory fixing amsgrad, over adam's


def test_every_row_of_the_table_runs_on_jax():
    """ScheduleFreeAdamW (a history and an evaluation view), Adafactor (slots not shaped like the
    parameter) and Muon (matrix products) included: no row is skipped on jax."""
    assert [info.name for info in TABLE if info not in JAX_TABLE] == []
    assert all(info.skip_reason("jax") is None for info in TABLE)
    assert ujax.schedule_free_adamw is ujax.ScheduleFreeAdamW
    assert ujax.muon is ujax.Muon


@pytest.mark.parametrize("name", ["adamw", "lion", "lamb", "nadamw"])
def test_a_weight_decay_schedule_is_refused_and_inject_hyperparams_runs_it(name):
    """optax's adamw, lion, lamb and nadamw take a schedule as ``weight_decay``; uniopt.jax's
    per-step scalars are affine in the learning rate only, so the factory refuses one with a
    ValueError naming the argument and the way that runs it: optax.inject_hyperparams calls the
    schedule at each step and passes its value, as optax's own alias under it does."""
    schedule = optax.linear_schedule(1e-2, 0.0, 100)
    with pytest.raises(
        ValueError, match=rf"uniopt\.jax\.{name}: weight_decay is a callable.*inject_hyperparams"
    ):
        getattr(ujax, name)(1e-2, weight_decay=schedule, convention="optax")
    params, grads = jnp.ones(3), jnp.full(3, 0.5)
    mine = optax.inject_hyperparams(getattr(ujax, name))(
        learning_rate=1e-2, weight_decay=schedule, convention="optax"
    )
    theirs = optax.inject_hyperparams(getattr(optax, name))(learning_rate=1e-2, weight_decay=schedule)
    p, q, s, t = params, params, mine.init(params), theirs.init(params)
    for _ in range(3):
        u, s = mine.update(grads, s, p)
        v, t = theirs.update(grads, t, q)
        p, q = optax.apply_updates(p, u), optax.apply_updates(q, v)
    assert float(s.hyperparams["weight_decay"]) == float(t.hyperparams["weight_decay"]) != 1e-2
    np.testing.assert_allclose(p, q, rtol=1e-6)


@pytest.mark.parametrize("momentum", [None, 0.0])
def test_sgd_nesterov_without_momentum_is_plain_sgd_as_in_optax(momentum):
    """optax.sgd applies no trace without momentum (and a trace of decay 0 with momentum=0), so its
    nesterov=True changes nothing there; uniopt.jax.sgd's optax convention takes it the same way,
    where uniopt's own (torch.optim.SGD's rule) refuses it, naming the conventions that take it."""
    with pytest.raises(ValueError, match=r"nesterov=True needs momentum > 0.*convention='optax'"):
        ujax.sgd(0.1, momentum=momentum, nesterov=True)
    params, grads = jnp.ones(3), jnp.asarray([0.5, -0.25, 2.0])
    mine = ujax.sgd(0.1, momentum=momentum, nesterov=True, convention="optax")
    theirs = optax.sgd(0.1, momentum=momentum, nesterov=True)
    p, q, s, t = params, params, mine.init(params), theirs.init(params)
    for _ in range(3):
        u, s = mine.update(grads, s, p)
        v, t = theirs.update(grads, t, q)
        p, q = optax.apply_updates(p, u), optax.apply_updates(q, v)
    np.testing.assert_array_equal(p, q)
    assert mine.spec.nesterov and mine.spec.momentum == 0 and not s.slots
