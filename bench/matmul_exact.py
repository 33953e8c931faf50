"""The cost of :func:`uniopt.muon.matmul_exact` against the backend's ``matmul``, and its bits.

``python -m bench.matmul_exact`` times ``x @ x.T`` for normalised random float32 matrices (the Gram
product of Muon's Newton-Schulz iteration) on NumPy and on torch (CPU), the median of a few runs,
and checks that the exact product gives the same bits on NumPy, array_api_strict and torch while
``matmul`` does not. The numbers in docs/optimizers/muon.md come from this script.
"""

from __future__ import annotations

import statistics
import sys
import time

import array_api_compat.numpy as npx
import numpy as np

from uniopt.muon import matmul_exact

SHAPES = ((64, 32), (256, 256), (1024, 1024))


def _median_seconds(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(shapes=SHAPES) -> None:
    import torch

    sys.path.insert(0, "adapters")
    from uniopt.torch._namespace import xp as txp

    rng = np.random.default_rng(0)
    print("shape, backend, matmul s, exact s, ratio, exact bits equal to NumPy's exact, matmul bits equal")
    for rows, cols in shapes:
        x = rng.standard_normal((rows, cols)).astype(np.float32)
        x /= np.float32(np.linalg.norm(x))
        xt = np.ascontiguousarray(x.T)
        runs = 5 if rows * rows * cols <= 1 << 24 else 1
        ref_exact = matmul_exact(x, xt, npx)
        ref_mm = x @ xt
        for name, xp, a, b in (
            ("numpy", npx, x, xt),
            ("torch", txp, torch.from_numpy(x), torch.from_numpy(xt)),
        ):
            mm = _median_seconds(lambda a=a, b=b, xp=xp: xp.matmul(a, b), runs)
            ex = _median_seconds(lambda a=a, b=b, xp=xp: matmul_exact(a, b, xp), runs)
            same_exact = np.array_equal(np.asarray(matmul_exact(a, b, xp)), ref_exact)
            same_mm = np.array_equal(np.asarray(xp.matmul(a, b)), ref_mm)
            print(f"{rows}x{cols}, {name}, {mm:.2e}, {ex:.2e}, {ex / mm:.0f}, {same_exact}, {same_mm}")


if __name__ == "__main__":
    main()
