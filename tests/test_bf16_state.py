"""bfloat16 optimizer state (``state_dtype=torch.bfloat16``), stored stochastically from the one
Philox stream by default (docs/kernel-contract.md, "Mixed precision"): every backend against the
reference, the stagnation that rounding to nearest suffers and stochastic rounding avoids, the
argument checks, checkpoints across state precisions, and AMP skips."""
from __future__ import annotations

import pytest
import torch

import noisefuse as nf
from cases import (BIG_SIZE, CONFIGS, SIZES, assert_checkpoint_resumes_bit_for_bit, make_params, on_cpu, run,
                   saved_and_loaded, trained)
from noisefuse.optim.precision import COUNTERS

BACKENDS = ["foreach", "native", "triton"]
# (param dtype, optimizer kwargs): float32 params with stochastic (default) and nearest bfloat16
# state; bfloat16 params whose state is rounded stochastically, with and without their own rounding.
CASES = {
    "f32_sr": (torch.float32, dict(state_dtype=torch.bfloat16)),
    "f32_nearest": (torch.float32, dict(state_dtype=torch.bfloat16, state_rounding="nearest")),
    "bf16_sr_both": (torch.bfloat16, dict(state_dtype=torch.bfloat16, stochastic_rounding=True)),
    "bf16_sr_state": (torch.bfloat16, dict(state_rounding="stochastic")),
}


def bits(t):
    return t.detach().view(torch.int16)


def assert_bf16_state_close(opt_a, opt_b, params_a, params_b, dtype):
    """Params to the param dtype's float32-order tolerance, state bits equal but for rare flips.

    The backends compute in float32 in different orders (FMA contraction, vector widths), so a
    float32 value now and then differs in its last bit; the same rounding bits then still give the
    same bfloat16 unless the value sits at the boundary the draw picks, about once in 2^16 elements
    per step, and the trajectories of those elements drift apart by about a bfloat16 ulp. Wrong
    bits (another word, another index) would make half of all elements differ."""
    atol, rtol = (1e-5, 1e-4) if dtype == torch.float32 else (8e-3, 1.6e-2)
    for i, (pa, pb) in enumerate(zip(params_a, params_b)):
        # A flipped state element moves its param by about lr times a bfloat16 ulp of the update.
        apart = int((~torch.isclose(pa.detach(), pb.detach(), atol=atol, rtol=rtol)).sum())
        assert apart <= max(2, 0.002 * pa.numel()), f"param {i}: {apart} elements apart"
        torch.testing.assert_close(pa.detach(), pb.detach(), atol=1e-3, rtol=1e-2, msg=lambda m: f"param {i}: {m}")
        sa, sb = opt_a.state[pa], opt_b.state[pb]
        assert sa.keys() == sb.keys()
        for key in sa:
            if key in COUNTERS:  # Triton forms the float64 Demon beta in another order: an ulp or two
                torch.testing.assert_close(sa[key], sb[key], atol=0, rtol=1e-14, msg=lambda m: f"{key}: {m}")
                continue
            assert sa[key].dtype == sb[key].dtype == torch.bfloat16, (i, key, sa[key].dtype)
            apart = int((bits(sa[key]) != bits(sb[key])).sum())
            assert apart <= max(2, 0.002 * sa[key].numel()), f"param {i} state {key}: {apart} elements apart"
            torch.testing.assert_close(sa[key].float(), sb[key].float(), atol=1e-2, rtol=1.6e-2,
                                       msg=lambda m: f"param {i} state {key}: {m}")


