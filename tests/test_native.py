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


def step_tensors(family, hyper, sizes=(5, 1023, 0), dtype=torch.float32, device="cpu", seed=0):
    """A StepTensors bucket with random params, grads and buffers and diverging step counters."""
    gen = torch.Generator().manual_seed(seed)

    def rand(n, positive=False):
        t = torch.randn(n, generator=gen, dtype=torch.float64)
        return (t.abs() if positive else t).to(dtype=dtype, device=device)

    ts = StepTensors()
    for i, n in enumerate(sizes):
        ts.params.append(rand(n))
        ts.grads.append(rand(n))
        ts.exp_avgs.append(rand(n))
        if family.pn:
            ts.neg_exp_avgs.append(rand(n))
        if family.second_moment:
            ts.exp_avg_sqs.append(rand(n, positive=True))
        if family.amsgrad:
            ts.max_exp_avg_sqs.append(rand(n, positive=True))
        ts.steps.append(torch.tensor(float(3 + i), device=device))  # odd and even PN parities
        if family.second_moment and hyper.demon_total_steps:
            ts.beta1_prods.append(torch.tensor(0.5 ** (i + 1), device=device))
    return ts


def clone(ts):
    return StepTensors(**{k: [t.clone() if torch.is_tensor(t) else t for t in v] for k, v in vars(ts).items()})


def assert_same(a, b, dtype, exact=False):
    atol, rtol = (0, 0) if exact else TOLERANCES[dtype]
    for key, la in vars(a).items():
        if key == "offsets":
            assert la == b.offsets
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


def test_unaligned_and_channels_last_tensors():
    family, hyper = FAMILIES["pn_ams"]
    ts = step_tensors(family, hyper, sizes=(1030,))
    # Views at an odd element offset: contiguous but not vector-aligned.
    for key, lst in vars(ts).items():
        if lst and key not in ("steps", "beta1_prods"):
            lst[0] = torch.cat([torch.zeros(1), lst[0]])[1:]
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


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_opcheck(name):
    family, hyper = FAMILIES[name]
    ts = step_tensors(family, hyper, sizes=(3, 70))
    args, kwargs = op_args(family, hyper, ts, grad_scale=torch.tensor(2.0), found_inf=torch.tensor(0.0))
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
    ts.steps[2] = torch.zeros((), dtype=torch.float64)
    return r"steps\[2\] must be float32"


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
