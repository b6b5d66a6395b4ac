from .adapnm import AdaPNM
from .demon_adam import DemonAdam
from .demon_sgd import DemonSGD
from .pnm import PNM

__all__ = ["PNM", "AdaPNM", "DemonSGD", "DemonAdam"]
