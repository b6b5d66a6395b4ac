"""noisefuse: fused multi-tensor optimizers for Positive-Negative Momentum, Demon momentum decay
and gradient noise. See README.md and docs/."""
from .demon import Demon
from . import noise, state
from .optim import PNM, AdaPNM, DemonAdam, DemonSGD
from .per_sample import per_sample_grads

__version__ = "0.1.0"
__all__ = ["PNM", "AdaPNM", "DemonSGD", "DemonAdam", "Demon", "noise", "state", "per_sample_grads"]
