"""8-bit blockwise state (``state_dtype=nf.state.Blockwise8bit(...)``) on the native CPU kernel
against the reference (docs/kernel-contract.md, "8-bit blockwise state"): the optimizers end to
end, every block size and code book, bfloat16 params (rounded stochastically or not), the noise,
both ISA builds; the quantization bit for bit where the float32 update is exact; NaN gradients, AMP
skips, the op's argument checks and opcheck.

Codes are compared bit for bit but for rare flips: the float32 update may differ from the
reference's by an ulp (FMA contraction, vector order), which changes a code only when the value sits
at a decision point times the scale. A wrong book row, search or scale would change most codes."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import noisefuse as nf
from cases import BIG_SIZE, CONFIGS, SIZES, TOLERANCES, make_grads, make_params, run, saved_and_loaded
from noise_cases import PAIRS, noisy_run
from noisefuse.backends import native, reference, stream
from noisefuse.optim.precision import COUNTERS
from noisefuse.state.blockwise import SCALES_SUFFIX, Blockwise8bit, encode, zero_code
from test_native import FAMILIES, clone, op_args, step_tensors

pytestmark = pytest.mark.skipif(not native.available(torch.device("cpu")),
                                reason=f"native extension not built: {native.load_error()}")

# min_numel 16: params 0 and 1 of SIZES keep float32 state, the others (1023, 4097, BIG_SIZE past
# two 32K CPU chunks) are 8-bit.
MIN_NUMEL = 16
ALL_SIZES = (*SIZES, BIG_SIZE)
ISAS = ["avx2", "baseline"]
# Param dtype and optimizer kwargs besides the state format.
CASES = {
    "f32": (torch.float32, {}),
    "bf16": (torch.bfloat16, {}),
    "bf16_sr": (torch.bfloat16, dict(stochastic_rounding=True, seed=11)),
}


def use_isa(isa, monkeypatch):
    if isa == "baseline":
        monkeypatch.setenv("NOISEFUSE_CPU_KERNEL", "baseline")  # read by the op at each call


def spec(block_size=256, code_book="dynamic"):
    return Blockwise8bit(block_size=block_size, code_book=code_book, min_numel=MIN_NUMEL)


def few_apart(count, total, fraction=0.002):
    return count <= max(2, fraction * total)


def assert_8bit_state_close(opt_a, opt_b, params_a, params_b, dtype):
    """Params to tolerance, all but a few within the float32-order one; codes equal but for rare
    flips; scales close (a scale is the block's largest float32 value: an ulp or two, or a flip's
    step where a flipped element leads its block at a later step); float32 state of the small params
    to the usual tolerance. With bfloat16 gradients (8 significant bits) the two terms of v's update
    carry few bits, and whether their sum is rounded once (FMA) or twice decides more codes: after 20
    steps of demon_adamw_ams, 147 of 69635 second-moment codes differ from the reference (no FMA) in
    the AVX2 build and in foreach (torch's FMA kernels) alike, none in the baseline build."""
    atol, rtol = (1e-5, 1e-4) if dtype == torch.float32 else TOLERANCES[torch.bfloat16]
    flips = 0.002 if dtype == torch.float32 else 0.005
    for i, (pa, pb) in enumerate(zip(params_a, params_b)):
        apart = int((~torch.isclose(pa.detach(), pb.detach(), atol=atol, rtol=rtol)).sum())
        assert few_apart(apart, pa.numel()), f"param {i}: {apart} elements apart"
        # A flipped code moves its param by about lr times a code step of the update.
        torch.testing.assert_close(pa.detach(), pb.detach(), atol=2e-3, rtol=2e-2, msg=lambda m: f"param {i}: {m}")
        sa, sb = opt_a.state[pa], opt_b.state[pb]
        assert sa.keys() == sb.keys(), (i, sorted(sa), sorted(sb))
        quantized = pa.numel() >= MIN_NUMEL
        for key in sa:
            a, b = sa[key], sb[key]
            if key in COUNTERS:
                torch.testing.assert_close(a, b, atol=0, rtol=1e-14, msg=lambda m: f"{key}: {m}")
            elif key.endswith(SCALES_SUFFIX):
                assert a.dtype == b.dtype == torch.float32
                apart = int((~torch.isclose(a, b, atol=0, rtol=1e-5)).sum())
                assert few_apart(apart, a.numel()), f"param {i} {key}: {apart} scales apart"
                torch.testing.assert_close(a, b, atol=1e-6, rtol=0.05, msg=lambda m: f"param {i} {key}: {m}")
            elif quantized:
                assert a.dtype == b.dtype == torch.uint8, (i, key, a.dtype)
                apart = int((a != b).sum())
                assert few_apart(apart, a.numel(), flips), f"param {i} {key}: {apart} codes apart"
            else:
                assert a.dtype == b.dtype == torch.float32, (i, key, a.dtype)
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=lambda m: f"param {i} {key}: {m}")
        assert any(k.endswith(SCALES_SUFFIX) for k in sa) == quantized, (i, sorted(sa))


