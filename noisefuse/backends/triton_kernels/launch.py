"""Host side of the Triton fused step: validate a group, fetch its device tables, split the
hyperparameters into float32 pairs, and launch the two kernels (``kernels.py``)."""
from __future__ import annotations

import importlib.util
import math
import os
import struct
import sys

import torch
import triton
import triton.language as tl

from . import kernels, tables

_STORAGE = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16",
            torch.float64: "float64"}
_BLOCK_T = 128  # tensors per program of the coefficient launch
_interpreted = None


def _is_interpreted(module) -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(module.update_kernel, InterpretedFunction)


def kernels_for(device: torch.device):
    """The kernel module to launch for tensors on ``device``.

    Triton decides at decoration time whether ``@triton.jit`` compiles or interprets (from
    ``TRITON_INTERPRET``), so the module imported without it cannot run CPU tensors. For CPU
    tensors (allowed only while ``TRITON_INTERPRET=1``, see ``backends.triton.available``) a second
    copy of ``kernels.py`` is loaded with the interpreter on: the result does not depend on which
    code imported noisefuse first, or with which environment.
    """
    global _interpreted
    if device.type != "cpu" or _is_interpreted(kernels):
        return kernels
    if _interpreted is None:
        name = f"{kernels.__name__}_interpreted"
        spec = importlib.util.spec_from_file_location(name, kernels.__file__)
        module = importlib.util.module_from_spec(spec)
        saved = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1"
        try:
            spec.loader.exec_module(module)
        finally:
            if saved is None:
                del os.environ["TRITON_INTERPRET"]
            else:
                os.environ["TRITON_INTERPRET"] = saved
        sys.modules[name] = module
        _interpreted = module
    return _interpreted


def split(x: float) -> tuple[float, float]:
    """``(hi, lo)``, two float32 values with ``hi + lo == x`` within 2^-48 relative: a Triton kernel
    receives Python floats as float32, and the coefficients must be formed in double precision as
    ``family.tensor_scalars`` forms them (``1 - 0.999`` loses 1e-5 of its value from a float32
    ``beta2``)."""
    hi = struct.unpack("f", struct.pack("f", x))[0]
    lo = struct.unpack("f", struct.pack("f", x - hi))[0]
    return hi, lo


def _is_dense(t: torch.Tensor) -> bool:
    """Whether ``t``'s elements fill ``numel`` consecutive slots (any dimension order)."""
    if t.is_contiguous() or t.numel() == 0:
        return True
    expected = 1
    for stride, size in sorted((st, n) for st, n in zip(t.stride(), t.shape) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _check_layout(lists) -> None:
    """Every tensor of a row must be dense and laid out like its param: the kernels walk
    ``numel`` consecutive elements from each data pointer."""
    for i, p in enumerate(lists[0]):
        if not _is_dense(p):
            raise RuntimeError(f"backend='triton' needs dense params; param {i} has strides {p.stride()}")
        for lst in lists[1:6]:
            if lst and (lst[i].stride() != p.stride() or lst[i].dtype != p.dtype):
                raise RuntimeError(
                    f"backend='triton': a state tensor of param {i} has dtype {lst[i].dtype} and strides "
                    f"{lst[i].stride()}, its param {p.dtype} and {p.stride()}; they must match")


def fused_step(params, grads, exp_avgs, neg_exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, beta1_prods,
               *, momentum, lr, beta1, beta2, beta0, eps, weight_decay, decoupled, nesterov, maximize,
               demon_total_steps, demon_delay, grad_scale=None, found_inf=None) -> None:
    """One fused step of a (device, dtype) group: at most two launches, no host synchronisation."""
    if not params:
        return
    device, dtype = params[0].device, params[0].dtype
    if dtype not in _STORAGE:
        raise RuntimeError(f"backend='triton' supports float32/float16/bfloat16/float64 params, not {dtype}")
    grads = [g if g.stride() == p.stride() else torch.empty_like(p).copy_(g) for p, g in zip(params, grads)]
    lists = [params, grads, exp_avgs, neg_exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, beta1_prods]
    block, num_warps = tables.launch_shape(device)
    table = tables.get(lists, block)
    if not table.layout_checked:  # once per table: layouts change only with new pointers
        _check_layout(lists)
        table.layout_checked = True
    k = kernels_for(device)

    storage = getattr(tl, _STORAGE[dtype])
    compute = tl.float64 if dtype == torch.float64 else tl.float32
    second_moment, amsgrad = bool(exp_avg_sqs), bool(max_exp_avg_sqs)
    demon = demon_total_steps > 0
    demon_start = demon_delay * demon_total_steps
    demon_len = demon_total_steps - demon_start
    # Optional tensors: the flag says whether the kernel reads them; any tensor fills the slot.
    scale = grad_scale if grad_scale is not None else table.scalars
    inf = found_inf if found_inf is not None else table.scalars

    k.scalars_kernel[(triton.cdiv(table.n_tensors, _BLOCK_T),)](
        table.ptrs, table.n_tensors, table.scalars, inf,
        *split(lr), *split(beta1), *split(beta2),
        *split(demon_start if demon else 0.0), *split(demon_len if demon else 1.0),
        MOMENTUM=momentum, SECOND_MOMENT=second_moment, DEMON=demon, TRACK_PROD=bool(beta1_prods),
        HAS_FOUND_INF=found_inf is not None, BLOCK_T=_BLOCK_T, num_warps=4)
    if table.n_blocks == 0:
        return
    norm = math.sqrt((1.0 + beta0) ** 2 + beta0**2)
    k.update_kernel[(table.n_blocks,)](
        table.ptrs, table.numels, table.block_tensor, table.block_chunk, table.scalars, scale, inf,
        *split(1.0 - lr * weight_decay), *split(weight_decay), *split(beta2), *split(1.0 - beta2),
        *split(eps), *split((1.0 + beta0) / norm), *split(beta0 / norm),
        DTYPE=storage, COMPUTE=compute, MOMENTUM=momentum, SECOND_MOMENT=second_moment, AMSGRAD=amsgrad,
        NESTEROV=nesterov, MAXIMIZE=maximize, DECOUPLED=decoupled, HAS_GRAD_SCALE=grad_scale is not None,
        HAS_FOUND_INF=found_inf is not None, ALIGNED=table.aligned, BLOCK=block, num_warps=num_warps)

