"""What one step launches and how much memory it adds, measured on one warmed-up step.

Launches (``torch.profiler`` over one call):
- CUDA: device kernels (profiler activity ``kernel``); memcpy/memset activities are counted
  separately as ``copies``. This is what "one fused launch per step" is about.
- CPU: there are no kernels, so the count is of *top-level operator calls*: profiled ops with a
  namespace (``aten::add_``, ``noisefuse::fused_step_``) that are not nested inside another op.
  It measures the same thing, how many times the step dispatches into the library, and the report
  names it so the two are never compared.

Peak memory the step adds (on top of what the optimizer already holds):
- CUDA: ``torch.cuda.max_memory_allocated`` after the step minus ``memory_allocated`` before it,
  from the caching allocator's own statistics.
- CPU: the highest running sum of the allocation and free events the profiler records
  (``profile_memory=True``) during the step, in order; i.e. the peak of the step's temporaries.
"""
from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

LAUNCH_KINDS = {
    "cuda": "cuda_kernels",
    "cpu": "cpu_top_level_ops",
}
PEAK_METHODS = {
    "cuda": "cuda_max_memory_allocated_delta",
    "cpu": "profiler_allocation_events_running_peak",
}


def _walk(node):
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(n.children)


def _is_op(node) -> bool:
    return "TorchOp" in str(node.tag) and "::" in node.name


def _count_top_level_ops(roots) -> int:
    """Ops with no op among their ancestors (Python-level annotations such as
    ``Optimizer.step#AdaPNM.step`` are not ops and do not hide their children)."""
    count = 0
    stack = [(r, False) for r in roots]
    while stack:
        node, under_op = stack.pop()
        is_op = _is_op(node)
        if is_op and not under_op:
            count += 1
        stack.extend((c, under_op or is_op) for c in node.children)
    return count


def _allocation_peak(roots) -> int:
    events = []
    for root in roots:
        for n in _walk(root):
            if "Allocation" in str(n.tag):
                events.append((n.start_time_ns, n.extra_fields.alloc_size))
    running = peak = 0
    for _, size in sorted(events, key=lambda e: e[0]):
        running += size
        peak = max(peak, running)
    return peak


def profile_cpu(fn) -> dict:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    roots = prof.profiler.kineto_results.experimental_event_tree()
    return {
        "launches": _count_top_level_ops(roots),
        "launch_kind": LAUNCH_KINDS["cpu"],
        "copies": None,
        "peak_bytes": _allocation_peak(roots),
        "peak_method": PEAK_METHODS["cpu"],
    }


def profile_cuda(fn, device: torch.device) -> dict:
    with torch.cuda.device(device):
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        kernels = copies = 0
        for ev in prof.profiler.kineto_results.events():
            kind = ev.activity_type()
            if kind == "kernel":
                kernels += 1
            elif kind in ("gpu_memcpy", "gpu_memset"):
                copies += 1
        # Memory in a separate, unprofiled call so the profiler's own work cannot show up in it.
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(device) - before
    return {
        "launches": kernels,
        "launch_kind": LAUNCH_KINDS["cuda"],
        "copies": copies,
        "peak_bytes": max(0, peak),
        "peak_method": PEAK_METHODS["cuda"],
    }


def profile_step(fn, device: torch.device) -> dict:
    """Launch count and peak added memory of one call of ``fn`` (already warmed up)."""
    if device.type == "cuda":
        return profile_cuda(fn, device)
    return profile_cpu(fn)
