"""torch.compile sees the fused ops: ``opt.step`` compiles to one graph with no break
(``fullgraph=True``), the noisefuse op is a node of it, and compiled steps equal eager ones."""
import pytest
import torch

from cases import CONFIGS, assert_same_state, make_grads, make_params
from noisefuse import backends

# The fused backends read counters on the device and never leave the graph; reference and foreach
# read them with .item(), which is a graph break by design.
FUSED = ["native", "triton"]


@pytest.fixture(params=FUSED)
def fused_backend(request, monkeypatch):
    if request.param == "triton":
        monkeypatch.setenv("TRITON_INTERPRET", "1")  # the interpreter runs Triton on CPU tensors
    if not backends.get(request.param).available(torch.device("cpu")):
        pytest.skip(f"{request.param} cannot run CPU tensors here")
    return request.param


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
