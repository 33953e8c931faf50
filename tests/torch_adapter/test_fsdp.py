"""uniopt.torch with DTensor parameters: FSDP2 (``fully_shard``), tensor parallelism
(``parallelize_module``) and distributed checkpoints, with the gloo backend, world size 2 on CPU.

The tests start two worker processes once (this file run as a script); each runs every optimizer of
``uniopt.torch.OPTIMIZERS`` in every setup and saves what it saw. Expected values come from the NumPy
core (``spec.update``) run in this process on the gradients the ranks applied (``full_tensor()`` of
each step's DTensor gradients, recorded before the step): after ``STEPS`` steps the gathered
parameters and state must equal it bitwise, and each rank's local shards must be the shards of it
(``torch.chunk`` along the sharded dimension, DTensor's split). Those gradients are in turn checked
against a single process: for FSDP2 in float32 they equal ``g0 / 2 + g1 / 2`` of the two ranks'
batches exactly (FSDP2 divides by the world size, a power of two, and gloo sums the two halves, as
the DDP test in test_distributed.py explains); tensor parallelism splits the matmuls, so its gradients
are compared to a single process within rounding. torch.optim's optimizer trained in the same FSDP2
setup is a cross-check of the setup (close, not bitwise: its formulas round differently).
Both sides use one intra-op thread so each rank's local gradients equal the reference's.
The same launch saves the state every way a user saves it (``torch.save``, ``copy.deepcopy``,
``pickle``, ``dcp.async_save``) and continues a torch.optim.AdamW distributed checkpoint under
uniopt.torch by docs/torch.md's recipe.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch

import uniopt.torch
from uniopt.registry import TABLE

# one worker runs this module (pytest-xdist's loadgroup): its module fixture runs once
pytestmark = pytest.mark.xdist_group("test_fsdp")

WORLD = 2
STEPS = 8  # RAdam (beta2=0.999) takes its first rectified step at step 6
SAVED_AT = 4  # the checkpoint's step
LR = 0.01
TIMEOUT_S = 240  # both ranks together, interpreter start-up included
NAMES = tuple(uniopt.torch.OPTIMIZERS)
NATIVE = {info.name: info.torch.native for info in TABLE if info.torch is not None}
ELEMENTWISE = {name: cls.spec_class.elementwise for name, cls in uniopt.torch.OPTIMIZERS.items()}
FSDP_SETUPS = ("fsdp", "fsdp_no_reshard", "fsdp_bf16")
NATIVE_TOLERANCE = {"Muon": 0.2}
"""torch.optim.Muon under FSDP2 is not its own single-process run: it runs Newton-Schulz in bfloat16
on DTensors, whose products and norm sum per shard and then across ranks. Measured (torch 2.13,
this file's model and data): 5.4e-3 and 0.107 of the distance travelled (the two weights) from
torch.optim.Muon in one process on the same averaged gradients, which uniopt's ``convention="torch"``
matches within 2e-7 in one process and bitwise under FSDP2."""
OPTIONS = {"Muon": {"matmul": "exact"}}
"""Muon's default products are the backend's ``matmul``, not bitwise across backends (see
uniopt.muon); the exact products make the NumPy core a bitwise reference."""


COMPILED = ("Adam",)
"""The optimizers run with ``implementation="compiled"`` (inductor compiles a graph per spec: seconds
each on a small machine)."""


def _implementations(name: str, setup: str) -> tuple[str, ...]:
    """In the default FSDP2 setup every implementation (``"compiled"`` for :data:`COMPILED`); the
    per-tensor one and the default in the others (``"flat"`` is refused for a spec that is not
    elementwise, and its ``"compiled"`` steps DTensor parameters per tensor eagerly, as ``"loop"``)."""
    if not ELEMENTWISE[name]:
        return ("loop", "auto")
    if setup != "fsdp":
        return ("loop", "auto")
    return ("loop", "flat", "auto", *(("compiled",) if name in COMPILED else ()))


def _model() -> torch.nn.Module:
    """Out-features 3: FSDP2 splits the last layer's rows unevenly (2 and 1)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3))


def _trained(name: str, model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters ``name`` updates: Muon takes matrices only (as torch.optim.Muon)."""
    params = list(model.parameters())
    return [p for p in params if p.ndim == 2] if name == "Muon" else params


def _rank_data(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + rank)
    return torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen)


def _loss(model, x, y) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(model(x), y)


# -- the worker: one rank -------------------------------------------------------------------------
def _placements(t) -> list[tuple[str, int | None]]:
    return [(type(p).__name__, getattr(p, "dim", None)) for p in t.placements]


def _fsdp_model(setup: str, mesh):
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    options = {"mesh": mesh}
    if setup == "fsdp_no_reshard":
        options["reshard_after_forward"] = False
    if setup == "fsdp_bf16":
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    model = _model()
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, **options)
    fully_shard(model, **options)
    return model


def _tp_model(mesh):
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    return parallelize_module(_model(), mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})


def _record(model, opt, name) -> dict:
    """Gathered parameters and state (collectives: every rank calls this), and this rank's shards."""
    params = _trained(name, model)
    state = []
    for p in params:
        entry = {"step": int(opt.state[p]["step"])}
        for key, value in opt.state[p].items():
            if key != "step":
                entry[key] = {
                    "type": type(value).__name__,
                    "placements": _placements(value),
                    "full": value.full_tensor().clone(),
                    "local": value.to_local().clone(),
                    "storage": value.to_local().untyped_storage().data_ptr(),
                }
        state.append(entry)
    return {
        "params": [p.detach().full_tensor().clone() for p in model.parameters()],
        "local_params": [p.detach().to_local().clone() for p in model.parameters()],
        "placements": [_placements(p) for p in model.parameters()],
        "state": state,
    }


def _train(
    name: str, model, implementation: str | None, rank: int, same_data: bool = False, options=None
) -> dict:
    """``STEPS`` steps of ``name`` (torch.optim's when ``implementation`` is None) on ``model``;
    ``options``: uniopt's arguments besides ``lr`` (default :data:`OPTIONS`)."""
    params = _trained(name, model)
    if implementation is None:
        opt = getattr(torch.optim, NATIVE[name])(params, lr=LR)
    else:
        options = OPTIONS.get(name, {}) if options is None else options
        opt = uniopt.torch.OPTIMIZERS[name](params, lr=LR, implementation=implementation, **options)
    x, y = _rank_data(0 if same_data else rank)
    grads = []
    for _ in range(STEPS):
        opt.zero_grad()
        _loss(model, x, y).backward()
        grads.append([p.grad.full_tensor().clone() for p in params])
        opt.step()
    if implementation is None:
        return {"params": [p.detach().full_tensor().clone() for p in model.parameters()]}
    result = {"grads": grads, **_record(model, opt, name)}
    if opt.spec_class.has_eval_view:  # Schedule-Free: the parameters to evaluate at, then back
        opt.eval()
        result["eval_params"] = [p.detach().full_tensor().clone() for p in model.parameters()]
        opt.train()
        result["train_params"] = [p.detach().full_tensor().clone() for p in model.parameters()]
    return result


def _refusals(mesh) -> dict:
    """A step with a plain gradient assigned to a DTensor parameter: the error, and whether the
    parameters and the state (gathered) are as before it."""
    out = {}
    for implementation in ("loop", "auto"):
        model = _fsdp_model("fsdp", mesh)
        opt = uniopt.torch.Adam(model.parameters(), lr=LR, implementation=implementation)
        _loss(model, *_rank_data(0)).backward()
        opt.step()
        before = _record(model, opt, "Adam")
        first = next(iter(model.parameters()))
        first.grad = torch.zeros(first.shape)
        try:
            opt.step()
            error = None
        except RuntimeError as raised:
            error = str(raised)
        after = _record(model, opt, "Adam")
        same = all(torch.equal(a, b) for a, b in zip(before["params"], after["params"], strict=True))
        for old, new in zip(before["state"], after["state"], strict=True):
            same = same and old["step"] == new["step"]
            same = same and all(torch.equal(old[k]["full"], new[k]["full"]) for k in old if k != "step")
        out[implementation] = {"error": error, "unchanged": same}
    return out


def _checkpoint_runs(name: str, mesh, rank: int, folder: Path) -> dict:
    """FSDP2: ``SAVED_AT`` steps, a distributed checkpoint (model and optimizer), then the uninterrupted
    run to ``STEPS``; a fresh model and optimizer load the checkpoint and continue to ``STEPS``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    x, y = _rank_data(rank)

    def steps(model, opt, count, grads=None):
        for _ in range(count):
            opt.zero_grad()
            _loss(model, x, y).backward()
            if grads is not None:
                grads.append([p.grad.full_tensor().clone() for p in _trained(name, model)])
            opt.step()

    model = _fsdp_model("fsdp", mesh)
    opt = uniopt.torch.OPTIMIZERS[name](_trained(name, model), lr=LR, **OPTIONS.get(name, {}))
    grads: list = []
    steps(model, opt, SAVED_AT, grads)
    model_sd, optim_sd = get_state_dict(model, opt)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=folder)
    steps(model, opt, STEPS - SAVED_AT, grads)
    uninterrupted = [p.detach().full_tensor().clone() for p in model.parameters()]

    model = _fsdp_model("fsdp", mesh)
    opt = uniopt.torch.OPTIMIZERS[name](_trained(name, model), lr=LR, **OPTIONS.get(name, {}))
    model_sd, optim_sd = get_state_dict(model, opt)
    loaded = {"model": model_sd, "optim": optim_sd}
    dcp.load(loaded, checkpoint_id=folder)
    set_state_dict(model, opt, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])
    restored_step = {int(s["step"]) for s in opt.state.values()}
    steps(model, opt, STEPS - SAVED_AT)
    continued = [p.detach().full_tensor().clone() for p in model.parameters()]
    return {
        "grads": grads,
        "uninterrupted": uninterrupted,
        "continued": continued,
        "restored_step": restored_step,
        "state_types": sorted(
            {type(v).__name__ for s in opt.state.values() for k, v in s.items() if k != "step"}
        ),
    }


SERIALIZED = ("AdamW", ("loop", "flat", "auto"))
"""The optimizer and implementations whose state is pickled, deep-copied, saved with ``torch.save``
and with ``dcp.async_save`` under FSDP2 (the flat ones keep each slot entry a DTensor over a piece of
one buffer, most pieces at a nonzero offset)."""
RESTORES = ("torch_save", "torch_save_distributed", "deepcopy", "async_save")


def _serialization_runs(mesh, rank: int, folder: Path) -> dict:
    """Per implementation of :data:`SERIALIZED`: ``SAVED_AT`` steps, then the state saved every way a
    user saves it (``torch.save`` of ``opt.state_dict()`` and of ``get_optimizer_state_dict``,
    ``copy.deepcopy`` of ``opt.state_dict()``, ``pickle.dumps`` of ``opt.state``, ``dcp.async_save``
    of ``get_state_dict``), the uninterrupted run to ``STEPS``; then a fresh model and optimizer
    restored from each (the model from a copy of its state dict, or from the async checkpoint) and
    continued to ``STEPS``."""
    import copy
    import io
    import pickle

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        get_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
        set_state_dict,
    )

    name, implementations = SERIALIZED
    x, y = _rank_data(rank)

    def fresh(implementation):
        model = _fsdp_model("fsdp", mesh)
        return model, uniopt.torch.OPTIMIZERS[name](model.parameters(), lr=LR, implementation=implementation)

    def steps(model, opt, count, grads=None):
        for _ in range(count):
            opt.zero_grad()
            _loss(model, x, y).backward()
            if grads is not None:
                grads.append([p.grad.full_tensor().clone() for p in model.parameters()])
            opt.step()

    def saved(buffer):
        return torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)

    out = {}
    for implementation in implementations:
        model, opt = fresh(implementation)
        grads: list = []
        steps(model, opt, SAVED_AT, grads)
        at_save = [
            {k: (v.to_local().clone(), _placements(v)) for k, v in opt.state[p].items() if k != "step"}
            for p in model.parameters()
        ]
        model_sd = copy.deepcopy(get_model_state_dict(model))
        files = {"torch_save": io.BytesIO(), "torch_save_distributed": io.BytesIO()}
        torch.save(opt.state_dict(), files["torch_save"])
        torch.save(get_optimizer_state_dict(model, opt), files["torch_save_distributed"])
        copied = copy.deepcopy(opt.state_dict())
        pickled = pickle.dumps(opt.state)
        checkpoint = folder / f"async-{implementation}"
        model_sd_live, optim_sd_live = get_state_dict(model, opt)
        dcp.async_save({"model": model_sd_live, "optim": optim_sd_live}, checkpoint_id=checkpoint).result()
        steps(model, opt, STEPS - SAVED_AT, grads)
        uninterrupted = [p.detach().full_tensor().clone() for p in model.parameters()]
        unpickled = pickle.loads(pickled)
        run = {
            "grads": grads,
            "uninterrupted": uninterrupted,
            "at_save": at_save,
            "unpickled": [
                {
                    k: (type(v).__name__, v.to_local().clone(), _placements(v))
                    for k, v in s.items()
                    if k != "step"
                }
                for s in unpickled.values()
            ],
            "unpickled_steps": [int(s["step"]) for s in unpickled.values()],
            "copied_after_steps": [
                {k: v.to_local().clone() for k, v in s.items() if k != "step"}
                for s in copied["state"].values()
            ],
            "continued": {},
        }
        for how in RESTORES:
            model, opt = fresh(implementation)
            if how == "async_save":
                model_sd_new, optim_sd_new = get_state_dict(model, opt)
                loaded = {"model": model_sd_new, "optim": optim_sd_new}
                dcp.load(loaded, checkpoint_id=checkpoint)
                set_state_dict(model, opt, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])
            else:
                set_model_state_dict(model, copy.deepcopy(model_sd))
                if how == "torch_save":
                    opt.load_state_dict(saved(files[how]))
                elif how == "torch_save_distributed":
                    set_optimizer_state_dict(model, opt, saved(files[how]))
                else:
                    opt.load_state_dict(copy.deepcopy(copied))
            steps(model, opt, STEPS - SAVED_AT)
            run["continued"][how] = [p.detach().full_tensor().clone() for p in model.parameters()]
        out[implementation] = run
    return out


def _torch_optim_checkpoint_runs(mesh, rank: int, folder: Path) -> dict:
    """docs/torch.md's recipe for a torch.optim distributed checkpoint: torch.optim.AdamW under FSDP2
    for ``SAVED_AT`` steps, saved with ``dcp.save``; loaded into a torch.optim.AdamW template, which
    then hands its state to ``uniopt.torch.AdamW(convention="torch")`` by
    ``load_torch_optim_state_dict``, continued to ``STEPS``. Also what the direct way (a uniopt
    template) raises inside ``dcp.load``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    x, y = _rank_data(rank)

    def steps(model, opt, count, grads=None):
        for _ in range(count):
            opt.zero_grad()
            _loss(model, x, y).backward()
            if grads is not None:
                grads.append([p.grad.full_tensor().clone() for p in model.parameters()])
            opt.step()

    model = _fsdp_model("fsdp", mesh)
    native = torch.optim.AdamW(model.parameters(), lr=LR)
    steps(model, native, SAVED_AT)
    model_sd, optim_sd = get_state_dict(model, native)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=folder)
    at_save = {
        "params": [p.detach().full_tensor().clone() for p in model.parameters()],
        "state": [
            {k: v.full_tensor().clone() if k != "step" else float(v) for k, v in native.state[p].items()}
            for p in model.parameters()
        ],
    }
    steps(model, native, STEPS - SAVED_AT)
    native_end = [p.detach().full_tensor().clone() for p in model.parameters()]

    # the recipe
    model = _fsdp_model("fsdp", mesh)
    template = torch.optim.AdamW(model.parameters(), lr=LR)
    model_sd, optim_sd = get_state_dict(model, template)
    loaded = {"model": model_sd, "optim": optim_sd}
    dcp.load(loaded, checkpoint_id=folder)
    set_state_dict(model, template, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])
    opt = uniopt.torch.AdamW(model.parameters(), lr=LR, convention="torch")
    uniopt.torch.load_torch_optim_state_dict(opt, template.state_dict())
    del template, loaded, optim_sd
    restored = [
        {
            k: (v.full_tensor().clone(), _placements(v)) if k != "step" else int(v)
            for k, v in opt.state[p].items()
        }
        for p in model.parameters()
    ]
    grads: list = []
    steps(model, opt, STEPS - SAVED_AT, grads)
    continued = [p.detach().full_tensor().clone() for p in model.parameters()]

    # the direct way: dcp.load into uniopt's template
    model = _fsdp_model("fsdp", mesh)
    opt = uniopt.torch.AdamW(model.parameters(), lr=LR)
    model_sd, optim_sd = get_state_dict(model, opt)
    try:
        dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=folder)
        direct = None
    except CheckpointException as error:  # torch's planner, on every rank (a BaseException)
        direct = f"{type(error).__name__}: {error}"
    return {
        "at_save": at_save,
        "native_end": native_end,
        "restored": restored,
        "placements": [_placements(p) for p in model.parameters()],
        "grads": grads,
        "continued": continued,
        "direct": direct,
    }


