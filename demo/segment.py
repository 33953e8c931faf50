"""One segment of a run in one framework, in its own process: load weights and (optionally) optimizer
state from files, take steps ``start..stop``, write weights, state and a log.

Two modes. ``stream``: open loop, the gradients come from a file (no model at all), so the only
computation is the optimizer's. ``digits``: a 64-32-10 tanh MLP on the digits data, gradients from
the framework's own forward and backward pass on fixed minibatches.

    python -m demo.segment FRAMEWORK --mode stream|digits --data D.npz --weights W.npz
        --start S --stop T --out DIR [--state STATE.npz | --optimizer NAME --hyper JSON]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

import uniopt

__all__ = ["FRAMEWORKS", "NAMES", "main"]

NAMES = ("w1", "b1", "w2", "b2")


def _spec(args: argparse.Namespace, state: uniopt.PortableState | None) -> uniopt.Spec:
    if state is not None:
        return state.to_spec()
    return uniopt.porting.spec_class(args.optimizer)(**json.loads(args.hyper))


def _load_weights(path: str) -> list[np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return [f[f"p{i}"] for i in range(len(f.files))]


class Torch:
    def __init__(self, spec: uniopt.Spec, weights: list[np.ndarray], state: Any) -> None:
        import torch

        import uniopt.torch

        torch.manual_seed(0)
        self.torch = torch
        self.params = [torch.from_numpy(w.copy()).requires_grad_() for w in weights]
        self.opt = getattr(uniopt.torch, spec.name)(self.params, **spec.hyperparameters)
        if state is not None:
            uniopt.torch.import_state(self.opt, state)

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, list[np.ndarray]]:
        torch = self.torch
        w1, b1, w2, b2 = self.params
        for p in self.params:
            p.grad = None
        h = torch.tanh(torch.from_numpy(x) @ w1 + b1)
        loss = torch.nn.functional.cross_entropy(h @ w2 + b2, torch.from_numpy(y).long())
        loss.backward()
        return float(loss.detach()), [p.grad.numpy().copy() for p in self.params]

    def apply(self, grads: list[np.ndarray]) -> None:
        for p, g in zip(self.params, grads, strict=True):
            p.grad = self.torch.from_numpy(g.copy())
        self.opt.step()

    def weights(self) -> list[np.ndarray]:
        return [p.detach().numpy().copy() for p in self.params]

    def export(self) -> uniopt.PortableState:
        import uniopt.torch

        return uniopt.torch.export_state(self.opt)


class TF:
    def __init__(self, spec: uniopt.Spec, weights: list[np.ndarray], state: Any) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras
        import tensorflow as tf

        import uniopt.tf

        self.tf = tf
        self.vars = [keras.Variable(w, dtype=str(w.dtype)) for w in weights]
        self.opt = uniopt.tf.from_spec(spec)
        if state is not None:
            uniopt.tf.import_state(self.opt, state, self.vars)

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, list[np.ndarray]]:
        tf = self.tf
        w1, b1, w2, b2 = self.vars
        with tf.GradientTape() as tape:
            h = tf.tanh(tf.matmul(x, w1) + b1)
            logits = tf.matmul(h, w2) + b2
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        grads = tape.gradient(loss, self.vars)
        return float(loss), [g.numpy() for g in grads]

    def apply(self, grads: list[np.ndarray]) -> None:
        self.opt.apply_gradients(zip([self.tf.constant(g) for g in grads], self.vars, strict=True))

    def weights(self) -> list[np.ndarray]:
        return [v.numpy().copy() for v in self.vars]

    def export(self) -> uniopt.PortableState:
        import uniopt.tf

        return uniopt.tf.export_state(self.opt, self.vars)


class JAX:
    def __init__(self, spec: uniopt.Spec, weights: list[np.ndarray], state: Any) -> None:
        import jax
        import jax.numpy as jnp
        import optax

        import uniopt.jax

        if any(w.dtype == np.float64 for w in weights):
            jax.config.update("jax_enable_x64", True)
        self.params = [jnp.asarray(w) for w in weights]
        self.tx = uniopt.jax.from_spec(spec)
        self.state = (
            self.tx.init(self.params)
            if state is None
            else uniopt.jax.import_state(self.tx, state, self.params)
        )

        def loss_fn(params, x, y):
            w1, b1, w2, b2 = params
            logits = jnp.tanh(x @ w1 + b1) @ w2 + b2
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        self.value_and_grad = jax.jit(jax.value_and_grad(loss_fn))

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, list[np.ndarray]]:
        loss, grads = self.value_and_grad(self.params, x, y)
        return float(loss), [np.asarray(g) for g in grads]

    def apply(self, grads: list[np.ndarray]) -> None:
        self.params, self.state = self.tx.step(list(grads), self.state, self.params)

    def weights(self) -> list[np.ndarray]:
        return [np.asarray(p).copy() for p in self.params]

    def export(self) -> uniopt.PortableState:
        import uniopt.jax

        return uniopt.jax.export_state(self.tx, self.state, self.params)


FRAMEWORKS = {"torch": Torch, "tf": TF, "jax": JAX}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m demo.segment")
    parser.add_argument("framework", choices=list(FRAMEWORKS))
    parser.add_argument("--mode", choices=["stream", "digits"], required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--start", type=int, required=True)
    parser.add_argument("--stop", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--state")
    parser.add_argument("--optimizer")
    parser.add_argument("--hyper", default="{}")
    args = parser.parse_args(argv)

    state = uniopt.load_state(args.state) if args.state else None
    if state is not None and state.step != args.start:
        raise SystemExit(f"the state file is at step {state.step}, the segment starts at {args.start}")
    spec = _spec(args, state)
    runner = FRAMEWORKS[args.framework](spec, _load_weights(args.weights), state)
    losses, applied = [], []
    with np.load(args.data, allow_pickle=False) as data:
        for t in range(args.start, args.stop):
            if args.mode == "stream":
                grads = [data[f"g{t}_{i}"] for i in range(len(NAMES))]
                loss = float("nan")
            else:
                batch = data["batches"][t]
                loss, grads = runner.loss_and_grads(data["x"][batch], data["y"][batch])
            runner.apply(grads)
            losses.append(loss)
            applied.append(grads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "weights.npz", **{f"p{i}": w for i, w in enumerate(runner.weights())})
    uniopt.save_state(out / "state.npz", runner.export())
    grads_log = {
        f"g{t}_{i}": g
        for t, gs in zip(range(args.start, args.stop), applied, strict=True)
        for i, g in enumerate(gs)
    }
    np.savez(out / "log.npz", losses=np.asarray(losses, np.float64), **grads_log)


if __name__ == "__main__":
    main()
