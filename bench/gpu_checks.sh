#!/usr/bin/env bash
# The GPU checks, as one script for a lent machine with torch (CUDA) and jax (CUDA plugin) installed
# and nothing to download (docs/gpu.md). Run from the repository root:
#
#   bash bench/gpu_checks.sh OUT_DIR
#
# Wheels of the pure-Python packages the machine lacks (uniopt itself, array-api-compat,
# array-api-strict, schedulefree) are installed from .whl/ when present. Phases run against
# deadlines (seconds since the start: UNIOPT_GPU_CONFORMANCE_UNTIL, _TORCH_BENCH_UNTIL,
# _JAX_BENCH_UNTIL) so that the script ends inside a lease; each phase's log and results land in
# OUT_DIR/gpu-results.tar.gz, and a summary is printed last. UNIOPT_GPU_DEVICE=cpu rehearses it
# on a machine without a GPU.
set -u
OUT_DIR=${1:?usage: bash bench/gpu_checks.sh OUT_DIR}
START=$(date +%s)
CONFORMANCE_UNTIL=${UNIOPT_GPU_CONFORMANCE_UNTIL:-250}
TORCH_BENCH_UNTIL=${UNIOPT_GPU_TORCH_BENCH_UNTIL:-400}
JAX_BENCH_UNTIL=${UNIOPT_GPU_JAX_BENCH_UNTIL:-490}
W=$(mktemp -d /tmp/uniopt-gpu.XXXX)
mkdir -p "$OUT_DIR" "$W/logs"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2
PY=${PYTHON:-python3}
DEVICE=${UNIOPT_GPU_DEVICE:-gpu}

left() {  # seconds until the deadline $1 (at least 1)
    local n=$(($1 - ($(date +%s) - START)))
    echo $((n > 1 ? n : 1))
}
say() { echo "[$(($(date +%s) - START))s] $*" | tee -a "$W/logs/summary.txt"; }

