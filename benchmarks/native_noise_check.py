"""CPU cost of in-kernel gradient noise in the native step: ns per element of one AdaPNM step on a
4M-element float32 param, with no noise, isotropic, diag-Fisher and multiplicative noise (the last
two read a [B, 4M] grad_sample, B=32 by default), at 1 and 2 intra-op threads.

    .venv/bin/python benchmarks/native_noise_check.py [--numel 4194304] [--batch 32] [--repeats 15]
        [--threads 1 2] [--normals]

Each number is the median of `--repeats` rounds; a round times one step of every variant in turn, so
load from other processes on a shared machine hits every variant alike. `--normals` also times
the normals alone through the AVX2 and baseline builds (NOISEFUSE_CPU_KERNEL is read per call).
"""
from __future__ import annotations

import argparse

import torch

import noisefuse as nf
from native_cpu_check import interleaved_medians  # its sibling script in benchmarks/

NOISES = {
    "none": lambda batch: None,
    "isotropic": lambda batch: nf.noise.Isotropic(0.5),
    "diag_fisher": lambda batch: nf.noise.DiagFisher(small_batch=2),
    "multiplicative": lambda batch: nf.noise.Multiplicative("gaussian", small_batch=2),
}


def make_step(noise_name, numel, batch):
    p = torch.randn(numel, requires_grad=True)
    noise = NOISES[noise_name](batch)
    opt = nf.AdaPNM([p], lr=1e-3, weight_decay=0.01, backend="native", noise=noise, seed=1234)
    if noise is not None and getattr(noise, "needs_grad_sample", False):
        p.grad_sample = torch.randn(batch, numel)
        p.grad = p.grad_sample.mean(0)
    else:
        p.grad = torch.randn(numel)
    return opt.step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numel", type=int, default=4 * 1024 * 1024)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--noises", nargs="+", default=list(NOISES), choices=list(NOISES))
    args = parser.parse_args()
    print(f"noisefuse from {nf.__file__}")
    print(f"torch {torch.__version__}, AdaPNM, {args.numel} float32 elements, B={args.batch} "
          f"(diag_fisher, multiplicative), median of {args.repeats} alternating rounds, ns/element")
    fns = {name: make_step(name, args.numel, args.batch) for name in args.noises}
    print(f"{'threads':>7s} " + " ".join(f"{n:>15s}" for n in args.noises))
    for threads in args.threads:
        torch.set_num_threads(threads)
        res = interleaved_medians(fns, args.repeats, warmups=2)
        print(f"{threads:7d} " + " ".join(f"{res[n] / args.numel * 1e9:15.2f}" for n in args.noises))


if __name__ == "__main__":
    main()
