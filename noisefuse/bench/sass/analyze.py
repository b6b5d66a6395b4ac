"""One kernel's row of the report: its variant, resources, occupancy, the hot loop's instructions and
bytes per element, and the estimate on each GPU of model.py."""
from __future__ import annotations

from collections import Counter

from . import model, parse
from .extract import Kernel
from .variants import Variant, algorithm_bytes

SLOW_CONVERSIONS = ("F2F", "F2I", "I2F")  # F2FP/I2FP pack and unpack on the ALU


def inner_trips(instrs: list[parse.Instr], path: list[int], rows: int) -> tuple[int, str]:
    """How many times an inner loop of the hot loop runs per pass, and why: a loop that loads from
    global memory (grad_sample rows) ``rows`` over the rows its path loads per pass (its loads of their
    widest width: one vector per row, the weights are narrower); anything else once. (The 8-bit
    kernel's block maximum has no loop since it takes one barrier per tile.)"""
    loads = [parse.access_bytes(instrs[i]) for i in path if parse.classify(instrs[i]) == "ldg"]
    if loads:
        per_pass = loads.count(max(loads))
        return max(1, rows // per_pass), f"grad_sample rows: {rows} rows / {per_pass} per pass"
    return 1, "unknown trip count: counted once"


def hot_loop_stats(k: Kernel, v: Variant, rows: int, parsed=None) -> dict | None:
    instrs, labels = parsed or parse.parse(k.sass)
    lp, width = parse.hot_loop(instrs, labels)
    if lp is None:
        return None
    never = parse.cold(instrs, labels)
    paths = parse.loop_paths(instrs, labels, lp, never)
    longest = paths["longest"]
    classes = Counter(longest.classes)
    slow = sum(1 for i in longest.indices if instrs[i].base in ("MUFU",) + SLOW_CONVERSIONS)
    total = longest.instructions
    sass_bytes = parse.global_bytes(instrs, longest.indices)
    inner_info = []
    for inner in parse.inner_loops(instrs, labels, lp, longest.indices):
        ipath = parse.loop_paths(instrs, labels, inner, never)["longest"]
        trips, why = inner_trips(instrs, ipath.indices, rows)
        extra = trips - 1
        for c, n in ipath.classes.items():
            classes[c] += extra * n
        slow += extra * sum(1 for i in ipath.indices if instrs[i].base in ("MUFU",) + SLOW_CONVERSIONS)
        total += extra * ipath.instructions
        inner_bytes = parse.global_bytes(instrs, ipath.indices)
        sass_bytes = {key: sass_bytes[key] + extra * inner_bytes[key] for key in sass_bytes}
        inner_info.append({"addr": [instrs[inner.head].addr, instrs[inner.latch].addr],
                           "instructions": ipath.instructions, "trips": trips, "why": why})
    ept = v.elements_per_thread
    per_elem = {c: classes.get(c, 0) / ept for c in parse.CLASSES}
    per_elem["total"] = total / ept
    per_elem["slow"] = slow / ept
    return {"addr": [instrs[lp.head].addr, instrs[lp.latch].addr], "widest_access_bytes": width,
            "path_instructions": {"longest": longest.instructions, "shortest": paths["shortest"].instructions,
                                  "body": lp.latch - lp.head + 1},
            "inner_loops": inner_info, "per_element": per_elem,
            "global_accesses": parse.widths(instrs, longest.indices),
            "sass_bytes_per_element": {key: val / ept for key, val in sass_bytes.items()},
            "fp64_in_loop": classes.get("fp64", 0), "local_in_loop": classes.get("local", 0),
            "body": body_stats(instrs, lp, never)}


def body_stats(instrs: list[parse.Instr], lp: parse.Loop, never: set[int]) -> dict:
    """What the loop's whole body holds, cold code included: FP64 and local-memory instructions, slow-path
    calls, and the instructions of the trig slow path (``never``)."""
    body = range(lp.head, lp.latch + 1)
    return {"instructions": len(body), "fp64": sum(parse.classify(instrs[i]) == "fp64" for i in body),
            "local": sum(parse.classify(instrs[i]) == "local" for i in body),
            "calls": sum(instrs[i].base == "CALL" for i in body), "trig_slow_path": sum(i in never for i in body)}


def row(by_arch: dict[str, Kernel], v: Variant, rows: int, block_size: int) -> dict:
    """The report's row of one variant from its kernel on each architecture (sm_90 first)."""
    out = {"variant": v.as_dict(), "mangled": next(iter(by_arch.values())).mangled, "arch": {}}
    for arch, k in by_arch.items():
        parsed = parse.parse(k.sass)
        instrs = parsed[0]
        info = {"registers": k.registers, "stack": k.stack, "local": k.local, "shared": k.shared,
                "instructions": len(instrs),
                "local_accesses": sum(1 for i in instrs if parse.classify(i) == "local")}
        if v.block_threads:
            info["occupancy"] = model.blocks_per_sm(k.registers, k.shared, v.block_threads, arch)
        if v.is_step:
            info["hot_loop"] = hot_loop_stats(k, v, rows, parsed)
        out["arch"][arch] = info
    alg = algorithm_bytes(v, rows, block_size)
    out["bytes_per_element"] = alg
    hot = out["arch"].get("sm_90", {}).get("hot_loop")
    if hot and alg:
        out["estimate"] = {g.name: model.estimate(hot["per_element"], alg, g) for g in model.GPUS}
    return out
