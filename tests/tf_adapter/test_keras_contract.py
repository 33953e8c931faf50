"""The Keras contract: fit, configs and serialization, saving, checkpoints, base-optimizer
features, errors. Each compares bits where the claim is bitwise."""

from __future__ import annotations

import dataclasses
import inspect
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from cases import table_for
from keras.src.optimizers.base_optimizer import BaseOptimizer
from tf_helpers import assert_trajectories, bits_equal, make_step, params_and_grads, reference, snapshot

import uniopt
import uniopt.tf as ut
from uniopt.registry import TABLE, get
from uniopt.tf.optimizers import CONVENTION_DEFAULT

# one worker runs this module (pytest-xdist's loadgroup): its module fixture runs once
pytestmark = pytest.mark.xdist_group("test_keras_contract")

CLASSES = [getattr(ut, name) for name in ut.OPTIMIZERS]  # one per table row
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.data / 16.0).astype(np.float32), data.target.astype(np.int32)


def mlp(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)]
    )


# -- compile + fit --------------------------------------------------------------------------------
FIT = [
    pytest.param(lambda: ut.SGD(learning_rate=0.05, momentum=0.9, nesterov=True), id="SGD"),
    pytest.param(lambda: ut.Adagrad(learning_rate=0.05), id="Adagrad"),
    pytest.param(lambda: ut.RMSprop(learning_rate=1e-3, centered=True), id="RMSprop"),
    pytest.param(lambda: ut.Adam(learning_rate=3e-3, amsgrad=True), id="Adam"),
    pytest.param(lambda: ut.AdamW(learning_rate=3e-3), id="AdamW"),
    pytest.param(lambda: ut.RAdam(learning_rate=2e-2), id="RAdam"),
]


@pytest.mark.parametrize("make", FIT)
def test_compile_and_fit_an_mlp_on_digits(make, digits):
    x, y = digits
    model = mlp()
    model.compile(optimizer=make(), loss=LOSS, metrics=["accuracy"])
    before = model.evaluate(x, y, verbose=0)[0]
    history = model.fit(x, y, epochs=3, batch_size=64, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0] < before
    assert model.evaluate(x, y, verbose=0)[0] < 0.6 * before
    assert int(model.optimizer.iterations.numpy()) == 3 * int(np.ceil(len(x) / 64))


def test_fit_with_jit_compile_and_a_schedule(digits):
    x, y = digits
    model = mlp()
    schedule = keras.optimizers.schedules.CosineDecay(3e-3, decay_steps=100)
    model.compile(optimizer=ut.RAdam(learning_rate=schedule), loss=LOSS, jit_compile=True)
    history = model.fit(x, y, epochs=2, batch_size=128, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


# -- configs, serialization, saving, checkpoints ----------------------------------------------------
def _nondefault(cls):
    info = next(i for i in TABLE if i.spec is cls.spec_class)
    return info.make(info.cases[-2])


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_get_config_from_config_and_keras_serialization(cls):
    opt = ut.from_spec(_nondefault(cls), clipnorm=2.0, name="mine")
    config = opt.get_config()
    assert config["learning_rate"] == opt.spec.lr  # exactly the Python float, not float32's
    clone = cls.from_config(config)
    assert type(clone) is cls and clone.spec == opt.spec and clone.get_config() == config
    data = keras.saving.serialize_keras_object(opt)
    assert data["registered_name"] == f"uniopt>{cls.__name__}"
    back = keras.saving.deserialize_keras_object(data)
    assert type(back) is cls and back.spec == opt.spec and back.clipnorm == 2.0 and back.name == "mine"


def test_a_schedule_survives_serialization():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.01, decay_steps=10, decay_rate=0.5)
    opt = ut.Adam(learning_rate=schedule, beta_1=0.8)
    back = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(opt))
    assert isinstance(back.learning_rate, tf.Tensor) or callable(back._learning_rate)
    assert back._learning_rate.get_config() == schedule.get_config()
    assert back.spec == opt.spec


