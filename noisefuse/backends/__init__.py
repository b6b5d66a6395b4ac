"""Backends of the fused step, one module each with the same ``fused_step`` signature
(docs/kernel-contract.md), and the one function that chooses among them."""
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
    return get(_resolve_name(name, device.type, device.index))


_assume_constant = getattr(torch.compiler, "assume_constant_result", None) or torch._dynamo.assume_constant_result


@_assume_constant
def _resolve_name(name: str, device_type: str, device_index) -> str:
    # Which backend runs a device is fixed for the life of a process, so torch.compile may take
    # the answer as a constant of the graph (the probes below are not traceable).
    device = torch.device(device_type, device_index)
    if name != "auto":
        module = get(name)
        if hasattr(module, "check_device"):
            module.check_device(device)
        return name
    native = get("native")
    if native.available(device):
        return "native"
    if device_type != "cpu" and get("triton").available(device):
        return "triton"
    global _warned_native_missing
    if not _warned_native_missing and native.load_error() is not None:
        _warned_native_missing = True
        warnings.warn(f"noisefuse: the native extension is unavailable ({native.load_error()}); "
                      "falling back to the foreach backend", RuntimeWarning, stacklevel=4)
    return "foreach"
