"""``python -m noisefuse.bench`` (``make bench``): step time of every noisefuse optimizer on every
backend that works here, against torch's foreach/fused optimizers and pytorch_optimizer, with bytes
moved, achieved GB/s, fraction of copy bandwidth, launches and added memory; then the gradient-noise
section (what noise adds to a step, and fused noise against forming it with torch ops first).

Writes ``results.json``, ``report.txt`` and PNG plots to ``--out`` (default ``bench-out/``) and prints
the table. See docs/benchmarks.md for what each number means.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

# The profiler's C++ logger prints banners on every profiled step; keep the terminal for the table.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")

import torch  # noqa: E402

from . import baselines, noise, noise_report, plots, presets, report, runner, state  # noqa: E402

QUICK_PRESETS = {"cpu": ("resnet50",), "cuda": ("gpt2-small", "many-small")}


def _csv(text):
    return [x.strip() for x in text.split(",") if x.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m noisefuse.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when present)")
    p.add_argument("--preset", action="append", default=None,
                   help=f"comma-separated presets ({', '.join(presets.PRESETS)}, or all); "
                        "default: a per-device list (docs/benchmarks.md)")
    p.add_argument("--params", type=int, help="add a synthetic preset with this many parameters")
    p.add_argument("--tensors", type=int, default=None, help="... split into this many tensors (default 64)")
    p.add_argument("--dtype", default=None, help="comma-separated: fp32, bf16, fp16 (default fp32 on CPU, fp32,bf16 on GPU)")
    p.add_argument("--optimizers", default=",".join(baselines.NF_OPTIMIZERS + baselines.TORCH_OPTIMIZERS),
                   help="comma-separated optimizers (default: all); PNM/AdaPNM bring pytorch_optimizer's along")
    p.add_argument("--backends", default=",".join(baselines.NF_BACKENDS),
                   help="comma-separated noisefuse backends to try (default: all; unavailable ones are skipped)")
    p.add_argument("--no-baselines", action="store_true", help="skip torch.optim and pytorch_optimizer")
    p.add_argument("--no-sweeps", action="store_true", help="skip the parameter- and tensor-count sweeps")
    p.add_argument("--quick", action="store_true", help="few samples, small presets and sweeps (smoke test)")
    p.add_argument("--noise", choices=("on", "off", "only"), default="on",
                   help="the gradient-noise section: after the main table (on, default), skipped (off), "
                        "or alone (only)")
    p.add_argument("--noise-backends", default=",".join(noise.FUSED),
                   help="comma-separated backends timed with noise (default: the fused ones, native and triton; "
                        "foreach's noise is slow, docs/benchmarks.md)")
    p.add_argument("--noise-batch", type=int, default=noise.DEFAULT_BATCH,
                   help=f"grad_sample rows per param in the noise section (default {noise.DEFAULT_BATCH})")
    p.add_argument("--noise-params", type=int, default=None,
                   help="parameters of the noise section (default: 4M on CPU, 134M on GPU, small with --quick)")
    p.add_argument("--noise-tensors", type=int, default=None, help="... split into this many tensors")
    p.add_argument("--state", choices=("on", "off", "only"), default="on",
                   help="the state-precision section (float32 and bfloat16 state against torch's fused AdamW): "
                        "after the noise section (on, default), skipped (off), or alone (only)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the main table and sweeps: what has not started when they are spent is "
                        "skipped and named in the notes (default: no limit)")
    p.add_argument("--noise-budget", type=float, default=None,
                   help="seconds for the noise section, counted from its start (default: no limit)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for CPU runs")
    p.add_argument("--out", default="bench-out", help="output folder (default bench-out/)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.tensors is not None and args.params is None:
        p.error("--tensors needs --params")
    if args.noise_tensors is not None and args.noise_params is None:
        p.error("--noise-tensors needs --noise-params")
    if args.noise_batch < 2:
        p.error("--noise-batch must be at least 2")
    return args


def _device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    return device


def _presets(args, device):
    names = [n for arg in (args.preset or []) for n in _csv(arg)]
    if "all" in names:
        names = list(presets.PRESETS)
    try:
        chosen = [presets.get(n) for n in dict.fromkeys(names)]
        if args.params is not None:
            chosen.append(presets.synthetic(args.params, args.tensors or min(64, args.params)))
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    if not chosen:
        kind = "cuda" if device.type == "cuda" else "cpu"
        chosen = [presets.get(n) for n in (QUICK_PRESETS if args.quick else presets.DEFAULT_PRESETS)[kind]]
    return chosen


def _check_names(given, known, what):
    bad = [x for x in given if x not in known]
    if bad:
        raise SystemExit(f"unknown {what}: {', '.join(bad)} (choose from {', '.join(known)})")
    return tuple(given)


class Progress:
    """The runner's progress as a tqdm bar on a terminal, or as a line per tenth of the work in a
    log (where a bar's redraws would bury the table); tqdm is imported only here."""

    def __init__(self, enabled: bool):
        self.bar, self.lines = None, enabled and not sys.stderr.isatty()
        if enabled and not self.lines:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=0, unit="run", dynamic_ncols=True, file=sys.stderr)
            except ImportError:  # a bare GPU box may lack it
                self.lines = True
        self.total = self.done = 0
        self.started = False

    def add(self, n):
        self.total += n
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.refresh()

    def _advance(self):
        if not self.started:
            return
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)

    def step(self, label):
        self._advance()
        self.started = True
        if self.bar is not None:
            self.bar.set_postfix_str(label[:40])
        elif self.lines and self.total and (10 * self.done) // self.total != (10 * (self.done + 1)) // self.total:
            print(f"  [{self.done + 1}/{self.total}] {label}", file=sys.stderr, flush=True)

    def close(self):
        self._advance()
        if self.bar is not None:
            self.bar.close()


