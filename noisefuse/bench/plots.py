"""PNG plots of a results.json document: step time and % of copy bandwidth per implementation
(one panel per preset and dtype), and step time against parameter count and tensor count.

matplotlib is imported here only, with the non-interactive Agg backend, so neither ``import
noisefuse`` nor a headless machine ever needs a display.
"""
from __future__ import annotations

import os

LIBRARY_COLORS = {"noisefuse": "tab:blue", "torch": "tab:orange", "pytorch_optimizer": "tab:green"}
# Scaling plots: colour says the implementation, the marker and line style say the optimizer.
IMPL_COLORS = {"noisefuse/native": "tab:blue", "noisefuse/triton": "tab:purple", "noisefuse/foreach": "tab:cyan",
               "torch/fused": "tab:orange", "torch/foreach": "tab:brown", "pytorch_optimizer/foreach": "tab:green"}
OPTIMIZER_STYLES = {"PNM": ("o", "-"), "AdaPNM": ("s", "--"), "AdamW": ("^", ":")}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _cases(doc):
    for case in doc["cases"]:
        rows = [r for r in doc["rows"] if r["preset"] == case["preset"] and r["dtype"] == case["dtype"]]
        if rows:
            yield case, rows


def _grid(plt, n, height_per_row):
    cols = min(n, 2)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(8 * cols, height_per_row * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def _bars(doc, path, value, xlabel, title, log=False, reference_line=None):
    plt = _pyplot()
    cases = list(_cases(doc))
    if not cases:
        return None
    height = 0.3 * max(len(rows) for _, rows in cases) + 1.5
    fig, axes = _grid(plt, len(cases), height)
    for ax, (case, rows) in zip(axes, cases):
        rows = sorted(rows, key=lambda r: (r["optimizer"], r["library"], r["impl"]))
        values = [value(r) for r in rows]
        ax.barh(range(len(rows)), [v[0] for v in values],
                xerr=None if values[0][1] is None else [[v[1] for v in values], [v[2] for v in values]],
                color=[LIBRARY_COLORS.get(r["library"], "gray") for r in rows])
        ax.set_yticks(range(len(rows)), [r["label"] for r in rows], fontsize=8)
        ax.invert_yaxis()
        if log:
            ax.set_xscale("log")
        if reference_line is not None:
            ax.axvline(reference_line, color="black", linestyle="--", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.set_title(f"{case['preset']} {case['dtype']} ({case['n_params'] / 1e6:.1f}M params, "
                     f"{case['n_tensors']} tensors)", fontsize=10)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def step_time(doc, path):
    """Median step time with the interquartile range as error bars (log scale: the spread between a
    fused kernel and a Python loop is orders of magnitude)."""
    def value(r):
        t = r["time"]
        return t["median_ms"], t["median_ms"] - t["p25_ms"], t["p75_ms"] - t["median_ms"]
    return _bars(doc, path, value, "step time (ms, median, IQR bars)", f"Optimizer step time — {_where(doc)}",
                 log=True)


def bandwidth(doc, path):
    """Achieved GB/s as a percentage of a same-size copy's; the dashed line is the copy (100%)."""
    return _bars(doc, path, lambda r: (100 * r["frac_copy_bw"], None, None), "% of copy bandwidth",
                 f"Fraction of memory bandwidth — {_where(doc)}", reference_line=100)


def scaling(doc, path, sweep):
    """Step time against the swept quantity, one line per implementation, with the copy of the same
    bytes as a dashed floor: a line parallel to it is bandwidth-bound, a flat one overhead-bound."""
    points = [p for p in doc.get("sweeps", []) if p["sweep"] == sweep]
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    labels = sorted({r["label"] for p in points for r in p["rows"]})
    for label in labels:
        xy = [(p["x"], r["time"]["median_ms"]) for p in points for r in p["rows"] if r["label"] == label]
        optimizer, impl = label.split(" ", 1)
        marker, style = OPTIMIZER_STYLES.get(optimizer, ("x", "-."))
        ax.plot(*zip(*xy), marker=marker, linestyle=style, label=label, color=IMPL_COLORS.get(impl, "gray"))
    ax.plot([p["x"] for p in points], [p["copy_time_ms"] for p in points], "k--",
            label=f"copy of {points[0]['copy_algorithm']} bytes")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    if sweep == "params":
        ax.set_xlabel(f"parameters (in {points[0]['n_tensors']} tensors)")
    else:
        ax.set_xlabel(f"tensors (holding {points[0]['n_params']} parameters in all)")
    ax.set_ylabel("step time (ms, median)")
    ax.set_title(f"Step time against {sweep} — {points[0]['dtype']}, {_where(doc)}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _where(doc):
    m = doc["machine"]
    return m["gpu"]["name"] if m.get("gpu") else f"{m['cpu']} x{m['cpu_count']}"


def write_all(doc, out_dir) -> list:
    """Every plot the document has data for; returns the paths written."""
    written = [
        step_time(doc, os.path.join(out_dir, "step_time.png")),
        bandwidth(doc, os.path.join(out_dir, "bandwidth.png")),
        scaling(doc, os.path.join(out_dir, "scaling_params.png"), "params"),
        scaling(doc, os.path.join(out_dir, "scaling_tensors.png"), "tensors"),
    ]
    return [p for p in written if p]
