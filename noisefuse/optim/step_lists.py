"""The per-step host work of the optimizers: which params take part, and the tensor lists of their
fused calls, built without per-tensor Python work that a step does not need.

With many small tensors the host side of a step costs as much as the kernel: every attribute read
of a tensor (``p.device``, ``p.shape``, ...) and every ``opt.state[p]`` lookup costs 50-110 ns.
Two things keep that down:

- ``Participants`` reads what the step needs of each param and grad once, as whole lists, and
  checks the grads with list comparisons (``grads_look_valid``). Only when that quick check fails
  does the optimizer run its per-tensor check, which raises with a message naming the tensor.
- ``GroupLists`` keeps a param group's lists (params, state buffers, counters, split by device
  and dtype) from one step to the next. Building them lazily creates or converts state, checking
  every entry; a later step only confirms, with identity comparisons, that nothing they were built
  from has changed (``GroupLists.fits``), else the optimizer builds them again. Grads are never
  kept: ``zero_grad(set_to_none=True)`` gives new ones at every step.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from operator import is_

import torch

from ..backends.step_tensors import StepTensors


@dataclass
class Participants:
    """The params of one group that take part in a step, in group order, with their grads (None
    for a param that takes part through its ``grad_sample`` alone), devices and dtypes."""

    params: list[torch.Tensor]
    grads: list[torch.Tensor | None]
    devices: list[torch.device]
    dtypes: list[torch.dtype]
    shapes: list[torch.Size]

    @classmethod
    def of(cls, group_params, reads_rows: bool) -> Participants:
        """Those of ``group_params`` that have a grad and, when the group's noise reads per-sample
        gradients (``reads_rows``), those that have a ``grad_sample`` alone."""
        params = list(group_params)  # a copy: GroupLists keeps it, the group's own list may be edited
        grads = [p.grad for p in params]
        if any(g is None for g in grads):
            keep = [g is not None or (reads_rows and getattr(p, "grad_sample", None) is not None)
                    for p, g in zip(params, grads)]
            params = [p for p, k in zip(params, keep) if k]
            grads = [g for g, k in zip(grads, keep) if k]
        return cls(params, grads, [p.device for p in params], [p.dtype for p in params], [p.shape for p in params])

    def grads_look_valid(self, dtensor_cls) -> bool:
        """True when every grad is dense, of its param's dtype, device and shape, every param is
        real floating point and none is a DTensor: then the per-tensor check would pass too."""
        if dtensor_cls is not None and any(isinstance(p, dtensor_cls) for p in self.params):
            return False  # a DTensor's grad must also be placed like it: checked per tensor
        if not all(dtype.is_floating_point for dtype in set(self.dtypes)):
            return False
        grads, devices, dtypes, shapes = self.grads, self.devices, self.dtypes, self.shapes
        if any(g is None for g in grads):  # params stepped from grad_sample alone: no grad to check
            present = [i for i, g in enumerate(grads) if g is not None]
            grads, devices = [grads[i] for i in present], [devices[i] for i in present]
            dtypes, shapes = [dtypes[i] for i in present], [shapes[i] for i in present]
        return (not any(g.is_sparse for g in grads) and [g.dtype for g in grads] == dtypes
                and [g.device for g in grads] == devices and [g.shape for g in grads] == shapes)


@dataclass
class _Bucket:
    """The lists of one (device, dtype) call, all but the grads. ``indices``: positions of its
    params among the group's participants (None: all of them); ``shards``: which of those are
    DTensors (None: none is)."""

    tensors: StepTensors
    indices: list[int] | None
    shards: list[bool] | None


class GroupLists:
    """The lists of one param group's fused calls, built from ``states`` (each participant's state
    dict) once every entry has been created or converted. ``fields`` maps each ``StepTensors``
    field the group uses to the state key holding it; ``settings`` are the group's values that
    decided what the entries had to be (state keys, ``state_dtype``, Demon product, where the
    counters live)."""

    def __init__(self, settings, participants: Participants, states, fields: dict, dtensor_cls,
                 quantization=None, scale_fields: dict | None = None):
        self.settings = settings
        self.params, self.devices, self.dtypes = participants.params, participants.devices, participants.dtypes
        self.shapes = participants.shapes
        scale_fields = scale_fields or {}
        self.values = {key: [state.get(key) for state in states] for key in (*fields.values(), *scale_fields.values())}
        shards = [dtensor_cls is not None and isinstance(p, dtensor_cls) for p in self.params]
        # 8-bit state: a param whose buffers have scales is quantized; the others of the group
        # (below Blockwise8bit.min_numel) keep float32 state, in calls of their own.
        first_scales = next(iter(scale_fields.values()), None)
        quantized = [first_scales is not None and state.get(first_scales) is not None for state in states]
        positions = defaultdict(list)
        for i, key in enumerate(zip(self.devices, self.dtypes, quantized)):
            positions[key].append(i)
        self.buckets = {}
        for key, indices in positions.items():
            if len(positions) == 1:
                indices = None  # one call takes the whole lists: nothing to split at each step
            lists = {field: _take(self.values[state_key], indices) for field, state_key in fields.items()}
            bucket_shards = _take(shards, indices)
            tensors = StepTensors(params=_take(self.params, indices), **lists)
            # Layouts change with `p.data = ...`, which keeps a param's shape only for a view of the
            # same size (a transpose): then the op's own checks refuse it, naming it.
            tensors.all_contiguous = all((local_tensor(p) if shard else p).is_contiguous()
                                         for p, shard in zip(tensors.params, bucket_shards))
            if key[2]:
                tensors.quantization = quantization
                tensors.scales = {field: _take(self.values[k], indices) for field, k in scale_fields.items()}
            self.buckets[key] = _Bucket(tensors, indices, bucket_shards if any(bucket_shards) else None)

    def fits(self, settings, participants: Participants, states) -> bool:
        """Whether building the lists from ``states`` now would give these again: the same settings,
        the same params on the same devices with the same dtypes and shapes (``p.data = ...`` changes
        them in place), and the very same state entries (``load_state_dict`` replaces them all, a user
        may replace one; what the step reads of the state is these entries alone)."""
        return (settings == self.settings and _same_objects(participants.params, self.params)
                and participants.dtypes == self.dtypes and participants.devices == self.devices
                and participants.shapes == self.shapes
                and all(_same_objects([state.get(key) for state in states], values)
                        for key, values in self.values.items()))

    def calls(self, grads) -> dict:
        """(device, dtype, quantized) -> the ``StepTensors`` of that call, with this step's ``grads``: a new
        object at each step (the noise sets fields of it), sharing the kept lists, which no
        backend modifies."""
        calls = {}
        for key, bucket in self.buckets.items():
            lists = {name: getattr(bucket.tensors, name) for name in _KEPT_FIELDS}
            lists["grads"] = _take(grads, bucket.indices)
            if bucket.shards is not None:
                # A DTensor param has a DTensor grad and state, placed like it: run on the local
                # shards, taken at each step (FSDP2 may give a param a new local tensor).
                for name in _SHARDED_FIELDS:
                    lists[name] = [local_tensor(t) if shard else t for t, shard in zip(lists[name], bucket.shards)]
            scales = bucket.tensors.scales
            if bucket.shards is not None and scales:
                # A shard's scales are its own blocks, flat as the kernels read them (Blockwise8bit.scales_shape).
                scales = {field: [local_tensor(t).view(-1) if shard else t for t, shard in zip(ts, bucket.shards)]
                          for field, ts in scales.items()}
            calls[key] = StepTensors(**lists, quantization=bucket.tensors.quantization, scales=scales,
                                     all_contiguous=bucket.tensors.all_contiguous)
        return calls


# The StepTensors lists a bucket keeps; grads come with each step, the noise fields with each call.
_KEPT_FIELDS = ("params", "exp_avgs", "neg_exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "steps", "beta1_prods")
# Those that hold a DTensor for a DTensor param (the step counters are plain tensors).
_SHARDED_FIELDS = ("params", "grads", "exp_avgs", "neg_exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs")


def _take(items, indices):
    return items if indices is None else [items[i] for i in indices]


def _same_objects(a, b) -> bool:
    return len(a) == len(b) and all(map(is_, a, b))


def local_tensor(t):
    """A DTensor's local shard (FSDP2, tensor parallel); None stays None. The update is elementwise,
    so every backend runs on the shards and the state stays a DTensor sharded like its param."""
    return None if t is None else t._local_tensor
