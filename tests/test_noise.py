"""The noise configurations and the pure-torch transforms: validation, dict form, statistics with
bounds derived from the sample size (5 standard errors), and invariance to how elements are split."""
import math

import pytest
import torch

import noisefuse as nf
from noisefuse.noise import DiagFisher, Isotropic, Multiplicative, transforms
from noisefuse.random import philox

Z = 5.0  # standard errors allowed by every statistical bound


@pytest.mark.parametrize("make", [
    lambda: Isotropic(-1.0), lambda: Isotropic(float("nan")), lambda: DiagFisher(),
    lambda: DiagFisher(small_batch=4, scale=0.1), lambda: DiagFisher(small_batch=0),
    lambda: DiagFisher(small_batch=8, batch_size=8), lambda: DiagFisher(scale=0.1, batch_size=16),
    lambda: DiagFisher(scale=0.1, centered=1), lambda: Multiplicative("uniform", small_batch=2),
    lambda: Multiplicative("gaussian"), lambda: Multiplicative("gaussian", small_batch=2, sigma=1.0),
    lambda: Multiplicative("gaussian", prob=0.5), lambda: Multiplicative("bernoulli", sigma=1.0),
    lambda: Multiplicative("bernoulli", prob=0.0), lambda: Multiplicative("bernoulli", prob=1.5),
    lambda: Multiplicative("gaussian_centered", sigma=-0.1), lambda: Multiplicative("gaussian", small_batch=2.5),
])
def test_invalid_configurations_raise(make):
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("noise", [
    Isotropic(0.5), DiagFisher(small_batch=4), DiagFisher(small_batch=4, batch_size=32, centered=True),
    DiagFisher(scale=0.25), Multiplicative("gaussian", small_batch=4), Multiplicative("gaussian_centered", sigma=2.0),
    Multiplicative("bernoulli", prob=0.3), Multiplicative("bernoulli", small_batch=3),
])
def test_dict_form_round_trips(noise):
    data = noise.as_dict()
    assert all(v is None or isinstance(v, (str, int, float, bool)) for v in data.values())
    assert nf.noise.noise_from_dict(data) == noise
    assert nf.noise.as_noise(data) == noise


def test_defaults_follow_the_batch_sizes():
    assert DiagFisher(small_batch=4).scale_for(16) == pytest.approx(math.sqrt(1 / 4 - 1 / 16))
    assert DiagFisher(scale=0.3).scale_for(2) == 0.3
    assert Multiplicative("gaussian", small_batch=4).sigma_for(16) == pytest.approx(math.sqrt(12 / 4))
    assert Multiplicative("bernoulli", small_batch=4).prob_for(16) == 0.25
    for bad in (lambda: DiagFisher(small_batch=4).scale_for(4), lambda: Multiplicative("bernoulli", small_batch=8).prob_for(6),
                lambda: DiagFisher(small_batch=2, batch_size=16).scale_for(8)):
        with pytest.raises(ValueError, match="batch"):
            bad()


def test_isotropic_mean_and_variance():
    n, std = 1 << 17, 0.3
    g = torch.full((n,), 2.0)
    out = transforms.isotropic(g, std, seed=1, step=3, offset=0).double()
    assert abs(out.mean().item() - 2.0) < Z * std / n**0.5
    assert abs(out.var().item() - std**2) < Z * std**2 * (2 / n) ** 0.5


def _rows_with_classes(batch, per_class, scales, shift=0.0):
    """[batch, 4*per_class] rows whose columns come in 4 classes with known Fisher diagonals."""
    g = torch.Generator().manual_seed(0)
    cols = torch.cat([torch.full((per_class,), s) for s in scales])
    return shift + torch.randn(batch, cols.numel(), generator=g, dtype=torch.float64) * cols


@pytest.mark.parametrize("centered", [False, True])
def test_diag_fisher_per_element_variance(centered):
    batch, per_class, scale = 6, 1 << 14, 0.7
    rows = _rows_with_classes(batch, per_class, (0.1, 0.5, 1.0, 3.0), shift=0.4).float()
    out = transforms.diag_fisher(rows, scale, centered, seed=5, step=2, offset=100).double()
    mean = rows.double().mean(0)
    dev = rows.double() - mean if centered else rows.double()
    fisher = (dev * dev).mean(0)
    assert out.shape == rows.shape[1:]
    z = (out - mean) / (scale * fisher.sqrt())  # exactly the normals if the covariance is right
    for k in range(4):
        zk = z[k * per_class:(k + 1) * per_class]
        assert abs(zk.mean().item()) < Z / per_class**0.5
        assert abs(zk.var().item() - 1.0) < Z * (2 / per_class) ** 0.5
    xi = philox.element_normals(5, 2, philox.TAG_DIAG_FISHER, 100, rows.shape[1]).double()
    torch.testing.assert_close(z, xi, atol=1e-4, rtol=1e-4)


