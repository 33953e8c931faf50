"""docs/keras.md's quick start (Keras on JAX) runs as written: its first Python block, in a fresh
process (it sets ``KERAS_BACKEND`` itself), in the JAX run of this suite."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from keras_helpers import BACKEND

DOC = Path(__file__).resolve().parents[2] / "docs" / "keras.md"

if BACKEND != "jax":
    pytest.skip(
        "docs/keras.md's quick start is Keras on JAX (this run: another backend)", allow_module_level=True
    )


def test_the_quick_start_runs_as_written(tmp_path):
    block = re.search(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert block is not None, "docs/keras.md has no Python block"
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    done = subprocess.run(
        [sys.executable, "-c", block[1]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^accuracy 0\.9\d\d$", done.stdout, re.MULTILINE), done.stdout
    assert (tmp_path / "digits.keras").is_file()