# ----- the optimizers, end to end ----------------------------------------------------------------
# Every config with float32 params; bfloat16 params (rounded to nearest and stochastically) with one
# config of each kernel shape (PN with amsgrad, PN alone, EMA with amsgrad).
RUNS = [(config, "f32") for config in sorted(CONFIGS)] + [
    (config, case) for case in ("bf16", "bf16_sr") for config in ("adapnm", "pnm", "demon_adamw_ams")]


@pytest.mark.parametrize("config,case", RUNS)
def test_matches_reference(config, case):
    dtype, kwargs = CASES[case]
    params = make_params(ALL_SIZES, dtype=dtype)
    pa, oa = run(config, "reference", params, steps=20, state_dtype=spec(), **kwargs)
    pb, ob = run(config, "native", params, steps=20, state_dtype=spec(), **kwargs)
    assert_8bit_state_close(oa, ob, pa, pb, dtype)


# The block size and the book change only the quantization, which every family runs the same way
# per written buffer: AdaPNM (amsgrad, PN) writes all three kinds (momentum with Ms, sqrt(v) with
# Mu, sqrt(vmax) rounded up with U) and reads PN's fourth buffer. Blocks of 16 make every size but
# BIG_SIZE end in a short block; 2048 is a whole quantization span of the kernel.
@pytest.mark.parametrize("code_book", ["dynamic", "linear"])
@pytest.mark.parametrize("block_size", [16, 64, 256, 2048])
def test_block_sizes_and_code_books(block_size, code_book):
    params = make_params(ALL_SIZES)
    fmt = spec(block_size, code_book)
    pa, oa = run("adapnm", "reference", params, steps=20, state_dtype=fmt)
    pb, ob = run("adapnm", "native", params, steps=20, state_dtype=fmt)
    assert_8bit_state_close(oa, ob, pa, pb, torch.float32)


@pytest.mark.parametrize("config,case", [("adapnm", "f32"), ("demon_sgd_nesterov", "f32"),
                                         ("demon_adamw_ams", "bf16_sr"), ("pnm_l2_demon", "bf16")])
def test_baseline_build_matches_reference(config, case, monkeypatch):
    use_isa("baseline", monkeypatch)
    dtype, kwargs = CASES[case]
    params = make_params(ALL_SIZES, dtype=dtype)
    pa, oa = run(config, "reference", params, steps=20, state_dtype=spec(64, "linear"), **kwargs)
    pb, ob = run(config, "native", params, steps=20, state_dtype=spec(64, "linear"), **kwargs)
    assert_8bit_state_close(oa, ob, pa, pb, dtype)


# SIZES only: 4097 elements are three quantization spans of the kernel (offsets past span 0), and
# the noise's own chunking is test_native_noise's.
@pytest.mark.parametrize("noise,config", PAIRS)
def test_noise_matches_reference(noise, config):
    params = make_params(SIZES)
    pa, oa = noisy_run(config, "reference", noise, params, steps=20, state_dtype=spec(128))
    pb, ob = noisy_run(config, "native", noise, params, steps=20, state_dtype=spec(128))
    assert_8bit_state_close(oa, ob, pa, pb, torch.float32)