def _state_config(args, cfg) -> state.StateConfig | None:
    """The state section's configuration: its preset for the device (resnet50 on the CPU,
    gpt2-small on a GPU), the chosen optimizers it covers; None when it does not run."""
    if args.state == "off" or args.noise == "only":
        return None
    chosen = tuple(o for o in cfg.optimizers if o in state.STATE_OPTIMIZERS)
    if not chosen:
        cfg.notes.append("state section skipped: none of PNM, AdaPNM, DemonAdam among --optimizers")
        return None
    name = state.PRESETS["cuda" if cfg.device.type == "cuda" else "cpu"]
    preset = presets.synthetic(1 << 20, 16) if args.quick else presets.get(name)
    return state.StateConfig(device=cfg.device, preset=preset, optimizers=chosen, quick=args.quick)


def _noise_config(args, cfg) -> noise.NoiseConfig | None:
    """The noise section's configuration: PNM and AdaPNM among the chosen optimizers (else the
    chosen noisefuse ones), in the first dtype; None when it does not run."""
    if args.noise == "off":
        return None
    chosen = [o for o in cfg.optimizers if o in noise.NOISE_OPTIMIZERS]
    chosen = chosen or [o for o in cfg.optimizers if o in baselines.NF_OPTIMIZERS]
    if not chosen:
        cfg.notes.append("noise section skipped: no noisefuse optimizer among --optimizers")
        return None
    n_params, n_tensors = noise.default_sizes(cfg.device, args.quick)
    if args.noise_params is not None:
        n_params, n_tensors = args.noise_params, args.noise_tensors or min(32, args.noise_params)
    return noise.NoiseConfig(device=cfg.device, n_params=n_params, n_tensors=n_tensors, batch=args.noise_batch,
                             dtype=cfg.dtypes[0], optimizers=tuple(chosen),
                             backends=_check_names(_csv(args.noise_backends), baselines.NF_BACKENDS, "backend"),
                             quick=args.quick)


