"""Mixed precision: float32 state for bfloat16/float16 params (``state_dtype=torch.float32``) and
stochastic rounding of bfloat16 params from the Philox stream (docs/kernel-contract.md, "Mixed
precision"), on the reference, foreach, native (CPU kernel, both instruction-set builds) and Triton
(interpreter) backends. The CUDA kernel's versions are in tests/test_native_cuda.py."""
import math

import pytest
import torch

import noisefuse as nf
from cases import BIG_SIZE, CONFIGS, SIZES, TOLERANCES, make_grads, make_params, run, saved_and_loaded
from noisefuse.random import round_bf16_with, stochastic_round_bf16, stochastic_round_bf16_multi
from noisefuse.optim.precision import COUNTERS

LOW = [torch.bfloat16, torch.float16]
MIXED = dict(state_dtype=torch.float32)
SR = dict(state_dtype=torch.float32, stochastic_rounding=True, seed=2**40 + 3)
F32_TOL = TOLERANCES[torch.float32]
NATIVE = pytest.param("native", marks=pytest.mark.skipif(
    not nf.backends.get("native").available(torch.device("cpu")), reason="native extension not built"))
# Both builds of the native CPU kernel (csrc/cpu/fused_step_cpu.cpp): AVX2 where the CPU has it.
ISAS = ["default", "baseline"]


