"""Runs the benchmark: for each (preset, dtype) every target's step time, traffic, bandwidth, launches
and added memory, next to a plain copy of the same bytes; then the scaling sweeps.

Everything is returned as plain dicts and lists (the JSON schema, docs/benchmarks.md), so the
report and the plots read the same data a user gets in results.json.
"""
from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field

import torch

from . import baselines, bytes_model, presets, profiling, timing

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# (tensors, params list) for the parameter-count sweep, (params, tensors list) for the tensor-count
# sweep. The GPU sweep reaches 268M elements, past every cache; the CPU one stops where a point
# still takes well under a second.
SWEEPS = {
    ("cpu", False): {"params": (16, (2**16, 2**18, 2**20, 2**22, 2**24)),
                     "tensors": (2**22, (1, 4, 16, 64, 256, 1024, 4096))},
    ("cpu", True): {"params": (4, (2**12, 2**16)), "tensors": (2**14, (1, 64))},
    ("cuda", False): {"params": (64, (2**16, 2**18, 2**20, 2**22, 2**24, 2**26, 2**28)),
                      "tensors": (2**24, (1, 4, 16, 64, 256, 1024, 4096, 16384))},
    ("cuda", True): {"params": (16, (2**16, 2**20, 2**24)), "tensors": (2**20, (1, 64, 4096))},
}
# Sweeps follow the family's two ends (one PN buffer pair, and the full AdaPNM state) on every fast
# backend, against torch's AdamW: enough to see how each implementation's cost grows.
SWEEP_KEYS = {("PNM", "noisefuse"), ("AdaPNM", "noisefuse"), ("AdamW", "torch")}
SWEEP_COPY_ALGORITHM = "adapnm"


