"""8-bit state on the host-side backends (reference, foreach): dequantize every buffer of the call
to float32, run the backend's float32-state step on the copies, quantize back what it wrote. The
fused backends do the same per block inside their kernels (docs/kernel-contract.md, "8-bit
blockwise state"); these are the numbers they are tested against."""
from __future__ import annotations

from dataclasses import replace

from ..backends.step_tensors import StepTensors
from .blockwise import decode, encode

BUFFER_FIELDS = ("exp_avgs", "neg_exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs")


def quantized_step(float_step, family, hyper, ts: StepTensors, grad_scale=None, found_inf=None, **extra) -> None:
    """``float_step`` (a backend's ``fused_step``) on float32 copies of the 8-bit state of ``ts``."""
    spec = ts.quantization
    if found_inf is not None and found_inf.item() != 0:
        return  # AMP skip: codes, scales and counters stay as they are
    used = [f for f in BUFFER_FIELDS if getattr(ts, f)]
    work = {f: [decode(c, s, spec, f) for c, s in zip(getattr(ts, f), ts.scales[f])] for f in used}
    # PN's step writes one momentum buffer, by the parity of the step it makes: the other one's
    # codes are left as they are (requantizing would be the identity, or an ulp off it).
    odd = [int(s.item()) % 2 == 0 for s in ts.steps] if family.pn else None
    float_step(family, hyper, replace(ts, quantization=None, scales={}, **work), grad_scale=grad_scale,
               found_inf=found_inf, **extra)
    for f in used:
        for i, (codes, scales, x) in enumerate(zip(getattr(ts, f), ts.scales[f], work[f])):
            if odd is not None and f in ("exp_avgs", "neg_exp_avgs") and odd[i] != (f == "exp_avgs"):
                continue
            new_codes, new_scales = encode(x, spec, f)
            codes.copy_(new_codes)
            scales.copy_(new_scales)