def _one_process_continuation(name: str, folder: Path, grads: list) -> dict:
    """One process, no process group: a plain model and optimizer load the two ranks' checkpoint
    (the state resharded into whole tensors) and continue with the gradients the ranks applied."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model = _model()
    params = _trained(name, model)
    opt = uniopt.torch.OPTIMIZERS[name](params, lr=LR, **OPTIONS.get(name, {}))
    model_sd, optim_sd = get_state_dict(model, opt)
    loaded = {"model": model_sd, "optim": optim_sd}
    dcp.load(loaded, checkpoint_id=folder)
    set_state_dict(model, opt, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])
    restored_step = {int(s["step"]) for s in opt.state.values()}
    for step_grads in grads[SAVED_AT:]:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.clone()
        opt.step()
    return {
        "continued": [p.detach().clone() for p in model.parameters()],
        "restored_step": restored_step,
        "state_types": sorted(
            {type(v).__name__ for s in opt.state.values() for k, v in s.items() if k != "step"}
        ),
    }


def _worker(rank: int, port: int, out: Path) -> None:
    """One rank: every setup and optimizer in one process group (one interpreter start-up per rank)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=60),
    )
    results: dict = {"runs": {}, "native": {}, "checkpoint": {}, "refusals": {}, "seconds": {}}
    try:
        mesh = init_device_mesh("cpu", (WORLD,))
        start = time.monotonic()
        for name in NAMES:
            for setup in FSDP_SETUPS:
                for implementation in _implementations(name, setup):
                    model = _fsdp_model(setup, mesh)
                    results["runs"][name, setup, implementation] = _train(name, model, implementation, rank)
            if NATIVE[name] is not None:
                # uniopt's torch convention against torch.optim, both under FSDP2
                torch_convention = {"convention": "torch"}
                ours = _train(name, _fsdp_model("fsdp", mesh), "auto", rank, options=torch_convention)
                try:
                    native = _train(name, _fsdp_model("fsdp", mesh), None, rank)
                except RuntimeError as error:  # a torch.optim optimizer that DTensors refuse
                    native = {"error": str(error).splitlines()[0]}
                results["native"][name] = {"uniopt": ours["params"], **native}
        results["refusals"] = _refusals(mesh)
        results["seconds"]["fsdp"] = time.monotonic() - start
        start = time.monotonic()
        for name in NAMES:
            for implementation in ("loop", "auto"):
                model = _tp_model(mesh)
                results["runs"][name, "tp", implementation] = _train(name, model, implementation, rank, True)
        results["seconds"]["tp"] = time.monotonic() - start
        start = time.monotonic()
        for name in NAMES:
            results["checkpoint"][name] = _checkpoint_runs(name, mesh, rank, out / f"checkpoint-{name}")
        results["seconds"]["checkpoint"] = time.monotonic() - start
        start = time.monotonic()
        results["serialization"] = _serialization_runs(mesh, rank, out / "serialization")
        results["torch_optim_checkpoint"] = _torch_optim_checkpoint_runs(mesh, rank, out / "torch-optim")
        results["seconds"]["serialization"] = time.monotonic() - start
        dist.barrier()
    finally:
        dist.destroy_process_group()
    if rank == 0:  # the world of one: this process alone, after the group is gone
        start = time.monotonic()
        results["one_process"] = {
            name: _one_process_continuation(
                name, out / f"checkpoint-{name}", results["checkpoint"][name]["grads"]
            )
            for name in NAMES
        }
        results["seconds"]["one_process"] = time.monotonic() - start
    torch.save(results, out / f"rank{rank}.pt")


