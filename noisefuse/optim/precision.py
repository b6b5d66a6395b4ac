"""Mixed precision in the optimizers: the ``state_dtype`` argument and how a checkpoint's state
meets it (docs/kernel-contract.md and docs/integration.md, "Mixed precision").

The update is computed in float32 for float32/float16/bfloat16 params whatever the storage;
``state_dtype`` says where its state is kept: ``None`` (the param's dtype, one rounding per state
tensor per step), ``torch.float32`` (no rounding of the state at all, 4 bytes per element per buffer
instead of 2), or ``torch.bfloat16`` (2 bytes, also for float32 params). ``state_rounding`` says how
bfloat16 state is stored: ``"stochastic"`` (unbiased, with bits from the group's stream; the default
with ``state_dtype=torch.bfloat16``) or ``"nearest"`` (the default for the bfloat16 state of
bfloat16 params under ``state_dtype=None``, as torch.optim stores it). Rounded to nearest, a bfloat16
second moment moves only when ``(1 - beta2) |g^2 - v|`` exceeds half its ulp (``v/512`` to ``v/256``):
at beta2 = 0.999 it never decays and grows only while ``g^2 > 3 v`` or so (docs/integration.md,
"Less memory: bfloat16 state", measures it).
"""
from __future__ import annotations

import torch

from ..state.blockwise import SCALES_SUFFIX, Blockwise8bit, as_blockwise, decode, encode, zero_code
from ..state.blockwise import SIGNED_FIELDS

# The 0-d counters are float64 whatever the params (exact step counts and Demon products); every
# other floating state tensor is a buffer.
COUNTERS = ("step", "beta1_prod")


STATE_ROUNDINGS = ("stochastic", "nearest")


def check_state_dtype(state_dtype, params) -> None:
    """``state_dtype``: None (the param's dtype), torch.float32, torch.bfloat16 (for float32 and
    bfloat16 params), or the dtype of every param of the group. Narrowing float64 state is refused."""
    if state_dtype is None:
        return
    params = list(params)
    if as_blockwise(state_dtype) is not None:
        refused = sorted({str(p.dtype) for p in params} - {"torch.float32", "torch.bfloat16"})
        if refused:
            raise ValueError(f"Invalid state_dtype: 8-bit blockwise state is for float32 and bfloat16 params, this "
                             f"group has {', '.join(refused)} params")
        return
    bfloat16_ok = state_dtype == torch.bfloat16 and all(p.dtype in (torch.float32, torch.bfloat16) for p in params)
    if not isinstance(state_dtype, torch.dtype) or not (
            state_dtype == torch.float32 or bfloat16_ok or all(p.dtype == state_dtype for p in params)):
        raise ValueError(f"Invalid state_dtype: {state_dtype!r} (must be None, torch.float32, torch.bfloat16 for "
                         "float32/bfloat16 params, or the dtype of every param of the group)")
    if state_dtype != torch.float64 and any(p.dtype == torch.float64 for p in params):
        raise ValueError(f"Invalid state_dtype: {state_dtype!r} would narrow the state of float64 params (use None)")


def check_state_rounding(state_rounding, state_dtype, params) -> None:
    """``state_rounding``: None (the default of the state's dtype), or one of STATE_ROUNDINGS;
    ``"stochastic"`` only where every param's state is bfloat16."""
    if state_rounding is None:
        return
    if state_rounding not in STATE_ROUNDINGS:
        raise ValueError(f"Invalid state_rounding: {state_rounding!r} (must be None, 'stochastic' or 'nearest')")
    if state_rounding == "stochastic" and as_blockwise(state_dtype) is not None:
        raise ValueError("Invalid state_rounding: 'stochastic' rounds bfloat16 state; 8-bit blockwise state is "
                         "rounded to the nearest code (an amsgrad maximum up): use None or 'nearest'")
    if state_rounding == "stochastic":
        dtypes = {p.dtype if state_dtype is None else state_dtype for p in params}
        if dtypes - {torch.bfloat16}:
            raise ValueError(f"Invalid state_rounding: 'stochastic' rounds bfloat16 state, but this group keeps "
                             f"{', '.join(sorted(str(d) for d in dtypes - {torch.bfloat16}))} state "
                             "(use state_dtype=torch.bfloat16)")


def may_round_state(group) -> bool:
    """Whether the group stores any state stochastically, read from its settings alone (no pass
    over its params): ``check_state_rounding`` has made "stochastic" imply bfloat16 state."""
    rounding = group["state_rounding"]
    return rounding == "stochastic" or (rounding is None and group["state_dtype"] == torch.bfloat16)


