"""The native backend's CPU kernel against the reference: params and every state tensor after 20+
steps, every config of tests/cases.py, every storage dtype, awkward sizes and several param groups;
plus the op's contract itself (opcheck, AMP skip, rejected inputs leave everything untouched).
The same checks on CUDA live in tests/test_native_cuda.py."""
from __future__ import annotations

import pytest
import torch

from cases import BIG_SIZE, CONFIGS, SIZES, TOLERANCES, compare_backends
from noisefuse import backends
from noisefuse.backends import native, reference
from noisefuse.backends.family import MOMENTUM_CODES, Family, Hyper
from noisefuse.backends.step_tensors import StepTensors
from noisefuse.random.rounding import Rounding

pytestmark = pytest.mark.skipif(not native.available(torch.device("cpu")),
                                reason=f"native extension not built: {native.load_error()}")

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# BIG_SIZE spans several CPU chunks and ends in a partial vector.
ALL_SIZES = SIZES + (BIG_SIZE,)

# Every (momentum, second moment, amsgrad) kernel variant, with and without Demon's product.
FAMILIES = {
    "heavy_ball": (Family("heavy_ball"), Hyper(lr=0.05, beta1=0.9, weight_decay=0.01, nesterov=True)),
    "pn": (Family("pn"), Hyper(lr=0.05, beta1=0.9, beta0=1.0, weight_decay=0.01, decoupled=False, demon_total_steps=9)),
    "ema_v": (Family("ema", True), Hyper(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, demon_total_steps=9)),
    "ema_ams": (Family("ema", True, True), Hyper(lr=0.01, beta1=0.9, beta2=0.99, eps=1e-8, maximize=True)),
    "pn_v": (Family("pn", True), Hyper(lr=0.01, beta1=0.9, beta2=0.999, beta0=0.5, eps=1e-8)),
    "pn_ams": (Family("pn", True, True), Hyper(lr=0.01, beta1=0.9, beta2=0.999, beta0=1.0, eps=1e-8,
                                                demon_total_steps=9, demon_delay=0.3)),
}


def step_tensors(family, hyper, sizes=(5, 1023, 0), dtype=torch.float32, device="cpu", seed=0, state_dtype=None):
    """A StepTensors bucket with random params, grads and buffers and diverging step counters; the
    buffers in ``state_dtype`` (default: the params')."""
    gen = torch.Generator().manual_seed(seed)

    def rand(n, positive=False, dt=dtype):
        t = torch.randn(n, generator=gen, dtype=torch.float64)
        return (t.abs() if positive else t).to(dtype=dt, device=device)

    state = state_dtype or dtype
    ts = StepTensors()
    for i, n in enumerate(sizes):
        ts.params.append(rand(n))
        ts.grads.append(rand(n))
        ts.exp_avgs.append(rand(n, dt=state))
        if family.pn:
            ts.neg_exp_avgs.append(rand(n, dt=state))
        if family.second_moment:
            ts.exp_avg_sqs.append(rand(n, positive=True, dt=state))
        if family.amsgrad:
            ts.max_exp_avg_sqs.append(rand(n, positive=True, dt=state))
        ts.steps.append(torch.tensor(float(3 + i), dtype=torch.float64, device=device))  # odd and even PN parities
        if family.second_moment and hyper.demon_total_steps:
            ts.beta1_prods.append(torch.tensor(0.5 ** (i + 1), dtype=torch.float64, device=device))
    return ts


def clone(ts):
    """``ts`` with every tensor of its lists (and of its 8-bit scales) cloned."""
    def copied(v):
        if isinstance(v, list):
            return [t.clone() if torch.is_tensor(t) else t for t in v]
        if isinstance(v, dict):
            return {k: copied(x) for k, x in v.items()}
        return v  # the 8-bit format

    return StepTensors(**{k: copied(v) for k, v in vars(ts).items()})


