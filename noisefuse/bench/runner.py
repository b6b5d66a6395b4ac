"""Runs the benchmark: for each (preset, dtype) every target's step time, traffic, bandwidth, launches
and added memory, next to a plain copy of the same bytes; then the scaling sweeps.

Everything is returned as plain dicts and lists (the JSON schema, docs/benchmarks.md), so the
report and the plots read the same data a user gets in results.json.
"""
from __future__ import annotations

import gc
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
            case, rows = _run_case(preset, dtype_name, runnable[dtype_name], probes, cfg, mode, progress)
            out["cases"].append(case)
            out["rows"].extend(rows)
    if cfg.sweeps and cfg.dtypes:
        out["sweeps"] = _run_sweeps(sweep_targets, probes, cfg, progress)
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
    return {"time": t, **prof}


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


def _measure_rows(preset, dtype_name, targets, probes, device, tcfg, progress, copy_reps=2, extra_bytes=()):
    """Rows for ``targets`` on ``preset``, and the copy timings of their byte counts (and of
    ``extra_bytes``). With ``copy_reps=2`` the copy is timed before and after the targets and the
    faster kept, so a burst of load from other processes cannot make the reference look slow."""
    dtype = DTYPES[dtype_name]
    byte_counts = {bytes_model.step_bytes(t.algorithm, preset.n_params, dtype) for t in targets}
    byte_counts |= set(extra_bytes)
    copy_reps = copy_reps if targets else 1
    copies_before = _measure_copies(byte_counts, dtype, device, tcfg, progress) if byte_counts else {}
    params = presets.make_tensors(preset, dtype, device)
    measured = [(t, _measure_target(t, params, device, tcfg, progress)) for t in targets]
    del params
    gc.collect()
    copies = copies_before
    if copy_reps > 1:
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


def _run_case(preset, dtype_name, targets, probes, cfg, mode, progress):
    tcfg = timing.config_for(cfg.device, mode)
    rows, copies = _measure_rows(preset, dtype_name, targets, probes, cfg.device, tcfg, progress)
    copies = [{"bytes": b, **copies[b].as_dict(), "gbps": b / copies[b].median / 1e9} for b in sorted(copies)]
    case = {"preset": preset.name, "description": preset.description, "dtype": dtype_name,
            "n_params": preset.n_params, "n_tensors": preset.n_tensors, "copies": copies}
    return case, rows


def _run_sweeps(chosen, probes, cfg, progress) -> list:
    dtype_name = cfg.dtypes[0]
    plan = SWEEPS[("cuda" if cfg.device.type == "cuda" else "cpu", cfg.quick)]
    tcfg = timing.config_for(cfg.device, "quick" if cfg.quick else "sweep")
    points = []
    fixed_tensors, param_counts = plan["params"]
    points += [("params", n, presets.synthetic(n, fixed_tensors)) for n in param_counts]
    fixed_params, tensor_counts = plan["tensors"]
    points += [("tensors", k, presets.synthetic(fixed_params, k)) for k in tensor_counts]
    out = []
    for sweep, x, preset in points:
        n_bytes = bytes_model.step_bytes(SWEEP_COPY_ALGORITHM, preset.n_params, DTYPES[dtype_name])
        rows, copies = _measure_rows(preset, dtype_name, chosen, probes, cfg.device, tcfg, progress,
                                     copy_reps=1, extra_bytes=(n_bytes,))
        copy = copies[n_bytes]
        out.append({"sweep": sweep, "x": x, "preset": preset.name, "dtype": dtype_name,
                    "n_params": preset.n_params, "n_tensors": preset.n_tensors,
                    "copy_algorithm": SWEEP_COPY_ALGORITHM, "copy_bytes": n_bytes,
                    "copy_time_ms": copy.median * 1e3, "rows": rows})
    return out
