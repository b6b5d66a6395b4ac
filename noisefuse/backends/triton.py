"""The Triton backend: the fused step of docs/kernel-contract.md as multi-tensor Triton kernels
(``noisefuse.backends.triton_kernels``), called through ``torch.ops.noisefuse.triton_fused_step_``.

Runs on CUDA (and ROCm) devices with Triton installed, and on CPU tensors under Triton's interpreter
(``TRITON_INTERPRET=1``), which is how the tests check it without a GPU. Each (device, dtype) group is
two launches with no host synchronisation, so a step can be captured in a CUDA graph.
See docs/backends/triton.md.
"""
from __future__ import annotations

import os
import sys

import torch

from ..noise.step import NoiseStep
from ..random.rounding import Rounding
from . import stream
from .native import draw_weights  # noqa: F401  (the native op's one launch where it is built)
from .family import MOMENTUM_CODES, Family, Hyper
from .step_tensors import StepTensors

try:
    import triton  # noqa: F401

    from .triton_kernels import op as _op  # noqa: F401  (registers torch.ops.noisefuse.triton_fused_step_)

    _IMPORT_ERROR = None
except ImportError as exc:  # triton is not installed
    _IMPORT_ERROR = exc

# Gradient noise is drawn inside the element kernel (``triton_kernels/grad.py``); the state may be
# float32 for float16/bfloat16 params, and bfloat16 params are rounded stochastically on store;
# 8-bit blockwise state is dequantized and quantized in the kernel (``update_8bit_kernel``).
supports_noise = True
supports_mixed_state = True
supports_stochastic_rounding = True
supports_blockwise_8bit = True
_warned_layout = False  # set by stream.step_with_foreach: one layout warning per backend


def _interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def available(device: torch.device) -> bool:
    """True for CUDA devices when Triton imports, and for CPU tensors while ``TRITON_INTERPRET=1``."""
    device = torch.device(device)
    if _IMPORT_ERROR is not None:
        return False
    if device.type == "cuda":
        return torch.cuda.is_available()
    return device.type == "cpu" and _interpreter_on()


def check_device(device: torch.device) -> None:
    if available(device):
        return
    device = torch.device(device)
    if _IMPORT_ERROR is not None:
        reason = f"triton failed to import: {_IMPORT_ERROR}"
    elif device.type == "cpu":
        reason = "CPU tensors run only under Triton's interpreter (set TRITON_INTERPRET=1; it is slow)"
    elif device.type == "cuda":
        reason = "CUDA is not available"
    else:
        reason = f"Triton has no {device.type} support here"
    raise RuntimeError(f"backend='triton' cannot run on {device}: {reason}")


def fused_step(family: Family, hyper: Hyper, ts: StepTensors, grad_scale=None, found_inf=None,
               noise: NoiseStep | None = None, rounding: Rounding | None = None) -> None:
    if not ts.params:
        return
    check_device(ts.params[0].device)
    reason = stream.layout_needs_foreach(ts, noise, rounding)
    if reason is not None:
        stream.step_with_foreach(sys.modules[__name__], family, hyper, ts, grad_scale, found_inf, noise, rounding,
                                 reason)
        return
    reads_rows = noise is not None and noise.consumes_grad_sample
    blockwise = stream.blockwise_kwargs(ts)
    # state_scales is always given, by position ([] without 8-bit state): torch 2.11's custom_op finds a
    # mutated argument by its index among the positional ones, which stop at the last non-default
    # one (an omitted state_scales raised IndexError there, on every call without 8-bit state).
    torch.ops.noisefuse.triton_fused_step_(
        ts.params, ts.grads, ts.exp_avgs, ts.neg_exp_avgs, ts.exp_avg_sqs, ts.max_exp_avg_sqs,
        ts.steps, ts.beta1_prods, ts.grad_samples if reads_rows else [], grad_scale, found_inf, hyper.lr_tensor,
        noise.sample_weights if noise is not None else None, blockwise.pop("state_scales", []),
        blockwise.pop("code_books", None), momentum=MOMENTUM_CODES[family.momentum],
        lr=hyper.lr, beta1=hyper.beta1, beta2=hyper.beta2, beta0=hyper.beta0, eps=hyper.eps,
        weight_decay=hyper.weight_decay, decoupled=hyper.decoupled, nesterov=hyper.nesterov,
        maximize=hyper.maximize, demon_total_steps=hyper.demon_total_steps,
        demon_delay=hyper.demon_delay, **stream.stream_kwargs(ts, noise, rounding), **blockwise)
