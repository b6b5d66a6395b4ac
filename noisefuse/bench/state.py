"""The state-precision section of ``make bench``: what each optimizer keeps per parameter and what its
step costs with float32, bfloat16 and 8-bit blockwise state (block sizes 256, 128, 64), side by side with torch's fused AdamW (with and without
amsgrad) and the other libraries' low-memory AdamW steps where installed (peers.py) on the same
params, timed in interleaved rounds so that the ratios compare like with like.

Per row: the optimizer state's bytes per parameter as allocated (every state tensor of every param,
counters included, over the number of parameters), the bytes per parameter one step moves (the bytes
model with the state at its own element size), the median step time and its ratio to torch's fused
AdamW, and the peak memory the step adds on top of what the optimizer holds (profiling.py).
"""
from __future__ import annotations

import gc
import time
from dataclasses import dataclass

import torch

from ..state import Blockwise8bit
from . import baselines, bytes_model, peers, presets, profiling, timing

STATE_OPTIMIZERS = ("PNM", "AdaPNM", "DemonAdam")
# state label -> the optimizer arguments that choose it.
STATES = {"fp32": {}, "bf16": {"state_dtype": torch.bfloat16},
          "bf16 nearest": {"state_dtype": torch.bfloat16, "state_rounding": "nearest"},
          **{f"8bit b{b}": {"state_dtype": Blockwise8bit(block_size=b)} for b in (256, 128, 64)}}
# The backends in the order the section prefers them (fused first); it times the first that runs.
PREFERRED = ("native", "triton", "foreach")
# Torch's references: what the section's ratios are relative to (the goals of issue #15 are
# stated against fused AdamW's time and AdamW-with-amsgrad's state).
TORCH_REFERENCES = {"AdamW": dict(fused=True), "AdamW amsgrad": dict(fused=True, amsgrad=True)}
PRESETS = {"cpu": "resnet50", "cuda": "gpt2-small"}


@dataclass
class StateConfig:
    device: torch.device
    preset: presets.Preset
    optimizers: tuple = STATE_OPTIMIZERS
    quick: bool = False
    peers: tuple = peers.PEERS  # timed where installed


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes ``t`` holds: a tensor subclass that wraps others (torchao's 8-bit, 4-bit and float8
    state, which present themselves as float32 tensors) by what it wraps, flattened as torch.compile
    flattens it."""
    if type(t) is not torch.Tensor and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, name)) for name in names)
    return t.numel() * t.element_size()


def state_bytes(opt) -> int:
    """Bytes of every tensor in the optimizer's state (buffers and counters), as allocated."""
    return sum(tensor_bytes(v) for s in opt.state.values() for v in s.values() if torch.is_tensor(v))


def step_bytes(algorithm: str, n_params: int, param_dtype: torch.dtype, state_dtype) -> float:
    """Bytes one step moves: params and grads at the params' size, state at its own (8-bit state:
    a code and 4 / block_size bytes of scale per value; every param counted as 8-bit; a number:
    bytes per stored value, a peer's)."""
    traffic = bytes_model.ALGORITHMS[algorithm]
    param_values = sum(1 for name in traffic.reads + traffic.writes if name in ("p", "g"))
    state_values = traffic.per_element - param_values
    if isinstance(state_dtype, Blockwise8bit):
        state_size = 1 + 4 / state_dtype.block_size
    elif isinstance(state_dtype, (int, float)):
        state_size = state_dtype
    else:
        state_size = bytes_model.dtype_size(state_dtype)
    return n_params * (param_values * bytes_model.dtype_size(param_dtype) + state_values * state_size)


def preferred_backend(device: torch.device) -> str | None:
    usable, _ = baselines.backend_status(device, PREFERRED)
    return usable[0] if usable else None


def _targets(cfg: StateConfig, backend: str, chosen_peers) -> dict:
    """label -> (make(params), algorithm, state dtype, the peer or None)."""
    targets = {}
    for name, kwargs in TORCH_REFERENCES.items():
        algorithm = "adam_amsgrad" if kwargs.get("amsgrad") else "adam"
        targets[f"{name} torch/fused"] = (
            lambda ps, kw=kwargs: torch.optim.AdamW(ps, lr=baselines.LR, **kw), algorithm, torch.float32, None)
    for peer in chosen_peers:
        targets[peer.label] = (peer.make, "adam", peer.state_value_bytes, peer)
    for name in cfg.optimizers:
        for state, kwargs in STATES.items():
            targets[f"{name} {state} state, noisefuse/{backend}"] = (
                lambda ps, n=name, kw=kwargs: baselines.make_nf(n, ps, backend, **kw),
                baselines.nf_algorithm(name), kwargs.get("state_dtype", torch.float32), None)
    return targets


def _params(preset: presets.Preset, device: torch.device) -> list:
    gen = torch.Generator().manual_seed(0)
    params = []
    for shape in preset.shapes:
        p = torch.randn(shape, generator=gen).to(device).requires_grad_()
        p.grad = torch.randn(shape, generator=gen).to(device) * 1e-2
        params.append(p)
    return params


