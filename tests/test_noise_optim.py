"""Noise inside the optimizers: backends agree, the stream ignores grouping and sharding, resumes
from a state dict, and bad inputs raise before anything is written."""
import io

import pytest
import torch

import noisefuse as nf
from noisefuse.noise import DiagFisher, Isotropic, Multiplicative
from tests.cases import CONFIGS, SIZES, assert_same_state, make_params

BATCH = 8
NOISES = {
    "isotropic": Isotropic(0.05),
    "diag_fisher": DiagFisher(small_batch=2),
    "diag_fisher_centered": DiagFisher(scale=0.4, centered=True),
    "mult_gaussian": Multiplicative("gaussian", small_batch=2),
    "mult_centered": Multiplicative("gaussian_centered", small_batch=4),
    "mult_bernoulli": Multiplicative("bernoulli", small_batch=3),
}


def sample_grads(p, step, i, batch=BATCH):
    g = torch.Generator().manual_seed(step * 1009 + i)
    return torch.randn((batch,) + tuple(p.shape), generator=g, dtype=torch.float64).to(p.dtype)


def feed(ps, step, batch=BATCH):
    for i, p in enumerate(ps):
        p.grad_sample = sample_grads(p, step, i, batch)
        p.grad = p.grad_sample.mean(0)


def run(config, backend, noise, params, steps=20, groups=None, seed=7, start=0, opt=None, **kw):
    ps = [p.detach().clone().requires_grad_() for p in params]
    arg = ps if groups is None else [dict(g, params=[ps[i] for i in g["params"]]) for g in groups]
    opt = CONFIGS[config](arg, backend=backend, noise=noise, seed=seed, **kw)
    for step in range(start, start + steps):
        feed(ps, step)
        opt.step()
    return ps, opt


# Each noise kind with a different point of the kernel family (20 steps, awkward sizes incl. 0 and 1).
PAIRS = [("isotropic", "pnm_l2_demon"), ("diag_fisher", "adapnm"), ("diag_fisher_centered", "demon_sgd_nesterov"),
         ("mult_gaussian", "demon_adamw_ams"), ("mult_centered", "pnm"), ("mult_bernoulli", "adapnm_noams_demon")]


@pytest.mark.parametrize("noise,config", PAIRS)
def test_foreach_equals_reference(config, noise):
    params = make_params(SIZES[:3] + (257,))
    pa, oa = run(config, "reference", NOISES[noise], params)
    pb, ob = run(config, "foreach", NOISES[noise], params)
    assert_same_state(oa, ob, pa, pb, torch.float32)


@pytest.mark.parametrize("noise", ["isotropic", "diag_fisher", "mult_bernoulli"])
def test_auto_runs_noise_on_foreach_unless_the_fused_backend_draws_it(noise):
    params = make_params((5, 300))
    fused = nf.backends.resolve("auto", torch.device("cpu"))
    expected = fused.__name__.rsplit(".", 1)[-1] if getattr(fused, "supports_noise", False) is True else "foreach"
    pa, _ = run("adapnm", "auto", NOISES[noise], params, steps=4)
    pb, _ = run("adapnm", expected, NOISES[noise], params, steps=4)
    for a, b in zip(pa, pb):
        assert torch.equal(a, b)


def test_noise_changes_the_trajectory_and_the_seed_selects_it():
    params = make_params((50, 70))
    plain, _ = run("pnm", "reference", None, params, steps=3)
    a, _ = run("pnm", "reference", NOISES["isotropic"], params, steps=3, seed=1)
    b, _ = run("pnm", "reference", NOISES["isotropic"], params, steps=3, seed=1)
    c, _ = run("pnm", "reference", NOISES["isotropic"], params, steps=3, seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], plain[0]) and not torch.equal(a[0], c[0])


@pytest.mark.parametrize("backend", ["reference", "foreach"])
@pytest.mark.parametrize("noise", ["isotropic", "diag_fisher", "mult_gaussian"])
def test_grouping_does_not_change_the_noise(backend, noise):
    params = make_params((3, 40, 17, 6))
    one, _ = run("adapnm", backend, NOISES[noise], params, steps=5)
    split = [{"params": [0, 1]}, {"params": [2]}, {"params": [3]}]
    two, _ = run("adapnm", backend, NOISES[noise], params, steps=5, groups=split)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


@pytest.mark.parametrize("noise", ["isotropic", "diag_fisher", "mult_bernoulli"])
def test_a_param_split_in_two_draws_the_numbers_of_the_whole(noise):
    whole = torch.randn(6, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64).float()
    parts = [whole[:2].clone().requires_grad_(), whole[2:].clone().requires_grad_()]
    w = whole.clone().requires_grad_()
    opt_w = nf.AdaPNM([w], lr=0.01, noise=NOISES[noise], seed=3, backend="reference")
    opt_p = nf.AdaPNM(parts, lr=0.01, noise=NOISES[noise], seed=3, backend="reference")
    for step in range(4):
        w.grad_sample = sample_grads(w, step, 0)
        w.grad = w.grad_sample.mean(0)
        for p, rows in zip(parts, w.grad_sample.split([2, 4], dim=1)):
            p.grad_sample, p.grad = rows.clone(), rows.mean(0)
        opt_w.step()
        opt_p.step()
    torch.testing.assert_close(torch.cat([p.detach() for p in parts]), w.detach(), atol=0, rtol=0)


