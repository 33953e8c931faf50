"""uniopt.torch under torch.distributed: DistributedDataParallel and ZeroRedundancyOptimizer with the
gloo backend, world size 2 on CPU.

The tests start two worker processes once (this file run as a script), each feeding its own data. After
``STEPS`` steps both ranks must hold identical parameters, equal bitwise to a single-process run on
the averaged gradients. Bitwise is expected: DDP divides each rank's gradient by the world size
(exact, a power of two) and gloo sums the two halves (a sum of two floats does not depend on the
order), so every rank sees exactly ``g0 / 2 + g1 / 2``, which the reference computes the same way.
Both sides use one intra-op thread so each rank's local gradients equal the reference's.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch

import uniopt
import uniopt.torch

# one worker runs this module (pytest-xdist's loadgroup): its module fixture runs once
pytestmark = pytest.mark.xdist_group("test_distributed")

WORLD = 2
STEPS = 8  # RAdam (beta2=0.999) takes its first rectified step at step 6
LR = 0.01
TIMEOUT_S = 120  # both ranks together, interpreter start-up included
OPTIMIZERS = {"ddp": uniopt.torch.RAdam, "zero": uniopt.torch.Adam}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3))


def _rank_data(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + rank)
    return torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen)


def _loss(model, x, y) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(model(x), y)


# -- the worker: one rank -------------------------------------------------------------------------
def _train(mode: str, rank: int) -> dict:
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel

    model = DistributedDataParallel(_model())
    if mode == "ddp":
        opt = OPTIMIZERS[mode](model.parameters(), lr=LR)
    else:
        opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=OPTIMIZERS[mode], lr=LR)
        assert isinstance(opt.optim, uniopt.torch.Adam)
    x, y = _rank_data(rank)
    grads = []
    for _ in range(STEPS):
        opt.zero_grad()
        _loss(model, x, y).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        opt.step()
    result = {"params": [p.detach().clone() for p in model.parameters()], "grads": grads}
    if mode == "zero":
        result["local_params"] = sum(len(g["params"]) for g in opt.optim.param_groups)
        opt.consolidate_state_dict(to=0)
        if rank == 0:
            result["state"] = opt.state_dict()["state"]
    return result


def _worker(rank: int, port: int, out: Path) -> None:
    """One rank: both modes in one process group (one interpreter start-up per rank)."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=60),
    )
    try:
        results = {mode: _train(mode, rank) for mode in OPTIMIZERS}
        torch.save(results, out / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


# -- the test side ---------------------------------------------------------------------------------
def _launch(out: Path) -> list[dict]:
    """Start both ranks, wait at most ``TIMEOUT_S`` for them together, kill what is left."""
    from processes import free_ports, run_workers  # tests/: the test side only (ranks run this file)

    (port,) = free_ports(1)
    commands = {
        str(rank): [sys.executable, __file__, str(rank), str(port), str(out)] for rank in range(WORLD)
    }
    run_workers(commands, out, TIMEOUT_S, {**os.environ, "OMP_NUM_THREADS": "1"})
    return [torch.load(out / f"rank{rank}.pt") for rank in range(WORLD)]


def _single_process_reference(opt_class) -> tuple[list[torch.Tensor], list, uniopt.State]:
    """One process, both ranks' data: average the two gradients as DDP does, step uniopt.torch and,
    in lockstep, the NumPy core on the same averaged gradients."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = _model()
        params = list(model.parameters())
        opt = opt_class(params, lr=LR)
        spec = opt_class.spec_class(lr=LR)
        core_params = [p.detach().numpy().copy() for p in params]
        core_state = spec.init(core_params)
        data = [_rank_data(rank) for rank in range(WORLD)]
        averaged = []
        for t in range(STEPS):
            per_rank = []
            for x, y in data:
                opt.zero_grad()
                _loss(model, x, y).backward()
                per_rank.append([p.grad.clone() for p in params])
            assert not any(torch.equal(a, b) for a, b in zip(*per_rank, strict=True))  # different data
            mean = [g0 / WORLD + g1 / WORLD for g0, g1 in zip(*per_rank, strict=True)]
            averaged.append(mean)
            for p, g in zip(params, mean, strict=True):
                p.grad = g.clone()
            opt.step()
            core_grads = [g.numpy().copy() for g in mean]
            core_params, core_state = spec.update(core_grads, core_state, core_params)
            for i, (p, e) in enumerate(zip(params, core_params, strict=True)):
                np.testing.assert_array_equal(p.detach().numpy(), e, err_msg=f"step {t + 1}, param {i}")
        return [p.detach().clone() for p in params], averaged, core_state
    finally:
        torch.set_num_threads(threads)


def _check_ranks_against_reference(results: list[dict], opt_class) -> uniopt.State:
    """Returns the NumPy core's state after the reference run."""
    reference, averaged, core_state = _single_process_reference(opt_class)
    # Each rank applied exactly the average of the two ranks' gradients.
    for rank, res in enumerate(results):
        for t, (got, expected) in enumerate(zip(res["grads"], averaged, strict=True)):
            for g, e in zip(got, expected, strict=True):
                assert torch.equal(g, e), f"rank {rank}, step {t + 1}: gradient is not the average"
    for i, (p0, p1, ref) in enumerate(
        zip(results[0]["params"], results[1]["params"], reference, strict=True)
    ):
        assert torch.equal(p0, p1), f"param {i} differs between ranks"
        assert torch.equal(p0, ref), f"param {i} differs from the single-process run"
    assert not all(torch.equal(p, q) for p, q in zip(reference, _model().parameters(), strict=True)), (
        "the parameters did not move"
    )
    return core_state


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Both ranks' results, one two-process launch for the module."""
    return _launch(tmp_path_factory.mktemp("distributed"))


def test_ddp_two_ranks_match_single_process(ranks: list[dict]) -> None:
    results = [r["ddp"] for r in ranks]
    _check_ranks_against_reference(results, OPTIMIZERS["ddp"])


def test_zero_redundancy_optimizer_two_ranks_match_single_process(ranks: list[dict]) -> None:
    results = [r["zero"] for r in ranks]
    core_state = _check_ranks_against_reference(results, OPTIMIZERS["zero"])
    # The parameters really were sharded: each rank's local uniopt.torch.Adam held only some.
    local = [res["local_params"] for res in results]
    assert all(n > 0 for n in local) and sum(local) == len(results[0]["params"])
    # The consolidated optimizer state equals the NumPy core's after the same averaged gradients.
    state = results[0]["state"]
    assert sorted(state) == list(range(len(core_state.slots)))
    for i, slots in enumerate(core_state.slots):
        assert int(state[i]["step"]) == STEPS
        for name, value in slots.items():
            np.testing.assert_array_equal(state[i][name].numpy(), value, err_msg=f"param {i}, {name}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="one rank of the distributed tests")
    parser.add_argument("rank", type=int)
    parser.add_argument("port", type=int)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    _worker(args.rank, args.port, args.out)
