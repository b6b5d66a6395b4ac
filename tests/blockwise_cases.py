"""Shared inputs and checks of the 8-bit state tests of the fused backends
(docs/kernel-contract.md, "8-bit blockwise state"): the format under test, the comparison with the
reference (codes equal but for rare flips, scales close) and the bit-for-bit one."""
from __future__ import annotations

import torch

import noisefuse as nf
from noisefuse.state.blockwise import SCALES_SUFFIX

# min_numel=1: every param but an empty one keeps 8-bit state (an empty one keeps float32 state,
# stepped in a call of its own).
MIN_NUMEL = 1


def spec(block_size=256, code_book="dynamic"):
    return nf.state.Blockwise8bit(block_size=block_size, code_book=code_book, min_numel=MIN_NUMEL)


def assert_8bit_close(opt_a, opt_b, params_a, params_b, dtype=torch.float32, flips=0.002):
    """Params to tolerance; 8-bit codes equal but for a ``flips`` fraction; scales close; float
    state (the params below min_numel) to float32 tolerance."""
    atol, rtol = (1e-5, 1e-4) if dtype == torch.float32 else (8e-3, 1.6e-2)
    for i, (pa, pb) in enumerate(zip(params_a, params_b)):
        # A flipped code moves its element's momentum by a code step, and its param by lr times that.
        apart = int((~torch.isclose(pa.detach(), pb.detach(), atol=atol, rtol=rtol, equal_nan=True)).sum())
        assert apart <= max(2, flips * pa.numel()), f"param {i}: {apart} elements apart"
        torch.testing.assert_close(pa.detach(), pb.detach(), atol=2e-3, rtol=1e-2, equal_nan=True,
                                   msg=lambda m: f"param {i}: {m}")
        sa, sb = opt_a.state[pa], opt_b.state[pb]
        assert sa.keys() == sb.keys(), f"param {i}: {sorted(sa)} vs {sorted(sb)}"
        for key, va in sa.items():
            vb = sb[key]
            assert va.dtype == vb.dtype and va.shape == vb.shape, (i, key)
            if key in ("step", "beta1_prod"):
                torch.testing.assert_close(va, vb, atol=0, rtol=1e-14, msg=lambda m: f"param {i} {key}: {m}")
            elif va.dtype == torch.uint8:
                apart = int((va != vb).sum())
                assert apart <= max(2, flips * va.numel()), f"param {i} {key}: {apart} codes apart"
            elif key.endswith(SCALES_SUFFIX):
                # A scale is the largest magnitude of its block: an ulp apart, or a code step where
                # the largest element's code flipped earlier.
                apart = int((~torch.isclose(va, vb, atol=0, rtol=1e-5)).sum())
                assert apart <= max(1, 0.02 * va.numel()), f"param {i} {key}: {apart} scales apart"
                torch.testing.assert_close(va, vb, atol=0, rtol=0.1, msg=lambda m: f"param {i} {key}: {m}")
            else:
                torch.testing.assert_close(va, vb, atol=1e-6, rtol=1e-5, msg=lambda m: f"param {i} {key}: {m}")


def assert_8bit_equal(opt_a, opt_b, params_a, params_b):
    """Codes and scales bit for bit."""
    compared = 0
    for pa, pb in zip(params_a, params_b):
        for key, va in opt_a.state[pa].items():
            if va.dtype == torch.uint8 or key.endswith(SCALES_SUFFIX):
                vb = opt_b.state[pb][key]
                assert torch.equal(va, vb), f"{key}: {int((va != vb).sum())} of {va.numel()} differ"
                compared += 1
    assert compared > 0
