"""Backends of the fused step, one module each with the same ``fused_step`` signature
(docs/kernel-contract.md), and the one function that chooses among them."""
from __future__ import annotations

import importlib
import warnings

import torch

NAMES = ("auto", "native", "triton", "foreach", "reference")
_warned_native_missing = False


def get(name: str):
    """The backend module called ``name`` (not "auto")."""
    if name not in NAMES[1:]:
        raise ValueError(f"unknown backend {name!r}")
    return importlib.import_module(f".{name}", __name__)


def resolve(name: str, device: torch.device):
    """The module to run tensors on ``device`` with: ``name`` itself, or for "auto" the fastest
    available (native, then Triton on GPUs, then foreach); never fails where foreach works."""
    if name != "auto":
        module = get(name)
        if hasattr(module, "check_device"):
            module.check_device(device)
        return module
    native = get("native")
    if native.available(device):
        return native
    if device.type != "cpu":
        triton_backend = get("triton")
        if triton_backend.available(device):
            return triton_backend
    global _warned_native_missing
    if not _warned_native_missing and native.load_error() is not None:
        _warned_native_missing = True
        warnings.warn(f"noisefuse: the native extension is unavailable ({native.load_error()}); "
                      "falling back to the foreach backend", RuntimeWarning, stacklevel=3)
    return get("foreach")
