"""Process-wide settings for the uniopt.tf tests (they run in their own venv and process).

Keras's backend is chosen at its first import, and XLA reads ``XLA_FLAGS`` at its first
compilation, so both are fixed here, before any test imports TensorFlow or compiles anything: the
XLA tests run under the bitwise flags of docs/tf.md (a subprocess test measures XLA's defaults).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# tests/ is on sys.path (tests/conftest.py's folder), where tests/jax and tests/torch would pass for
# the real jax and torch packages as namespace packages: Keras probes `import jax` and would crash
# on the empty one. Those folders are test suites, never modules to import here.
_TESTS = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _TESTS]
for _name in ("jax", "torch"):
    _module = sys.modules.get(_name)
    if _module is not None and getattr(_module, "__file__", None) is None:
        del sys.modules[_name]

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if os.environ.setdefault("KERAS_BACKEND", "tensorflow") != "tensorflow":
    raise RuntimeError("tests/tf need KERAS_BACKEND=tensorflow")

from uniopt.tf.xla import request_bitwise_xla  # noqa: E402 - after the environment above

request_bitwise_xla()


def pytest_configure(config):
    # Keras's TF backend calls np.array on tensors the NumPy 2 way it warns about; not ours
    config.addinivalue_line(
        "filterwarnings", "ignore:__array__ implementation doesn't accept:DeprecationWarning"
    )