# -- the test side ---------------------------------------------------------------------------------
def _launch(out: Path) -> list[dict]:
    """Start both ranks, wait at most ``TIMEOUT_S`` for them together, kill what is left."""
    from processes import free_ports, run_workers  # tests/: the test side only (ranks run this file)

    (port,) = free_ports(1)
    commands = {
        str(rank): [sys.executable, __file__, str(rank), str(port), str(out)] for rank in range(WORLD)
    }
    run_workers(commands, out, TIMEOUT_S, {**os.environ, "OMP_NUM_THREADS": "1"})
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Both ranks' results, one two-process launch for the module."""
    return _launch(tmp_path_factory.mktemp("fsdp"))


def _core(name: str, grads: list[list[torch.Tensor]]) -> tuple[list[np.ndarray], uniopt.State]:
    """The NumPy core's parameters (every parameter of the model, in order) and state after the
    recorded gradients, from the model's initial parameters."""
    spec = uniopt.torch.OPTIMIZERS[name].spec_class(lr=LR, **OPTIONS.get(name, {}))
    model = _model()
    every = [p.detach().numpy().copy() for p in model.parameters()]
    trained = [i for i, p in enumerate(model.parameters()) if any(p is q for q in _trained(name, model))]
    params = [every[i] for i in trained]
    state = spec.init(params)
    for step_grads in grads:
        params, state = spec.update([g.numpy().copy() for g in step_grads], state, params)
    for i, p in zip(trained, params, strict=True):
        every[i] = p
    return every, state


