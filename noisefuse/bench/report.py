"""The benchmark's outputs besides the plots: the machine facts, results.json, and the terminal table."""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import textwrap

import torch

import noisefuse

from . import noise_report, state

SCHEMA_VERSION = 1
LIBRARY_ORDER = {"noisefuse": 0, "torch": 1, "pytorch_optimizer": 2}
IMPL_ORDER = {"native": 0, "triton": 1, "fused": 2, "foreach": 3, "loop": 4, "reference": 5}


def _version(dist: str):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _git_commit():
    """The noisefuse checkout's commit (and whether it has uncommitted changes), if it is one."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(noisefuse.__file__)))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


def load_average():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_facts(device: torch.device) -> dict:
    """What a reader needs to judge the numbers: the hardware, the software, the date, the load."""
    facts = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": _memory_gib(),
        "device": str(device),
        "gpu": None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": _version("triton"),
        "pytorch_optimizer": _version("pytorch_optimizer"),
        "noisefuse": noisefuse.__version__,
        "noisefuse_commit": _git_commit(),
        "load_average_start": load_average(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                        "capability": f"{props.major}.{props.minor}",
                        "multiprocessors": props.multi_processor_count}
    return facts


def write_json(path: str, machine: dict, config: dict, results: dict, elapsed_s: float) -> None:
    doc = {"schema_version": SCHEMA_VERSION, "machine": machine, "config": config,
           "elapsed_s": round(elapsed_s, 1), **results}
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


def _sorted(rows, optimizer_order):
    order = {name: i for i, name in enumerate(optimizer_order)}
    return sorted(rows, key=lambda r: (order.get(r["optimizer"], 99), LIBRARY_ORDER.get(r["library"], 9),
                                       IMPL_ORDER.get(r["impl"], 9)))


def _fmt_mb(n):
    return "n/a" if n is None else f"{n / 1e6:.1f}"


def _fmt_bytes(n):
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


# (header, width); the first two columns are left-aligned text, the rest right-aligned numbers.
_COLUMNS = (("optimizer", 10), ("implementation", 27), ("ms", 10), ("±%", 6), ("MB/step", 9), ("GB/s", 8),
            ("%copy", 6), ("x foreach", 9), ("LAUNCH", 8), ("+peak MB", 9), ("check", 0))
# On CUDA, before "check": the host's time to issue the step, and the step replayed from a CUDA graph.
_CUDA_COLUMNS = (("host ms", 8), ("graph ms", 9))


def _line(cells, columns=_COLUMNS) -> str:
    out = []
    for i, (cell, (_, width)) in enumerate(zip(cells, columns)):
        out.append(f"{cell:<{width}}" if i < 2 or width == 0 else f"{cell:>{width}}")
    return " ".join(out).rstrip()


def graph_ms(row) -> str:
    """The graph-replayed step's median ms, or "-" (no capturable form, or capture failed: see notes)."""
    graph = row.get("graph") or {}
    return f"{graph['time']['median_ms']:.3f}" if "time" in graph else "-"


def format_case(case: dict, rows: list, optimizer_order) -> str:
    launch_hdr = "kernels" if rows and rows[0]["launch_kind"] == "cuda_kernels" else "ops"
    cuda = any(r.get("host_time") for r in rows)
    columns = _COLUMNS[:-1] + (_CUDA_COLUMNS if cuda else ()) + _COLUMNS[-1:]
    head = (f"{case['preset']} | {case['dtype']} | {case['n_params'] / 1e6:.2f}M params in "
            f"{case['n_tensors']} tensors | copy " +
            ", ".join(f"{c['gbps']:.1f} GB/s for {_fmt_bytes(c['bytes'])}" for c in case["copies"]))
    lines = [head, _line([launch_hdr if h == "LAUNCH" else h for h, _ in columns], columns)]
    for r in _sorted(rows, optimizer_order):
        t = r["time"]
        speed = "-" if r["speedup_vs_foreach"] is None else f"{r['speedup_vs_foreach']:.2f}"
        cells = [r["optimizer"], f"{r['library']}/{r['impl']}", f"{t['median_ms']:.3f}", f"{100 * t['spread']:.1f}",
                 f"{r['bytes_per_step'] / 1e6:.1f}", f"{r['gbps']:.2f}", f"{100 * r['frac_copy_bw']:.1f}", speed,
                 str(r["launches"]), _fmt_mb(r["peak_bytes"])]
        if cuda:
            host = r.get("host_time")
            cells += [f"{host['median_ms']:.3f}" if host else "-", graph_ms(r)]
        lines.append(_line(cells + [r["check"]], columns))
    return "\n".join(lines)


