"""The benchmark's gradient-noise section (noisefuse.bench.noise): its bytes model against hand
counts, the unfused route against the noise it imitates, the target verdicts, and one tiny
end-to-end CPU run whose results.json must carry every field."""
import json
import math

import pytest
import torch

from noisefuse import backends
from noisefuse.bench import __main__ as cli
from noisefuse.bench import baselines, bytes_model, noise, timing
from noisefuse.noise import DiagFisher, Multiplicative

# Values moved per element by one fused noisy step, counted by hand (docs/kernel-contract.md):
# isotropic draws its normals in registers, so it moves what the plain step moves; the grad_sample
# noises read the B rows in place of g.
B = 32
HAND_COUNTS = {
    ("pnm", "none"): 4 + 2,                     # reads p, g, m_pos, m_neg; writes p, m_pos
    ("pnm", "isotropic"): 4 + 2,
    ("pnm", "diag_fisher"): (3 + B) + 2,        # reads p, m_pos, m_neg and B rows; writes p, m_pos
    ("pnm", "multiplicative"): (3 + B) + 2,
    ("adapnm", "none"): 6 + 4,                  # reads p, g, m_pos, m_neg, v, vmax; writes p, m_pos, v, vmax
    ("adapnm", "diag_fisher"): (5 + B) + 4,
    ("sgd_momentum", "multiplicative"): (2 + B) + 2,  # reads p, buf and B rows; writes p, buf
    ("adam", "diag_fisher"): (3 + B) + 3,       # reads p, m, v and B rows; writes p, m, v
}


@pytest.mark.parametrize("algorithm, kind", list(HAND_COUNTS))
def test_noisy_bytes_model_matches_hand_counts(algorithm, kind):
    n = 1000
    t = bytes_model.noisy_traffic(algorithm, kind, B)
    want = HAND_COUNTS[(algorithm, kind)]
    assert t.per_element == want
    assert bytes_model.noisy_step_bytes(algorithm, kind, n, torch.float32, B) == want * n * 4
    assert bytes_model.noisy_step_bytes(algorithm, kind, n, torch.bfloat16, B) == want * n * 2
    assert t.read_bytes(n, torch.float32) == (want - len(t.writes)) * n * 4
    assert "g" not in t.reads or kind in ("none", "isotropic")


def test_noisy_bytes_model_rows_and_errors():
    t = bytes_model.noisy_traffic("pnm", "diag_fisher", 3)
    assert t.reads == ("p", "grad_sample[0]", "grad_sample[1]", "grad_sample[2]", "m_pos", "m_neg")
    assert t.writes == ("p", "m_pos")
    # 4M fp32 AdaPNM params with B=32: 41 values per element, 37 of them read.
    assert bytes_model.noisy_step_bytes("adapnm", "diag_fisher", 2**22, torch.float32, 32) == 41 * 2**24
    with pytest.raises(ValueError):
        bytes_model.noisy_traffic("pnm", "diag_fisher")  # the rows need a batch size
    with pytest.raises(ValueError):
        bytes_model.noisy_traffic("pnm", "laplace", 4)
    with pytest.raises(ValueError):
        bytes_model.noisy_traffic("lion", "none")


