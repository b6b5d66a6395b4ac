"""``python -m noisefuse.bench.render DIR``: the summary tables of a results folder's README, written
from the folder's results.json (the same for CPU and GPU runs), so that no figure is copied by hand.

The tables go between two marker lines in DIR/README.md and replace what was there; the prose
around them is kept. A README without the markers gets them appended (a new README starts with a
heading and the machine the run names). ``--check`` exits 1 when the README's tables differ from
what results.json gives, without writing."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BEGIN = "<!-- tables rendered from results.json by `python -m noisefuse.bench.render`: do not edit by hand -->"
END = "<!-- end of rendered tables -->"

# The implementation of another library that moves the same bytes as each noisefuse optimizer.
COUNTERPART = {"PNM": ("pytorch_optimizer", "PNM", ("loop", "foreach")),
               "AdaPNM": ("pytorch_optimizer", "AdaPNM", ("loop", "foreach")),
               "DemonSGD": ("torch", "SGD", ("fused", "foreach")),
               "DemonAdam": ("torch", "AdamW", ("fused", "foreach"))}
FUSED = ("native", "triton")
SASS_KIND = "sass-report"  # noisefuse/bench/sass/report.py's KIND
NAMES = {"AdaPNM": "AdaPNM (amsgrad)"}


def number(value: float) -> str:
    """Milliseconds to three significant figures or one decimal, whichever is coarser."""
    return f"{value:.{1 if value >= 10 else 2 if value >= 1 else 3}f}"


def ms(value: float | None) -> str:
    return "-" if value is None else f"{number(value)} ms"


def _median(row) -> float:
    return row["time"]["median_ms"]


def machine_line(doc: dict) -> str:
    m = doc["machine"]
    gpu = f"{m['gpu']['name']} ({m['gpu']['memory_gib']} GiB)" if m.get("gpu") else "no GPU"
    return (f"{m['date'][:10]}: {gpu}; {m['cpu']} x{m['cpu_count']} ({m['torch_threads']} threads); Python "
            f"{m['python']}, torch {m['torch']}, Triton {m['triton'] or 'absent'}, noisefuse {m['noisefuse']} at "
            f"`{m['noisefuse_commit']}`; `{' '.join(['python -m noisefuse.bench'] + doc['config']['argv'])}`")


def case_table(case: dict, rows: list) -> str:
    """One line per noisefuse optimizer: each fused backend and foreach, the best fused backend's
    speedup and share of copy bandwidth, on a GPU its host and graph-replay times, and the other
    library's implementation of the same traffic."""
    by = {(r["optimizer"], r["library"], r["impl"]): r for r in rows}
    fused = [b for b in FUSED if any(r["library"] == "noisefuse" and r["impl"] == b for r in rows)]
    gpu = any(r.get("host_time") for r in rows)
    head = ["optimizer", *fused, "foreach", "speedup", "% of copy bandwidth"]
    head += ["host / graph replay"] if gpu else []
    head += ["same traffic elsewhere: fast / foreach"]
    lines = [f"**{case['preset']}**, {case['dtype']}: {case['n_params'] / 1e6:.1f}M params in "
             f"{case['n_tensors']} tensors", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for optimizer in COUNTERPART:
        mine = [by.get((optimizer, "noisefuse", b)) for b in fused]
        foreach = by.get((optimizer, "noisefuse", "foreach"))
        measured = [r for r in mine if r is not None]
        if not measured and foreach is None:
            continue
        best = min(measured, key=_median) if measured else None
        speedup = f"{_median(foreach) / _median(best):.1f}x" if best and foreach else "-"
        cells = [NAMES.get(optimizer, optimizer), *(ms(_median(r)) if r else "-" for r in mine),
                 ms(_median(foreach)) if foreach else "-", speedup,
                 f"{100 * best['frac_copy_bw']:.0f}%" if best else "-"]
        if gpu:
            host = best.get("host_time") if best else None
            graph = (best.get("graph") or {}).get("time") if best else None
            cells.append(f"{ms(host['median_ms']) if host else '-'} / {ms(graph['median_ms']) if graph else '-'}")
        library, name, impls = COUNTERPART[optimizer]
        other = [by.get((name, library, impl)) for impl in impls]
        times = " / ".join(number(_median(r)) if r else "-" for r in other)
        cells.append(f"{library} {name} {' / '.join(impls)}: {times} ms" if any(other) else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def noise_table(section: dict) -> str:
    """Per noisefuse optimizer and noise backend: the plain step, isotropic noise, and the two noises
    that read grad_sample, fused against the unfused route."""
    cfg = section["config"]
    lines = [f"**Gradient noise**, {cfg['dtype']}: {cfg['n_params'] / 1e6:.2f}M params in {cfg['n_tensors']} "
             f"tensors, grad_sample B = {cfg['batch']}", "",
             "| optimizer | backend | plain step | isotropic | multiplicative, fused / unfused | "
             "diag-Fisher, fused / unfused | grad_sample read, % of copy |", "|" + " --- |" * 7]
    for c in section["comparisons"]:
        read = min(c["multiplicative_read_frac_copy_bw"], c["diag_fisher_read_frac_copy_bw"])
        lines.append(
            f"| {c['optimizer']} | {c['backend']} | {ms(c['plain_ms'])} | {ms(c['isotropic_ms'])} "
            f"({c['isotropic_ms'] / c['plain_ms']:.1f}x) | {ms(c['multiplicative_ms'])} / "
            f"{ms(c['unfused_multiplicative_ms'])} ({c['speedup_multiplicative']:.2f}x) | {ms(c['diag_fisher_ms'])} / "
            f"{ms(c['unfused_diag_fisher_ms'])} ({c['speedup_diag_fisher']:.2f}x) | {100 * read:.0f}% |")
    return "\n".join(lines)


def render(doc: dict) -> str:
    """The generated block: the run's line, a table per (preset, dtype), the noise section, the
    number of notes (report.txt has them). A static SASS report (``python -m noisefuse.bench.sass``)
    has its own tables (noisefuse/bench/sass/report.py)."""
    if doc.get("kind") == SASS_KIND:
        from noisefuse.bench.sass import report as sass_report
        return sass_report.render(doc)
    parts = [BEGIN, f"Run: {machine_line(doc)}."]
    for case in doc["cases"]:
        rows = [r for r in doc["rows"] if r["preset"] == case["preset"] and r["dtype"] == case["dtype"]]
        if rows:
            parts.append(case_table(case, rows))
    if doc.get("noise") and doc["noise"]["comparisons"]:
        parts.append(noise_table(doc["noise"]))
    notes = len(doc["notes"]) + len((doc.get("noise") or {}).get("notes", []))
    parts.append(f"Median step times; speedup: foreach over the fastest fused backend; {notes} notes in "
                 "report.txt (skipped implementations, budgets, checks).")
    parts.append(END)
    return "\n\n".join(parts) + "\n"


def updated_readme(old: str | None, doc: dict) -> str:
    block = render(doc)
    if old is None and doc.get("kind") == SASS_KIND:
        return f"# Static SASS report (estimates, not measurements), {doc['machine']['date'][:10]}\n\n{block}"
    if old is None:
        kind = "GPU" if doc["machine"].get("gpu") else "CPU"
        return f"# {kind} results, {doc['machine']['date'][:10]}\n\n{block}"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        return head + block.rstrip("\n") + rest.split(END, 1)[1]
    return old.rstrip("\n") + "\n\n" + block


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m noisefuse.bench.render", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="a results folder holding results.json")
    p.add_argument("--check", action="store_true", help="exit 1 if README.md's tables are not results.json's")
    args = p.parse_args(argv)
    doc = json.loads((args.folder / "results.json").read_text())
    readme = args.folder / "README.md"
    old = readme.read_text() if readme.exists() else None
    new = updated_readme(old, doc)
    if args.check:
        if new != old:
            print(f"{readme}: its tables differ from {args.folder / 'results.json'}; run "
                  f"python -m noisefuse.bench.render {args.folder}", file=sys.stderr)
            return 1
        return 0
    readme.write_text(new)
    print(f"wrote {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
