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
    the saved buffers of the groups that set a ``state_dtype``, converted once. torch's loader casts
    every state tensor but ``step`` to its param's dtype, which would round a Demon product or
    float32 state through bfloat16; a bfloat16-state checkpoint is upcast exactly."""
    for group, saved_group, state_dtype in zip(optimizer.param_groups, state_dict["param_groups"], state_dtypes):
        group["state_dtype"] = state_dtype
        for index, p in zip(saved_group["params"], group["params"]):
            for key, value in state_dict["state"].get(index, {}).items():
                if key in COUNTERS:
                    # On the CPU here; the step moves it where its backend reads it (_init_state).
                    optimizer.state[p][key] = torch.as_tensor(value).to(dtype=torch.float64)
                elif state_dtype is not None and torch.is_tensor(value) and value.is_floating_point():
                    optimizer.state[p][key] = value.to(device=p.device, dtype=state_dtype)