@pytest.mark.parametrize(
    "learning_rate",
    [3e-3, keras.optimizers.schedules.ExponentialDecay(3e-3, decay_steps=4, decay_rate=0.5)],
    ids=["float", "schedule"],
)
def test_model_save_load_continues_bitwise(tmp_path, digits, learning_rate):
    x, y = digits[0][:512], digits[1][:512]
    model = mlp()
    opt = ut.RAdam(learning_rate=learning_rate, weight_decay=0.01, decoupled_weight_decay=True)
    model.compile(optimizer=opt, loss=LOSS)
    model.fit(x, y, epochs=1, batch_size=64, shuffle=False, verbose=0)  # 8 steps: rectified from 6
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.optimizer) is ut.RAdam and loaded.optimizer.spec == opt.spec
    assert len(loaded.optimizer.variables) == len(opt.variables)
    for a, b in zip(opt.variables, loaded.optimizer.variables, strict=True):
        assert bits_equal(a.numpy(), b.numpy()), a.path
    model.fit(x, y, epochs=2, batch_size=64, shuffle=False, verbose=0)
    loaded.fit(x, y, epochs=2, batch_size=64, shuffle=False, verbose=0)
    for a, b in zip(model.weights + opt.variables, loaded.weights + loaded.optimizer.variables, strict=True):
        assert bits_equal(a.numpy(), b.numpy()), a.path


CHECKPOINTED = [
    pytest.param(uniopt.Adam(lr=0.01, amsgrad=True), 10, {}, id="Adam"),
    # slots not shaped like the variable (row and column statistics, 0-d placeholders)
    pytest.param(
        uniopt.Adafactor(lr=0.05, weight_decay=0.1),
        8,
        {"shapes": ((3, 4), (5,), (), (2, 3, 4), (1, 6))},
        id="Adafactor",
    ),
    # a velocity only for the variables the Adam step takes (Keras's layout): none for the matrix
    pytest.param(
        uniopt.Muon(lr=0.02, convention="keras", matmul="exact"),
        8,
        {"shapes": ((4, 3), (5,), ())},
        id="Muon",
    ),
]


@pytest.mark.parametrize(("spec", "steps", "shapes"), CHECKPOINTED)
@pytest.mark.parametrize("build_first", [True, False], ids=["built", "deferred"])
def test_tf_train_checkpoint_restores_and_continues_bitwise(tmp_path, build_first, spec, steps, shapes):
    params, grads = params_and_grads(steps, seed=3, **shapes)
    variables = [tf.Variable(p) for p in params]
    opt = ut.from_spec(spec)
    step = make_step(opt, variables, "function")
    half = steps // 2
    for g in grads[:half]:
        step([tf.constant(x) for x in g])
    path = tf.train.Checkpoint(optimizer=opt, variables=variables).save(str(tmp_path / "ckpt"))

    restored_vars = [tf.Variable(np.zeros_like(p)) for p in params]
    restored = type(opt).from_config(opt.get_config())
    if build_first:
        restored.build(restored_vars)
    status = tf.train.Checkpoint(optimizer=restored, variables=restored_vars).restore(path)
    if not build_first:
        restored.build(restored_vars)
    status.assert_existing_objects_matched()
    assert int(restored.iterations.numpy()) == half
    restored_step = make_step(restored, restored_vars, "function")
    for g in grads[half:]:
        step([tf.constant(x) for x in g])
        restored_step([tf.constant(x) for x in g])
        assert_trajectories([snapshot(restored, restored_vars)], [snapshot(opt, variables)])
    assert_trajectories([snapshot(opt, variables)], reference(spec, params, grads)[-1:])


# -- base-optimizer features ---------------------------------------------------------------------
def _trajectory(opt, grads_seq, params, mode="function", feed=lambda g: g):
    variables = [tf.Variable(p) for p in params]
    step = make_step(opt, variables, mode)
    out = []
    for g in grads_seq:
        step([tf.constant(feed(x)) for x in g])
        out.append(snapshot(opt, variables))
    return out


def test_keras_weight_decay_is_the_specs_and_applied_once():
    """weight_decay is the spec's (decoupled in AdamW, L2 in Adam); Keras's own pass is off, so
    the trajectory equals the reference, which applies it exactly once."""
    params, grads = params_and_grads(6, seed=4)
    for spec in (uniopt.AdamW(lr=0.01, weight_decay=0.3), uniopt.Adam(lr=0.01, weight_decay=0.3)):
        opt = ut.from_spec(spec)
        assert opt.weight_decay == 0.3 and opt.get_config()["weight_decay"] == 0.3
        assert_trajectories(_trajectory(opt, grads, params), reference(spec, params, grads))
    assert ut.Adam(weight_decay=None).spec.weight_decay == 0.0  # Keras's "none"


