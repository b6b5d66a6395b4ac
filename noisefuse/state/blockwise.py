r"""8-bit blockwise optimizer state: ``state_dtype=noisefuse.state.Blockwise8bit()``
(docs/integration.md, "Less memory: 8-bit state"; the bit-level contract: docs/kernel-contract.md,
"8-bit blockwise state").

Each state buffer of a param is cut, along the param's own flat (row-major) index, into blocks of
``block_size`` elements (under FSDP2, the local shard's: a param cut along dim 0 keeps 8-bit state
only when its rows are whole blocks, so that a shard's blocks are the unsharded param's and its
scales can be cut with the rows, ``Blockwise8bit.scales_shape``); a block keeps one float32 scale, its largest magnitude, and one uint8 code
per element (maps.py). Momentum buffers use the signed book; the second moment ``v`` and its
amsgrad maximum are stored as :math:`\sqrt v` in the unsigned book, which halves the dynamic range
the codes must span. Each step dequantizes a block, updates it in float32, takes the new scale and
quantizes it again:

- nearest code, ties to the lower one, decided against ``midpoint * scale`` (a product, no
  division: the same float32 number on every backend);
- an unsigned positive value never gets code 0 (the first decision point is 0);
- an amsgrad maximum is rounded up (decided against ``value * scale``), so it never decreases;
- the scale is the largest *finite* magnitude of the block: a NaN or infinity (a bad gradient)
  cannot poison the other elements of its block; the element itself is stored as 0 for NaN and as
  the saturated code for an infinity.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import maps

SCALES_SUFFIX = "_scales"  # state key of a buffer's scales: "exp_avg" -> "exp_avg_scales"
MIN_BLOCK, MAX_BLOCK = 16, 2048


@dataclass(frozen=True)
class Blockwise8bit:
    """8-bit blockwise state for float32 and bfloat16 params.

    Args:
        block_size: elements per scale, a power of two in [16, 2048] (default 256, as bitsandbytes
            and torchao): 4 / block_size bytes of scale per element and buffer.
        code_book: ``"dynamic"`` (default) or ``"linear"`` (maps.py).
        min_numel: params with fewer elements (the global count under FSDP2) keep float32 state
            (default 4096, as bitsandbytes): biases and norms are a sliver of the memory and the
            most sensitive to quantization.
    """

    block_size: int = 256
    code_book: str = "dynamic"
    min_numel: int = 4096

    def __post_init__(self):
        b = self.block_size
        if isinstance(b, bool) or not isinstance(b, int) or b <= 0 or b & (b - 1) or not MIN_BLOCK <= b <= MAX_BLOCK:
            raise ValueError(f"Invalid block_size: {b!r} (must be a power of two in [{MIN_BLOCK}, {MAX_BLOCK}])")
        if self.code_book not in maps.MAPS:
            raise ValueError(f"Invalid code_book: {self.code_book!r} (choose from {', '.join(maps.MAPS)})")
        if isinstance(self.min_numel, bool) or not isinstance(self.min_numel, int) or self.min_numel < 0:
            raise ValueError(f"Invalid min_numel: {self.min_numel!r} (must be an int >= 0)")

    def as_dict(self) -> dict:
        """Plain values, as a param group keeps them (a checkpoint that ``weights_only`` loads)."""
        return {"format": "blockwise8bit", "block_size": self.block_size, "code_book": self.code_book,
                "min_numel": self.min_numel}

    def quantizes(self, param) -> bool:
        """Whether ``param``'s state is 8-bit (else float32): by its global element count and, for a
        DTensor param cut along dim 0 (FSDP2's ``Shard(0)``), whether its rows are whole blocks, so
        that each shard's blocks are the global ones (``sharded_rows``)."""
        if param.numel() < self.min_numel:
            return False
        return sharded_rows(param) is None or self.rows_are_whole_blocks(param.shape)

    def rows_are_whole_blocks(self, shape) -> bool:
        """Whether a param of ``shape`` cut along dim 0 keeps 8-bit state: its rows are whole blocks."""
        rows = shape[0] if len(shape) else 1
        return rows == 0 or (math.prod(shape) // rows) % self.block_size == 0

    def scales_shape(self, codes) -> tuple:
        """The global shape of the scales of ``codes`` (shaped like their param): ``[num_blocks]``,
        or ``[rows, row_length / block_size]`` for a param cut along dim 0, so that the scales are
        cut with the same rows (state that ``torch.distributed.checkpoint`` reshards)."""
        rows = sharded_rows(codes)
        return (self.num_blocks(codes.numel()),) if rows is None else (rows[0], rows[1] // self.block_size)

    def num_blocks(self, numel: int) -> int:
        return -(-numel // self.block_size)


def sharded_rows(t):
    """(rows, row length) of a DTensor cut along dim 0 (``Shard(0)`` among its placements), else
    None. Only ``Shard(0)`` and ``Replicate`` keep every block of 8-bit state within one shard: any
    other placement is refused, naming it."""
    placements = getattr(t, "placements", None)
    if placements is None:
        return None
    refused = [pl for pl in placements if not (pl.is_replicate() or pl.is_shard(0))]
    if refused:
        raise NotImplementedError(
            f"8-bit state supports DTensor params placed Shard(0) (FSDP2) or Replicate; this one is placed "
            f"{tuple(placements)}: its blocks would cross shards. Use state_dtype=torch.bfloat16 or float32 state")
    if not any(pl.is_shard(0) for pl in placements):
        return None
    rows = t.shape[0] if t.dim() else 1
    return rows, (t.numel() // rows if rows else math.prod(t.shape[1:]))


def as_blockwise(value) -> Blockwise8bit | None:
    """The Blockwise8bit a group's ``state_dtype`` stands for (itself or its ``as_dict``), else None."""
    if isinstance(value, Blockwise8bit):
        return value
    if isinstance(value, dict) and value.get("format") == "blockwise8bit":
        return Blockwise8bit(**{k: v for k, v in value.items() if k != "format"})
    return None


def _blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """``x`` flattened (row-major) and zero-padded to whole blocks: [num_blocks, block]."""
    flat = x.reshape(-1)
    pad = -flat.numel() % block
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return flat.view(-1, block)


def quantize(x: torch.Tensor, spec: Blockwise8bit, signed: bool, round_up: bool = False):
    """(uint8 codes shaped like ``x``, float32 scales [num_blocks]) of float32 ``x`` (module docstring)."""
    xb = _blocks(x.float(), spec.block_size)
    scales = torch.where(xb.isfinite(), xb.abs(), 0.0).amax(dim=1) if xb.numel() else xb.new_zeros(0)
    book = maps.tables(spec.code_book, x.device)
    row = (maps.UNSIGNED_VALUES if round_up else maps.UNSIGNED_MIDPOINTS) if not signed else maps.SIGNED_MIDPOINTS
    points = book[row, :maps.NUM_CODES - 1]
    # code = how many decision points times the scale lie strictly below the value: what the kernels'
    # binary search computes (the products are sorted, as the points are and the scale is >= 0).
    thresholds = points[None, :] * scales[:, None]
    values = torch.where(xb.isnan(), 0.0, xb).contiguous()
    codes = torch.searchsorted(thresholds.contiguous(), values, right=False)
    return codes.to(torch.uint8).reshape(-1)[:x.numel()].view(x.shape), scales


def dequantize(codes: torch.Tensor, scales: torch.Tensor, spec: Blockwise8bit, signed: bool) -> torch.Tensor:
    """float32 ``values[codes] * scale`` of each element's block, shaped like ``codes``."""
    book = maps.tables(spec.code_book, codes.device)[maps.SIGNED_VALUES if signed else maps.UNSIGNED_VALUES]
    n = codes.numel()
    per_element = scales.repeat_interleave(spec.block_size)[:n] if n else scales.new_zeros(0)
    return (book[codes.reshape(-1).long()] * per_element).view(codes.shape)


def zero_code(spec: Blockwise8bit, signed: bool) -> int:
    """The code of 0 (what fresh state holds, with scales 0)."""
    values = maps.code_book(spec.code_book, signed)
    return values.index(0.0)


# How each buffer field of the fused step is stored: momentum signed, second moments as sqrt(v).
SIGNED_FIELDS = ("exp_avgs", "neg_exp_avgs")
SQRT_FIELDS = ("exp_avg_sqs", "max_exp_avg_sqs")


def encode(x: torch.Tensor, spec: Blockwise8bit, field: str):
    """(codes, scales) of the float values ``x`` of buffer ``field`` (a StepTensors list name)."""
    if field in SIGNED_FIELDS:
        return quantize(x, spec, signed=True)
    # The contract's sqrt is correctly rounded; torch's float32 sqrt on the CPU (Sleef's, 0.5001 ulp)
    # is not, in about 0.7% of inputs. The float64 root of a float32, rounded to float32, is.
    root = x.float().double().sqrt().float()
    return quantize(root, spec, signed=False, round_up=field == "max_exp_avg_sqs")


def decode(codes, scales, spec: Blockwise8bit, field: str) -> torch.Tensor:
    """The float32 values that (codes, scales) of buffer ``field`` stand for (v, not sqrt(v))."""
    if field in SIGNED_FIELDS:
        return dequantize(codes, scales, spec, signed=True)
    root = dequantize(codes, scales, spec, signed=False)
    return root * root


def state_bytes(numel: int, spec: Blockwise8bit) -> int:
    """Bytes of one 8-bit buffer of ``numel`` elements: codes and scales."""
    return numel + 4 * spec.num_blocks(numel)