def rounds_state(group, param_dtype) -> bool:
    """Whether the group's state of ``param_dtype`` params is stored stochastically (module docstring)."""
    state_dtype = group["state_dtype"] or param_dtype
    if state_dtype != torch.bfloat16:
        return False
    rounding = group["state_rounding"]
    if rounding is None:
        rounding = "stochastic" if group["state_dtype"] == torch.bfloat16 else "nearest"
    return rounding == "stochastic"


def keep_state_dtypes(optimizer, state_dict, state_dtypes) -> None:
    """After ``torch.optim.Optimizer.load_state_dict``: give each group back its ``state_dtypes``
    entry (this optimizer's), take the saved counters straight from ``state_dict`` as float64, and
    the saved buffers of the groups that set a ``state_dtype`` or saved 8-bit state, converted once.
    torch's loader casts every state tensor but ``step`` to its param's dtype, which would round a
    Demon product or float32 state through bfloat16, and turn 8-bit codes into floats; a
    bfloat16-state checkpoint is upcast exactly; 8-bit state is decoded with the checkpoint's
    block size and code book, and quantized for a group that keeps 8-bit state (float32 state
    then rounds to the nearest code, once)."""
    for gi, (group, saved_group, state_dtype) in enumerate(
            zip(optimizer.param_groups, state_dict["param_groups"], state_dtypes)):
        group["state_dtype"] = state_dtype
        spec, saved_spec = as_blockwise(state_dtype), as_blockwise(saved_group.get("state_dtype"))
        fields = {key: field for field, key in optimizer._state_keys(group).items()}
        for index, p in zip(saved_group["params"], group["params"]):
            saved, state = state_dict["state"].get(index, {}), optimizer.state[p]
            quantized = spec is not None and spec.quantizes(p)
            for key, value in saved.items():
                if key in COUNTERS:
                    # On the CPU here; the step moves it where its backend reads it (_init_state).
                    state[key] = torch.as_tensor(value).to(dtype=torch.float64)
                    continue
                if key.endswith(SCALES_SUFFIX):
                    continue  # restored (or dropped) with its codes
                if not torch.is_tensor(value):
                    continue
                field = fields.get(key)
                if value.dtype == torch.uint8:
                    scales = saved[key + SCALES_SUFFIX]
                    if _local(value) is value:
                        scales = scales.reshape(-1)  # by rows in a full state dict of a Shard(0) run
                    if quantized and same_codes(spec, saved_spec):
                        state[key] = value.to(p.device)
                        state[key + SCALES_SUFFIX] = scales.to(p.device)
                        continue
                    value = _decoded(value.to(p.device), scales.to(p.device), saved_spec, field)
                elif state_dtype is None:
                    continue  # torch's loader has cast it to the param's dtype, as before
                if quantized:
                    state.pop(key, None)  # ensure_8bit_state quantizes it
                    state[key] = value.to(p.device)
                    ensure_8bit_state(state, field, key, p, spec)
                else:
                    dtype = torch.float32 if spec is not None else state_dtype or p.dtype
                    state[key] = value.to(device=p.device, dtype=dtype)
            for key in [k for k in state if k.endswith(SCALES_SUFFIX)]:
                codes = state.get(key[:-len(SCALES_SUFFIX)])
                if codes is None or codes.dtype != torch.uint8:
                    del state[key]  # torch's loader copied the scales of codes decoded above

def _decoded(codes, scales, spec: Blockwise8bit, field):
    """``decode`` of each shard's own blocks, placed like the codes when they are a DTensor."""
    local = _local(codes)
    values = decode(local, _local(scales).reshape(-1), spec, field)
    if local is codes:
        return values
    return type(codes).from_local(values, codes.device_mesh, codes.placements, run_check=False, shape=codes.shape,
                                  stride=values.stride())


def ensure_float_state(state, key, p, dtype) -> None:
    """``state[key]``: zeros like ``p`` of ``dtype`` when missing, converted once when of another dtype."""
    buf = state.get(key)
    if buf is None:
        # zeros_like keeps a DTensor param's placement whatever the dtype (FSDP2).
        state[key] = torch.zeros_like(p, memory_format=torch.preserve_format, dtype=dtype)
    elif buf.dtype == torch.uint8:
        raise RuntimeError(f"state {key!r} holds 8-bit codes, but this group keeps {dtype} state for this param: "
                           "8-bit state is converted by load_state_dict, which knows its block size and code book")
    elif buf.dtype != dtype:
        # State of another dtype (e.g. bfloat16 state, float32 now asked for): converted
        # once; the fused kernels read one state dtype per call.
        state[key] = buf.to(dtype)


