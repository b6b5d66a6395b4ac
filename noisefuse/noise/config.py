"""The three gradient noises of SPEC.md section 4, as validated, frozen configurations.

Each has a plain-dict form (``as_dict``/``noise_from_dict``) so that a state dict holding it loads
with ``torch.load(weights_only=True)``; the optimizers keep that form in their param groups.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

MULTIPLICATIVE_KINDS = ("gaussian", "gaussian_centered", "bernoulli")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_small_batch(owner: str, small_batch):
    if not (_is_int(small_batch) and small_batch >= 1):
        raise ValueError(f"{owner}: small_batch must be a positive int, got {small_batch!r}")


def _check_batch_above(owner: str, small_batch: int, batch_size: int):
    if batch_size <= small_batch:
        raise ValueError(f"{owner}: the batch size B={batch_size} must be above small_batch={small_batch} "
                         "(the noise imitates the smaller batch b from a batch of B > b samples)")


@dataclass(frozen=True)
class Isotropic:
    r"""Isotropic Gaussian noise, the papers' baseline: :math:`g \leftarrow g + \sigma\,\xi`,
    :math:`\xi \sim \mathcal N(0, I)` drawn per element. Reads ``p.grad``; needs no ``grad_sample``."""

    std: float
    needs_grad_sample: ClassVar[bool] = False

    def __post_init__(self):
        if not (_is_number(self.std) and self.std >= 0):
            raise ValueError(f"Isotropic: std must be a finite number >= 0, got {self.std!r}")

    def as_dict(self) -> dict:
        return {"type": "Isotropic", "std": float(self.std)}


@dataclass(frozen=True)
class DiagFisher:
    r"""Gaussian noise with the diagonal of the empirical Fisher as covariance (Wen et al., AISTATS
    2020), scaled to imitate a batch of ``small_batch`` = :math:`b` samples from one of :math:`B > b`:

    .. math::
        \bar g = \frac1B \sum_i g_i, \qquad
        f = \frac1B \sum_i g_i^2 \;\; \Big(\text{centered: } f = \frac1B \sum_i (g_i - \bar g)^2\Big), \qquad
        g \leftarrow \bar g + s \sqrt{f}\, \xi, \quad s = \sqrt{1/b - 1/B}

    with :math:`g_i` the rows of ``p.grad_sample`` and :math:`\xi \sim \mathcal N(0, I)` per element.
    Give ``small_batch`` (and optionally ``batch_size``, checked against ``grad_sample``; by default
    :math:`B` is read from it) or the scale :math:`s` itself as ``scale``.
    """

    small_batch: int | None = None
    batch_size: int | None = None
    scale: float | None = None
    centered: bool = False
    needs_grad_sample: ClassVar[bool] = True

    def __post_init__(self):
        if (self.small_batch is None) == (self.scale is None):
            raise ValueError("DiagFisher: give exactly one of small_batch= (with batch_size=) or scale=")
        if self.scale is not None:
            if not (_is_number(self.scale) and self.scale >= 0):
                raise ValueError(f"DiagFisher: scale must be a finite number >= 0, got {self.scale!r}")
            if self.batch_size is not None:
                raise ValueError("DiagFisher: batch_size= only goes with small_batch=, not with scale=")
        else:
            _check_small_batch("DiagFisher", self.small_batch)
            if self.batch_size is not None:
                if not _is_int(self.batch_size):
                    raise ValueError(f"DiagFisher: batch_size must be an int, got {self.batch_size!r}")
                _check_batch_above("DiagFisher", self.small_batch, self.batch_size)
        if not isinstance(self.centered, bool):
            raise ValueError(f"DiagFisher: centered must be a bool, got {self.centered!r}")

    def check_batch(self, batch_size: int) -> None:
        """Raise unless ``grad_sample``'s batch size fits this configuration."""
        if self.batch_size is not None and batch_size != self.batch_size:
            raise ValueError(f"DiagFisher: grad_sample has batch size {batch_size}, but batch_size="
                             f"{self.batch_size} was configured")
        if self.small_batch is not None:
            _check_batch_above("DiagFisher", self.small_batch, batch_size)

    def scale_for(self, batch_size: int) -> float:
        """:math:`s`, the given ``scale`` or :math:`\\sqrt{1/b - 1/B}`."""
        self.check_batch(batch_size)
        if self.scale is not None:
            return float(self.scale)
        return math.sqrt(1.0 / self.small_batch - 1.0 / batch_size)

    def as_dict(self) -> dict:
        return {"type": "DiagFisher", "small_batch": self.small_batch, "batch_size": self.batch_size,
                "scale": None if self.scale is None else float(self.scale), "centered": self.centered}


