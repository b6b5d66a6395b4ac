"""What gets benchmarked: every noisefuse optimizer on every backend that works on the device, and
the implementations they are measured against (torch.optim's foreach and fused optimizers, and the
community ``pytorch_optimizer`` PNM/AdaPNM).

Which backends work is found out at run time, never assumed: a backend must say it is available on
the device and then survive a three-step probe on small awkwardly-sized tensors, whose result is
compared with the reference backend so that a fast but wrong kernel is flagged, not celebrated.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import torch

import noisefuse as nf
from noisefuse import backends

NF_OPTIMIZERS = ("PNM", "AdaPNM", "DemonSGD", "DemonAdam")
TORCH_OPTIMIZERS = ("SGD", "Adam", "AdamW")
NF_BACKENDS = ("native", "triton", "foreach", "reference")
LR = 1e-3
# Long enough that Demon's beta never reaches 0 during a benchmark (the traffic does not change).
DEMON_STEPS = 10**6

# Default arguments of each optimizer (only lr and Demon's horizon are given), with the name of
# its bytes model (bytes_model.ALGORITHMS).
# ``kw`` passes extra options (the noise section gives ``noise=`` and ``seed=``).
_NF = {
    "PNM": (lambda ps, b, **kw: nf.PNM(ps, lr=LR, backend=b, **kw), "pnm"),
    "AdaPNM": (lambda ps, b, **kw: nf.AdaPNM(ps, lr=LR, backend=b, **kw), "adapnm"),
    "DemonSGD": (lambda ps, b, **kw: nf.DemonSGD(ps, lr=LR, momentum=0.9, total_steps=DEMON_STEPS, backend=b, **kw),
                 "sgd_momentum"),
    "DemonAdam": (lambda ps, b, **kw: nf.DemonAdam(ps, lr=LR, total_steps=DEMON_STEPS, backend=b, **kw), "adam"),
}
_TORCH = {
    "SGD": (lambda ps, **kw: torch.optim.SGD(ps, lr=LR, momentum=0.9, **kw), "sgd_momentum"),
    "Adam": (lambda ps, **kw: torch.optim.Adam(ps, lr=LR, **kw), "adam"),
    "AdamW": (lambda ps, **kw: torch.optim.AdamW(ps, lr=LR, **kw), "adam"),
}
_COMMUNITY = {"PNM": "pnm", "AdaPNM": "adapnm"}  # pytorch_optimizer class -> bytes model


@dataclass(frozen=True)
class Target:
    optimizer: str
    library: str  # "noisefuse" | "torch" | "pytorch_optimizer"
    impl: str     # a noisefuse backend, or "foreach" / "fused" / "loop"
    algorithm: str
    make: Callable[[list], torch.optim.Optimizer]
    # (optimizer, library, impl) of the foreach implementation of the same algorithm, for speedups.
    foreach_key: tuple[str, str, str]
    # The same optimizer with capturable=True (its step can be captured in a CUDA graph), or None.
    make_capturable: Callable[[list], torch.optim.Optimizer] | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.optimizer, self.library, self.impl)

    @property
    def label(self) -> str:
        return f"{self.optimizer} {self.library}/{self.impl}"


def make_nf(name: str, params, backend: str, **kw) -> torch.optim.Optimizer:
    """noisefuse optimizer ``name`` with the benchmark's arguments on ``backend`` (plus ``kw``)."""
    return _NF[name][0](params, backend, **kw)


def nf_algorithm(name: str) -> str:
    """The bytes model (bytes_model.ALGORITHMS) of noisefuse optimizer ``name``."""
    return _NF[name][1]


# The backends whose steps keep their counters on the device (capturable=True), as torch's own.
CAPTURABLE_BACKENDS = ("native", "triton")


def _nf_target(name: str, backend: str) -> Target:
    make, algo = _NF[name]
    capturable = (lambda ps: make(ps, backend, capturable=True)) if backend in CAPTURABLE_BACKENDS else None
    return Target(name, "noisefuse", backend, algo, lambda ps: make(ps, backend), (name, "noisefuse", "foreach"),
                  capturable)


def backend_status(device: torch.device, names=NF_BACKENDS) -> tuple[list[str], dict[str, str]]:
    """The noisefuse backends that say they can run on ``device``, and why each other one cannot."""
    usable, skipped = [], {}
    for name in names:
        module = backends.get(name)
        available = getattr(module, "available", None)
        if available is None or available(device):
            usable.append(name)
            continue
        reason = f"not available on {device.type}"
        load_error = getattr(module, "load_error", None)
        if load_error is not None and load_error() is not None:
            reason += f" (extension failed to load: {load_error()})"
        skipped[name] = reason
    return usable, skipped