def _averaged_gradients(name: str, params: list[np.ndarray]) -> list[torch.Tensor]:
    """``g0 / 2 + g1 / 2`` of the two ranks' batches at ``params``, in one process, one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = _model()
        with torch.no_grad():
            for p, value in zip(model.parameters(), params, strict=True):
                p.copy_(torch.from_numpy(value))
        per_rank = []
        for rank in range(WORLD):
            model.zero_grad()
            _loss(model, *_rank_data(rank)).backward()
            per_rank.append([p.grad.clone() for p in _trained(name, model)])
        return [g0 / WORLD + g1 / WORLD for g0, g1 in zip(*per_rank, strict=True)]
    finally:
        torch.set_num_threads(threads)


def _shard(full: torch.Tensor, placements: list, rank: int) -> torch.Tensor:
    """``rank``'s shard of ``full`` on a one-dimensional mesh of ``WORLD`` (DTensor's split)."""
    ((kind, dim),) = placements
    if kind == "Replicate":
        return full
    assert kind == "Shard", placements
    return torch.chunk(full, WORLD, dim)[rank]


def _trained_indices(name: str) -> list[int]:
    """Positions in ``model.parameters()`` of the parameters ``name`` updates."""
    model = _model()
    trained = _trained(name, model)
    return [i for i, p in enumerate(model.parameters()) if any(p is q for q in trained)]


def _check_run(ranks: list[dict], key: tuple[str, str, str]) -> None:
    """Both ranks gathered the same gradients; parameters and state equal the NumPy core's on them,
    each rank holding the shards of them (state: DTensors with the parameter's placements, or
    replicated for a slot of another shape)."""
    name = key[0]
    runs = [r["runs"][key] for r in ranks]
    for t, (g0, g1) in enumerate(zip(runs[0]["grads"], runs[1]["grads"], strict=True)):
        for a, b in zip(g0, g1, strict=True):
            assert torch.equal(a, b), f"{key}: step {t + 1}: the ranks gathered different gradients"
    expected, core_state = _core(name, runs[0]["grads"])
    indices = _trained_indices(name)
    spec = uniopt.torch.OPTIMIZERS[name].spec_class(lr=LR, **OPTIONS.get(name, {}))
    for rank, run in enumerate(runs):
        for i, (got, want) in enumerate(zip(run["params"], expected, strict=True)):
            np.testing.assert_array_equal(got.numpy(), want, err_msg=f"{key}: rank {rank}, param {i}")
            shard = _shard(got, run["placements"][i], rank)
            assert torch.equal(run["local_params"][i], shard), f"{key}: rank {rank}, param {i}: local shard"
        assert len(run["state"]) == len(core_state.slots) == len(indices)
        for index, entry, slots in zip(indices, run["state"], core_state.slots, strict=True):
            where = f"{key}: rank {rank}, param {index}"
            assert entry["step"] == STEPS, where
            in_use = spec.slots_in_use(expected[index].shape)  # Adafactor keeps no placeholders
            assert set(entry) - {"step"} == set(in_use), f"{where}: {sorted(entry)}"
            for slot in in_use:
                value = slots[slot]
                held = entry[slot]
                assert held["type"] == "DTensor", f"{where} {slot}: {held['type']}"
                np.testing.assert_array_equal(held["full"].numpy(), value, err_msg=f"{where}, {slot}")
                if value.shape == expected[index].shape:  # the parameter's placements
                    placements = run["placements"][index]
                else:  # Adafactor's factored statistics: replicated
                    placements = [("Replicate", None)]
                assert held["placements"] == placements, f"{where} {slot}: {held['placements']}"
                assert torch.equal(held["local"], _shard(held["full"], placements, rank)), f"{where} {slot}"
        # the flat implementations keep DTensor parameters' local shards of each slot in one buffer
        for slot in {n for entry in run["state"] for n in entry if n != "step"}:
            holding = [entry[slot] for entry in run["state"] if slot in entry]
            storages = {held["storage"] for held in holding}
            flat = ELEMENTWISE[name] and key[2] != "loop"
            assert len(storages) == (1 if flat else len(holding)), f"{key}: rank {rank}, {slot}"
    initial = [p.detach().numpy() for p in _model().parameters()]
    assert not all(np.array_equal(a, b) for a, b in zip(expected, initial, strict=True)), (
        f"{key}: nothing moved"
    )


@pytest.mark.parametrize("setup", ["fsdp", "tp"])
def test_schedule_free_eval_and_train_switch_the_shards(ranks: list[dict], setup: str) -> None:
    """``eval()`` turns each rank's shards into the evaluation sequence x, as the NumPy core's
    ``eval_params`` of the same state; ``train()`` turns them back."""
    run = ranks[0]["runs"]["ScheduleFreeAdamW", setup, "auto"]
    params, state = _core("ScheduleFreeAdamW", run["grads"])
    spec = uniopt.torch.ScheduleFreeAdamW.spec_class(lr=LR)
    expected = spec.eval_params(params, state)
    for i, (got, want) in enumerate(zip(run["eval_params"], expected, strict=True)):
        np.testing.assert_array_equal(got.numpy(), want, err_msg=f"param {i}")
    assert not all(np.array_equal(a, b) for a, b in zip(expected, params, strict=True))
    back = spec.train_params(expected, state)
    for i, (got, want) in enumerate(zip(run["train_params"], back, strict=True)):
        np.testing.assert_array_equal(got.numpy(), want, err_msg=f"param {i}")


@pytest.mark.parametrize("name", NAMES)
def test_the_state_dict_template_step_leaves_the_parameters(name: str) -> None:
    """``get_optimizer_state_dict`` of an optimizer without state first runs a ``step()`` with lr 0
    and zero gradients (torch's ``_init_optim_state``, to create the state a checkpoint loads
    into): it must not move the parameters, even with weight decay."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    opt = uniopt.torch.OPTIMIZERS[name](_trained(name, model), lr=LR, weight_decay=0.1)
    optim_sd = get_optimizer_state_dict(model, opt)
    assert optim_sd["state"], "no state was created"
    for i, (a, b) in enumerate(zip(before, model.parameters(), strict=True)):
        assert torch.equal(a, b), f"param {i}"


