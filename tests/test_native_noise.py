"""Gradient noise inside the native CPU kernel against the reference (docs/kernel-contract.md,
"Noise"): every noise kind with several optimizers, both CPU builds (AVX2 where the CPU has it and
the baseline one, NOISEFUSE_CPU_KERNEL=baseline), float32/bfloat16/float64, sizes 0, 1, odd and
more than one 32K-element chunk; rows unscaled and negated one by one; diverging step counters;
other layouts; bad noise arguments refused before any write; opcheck. Plus the check that the two
CPU builds share no code (noisefuse/isa.h). The CUDA versions are in tests/test_native_cuda.py."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
import torch

import noisefuse as nf
from cases import assert_same_state, make_params
from noise_cases import PAIRS, SEED, noisy_run
from noisefuse.backends import native
from noisefuse.random.philox import TAG_ISOTROPIC, element_normals
from test_native import FAMILIES, assert_same, clone, op_args, step_tensors

pytestmark = pytest.mark.skipif(not native.available(torch.device("cpu")),
                                reason=f"native extension not built: {native.load_error()}")

# An empty tensor, one element, an odd size, and two 32K-element chunks plus a partial vector.
SIZES = (0, 1, 37, 32768 + 4099)

@pytest.mark.parametrize("isa", ["best", "baseline"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("noise,config", PAIRS)
def test_noise_matches_reference(noise, config, dtype, isa, monkeypatch):
    if isa == "baseline":
        monkeypatch.setenv("NOISEFUSE_CPU_KERNEL", "baseline")
    params = make_params(SIZES, dtype)
    pa, oa = noisy_run(config, "reference", noise, params)
    pb, ob = noisy_run(config, "native", noise, params)
    assert_same_state(oa, ob, pa, pb, dtype)


@pytest.mark.parametrize("isa", ["best", "baseline"])
@pytest.mark.parametrize("noise", ["isotropic", "diag_fisher_centered", "mult_gaussian"])
def test_noise_in_float64(noise, isa, monkeypatch):
    if isa == "baseline":
        monkeypatch.setenv("NOISEFUSE_CPU_KERNEL", "baseline")
    params = make_params((1, 37, 0), torch.float64)
    pa, oa = noisy_run("adapnm_noams_demon", "reference", noise, params, steps=6)
    pb, ob = noisy_run("adapnm_noams_demon", "native", noise, params, steps=6)
    # The normals are float32 by contract, equal across backends only to float32 rounding of log/cos
    # (a few float32 ulps): the noisy float64 trajectories agree to float32 tolerances.
    assert_same_state(oa, ob, pa, pb, torch.float32)


@pytest.mark.parametrize("isa", ["best", "baseline"])
def test_normals_are_the_streams(isa, monkeypatch):
    # SGD with lr=1, no momentum and a zero gradient turns p into -std * xi: the kernel's normals
    # themselves, equal to the pure-torch Philox stream (so its integer words are the same bits).
    if isa == "baseline":
        monkeypatch.setenv("NOISEFUSE_CPU_KERNEL", "baseline")
    assert_native_normals_are_the_stream(2 * 32768 + 13)


def assert_native_normals_are_the_stream(numel):
    """One native isotropic step of a zero param that starts at global offset 5 (after a 5-element
    one): lr=1, no momentum and a zero gradient turn it into -std * xi, the stream's normals."""
    p = torch.zeros(numel, requires_grad=True)
    opt = nf.DemonSGD([torch.zeros(5, requires_grad=True), p], lr=1.0, momentum=0.0, total_steps=10,
                      noise=nf.noise.Isotropic(2.0), seed=SEED, backend="native")
    p.grad = torch.zeros_like(p)
    opt.step()
    expected = element_normals(SEED, 1, TAG_ISOTROPIC, 5, p.numel())
    torch.testing.assert_close(p.detach() / -2.0, expected, atol=2e-6, rtol=2e-6)


# ----- the op: noise arguments ---------------------------------------------------------------------
def noisy_op_args(kind, sizes=(3, 70), batch=4, **kw):
    family, hyper = FAMILIES["pn_ams"]
    ts = step_tensors(family, hyper, sizes=sizes)
    ts.offsets = [0, sizes[0]][:len(sizes)]
    noise = dict(noise_kind=nf.noise.NOISE_CODES[kind], seed=-5, offsets=ts.offsets)
    if kind in ("diag_fisher", "multiplicative"):
        ts.grad_samples = [torch.randn(batch, *p.shape) for p in ts.params]
        ts.grads = []
        noise.update(noise_scale=0.3, noise_centered=True)
    if kind == "multiplicative":
        noise["sample_weights"] = torch.linspace(0.5, 2.0, batch)
    if kind == "isotropic":
        noise["noise_std"] = 0.1
    noise.update(kw)
    return ts, *op_args(family, hyper, ts, **noise)


@pytest.mark.parametrize("kind", ["isotropic", "diag_fisher", "multiplicative"])
def test_opcheck_with_noise(kind):
    _, args, kwargs = noisy_op_args(kind)
    torch.library.opcheck(torch.ops.noisefuse.fused_step_.default, args, kwargs)


BAD = [
    ("multiplicative", dict(sample_weights=None), r"needs sample_weights"),
    ("multiplicative", dict(sample_weights=torch.ones(3)), r"sample_weights must be float32 \[4\]"),
    ("diag_fisher", dict(offsets=[0]), r"offsets has 1 entries but 2"),
    ("isotropic", dict(offsets=[0, -1]), r"offsets\[1\] is -1"),
    ("isotropic", dict(noise_kind=7), r"noise_kind must be"),
]


