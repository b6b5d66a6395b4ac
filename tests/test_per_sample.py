"""nf.per_sample_grads equals per-example autograd.grad, for modules with and without buffers."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import noisefuse as nf


class SmallCNN(nn.Module):
    """Conv + batch norm (eval mode: running statistics are buffers) + a registered buffer."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 5)
        self.register_buffer("shift", torch.linspace(-0.5, 0.5, 5))

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.bn(self.conv(x))), 1)
        return self.fc(h.flatten(1)) + self.shift


def _mlp():
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def _check_against_autograd(model, loss_fn, x, *targets):
    params = [p for p in model.parameters() if p.requires_grad]
    losses = nf.per_sample_grads(model, loss_fn, x, *targets)
    assert losses.shape == (x.shape[0],)
    for i in range(x.shape[0]):
        loss = loss_fn(model(x[i:i + 1]), *(t[i:i + 1] for t in targets))
        torch.testing.assert_close(losses[i], loss.detach())
        for p, g in zip(params, torch.autograd.grad(loss, params)):
            assert p.grad_sample.shape == (x.shape[0],) + p.shape
            torch.testing.assert_close(p.grad_sample[i], g, atol=1e-6, rtol=1e-5)
    assert all(p.grad is None for p in params)


def test_small_cnn_with_buffers():
    torch.manual_seed(0)
    model = SmallCNN()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 1.5)
    model.eval()
    _check_against_autograd(model, F.cross_entropy, torch.randn(5, 3, 6, 6), torch.randint(0, 5, (5,)))


def test_mlp_with_two_targets_and_a_frozen_layer():
    torch.manual_seed(1)
    model = _mlp()
    model[0].bias.requires_grad_(False)

    def loss_fn(out, y, weight):
        return (weight * (out - y) ** 2).sum()

    _check_against_autograd(model, loss_fn, torch.randn(7, 6), torch.randn(7, 3), torch.rand(7, 1))
    assert not hasattr(model[0].bias, "grad_sample")


def test_chunked_vmap_gives_the_same_rows():
    torch.manual_seed(2)
    model, x, y = _mlp(), torch.randn(9, 6), torch.randn(9, 3)
    nf.per_sample_grads(model, F.mse_loss, x, y)
    whole = [p.grad_sample.clone() for p in model.parameters()]
    nf.per_sample_grads(model, F.mse_loss, x, y, chunk_size=4)
    for a, p in zip(whole, model.parameters()):
        torch.testing.assert_close(p.grad_sample, a)


def test_bad_inputs_raise():
    model = _mlp()
    with pytest.raises(ValueError, match="batched"):
        nf.per_sample_grads(model, F.mse_loss, torch.randn(4, 6), torch.randn(3, 3))
    with pytest.raises(ValueError, match="scalar"):
        nf.per_sample_grads(model, lambda out, y: out - y, torch.randn(4, 6), torch.randn(4, 3))
