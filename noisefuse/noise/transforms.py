"""The noise transforms of one tensor, in pure torch (SPEC.md section 4): what the reference and
foreach backends call, and what the native and Triton kernels reproduce element by element.

Conventions shared by every backend (docs/noise.md has the full contract):

- ``xi`` is float32 N(0, 1) from the Philox stream at the counter
  ``(lo32(i), hi32(i), lo32(t), TAG)`` of global element ``i`` and the tensor's step ``t``; it is
  converted to the compute dtype (float32, or float64 for float64 params) before use.
- ``rows`` are ``grad_sample`` rows already in the compute dtype, already unscaled (AMP) and negated
  (``maximize``), i.e. the per-sample versions of the preprocessed ``g`` of SPEC.md section 0.
- Means are ``sum / B``; the per-step weight vector is float32 whatever the params' dtype.
"""
from __future__ import annotations

import math

import torch

from ..random.philox import (TAG_DIAG_FISHER, TAG_ISOTROPIC, box_muller, element_normals, split_seed,
                             weight_words)
from .config import Multiplicative


def _normals_like(g: torch.Tensor, seed: int, step: int, tag: int, offset: int) -> torch.Tensor:
    return element_normals(seed, step, tag, offset, g.numel(), g.device).view(g.shape).to(g.dtype)


def isotropic(g: torch.Tensor, std: float, seed: int, step: int, offset: int) -> torch.Tensor:
    r""":math:`g + \sigma \xi` (tag ``TAG_ISOTROPIC``); ``offset`` is the global index of ``g``'s first
    element. Returns a new tensor."""
    return g + std * _normals_like(g, seed, step, TAG_ISOTROPIC, offset)


def fisher_stats(rows: torch.Tensor, centered: bool) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The mean :math:`\bar g = (\sum_i g_i) / B` of the ``[B, *shape]`` rows and the square root of the
    Fisher diagonal, :math:`\sqrt f` with :math:`f = (\sum_i g_i^2) / B`, or
    :math:`f = (\sum_i (g_i - \bar g)^2) / B` when ``centered`` (two passes, as written)."""
    batch = rows.shape[0]
    mean = rows.sum(0) / batch
    dev = rows - mean if centered else rows
    return mean, torch.sqrt((dev * dev).sum(0) / batch)


def diag_fisher(rows: torch.Tensor, scale: float, centered: bool, seed: int, step: int, offset: int) -> torch.Tensor:
    r"""Diagonal-Fisher noise from the ``[B, *shape]`` rows (tag ``TAG_DIAG_FISHER``):
    :math:`g = \bar g + (s \sqrt f)\, \xi` with :math:`\bar g, \sqrt f` from :func:`fisher_stats`."""
    mean, root_f = fisher_stats(rows, centered)
    return mean + (scale * root_f) * _normals_like(mean, seed, step, TAG_DIAG_FISHER, offset)


def weighted_mean(rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    r""":math:`g = \big(\sum_i w_i g_i\big) / B` for the multiplicative noise (``weights``: ``[B]``)."""
    batch = rows.shape[0]
    w = weights.to(device=rows.device, dtype=rows.dtype).view(batch, *[1] * (rows.dim() - 1))
    # A sum over the rows, not tensordot: BLAS blocks a matrix-vector product by the matrix's shape,
    # so a param split in two would get other roundings than the whole (seen with oneDNN on Intel).
    return (w * rows).sum(0) / batch


def sample_weights(noise: Multiplicative, batch_size: int, seed: int, step, device=None) -> torch.Tensor:
    r"""The float32 weight vector :math:`w \in \mathbb R^B` of ``noise`` at the 1-based ``step``: an int,
    or a 0-d tensor holding it (e.g. ``1 +`` a step counter, read on the device with no host sync, so
    the draw can be captured in a CUDA graph); both give the same bits.

    Sample :math:`b`'s counter is ``(b, 0, lo32(t), TAG_WEIGHTS)``; from its words ``x0, x1``:

    - Gaussian kinds: :math:`\xi_b` = Box-Muller of ``(x0, x1)``; ``gaussian``: ``w = 1 + sigma * xi``;
      ``gaussian_centered``: ``w = 1 + sigma * (xi - mean)`` with ``mean`` the float64 mean of the
      float32 ``xi``, rounded to float32 (``sigma`` is rounded to float32 as well).
    - ``bernoulli``: sample kept iff ``(x0 >> 8) < ceil(q * 2^24)`` (i.e. ``u < q``), and
      ``w = float32(1/q)`` if kept, else 0.
    """
    split_seed(seed)
    noise.check_batch(batch_size)
    x0, x1 = weight_words(seed, step, batch_size, device)
    if noise.kind == "bernoulli":
        q = noise.prob_for(batch_size)
        kept = (x0 >> 8) < math.ceil(q * 2.0**24)
        return kept.to(torch.float32) * (1.0 / q)
    sigma = noise.sigma_for(batch_size)
    xi = box_muller(x0, x1)
    if noise.kind == "gaussian_centered":
        xi = xi - xi.double().mean().to(torch.float32)
    return 1.0 + sigma * xi


def loss_weights(batch_size: int, kind: str = "gaussian", *, small_batch: int | None = None,
                 sigma: float | None = None, prob: float | None = None, seed: int, step: int,
                 device=None) -> torch.Tensor:
    r"""The weight vector of ``Multiplicative(kind, small_batch=, sigma=, prob=)`` for the per-sample
    loss route: ``loss = (w * per_sample_losses).mean()`` and one ordinary backward pass give
    :math:`\frac1B \sum_i w_i \nabla \ell_i`, the multiplicative noise without per-sample gradients.

    ``seed`` and the 1-based ``step`` select the numbers: the same ones an optimizer with
    ``noise=Multiplicative(...)`` and this ``seed`` uses at its step ``step``.
    """
    if not (isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1):
        raise ValueError(f"loss_weights: batch_size must be a positive int, got {batch_size!r}")
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ValueError(f"loss_weights: step must be a 1-based int, got {step!r}")
    noise = Multiplicative(kind, small_batch=small_batch, sigma=sigma, prob=prob)
    return sample_weights(noise, batch_size, seed, step, device)