def _state_name(state_dtype) -> str:
    if isinstance(state_dtype, Blockwise8bit):
        return f"blockwise8bit/{state_dtype.block_size}"
    if isinstance(state_dtype, (int, float)):
        return f"{state_dtype:.3g} B/value"
    return str(state_dtype).removeprefix("torch.")


def run(cfg: StateConfig, progress=None) -> dict:
    """{"config", "rows", "notes"}: one row per target (module docstring)."""
    notes = []
    backend = preferred_backend(cfg.device)
    if backend is None:
        return {"config": None, "rows": [], "notes": ["state section skipped: no noisefuse backend runs here"]}
    if backend != PREFERRED[0]:
        notes.append(f"the native backend is unavailable here: noisefuse rows run on {backend}")
    n = cfg.preset.n_params
    chosen_peers, peer_notes = peers.installed(cfg.device, cfg.peers, quick=cfg.quick)
    notes += peer_notes
    targets = _targets(cfg, backend, chosen_peers)
    if progress is not None:
        progress.add(len(targets))
    opts, rows = {}, {}
    for label, (make, algorithm, state_dtype, peer) in targets.items():
        if progress is not None:
            progress.step(f"state: {label}")
        params = _params(cfg.preset, cfg.device)
        start = time.perf_counter()
        try:
            opt = make(params)
            opt.step()  # allocates the state (a peer may also compile or build here)
        except Exception as exc:  # noqa: BLE001 - a peer that fails here is reported, not fatal
            if peer is None:
                raise
            notes.append(f"peer {label}: failed at its first step ({type(exc).__name__}: {str(exc)[:200]})")
            continue
        if peer is not None:
            if cfg.device.type == "cuda":
                torch.cuda.synchronize(cfg.device)
            notes.append(f"peer {label}: first step {time.perf_counter() - start:.1f} s ({peer.first_step}), "
                         "apart from the medians")
        prof = profiling.profile_step(opt.step, cfg.device)
        opts[label] = opt
        rows[label] = {
            "label": label, "algorithm": algorithm, "state_dtype": _state_name(state_dtype),
            "state_bytes_per_param": state_bytes(opt) / n,
            "step_bytes_per_param": step_bytes(algorithm, n, torch.float32, state_dtype) / n,
            "peak_bytes": prof["peak_bytes"], "peak_method": prof["peak_method"],
        }
    tcfg = timing.config_for(cfg.device, "quick" if cfg.quick else "full")
    times = timing.time_interleaved({label: opt.step for label, opt in opts.items()}, cfg.device, tcfg,
                                    rounds=2 if cfg.quick else 4)
    del opts
    gc.collect()
    reference = times["AdamW torch/fused"].median
    amsgrad_state = rows["AdamW amsgrad torch/fused"]["state_bytes_per_param"]
    plain_state = rows["AdamW torch/fused"]["state_bytes_per_param"]
    for label, row in rows.items():
        t = times[label]
        row.update(time=t.as_dict(), time_vs_fused_adamw=t.median / reference,
                   state_vs_adamw=row["state_bytes_per_param"] / plain_state,
                   state_vs_adamw_amsgrad=row["state_bytes_per_param"] / amsgrad_state)
    config = {"preset": cfg.preset.name, "n_params": n, "n_tensors": cfg.preset.n_tensors, "backend": backend,
              "param_dtype": "float32", "device": str(cfg.device)}
    return {"config": config, "rows": list(rows.values()), "notes": notes}


def format_state(section: dict) -> str:
    """The section's table for report.txt and the terminal."""
    if not section["rows"]:
        return "\n".join(section["notes"])
    cfg = section["config"]
    head = (f"optimizer state precision | {cfg['preset']}: {cfg['n_params'] / 1e6:.2f}M float32 params in "
            f"{cfg['n_tensors']} tensors | noisefuse backend {cfg['backend']} | ratios to torch's fused AdamW "
            "in the same interleaved run")
    columns = (("target", 52), ("state B/param", 13), ("x AdamW", 8), ("x AdamW ams", 11), ("step B/param", 12),
               ("ms", 9), ("±%", 5), ("x fused AdamW", 13), ("+peak MB", 9))
    lines = [head, " ".join(f"{name:<{w}}" if i == 0 else f"{name:>{w}}" for i, (name, w) in enumerate(columns))]
    for r in section["rows"]:
        t = r["time"]
        cells = (r["label"], f"{r['state_bytes_per_param']:.2f}", f"{r['state_vs_adamw']:.2f}",
                 f"{r['state_vs_adamw_amsgrad']:.2f}", f"{r['step_bytes_per_param']:.0f}",
                 f"{t['median_ms']:.3f}", f"{100 * t['spread']:.0f}", f"{r['time_vs_fused_adamw']:.2f}",
                 f"{r['peak_bytes'] / 1e6:.2f}")
        lines.append(" ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, (_, w)) in enumerate(zip(cells, columns))))
    return "\n".join(lines + section["notes"])
