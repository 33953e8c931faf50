"""Process-wide settings for the uniopt.keras tests, which run once per Keras backend, each in its own
venv and process: ``KERAS_BACKEND=tensorflow|jax|torch pytest tests/keras_adapter`` (Keras reads
its backend at its first import; nothing here is parametrized by backend). On TensorFlow, XLA runs
under the bitwise flags of docs/tf.md (read at its first compilation), as in tests/tf_adapter.
"""

from __future__ import annotations

import importlib.util
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BACKEND = os.environ.setdefault("KERAS_BACKEND", "tensorflow")

if BACKEND == "tensorflow" and importlib.util.find_spec("tensorflow") is not None:
    from uniopt.tf.xla import request_bitwise_xla

    request_bitwise_xla()


def pytest_configure(config):
    # Keras's TF backend calls np.array on tensors the NumPy 2 way it warns about; not ours
    config.addinivalue_line(
        "filterwarnings", "ignore:__array__ implementation doesn't accept:DeprecationWarning"
    )
