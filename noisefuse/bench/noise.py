"""The gradient-noise section of the benchmark (issue #5): what noise adds to a fused step, and what
fusing it saves over forming the noisy gradient with torch ops first.

For one memory-bound parameter set (a few million fp32 elements in tens of tensors on a CPU, over
100M on a GPU) with ``grad_sample`` rows of batch ``B`` (32), every backend whose kernels draw noise
(``supports_noise``, found out at run time, the reference oracle excepted) steps each optimizer

- ``plain`` (no noise, reads ``p.grad``) and ``isotropic`` (the same traffic plus one normal per
  element): their ratio is the cost of the random numbers alone;
- ``multiplicative`` (a weighted mean of the B rows, one weight vector per step) and
  ``diag_fisher`` (the mean, the Fisher diagonal and one normal per element from the same B rows):
  the same memory traffic, so their ratio is again the cost of the random numbers;

and the *unfused route* forms the same noisy gradient with torch ops into ``p.grad`` and then takes
the plain step of the fastest backend (``backend="auto"``): ``unfused_<noise> / <noise>`` is what
fusion buys. All of a set's steps are timed in alternating rounds (timing.time_interleaved), so the
ratios compare steps that saw the same load. docs/benchmarks.md explains how to read the results.
"""
from __future__ import annotations

import gc
from dataclasses import dataclass, field

import torch

from noisefuse import backends
from noisefuse.noise import DiagFisher, Isotropic, Multiplicative

from . import baselines, bytes_model, presets, profiling, runner, timing

NOISE_OPTIMIZERS = ("PNM", "AdaPNM")  # the family's two ends: least and most state per element
FUSED = ("native", "triton")          # backends whose step is one fused pass
DEFAULT_BATCH = 32
# (params, tensors) of the parameter set, by (device type, quick). On the CPU a plain step moves
# 100-170 MB (3-5x a 32 MB L3) and a grad_sample step 620-690 MB; on the GPU 0.8-22 GB, past
# every cache, with room left on an 80 GB card for the 17 GB of rows and the optimizers' state.
SIZES = {("cpu", False): (2**22, 32), ("cpu", True): (2**14, 8),
         ("cuda", False): (2**27, 64), ("cuda", True): (2**20, 8)}
ROUNDS = {False: 3, True: 1}
VARIANTS = ("plain", "isotropic", "multiplicative", "diag_fisher")
ROW_NOISES = ("multiplicative", "diag_fisher")  # the noises that read grad_sample
ISOTROPIC_STD = 1e-3
# Issue #5's targets.
MAX_OVERHEAD = 0.10
MIN_SPEEDUP = 2.0
MIN_READ_FRAC = 0.80


@dataclass
class NoiseConfig:
    device: torch.device
    n_params: int
    n_tensors: int
    batch: int = DEFAULT_BATCH
    dtype: str = "fp32"
    optimizers: tuple = NOISE_OPTIMIZERS
    backends: tuple = FUSED
    quick: bool = False
    seed: int = 0
    notes: list = field(default_factory=list)
    budget: runner.Budget = field(default_factory=runner.Budget)


def default_sizes(device: torch.device, quick: bool) -> tuple[int, int]:
    return SIZES[("cuda" if device.type == "cuda" else "cpu", quick)]


