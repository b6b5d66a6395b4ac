"""The GPU check's Nsight Compute pass (scripts/gpu_check.sh, step ``ncu``): checks the static SASS
report's estimate (benchmarks/results/sass-*, docs/backends/native.md "Reading the machine code")
against the hardware counters of three kernels, once, so the model is calibrated.

    python scripts/ncu_calibration.py run CONFIG [--device cpu]   # one step of CONFIG (what ncu profiles)
    python scripts/ncu_calibration.py table NCU_CSV...            # the counters per element, as a table
    python scripts/ncu_calibration.py metrics                     # the --metrics list ncu is given

``run`` steps CONFIG three times on one 2^24-element float32 tensor (64 MB: far past the L2, so the
counters see DRAM); ncu profiles the third step's update kernel (``--launch-skip 2 --launch-count 1``
over the step kernels). ``table`` reads ncu's ``--csv --page raw`` output and prints, per kernel,
the time, instructions executed per element (warp instructions x 32 / elements: the report's
per-thread-element count, predicated-off lanes included as the report counts them), DRAM bytes per
element and the achieved fraction of DRAM peak.
"""
from __future__ import annotations

import argparse
import csv
import sys

import torch

NUMEL = 1 << 24
# The three kernels issue #21 names: the float32 AdamW form, AdaPNM with amsgrad, AdaPNM with 8-bit state.
CONFIGS = {
    "adamw_fp32": lambda nf, ps: nf.DemonAdam(ps, total_steps=10**9, decoupled=True, weight_decay=0.01,
                                              backend="native"),
    "adapnm_amsgrad_fp32": lambda nf, ps: nf.AdaPNM(ps, weight_decay=0.01, backend="native"),
    "adapnm_8bit": lambda nf, ps: nf.AdaPNM(ps, weight_decay=0.01, backend="native",
                                            state_dtype=nf.state.Blockwise8bit(min_numel=0)),
}
METRICS = ("gpu__time_duration.sum", "smsp__inst_executed.sum", "dram__bytes_read.sum", "dram__bytes_write.sum",
           "dram__throughput.avg.pct_of_peak_sustained_elapsed")


def run(config: str, device: str) -> None:
    import noisefuse as nf

    numel = NUMEL if device == "cuda" else 4096  # the dry run checks the plumbing, not the counters
    p = torch.zeros(numel, device=device, requires_grad=True)
    opt = CONFIGS[config](nf, [p])
    g = torch.Generator(device=device).manual_seed(0)
    for _ in range(3):
        p.grad = torch.randn(numel, device=device, generator=g) * 1e-3
        opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    print(f"{config}: 3 steps of {numel} elements on {device}")


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def table(paths: list[str]) -> None:
    print(f"{'kernel':<40} {'us':>9} {'instr/elem':>11} {'DRAM B/elem':>12} {'% DRAM peak':>12}")
    for path in paths:
        with open(path, newline="") as f:
            lines = [line for line in f if line.startswith('"')]  # ncu's log lines come first
        rows = list(csv.DictReader(lines))
        for row in rows[1:] if rows and not rows[0]["ID"].isdigit() else rows:  # the units row
            m = {k: _number(row[k]) for k in METRICS if row.get(k) not in (None, "", "n/a")}
            if len(m) < len(METRICS):
                print(f"{path}: a row without every metric: {sorted(set(METRICS) - set(m))}")
                continue
            name = row["Kernel Name"].split("<")[0][:40]
            print(f"{name:<40} {m['gpu__time_duration.sum'] / 1e3:>9.1f} "
                  f"{m['smsp__inst_executed.sum'] * 32 / NUMEL:>11.1f} "
                  f"{(m['dram__bytes_read.sum'] + m['dram__bytes_write.sum']) / NUMEL:>12.2f} "
                  f"{m['dram__throughput.avg.pct_of_peak_sustained_elapsed']:>11.1f}%  ({path})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("config", choices=sorted(CONFIGS))
    r.add_argument("--device", default="cuda")
    t = sub.add_parser("table")
    t.add_argument("csv", nargs="+")
    sub.add_parser("metrics")
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args.config, args.device)
    elif args.command == "table":
        table(args.csv)
    else:
        print(",".join(METRICS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