def _params_with_rows(sizes, batch, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ps = []
    for n in sizes:
        p = torch.randn(n, generator=gen).requires_grad_(True)
        p.grad = torch.zeros(n)
        p.grad_sample = torch.randn(batch, n, generator=gen)
        ps.append(p)
    return ps


class _Recorder:
    """An optimizer stand-in: records the gradients the unfused route hands it."""

    def __init__(self, params):
        self.params, self.grads = params, []

    def step(self):
        self.grads.append([p.grad.clone() for p in self.params])


def test_unfused_multiplicative_route_is_the_weighted_mean():
    ps = _params_with_rows([5, 7], batch=8)
    rec = _Recorder(ps)
    step = noise.UnfusedStep("multiplicative", Multiplicative("gaussian", small_batch=2), ps, rec, 8, seed=3)
    step()
    gen = torch.Generator().manual_seed(3)  # the same torch draw the route makes
    w = 1.0 + math.sqrt((8 - 2) / 2) * torch.randn(8, generator=gen)
    for p, g in zip(ps, rec.grads[0]):
        torch.testing.assert_close(g, (w[:, None] * p.grad_sample).sum(0) / 8)


def test_unfused_diag_fisher_route_has_the_fisher_mean_and_spread():
    batch, n = 16, 200_000
    ps = _params_with_rows([n], batch=batch, seed=1)
    rec = _Recorder(ps)
    cfg = DiagFisher(small_batch=4)
    step = noise.UnfusedStep("diag_fisher", cfg, ps, rec, batch, seed=5)
    step()
    rows = ps[0].grad_sample
    mean, root_f = rows.mean(0), rows.square().mean(0).sqrt()
    xi = (rec.grads[0][0] - mean) / (cfg.scale_for(batch) * root_f)
    assert abs(xi.mean().item()) < 0.01 and abs(xi.std().item() - 1.0) < 0.01  # N(0, 1) per element
    with pytest.raises(ValueError):
        noise.UnfusedStep("isotropic", None, ps, rec, batch, seed=0)


def test_noise_configs_and_backends():
    cfgs = noise.noise_configs(32)
    assert cfgs["plain"] is None and cfgs["diag_fisher"].scale_for(32) == pytest.approx(math.sqrt(1 / 8 - 1 / 32))
    with pytest.raises(ValueError):
        noise.noise_configs(1)
    usable, notes = noise.noise_backends(torch.device("cpu"), ("native", "triton", "foreach", "reference"))
    assert noise.NoiseConfig(torch.device("cpu"), 10, 1).backends == ("native", "triton")  # fused only by default
    assert "foreach" in usable and "reference" not in usable and "triton" not in usable
    native = backends.get("native")
    assert ("native" in usable) == (getattr(native, "supports_noise", False) is True
                                    and native.available(torch.device("cpu")))
    assert all(n.startswith("noise: backend") for n in notes)


def test_check_noisy_flags_other_numbers_and_failures(monkeypatch):
    cfg = noise.noise_configs(8)["diag_fisher"]
    cpu = torch.device("cpu")
    assert noise.check_noisy("PNM", "foreach", cfg, 8, torch.float32, cpu) == "ok"
    assert noise.check_noisy("PNM", "triton", cfg, 8, torch.float32, cpu).startswith("failed: ")  # no CPU triton
    real = baselines.make_nf

    def other_stream(name, ps, backend, **kw):  # the same noise from another seed: other numbers
        return real(name, ps, backend, **{**kw, "seed": kw["seed"] + (backend != "reference")})

    monkeypatch.setattr(baselines, "make_nf", other_stream)
    assert noise.check_noisy("PNM", "foreach", cfg, 8, torch.float32, cpu).startswith("mismatch: ")


def _fake_rows(ms, read_frac, backend):
    rows = []
    for variant, t in ms.items():
        b = "unfused" if variant.startswith("unfused") else backend
        rows.append({"optimizer": "PNM", "backend": b, "variant": variant, "time": {"median_ms": t},
                     "read_frac_copy_bw": read_frac})
    return rows


@pytest.mark.parametrize("device, backend, ms, read_frac, want", [
    ("cuda", "native", dict(plain=10, isotropic=10.5, multiplicative=40, diag_fisher=43,
                            unfused_multiplicative=90, unfused_diag_fisher=150), 0.85, (True, True, True)),
    ("cuda", "triton", dict(plain=10, isotropic=11.5, multiplicative=40, diag_fisher=43,
                            unfused_multiplicative=70, unfused_diag_fisher=150), 0.7, (False, False, False)),
    ("cpu", "native", dict(plain=10, isotropic=10.9, multiplicative=40, diag_fisher=45,
                           unfused_multiplicative=80, unfused_diag_fisher=150), 0.9, (False, True, None)),
    ("cpu", "foreach", dict(plain=10, isotropic=10, multiplicative=40, diag_fisher=40,
                            unfused_multiplicative=80, unfused_diag_fisher=80), 0.9, (None, None, None)),
])
def test_comparisons_decide_the_targets(device, backend, ms, read_frac, want):
    (c,) = noise.comparisons(_fake_rows(ms, read_frac, backend), ["PNM"], [backend], torch.device(device))
    assert c["isotropic_overhead"] == pytest.approx(ms["isotropic"] / ms["plain"] - 1)
    assert c["diag_fisher_overhead"] == pytest.approx(ms["diag_fisher"] / ms["multiplicative"] - 1)
    assert c["diag_fisher_over_plain"] == pytest.approx(ms["diag_fisher"] / ms["plain"])
    assert c["speedup_diag_fisher"] == pytest.approx(ms["unfused_diag_fisher"] / ms["diag_fisher"])
    t = c["targets"]
    assert (t["noise_overhead_le_10pct"], t["grad_sample_speedup_ge_2x"], t["read_bw_ge_80pct_copy"]) == want


def test_time_interleaved_alternates_and_pools():
    calls = []
    cfg = timing.TimingConfig(warmup_reps=1, warmup_s=0.0, min_reps=6, max_reps=6, min_time_s=0.0, max_time_s=10.0)
    got = timing.time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                  torch.device("cpu"), cfg, rounds=3)
    assert len(got["a"].samples) == len(got["b"].samples) == 6
    # one warm-up call each before round 1 only; rounds run a, b then b, a then a, b
    assert calls == ["a"] * 3 + ["b"] * 3 + ["b"] * 2 + ["a"] * 2 + ["a"] * 2 + ["b"] * 2


