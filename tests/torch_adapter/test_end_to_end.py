"""End to end: an MLP trained on scikit-learn's digits with uniopt.torch.RAdam and StepLR, checkpointed
at step 100 and resumed from the file in new objects, ends bitwise-identical to the uninterrupted run.
Full-batch training with fixed seeds, so both runs see exactly the same computation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import uniopt.torch

STEPS = 200
CHECKPOINT = 100


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: the same reduction order in every run, and no OpenMP spinning when the
    machine's cores are busy (two threads made this test ~50x slower on a loaded 2-core runner)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.int64)
    return x, y


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10))


def _optimizer_and_scheduler(model: torch.nn.Module):
    opt = uniopt.torch.RAdam(model.parameters(), lr=0.03, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=60, gamma=0.5)
    return opt, sched


def _train(model, opt, sched, x, y, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


def _state_tensors(opt: torch.optim.Optimizer) -> dict[tuple[int, str], torch.Tensor]:
    """Every optimizer state tensor, keyed by (param index, name)."""
    return {
        (i, name): value for i, entry in opt.state_dict()["state"].items() for name, value in entry.items()
    }


def test_digits_mlp_checkpoint_resume_is_bitwise(tmp_path: Path) -> None:
    x, y = _data()
    assert x.shape == (1797, 64)

    # The uninterrupted run.
    model = _model(seed=0)
    opt, sched = _optimizer_and_scheduler(model)
    losses = _train(model, opt, sched, x, y, STEPS)

    # The interrupted run: 100 steps, checkpoint to a file, and nothing else kept.
    first = _model(seed=0)
    first_opt, first_sched = _optimizer_and_scheduler(first)
    first_losses = _train(first, first_opt, first_sched, x, y, CHECKPOINT)
    path = tmp_path / "checkpoint.pt"
    torch.save(
        {
            "model": first.state_dict(),
            "optimizer": first_opt.state_dict(),
            "scheduler": first_sched.state_dict(),
        },
        path,
    )
    del first, first_opt, first_sched

    # Resume in new objects (a different initialisation, which the checkpoint must overwrite).
    resumed = _model(seed=1)
    assert not torch.equal(resumed[0].weight, model[0].weight)
    resumed_opt, resumed_sched = _optimizer_and_scheduler(resumed)
    checkpoint = torch.load(path)  # weights_only: the checkpoint holds only plain data and tensors
    resumed.load_state_dict(checkpoint["model"])
    resumed_opt.load_state_dict(checkpoint["optimizer"])
    resumed_sched.load_state_dict(checkpoint["scheduler"])
    assert resumed_opt.param_groups[0]["lr"] == 0.03 * 0.5  # StepLR's decay at step 60 came back
    resumed_losses = _train(resumed, resumed_opt, resumed_sched, x, y, STEPS - CHECKPOINT)

    assert first_losses + resumed_losses == losses
    for (name, a), (name_b, b) in zip(model.named_parameters(), resumed.named_parameters(), strict=True):
        assert name == name_b
        assert torch.equal(a, b), f"parameter {name} differs after resuming"
    expected, got = _state_tensors(opt), _state_tensors(resumed_opt)
    assert sorted(got) == sorted(expected)
    assert {name for _, name in expected} == {"step", "exp_avg", "exp_avg_sq"}
    for key, value in expected.items():
        assert got[key].dtype == value.dtype
        assert torch.equal(got[key], value), f"optimizer state {key} differs after resuming"
        if key[1] == "step":
            assert int(value) == STEPS
    assert resumed_sched.state_dict() == sched.state_dict()
    assert resumed_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == 0.03 * 0.5**3

    # It learned: the loss fell well below its start and the training set is mostly classified.
    assert losses[-1] < 0.3 * losses[0], (losses[0], losses[-1])
    with torch.no_grad():
        accuracy = (model(x).argmax(dim=1) == y).float().mean().item()
    assert accuracy > 0.9
    assert np.all(np.isfinite(losses))
