"""The Triton backend equals the reference, run by Triton's interpreter on CPU tensors.

How the interpreter is switched on: the backend accepts CPU tensors only while ``TRITON_INTERPRET=1``
and then launches copies of the kernel modules that were loaded with the interpreter on
(``triton_kernels.launch.kernels_for``), whatever environment noisefuse was first imported in. So an
autouse fixture sets the variable for each test here and no other test module is affected (the GPU
tests in test_triton_cuda.py keep compiled kernels); ``test_interpreter_whatever_the_import_order``
checks the claim in a fresh process.

The interpreter runs programs one at a time at a cost per operation, so the sizes are small: 0, 1,
odd, and one past a block (4097 with the interpreter's 4096-element block; a 64-element block for the
many-blocks and noise tests; the noise tests draw B = 6 per-sample rows). The GPU tests repeat the
comparisons at full size.
"""
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

import noisefuse as nf  # noqa: E402
from cases import CONFIGS, assert_same_state, compare_backends, make_grads, make_params, run  # noqa: E402
from noise_cases import PAIRS, noisy_run  # noqa: E402
from noisefuse.backends import triton as triton_backend  # noqa: E402
from noisefuse.backends.triton_kernels import launch, tables  # noqa: E402

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("NOISEFUSE_TRITON_BLOCK", raising=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_triton_matches_reference(config, dtype):
    compare_backends(config, "triton", dtype=dtype, steps=20 if dtype == torch.float32 else 12)


@pytest.mark.parametrize("config", ["adapnm_noams_demon", "demon_sgd_nesterov", "demon_adamw_ams"])
def test_float64_coefficients_in_double_precision(config):
    # float64 tolerances (1e-10 relative) hold only if lr, betas and the Demon schedule reach the
    # kernels in double precision, although Triton passes Python floats as float32.
    compare_backends(config, "triton", dtype=torch.float64, sizes=(1, 37), steps=16)


@pytest.mark.parametrize("config", ["adapnm", "demon_sgd_nesterov", "pnm_l2_demon"])
def test_maximize(config):
    compare_backends(config, "triton", sizes=(3, 50), steps=6, maximize=True)


@pytest.mark.parametrize("config", ["pnm", "adapnm_noams_demon", "demon_adamw_ams"])
def test_many_blocks_and_tensors(config, monkeypatch):
    # A 64-element block: tensors of many blocks, a full last block, a 1-element tail, and empty
    # tensors between them, so the block map and the full/partial tile split are exercised.
    monkeypatch.setenv("NOISEFUSE_TRITON_BLOCK", "64")
    compare_backends(config, "triton", sizes=(0, 64, 1, 200, 0, 129, 7, 63), steps=5)


def test_params_packed_in_one_buffer(monkeypatch):
    # Params that are views of one buffer, at odd offsets: a write past the end of one tensor would
    # show in its neighbour, and the unaligned pointers take the kernels' unhinted path.
    monkeypatch.setenv("NOISEFUSE_TRITON_BLOCK", "64")
    sizes = (5, 0, 64, 3, 130)
    flat = torch.randn(1 + sum(sizes), generator=torch.Generator().manual_seed(5))
    results = []
    for backend in ("reference", "triton"):
        buf = flat.clone()
        offsets = [1 + sum(sizes[:i]) for i in range(len(sizes))]
        ps = [buf[o:o + n].detach().requires_grad_() for o, n in zip(offsets, sizes)]
        opt = CONFIGS["adapnm"](ps, backend=backend)
        for step in range(3):
            for p, g in zip(ps, make_grads(ps, step)):
                p.grad = g
            opt.step()
        results.append(buf)
    assert results[1][0] == flat[0]
    torch.testing.assert_close(results[0], results[1], atol=1e-6, rtol=1e-5)


def test_param_groups_with_own_hyperparameters():
    params = make_params((5, 1, 17, 9))
    groups = [{"params": [0, 1, 2]}, {"params": [3], "lr": 0.002, "eps": 1e-3, "weight_decay": 0.1}]
    pa, oa = run("demon_adamw_ams", "reference", params, steps=6, groups=groups)
    pb, ob = run("demon_adamw_ams", "triton", params, steps=6, groups=groups)
    assert_same_state(oa, ob, pa, pb, torch.float32)


def test_mixed_dtypes_in_one_group():
    params = make_params((5, 33)) + make_params((7,), dtype=torch.bfloat16)
    pa, oa = run("adapnm", "reference", params, steps=5)
    pb, ob = run("adapnm", "triton", params, steps=5)
    assert_same_state(oa, ob, pa[:2], pb[:2], torch.float32)
    assert_same_state(oa, ob, pa[2:], pb[2:], torch.bfloat16)


def _amp_run(backend, params, scale, found_inf_at):
    """Steps with grads multiplied by ``scale`` and the optimizer told to unscale them (as GradScaler
    does); at step ``found_inf_at`` found_inf is set, so that step is skipped."""
    ps = [p.detach().clone().requires_grad_() for p in params]
    opt = CONFIGS["adapnm_noams_demon"](ps, backend=backend)
    for step in range(4):
        for p, g in zip(ps, make_grads(ps, step)):
            p.grad = g * scale
        opt.grad_scale = torch.tensor([scale])
        opt.found_inf = torch.tensor([1.0 if step == found_inf_at else 0.0])
        opt.step()
    return ps, opt


def test_amp_grad_scale_and_found_inf():
    params = make_params((3, 1, 40))
    pa, oa = _amp_run("reference", params, 1024.0, found_inf_at=2)
    pb, ob = _amp_run("triton", params, 1024.0, found_inf_at=2)
    assert_same_state(oa, ob, pa, pb, torch.float32)
    assert ob.state[pb[0]]["step"].item() == 3


def test_found_inf_changes_nothing_bit_for_bit():
    ps = [p.detach().clone().requires_grad_() for p in make_params((3, 40))]
    opt = CONFIGS["demon_adamw_ams"](ps, backend="triton")
    for step in range(2):
        for p, g in zip(ps, make_grads(ps, step)):
            p.grad = g
        opt.step()
    before = [(p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()}) for p in ps]
    opt.grad_scale, opt.found_inf = torch.tensor([2.0]), torch.tensor([1.0])
    opt.step()
    for p, (p0, state0) in zip(ps, before):
        assert torch.equal(p.detach(), p0)
        for key, value in state0.items():
            assert torch.equal(opt.state[p][key], value), key