# ----- the quantization, bit for bit -------------------------------------------------------------
def _trained_8bit(config, params, fmt, steps):
    ps = [p.detach().clone().requires_grad_() for p in params]
    opt = CONFIGS[config](ps, backend="reference", state_dtype=fmt)
    for step in range(steps):
        for p, g in zip(ps, make_grads(ps, step)):
            p.grad = g
        opt.step()
    return ps, opt


# Both books, each with half of the configs.
BOOKS = {config: ("dynamic", "linear")[i % 2] for i, config in enumerate(sorted(CONFIGS))}


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_zero_gradients_give_the_reference_codes_bit_for_bit(config, isa, monkeypatch):
    """From non-trivial 8-bit state (4 real steps on the reference, loaded into both optimizers), with
    zero gradients and no weight decay the float32 update of each buffer is one multiply (m * a,
    v * beta2, then a max), the same float32 number in every build: the dequantization, the new
    scales and the codes must then be the reference's to the bit, step after step."""
    use_isa(isa, monkeypatch)
    fmt = spec(64, BOOKS[config])
    trained_params, trained = _trained_8bit(config, make_params(ALL_SIZES), fmt, steps=4)
    runs = {}
    for backend in ("reference", "native"):
        ps = [p.detach().clone().requires_grad_() for p in trained_params]
        opt = CONFIGS[config](ps, backend=backend, state_dtype=fmt)
        opt.load_state_dict(saved_and_loaded(trained))
        for group in opt.param_groups:
            group["weight_decay"] = 0.0
        for _ in range(5):
            for p in ps:
                p.grad = torch.zeros_like(p)
            opt.step()
        runs[backend] = (ps, opt)
    (pa, oa), (pb, ob) = runs["reference"], runs["native"]
    moved = 0
    for i, (a, b) in enumerate(zip(pa, pb)):
        sa, sb = oa.state[a], ob.state[b]
        for key, value in sa.items():
            if value.dtype == torch.uint8 or key.endswith(SCALES_SUFFIX):
                assert torch.equal(value, sb[key]), f"param {i} {key}: {int((value != sb[key]).sum())} apart"
                moved += int((value != trained.state[trained_params[i]][key]).sum())
        torch.testing.assert_close(a.detach(), b.detach(), atol=1e-5, rtol=1e-4)
    assert moved > 0  # the zero-gradient steps did write new scales (every block decays)