def test_exclude_from_weight_decay_uses_the_spec_without_decay():
    spec = uniopt.AdamW(lr=0.01, weight_decay=0.3)
    params, grads = params_and_grads(6, seed=5, shapes=((3, 2), (2,)))
    kernel, bias = tf.Variable(params[0], name="kernel"), tf.Variable(params[1], name="bias")
    opt = ut.from_spec(spec)
    opt.exclude_from_weight_decay(var_names=["bias"])
    step = make_step(opt, [kernel, bias], "function")
    for g in grads:
        step([tf.constant(x) for x in g])
    decayed = reference(spec, params[:1], [g[:1] for g in grads])[-1][0][0]
    plain = reference(spec.replace(weight_decay=0.0), params[1:], [g[1:] for g in grads])[-1][0][0]
    assert bits_equal(kernel.numpy(), decayed) and bits_equal(bias.numpy(), plain)


def test_clipvalue_clipnorm_and_global_clipnorm_clip_once_before_the_spec():
    from keras.src.optimizers.base_optimizer import clip_by_global_norm

    spec = uniopt.RAdam(lr=0.01)
    params, grads = params_and_grads(7, seed=6)
    big = [[3.0 * g for g in step] for step in grads]
    clipped_value = [[np.clip(g, -0.5, 0.5) for g in step] for step in big]
    assert_trajectories(
        _trajectory(ut.from_spec(spec, clipvalue=0.5), big, params), reference(spec, params, clipped_value)
    )
    by_norm = [[tf.clip_by_norm(g, 1.0).numpy() for g in step] for step in big]
    assert_trajectories(
        _trajectory(ut.from_spec(spec, clipnorm=1.0), big, params), reference(spec, params, by_norm)
    )
    by_global = [
        [t.numpy() for t in clip_by_global_norm([tf.constant(g) for g in step], 1.0)] for step in big
    ]
    assert_trajectories(
        _trajectory(ut.from_spec(spec, global_clipnorm=1.0), big, params), reference(spec, params, by_global)
    )


def test_loss_scale_factor_unscales_the_gradients():
    """Keras divides the gradients by the factor before the update: exact for a power of two."""
    spec = uniopt.Adam(lr=0.01)
    params, grads = params_and_grads(6, seed=7)
    opt = ut.from_spec(spec, loss_scale_factor=1024.0)
    assert float(opt.scale_loss(tf.constant(2.0))) == 2048.0
    got = _trajectory(opt, grads, params, feed=lambda g: g * np.float32(1024.0))
    assert_trajectories(got, reference(spec, params, grads))


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_gradient_accumulation_averages_and_counts_real_updates(mode):
    """With gradient_accumulation_steps=2 every second apply updates with the mean gradient, and
    the spec's step count (bias corrections, RAdam's rectification) counts updates, not applies."""
    spec = uniopt.RAdam(lr=0.01)
    params, grads = params_and_grads(16, seed=8)
    got = _trajectory(ut.from_spec(spec, gradient_accumulation_steps=2), grads, params, mode=mode)
    means = [
        [(a + b) / np.float32(2) for a, b in zip(grads[i], grads[i + 1], strict=True)]
        for i in range(0, 16, 2)
    ]
    want = reference(spec, params, means)
    assert_trajectories(got[1::2], want)
    for before, during in zip([(params, None), *got[1::2]], got[0::2], strict=False):
        for p, q in zip(before[0], during[0], strict=True):
            assert bits_equal(p, q)  # odd applies only accumulate


