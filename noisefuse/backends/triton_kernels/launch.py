"""Host side of the Triton fused step: validate a group, fetch its device tables, split the
hyperparameters into float32 pairs, and launch the two kernels (``kernels.py``, which forms the
gradient and its noise with ``grad.py``)."""
from __future__ import annotations

import importlib.util
import math
import os
import struct
import sys

import torch
import triton
import triton.language as tl

from ...noise.step import NOISE_CODES
from ...random import philox_triton
from ...state import code_buckets
from ..stream import is_dense, same_layout
from . import grad, kernels, tables

_STORAGE = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16",
            torch.float64: "float64"}
_BLOCK_T = 128  # tensors per program of the coefficient launch
# The modules of @triton.jit functions the kernels call, each importing the ones before it.
_JIT_MODULES = (philox_triton, grad, kernels)
_ROW_NOISES = (NOISE_CODES["diag_fisher"], NOISE_CODES["multiplicative"])
_LIST_NAMES = ("grads", "exp_avgs", "neg_exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "steps", "beta1_prods")
_interpreted = None


def _is_interpreted(module) -> bool:
    """Whether the ``@triton.jit`` functions of ``module`` were decorated with the interpreter on."""
    from triton.runtime.interpreter import InterpretedFunction

    return any(isinstance(value, InterpretedFunction) for value in vars(module).values())


def kernels_for(device: torch.device):
    """The kernel module to launch for tensors on ``device``.

    Triton decides at decoration time whether ``@triton.jit`` compiles or interprets (from
    ``TRITON_INTERPRET``), so the module imported without it cannot run CPU tensors, and an
    interpreted kernel cannot call a compiled ``@triton.jit`` function. For CPU tensors (allowed only
    while ``TRITON_INTERPRET=1``, see ``backends.triton.available``) second copies of
    ``philox_triton.py``, ``grad.py`` and ``kernels.py`` are loaded with the interpreter on, each
    importing the interpreted copies of the ones before it: the result does not depend on which code
    imported noisefuse first, or with which environment.
    """
    global _interpreted
    if device.type != "cpu" or all(map(_is_interpreted, _JIT_MODULES)):
        return kernels
    if _interpreted is None:
        _interpreted = _load_interpreted()
    return _interpreted


def _load_interpreted():
    saved_env = os.environ.get("TRITON_INTERPRET")
    saved_modules = {m.__name__: m for m in _JIT_MODULES}
    copies = []
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        for module in _JIT_MODULES:
            spec = importlib.util.spec_from_file_location(f"{module.__name__}_interpreted", module.__file__)
            copy = importlib.util.module_from_spec(spec)
            # While the copies load, the real names resolve to them, so that `from .grad import ...`
            # in the next copy imports the interpreted functions.
            sys.modules[module.__name__] = copy
            spec.loader.exec_module(copy)
            copies.append(copy)
    finally:
        sys.modules.update(saved_modules)
        if saved_env is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = saved_env
    for copy in copies:
        sys.modules[copy.__name__] = copy
    return copies[-1]


def split(x: float) -> tuple[float, float]:
    """``(hi, lo)``, two float32 values with ``hi + lo == x`` within 2^-48 relative: a Triton kernel
    receives Python floats as float32, and the coefficients must be formed in double precision as
    ``family.tensor_scalars`` forms them (``1 - 0.999`` loses 1e-5 of its value from a float32
    ``beta2``)."""
    hi = struct.unpack("f", struct.pack("f", x))[0]
    lo = struct.unpack("f", struct.pack("f", x - hi))[0]
    return hi, lo


def _check_lengths(lists) -> None:
    """One tensor per param in every list that is used (``tables.get`` pairs them by position)."""
    for k, lst in enumerate(lists[1:8]):
        if lst and len(lst) != len(lists[0]):
            raise RuntimeError(f"backend='triton': {len(lists[0])} params but {len(lst)} {_LIST_NAMES[k]}")


def _check_shapes(lists) -> None:
    """Every grad and state tensor must have its param's shape (the 8-bit scales' counts are
    ``_check_blockwise_layout``'s): the kernels walk each param's ``numel`` elements in all of its tensors, so a
    smaller one (a param resized by ``p.data = ...`` after its state was made) would be read and
    written past its end. Checked with the layout, once per table: a table is keyed by every
    tensor's data pointer and every param's size, so a resized param, or state replaced by new
    tensors, gets a new table. (Not seen: a tensor resized in place, or one of another size that
    comes to lie at a freed state tensor's address with every other pointer unchanged; the
    optimizer checks its state's shapes whenever its state entries change.) Per call, the check
    would cost as much as the table lookup itself (~100 ns a tensor and list)."""
    params = lists[0]
    shapes = [p.shape for p in params]
    for k, lst in enumerate(lists[1:6]):
        if lst and [t.shape for t in lst] != shapes:
            i = next(i for i, (t, shape) in enumerate(zip(lst, shapes)) if t.shape != shape)
            kind = "grad" if k == 0 else f"state tensor ({_LIST_NAMES[k]})"
            raise RuntimeError(f"backend='triton': the {kind} of param {i} has shape {tuple(lst[i].shape)} but the "
                               f"param has {tuple(shapes[i])}; state made for another shape cannot be stepped")


def _check_layout(lists, state_dtype) -> None:
    """Every tensor of a row must be dense and laid out like its param: the kernels walk
    ``numel`` consecutive elements from each data pointer. Grads have the params' dtype, the four
    state lists ``state_dtype``; the counters (steps, Demon products) are one float64 element each.
    Shapes are ``_check_shapes``'s."""
    for name, counters in (("step", lists[6]), ("beta1_prod", lists[7])):
        for i, c in enumerate(counters):
            if c.dtype != torch.float64 or c.numel() != 1 or c.device != lists[0][i].device:
                raise RuntimeError(f"backend='triton': the {name} counter of param {i} must be one float64 element "
                                   f"on {lists[0][i].device}, got {c.dtype} {tuple(c.shape)} on {c.device}")
    for i, p in enumerate(lists[0]):
        if not is_dense(p):
            raise RuntimeError(f"backend='triton' needs dense params; param {i} has strides {p.stride()}")
        for k, lst in enumerate(lists[1:6]):
            dtype = p.dtype if k == 0 else state_dtype
            if lst and (not same_layout(lst[i], p) or lst[i].dtype != dtype):
                raise RuntimeError(
                    f"backend='triton': a {'grad' if k == 0 else 'state'} tensor of param {i} has dtype "
                    f"{lst[i].dtype} and strides {lst[i].stride()}; expected {dtype} and its param's {p.stride()}")


def _state_dtype(dtype, exp_avgs, stochastic_rounding, stochastic_state_rounding, offsets, n, block_size):
    """The state dtype of the group (its first buffer's), checked with the stochastic rounding
    arguments before any launch (docs/kernel-contract.md, "Mixed precision"); uint8 (codes) exactly
    when ``block_size > 0`` (8-bit state)."""
    state_dtype = exp_avgs[0].dtype if exp_avgs else dtype
    if (state_dtype == torch.uint8) != (block_size > 0):
        raise RuntimeError(f"backend='triton': exp_avgs[0] has dtype {state_dtype} but block_size is {block_size}: "
                           "uint8 state is 8-bit codes, which need block_size > 0, and only they do")
    if block_size > 0 and dtype not in (torch.float32, torch.bfloat16):
        raise RuntimeError(f"backend='triton': 8-bit state is for float32 and bfloat16 params, but params are {dtype}")
    if block_size > 0 and stochastic_state_rounding:
        raise RuntimeError("backend='triton': stochastic_state_rounding=True rounds bfloat16 state; 8-bit state is "
                           "rounded to its codes")
    mixed_ok = ((state_dtype == torch.float32 and dtype in (torch.float16, torch.bfloat16))
                or (state_dtype == torch.bfloat16 and dtype == torch.float32) or state_dtype == torch.uint8)
    if state_dtype != dtype and not mixed_ok:
        raise RuntimeError(f"backend='triton': {state_dtype} state for {dtype} params; the state must have "
                           "the params' dtype, be float32 for float16/bfloat16 params, or bfloat16 for float32 "
                           "params")
    if stochastic_rounding and dtype != torch.bfloat16:
        raise RuntimeError(f"backend='triton': stochastic_rounding=True rounds bfloat16 params, got {dtype}")
    if stochastic_state_rounding and state_dtype != torch.bfloat16:
        raise RuntimeError(f"backend='triton': stochastic_state_rounding=True rounds bfloat16 state, got "
                           f"{state_dtype}")
    if (stochastic_rounding or stochastic_state_rounding) and len(offsets) != n:
        raise RuntimeError(f"backend='triton': stochastic rounding needs one global offset per param "
                           f"({len(offsets)} for {n})")
    return state_dtype


def _blockwise_lists(lists, state_scales, code_books, block_size, device):
    """8-bit state: ``state_scales`` (every tensor's scales of exp_avgs, then of neg_exp_avgs,
    exp_avg_sqs, max_exp_avg_sqs where used; docs/kernel-contract.md, "8-bit blockwise state") as
    the four lists of the scales table, checked with ``code_books`` before any launch; ``[]`` without
    8-bit state (block_size 0), where neither may be given."""
    state_scales = list(state_scales or ())
    if block_size == 0:
        if state_scales or code_books is not None:
            raise RuntimeError("backend='triton': state_scales and code_books are for 8-bit state (block_size > 0)")
        return []
    if block_size < 16 or block_size > 2048 or block_size & (block_size - 1):
        raise RuntimeError(f"backend='triton': block_size must be 0 (no 8-bit state) or a power of two in "
                           f"[16, 2048], got {block_size}")
    n = len(lists[0])
    used = [bool(lst) for lst in lists[2:6]]
    if len(state_scales) != sum(used) * n:
        raise RuntimeError(f"backend='triton': state_scales has {len(state_scales)} tensors; 8-bit state needs one "
                           f"per tensor and state list ({sum(used)} lists of {n})")
    if (code_books is None or code_books.dtype != torch.float32 or code_books.shape != (4, 256)
            or not code_books.is_contiguous() or code_books.device != device):
        got = "none" if code_books is None else f"{code_books.dtype} {tuple(code_books.shape)} on {code_books.device}"
        raise RuntimeError(f"backend='triton': 8-bit state needs code_books, a contiguous float32 [4, 256] tensor on "
                           f"{device}; got {got}")
    columns, taken = [], 0
    for is_used in used:
        columns.append(state_scales[taken:taken + n] if is_used else [])
        taken += n if is_used else 0
    return columns


_DECISION_TABLES: dict = {}  # (data_ptr, device, version) -> (the books tensor, its table); a few at most
_DECISION_TABLES_KEPT = 8


def _decision_table(code_books: torch.Tensor) -> torch.Tensor:
    """The books followed by the O(1) code decision's table (state/code_buckets.py), built once per
    code-book tensor (``maps.tables`` hands out one per book and device): the first launch with a
    book reads it to the host, no later one does. The entry holds the books tensor itself, so its
    address cannot be reused by another while the entry lives."""
    key = (code_books.data_ptr(), code_books.device, code_books._version)
    entry = _DECISION_TABLES.get(key)
    if entry is None or entry[0] is not code_books:
        while len(_DECISION_TABLES) >= _DECISION_TABLES_KEPT:
            del _DECISION_TABLES[next(iter(_DECISION_TABLES))]
        entry = _DECISION_TABLES[key] = (code_books, code_buckets.decision_table(code_books))
    return entry[1]


def _check_blockwise_layout(lists, scale_columns, block_size) -> None:
    """Blocks follow each tensor's row-major index, which the kernels walk as memory order: params
    and codes must be contiguous, and each list of scales hold one float32 per block."""
    for i, p in enumerate(lists[0]):
        if not p.is_contiguous():
            raise RuntimeError(f"backend='triton': 8-bit state needs row-major contiguous params; param {i} has "
                               f"strides {p.stride()}")
        blocks = -(-p.numel() // block_size)
        for k, column in enumerate(scale_columns):
            if not column:
                continue
            s = column[i]
            if (s.dtype != torch.float32 or s.dim() != 1 or not s.is_contiguous() or s.numel() != blocks
                    or s.device != p.device):
                raise RuntimeError(
                    f"backend='triton': the scales of state list {k} of param {i} are {s.dtype} {tuple(s.shape)} on "
                    f"{s.device}; expected {blocks} contiguous float32 (blocks of {block_size}) on {p.device}")


def _check_lr_tensor(lr_tensor, device):
    if lr_tensor is not None and (lr_tensor.dtype != torch.float32 or lr_tensor.numel() != 1
                                  or lr_tensor.device != device):
        raise RuntimeError(f"backend='triton': lr_tensor must be a one-element float32 tensor on {device}, got "
                           f"{lr_tensor.dtype} {tuple(lr_tensor.shape)} on {lr_tensor.device}")


def _rows_like(p: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``rows`` (``[B, *p.shape]``) with every row laid out like ``p``, copied if it is not: the
    kernels walk row ``b`` as ``numel`` consecutive elements from ``data_ptr + b * numel``."""
    layout = (p.numel(), *p.stride())
    if p.numel() == 0 or rows.stride() == layout:
        return rows
    return torch.empty_strided(rows.shape, layout, dtype=p.dtype, device=p.device).copy_(rows)


def _int32(word: int) -> int:
    """A 32-bit word as a signed int32 kernel argument: Triton types an int argument by its value
    (i32 below 2^31, i64 above), so passing words as they are would compile a second kernel for
    seeds whose halves reach 2^31. The kernel converts it back to uint32 with the same bits."""
    return word - 2**32 if word >= 2**31 else word


def _check_noise(params, grads, grad_samples, offsets, noise_kind, sample_weights):
    """Raise before any launch if the noise arguments do not fit the group; returns ``B``."""
    n = len(params)
    if noise_kind not in NOISE_CODES.values():
        raise RuntimeError(f"backend='triton': unknown noise kind {noise_kind}")
    if noise_kind and len(offsets) != n:
        raise RuntimeError(f"backend='triton': noise needs one global offset per param, got {len(offsets)} for {n}")
    if noise_kind not in _ROW_NOISES:
        if len(grads) != n or grad_samples:
            raise RuntimeError("backend='triton': grads (and no grad_samples) are read unless the noise reads "
                               "grad_sample")
        return 0
    if len(grad_samples) != n or grads:
        raise RuntimeError("backend='triton': a noise that reads grad_sample takes one grad_sample per param "
                           "and no grads")
    batch = grad_samples[0].shape[0] if grad_samples[0].dim() else -1
    for i, (p, rows) in enumerate(zip(params, grad_samples)):
        if rows.shape != (batch, *p.shape) or rows.dtype != p.dtype or rows.device != p.device:
            raise RuntimeError(f"backend='triton': grad_sample {i} is {tuple(rows.shape)} {rows.dtype} on "
                               f"{rows.device}; expected [{batch}, *{tuple(p.shape)}] {p.dtype} on {p.device}")
    if noise_kind == NOISE_CODES["multiplicative"]:
        w = sample_weights
        if w is None or w.shape != (batch,) or w.dtype != torch.float32 or w.device != params[0].device:
            raise RuntimeError(f"backend='triton': multiplicative noise needs sample_weights, float32 [{batch}] "
                               f"on {params[0].device}")
    return batch


def fused_step(params, grads, exp_avgs, neg_exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, beta1_prods,
               grad_samples=(), *, momentum, lr, beta1, beta2, beta0, eps, weight_decay, decoupled, nesterov,
               maximize, demon_total_steps, demon_delay, grad_scale=None, found_inf=None, lr_tensor=None,
               sample_weights=None, offsets=(), noise_kind=0, seed=0, noise_std=0.0, noise_scale=0.0, noise_centered=False,
               stochastic_rounding=False, stochastic_state_rounding=False, state_scales=None, code_books=None,
               block_size=0) -> None:
    """One fused step of a (device, dtype) group: at most two launches, no host synchronisation.

    Noise (docs/kernel-contract.md, "Noise"): ``noise_kind`` a value of ``NOISE_CODES``, ``seed`` the
    stream's seed as a signed int64 (``seed_as_int64``), ``offsets`` each param's global element
    offset; diag_fisher and multiplicative read ``grad_samples`` (``[B, *param.shape]``) instead of
    ``grads``, and multiplicative the float32 ``[B]`` ``sample_weights``.
    Mixed precision ("Mixed precision"): the state lists may be float32 for float16/bfloat16 params,
    or bfloat16 for float32 params; ``stochastic_rounding`` rounds bfloat16 params, and
    ``stochastic_state_rounding`` bfloat16 state, with draws from ``seed`` at ``offsets``.
    ``lr_tensor``, a one-element float32 tensor on the params' device, replaces ``lr`` when given: the
    kernel reads it, so a captured step follows an LR schedule that writes it in place.
    8-bit state ("8-bit blockwise state"): ``block_size > 0``, the state lists hold uint8 codes,
    ``state_scales`` their float32 scales (list by list, as ``stream.blockwise_kwargs`` orders them)
    and ``code_books`` the ``[4, 256]`` table of ``maps.tables``; the launch block is then at least
    ``block_size``, so that every program holds whole blocks."""
    if not params:
        return
    device, dtype = params[0].device, params[0].dtype
    if dtype not in _STORAGE:
        raise RuntimeError(f"backend='triton' supports float32/float16/bfloat16/float64 params, not {dtype}")
    batch = _check_noise(params, grads, grad_samples, offsets, noise_kind, sample_weights)
    _check_lr_tensor(lr_tensor, device)
    state_dtype = _state_dtype(dtype, exp_avgs, stochastic_rounding, stochastic_state_rounding, offsets, len(params),
                               block_size)
    lists = [params, grads, exp_avgs, neg_exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, beta1_prods, grad_samples]
    scale_columns = _blockwise_lists(lists, state_scales, code_books, block_size, device)
    _check_lengths(lists)
    lists[1] = [g if same_layout(g, p) else torch.empty_like(p).copy_(g) for p, g in zip(params, grads)]
    lists[8] = [_rows_like(p, rows) for p, rows in zip(params, grad_samples)]
    block, num_warps = tables.launch_shape(device)
    block = max(block, block_size)  # powers of two: a multiple of the quantization block
    draws = noise_kind or stochastic_rounding or stochastic_state_rounding  # per-element: global offsets
    table = tables.get(lists, offsets if draws else (), block, scale_columns, block_size)
    if not table.layout_checked:  # once per table: see _check_shapes
        _check_shapes(lists)
        _check_layout(lists, state_dtype)
        if block_size:
            _check_blockwise_layout(lists, scale_columns, block_size)
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
    weights = sample_weights if noise_kind == NOISE_CODES["multiplicative"] else table.scalars
    seed_word = seed % 2**64

    k.scalars_kernel[(triton.cdiv(table.n_tensors, _BLOCK_T),)](
        table.ptrs, table.n_tensors, table.scalars, inf, lr_tensor if lr_tensor is not None else table.scalars,
        *split(lr), *split(weight_decay), *split(beta1), *split(beta2),
        *split(demon_start if demon else 0.0), *split(demon_len if demon else 1.0),
        MOMENTUM=momentum, SECOND_MOMENT=second_moment, DEMON=demon, TRACK_PROD=bool(beta1_prods),
        HAS_FOUND_INF=found_inf is not None, LR_TENSOR=lr_tensor is not None, BLOCK_T=_BLOCK_T, num_warps=4)
    if table.n_blocks == 0:
        return
    norm = math.sqrt((1.0 + beta0) ** 2 + beta0**2)
    args = (*split(weight_decay), *split(beta2), *split(1.0 - beta2),
            *split(eps), *split((1.0 + beta0) / norm), *split(beta0 / norm),
            batch, _int32(seed_word & 0xFFFFFFFF), _int32(seed_word >> 32), *split(noise_std), *split(noise_scale))
    flags = dict(
        MOMENTUM=momentum, SECOND_MOMENT=second_moment, AMSGRAD=amsgrad, NESTEROV=nesterov, MAXIMIZE=maximize,
        DECOUPLED=decoupled, HAS_GRAD_SCALE=grad_scale is not None,
        HAS_FOUND_INF=found_inf is not None, ALIGNED=table.aligned, NOISE=noise_kind,
        CENTERED=bool(noise_centered) and noise_kind == NOISE_CODES["diag_fisher"],
        ROWS_ALIGNED=table.rows_aligned and noise_kind in _ROW_NOISES,
        ROUND_PARAMS=bool(stochastic_rounding),
        # B as a constant under the interpreter (which then runs CPU tensors): see grad.form_grad.
        STATIC_BATCH=batch if device.type == "cpu" else 0, BLOCK=block, num_warps=num_warps)
    tensors = (table.ptrs, table.numels, table.block_tensor, table.block_chunk, table.scalars, scale, inf, weights)
    if block_size:
        k.update_8bit_kernel[(table.n_blocks,)](*tensors, table.scale_ptrs, _decision_table(code_books), *args,
                                                DTYPE=storage,
                                                QUANT_BLOCK=block_size, **flags)
    else:
        k.update_kernel[(table.n_blocks,)](*tensors, *args, DTYPE=storage,
                                           STATE_DTYPE=getattr(tl, _STORAGE[state_dtype]), COMPUTE=compute,
                                           ROUND_STATE=bool(stochastic_state_rounding), **flags)
