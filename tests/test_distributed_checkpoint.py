"""torch.distributed.checkpoint (DCP) under FSDP2, on the CPU with gloo: a run saved after 3 steps
with ``get_state_dict`` + ``dcp.save`` and resumed with ``dcp.load`` + ``set_state_dict`` on 2 or 1
ranks, against the uninterrupted run; a full state dict gathered from 2 ranks loaded into a plain
process; checkpoints that do not fit refused before anything changes.

Every rank trains on the same whole batch, so the averaged gradient is the same on any number of
ranks and runs of different world sizes can be compared. Three process groups in order (1 rank,
2 ranks, 1 rank), each running every case: starting processes costs more than the cases.
"""
import os
import sys
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import noisefuse as nf
from noisefuse.backends import native

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is needed")

SAVED_AT, STEPS = 3, 6
BLOCK = 64
# Rows of 64 and 128 elements are whole blocks of 64: those weights keep 8-bit state under FSDP2,
# the [128, 130] one keeps float32 state (its rows would cut blocks; Blockwise8bit.quantizes) and
# the biases are under min_numel. [7, 128] is cut unevenly over 2 ranks (4 rows and 3).
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "8bit": nf.state.Blockwise8bit(BLOCK, min_numel=512)}
# One backend named for every run, the workers' and this process's alike ("auto" could resolve
# differently here after other tests changed what is loaded): the runs compare bit for bit.
BACKEND = "native" if native.load_error() is None else "foreach"
OPTIMIZERS = {
    "adapnm_amsgrad": lambda ps, state: nf.AdaPNM(ps, lr=1e-2, amsgrad=True, weight_decay=0.01, state_dtype=state,
                                                  backend=BACKEND),
    "pnm_demon": lambda ps, state: nf.PNM(ps, lr=0.05, demon=dict(total_steps=10), state_dtype=state,
                                          backend=BACKEND),
    # The noise stream's counters are the params' steps, indexed by global element: a resumed run
    # draws what the uninterrupted one draws, on any number of ranks.
    "demon_adam_noise": lambda ps, state: nf.DemonAdam(ps, lr=1e-2, total_steps=10, noise=nf.noise.Isotropic(1e-3),
                                                       seed=7, state_dtype=state, backend=BACKEND),
}
CASES = [(opt, prec) for opt in OPTIMIZERS for prec in PRECISIONS]
# DDP: a replicated optimizer, its state plain tensors that DCP saves once.
DDP_CASES = [("adapnm_amsgrad", "8bit"), ("demon_adam_noise", "bf16")]
# AMP: float16 autocast with torch.amp.GradScaler, whose state is saved beside (a small growth
# interval, so that its scale moves within the run and must come back).
AMP_CASES = [("demon_adam_noise", "8bit"), ("adapnm_amsgrad", "bf16")]
RUNS = ([("fsdp2", case) for case in CASES] + [("ddp", case) for case in DDP_CASES]
        + [("fsdp2-amp", case) for case in AMP_CASES])


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 130), torch.nn.Tanh(), torch.nn.Linear(130, 128), torch.nn.Tanh(),
                               torch.nn.Linear(128, 7))


def make_optimizer(model, case):
    opt_name, precision = case
    return OPTIMIZERS[opt_name](model.parameters(), PRECISIONS[precision])


def batch(i):
    g = torch.Generator().manual_seed(100 + i)
    return torch.randn(16, 64, generator=g), torch.randn(16, 7, generator=g)


def train(model, opt, steps, scaler=None):
    for i in steps:
        x, y = batch(i)
        opt.zero_grad()
        if scaler is None:
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            continue
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        scaler.scale(torch.nn.functional.mse_loss(out.float(), y)).backward()
        scaler.step(opt)
        scaler.update()


def make_scaler(wrap):
    return torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=2) if wrap.endswith("-amp") else None


def sharded_model():
    from torch.distributed.fsdp import fully_shard
    model = make_model()
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model


def ddp_model():
    return torch.nn.parallel.DistributedDataParallel(make_model())


WRAPS = {"fsdp2": sharded_model, "ddp": ddp_model, "fsdp2-amp": sharded_model}


