"""The Triton backend (multi-tensor fused Triton kernels)."""
from __future__ import annotations

import torch


def available(device: torch.device) -> bool:
    return False


def check_device(device: torch.device) -> None:
    raise RuntimeError("backend='triton' is not built yet")


def fused_step(family, hyper, ts, grad_scale=None, found_inf=None):
    raise RuntimeError("backend='triton' is not built yet")