@dataclass(frozen=True)
class Multiplicative:
    r"""Multiplicative sampling noise (Wu et al., ICML 2020): the gradient is a randomly weighted
    mean of the per-sample gradients, :math:`g = \frac1B \sum_i w_i g_i`, with one weight vector
    :math:`w \in \mathbb R^B` per step shared by every parameter of the optimizer:

    - ``"gaussian"`` (MSGD-Fisher): :math:`w_i = 1 + \sigma \xi_i`, default :math:`\sigma^2 = (B - b)/b`;
    - ``"gaussian_centered"`` (MSGD-Cov): :math:`w_i = 1 + \sigma (\xi_i - \bar\xi)`, same default;
    - ``"bernoulli"``: :math:`w_i = \mathrm{Bernoulli}(q)/q`, default :math:`q = b/B`.

    Give ``small_batch`` = :math:`b` (the defaults above, from the batch size :math:`B` of
    ``grad_sample``) or ``sigma`` (Gaussian kinds) / ``prob`` = :math:`q` (Bernoulli).
    """

    kind: str = "gaussian"
    small_batch: int | None = None
    sigma: float | None = None
    prob: float | None = None
    needs_grad_sample: ClassVar[bool] = True

    def __post_init__(self):
        if self.kind not in MULTIPLICATIVE_KINDS:
            raise ValueError(f"Multiplicative: kind must be one of {MULTIPLICATIVE_KINDS}, got {self.kind!r}")
        explicit, name = (self.prob, "prob") if self.kind == "bernoulli" else (self.sigma, "sigma")
        other, other_name = (self.sigma, "sigma") if self.kind == "bernoulli" else (self.prob, "prob")
        if other is not None:
            raise ValueError(f"Multiplicative: {other_name}= does not apply to kind={self.kind!r}")
        if (self.small_batch is None) == (explicit is None):
            raise ValueError(f"Multiplicative({self.kind!r}): give exactly one of small_batch= or {name}=")
        if self.small_batch is not None:
            _check_small_batch("Multiplicative", self.small_batch)
        elif self.kind == "bernoulli" and not (_is_number(self.prob) and 0 < self.prob <= 1):
            raise ValueError(f"Multiplicative: prob must be in (0, 1], got {self.prob!r}")
        elif self.kind != "bernoulli" and not (_is_number(self.sigma) and self.sigma >= 0):
            raise ValueError(f"Multiplicative: sigma must be a finite number >= 0, got {self.sigma!r}")

    def check_batch(self, batch_size: int) -> None:
        if self.small_batch is not None:
            _check_batch_above("Multiplicative", self.small_batch, batch_size)

    def sigma_for(self, batch_size: int) -> float:
        """:math:`\\sigma` of the Gaussian kinds: the given one or :math:`\\sqrt{(B - b)/b}`."""
        self.check_batch(batch_size)
        if self.sigma is not None:
            return float(self.sigma)
        return math.sqrt((batch_size - self.small_batch) / self.small_batch)

    def prob_for(self, batch_size: int) -> float:
        """:math:`q` of the Bernoulli kind: the given one or :math:`b/B`."""
        self.check_batch(batch_size)
        if self.prob is not None:
            return float(self.prob)
        return self.small_batch / batch_size

    def as_dict(self) -> dict:
        return {"type": "Multiplicative", "kind": self.kind, "small_batch": self.small_batch,
                "sigma": None if self.sigma is None else float(self.sigma),
                "prob": None if self.prob is None else float(self.prob)}


NOISE_TYPES = {cls.__name__: cls for cls in (Isotropic, DiagFisher, Multiplicative)}


def noise_from_dict(data: dict):
    """The configuration whose :meth:`as_dict` is ``data``."""
    fields = dict(data)
    cls = NOISE_TYPES.get(fields.pop("type", None))
    if cls is None:
        raise ValueError(f"not a noise configuration: {data!r}")
    return cls(**fields)


def as_noise(value):
    """Normalise the ``noise=`` argument: None, a noise configuration or its dict form."""
    if value is None or isinstance(value, tuple(NOISE_TYPES.values())):
        return value
    if isinstance(value, dict):
        return noise_from_dict(value)
    raise ValueError("noise must be None, nf.noise.Isotropic(...), nf.noise.DiagFisher(...) or "
                     f"nf.noise.Multiplicative(...), got {value!r}")
