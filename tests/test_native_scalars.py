"""Conventions that reproduce a framework's own float32 scalar arithmetic, against values measured
from the frameworks themselves (not from uniopt): optax under ``jax.jit`` at jax's default
(``jax_enable_x64`` off) and Keras's ``Adam.update_step`` inside ``tf.function``.

The literals were read from jax 0.10.2 / optax 0.2.8 (the expressions of
``optax.scale_by_radam`` and ``optax.tree.bias_correction`` compiled with an int32 count) and
from TensorFlow 2.21 / Keras 3.15 (``lr * ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)`` with
Keras's casts, ``learning_rate=1e-3``), on x86-64 Linux.
"""

from __future__ import annotations

import array_api_compat.numpy as xp
import numpy as np
import pytest

import uniopt
from uniopt import State
from uniopt._math import float32_bias_correction
from uniopt.radam import optax_float32_r

# beta2 -> step -> (rho_t >= 5, r_t, 1 - 0.9^t, 1 - beta2^t), all float32 in optax
OPTAX_F32 = {
    0.999: {
        1: (False, None, 0.10000002384185791, 0.0009999871253967285),
        5: (False, None, 0.40951007604599, 0.004989922046661377),
        6: (True, 0.025674063712358475, 0.4685590863227844, 0.005984961986541748),
        7: (True, 0.032543253153562546, 0.5217031836509705, 0.006978929042816162),
        8: (True, 0.03857625648379326, 0.5695328712463379, 0.00797194242477417),
        1301: (True, 0.7155374884605408, 1.0, 0.7279132008552551),
    },
    # float32 rho_t cancels so badly that optax rectifies from step 2 (float64: step 6)
    0.9999: {
        1: (False, None, 0.10000002384185791, 0.00010001659393310547),
        2: (True, 0.008902431465685368, 0.19000005722045898, 0.00020003318786621094),
        8: (True, 0.016741132363677025, 0.5695328712463379, 0.0007998347282409668),
    },
}


@pytest.mark.parametrize("beta2", sorted(OPTAX_F32))
def test_optax_float32_scalars_are_optax_s(beta2):
    for step, (rectified, r, bc1, bc2) in OPTAX_F32[beta2].items():
        got_rectified, got_r = optax_float32_r(beta2, step)
        assert got_rectified is rectified, step
        if rectified:
            assert got_r == r, step
        assert float(float32_bias_correction(0.9, step)) == bc1
        assert float(float32_bias_correction(beta2, step)) == bc2
        sc = uniopt.RAdam(betas=(0.9, beta2), convention="optax").step_scalars(step)
        assert (sc.rectified_f32, sc.r_f32) == (rectified, r or 0.0)
        assert (sc.inv_bc1_f32, sc.inv_bc2_f32) == (1 / bc1, 1 / bc2)


def test_optax_radam_takes_float32_scalars_for_float32_and_float64_ones_for_float64():
    spec = uniopt.RAdam(lr=0.05, convention="optax")
    sc = spec.step_scalars(6)
    assert abs(sc.r_f32 / sc.r - 1) > 5e-3  # the float32 r_6 is 0.6% below the float64 one
    m, v, g = 0.3, 0.2, 0.5
    for dtype, r, inv_bc1, inv_bc2 in (
        (np.float32, sc.r_f32, sc.inv_bc1_f32, sc.inv_bc2_f32),
        (np.float64, sc.r, sc.inv_bc1, sc.inv_bc2),
    ):
        f = dtype
        state = State(5, ({"exp_avg": np.array([m], f), "exp_avg_sq": np.array([v], f)},))
        (p,), _ = spec.update([np.array([g], f)], state, [np.array([1.0], f)], xp)
        # optax's op sequence (uniopt.radam, convention "optax") with the scalars of its dtype
        m1 = f(m) * f(0.9) + f(g) * f(1 - 0.9)
        v1 = f(v) * f(0.999) + (f(g) * f(g)) * f(1 - 0.999)
        u = (f(r) * (m1 * f(inv_bc1))) / (np.sqrt(v1 * f(inv_bc2)) + f(1e-8))
        assert p[0] == f(1.0) + u * f(-0.05)


# dtype -> step -> Keras's alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t), lr = 1e-3
KERAS_ALPHA = {
    np.float32: {
        1: 0.00031622566166333854,
        2: 0.0002353143790969625,
        10: 0.0001531880407128483,
        1000: 0.0007951728766784072,
    },
    np.float64: {
        1: 0.0003162256699826117,
        2: 0.00023531516930179558,
        10: 0.00015318807780898333,
        1000: 0.0007951728721431612,
    },
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_keras_adam_takes_keras_s_own_alpha(dtype):
    spec = uniopt.Adam(lr=1e-3, convention="keras")
    f = dtype
    m, v, g = 0.3, 0.2, 0.5
    for step, alpha in KERAS_ALPHA[dtype].items():
        state = State(step - 1, ({"exp_avg": np.array([m], f), "exp_avg_sq": np.array([v], f)},))
        (p,), _ = spec.update([np.array([g], f)], state, [np.array([1.0], f)], xp)
        # keras.optimizers.Adam.update_step's op sequence with Keras's measured alpha
        m1 = f(m) + (f(g) - f(m)) * f(1 - 0.9)
        v1 = f(v) + (f(g) * f(g) - f(v)) * f(1 - 0.999)
        assert p[0] == f(1.0) - (m1 * f(alpha)) / (np.sqrt(v1) + f(1e-7)), step
    # float64 Keras rounds the betas through float32: not the float64 formula
    bc1, bc2 = 1 - 0.9**10, 1 - 0.999**10
    assert abs(float(np.float32(1e-3)) * bc2**0.5 / bc1 / KERAS_ALPHA[np.float64][10] - 1) > 1e-6
