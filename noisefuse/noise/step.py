"""Noise inside one optimizer step: the checks made before anything is written, the global element
offsets, the per-step weight vector, and ``NoiseStep``, the noise argument of a fused call
(docs/kernel-contract.md, "Noise")."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import DiagFisher, Isotropic, Multiplicative, as_noise
from .transforms import diag_fisher, isotropic, sample_weights, weighted_mean

NOISE_CODES = {"none": 0, "isotropic": 1, "diag_fisher": 2, "multiplicative": 3}


@dataclass(frozen=True, eq=False)
class NoiseStep:
    """The noise of one fused call, every value final.

    ``kind``: a key of ``NOISE_CODES``; ``seed``: the stream's seed in ``[0, 2^64)``; ``std``
    (isotropic), ``scale`` and ``centered`` (diag_fisher); ``sample_weights``: float32 ``[B]`` on the
    params' device (multiplicative), the same numbers for every call of the step.
    The call's ``StepTensors`` carries ``offsets`` (always) and ``grad_samples`` (when
    ``consumes_grad_sample``; ``grads`` is then empty)."""

    kind: str
    seed: int
    std: float = 0.0
    scale: float = 0.0
    centered: bool = False
    sample_weights: torch.Tensor | None = None

    @property
    def code(self) -> int:
        return NOISE_CODES[self.kind]

    @property
    def consumes_grad_sample(self) -> bool:
        return self.kind in ("diag_fisher", "multiplicative")

    def apply(self, g: torch.Tensor, step: int, offset: int) -> torch.Tensor:
        """SPEC.md section 0 step 3 for one tensor: ``g`` is the preprocessed gradient, or its
        ``[B, *shape]`` per-sample rows when ``consumes_grad_sample``; returns the noisy gradient."""
        if self.kind == "isotropic":
            return isotropic(g, self.std, self.seed, step, offset)
        if self.kind == "diag_fisher":
            return diag_fisher(g, self.scale, self.centered, self.seed, step, offset)
        return weighted_mean(g, self.sample_weights)


def consumes_grad_sample(noise) -> bool:
    """Whether the ``noise=`` value of a param group (object or dict form) reads ``grad_sample``."""
    noise = as_noise(noise)
    return noise is not None and noise.needs_grad_sample


def element_offsets(param_groups) -> dict[int, int]:
    """``id(p)`` -> global index of ``p``'s first element in the concatenation of every param of the
    optimizer, in ``param_groups`` order, with full sizes (params without a grad count too)."""
    offsets, total = {}, 0
    for group in param_groups:
        for p in group["params"]:
            offsets.setdefault(id(p), total)
            total += p.numel()
    return offsets


def step_counters(plans, opt_state) -> list:
    """The step counter of each param taking part in the step that has one: ``state["step"]``, a
    tensor (an int in checkpoints of the official PNM code). A param with no state yet counts as 0,
    which never raises the maximum, so it is left out."""
    return [opt_state[p]["step"] for _, params in plans for p in params if "step" in opt_state.get(p, ())]


def weight_step(counters, capturable: bool = False):
    """The weight vector's step ``t_w = 1 + max(counters)`` (1 when there are none): an int, or an
    int64 0-d tensor on the counters' device.

    The tensor form is computed with no host read. It is used when the step is ``capturable`` or a
    counter is on an accelerator: there a host read is a sync per counter, and a step captured in a
    CUDA graph must draw each replay's weights from that replay's counters. CPU counters of a step
    that is not capturable are read on the host: no sync there, and an int step draws the weights
    faster (its constant counter words stay Python ints through the first Philox rounds), which is
    measurable on a small CPU model (about 0.1 ms of a 1.3 ms foreach step of four small params).

    Counters hold integers (exactly: they are float64). Both forms truncate them as ``int()``
    does and add the 1 in integers, so they give the same ``t_w``."""
    tensors = [c for c in counters if torch.is_tensor(c)]
    if not (tensors and (capturable or any(c.device.type != "cpu" for c in tensors))):
        values = [int(c) for c in counters]  # a list, not a generator: Dynamo before torch 2.14
        return 1 + (max(values) if values else 0)  # cannot trace max(<genexpr>, default=)
    ints = [int(c) for c in counters if not torch.is_tensor(c)]  # checkpoints of the official code
    # Counters share one device but in mixed-device optimizers (or a checkpoint's counters before
    # the step moves them): gather them on the first one's.
    home = tensors[0].device
    top = torch.stack([c if c.device == home else c.to(home) for c in tensors]).max().to(torch.int64) + 1
    return top.clamp_min(1 + max(ints)) if ints else top


class StepNoise:
    """The noise of one ``optimizer.step()``. Built before any tensor is written: it raises on a
    missing ``grad_sample``, a batch size that differs between params or that is not above
    ``small_batch``, and a ``grad_sample`` whose shape, dtype or device does not match its param.

    The weight vector uses the step ``t_w = 1 + max`` of the step counters of the params taking part
    in this step (the step every param is at when all of them get gradients), so it is one vector
    for every tensor of the optimizer whatever their grouping. With device counters, or
    ``capturable=True``, ``t_w`` and the vector are computed on the device with no host read
    (``weight_step``), so the step can be captured in a CUDA graph.
    """

    def __init__(self, plans, param_groups, opt_state, name: str = "optimizer", rounding: bool = False):
        self.configs = [as_noise(group["noise"]) for group, _ in plans]
        # Stochastic rounding (``rounding``) indexes its draws by the same global offsets.
        self.offsets = element_offsets(param_groups) if rounding or any(self.configs) else {}
        self.batch_size = None
        self._weights = {}
        self._rows = {}  # id(param) -> its grad_sample rows as one tensor
        first = None
        for gi, ((group, params), noise) in enumerate(zip(plans, self.configs)):
            if noise is None or not noise.needs_grad_sample:
                continue
            for i, p in enumerate(params):
                where = f"param {i} of param group {gi}"
                check_not_private(p, where, f"{name}: noise={type(noise).__name__}(...)")
                gs = self._rows[id(p)] = rows_of(p, where, name)
                if gs is None:
                    raise RuntimeError(f"{name}: noise={type(noise).__name__}(...) needs per-sample gradients, "
                                       f"but {where} has no grad_sample (fill it with nf.per_sample_grads or Opacus)")
                if gs.dim() != p.dim() + 1 or gs.shape[1:] != p.shape:
                    raise RuntimeError(f"{name}: grad_sample of {where} has shape {tuple(gs.shape)}; expected "
                                       f"[B, {', '.join(map(str, p.shape))}]")
                if gs.dtype != p.dtype or gs.device != p.device:
                    raise RuntimeError(f"{name}: grad_sample of {where} is {gs.dtype} on {gs.device}, "
                                       f"its param {p.dtype} on {p.device}")
                if self.batch_size is None:
                    self.batch_size, first = gs.shape[0], where
                elif gs.shape[0] != self.batch_size:
                    raise RuntimeError(f"{name}: grad_sample batch sizes differ: {self.batch_size} for {first}, "
                                       f"{gs.shape[0]} for {where} (all params must share one batch)")
            if params:
                noise.check_batch(self.batch_size)
        self.weight_step = None
        if any(isinstance(noise, Multiplicative) for noise in self.configs):
            capturable = any(group["capturable"] for group, params in plans if params)
            self.weight_step = weight_step(step_counters(plans, opt_state), capturable)

    def rows(self, p):
        """The grad_sample rows of ``p`` (a param of a group whose noise reads them) as one tensor,
        a list concatenated, as the step reads them."""
        return self._rows[id(p)]

    def noisy(self, group_index: int) -> bool:
        return self.configs[group_index] is not None

    def offsets_of(self, params) -> list[int]:
        """The global index of each param's first element (a DTensor shard's, for a shard)."""
        return [self.offsets[id(p)] + _shard_start(p) for p in params]

    def for_call(self, group_index: int, group, ts, params, draw_weights=sample_weights) -> NoiseStep:
        """The ``NoiseStep`` of a call over ``ts``, the bucket of the group holding ``params`` (in
        order); fills ``ts.offsets`` and, when the noise reads per-sample gradients,
        ``ts.grad_samples`` in place of ``ts.grads``. ``draw_weights`` (the call's backend's, with the
        signature of ``sample_weights``) draws the weight vector, once per step and device for all
        the calls that draw alike."""
        noise, seed = self.configs[group_index], group["seed"]
        ts.offsets = self.offsets_of(params)
        if noise.needs_grad_sample:
            if any(_is_sharded(p) for p in params):
                raise NotImplementedError("noise that reads grad_sample does not support DTensor params yet")
            ts.grad_samples = [self.rows(p) for p in params]
            ts.grads = []
        if isinstance(noise, Isotropic):
            return NoiseStep("isotropic", seed, std=float(noise.std))
        if isinstance(noise, DiagFisher):
            return NoiseStep("diag_fisher", seed, scale=noise.scale_for(self.batch_size), centered=noise.centered)
        assert isinstance(noise, Multiplicative)
        device = ts.params[0].device
        key = (noise, seed, device, draw_weights)
        if key not in self._weights:
            self._weights[key] = draw_weights(noise, self.batch_size, seed, self.weight_step, device)
        return NoiseStep("multiplicative", seed, sample_weights=self._weights[key])


def rows_of(p, where: str, name: str):
    """``p.grad_sample`` as one ``[B, *p.shape]`` tensor, or None when there is none. Opacus appends a
    micro-batch's rows to a list when backward runs again before ``zero_grad`` (gradient
    accumulation); the rows of the list are concatenated, as Opacus's own optimizers do, so the step
    sees one batch of every sample accumulated."""
    gs = getattr(p, "grad_sample", None)
    if gs is None or torch.is_tensor(gs):
        return gs
    if isinstance(gs, (list, tuple)) and gs and all(torch.is_tensor(x) for x in gs):
        return gs[0] if len(gs) == 1 else torch.cat(list(gs), dim=0)
    raise RuntimeError(f"{name}: grad_sample of {where} is a {type(gs).__name__}; expected a tensor [B, *shape] "
                       "or Opacus's list of such tensors (one per accumulated micro-batch)")


def check_not_private(p, where: str, what: str) -> None:
    """Refuses to read ``p.grad_sample`` where Opacus's DPOptimizer has made ``p.grad`` private: it
    clips each sample's gradient, adds the privacy noise and writes the result to ``p.grad``
    (keeping the clipped sum in ``p.summed_grad`` and marking the rows it read ``_processed``).
    Stepping from the raw rows would give the non-private update while Opacus still reports an
    epsilon. The check runs before anything is written."""
    gs = getattr(p, "grad_sample", None)
    rows = gs if isinstance(gs, (list, tuple)) else [gs]
    if getattr(p, "summed_grad", None) is not None or any(getattr(x, "_processed", False) for x in rows):
        raise RuntimeError(
            f"{what} reads per-sample gradients (p.grad_sample), but Opacus's DPOptimizer has clipped and "
            f"noised them into p.grad for differential privacy ({where}): stepping from p.grad_sample would "
            "undo the privacy Opacus accounts for. Under make_private use noise=None (Opacus adds the privacy "
            "noise) or noise=nf.noise.Isotropic(...), which step from the private p.grad; or make the model "
            "private without this noise.")


def _is_sharded(p) -> bool:
    return hasattr(p, "placements") and hasattr(p, "device_mesh")


def _shard_start(p) -> int:
    """Global flat index, within the full tensor, of a DTensor shard's first element (0 for a plain
    tensor). Only shards that are one contiguous block of the full tensor's rows are supported."""
    if not _is_sharded(p):
        return 0
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    local_shape, start = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    if p.dim() == 0:
        return 0
    if tuple(local_shape[1:]) == tuple(p.shape[1:]):
        return start[0] * math.prod(p.shape[1:])
    raise NotImplementedError(f"noise on a DTensor sharded as {p.placements} (not a block of rows) is not supported yet")
