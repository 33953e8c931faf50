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
HALF_EPS = "a hyperparameter that rounds to 0 in the dtype is refused (by design)"
FUSED_EARLY = "fused=True with unsupported parameters refused when added; torch.optim at the step"
STEP_DTYPE = "state['step'] is an int64 tensor (by design); torch.optim's is float32"
MUON_2D = (
    "Muon takes 2-D parameters only, as torch.optim.Muon does (ValueError at construction in both): "
    "this test's fixture has parameters that are not 2-D (biases, 0-d or 4-D tensors)"
)
MUON_COMPLEX = (
    "Muon refuses complex parameters, as torch.optim.Muon does, with another type and moment: "
    "torch.optim.Muon raises RuntimeError at the first step, uniopt.torch.Muon ValueError when the "
    "parameter is added (torch's database: supports_complex=False)"
)
MUON_NO_ARG = "torch.optim.Muon has no {} argument: a TypeError in both"
MUON_DECAY = (
    "Muon's default weight_decay is torch.optim.Muon's 0.1, decoupled: the parameters decay without a "
    "gradient in both (checked: torch.optim.Muon moves them too); the test skips only the input sets "
    "that name a weight decay"
)
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
    # Muon (torch.optim.Muon): the port's fixtures are the other optimizers'; the native comparison
    # (test_matches_native) gives it the 2-D parameters, as torch.optim.Muon's documentation does
    "test_add_param_group_with_named_params?Muon*": MUON_2D,
    "test_can_load_from_to_named_state_dict?Muon*": MUON_2D,
    "test_can_load_older_state_dict?Muon*": MUON_2D,
    "test_can_load_older_state_dict_steps_as_native?Muon*": MUON_2D,
    "test_continues_torch_optim_checkpoint?Muon*": MUON_2D,
    "test_forloop_goes_right_direction?Muon*": MUON_2D,
    "test_lr_tensor_in_state_dict?Muon*": MUON_2D,
    "test_non_empty_state?Muon*": MUON_2D,
    "test_param_group_with_lrscheduler_goes_right_direction?Muon*": MUON_2D,
    "test_param_groups_as_generator_of_dicts?Muon*": MUON_2D,
    "test_param_groups_lr?Muon*": MUON_2D,
    "test_param_groups_weight_decay?Muon*": MUON_2D,
    "test_param_groups_with_named_params?Muon*": MUON_2D,
    "test_params_as_generator_of_tensors?Muon*": MUON_2D,
    "test_pickle_round_trip?Muon*": MUON_2D,
    "test_positional_arguments?Muon*": MUON_2D,
    "test_save_load_equality_with_weights_only?Muon*": MUON_2D,
    "test_state_at_construction?Muon*": MUON_2D,
    "test_state_dict_deterministic?Muon*": MUON_2D,
    "test_step_all_hooks?Muon*": MUON_2D,
    "test_step_post_hook?Muon*": MUON_2D,
    "test_step_pre_hook?Muon*": MUON_2D,
    "test_step_returns_closure_loss?Muon*": MUON_2D,
    "test_step_state_dtype_device?Muon*": MUON_2D,
    "test_tensor_lr?Muon*": MUON_2D,
    "test_zero_grad?Muon*": MUON_2D,
    "test_error_type?Muon-does not support complex parameters?": MUON_COMPLEX,
    "test_errors?Muon-does not support complex parameters?": MUON_COMPLEX,
    "test_errors?Muon-only support 2D parameters?": MESSAGE,
    "test_errors?Muon-only support `original` and `match_rms_adamw`?": MESSAGE,
    "test_foreach_matches_forloop?Muon*": MUON_NO_ARG.format("foreach"),
    "test_maximize_is_negated_minimize?Muon*": MUON_NO_ARG.format("maximize"),
    "test_step_is_noop_for_zero_grads?Muon-default?": MUON_DECAY,
    "test_step_is_noop_for_zero_grads?Muon-non-default lr?": MUON_DECAY,
    "test_step_is_noop_for_zero_grads?Muon-Tensor lr?": MUON_DECAY,
    "test_step_is_noop_for_zero_grads?Muon-non-default momentum?": MUON_DECAY,
    "test_step_is_noop_for_zero_grads?Muon-passing alternative ns_steps?": MUON_DECAY,
    "test_step_is_noop_for_zero_grads?Muon-passing alternative ns_coefficients?": MUON_DECAY,
    "test_step_state_dtype_device?Adafactor?": STEP_DTYPE,
    "test_errors?Adafactor-epsilon1 should be >= 0?": MESSAGE,
    "test_errors?Adafactor-invalid d?": MESSAGE,
    "test_errors?Adafactor-invalid beta2_decay?": MESSAGE,
    "test_error*?Adafactor-does not support complex parameters?": COMPLEX_EARLY,
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    peer.select_and_mark(config, items, EXPECTED)
