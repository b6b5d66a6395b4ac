"""``python -m noisefuse.bench.render``: a results folder's README tables come from its results.json,
for CPU and GPU runs alike; the checked-in folders are in sync with their JSON."""
import copy
import json
from pathlib import Path

import pytest

from noisefuse.bench import __main__ as cli
from noisefuse.bench import render

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


@pytest.mark.parametrize("folder", sorted(p.parent.name for p in RESULTS.glob("*/results.json")))
def test_checked_in_results_readmes_are_rendered_from_their_json(folder):
    assert render.main(["--check", str(RESULTS / folder)]) == 0


@pytest.fixture(scope="module")
def quick_doc(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert cli.main(["--params", "4000", "--tensors", "4", "--quick", "--optimizers", "PNM,DemonAdam,AdamW",
                     "--no-sweeps", "--noise-params", "2000", "--out", str(out), "--no-progress", "--no-plots"]) == 0
    return json.loads((out / "results.json").read_text())


def test_a_new_readme_gets_a_heading_and_the_tables(tmp_path, quick_doc):
    (tmp_path / "results.json").write_text(json.dumps(quick_doc))
    assert render.main([str(tmp_path)]) == 0
    text = (tmp_path / "README.md").read_text()
    assert text.startswith("# CPU results, ") and render.BEGIN in text and render.END in text
    row = next(r for r in quick_doc["rows"] if r["optimizer"] == "DemonAdam" and r["impl"] == "native")
    assert f"| DemonAdam | {render.ms(row['time']['median_ms'])} |" in text
    assert "torch AdamW fused / foreach:" in text and "**Gradient noise**" in text
    assert render.main(["--check", str(tmp_path)]) == 0  # idempotent


def test_prose_around_the_tables_is_kept_and_stale_tables_are_found(tmp_path, quick_doc):
    (tmp_path / "results.json").write_text(json.dumps(quick_doc))
    (tmp_path / "README.md").write_text(f"# Notes\n\nbefore\n\n{render.BEGIN}\n| stale |\n{render.END}\n\nafter\n")
    assert render.main(["--check", str(tmp_path)]) == 1
    assert render.main([str(tmp_path)]) == 0
    text = (tmp_path / "README.md").read_text()
    assert text.startswith("# Notes\n\nbefore\n\n") and text.endswith("\n\nafter\n") and "| stale |" not in text


def test_gpu_rows_add_host_and_graph_replay_times(quick_doc):
    doc = copy.deepcopy(quick_doc)
    doc["machine"]["gpu"] = {"name": "NVIDIA H200", "memory_gib": 139.8, "capability": "9.0", "multiprocessors": 132}
    for r in doc["rows"]:
        r["host_time"] = {"median_ms": 0.05}
        r["graph"] = {"time": {"median_ms": 0.02}} if r["impl"] == "native" else {"note": "no capturable form"}
    text = render.render(doc)
    assert "host / graph replay" in text and "NVIDIA H200 (139.8 GiB)" in text
    assert "| 0.050 ms / 0.020 ms |" in text
    assert render.updated_readme(None, doc).startswith("# GPU results, ")
