"""The native backend's CUDA kernel: the CPU tests' checks on the GPU (against the reference run on
the same device), plus what only CUDA has: launches split by the kernel-argument table, a tensor
of more than 2^31 elements, misaligned operands, capture in a CUDA graph. Skipped without a GPU."""
from __future__ import annotations

import pytest
import torch

from cases import BIG_SIZE, CONFIGS, SIZES, assert_same_state, capture_after_warm_up, compare_backends, make_params
from noisefuse.backends import native, reference
from noisefuse.backends.family import Family, Hyper
from noisefuse.random.rounding import Rounding
from test_native import (BF16_STATE_CASES, BF16_STATE_OFFSETS, DTYPES, FAMILIES, ROUNDING_SEED,
                         assert_bfloat16_stores_like_the_reference, assert_float32_state_steps_like_the_reference,
                         assert_same, assert_same_bits, clone, exact_update_family, misalign, op_args, step_tensors)
from test_native_noise import PAIRS, noisy_op_args, noisy_run

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and native.available(torch.device("cuda"))),
                                reason="needs a GPU and the native extension's CUDA kernel")
CUDA = "cuda"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_matches_reference(config, dtype):
    compare_backends(config, "native", dtype=dtype, device=CUDA, sizes=SIZES + (BIG_SIZE, 3 * 65536), steps=21)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_variant_with_grad_scale(name, dtype):
    family, hyper = FAMILIES[name]
    ts = step_tensors(family, hyper, sizes=(1, 17, 4097, 0, 65536 + 3), dtype=dtype, device=CUDA)
    expected = clone(ts)
    scale = torch.tensor(64.0, device=CUDA)
    for _ in range(3):
        reference.fused_step(family, hyper, expected, grad_scale=scale)
        native.fused_step(family, hyper, ts, grad_scale=scale)
    assert_same(expected, ts, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_variant_with_float32_state(name, dtype):
    """float32 state of float16/bfloat16 params: 4-element packs of each type, misaligned views."""
    family, hyper = FAMILIES[name]
    ts = step_tensors(family, hyper, sizes=(1, 17, 4097, 0, 65536 + 3, 40), dtype=dtype, device=CUDA,
                      state_dtype=torch.float32)
    misalign(ts, 5)  # the scalar path
    assert_float32_state_steps_like_the_reference(family, hyper, ts, dtype)


@pytest.mark.parametrize("state_dtype", [None, torch.float32], ids=["bf16_state", "float32_state"])
@pytest.mark.parametrize("name", ["heavy_ball", "pn_ams"])
def test_stochastic_rounding_equals_the_reference_and_the_cpu_kernel(name, state_dtype):
    family, hyper = exact_update_family(name)
    ts = step_tensors(family, hyper, sizes=(1, 17, 65536 + 4097, 0, 40), dtype=torch.bfloat16, device=CUDA,
                      state_dtype=state_dtype)
    ts.offsets = [0, 1, 18, 2**33 + 5, 69651]
    expected, on_cpu = clone(ts), clone(ts)
    on_cpu = type(ts)(**{k: [t.cpu() if torch.is_tensor(t) else t for t in v] if isinstance(v, list) else v
                         for k, v in vars(on_cpu).items()})
    for _ in range(3):
        reference.fused_step(family, hyper, expected, rounding=Rounding(ROUNDING_SEED, params=True))
        native.fused_step(family, hyper, ts, rounding=Rounding(ROUNDING_SEED, params=True))
        native.fused_step(family, hyper, on_cpu, rounding=Rounding(ROUNDING_SEED, params=True))
    assert_same_bits(expected.params, ts.params)
    assert_same_bits(on_cpu.params, ts.params)


@pytest.mark.parametrize("case", sorted(BF16_STATE_CASES))
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_variant_with_bfloat16_state(name, case):
    """bfloat16 state beside float32 or bfloat16 params: packs of 4 bfloat16s, the scalar path of a
    misaligned view, draws at global offsets past 32 bits. nvcc contracts multiply-adds: the stores
    are the reference's but for rare flips."""
    dtype, rounding = BF16_STATE_CASES[case]
    family, hyper = FAMILIES[name]
    ts = step_tensors(family, hyper, sizes=(1, 17, 4097, 0, 65536 + 3, 40), dtype=dtype, device=CUDA,
                      state_dtype=torch.bfloat16)
    misalign(ts, 4)
    ts.offsets = list(BF16_STATE_OFFSETS)
    expected = clone(ts)
    for _ in range(3):
        reference.fused_step(family, hyper, expected, rounding=rounding)
        native.fused_step(family, hyper, ts, rounding=rounding)
    assert_bfloat16_stores_like_the_reference(expected, ts, exact=False)


@pytest.mark.parametrize("name", ["pn_ams", "heavy_ball"])
def test_more_tensors_than_one_launch_table(name):
    """300 tensors need several launches of the pointer table; counters stay per tensor."""
    family, hyper = FAMILIES[name]
    sizes = [(i * 37) % 300 for i in range(300)]  # zero-sized ones among them
    ts = step_tensors(family, hyper, sizes=sizes, device=CUDA)
    expected = clone(ts)
    for _ in range(2):
        reference.fused_step(family, hyper, expected)
        native.fused_step(family, hyper, ts)
    assert_same(expected, ts, torch.float32)


def test_misaligned_operands_take_the_scalar_path():
    family, hyper = FAMILIES["pn_ams"]
    ts = step_tensors(family, hyper, sizes=(70001, 5), device=CUDA)
    misalign(ts, 0)
    expected = clone(ts)
    reference.fused_step(family, hyper, expected)
    native.fused_step(family, hyper, ts)
    assert_same(expected, ts, torch.float32)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_opcheck(name):
    family, hyper = FAMILIES[name]
    ts = step_tensors(family, hyper, sizes=(3, 70000), device=CUDA)
    args, kwargs = op_args(family, hyper, ts, grad_scale=torch.tensor(2.0, device=CUDA),
                           found_inf=torch.tensor(0.0, device=CUDA))
    torch.library.opcheck(torch.ops.noisefuse.fused_step_.default, args, kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_opcheck_bfloat16_state_rounding(dtype):
    family, hyper = FAMILIES["pn_ams"]
    ts = step_tensors(family, hyper, sizes=(3, 70000), dtype=dtype, device=CUDA, state_dtype=torch.bfloat16)
    args, kwargs = op_args(family, hyper, ts, offsets=[0, 3], seed=-5, stochastic_rounding=dtype == torch.bfloat16,
                           stochastic_state_rounding=True)
    torch.library.opcheck(torch.ops.noisefuse.fused_step_.default, args, kwargs)


def test_found_inf_skips_everything_on_device():
    family, hyper = FAMILIES["pn_ams"]
    ts = step_tensors(family, hyper, device=CUDA)
    before = clone(ts)
    native.fused_step(family, hyper, ts, grad_scale=torch.tensor(8.0, device=CUDA),
                      found_inf=torch.tensor(1.0, device=CUDA))
    assert_same(before, ts, torch.float32, exact=True)


def test_cuda_graph_replay_equals_eager_steps():
    """capturable: no host read of counters or AMP scalars, so the step captures and replays."""
    family, hyper = FAMILIES["pn_ams"]
    ts = step_tensors(family, hyper, sizes=(5000, 3), device=CUDA)
    eager = clone(ts)
    scale, found_inf = torch.tensor(4.0, device=CUDA), torch.tensor(0.0, device=CUDA)
    graph = capture_after_warm_up(
        lambda: native.fused_step(family, hyper, ts, grad_scale=scale, found_inf=found_inf),
        lambda: native.fused_step(family, hyper, ts, grad_scale=scale, found_inf=found_inf))
    native.fused_step(family, hyper, eager, grad_scale=scale, found_inf=found_inf)  # the warm-up's twin
    for _ in range(3):
        graph.replay()
        native.fused_step(family, hyper, eager, grad_scale=scale, found_inf=found_inf)
    torch.cuda.synchronize()
    assert_same(eager, ts, torch.float32)


def test_counters_on_another_device_rejected():
    family, hyper = FAMILIES["ema_v"]
    ts = step_tensors(family, hyper, device=CUDA)
    ts.steps[1] = ts.steps[1].cpu()
    before = clone(ts)
    with pytest.raises(RuntimeError, match=r"steps\[1\] is on cpu but params are on cuda"):
        native.fused_step(family, hyper, ts)
    assert_same(before, ts, torch.float32, exact=True)


def test_tensor_beyond_2_pow_31_elements():
    """A float16 tensor of 2^31 + 5 elements: chunk offsets past 2^31 must not wrap. The update is
    element-wise with one set of scalars per tensor, so slices of it must match the reference run
    on the same slices."""
    free, _ = torch.cuda.mem_get_info()
    n = 2**31 + 5
    if free < 4 * 2 * n + (1 << 30):
        pytest.skip("needs about 18 GB of free GPU memory")
    family, hyper = Family("heavy_ball"), Hyper(lr=0.05, beta1=0.9, weight_decay=0.01)
    gen = torch.Generator(device=CUDA).manual_seed(0)
    ts = step_tensors(family, hyper, sizes=(0,), dtype=torch.float16, device=CUDA)
    expected = clone(ts)  # the same counters; its tensors become the picked slices
    picks = torch.cat([torch.arange(0, 1000), torch.arange(2**31 - 1000, n)]).to(CUDA)
    for key in ("params", "grads", "exp_avgs"):
        full = torch.randn(n, generator=gen, device=CUDA, dtype=torch.float16)
        getattr(ts, key)[0] = full
        getattr(expected, key)[0] = full[picks].clone()
    native.fused_step(family, hyper, ts)
    reference.fused_step(family, hyper, expected)
    for key in ("params", "exp_avgs"):
        torch.testing.assert_close(getattr(ts, key)[0][picks], getattr(expected, key)[0], atol=1e-3, rtol=2e-3)
    assert ts.steps[0].item() == expected.steps[0].item() == 4.0


# ----- gradient noise (the CPU versions are in tests/test_native_noise.py) --------------------------
# 0, 1, odd (rows not a whole number of 4-element packs: the scalar path), and more than one chunk.
NOISE_SIZES = (0, 1, 37, 65536 + 4099, 4096)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("noise,config", PAIRS)
def test_noise_matches_reference(noise, config, dtype):
    params = make_params(NOISE_SIZES, dtype, device=CUDA)
    pa, oa = noisy_run(config, "reference", noise, params)
    pb, ob = noisy_run(config, "native", noise, params)
    assert_same_state(oa, ob, pa, pb, dtype)


@pytest.mark.parametrize("noise", ["isotropic", "diag_fisher_centered", "mult_gaussian"])
def test_noise_in_float64(noise):
    params = make_params((1, 37, 70000), torch.float64, device=CUDA)
    pa, oa = noisy_run("adapnm_noams_demon", "reference", noise, params, steps=6)
    pb, ob = noisy_run("adapnm_noams_demon", "native", noise, params, steps=6)
    assert_same_state(oa, ob, pa, pb, torch.float32)  # float32 normals: float32 tolerances


@pytest.mark.parametrize("noise", ["isotropic", "diag_fisher", "mult_bernoulli"])
def test_noise_over_several_launch_tables(noise):
    """200 tensors: several tables (fewer tensors per table with offsets); each element's normal
    depends on its global offset alone."""
    params = make_params([(i * 37) % 150 for i in range(200)], device=CUDA)
    pa, oa = noisy_run("adapnm", "reference", noise, params, steps=3)
    pb, ob = noisy_run("adapnm", "native", noise, params, steps=3)
    assert_same_state(oa, ob, pa, pb, torch.float32)


def _on_cuda(x):
    if torch.is_tensor(x):
        return x.to(CUDA)
    return [t.to(CUDA) if torch.is_tensor(t) else t for t in x] if isinstance(x, list) else x


@pytest.mark.parametrize("kind", ["isotropic", "diag_fisher", "multiplicative"])
def test_opcheck_with_noise(kind):
    _, args, kwargs = noisy_op_args(kind)
    torch.library.opcheck(torch.ops.noisefuse.fused_step_.default, tuple(_on_cuda(a) for a in args),
                          {k: _on_cuda(v) for k, v in kwargs.items()})


@pytest.mark.parametrize("kind", ["isotropic", "multiplicative"])
def test_noisy_step_replays_in_a_cuda_graph(kind):
    """Weights are read on the device, B/seed/std are launch arguments and the step counter is read
    in-kernel: a noisy step captures and replays like an eager one (new normals every step)."""
    _, args, kwargs = noisy_op_args(kind, sizes=(5000, 3))
    graph_args = tuple(_on_cuda(a) for a in args)
    kwargs = {k: _on_cuda(v) for k, v in kwargs.items()}
    eager_args = tuple([t.clone() for t in a] for a in graph_args)
    graph = capture_after_warm_up(lambda: torch.ops.noisefuse.fused_step_(*graph_args, **kwargs),
                                  lambda: torch.ops.noisefuse.fused_step_(*graph_args, **kwargs))
    torch.ops.noisefuse.fused_step_(*eager_args, **kwargs)  # the warm-up's twin
    for _ in range(3):
        graph.replay()
        torch.ops.noisefuse.fused_step_(*eager_args, **kwargs)
    torch.cuda.synchronize()
    for a, b in zip(graph_args, eager_args):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, atol=0, rtol=0)
