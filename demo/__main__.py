"""``python -m demo check|digits|all [--out DIR]``: runs each segment in its framework's interpreter.

The interpreters come from ``UNIOPT_DEMO_PYTHON_TF``, ``UNIOPT_DEMO_PYTHON_TORCH`` and
``UNIOPT_DEMO_PYTHON_JAX`` (each a Python with uniopt and that framework installed); unset, the
current interpreter runs that segment (still one process per segment).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import uniopt

FRAMEWORKS = ("tf", "torch", "jax")
HOP = (("tf", 0, 100), ("torch", 100, 200), ("jax", 200, 300))
DIGITS_SPEC = uniopt.RAdam(lr=1e-2)
ROOT = Path(__file__).resolve().parent.parent

# open-loop cases: (id, spec, dtype); 12 steps, segments of 4 (RAdam's first rectified step, 6, is in torch's)
CHECK_CASES = [
    ("RAdam", uniopt.RAdam(lr=1e-2, weight_decay=0.1), "float32"),
    ("RAdam", uniopt.RAdam(lr=1e-2, weight_decay=0.1), "float64"),
    ("Adam-amsgrad", uniopt.Adam(lr=1e-2, amsgrad=True), "float32"),
    ("SGD-momentum", uniopt.SGD(lr=1e-2, momentum=0.9), "float64"),
    ("RMSprop-centered", uniopt.RMSprop(lr=1e-2, centered=True, momentum=0.5), "float32"),
    ("Adagrad", uniopt.Adagrad(lr=1e-1, lr_decay=0.01), "float64"),
]
CHECK_SHAPES = ((6, 4), (4,), (4, 3), (3,))
CHECK_HOP = (("tf", 0, 4), ("torch", 4, 8), ("jax", 8, 12))


def python_for(framework: str) -> str:
    return os.environ.get(f"UNIOPT_DEMO_PYTHON_{framework.upper()}", sys.executable)


def run_segment(
    framework: str, mode: str, data: Path, weights: Path, start: int, stop: int, out: Path, **opt
) -> Path:
    """One segment in its own process; returns its output folder."""
    command = [python_for(framework), "-m", "demo.segment", framework, "--mode", mode, "--data", str(data)]
    command += ["--weights", str(weights), "--start", str(start), "--stop", str(stop), "--out", str(out)]
    if "state" in opt:
        command += ["--state", str(opt["state"])]
    else:
        command += ["--optimizer", opt["spec"].name, "--hyper", json.dumps(opt["spec"].hyperparameters)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"}
    subprocess.run(command, check=True, env=env, cwd=ROOT)
    return out


def chain(frameworks, mode: str, data: Path, weights: Path, spec: uniopt.Spec, out: Path) -> list[Path]:
    """Segments one after another, each resuming from the previous one's weights and state files."""
    folders, state = [], None
    for i, (framework, start, stop) in enumerate(frameworks):
        opt = {"spec": spec} if state is None else {"state": state}
        folder = run_segment(framework, mode, data, weights, start, stop, out / f"{i}-{framework}", **opt)
        weights, state = folder / "weights.npz", folder / "state.npz"
        folders.append(folder)
    return folders