def misalign(ts, index):
    """Every element-wise tensor at ``index`` replaced by an equal view one element into a larger
    buffer: contiguous, but not aligned to a vector (the kernels' unaligned paths)."""
    for key, lst in vars(ts).items():
        if lst and key not in ("steps", "beta1_prods", "offsets"):
            t = lst[index]
            lst[index] = torch.cat([torch.zeros(1, dtype=t.dtype, device=t.device), t])[1:]


def assert_same(a, b, dtype, exact=False):
    atol, rtol = (0, 0) if exact else TOLERANCES[dtype]
    for key, la in vars(a).items():
        if key == "offsets":
            assert la == b.offsets
            continue
        if not isinstance(la, list):  # the 8-bit format and scales (test_native_8bit.py compares those)
            continue
        for i, (x, y) in enumerate(zip(la, getattr(b, key))):
            torch.testing.assert_close(x.cpu(), y.cpu(), atol=atol, rtol=rtol, equal_nan=True,
                                       msg=lambda m: f"{key}[{i}]: {m}")


def op_args(family, hyper, ts, **kw):
    args = (ts.params, ts.grads, ts.exp_avgs, ts.neg_exp_avgs, ts.exp_avg_sqs, ts.max_exp_avg_sqs, ts.steps,
            ts.beta1_prods, ts.grad_samples)
    kwargs = dict(momentum=MOMENTUM_CODES[family.momentum], lr=hyper.lr, beta1=hyper.beta1, beta2=hyper.beta2,
                  beta0=hyper.beta0, eps=hyper.eps, weight_decay=hyper.weight_decay, decoupled=hyper.decoupled,
                  nesterov=hyper.nesterov, maximize=hyper.maximize, demon_total_steps=hyper.demon_total_steps,
                  demon_delay=hyper.demon_delay, **kw)
    return args, kwargs


# ----- the optimizers, end to end ----------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_matches_reference(config, dtype):
    compare_backends(config, "native", dtype=dtype, sizes=ALL_SIZES, steps=21)


@pytest.mark.parametrize("config", ["adapnm", "demon_sgd_nesterov", "pnm_l2_demon"])
def test_param_groups_and_maximize(config):
    groups = [{"params": [0, 4]}, {"params": [1, 2], "lr": 0.003, "weight_decay": 0.0}, {"params": [3]}]
    compare_backends(config, "native", dtype=torch.float32, sizes=ALL_SIZES, groups=groups, maximize=True)


def test_auto_resolves_to_native_on_cpu():
    assert backends.resolve("auto", torch.device("cpu")) is native


