"""The machine code of selected kernels of a CUDA library: per architecture, the ELF members
(cubins) that hold them, their resource usage (``cuobjdump -res-usage``) and their SASS
(``nvdisasm -c``), demangled with ``c++filt``.

Extracting from a large library is slow (torch's ``libtorch_cuda.so``: ~20 s to list its 2,975
members, ~12 s per extraction pass), so the result is cached under ``build/sass-cache/``, keyed by
the library's resolved path, size and mtime, the architecture and the tools' version; a cache entry is
one gzipped JSON file of the selected kernels."""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from . import tools as toolbox

CACHE_FORMAT = 1
DEFAULT_CACHE = Path(__file__).resolve().parents[3] / "build" / "sass-cache"


@dataclass
class Kernel:
    """One function of one cubin: its names, resources and SASS text (nvdisasm's, labels and all)."""
    library: str
    arch: str
    mangled: str
    demangled: str
    registers: int
    stack: int
    shared: int
    local: int
    constant: int
    sass: str


def run(cmd: list, cwd: Path | None = None) -> str:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd[:3]))} ... failed ({proc.returncode}): "
                           f"{proc.stderr.strip()[-400:]}")
    return proc.stdout


def module_path() -> Path:
    """The compiled extension noisefuse._C (``noisefuse/_C.abi3.so``), found without importing it."""
    spec = importlib.util.find_spec("noisefuse")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the noisefuse package is not importable")
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("_C*.so"))
        if found:
            return found[0].resolve()
    raise FileNotFoundError("noisefuse/_C*.so not found: build the extension (make build) or pass --module")


def torch_cuda_library() -> Path:
    """libtorch_cuda.so of the installed torch, found without importing torch."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("torch is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "lib" / "libtorch_cuda.so"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (a CPU-only torch has no CUDA kernels)")
    return path.resolve()


def demangle(names: list[str]) -> list[str]:
    """c++filt over all names at once; the mangled name where c++filt is absent."""
    exe = shutil.which("c++filt")
    if exe is None or not names:
        return list(names)
    out = subprocess.run([exe], input="\n".join(names) + "\n", capture_output=True, text=True).stdout.splitlines()
    return out if len(out) == len(names) else list(names)


def elf_members(cuobjdump: Path, library: Path, arch: str) -> list[str]:
    """Names of the library's ELF members for ``arch`` and its variants (sm_90 also lists sm_90a), in
    order, e.g. 'libtorch_cuda.2421.sm_90.cubin'."""
    names = re.findall(r"ELF file\s+\d+:\s+(\S+)", run([cuobjdump, "-lelf", library]))
    return [n for n in names if re.search(rf"\.{arch}[a-z]?\.cubin$", n)]


def member_functions(cuobjdump: Path, library: Path, arch: str) -> list[tuple[str, list[str]]]:
    """Per ELF member that ``-arch arch`` selects (the order of elf_members): its exact architecture
    and the names of its kernel entry points."""
    sections = run([cuobjdump, "-symbols", "-arch", arch, library]).split("Fatbin elf code:")[1:]
    return [(re.search(r"arch = (\S+)", s).group(1), re.findall(r"^FUNC\s+\S+\s+\S+\s+ENTRY\s+(\S+)", s, re.M))
            for s in sections]


def parse_resources(text: str) -> dict[str, dict[str, int]]:
    """``cuobjdump -res-usage`` output to {mangled: {"REG": 40, "STACK": 0, "SHARED": ..., ...}}."""
    usage = {}
    for name, fields in re.findall(r"Function (\S+?):\s*\n\s*(REG:.*)", text):
        usage[name] = {k: int(v) for k, v in re.findall(r"([A-Z]+)(?:\[\d+\])?:(\d+)", fields)}
    return usage


def split_functions(sass: str) -> dict[str, str]:
    """nvdisasm -c output to {mangled: text of its .text section}."""
    parts = re.split(r"^//-+ \.text\.(\S+) -+\s*$", sass, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def _cache_file(cache: Path, library: Path, arch: str, label: str, tool_version: str) -> Path:
    st = library.stat()
    key = hashlib.sha1(f"{CACHE_FORMAT}|{library}|{st.st_size}|{st.st_mtime_ns}|{arch}|{label}|{tool_version}"
                       .encode()).hexdigest()[:16]
    return cache / f"{library.name}-{arch}-{label}-{key}.json.gz"


def kernels(library: Path, arch: str, want: Callable[[str], bool], label: str, library_name: str,
            paths: dict[str, Path], cache: Path = DEFAULT_CACHE) -> list[Kernel]:
    """The kernels of ``library`` for ``arch`` whose mangled name satisfies ``want``. ``label`` names
    the selection in the cache key (a different ``want`` must use a different label)."""
    library = Path(library).resolve()
    cache_file = _cache_file(cache, library, arch, label, toolbox.version(paths["cuobjdump"]))
    if cache_file.exists():
        return [Kernel(**k) for k in json.loads(gzip.decompress(cache_file.read_bytes()))]
    members = elf_members(paths["cuobjdump"], library, arch)
    functions = member_functions(paths["cuobjdump"], library, arch)
    if len(members) != len(functions):
        raise RuntimeError(f"{library.name}: {len(members)} {arch} ELF members but {len(functions)} symbol tables")
    chosen = [m for m, (a, fs) in zip(members, functions) if a == arch and any(want(f) for f in fs)]
    found: list[Kernel] = []
    if chosen:
        with tempfile.TemporaryDirectory() as tmp:
            run([paths["cuobjdump"], "-xelf", ",".join(chosen), library], cwd=Path(tmp))
            for member in chosen:
                cubin = Path(tmp) / member
                usage = parse_resources(run([paths["cuobjdump"], "-res-usage", cubin]))
                texts = split_functions(run([paths["nvdisasm"], "-c", cubin]))
                names = [n for n in texts if want(n) and n in usage]
                for name, pretty in zip(names, demangle(names)):
                    u = usage[name]
                    found.append(Kernel(library_name, arch, name, pretty, u.get("REG", 0), u.get("STACK", 0),
                                        u.get("SHARED", 0), u.get("LOCAL", 0), u.get("CONSTANT", 0), texts[name]))
    cache.mkdir(parents=True, exist_ok=True)
    cache_file.write_bytes(gzip.compress(json.dumps([asdict(k) for k in found]).encode(), 6))
    return found
