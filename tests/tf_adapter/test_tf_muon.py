"""uniopt.tf.Muon: keras.optimizers.Muon's signature, routing, slots and steps; saving, errors.

Expected values: ``keras.optimizers.Muon`` itself (its signature, its variables, its steps at its
defaults, with ``exclude_layers``, ``exclude_embeddings`` and ``adam_lr_ratio``), Keras's rule
written out by hand in float64 for a row matrix (whose Newton-Schulz iteration is a scalar
polynomial), and the core's NumPy run of the same spec with ``matmul="exact"`` (the products summed
in one defined order, so that every backend gives the same bits).
"""

from __future__ import annotations

import inspect
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from tf_helpers import (
    assert_trajectories,
    bits_equal,
    make_step,
    max_ulp,
    params_and_grads,
    reference,
    snapshot,
)

import uniopt
import uniopt.tf as ut
from uniopt.registry import NATIVE_TOLERANCES, get

INFO = get("Muon")
KERAS_ULP = NATIVE_TOLERANCES["Muon"]["keras"][0]
"""Keras's Frobenius norm sums in TensorFlow's order (the spec pairwise): the native row's bound."""


def _model(embedding: bool = True) -> keras.Model:
    """An Embedding (2-D, path ``emb/embeddings``), Flatten, Dense ``hidden`` (kernel 2-D, bias
    1-D) and Dense ``last``; the same initial weights every call."""
    keras.utils.set_random_seed(0)
    if embedding:
        inputs = keras.Input((5,), dtype="int32")
        x = keras.layers.Flatten()(keras.layers.Embedding(10, 6, name="emb")(inputs))
    else:
        inputs = keras.Input((30,))
        x = inputs
    x = keras.layers.Dense(8, name="hidden")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="last")(x))


def _run(opt, model, steps: int, seed: int = 0, fn=None):
    """``steps`` applies of seeded gradients; returns every variable's value after each step."""
    variables = model.trainable_variables
    opt.build(variables)
    rng = np.random.default_rng(seed)
    grads = [[rng.standard_normal(v.shape).astype(v.dtype) for v in variables] for _ in range(steps)]
    apply = fn(opt, variables) if fn else (lambda g: opt.apply(g, variables))
    out = []
    for g in grads:
        apply([tf.constant(x) for x in g])
        out.append([v.numpy().copy() for v in variables])
    return out


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    scale = max(float(np.max(np.abs(b))), np.finfo(b.dtype).tiny) if b.size else 1.0
    return float(np.max(np.abs(a - b))) / scale if b.size else 0.0