@pytest.mark.parametrize("isa", ISAS)
def test_nan_gradient_spares_the_rest_of_its_block(isa, monkeypatch):
    """A NaN gradient at one element makes its new m, v and vmax NaN: stored as 0 (the zero code, code
    0 of the unsigned books), and never a scale, so the other elements of its block get the scale and
    codes they get with a finite gradient there (0, which leads no block: that element's gradient was
    0 at every step before)."""
    use_isa(isa, monkeypatch)
    fmt, bad = spec(64), 1000  # in block 15 of param 3 (4097 elements)
    sizes = (1023, 4097)
    runs = {}
    for label in ("finite", "nan"):
        ps = [p.detach().clone().requires_grad_() for p in make_params(sizes)]
        opt = nf.AdaPNM(ps, lr=0.01, weight_decay=0.01, state_dtype=fmt, backend="native")
        for step in range(4):
            grads = make_grads(ps, step)
            grads[1][bad] = float("nan") if label == "nan" and step == 3 else 0.0
            for p, g in zip(ps, grads):
                p.grad = g
            opt.step()
        runs[label] = opt.state[ps[1]]
    finite, nan = runs["finite"], runs["nan"]
    others = torch.arange(sizes[1]) != bad
    for key in ("exp_avg", "neg_exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        assert torch.equal(nan[key + SCALES_SUFFIX], finite[key + SCALES_SUFFIX]), key
        assert torch.equal(nan[key][others], finite[key][others]), key
    # Step 4 is even: PN writes neg_exp_avg, whose NaN is stored as 0; exp_avg is not written.
    assert int(nan["neg_exp_avg"][bad]) == zero_code(fmt, signed=True)
    assert int(nan["exp_avg"][bad]) == int(finite["exp_avg"][bad])
    assert int(nan["exp_avg_sq"][bad]) == int(nan["max_exp_avg_sq"][bad]) == 0


# ----- the op's contract: AMP skip, rejected inputs, opcheck ---------------------------------------
def quantized_step_tensors(family, hyper, fmt=None, sizes=(5, 1023, 0), dtype=torch.float32):
    """``step_tensors`` (random state, diverging counters) with its buffers encoded as 8-bit state."""
    fmt = fmt or spec()
    ts = step_tensors(family, hyper, sizes=sizes, dtype=dtype, state_dtype=torch.float32)
    ts.quantization = fmt
    for field in ("exp_avgs", "neg_exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"):
        buffers = getattr(ts, field)
        if not buffers:
            continue
        pairs = [encode(x, fmt, field) for x in buffers]
        setattr(ts, field, [codes for codes, _ in pairs])
        ts.scales[field] = [scales for _, scales in pairs]
    return ts


def assert_unchanged(before, ts):
    for key, lists in vars(before).items():
        if key in ("offsets", "quantization", "all_contiguous"):
            continue
        if key == "scales":
            for field, scales in lists.items():
                assert all(torch.equal(a, b) for a, b in zip(scales, ts.scales[field])), field
            continue
        assert all(torch.equal(a, b) for a, b in zip(lists, getattr(ts, key))), key


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_variant_with_grad_scale_and_lr_tensor(name, isa, monkeypatch):
    """The op on its own against the reference's dequantize-step-quantize: every kernel variant,
    blocks of 16 (short last blocks for 1, 17 and 40 elements; a tensor past a 32K chunk), with the
    AMP scale and a learning rate read from a tensor."""
    use_isa(isa, monkeypatch)
    family, hyper = FAMILIES[name]
    ts = quantized_step_tensors(family, hyper, spec(16), sizes=(1, 17, 4097, 0, 32768 + 77, 40))
    expected = clone(ts)
    lr = torch.tensor(hyper.lr * 0.5)
    grad_scale = torch.tensor(4.0)
    for t in (expected, ts):
        t.grads = [g * 4.0 for g in t.grads]
    reference.fused_step(family, replace(hyper, lr_tensor=lr), expected, grad_scale=grad_scale)
    native.fused_step(family, replace(hyper, lr_tensor=lr), ts, grad_scale=grad_scale)
    for key in ("exp_avgs", "neg_exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"):
        for i, (a, b) in enumerate(zip(getattr(expected, key), getattr(ts, key))):
            assert few_apart(int((a != b).sum()), a.numel()), (key, i)
            torch.testing.assert_close(ts.scales[key][i], expected.scales[key][i], atol=0, rtol=1e-5)
    for i, (a, b) in enumerate(zip(expected.params, ts.params)):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-3, msg=lambda m: f"params[{i}]: {m}")
    assert [s.item() for s in ts.steps] == [s.item() for s in expected.steps]
    assert [p.item() for p in ts.beta1_prods] == [p.item() for p in expected.beta1_prods]


def test_amp_skip_leaves_codes_scales_and_counters():
    params = make_params((5000,))
    opt = nf.AdaPNM(params, lr=1e-2, state_dtype=spec(), backend="native")
    for step in range(2):
        params[0].grad = make_grads(params, step)[0]
        opt.step()
    before = {k: v.clone() for k, v in opt.state[params[0]].items()}
    assert before["exp_avg"].dtype == torch.uint8
    param = params[0].detach().clone()
    opt.grad_scale, opt.found_inf = torch.tensor(1.0), torch.tensor(1.0)
    params[0].grad = torch.randn(5000)
    opt.step()
    assert torch.equal(params[0].detach(), param)
    assert all(torch.equal(v, before[k]) for k, v in opt.state[params[0]].items())


