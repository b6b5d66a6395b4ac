"""Shared test inputs: optimizer configurations, awkward tensor sizes, per-dtype tolerances, and
the run-two-backends-and-compare-everything check used by every backend's tests."""
from __future__ import annotations

import torch

import noisefuse as nf
from noisefuse.bench.timing import capture_graph as capture_after_warm_up  # noqa: F401  (the GPU tests')

# 0, 1, odd, a prime past a 4K block, and more than one CUDA chunk (64K elements) in the big case.
SIZES = (0, 1, 1023, 4097)
BIG_SIZE = 65536 + 4099

# Per-dtype (atol, rtol) for params and state after ~20 steps. The backends all compute in float32
# (float64 for float64) and round once on store, so they differ only in the order of float32
# operations: a few float32 ulps per step. Low-precision storage adds at most one rounding-boundary
# flip per element, i.e. one ulp of the storage type (2^-8 for bf16, 2^-11 for fp16) relative.
TOLERANCES = {
    torch.float64: (1e-12, 1e-10),
    torch.float32: (1e-6, 1e-5),
    torch.float16: (1e-3, 2e-3),
    torch.bfloat16: (8e-3, 1.6e-2),
}

# (name, factory(params, **common) -> optimizer). Each covers a different point of the family.
CONFIGS = {
    "pnm": lambda ps, **kw: nf.PNM(ps, lr=0.05, betas=(0.9, 1.0), weight_decay=0.01, **kw),
    "pnm_l2_demon": lambda ps, **kw: nf.PNM(ps, lr=0.05, betas=(0.8, 0.5), weight_decay=0.02, decoupled=False,
                                           demon=nf.Demon(15, delay=0.2), **kw),
    "adapnm": lambda ps, **kw: nf.AdaPNM(ps, lr=0.01, weight_decay=0.01, **kw),
    "adapnm_noams_demon": lambda ps, **kw: nf.AdaPNM(ps, lr=0.01, betas=(0.9, 0.99, 0.7), amsgrad=False,
                                                     decoupled=False, weight_decay=0.01, demon=12, **kw),
    "demon_sgd": lambda ps, **kw: nf.DemonSGD(ps, lr=0.05, momentum=0.9, total_steps=15, weight_decay=0.01, **kw),
    "demon_sgd_nesterov": lambda ps, **kw: nf.DemonSGD(ps, lr=0.05, momentum=0.8, total_steps=30, nesterov=True,
                                                       decoupled=True, weight_decay=0.01, delay=0.3, **kw),
    "demon_adam": lambda ps, **kw: nf.DemonAdam(ps, lr=0.01, total_steps=15, weight_decay=0.01, **kw),
    "demon_adamw_ams": lambda ps, **kw: nf.DemonAdam(ps, lr=0.01, betas=(0.95, 0.99), total_steps=25,
                                                     decoupled=True, amsgrad=True, weight_decay=0.05, **kw),
}


def make_params(sizes=SIZES, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g, dtype=torch.float64).to(dtype=dtype, device=device).requires_grad_()
            for n in sizes]


def make_grads(params, step, seed=1):
    """Deterministic float64-drawn gradients for ``step``, one per param."""
    grads = []
    for i, p in enumerate(params):
        g = torch.Generator().manual_seed(seed * 100003 + step * 1009 + i)
        grads.append(torch.randn(p.shape, generator=g, dtype=torch.float64).to(dtype=p.dtype, device=p.device))
    return grads


def run(config, backend, params, steps=20, skip_some=True, groups=None, **common):
    """Clone ``params``, optimize them ``steps`` times with ``backend``; return (params, optimizer).
    With ``skip_some``, param 2 gets no grad every third step, so per-param step counters diverge."""
    ps = [p.detach().clone().requires_grad_() for p in params]
    param_arg = ps if groups is None else [dict(g, params=[ps[i] for i in g["params"]]) for g in groups]
    opt = CONFIGS[config](param_arg, backend=backend, **common)
    for step in range(steps):
        for i, (p, g) in enumerate(zip(ps, make_grads(ps, step))):
            p.grad = None if (skip_some and i == 2 and step % 3 == 1) else g
        opt.step()
    return ps, opt


