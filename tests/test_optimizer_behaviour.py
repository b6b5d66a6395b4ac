"""The optimizers behave like torch.optim optimizers in everything a user touches."""
import copy
import io

import pytest
import torch

import noisefuse as nf
from cases import CONFIGS, assert_same_state, cpu_backends, make_grads, make_params


def model_and_loss():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    return model, lambda: torch.nn.functional.mse_loss(model(x), y)


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_training_reduces_loss_with_closure(config, backend):
    model, loss_fn = model_and_loss()
    opt = CONFIGS[config](model.parameters(), backend=backend)
    first = loss_fn().item()

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    for _ in range(40):
        loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor)
    assert loss.item() < first


def test_zero_grad_sets_grads_to_none():
    model, loss_fn = model_and_loss()
    opt = nf.AdaPNM(model.parameters())
    loss_fn().backward()
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_params_without_grad_are_skipped():
    a, b = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    opt = nf.PNM([a, b], lr=0.1)
    a.grad = torch.ones(3)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(3))
    assert len(opt.state[b]) == 0 and opt.state[a]["step"].item() == 1


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_lr_scheduler_drives_the_step(config):
    # A scheduler edits group["lr"]; the step must use it: compare with the lr set by hand.
    params = make_params((9,))
    pa, pb = [p.detach().clone().requires_grad_() for p in params], [p.detach().clone().requires_grad_() for p in params]
    oa, ob = CONFIGS[config](pa, backend="reference"), CONFIGS[config](pb, backend="reference")
    sched = torch.optim.lr_scheduler.StepLR(oa, step_size=3, gamma=0.5)
    base = ob.param_groups[0]["lr"]
    for step in range(8):
        ob.param_groups[0]["lr"] = base * 0.5 ** (step // 3)
        for ps, o in ((pa, oa), (pb, ob)):
            ps[0].grad = make_grads(ps, step)[0]
            o.step()
        sched.step()
    assert_same_state(oa, ob, pa, pb, torch.float32)


def test_step_hooks_run():
    p = torch.ones(2, requires_grad=True)
    opt = nf.DemonSGD([p], lr=0.1, total_steps=10)
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    p.grad = torch.ones(2)
    opt.step()
    assert calls == ["pre", "post"]


def _roundtrip(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # plain values only: no pickled classes


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_state_dict_round_trip_mid_run_is_bit_identical(config, backend):
    params = make_params((0, 1, 33))
    straight = [p.detach().clone().requires_grad_() for p in params]
    resumed = [p.detach().clone().requires_grad_() for p in params]
    o_straight = CONFIGS[config](straight, backend=backend, seed=7)
    o_first = CONFIGS[config](resumed, backend=backend, seed=7)
    for step in range(12):
        if step == 6:
            saved = _roundtrip(o_first.state_dict())
            o_first = CONFIGS[config](resumed, backend=backend, seed=99)  # a fresh optimizer...
            o_first.load_state_dict(saved)  # ...that continues exactly where the first stopped
        for ps, o in ((straight, o_straight), (resumed, o_first)):
            for p, g in zip(ps, make_grads(ps, step)):
                p.grad = g
            o.step()
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)
    for a, b in zip(straight, resumed):
        for key, value in o_straight.state[a].items():
            assert torch.equal(value, o_first.state[b][key]), key
    assert o_first.param_groups[0]["seed"] == 7


def _official_format(state_dict, extra_keys):
    """What the official PNM/AdaPNM code saves: int steps, and none of noisefuse's group keys."""
    sd = copy.deepcopy(state_dict)
    for group in sd["param_groups"]:
        for key in extra_keys:
            group.pop(key, None)
    for state in sd["state"].values():
        state["step"] = int(state["step"].item())
    return sd


@pytest.mark.parametrize("config", ["pnm", "adapnm"])
def test_loads_official_format_state_dict(config):
    params = make_params((5, 8))
    straight = [p.detach().clone().requires_grad_() for p in params]
    resumed = [p.detach().clone().requires_grad_() for p in params]
    oa, ob = CONFIGS[config](straight, backend="reference"), CONFIGS[config](resumed, backend="reference")
    for step in range(10):
        if step == 5:
            official = _official_format(ob.state_dict(), ["demon", "noise", "backend", "seed", "maximize",
                                                          "capturable", "decoupled", "amsgrad"])
            ob = CONFIGS[config](resumed, backend="reference")
            ob.load_state_dict(official)
            # The backend is the loading optimizer's (issue #20), the rest the official defaults.
            assert ob.param_groups[0]["decoupled"] is True and ob.param_groups[0]["backend"] == "reference"
        for ps, o in ((straight, oa), (resumed, ob)):
            for p, g in zip(ps, make_grads(ps, step)):
                p.grad = g
            o.step()
    assert_same_state(oa, ob, straight, resumed, torch.float32)
    assert isinstance(ob.state[resumed[0]]["step"], torch.Tensor)


def test_demon_added_to_a_run_rebuilds_the_exact_product():
    p = torch.ones(4, requires_grad=True)
    opt = nf.AdaPNM([p], lr=0.01)
    for _ in range(5):
        p.grad = torch.randn(4)
        opt.step()
    opt.param_groups[0]["demon"] = {"total_steps": 20, "delay": 0.0}
    p.grad = torch.randn(4)
    opt.step()
    expected = nf.Demon(20).beta_product(0.9, 6)
    assert opt.state[p]["beta1_prod"].item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("backend", cpu_backends())
def test_user_grad_is_never_modified(backend):
    p = torch.randn(7, requires_grad=True)
    grad = torch.randn(7)
    p.grad = grad.clone()
    opt = nf.PNM([p], lr=0.1, weight_decay=0.1, decoupled=False, maximize=True, backend=backend)
    opt.grad_scale, opt.found_inf = torch.tensor([4.0]), torch.tensor([0.0])
    opt.step()
    assert torch.equal(p.grad, grad)


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("config", ["adapnm", "demon_adam", "demon_sgd"])
def test_amp_found_inf_skips_the_whole_step(config, backend):
    params = make_params((3, 10))
    opt = CONFIGS[config](params, backend=backend)
    for p, g in zip(params, make_grads(params, 0)):
        p.grad = g
    opt.step()
    before = copy.deepcopy(([p.detach() for p in params], opt.state_dict()["state"]))
    opt.grad_scale, opt.found_inf = torch.tensor([1024.0]), torch.tensor([1.0])
    opt.step()
    after = ([p.detach() for p in params], opt.state_dict()["state"])
    for a, b in zip(before[0], after[0]):
        assert torch.equal(a, b)
    for i, state in before[1].items():
        for key, value in state.items():
            assert torch.equal(value, after[1][i][key]), key


@pytest.mark.parametrize("backend", cpu_backends())
def test_amp_grad_scale_unscales_inside_the_step(backend):
    params = make_params((6,))
    pa, pb = [p.detach().clone().requires_grad_() for p in params], [p.detach().clone().requires_grad_() for p in params]
    oa, ob = nf.DemonAdam(pa, total_steps=9, backend=backend), nf.DemonAdam(pb, total_steps=9, backend=backend)
    for step in range(4):
        g = make_grads(pa, step)[0]
        pa[0].grad, pb[0].grad = g, g * 256.0
        ob.grad_scale, ob.found_inf = torch.tensor([256.0]), torch.tensor([0.0])
        oa.step()
        ob.step()
    assert_same_state(oa, ob, pa, pb, torch.float32)


def test_grad_scaler_on_cpu_skips_inf_steps():
    model, loss_fn = model_and_loss()
    opt = nf.AdaPNM(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    scaler.scale(loss_fn()).backward()
    scaler.step(opt)
    scaler.update()
    snapshot = [p.detach().clone() for p in model.parameters()]
    steps = [opt.state[p]["step"].item() for p in model.parameters()]
    opt.zero_grad()
    scaler.scale(loss_fn() * float("inf")).backward()
    scaler.step(opt)
    scaler.update()
    assert all(torch.equal(a, b) for a, b in zip(snapshot, model.parameters()))
    assert [opt.state[p]["step"].item() for p in model.parameters()] == steps
    assert not hasattr(opt, "grad_scale")  # GradScaler removes what it lent the step


def test_add_param_group_uses_defaults_and_validates():
    a, b = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
    opt = nf.AdaPNM([a], lr=0.01)
    opt.add_param_group({"params": [b], "lr": 0.5})
    assert opt.param_groups[1]["betas"] == (0.9, 0.999, 1.0) and opt.param_groups[1]["lr"] == 0.5
    c = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="lr"):
        opt.add_param_group({"params": [c], "lr": -1.0})
    assert len(opt.param_groups) == 2


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda sd: sd["state"][0].update(exp_avg=torch.zeros(5)), "exp_avg.*shape"),
        (lambda sd: sd["param_groups"].append(dict(sd["param_groups"][0])), "param groups"),
        (lambda sd: sd["param_groups"][0]["params"].pop(), "params"),
        (lambda sd: sd["state"].update({7: {"step": torch.tensor(1.0)}}), "param 7"),
        (lambda sd: sd.pop("state"), "state"),
    ],
)
def test_load_state_dict_that_does_not_fit_fails_and_changes_nothing(corrupt, match):
    params = make_params((3, 4))
    opt = nf.AdaPNM(params, backend="reference")
    for p, g in zip(params, make_grads(params, 0)):
        p.grad = g
    opt.step()
    good = copy.deepcopy(opt.state_dict())
    bad = copy.deepcopy(good)
    corrupt(bad)
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(bad)
    now = opt.state_dict()
    assert now["param_groups"] == good["param_groups"]
    for i, state in good["state"].items():
        for key, value in state.items():
            assert torch.equal(value, now["state"][i][key])


def test_state_dict_moves_between_backends():
    # Saved on one backend, loaded on another: the same state format everywhere.
    params = make_params((5, 9))
    pa = [p.detach().clone().requires_grad_() for p in params]
    pb = [p.detach().clone().requires_grad_() for p in params]
    oa = nf.DemonAdam(pa, total_steps=10, backend="reference")
    ob = nf.DemonAdam(pb, total_steps=10, backend="reference")
    backends_in_turn = cpu_backends()
    for step in range(2 * len(backends_in_turn)):
        if step % 2 == 0:
            saved = _roundtrip(ob.state_dict())
            ob = nf.DemonAdam(pb, total_steps=10, backend=backends_in_turn[step // 2])
            ob.load_state_dict(saved)
            ob.param_groups[0]["backend"] = backends_in_turn[step // 2]
        for ps, o in ((pa, oa), (pb, ob)):
            for p, g in zip(ps, make_grads(ps, step)):
                p.grad = g
            o.step()
    assert_same_state(oa, ob, pa, pb, torch.float32)