def noise_configs(batch: int) -> dict:
    """The noise of each variant; the grad_sample noises imitate a batch of B/4 from B."""
    if batch < 2:
        raise ValueError(f"the noise section needs a batch of at least 2 grad_sample rows, got {batch}")
    small = max(1, batch // 4)
    return {"plain": None, "isotropic": Isotropic(std=ISOTROPIC_STD),
            "multiplicative": Multiplicative("gaussian", small_batch=small),
            "diag_fisher": DiagFisher(small_batch=small)}


def noise_backends(device: torch.device, names) -> tuple[list[str], list[str]]:
    """The backends to time with noise on ``device``, and a note for each one left out."""
    usable, notes = [], []
    for name in names:
        if name == "reference":
            continue  # the oracle of the checks; a per-tensor Python loop is not worth timing here
        module = backends.get(name)
        if getattr(module, "supports_noise", False) is not True:
            notes.append(f"noise: backend {name!r} skipped: its kernels do not draw noise yet (supports_noise)")
        elif getattr(module, "available", None) is not None and not module.available(device):
            notes.append(f"noise: backend {name!r} skipped: not available on {device.type}")
        else:
            usable.append(name)
    return usable, notes


def add_grad_samples(params, batch: int, seed: int) -> None:
    """Give every param a ``grad_sample`` of ``batch`` small random rows (Opacus's layout)."""
    gen = torch.Generator(device=params[0].device).manual_seed(seed)
    for p in params:
        p.grad_sample = torch.empty((batch, *p.shape), dtype=p.dtype, device=p.device).normal_(
            0.0, 1e-3, generator=gen)


class UnfusedStep:
    """The unfused route: the noisy gradient formed with torch ops into ``p.grad``, then ``opt``'s
    plain step (``opt`` has no noise). Its normals and weights come from torch's generator, not the
    Philox stream: the work is the same, the numbers differ, and for timing only the work matters.

    - diag_fisher: ``g = mean(rows)``, ``f = mean(rows^2)`` (``rows.square()`` is a temporary; on
      the CPU this beat ``linalg.vector_norm`` and ``var_mean`` over dim 0 by 10x or more),
      ``g += s * sqrt(f) * xi``; ``f`` and ``xi`` live in buffers allocated once.
    - multiplicative: ``w = (1 + sigma * xi) / B`` (B numbers), ``g = rows^T w`` (one ``mv``).
    """

    def __init__(self, kind: str, noise, params, opt, batch: int, seed: int):
        if kind not in ROW_NOISES:
            raise ValueError(f"no unfused route for {kind!r}")
        self.kind, self.params, self.opt, self.batch = kind, params, opt, batch
        device = params[0].device
        self.gen = torch.Generator(device=device).manual_seed(seed)
        if kind == "diag_fisher":
            self.scale = noise.scale_for(batch)
            self.scratch = [(torch.empty_like(p), torch.empty_like(p)) for p in params]
        else:
            self.sigma = noise.sigma_for(batch)

    def __call__(self):
        b = self.batch
        if self.kind == "multiplicative":
            dev = self.params[0].device
            w = torch.randn(b, generator=self.gen, device=dev).mul_(self.sigma).add_(1.0).div_(b)
            w = w.to(self.params[0].dtype)
            for p in self.params:
                torch.mv(p.grad_sample.view(b, -1).t(), w, out=p.grad.view(-1))
        else:
            for p, (root_f, xi) in zip(self.params, self.scratch):
                rows = p.grad_sample
                torch.mean(rows, 0, out=p.grad)
                torch.mean(rows.square(), 0, out=root_f)
                root_f.sqrt_()
                xi.normal_(generator=self.gen)
                p.grad.addcmul_(root_f, xi, value=self.scale)
        self.opt.step()


def _run_noisy_steps(make, params, batch, steps=3):
    ps = [p.detach().clone().requires_grad_(True) for p in params]
    opt = make(ps)
    for t in range(steps):
        gen = torch.Generator().manual_seed(200 + t)
        for p in ps:
            p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype).to(p.device)
            p.grad_sample = torch.randn((batch, *p.shape), generator=gen, dtype=torch.float64).to(
                p.dtype).to(p.device)
        opt.step()
    return [p.detach() for p in ps]


def check_noisy(optimizer: str, backend: str, noise, batch: int, dtype: torch.dtype, device) -> str:
    """Three noisy steps on awkward sizes against the reference backend with the same seed (the
    stream is the same on every backend): "ok", "mismatch: ...", or "failed: ..." if it raised."""
    params = baselines._probe_params(dtype, device)
    try:
        got = _run_noisy_steps(lambda ps: baselines.make_nf(optimizer, ps, backend, noise=noise, seed=7),
                               params, batch)
    except Exception as exc:  # any failure means: do not time this backend, say why
        return f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    want = _run_noisy_steps(lambda ps: baselines.make_nf(optimizer, ps, "reference", noise=noise, seed=7),
                            params, batch)
    atol, rtol = baselines._TOL.get(dtype, (1e-3, 1e-3))
    for n, a, b in zip(baselines._PROBE_SIZES, got, want):
        if not torch.allclose(a.double(), b.double(), atol=atol, rtol=rtol):
            return f"mismatch: param of {n} elements differs by up to {(a.double() - b.double()).abs().max().item():.3g}"
    return "ok"


def plain_backend(device: torch.device, dtype: torch.dtype) -> tuple[str, str | None]:
    """The backend of the unfused route's plain step: what ``backend="auto"`` picks on ``device``,
    or foreach if that one fails a plain three-step probe; and a note when it fell back."""
    auto = backends.resolve("auto", device).__name__.rsplit(".", 1)[-1]
    if auto == "foreach":
        return auto, None
    runs, check = baselines.probe(baselines._nf_target("PNM", auto), dtype, device)
    if runs and not check.startswith("mismatch"):
        return auto, None
    return "foreach", f"noise: the unfused route steps with foreach: {auto!r} failed its probe ({check})"


