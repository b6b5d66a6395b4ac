"""CPU check of the native backend against the issue's targets: on a ~30M-parameter float32 model,
the native step is >= 4x faster than the foreach step of the same optimizer and moves its bytes at
>= 85% of the bandwidth of a plain torch copy of the same number of bytes, measured in the same run.

    .venv/bin/python benchmarks/native_cpu_check.py [--repeats 15] [--configs adapnm pnm demon_adam]

Bytes per element of a step: every tensor it reads plus every tensor it writes (docs/backends/native.md).
The copy moves the same total: it reads and writes half of it each.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import noisefuse as nf

# A 29.4M-parameter model: 8 blocks of a 512-wide transformer (4 attention + 2 MLP matrices, their
# biases and norms) and an 8K x 512 embedding; a 1001-element bias keeps the vector tails exercised.
SHAPES = [(8192, 512), (1001,)] + [s for _ in range(8) for s in
                                   [(512, 512)] * 4 + [(2048, 512), (512, 2048), (2048,), (512,), (512,), (512,)]]

OPTIMIZERS = {
    # name: (factory, tensors read per element, tensors written per element)
    "adapnm": (lambda ps, b: nf.AdaPNM(ps, lr=1e-3, weight_decay=0.01, backend=b), 6, 4),
    "pnm": (lambda ps, b: nf.PNM(ps, lr=0.05, weight_decay=0.01, backend=b), 4, 2),
    "demon_adam": (lambda ps, b: nf.DemonAdam(ps, lr=1e-3, total_steps=1000, backend=b), 4, 3),
    "demon_sgd": (lambda ps, b: nf.DemonSGD(ps, lr=0.05, momentum=0.9, total_steps=1000, backend=b), 3, 2),
}


def interleaved_medians(fns, repeats, warmups=1):
    """Median seconds of each callable, timed in rounds (one call of each per round) so that load
    from other processes on a shared machine hits every candidate alike."""
    for fn in fns.values():
        for _ in range(warmups):
            fn()  # warm-up: state allocation, first-touch page faults
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def make_optimizer(factory, backend):
    params = [torch.randn(s, requires_grad=True) for s in SHAPES]
    for p in params:
        p.grad = torch.randn_like(p)
    return factory(params, backend)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--configs", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    args = parser.parse_args()

    numel = sum(torch.Size(s).numel() for s in SHAPES)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(SHAPES)} tensors, "
          f"{numel / 1e6:.1f}M float32 params")
    for name in args.configs:
        factory, reads, writes = OPTIMIZERS[name]
        step_bytes = (reads + writes) * 4 * numel
        copy_src = torch.randn(step_bytes // 8)
        copy_dst = torch.empty_like(copy_src)
        native_opt, foreach_opt = make_optimizer(factory, "native"), make_optimizer(factory, "foreach")
        results = interleaved_medians({"native": native_opt.step, "foreach": foreach_opt.step,
                                       "copy": lambda: copy_dst.copy_(copy_src)}, args.repeats)
        del native_opt, foreach_opt
        gbps = {k: step_bytes / t / 1e9 for k, t in results.items()}
        print(f"{name:11s} {step_bytes / 1e9:.2f} GB/step | native {results['native'] * 1e3:7.1f} ms "
              f"({gbps['native']:5.1f} GB/s) | foreach {results['foreach'] * 1e3:7.1f} ms | copy "
              f"{results['copy'] * 1e3:7.1f} ms ({gbps['copy']:5.1f} GB/s) | native/foreach speedup "
              f"{results['foreach'] / results['native']:.2f}x | native/copy bandwidth {gbps['native'] / gbps['copy']:.0%}")


if __name__ == "__main__":
    main()
