"""8-bit blockwise state on the Triton backend's compiled kernels (skipped without a GPU): the
comparisons of test_triton_8bit.py at full size (past a 4096-element launch block, many blocks per
program), the bit-identical zero-gradient steps, a NaN gradient element, and a CUDA-graph-captured
step."""
import pytest
import torch

pytest.importorskip("triton")

from blockwise_cases import assert_8bit_close, assert_8bit_equal, spec  # noqa: E402
from cases import BIG_SIZE, CONFIGS, SIZES, capture_after_warm_up, make_grads, make_params, run  # noqa: E402
from noise_cases import noisy_run  # noqa: E402

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
FULL = SIZES + (BIG_SIZE,)


@pytest.fixture(autouse=True)
def compiled_kernels(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("NOISEFUSE_TRITON_BLOCK", raising=False)


def _compare(config, state_dtype, dtype=torch.float32, sizes=FULL, steps=20, **kwargs):
    params = make_params(sizes, dtype=dtype, device="cuda")
    pa, oa = run(config, "reference", params, steps=steps, state_dtype=state_dtype, seed=7, **kwargs)
    pb, ob = run(config, "triton", params, steps=steps, state_dtype=state_dtype, seed=7, **kwargs)
    assert any(v.dtype == torch.uint8 for v in ob.state[pb[-1]].values())
    assert_8bit_close(oa, ob, pa, pb, dtype)


@pytest.mark.parametrize("code_book", ["dynamic", "linear"])
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_matches_reference_full_size(config, code_book):
    _compare(config, spec(256, code_book))


@pytest.mark.parametrize("block_size", [16, 64, 2048])
@pytest.mark.parametrize("config", ["adapnm", "demon_adamw_ams", "demon_sgd_nesterov"])
def test_block_sizes(config, block_size):
    _compare(config, spec(block_size))


@pytest.mark.parametrize("stochastic_rounding", [False, True])
@pytest.mark.parametrize("config", ["adapnm", "pnm_l2_demon", "demon_adamw_ams"])
def test_bfloat16_params(config, stochastic_rounding):
    # No empty param with stochastic rounding: see ALL_8BIT in test_triton_8bit.py.
    sizes = FULL[1:] if stochastic_rounding else FULL
    _compare(config, spec(64), dtype=torch.bfloat16, sizes=sizes, stochastic_rounding=stochastic_rounding)


@pytest.mark.parametrize("noise,config", [("isotropic", "pnm_l2_demon"), ("diag_fisher", "adapnm"),
                                          ("mult_gaussian", "demon_adamw_ams")])
def test_noise(noise, config):
    params = make_params((1, 4097, BIG_SIZE), device="cuda")
    pa, oa = noisy_run(config, "reference", noise, params, steps=8, state_dtype=spec(128))
    pb, ob = noisy_run(config, "triton", noise, params, steps=8, state_dtype=spec(128))
    assert_8bit_close(oa, ob, pa, pb, torch.float32)


@pytest.mark.parametrize("config,code_book", [("adapnm", "dynamic"), ("demon_adamw_ams", "linear"),
                                              ("pnm", "linear"), ("demon_sgd_nesterov", "dynamic")])
@pytest.mark.parametrize("block_size", [16, 256, 2048])
def test_zero_gradients_give_bit_identical_codes_and_scales(config, code_book, block_size, monkeypatch):
    # As in test_triton_8bit.py: from the reference's state after real steps, zero gradients and no
    # weight decay leave one multiply per buffer, compiled or not (FMA contraction has nothing to add).
    state_dtype = spec(block_size, code_book)
    pa, oa = run(config, "reference", make_params(FULL, device="cuda"), steps=5, state_dtype=state_dtype)
    pb = [p.detach().clone().requires_grad_() for p in pa]
    ob = CONFIGS[config](pb, backend="triton", state_dtype=state_dtype)
    for group in (*oa.param_groups, *ob.param_groups):
        group["weight_decay"] = 0.0
    for a, b in zip(pa, pb):
        ob.state[b] = {key: value.clone() for key, value in oa.state[a].items()}
    for _ in range(6):
        for p in (*pa, *pb):
            p.grad = torch.zeros_like(p)
        oa.step()
        ob.step()
        assert_8bit_equal(oa, ob, pa, pb)


def test_nan_gradient_element():
    params = make_params((4097, BIG_SIZE), device="cuda")
    results = []
    for backend in ("reference", "triton"):
        ps = [p.detach().clone().requires_grad_() for p in params]
        opt = CONFIGS["demon_adamw_ams"](ps, backend=backend, state_dtype=spec(256))
        for step in range(4):
            grads = make_grads(ps, step)
            if step == 2:
                grads[1][70000] = float("nan")
            for p, g in zip(ps, grads):
                p.grad = g
            opt.step()
        results.append((ps, opt))
    (pa, oa), (pb, ob) = results
    assert_8bit_close(oa, ob, pa, pb, torch.float32)
    assert int(torch.isnan(pb[1]).sum()) == 1


def test_cuda_graph_captured_step():
    state_dtype = spec(256)
    ps = [p.detach().clone().requires_grad_() for p in make_params((4097, BIG_SIZE), device="cuda")]
    ref = [p.detach().clone().requires_grad_() for p in ps]
    opt = CONFIGS["adapnm"](ps, backend="triton", state_dtype=state_dtype)
    opt_ref = CONFIGS["adapnm"](ref, backend="reference", state_dtype=state_dtype)
    static = [torch.zeros_like(p) for p in ps]
    for p, g in zip(ps, static):
        p.grad = g
    graph = capture_after_warm_up(opt.step, opt.step)  # the warm-up makes state, kernels and table
    for q, g in zip(ref, static):
        q.grad = g.clone()
    opt_ref.step()  # the warm-up's twin
    for step in range(6):
        for g, q, new in zip(static, ref, make_grads(ps, step)):
            g.copy_(new)
            q.grad = new.clone()
        graph.replay()
        opt_ref.step()
    torch.cuda.synchronize()
    assert_8bit_close(opt_ref, opt, ref, ps, torch.float32)
