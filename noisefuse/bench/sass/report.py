"""The report's outputs: the terminal table, results.json and the README tables rendered from it
(between the markers of noisefuse/bench/render.py, which calls ``render`` for a SASS results folder).

Every number is an ESTIMATE from machine code (model.py), never a measurement."""
from __future__ import annotations

import json

KIND = "sass-report"

HEAD = ["variant", "regs sm_90 / sm_80", "blocks/SM", "spills: stack B, LDL+STL", "instr/elem", "fp32", "int",
        "MUFU+cvt", "fp64", "LDS/STS+BAR", "branch", "global accesses per iteration", "B/elem: algorithm / SASS",
        "core/memory H100", "est. % of bandwidth H100 / H200"]


def dumps(doc: dict) -> str:
    """results.json's text: one line per row (a diff between two reports then reads per variant)."""
    head = {k: v for k, v in doc.items() if k != "rows"}
    body = json.dumps(head, indent=1)[:-2]
    rows = ",\n".join(json.dumps(r, separators=(",", ":")) for r in doc["rows"])
    return f'{body},\n "rows": [\n{rows}\n ]\n}}\n'


def _n(x: float) -> str:
    return f"{x:.1f}" if x < 100 else f"{x:.0f}"


def cells(r: dict) -> list[str]:
    v = r["variant"]
    a90 = r["arch"].get("sm_90", {})
    a80 = r["arch"].get("sm_80", {})
    regs = f"{a90.get('registers', '-')} / {a80.get('registers', '-')}"
    occ = a90.get("occupancy")
    blocks = f"{occ['blocks']}" + (f" ({occ['limited_by']})" if occ["limited_by"] != "threads" else "") if occ else "-"
    spill = f"{a90.get('stack', 0)}, {a90.get('local_accesses', 0)}"
    hot = a90.get("hot_loop")
    if not hot:
        return [v["label"], regs, blocks, spill] + ["-"] * (len(HEAD) - 4)
    pe = hot["per_element"]
    acc = ", ".join(f"{n} {op}" for op, n in sorted(hot["global_accesses"].items()))
    sass = hot["sass_bytes_per_element"]
    alg = r.get("bytes_per_element")
    est = r.get("estimate", {})
    h100, h200 = est.get("H100 SXM"), est.get("H200")
    return [v["label"], regs, blocks, spill, _n(pe["total"]), _n(pe["fp32"]), _n(pe["int"]),
            _n(pe["mufu"] + pe["conv"]), _n(pe["fp64"]), _n(pe["shared"] + pe["barrier"]), _n(pe["branch"]),
            acc or "-", f"{alg:.1f} / {sass['read'] + sass['written']:.1f}" if alg else "-",
            f"{h100['core_over_memory']:.2f}" if h100 else "-",
            f"{100 * h100['frac_bandwidth']:.0f}% / {100 * h200['frac_bandwidth']:.0f}%" if h100 else "-"]


def table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(HEAD) + " |", "|" + " --- |" * len(HEAD)]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def groups(doc: dict) -> list[tuple[str, list[dict]]]:
    """The README's tables: torch's rows, then noisefuse's step variants without noise (float state,
    bfloat16 and float16 state, float64, 8-bit), then with each noise, then the small kernels."""
    rows = doc["rows"]
    torch = [r for r in rows if r["variant"]["library"] == "torch"]
    nf = [r for r in rows if r["variant"]["library"] == "noisefuse"]
    steps = [r for r in nf if r["variant"]["noise"] is not None]
    out = [("torch's fused kernels (the baselines)", torch),
           ("noisefuse, no noise", [r for r in steps if r["variant"]["noise"] == "none"])]
    for noise in ("isotropic", "diag_fisher", "multiplicative"):
        title = f"noisefuse, {noise.replace('_', '-')} noise"
        out.append((title, [r for r in steps if r["variant"]["noise"] == noise]))
    out.append(("noisefuse, other kernels", [r for r in nf if r["variant"]["noise"] is None]))
    return [(title, rs) for title, rs in out if rs]


def _listed(bad: list[dict], most: int = 20) -> str:
    """The violations, each with its value; past ``most`` counted per dtype pair instead."""
    if not bad:
        return ""
    if len(bad) <= most:
        return ": " + "; ".join(f"{b['label']} ({b['value']})" for b in bad)
    counts: dict[str, int] = {}
    for b in bad:
        counts[b["label"].split()[0]] = counts.get(b["label"].split()[0], 0) + 1
    return ": " + ", ".join(f"{n} {dtypes}" for dtypes, n in counts.items()) + " (results.json lists each)"


def render(doc: dict) -> str:
    """The generated block of a SASS results folder's README (noisefuse/bench/render.py's markers)."""
    from noisefuse.bench.render import BEGIN, END

    m, cfg = doc["machine"], doc["config"]
    gpus = "; ".join(f"{g['name']}: {g['sms']} SMs at {g['clock_ghz']} GHz, 4 issue slots/SM/clock, "
                     f"{g['bandwidth_tbs']} TB/s" for g in doc["gpus"])
    parts = [BEGIN,
             f"**ESTIMATE from machine code, not a measurement.** {m['date'][:10]}: `{' '.join(cfg['argv'])}`; "
             f"{m['tools']}; torch {m['torch']}; noisefuse at `{m['noisefuse_commit']}`; module "
             f"`{m['module']}` ({m['module_size']} bytes). Per element of the hot loop's longest path, "
             f"grad_sample B = {cfg['rows']} rows, 8-bit blocks of {cfg['block_size']}. {gpus}."]
    for title, rows in groups(doc):
        parts.append(f"**{title}** ({len(rows)} kernels)\n\n{table(rows)}")
    v = doc["invariants"]
    lines = [f"- `{name}`: {len(bad)} of {v['checked'][name]} variants violate it" + _listed(bad)
             for name, bad in v["violations"].items()]
    parts.append("**Invariants** (tests/test_sass_report.py)\n\n" + "\n".join(lines))
    parts.append(END)
    return "\n\n".join(parts) + "\n"
