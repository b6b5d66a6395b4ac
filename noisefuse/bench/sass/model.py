"""Occupancy and the issue-rate vs bandwidth ESTIMATE of a step kernel, from its machine code.

Occupancy (blocks per SM at the launch's block size) from registers and static shared memory:
registers are allocated per warp in units of 256 (8 per thread), 64K per SM; at most 2048 threads and
32 blocks per SM; each block's shared memory plus 1 KB reserved by the system, 228 KB per SM on sm_90
and 164 KB on sm_80.

Time per element (one thread-element: one element of one thread's kIlp per iteration):
- issue (core) time = instructions per element / (SMs x 4 issue slots x 32 lanes x clock): each SM
  issues at most 4 warp-instructions per clock, one per scheduler, every instruction costing one slot
  (loads, branches and predicated-off instructions too);
- the pipes slower than that, each a floor of its own: FP64 at 64 lanes/SM/clock (H100/H200: 2
  warp-instructions per clock), MUFU and the F2F/F2I/I2F conversions at 16 lanes (0.5 per clock; the
  report lumps them into one pipe), shared memory at 32 lanes (1 warp access per clock, no bank
  conflicts);
- core time = the largest of these; memory time = the bytes the algorithm must move per element /
  DRAM bandwidth; estimated fraction of bandwidth = min(1, memory time / core time).

It ignores caches (every byte goes to DRAM once, nothing more: scale and code-book re-reads are free),
DRAM scheduling and achievable bandwidth (~90% of the peak in practice), the clock actually held under
load, latency and occupancy (enough warps and loads in flight are assumed; the report flags a
variant at one block per SM), the tail of the grid, per-block setup (thread 0's scalars and the
binary search), the counter launch, and dual issue or any stall that is not a throughput limit."""
from __future__ import annotations

from dataclasses import dataclass

REGS_PER_SM = 65536
REG_UNIT = 8  # registers per thread are allocated in multiples of 8 (256 per warp)
THREADS_PER_SM = 2048
BLOCKS_PER_SM = 32
RESERVED_SMEM = 1024
SMEM_PER_SM = {"sm_90": 228 * 1024, "sm_80": 164 * 1024}


@dataclass(frozen=True)
class Gpu:
    name: str
    arch: str
    sms: int
    clock_ghz: float
    bandwidth_tbs: float
    issue_per_sm: float = 4.0  # warp-instructions per SM per clock
    fp64_per_sm: float = 2.0
    slow_per_sm: float = 0.5  # MUFU and conversions
    shared_per_sm: float = 1.0


# Boost clock 1.98 GHz (the H100 SXM5 / H200 maximum); a busy memory-bound kernel may run lower,
# which only makes the core time longer.
H100 = Gpu("H100 SXM", "sm_90", 132, 1.98, 3.35)
H200 = Gpu("H200", "sm_90", 132, 1.98, 4.8)
GPUS = (H100, H200)


def blocks_per_sm(registers: int, shared: int, threads: int, arch: str) -> dict:
    """Blocks of ``threads`` per SM and what limits them."""
    warps = -(-threads // 32)
    regs_per_warp = -(-max(registers, 1) // REG_UNIT) * REG_UNIT * 32
    limits = {"threads": THREADS_PER_SM // (warps * 32),  # first: it names a tie
              "blocks": BLOCKS_PER_SM,
              "registers": (REGS_PER_SM // regs_per_warp) // warps,
              "shared": SMEM_PER_SM[arch] // (shared + RESERVED_SMEM)}
    n = min(limits.values())
    return {"blocks": n, "limited_by": min(limits, key=limits.get), "warps": n * warps}


def estimate(per_element: dict, bytes_per_element: float, gpu: Gpu) -> dict:
    """Core and memory time per element (picoseconds) and the estimated fraction of bandwidth.
    ``per_element``: instructions per element by class (parse.CLASSES) and 'total'; 'slow' the MUFU
    and F2F/F2I/I2F conversions among them."""
    lanes_per_ps = gpu.sms * 32 * gpu.clock_ghz * 1e-3  # per pipe slot per SM: lanes x SMs x clock (/ps)
    pipes = {"issue": per_element["total"] / (lanes_per_ps * gpu.issue_per_sm),
             "fp64": per_element.get("fp64", 0) / (lanes_per_ps * gpu.fp64_per_sm),
             "mufu+conv": per_element.get("slow", 0) / (lanes_per_ps * gpu.slow_per_sm),
             "shared": per_element.get("shared", 0) / (lanes_per_ps * gpu.shared_per_sm)}
    core = max(pipes.values())
    memory = bytes_per_element / (gpu.bandwidth_tbs * 1.0)  # bytes / (TB/s) = ps
    return {"core_ps": core, "memory_ps": memory, "bound_by": max(pipes, key=pipes.get) if core > memory else "memory",
            "core_over_memory": core / memory if memory else None,
            "frac_bandwidth": min(1.0, memory / core) if core else 1.0, "pipes_ps": pipes}