def build_targets(device: torch.device, optimizers=NF_OPTIMIZERS + TORCH_OPTIMIZERS,
                  nf_backends=NF_BACKENDS, baselines: bool = True) -> tuple[list[Target], list[str]]:
    """All targets to measure on ``device``, and notes on what was left out and why."""
    usable, skipped = backend_status(device, nf_backends)
    notes = [f"noisefuse backend {name!r} skipped: {why}" for name, why in skipped.items()]
    targets = [_nf_target(o, b) for o in optimizers if o in _NF for b in usable]
    if not baselines:
        return targets, notes
    for name in optimizers:
        if name in _TORCH:
            make, algo = _TORCH[name]
            base = (name, "torch", "foreach")
            for impl in ("foreach", "fused"):
                # SGD has no capturable flag: its step reads no counter, and is captured as it is.
                extra = {} if name == "SGD" else {"capturable": True}
                targets.append(Target(name, "torch", impl, algo, lambda ps, m=make, i=impl: m(ps, **{i: True}), base,
                                      lambda ps, m=make, i=impl, e=extra: m(ps, **{i: True}, **e)))
    community = _community()
    if community is None:
        notes.append("pytorch_optimizer is not installed: community baselines skipped")
        return targets, notes
    for name, algo in _COMMUNITY.items():
        if name in optimizers:
            cls = getattr(community, name)
            for impl, foreach in (("loop", False), ("foreach", True)):
                targets.append(Target(name, "pytorch_optimizer", impl, algo,
                                      lambda ps, c=cls, f=foreach: c(ps, lr=LR, foreach=f),
                                      (name, "noisefuse", "foreach")))
    return targets, notes


def _community():
    try:
        return importlib.import_module("pytorch_optimizer")
    except ImportError:
        return None


# Parameter tolerances after three steps from the same start (as in tests/cases.py: float32-ulp
# level differences between backends, plus one storage rounding flip for 16-bit types).
_TOL = {torch.float32: (1e-6, 1e-5), torch.bfloat16: (8e-3, 1.6e-2), torch.float16: (1e-3, 2e-3),
        torch.float64: (1e-12, 1e-10)}
_PROBE_SIZES = (1, 1023, 4097)


def _probe_params(dtype, device):
    gen = torch.Generator().manual_seed(1234)
    ps = []
    for n in _PROBE_SIZES:
        p = torch.randn(n, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
        p.requires_grad_(True)
        ps.append(p)
    return ps


def _run_steps(make, params, steps=3):
    ps = [p.detach().clone().requires_grad_(True) for p in params]
    opt = make(ps)
    for t in range(steps):
        gen = torch.Generator().manual_seed(100 + t)
        for p in ps:
            p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype=p.dtype, device=p.device)
        opt.step()
    return [p.detach() for p in ps]


def _oracle(target: Target):
    """(make, None) for the implementation ``target`` must agree with, or (None, why not)."""
    if target.library == "noisefuse":
        if target.impl == "reference":
            return None, "oracle"
        return _nf_target(target.optimizer, "reference").make, None
    if target.library == "torch":
        if target.impl == "foreach":
            return None, "oracle"
        make = _TORCH[target.optimizer][0]
        return (lambda ps: make(ps, foreach=True)), None
    if target.optimizer == "PNM":  # same defaults, same algorithm (tests/test_community.py)
        return _nf_target("PNM", "reference").make, None
    return None, "unchecked (eps placement differs)"


def probe(target: Target, dtype: torch.dtype, device: torch.device) -> tuple[bool, str]:
    """(runs, check): whether three steps of ``target`` run, and whether they agree with its oracle
    ("ok", "mismatch: ...", "oracle" for the oracles themselves, or "unchecked (why)")."""
    params = _probe_params(dtype, device)
    try:
        got = _run_steps(target.make, params)
    except Exception as exc:  # any failure means: do not benchmark this one, say why
        return False, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    oracle, why_not = _oracle(target)
    if oracle is None:
        return True, why_not
    want = _run_steps(oracle, params)
    if not all(w.isfinite().all() for w in want):
        # e.g. torch's foreach Adam in float16, whose eps underflows: no reference to compare with.
        return True, f"unchecked (oracle not finite in {str(dtype).removeprefix('torch.')})"
    atol, rtol = _TOL.get(dtype, (1e-3, 1e-3))
    for i, (a, b) in enumerate(zip(got, want)):
        if not torch.allclose(a.double(), b.double(), atol=atol, rtol=rtol):
            diff = (a.double() - b.double()).abs().max().item()
            return True, f"mismatch: param of {_PROBE_SIZES[i]} elements differs by up to {diff:.3g}"
    return True, "ok"
