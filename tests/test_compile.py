"""torch.compile sees the fused ops: ``opt.step`` compiles to one graph with no break
(``fullgraph=True``), the noisefuse op is a node of it, and compiled steps equal eager ones, with a
scheduled tensor lr and with gradient noise too."""
import pytest
import torch

import noisefuse as nf

from cases import CONFIGS, FUSED, assert_same_state, make_grads, make_params, on_cpu
from noise_cases import NOISES, PAIRS, SEED, noisy_run

# The fused backends read counters on the device and never leave the graph; reference and foreach
# read them with .item(), which is a graph break by design.


@pytest.fixture(params=FUSED)
def fused_backend(request, monkeypatch):
    return on_cpu(request.param, monkeypatch)


@pytest.mark.parametrize("config", ["adapnm_noams_demon", "pnm", "demon_adamw_ams"])
def test_compiled_step_is_one_graph_with_the_op_and_matches_eager(config, fused_backend):
    torch._dynamo.reset()
    params = make_params((5, 130))
    eager = [p.detach().clone().requires_grad_() for p in params]
    compiled = [p.detach().clone().requires_grad_() for p in params]
    opt_eager = CONFIGS[config](eager, backend=fused_backend)
    opt_compiled = CONFIGS[config](compiled, backend=fused_backend)

    ops_in_graph = []

    def recording_backend(gm, example_inputs):
        ops_in_graph.extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward

    step = torch.compile(opt_compiled.step, backend=recording_backend, fullgraph=True)
    for i in range(6):
        for ps in (eager, compiled):
            for p, g in zip(ps, make_grads(ps, i)):
                p.grad = g
        opt_eager.step()
        step()
    assert any("noisefuse" in target for target in ops_in_graph), ops_in_graph
    assert_same_state(opt_eager, opt_compiled, eager, compiled, torch.float32)


def test_compiled_bf16_state_step_equals_eager_bit_for_bit(fused_backend):
    """bfloat16 state rounded stochastically: the compiled step passes the same rounding arguments
    (offsets, seed) to the op, so it stores the same bits."""
    torch._dynamo.reset()
    params = make_params((5, 130))
    eager = [p.detach().clone().requires_grad_() for p in params]
    compiled = [p.detach().clone().requires_grad_() for p in params]
    opt_eager = CONFIGS["demon_adamw_ams"](eager, backend=fused_backend, state_dtype=torch.bfloat16, seed=4)
    opt_compiled = CONFIGS["demon_adamw_ams"](compiled, backend=fused_backend, state_dtype=torch.bfloat16, seed=4)
    step = torch.compile(opt_compiled.step, backend="eager", fullgraph=True)
    for i in range(4):
        for ps in (eager, compiled):
            for p, g in zip(ps, make_grads(ps, i)):
                p.grad = g
        opt_eager.step()
        step()
    for a, b in zip(eager, compiled):
        assert torch.equal(a, b)
        for key, value in opt_eager.state[a].items():
            assert torch.equal(value, opt_compiled.state[b][key]), key


def test_compiled_8bit_state_step_equals_eager_bit_for_bit(fused_backend):
    """8-bit state: the compiled step passes the codes, their scales and the code books to the op
    as the eager one does (the float32-state params of the group in a call of their own)."""
    torch._dynamo.reset()
    params = make_params((5, 130, 1500))
    eager = [p.detach().clone().requires_grad_() for p in params]
    compiled = [p.detach().clone().requires_grad_() for p in params]
    spec = nf.state.Blockwise8bit(block_size=64, min_numel=100)
    opt_eager = CONFIGS["demon_adamw_ams"](eager, backend=fused_backend, state_dtype=spec)
    opt_compiled = CONFIGS["demon_adamw_ams"](compiled, backend=fused_backend, state_dtype=spec)
    step = torch.compile(opt_compiled.step, backend="eager", fullgraph=True)
    for i in range(4):
        for ps in (eager, compiled):
            for p, g in zip(ps, make_grads(ps, i)):
                p.grad = g
        opt_eager.step()
        step()
    assert opt_compiled.state[compiled[2]]["exp_avg"].dtype == torch.uint8
    for a, b in zip(eager, compiled):
        assert torch.equal(a, b)
        for key, value in opt_eager.state[a].items():
            assert torch.equal(value, opt_compiled.state[b][key]), key


# The compiled step is made before the scheduler wraps opt.step, so the scheduler's check that
# opt.step ran first cannot see it.
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_compiled_step_reads_a_scheduled_tensor_lr(fused_backend):
    """A tensor lr is an input of the compiled graph, not a constant baked into it: a scheduler that
    writes it between steps changes the compiled step (no recompilation), as it changes the eager one.
    (The momentum is a Python float, so the schedule does not cycle it: that would recompile.)"""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    params = make_params((5, 130))
    runs = []
    for compile_step in (False, True):
        ps = [p.detach().clone().requires_grad_() for p in params]
        opt = CONFIGS["demon_adamw_ams"](ps, backend=fused_backend)
        opt.param_groups[0]["lr"] = torch.tensor(0.01)
        # Compiled before the scheduler wraps opt.step in a counter Dynamo does not trace.
        step = torch.compile(opt.step, backend="eager", fullgraph=True) if compile_step else opt.step
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=10, cycle_momentum=False)
        for i in range(6):
            for p, g in zip(ps, make_grads(ps, i)):
                p.grad = g
            step()
            sched.step()
        runs.append((opt, ps))
    (opt_eager, eager), (opt_compiled, compiled) = runs
    assert_same_state(opt_eager, opt_compiled, eager, compiled, torch.float32)
    # One graph for the first step (which creates the state), one for every later step.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2


@pytest.mark.parametrize("noise, config", PAIRS)
def test_compiled_noisy_step_is_one_graph_and_matches_eager(noise, config, fused_backend):
    """Gradient noise (the native weight-vector op included) compiles into the step's graph: no
    graph break, no recompilation as the step counters advance, the same numbers as eager."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    params = make_params((5, 70))
    eager, opt_eager = noisy_run(config, fused_backend, noise, params, steps=6)
    compiled = [p.detach().clone().requires_grad_() for p in params]
    opt = CONFIGS[config](compiled, backend=fused_backend, noise=NOISES[noise], seed=SEED)
    step = torch.compile(opt.step, backend="eager", fullgraph=True)
    for i in range(6):
        for j, p in enumerate(compiled):  # the rows noisy_run feeds
            gen = torch.Generator().manual_seed(i * 1009 + j)
            p.grad_sample = torch.randn((6, *p.shape), generator=gen, dtype=torch.float64).float()
            p.grad = p.grad_sample.mean(0)
        step()
    assert_same_state(opt_eager, opt, eager, compiled, torch.float32)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2  # the first step, then the rest