@pytest.mark.parametrize("implementation", ["loop", "auto"])
def test_a_plain_gradient_of_a_dtensor_parameter_is_refused_before_any_change(
    ranks: list[dict], implementation: str
) -> None:
    for rank, result in enumerate(ranks):
        refusal = result["refusals"][implementation]
        assert refusal["error"] is not None and "expected a DTensor" in refusal["error"], (rank, refusal)
        assert refusal["unchanged"], f"rank {rank}: the failed step changed parameters or state"


def test_distributed_state_dicts_without_the_uniopt_entry_are_refused() -> None:
    """A torch.optim dict from ``get_optimizer_state_dict`` is refused as torch.optim dicts are; the
    flattened form (``flatten_optimizer_state_dict=True``), which drops the groups' ``uniopt`` entry,
    is refused with the reason; nothing is loaded either way."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    model = _model()
    x, y = _rank_data(0)
    native = torch.optim.RAdam(model.parameters(), lr=LR)
    _loss(model, x, y).backward()
    native.step()
    opt = uniopt.torch.RAdam(model.parameters(), lr=LR)
    opt.step()
    before = {k: v.clone() for k, v in opt.state[next(model.parameters())].items()}
    with pytest.raises(ValueError, match=r"non-uniopt optimizer.*load_torch_optim_state_dict"):
        set_optimizer_state_dict(model, opt, get_optimizer_state_dict(model, native))
    flattened = StateDictOptions(flatten_optimizer_state_dict=True)
    optim_sd = get_optimizer_state_dict(model, opt, options=flattened)
    with pytest.raises(ValueError, match="flatten_optimizer_state_dict=True"):
        set_optimizer_state_dict(model, opt, optim_sd, options=flattened)
    after = opt.state[next(model.parameters())]
    assert all(torch.equal(after[k], v) for k, v in before.items())


FSDP_KEYS = [(n, s, i) for n in NAMES for s in FSDP_SETUPS for i in _implementations(n, s)]


@pytest.mark.parametrize("key", FSDP_KEYS, ids=["-".join(k) for k in FSDP_KEYS])
def test_fsdp2_matches_the_core_on_the_applied_gradients(ranks: list[dict], key) -> None:
    _check_run(ranks, key)


@pytest.mark.parametrize("name", NAMES)
def test_fsdp2_gradients_are_the_single_process_average(ranks: list[dict], name: str) -> None:
    """In float32 the gradients the ranks applied are the single process's ``g0 / 2 + g1 / 2`` at
    each step's parameters, bitwise; with bfloat16 compute they are not (the policy took effect)."""
    for setup in ("fsdp", "fsdp_no_reshard"):
        grads = ranks[0]["runs"][name, setup, "loop"]["grads"]
        for t in range(STEPS):
            params, _ = _core(name, grads[:t])
            for i, (got, want) in enumerate(zip(grads[t], _averaged_gradients(name, params), strict=True)):
                assert torch.equal(got, want), f"{setup}: step {t + 1}, param {i}"
    bf16 = ranks[0]["runs"][name, "fsdp_bf16", "loop"]["grads"][0]
    fp32 = ranks[0]["runs"][name, "fsdp", "loop"]["grads"][0]
    assert not all(torch.equal(a, b) for a, b in zip(bf16, fp32, strict=True))
    for a, b in zip(bf16, fp32, strict=True):
        torch.testing.assert_close(a, b, rtol=0.05, atol=2e-3)


