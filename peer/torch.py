"""pytest plugin: torch's OptimizerInfo database as the referee for uniopt.torch.

``python -m pytest -p peer.torch peer/torch_optiminfo.py`` (from the repository root).
``EXPECTED`` maps an ``fnmatch`` pattern on the test id (the node id after the file name) to the
reason it is expected to fail; every match is marked ``xfail(strict=True)``, so an expected failure
that passes fails the run. The patterns hold no brackets (fnmatch would read ``[...]`` as a set of
characters): ``?`` stands for the ``[`` and ``]`` of pytest's parameter ids.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import peer

SUITES: list[str] = [str(Path(__file__).resolve().parent / "torch_optiminfo.py")]

# reasons (categories), reused by the table below
MESSAGE = "error message worded differently; same exception type"
DIFFERENTIABLE = "differentiable=True refused (ValueError); torch.optim accepts it"
CAPTURABLE = "capturable=True refused (ValueError); torch.optim accepts it"
DUPLICATE = "duplicate parameter in a group refused (ValueError); torch.optim warns"
PERMISSIVE = "accepts a configuration torch.optim refuses (a limit of torch's kernels)"
SPARSE = "sparse gradients refused (RuntimeError); torch.optim supports them"
HALF_EPS = "a hyperparameter that rounds to 0 in the dtype is refused (by design)"
FUSED_EARLY = "fused=True with unsupported parameters refused when added; torch.optim at the step"
STEP_DTYPE = "state['step'] is an int64 tensor (by design); torch.optim's is float32"
COMPLEX_EARLY = (
    "complex parameters refused when added (ValueError, before any state exists: the rule would "
    "factor the (re, im) pairs); torch.optim.Adafactor raises RuntimeError at the first step"
)

EXPECTED: dict[str, str] = {
    "*differentiable*": DIFFERENTIABLE,
    "test_errors?*-Tensor lr must be 1-element?": MESSAGE,
    "test_errors?*-momentum should be between 0 and 1?": MESSAGE,
    "test_errors?*-beta1 should be between 0 and 1?": MESSAGE,
    "test_errors?*-beta2 should be between 0 and 1?": MESSAGE,
    "test_errors?Adadelta-rho should be between 0 and 1?": MESSAGE,
    "test_errors?NAdam-momentum_decay should > 0?": MESSAGE,
    "test_errors?*-weight_decay should > 0?": MESSAGE,
    "test_errors?Adagrad-lr_decay must be bigger than 0?": MESSAGE,
    "test_error*?*-a param group cannot have duplicate parameters?": DUPLICATE,
    "test_duplicate_params_in_param_group?*?": DUPLICATE,
    "test_error*?Adam*-lr as Tensor doesn't work with foreach & not capturable?": PERMISSIVE,
    "test_error*?Adam*-betas*?": PERMISSIVE,
    "test_capturable_argument?*-capturable_on?": CAPTURABLE,
    "test_rosenbrock_sparse?*?": SPARSE,
    "test_fused_matches_forloop?Adagrad-float16?": HALF_EPS,
    "test_fused_error_on_params_on_meta?*?": FUSED_EARLY,
    "test_step_state_dtype_device?Adagrad?": STEP_DTYPE,
    "test_step_state_dtype_device?RMSprop?": STEP_DTYPE,
    "test_step_state_dtype_device?Adam?": STEP_DTYPE,
    "test_step_state_dtype_device?AdamW?": STEP_DTYPE,
    "test_step_state_dtype_device?RAdam?": STEP_DTYPE,
    "test_step_state_dtype_device?Adamax?": STEP_DTYPE,
    "test_step_state_dtype_device?NAdam?": STEP_DTYPE,
    "test_step_state_dtype_device?Adadelta?": STEP_DTYPE,
    "test_step_state_dtype_device?Adafactor?": STEP_DTYPE,
    "test_errors?Adafactor-epsilon1 should be >= 0?": MESSAGE,
    "test_errors?Adafactor-invalid d?": MESSAGE,
    "test_errors?Adafactor-invalid beta2_decay?": MESSAGE,
    "test_error*?Adafactor-does not support complex parameters?": COMPLEX_EARLY,
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    peer.select_and_mark(config, items, EXPECTED)