@pytest.mark.parametrize("kind,change,pattern", BAD)
def test_bad_noise_arguments_rejected_before_any_write(kind, change, pattern):
    ts, args, kwargs = noisy_op_args(kind)
    kwargs.update(change)
    before = clone(ts)
    with pytest.raises(RuntimeError, match=pattern):
        torch.ops.noisefuse.fused_step_(*args, **kwargs)
    assert_same(before, ts, torch.float32, exact=True)


def test_bad_rows_rejected_before_any_write():
    ts, args, kwargs = noisy_op_args("diag_fisher")
    ts.grad_samples[1] = torch.randn(5, 70)  # another batch size than grad_samples[0]
    before = clone(ts)
    with pytest.raises(RuntimeError, match=r"grad_samples\[1\] has shape \[5, 70\]"):
        torch.ops.noisefuse.fused_step_(*args[:8], ts.grad_samples, **kwargs)
    with pytest.raises(RuntimeError, match=r"grads has 2 tensors but 0"):
        torch.ops.noisefuse.fused_step_(*args[:1], before.exp_avgs, *args[2:], **kwargs)
    channels_last = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match=r"row-major"):
        torch.ops.noisefuse.fused_step_([channels_last], [torch.zeros_like(channels_last)],
                                        [torch.zeros_like(channels_last)], [torch.zeros_like(channels_last)],
                                        [torch.zeros_like(channels_last)], [torch.zeros_like(channels_last)],
                                        [torch.zeros((), dtype=torch.float64)], [], [],
                                        **dict(kwargs, noise_kind=1, offsets=[0], demon_total_steps=0))
    assert_same(before, ts, torch.float32, exact=True)


# ----- the two CPU builds share no code ------------------------------------------------------------
AVX2_NAMES = ("isa_avx2", "cpu_avx2", "at::vec::AVX2")


def _library():
    return nf._C.__file__


@pytest.mark.skipif(shutil.which("nm") is None or not torch.backends.openmp.is_available()
                    or not sys.platform.startswith("linux"), reason="needs binutils and torch with OpenMP on Linux")
def test_cpu_kernel_is_built_with_openmp():
    """at::parallel_for is a header template whose OpenMP form is a `#pragma omp parallel`: built
    without -fopenmp the pragma vanishes and every CPU step runs on one thread, silently (until
    this test, the CPU figures of this repository were single-threaded). The parallel region is
    compiled in exactly when the library calls libgomp's GOMP_parallel."""
    undefined = subprocess.run(["nm", "-D", "--undefined-only", _library()], capture_output=True, text=True,
                               check=True).stdout
    assert re.search(r"\bGOMP_parallel\b", undefined), "noisefuse._C was compiled without OpenMP (-fopenmp)"


@pytest.mark.skipif(shutil.which("nm") is None or shutil.which("objdump") is None, reason="needs binutils")
def test_cpu_builds_share_no_code():
    """An inline function of the shared headers emitted by both CPU builds is one symbol, and the
    linker keeps one copy (possibly the AVX2 one) for both: noisefuse/isa.h gives each build its own
    namespace. Checked on the built library: (1) every noisefuse function that can have copies (weak
    symbols) is in an ISA namespace, and both builds have some; (2) no exported function outside
    the AVX2 namespaces contains AVX instructions (VEX-encoded: v-prefixed or ymm), so the baseline
    build never runs AVX2 code whichever copies the linker kept."""
    symbols = subprocess.run(["nm", "-C", "--defined-only", _library()], capture_output=True, text=True,
                             check=True).stdout.splitlines()
    kinds = {}
    for line in symbols:
        parts = line.split(" ", 2)
        if len(parts) == 3:
            kinds[parts[2]] = parts[1]
    weak = [name for name, kind in kinds.items() if kind in "WV" and "noisefuse::" in name]
    assert weak, "expected inline noisefuse functions in the library"
    # A symbol is per build when it names a per-ISA namespace, its own or one of its template arguments.
    outside = [n for n in weak if not re.search(
        r"noisefuse::(isa_baseline|isa_avx2|cpu_default|cpu_avx2|cuda)::|at::vec::(AVX2|CPU_CAPABILITY)::", n)]
    assert not outside, f"noisefuse inline functions outside the ISA namespaces: {outside[:5]}"
    # Both builds are in the library (with OpenMP the AVX2 one may inline every header function).
    assert any("isa_avx2" in n or "cpu_avx2" in n for n in kinds) or not native_avx2_compiled()
    assert any("isa_baseline" in n or "cpu_default" in n for n in kinds)

    listing = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", _library()], capture_output=True,
                             text=True, check=True).stdout
    function, offenders = None, set()
    for line in listing.splitlines():
        head = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if head:
            function = head.group(1)
        elif function and re.search(r"\t(v[a-z0-9]+)\b|%ymm", line):
            exported = kinds.get(function, "t") not in "tbdr"
            if exported and not any(name in function for name in AVX2_NAMES):
                offenders.add(function)
    assert not offenders, f"exported functions with AVX instructions outside the AVX2 build: {sorted(offenders)[:5]}"


def native_avx2_compiled():
    return any("cpu_avx2::run_cpu_step" in line for line in subprocess.run(
        ["nm", "-C", "--defined-only", _library()], capture_output=True, text=True).stdout.splitlines())
