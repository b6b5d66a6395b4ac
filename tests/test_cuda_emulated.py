"""The CUDA kernels, run on the CPU: csrc/cuda's op code (validation, tables and their splitting,
grid sizes, both launches per table, the type and variant dispatch) and kernels compiled through
the CUDA emulation (csrc/emulation, tests/cuda_emulation.py) stand behind the native backend in
place of the CPU kernel, and are held to the native CPU tests' parity matrix against the reference
— and bit for bit against the CPU kernel's baseline build where both compute the same float
operations. Sizes cross what only CUDA has: kIlp = 4 elements per thread, the 64K-element chunk of
a block, the tables of 45-73 tensors of one launch, vector-aligned and misaligned (strided-path)
operands in the same call. The last test reruns a chosen part of this file, and of
test_cuda_emulated_8bit.py, on the AddressSanitizer build, where every access a kernel makes is
bounds-checked."""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys

import pytest
import torch

import cuda_emulation
import noisefuse as nf
from cases import CONFIGS, assert_same_state, compare_backends, make_params
from noise_cases import NOISES, PAIRS, SEED, noisy_run
from noisefuse.backends import native, reference
from noisefuse.noise import Multiplicative, sample_weights
from noisefuse.noise.config import MULTIPLICATIVE_KINDS
from noisefuse.random.philox import seed_as_int64
from noisefuse.random.rounding import Rounding
from test_native import (BF16_STATE_CASES, BF16_STATE_OFFSETS, DTYPES, FAMILIES, ROUNDING_SEED, STATE_LISTS,
                         assert_bfloat16_stores_like_the_reference, assert_same, assert_same_bits, assert_same_mixed,
                         clone, exact_update_family, misalign, op_args, step_tensors,
                         transposed_grads_and_size_one_strides)
from test_native_noise import assert_native_normals_are_the_stream

pytestmark = pytest.mark.skipif(not native.available(torch.device("cpu")),
                                reason=f"native extension not built: {native.load_error()}")

ILP = 4
CHUNK = 65536
# Empty, one element, kIlp - 1, kIlp, kIlp + 1, a chunk - 1, a chunk + 1, several chunks ending mid-pack.
SIZES = (0, 1, ILP - 1, ILP, ILP + 1, CHUNK - 1, CHUNK + 1, 3 * CHUNK + 7)
# The end-to-end runs keep fewer big tensors (20 steps each): still inside, across and past a chunk.
RUN_SIZES = (0, 1, ILP - 1, ILP + 1, 1023, CHUNK + 1, 2 * CHUNK + 4099)


@contextlib.contextmanager
def emulated_kernels():
    """The native backend's ops swapped for the emulated CUDA ones for the duration."""
    ops = cuda_emulation.load()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.ops.noisefuse, "fused_step_", ops.fused_step_)
        patch.setattr(torch.ops.noisefuse, "sample_weights", ops.sample_weights)
        yield ops


@pytest.fixture
def emulated():
    with emulated_kernels() as ops:
        yield ops


@pytest.fixture
def baseline_cpu(monkeypatch):
    """The CPU kernel's baseline build: scalar-equivalent float operations without fused
    multiply-adds, the same operations in the same order as the emulated CUDA kernels."""
    monkeypatch.setenv("NOISEFUSE_CPU_KERNEL", "baseline")


def emulated_step(family, hyper, ts, **kw):
    with emulated_kernels():
        native.fused_step(family, hyper, ts, **kw)


# ----- the optimizers, end to end ----------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_matches_reference(config, dtype, emulated):
    compare_backends(config, "native", dtype=dtype, sizes=RUN_SIZES, steps=20)


