"""How many bytes one optimizer step must move: the denominator of every GB/s the benchmark prints.

The model counts the tensors an ideal single-pass kernel reads and writes per parameter element
(docs/kernel-contract.md, "Per-element update"), each of the storage dtype's size ``s``. It is the
traffic of the *algorithm*, not of a given implementation: a foreach implementation that makes ten
passes over memory moves more than this, and that shows up as a lower fraction of the copy
bandwidth, which is the point of the comparison. Per-tensor step counters and scalars (a few bytes
per tensor, not per element) are left out.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Traffic:
    """The per-element tensors a step reads and writes (names as in docs/kernel-contract.md)."""

    reads: tuple[str, ...]
    writes: tuple[str, ...]

    @property
    def per_element(self) -> int:
        """Number of storage-dtype values moved per parameter element."""
        return len(self.reads) + len(self.writes)

    def bytes(self, n_elements: int, dtype: torch.dtype) -> int:
        return self.per_element * n_elements * dtype_size(dtype)

    def read_bytes(self, n_elements: int, dtype: torch.dtype) -> int:
        return len(self.reads) * n_elements * dtype_size(dtype)


def dtype_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def traffic(momentum: str | None, second_moment: bool = False, amsgrad: bool = False) -> Traffic:
    """Traffic of a point of the kernel family.

    ``momentum``: ``None`` (plain SGD), ``"single"`` (one buffer: heavy-ball or EMA, read and
    written) or ``"pn"`` (two buffers: both read, only the positive one written).
    """
    if amsgrad and not second_moment:
        raise ValueError("amsgrad needs a second moment")
    reads, writes = ["p", "g"], ["p"]
    if momentum == "single":
        reads.append("m")
        writes.append("m")
    elif momentum == "pn":
        reads += ["m_pos", "m_neg"]
        writes.append("m_pos")
    elif momentum is not None:
        raise ValueError(f"unknown momentum kind {momentum!r}")
    if second_moment:
        reads.append("v")
        writes.append("v")
    if amsgrad:
        reads.append("vmax")
        writes.append("vmax")
    return Traffic(tuple(reads), tuple(writes))


# The algorithms the benchmark runs, keyed by the name its rows carry. The noisefuse optimizers,
# torch's optimizers and pytorch_optimizer's PNM/AdaPNM share keys where they compute the same thing.
ALGORITHMS = {
    "pnm": traffic("pn"),                                          # PNM
    "adapnm": traffic("pn", second_moment=True, amsgrad=True),     # AdaPNM (amsgrad=True default)
    "adapnm_noams": traffic("pn", second_moment=True),
    "sgd_momentum": traffic("single"),                             # DemonSGD, torch SGD(momentum)
    "sgd": traffic(None),                                          # torch SGD without momentum
    "adam": traffic("single", second_moment=True),                 # DemonAdam, torch Adam/AdamW
    "adam_amsgrad": traffic("single", second_moment=True, amsgrad=True),
}


def step_bytes(algorithm: str, n_elements: int, dtype: torch.dtype) -> int:
    """Bytes read plus written by one step of ``algorithm`` over ``n_elements`` parameters."""
    try:
        model = ALGORITHMS[algorithm]
    except KeyError:
        raise ValueError(f"no bytes model for {algorithm!r} (known: {', '.join(ALGORITHMS)})") from None
    return model.bytes(n_elements, dtype)


# Noise kinds (noisefuse.noise.NOISE_CODES) and whether the kernel forms g from B grad_sample rows.
NOISE_READS_ROWS = {"none": False, "isotropic": False, "diag_fisher": True, "multiplicative": True}


def noisy_traffic(algorithm: str, noise: str, batch: int | None = None) -> Traffic:
    """Traffic of one fused step of ``algorithm`` with gradient noise ``noise`` (a key of
    ``NOISE_READS_ROWS``). Isotropic noise draws its numbers in registers: the traffic is the plain
    step's. Diagonal-Fisher and multiplicative noise read the ``batch`` rows of ``grad_sample``
    instead of ``g`` (the mean, the Fisher diagonal and the weighted mean are formed in registers
    and never stored), so ``g``'s one read becomes ``batch`` reads."""
    try:
        rows = NOISE_READS_ROWS[noise]
    except KeyError:
        raise ValueError(f"unknown noise kind {noise!r} (known: {', '.join(NOISE_READS_ROWS)})") from None
    base = ALGORITHMS.get(algorithm)
    if base is None:
        raise ValueError(f"no bytes model for {algorithm!r} (known: {', '.join(ALGORITHMS)})")
    if not rows:
        return base
    if batch is None or isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"noise {noise!r} reads grad_sample: give its batch size, got {batch!r}")
    reads = []
    for name in base.reads:
        reads += [f"grad_sample[{b}]" for b in range(batch)] if name == "g" else [name]
    return Traffic(tuple(reads), base.writes)


def noisy_step_bytes(algorithm: str, noise: str, n_elements: int, dtype: torch.dtype,
                     batch: int | None = None) -> int:
    """Bytes read plus written by one fused step of ``algorithm`` with ``noise`` (noisy_traffic)."""
    return noisy_traffic(algorithm, noise, batch).bytes(n_elements, dtype)


def copy_elements(n_bytes: int, dtype: torch.dtype) -> int:
    """Elements of ``dtype`` in the source of a ``dst.copy_(src)`` that moves ``n_bytes`` in all
    (it reads the source and writes the destination, so each element counts twice)."""
    return max(1, n_bytes // (2 * dtype_size(dtype)))
