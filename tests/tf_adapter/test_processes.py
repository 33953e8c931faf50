"""Tests that need a process of their own: logical devices (fixed at TensorFlow's start), XLA's
default flags (read at the first compilation), and Keras on another backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import uniopt

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str, env: dict[str, str] | None = None, timeout: int = 300) -> dict:
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT), **(env or {})}
    full_env.pop("XLA_FLAGS", None) if env is None or "XLA_FLAGS" not in env else None
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=ROOT,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _fit_mirrored(optimizer: str) -> dict:
    """Fit a small MLP on the digits for 3 epochs under a MirroredStrategy over two logical CPUs,
    with ``optimizer`` (a Python expression over ``ut``, uniopt.tf), in a fresh process: the
    replica count, the variables whose replicas differ, the losses, the step count, the number of
    optimizer variables and the optimizer's history (``None`` without one)."""
    return _run(
        """
        import json
        import numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import keras, uniopt.tf as ut
        from sklearn.datasets import load_digits

        data = load_digits()
        x, y = (data.data / 16.0).astype(np.float32), data.target.astype(np.int32)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            keras.utils.set_random_seed(0)
            model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"),
                                      keras.layers.Dense(10)])
            model.compile(optimizer=OPTIMIZER,
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = model.fit(x, y, epochs=3, batch_size=128, verbose=0)
        replicas, differ = 0, []
        for v in model.weights + model.optimizer.variables:
            parts = [np.asarray(p.numpy()) for p in v.value.values]
            replicas = max(replicas, len(parts))
            if any(p.tobytes() != parts[0].tobytes() for p in parts):
                differ.append(v.path)
        kept = list(model.optimizer.history()) if hasattr(model.optimizer, "history") else None
        print(json.dumps({"replicas": replicas, "differ": differ, "loss": history.history["loss"],
                          "steps": int(model.optimizer.iterations.numpy()),
                          "slots": len(model.optimizer.variables), "history": kept}))
        """.replace("OPTIMIZER", optimizer)
    )


def test_mirrored_strategy_over_two_cpus_trains_and_replicas_stay_identical():
    result = _fit_mirrored("ut.RAdam(learning_rate=2e-2, weight_decay=0.01)")
    assert result["replicas"] == 2
    assert result["differ"] == []
    assert result["loss"][-1] < 0.9 * result["loss"][0]
    assert result["steps"] == 3 * 15  # 1797 samples in global batches of 128
    assert result["slots"] == 2 + 2 * 4  # iterations, learning_rate, exp_avg and exp_avg_sq of 4


def test_xla_default_flags_drift_and_the_bitwise_flags_are_needed():
    """Without the flags, XLA on CPU contracts FMAs and drops NaN in max: the trajectories drift
    (rounding that compounds over steps), and the probe says XLA is not bitwise."""
    result = _run(
        """
        import json, sys
        sys.path[:0] = ["tests/tf_adapter", "tests"]  # tf_helpers imports tests/trajectories.py
        import numpy as np, tensorflow as tf, uniopt, uniopt.tf as ut
        from uniopt.tf.xla import xla_is_bitwise
        from tf_helpers import params_and_grads, reference, run_adapter, max_ulp

        worst, rel = {}, {}
        specs = (uniopt.RAdam(lr=0.01), uniopt.Adam(lr=0.01, amsgrad=True), uniopt.SGD(lr=0.02, momentum=0.9))
        for spec in specs:
            params, grads = params_and_grads(30, "float32", seed=11)
            got = run_adapter(ut.from_spec(spec), params, grads, "xla")
            want = reference(spec, params, grads)
            pairs = [(g, w) for (gp, _), (wp, _) in zip(got, want) for g, w in zip(gp, wp)]
            worst[spec.name] = max(max_ulp(g, w) for g, w in pairs)
            scale = max(float(np.max(np.abs(w), initial=0)) for _, w in pairs)
            rel[spec.name] = max(float(np.max(np.abs(g - w), initial=0)) for g, w in pairs) / scale
        print(json.dumps({"bitwise": xla_is_bitwise(), "worst": worst, "rel": rel}))
        """,
        env={"XLA_FLAGS": ""},
    )
    assert result["bitwise"] is False
    assert max(result["worst"].values()) > 0, result  # the flags matter for the spec's updates
    # the drift is rounding, not a different algorithm: normwise relative error at float32's level
    assert max(result["rel"].values()) < 1e-5, result


def test_keras_on_another_backend_is_refused_clearly():
    """uniopt.tf runs TF ops, so Keras on JAX or torch is refused at import. (Keras's own numpy
    backend needs jax, absent from this venv, so the backend's answer is patched in.)"""
    result = _run(
        """
        import json
        import keras
        keras.backend.backend = lambda: "jax"
        try:
            import uniopt.tf
        except ImportError as exc:
            print(json.dumps({"error": str(exc)}))
        else:
            print(json.dumps({"error": None}))
        """,
    )
    assert result["error"] and "KERAS_BACKEND=tensorflow" in result["error"] and "'jax'" in result["error"]


def test_schedule_free_under_mirrored_strategy_keeps_one_history():
    """ScheduleFreeAdamW's history variables advance once per step under tf.distribute (each
    replica computes the same host step; the variables aggregate as the first replica's), and the
    replicas stay identical."""
    result = _fit_mirrored("ut.ScheduleFreeAdamW(learning_rate=2e-2, warmup_steps=10)")
    spec = uniopt.ScheduleFreeAdamW(lr=2e-2, warmup_steps=10)
    want = spec.init_history()
    for t in range(1, 46):
        want = spec.history_scalars(t, 2e-2, want)[1]
    assert result["replicas"] == 2
    assert result["differ"] == []
    assert result["loss"][-1] < 0.9 * result["loss"][0]
    assert result["steps"] == 3 * 15
    assert result["history"] == list(want)