class Budget:
    """The run's wall-clock allowance (``--budget``; unlimited by default): a measurement that has
    not started when it is spent is skipped, and the notes name what was left out."""

    def __init__(self, seconds: float | None = None):
        self.seconds = seconds
        self.deadline = None if seconds is None else time.monotonic() + seconds

    def spent(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def note(self, what: str) -> str:
        return f"time budget of {self.seconds:g} s spent: {what} not measured"


@dataclass
class BenchConfig:
    device: torch.device
    presets: list
    dtypes: list  # names in DTYPES
    optimizers: tuple = baselines.NF_OPTIMIZERS + baselines.TORCH_OPTIMIZERS
    backends: tuple = baselines.NF_BACKENDS
    baselines: bool = True
    sweeps: bool = True
    quick: bool = False
    seed: int = 0
    notes: list = field(default_factory=list)
    budget: Budget = field(default_factory=Budget)


class NullProgress:
    """What the runner reports progress to; the CLI passes a tqdm-backed one."""

    def add(self, n: int) -> None:
        pass

    def step(self, label: str) -> None:
        pass


def run(cfg: BenchConfig, progress=None) -> dict:
    progress = progress or NullProgress()
    targets, notes = baselines.build_targets(cfg.device, cfg.optimizers, cfg.backends, cfg.baselines)
    out = {"cases": [], "rows": [], "sweeps": [], "notes": list(cfg.notes) + notes}
    probes = {}  # (target key, dtype) -> (runs, check), probed once per dtype
    for dtype_name in cfg.dtypes:
        dtype = DTYPES[dtype_name]
        for t in targets:
            runs, check = baselines.probe(t, dtype, cfg.device)
            probes[(t.key, dtype_name)] = (runs, check)
            if not runs:
                out["notes"].append(f"{t.label} skipped for {dtype_name}: {check}")
            elif check.startswith("mismatch"):
                out["notes"].append(f"{t.label} ({dtype_name}) disagrees with its oracle: {check}")
    runnable = {d: [t for t in targets if probes[(t.key, d)][0]] for d in cfg.dtypes}

    sweep_targets = _sweep_targets(runnable[cfg.dtypes[0]]) if cfg.sweeps and cfg.dtypes else []
    progress.add(_plan_size(cfg, runnable, sweep_targets))
    mode = "quick" if cfg.quick else "full"
    for preset in cfg.presets:
        for dtype_name in cfg.dtypes:
            if cfg.budget.spent():
                out["notes"].append(cfg.budget.note(f"{preset.name} in {dtype_name}"))
                continue
            case, rows = _run_case(preset, dtype_name, runnable[dtype_name], probes, cfg, mode, progress,
                                   out["notes"])
            out["cases"].append(case)
            out["rows"].extend(rows)
    if cfg.sweeps and cfg.dtypes:
        out["sweeps"] = _run_sweeps(sweep_targets, probes, cfg, progress, out["notes"])
    return out


def _copy_sizes(targets, extra=()) -> int:
    """Distinct copy sizes a set of targets needs: one per per-element traffic count."""
    return len({bytes_model.ALGORITHMS[a].per_element for a in [t.algorithm for t in targets] + list(extra)})


def _plan_size(cfg, runnable, sweep_targets) -> int:
    """How many timed measurements the run will make, for the progress bar."""
    total = 0
    for dtype_name in cfg.dtypes:
        targets = runnable[dtype_name]
        total += len(cfg.presets) * (len(targets) + 2 * _copy_sizes(targets) if targets else 0)
    if cfg.sweeps and cfg.dtypes:
        plan = SWEEPS[("cuda" if cfg.device.type == "cuda" else "cpu", cfg.quick)]
        n_points = len(plan["params"][1]) + len(plan["tensors"][1])
        total += n_points * (len(sweep_targets) + _copy_sizes(sweep_targets, [SWEEP_COPY_ALGORITHM]))
    return total


def _sweep_targets(targets):
    return [t for t in targets if (t.optimizer, t.library) in SWEEP_KEYS and t.impl != "reference"]


def _measure_copies(byte_counts, dtype, device, tcfg, progress) -> dict:
    """Median-timed ``dst.copy_(src)`` moving each of ``byte_counts`` (read + write), from one pair
    of buffers sized for the largest."""
    largest = bytes_model.copy_elements(max(byte_counts), dtype)
    src = torch.ones(largest, dtype=dtype, device=device)
    dst = torch.empty_like(src)
    found = {}
    for n_bytes in sorted(byte_counts):
        progress.step(f"copy of {n_bytes} bytes")
        n = bytes_model.copy_elements(n_bytes, dtype)
        s, d = src[:n], dst[:n]
        found[n_bytes] = timing.time_fn(lambda: d.copy_(s), device, tcfg)
    del src, dst
    return found


def _measure_target(target, params, device, tcfg, progress) -> dict:
    progress.step(target.label)
    opt = target.make(params)
    opt.step()  # the first step allocates the state; it is not a step anyone repeats
    t = timing.time_fn(opt.step, device, tcfg)
    prof = profiling.profile_step(opt.step, device)
    del opt
    gc.collect()
    graph = _measure_graph(target, params, device, tcfg) if device.type == "cuda" else None
    return {"time": t, "host_time": t.host.as_dict() if t.host is not None else None, "graph": graph, **prof}


def _measure_graph(target, params, device, tcfg) -> dict:
    """The step captured in a CUDA graph and replayed (an optimizer built with capturable=True):
    {"time": ...}, or {"note": why not}."""
    if target.make_capturable is None:
        return {"note": "no capturable form"}
    try:
        opt = target.make_capturable(params)
        graph = timing.capture_graph(warm_up=lambda: [opt.step() for _ in range(3)], step=opt.step)
        t = timing.time_fn(graph.replay, device, tcfg)
    except Exception as exc:  # a target that cannot be captured is reported, not fatal
        return {"note": f"capture failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    finally:
        opt = graph = None
        gc.collect()
    return {"time": t.as_dict()}


def _row(target, preset, dtype_name, measured, copy_timing, check) -> dict:
    dtype = DTYPES[dtype_name]
    n_bytes = bytes_model.step_bytes(target.algorithm, preset.n_params, dtype)
    t = measured.pop("time")
    gbps = n_bytes / t.median / 1e9
    copy_gbps = n_bytes / copy_timing.median / 1e9
    return {
        "preset": preset.name, "dtype": dtype_name, "n_params": preset.n_params,
        "n_tensors": preset.n_tensors, "optimizer": target.optimizer, "library": target.library,
        "impl": target.impl, "label": target.label, "algorithm": target.algorithm,
        "values_per_element": bytes_model.ALGORITHMS[target.algorithm].per_element,
        "bytes_per_step": n_bytes, "time": t.as_dict(), "gbps": gbps,
        "copy_time_ms": copy_timing.median * 1e3, "copy_gbps": copy_gbps,
        "frac_copy_bw": gbps / copy_gbps, "speedup_vs_foreach": None, "speedup_baseline": None,
        "check": check, **measured,
    }


def _add_speedups(rows) -> None:
    """Speedup of each row over the foreach implementation of the same algorithm in the same case
    (noisefuse's foreach backend for noisefuse and pytorch_optimizer rows, torch's foreach for torch)."""
    by_key = {(r["optimizer"], r["library"], r["impl"]): r for r in rows}
    for r in rows:
        base = by_key.get(r["_foreach_key"])
        if base is not None:
            r["speedup_vs_foreach"] = base["time"]["median_ms"] / r["time"]["median_ms"]
            r["speedup_baseline"] = base["label"]
    for r in rows:
        del r["_foreach_key"]


def _measure_rows(preset, dtype_name, targets, probes, cfg, tcfg, progress, notes, copy_reps=2, extra_bytes=()):
    """Rows for ``targets`` on ``preset``, and the copy timings of their byte counts (and of
    ``extra_bytes``). With ``copy_reps=2`` the copy is timed before and after the targets and the
    faster kept, so a burst of load from other processes cannot make the reference look slow.
    Targets not started before the run's budget is spent are named in ``notes``."""
    dtype, device = DTYPES[dtype_name], cfg.device
    byte_counts = {bytes_model.step_bytes(t.algorithm, preset.n_params, dtype) for t in targets}
    byte_counts |= set(extra_bytes)
    copy_reps = copy_reps if targets else 1
    copies_before = _measure_copies(byte_counts, dtype, device, tcfg, progress) if byte_counts else {}
    params = presets.make_tensors(preset, dtype, device)
    measured, left_out = [], []
    for t in targets:
        if cfg.budget.spent():
            left_out.append(t.label)
        else:
            measured.append((t, _measure_target(t, params, device, tcfg, progress)))
    if left_out:
        notes.append(cfg.budget.note(f"{', '.join(left_out)} on {preset.name} in {dtype_name}"))
    notes += [f"{t.label} on {preset.name} in {dtype_name}: no CUDA-graph time, {m['graph']['note']}"
              for t, m in measured if m["graph"] and "failed" in m["graph"].get("note", "")]
    del params
    gc.collect()
    copies = copies_before
    if copy_reps > 1 and not cfg.budget.spent():
        after = _measure_copies(byte_counts, dtype, device, tcfg, progress)
        copies = {b: min(copies_before[b], after[b], key=lambda x: x.median) for b in byte_counts}
    rows = []
    for t, m in measured:
        n_bytes = bytes_model.step_bytes(t.algorithm, preset.n_params, dtype)
        row = _row(t, preset, dtype_name, m, copies[n_bytes], probes[(t.key, dtype_name)][1])
        row["_foreach_key"] = t.foreach_key
        rows.append(row)
    _add_speedups(rows)
    return rows, copies


def _run_case(preset, dtype_name, targets, probes, cfg, mode, progress, notes):
    tcfg = timing.config_for(cfg.device, mode)
    rows, copies = _measure_rows(preset, dtype_name, targets, probes, cfg, tcfg, progress, notes)
    copies = [{"bytes": b, **copies[b].as_dict(), "gbps": b / copies[b].median / 1e9} for b in sorted(copies)]
    case = {"preset": preset.name, "description": preset.description, "dtype": dtype_name,
            "n_params": preset.n_params, "n_tensors": preset.n_tensors, "copies": copies}
    return case, rows


def _run_sweeps(chosen, probes, cfg, progress, notes) -> list:
    dtype_name = cfg.dtypes[0]
    plan = SWEEPS[("cuda" if cfg.device.type == "cuda" else "cpu", cfg.quick)]
    tcfg = timing.config_for(cfg.device, "quick" if cfg.quick else "sweep")
    points = []
    fixed_tensors, param_counts = plan["params"]
    points += [("params", n, presets.synthetic(n, fixed_tensors)) for n in param_counts]
    fixed_params, tensor_counts = plan["tensors"]
    points += [("tensors", k, presets.synthetic(fixed_params, k)) for k in tensor_counts]
    out, left_out = [], []
    for sweep, x, preset in points:
        if cfg.budget.spent():
            left_out.append(f"{sweep} {x}")
            continue
        n_bytes = bytes_model.step_bytes(SWEEP_COPY_ALGORITHM, preset.n_params, DTYPES[dtype_name])
        rows, copies = _measure_rows(preset, dtype_name, chosen, probes, cfg, tcfg, progress, notes,
                                     copy_reps=1, extra_bytes=(n_bytes,))
        copy = copies[n_bytes]
        out.append({"sweep": sweep, "x": x, "preset": preset.name, "dtype": dtype_name,
                    "n_params": preset.n_params, "n_tensors": preset.n_tensors,
                    "copy_algorithm": SWEEP_COPY_ALGORITHM, "copy_bytes": n_bytes,
                    "copy_time_ms": copy.median * 1e3, "rows": rows})
    if left_out:
        notes.append(cfg.budget.note(f"the sweep points {', '.join(left_out)}"))
    return out
