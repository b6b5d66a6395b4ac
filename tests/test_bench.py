"""The benchmark (noisefuse.bench): its bytes model against hand counts and against the state the
optimizers really keep, its presets against the published model sizes, its statistics and
profiling helpers, and one small end-to-end run whose results.json must carry every field."""
import json
import math

import pytest
import torch

import noisefuse as nf
from noisefuse.bench import __main__ as cli
from noisefuse.bench import baselines, bytes_model, presets, profiling, timing

# Values moved per element, counted by hand from docs/kernel-contract.md (read + written):
HAND_COUNTS = {
    "PNM": 4 + 2,        # reads p, g, m_pos, m_neg; writes p, m_pos
    "AdaPNM": 6 + 4,     # reads p, g, m_pos, m_neg, v, vmax; writes p, m_pos, v, vmax (amsgrad default)
    "DemonSGD": 3 + 2,   # reads p, g, buf; writes p, buf
    "DemonAdam": 4 + 3,  # reads p, g, m, v; writes p, m, v
    "SGD": 3 + 2,        # torch SGD(momentum): as DemonSGD
    "Adam": 4 + 3,
    "AdamW": 4 + 3,
}


def _targets():
    targets, _ = baselines.build_targets(torch.device("cpu"), nf_backends=("reference",))
    return targets


@pytest.mark.parametrize("target", _targets(), ids=lambda t: t.label)
def test_bytes_model_matches_hand_counts(target):
    n = 1000
    want = HAND_COUNTS[target.optimizer]
    assert bytes_model.ALGORITHMS[target.algorithm].per_element == want
    assert bytes_model.step_bytes(target.algorithm, n, torch.float32) == want * n * 4
    assert bytes_model.step_bytes(target.algorithm, n, torch.bfloat16) == want * n * 2


def test_bytes_model_variants_and_errors():
    assert bytes_model.ALGORITHMS["adapnm_noams"].per_element == 8
    assert bytes_model.ALGORITHMS["adam_amsgrad"].per_element == 9
    assert bytes_model.ALGORITHMS["sgd"].per_element == 3
    assert bytes_model.traffic("pn").writes == ("p", "m_pos")
    with pytest.raises(ValueError):
        bytes_model.traffic("single", amsgrad=True)
    with pytest.raises(ValueError):
        bytes_model.step_bytes("lion", 10, torch.float32)
    # A copy moving 6 MB reads and writes 3 MB: 750K float32 elements.
    assert bytes_model.copy_elements(6_000_000, torch.float32) == 750_000


@pytest.mark.parametrize("target", _targets(), ids=lambda t: t.label)
def test_bytes_model_matches_the_state_each_optimizer_keeps(target):
    """Reads: param, grad and every param-sized state tensor; writes: param and the state tensors a
    step actually changes (observed, so PN's untouched buffer is not counted)."""
    p = torch.randn(257, requires_grad=True)
    p.grad = torch.randn(257)
    opt = target.make([p])
    opt.step()
    p.grad = torch.randn(257)
    state = [v for v in opt.state[p].values() if torch.is_tensor(v) and v.shape == p.shape]
    before = [v.clone() for v in state]
    opt.step()
    written = sum(not torch.equal(a, b) for a, b in zip(before, state))
    model = bytes_model.ALGORITHMS[target.algorithm]
    assert len(model.reads) == 2 + len(state)
    assert len(model.writes) == 1 + written


def test_presets_match_published_model_sizes():
    assert (presets.get("gpt2-small").n_params, presets.get("gpt2-small").n_tensors) == (124_439_808, 148)
    assert presets.get("gpt2-medium").n_params == 354_823_168
    assert (presets.get("resnet50").n_params, presets.get("resnet50").n_tensors) == (25_557_032, 161)
    many = presets.get("many-small")
    assert many.n_tensors >= 1000 and max(math.prod(s) for s in many.shapes) <= 4096
    syn = presets.synthetic(1003, 10)
    assert (syn.n_params, syn.n_tensors) == (1003, 10)
    with pytest.raises(ValueError):
        presets.synthetic(3, 10)
    with pytest.raises(ValueError):
        presets.get("gpt5")