def test_dense_grad_with_other_strides_is_read_correctly():
    # A transposed gradient is dense but laid out unlike its param: the kernels walk memory in the
    # param's order, so the backend hands them a copy in that layout.
    p0 = torch.randn(4, 5, dtype=torch.float64).float()
    results = []
    for backend in ("reference", "triton"):
        p = p0.clone().requires_grad_()
        opt = nf.AdaPNM([p], lr=0.01, backend=backend)
        for step in range(3):
            p.grad = torch.randn(5, 4, generator=torch.Generator().manual_seed(step)).t()
            opt.step()
        results.append(p.detach())
    torch.testing.assert_close(results[0], results[1], atol=1e-6, rtol=1e-5)


def test_non_dense_param_is_stepped_by_foreach_with_a_warning(monkeypatch):
    # A strided view: its elements are not consecutive, so the kernels cannot walk it; torch.optim
    # steps it, and so does the backend, through foreach (issue #20, finding 5).
    monkeypatch.setattr(triton_backend, "_warned_layout", False)
    results = []
    for backend in ("reference", "triton"):
        base = torch.randn(10, generator=torch.Generator().manual_seed(0))
        p = base[::2].detach().requires_grad_()
        opt = nf.PNM([p], lr=0.1, backend=backend)
        for step in range(3):
            p.grad = torch.randn(10, generator=torch.Generator().manual_seed(step))[::2]
            if backend == "triton" and step == 0:
                with pytest.warns(RuntimeWarning, match=r"strides \(2,\) is not dense"):
                    opt.step()
            else:
                opt.step()
        results.append(p.detach())
    torch.testing.assert_close(results[0], results[1], atol=1e-6, rtol=1e-5)


