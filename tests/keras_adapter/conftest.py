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


def pytest_addoption(parser):
    parser.addoption(
        "--torch-compile-all",  # keras_helpers.TORCH_COMPILE_ALL
        action="store_true",
        help="on Keras's torch backend, compile every fit(jit_compile=True) row: test_rows.py's "
        "every convention (by default one case per optimizer) and test_native.py's Keras-own "
        "optimizers (by default none); about 20 s of inductor per compile",
    )


def pytest_configure(config):
    # Keras's TF backend calls np.array on tensors the NumPy 2 way it warns about; not ours
    config.addinivalue_line(
        "filterwarnings", "ignore:__array__ implementation doesn't accept:DeprecationWarning"
    )


if BACKEND == "torch":
    import pytest

    @pytest.fixture(autouse=True)
    def _compile_afresh():
        """``fit(jit_compile=True)`` compiles for real in every test. Keras's torch trainer compiles
        one function shared by every model, so past dynamo's recompile limit (8 per worker) a
        test's train step would silently run eagerly: each test starts from an empty dynamo cache,
        and hitting the limit is an error. Inductor rounds every cast as eager torch does
        (``emulate_precision_casts``, as docs/keras.md asks of a bitwise compiled step and the
        conformance suite's torch@compile sets); without it inductor keeps float32 where the rule
        rounds to bfloat16 (Muon's torch convention)."""
        import torch

        torch._dynamo.reset()
        with (
            torch._dynamo.config.patch(fail_on_recompile_limit_hit=True),
            torch._inductor.config.patch(emulate_precision_casts=True),
        ):
            yield