@pytest.mark.parametrize("config", ["adapnm", "demon_sgd_nesterov", "pnm_l2_demon"])
def test_param_groups_and_maximize(config, emulated):
    groups = [{"params": [0, 4]}, {"params": [1, 2], "lr": 0.003, "weight_decay": 0.0}, {"params": [3, 5, 6]}]
    compare_backends(config, "native", dtype=torch.float32, sizes=RUN_SIZES, groups=groups, maximize=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("config", ["adapnm", "demon_sgd", "pnm_l2_demon", "demon_adamw_ams"])
def test_float32_state_and_stochastic_rounding_match_reference(config, dtype, emulated):
    rounding = dtype == torch.bfloat16
    compare_backends(config, "native", dtype=dtype, sizes=RUN_SIZES, steps=12, state_dtype=torch.float32,
                     stochastic_rounding=rounding, seed=SEED)


# ----- the op, kernel variant by kernel variant --------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_variant_with_grad_scale(name, dtype):
    family, hyper = FAMILIES[name]
    ts = step_tensors(family, hyper, sizes=SIZES, dtype=dtype)
    expected = clone(ts)
    scale = torch.tensor(64.0)
    for _ in range(3):
        reference.fused_step(family, hyper, expected, grad_scale=scale)
        emulated_step(family, hyper, ts, grad_scale=scale)
    assert_same(expected, ts, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_variant_equals_the_cpu_kernel_bit_for_bit(name, dtype, baseline_cpu):
    """Same float operations in the same order (the per-element code is one header): the emulated
    CUDA kernel and the CPU kernel's baseline build agree to the last bit, counters included."""
    family, hyper = FAMILIES[name]
    ts = step_tensors(family, hyper, sizes=SIZES, dtype=dtype)
    on_cpu = clone(ts)
    for _ in range(3):
        native.fused_step(family, hyper, on_cpu, grad_scale=torch.tensor(64.0))
        emulated_step(family, hyper, ts, grad_scale=torch.tensor(64.0))
    assert_same(on_cpu, ts, dtype, exact=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_variant_with_float32_state(name, dtype):
    """Float32 state of float16/bfloat16 params: each operand its own pack type and alignment
    check; one misaligned tensor (the strided path) beside aligned ones in the same call."""
    family, hyper = FAMILIES[name]
    ts = step_tensors(family, hyper, sizes=(1, ILP + 1, 4097, 0, CHUNK + 3, 40), dtype=dtype,
                      state_dtype=torch.float32)
    misalign(ts, 4)
    expected = clone(ts)
    scale = torch.tensor(64.0)
    for _ in range(3):
        reference.fused_step(family, hyper, expected, grad_scale=scale)
        emulated_step(family, hyper, ts, grad_scale=scale)
    assert all(t.dtype == torch.float32 for key in STATE_LISTS for t in getattr(ts, key))
    assert_same_mixed(expected, ts, dtype)


@pytest.mark.parametrize("state_dtype", [None, torch.float32], ids=["bf16_state", "float32_state"])
@pytest.mark.parametrize("name", ["heavy_ball", "pn_ams"])
def test_stochastic_rounding_equals_the_reference_and_the_cpu_kernel(name, state_dtype):
    """The rounding bits are indexed by global offset (beyond 32 bits here) and chunk position."""
    family, hyper = exact_update_family(name)
    ts = step_tensors(family, hyper, sizes=(1, 17, 2 * CHUNK + 4097, 0, 40, ILP + 1), dtype=torch.bfloat16,
                      state_dtype=state_dtype)
    misalign(ts, 5)
    ts.offsets = [0, 1, 18, 2**33 + 5, 2**33 + 6, 2**40 + 3]
    expected, on_cpu = clone(ts), clone(ts)
    for _ in range(3):
        reference.fused_step(family, hyper, expected, rounding=Rounding(ROUNDING_SEED, params=True))
        native.fused_step(family, hyper, on_cpu, rounding=Rounding(ROUNDING_SEED, params=True))
        emulated_step(family, hyper, ts, rounding=Rounding(ROUNDING_SEED, params=True))
    assert_same_bits(expected.params, ts.params)
    assert_same_bits(on_cpu.params, ts.params)


@pytest.mark.parametrize("case", sorted(BF16_STATE_CASES))
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_variant_with_bfloat16_state(name, case, baseline_cpu):
    """bfloat16 state: packs of 4 bfloat16s beside float32 or bfloat16 params, one misaligned tensor
    across a chunk (the strided path), draws at global offsets past 32 bits and chunk positions.
    The reference's float32 operations, uncontracted: the reference's bfloat16 stores bit for bit,
    and every tensor of the CPU kernel's baseline build."""
    dtype, rounding = BF16_STATE_CASES[case]
    family, hyper = FAMILIES[name]
    ts = step_tensors(family, hyper, sizes=(1, ILP + 1, 4097, 0, CHUNK + 3, 40), dtype=dtype,
                      state_dtype=torch.bfloat16)
    misalign(ts, 4)
    ts.offsets = list(BF16_STATE_OFFSETS)
    expected, on_cpu = clone(ts), clone(ts)
    for _ in range(3):
        reference.fused_step(family, hyper, expected, rounding=rounding)
        native.fused_step(family, hyper, on_cpu, rounding=rounding)
        emulated_step(family, hyper, ts, rounding=rounding)
    assert_bfloat16_stores_like_the_reference(expected, ts, exact=True)
    assert_same(on_cpu, ts, dtype, exact=True)


# ----- what only CUDA has: tables, alignment, the counter kernel --------------------------------
@pytest.mark.parametrize("name", ["pn_ams", "heavy_ball", "ema_v"])
def test_more_tensors_than_one_launch_table(name):
    """300 tensors take several tables (45 per launch with 7 lists, 73 with 3), each with its own
    update launch and counter launch; zero-sized tensors among them, some ending a table."""
    family, hyper = FAMILIES[name]
    sizes = [(i * 37) % 300 for i in range(300)]
    sizes[44] = sizes[45] = 0
    ts = step_tensors(family, hyper, sizes=sizes)
    expected, on_cpu = clone(ts), clone(ts)
    for _ in range(3):
        reference.fused_step(family, hyper, expected)
        native.fused_step(family, hyper, on_cpu)
        emulated_step(family, hyper, ts)
    assert_same(expected, ts, torch.float32)
    for key in ("steps", "beta1_prods"):  # the counter kernels advanced every tensor of every table
        assert all(torch.equal(a, b) for a, b in zip(getattr(on_cpu, key), getattr(ts, key))), key


def test_a_table_of_empty_tensors_still_advances_its_counters():
    """The first table (63 tensors with this variant's 4 lists) holds only empty tensors: it has no
    update launch, but its counter launch runs."""
    family, hyper = FAMILIES["ema_v"]  # Demon: steps and beta1_prods
    ts = step_tensors(family, hyper, sizes=[0] * 80 + [5])
    before, on_cpu = clone(ts), clone(ts)
    native.fused_step(family, hyper, on_cpu)
    emulated_step(family, hyper, ts)
    assert_same(on_cpu, ts, torch.float32, exact=True)
    assert all(s.item() == b.item() + 1 for s, b in zip(ts.steps, before.steps))


@pytest.mark.parametrize("offset", [1, 2, 3])
def test_misaligned_views_beside_aligned_tensors(offset):
    """A view offset by 1-3 elements takes the strided path; its neighbours in the same table the
    vector path. Every list of one index misaligned, or only one operand of another index."""
    family, hyper = FAMILIES["pn_ams"]
    ts = step_tensors(family, hyper, sizes=(CHUNK + 9, 70001, 5, 4096, 3))
    for index in (1, 4):
        misalign(ts, index)
    ts.max_exp_avg_sqs[3] = torch.cat([torch.zeros(offset), ts.max_exp_avg_sqs[3]])[offset:]
    expected = clone(ts)
    for _ in range(3):
        reference.fused_step(family, hyper, expected)
        emulated_step(family, hyper, ts)
    assert_same(expected, ts, torch.float32)


def test_grads_of_another_layout_and_size_one_strides():
    """The CUDA op reads a grad laid out unlike its param in the param's layout (a copy made on the
    stream), and takes a size-1 dimension's stride as any: test_native's case, emulated."""
    family, hyper = FAMILIES["pn_ams"]
    ts = transposed_grads_and_size_one_strides(family, hyper)
    expected = clone(ts)
    for _ in range(3):
        reference.fused_step(family, hyper, expected)
        emulated_step(family, hyper, ts)
    assert_same(expected, ts, torch.float32)


def test_found_inf_leaves_params_state_and_counters_unchanged():
    family, hyper = FAMILIES["pn_ams"]
    ts = step_tensors(family, hyper, sizes=SIZES)
    before = clone(ts)
    emulated_step(family, hyper, ts, grad_scale=torch.tensor(8.0), found_inf=torch.tensor(1.0))
    assert_same(before, ts, torch.float32, exact=True)
    emulated_step(family, hyper, ts, grad_scale=torch.tensor(8.0), found_inf=torch.tensor(0.0))
    assert all(s.item() == b.item() + 1 for s, b in zip(ts.steps, before.steps))
    assert not torch.equal(ts.params[5], before.params[5])


@pytest.mark.parametrize("name", ["pn_ams", "heavy_ball"])
def test_tensor_lr_is_read_on_the_device(name):
    """lr_tensor replaces the float lr in each block's coefficients; the float lr is then ignored."""
    family, hyper = FAMILIES[name]
    ts = step_tensors(family, hyper, sizes=(ILP + 1, CHUNK + 1, 0))
    with_float = clone(ts)
    float_hyper = type(hyper)(**dict(vars(hyper), lr=0.0625))
    tensor_hyper = type(hyper)(**dict(vars(hyper), lr=123.0, lr_tensor=torch.tensor(0.0625)))
    for _ in range(3):
        emulated_step(family, float_hyper, with_float)
        emulated_step(family, tensor_hyper, ts)
    assert_same(with_float, ts, torch.float32, exact=True)


# ----- noise ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("noise,config", PAIRS)
def test_noise_matches_reference(noise, config, dtype, emulated):
    """Every noise kind: rows summed per element, normals from the global index of the element."""
    params = make_params((0, 1, ILP - 1, 37, CHUNK + 5), dtype)
    pa, oa = noisy_run(config, "reference", noise, params, steps=6)
    pb, ob = noisy_run(config, "native", noise, params, steps=6)
    assert_same_state(oa, ob, pa, pb, dtype)


@pytest.mark.parametrize("noise", sorted(NOISES))
def test_noise_equals_the_cpu_kernel(noise, baseline_cpu):
    """The same stream on both native kernels: the integer words are the same bits; the normals go
    through the same libm, so float32 runs agree to the last bit but where the CPU kernel sums
    grad_sample rows in another order (it sweeps 8 rows at a time: equal sums, see its tests)."""
    params = make_params((0, 1, ILP + 1, 4097, CHUNK + 3), torch.float32)
    pa, oa = noisy_run("adapnm", "native", noise, params, steps=4)
    with emulated_kernels():
        pb, ob = noisy_run("adapnm", "native", noise, params, steps=4)
    for i, (a, b) in enumerate(zip(pa, pb)):
        assert torch.equal(a, b), f"param {i}"
        for key in oa.state[a]:
            assert torch.equal(oa.state[a][key], ob.state[b][key]), f"param {i} {key}"


def test_normals_are_the_streams(emulated):
    """The emulated kernel's normals themselves, at global offsets that start mid-pack and cross chunks."""
    assert_native_normals_are_the_stream(2 * CHUNK + 13)


@pytest.mark.parametrize("noise", ["isotropic", "mult_centered"])
def test_noise_across_several_tables(noise, baseline_cpu):
    """Per-element offsets (isotropic) and row pointers (multiplicative) in tables of several
    launches: 120 tensors, equal to the CPU kernel."""
    params = make_params([(i * 53) % 700 for i in range(120)], torch.float32)
    pa, oa = noisy_run("pnm", "native", noise, params, steps=3, batch=4)
    with emulated_kernels():
        pb, ob = noisy_run("pnm", "native", noise, params, steps=3, batch=4)
    for i, (a, b) in enumerate(zip(pa, pb)):
        assert torch.equal(a, b), f"param {i}"


# ----- sample_weights ------------------------------------------------------------------------------
WEIGHT_KINDS = {"gaussian": Multiplicative("gaussian", sigma=0.8),
                "gaussian_centered": Multiplicative("gaussian_centered", sigma=1.3),
                "bernoulli": Multiplicative("bernoulli", prob=0.4)}


@pytest.mark.parametrize("batch", [1, 31, 512, 513])
@pytest.mark.parametrize("kind", sorted(WEIGHT_KINDS))
def test_sample_weights(kind, batch, emulated):
    """One block of 256 threads: batches below, at and past two strides; the centered kind's mean
    reduced over the block in shared memory behind its barriers. Against the CPU kernel (the same
    libm: bit for bit, but the centered mean) and the torch draw (to float32 rounding of log/cos)."""
    noise = WEIGHT_KINDS[kind]
    bernoulli = kind == "bernoulli"
    for seed in (0, SEED, 2**64 - 1):
        for t in (1, 1000, 2**32 + 3):
            args = (torch.tensor(t), batch, seed_as_int64(seed), MULTIPLICATIVE_KINDS.index(kind),
                    0.0 if bernoulli else noise.sigma_for(batch), noise.prob_for(batch) if bernoulli else 1.0)
            got = emulated.sample_weights(*args)
            on_cpu = CPU_SAMPLE_WEIGHTS(*args)
            if kind == "gaussian_centered":
                # The block's tree of float64 partial sums against the CPU's sum in index order: the
                # means agree to float64 rounding, the weights to one float32 ulp.
                torch.testing.assert_close(got, on_cpu, rtol=2.0**-23, atol=2.0**-23)
            else:
                assert torch.equal(got, on_cpu)
            expected = sample_weights(noise, batch, seed, t)
            if bernoulli:
                assert torch.equal(got, expected)
            else:  # as tests/test_sample_weights_op.py bounds it
                sigma = noise.sigma_for(batch)
                atol = 4 * sigma * 2.0**-21 + expected.abs().max().item() * 2.0**-23
                torch.testing.assert_close(got, expected, rtol=0, atol=atol)


CPU_SAMPLE_WEIGHTS = torch.ops.noisefuse.sample_weights  # the CPU kernel, held before any swap


# ----- the op's contract -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_opcheck(name, emulated):
    family, hyper = FAMILIES[name]
    ts = step_tensors(family, hyper, sizes=(3, 70))
    args, kwargs = op_args(family, hyper, ts, grad_scale=torch.tensor(2.0), found_inf=torch.tensor(0.0))
    torch.library.opcheck(emulated.fused_step_.default, args, kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_opcheck_bfloat16_state_rounding(dtype, emulated):
    family, hyper = FAMILIES["pn_ams"]
    ts = step_tensors(family, hyper, sizes=(3, 70), dtype=dtype, state_dtype=torch.bfloat16)
    args, kwargs = op_args(family, hyper, ts, offsets=[0, 3], seed=-5, stochastic_rounding=dtype == torch.bfloat16,
                           stochastic_state_rounding=True)
    torch.library.opcheck(emulated.fused_step_.default, args, kwargs)


def test_opcheck_sample_weights(emulated):
    torch.library.opcheck(emulated.sample_weights.default, (torch.tensor(5), 33, seed_as_int64(2**64 - 1), 1, 0.7, 1.0))


def test_bad_input_rejected_before_any_write(emulated):
    family, hyper = FAMILIES["pn_ams"]
    ts = step_tensors(family, hyper)
    ts.exp_avgs[2] = torch.zeros(1)
    before = clone(ts)
    with pytest.raises(RuntimeError, match=r"exp_avgs\[2\] has shape \[1\] but params\[2\] has \[0\]"):
        native.fused_step(family, hyper, ts)
    assert_same(before, ts, torch.float32, exact=True)


# ----- every access checked: AddressSanitizer -------------------------------------------------------
# A chosen part of this file, each kernel and path once: every variant family (float32), float32 state
# (bfloat16 params), bfloat16 state (every rounding case), stochastic rounding, misaligned views, several
# tables, a table of empty tensors, every noise kind, sample_weights of every kind past two strides, the AMP skip.
MEMCHECK = ("test_each_variant_with_grad_scale and float32 or test_each_variant_with_float32_state and bfloat16 "
            "or test_each_variant_with_bfloat16_state and pn_ams "
            "or test_stochastic_rounding_equals and float32_state or test_more_tensors_than_one_launch_table and "
            "pn_ams or test_misaligned_views_beside_aligned_tensors and 1 or test_noise_matches_reference and float32 "
            "or test_sample_weights and 513 or test_found_inf or test_a_table_of_empty")
# And of test_cuda_emulated_8bit.py (its module name holds "8bit", no test here does): both param types,
# blocks of 16 (PN with amsgrad) and 64, a misaligned view, NaN and inf gradients, several tables,
# isotropic noise, the AMP skip.
MEMCHECK_8BIT = ("test_each_variant_with_grad_scale and (pn_ams-float32-b16_linear or heavy_ball-bfloat16) "
                 "or test_misaligned_views and pn_ams and float32 or test_nan_and_inf and pn_ams "
                 "or test_more_tensors and heavy_ball or test_noise_matches_reference and isotropic or test_found_inf")
EIGHT_BIT_TESTS = os.path.join(os.path.dirname(__file__), "test_cuda_emulated_8bit.py")


@pytest.mark.skipif(not cuda_emulation.python_can_run_asan(), reason="needs g++'s AddressSanitizer runtime")
def test_memory_accesses_are_in_bounds():
    """The chosen tests rerun on the AddressSanitizer build in a child process (the sanitizer's
    runtime must be loaded before Python's first allocation): any read or write of a kernel outside
    the tensors it was given fails them, with the sanitizer's report."""
    if cuda_emulation.sanitizer():
        pytest.skip("already running on the sanitized build")
    # Triton's library cannot load under the sanitizer (its statically linked C++ runtime defeats the
    # sanitizer's exception interceptor): the child runs as if Triton were not installed.
    selection = f"not 8bit and ({MEMCHECK}) or 8bit and ({MEMCHECK_8BIT})"
    child = ("import sys; sys.modules['triton'] = None; import pytest; "
             f"sys.exit(pytest.main(['-q', '-x', '-p', 'no:cacheprovider', {__file__!r}, {EIGHT_BIT_TESTS!r}, "
             f"'-k', {selection!r}]))")
    cmd = [sys.executable, "-c", child]
    done = subprocess.run(cmd, env=cuda_emulation.asan_environment(), capture_output=True, text=True,
                          cwd=os.path.dirname(__file__), timeout=900)
    report = done.stdout[-6000:] + done.stderr[-6000:]
    assert "AddressSanitizer" not in done.stderr and "runtime error" not in done.stderr, report
    assert done.returncode == 0, report
    summary = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ passed, \d+ deselected in .*", summary), report  # none skipped


# ----- the emulation itself ------------------------------------------------------------------------
def test_a_missing_barrier_is_seen(emulated):
    """Thread 0 writes shared memory, 63 threads read it: without a barrier most read too early
    (the threads of a block run in a shuffled order), with one every thread sees the write."""
    seen = emulated.emulation_selftest("missing_barrier").view(8, 64)
    assert (seen == 0).any(dim=1).all(), "every block must have threads that ran before thread 0's write"
    assert torch.equal(emulated.emulation_selftest("barrier"), torch.full((8 * 64,), 7, dtype=torch.int32))


def test_a_divergent_barrier_is_an_error(emulated):
    with pytest.raises(RuntimeError, match=r"32 of 64 threads wait at __syncthreads\(\) while the others returned"):
        emulated.emulation_selftest("divergent_barrier")


def test_blocks_run_in_a_shuffled_order_with_fresh_shared_memory(emulated):
    order = emulated.emulation_selftest("block_order")
    assert sorted(order.tolist()) == list(range(8)) and order.tolist() != list(range(8))
    assert torch.equal(emulated.emulation_selftest("fresh_shared"), torch.zeros(8, dtype=torch.int32))


def test_the_package_does_not_carry_the_emulation():
    library = open(nf._C.__file__, "rb").read()
    assert b"noisefuse_emulated" not in library and b"CUDA emulation" not in library