def _bad(case, ts):
    """Corrupts ``ts`` (or names op keyword overrides); returns (overrides, message pattern)."""
    if case == "scales_count":
        ts.scales["exp_avg_sqs"].pop()
        return {}, r"state_scales has 11 tensors but 12 were expected"
    if case == "scales_size":
        ts.scales["exp_avg_sqs"][1] = torch.zeros(3)
        return {}, r"state_scales\[7\] has 3 scales but params\[1\] has 1023 elements: 4 blocks of 256"
    if case == "scales_dtype":
        ts.scales["exp_avgs"][1] = ts.scales["exp_avgs"][1].double()
        return {}, r"state_scales\[1\] must be a contiguous 1-D float32 tensor"
    if case == "codes_strided":  # every other byte of a buffer: the param is contiguous, its codes are not
        ts.max_exp_avg_sqs[1] = torch.zeros(2046, dtype=torch.uint8)[::2]
        return {}, r"max_exp_avg_sqs\[1\] is not dense"
    if case == "codes_layout":  # param 1 and all its lists a transposed [31, 33] view: blocks are row-major
        for key in ("params", "grads", "exp_avgs", "neg_exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"):
            getattr(ts, key)[1] = getattr(ts, key)[1].view(33, 31).t()
        return {}, r"8-bit state draws per element at its row-major index, but params\[1\]"
    if case == "block_size_0":
        return dict(block_size=0), r"exp_avgs\[0\] has dtype Byte but block_size is 0: uint8 state is 8-bit codes"
    if case.startswith("block_size_"):
        size = int(case.rsplit("_", 1)[1])
        return dict(block_size=size), rf"block_size must be 0 \(no 8-bit state\) or a power of two in \[16, 2048\], got {size}"
    if case == "double_params":
        for key in ("params", "grads"):
            setattr(ts, key, [t.double() for t in getattr(ts, key)])
        return {}, r"8-bit state is for float32 and bfloat16 params, but params are Double"
    if case == "no_code_books":
        return dict(code_books=None), r"8-bit state \(block_size > 0\) needs code_books"
    if case == "stochastic_state_rounding":
        return (dict(stochastic_state_rounding=True, offsets=[0, 5, 1028], seed=1),
                r"stochastic_state_rounding=True rounds bfloat16 state, but the state is Byte")
    raise AssertionError(case)


BAD_CASES = ["scales_count", "scales_size", "scales_dtype", "codes_strided", "codes_layout", "block_size_0", "block_size_3",
             "block_size_4096", "double_params", "no_code_books", "stochastic_state_rounding"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_8bit_arguments_rejected_before_any_write(case):
    family, hyper = FAMILIES["pn_ams"]
    ts = quantized_step_tensors(family, hyper)
    overrides, pattern = _bad(case, ts)
    before = clone(ts)
    args, kwargs = op_args(family, hyper, ts, **{**stream.blockwise_kwargs(ts), **overrides})
    with pytest.raises(RuntimeError, match=pattern):
        torch.ops.noisefuse.fused_step_(*args, **kwargs)
    assert_unchanged(before, ts)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", ["pn_ams", "ema_v", "heavy_ball"])
def test_opcheck(name, dtype):
    family, hyper = FAMILIES[name]
    ts = quantized_step_tensors(family, hyper, spec(16), sizes=(3, 70), dtype=dtype)
    extra = dict(offsets=[0, 3], seed=-5, stochastic_rounding=True) if dtype == torch.bfloat16 else {}
    args, kwargs = op_args(family, hyper, ts, grad_scale=torch.tensor(2.0), found_inf=torch.tensor(0.0),
                           **stream.blockwise_kwargs(ts), **extra)
    torch.library.opcheck(torch.ops.noisefuse.fused_step_.default, args, kwargs)