def test_use_ema_leaves_the_update_alone_and_keeps_averages():
    spec = uniopt.SGD(lr=0.05, momentum=0.9)
    params, grads = params_and_grads(5, seed=9)
    opt = ut.from_spec(spec, use_ema=True, ema_momentum=0.5)
    variables = [tf.Variable(p) for p in params]
    step = make_step(opt, variables, "function")
    got = []
    for g in grads:
        step([tf.constant(x) for x in g])
        got.append(snapshot(opt, variables))
    assert_trajectories(got, reference(spec, params, grads))
    averages = [a.numpy() for a in opt._model_variables_moving_average]
    assert not bits_equal(averages[0], variables[0].numpy())
    opt.finalize_variable_values(variables)
    for a, v in zip(averages, variables, strict=True):
        assert bits_equal(a, v.numpy())


# -- construction ---------------------------------------------------------------------------------
def _keras_error_inputs():
    for info in table_for("tf"):
        cls = getattr(ut, info.name)
        for i, err in enumerate(info.error_cases):
            spec_kwargs = dict(err.kwargs)
            # the table's inputs are the spec's, with the spec's default convention where none is
            # named; a class whose default is Keras's (Muon) is given it
            spec_kwargs.setdefault("convention", "uniopt")
            kwargs = cls.to_keras_kwargs(spec_kwargs)
            if _split_wrongly(cls, spec_kwargs):  # a triple of the wrong length has no Keras spelling
                kwargs = spec_kwargs
            yield pytest.param(cls, kwargs, err.match, id=f"{info.name}-{i}-{'-'.join(kwargs)}")


def _split_wrongly(cls, spec_kwargs) -> bool:
    """Whether a field Keras takes entry by entry (Muon's ns_coefficients: muon_a, muon_b, muon_c)
    is given with another number of entries."""
    for field, value in spec_kwargs.items():
        entries = [k for k, v in cls.KERAS_NAMES.items() if v.startswith(f"{field}[")]
        if entries and isinstance(value, tuple) and len(value) != len(entries):
            return True
    return False


# error inputs of the table that have no Keras spelling: a non-pair ``betas`` (Keras takes beta_1
# and beta_2 separately), Adafactor's non-pair ``eps`` (Keras's epsilon_1 and epsilon_2); passing
# the pair itself is refused as an unknown argument instead
UNTRANSLATABLE = {"betas"}


def _untranslatable(cls) -> set[str]:
    """The spec fields ``cls`` takes only entry by entry under Keras names (``betas``)."""
    split = {v.split("[")[0] for v in cls.KERAS_NAMES.values() if "[" in v}
    return UNTRANSLATABLE | split


@pytest.mark.parametrize(("cls", "kwargs", "match"), list(_keras_error_inputs()))
def test_bad_hyperparameters_raise_the_cores_message(cls, kwargs, match):
    if _untranslatable(cls) & set(kwargs):
        with pytest.raises(ValueError, match=r"not recognized"):
            cls(**kwargs)
        return
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_errors_name_the_keras_argument():
    with pytest.raises(ValueError, match=r"betas\[0\]=1\.0 is out of range.*argument beta_1"):
        ut.Adam(beta_1=1.0)
    with pytest.raises(ValueError, match=r"alpha=1\.0 is out of range.*argument rho"):
        ut.RMSprop(rho=1.0)
    with pytest.raises(ValueError, match=r"lr=-0\.1 is out of range.*argument learning_rate"):
        ut.SGD(learning_rate=-0.1)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_defaults_are_the_specs(cls):
    """The signature's defaults are the spec's fields' (``CONVENTION_DEFAULT``: the chosen
    convention's), the convention the row's (uniopt's, Keras's for Muon)."""
    keras_base = set(inspect.signature(BaseOptimizer.__init__).parameters) - {
        "learning_rate",
        "weight_decay",
    }
    defaults = {  # CONVENTION_DEFAULT is the spec's None: the chosen convention's default
        name: None if p.default is CONVENTION_DEFAULT else p.default
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and name not in keras_base
        and name not in cls.KERAS_INERT  # Keras flags without a spec field (relative_step)
        and name not in getattr(cls, "KERAS_ROUTING", {})  # Muon's exclude_layers, exclude_embeddings
    }
    info = next(i for i in TABLE if i.spec is cls.spec_class)
    convention = info.keras.default_convention or "uniopt"
    spec_defaults = {f.name: f.default for f in dataclasses.fields(cls.spec_class)}
    spec_defaults["convention"] = convention
    # an argument whose None means a setting (Muon's adam_weight_decay=None: no decay) left at the
    # convention's default is that default, not None's setting
    left = {n for n, v in defaults.items() if v is None and n in cls.KERAS_NONE_MEANS}
    translated = cls.to_spec_kwargs({k: v for k, v in defaults.items() if k not in left})
    translated.update({cls.KERAS_NAMES.get(n, n): None for n in left})
    for name, value in translated.items():  # a pair Keras splits, every entry the convention's
        if isinstance(value, tuple) and value and all(v is None for v in value):
            translated[name] = None
    assert translated == spec_defaults
    assert cls().spec == cls.spec_class(convention=convention)