def test_table_is_reused_while_pointers_are_unchanged_and_rebuilt_after_set_to_none():
    tables.clear()
    ps = [p.detach().clone().requires_grad_() for p in make_params((3, 70))]
    opt = CONFIGS["adapnm"](ps, backend="triton")
    ref = [p.detach().clone().requires_grad_() for p in ps]
    opt_ref = CONFIGS["adapnm"](ref, backend="reference")
    grads = make_grads(ps, 0)
    for p, q, g in zip(ps, ref, grads):
        p.grad, q.grad = g, g.clone()
    builds = tables.stats.builds
    opt.step()
    opt_ref.step()
    opt.step()  # same tensors, same pointers: the table is reused
    opt_ref.step()
    assert tables.stats.builds == builds + 1
    opt.zero_grad(set_to_none=True)
    kept = grads  # keep the old grads alive so that the new ones cannot reuse their addresses
    new = make_grads(ps, 1)
    for p, q, g in zip(ps, ref, new):
        p.grad, q.grad = g, g.clone()
    opt.step()
    opt_ref.step()
    assert tables.stats.builds == builds + 2
    assert kept[0].data_ptr() != ps[0].grad.data_ptr()
    assert_same_state(opt_ref, opt, ref, ps, torch.float32)


class _CountingKernels:
    """Stands in for the kernel module and counts launches."""

    def __init__(self, module):
        self.module, self.launches = module, []

    def __getattr__(self, name):
        kernel = getattr(self.module, name)
        outer = self

        class _Launcher:
            def __getitem__(self, grid):
                outer.launches.append((name, grid))
                return kernel[grid]

        return _Launcher()


@pytest.mark.parametrize("sizes, expected", [((3, 5000, 0, 17), ["scalars_kernel", "update_kernel"]),
                                             ((0, 0), ["scalars_kernel"])])
def test_one_update_launch_per_group(sizes, expected, monkeypatch):
    real = launch.kernels_for
    counting = {}

    def kernels_for(device):
        counting.setdefault("k", _CountingKernels(real(device)))
        return counting["k"]

    monkeypatch.setattr(launch, "kernels_for", kernels_for)
    ps = [p.detach().clone().requires_grad_() for p in make_params(sizes)]
    opt = CONFIGS["demon_adam"](ps, backend="triton")
    for p, g in zip(ps, make_grads(ps, 0)):
        p.grad = g
    opt.step()
    assert [name for name, _ in counting["k"].launches] == expected
    assert all(opt.state[p]["step"].item() == 1 for p in ps)


