"""The benchmark on a GPU (skipped without one): host time beside device time, and the step
replayed from a CUDA graph for every capturable target."""
import json

import pytest
import torch

from noisefuse.bench import __main__ as cli

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_rows_carry_host_and_graph_replay_times(tmp_path):
    out = tmp_path / "bench"
    assert cli.main(["--device", "cuda", "--params", "1000000", "--tensors", "16", "--quick", "--optimizers",
                     "AdaPNM,AdamW,SGD", "--backends", "native,triton,foreach", "--no-sweeps", "--noise", "off",
                     "--out", str(out), "--no-progress", "--no-plots"]) == 0
    doc = json.loads((out / "results.json").read_text())
    by = {r["label"]: r for r in doc["rows"]}
    for row in doc["rows"]:
        assert row["host_time"]["median_ms"] > 0, row["label"]
    for label in ("AdaPNM noisefuse/native", "AdamW torch/fused", "AdamW torch/foreach", "SGD torch/fused"):
        assert by[label]["graph"]["time"]["median_ms"] > 0, (label, by[label]["graph"])
    assert by["AdaPNM noisefuse/foreach"]["graph"] == {"note": "no capturable form"}
    # A replayed graph issues no work from the host: it must not be slower than the eager step.
    assert by["AdaPNM noisefuse/native"]["graph"]["time"]["median_ms"] <= 1.5 * by["AdaPNM noisefuse/native"]["time"]["median_ms"]
