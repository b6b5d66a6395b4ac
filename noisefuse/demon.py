"""Demon momentum decay (Chen & Kyrillidis, arXiv 1910.04952), usable on every optimizer."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from .backends.family import demon_beta


@dataclass(frozen=True)
class Demon:
    r"""Decay the first-moment coefficient from :math:`\beta_{init}` to 0 over ``total_steps``.

    With :math:`s = t - 1` completed steps, :math:`T` = ``total_steps`` and :math:`D = \text{delay}\, T`:

    .. math::
        \beta_t = \begin{cases} \beta_{init} & s < D \\
        \frac{\beta_{init} f}{(1 - \beta_{init}) + \beta_{init} f}, \quad
        f = \max\!\left(0, 1 - \frac{s - D}{T - D}\right) & s \ge D \end{cases}

    ``delay`` is the fraction of ``total_steps`` during which beta stays at its initial value.
    """

    total_steps: int
    delay: float = 0.0

    def __post_init__(self):
        steps = self.total_steps
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps <= 0:
            raise ValueError(f"Demon total_steps must be a positive int, got {steps!r}")
        object.__setattr__(self, "total_steps", int(steps))  # a NumPy integer too (frozen dataclass)
        if isinstance(self.delay, bool) or not (isinstance(self.delay, numbers.Real) and 0.0 <= self.delay < 1.0):
            raise ValueError(f"Demon delay must be a fraction in [0, 1), got {self.delay!r}")

    def beta(self, beta_init: float, step: int) -> float:
        """The decayed beta used at the 1-based ``step``."""
        return demon_beta(beta_init, step, self.total_steps, self.delay)

    def beta_product(self, beta_init: float, step: int) -> float:
        """:math:`\\prod_{i \\le t} \\beta_i`, the exact bias of the time-varying EMA after ``step`` steps."""
        return math.prod(self.beta(beta_init, i) for i in range(1, step + 1))

    def as_dict(self) -> dict:
        # Plain values, so a state dict holding it loads with torch.load(weights_only=True).
        return {"total_steps": self.total_steps, "delay": float(self.delay)}


def as_demon(value) -> Demon | None:
    """Normalise the ``demon=`` argument: None, a step count, a :class:`Demon` or its dict form."""
    if value is None:
        return None
    if isinstance(value, Demon):
        return value
    if isinstance(value, dict):
        return Demon(**value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return Demon(value)
    raise ValueError(f"demon must be None, an int (total steps) or nf.Demon(...), got {value!r}")
