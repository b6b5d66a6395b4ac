"""Gradient noise (SPEC.md section 4), drawn from the one Philox stream (section 5).

``noise=`` on every optimizer takes :class:`Isotropic`, :class:`DiagFisher` or :class:`Multiplicative`;
:func:`loss_weights` gives the multiplicative weight vector for the per-sample-loss route.
docs/noise.md explains each, the stream and its counters."""
from .config import DiagFisher, Isotropic, Multiplicative, as_noise, noise_from_dict
from .step import NOISE_CODES, NoiseStep, StepNoise, consumes_grad_sample, element_offsets
from .transforms import diag_fisher, fisher_stats, isotropic, loss_weights, sample_weights, weighted_mean

__all__ = ["Isotropic", "DiagFisher", "Multiplicative", "loss_weights", "as_noise", "noise_from_dict",
           "NoiseStep", "StepNoise", "NOISE_CODES", "consumes_grad_sample", "element_offsets",
           "isotropic", "diag_fisher", "fisher_stats", "weighted_mean", "sample_weights"]