def _busy_note(device, machine, key, when):
    """A note when other processes competed for the CPU (1-minute load above half the cores):
    CPU timings, and OpenMP-parallel ops above all, are then unreliable."""
    load, cores = machine.get(key), machine.get("cpu_count")
    if device.type == "cpu" and load and cores and load[0] > 0.5 * cores:
        return (f"the machine was busy when the run {when} (load average {load[0]} on {cores} CPUs): "
                "CPU timings are noisy")
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    device = _device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = _check_names(_csv(args.dtype) if args.dtype else (["fp32"] if device.type == "cpu" else ["fp32", "bf16"]),
                          list(runner.DTYPES), "dtype")
    known_opts = baselines.NF_OPTIMIZERS + baselines.TORCH_OPTIMIZERS
    cfg = runner.BenchConfig(
        device=device, presets=_presets(args, device), dtypes=list(dtypes),
        optimizers=_check_names(_csv(args.optimizers), known_opts, "optimizer"),
        backends=_check_names(_csv(args.backends), baselines.NF_BACKENDS, "backend"),
        baselines=not args.no_baselines, sweeps=not args.no_sweeps, quick=args.quick,
        budget=runner.Budget(args.budget))
    noise_cfg = _noise_config(args, cfg)
    machine = report.machine_facts(device)
    busy = _busy_note(device, machine, "load_average_start", "started")
    if busy:
        cfg.notes.append(busy)
    os.makedirs(args.out, exist_ok=True)
    what = "" if args.noise == "only" else f"presets {', '.join(p.name for p in cfg.presets)}, "
    print(f"noisefuse.bench: {device}, {what}dtypes {', '.join(dtypes)}, noise section {args.noise}"
          f"{', quick' if args.quick else ''}; writing to {args.out}/", file=sys.stderr)

    start = time.perf_counter()
    progress = Progress(enabled=not args.no_progress)
    try:
        if "only" in (args.noise, args.state):
            results = {"cases": [], "rows": [], "sweeps": [], "notes": list(cfg.notes)}
        else:
            results = runner.run(cfg, progress)
        if noise_cfg is not None and args.state != "only":
            noise_cfg.budget = runner.Budget(args.noise_budget)  # counted from here
            results["noise"] = noise.run(noise_cfg, progress)
        else:
            results["noise"] = None
        state_cfg = _state_config(args, cfg)
        results["state"] = state.run(state_cfg, progress) if state_cfg is not None else None
    finally:
        progress.close()
    elapsed = time.perf_counter() - start
    machine["load_average_end"] = report.load_average()
    busy = _busy_note(device, machine, "load_average_end", "ended")
    if busy:
        results["notes"].append(busy)
    config = {"device": str(device), "presets": [p.name for p in cfg.presets], "dtypes": list(dtypes),
              "optimizers": list(cfg.optimizers), "backends": list(cfg.backends), "baselines": cfg.baselines,
              "sweeps": cfg.sweeps, "quick": cfg.quick, "noise": args.noise, "state": args.state,
              "noise_batch": args.noise_batch, "noise_backends": args.noise_backends,
              "budget_s": args.budget, "noise_budget_s": args.noise_budget,
              "argv": sys.argv[1:] if argv is None else list(argv)}
    json_path = os.path.join(args.out, "results.json")
    report.write_json(json_path, machine, config, results, elapsed)
    text = report.format_report(machine, results, cfg.optimizers, elapsed)
    with open(os.path.join(args.out, "report.txt"), "w") as f:
        f.write(text + "\n")
    print(text)
    written = [json_path, os.path.join(args.out, "report.txt")]
    if not args.no_plots:
        with open(json_path) as f:
            doc = json.load(f)
        try:
            written += plots.write_all(doc, args.out)
            if doc.get("noise"):
                written += [p for p in [noise_report.plot(doc["noise"], args.out)] if p]
        except ImportError as exc:
            print(f"no plots: {exc} (pip install matplotlib)", file=sys.stderr)
    print("wrote " + ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