# -- signature and routing ---------------------------------------------------------------------------
def test_signature_defaults_and_order_are_kerass():
    ours = inspect.signature(ut.Muon).parameters
    theirs = inspect.signature(keras.optimizers.Muon).parameters
    positional = [n for n, p in ours.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == [n for n in theirs if n != "kwargs"]
    assert {n for n, p in ours.items() if p.kind is p.KEYWORD_ONLY} == {
        "eps",
        "adjust_lr_fn",
        "matmul",
        "convention",
        "adam_2d",
    }
    for name in positional:
        if not isinstance(ours[name].default, type(ut.optimizers.CONVENTION_DEFAULT)):
            assert ours[name].default == theirs[name].default, name
    # the defaults are Keras's: its convention, its values (float32, as Keras holds them)
    assert ut.Muon().spec == uniopt.Muon(convention="keras")
    spec = ut.Muon().spec
    assert spec.lr == float(np.float32(1e-3)) and spec.weight_decay == float(np.float32(0.004))
    assert spec.adam_weight_decay == float(np.float32(0.004)) and spec.adam_eps == 1e-7
    assert spec.adjust_lr_fn == "match_rms_adamw" and spec.rms_rate == 0.2 and spec.adam_lr_ratio == 1
    # Keras's positional order, base arguments in the middle: the same attributes as Keras's
    args = (
        0.01,
        0.8,
        0.99,
        0.01,
        1e-6,
        0.02,
        None,
        None,
        None,
        False,
        0.99,
        None,
        None,
        None,
        "m",
        ["last"],
        False,
        3.0,
        -4.0,
        2.0,
        0.5,
        0.9,
        4,
        False,
        None,
    )
    opt, theirs = ut.Muon(*args), keras.optimizers.Muon(*args)
    for name in ("adam_beta_1", "epsilon", "exclude_layers", "exclude_embeddings", "muon_b", "momentum"):
        assert getattr(opt, name) == getattr(theirs, name), name
    for name in ("adam_lr_ratio", "ns_steps", "nesterov", "rms_rate", "name", "use_ema"):
        assert getattr(opt, name) == getattr(theirs, name), name
    assert opt.spec == uniopt.Muon(
        lr=0.01,
        adam_betas=(0.8, 0.99),
        adam_weight_decay=0.01,
        adam_eps=1e-6,
        weight_decay=0.02,
        ns_coefficients=(3.0, -4.0, 2.0),
        adam_lr_ratio=0.5,
        momentum=0.9,
        ns_steps=4,
        nesterov=False,
        adjust_lr_fn="none",
        convention="keras",
    )
    assert opt.name == "m" and opt.exclude_layers == ["last"] and opt.exclude_embeddings is False
    assert opt.rms_rate is None and opt.muon_a == 3.0 and opt.epsilon == 1e-6


def test_should_use_adamw_is_kerass_decision():
    model = _model()
    paths = [v.path for v in model.trainable_variables]
    assert paths == ["emb/embeddings", "hidden/kernel", "hidden/bias", "last/kernel", "last/bias"]
    for kwargs in (
        {},
        {"exclude_layers": ["last"]},
        {"exclude_embeddings": False},
        {"exclude_layers": ["k.r"]},
    ):
        ours, theirs = ut.Muon(**kwargs), keras.optimizers.Muon(**kwargs)
        got = [ours._should_use_adamw(v) for v in model.trainable_variables]
        assert got == [theirs._should_use_adamw(v) for v in model.trainable_variables], kwargs
    assert [ut.Muon()._should_use_adamw(v) for v in model.trainable_variables] == [
        True,
        False,
        True,
        False,
        True,
    ]


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"exclude_layers": ["last"]},
        {"exclude_embeddings": False},
        {"adam_lr_ratio": 0.1, "exclude_layers": ["ast"]},
    ],
    ids=["defaults", "exclude_layers", "embedding_muon", "adam_lr_ratio"],
)
def test_steps_and_variables_are_keras_muons(kwargs):
    """keras.optimizers.Muon(learning_rate=0.01, **kwargs) and uniopt.tf.Muon, eagerly, 6 steps of the
    same gradients: the same optimizer variables (names and order: a momentum for every variable, a
    velocity only for those stepped with Adam), bit for bit for the variables stepped with Adam and
    for every momentum and velocity; a matrix stepped with Muon within the native row's bound
    (Keras's Frobenius norm sums in TensorFlow's order, the spec's pairwise)."""
    ours, theirs = ut.Muon(learning_rate=0.01, **kwargs), keras.optimizers.Muon(learning_rate=0.01, **kwargs)
    model_a, model_b = _model(), _model()
    got, want = _run(ours, model_a, 6), _run(theirs, model_b, 6)
    strip = lambda v: v.path.split("/", 1)[1]  # noqa: E731  # the optimizers' own names differ
    assert [strip(v) for v in ours.variables] == [strip(v) for v in theirs.variables]
    for a, b in zip(ours.variables, theirs.variables, strict=True):
        if "momentum" in a.path or "velocity" in a.path:
            assert bits_equal(a.numpy(), b.numpy()), a.path
    routed = [theirs._should_use_adamw(v) for v in model_b.trainable_variables]
    for step_got, step_want in zip(got, want, strict=True):
        for adam, g, w, v in zip(routed, step_got, step_want, model_a.trainable_variables, strict=True):
            if adam:
                assert bits_equal(g, w), v.path
            else:
                assert max_ulp(g, w) <= KERAS_ULP, v.path
    assert int(ours.iterations.numpy()) == 6


def test_exclude_from_weight_decay_skips_both_decays_as_keras():
    """Keras's _apply_weight_decay skips a variable excluded from weight decay for both its
    weight_decay and its adam_weight_decay."""
    runs = []
    for cls in (ut.Muon, keras.optimizers.Muon):
        opt = cls(learning_rate=0.05, weight_decay=0.5, adam_weight_decay=0.25)
        opt.exclude_from_weight_decay(var_names=["bias", "emb"])
        runs.append(_run(opt, _model(), 4))
    routed = [opt._should_use_adamw(v) for v in _model().trainable_variables]
    assert routed == [True, False, True, False, True]
    for adam, g, w in zip(routed, runs[0][-1], runs[1][-1], strict=True):
        assert bits_equal(g, w) if adam else max_ulp(g, w) <= KERAS_ULP
    plain = _run(ut.Muon(learning_rate=0.05, weight_decay=0.5, adam_weight_decay=0.25), _model(), 4)
    assert not bits_equal(plain[-1][2], runs[0][-1][2])  # the bias was decayed without the exclusion