def test_centered_and_uncentered_fisher_differ_by_the_mean():
    rows = _rows_with_classes(5, 64, (1.0, 1.0, 1.0, 1.0), shift=3.0).float()
    mean, root_f = transforms.fisher_stats(rows, centered=False)
    _, root_c = transforms.fisher_stats(rows, centered=True)
    torch.testing.assert_close(root_f**2, root_c**2 + mean**2, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("kind", ["gaussian", "gaussian_centered"])
def test_gaussian_weights_mean_and_variance(kind):
    batch, small = 1 << 16, 1 << 14
    w = nf.noise.loss_weights(batch, kind, small_batch=small, seed=9, step=4).double()
    var = (batch - small) / small
    if kind == "gaussian":
        assert abs(w.mean().item() - 1.0) < Z * (var / batch) ** 0.5
    else:
        assert abs(w.mean().item() - 1.0) < 1e-6  # centered: exactly 1 up to float32 rounding
        var *= 1 - 1 / batch
    assert abs(w.var().item() - var) < Z * var * (2 / batch) ** 0.5


def test_bernoulli_weights_mean_and_variance():
    batch, q = 1 << 16, 0.25
    w = nf.noise.loss_weights(batch, "bernoulli", prob=q, seed=9, step=4).double()
    assert set(w.unique().tolist()) <= {0.0, float(torch.tensor(1 / q, dtype=torch.float32))}
    var = (1 - q) / q
    assert abs(w.mean().item() - 1.0) < Z * (var / batch) ** 0.5
    # w = X/q with X ~ Bernoulli(q): the sample variance has sd sqrt(mu4 - var^2) / sqrt(n).
    mu4 = (q * (1 - q) ** 4 + (1 - q) * q**4) / q**4
    assert abs(w.var().item() - var) < Z * ((mu4 - var**2) / batch) ** 0.5


def test_weights_are_a_function_of_seed_and_step():
    a = nf.noise.loss_weights(32, "gaussian", sigma=1.0, seed=3, step=5)
    assert torch.equal(a, nf.noise.loss_weights(32, "gaussian", sigma=1.0, seed=3, step=5))
    assert not torch.equal(a, nf.noise.loss_weights(32, "gaussian", sigma=1.0, seed=3, step=6))
    assert not torch.equal(a, nf.noise.loss_weights(32, "gaussian", sigma=1.0, seed=4, step=5))
    # The first samples of a larger batch draw the same numbers: counter (b, 0, t, TAG_WEIGHTS).
    b = nf.noise.loss_weights(64, "gaussian", sigma=1.0, seed=3, step=5)
    assert torch.equal(a, b[:32])
    with pytest.raises(ValueError):
        nf.noise.loss_weights(32, "gaussian", sigma=1.0, seed=3, step=0)


def test_weighted_mean_is_the_weighted_average_of_rows():
    rows = torch.randn(8, 3, 5, generator=torch.Generator().manual_seed(1))
    w = nf.noise.loss_weights(8, "gaussian", small_batch=2, seed=1, step=1)
    torch.testing.assert_close(transforms.weighted_mean(rows, w), (w[:, None, None] * rows).sum(0) / 8)


@pytest.mark.parametrize("which", ["isotropic", "diag_fisher"])
def test_shards_draw_the_numbers_of_the_whole(which):
    rows = torch.randn(4, 10, 7, generator=torch.Generator().manual_seed(2))
    offset, split = 12345, 3

    def noisy(r, off):
        if which == "isotropic":
            return transforms.isotropic(r.mean(0), 0.5, 77, 9, off)
        return transforms.diag_fisher(r, 0.5, False, 77, 9, off)

    whole = noisy(rows, offset)
    top, bottom = rows[:, :split], rows[:, split:]
    parts = torch.cat([noisy(top, offset), noisy(bottom, offset + top[0].numel())])
    assert torch.equal(parts, whole)
