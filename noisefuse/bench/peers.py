"""The low-memory AdamW steps of other libraries, what a user would pick instead of noisefuse's
state precisions, timed beside them in the state-precision section of ``make bench`` where installed
(none is a dependency; ``make bench`` installs them, docs/benchmarks.md):

- bitsandbytes' ``AdamW8bit``: blockwise 8-bit state, blocks of 256 (its CPU backend on a CPU);
- torchao's ``AdamW8bit`` / ``AdamW4bit`` / ``AdamWFp8``: blockwise 8-bit (blocks of 256), 4-bit
  (blocks of 128) and float8 state, their step compiled by ``torch.compile`` at the first step;
- DeepSpeed's ``DeepSpeedCPUAdam``: float32 state, a C++ AVX step (its op is built at first use).

Each peer's first step (compile or build) is timed apart from its steady step: it is reported as a
note, never mixed into the medians.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field

import torch

LR = 1e-3


@dataclass(frozen=True)
class Peer:
    label: str            # the row's label
    module: str           # where its class lives
    cls: str
    devices: tuple        # device types it runs on
    state_value_bytes: float  # bytes per stored value of each moment, its scales included
    first_step: str       # what its first step does besides stepping
    kwargs: dict = field(default_factory=dict)
    slow_first_step: bool = False  # minutes: left out of quick runs

    @property
    def package(self) -> str:
        return self.module.split(".")[0]

    def make(self, params):
        cls = getattr(importlib.import_module(self.module), self.cls)
        return cls(params, lr=LR, **self.kwargs)


PEERS = (
    Peer("AdamW8bit bitsandbytes", "bitsandbytes.optim", "AdamW8bit", ("cpu", "cuda"), 1 + 4 / 256,
         "sets up its state"),
    Peer("AdamW8bit torchao", "torchao.optim", "AdamW8bit", ("cpu", "cuda"), 1 + 4 / 256, "torch.compile",
         slow_first_step=True),
    Peer("AdamW4bit torchao", "torchao.optim", "AdamW4bit", ("cpu", "cuda"), 0.5 + 4 / 128, "torch.compile",
         slow_first_step=True),
    Peer("AdamWFp8 torchao", "torchao.optim", "AdamWFp8", ("cpu", "cuda"), 1 + 4 / 256, "torch.compile",
         slow_first_step=True),
    Peer("DeepSpeedCPUAdam", "deepspeed.ops.adam", "DeepSpeedCPUAdam", ("cpu",), 4.0, "builds its C++ op",
         {"adamw_mode": True}, slow_first_step=True),
)


def installed(device: torch.device, peers=PEERS, quick: bool = False) -> tuple[list[Peer], list[str]]:
    """The peers to time on ``device``, and a note for each left out (not installed, not for this
    device, or compiled for minutes in a quick run). Nothing is imported here: a package is looked
    up, not loaded."""
    chosen, notes = [], []
    for peer in peers:
        if device.type not in peer.devices:
            continue
        if quick and peer.slow_first_step:
            notes.append(f"peer {peer.label}: left out of a quick run (its first step: {peer.first_step})")
            continue
        if importlib.util.find_spec(peer.package) is None:
            notes.append(f"peer {peer.label}: not installed (pip install {peer.package})")
            continue
        chosen.append(peer)
    return chosen, notes
