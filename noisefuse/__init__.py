"""noisefuse: fused multi-tensor optimizers for Positive-Negative Momentum, Demon momentum decay
and gradient noise. See README.md and docs/."""
from .demon import Demon
from .optim import PNM, AdaPNM, DemonAdam, DemonSGD

__version__ = "0.1.0"
__all__ = ["PNM", "AdaPNM", "DemonSGD", "DemonAdam", "Demon"]