def test_the_name_mapping_round_trips_every_case():
    for info in table_for("tf"):
        for case in info.cases:
            spec = info.make(case)
            keras_kwargs = ut.to_keras_kwargs(spec.hyperparameters, info.name)
            cls = ut.from_spec(spec).__class__
            assert keras_kwargs == cls.to_keras_kwargs(spec.hyperparameters)
            assert set(keras_kwargs).isdisjoint(v for k, v in cls.KERAS_NAMES.items() if k != v)
            assert ut.to_spec_kwargs(keras_kwargs, type(spec)) == spec.hyperparameters
            assert ut.from_spec(spec).spec == spec


def test_hyperparameters_are_fixed_but_learning_rate_is_settable():
    opt = ut.Adam(learning_rate=0.01, beta_1=0.8)
    assert opt.beta_1 == 0.8 and opt.epsilon == 1e-8
    for name in ("beta_1", "epsilon", "amsgrad", "weight_decay"):
        with pytest.raises(AttributeError, match=re.escape(f"{name} is fixed at construction")):
            setattr(opt, name, 0.5)
    opt.learning_rate = 0.02
    assert float(opt.learning_rate.numpy()) == 0.02 and opt.learning_rate.dtype == "float64"


def test_unknown_arguments_are_refused():
    with pytest.raises(ValueError, match="not recognized"):
        ut.RAdam(betas=(0.9, 0.99))
    with pytest.raises(ValueError, match="not recognized"):
        ut.SGD(lr=0.1)


# -- generated from the table ---------------------------------------------------------------------
def _row_parameters(info):
    """What the row says the signature is: Keras's own arguments, the base ones, then every other
    spec field keyword-only (by its Keras name where the row renames it)."""
    base = [
        n
        for n, p in inspect.signature(BaseOptimizer.__init__).parameters.items()
        if p.kind is p.POSITIONAL_OR_KEYWORD and n not in ("self", "learning_rate", "weight_decay")
    ]
    names = info.keras.all_names
    keyword_only = []
    keras_positional = (*info.keras.positional, *info.keras.positional_after_base)
    for field in dataclasses.fields(info.spec):
        renamed = [k for k, v in names.items() if v.split("[")[0] == field.name]
        keyword_only += [n for n in renamed or [field.name] if n not in keras_positional]
    return [*info.keras.positional, *base, *info.keras.positional_after_base], keyword_only


@pytest.mark.parametrize("info", [i for i in TABLE if i.keras is not None], ids=lambda i: i.name)
def test_every_row_with_keras_names_is_an_exported_class_with_the_rows_signature(info):
    cls = getattr(ut, info.keras.native or info.name)
    assert cls is getattr(ut, info.name) and cls.spec_class is info.spec  # NAdam is Nadam
    assert info.name in ut.__all__ and cls.__name__ in ut.__all__ and cls.__name__ in ut.OPTIMIZERS
    params = inspect.signature(cls).parameters.values()
    positional = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
    keyword_only = [p.name for p in params if p.kind is p.KEYWORD_ONLY]
    assert (positional, keyword_only) == _row_parameters(info)
    assert keras.saving.get_registered_name(cls) == f"uniopt>{cls.__name__}"
    assert keras.saving.get_registered_object(f"uniopt>{cls.__name__}") is cls
    assert cls.keras_checks_float == tuple(info.keras.checks_float)
    assert f"uniopt.{info.name}" in cls.__doc__ and (info.spec.reference or "") in cls.__doc__
    if info.keras.native:  # the same positional names as Keras's own class
        native = inspect.signature(getattr(keras.optimizers, info.keras.native)).parameters.values()
        assert positional == [p.name for p in native if p.kind is p.POSITIONAL_OR_KEYWORD]