# -- the packages ------------------------------------------------------------------------------
if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target "$W/site" .whl/*.whl >"$W/logs/install.log" 2>&1
else
    $PY -m pip install -q --no-index --no-deps --no-build-isolation --target "$W/site" . >"$W/logs/install.log" 2>&1
fi
say "install rc=$? $(tail -1 "$W/logs/install.log")"
export PYTHONPATH="$W/site:$PWD"
{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
    $PY - <<'EOF'
import platform, numpy, torch, jax, optax
print("python", platform.python_version(), "numpy", numpy.__version__, "torch", torch.__version__,
      "cuda", torch.version.cuda, "jax", jax.__version__, "optax", optax.__version__)
print("torch device", torch.cuda.get_device_name(0), "jax devices", jax.devices())
import uniopt, uniopt.jax, uniopt.torch
print("uniopt from", uniopt.__file__)
EOF
} >"$W/logs/versions.txt" 2>&1
say "versions: $(tr '\n' ' ' <"$W/logs/versions.txt" | cut -c1-400)"

# -- the division and root XLA:GPU rounds approximately: how often, ours, and their costs ---------
$PY - >"$W/logs/division.txt" 2>&1 <<'EOF'
import time
import jax, jax.numpy as jnp, numpy as np
from uniopt.jax import _ieee
rng = np.random.default_rng(0)
a = rng.standard_normal(1 << 24).astype(np.float32)
b = np.abs(rng.standard_normal(1 << 24)).astype(np.float32) + np.float32(1e-3)
cases = (("jnp.divide", jnp.divide, (a, b), a / b), ("divide_on_gpu", _ieee.divide_on_gpu, (a, b), a / b),
         ("jnp.sqrt", jnp.sqrt, (b,), np.sqrt(b)), ("sqrt_on_gpu", _ieee.sqrt_on_gpu, (b,), np.sqrt(b)))
for name, fn, args, want in cases:
    f = jax.jit(fn)
    dev = [jax.device_put(x) for x in args]
    got = np.asarray(f(*dev))
    for _ in range(3):
        f(*dev).block_until_ready()
    t = time.perf_counter(); n = 50
    for _ in range(n):
        out = f(*dev)
    out.block_until_ready()
    ms = (time.perf_counter() - t) / n * 1e3
    print(f"{name}: {(got.view(np.uint32) != want.view(np.uint32)).sum()} of {a.size} differ from NumPy; "
          f"{ms:.3f} ms per 16M elements;")
print("a/a != 1:", (np.asarray(jax.jit(jnp.divide)(a, a)) != 1).sum(), "(jnp.divide),",
      (np.asarray(jax.jit(_ieee.divide_on_gpu)(a, a)) != 1).sum(), "(divide_on_gpu)")
EOF
say "division: $(tr '\n' ' ' <"$W/logs/division.txt")"

# -- tests: the integer division on this device, torch on CUDA -----------------------------------
(cd tests && timeout 150 $PY -m pytest -q -p no:cacheprovider jax_adapter/test_ieee.py) >"$W/logs/test_ieee.txt" 2>&1 &
(cd tests && timeout "$(left $CONFORMANCE_UNTIL)" $PY -m pytest -q -p no:cacheprovider -n 3 torch_adapter/test_cuda.py) \
    >"$W/logs/test_cuda.txt" 2>&1 &

# -- conformance: one process per split, each compared against the NumPy reference ---------------
# the NumPy reference (on the CPU, about a minute), beside the framework runs
timeout "$(left $CONFORMANCE_UNTIL)" $PY -m conformance --out "$W/ref" run --backend numpy >"$W/logs/reference.txt" 2>&1 &
A="SGD Adagrad RMSprop Adam AdamW"
B="RAdam Adamax Adadelta NAdam Lion"
C="Lamb Muon ScheduleFreeAdamW Adafactor"
ALL="$A $B $C"
# backend | mode | dtypes | optimizers: about 200 cells or fewer each, twenty processes on 16 cores
SPLITS=(
    "jax|eager|float32|$ALL"
    "jax|eager|float64 float16 bfloat16|$ALL"
    "jax|jit|float32|$A"
    "jax|jit|float32|$B"
    "jax|jit|float32|$C"
    "jax|jit|float64 float16 bfloat16|$ALL"
    "jax|optax|float32 float64 float16 bfloat16|$ALL"
    "optax|native|float32 float64 float16 bfloat16|$ALL"
    "torch|eager|float32 float64|$ALL"
    "torch|eager|float16 bfloat16|$ALL"
    "torch|loop|float32 float64|$ALL"
    "torch|loop|float16 bfloat16|$ALL"
    "torch|flat|float32 float64 float16 bfloat16|$ALL"
    "torch|compiled|float32 float64 float16 bfloat16|$ALL"
    "torch|compile|float32 float64 float16 bfloat16|$ALL"
    "torch.optim|native|float32 float64 float16 bfloat16|$ALL"
)
i=0
for split in "${SPLITS[@]}"; do
    IFS='|' read -r backend mode dtypes optimizers <<<"$split"
    d="$W/conf/s$(printf %02d $i)"
    mkdir -p "$d/trajectories"
    echo "$backend@$mode $dtypes ($optimizers)" >"$d/split"
    # shellcheck disable=SC2086
    OMP_NUM_THREADS=1 TORCHINDUCTOR_COMPILE_THREADS=2 timeout "$(left $CONFORMANCE_UNTIL)" \
        $PY -m conformance --out "$d" run --backend "$backend" --modes "$mode" --dtypes $dtypes \
        --optimizers $optimizers --device "$DEVICE" --deadline "$(($(left $CONFORMANCE_UNTIL) - 60))" >"$d/log" 2>&1 &
    i=$((i + 1))
done
wait
say "test_ieee: $(tail -1 "$W/logs/test_ieee.txt")"
say "test_cuda: $(tail -1 "$W/logs/test_cuda.txt")"
reports=()
for d in "$W"/conf/s*; do  # the comparisons in parallel (each reads the reference, about 6 s)
    ln -sf "$W"/ref/trajectories/numpy@eager.* "$d/trajectories/"
    if ls "$d"/trajectories/*@*.json 2>/dev/null | grep -qv numpy@; then
        $PY -m conformance --out "$d" compare >"$d/compare.txt" 2>&1 &
        reports+=("$d/conformance.json")
    fi
done
wait
for d in "$W"/conf/s*; do
    if [ -f "$d/compare.txt" ]; then
        say "conformance $(cat "$d/split"): $(grep -a '^conformance:' "$d/compare.txt" | tail -1)"
    else
        say "conformance $(cat "$d/split"): did not finish ($(tail -c 300 "$d/log" | tr '\n' ' '))"
    fi
done
if [ ${#reports[@]} -gt 0 ]; then
    $PY -m conformance --out "$W/merged" merge "${reports[@]}" >"$W/logs/merge.txt" 2>&1
    say "merged: $(grep -a 'passed\|failed' "$W/logs/merge.txt" | tail -2 | tr '\n' ' ')"
fi

# -- benchmarks, nothing else running --------------------------------------------------------------
mkdir -p "$W/bench"
timeout "$(left $TORCH_BENCH_UNTIL)" $PY -m bench --out "$W/bench" run torch --device "$DEVICE" --rounds 5 \
    >"$W/logs/bench_torch.txt" 2>&1
say "bench torch rc=$? $(tail -2 "$W/logs/bench_torch.txt" | tr '\n' ' ')"
timeout "$(left $JAX_BENCH_UNTIL)" $PY -m bench --out "$W/bench" run jax --device "$DEVICE" --rounds 5 \
    >"$W/logs/bench_jax.txt" 2>&1
say "bench jax rc=$? $(tail -2 "$W/logs/bench_jax.txt" | tr '\n' ' ')"

tar -czf "$OUT_DIR/gpu-results.tar.gz" --exclude='*.npz' --exclude='numpy@eager.json' -C "$W" logs conf merged bench 2>/dev/null
cp "$W/logs/summary.txt" "$OUT_DIR/summary.txt"
say "done; $(du -h "$OUT_DIR/gpu-results.tar.gz" | cut -f1) of results"
