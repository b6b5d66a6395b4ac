"""torch.distributed on the CPU (gloo, two processes): DDP, FSDP2 and ZeroRedundancyOptimizer give
the parameters of the single-process run. Each worker checks its own result; a failure in either
process fails the test through torch.multiprocessing.spawn."""
import os
import sys
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import noisefuse as nf
from cases import cpu_backends

WORLD = 2
STEPS = 4
# ZeroRedundancyOptimizer builds the optimizer itself from a class and keyword arguments.
ZERO_CLASSES = {"adapnm": nf.AdaPNM, "pnm": nf.PNM, "demon_sgd": nf.DemonSGD, "demon_sgd_clip": nf.DemonSGD,
                "adapnm_bf16_state": nf.AdaPNM, "adapnm_8bit": nf.AdaPNM}
# demon_sgd_clip: max_grad_norm small enough to clip every step (an SGD-style step, linear in the
# clipped gradient: Adam's would hide a wrong coefficient). Under FSDP2 the norm is taken over the
# shards and reduced over the mesh: the sharded run must clip exactly as the unsharded one.
ZERO_KWARGS = {"adapnm": dict(lr=0.01, weight_decay=0.01, demon=20), "pnm": dict(lr=0.05),
               "demon_sgd": dict(lr=0.05, total_steps=6, nesterov=True), "demon_sgd_clip": dict(lr=0.05, total_steps=6, max_grad_norm=0.05),
               # bfloat16 state rounded stochastically: the bits are indexed by global element
               # index (a shard's start added), so a sharded run draws what the unsharded one does.
               "adapnm_bf16_state": dict(lr=0.01, weight_decay=0.01, state_dtype=torch.bfloat16),
               # 8-bit state for the weights, whose rows are whole blocks of 16 (under FSDP2 each shard's
               # blocks are then the unsharded param's, Blockwise8bit.quantizes); the biases are under min_numel.
               "adapnm_8bit": dict(lr=0.01, weight_decay=0.01, state_dtype=nf.state.Blockwise8bit(16, min_numel=64))}
OPTIMIZERS = {name: (lambda ps, backend, name=name: ZERO_CLASSES[name](ps, **ZERO_KWARGS[name], backend=backend, seed=3))
              for name in ZERO_CLASSES}

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is needed")


def make_model():
    torch.manual_seed(0)
    # Weights [32, 16] and [3, 32]: rows of whole blocks of 16; the second is cut unevenly by FSDP2.
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3))


def batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 16, generator=g), torch.randn(8, 3, generator=g)) for _ in range(STEPS)]


def loss_of(model, x, y):
    return torch.nn.functional.mse_loss(model(x), y)


def single_process_run(opt_name, backend):
    model = make_model()
    opt = OPTIMIZERS[opt_name](model.parameters(), backend)
    for x, y in batches():
        opt.zero_grad()
        loss_of(model, x, y).backward()
        opt.step()
    return [p.detach() for p in model.parameters()]


def rank_slice(rank, x):
    return x.chunk(WORLD)[rank]  # equal halves: the mean of the two halves' grads is the full grad


def run_ddp(rank, opt_name, backend, zero):
    model = torch.nn.parallel.DistributedDataParallel(make_model())
    if zero:
        from torch.distributed.optim import ZeroRedundancyOptimizer
        opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=ZERO_CLASSES[opt_name],
                                      **ZERO_KWARGS[opt_name], backend=backend, seed=3)
    else:
        opt = OPTIMIZERS[opt_name](model.parameters(), backend)
    for x, y in batches():
        opt.zero_grad()
        loss_of(model, rank_slice(rank, x), rank_slice(rank, y)).backward()
        opt.step()
    return [p.detach() for p in model.module.parameters()]


def run_fsdp2(rank, opt_name, backend):
    from torch.distributed.device_mesh import init_device_mesh
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # torch < 2.6
        from torch.distributed._composable.fsdp import fully_shard
    model = make_model()
    fully_shard(model, mesh=init_device_mesh("cpu", (WORLD,)))
    opt = OPTIMIZERS[opt_name](model.parameters(), backend)
    for x, y in batches():
        opt.zero_grad()
        loss_of(model, rank_slice(rank, x), rank_slice(rank, y)).backward()
        opt.step()
    assert type(next(iter(opt.state.values()))["step"]) is torch.Tensor
    if opt_name == "adapnm_8bit":  # the weights' state is 8-bit, its scales cut with the rows
        weights = [p for p in model.parameters() if p.dim() == 2]
        assert all(opt.state[p]["exp_avg"].dtype == torch.uint8 for p in weights)
        assert [tuple(opt.state[p]["exp_avg_scales"].shape) for p in weights] == [(32, 1), (3, 2)]
    return [p.full_tensor().detach() for p in model.parameters()]


def worker(rank, init_file, cases):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    for mode, opt_name, backend in cases:
        expected = single_process_run(opt_name, backend)
        if mode == "fsdp2":
            got = run_fsdp2(rank, opt_name, backend)
        else:
            got = run_ddp(rank, opt_name, backend, zero=(mode == "zero"))
        for i, (a, b) in enumerate(zip(got, expected)):
            torch.testing.assert_close(a, b, atol=2e-6, rtol=2e-5,
                                       msg=lambda m: f"{mode} {opt_name} {backend}, rank {rank} param {i}: {m}")
    # Every check passed on this rank (a failed one raised, and spawn reports its traceback). Wait
    # for the other rank, then leave without tearing gloo down: on a loaded machine its teardown and
    # the interpreter's exit raced, aborting a worker whose checks had all passed ("terminate called
    # without an active exception", SIGABRT), twice in CI-like runs, with and without
    # destroy_process_group after a barrier. The OS closes the sockets.
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn(cases):
    # One pair of processes runs all the cases of a test: starting them costs more than the cases.
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(os.path.join(tmp, "init"), cases), nprocs=WORLD, join=True)


def test_ddp_matches_single_process():
    spawn([("ddp", "adapnm", backend) for backend in cpu_backends()] + [("ddp", "demon_sgd_clip", "auto"),
                                                                        ("ddp", "adapnm_bf16_state", "auto"),
                                                                        ("ddp", "adapnm_8bit", "auto")])


def test_fsdp2_matches_unsharded():
    # Every optimizer on the default backend, and every backend with one optimizer.
    cases = [("fsdp2", name, "auto") for name in sorted(OPTIMIZERS)]
    cases += [("fsdp2", "adapnm", backend) for backend in cpu_backends() if backend != "auto"]
    cases += [("fsdp2", "adapnm_bf16_state", backend) for backend in cpu_backends() if backend != "auto"]
    cases += [("fsdp2", "adapnm_8bit", backend) for backend in cpu_backends() if backend != "auto"]
    spawn(cases)


def test_zero_redundancy_optimizer_matches_single_process():
    spawn([("zero", "demon_sgd", "auto"), ("zero", "adapnm", "foreach")])
