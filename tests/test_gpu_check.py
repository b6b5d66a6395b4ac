"""scripts/gpu_check.sh --dry-run: the GPU check's plan run on the CPU, so that a plumbing mistake is
found here and not on device time. What it packs is what a GPU run packs: three files, a summary
that lists every step with its status, time and limit, and an archive of every log."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from noisefuse.backends import native

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("environment", "extension", "tests-collect", "tests", "memcheck-collect", "memcheck", "racecheck-collect",
         "racecheck", "ncu", "bench")
STEP_LINE = re.compile(r"^(?P<name>\S+)\s+(?P<status>passed|skipped|FAILED\(exit \d+\)|TIMED-OUT)\s+(?P<time>\d+) s"
                       r"\s+limit\s+(?P<limit>\d+) s")

pytestmark = pytest.mark.skipif(native.load_error() is not None, reason=f"native extension: {native.load_error()}")


def dry_run(out: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", str(out)], cwd=ROOT,
                          env=dict(os.environ, PYTHON=sys.executable, **env), capture_output=True, text=True,
                          timeout=600)


def steps(summary: str) -> dict:
    return {m["name"]: m.groupdict() for m in map(STEP_LINE.match, summary.splitlines()) if m}


def test_dry_run_packs_three_files_and_reports_every_step(tmp_path):
    done = dry_run(tmp_path / "out")
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "out")) == ["results.json", "results.tar.gz", "summary.txt"]
    summary = (tmp_path / "out" / "summary.txt").read_text()
    found = steps(summary)
    assert list(found) == list(STEPS), summary
    for name in ("tests", "memcheck", "racecheck"):
        assert found[name]["status"] == "skipped"
    for name in ("environment", "extension", "tests-collect", "memcheck-collect", "ncu", "bench"):
        assert found[name]["status"] == "passed", summary
    assert re.search(r"\d+ tests collected", summary) and "13/" in summary  # the sanitizers' chosen tests
    assert "the benchmark's report" in summary and "AdaPNM" in summary
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc["rows"] and doc["config"]["budget_s"] == 20
    with tarfile.open(tmp_path / "out" / "results.tar.gz") as tar:
        names = set(tar.getnames())
    assert {f"./logs/{name}.log" for name in STEPS if found[name]["status"] != "skipped"} <= names
    assert {"./summary.txt", "./bench/results.json", "./bench/report.txt"} <= names


def test_a_plan_out_of_time_skips_and_ends_steps_but_still_packs(tmp_path):
    done = dry_run(tmp_path / "out", GPU_CHECK_LIMIT="30")
    assert sorted(os.listdir(tmp_path / "out")) == ["results.json", "results.tar.gz", "summary.txt"]
    found = steps((tmp_path / "out" / "summary.txt").read_text())
    assert list(found) == list(STEPS)
    assert all(int(s["limit"]) <= 15 for s in found.values())  # 30 s less the packing's reserve
    assert found["bench"]["status"] in ("skipped", "TIMED-OUT")
    assert done.returncode == (1 if any(s["status"] == "TIMED-OUT" for s in found.values()) else 0)
    assert json.loads((tmp_path / "out" / "results.json").read_text())  # the benchmark's, or why there is none
