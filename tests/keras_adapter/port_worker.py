"""One segment of a run in one framework, in a process of its own (tests/keras_adapter/test_moves.py):
load the weights and, optionally, a state file, apply steps ``start..stop`` of a gradient stream
given as explicit arrays (no model, no loss: the runs of every framework see the same gradients),
then write the weights and the state (``uniopt.save_state``).

    python tests/keras_adapter/port_worker.py JOB.json

The job (JSON): ``runner`` (``"keras"``: a uniopt Keras optimizer on the Keras backend that
``KERAS_BACKEND`` names, through the module ``api``, ``"uniopt.keras"`` or ``"uniopt.tf"``;
``"torch"``: uniopt.torch; ``"jax"``: uniopt.jax's optax transformation), ``optimizer`` and
``hyperparameters`` (the spec's; with a state, ``state.to_spec()`` instead), ``state_dtypes``
(slot -> dtype name, or null), ``grads`` (an ``.npz`` of ``g<t>_<i>``), ``weights`` (``p<i>``),
``state`` (a state file, or null), ``start``, ``stop`` and ``out`` (a folder: ``weights.npz``,
``state.npz``). Runs in the venv of its framework: it imports uniopt, numpy and that framework only.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

import uniopt


def _keras(job: dict[str, Any], spec: uniopt.Spec, weights: list[np.ndarray], state: Any, grads: Any):
    import keras

    api = importlib.import_module(job["api"])
    variables = [keras.Variable(w, dtype=str(w.dtype)) for w in weights]
    extra = {"state_dtypes": job["state_dtypes"]} if job["state_dtypes"] else {}
    opt = api.from_spec(spec, **extra)
    if state is not None:
        api.import_state(opt, state, variables)
    for step in grads:
        opt.apply([keras.ops.convert_to_tensor(g) for g in step], variables)
    return [np.array(keras.ops.convert_to_numpy(v)) for v in variables], api.export_state(opt, variables)


def _torch(job: dict[str, Any], spec: uniopt.Spec, weights: list[np.ndarray], state: Any, grads: Any):
    import torch

    import uniopt.torch

    params = [torch.from_numpy(w.copy()).requires_grad_() for w in weights]
    extra = {"state_dtypes": job["state_dtypes"]} if job["state_dtypes"] else {}
    opt = getattr(uniopt.torch, spec.name)(params, **spec.hyperparameters, **extra)
    if state is not None:
        uniopt.torch.import_state(opt, state)
    for step in grads:
        for p, g in zip(params, step, strict=True):
            p.grad = torch.from_numpy(g.copy())
        opt.step()
    return [p.detach().numpy().copy() for p in params], uniopt.torch.export_state(opt)


def _jax(job: dict[str, Any], spec: uniopt.Spec, weights: list[np.ndarray], state: Any, grads: Any):
    import jax.numpy as jnp

    import uniopt.jax

    (slot, dtype), *more = job["state_dtypes"].items() if job["state_dtypes"] else [(None, None)]
    if more or slot not in (None, "exp_avg"):  # optax's mu_dtype is the first moment's
        raise SystemExit(f"state_dtypes {job['state_dtypes']} has no optax argument here")
    tx = uniopt.jax.from_spec(spec, state_dtype=None if dtype is None else ("mu_dtype", jnp.dtype(dtype)))
    params = [jnp.asarray(w) for w in weights]
    opt_state = tx.init(params) if state is None else uniopt.jax.import_state(tx, state, params)
    for step in grads:
        params, opt_state = tx.step([jnp.asarray(g) for g in step], opt_state, params)
    return [np.array(p) for p in params], uniopt.jax.export_state(tx, opt_state, params)


RUNNERS = {"keras": _keras, "torch": _torch, "jax": _jax}


def main(path: str) -> None:
    job = json.loads(Path(path).read_text())
    state = uniopt.load_state(job["state"]) if job["state"] else None
    if state is not None and state.step != job["start"]:
        raise SystemExit(f"the state file is at step {state.step}, the segment starts at {job['start']}")
    spec = (
        state.to_spec()
        if state is not None
        else uniopt.porting.spec_class(job["optimizer"])(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in job["hyperparameters"].items()}
        )
    )
    with np.load(job["weights"], allow_pickle=False) as f:
        weights = [f[f"p{i}"] for i in range(len(f.files))]
    with np.load(job["grads"], allow_pickle=False) as f:
        grads = [[f[f"g{t}_{i}"] for i in range(len(weights))] for t in range(job["start"], job["stop"])]
    weights, record = RUNNERS[job["runner"]](job, spec, weights, state, grads)
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "weights.npz", **{f"p{i}": w for i, w in enumerate(weights)})
    uniopt.save_state(out / "state.npz", record)
    print(json.dumps({"runner": job["runner"], "step": record.step}))


if __name__ == "__main__":
    main(sys.argv[1])