def test_make_tensors_gives_params_with_grads():
    ps = presets.make_tensors(presets.synthetic(100, 3), torch.bfloat16, "cpu")
    assert [p.numel() for p in ps] == [34, 33, 33]
    assert all(p.dtype == torch.bfloat16 and p.grad is not None and p.grad.shape == p.shape for p in ps)


def test_timing_statistics():
    t = timing.Timing((0.004, 0.001, 0.003, 0.002, 0.005))
    assert t.median == 0.003
    assert t.quantile(0.25) == pytest.approx(0.002) and t.quantile(0.75) == pytest.approx(0.004)
    assert t.spread == pytest.approx((0.004 - 0.002) / 2 / 0.003)
    d = t.as_dict()
    assert d["median_ms"] == pytest.approx(3.0) and d["n"] == 5 and d["min_ms"] == pytest.approx(1.0)


def test_time_fn_respects_min_reps():
    calls = []
    cfg = timing.TimingConfig(warmup_reps=2, warmup_s=0.0, min_reps=4, max_reps=4, min_time_s=0.0, max_time_s=10.0)
    t = timing.time_fn(lambda: calls.append(1), torch.device("cpu"), cfg)
    assert len(t.samples) == 4 and len(calls) == 6


def test_profiling_counts_top_level_ops_and_temporaries():
    x = torch.randn(1_000_000)

    def three_ops():
        y = x * 2  # a 4 MB temporary ...
        z = y + 1  # ... and a second one alive with it: peak 8 MB
        z.sum()

    got = profiling.profile_step(three_ops, torch.device("cpu"))
    assert got["launches"] == 3 and got["launch_kind"] == "cpu_top_level_ops"
    assert 8_000_000 <= got["peak_bytes"] < 8_100_000


def test_probe_flags_a_wrong_implementation():
    good = baselines._nf_target("PNM", "foreach")
    assert baselines.probe(good, torch.float32, torch.device("cpu")) == (True, "ok")
    wrong = baselines.Target("PNM", "noisefuse", "foreach", "pnm",
                             lambda ps: nf.PNM(ps, lr=0.5, backend="foreach"), good.foreach_key)
    runs, check = baselines.probe(wrong, torch.float32, torch.device("cpu"))
    assert runs and check.startswith("mismatch")


ROW_FIELDS = {"preset", "dtype", "n_params", "n_tensors", "optimizer", "library", "impl", "label", "algorithm",
              "values_per_element", "bytes_per_step", "time", "gbps", "copy_time_ms", "copy_gbps", "frac_copy_bw",
              "speedup_vs_foreach", "speedup_baseline", "check", "launches", "launch_kind", "copies",
              "peak_bytes", "peak_method"}
TIME_FIELDS = {"median_ms", "p25_ms", "p75_ms", "min_ms", "max_ms", "mean_ms", "stdev_ms", "spread", "n"}
MACHINE_FIELDS = {"date", "platform", "cpu", "cpu_count", "torch_threads", "memory_gib", "device", "gpu", "python",
                  "torch", "cuda", "triton", "pytorch_optimizer", "noisefuse", "noisefuse_commit",
                  "load_average_start", "load_average_end"}


def _check_row(r):
    assert ROW_FIELDS <= r.keys(), ROW_FIELDS - r.keys()
    assert TIME_FIELDS <= r["time"].keys()
    t = r["time"]
    assert 0 < t["min_ms"] <= t["p25_ms"] <= t["median_ms"] <= t["p75_ms"] <= t["max_ms"]
    assert r["bytes_per_step"] == bytes_model.step_bytes(r["algorithm"], r["n_params"], torch.float32)
    assert r["gbps"] == pytest.approx(r["bytes_per_step"] / (t["median_ms"] / 1e3) / 1e9)
    assert r["frac_copy_bw"] == pytest.approx(r["gbps"] / r["copy_gbps"])
    assert r["launches"] >= 1 and r["launch_kind"] == "cpu_top_level_ops" and r["peak_bytes"] >= 0