def test_keras_own_single_step_values():
    """keras/src/optimizers/muon_test.py's test_muon_single_step: its expected values (rtol 1e-2)."""
    opt = ut.Muon(learning_rate=0.5, weight_decay=0)
    variable = keras.Variable([[1.0, 2.0], [3.0, 4.0]])
    opt.build([variable])
    opt.update_step(tf.constant([[1.0, 6.0], [7.0, 2.0]]), variable, 0.5)
    np.testing.assert_allclose(
        variable.numpy(), [[0.988775, 1.887053], [2.873428, 3.97035]], rtol=1e-2, atol=1e-2
    )


# -- by hand, float64 ------------------------------------------------------------------------------------
def _hand_muon_row(p, m, g, lr, wd, mu, shape):
    """keras.optimizers.Muon on a row matrix in float64, by hand: _apply_weight_decay, the summed
    momentum, Nesterov, x / (|x| + 1e-7), Newton-Schulz on the 1x1 Gram matrix, lr_adjust with
    Keras's float32 root of max(A, B) and rms_rate 0.2."""
    a, b, c = 3.4445, -4.7750, 2.0315
    p = [pi - pi * wd * lr for pi in p]
    m = [mi + (gi + mi * (mu - 1)) for mi, gi in zip(m, g, strict=True)]
    u = [gi + mu * mi for mi, gi in zip(m, g, strict=True)]
    norm = math.sqrt(sum(v * v for v in u))
    x = [v / (norm + 1e-7) for v in u]
    for _ in range(5):
        s = sum(v * v for v in x)
        x = [v * (a + b * s + c * s * s) for v in x]
    scale = float(np.float32(math.sqrt(max(shape)))) * 0.2
    return [pi - lr * xi * scale for pi, xi in zip(p, x, strict=True)], m


def test_float64_row_matrix_by_hand_where_keras_fails():
    """A float64 1x4 matrix: Keras's Muon cannot step it (its float32 learning rate times the
    float64 update: TensorFlow refuses), uniopt.tf.Muon runs Keras's rule, equal to the hand
    computation to 1e-12 over 4 steps; a float64 vector takes the Adam step in both, bit for bit."""
    theirs = keras.optimizers.Muon(learning_rate=0.01)
    bad = keras.Variable(np.ones((1, 4)), dtype="float64")
    theirs.build([bad])
    with pytest.raises(tf.errors.InvalidArgumentError):
        theirs.apply([tf.ones((1, 4), tf.float64)], [bad])
    p0 = [1.0, -2.0, 0.5, 0.25]
    variable = keras.Variable(np.array([p0]), dtype="float64")
    opt = ut.Muon(learning_rate=0.01)
    rng = np.random.default_rng(7)
    p, m = list(p0), [0.0] * 4
    for _ in range(4):
        g = list(rng.standard_normal(4))
        opt.apply([tf.constant([g], tf.float64)], [variable])
        p, m = _hand_muon_row(p, m, g, opt.spec.lr, opt.spec.weight_decay, 0.95, (1, 4))
        np.testing.assert_allclose(variable.numpy()[0], p, rtol=1e-12, atol=0)
        np.testing.assert_allclose(opt.slots(variable)["momentum_buffer"].numpy()[0], m, rtol=1e-12, atol=0)
    assert opt.slots(variable)["exp_avg_sq"] is None  # no velocity for a matrix stepped with Muon
    vectors = [keras.Variable(np.array(p0), dtype="float64") for _ in range(2)]
    both = [
        ut.Muon(learning_rate=0.01, adam_lr_ratio=0.3),
        keras.optimizers.Muon(learning_rate=0.01, adam_lr_ratio=0.3),
    ]
    for o, v in zip(both, vectors, strict=True):
        o.build([v])
        for g in np.random.default_rng(8).standard_normal((4, 4)):
            o.apply([tf.constant(g)], [v])
    assert bits_equal(vectors[0].numpy(), vectors[1].numpy())