@pytest.mark.parametrize("noise", list(NOISES))
def test_state_dict_round_trip_continues_the_stream(noise):
    params = make_params((7, 1023))
    full, _ = run("adapnm_noams_demon", "reference", NOISES[noise], params, steps=12)
    half, opt = run("adapnm_noams_demon", "reference", NOISES[noise], params, steps=6)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    resumed = [p.detach().clone().requires_grad_() for p in half]
    opt2 = CONFIGS["adapnm_noams_demon"](resumed, backend="reference", noise=None, seed=999)
    opt2.load_state_dict(state)
    for step in range(6, 12):
        feed(resumed, step)
        opt2.step()
    for a, b in zip(full, resumed):
        assert torch.equal(a, b)


def test_amp_unscale_and_maximize_apply_to_each_sample():
    params = make_params((64,))
    ref, _ = run("pnm", "reference", NOISES["diag_fisher_centered"], params, steps=3)
    p = params[0].detach().clone().requires_grad_()
    opt = nf.PNM([p], lr=0.05, betas=(0.9, 1.0), weight_decay=0.01, noise=NOISES["diag_fisher_centered"],
                 seed=7, backend="reference", maximize=True)
    opt.grad_scale, opt.found_inf = torch.tensor([4.0]), torch.tensor([0.0])
    for step in range(3):
        p.grad_sample = -4.0 * sample_grads(p, step, 0)
        opt.step()
    torch.testing.assert_close(p, ref[0], atol=1e-6, rtol=1e-6)


def test_per_sample_loss_route_equals_grad_sample_route():
    """Multiplicative noise from grad_sample == plain step on the gradient of (w * losses).mean()."""
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    x, y = torch.randn(BATCH, 5), torch.randn(BATCH, 3)
    noise = Multiplicative("gaussian", small_batch=2)
    twin = torch.nn.Linear(5, 3)
    twin.load_state_dict(model.state_dict())
    opt_a = nf.PNM(model.parameters(), lr=0.1, noise=noise, seed=11, backend="reference")
    opt_b = nf.PNM(twin.parameters(), lr=0.1, seed=11, backend="reference")
    for step in range(1, 4):
        nf.per_sample_grads(model, lambda out, t: ((out - t) ** 2).sum(), x, y)
        opt_a.step()
        w = nf.noise.loss_weights(BATCH, "gaussian", small_batch=2, seed=11, step=step)
        twin.zero_grad()
        (w * ((twin(x) - y) ** 2).sum(1)).mean().backward()
        opt_b.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_params_with_grad_sample_only_take_part_and_inputs_stay_untouched():
    p = torch.randn(10, requires_grad=True)
    before = p.detach().clone()
    p.grad_sample = sample_grads(p, 0, 0)
    rows = p.grad_sample.clone()
    opt = nf.PNM([p], lr=0.1, noise=NOISES["mult_gaussian"], backend="foreach", seed=1)
    opt.step()
    assert p.grad is None and torch.equal(p.grad_sample, rows) and not torch.equal(p.detach(), before)


def _check_nothing_written(opt, ps, before):
    assert all(torch.equal(p.detach(), b) for p, b in zip(ps, before))
    assert all(len(opt.state[p]) == 0 for p in ps)


@pytest.mark.parametrize("case,error,match", [
    ("missing", RuntimeError, "grad_sample"),
    ("batch_differs", RuntimeError, "batch sizes differ"),
    ("batch_too_small", ValueError, "small_batch"),
    ("shape", RuntimeError, "grad_sample"),
])
def test_bad_grad_samples_raise_before_anything_is_written(case, error, match):
    ps = [torch.randn(4, requires_grad=True), torch.randn(3, requires_grad=True)]
    before = [p.detach().clone() for p in ps]
    opt = nf.AdaPNM([{"params": [ps[0]]}, {"params": [ps[1]]}], noise=DiagFisher(small_batch=4), backend="reference")
    for p in ps:
        p.grad_sample = torch.randn(8, *p.shape)
        p.grad = p.grad_sample.mean(0)
    if case == "missing":
        del ps[1].grad_sample
    elif case == "batch_differs":
        ps[1].grad_sample = torch.randn(6, 3)
    elif case == "batch_too_small":
        for p in ps:
            p.grad_sample = torch.randn(4, *p.shape)
    else:
        ps[1].grad_sample = torch.randn(8, 4)
    with pytest.raises(error, match=match):
        opt.step()
    _check_nothing_written(opt, ps, before)


def test_unsupported_backends_and_bad_noise_are_refused_at_construction():
    p = torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match="noise"):
        nf.PNM([p], lr=0.1, noise="gaussian")
    for backend in ("native", "triton"):
        module = nf.backends.get(backend)
        if getattr(module, "supports_noise", False) is True:
            continue
        with pytest.raises(NotImplementedError, match="noise"):
            nf.PNM([p], lr=0.1, noise=Isotropic(0.1), backend=backend)
    opt = nf.PNM([p], lr=0.1, noise=Isotropic(0.1), backend="reference")
    assert opt.param_groups[0]["noise"] == {"type": "Isotropic", "std": 0.1}