def assert_same_state(opt_a, opt_b, params_a, params_b, dtype):
    atol, rtol = TOLERANCES[dtype]
    for i, (pa, pb) in enumerate(zip(params_a, params_b)):
        torch.testing.assert_close(pa.detach().cpu(), pb.detach().cpu(), atol=atol, rtol=rtol,
                                   msg=lambda m: f"param {i}: {m}")
        sa, sb = opt_a.state[pa], opt_b.state[pb]
        assert sa.keys() == sb.keys(), f"param {i}: state keys differ: {sorted(sa)} vs {sorted(sb)}"
        for key in sa:
            va, vb = sa[key], sb[key]
            if key in ("step", "beta1_prod"):
                torch.testing.assert_close(va.cpu().double(), vb.cpu().double(), atol=0, rtol=1e-6,
                                           msg=lambda m: f"param {i} state {key}: {m}")
            else:
                torch.testing.assert_close(va.cpu(), vb.cpu(), atol=atol, rtol=rtol,
                                           msg=lambda m: f"param {i} state {key}: {m}")


def compare_backends(config, backend, reference="reference", dtype=torch.float32, device="cpu",
                     sizes=SIZES, steps=20, **common):
    """The central check: ``backend`` equals ``reference`` in params and every state tensor."""
    params = make_params(sizes, dtype, device)
    pa, oa = run(config, reference, params, steps, **common)
    pb, ob = run(config, backend, params, steps, **common)
    assert_same_state(oa, ob, pa, pb, dtype)


def cpu_backends():
    """The backends that can run CPU tensors in this environment (native once built, Triton only
    under its interpreter)."""
    from noisefuse import backends

    names = ["reference", "foreach"]
    for name in ("native", "triton"):
        if backends.get(name).available(torch.device("cpu")):
            names.append(name)
    return names


ALL_BACKENDS = ("reference", "foreach", "native", "triton")
FUSED = ("native", "triton")  # the backends whose kernels read counters (and a tensor lr) on the device


def on_cpu(backend, monkeypatch):
    """Lets ``backend`` run CPU tensors in this test (Triton through its interpreter), or skips the
    test when it cannot (native not built, Triton not installed); returns ``backend``."""
    import pytest

    from noisefuse import backends

    if backend == "triton":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    if backend in FUSED and not backends.get(backend).available(torch.device("cpu")):
        pytest.skip(f"{backend} cannot run CPU tensors here")
    return backend


def through_a_file(state_dict):
    """``state_dict`` through ``torch.save`` and ``torch.load(weights_only=True)``, as a checkpoint
    file would carry it."""
    import io

    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def saved_and_loaded(opt):
    """``opt.state_dict()`` as a checkpoint file would carry it (``through_a_file``)."""
    return through_a_file(opt.state_dict())


def trained(factory, params, steps=5):
    """``factory(params)`` stepped ``steps`` times with make_grads's gradients."""
    opt = factory(params)
    for step in range(steps):
        for p, g in zip(params, make_grads(params, step)):
            p.grad = g
        opt.step()
    return opt


def assert_checkpoint_resumes_bit_for_bit(factory, params):
    """An optimizer of ``factory`` trained on ``params``, saved, loaded into a fresh one on copies of
    them (``torch.load(weights_only=True)``): one more step of each gives the same params and the same
    state, bit for bit. Returns the resumed optimizer."""
    opt = trained(factory, params)
    resumed_params = [p.detach().clone().requires_grad_() for p in params]
    resumed = factory(resumed_params)
    resumed.load_state_dict(saved_and_loaded(opt))
    for ps, o in ((params, opt), (resumed_params, resumed)):
        for p, g in zip(ps, make_grads(ps, 9)):
            p.grad = g
        o.step()
    for p, q in zip(params, resumed_params):
        assert torch.equal(p, q)
        for key, value in opt.state[p].items():
            assert value.dtype == resumed.state[q][key].dtype and torch.equal(value, resumed.state[q][key]), key
    return resumed