def test_end_to_end_quick_run_writes_every_field(tmp_path, capsys):
    out = tmp_path / "bench"
    assert cli.main(["--params", "20000", "--tensors", "8", "--quick", "--optimizers", "PNM,AdamW",
                     "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert {"schema_version", "machine", "config", "elapsed_s", "cases", "rows", "sweeps", "notes"} <= doc.keys()
    assert MACHINE_FIELDS <= doc["machine"].keys()
    labels = {r["label"] for r in doc["rows"]}
    assert {"PNM noisefuse/foreach", "PNM noisefuse/reference", "AdamW torch/foreach", "AdamW torch/fused"} <= labels
    for r in doc["rows"]:
        _check_row(r)
        if r["impl"] == "foreach" and r["library"] != "pytorch_optimizer":
            assert r["speedup_vs_foreach"] == pytest.approx(1.0)
        assert r["check"] in ("ok", "oracle") or r["check"].startswith("unchecked"), r["check"]
    case = doc["cases"][0]
    assert case["n_params"] == 20000 and case["n_tensors"] == 8 and case["copies"]
    assert {p["sweep"] for p in doc["sweeps"]} == {"params", "tensors"}
    for point in doc["sweeps"]:
        assert point["copy_time_ms"] > 0 and point["rows"]
        for r in point["rows"]:
            _check_row(r)
    for name in ("report.txt", "step_time.png", "bandwidth.png", "scaling_params.png", "scaling_tensors.png"):
        assert (out / name).stat().st_size > 0, name
    printed = capsys.readouterr().out
    assert "PNM" in printed and "%copy" in printed and "finished in" in printed


def test_a_spent_budget_skips_what_has_not_started_and_says_so(tmp_path):
    out = tmp_path / "bench"
    assert cli.main(["--params", "20000", "--tensors", "8", "--quick", "--optimizers", "PNM,AdamW", "--budget", "0",
                     "--noise-budget", "0", "--out", str(out), "--no-progress", "--no-plots"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["rows"] == [] and doc["config"]["budget_s"] == 0
    preset = doc["config"]["presets"][0]
    assert f"time budget of 0 s spent: {preset} in fp32 not measured" in doc["notes"]
    assert any("the sweep points params" in n for n in doc["notes"])
    assert doc["noise"]["rows"] == [] and doc["noise"]["comparisons"] == []
    assert any("the noise section's PNM rows not measured" in n for n in doc["noise"]["notes"])


def test_a_budget_spent_mid_case_keeps_the_rows_measured(tmp_path, monkeypatch):
    from noisefuse.bench import runner

    class SpentAfterTwoChecks(runner.Budget):  # the case's check and the first target's pass
        checks = 0

        def spent(self):
            self.checks += 1
            return self.checks > 2

    monkeypatch.setattr(runner, "Budget", SpentAfterTwoChecks)
    out = tmp_path / "bench"
    assert cli.main(["--params", "2000", "--tensors", "2", "--quick", "--optimizers", "PNM,AdamW", "--backends",
                     "reference", "--no-sweeps", "--noise", "off", "--budget", "5", "--out", str(out),
                     "--no-progress", "--no-plots"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert [r["label"] for r in doc["rows"]] == ["PNM noisefuse/reference"]
    left = next(n for n in doc["notes"] if n.startswith("time budget of 5 s spent:"))
    assert "AdamW torch/foreach, AdamW torch/fused" in left and "PNM noisefuse/reference" not in left


def test_rows_carry_host_and_graph_times_on_cuda_only(tmp_path):
    """On the CPU the host time is the step time: the fields are None (set on CUDA, tests/test_bench_cuda)."""
    out = tmp_path / "bench"
    assert cli.main(["--params", "2000", "--tensors", "2", "--quick", "--optimizers", "AdamW", "--no-sweeps",
                     "--noise", "off", "--out", str(out), "--no-progress", "--no-plots"]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert rows and all(r["host_time"] is None and r["graph"] is None for r in rows)


def test_cli_rejects_unknown_names():
    with pytest.raises(SystemExit):
        cli.main(["--preset", "gpt5", "--no-progress"])
    with pytest.raises(SystemExit):
        cli.main(["--params", "100", "--backends", "cuda-graphs", "--no-progress"])
