"""The tensor lists one fused call updates (docs/kernel-contract.md, "Arguments")."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class StepTensors:
    """Per-param lists of one (device, dtype) bucket; optional lists are empty when unused. The
    state lists share one dtype: the params', float32 or bfloat16 (``state_dtype``), or uint8 codes
    with ``quantization``."""

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
    # 8-bit state (noisefuse.state.Blockwise8bit): the buffer lists hold uint8 codes, and
    # ``scales[field]`` each buffer's float32 scales, one per block of its flat index.
    quantization: object = None
    scales: dict = field(default_factory=dict)
    # Whether every param is row-major contiguous, when the caller knows (the optimizer works it out
    # once per build of a group's lists); None: not known, the backend looks.
    all_contiguous: bool | None = None

    def __len__(self) -> int:
        return len(self.params)
