"""The tensor lists one fused call updates (docs/kernel-contract.md, "Arguments")."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class StepTensors:
    """Per-param lists of one (device, dtype) bucket; optional lists are empty when unused. The
    state lists share one dtype: the params' or, with ``state_dtype=torch.float32``, float32."""

    params: list[torch.Tensor] = field(default_factory=list)
    grads: list[torch.Tensor] = field(default_factory=list)
    exp_avgs: list[torch.Tensor] = field(default_factory=list)
    neg_exp_avgs: list[torch.Tensor] = field(default_factory=list)
    exp_avg_sqs: list[torch.Tensor] = field(default_factory=list)
    max_exp_avg_sqs: list[torch.Tensor] = field(default_factory=list)
    steps: list[torch.Tensor] = field(default_factory=list)
    beta1_prods: list[torch.Tensor] = field(default_factory=list)
    # Noise only (docs/kernel-contract.md, "Noise"): per-sample gradients [B, *param.shape] when the
    # noise reads them (``grads`` is then empty). Noise and stochastic rounding: each param's global
    # element offset.
    grad_samples: list[torch.Tensor] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.params)
