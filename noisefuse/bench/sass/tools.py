"""Finding ``cuobjdump`` and ``nvdisasm``: on PATH, in ``$CUDA_HOME/bin``, in ``/usr/local/cuda/bin``,
or in the PyPI packages ``nvidia-cuda-cuobjdump`` / ``nvidia-cuda-nvdisasm`` (CUDA 13, they put the
binaries under ``site-packages/nvidia/cu13/bin``), which are installed into the running Python with
pip when missing and allowed."""
from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

PACKAGES = {"cuobjdump": "nvidia-cuda-cuobjdump", "nvdisasm": "nvidia-cuda-nvdisasm"}


class ToolMissing(RuntimeError):
    """A tool is not here and could not be installed (no network, pip refused, install not allowed)."""


def _site_dirs() -> list[Path]:
    dirs = [Path(p) for p in site.getsitepackages()]
    user = site.getusersitepackages()
    return dirs + ([Path(user)] if user else [])


def _candidates(name: str) -> list[Path]:
    found = []
    on_path = shutil.which(name)
    if on_path:
        found.append(Path(on_path))
    for root in filter(None, (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda")):
        found.append(Path(root) / "bin" / name)
    for sp in _site_dirs():
        # The CUDA 13 wheels share nvidia/cu13/bin; older ones had a folder per package.
        found += sorted(sp.glob(f"nvidia/cu*/bin/{name}")) + sorted(sp.glob(f"nvidia/cuda_*/bin/{name}"))
    return found


def find(name: str) -> Path | None:
    """The first runnable ``name`` among the places above, or None."""
    for path in _candidates(name):
        if path.is_file():
            if not os.access(path, os.X_OK):  # wheels unpacked by hand may lose the bit
                try:
                    path.chmod(path.stat().st_mode | 0o111)
                except OSError:
                    continue
            return path
    return None


def install(names: list[str]) -> None:
    """pip-install the packages of ``names`` into this interpreter's environment (printed first)."""
    pkgs = [PACKAGES[n] for n in names]
    print(f"noisefuse.bench.sass: installing {' '.join(pkgs)} into {sys.prefix} with pip", flush=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--timeout", "15", "--retries", "1", *pkgs],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise ToolMissing(f"pip install {' '.join(pkgs)} failed: {(proc.stderr or proc.stdout).strip()[-400:]}")


def tools(allow_install: bool = True) -> dict[str, Path]:
    """{"cuobjdump": path, "nvdisasm": path}; installs what is missing when ``allow_install``, else
    raises ToolMissing naming the packages."""
    missing = [n for n in PACKAGES if find(n) is None]
    if missing and allow_install:
        install(missing)
    paths = {n: find(n) for n in PACKAGES}
    absent = [n for n, p in paths.items() if p is None]
    if absent:
        raise ToolMissing(f"{', '.join(absent)} not found on PATH, in $CUDA_HOME/bin or site-packages "
                          f"(pip install {' '.join(PACKAGES[n] for n in absent)})")
    return paths


def version(tool: Path) -> str:
    """The tool's release line, e.g. 'Cuda compilation tools, release 13.0, V13.0.88'."""
    out = subprocess.run([str(tool), "--version"], capture_output=True, text=True).stdout
    lines = [line for line in out.splitlines() if "release" in line]
    return lines[-1].strip() if lines else out.strip().splitlines()[-1] if out.strip() else "unknown"