def _traffic(algorithm: str, variant: str, batch: int):
    noise = variant.removeprefix("unfused_")
    return bytes_model.noisy_traffic(algorithm, "none" if noise == "plain" else noise, batch)


def _steps(cfg, optimizer, usable, plain, configs, params):
    """Every step of one optimizer to time, keyed by (backend or "unfused", variant), first steps
    (which allocate the state) already taken: each noise backend's four variants, the plain step of
    the unfused route's backend, and the two unfused routes."""
    fns = {}
    for backend in dict.fromkeys(usable + [plain]):
        for variant in VARIANTS if backend in usable else ("plain",):
            opt = baselines.make_nf(optimizer, params, backend, noise=configs[variant], seed=cfg.seed)
            opt.step()
            fns[(backend, variant)] = opt.step
    for kind in ROW_NOISES:
        opt = baselines.make_nf(optimizer, params, plain, seed=cfg.seed)
        step = UnfusedStep(kind, configs[kind], params, opt, cfg.batch, cfg.seed)
        step()
        fns[("unfused", f"unfused_{kind}")] = step
    return fns


def _checked(cfg, usable, configs, dtype, notes) -> tuple[list, dict]:
    """The backends whose noisy steps run (check_noisy on every optimizer and noise), and the
    checks; a note for each backend dropped and each mismatch."""
    checks, kept = {}, []
    for backend in usable:
        got = {(o, backend, v): check_noisy(o, backend, configs[v], cfg.batch, dtype, cfg.device)
               for o in cfg.optimizers for v in VARIANTS[1:]}
        failed = [f"{k[0]} with {k[2]}: {c}" for k, c in got.items() if c.startswith("failed")]
        if failed:
            notes.append(f"noise: backend {backend!r} skipped: {failed[0]}")
            continue
        kept.append(backend)
        checks.update(got)
        notes += [f"noise: {k[0]} {backend} with {k[2]} disagrees with the reference: {c}"
                  for k, c in got.items() if c.startswith("mismatch")]
    if not kept:
        notes.append(f"noise: no backend of {', '.join(cfg.backends)} draws noise on {cfg.device.type}: "
                     "only the unfused route and the plain step are timed")
    return kept, checks


def run(cfg: NoiseConfig, progress=None) -> dict:
    """The noise section of results.json: config, copies, rows, comparisons, notes."""
    progress = progress or runner.NullProgress()
    device, dtype = cfg.device, runner.DTYPES[cfg.dtype]
    usable, notes = noise_backends(device, cfg.backends)
    plain, why = plain_backend(device, dtype)
    notes += [why] if why else []
    configs = noise_configs(cfg.batch)
    out = {"config": {"device": str(device), "dtype": cfg.dtype, "n_params": cfg.n_params,
                      "n_tensors": cfg.n_tensors, "batch": cfg.batch, "optimizers": list(cfg.optimizers),
                      "backends": usable, "fused_backends": [b for b in usable if b in FUSED],
                      "unfused_plain_backend": plain,
                      "noises": {v: (n.as_dict() if n else None) for v, n in configs.items()},
                      "rounds": ROUNDS[cfg.quick]},
           "copies": [], "rows": [], "comparisons": [], "notes": list(cfg.notes) + notes}
    usable, checks = _checked(cfg, usable, configs, dtype, out["notes"])
    out["config"]["backends"] = usable
    out["config"]["fused_backends"] = [b for b in usable if b in FUSED]
    preset = presets.synthetic(cfg.n_params, cfg.n_tensors)
    algos = {o: baselines.nf_algorithm(o) for o in cfg.optimizers}
    byte_counts = {_traffic(algos[o], v, cfg.batch).bytes(cfg.n_params, dtype) for o in cfg.optimizers
                   for v in ("plain", "diag_fisher")}
    tcfg = timing.config_for(device, "quick" if cfg.quick else "full")
    progress.add(2 * len(byte_counts))
    copies = runner._measure_copies(byte_counts, dtype, device, tcfg, progress)
    params = presets.make_tensors(preset, dtype, device, seed=cfg.seed)
    add_grad_samples(params, cfg.batch, cfg.seed + 1)
    measured = {}
    for optimizer in cfg.optimizers:
        if cfg.budget.spent():
            out["notes"].append(cfg.budget.note(f"the noise section's {optimizer} rows"))
            continue
        fns = _steps(cfg, optimizer, usable, plain, configs, params)
        progress.add(len(fns) * ROUNDS[cfg.quick])
        times = timing.time_interleaved(fns, device, tcfg, ROUNDS[cfg.quick],
                                        on_sample=lambda k, o=optimizer: progress.step(f"noise {o} {k[0]} {k[1]}"))
        for key, fn in fns.items():
            measured[(optimizer, *key)] = (times[key], profiling.profile_step(fn, device))
        del fns
        gc.collect()
    del params
    gc.collect()
    after = runner._measure_copies(byte_counts, dtype, device, tcfg, progress)
    copies = {b: min(copies[b], after[b], key=lambda x: x.median) for b in byte_counts}
    out["copies"] = [{"bytes": b, **copies[b].as_dict(), "gbps": b / copies[b].median / 1e9} for b in sorted(copies)]
    for (optimizer, backend, variant), (t, prof) in measured.items():
        row = _row(cfg, optimizer, algos[optimizer], backend, variant, t, prof, copies)
        row["check"] = checks.get((optimizer, backend, variant), "n/a")
        if backend == "unfused":
            row["plain_backend"] = plain
        out["rows"].append(row)
    out["comparisons"] = comparisons(out["rows"], cfg.optimizers, usable, device)
    return out


