"""Mixed precision in the optimizers: the ``state_dtype`` argument and how a checkpoint's state
meets it (docs/kernel-contract.md and docs/integration.md, "Mixed precision").

The update is computed in float32 for float16/bfloat16 params whatever the storage; ``state_dtype``
says where its state is kept: ``None`` (the param's dtype, one rounding per state tensor per step)
or ``torch.float32`` (no rounding of the state at all, 4 bytes per element per buffer instead of 2).
"""
from __future__ import annotations

import torch

# The 0-d counters are float64 whatever the params (exact step counts and Demon products); every
# other floating state tensor is a buffer.
COUNTERS = ("step", "beta1_prod")


def check_state_dtype(state_dtype, params) -> None:
    """``state_dtype``: None (the param's dtype), torch.float32, or the dtype of every param of the
    group. float32 state for float64 params would narrow it and is refused too."""
    if state_dtype is None:
        return
    params = list(params)
    if not isinstance(state_dtype, torch.dtype) or not (
            state_dtype == torch.float32 or all(p.dtype == state_dtype for p in params)):
        raise ValueError(f"Invalid state_dtype: {state_dtype!r} (must be None, torch.float32, or the dtype of "
                         "every param of the group)")
    if state_dtype != torch.float64 and any(p.dtype == torch.float64 for p in params):
        raise ValueError(f"Invalid state_dtype: {state_dtype!r} would narrow the state of float64 params (use None)")


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