def format_sweeps(sweeps: list) -> str:
    """Median step time (ms) per sweep point, one column per implementation, and the copy floor."""
    out = []
    for sweep, xname in (("params", "params"), ("tensors", "tensors")):
        points = [p for p in sweeps if p["sweep"] == sweep]
        if not points:
            continue
        labels = sorted({r["label"] for p in points for r in p["rows"]})
        fixed = f"{points[0]['n_tensors']} tensors" if sweep == "params" else f"{points[0]['n_params']} params"
        out.append(f"step time (ms) against {xname}, {fixed}, {points[0]['dtype']}; copy = {points[0]['copy_algorithm']} bytes")
        out.append(f"{xname:>10}  {'copy':>9}  " + "  ".join(f"{lab[:24]:>24}" for lab in labels))
        for p in points:
            by = {r["label"]: r["time"]["median_ms"] for r in p["rows"]}
            cells = [f"{by[lab]:>24.3f}" if lab in by else f"{'-':>24}" for lab in labels]
            out.append(f"{p['x']:>10}  {p['copy_time_ms']:>9.3f}  " + "  ".join(cells))
    return "\n".join(out)


def format_report(machine: dict, results: dict, optimizer_order, elapsed_s: float) -> str:
    gpu = machine["gpu"]["name"] if machine.get("gpu") else "no GPU"
    parts = [f"noisefuse {machine['noisefuse']} ({machine['noisefuse_commit']}) | torch {machine['torch']} | "
             f"{machine['device']} | {machine['cpu']} x{machine['cpu_count']} ({machine['torch_threads']} threads) | "
             f"{gpu} | {machine['date']}"]
    for case in results["cases"]:
        rows = [r for r in results["rows"] if r["preset"] == case["preset"] and r["dtype"] == case["dtype"]]
        parts.append(format_case(case, rows, optimizer_order))
    if results["sweeps"]:
        parts.append(format_sweeps(results["sweeps"]))
    if results["rows"]:  # absent when only the noise section ran
        kind = results["rows"][0]["launch_kind"]
        legend = ("ms: median step time; ±%: half the interquartile range; MB/step: bytes the algorithm must "
                  "read+write (bytes_model.py); %copy: GB/s over that of dst.copy_(src) of the same bytes; "
                  "x foreach: speedup over the foreach implementation of the same algorithm; ")
        legend += ("kernels: CUDA kernels per step" if kind == "cuda_kernels" else
                   "ops: top-level operator calls per step (CPU has no kernel launches)")
        legend += "; +peak MB: memory the step allocates on top of the optimizer's state"
        if any(r.get("host_time") for r in results["rows"]):
            legend += ("; host ms: the CPU's time to issue the step (median); graph ms: the step captured in a "
                       "CUDA graph (capturable=True) and replayed")
        legend += "."
        parts.append(textwrap.fill(legend, width=110))
    if results["notes"]:
        parts.append("notes:\n" + "\n".join(f"  - {n}" for n in results["notes"]))
    if results.get("noise"):
        parts.append(noise_report.format_noise(results["noise"]))
    if results.get("state"):
        parts.append(state.format_state(results["state"]))
    parts.append(f"finished in {elapsed_s:.0f} s")
    return "\n\n".join(parts)