def _row(cfg, optimizer, algorithm, backend, variant, t, prof, copies) -> dict:
    dtype = runner.DTYPES[cfg.dtype]
    traffic = _traffic(algorithm, variant, cfg.batch)
    n_bytes, read_bytes = traffic.bytes(cfg.n_params, dtype), traffic.read_bytes(cfg.n_params, dtype)
    copy = copies[n_bytes]
    gbps, copy_gbps = n_bytes / t.median / 1e9, n_bytes / copy.median / 1e9
    return {"optimizer": optimizer, "algorithm": algorithm, "backend": backend,
            "fused": backend in FUSED, "variant": variant, "label": f"{optimizer} {backend} {variant}",
            "n_params": cfg.n_params, "n_tensors": cfg.n_tensors, "dtype": cfg.dtype, "batch": cfg.batch,
            "reads_grad_sample": variant.removeprefix("unfused_") in ROW_NOISES,
            "values_per_element": traffic.per_element, "bytes_per_step": n_bytes,
            "read_bytes_per_step": read_bytes, "time": t.as_dict(), "gbps": gbps,
            "read_gbps": read_bytes / t.median / 1e9, "copy_time_ms": copy.median * 1e3, "copy_gbps": copy_gbps,
            "frac_copy_bw": gbps / copy_gbps, "read_frac_copy_bw": read_bytes / t.median / 1e9 / copy_gbps,
            **prof}


def comparisons(rows, optimizers, usable, device) -> list:
    """Per optimizer and noise backend: the ratios issue #5 sets targets on, and whether each is met
    (``None`` where a target does not apply: a backend that is not fused, bandwidth off the GPU)."""
    by = {(r["optimizer"], r["backend"], r["variant"]): r for r in rows}
    out = []
    for optimizer in optimizers:
        for backend in usable:
            if (optimizer, backend, "plain") not in by:
                continue  # not measured: the section's time budget was spent
            ms = {v: by[(optimizer, backend, v)]["time"]["median_ms"] for v in VARIANTS}
            unfused = {k: by[(optimizer, "unfused", f"unfused_{k}")]["time"]["median_ms"] for k in ROW_NOISES}
            c = {"optimizer": optimizer, "backend": backend, "fused": backend in FUSED,
                 **{f"{v}_ms": ms[v] for v in VARIANTS}, **{f"unfused_{k}_ms": unfused[k] for k in ROW_NOISES},
                 "isotropic_overhead": ms["isotropic"] / ms["plain"] - 1,
                 "diag_fisher_overhead": ms["diag_fisher"] / ms["multiplicative"] - 1,
                 "diag_fisher_over_plain": ms["diag_fisher"] / ms["plain"],
                 "multiplicative_over_plain": ms["multiplicative"] / ms["plain"],
                 **{f"speedup_{k}": unfused[k] / ms[k] for k in ROW_NOISES},
                 **{f"{k}_read_frac_copy_bw": by[(optimizer, backend, k)]["read_frac_copy_bw"] for k in ROW_NOISES}}
            fused = backend in FUSED
            c["targets"] = {
                "noise_overhead_le_10pct": (max(c["isotropic_overhead"], c["diag_fisher_overhead"]) <= MAX_OVERHEAD
                                            if fused else None),
                "grad_sample_speedup_ge_2x": (min(c[f"speedup_{k}"] for k in ROW_NOISES) >= MIN_SPEEDUP
                                              if fused else None),
                "read_bw_ge_80pct_copy": (min(c[f"{k}_read_frac_copy_bw"] for k in ROW_NOISES) >= MIN_READ_FRAC
                                          if fused and device.type == "cuda" else None),
            }
            out.append(c)
    return out