def _local(t):
    """A DTensor's local shard (the blocks of 8-bit state are each shard's own), else ``t``."""
    return getattr(t, "_local_tensor", t)


def _placed_scales(local_scales, codes, spec: Blockwise8bit):
    """The scales of ``codes`` as the state keeps them: for a DTensor, a DTensor of
    ``spec.scales_shape`` placed like its codes (``torch.distributed.checkpoint`` then saves and
    reshards them with their rows); else the flat local tensor."""
    if _local(codes) is codes:
        return local_scales
    shape = spec.scales_shape(codes)
    local = local_scales.view(-1, *shape[1:])
    return type(codes).from_local(local, codes.device_mesh, codes.placements, run_check=False, shape=shape,
                                  stride=local.stride())


def ensure_8bit_state(state, field, key, p, spec: Blockwise8bit) -> None:
    """``state[key]`` (uint8 codes like ``p``) and ``state[key + "_scales"]`` (float32, one per block
    of the local tensor, ``_placed_scales``): zeros when missing; float state quantized once."""
    buf, scales_key = state.get(key), key + SCALES_SUFFIX
    if buf is None:
        code = zero_code(spec, signed=field in SIGNED_FIELDS)
        codes = torch.full_like(p, code, memory_format=torch.contiguous_format, dtype=torch.uint8)
        scales = torch.zeros(spec.num_blocks(_local(p).numel()), dtype=torch.float32, device=_local(p).device)
        state[key], state[scales_key] = codes, _placed_scales(scales, codes, spec)
    elif buf.dtype != torch.uint8:
        local = _local(buf)
        codes, scales = encode(local.float(), spec, field)
        if local is not buf:  # a DTensor: the codes are placed like it
            codes = type(buf).from_local(codes, buf.device_mesh, buf.placements, run_check=False,
                                         shape=buf.shape, stride=codes.stride())
        state[key], state[scales_key] = codes, _placed_scales(scales, codes, spec)
    else:
        check_8bit_buffer(key, buf, state.get(scales_key), spec)


def same_codes(a: Blockwise8bit | None, b: Blockwise8bit | None) -> bool:
    """Whether codes of format ``a`` mean what they mean in ``b`` (``min_numel`` aside)."""
    return a is not None and b is not None and (a.block_size, a.code_book) == (b.block_size, b.code_book)


def check_8bit_buffer(key, codes, scales, spec: Blockwise8bit, where="") -> None:
    """Codes of ``key`` with scales that fit them: float32, one per block of ``spec`` in each local
    tensor; placed like the codes and of ``spec.scales_shape`` when the codes are a DTensor."""
    local_codes, local_scales = _local(codes), _local(scales)
    need = spec.num_blocks(local_codes.numel())
    shape = spec.scales_shape(codes)
    fits = torch.is_tensor(scales) and scales.dtype == torch.float32 and local_scales.numel() == need
    if fits and local_codes is not codes:
        fits = local_scales is not scales and tuple(scales.shape) == shape and scales.placements == codes.placements
    elif fits:  # flat, or by rows as a full state dict gathered from a Shard(0) run holds them
        fits = local_scales is scales and (scales.dim() == 1 or (
            scales.dim() == 2 and codes.dim() > 0 and scales.shape[0] == codes.shape[0]))
    if not fits:
        got = "none" if scales is None else f"{tuple(scales.shape)} {scales.dtype}" if torch.is_tensor(scales) else \
            repr(scales)
        if torch.is_tensor(scales) and local_scales is not scales:
            got += f" placed {tuple(scales.placements)}"
        need = f"{need} float32 scales" if local_codes is codes else \
            f"float32 scales {shape} placed {tuple(codes.placements)} ({need} in this shard)"
        raise ValueError(f"state {key!r}{where} holds {local_codes.numel()} 8-bit codes, which in blocks of "
                         f"{spec.block_size} need {need} in {key + SCALES_SUFFIX!r}: it has {got}")


def check_saved_8bit_state(state, saved_state_dtype, where) -> None:
    """The 8-bit buffers of one param's saved ``state``: each with the scales its group's format needs."""
    spec = as_blockwise(saved_state_dtype)
    for key, value in state.items():
        if key.endswith(SCALES_SUFFIX) or not (torch.is_tensor(value) and value.dtype == torch.uint8):
            continue
        if spec is None:
            raise ValueError(f"state {key!r}{where} holds 8-bit codes, but its param group's state_dtype "
                             f"({saved_state_dtype!r}) says nothing of their blocks")
        check_8bit_buffer(key, value, state.get(key + SCALES_SUFFIX), spec, where)