# -- modes against the NumPy reference -----------------------------------------------------------------
@pytest.mark.parametrize("mode", ["eager", "function", "function_returning", "xla"])
def test_exact_products_are_the_numpy_reference_bit_for_bit(mode):
    """matmul="exact" (the products summed in one defined order): every parameter, momentum and
    velocity equals the core's NumPy run, float32, in every mode (XLA with uniopt.tf.xla's flags,
    which tests/tf_adapter/conftest.py sets; a ``tf.function`` that returns values, where
    grappler would move the shape scale into ``lr * x`` but for uniopt.tf.xp's guard); a 2-D
    variable excluded by path takes the Adam step as the core's adam_2d=True spec does."""
    shapes = ((4, 3), (5,), (), (2, 6), (3, 1))
    params, grads = params_and_grads(8, seed=5, shapes=shapes)
    variables = [
        keras.Variable(p, name=n) for p, n in zip(params, ["w", "b", "s", "out", "col"], strict=True)
    ]
    opt = ut.Muon(learning_rate=0.02, exclude_layers=["out"], matmul="exact", adam_lr_ratio=0.3)
    step = make_step(opt, variables, mode)
    got = []
    for g in grads:
        step([tf.constant(x) for x in g])
        got.append(snapshot(opt, variables))
    spec = opt.spec
    routed = spec.replace(adam_2d=True)
    want = reference(spec, [params[i] for i in (0, 1, 2, 4)], [[g[i] for i in (0, 1, 2, 4)] for g in grads])
    want_out = reference(routed, [params[3]], [[g[3]] for g in grads])
    merged = [
        ([*w[0][:3], wo[0][0], w[0][3]], [*w[1][:3], wo[1][0], w[1][3]])
        for w, wo in zip(want, want_out, strict=True)
    ]
    assert_trajectories(got, merged)
    assert [opt.slots(v)["exp_avg_sq"] is None for v in variables] == [True, False, False, False, True]