def load_weights(path: Path) -> list[np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return [f[f"p{i}"] for i in range(len(f.files))]


def save_weights(path: Path, weights: list[np.ndarray]) -> None:
    np.savez(path, **{f"p{i}": w for i, w in enumerate(weights)})


def ulp(a: np.ndarray, b: np.ndarray) -> int:
    """Largest distance in units in the last place between two float arrays of one dtype."""
    a, b = np.asarray(a), np.asarray(b)
    ints = {4: np.int32, 8: np.int64}[a.dtype.itemsize]

    def ordered(x: np.ndarray) -> np.ndarray:
        i = x.view(ints).astype(np.int64)
        return np.where(i < 0, np.iinfo(ints).min - i, i)

    return int(np.max(np.abs(ordered(a) - ordered(b)), initial=0))


def replay(
    spec: uniopt.Spec, weights: list[np.ndarray], logs: list[Path], steps: range
) -> tuple[list, uniopt.State]:
    """The NumPy core run over the gradients the segments applied (read from their logs)."""
    grads: dict[str, np.ndarray] = {}
    for log in logs:
        with np.load(log / "log.npz", allow_pickle=False) as f:
            grads.update({k: f[k] for k in f.files if k != "losses"})
    params, state = [w.copy() for w in weights], spec.init(weights)
    for t in steps:
        params, state = spec.update([grads[f"g{t}_{i}"] for i in range(len(weights))], state, params)
    return params, state


def check(out: Path) -> bool:
    """Open-loop TF -> torch -> JAX hops against the uninterrupted NumPy run; True if all bitwise."""
    ok = True
    for name, spec, dtype in CHECK_CASES:
        folder = out / "check" / f"{name}-{dtype}"
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        weights = [rng.standard_normal(s).astype(dtype) for s in CHECK_SHAPES]
        steps = CHECK_HOP[-1][2]
        stream = {
            f"g{t}_{i}": rng.standard_normal(s).astype(dtype)
            for t in range(steps)
            for i, s in enumerate(CHECK_SHAPES)
        }
        np.savez(folder / "stream.npz", **stream)
        save_weights(folder / "weights0.npz", weights)
        last = chain(CHECK_HOP, "stream", folder / "stream.npz", folder / "weights0.npz", spec, folder)[-1]
        params, state = weights, spec.init(weights)
        for t in range(steps):
            params, state = spec.update([stream[f"g{t}_{i}"] for i in range(len(weights))], state, params)
        hopped, record = load_weights(last / "weights.npz"), uniopt.load_state(last / "state.npz")
        worst = max(ulp(a, b) for a, b in zip(hopped, params, strict=True))
        worst_slot = max(
            (ulp(mine[k], ref[k]) for mine, ref in zip(record.slots, state.slots, strict=True) for k in ref),
            default=0,
        )
        bitwise = worst == 0 and worst_slot == 0 and record.step == state.step
        ok &= bitwise
        print(
            f"{name:17s} {dtype}: tf 0-4 -> torch 4-8 -> jax 8-12 vs NumPy: params {worst} ulp, slots "
            f"{worst_slot} ulp, step {record.step}/{state.step}: {'bitwise' if bitwise else 'DIFFERENT'}"
        )
    return ok


def digits_data(folder: Path, steps: int) -> tuple[Path, Path]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    batches = np.stack([rng.choice(len(x), 64, replace=False) for _ in range(steps)])
    np.savez(folder / "digits.npz", x=(x / 16.0).astype(np.float32), y=y.astype(np.int32), batches=batches)
    weights = [
        (rng.standard_normal((64, 32)) / 8.0).astype(np.float32),
        np.zeros(32, np.float32),
        (rng.standard_normal((32, 10)) / np.sqrt(32.0)).astype(np.float32),
        np.zeros(10, np.float32),
    ]
    save_weights(folder / "weights0.npz", weights)
    return folder / "digits.npz", folder / "weights0.npz"


def losses(folders: list[Path]) -> np.ndarray:
    out = []
    for folder in folders:
        with np.load(folder / "log.npz", allow_pickle=False) as f:
            out.append(f["losses"])
    return np.concatenate(out)


def digits(out: Path) -> dict:
    """The hopping run and single-framework runs; the plot and the attribution of differences."""
    folder = out / "digits"
    folder.mkdir(parents=True, exist_ok=True)
    steps = HOP[-1][2]
    data, weights0 = digits_data(folder, steps)
    spec = DIGITS_SPEC
    runs = {"hop tf->torch->jax": chain(HOP, "digits", data, weights0, spec, folder / "hop")}
    for framework in FRAMEWORKS:
        runs[f"{framework} only"] = chain(
            [(framework, 0, steps)], "digits", data, weights0, spec, folder / framework
        )
    initial = load_weights(weights0)
    report: dict = {"steps": steps, "optimizer": repr(spec), "runs": {}}
    finals = {name: load_weights(folders[-1] / "weights.npz") for name, folders in runs.items()}
    for name, folders in runs.items():
        replayed, _ = replay(spec, initial, folders, range(steps))
        report["runs"][name] = {
            "final_loss": float(losses(folders)[-1]),
            "optimizer_ulp": max(ulp(a, b) for a, b in zip(finals[name], replayed, strict=True)),
        }
    hop = finals["hop tf->torch->jax"]
    for name in runs:
        report["runs"][name]["params_max_abs_diff_vs_hop"] = max(
            float(np.max(np.abs(a - b))) for a, b in zip(finals[name], hop, strict=True)
        )
    first = {}
    for framework in FRAMEWORKS:
        with np.load(runs[f"{framework} only"][0] / "log.npz", allow_pickle=False) as f:
            first[framework] = [f[f"g0_{i}"] for i in range(4)]
    report["first_step_grad_ulp"] = {
        f"{a} vs {b}": max(ulp(x, y) for x, y in zip(first[a], first[b], strict=True))
        for a, b in (("tf", "torch"), ("torch", "jax"), ("tf", "jax"))
    }
    plot(runs, folder / "digits_loss.png")
    (folder / "report.json").write_text(json.dumps(report, indent=2))
    print(f"\ndigits MLP 64-32-10, {spec!r}, {steps} steps of 64 samples")
    print(f"{'run':20s} {'final loss':>10s} {'optimizer (ulp)':>16s} {'max |w - w_hop|':>16s}")
    for name, row in report["runs"].items():
        diff = row["params_max_abs_diff_vs_hop"]
        print(f"{name:20s} {row['final_loss']:10.6f} {row['optimizer_ulp']:16d} {diff:16.3g}")
    print(
        "optimizer (ulp): final weights against the NumPy core replaying the gradients that run applied; "
        "0 means the optimizer added nothing, so the differences between runs come from the frameworks' "
        "forward and backward passes."
    )
    print("gradients at step 1 (same weights, same batch), max ulp apart:", report["first_step_grad_ulp"])
    print(f"plot: {folder / 'digits_loss.png'}")
    return report


def plot(runs: dict[str, list[Path]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True, height_ratios=(2, 1))
    hop = losses(runs["hop tf->torch->jax"])
    for name, folders in runs.items():
        values = losses(folders)
        top.plot(np.arange(1, len(values) + 1), values, label=name, lw=2.2 if name.startswith("hop") else 1.0)
        if not name.startswith("hop"):
            bottom.plot(np.arange(1, len(values) + 1), values - hop, label=f"{name} - hop", lw=1.0)
    for axis in (top, bottom):
        for boundary in (100, 200):
            axis.axvline(boundary, color="grey", ls=":", lw=0.8)
    top.set_ylabel("minibatch loss")
    top.set_title("RAdam on digits: TF (1-100) -> PyTorch (101-200) -> JAX (201-300), state moved by file")
    top.legend()
    bottom.set_ylabel("loss - hop loss")
    bottom.set_xlabel("step")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m demo")
    parser.add_argument("command", choices=["check", "digits", "all"])
    parser.add_argument("--out", default="build/demo")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    began = time.perf_counter()
    ok = True
    if args.command in ("check", "all"):
        ok = check(out)
    if args.command in ("digits", "all"):
        report = digits(out)
        ok &= all(row["optimizer_ulp"] == 0 for row in report["runs"].values())
    print(f"done in {time.perf_counter() - began:.0f} s")
    if not ok:
        raise SystemExit("a hop was not bitwise (see above)")


if __name__ == "__main__":
    main()
