"""Step timing: warm-up, then repeated timed calls; the median and the spread of the samples.

On CUDA each sample is the time between two CUDA events around one call, taken after a device
synchronisation and an L2 flush, so a sample neither overlaps the previous call nor finds its
operands still in cache (the same method as ``triton.testing.do_bench``; written out here so the
flush and the per-sample records are explicit and Triton is not needed). On the CPU each sample is
``time.perf_counter`` around one call. The number of samples adapts to the call's length: at least
``min_reps``, then more until ``min_time_s`` of samples or ``max_reps``, never past ``max_time_s``.
On CUDA each sample also records the host time of the call (``perf_counter`` from the call to its
return, which for an asynchronous step is the CPU's cost of issuing it).
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class TimingConfig:
    warmup_reps: int
    warmup_s: float
    min_reps: int
    max_reps: int
    min_time_s: float
    max_time_s: float


# Sized so that a full default run stays within minutes: CPU steps are long, so fewer samples;
# GPU steps are short and noisier relative to their length, so more. Sweeps measure many small
# points whose trend matters more than each point's last percent, so they take fewer samples.
CONFIGS = {
    ("cpu", "full"): TimingConfig(warmup_reps=2, warmup_s=0.2, min_reps=5, max_reps=50, min_time_s=1.0, max_time_s=4.0),
    ("cpu", "sweep"): TimingConfig(warmup_reps=2, warmup_s=0.1, min_reps=5, max_reps=20, min_time_s=0.3, max_time_s=2.0),
    ("cpu", "quick"): TimingConfig(warmup_reps=1, warmup_s=0.0, min_reps=3, max_reps=10, min_time_s=0.02, max_time_s=0.5),
    ("cuda", "full"): TimingConfig(warmup_reps=10, warmup_s=0.1, min_reps=20, max_reps=200, min_time_s=0.5, max_time_s=3.0),
    ("cuda", "sweep"): TimingConfig(warmup_reps=5, warmup_s=0.05, min_reps=10, max_reps=100, min_time_s=0.2, max_time_s=2.0),
    ("cuda", "quick"): TimingConfig(warmup_reps=3, warmup_s=0.0, min_reps=5, max_reps=30, min_time_s=0.1, max_time_s=1.0),
}


def config_for(device: torch.device, mode: str) -> TimingConfig:
    """``mode``: "full" (the main table), "sweep" (scaling curves) or "quick" (smoke runs)."""
    return CONFIGS[("cuda" if device.type == "cuda" else "cpu", mode)]


@dataclass(frozen=True)
class Timing:
    """Samples in seconds, and the statistics the report prints; on CUDA also the host time of each
    sample's call."""

    samples: tuple[float, ...]
    host_samples: tuple[float, ...] = ()

    @property
    def host(self) -> "Timing | None":
        return Timing(self.host_samples) if self.host_samples else None

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def quantile(self, q: float) -> float:
        xs = sorted(self.samples)
        pos = q * (len(xs) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    @property
    def spread(self) -> float:
        """Half the interquartile range relative to the median: a robust "± %" for noisy hosts."""
        return (self.quantile(0.75) - self.quantile(0.25)) / 2 / self.median if self.median > 0 else 0.0

    def as_dict(self) -> dict:
        ms = 1e3
        return {
            "median_ms": self.median * ms,
            "p25_ms": self.quantile(0.25) * ms,
            "p75_ms": self.quantile(0.75) * ms,
            "min_ms": min(self.samples) * ms,
            "max_ms": max(self.samples) * ms,
            "mean_ms": statistics.fmean(self.samples) * ms,
            "stdev_ms": (statistics.stdev(self.samples) if len(self.samples) > 1 else 0.0) * ms,
            "spread": self.spread,
            "n": len(self.samples),
        }


class _L2Flush:
    """Overwrites a buffer larger than the GPU's L2 cache between samples."""

    def __init__(self, device: torch.device):
        props = torch.cuda.get_device_properties(device)
        l2 = getattr(props, "L2_cache_size", 0) or 64 * 2**20
        self.buf = torch.empty(max(2 * l2, 256 * 2**20), dtype=torch.uint8, device=device)

    def __call__(self):
        self.buf.zero_()


def _warm_up(fn, cfg: TimingConfig, sync):
    start, n = time.perf_counter(), 0
    while n < cfg.warmup_reps or time.perf_counter() - start < cfg.warmup_s:
        fn()
        n += 1
        if n >= 100 * max(1, cfg.warmup_reps):
            break
    sync()


def _enough(n: int, total: float, elapsed: float, cfg: TimingConfig) -> bool:
    if n < cfg.min_reps:
        return False
    return n >= cfg.max_reps or total >= cfg.min_time_s or elapsed >= cfg.max_time_s


def time_cpu(fn, cfg: TimingConfig) -> Timing:
    _warm_up(fn, cfg, lambda: None)
    samples, begin = [], time.perf_counter()
    while not _enough(len(samples), sum(samples), time.perf_counter() - begin, cfg):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return Timing(tuple(samples))


def time_cuda(fn, cfg: TimingConfig, device: torch.device) -> Timing:
    with torch.cuda.device(device):
        sync = torch.cuda.synchronize
        _warm_up(fn, cfg, sync)
        flush = _L2Flush(device)
        samples, host, begin = [], [], time.perf_counter()
        while not _enough(len(samples), sum(samples), time.perf_counter() - begin, cfg):
            sync()
            flush()
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            t0 = time.perf_counter()
            fn()
            host.append(time.perf_counter() - t0)
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        del flush
    return Timing(tuple(samples), tuple(host))


def capture_graph(warm_up, step) -> "torch.cuda.CUDAGraph":
    """A CUDA graph of ``step()``, captured after ``warm_up()`` ran on a side stream (torch.cuda.graphs'
    rule: state, kernels and tables must exist before the capture, and the warm-up must not run on
    the capturing stream)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        warm_up()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph


def time_fn(fn, device: torch.device, cfg: TimingConfig) -> Timing:
    """Time ``fn()`` on ``device`` (it must do the same work on every call)."""
    if device.type == "cuda":
        return time_cuda(fn, cfg, device)
    if device.type != "cpu":
        raise ValueError(f"timing on {device.type} is not supported (cpu and cuda are)")
    return time_cpu(fn, cfg)


def time_interleaved(fns: dict, device: torch.device, cfg: TimingConfig, rounds: int, on_sample=None) -> dict:
    """Time every ``fns[key]()`` in ``rounds`` alternating rounds (forward order, then backward, ...),
    each round taking a ``1/rounds`` share of ``cfg``'s samples and time, and pool the samples per
    key. Ratios of the medians then compare calls that saw the same load from other processes,
    which back-to-back blocks of samples on a shared machine do not. ``cfg``'s warm-up runs before
    each call's first round only. ``on_sample(key)`` is called before each block (progress)."""
    rounds = max(1, rounds)
    share = replace(cfg, min_reps=max(2, math.ceil(cfg.min_reps / rounds)),
                    max_reps=max(2, cfg.max_reps // rounds), min_time_s=cfg.min_time_s / rounds,
                    max_time_s=cfg.max_time_s / rounds)
    later = replace(share, warmup_reps=0, warmup_s=0.0)
    keys, samples = list(fns), {key: [] for key in fns}
    for r in range(rounds):
        for key in (keys if r % 2 == 0 else keys[::-1]):
            if on_sample is not None:
                on_sample(key)
            samples[key] += time_fn(fns[key], device, share if r == 0 else later).samples
    return {key: Timing(tuple(v)) for key, v in samples.items()}
