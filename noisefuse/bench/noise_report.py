"""The noise section's outputs: its tables in report.txt and the terminal, and one PNG
(``noise.png``: step time of each noise variant per backend next to the unfused route)."""
from __future__ import annotations

import os
import textwrap

from . import noise as noise_bench

_ROW_COLUMNS = (("optimizer", 9), ("implementation", 9), ("noise", 31), ("ms", 10), ("±%", 6),
                ("MB/step", 9), ("GB/s", 8), ("%copy", 6), ("read GB/s", 9), ("read %copy", 10),
                ("ops", 7), ("+peak MB", 9), ("check", 0))
_CMP_COLUMNS = (("optimizer", 9), ("backend", 9), ("iso/plain", 9), ("fisher/mult", 11), ("fisher/plain", 12),
                ("mult/plain", 10), ("x unfused fisher", 16), ("x unfused mult", 14), ("read %copy", 10),
                ("targets", 0))
_VARIANT_ORDER = {v: i for i, v in enumerate(noise_bench.VARIANTS + tuple(f"unfused_{k}" for k in noise_bench.ROW_NOISES))}


def _line(cells, columns, text_columns) -> str:
    out = []
    for i, (cell, (_, width)) in enumerate(zip(cells, columns)):
        out.append(f"{cell:<{width}}" if i < text_columns or width == 0 else f"{cell:>{width}}")
    return " ".join(out).rstrip()


def _variant_label(row) -> str:
    label = row["variant"].replace("_", " ") if row["variant"] != "plain" else "none"
    if row["backend"] == "unfused":
        label = f"{label.removeprefix('unfused ')} (torch + {row.get('plain_backend', '?')})"
    return label


def _fmt_target(value) -> str:
    return "n/a" if value is None else ("met" if value else "NOT met")


def _targets(c) -> str:
    t = c["targets"]
    if not c["fused"]:
        return "n/a (not a fused backend)"
    return (f"overhead {_fmt_target(t['noise_overhead_le_10pct'])}, 2x {_fmt_target(t['grad_sample_speedup_ge_2x'])}, "
            f"80% read bw {_fmt_target(t['read_bw_ge_80pct_copy'])}")


def format_noise(section: dict) -> str:
    cfg = section["config"]
    head = (f"gradient noise | {cfg['dtype']} | {cfg['n_params'] / 1e6:.2f}M params in {cfg['n_tensors']} tensors | "
            f"grad_sample B={cfg['batch']} | unfused route: torch ops + {cfg['unfused_plain_backend']} plain step")
    if section["copies"]:
        head += " | copy " + ", ".join(f"{c['gbps']:.1f} GB/s for {c['bytes'] / 1e6:.3g} MB" for c in section["copies"])
    parts = [head]
    if section["rows"]:
        lines = [_line([h for h, _ in _ROW_COLUMNS], _ROW_COLUMNS, 3)]
        rows = sorted(section["rows"], key=lambda r: (cfg["optimizers"].index(r["optimizer"]),
                                                      r["backend"] == "unfused", r["backend"],
                                                      _VARIANT_ORDER[r["variant"]]))
        for r in rows:
            t = r["time"]
            peak = "n/a" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 1e6:.1f}"
            lines.append(_line([r["optimizer"], r["backend"], _variant_label(r), f"{t['median_ms']:.3f}",
                                f"{100 * t['spread']:.1f}", f"{r['bytes_per_step'] / 1e6:.1f}", f"{r['gbps']:.2f}",
                                f"{100 * r['frac_copy_bw']:.1f}", f"{r['read_gbps']:.2f}",
                                f"{100 * r['read_frac_copy_bw']:.1f}", str(r["launches"]), peak, r["check"]],
                               _ROW_COLUMNS, 3))
        parts.append("\n".join(lines))
    if section["comparisons"]:
        lines = [_line([h for h, _ in _CMP_COLUMNS], _CMP_COLUMNS, 2)]
        for c in section["comparisons"]:
            read = min(c[f"{k}_read_frac_copy_bw"] for k in noise_bench.ROW_NOISES)
            lines.append(_line([c["optimizer"], c["backend"], f"{1 + c['isotropic_overhead']:.3f}",
                                f"{1 + c['diag_fisher_overhead']:.3f}", f"{c['diag_fisher_over_plain']:.2f}",
                                f"{c['multiplicative_over_plain']:.2f}", f"{c['speedup_diag_fisher']:.2f}",
                                f"{c['speedup_multiplicative']:.2f}", f"{100 * read:.1f}", _targets(c)],
                               _CMP_COLUMNS, 2))
        parts.append("\n".join(lines))
    legend = ("noise: none = plain step reading p.grad; isotropic = the same plus one normal per element; "
              "multiplicative / diag fisher = the step forms g from the B grad_sample rows (the same traffic; "
              "fisher also draws one normal per element); (torch + X) = the unfused route: the noisy g formed "
              "with torch ops into p.grad, then X's plain step. MB/step: the fused noisy step's bytes "
              "(bytes_model.noisy_traffic), for the unfused route too; read GB/s: its reads over the time; "
              "%copy: over dst.copy_(src) of the same bytes. iso/plain and fisher/mult are the cost of the "
              "random numbers over the same memory traffic (target <= 1.10); x unfused: unfused route time over "
              "the fused noisy step's (target >= 2); read %copy: the lower of the two grad_sample noises' "
              "(target >= 80% on GPU). Targets apply to fused backends (native, triton) only.")
    parts.append(textwrap.fill(legend, width=110))
    if section["notes"]:
        parts.append("noise notes:\n" + "\n".join(f"  - {n}" for n in section["notes"]))
    return "\n\n".join(parts)


def plot(section: dict, out_dir: str):
    """``noise.png``: median step time (IQR bars) of every noise row, one panel per optimizer."""
    if not section.get("rows"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    optimizers = section["config"]["optimizers"]
    fig, axes = plt.subplots(1, len(optimizers), figsize=(7 * len(optimizers), 4.5), squeeze=False)
    colors = {"plain": "tab:gray", "isotropic": "tab:blue", "multiplicative": "tab:green",
              "diag_fisher": "tab:red", "unfused_multiplicative": "tab:olive", "unfused_diag_fisher": "tab:pink"}
    for ax, optimizer in zip(axes[0], optimizers):
        rows = sorted((r for r in section["rows"] if r["optimizer"] == optimizer),
                      key=lambda r: (r["backend"] == "unfused", r["backend"], _VARIANT_ORDER[r["variant"]]))
        t = [r["time"] for r in rows]
        ax.barh(range(len(rows)), [x["median_ms"] for x in t],
                xerr=[[x["median_ms"] - x["p25_ms"] for x in t], [x["p75_ms"] - x["median_ms"] for x in t]],
                color=[colors.get(r["variant"], "gray") for r in rows])
        ax.set_yticks(range(len(rows)), [f"{r['backend']}: {_variant_label(r)}" for r in rows], fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("step time (ms, median, IQR bars)")
        ax.set_title(optimizer, fontsize=10)
    cfg = section["config"]
    fig.suptitle(f"Gradient noise: {cfg['n_params'] / 1e6:.1f}M {cfg['dtype']} params in {cfg['n_tensors']} "
                 f"tensors, grad_sample B={cfg['batch']} ({cfg['device']})", fontsize=10)
    fig.tight_layout()
    path = os.path.join(out_dir, "noise.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
