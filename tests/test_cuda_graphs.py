"""CUDA graphs: with capturable=True a whole ``opt.step()`` is captured once and replayed; replays
equal eager steps, the Demon schedule, AMP's skip and an LR schedule included (counters, scale,
found_inf and a tensor lr are read on the device). GPU only."""
import pytest
import torch

from cases import CONFIGS, assert_same_state, capture_after_warm_up, make_grads, make_params
from noisefuse import backends

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _fused_backends():
    if not torch.cuda.is_available():
        return ["native", "triton"]
    return [b for b in ("native", "triton") if backends.get(b).available(torch.device("cuda"))]


@pytest.mark.parametrize("variant", ["unclipped", "clipped", "bf16_state"])
@pytest.mark.parametrize("backend", _fused_backends())
@pytest.mark.parametrize("config", ["adapnm_noams_demon", "pnm_l2_demon", "demon_sgd_nesterov", "demon_adamw_ams"])
def test_captured_step_replays_like_eager_steps(config, backend, variant):
    """With max_grad_norm the replay also recomputes the clip from that replay's gradients; with
    bfloat16 state it draws each replay's rounding bits from that replay's counters."""
    params = make_params((1, 4097, 70001), device="cuda")
    eager = [p.detach().clone().requires_grad_() for p in params]
    graphed = [p.detach().clone().requires_grad_() for p in params]
    kwargs = dict(capturable=True, max_grad_norm=0.5 if variant == "clipped" else None,
                  state_dtype=torch.bfloat16 if variant == "bf16_state" else None)
    opt_eager = CONFIGS[config](eager, backend=backend, seed=5, **kwargs)
    opt_graphed = CONFIGS[config](graphed, backend=backend, seed=5, **kwargs)
    static_grads = [torch.zeros_like(p) for p in graphed]
    for p, g in zip(graphed, static_grads):
        p.grad = g
    grad_scale = torch.ones(1, device="cuda")
    found_inf = torch.zeros(1, device="cuda")
    opt_graphed.grad_scale, opt_graphed.found_inf = grad_scale, found_inf

    def feed(step, scale):
        for g_static, g, p in zip(static_grads, make_grads(graphed, step), eager):
            g_static.copy_(g * scale)
            p.grad = g.clone()

    def warm_up():
        for step in range(3):
            feed(step, 1.0)
            opt_graphed.step()
            opt_eager.step()

    graph = capture_after_warm_up(warm_up, opt_graphed.step)

    for step in range(3, 20):
        skip = step == 9  # an AMP overflow: the replay must change nothing, counters included
        scale = 2.0 ** (step % 4)
        feed(step, scale)
        grad_scale.fill_(scale)
        found_inf.fill_(1.0 if skip else 0.0)
        graph.replay()
        if not skip:
            opt_eager.step()
    torch.cuda.synchronize()
    assert_same_state(opt_eager, opt_graphed, eager, graphed, torch.float32)


@pytest.mark.parametrize("backend", _fused_backends())
@pytest.mark.parametrize("config", ["adapnm", "demon_sgd_nesterov"])
def test_captured_step_follows_a_scheduled_tensor_lr(config, backend):
    """An LR scheduler writes the lr tensor in place between replays; the kernels read it on the
    device, so each replay uses the new value, as the eager steps with the scheduled lr do."""
    params = make_params((4097, 70001), device="cuda")
    eager = [p.detach().clone().requires_grad_() for p in params]
    graphed = [p.detach().clone().requires_grad_() for p in params]
    opt_eager = CONFIGS[config](eager, backend=backend, capturable=True)
    opt_graphed = CONFIGS[config](graphed, backend=backend, capturable=True)
    for opt in (opt_eager, opt_graphed):  # the same float32 lr tensor in both, on the device
        opt.param_groups[0]["lr"] = torch.tensor(opt.param_groups[0]["lr"], device="cuda")
    # Only the lr: the betas are launch arguments, frozen into the graph (docs/integration.md).
    schedules = [torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=30, cycle_momentum=False)
                 for opt in (opt_eager, opt_graphed)]
    static_grads = [torch.zeros_like(p) for p in graphed]
    for p, g in zip(graphed, static_grads):
        p.grad = g

    def feed(step):
        for g_static, g, p in zip(static_grads, make_grads(graphed, step), eager):
            g_static.copy_(g)
            p.grad = g.clone()

    def step_both(step, graphed_step):
        feed(step)
        graphed_step()
        opt_eager.step()
        for sched in schedules:
            sched.step()

    def warm_up():
        for step in range(3):
            step_both(step, opt_graphed.step)

    graph = capture_after_warm_up(warm_up, opt_graphed.step)
    for step in range(3, 20):
        step_both(step, graph.replay)
    torch.cuda.synchronize()
    assert_same_state(opt_eager, opt_graphed, eager, graphed, torch.float32)


def test_capturable_with_a_host_backend_is_refused_before_any_write():
    p = torch.ones(3, device="cuda", requires_grad=True)
    opt = CONFIGS["adapnm"]([p], backend="foreach", capturable=True)
    p.grad = torch.ones(3, device="cuda")
    with pytest.raises(RuntimeError, match="capturable"):
        opt.step()
    assert torch.equal(p.detach(), torch.ones(3, device="cuda")) and len(opt.state[p]) == 0