@pytest.mark.parametrize("name", [n for n in NAMES if NATIVE[n] is not None])
def test_fsdp2_native_torch_optim_is_close(ranks: list[dict], name: str) -> None:
    """torch.optim's optimizer of the same name in the same FSDP2 setup ends close to uniopt's
    ``convention="torch"``: the difference of the two within 1e-4 of the distance travelled
    (:data:`NATIVE_TOLERANCE` for Muon)."""
    if "error" in ranks[0]["native"][name]:
        pytest.skip(f"torch.optim.{NATIVE[name]} fails under FSDP2: {ranks[0]['native'][name]['error']}")
    run = ranks[0]["native"][name]
    for i, (a, b, start) in enumerate(zip(run["uniopt"], run["params"], _model().parameters(), strict=True)):
        moved = (b - start.detach()).norm()
        within = NATIVE_TOLERANCE.get(name, 1e-4) * moved
        assert (a - b).norm() <= within, f"param {i}: {(a - b).norm()} against a displacement of {moved}"


def test_fsdp2_muon_backend_products_match_a_single_process(ranks: list[dict]) -> None:
    """Muon's default products (torch's ``matmul``, not bitwise with NumPy) on the gathered matrices:
    under FSDP2 (``convention="torch"``, the cross-check's run) bitwise a single process's
    uniopt.torch.Muon on the averaged gradients, one intra-op thread on both sides."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = _model()
        params = _trained("Muon", model)
        opt = uniopt.torch.Muon(params, lr=LR, convention="torch")
        for _ in range(STEPS):
            current = [p.detach().numpy().copy() for p in model.parameters()]
            for p, g in zip(params, _averaged_gradients("Muon", current), strict=True):
                p.grad = g
            opt.step()
    finally:
        torch.set_num_threads(threads)
    for i, (got, want) in enumerate(
        zip(ranks[0]["native"]["Muon"]["uniopt"], model.parameters(), strict=True)
    ):
        assert torch.equal(got, want.detach()), f"param {i}"


TP_KEYS = [(n, "tp", i) for n in NAMES for i in ("loop", "auto")]


@pytest.mark.parametrize("key", TP_KEYS, ids=["-".join(k) for k in TP_KEYS])
def test_tensor_parallel_matches_the_core_on_the_applied_gradients(ranks: list[dict], key) -> None:
    _check_run(ranks, key)
    placements = ranks[0]["runs"][key]["placements"]  # colwise, then rowwise (its bias replicated)
    assert placements == [[("Shard", 0)], [("Shard", 0)], [("Shard", 1)], [("Replicate", None)]]


@pytest.mark.parametrize("name", NAMES)
def test_tensor_parallel_gradients_are_close_to_a_single_process(ranks: list[dict], name: str) -> None:
    """Tensor parallelism splits the matmuls (the row-parallel layer sums partial products), so its
    gradients equal a single process's within rounding only."""
    grads = ranks[0]["runs"][name, "tp", "loop"]["grads"]
    for t in range(STEPS):
        params, _ = _core(name, grads[:t])
        model = _model()
        with torch.no_grad():
            for p, value in zip(model.parameters(), params, strict=True):
                p.copy_(torch.from_numpy(value))
        _loss(model, *_rank_data(0)).backward()
        for got, p in zip(grads[t], _trained(name, model), strict=True):
            torch.testing.assert_close(got, p.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_continues_bitwise_on_two_ranks(ranks: list[dict], name: str) -> None:
    """Saved at step SAVED_AT with torch.distributed.checkpoint, loaded into a fresh FSDP2 model and
    optimizer: the continuation equals the uninterrupted run, which equals the NumPy core."""
    for rank, result in enumerate(ranks):
        run = result["checkpoint"][name]
        assert run["restored_step"] == {SAVED_AT}
        assert run["state_types"] in ([], ["DTensor"])
        expected, _ = _core(name, run["grads"])
        for i, (a, b, e) in enumerate(zip(run["continued"], run["uninterrupted"], expected, strict=True)):
            np.testing.assert_array_equal(b.numpy(), e, err_msg=f"rank {rank}, param {i}: uninterrupted")
            assert torch.equal(a, b), f"rank {rank}, param {i}: the continued run differs"


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_of_two_ranks_continues_bitwise_in_one_process(ranks: list[dict], name: str) -> None:
    """The two ranks' checkpoint loaded by one process into a plain model and optimizer (the state
    resharded into whole tensors) continues, on the same gradients, to the uninterrupted run."""
    run = ranks[0]["one_process"][name]
    assert run["restored_step"] == {SAVED_AT}
    assert run["state_types"] in ([], ["Tensor"]), run["state_types"]
    for i, (a, b) in enumerate(
        zip(run["continued"], ranks[0]["checkpoint"][name]["uninterrupted"], strict=True)
    ):
        assert torch.equal(a, b), f"param {i}"


@pytest.mark.parametrize("implementation", SERIALIZED[1])
def test_state_saved_every_way_continues_bitwise(ranks: list[dict], implementation: str) -> None:
    """Under FSDP2, each rank's state saved with ``torch.save`` (``opt.state_dict()`` and
    ``get_optimizer_state_dict``), deep-copied, or saved with ``dcp.async_save``, restored into a
    fresh model and optimizer, continues bitwise to the uninterrupted run, which equals the NumPy
    core; ``pickle.loads(pickle.dumps(opt.state))`` gives back DTensors holding each rank's shards of
    the core's state at the save; the deep copy is not changed by the later steps."""
    name = SERIALIZED[0]
    for rank, result in enumerate(ranks):
        run = result["serialization"][implementation]
        expected, _ = _core(name, run["grads"])
        for i, (got, want) in enumerate(zip(run["uninterrupted"], expected, strict=True)):
            np.testing.assert_array_equal(got.numpy(), want, err_msg=f"rank {rank}, param {i}: uninterrupted")
        for how in RESTORES:
            for i, (a, b) in enumerate(zip(run["continued"][how], run["uninterrupted"], strict=True)):
                assert torch.equal(a, b), f"rank {rank}, {how}, param {i}: the continued run differs"
        _, core_state = _core(name, run["grads"][:SAVED_AT])
        assert run["unpickled_steps"] == [SAVED_AT] * len(core_state.slots)
        for i, (core_slots, saved, unpickled, copied) in enumerate(
            zip(core_state.slots, run["at_save"], run["unpickled"], run["copied_after_steps"], strict=True)
        ):
            assert set(saved) == set(unpickled) == set(copied) == set(core_slots), i
            for slot, (local, placements) in saved.items():
                where = f"rank {rank}, param {i}, {slot}"
                want = _shard(torch.from_numpy(core_slots[slot]), placements, rank)
                assert torch.equal(local, want), f"{where}: the state at the save"
                kind, unpickled_local, unpickled_placements = unpickled[slot]
                assert kind == "DTensor" and unpickled_placements == placements, where
                assert torch.equal(unpickled_local, want), f"{where}: unpickled"
                assert torch.equal(copied[slot], want), f"{where}: the deep copy after the later steps"


def test_a_torch_optim_checkpoint_continues_under_uniopt_by_the_documented_recipe(ranks: list[dict]) -> None:
    """docs/torch.md's recipe: a torch.optim.AdamW ``dcp.save`` checkpoint under FSDP2, loaded into a
    torch.optim.AdamW template and handed to ``uniopt.torch.AdamW(convention="torch")`` by
    ``load_torch_optim_state_dict``: the state is torch.optim's at the save bit for bit (sharded as
    the parameters), and the continuation equals the NumPy core (torch's convention) started from
    torch.optim's parameters and state on the gradients the ranks applied, and is close to
    torch.optim's own uninterrupted run. ``dcp.load`` straight into uniopt's template fails in torch's
    planner (the groups' ``convention``, which a torch.optim checkpoint lacks)."""
    spec = uniopt.torch.AdamW.spec_class(lr=LR, convention="torch")
    for rank, result in enumerate(ranks):
        run = result["torch_optim_checkpoint"]
        assert run["direct"] is not None and "convention" in run["direct"], run["direct"]
        saved = run["at_save"]
        for i, (entry, native, placements) in enumerate(
            zip(run["restored"], saved["state"], run["placements"], strict=True)
        ):
            assert entry["step"] == SAVED_AT and native["step"] == SAVED_AT, (
                i,
                entry["step"],
                native["step"],
            )
            assert set(entry) == set(native) == {"step", *spec.slot_names()}, i
            for slot in spec.slot_names():
                full, held = entry[slot]
                assert torch.equal(full, native[slot]), f"rank {rank}, param {i}, {slot}"
                assert held == placements, f"rank {rank}, param {i}, {slot}: {held}"
        params = [p.numpy().copy() for p in saved["params"]]
        state = uniopt.State(
            step=SAVED_AT,
            slots=tuple({k: s[k].numpy().copy() for k in spec.slot_names()} for s in saved["state"]),
        )
        for step_grads in run["grads"]:
            params, state = spec.update([g.numpy().copy() for g in step_grads], state, params)
        for i, (got, want, native_end, start) in enumerate(
            zip(run["continued"], params, run["native_end"], saved["params"], strict=True)
        ):
            np.testing.assert_array_equal(got.numpy(), want, err_msg=f"rank {rank}, param {i}")
            moved = (native_end - start).norm()
            assert (got - native_end).norm() <= 1e-4 * moved, f"rank {rank}, param {i}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="one rank of the FSDP2 / DTensor tests")
    parser.add_argument("rank", type=int)
    parser.add_argument("port", type=int)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    _worker(args.rank, args.port, args.out)