ROW_FIELDS = {"optimizer", "algorithm", "backend", "fused", "variant", "label", "n_params", "n_tensors", "dtype",
              "batch", "reads_grad_sample", "values_per_element", "bytes_per_step", "read_bytes_per_step", "time",
              "gbps", "read_gbps", "copy_time_ms", "copy_gbps", "frac_copy_bw", "read_frac_copy_bw", "launches",
              "launch_kind", "peak_bytes", "check"}


def test_noise_section_end_to_end(tmp_path, capsys):
    out = tmp_path / "bench"
    assert cli.main(["--noise", "only", "--quick", "--noise-params", "6000", "--noise-tensors", "3",
                     "--noise-batch", "8", "--noise-backends", "native,foreach", "--optimizers", "PNM,AdamW", "--out", str(out), "--no-progress",
                     "--threads", "1"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["rows"] == [] and doc["config"]["noise"] == "only"
    sec = doc["noise"]
    assert {"config", "copies", "rows", "comparisons", "notes"} <= sec.keys()
    cfg = sec["config"]
    assert (cfg["n_params"], cfg["n_tensors"], cfg["batch"], cfg["optimizers"]) == (6000, 3, 8, ["PNM"])
    assert "foreach" in cfg["backends"] and cfg["unfused_plain_backend"] in ("native", "foreach")
    assert cfg["fused_backends"] == [b for b in cfg["backends"] if b == "native"]
    variants = {(r["backend"], r["variant"]) for r in sec["rows"]}
    for b in cfg["backends"]:
        assert {(b, v) for v in noise.VARIANTS} <= variants
    assert {("unfused", "unfused_multiplicative"), ("unfused", "unfused_diag_fisher")} <= variants
    copies = {c["bytes"] for c in sec["copies"]}
    for r in sec["rows"]:
        assert ROW_FIELDS <= r.keys(), ROW_FIELDS - r.keys()
        kind = r["variant"].removeprefix("unfused_")
        kind = "none" if kind == "plain" else kind
        assert r["bytes_per_step"] == bytes_model.noisy_step_bytes("pnm", kind, 6000, torch.float32, 8)
        assert r["bytes_per_step"] in copies
        assert r["values_per_element"] == (6 if kind in ("none", "isotropic") else 5 + 8)
        assert r["gbps"] == pytest.approx(r["bytes_per_step"] / (r["time"]["median_ms"] / 1e3) / 1e9)
        assert r["read_frac_copy_bw"] == pytest.approx(r["read_gbps"] / r["copy_gbps"])
        assert r["time"]["n"] >= 3 and r["launches"] >= 1
        # foreach must agree with the reference; another backend's disagreement is reported, not hidden
        ok = ("ok", "n/a") if r["backend"] in ("foreach", "unfused") or r["variant"] == "plain" else ("ok", "mismatch")
        assert r["check"].startswith(ok), r["check"]
    assert len(sec["comparisons"]) == len(cfg["backends"])
    for c in sec["comparisons"]:
        assert c["speedup_diag_fisher"] > 0 and set(c["targets"]) == {
            "noise_overhead_le_10pct", "grad_sample_speedup_ge_2x", "read_bw_ge_80pct_copy"}
        assert c["targets"]["read_bw_ge_80pct_copy"] is None  # a CPU run
    assert (out / "noise.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "gradient noise" in printed and "x unfused fisher" in printed


def test_noise_flag_off_and_bad_batch(tmp_path):
    out = tmp_path / "b"
    assert cli.main(["--params", "2000", "--tensors", "2", "--quick", "--optimizers", "PNM", "--no-baselines",
                     "--no-sweeps", "--noise", "off", "--no-plots", "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "results.json").read_text())["noise"] is None
    with pytest.raises(SystemExit):
        cli.main(["--noise", "only", "--noise-batch", "1", "--no-progress"])