# -- training, saving --------------------------------------------------------------------------------
def test_model_fit_as_kerass(tmp_path):
    """model.fit with a small Dense model and exclude_layers=["last"], as keras/src/optimizers/
    muon_test.py's test_model_fit: the loss falls, and the weights stay within Keras's own run's
    bound; the .keras file restores the optimizer (routing, variables) and training continues bit
    for bit as if uninterrupted."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 30)).astype("float32")
    y = (x[:, :3] * 2.0).astype("float32")
    trained = []
    for cls in (ut.Muon, keras.optimizers.Muon):
        model = _model(embedding=False)
        model.compile(optimizer=cls(learning_rate=0.02, exclude_layers=["last"]), loss="mse")
        history = model.fit(x, y, epochs=3, batch_size=16, shuffle=False, verbose=0)
        assert history.history["loss"][-1] < history.history["loss"][0]
        trained.append(model)
    for a, b in zip(trained[0].weights, trained[1].weights, strict=True):
        assert _rel(a.numpy(), b.numpy()) <= 1e-5, a.path
    model = trained[0]
    path = tmp_path / "muon.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.optimizer) is ut.Muon and loaded.optimizer.exclude_layers == ["last"]
    assert loaded.optimizer.spec == model.optimizer.spec
    assert [v.path for v in loaded.optimizer.variables] == [v.path for v in model.optimizer.variables]
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables, strict=True):
        assert bits_equal(a.numpy(), b.numpy()), a.path
    model.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    loaded.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    for a, b in zip(
        model.weights + model.optimizer.variables, loaded.weights + loaded.optimizer.variables, strict=True
    ):
        assert bits_equal(a.numpy(), b.numpy()), a.path


def test_config_round_trips_routing_and_rms_rate_none():
    opt = ut.Muon(
        learning_rate=0.5,
        epsilon=1e-5,
        exclude_layers=["last", "head$"],
        exclude_embeddings=False,
        rms_rate=None,
    )
    config = opt.get_config()
    assert config["exclude_layers"] == ["last", "head$"] and config["exclude_embeddings"] is False
    assert config["rms_rate"] is None and "adjust_lr_fn" not in config
    clone = ut.Muon.from_config(config)
    assert clone.spec == opt.spec and clone.get_config() == config
    assert opt.spec.adjust_lr_fn == "none" and opt.spec.adam_eps == 1e-5
    back = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(opt))
    assert type(back) is ut.Muon and back.exclude_layers == ["last", "head$"] and back.spec == opt.spec
    # adam_weight_decay=None is Keras's "no decay"
    assert ut.Muon(adam_weight_decay=None).spec.adam_weight_decay == 0.0
    with pytest.raises(AttributeError, match="fixed at construction"):
        opt.exclude_layers = ["other"]


# -- porting ------------------------------------------------------------------------------------------
def test_porting_from_and_to_keras_muon_bit_for_bit():
    """from_keras reads Keras's momentums and adam_velocities (None for a Muon-stepped variable:
    zeros in the record), to_keras writes them back bit for bit, and a record continued in
    uniopt.tf.Muon keeps Keras's routing; a nonzero velocity for a variable Keras steps with Muon is
    refused before anything is assigned."""
    model = _model()
    variables = model.trainable_variables
    theirs = keras.optimizers.Muon(learning_rate=0.01, exclude_layers=["last"], rms_rate=None)
    _run(theirs, model, 3)
    record = ut.from_keras(theirs, variables)
    assert record.convention == "keras" and record.step == 3
    assert record.hyperparameters["adjust_lr_fn"] == "none"
    for i, v in enumerate(variables):
        index = theirs._get_variable_index(v)
        assert bits_equal(record.slots[i]["momentum_buffer"], theirs.momentums[index].numpy())
        velocity = theirs.adam_velocities[index]
        expected = np.zeros(v.shape, "float32") if velocity is None else velocity.numpy()
        assert bits_equal(record.slots[i]["exp_avg_sq"], expected)
    ours = ut.Muon(learning_rate=0.01, exclude_layers=["last"], rms_rate=None)
    ut.import_state(ours, record, variables)
    again = keras.optimizers.Muon(learning_rate=0.01, exclude_layers=["last"], rms_rate=None)
    ut.to_keras(ut.export_state(ours, variables), again, variables)
    for a, b in zip(theirs.variables, again.variables, strict=True):
        assert bits_equal(a.numpy(), b.numpy()), a.path
    slots = [dict(s) for s in record.slots]
    slots[1]["exp_avg_sq"] = np.ones_like(slots[1]["exp_avg_sq"])  # hidden/kernel: Muon-stepped
    bad = record.__class__(**{**record.__dict__, "slots": tuple(slots)})
    fresh = keras.optimizers.Muon(learning_rate=0.01, exclude_layers=["last"], rms_rate=None)
    fresh.build(variables)
    before = [v.numpy().copy() for v in fresh.variables]
    with pytest.raises(ValueError, match=r"exp_avg_sq of variable 1 is not zeros"):
        ut.to_keras(bad, fresh, variables)
    assert all(bits_equal(a, v.numpy()) for a, v in zip(before, fresh.variables, strict=True))


# -- errors ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"exclude_layers": "last"}, r"exclude_layers='last' is a string; expected a list"),
        ({"exclude_layers": [3]}, r"exclude_layers holds 3, which is not a string"),
        ({"exclude_layers": ["("]}, r"exclude_layers pattern '\(' is not a regular expression"),
        ({"exclude_layers": {"last"}}, r"exclude_layers=\{'last'\} is not a list"),
        ({"exclude_embeddings": "yes"}, r"exclude_embeddings='yes' is not a bool"),
        ({"exclude_embeddings": 1, "convention": "optax"}, r"exclude_embeddings=1 is not a bool"),
        ({"rms_rate": None, "adjust_lr_fn": "original"}, r"rms_rate=None means adjust_lr_fn='none'"),
        ({"adam_lr_ratio": -1.0}, r"adam_lr_ratio=-1\.0 is out of range.*"),
        ({"muon_a": float("nan")}, r"ns_coefficients\[0\]=nan is not finite.*argument muon_a"),
        ({"epsilon": 0.0}, r"adam_eps=0\.0 is out of range.*argument epsilon"),
        ({"adam_beta_2": 1.0}, r"adam_betas\[1\]=1\.0 is out of range.*argument adam_beta_2"),
        ({"ns_steps": 5.0}, r"ns_steps=5\.0 is out of range; expected an int"),
        ({"learning_rate": 1}, r"Argument `learning_rate` should be float"),
    ],
)
def test_bad_arguments_are_refused_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ut.Muon(**kwargs)


def test_a_variable_routed_to_adam_under_a_convention_without_one_is_refused_before_anything():
    model = _model()
    for kwargs, match in [
        (
            {"convention": "uniopt"},
            r"variable 'emb/embeddings' takes the Adam step \(exclude_embeddings=True",
        ),
        (
            {"convention": "torch", "exclude_embeddings": False, "exclude_layers": ["last"]},
            r"variable 'last/kernel' takes the Adam step \(exclude_layers pattern 'last'",
        ),
        (
            {"convention": "uniopt", "exclude_embeddings": False},
            r"variable 'hidden/bias': a parameter of shape \(8,\)",
        ),
    ]:
        opt = ut.Muon(**kwargs)
        before = [v.path for v in opt.variables]  # iterations and the learning rate
        with pytest.raises(ValueError, match=match):
            opt.build(model.trainable_variables)
        assert not opt.built and [v.path for v in opt.variables] == before
    # without a matrix routed to Adam or a vector, the 2-D-only conventions run
    opt = ut.Muon(learning_rate=0.02, convention="uniopt", exclude_embeddings=False)
    kernel = keras.Variable(np.ones((3, 2), "float32"), name="kernel")
    opt.apply([tf.ones((3, 2))], [kernel])
    assert [v.path.split("/", 1)[1] for v in opt.variables] == [
        "iteration",
        "learning_rate",
        "kernel_momentum",
    ]
