"""``python -m noisefuse.bench.sass``: the static SASS report (see the package's docstring)."""
from __future__ import annotations

import argparse
import datetime
import gzip
import hashlib
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

from . import checks, extract, model, report, tools
from .analyze import row
from .variants import decode

ARCHS = ("sm_90", "sm_80")


def torch_wanted(name: str) -> bool:
    """torch's fused AdamW (plain and amsgrad) and SGD kernels in float32 and bfloat16 (the rest of
    the selection is left to variants.decode)."""
    return "multi_tensor_apply_kernel" in name and any(
        f"Fused{k}MathFunctorI{t}" in name for k in ("Adam", "Sgd") for t in ("f", "N3c108BFloat16"))


def _rows_cache(cache: Path, path: Path, archs, label: str, rows: int, block_size: int, paths) -> Path:
    """Where the analysed rows of one library are cached: keyed by what the SASS cache is keyed by,
    the options, and the source of the modules that turn SASS into rows."""
    st = Path(path).resolve().stat()
    here = Path(__file__).parent
    code = b"".join((here / f"{m}.py").read_bytes() for m in ("parse", "analyze", "model", "variants"))
    key = hashlib.sha1(f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}|{archs}|{label}|{rows}|{block_size}|"
                       f"{tools.version(paths['cuobjdump'])}".encode() + code).hexdigest()[:16]
    return cache / f"rows-{Path(path).name}-{label}-{key}.json.gz"


def collect(module: Path, torch_lib: Path | None, archs, paths, cache: Path, rows: int, block_size: int) -> list[dict]:
    """Rows of every decoded variant: noisefuse's first, then torch's (cached, see _rows_cache)."""
    sources = [("noisefuse", module, lambda n: True, "all")]
    if torch_lib is not None:
        sources.append(("torch", torch_lib, torch_wanted, "fused-optim"))
    out = []
    for library, path, want, label in sources:
        cached = _rows_cache(cache, path, archs, label, rows, block_size, paths)
        if cached.exists():
            out += json.loads(gzip.decompress(cached.read_bytes()))
            continue
        first = len(out)
        by_variant: dict[str, dict] = {}
        variants = {}
        for arch in archs:
            for k in extract.kernels(path, arch, want, label, library, paths, cache):
                v = decode(library, k.demangled)
                if v is None:
                    continue
                key = k.mangled
                variants[key] = v
                by_variant.setdefault(key, {})[arch] = k
        for key, by_arch in by_variant.items():
            if "sm_90" in by_arch:
                out.append(row(dict(sorted(by_arch.items(), reverse=True)), variants[key], rows, block_size))
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(gzip.compress(json.dumps(out[first:]).encode(), 6))
    return out


def sort_key(r: dict):
    v = r["variant"]
    order = ["fused_step", "blockwise_step", "torch_adamw", "torch_sgd", "advance_counters", "sample_weights"]
    return (v["library"] != "torch", order.index(v["kernel"]), v["label"])


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def build(args) -> dict:
    paths = tools.tools(allow_install=not args.no_install)
    module = Path(args.module).resolve() if args.module else extract.module_path()
    torch_lib = None if args.no_torch else (Path(args.torch_lib) if args.torch_lib else extract.torch_cuda_library())
    rows = collect(module, torch_lib, args.arch, paths, Path(args.cache), args.rows, args.block_size)
    rows.sort(key=sort_key)
    bad, checked = checks.violations(rows)
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = "absent"
    return {"kind": report.KIND, "schema_version": 1,
            "machine": {"date": datetime.datetime.now().isoformat(timespec="seconds"),
                        "tools": f"cuobjdump/nvdisasm {tools.version(paths['cuobjdump']).split(',')[-1].strip()}",
                        "torch": torch_version, "noisefuse_commit": commit(), "module": module.name,
                        "module_size": module.stat().st_size},
            "config": {"argv": ["python -m noisefuse.bench.sass"] + list(args.argv), "archs": list(args.arch),
                       "rows": args.rows, "block_size": args.block_size},
            "gpus": [{"name": g.name, "arch": g.arch, "sms": g.sms, "clock_ghz": g.clock_ghz,
                      "bandwidth_tbs": g.bandwidth_tbs, "issue_per_sm": g.issue_per_sm, "fp64_per_sm": g.fp64_per_sm,
                      "mufu_conv_per_sm": g.slow_per_sm, "shared_per_sm": g.shared_per_sm} for g in model.GPUS],
            "rows": rows, "invariants": {"violations": bad, "checked": checked}}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m noisefuse.bench.sass", description=__doc__)
    p.add_argument("--module", help="the compiled extension (default: noisefuse/_C*.so of the importable package)")
    p.add_argument("--torch-lib", help="libtorch_cuda.so to compare with (default: the installed torch's)")
    p.add_argument("--no-torch", action="store_true", help="leave torch's kernels out")
    p.add_argument("--arch", action="append", choices=ARCHS, help="architectures (default: sm_90 and sm_80)")
    p.add_argument("--rows", type=int, default=32, help="grad_sample rows B for the noises that read them")
    p.add_argument("--block-size", type=int, default=256, help="8-bit state block size")
    p.add_argument("--cache", default=str(extract.DEFAULT_CACHE), help="where extracted SASS is cached")
    p.add_argument("--out", type=Path, default=Path("bench-out/sass"), help="results folder (results.json, README.md)")
    p.add_argument("--no-install", action="store_true", help="do not pip-install missing cuobjdump/nvdisasm")
    args = p.parse_args(argv)
    args.arch = tuple(args.arch or ARCHS)
    args.argv = argv
    try:
        doc = build(args)
    except (tools.ToolMissing, FileNotFoundError) as e:
        print(f"noisefuse.bench.sass: {e}", file=sys.stderr)
        return 2
    print(report.table(doc["rows"]))
    for name, bad in doc["invariants"]["violations"].items():
        print(f"{name}: {len(bad)} of {doc['invariants']['checked'][name]} violate" +
              "".join(f"\n  {b['label']}: {b['value']}" for b in bad))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(report.dumps(doc))
    from noisefuse.bench import render
    render.main([str(args.out)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
