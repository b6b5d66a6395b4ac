"""Device tables of the multi-tensor launch, and the launch shape per GPU generation.

A group of ``n`` tensors is described to the kernels by one int64 buffer on their device:

    ptrs         [n, 10] data pointers: param, grad, exp_avg, neg_exp_avg, exp_avg_sq,
                         max_exp_avg_sq, step, beta1_prod, grad_sample (0 where a list is unused),
                         then the tensor's global element offset for the noise (0 without noise)
    numels       [n]     elements per tensor
    block_tensor [nb]    block -> index of its tensor
    block_chunk  [nb]    block -> index of the block within its tensor (offset = chunk * BLOCK)

plus, for 8-bit state, ``scale_ptrs`` ``[n, 4]``: the data pointers of the float32 scales of
exp_avg, neg_exp_avg, exp_avg_sq and max_exp_avg_sq (0 where a list is unused), and a float64
``[n, 8]`` scratch table of per-tensor coefficients that the first launch writes and the second
reads. A table is built and uploaded once and reused while the tensors' data pointers
(and sizes) are unchanged; new pointers (``zero_grad(set_to_none=True)`` followed by a backward that
allocates elsewhere, a ``load_state_dict``...) build a new one. Tables used while a CUDA graph is
being captured are never evicted, since the graph keeps reading them on replay.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from . import kernels

N_COLS, N_SCALARS, N_SCALE_COLS = kernels.N_COLS.value, kernels.N_SCALARS.value, kernels.N_SCALE_COLS.value

# Distinct tables kept per process: steady training hits one; a few more cover alternating
# allocation patterns (e.g. two optimizers, or grads that land on two addresses in turn).
MAX_CACHED = 16

_ALIGN = 16  # bytes: the kernels use 128-bit accesses when every pointer is this aligned


def launch_shape(device: torch.device) -> tuple[int, int]:
    """``(BLOCK, num_warps)`` for ``device``, fixed per GPU generation rather than autotuned: an
    autotuner benchmarks a kernel by running it, which would apply the in-place update several times.

    Hopper and later have the bandwidth to want more bytes in flight per program (16 elements per
    thread at 8 warps); Ampere 8 per thread; older GPUs 4 per thread. The CPU interpreter runs one
    program at a time at a cost per operation, not per element, so it takes the largest block.
    ``NOISEFUSE_TRITON_BLOCK`` overrides the block (a power of two), for tests and tuning.
    """
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        block, warps = (4096, 8) if major >= 9 else (2048, 8) if major >= 8 else (1024, 4)
    else:
        block, warps = 4096, 4
    override = os.environ.get("NOISEFUSE_TRITON_BLOCK")
    if override:
        block = int(override)
        if block < 16 or block & (block - 1):
            raise ValueError(f"NOISEFUSE_TRITON_BLOCK must be a power of two >= 16, got {override}")
        warps = max(1, min(warps, block // 128))
    return block, warps


@dataclass
class Table:
    """The device tables of one group (see the module docstring)."""

    ptrs: torch.Tensor
    numels: torch.Tensor
    block_tensor: torch.Tensor
    block_chunk: torch.Tensor
    scalars: torch.Tensor
    n_tensors: int
    n_blocks: int
    aligned: bool
    rows_aligned: bool  # aligned, and every grad_sample row a multiple of 16 bytes long
    scale_ptrs: torch.Tensor | None = None  # 8-bit state only
    layout_checked: bool = False
    _keep: list = field(default_factory=list)  # pinned host copy, alive until its upload completes


@dataclass
class Stats:
    builds: int = 0
    hits: int = 0


stats = Stats()
_cache: OrderedDict = OrderedDict()
_pinned: dict = {}  # tables captured into CUDA graphs


def clear() -> None:
    """Forget every cached table (captured ones included)."""
    _cache.clear()
    _pinned.clear()


def _ptr_columns(lists):
    """Per list, the data pointers of its tensors (zeros for an unused list)."""
    n = len(lists[0])
    return [[t.data_ptr() for t in lst] if lst else [0] * n for lst in lists]


def get(lists, offsets, block: int, scales=(), quant_block: int = 0) -> Table:
    """The table of the tensor ``lists`` (in the pointer column order of the module docstring; each
    empty or of one length) and the noise's global element ``offsets`` (empty without noise), built on
    a miss. ``block`` is the launch's block size. 8-bit state: ``scales`` the four lists of scales
    (each empty or of one length), ``quant_block`` their block size (part of the key, so that a
    table's layout check covers the scales' lengths)."""
    assert len(lists) + 1 == N_COLS, "one list per pointer column, then the offsets"
    assert not scales or len(scales) == N_SCALE_COLS, "one list of scales per scales column"
    params = lists[0]
    columns = _ptr_columns(lists)
    scale_columns = _ptr_columns(scales) if scales else []
    numels = [p.numel() for p in params]
    offsets = list(offsets) if offsets else [0] * len(params)
    key = (params[0].device, block, quant_block, tuple(numels), tuple(offsets), *map(tuple, columns),
           *map(tuple, scale_columns))
    table = _cache.get(key)
    if table is None:
        table = _build(columns, scale_columns, offsets, numels, params[0].element_size(), block, params[0].device)
        stats.builds += 1
        _cache[key] = table
        if len(_cache) > MAX_CACHED:
            _cache.popitem(last=False)
    else:
        stats.hits += 1
        _cache.move_to_end(key)
    if params[0].is_cuda and torch.cuda.is_current_stream_capturing():
        _pinned[key] = table
    return table


def _build(columns, scale_columns, offsets, numels, itemsize, block, device) -> Table:
    n = len(numels)
    ptrs = torch.tensor(columns + [offsets], dtype=torch.int64).t().contiguous()  # [n, N_COLS]
    scale_ptrs = torch.tensor(scale_columns, dtype=torch.int64).t().reshape(-1)  # [n * N_SCALE_COLS]
    sizes = torch.tensor(numels, dtype=torch.int64)
    chunks = (sizes + block - 1) // block
    block_tensor = torch.repeat_interleave(torch.arange(n, dtype=torch.int64), chunks)
    first_block = torch.cumsum(chunks, 0) - chunks
    block_chunk = torch.arange(block_tensor.numel(), dtype=torch.int64) - first_block[block_tensor]
    nb = block_tensor.numel()
    # Sections padded to an even length keep every view 16-byte aligned, so the kernels compile
    # once instead of once per parity of n and of the block count.
    sections = [ptrs.reshape(-1), sizes, block_tensor, block_chunk, scale_ptrs]
    cuts = [sec.numel() + sec.numel() % 2 for sec in sections]
    host = torch.zeros(sum(cuts), dtype=torch.int64)
    start = 0
    for sec, cut in zip(sections, cuts):
        host[start:start + sec.numel()] = sec
        start += cut
    aligned = all(addr % _ALIGN == 0 for col in columns for addr in col)
    rows_aligned = aligned and all(numel * itemsize % _ALIGN == 0 for numel in numels)

    keep = []
    if device.type == "cuda":
        # One upload per build; from pinned memory so it is asynchronous and allowed while a CUDA
        # graph is being captured. The host copy must outlive the copy, so the table keeps it.
        host = host.pin_memory()
        keep.append(host)
        flat = host.to(device, non_blocking=True)
    else:
        flat = host.to(device)
    ptrs_d, numels_d, bt_d, bc_d, scale_ptrs_d = (view[:sec.numel()] for view, sec in
                                                  zip(torch.split(flat, cuts), sections))
    scalars = torch.zeros(n, N_SCALARS, dtype=torch.float64, device=device)
    return Table(ptrs_d, numels_d, bt_d, bc_d, scalars, n, nb, aligned, rows_aligned,
                 scale_ptrs_d if scale_columns else None, _keep=keep)
