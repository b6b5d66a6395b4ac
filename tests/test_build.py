"""The extension as built: one abi3 module (Python's limited API) that loads into the Python it was
built with and says which torch it was built against; a build for another torch is refused with a
message that names both versions and the fix."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from noisefuse.backends import native

pytestmark = pytest.mark.skipif(native.load_error() is not None, reason=f"native extension: {native.load_error()}")


def test_abi3_module_loads_and_reports_its_torch():
    out = subprocess.run([sys.executable, "-c", "import noisefuse._C as c; print(c.__file__); print(c.torch_version)"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[0].endswith("_C.abi3.so"), out[0]
    assert out[1] == torch.__version__.split("+")[0]


def test_a_build_for_another_torch_is_refused_by_name():
    major, minor = torch.__version__.split(".")[:2]
    other = f"{major}.{int(minor) + 1}.0"
    error = native._torch_mismatch(other)
    assert isinstance(error, ImportError)
    assert f"built against torch {other}" in str(error) and torch.__version__ in str(error)
    assert "rebuild it against this torch" in str(error)
    assert "by an older noisefuse" in str(native._torch_mismatch(None))
    assert native._torch_mismatch(torch.__version__.split("+")[0]) is None
