"""noisefuse with Opacus (docs/integration.md, "Opacus"): GradSampleModule's per-sample gradients
drive the noises that read them on every backend, as nf.per_sample_grads's do; make_private works
with a plain noisefuse optimizer and its privacy noise reaches the params; a noise that reads
grad_sample is refused under make_private, before anything is written, because stepping from the
raw rows would undo the privacy; accumulated micro-batches (Opacus's list form), zero_grad and
per_sample_grads on a GradSampleModule behave as documented."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import noisefuse as nf
from cases import ALL_BACKENDS, on_cpu

opacus = pytest.importorskip("opacus")
from opacus import GradSampleModule, PrivacyEngine  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Opacus's hook and secure-RNG notices
ROW_NOISES = {"diag_fisher": nf.noise.DiagFisher(small_batch=2),
              "multiplicative": nf.noise.Multiplicative("gaussian", small_batch=2)}


def small_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))


def batch(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


def snapshot(model, opt):
    return [p.detach().clone() for p in model.parameters()], {
        id(p): {k: v.clone() for k, v in s.items() if torch.is_tensor(v)} for p, s in opt.state.items()}


def test_grad_sample_module_rows_equal_per_sample_grads():
    x, y = batch()
    model = small_model()
    nf.per_sample_grads(model, F.cross_entropy, x, y)
    ours = [p.grad_sample.clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad_sample = None
    F.cross_entropy(GradSampleModule(model)(x), y).backward()
    for mine, theirs in zip(ours, (p.grad_sample for p in model.parameters())):
        torch.testing.assert_close(theirs, mine, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("noise", sorted(ROW_NOISES))
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_grad_sample_module_drives_the_noise_on_every_backend(backend, noise, monkeypatch):
    """Three steps from GradSampleModule's rows equal three steps from nf.per_sample_grads's."""
    on_cpu(backend, monkeypatch)

    def train(fill):
        model = small_model()
        gsm = GradSampleModule(model) if fill == "opacus" else None
        opt = nf.AdaPNM(model.parameters(), lr=0.01, noise=ROW_NOISES[noise], seed=7, backend=backend)
        for step in range(3):
            x, y = batch(seed=step)
            opt.zero_grad()
            if gsm is not None:
                F.cross_entropy(gsm(x), y).backward()
            else:
                nf.per_sample_grads(model, F.cross_entropy, x, y)
            opt.step()
        return [p.detach() for p in model.parameters()]

    for a, b in zip(train("opacus"), train("per_sample_grads")):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def private_run(noise_multiplier, noise=None, backend="auto", steps=4):
    model = small_model()
    data = TensorDataset(*batch(32, seed=3))
    opt = nf.AdaPNM(model.parameters(), lr=0.01, noise=noise, seed=1, backend=backend)
    engine = PrivacyEngine()
    model, opt, loader = engine.make_private(module=model, optimizer=opt, data_loader=DataLoader(data, batch_size=8),
                                             noise_multiplier=noise_multiplier, max_grad_norm=1.0,
                                             poisson_sampling=False)
    torch.manual_seed(11)  # Opacus draws its privacy noise from torch's generator
    for _, (x, y) in zip(range(steps), loader):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model, opt, engine


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_make_private_with_a_plain_optimizer_steps_from_the_private_gradient(backend, monkeypatch):
    """Opacus's noise reaches the params (noise_multiplier 0 and 1000 differ), and with none the
    step is the clipped mean of the per-sample gradients, computed here by hand."""
    on_cpu(backend, monkeypatch)
    noiseless, _, _ = private_run(0.0, backend=backend, steps=1)
    noisy, _, engine = private_run(1000.0, backend=backend, steps=1)
    assert engine.get_epsilon(1e-5) < 1
    for a, b in zip(noiseless.parameters(), noisy.parameters()):
        assert (a - b).abs().max() > 1e-3

    model = small_model()
    x, y = next(iter(DataLoader(TensorDataset(*batch(32, seed=3)), batch_size=8)))
    nf.per_sample_grads(model, F.cross_entropy, x, y)
    rows = [p.grad_sample for p in model.parameters()]
    norms = torch.stack([r.flatten(1).norm(dim=1) for r in rows]).norm(dim=0)
    factor = (1.0 / (norms + 1e-6)).clamp(max=1.0)
    for p, r in zip(model.parameters(), rows):
        p.grad = torch.einsum("i,i...", factor, r) / len(x)
        p.grad_sample = None
    nf.AdaPNM(model.parameters(), lr=0.01, seed=1, backend=backend).step()
    for a, b in zip(noiseless.parameters(), model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_make_private_with_isotropic_noise_adds_it_to_the_private_gradient():
    a, _, _ = private_run(0.0, steps=2)
    b, _, _ = private_run(0.0, noise=nf.noise.Isotropic(0.1), steps=2)
    assert any((p - q).abs().max() > 1e-4 for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("noise", sorted(ROW_NOISES))
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_make_private_refuses_a_noise_that_reads_grad_sample_before_any_write(backend, noise, monkeypatch):
    on_cpu(backend, monkeypatch)
    model = small_model()
    opt = nf.AdaPNM(model.parameters(), lr=0.01, noise=ROW_NOISES[noise], seed=1, backend=backend)
    model, opt, loader = PrivacyEngine().make_private(
        module=model, optimizer=opt, data_loader=DataLoader(TensorDataset(*batch(32)), batch_size=8),
        noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=False)
    x, y = next(iter(loader))
    F.cross_entropy(model(x), y).backward()
    before = snapshot(model, opt.original_optimizer)
    with pytest.raises(RuntimeError, match=r"reads per-sample gradients \(p.grad_sample\), but Opacus's DPOptimizer "
                                           r"has clipped and noised them into p.grad .* would undo the privacy"):
        opt.step()
    after = snapshot(model, opt.original_optimizer)
    assert all(torch.equal(a, b) for a, b in zip(before[0], after[0]))
    assert before[1] == after[1] == {}  # no state was created either


@pytest.mark.parametrize("noise", sorted(ROW_NOISES))
def test_accumulated_micro_batches_are_one_batch(noise):
    """Two backward passes without zero_grad: Opacus appends each micro-batch's rows to a list, and
    the step reads them as one batch of every sample, as nf.per_sample_grads over all of them."""
    x, y = batch(8)
    model = small_model()
    gsm = GradSampleModule(model)
    for half in (slice(0, 4), slice(4, 8)):
        F.cross_entropy(gsm(x[half]), y[half]).backward()
    assert isinstance(next(model.parameters()).grad_sample, list)
    opt = nf.AdaPNM(model.parameters(), lr=0.01, noise=ROW_NOISES[noise], seed=2)
    opt.step()

    twin = small_model()
    nf.per_sample_grads(twin, F.cross_entropy, x, y)
    nf.AdaPNM(twin.parameters(), lr=0.01, noise=ROW_NOISES[noise], seed=2).step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad_clears_grad_sample_and_a_step_without_backward_moves_nothing(set_to_none):
    model = small_model()
    opt = nf.AdaPNM(model.parameters(), lr=0.01, noise=ROW_NOISES["diag_fisher"], seed=2)
    nf.per_sample_grads(model, F.cross_entropy, *batch())
    opt.step()
    opt.zero_grad(set_to_none=set_to_none)
    assert all(p.grad_sample is None for p in model.parameters())
    if set_to_none:
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()  # no grad and no grad_sample: no param takes part, as with torch's optimizers
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_per_sample_grads_on_a_grad_sample_module_says_it_is_not_needed():
    model = small_model()
    gsm = GradSampleModule(model)
    for m in (gsm, model):
        with pytest.raises(ValueError, match="under Opacus's GradSampleModule, whose loss.backward"):
            nf.per_sample_grads(m, F.cross_entropy, *batch())


def test_an_unknown_grad_sample_form_is_named():
    p = torch.zeros(3, requires_grad=True)
    p.grad_sample = {"rows": torch.zeros(2, 3)}
    opt = nf.PNM([p], lr=0.1, noise=ROW_NOISES["diag_fisher"])
    with warnings.catch_warnings(), pytest.raises(RuntimeError, match="grad_sample of param 0 of param group 0 is a dict"):
        opt.step()
