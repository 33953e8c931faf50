"""Run by test_multiworker.py: one of two workers of a ``tf.distribute.MultiWorkerMirroredStrategy``
(``--index 0|1 --ports P0,P1``: ``TF_CONFIG`` on 127.0.0.1, ring all-reduce, one CPU replica each),
or one process alone (``--mirrored``: a ``MirroredStrategy`` over two logical CPU devices, the
same two replicas).

Keras 3.15's ``fit`` fails under ``MultiWorkerMirroredStrategy`` with two workers, twice, before
its first step (keras-team/keras#20585): the worker first records both errors (``fit`` with Keras's
own code, then with the first replacement below only), then replaces the two functions of
``keras.src.backend.tensorflow.trainer`` that fail (:func:`build_from_local_batch`,
:func:`reduce_0d_over_workers`), in both layouts. Neither touches the gradients or the optimizer.

For each optimizer of ``OPTIMIZERS`` it then trains the same small Keras model through ``model.fit``
for ``EPOCHS * STEPS`` steps. Every replica reads its own half of each global batch
(``distribute_datasets_from_function``): replica ``r`` gets rows ``[r * 16, r * 16 + 16)`` of each
global batch of 32, in both layouts, so the two layouts run the same per-replica computation.
Writes the model's weights, the optimizer's variables (and its history, for Schedule-Free AdamW)
and the losses to ``--out`` (``.npz``); worker 0 also saves the model trained with RAdam to
``--save`` (a ``.keras`` file, the optimizer's state included). Exits non-zero on the first failed
check; the test compares the files."""

from __future__ import annotations

import argparse
import json
import os

PER_REPLICA = 16
REPLICAS = 2
STEPS = 5  # per epoch
EPOCHS = 2  # 10 steps: RAdam (beta_2=0.999) takes its first rectified step at step 6
OPTIMIZERS = {
    "radam": "ut.RAdam(learning_rate=2e-2, weight_decay=0.01)",
    "adam": "ut.Adam(learning_rate=2e-2)",
    "schedule_free_adamw": "ut.ScheduleFreeAdamW(learning_rate=2e-2, warmup_steps=3)",
    "keras_adam": "keras.optimizers.Adam(learning_rate=2e-2)",  # Keras's own, as a cross-check
}


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--index", type=int)
    parser.add_argument("--ports")
    parser.add_argument("--mirrored", action="store_true")
    parser.add_argument("--out", required=True)
    parser.add_argument("--save")
    args = parser.parse_args()
    if args.mirrored == (args.index is not None):
        parser.error("give --mirrored or --index with --ports")
    return args


ARGS = parse()
os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if not ARGS.mirrored:
    workers = [f"127.0.0.1:{p}" for p in ARGS.ports.split(",")]
    os.environ["TF_CONFIG"] = json.dumps(
        {"cluster": {"worker": workers}, "task": {"type": "worker", "index": ARGS.index}}
    )
else:
    os.environ.pop("TF_CONFIG", None)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

# one intra-op thread on both sides: no kernel splits a sum by the number of threads
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(2)
if ARGS.mirrored:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * REPLICAS)
    STRATEGY = tf.distribute.MirroredStrategy([f"/cpu:{r}" for r in range(REPLICAS)])
else:
    RING = tf.distribute.experimental.CommunicationImplementation.RING
    STRATEGY = tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(implementation=RING)
    )

import keras  # noqa: E402
from keras.src.backend.tensorflow import trainer as keras_trainer  # noqa: E402

import uniopt.tf as ut  # noqa: E402, F401  (read by the OPTIMIZERS expressions)


def host_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    rows = PER_REPLICA * REPLICAS * STEPS
    x = rng.standard_normal((rows, 8)).astype(np.float32)
    y = rng.integers(0, 3, rows).astype(np.int32)
    return x, y


def replica_rows(replica: int) -> np.ndarray:
    """The rows replica ``replica`` reads, step after step: its half of each global batch."""
    step = np.arange(STEPS)[:, None] * PER_REPLICA * REPLICAS
    return (step + replica * PER_REPLICA + np.arange(PER_REPLICA)).reshape(-1)


def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
    """One input pipeline per worker. A worker of the two-worker run feeds its one replica
    (pipeline ``i`` is replica ``i``); the mirrored run's single pipeline yields the two replicas'
    batches alternately, which MirroredStrategy hands to replicas 0 and 1 in turn."""
    x, y = host_data()
    if context.num_input_pipelines == REPLICAS:
        rows = replica_rows(context.input_pipeline_id)
    else:
        assert context.num_input_pipelines == 1 and context.num_replicas_in_sync == REPLICAS
        rows = np.stack([replica_rows(r).reshape(STEPS, PER_REPLICA) for r in range(REPLICAS)], 1).reshape(-1)
    return tf.data.Dataset.from_tensor_slices((x[rows], y[rows])).batch(PER_REPLICA).repeat()


def replicas_of(variable) -> list[np.ndarray]:
    values = getattr(variable.value, "values", None) or (variable.value,)
    return [np.asarray(v.numpy()) for v in values]


KERAS_BUILD = keras_trainer.TensorFlowTrainer._maybe_symbolic_build
KERAS_REDUCE = keras_trainer.reduce_per_replica


