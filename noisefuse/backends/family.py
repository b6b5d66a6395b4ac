"""The one kernel family behind every optimizer (docs/kernel-contract.md).

``Family`` holds the flags that change memory traffic (compile-time in the native and Triton
kernels); ``Hyper`` holds the runtime values of one param group; ``tensor_scalars`` turns a
tensor's step counter into the coefficients of its update, exactly as every kernel does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

MOMENTUM_CODES = {"heavy_ball": 0, "ema": 1, "pn": 2}


@dataclass(frozen=True)
class Family:
    momentum: str  # "heavy_ball" | "ema" | "pn"
    second_moment: bool = False
    amsgrad: bool = False

    def __post_init__(self):
        if self.momentum not in MOMENTUM_CODES:
            raise ValueError(f"unknown momentum kind {self.momentum!r}")
        if self.amsgrad and not self.second_moment:
            raise ValueError("amsgrad needs a second moment")

    @property
    def pn(self) -> bool:
        return self.momentum == "pn"


@dataclass(frozen=True)
class Hyper:
    """The runtime values of one param group's step. With ``lr_tensor`` (a one-element float32
    tensor on the params' device, from a group whose lr is a tensor) the fused kernels read the
    learning rate on the device and ``lr`` is unused; the host-side backends read it once
    (``on_host``)."""

    lr: float
    beta1: float
    beta2: float = 0.0
    beta0: float = 0.0
    eps: float = 0.0
    weight_decay: float = 0.0
    decoupled: bool = True
    nesterov: bool = False
    maximize: bool = False
    demon_total_steps: int = 0  # 0: no Demon decay
    demon_delay: float = 0.0
    lr_tensor: object = field(default=None, compare=False)

    def on_host(self) -> "Hyper":
        """These values with a tensor lr read into ``lr`` (a host read, as torch.optim's non-capturable
        paths do), for the backends whose scalars are Python numbers."""
        if self.lr_tensor is None:
            return self
        return replace(self, lr=float(self.lr_tensor), lr_tensor=None)


def demon_beta(beta_init: float, step: int, total_steps: int, delay: float = 0.0) -> float:
    """Demon's decayed momentum for the 1-based ``step`` (SPEC section 3).

    With :math:`s = t - 1` completed steps, :math:`D = \\text{delay}\\cdot T` and
    :math:`f = \\max(0, 1 - (s - D)/(T - D))`:
    :math:`\\beta_t = \\beta_{init}` for :math:`s < D`, else
    :math:`\\beta_t = \\beta_{init} f / ((1 - \\beta_{init}) + \\beta_{init} f)`.
    """
    if total_steps <= 0:
        return beta_init
    s = step - 1
    start = delay * total_steps
    if s < start:
        return beta_init
    frac = max(0.0, 1.0 - (s - start) / (total_steps - start))
    return beta_init * frac / ((1.0 - beta_init) + beta_init * frac)


@dataclass(frozen=True)
class TensorScalars:
    """Coefficients of one tensor's update at step ``t`` (names as in docs/kernel-contract.md)."""

    t: int
    beta1_t: float
    a: float
    b: float
    odd: bool  # PN: exp_avgs is the positive buffer at odd steps
    c_pos: float
    c_neg: float
    step_size: float  # lr / bc1 with a second moment, lr otherwise
    inv_sqrt_bc2: float
    new_beta1_prod: float | None  # written back when Demon bias correction is tracked


def tensor_scalars(family: Family, hyper: Hyper, step: float, beta1_prod: float | None) -> TensorScalars:
    """Scalars for a tensor whose counter reads ``step`` before this update."""
    t = int(step) + 1
    beta1_t = demon_beta(hyper.beta1, t, hyper.demon_total_steps, hyper.demon_delay)
    if family.momentum == "pn":
        a = beta1_t * beta1_t
        b = 1.0 - a
    elif family.momentum == "heavy_ball":
        a, b = beta1_t, 1.0
    else:
        a, b = beta1_t, 1.0 - beta1_t
    norm = math.sqrt((1.0 + hyper.beta0) ** 2 + hyper.beta0**2)
    c_pos, c_neg = (1.0 + hyper.beta0) / norm, hyper.beta0 / norm
    step_size, inv_sqrt_bc2, new_prod = hyper.lr, 1.0, None
    if family.second_moment:
        if hyper.demon_total_steps > 0:
            new_prod = beta1_prod * beta1_t
            bc1 = 1.0 - new_prod
        else:
            bc1 = 1.0 - hyper.beta1**t
        step_size = hyper.lr / bc1
        inv_sqrt_bc2 = 1.0 / math.sqrt(1.0 - hyper.beta2**t)
    return TensorScalars(t, beta1_t, a, b, t % 2 == 1, c_pos, c_neg, step_size, inv_sqrt_bc2, new_prod)