def whole(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def full_optimizer_state(model, opt) -> dict:
    """The optimizer's state gathered whole on the CPU, keyed by param name, as a single process
    would save it (``full_state_dict=True, cpu_offload=True``); param groups without their params."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    sd = get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return sd


def snapshot(model, opt, scaler=None) -> dict:
    """Every param and (on rank 0, where cpu_offload gathers it) every state tensor, whole; the
    GradScaler's scale."""
    out = {f"param {k}": whole(v).detach().clone() for k, v in model.state_dict().items()}
    if scaler is not None:
        out["scaler scale"] = torch.tensor(scaler.get_scale())
    for name, state in full_optimizer_state(model, opt).get("state", {}).items():
        for key, value in state.items():
            if torch.is_tensor(value):
                out[f"state {name}.{key}"] = value.clone()
    return out


def assert_same(got: dict, expected: dict, what: str, exact: bool):
    assert got.keys() == expected.keys(), what
    for key in expected:
        a, b = got[key], expected[key]
        if exact:
            assert torch.equal(a, b), f"{what}: {key} differs by {(a.float() - b.float()).abs().max().item():.3g}"
        else:  # rounding: grads reduced over another number of ranks
            torch.testing.assert_close(a.float(), b.float(), atol=1e-6, rtol=1e-5, msg=lambda m: f"{what}: {key}: {m}")


def checkpoint_dir(root, world, case, wrap="fsdp2"):
    return os.path.join(root, f"{wrap}-world{world}", "_".join(case))


def save(model, opt, scaler, path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    model_sd, opt_sd = get_state_dict(model, opt)
    state = {"model": model_sd, "optim": opt_sd}
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    dcp.save(state, checkpoint_id=path)


def resume(wrap, case, path):
    """A fresh model and optimizer loaded from ``path`` as DCP's recipe does."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    model = WRAPS[wrap]()
    opt = make_optimizer(model, case)
    scaler = make_scaler(wrap)
    model_sd, opt_sd = get_state_dict(model, opt)
    sd = {"model": model_sd, "optim": opt_sd}
    if scaler is not None:
        sd["scaler"] = scaler.state_dict()
    dcp.load(sd, checkpoint_id=path)
    set_state_dict(model, opt, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
    if scaler is not None:
        scaler.load_state_dict(sd["scaler"])
    return model, opt, scaler


def run_world(rank, world, root, phase):
    """One process group's part: uninterrupted runs, saves, and resumes from what earlier groups saved."""
    for wrap, case in RUNS:
        directory = checkpoint_dir(root, world, case, wrap)
        model = WRAPS[wrap]()
        opt = make_optimizer(model, case)
        scaler = make_scaler(wrap)
        train(model, opt, range(SAVED_AT), scaler)
        if phase != "third":  # the first group's are kept for the others
            save(model, opt, scaler, directory)
        if world == 2 and wrap == "fsdp2":  # gathering is a collective: every rank takes part, rank 0 saves
            full = {"model": {k: v.full_tensor() for k, v in model.state_dict().items()},
                    "optim": full_optimizer_state(model, opt)}
            if rank == 0:
                torch.save(full, os.path.join(directory, "full.pt"))
        train(model, opt, range(SAVED_AT, STEPS), scaler)
        uninterrupted = snapshot(model, opt, scaler)
        assert scaler is None or scaler.get_scale() != 2.0**12  # it moved: resuming must bring it back
        if rank == 0:
            torch.save(uninterrupted, os.path.join(directory, "uninterrupted.pt"))
        for saved_world in {"first": (), "second": (2, 1), "third": (2,)}[phase]:
            model, opt, scaler = resume(wrap, case, checkpoint_dir(root, saved_world, case, wrap))
            train(model, opt, range(SAVED_AT, STEPS), scaler)
            assert_same(snapshot(model, opt, scaler), uninterrupted,
                        f"{wrap} {case} saved on {saved_world} ranks, resumed on {world}", exact=saved_world == world)


def refuse_mismatches(root):
    """Checkpoints that do not fit this optimizer: refused, the optimizer and model left as they were."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    saved = checkpoint_dir(root, 2, ("adapnm_amsgrad", "8bit"))
    mismatches = {
        "another block size": lambda ps: nf.AdaPNM(ps, lr=1e-2, amsgrad=True, state_dtype=nf.state.Blockwise8bit(
            BLOCK // 2, min_numel=512)),
        "another class (DemonAdam)": lambda ps: nf.DemonAdam(ps, lr=1e-2, total_steps=10, state_dtype=PRECISIONS["8bit"]),
        "another class (PNM)": lambda ps: nf.PNM(ps, lr=1e-2, state_dtype=PRECISIONS["8bit"]),
        "float32 state": lambda ps: nf.AdaPNM(ps, lr=1e-2, amsgrad=True),
    }
    for what, make in mismatches.items():
        model = sharded_model()
        opt = make(model.parameters())
        train(model, opt, range(2))
        before = snapshot(model, opt)
        model_sd, opt_sd = get_state_dict(model, opt)
        sd = {"model": model_sd, "optim": opt_sd}
        try:
            dcp.load(sd, checkpoint_id=saved)
            set_state_dict(model, opt, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
        except BaseException as exc:  # DCP's CheckpointException is a BaseException
            print(f"{what}: {type(exc).__name__}: {getattr(exc, 'failures', exc)}"[:400], file=sys.stderr)
        else:
            raise AssertionError(f"a checkpoint of {what} was accepted")
        assert_same(snapshot(model, opt), before, f"after refusing {what}", exact=True)


def refuse_8bit_state_for_column_shards():
    """Tensor parallelism's Shard(1) cuts every row: 8-bit blocks would cross shards. Refused at the
    first step, naming the placement, before any state or param changes; float state steps it."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for state_dtype in (PRECISIONS["8bit"], None):
        p = torch.nn.Parameter(distribute_tensor(torch.randn(16, 128), mesh, [Shard(1)]))
        p.grad = distribute_tensor(torch.randn(16, 128), mesh, [Shard(1)])
        before = p.full_tensor().clone()
        opt = nf.AdaPNM([p], lr=1e-2, state_dtype=state_dtype)
        if state_dtype is None:
            opt.step()
            assert not torch.equal(p.full_tensor(), before)
            continue
        try:
            opt.step()
        except NotImplementedError as exc:
            assert "Shard(dim=1)" in str(exc) and "8-bit state" in str(exc), exc
        else:
            raise AssertionError("8-bit state for a Shard(1) param was accepted")
        assert torch.equal(p.full_tensor(), before) and not opt.state[p]


# One thread for every matmul, the workers' and the plain process's: the forward and backward
# reductions then sum in one order everywhere, and the runs compare bit for bit (another test may
# have left this process at any thread count; a spawned worker starts at the machine's).
THREADS = 1


def worker(rank, world, init_file, root, phase):
    torch.set_num_threads(THREADS)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    run_world(rank, world, root, phase)
    if phase == "third":
        refuse_mismatches(root)
        refuse_8bit_state_for_column_shards()
    # Leave without tearing gloo down (test_distributed.py says why).
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn(world, root, phase):
    mp.spawn(worker, args=(world, os.path.join(root, f"init-{phase}"), root, phase), nprocs=world, join=True)


@pytest.fixture(scope="module")
def checkpoints():
    """Checkpoints of every case saved on 1 and 2 ranks; each group resumes those saved before it."""
    with tempfile.TemporaryDirectory() as root:
        spawn(1, root, "first")   # saves on 1 rank
        spawn(2, root, "second")  # 2 -> 2 and 1 -> 2
        spawn(1, root, "third")   # 2 -> 1
        yield root


def test_resumed_runs_equal_the_uninterrupted_run(checkpoints):
    # The comparisons ran in the workers (a failure fails the spawn); what they compared is here.
    for wrap, case in RUNS:
        for world in (1, 2):
            assert os.path.exists(os.path.join(checkpoint_dir(checkpoints, world, case, wrap), "uninterrupted.pt"))


@pytest.mark.parametrize("case", CASES, ids=["_".join(c) for c in CASES])
def test_a_full_state_dict_from_2_ranks_resumes_in_a_plain_process(checkpoints, case):
    """``get_optimizer_state_dict(full_state_dict=True, cpu_offload=True)`` on 2 ranks, loaded by
    plain ``load_state_dict`` (its keys are param names; torch's loader pairs them by position)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        resume_in_a_plain_process(checkpoints, case)
    finally:
        torch.set_num_threads(threads)


def resume_in_a_plain_process(checkpoints, case):
    directory = checkpoint_dir(checkpoints, 2, case)
    full = torch.load(os.path.join(directory, "full.pt"), weights_only=True)
    uninterrupted = torch.load(os.path.join(directory, "uninterrupted.pt"), weights_only=True)
    model = make_model()
    model.load_state_dict(full["model"])
    opt = make_optimizer(model, case)
    opt.load_state_dict(full["optim"])
    # Loaded as saved (8-bit scales flattened: they are by rows under FSDP2), but for the [128, 130]
    # weight with 8-bit state: unsharded it keeps 8-bit state, under FSDP2 its rows cut blocks and it
    # kept float32 state (Blockwise8bit.quantizes), quantized once here.
    requantized = {"2.weight"} if case[1] == "8bit" else set()
    for name, p in model.named_parameters():
        for key, value in opt.state[p].items():
            if name in requantized and key not in ("step", "beta1_prod"):
                assert value.dtype == torch.uint8 or key.endswith("_scales"), f"{case}: state {name}.{key}"
            else:
                saved = full["optim"]["state"][name][key]
                assert torch.equal(value, saved.reshape(value.shape).to(value.dtype)), f"{case}: state {name}.{key}"
    train(model, opt, range(SAVED_AT, STEPS))
    for name, p in model.named_parameters():
        expected = uninterrupted[f"param {name}"]
        if requantized:
            # Every param's gradient depends on the requantized one's values: all within a tenth of
            # the most 3 steps of lr 1e-2 could move an element (1.07e-3 measured, on 2.weight).
            torch.testing.assert_close(p.detach(), expected, atol=0.1 * 3 * 1e-2, rtol=0)
        else:
            assert torch.equal(p.detach(), expected), f"{case}: param {name}"
