"""The persistent compilation cache ``check`` gives the JAX jobs and tests
(conformance.jobs.xla_cache_environment): its variables are JAX options, a second process loads the
program the first compiled instead of compiling it, and the loaded program gives the same bits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax

from conformance.jobs import xla_cache_environment

ROOT = Path(__file__).resolve().parents[2]

PROGRAM = """
import json
import jax, jax.numpy as jnp, numpy as np
import uniopt.jax as ujax
hits = []
jax.monitoring.register_event_listener(lambda name, **kw: hits.append(name))
tx = ujax.radam(0.01)
params = {"w": jnp.asarray(np.linspace(-1, 1, 24, dtype=np.float32).reshape(4, 6))}
grads = {"w": jnp.asarray(np.cos(np.arange(24, dtype=np.float32)).reshape(4, 6))}
step = jax.jit(tx.step)
state = tx.init(params)
for _ in range(7):
    params, state = step(grads, state, params)
print(json.dumps({
    "hits": hits.count("/jax/compilation_cache/cache_hits"),
    "bits": np.asarray(params["w"]).view(np.uint32).tolist(),
}))
"""


def _run(env: dict[str, str]) -> dict:
    """PROGRAM's output in a process of its own, with ``env`` as the cache's variables (none where
    it is empty)."""
    base = {k: v for k, v in os.environ.items() if k not in xla_cache_environment(Path("cache"))}
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        env={**base, **env, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(done.stdout.splitlines()[-1])


def test_the_variables_are_jax_options():
    for name in xla_cache_environment(Path("cache")):
        assert name.lower() in jax.config.values, name


def test_a_second_process_loads_what_the_first_compiled(tmp_path):
    env = xla_cache_environment(tmp_path / "xla-cache")
    first = _run(env)
    assert first["hits"] == 0
    written = list((tmp_path / "xla-cache").iterdir())
    assert written  # the jitted step, and the eager ops' programs, each under one second to compile
    second = _run(env)
    assert second["hits"] >= 1
    assert second["bits"] == first["bits"]
    assert sorted((tmp_path / "xla-cache").iterdir()) == sorted(written)  # nothing compiled anew
    without = _run({})  # no cache: compiled in the process
    assert without["hits"] == 0 and without["bits"] == first["bits"]