def test_unavailable_on_cpu_without_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    assert not triton_backend.available(torch.device("cpu"))
    assert not triton_backend.available(torch.device("meta"))
    p = torch.zeros(3, requires_grad=True)
    p.grad = torch.ones(3)
    opt = nf.PNM([p], lr=0.1, backend="triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        opt.step()
    assert torch.equal(p.detach(), torch.zeros(3))


@pytest.mark.parametrize("noise", ["none", "isotropic", "multiplicative"])
def test_opcheck(noise):
    ps = make_params((3, 9))
    rows = [torch.randn(4, *p.shape) for p in ps] if noise == "multiplicative" else []
    grads = [] if rows else make_grads(ps, 0)
    weights = torch.tensor([0.5, 1.0, 1.5, 2.0]) if rows else None
    args = ([p.detach().clone() for p in ps], grads, [torch.zeros_like(p) for p in ps],
            [torch.zeros_like(p) for p in ps], [torch.zeros_like(p) for p in ps], [],
            [torch.zeros((), dtype=torch.float64) for _ in ps], [], rows, None, None,
            torch.tensor(0.01) if noise == "none" else None, weights,
            [], None)  # state_scales given, as the backend gives it: torch 2.11 needs it (backends/triton.py)
    kwargs = dict(momentum=2, lr=0.01, beta1=0.9, beta2=0.999, beta0=1.0, eps=1e-8, weight_decay=0.01,
                  decoupled=True, nesterov=False, maximize=False, demon_total_steps=0, demon_delay=0.0,
                  offsets=[0, 3] if noise != "none" else [], noise_kind=nf.noise.NOISE_CODES[noise], seed=-5,
                  noise_std=0.1)
    torch.library.opcheck(torch.ops.noisefuse.triton_fused_step_.default, args, kwargs,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def test_interpreter_whatever_the_import_order():
    # noisefuse and its kernels imported with the interpreter off, switched on afterwards.
    code = (
        "import os, torch\n"
        "os.environ.pop('TRITON_INTERPRET', None)\n"
        "import noisefuse as nf\n"
        "from noisefuse.backends.triton_kernels import launch, kernels\n"
        "assert not launch._is_interpreted(kernels)\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "p = torch.ones(5, requires_grad=True); p.grad = torch.full((5,), 2.0)\n"
        "nf.DemonSGD([p], lr=0.5, momentum=0.9, total_steps=10, backend='triton').step()\n"
        "assert torch.equal(p.detach(), torch.zeros(5)), p\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


# ----- gradient noise ---------------------------------------------------------------------------
NOISE_SIZES = (0, 1, 70, 129)  # with 64-element blocks: an empty tensor, a 1-element one, 2 and 3 blocks


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("noise,config", PAIRS)
def test_noise_matches_reference(noise, config, dtype, monkeypatch):
    monkeypatch.setenv("NOISEFUSE_TRITON_BLOCK", "64")
    params = make_params(NOISE_SIZES, dtype)
    pa, oa = noisy_run(config, "reference", noise, params)
    pb, ob = noisy_run(config, "triton", noise, params)
    assert_same_state(oa, ob, pa, pb, dtype)


@pytest.mark.parametrize("noise", ["isotropic", "diag_fisher_centered", "mult_gaussian"])
def test_noise_in_float64(noise):
    params = make_params((1, 37), torch.float64)
    pa, oa = noisy_run("adapnm_noams_demon", "reference", noise, params, steps=6)
    pb, ob = noisy_run("adapnm_noams_demon", "triton", noise, params, steps=6)
    # The normals are float32 by contract, equal across backends only to float32 rounding of log/cos
    # (a few float32 ulps): the noisy float64 trajectories agree to float32 tolerances, not float64 ones.
    assert_same_state(oa, ob, pa, pb, torch.float32)


@pytest.mark.parametrize("noise", ["isotropic", "diag_fisher", "mult_bernoulli"])
def test_noise_is_the_same_whatever_the_block_size_and_table_layout(noise, monkeypatch):
    # Each element's normal and row sums depend on its global index alone: 64-element blocks, the
    # interpreter's 4096-element block, and the params split over three groups in the same order
    # (three tables, other table rows and block maps) give bit-identical results.
    params = make_params((70, 5, 129, 33))
    results = []
    for block, groups in (("64", None), (None, None), ("64", [{"params": [0]}, {"params": [1, 2]}, {"params": [3]}])):
        if block is None:
            monkeypatch.delenv("NOISEFUSE_TRITON_BLOCK", raising=False)
        else:
            monkeypatch.setenv("NOISEFUSE_TRITON_BLOCK", block)
        results.append(noisy_run("adapnm", "triton", noise, params, steps=4, groups=groups)[0])
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def test_bad_noise_arguments_are_refused_before_any_launch():
    ps = make_params((3, 9))
    kwargs = dict(momentum=0, lr=0.1, beta1=0.9, beta2=0.0, beta0=0.0, eps=0.0, weight_decay=0.0, decoupled=True,
                  nesterov=False, maximize=False, demon_total_steps=0, demon_delay=0.0, offsets=[0, 3],
                  noise_kind=nf.noise.NOISE_CODES["multiplicative"])
    rows = [torch.randn(4, *p.shape) for p in ps]
    steps = [torch.zeros((), dtype=torch.float64) for _ in ps]
    with pytest.raises(RuntimeError, match="sample_weights"):
        launch.fused_step(ps, [], [torch.zeros_like(p) for p in ps], [], [], [], steps, [], rows, **kwargs)
    with pytest.raises(RuntimeError, match="grad_sample"):
        launch.fused_step(ps, [], [torch.zeros_like(p) for p in ps], [], [], [], steps, [], rows[:1],
                          sample_weights=torch.ones(4), **kwargs)
    assert all(s.item() == 0 for s in steps)