@pytest.fixture
def interpreter(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("NOISEFUSE_TRITON_BLOCK", raising=False)


def bits(t):
    return t.detach().view(torch.int16)


def assert_mixed_state(opt_a, opt_b, params_a, params_b, dtype):
    """Params at the storage dtype's tolerance, every state tensor float32 and at float32's.

    Where a backend's float32 result differs from the reference's in the last bit (another order
    of operations, FMA contraction), the rounding of a param into ``dtype`` flips now and then,
    and with L2 decay the state of that element then sees a param one ``dtype`` ulp apart. Such
    elements are rare: 99.9% of every state tensor
    must agree at float32's tolerance, the rest at the storage dtype's."""
    atol, rtol = TOLERANCES[dtype]
    for i, (pa, pb) in enumerate(zip(params_a, params_b)):
        assert pa.dtype == pb.dtype == dtype
        torch.testing.assert_close(pa.detach(), pb.detach(), atol=atol, rtol=rtol, msg=lambda m: f"param {i}: {m}")
        sa, sb = opt_a.state[pa], opt_b.state[pb]
        assert sa.keys() == sb.keys()
        for key in sa:
            expected_dtype = torch.float64 if key in COUNTERS else torch.float32
            assert sa[key].dtype == sb[key].dtype == expected_dtype, f"param {i} state {key}: {sa[key].dtype}"
            close = torch.isclose(sa[key], sb[key], atol=F32_TOL[0], rtol=F32_TOL[1])
            apart = int((~close).sum())
            assert apart <= 0.001 * close.numel(), f"param {i} state {key}: {apart} elements apart"
            torch.testing.assert_close(sa[key], sb[key], atol=atol, rtol=rtol,
                                       msg=lambda m: f"param {i} state {key}: {m}")


def exact_sgd(ps, backend, steps=6, **kw):
    """SGD whose float32 update is exact on every backend (momentum 0, lr a power of two, no decay),
    so only the rounding into bfloat16 can differ between them."""
    opt = nf.DemonSGD(ps, lr=2.0**-10, momentum=0.0, total_steps=10, backend=backend, **kw)
    for step in range(steps):
        for i, (p, g) in enumerate(zip(ps, make_grads(ps, step))):
            p.grad = None if (i == 2 and step % 3 == 1) else g
        opt.step()
    return opt


# ----- float32 state --------------------------------------------------------------------------
@pytest.fixture(params=ISAS)
def isa(request, monkeypatch):
    if request.param == "baseline":
        monkeypatch.setenv("NOISEFUSE_CPU_KERNEL", "baseline")
    return request.param


@pytest.mark.parametrize("backend", ["foreach", NATIVE])
@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_matches_reference_with_float32_state(config, dtype, backend):
    # BIG_SIZE: several chunks of the native CPU kernel, split over its threads.
    params = make_params(SIZES + ((BIG_SIZE,) if backend == "native" else ()), dtype)
    pa, oa = run(config, "reference", params, **MIXED)
    pb, ob = run(config, backend, params, **MIXED)
    assert_mixed_state(oa, ob, pa, pb, dtype)


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("config", ["adapnm", "pnm_l2_demon", "demon_sgd_nesterov", "demon_adamw_ams"])
def test_native_baseline_build_matches_reference_with_float32_state(config, dtype, monkeypatch):
    pytest.importorskip("noisefuse._C")
    monkeypatch.setenv("NOISEFUSE_CPU_KERNEL", "baseline")
    params = make_params(SIZES, dtype)
    pa, oa = run(config, "reference", params, **MIXED)
    pb, ob = run(config, "native", params, **MIXED)
    assert_mixed_state(oa, ob, pa, pb, dtype)


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("config", ["adapnm", "pnm_l2_demon", "demon_sgd_nesterov", "demon_adamw_ams"])
def test_triton_matches_reference_with_float32_state(config, dtype, interpreter):
    params = make_params((0, 1, 129, 4097), dtype)
    pa, oa = run(config, "reference", params, steps=8, **MIXED)
    pb, ob = run(config, "triton", params, steps=8, **MIXED)
    assert_mixed_state(oa, ob, pa, pb, dtype)


def test_float32_state_is_kept_exactly_where_bf16_state_rounds():
    # The same float32 math: float32 state equals a float32 run's state exactly (the params do not
    # feed the state with decoupled decay), while bf16 state is off by bf16 roundings.
    params = make_params((300,), torch.bfloat16)
    _, mixed = run("adapnm", "reference", params, steps=5, **MIXED)
    _, low = run("adapnm", "reference", params, steps=5)
    (p_mixed,), (p_low,) = mixed.param_groups[0]["params"], low.param_groups[0]["params"]
    ps32 = [params[0].detach().float().requires_grad_()]
    opt32 = CONFIGS["adapnm"](ps32, backend="reference")
    for step in range(5):
        ps32[0].grad = make_grads(params, step)[0].float()  # the bf16 run's grads, upcast exactly
        opt32.step()
    state32 = opt32.state[ps32[0]]["exp_avg_sq"]
    assert torch.equal(mixed.state[p_mixed]["exp_avg_sq"], state32)
    assert not torch.equal(low.state[p_low]["exp_avg_sq"].float(), state32)


# ----- stochastic rounding --------------------------------------------------------------------
def _fused_backends():
    native_built = nf.backends.get("native").available(torch.device("cpu"))
    return ("foreach", "triton") + (("native",) if native_built else ())


# STRADDLING: tensors that start at every global index modulo 4 (offsets 0, 1, 3, 6, 11, 81, 212),
# so groups of four elements, which share a Philox evaluation, straddle two tensors.
STRADDLING = (1, 2, 3, 5, 70, 131, 9)


@pytest.mark.parametrize("sizes", [SIZES, STRADDLING], ids=["sizes", "straddling"])
@pytest.mark.parametrize("state", [MIXED, {}, {"state_rounding": "stochastic"}],
                         ids=["float32_state", "bf16_state", "bf16_state_stochastic"])
def test_stochastic_rounding_is_bit_identical_on_every_backend(interpreter, isa, state, sizes):
    # The params take rounding word 1 and, with stochastic bfloat16 state, the momentum buffers
    # (momentum 0: the gradient itself, exact in float32) word 0; both are compared bit for bit.
    params = make_params(sizes, torch.bfloat16)
    sr = dict(SR, **state) if state is MIXED else dict(stochastic_rounding=True, seed=SR["seed"], **state)
    runs = {}
    for backend in ("reference",) + _fused_backends():
        if backend == "triton" and isa == "baseline":
            continue  # the ISA only selects the native CPU build
        ps = [p.detach().clone().requires_grad_() for p in params]
        opt = exact_sgd(ps, backend, **sr)
        runs[backend] = ps, [opt.state[p].get("momentum_buffer") for p in ps]
    nearest = [p.detach().clone().requires_grad_() for p in params]
    exact_sgd(nearest, "reference", state_dtype=state.get("state_dtype"))
    ref_params, ref_buffers = runs["reference"]
    for backend, (ps, buffers) in runs.items():
        for i, (a, b) in enumerate(zip(ref_params, ps)):
            assert torch.equal(bits(a), bits(b)), f"{backend}, param {i}"
        for i, (a, b) in enumerate(zip(ref_buffers, buffers)):
            assert (a is None) == (b is None) and (a is None or torch.equal(bits(a), bits(b))), f"{backend}, buffer {i}"
    # ... and it is not rounding to nearest: lr*g is mostly below half an ulp here.
    changed = sum(int((bits(a) != bits(b)).sum()) for a, b in zip(ref_params, nearest))
    assert changed > 0.3 * sum(sizes)


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_every_config_rounds_with_the_reference_stream(config, interpreter):
    # Float32 order of operations may differ between backends by an ulp, which can flip a rounding
    # now and then; another stream would flip about a third of the elements.
    params = make_params((1, 700), torch.bfloat16)
    pa, _ = run(config, "reference", params, steps=6, **SR)
    for backend in _fused_backends():
        pb, _ = run(config, backend, params, steps=6, **SR)
        same = sum(int((bits(a) == bits(b)).sum()) for a, b in zip(pa, pb))
        assert same >= 0.995 * 701, (backend, same)


@pytest.mark.parametrize("fraction", [1 / 3, 0.5, 0.9])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_rounds_up_with_the_probability_of_the_fraction(fraction, sign):
    n = 1 << 16
    low16 = round(fraction * 2**16)  # the float32 value lies low16 * 2^-16 of an ulp above 1.5
    x = torch.full((n,), sign * (1.5 + low16 * 2.0**-23))
    rounded = stochastic_round_bf16(x, seed=11, step=7, offset=123).float()
    lo, hi = sign * 1.5, sign * (1.5 + 2.0**-7)
    assert bool(((rounded == lo) | (rounded == hi)).all())
    up = float((rounded == hi).double().mean())
    p = low16 / 2**16
    assert abs(up - p) < 5 * math.sqrt(p * (1 - p) / n)  # 5 standard deviations of a binomial mean
    # The same element at many steps: independent draws with the same law.
    over_steps = torch.stack([stochastic_round_bf16(x[:64], 11, t, 0) for t in range(1, 257)]).float()
    assert abs(float((over_steps == hi).double().mean()) - p) < 5 * math.sqrt(p * (1 - p) / over_steps.numel())


def test_exact_values_nan_and_inf_are_kept():
    words = torch.tensor([0x3FC00000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7FFFFFFF, 0x7F800001,
                          0xFFFFFFFF, 0x00000000, 0x80000000], dtype=torch.int64)
    x = words.to(torch.int32).view(torch.float32)  # 1.5, inf, -inf, NaNs (one whose payload is all low bits), +-0
    out = round_bf16_with(x, torch.full(x.shape, 0xFFFF, dtype=torch.int64)).float()
    assert out[0] == 1.5 and out[1] == math.inf and out[2] == -math.inf
    assert bool(out[3:7].isnan().all())
    assert out[7] == 0 and out[8] == 0 and out[8].signbit()
    # The largest finite bf16 rounds up to inf when the draw carries past it, as rounding up should.
    big = torch.tensor([3.3895313892515355e38 + 2.0**111], dtype=torch.float32)
    assert round_bf16_with(big, torch.tensor([0xFFFF])).float().item() == math.inf


def test_nan_and_inf_survive_the_fused_step(interpreter):
    # Four times the pattern: 20 elements, so the native CPU kernel's 8-lane store sees them too.
    params = [torch.tensor([math.inf, -math.inf, 1.0, 2.0, 3.0] * 4, dtype=torch.bfloat16)]
    results = []
    for backend in ("reference",) + _fused_backends():
        ps = [params[0].clone().requires_grad_()]
        # Decoupled: L2's 0 * inf would make NaN of the infinities before any rounding.
        opt = nf.DemonSGD(ps, lr=1e-3, momentum=0.0, total_steps=5, decoupled=True, backend=backend, **SR)
        grad = torch.tensor([1.0, 1.0, math.nan, 1.0, 1.0] * 4, dtype=torch.bfloat16)
        grad.view(torch.int16)[7] = 0xFFC1 - 2**16  # a negative NaN with a payload: stored as 0x7FC0 too
        ps[0].grad = grad
        opt.step()
        results.append(ps[0].detach())
    for out in results:
        assert (out[0::5] == math.inf).all() and (out[1::5] == -math.inf).all() and out[2::5].isnan().all()
        assert torch.equal(bits(out), bits(results[0]))


def test_native_rounds_big_tensors_with_the_reference_stream(isa):
    if "native" not in _fused_backends():
        pytest.skip("native extension not built")
    params = make_params((BIG_SIZE, 3), torch.bfloat16)  # several chunks and threads, partial blocks
    runs = []
    for backend in ("reference", "native"):
        ps = [p.detach().clone().requires_grad_() for p in params]
        exact_sgd(ps, backend, steps=3, **SR)
        runs.append(ps)
    for i, (a, b) in enumerate(zip(*runs)):
        assert torch.equal(bits(a), bits(b)), f"param {i}"


def test_the_stream_ignores_grouping_and_chunking(interpreter, monkeypatch):
    params = make_params((5, 0, 130, 1, 77), torch.bfloat16)
    one = run("adapnm", "foreach", params, steps=4, **SR)[0]
    split = run("adapnm", "foreach", params, steps=4, groups=[{"params": [0, 1]}, {"params": [2, 3, 4]}], **SR)[0]
    tri = run("adapnm", "triton", params, steps=4, **SR)[0]
    monkeypatch.setenv("NOISEFUSE_TRITON_BLOCK", "64")
    tri_small = run("adapnm", "triton", params, steps=4, groups=[{"params": [0]}, {"params": [1, 2, 3, 4]}], **SR)[0]
    for i, (a, b, c, d) in enumerate(zip(one, split, tri, tri_small)):  # run() keeps the params' order
        assert torch.equal(bits(a), bits(b)), f"param {i}"
        assert torch.equal(bits(c), bits(d)), f"param {i}"
    if "native" in _fused_backends():
        nat = run("adapnm", "native", params, steps=4, **SR)[0]
        nat_split = run("adapnm", "native", params, steps=4, groups=[{"params": [0, 1, 2]}, {"params": [3, 4]}],
                        **SR)[0]
        for i, (a, b) in enumerate(zip(nat, nat_split)):
            assert torch.equal(bits(a), bits(b)), f"param {i}"


def test_stochastic_rounding_learns_what_rounding_to_nearest_drops():
    # lr * grad = 1e-3 is below half a bf16 ulp at 1.0 (2^-8): to nearest the params never move;
    # stochastically they move by 1e-3 per step on average.
    steps, n = 100, 4096
    finals = {}
    for rounding in (False, True):
        p = torch.ones(n, dtype=torch.bfloat16, requires_grad=True)
        opt = nf.DemonSGD([p], lr=1e-3, momentum=0.0, total_steps=steps, stochastic_rounding=rounding, seed=5)
        for _ in range(steps):
            p.grad = torch.ones_like(p)
            opt.step()
        finals[rounding] = p.detach().float()
    assert bool((finals[False] == 1.0).all())
    assert abs(finals[True].mean().item() - (1.0 - steps * 1e-3)) < 2e-3  # ulp 2^-7 / sqrt(n) * a few
    assert finals[True].std().item() > 0  # it really is random per element


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_stochastic_rounding_is_a_no_op_for_other_dtypes(dtype):
    params = make_params((3, 257), dtype)
    with_sr, _ = run("adapnm", "foreach", params, steps=4, stochastic_rounding=True)
    without, _ = run("adapnm", "foreach", params, steps=4)
    for a, b in zip(with_sr, without):
        assert torch.equal(a, b)


def test_transposed_params_round_by_row_major_index(interpreter, monkeypatch):
    # The fused kernels walk memory order; a transposed param is stepped by foreach, with the same bits.
    fused = _fused_backends()[1:]
    for backend in fused:
        monkeypatch.setattr(nf.backends.get(backend), "_warned_layout", False)
    base = make_params((12 * 20,), torch.bfloat16)[0].detach()
    results = []
    for backend in ("reference",) + fused:
        ps = [base.view(20, 12).t().clone().requires_grad_()]  # [12, 20] with strides (1, 12)
        assert not ps[0].is_contiguous()
        if backend != "reference":
            with pytest.warns(RuntimeWarning, match="stochastic rounding"):
                exact_sgd(ps, backend, steps=3, **SR)
        else:
            exact_sgd(ps, backend, steps=3, **SR)
        results.append(ps[0].detach())
    for backend, result in zip(fused, results[1:]):
        assert torch.equal(bits(results[0]), bits(result)), backend


def test_unit_offsets_for_the_foreach_draw_match_the_reference():
    xs = [torch.randn(5), torch.randn(0), torch.randn(3, 4)]
    multi = stochastic_round_bf16_multi(xs, 9, 3, [0, 5, 5])
    for x, m, off in zip(xs, multi, [0, 5, 5]):
        assert torch.equal(bits(m), bits(stochastic_round_bf16(x, 9, 3, off)))


# ----- checkpoints ----------------------------------------------------------------------------
@pytest.mark.parametrize("config", ["adapnm", "demon_sgd_nesterov"])
def test_state_dict_round_trip_continues_bit_for_bit(config):
    params = make_params((1, 300, 17), torch.bfloat16)
    straight, _ = run(config, "foreach", params, steps=10, skip_some=False, **SR)
    ps = [p.detach().clone().requires_grad_() for p in params]
    first = CONFIGS[config](ps, backend="foreach", **SR)
    for step in range(4):
        for p, g in zip(ps, make_grads(ps, step)):
            p.grad = g
        first.step()
    saved = saved_and_loaded(first)
    assert saved["param_groups"][0]["state_dtype"] == "float32"  # a torch.dtype is saved by name (state_dict)
    assert all(v.dtype == (torch.float64 if k in COUNTERS else torch.float32)
               for s in saved["state"].values() for k, v in s.items())
    resumed = CONFIGS[config](ps, backend="foreach", **SR)
    resumed.load_state_dict(saved)
    for step in range(4, 10):
        for p, g in zip(ps, make_grads(ps, step)):
            p.grad = g
        resumed.step()
    for a, b in zip(straight, ps):
        assert torch.equal(bits(a), bits(b))


def test_bf16_state_checkpoint_loads_into_float32_state():
    params = make_params((7, 300), torch.bfloat16)
    ps, low = run("adapnm", "foreach", params, steps=3)
    saved = saved_and_loaded(low)
    for group in saved["param_groups"]:  # as written before the option existed
        del group["state_dtype"], group["stochastic_rounding"]
    mixed = CONFIGS["adapnm"](ps, backend="foreach", **MIXED)
    mixed.load_state_dict(saved)
    assert mixed.param_groups[0]["state_dtype"] == torch.float32  # this optimizer's, not the file's
    assert mixed.param_groups[0]["stochastic_rounding"] is False
    for p in ps:
        for key, value in mixed.state[p].items():
            if key != "step":
                assert value.dtype == torch.float32
                assert torch.equal(value, low.state[p][key].float())  # the upcast is exact
    for p, g in zip(ps, make_grads(ps, 3)):
        p.grad = g
    mixed.step()
    assert all(v.dtype == (torch.float64 if k in COUNTERS else torch.float32) for k, v in mixed.state[ps[1]].items())


def test_state_of_another_dtype_is_converted_once_at_the_step():
    p = torch.randn(10, dtype=torch.bfloat16, requires_grad=True)
    opt = nf.AdaPNM([p], backend="foreach")
    p.grad = torch.randn_like(p)
    opt.step()
    before = opt.state[p]["exp_avg_sq"].float()
    opt.param_groups[0]["state_dtype"] = torch.float32
    opt.step()
    assert opt.state[p]["exp_avg_sq"].dtype == torch.float32
    assert not torch.equal(opt.state[p]["exp_avg_sq"], before)


# ----- arguments and routing -------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(state_dtype=torch.float16), "state_dtype"),  # float32 params: neither None, float32 nor theirs
    (dict(state_dtype="float32"), "state_dtype"),
    (dict(state_dtype=torch.int32), "state_dtype"),
    (dict(stochastic_rounding=1), "stochastic_rounding"),
    (dict(stochastic_rounding="yes"), "stochastic_rounding"),
])
def test_bad_arguments_raise_naming_them(kwargs, match):
    p = torch.randn(3, requires_grad=True)
    before = p.detach().clone()
    for config in CONFIGS:
        with pytest.raises(ValueError, match=match):
            CONFIGS[config]([p], **kwargs)
    opt = nf.PNM([p], lr=0.1)
    with pytest.raises(ValueError, match=match):
        opt.add_param_group(dict(params=[torch.randn(2, requires_grad=True)], **kwargs))
    assert len(opt.param_groups) == 1 and torch.equal(p, before)


def test_float32_state_for_float64_params_is_refused():
    with pytest.raises(ValueError, match="state_dtype"):
        nf.AdaPNM([torch.randn(3, dtype=torch.float64, requires_grad=True)], state_dtype=torch.float32)
    nf.AdaPNM([torch.randn(3, dtype=torch.float64, requires_grad=True)], state_dtype=torch.float64)


@pytest.mark.parametrize("kwargs", [MIXED, dict(stochastic_rounding=True)])
def test_auto_runs_mixed_precision_on_native_on_cpu(kwargs):
    native = nf.backends.get("native")
    if not native.available(torch.device("cpu")):
        pytest.skip("native extension not built")
    p = torch.randn(3, dtype=torch.bfloat16, requires_grad=True)
    opt = nf.AdaPNM([p], **kwargs)
    assert opt._backend(opt.param_groups[0], p.device) is native