def test_names_are_per_optimizer():
    """RMSprop's rho is the spec's alpha, Adadelta's rho is rho: one global table could not say both."""
    assert ut.to_spec_kwargs({"rho": 0.5, "epsilon": 0.1}, "RMSprop") == {"alpha": 0.5, "eps": 0.1}
    assert ut.to_spec_kwargs({"rho": 0.5, "epsilon": 0.1}, ut.Adadelta) == {"rho": 0.5, "eps": 0.1}
    assert ut.to_keras_kwargs({"alpha": 0.5}, uniopt.RMSprop()) == {"rho": 0.5}
    assert ut.Adadelta.to_keras_kwargs({"rho": 0.5}) == {"rho": 0.5}
    assert ut.to_spec_kwargs({"beta_1": 0.8, "beta_2": 0.9}) == {"betas": (0.8, 0.9)}  # the shared names
    assert ut.RMSprop(rho=0.5).spec.alpha == 0.5 and ut.Adadelta(rho=0.5).spec.rho == 0.5
    with pytest.raises(ValueError, match=r"no uniopt\.tf optimizer named 'Nope'"):
        ut.to_spec_kwargs({}, "Nope")


def test_a_new_row_becomes_a_working_class_without_adapter_code():
    """A spec and its KerasNames alone give a Keras optimizer: signature, validation, config round
    trip and steps bitwise against the NumPy core."""
    from uniopt.registry import KerasNames, OptimizerInfo
    from uniopt.tf.optimizers import _make_class

    @dataclasses.dataclass(frozen=True)
    class ToyLion(uniopt.Lion):
        name = "ToyLion"

    info = OptimizerInfo(
        ToyLion, cases=(), error_cases=(), keras=KerasNames(None, ("learning_rate", "beta_1"))
    )
    cls = _make_class(info)
    assert str(inspect.signature(cls)).startswith(
        "(learning_rate=<the convention's default>, beta_1=0.9, clipnorm"
    )
    assert "*, beta_2=0.99, weight_decay=<the convention's default>, maximize=False" in str(
        inspect.signature(cls)
    )
    opt = cls(0.01, 0.8, beta_2=0.95, weight_decay=0.1)
    assert opt.spec == ToyLion(lr=0.01, betas=(0.8, 0.95), weight_decay=0.1)
    assert cls.from_config(opt.get_config()).spec == opt.spec
    with pytest.raises(ValueError, match=r"argument beta_1"):
        cls(beta_1=-1.0)
    params, grads = params_and_grads(5, seed=4)
    variables = [tf.Variable(p) for p in params]
    step = make_step(opt, variables, "function")
    got = []
    for g in grads:
        step([tf.constant(x) for x in g])
        got.append(snapshot(opt, variables))
    assert_trajectories(got, reference(opt.spec, params, grads))


def test_every_row_runs_and_only_an_optax_schedule_free_declares_xla_refused():
    """Every row of the table is a uniopt.tf optimizer (Muon too: the namespace's matmul,
    matrix_transpose and bfloat16); only ScheduleFreeAdamW's optax convention declares XLA refused
    (a float32 history computed on the host; the other specs' scalars are tabulated or computed
    in-graph), which tests/tf_adapter/test_tf_schedule_free.py checks."""
    assert [info.name for info in TABLE if info not in table_for("tf")] == []
    assert isinstance(ut.from_spec(uniopt.Muon(convention="keras")), ut.Muon)
    refused = {info.name for info in table_for("tf") if info.skip_reason("tf", "xla")}
    assert refused == set()
    schedule_free = get("ScheduleFreeAdamW")
    refused_cases = {c.desc for c in schedule_free.cases if schedule_free.skip_reason("tf", "xla", c.desc)}
    assert refused_cases == {c.desc for c in schedule_free.cases if c.kwargs.get("convention") == "optax"}
    assert refused_cases == {"optax", "optax_defaults"}
    assert isinstance(ut.from_spec(uniopt.ScheduleFreeAdamW()), ut.ScheduleFreeAdamW)
