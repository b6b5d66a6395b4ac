"""The Triton backend on a GPU (skipped without one): the reference comparisons at full size, the
pointer table rebuilt after ``zero_grad(set_to_none=True)``, no recompilation when lr or the Demon
beta changes, a ``torch.compile``d training step, a CUDA-graph-captured step, and equality with the
native backend."""
import pytest
import torch

pytest.importorskip("triton")

import noisefuse as nf  # noqa: E402
from cases import (BIG_SIZE, CONFIGS, SIZES, assert_same_state, capture_after_warm_up, compare_backends,  # noqa: E402
                   make_grads, make_params)
from noise_cases import NOISES  # noqa: E402
from noisefuse.backends import native  # noqa: E402
from noisefuse.backends.triton_kernels import kernels, tables  # noqa: E402

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
FULL = SIZES + (BIG_SIZE,)


@pytest.fixture(autouse=True)
def compiled_kernels(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("NOISEFUSE_TRITON_BLOCK", raising=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_matches_reference_full_size(config, dtype):
    compare_backends(config, "triton", dtype=dtype, device="cuda", sizes=FULL, steps=20)


@pytest.mark.parametrize("config", ["adapnm_noams_demon", "demon_sgd_nesterov"])
def test_float64(config):
    compare_backends(config, "triton", dtype=torch.float64, device="cuda", sizes=FULL, steps=20)


@pytest.mark.skipif(not native.available(torch.device("cuda")), reason="native CUDA kernels not built")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_matches_native(config, dtype):
    compare_backends(config, "triton", reference="native", dtype=dtype, device="cuda", sizes=FULL, steps=20)


def _pair(config, sizes=(1023, 4097)):
    ps = [p.detach().clone().requires_grad_() for p in make_params(sizes, device="cuda")]
    ref = [p.detach().clone().requires_grad_() for p in ps]
    return ps, CONFIGS[config](ps, backend="triton"), ref, CONFIGS[config](ref, backend="reference")


def test_table_rebuilt_after_set_to_none():
    ps, opt, ref, opt_ref = _pair("adapnm")
    builds, held = tables.stats.builds, []
    for step in range(4):
        for p, q, g in zip(ps, ref, make_grads(ps, step)):
            p.grad, q.grad = g, g.clone()
        held.append([p.grad for p in ps])  # keep old grads alive: new ones land at new addresses
        opt.step()
        opt_ref.step()
        opt.zero_grad(set_to_none=True)
        opt_ref.zero_grad(set_to_none=True)
    assert tables.stats.builds == builds + 4
    assert_same_state(opt_ref, opt, ref, ps, torch.float32)


def _n_compiled(kernel):
    caches = getattr(kernel, "device_caches", None)
    if caches is not None:  # triton >= 3.1: device -> (kernel cache, ...)
        return sum(len(entry[0]) for entry in caches.values())
    return sum(len(c) for c in kernel.cache.values())


def test_no_recompilation_when_lr_or_demon_beta_changes():
    ps, opt, _, _ = _pair("demon_adamw_ams")
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
    counts = []
    for step in range(6):  # the Demon beta decays every step, the lr too
        for p, g in zip(ps, make_grads(ps, step)):
            p.grad = g
        opt.step()
        sched.step()
        counts.append((_n_compiled(kernels.update_kernel), _n_compiled(kernels.scalars_kernel)))
    assert counts[-1] == counts[0]


def test_compiled_training_step():
    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 4)).cuda()
              for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    opts = [nf.AdaPNM(models[0].parameters(), lr=1e-2, demon=50, backend="triton"),
            nf.AdaPNM(models[1].parameters(), lr=1e-2, demon=50, backend="reference")]
    x, y = torch.randn(16, 32, device="cuda"), torch.randn(16, 4, device="cuda")

    def train_step(model, opt):
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss.detach()

    compiled = torch.compile(train_step)
    for _ in range(5):
        compiled(models[0], opts[0])
        train_step(models[1], opts[1])
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_cuda_graph_captured_step():
    ps, opt, ref, opt_ref = _pair("demon_adam")
    static = [torch.zeros_like(p) for p in ps]
    for p, g in zip(ps, static):
        p.grad = g
    graph = capture_after_warm_up(opt.step, opt.step)  # the warm-up makes state, kernels and table
    for q, g in zip(ref, static):
        q.grad = g.clone()
    opt_ref.step()  # the warm-up's twin
    for step in range(5):
        for g, q, new in zip(static, ref, make_grads(ps, step)):
            g.copy_(new)
            q.grad = new.clone()
        graph.replay()
        opt_ref.step()
    torch.cuda.synchronize()
    assert_same_state(opt_ref, opt, ref, ps, torch.float32)


def _noisy_run(config, backend, noise, params, steps=10, batches=(8,), seed=0xF00DFACE_DEADBEEF):
    ps = [p.detach().clone().requires_grad_() for p in params]
    opt = CONFIGS[config](ps, backend=backend, noise=noise, seed=seed)
    for step in range(steps):
        batch = batches[step % len(batches)]
        for i, p in enumerate(ps):
            gen = torch.Generator().manual_seed(step * 1009 + i)
            rows = torch.randn((batch, *p.shape), generator=gen, dtype=torch.float64).to(p.dtype).cuda()
            p.grad_sample, p.grad = rows, rows.mean(0)
        opt.step()
    return ps, opt


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("noise,config", [("isotropic", "pnm_l2_demon"), ("diag_fisher", "adapnm"),
                                          ("diag_fisher_centered", "demon_sgd_nesterov"),
                                          ("mult_gaussian", "demon_adamw_ams"), ("mult_centered", "pnm"),
                                          ("mult_bernoulli", "adapnm_noams_demon")])
def test_noise_matches_reference_full_size(noise, config, dtype):
    params = make_params(FULL, dtype, "cuda")
    pa, oa = _noisy_run(config, "reference", NOISES[noise], params)
    pb, ob = _noisy_run(config, "triton", NOISES[noise], params)
    assert_same_state(oa, ob, pa, pb, dtype)


@pytest.mark.parametrize("noise", ["isotropic", "diag_fisher", "mult_gaussian"])
def test_no_recompilation_when_batch_seed_or_noise_values_change(noise):
    params = make_params((1024, 4096), device="cuda")
    _noisy_run("adapnm", "triton", NOISES[noise], params, steps=1)
    count = _n_compiled(kernels.update_kernel)
    other = {"isotropic": nf.noise.Isotropic(0.01), "diag_fisher": nf.noise.DiagFisher(small_batch=3),
             "mult_gaussian": nf.noise.Multiplicative("gaussian", sigma=0.3)}[noise]
    _noisy_run("adapnm", "triton", NOISES[noise], params, steps=3, batches=(8, 5, 16), seed=1)
    _noisy_run("adapnm", "triton", other, params, steps=2, batches=(7,), seed=2**64 - 3)
    assert _n_compiled(kernels.update_kernel) == count
