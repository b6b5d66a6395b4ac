"""Backends of the fused step, one module each with the same ``fused_step`` signature
(docs/kernel-contract.md) and a ``draw_weights`` with the signature of
``noise.transforms.sample_weights`` (how the backend draws multiplicative noise's weight vector),
and the one function that chooses among them."""
from __future__ import annotations

import importlib
import warnings

import torch

NAMES = ("auto", "native", "triton", "foreach", "reference")
_warned_native_missing = False


_MODULES = {}


def get(name: str):
    """The backend module called ``name`` (not "auto"), imported on first use."""
    if name not in NAMES[1:]:
        raise ValueError(f"unknown backend {name!r}")
    if name not in _MODULES:
        _MODULES[name] = importlib.import_module(f".{name}", __name__)
    return _MODULES[name]


def preload(name: str, devices) -> None:
    """Import the modules that ``name`` may resolve to on ``devices``, so that a step traced by
    torch.compile only looks them up (an import inside a compiled region is a graph break). Triton
    is imported only for accelerator devices: importing it costs about a second."""
    if name != "auto":
        get(name)
        return
    for candidate in ("native", "foreach"):
        get(candidate)
    if any(device.type != "cpu" for device in devices):
        get("triton")


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
    if device.type != "cpu" and get("triton").available(device):
        return get("triton")
    global _warned_native_missing
    if not _warned_native_missing and native.load_error() is not None:
        _warned_native_missing = True
        warnings.warn(f"noisefuse: the native extension is unavailable ({native.load_error()}); "
                      "falling back to the foreach backend", RuntimeWarning, stacklevel=3)
    return get("foreach")