# Every config with the main case; the other cases with one config of each family shape.
RUNS = [(config, "f32_sr") for config in sorted(CONFIGS)] + [
    (config, case) for case in sorted(CASES) if case != "f32_sr" for config in ("adapnm", "pnm", "demon_adamw_ams")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("config,case", RUNS)
def test_backend_matches_reference(config, case, backend, monkeypatch):
    on_cpu(backend, monkeypatch)
    dtype, kwargs = CASES[case]
    # Past one CPU chunk (32K elements) and one CUDA chunk (64K) for native; the interpreter is slow,
    # and Triton's blocks (at most 4K elements) are already crossed by SIZES.
    params = make_params(SIZES if backend == "triton" else (*SIZES, BIG_SIZE), dtype=dtype)
    pa, oa = run(config, "reference", params, steps=8, seed=7, **kwargs)
    pb, ob = run(config, backend, params, steps=8, seed=7, **kwargs)
    assert_bf16_state_close(oa, ob, pa, pb, dtype)


@pytest.mark.parametrize("backend", ["reference", "foreach", "native", "triton"])
def test_state_is_bfloat16_and_half_the_bytes(backend, monkeypatch):
    on_cpu(backend, monkeypatch)
    ps = make_params((1000,))
    opt = nf.AdaPNM(ps, lr=1e-3, state_dtype=torch.bfloat16, backend=backend)
    ps[0].grad = torch.randn(1000)
    opt.step()
    buffers = [v for k, v in opt.state[ps[0]].items() if k not in COUNTERS]
    assert len(buffers) == 4 and all(b.dtype == torch.bfloat16 for b in buffers)
    assert sum(b.numel() * b.element_size() for b in buffers) == 8 * 1000  # float32 state: 16 bytes


# float32 values whose rounding to bfloat16 is decided by the last bits: ties (round to even from an
# even and from an odd bfloat16), the values beside them, NaNs (positive, negative, payload in the
# low bits only), infinities, the largest float32 (rounds to inf), subnormals (a tie among them), 0.
NEAREST_EDGES = [0x3F808000, 0x3F818000, 0x3F807FFF, 0x3F808001, 0xBF818000, 0x7FC00000, 0xFFC12345, 0x7F800001,
                 0x7F800000, 0xFF800000, 0x7F7FFFFF, 0xFF7FFFFF, 0x00008000, 0x00018000, 0x80007FFF, 0x00000001,
                 0x00000000, 0x47FF8000, 0x3EAAAAAB, 0xC2F6E979]


@pytest.mark.parametrize("backend", ["foreach", "native", "native-baseline"])
def test_state_rounded_to_nearest_has_the_reference_bits(backend, monkeypatch):
    """bfloat16 state rounded to nearest, bit for bit, at values where the last bit decides: DemonSGD's
    first momentum is the gradient itself (m = 0 * a + 1 * g, exact), so the state holds exactly
    these float32 values rounded. 23 elements: two whole vectors of the native AVX2 store and a tail.
    NaNs are compared as NaNs: torch's own conversions give different payloads (its vectorised CPU
    path 0xFFFF, the scalar one 0x7FC0, as noisefuse's native stores do)."""
    if backend == "native-baseline":
        monkeypatch.setenv("NOISEFUSE_CPU_KERNEL", "baseline")
    backend = on_cpu(backend.split("-")[0], monkeypatch)
    words = torch.tensor(NEAREST_EDGES + NEAREST_EDGES[:3], dtype=torch.int64)
    grad = words.to(torch.int32).view(torch.float32)
    states = []
    for name in ("reference", backend):
        ps = [torch.zeros(grad.numel(), requires_grad=True)]
        opt = nf.DemonSGD(ps, lr=1e-3, momentum=0.9, total_steps=10, state_dtype=torch.bfloat16,
                          state_rounding="nearest", backend=name)
        ps[0].grad = grad.clone()
        opt.step()
        (buffer,) = [v for k, v in opt.state[ps[0]].items() if k not in COUNTERS]
        states.append(buffer)
    expected = grad.to(torch.bfloat16)  # torch's rounding: ties to even
    expected[grad == 0] = 0.0  # 0 * a + (+0): +0 either way
    nan = grad.isnan()
    for state in states:
        assert torch.equal(state.isnan(), nan)
        assert torch.equal(bits(state)[~nan], bits(expected)[~nan])


# Not Triton: 1500 launches in its interpreter take minutes; its bits are those of the reference
# (test_backend_matches_reference).
@pytest.mark.parametrize("backend", ["reference", "foreach", "native"])
def test_stochastic_rounding_keeps_the_second_moment_moving(backend, monkeypatch):
    """A constant gradient g = 1 drives v_t = 1 - 0.999^t. Rounded to nearest, a bfloat16 v stops
    where (1 - beta2)(1 - v) falls below half its ulp: at 0.25, whose ulp is 2^-9, as
    0.001 * 0.75 < 2^-10. After 1500 steps it sits there while float32's v is 0.78. Rounded
    stochastically it follows float32 on average (the unbiased draws of 2048 elements)."""
    on_cpu(backend, monkeypatch)
    steps, n = 1500, 2048
    means = {}
    for label, kwargs in {"float32": {}, "nearest": dict(state_dtype=torch.bfloat16, state_rounding="nearest"),
                          "stochastic": dict(state_dtype=torch.bfloat16)}.items():
        p = torch.zeros(n, requires_grad=True)
        opt = nf.AdaPNM([p], lr=0.0, betas=(0.9, 0.999, 1.0), amsgrad=False, backend=backend, seed=1, **kwargs)
        p.grad = torch.ones(n)
        for _ in range(steps):
            opt.step()
        means[label] = opt.state[p]["exp_avg_sq"].float().mean().item()
    exact = 1 - 0.999**steps
    assert means["float32"] == pytest.approx(exact, rel=1e-4)
    assert means["nearest"] < 0.3, means
    assert means["stochastic"] == pytest.approx(exact, rel=0.01), means


def test_bad_arguments_are_refused():
    f32, f16, f64 = make_params((3,)), make_params((3,), dtype=torch.float16), make_params((3,), dtype=torch.float64)
    with pytest.raises(ValueError, match="state_dtype"):
        nf.PNM(f16, lr=0.1, state_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="Invalid state_dtype: torch.bfloat16"):
        nf.PNM(f64, lr=0.1, state_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="state_rounding: 'stochastic' rounds bfloat16 state.*float32"):
        nf.AdaPNM(f32, state_rounding="stochastic")
    with pytest.raises(ValueError, match="state_rounding: 'stochastic' rounds bfloat16 state.*float32"):
        nf.AdaPNM(make_params((3,), dtype=torch.bfloat16), state_dtype=torch.float32, state_rounding="stochastic")
    with pytest.raises(ValueError, match="Invalid state_rounding: 'up'"):
        nf.AdaPNM(f32, state_dtype=torch.bfloat16, state_rounding="up")
    opt = nf.AdaPNM(f32, state_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="state_rounding"):
        opt.add_param_group(dict(params=make_params((2,)), state_dtype=None, state_rounding="stochastic"))


@pytest.mark.parametrize("backend", ["reference", "native"])
def test_checkpoint_resumes_bit_for_bit(backend, monkeypatch):
    """Saved bfloat16 state (plain tensors a weights_only load reads) resumes exactly: the same
    state and the same rounding bits (the seed is in the groups)."""
    on_cpu(backend, monkeypatch)
    factory = lambda ps: nf.AdaPNM(ps, lr=1e-2, weight_decay=0.01, state_dtype=torch.bfloat16, backend=backend)  # noqa: E731
    assert_checkpoint_resumes_bit_for_bit(factory, make_params((5, 300)))


def test_checkpoints_convert_between_state_precisions():
    """bfloat16 state loads into float32 state exactly (an upcast); float32 state loads into
    bfloat16 state rounded to nearest, once, at load_state_dict."""
    params = make_params((5, 300))
    bf16 = trained(lambda ps: nf.PNM(ps, lr=0.05, state_dtype=torch.bfloat16), params)
    into_f32 = nf.PNM([p.detach().clone().requires_grad_() for p in params], lr=0.05)
    into_f32.load_state_dict(saved_and_loaded(bf16))
    f32_params = into_f32.param_groups[0]["params"]
    for p, q in zip(params, f32_params):
        for key in ("pos_momentum", "neg_momentum"):
            assert into_f32.state[q][key].dtype == torch.float32
            assert torch.equal(into_f32.state[q][key], bf16.state[p][key].float())
    back = nf.PNM([p.detach().clone().requires_grad_() for p in params], lr=0.05, state_dtype=torch.bfloat16)
    back.load_state_dict(into_f32.state_dict())
    for p, q in zip(params, back.param_groups[0]["params"]):
        assert torch.equal(back.state[q]["pos_momentum"], bf16.state[p]["pos_momentum"])  # bfloat16 values round to themselves


@pytest.mark.parametrize("backend", ["reference", "foreach", "native", "triton"])
def test_amp_skip_leaves_the_state_as_it_was(backend, monkeypatch):
    on_cpu(backend, monkeypatch)
    params = make_params((70,))
    opt = trained(lambda ps: nf.AdaPNM(ps, lr=1e-2, state_dtype=torch.bfloat16, backend=backend), params, steps=2)
    before = {k: v.clone() for k, v in opt.state[params[0]].items()}
    param = params[0].detach().clone()
    opt.grad_scale, opt.found_inf = torch.tensor(1.0), torch.tensor(1.0)
    params[0].grad = torch.randn(70)
    opt.step()
    assert torch.equal(params[0].detach(), param)
    assert all(torch.equal(v, before[k]) for k, v in opt.state[params[0]].items())