def build_from_local_batch(self, iterator=None, data_batch=None):
    """``TensorFlowTrainer._maybe_symbolic_build`` building from this worker's first batch.

    Keras's own averages the first batch over the replicas (``strategy.reduce("MEAN", (x, y),
    axis=None)``) only to learn its shapes and dtypes, and ``MultiWorkerMirroredStrategy``'s
    ``reduce`` takes no nest of values (``ValueError: Attempt to convert a value (PerReplica:...)
    with an unsupported type ...``; keras-team/keras#20585): every ``fit`` under it fails before
    the first step. The first replica's batch has the same shapes and dtypes."""
    if iterator is not None:
        for _, _, batch_iterator in iterator:
            batch = next(batch_iterator)
            data_batch = tf.nest.map_structure(
                lambda v: v.values[0] if isinstance(v, tf.distribute.DistributedValues) else v, batch
            )
            break
    with self.distribute_strategy.scope():
        self._symbolic_build(data_batch=data_batch)


def reduce_0d_over_workers(values, strategy, reduction):
    """``keras_trainer.reduce_per_replica``, except that under more than one worker the 0-d
    values (the losses and metrics ``fit`` reports) average with ``axis=None``.

    Keras's own averages every value of a multi-worker ``fit`` step with
    ``strategy.reduce("MEAN", v, axis=0)``, which a 0-d loss refuses (``ValueError: Invalid
    reduction dimension 0 for input with 0 dimensions``) when the train function is traced."""
    multi_worker = keras_trainer._collective_all_reduce_multi_worker(strategy)
    if not multi_worker or reduction not in ("auto", "mean"):
        return KERAS_REDUCE(values, strategy, reduction)

    def one(value):
        if strategy.experimental_local_results(value)[0].shape.rank == 0:
            return strategy.reduce("MEAN", value, axis=None)
        return KERAS_REDUCE(value, strategy, reduction)

    return tf.nest.map_structure(one, values)


def patch(build: bool, reduce: bool) -> None:
    """Keras's own build and reduction, or the two replacements above."""
    keras_trainer.TensorFlowTrainer._maybe_symbolic_build = build_from_local_batch if build else KERAS_BUILD
    keras_trainer.reduce_per_replica = reduce_0d_over_workers if reduce else KERAS_REDUCE


def make_model(optimizer: str) -> keras.Model:
    with STRATEGY.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [keras.Input((8,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(3)]
        )
        model.compile(
            optimizer=eval(optimizer), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
    return model


def keras_fit_error(build: bool) -> str:
    """The error of one step of ``fit`` with Keras's own reduction (and build, unless ``build``),
    or ``""`` without one."""
    patch(build=build, reduce=False)
    model = make_model(OPTIMIZERS["keras_adam"])
    try:
        model.fit(
            STRATEGY.distribute_datasets_from_function(dataset_fn), epochs=1, steps_per_epoch=1, verbose=0
        )
    except ValueError as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        patch(build=True, reduce=True)
    return ""


def train(name: str) -> dict[str, np.ndarray]:
    model = make_model(OPTIMIZERS[name])
    data = STRATEGY.distribute_datasets_from_function(dataset_fn)
    history = model.fit(data, epochs=EPOCHS, steps_per_epoch=STEPS, verbose=0)
    out: dict[str, np.ndarray] = {}
    for kind, variables in (("weights", model.weights), ("optimizer", model.optimizer.variables)):
        for i, v in enumerate(variables):  # by position: the paths carry Keras's name counters
            copies = replicas_of(v)
            assert len(copies) == (REPLICAS if ARGS.mirrored else 1), (v.path, len(copies))
            assert all(c.tobytes() == copies[0].tobytes() for c in copies), v.path  # replicas agree
            out[f"{kind}/{i:02d}"] = copies[0]
    out["loss"] = np.asarray(history.history["loss"])
    if hasattr(model.optimizer, "history"):
        out["history"] = np.asarray(list(model.optimizer.history()), np.float64)
    assert int(model.optimizer.iterations.numpy()) == EPOCHS * STEPS
    assert out["loss"][-1] < out["loss"][0], (name, out["loss"])
    if name == "radam" and ARGS.save:
        model.save(ARGS.save)
    return out


def main() -> None:
    assert STRATEGY.num_replicas_in_sync == REPLICAS
    if not ARGS.mirrored:  # the ring across the two workers, one replica each
        assert STRATEGY.extended._communication_options.implementation == RING
        assert len(STRATEGY.extended.worker_devices) == 1
    results = {}
    for label, build in (("keras_fit_error", False), ("keras_fit_error_after_build", True)):
        error = keras_fit_error(build)
        results[label] = np.asarray(error)
        print(f"{label}: {error.splitlines()[0] + ' ... ' + error.splitlines()[-1] if error else 'none'}")
    for name in OPTIMIZERS:
        out = train(name)
        results.update({f"{name}/{k}": v for k, v in out.items()})
        print(f"{name}: loss {out['loss'][0]:.4f} -> {out['loss'][-1]:.4f}", flush=True)
    np.savez(ARGS.out, **results)
    print("OK", flush=True)


if __name__ == "__main__":
    main()
