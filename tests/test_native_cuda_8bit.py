"""The native backend's CUDA kernel of 8-bit blockwise state (csrc/cuda/fused_step_blockwise.cuh) on a
real GPU, against the reference run on the same device: a small part of
tests/test_cuda_emulated_8bit.py's matrix, where the float32 update is contracted into fused
multiply-adds (rare code flips) and the exact test still holds bit for bit. Skipped without a GPU."""
from __future__ import annotations

import pytest
import torch

from blockwise_cases import assert_8bit_close
from cases import CONFIGS, make_params, run, saved_and_loaded
from noisefuse.backends import native, reference
from noisefuse.state import Blockwise8bit
from test_cuda_emulated_8bit import (RUN_SIZES, assert_steps_like_the_reference, clone8, codes_keys, misalign8,
                                     quantized, tensors)
from test_native import FAMILIES

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and native.available(torch.device("cuda"))),
                                reason="needs a GPU and the native extension's CUDA kernel")
CUDA = "cuda"


@pytest.fixture(autouse=True)
def native_8bit(monkeypatch):
    """The backend declares 8-bit state only once both of its kernels have it; its CUDA one here."""
    monkeypatch.setattr(native, "supports_blockwise_8bit", True)


def on_gpu(ts):
    out = clone8(ts)
    for key, value in vars(out).items():
        if isinstance(value, list):
            setattr(out, key, [t.to(CUDA) if torch.is_tensor(t) else t for t in value])
    out.scales = {k: [s.to(CUDA) for s in v] for k, v in out.scales.items()}
    return out


@pytest.mark.parametrize("config,dtype,spec,rounding", [
    ("adapnm", torch.float32, Blockwise8bit(256, min_numel=0), False),
    ("demon_adamw_ams", torch.float32, Blockwise8bit(16, "linear", min_numel=0), False),
    ("demon_sgd_nesterov", torch.float32, Blockwise8bit(2048, min_numel=0), False),
    ("pnm_l2_demon", torch.bfloat16, Blockwise8bit(64, min_numel=0), False),
    ("adapnm", torch.bfloat16, Blockwise8bit(256, min_numel=0), True),
])
def test_matches_reference(config, dtype, spec, rounding):
    kw = dict(stochastic_rounding=True, seed=0xF00DFACE_DEADBEEF) if rounding else {}
    params = make_params(RUN_SIZES, dtype, device=CUDA)
    pa, oa = run(config, "reference", params, 20, state_dtype=spec, **kw)
    pb, ob = run(config, "native", params, 20, state_dtype=spec, **kw)
    assert_8bit_close(oa, ob, pa, pb)


@pytest.mark.parametrize("config", ["adapnm", "demon_adamw_ams", "demon_sgd"])
def test_zero_gradients_give_the_reference_codes_bit_for_bit(config):
    """As on the emulation: one product per buffer update (an FMA of it with a zero addend is the
    same product), so codes and scales equal the reference's."""
    spec = Blockwise8bit(64, min_numel=0)
    params = make_params(RUN_SIZES, torch.float32, device=CUDA)
    pa, oa = run(config, "reference", params, steps=5, state_dtype=spec)
    pb = [p.detach().clone().requires_grad_() for p in pa]
    ob = CONFIGS[config](pb, backend="native", state_dtype=spec)
    ob.load_state_dict(saved_and_loaded(oa))
    for opt, ps in ((oa, pa), (ob, pb)):
        for group in opt.param_groups:
            group["weight_decay"] = 0.0
        for _ in range(6):
            for p in ps:
                p.grad = torch.zeros_like(p)
            opt.step()
    for i, (a, b) in enumerate(zip(pa, pb)):
        for key in oa.state[a]:
            assert torch.equal(oa.state[a][key], ob.state[b][key]), f"param {i} {key}"
    assert all(len(oa.state[pa[-1]][key].unique()) > 20 for key in codes_keys(oa))


@pytest.mark.parametrize("name", ["pn_ams", "heavy_ball", "ema_v"])
def test_each_variant_misaligned_and_aligned(name):
    family, hyper = FAMILIES[name]
    ts = quantized(family, hyper, sizes=(1, 5, 4097, 0, 65536 + 3, 40), spec=Blockwise8bit(64, min_numel=0))
    ts, expected = on_gpu(ts), on_gpu(ts)
    misalign8(ts, 5)
    assert ts.params[5].storage_offset() == 1 and ts.params[5].is_cuda
    scale = torch.tensor(64.0, device=CUDA)
    for _ in range(3):
        reference.fused_step(family, hyper, expected, grad_scale=scale)
        native.fused_step(family, hyper, ts, grad_scale=scale)
    assert_steps_like_the_reference(expected, ts, torch.float32)


def test_found_inf_leaves_everything_unchanged():
    family, hyper = FAMILIES["pn_ams"]
    ts = on_gpu(quantized(family, hyper))
    before = clone8(ts)
    native.fused_step(family, hyper, ts, grad_scale=torch.tensor(8.0, device=CUDA),
                      found_inf=torch.tensor(1.0, device=CUDA))
    assert all(torch.equal(a, b) for a, b in zip(tensors(before).values(), tensors(ts).values()))
