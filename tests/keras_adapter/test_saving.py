"""``.keras`` files written by uniopt.tf before uniopt.keras existed (data/, made by
data/make_saved_by_uniopt_tf.py at a10c66f: registered name ``uniopt>RAdam``, module
``uniopt.tf.optimizers``) load on this process's backend, hold the NumPy reference's state after
their two steps, and train on bitwise as the reference's next steps."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import keras
import pytest
from keras_helpers import snapshot
from trajectories import assert_trajectories, reference

import uniopt.keras as uk

DATA = Path(__file__).resolve().parent / "data"
_spec = importlib.util.spec_from_file_location("make_saved_by_uniopt_tf", DATA / "make_saved_by_uniopt_tf.py")
MAKER = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(MAKER)


@pytest.mark.parametrize("file", sorted(MAKER.FILES))
def test_a_file_saved_by_uniopt_tf_loads_and_trains_on(file):
    name, kwargs = MAKER.FILES[file]
    model = keras.models.load_model(DATA / file)
    opt = model.optimizer
    assert type(opt) is getattr(uk, name)
    spec = getattr(uk, name)(**kwargs).spec
    assert opt.spec == spec
    params, grads = MAKER.inputs(4)
    want = reference(spec, params, grads)
    variables = model.trainable_variables
    saved = MAKER.STEPS_SAVED
    assert int(keras.ops.convert_to_numpy(opt.iterations)) == saved
    assert_trajectories([snapshot(opt, variables)], [want[saved - 1]])
    for step in range(saved, len(grads)):
        opt.apply([keras.ops.convert_to_tensor(g) for g in grads[step]], variables)
        assert_trajectories([snapshot(opt, variables)], [want[step]])