# ----- the op, kernel variant by kernel variant --------------------------------------------------
@pytest.mark.parametrize("isa", ["best", "baseline"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_variant_with_grad_scale(name, dtype, isa, monkeypatch):
    """Both CPU builds (AVX2 where the CPU has it, and the baseline one) against the reference."""
    if isa == "baseline":
        monkeypatch.setenv("NOISEFUSE_CPU_KERNEL", "baseline")
    family, hyper = FAMILIES[name]
    ts = step_tensors(family, hyper, sizes=(1, 17, 4097, 0), dtype=dtype)
    expected = clone(ts)
    scale = torch.tensor(64.0)
    for _ in range(3):
        reference.fused_step(family, hyper, expected, grad_scale=scale)
        native.fused_step(family, hyper, ts, grad_scale=scale)
    assert_same(expected, ts, dtype)


STATE_LISTS = ("exp_avgs", "neg_exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs")


def assert_same_mixed(expected, ts, dtype):
    """Params (and counters) at the storage dtype's tolerance, the float32 state at float32's."""
    params_only = clone(ts)
    for key in STATE_LISTS:
        torch.testing.assert_close(getattr(ts, key), getattr(expected, key), atol=TOLERANCES[torch.float32][0],
                                   rtol=TOLERANCES[torch.float32][1], msg=lambda m: f"{key}: {m}")
        setattr(params_only, key, getattr(expected, key))
    assert_same(expected, params_only, dtype)


@pytest.mark.parametrize("isa", ["best", "baseline"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_variant_with_float32_state(name, dtype, isa, monkeypatch):
    """float32 state of float16/bfloat16 params: the state's own template parameter, with tails
    of every length (1, 17, 4097) and a vector-misaligned view."""
    if isa == "baseline":
        monkeypatch.setenv("NOISEFUSE_CPU_KERNEL", "baseline")
    family, hyper = FAMILIES[name]
    ts = step_tensors(family, hyper, sizes=(1, 17, 4097, 0, 40), dtype=dtype, state_dtype=torch.float32)
    misalign(ts, 4)
    assert_float32_state_steps_like_the_reference(family, hyper, ts, dtype)


def assert_float32_state_steps_like_the_reference(family, hyper, ts, dtype):
    """Three native steps of ``ts`` (float32 state) against the reference's, with an AMP scale."""
    expected = clone(ts)
    scale = torch.tensor(64.0, device=ts.params[0].device)
    for _ in range(3):
        reference.fused_step(family, hyper, expected, grad_scale=scale)
        native.fused_step(family, hyper, ts, grad_scale=scale)
    assert all(t.dtype == torch.float32 for key in STATE_LISTS for t in getattr(ts, key))
    assert_same_mixed(expected, ts, dtype)


@pytest.mark.parametrize("isa", ["best", "baseline"])
@pytest.mark.parametrize("state_dtype", [None, torch.float32], ids=["bf16_state", "float32_state"])
@pytest.mark.parametrize("name", ["heavy_ball", "pn_ams"])
def test_stochastic_rounding_equals_the_reference_bit_for_bit(name, state_dtype, isa, monkeypatch):
    if isa == "baseline":
        monkeypatch.setenv("NOISEFUSE_CPU_KERNEL", "baseline")
    family, hyper = exact_update_family(name)
    ts = step_tensors(family, hyper, sizes=(1, 17, 4097, 0, 40), dtype=torch.bfloat16, state_dtype=state_dtype)
    ts.offsets = [0, 1, 18, 2**33 + 5, 4115]  # one beyond 32 bits: hi32 of the counter
    expected = clone(ts)
    for _ in range(3):
        reference.fused_step(family, hyper, expected, rounding=Rounding(ROUNDING_SEED, params=True))
        native.fused_step(family, hyper, ts, rounding=Rounding(ROUNDING_SEED, params=True))
    assert_same_bits(expected.params, ts.params)


ROUNDING_SEED = 2**63 + 11


def exact_update_family(name):
    """FAMILIES[name] with lr a power of two and no decay or momentum: the float32 update is exact on
    every backend, so only the rounding into bfloat16 could differ."""
    family, hyper = FAMILIES[name]
    return family, Hyper(lr=2.0**-10, beta1=0.0, beta2=hyper.beta2, eps=hyper.eps, beta0=0.0)


def assert_same_bits(params_a, params_b):
    for i, (a, b) in enumerate(zip(params_a, params_b)):
        assert torch.equal(a.cpu().view(torch.int16), b.cpu().view(torch.int16)), f"param {i}"


# bfloat16 state, as (param dtype, rounding): of float32 params, stored stochastically or to nearest;
# of bfloat16 params, stored stochastically, the params too or to nearest.
BF16_STATE_CASES = {
    "f32_sr_state": (torch.float32, Rounding(ROUNDING_SEED, state=True)),
    "f32_nearest": (torch.float32, None),
    "bf16_sr_both": (torch.bfloat16, Rounding(ROUNDING_SEED, params=True, state=True)),
    "bf16_sr_state": (torch.bfloat16, Rounding(ROUNDING_SEED, state=True)),
}
# Global offsets of six tensors: past 32 bits (hi32 of the counter) for some.
BF16_STATE_OFFSETS = [0, 1, 18, 2**33 + 5, 4115, 2**40 + 3]


def assert_bfloat16_stores_like_the_reference(expected, ts, exact):
    """Every bfloat16 tensor of ``ts`` (the state, bfloat16 params) against the reference's: bit for
    bit when ``exact`` (a kernel doing the reference's float32 operations), else equal but for rare
    flips; float32 params at float32's tolerance, counters equal.

    Where a kernel's float32 value differs from the reference's in its last bit (the AVX2 build and
    the GPU contract multiply-adds), the same rounding bits still give the same bfloat16 unless the
    value sits at the boundary the draw picks, about once in 2^16 elements per ulp and store; the
    element then stays about one bfloat16 ulp apart. Wrong bits (another half-word of the draw,
    another index) would make half of all elements differ."""
    assert all(t.dtype == torch.bfloat16 for key in STATE_LISTS for t in getattr(ts, key))
    for key in ("params",) + STATE_LISTS:
        for i, (a, b) in enumerate(zip(getattr(expected, key), getattr(ts, key))):
            a, b = a.cpu(), b.cpu()
            if b.dtype == torch.float32:
                torch.testing.assert_close(b, a, atol=TOLERANCES[torch.float32][0], rtol=TOLERANCES[torch.float32][1],
                                           msg=lambda m: f"{key}[{i}]: {m}")
                continue
            apart = int((a.view(torch.int16) != b.view(torch.int16)).sum())
            assert apart <= (0 if exact else max(2, 0.002 * a.numel())), f"{key}[{i}]: {apart} elements apart"
            torch.testing.assert_close(b.float(), a.float(), atol=TOLERANCES[torch.bfloat16][0],
                                       rtol=TOLERANCES[torch.bfloat16][1], msg=lambda m: f"{key}[{i}]: {m}")
    for key in ("steps", "beta1_prods"):
        assert all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(getattr(expected, key), getattr(ts, key))), key


@pytest.mark.parametrize("isa", ["best", "baseline"])
@pytest.mark.parametrize("case", sorted(BF16_STATE_CASES))
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_variant_with_bfloat16_state(name, case, isa, monkeypatch):
    """bfloat16 state of float32 params (widened into the param's float vector) or of bfloat16
    params, every store stochastic from its own 16 bits of the element's one rounding draw, or to
    nearest; sizes 0, 1, odd, past one 32K-element chunk ending in a partial draw block and vector,
    a misaligned view. The baseline build does the reference's float32 operations: its bfloat16
    stores are the reference's bit for bit."""
    if isa == "baseline":
        monkeypatch.setenv("NOISEFUSE_CPU_KERNEL", "baseline")
    dtype, rounding = BF16_STATE_CASES[case]
    family, hyper = FAMILIES[name]
    ts = step_tensors(family, hyper, sizes=(1, 17, 4097, 0, 32768 + 77, 40), dtype=dtype, state_dtype=torch.bfloat16)
    misalign(ts, 5)
    ts.offsets = list(BF16_STATE_OFFSETS)
    expected = clone(ts)
    for _ in range(3):
        reference.fused_step(family, hyper, expected, rounding=rounding)
        native.fused_step(family, hyper, ts, rounding=rounding)
    assert_bfloat16_stores_like_the_reference(expected, ts, exact=isa == "baseline")


def test_unaligned_and_channels_last_tensors():
    family, hyper = FAMILIES["pn_ams"]
    ts = step_tensors(family, hyper, sizes=(1030,))
    misalign(ts, 0)
    expected = clone(ts)
    reference.fused_step(family, hyper, expected)
    native.fused_step(family, hyper, ts)
    assert_same(expected, ts, torch.float32)

    nchw = step_tensors(family, hyper, sizes=(2 * 3 * 5 * 7,))
    for key, lst in vars(nchw).items():
        if lst and key not in ("steps", "beta1_prods"):
            lst[0] = lst[0].view(2, 3, 5, 7).to(memory_format=torch.channels_last)
    expected = clone(nchw)
    reference.fused_step(family, hyper, expected)
    native.fused_step(family, hyper, nchw)
    assert_same(expected, nchw, torch.float32)
    assert nchw.params[0].is_contiguous(memory_format=torch.channels_last)


def transposed_grads_and_size_one_strides(family, hyper):
    """Tensors the op takes as torch.optim does (issue #20, finding 5): a grad laid out unlike its
    param (a transposed, and a strided-view grad of [7, 9] params, read in the params' layout), and
    a [5, 1] param with strides (1, 5) whose state has (1, 1) (a size-1 dimension's stride is
    never used)."""
    ts = step_tensors(family, hyper, sizes=(63, 63, 5))
    for key, lst in vars(ts).items():
        if lst and key not in ("steps", "beta1_prods", "grads"):
            lst[0], lst[1] = lst[0].view(7, 9), lst[1].view(7, 9)
            lst[2] = lst[2].view(5, 1) if key != "params" else lst[2].view(1, 5).t()
    ts.grads[0] = ts.grads[0].view(9, 7).t()
    ts.grads[1] = torch.zeros(7, 18).copy_(ts.grads[1].view(7, 9).repeat_interleave(2, dim=1))[:, ::2]
    ts.grads[2] = ts.grads[2].view(5, 1)
    return ts


def test_grads_of_another_layout_and_size_one_strides():
    family, hyper = FAMILIES["pn_ams"]
    ts = transposed_grads_and_size_one_strides(family, hyper)
    assert ts.params[2].stride() == (1, 5) and ts.exp_avgs[2].stride() == (1, 1)
    grads = [g.clone() for g in ts.grads]
    expected = clone(ts)
    reference.fused_step(family, hyper, expected)
    native.fused_step(family, hyper, ts)
    assert_same(expected, ts, torch.float32)
    assert all(torch.equal(g, h) for g, h in zip(ts.grads, grads))  # only read


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_opcheck(name):
    family, hyper = FAMILIES[name]
    ts = step_tensors(family, hyper, sizes=(3, 70))
    args, kwargs = op_args(family, hyper, ts, grad_scale=torch.tensor(2.0), found_inf=torch.tensor(0.0))
    torch.library.opcheck(torch.ops.noisefuse.fused_step_.default, args, kwargs)


@pytest.mark.parametrize("name", ["pn_ams", "ema_v"])
def test_opcheck_float32_state_and_stochastic_rounding(name):
    family, hyper = FAMILIES[name]
    ts = step_tensors(family, hyper, sizes=(3, 70), dtype=torch.bfloat16, state_dtype=torch.float32)
    args, kwargs = op_args(family, hyper, ts, offsets=[0, 3], seed=-5, stochastic_rounding=True)
    torch.library.opcheck(torch.ops.noisefuse.fused_step_.default, args, kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", ["pn_ams", "ema_v"])
def test_opcheck_bfloat16_state_rounding(name, dtype):
    family, hyper = FAMILIES[name]
    ts = step_tensors(family, hyper, sizes=(3, 70), dtype=dtype, state_dtype=torch.bfloat16)
    args, kwargs = op_args(family, hyper, ts, offsets=[0, 3], seed=-5, stochastic_rounding=dtype == torch.bfloat16,
                           stochastic_state_rounding=True)
    torch.library.opcheck(torch.ops.noisefuse.fused_step_.default, args, kwargs)


@pytest.mark.parametrize("name", ["pn_ams", "ema_v"])
def test_found_inf_skips_everything(name):
    family, hyper = FAMILIES[name]
    ts = step_tensors(family, hyper)
    before = clone(ts)
    native.fused_step(family, hyper, ts, grad_scale=torch.tensor(8.0), found_inf=torch.tensor(1.0))
    assert_same(before, ts, torch.float32, exact=True)
    native.fused_step(family, hyper, ts, grad_scale=torch.tensor(8.0), found_inf=torch.tensor(0.0))
    assert all(s.item() == b.item() + 1 for s, b in zip(ts.steps, before.steps))
    assert not torch.equal(ts.params[0], before.params[0])


# ----- bad input: rejected with the tensor named, before anything is written ----------------------
def _corrupt_length(ts):
    ts.grads.pop()
    return r"grads has 2 tensors but 3"


def _corrupt_shape(ts):
    ts.exp_avgs[2] = torch.zeros(1)
    return r"exp_avgs\[2\] has shape \[1\] but params\[2\] has \[0\]"


def _corrupt_dtype(ts):
    ts.exp_avg_sqs[1] = ts.exp_avg_sqs[1].double()
    return r"exp_avg_sqs\[1\] has dtype Double but params\[1\] has Float"


def _corrupt_strides(ts):
    ts.grads[1] = torch.zeros(2, 1023)[0]  # a row of a wider matrix: fine; a column is not
    ts.max_exp_avg_sqs[1] = torch.zeros(1023, 2)[:, 0]
    return r"max_exp_avg_sqs\[1\] is not dense"


def _corrupt_step(ts):
    ts.steps[2] = torch.zeros((), dtype=torch.float32)  # the counters are float64
    return r"steps\[2\] must be float64"


def _corrupt_param_dtype(ts):
    for key in ("params", "grads", "exp_avgs", "neg_exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"):
        getattr(ts, key)[2] = getattr(ts, key)[2].half()
    return r"params\[2\] has dtype Half but params\[0\] has Float"


@pytest.mark.parametrize("corrupt", [_corrupt_length, _corrupt_shape, _corrupt_dtype, _corrupt_strides,
                                     _corrupt_step, _corrupt_param_dtype])
def test_bad_input_rejected_before_any_write(corrupt):
    family, hyper = FAMILIES["pn_ams"]
    ts = step_tensors(family, hyper)
    pattern = corrupt(ts)
    before = clone(ts)
    with pytest.raises(RuntimeError, match=pattern):
        native.fused_step(family, hyper, ts)
    assert_same(before, ts, torch.float32, exact=True)


@pytest.mark.parametrize("case", ["double_state", "mixed_state_lists", "sr_float32", "sr_offsets", "sr_layout"])
def test_bad_precision_arguments_rejected_before_any_write(case):
    family, hyper = FAMILIES["pn_ams"]
    dtype = torch.float32 if case in ("double_state", "sr_float32") else torch.bfloat16
    ts = step_tensors(family, hyper, dtype=dtype, state_dtype=torch.float32)
    kw = dict(offsets=[0, 5, 1028], seed=1, stochastic_rounding=True) if case.startswith("sr") else {}
    if case == "double_state":
        ts.exp_avgs, ts.neg_exp_avgs, ts.exp_avg_sqs, ts.max_exp_avg_sqs = (
            [t.double() for t in lst] for lst in (ts.exp_avgs, ts.neg_exp_avgs, ts.exp_avg_sqs, ts.max_exp_avg_sqs))
        pattern = r"exp_avgs\[0\] has dtype Double but params have Float; the state must have"
    elif case == "mixed_state_lists":
        ts.exp_avg_sqs[1] = ts.exp_avg_sqs[1].bfloat16()
        pattern = r"exp_avg_sqs\[1\] has dtype BFloat16 but the state has Float"
    elif case == "sr_float32":
        pattern = r"stochastic_rounding=True rounds bfloat16 params, but params are Float"
    elif case == "sr_offsets":
        kw["offsets"] = [0, 5]
        pattern = r"offsets has 2 entries but 3"
    else:  # param 1 transposed: [31, 33] with strides (1, 31), and every list of index 1 alike
        for key in ("params", "grads", "exp_avgs", "neg_exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"):
            getattr(ts, key)[1] = getattr(ts, key)[1].view(33, 31).t()
        pattern = r"stochastic_rounding=True draws per element at its row-major index, but params\[1\]"
    before = clone(ts)
    args, kwargs = op_args(family, hyper, ts, **kw)
    with pytest.raises(RuntimeError, match=pattern):
        torch.ops.noisefuse.fused_step_(*args, **kwargs)
    assert_same(before, ts, torch.float32, exact=True)


@pytest.mark.parametrize("case", ["ssr_float32_state", "half_params", "double_params", "ssr_offsets", "ssr_layout"])
def test_bad_bfloat16_state_arguments_rejected_before_any_write(case):
    """bfloat16 state only for float32 params or with bfloat16 params; its stochastic rounding only
    of bfloat16 state, with an offset per param and row-major params."""
    family, hyper = FAMILIES["pn_ams"]
    dtype = {"ssr_float32_state": torch.bfloat16, "half_params": torch.float16, "double_params": torch.float64}
    ts = step_tensors(family, hyper, dtype=dtype.get(case, torch.float32),
                      state_dtype=torch.float32 if case == "ssr_float32_state" else torch.bfloat16)
    kw = dict(offsets=[0, 5, 1028], seed=1, stochastic_state_rounding=True)
    if case == "ssr_float32_state":
        pattern = r"stochastic_state_rounding=True rounds bfloat16 state, but the state is Float"
    elif case in ("half_params", "double_params"):
        pattern = (rf"exp_avgs\[0\] has dtype BFloat16 but params have {'Half' if case == 'half_params' else 'Double'}"
                   r"; the state must have the params' dtype, float32 for float16/bfloat16 params, or bfloat16 for "
                   r"float32 params")
    elif case == "ssr_offsets":
        kw["offsets"] = []
        pattern = r"offsets has 0 entries but 3"
    else:  # param 1 transposed: [31, 33] with strides (1, 31), and every list of index 1 alike
        for key in ("params", "grads", "exp_avgs", "neg_exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"):
            getattr(ts, key)[1] = getattr(ts, key)[1].view(33, 31).t()
        pattern = r"stochastic_state_rounding=True draws per element at its row-major index, but params\[1\]"
    before = clone(ts)
    args, kwargs = op_args(family, hyper, ts, **kw)
    with pytest.raises(RuntimeError, match=pattern):
        torch.ops.noisefuse.fused_step_(*args, **kwargs)
    assert_same(before, ts, torch.float32, exact=True)


def test_bad_lists_for_the_family_rejected():
    family, hyper = FAMILIES["ema_v"]
    ts = step_tensors(family, hyper)
    ts.neg_exp_avgs = [torch.zeros_like(p) for p in ts.params]  # PN's buffer with momentum=ema
    with pytest.raises(RuntimeError, match="neg_exp_avgs has 3 tensors but 0"):
        native.fused_step(family, hyper, ts)
    ts = step_tensors(family, hyper)
    ts.beta1_prods = []  # Demon with a second moment needs its running products
    with pytest.raises(RuntimeError, match="beta1_prods has 0 tensors but 3"):
        native.fused_step(family, hyper, ts)


def test_big_tensor_spans_chunks_and_threads():
    """One 1M-element tensor beside tiny ones: many chunks, split over the intra-op threads."""
    family, hyper = FAMILIES["ema_ams"]
    ts = step_tensors(family, hyper, sizes=(1, (1 << 20) + 3, 2))
    expected = clone(ts)
    for _ in range(2):
        reference.fused_step(family, hyper, expected)
        native.fused_step(family, hyper, ts)
    assert_same(expected, ts, torch.float32)


def test_torch_compile_traces_the_op():
    """fullgraph: dynamo traces the op through its fake kernel, and the compiled step still updates."""
    family, hyper = FAMILIES["pn_ams"]
    ts = step_tensors(family, hyper)
    expected = clone(ts)
    args, kwargs = op_args(family, hyper, ts)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def compiled_step(*lists):
        torch.ops.noisefuse.fused_step_(*lists, **kwargs)

    for _ in range(2):
        compiled_step(*args)
        reference.fused_step(family, hyper, expected)
    assert_same(expected, ts, torch.float32)
