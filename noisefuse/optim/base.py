"""What the four optimizers share: argument checks, lazy state, grouping by (device, dtype), AMP,
and checkpoint compatibility. The math lives in ``noisefuse.backends``; nothing here computes an
update."""
from __future__ import annotations

import math
import numbers
import sys
from collections import OrderedDict
from dataclasses import replace

import torch
from torch.optim import Optimizer
from torch.optim.optimizer import required

from .. import backends
from ..backends.family import Family, Hyper
from ..demon import Demon, as_demon
from ..noise import StepNoise, as_noise, consumes_grad_sample
from ..random.rounding import Rounding
from ..state.blockwise import SCALES_SUFFIX, as_blockwise
from .precision import (COUNTERS, check_saved_8bit_state, check_state_dtype, check_state_rounding, ensure_8bit_state,
                        ensure_float_state, keep_state_dtypes, may_round_state, rounds_state)
from .step_lists import GroupLists, Participants

# The per-param lists a fused call takes, besides params/grads/steps (docs/kernel-contract.md).
BUFFER_FIELDS = ("exp_avgs", "neg_exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs")

# Group keys every noisefuse optimizer adds to its subclass's own, with their defaults for
# checkpoints written before they existed (or by the official PNM code).
# The backends whose step never reads a device value on the host, so it can be captured in a CUDA graph.
CAPTURABLE = ("native", "triton")

COMMON_DEFAULTS = dict(demon=None, noise=None, backend="auto", maximize=False, capturable=False,
                       state_dtype=None, state_rounding=None, stochastic_rounding=False, max_grad_norm=None)

# What a group may ask of its backend beyond the plain update, in the order of _needs(): the backend
# module's flag, and the argument as errors spell it (docs/kernel-contract.md, "Noise", "Mixed precision").
FEATURES = (("supports_noise", "noise="), ("supports_mixed_state", "state_dtype="),
            ("supports_stochastic_rounding", "stochastic rounding"), ("supports_blockwise_8bit", "8-bit state"))


def common_hyper(group, demon: Demon | None) -> dict:
    """The runtime values every optimizer passes the same way (see ``Hyper``). A tensor lr is not
    read here: the fused kernels read it on the device (``_lr_on``), so a captured step follows an
    LR schedule that writes it in place."""
    lr = group["lr"]
    lr_values = dict(lr=0.0, lr_tensor=lr) if torch.is_tensor(lr) else dict(lr=float(lr))
    return dict(**lr_values, weight_decay=group["weight_decay"], decoupled=group["decoupled"],
                maximize=group["maximize"], demon_total_steps=demon.total_steps if demon else 0,
                demon_delay=demon.delay if demon else 0.0)


def check_lr(lr, read_tensor=True):
    """``read_tensor=False`` (at each step) checks a tensor lr's size, not its value: reading it
    would synchronise with the device, and cannot happen in a captured step."""
    if isinstance(lr, torch.Tensor):
        if lr.numel() != 1:
            raise ValueError("lr as a Tensor must have exactly one element")
        if not read_tensor:
            return
        lr = lr.item()
    if not (_is_real(lr) and math.isfinite(lr) and lr >= 0.0):
        raise ValueError(f"Invalid lr: {lr!r} (must be a finite number >= 0)")


def _is_real(value) -> bool:
    """A real number, NumPy's scalars included (torch.optim takes them); not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_unit(name, value):
    if not (_is_real(value) and 0.0 <= value < 1.0):
        raise ValueError(f"Invalid {name}: {value!r} (must be in [0, 1))")


def check_nonneg(name, value):
    if not (_is_real(value) and math.isfinite(value) and value >= 0.0):
        raise ValueError(f"Invalid {name}: {value!r} (must be a finite number >= 0)")


def check_betas(betas, names):
    if not isinstance(betas, (tuple, list)) or len(betas) != len(names):
        raise ValueError(f"Invalid betas: {betas!r} (expected a tuple ({', '.join(names)}))")


def check_max_grad_norm(value, first):
    """``max_grad_norm`` is one norm over every gradient of the optimizer (as
    ``torch.nn.utils.clip_grad_norm_`` over its params): every param group must have the first's."""
    if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                  and math.isfinite(value) and value > 0):
        raise ValueError(f"Invalid max_grad_norm: {value!r} (must be None or a finite number > 0)")
    if value != first:
        raise ValueError(f"max_grad_norm is one global norm over every param of the optimizer: a param group "
                         f"cannot set {value!r} where the first has {first!r}")


def check_bool(name, value):
    if not isinstance(value, bool):
        raise ValueError(f"Invalid {name}: {value!r} (must be a bool)")


class FusedOptimizer(Optimizer):
    """Base class of the noisefuse optimizers. A subclass says which point of the kernel family it
    is (``_family``), which runtime values it passes (``_hyper``), which state key holds each
    buffer (``_state_keys``), and validates its own hyperparameters (``_check_group``)."""

    # GradScaler hands us grad_scale/found_inf; every backend unscales and skips inside the step.
    _step_supports_amp_scaling = True

    def __init__(self, params, defaults, *, demon=None, noise=None, backend="auto", seed=None,
                 maximize=False, capturable=False, state_dtype=None, state_rounding=None, stochastic_rounding=False,
                 max_grad_norm=None):
        demon = demon if demon is required else as_demon(demon)
        if seed is None:
            # Drawn from torch's default generator, so torch.manual_seed makes runs reproducible.
            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64).item())
        elif isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**64:
            raise ValueError(f"Invalid seed: {seed!r} (must be an int in [0, 2**64))")
        seed = int(seed)  # a NumPy integer too
        defaults = dict(defaults, demon=demon.as_dict() if isinstance(demon, Demon) else demon, noise=noise,
                        backend=backend, seed=seed, maximize=maximize, capturable=capturable,
                        state_dtype=state_dtype, state_rounding=state_rounding, stochastic_rounding=stochastic_rounding,
                        max_grad_norm=max_grad_norm)
        self._backends = {}  # (backend, device type, index, *_needs()) -> module; see _backend()
        self._step_lists = {}  # param group index -> GroupLists of its last step; see _init_group()
        super().__init__(params, defaults)

    # ----- subclass interface -------------------------------------------------------------------
    def _family(self, group) -> Family:
        raise NotImplementedError

    def _hyper(self, group, demon: Demon | None) -> Hyper:
        raise NotImplementedError

    def _state_keys(self, group) -> dict:
        """Maps each used field of BUFFER_FIELDS to the state key that holds it."""
        raise NotImplementedError

    def _check_group(self, group, read_lr=True) -> None:
        """Raises ValueError naming the first invalid hyperparameter of ``group`` (KeyError for a
        missing one). ``read_lr=False``: a tensor lr's value is not read (see ``check_lr``)."""
        raise NotImplementedError

    # ----- torch.optim.Optimizer ----------------------------------------------------------------
    def add_param_group(self, param_group):
        """As ``torch.optim.Optimizer.add_param_group``: the group may set any hyperparameter, and must
        set those the constructor was not given (torch's ``required``). ``total_steps`` and ``delay``
        in a group are its Demon (``demon=Demon(total_steps, delay)``). A group that fails a check is
        not added."""
        param_group = _with_group_demon(param_group, self.defaults, len(self.param_groups))
        _refuse_duplicates(param_group, len(self.param_groups))
        for name, default in self.defaults.items():
            if default is required and name not in param_group:
                spelt = "total_steps (or demon=)" if name == "demon" else repr(name)
                raise ValueError(f"{type(self).__name__}: param group {len(self.param_groups)} needs {spelt}: it was "
                                 "given neither to the constructor nor in the group")
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._check_common(group)
            self._check_group(group)
        except (ValueError, TypeError, NotImplementedError):
            self.param_groups.pop()
            raise
        for device in {p.device for p in group["params"]}:
            try:
                self._backend(group, device)  # choose now, so a compiled first step only looks it up
            except RuntimeError:
                pass  # a backend that cannot run here says so at the step, before anything is written

    def zero_grad(self, set_to_none: bool = True):
        """As ``torch.optim.Optimizer.zero_grad``, and each param's ``grad_sample`` (the per-sample
        gradients that ``noise=DiagFisher``/``Multiplicative`` read) is cleared too: always set to
        None, whatever ``set_to_none`` (Opacus's convention: rows of another batch have no zero to
        keep, and a backward that finds a list appends to it). So a step after ``zero_grad`` with no
        new backward moves nothing, as with torch's optimizers."""
        for group in self.param_groups:
            for p in group["params"]:
                if getattr(p, "grad_sample", None) is not None:
                    p.grad_sample = None
        super().zero_grad(set_to_none=set_to_none)

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("_backends", {})
        self.__dict__.setdefault("_step_lists", {})
        for group in self.param_groups:
            for key, value in COMMON_DEFAULTS.items():
                group.setdefault(key, value)
            group.setdefault("seed", self.defaults.get("seed", 0))
            for key, value in self._group_defaults_for_old_checkpoints().items():
                group.setdefault(key, value)

    def _group_defaults_for_old_checkpoints(self) -> dict:
        return {}

    def state_dict(self):
        """As ``torch.optim.Optimizer.state_dict``, with plain values only in the param groups: a
        ``state_dtype`` that is a ``torch.dtype`` is saved as its name (``"bfloat16"``), which
        ``torch.distributed.checkpoint.state_dict`` can gather (``full_state_dict=True``) and every
        loader reads back (``load_state_dict`` keeps this optimizer's own ``state_dtype``)."""
        state_dict = super().state_dict()
        for group in state_dict["param_groups"]:
            if isinstance(group.get("state_dtype"), torch.dtype):
                group["state_dtype"] = str(group["state_dtype"]).removeprefix("torch.")
        return state_dict

    def load_state_dict(self, state_dict):
        """As ``torch.optim.Optimizer.load_state_dict``, but a dict that does not fit the params
        (wrong group sizes, a state tensor of another shape, an unknown param index) is rejected
        with an error naming the entry, and the optimizer is left as it was.

        ``state_dtype`` is this optimizer's, not the checkpoint's: it says how this process stores
        the state, as the params' device does. The saved state is converted to it once, here (so a
        bfloat16-state checkpoint resumes with float32 state, and float32 state stays exact rather
        than being rounded through the param dtype as torch's loader rounds every state tensor)."""
        # torch's order: the pre hooks first (they may adapt the checkpoint, and what they return is
        # what loads), then the checks and the load, then the post hooks, which see the optimizer as
        # it will step. torch.optim's own load runs with the hooks set aside, so each runs once.
        state_dict = state_dict.copy()
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            state_dict = state_dict if result is None else result
        self._check_state_dict_fits(state_dict)
        self._check_state_dict_is_ours(state_dict)
        state_dtypes = [group["state_dtype"] for group in self.param_groups]
        backend_names = [group["backend"] for group in self.param_groups]
        # The kept lists would no longer fit the new state (GroupLists.fits), but would hold the
        # old state tensors alive until the next step: drop them now.
        self._step_lists.clear()
        hooks = self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks
        self._optimizer_load_state_dict_pre_hooks = self._optimizer_load_state_dict_post_hooks = OrderedDict()
        try:
            super().load_state_dict(state_dict)
        finally:
            self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks = hooks
        keep_state_dtypes(self, state_dict, state_dtypes)
        # Where the step runs is this process's choice, as the device is: a checkpoint saved with
        # backend="triton" on a GPU resumes on a CPU machine.
        for group, name in zip(self.param_groups, backend_names):
            group["backend"] = name
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _check_state_dict_fits(self, state_dict):
        for key in ("state", "param_groups"):
            if key not in state_dict:
                raise ValueError(f"not an optimizer state dict: it has no {key!r} entry")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"the state dict has {len(saved_groups)} param groups, this optimizer "
                             f"{len(self.param_groups)}")
        params, saved_dtypes = {}, {}
        for gi, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"param group {gi} has {len(saved['params'])} params in the state dict, "
                                 f"{len(group['params'])} here")
            params.update(zip(saved["params"], group["params"]))
            saved_dtypes.update(dict.fromkeys(saved["params"], saved.get("state_dtype")))
        for index, state in state_dict["state"].items():
            if index not in params:
                raise ValueError(f"the state dict has state for param {index!r}, which no param group lists")
            param = params[index]
            check_saved_8bit_state(state, saved_dtypes[index], f" of param {index}")
            for key, value in state.items():
                if key.endswith(SCALES_SUFFIX):
                    continue  # one per block of its codes: checked with them
                if torch.is_tensor(value) and value.dim() > 0 and value.shape != param.shape:
                    raise ValueError(f"state {key!r} of param {index} has shape {tuple(value.shape)}, "
                                     f"but the param has shape {tuple(param.shape)}")

    def _check_state_dict_is_ours(self, state_dict):
        """Refuses, before anything changes, a checkpoint of another optimizer (its groups fail this
        class's checks: AdaPNM's three betas in PNM, torch's Adam in AdaPNM, torch's SGD in
        DemonSGD, which lacks a Demon), and state that no step could use: a buffer this class does
        not keep, a missing, negative, fractional or non-finite step counter, a Demon product
        outside [0, 1], 8-bit scales that are negative or not finite. torch.optim checkpoints are
        not converted: they are refused with the first difference named."""
        name = type(self).__name__
        for gi, saved in enumerate(state_dict["param_groups"]):
            # The group as __setstate__ would complete it (checkpoints older than some keys).
            group = {**COMMON_DEFAULTS, **self._group_defaults_for_old_checkpoints(),
                     **{k: v for k, v in saved.items() if k != "params"}}
            try:
                self._check_group_at_step(gi, group, read_lr=True)
            except ValueError as exc:
                raise ValueError(f"not a {name} checkpoint (or a damaged one): {exc}") from None
            keys = set(self._state_keys(group).values())
            allowed = keys | {key + SCALES_SUFFIX for key in keys} | set(COUNTERS)
            for index in saved["params"]:
                state = state_dict["state"].get(index)
                if state:
                    _check_saved_state(name, state, allowed, f"param {index!r} (param group {gi})")

    def _check_common(self, group):
        if group["backend"] not in backends.NAMES:
            raise ValueError(f"Invalid backend: {group['backend']!r} (choose from {', '.join(backends.NAMES)})")
        backends.preload(group["backend"], {p.device for p in group["params"]})
        group["demon"] = None if group["demon"] is None else as_demon(group["demon"]).as_dict()
        check_bool("maximize", group["maximize"])
        check_bool("capturable", group["capturable"])
        noise = as_noise(group["noise"])
        group["noise"] = None if noise is None else noise.as_dict()  # plain values: weights_only loads
        check_bool("stochastic_rounding", group["stochastic_rounding"])
        spec = as_blockwise(group["state_dtype"])
        if spec is not None:
            group["state_dtype"] = spec.as_dict()  # plain values: weights_only loads
        check_state_dtype(group["state_dtype"], group["params"])
        check_state_rounding(group["state_rounding"], group["state_dtype"], group["params"])
        check_max_grad_norm(group["max_grad_norm"], self.param_groups[0]["max_grad_norm"])
        missing = [] if group["backend"] == "auto" else _missing(backends.get(group["backend"]), group)
        if missing:
            raise NotImplementedError(f"backend={group['backend']!r} does not support {missing[0]} yet; use "
                                      "backend='auto' (which runs such groups on a backend that does), "
                                      "'foreach' or 'reference'")

    @torch.no_grad()
    def step(self, closure=None):
        """Performs a single optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)

        # Two phases: the plan checks and forms everything (every group's backends, scalars, state
        # and calls) and writes no param; then the launches. A bad input in any group raises
        # before the first param or state value is written.
        for gi, group in enumerate(self.param_groups):
            self._check_group_at_step(gi, group)
        plans = []
        for gi, group in enumerate(self.param_groups):
            participants = self._params_with_grad(gi, group)
            chosen = {d: self._backend(group, d) for d in set(participants.devices)}
            plans.append((group, participants, chosen))
        rounding = any(group["stochastic_rounding"] or may_round_state(group) for group in self.param_groups)
        noise = StepNoise([(group, participants.params) for group, participants, _ in plans], self.param_groups,
                          self.state, type(self).__name__, rounding=rounding)
        divisors = grad_divisors(self.param_groups[0]["max_grad_norm"], plans, noise, grad_scale)
        formed = []
        for gi, (group, participants, chosen) in enumerate(plans):
            if participants.params:
                family, demon = self._family(group), as_demon(group["demon"])
                formed.append((gi, family, demon, self._hyper(group, demon)))
        launches = []
        for gi, family, demon, hyper in formed:
            group, participants, chosen = plans[gi]
            buckets = self._init_group(gi, group, participants, family, demon, hyper, chosen)
            for (device, dtype, quantized), tensors in buckets.items():
                extra = self._call_extras(gi, group, participants.params, noise, chosen[device], device, dtype,
                                          quantized, tensors)
                launches.append((chosen[device], family, _lr_on(hyper, device), tensors, divisors[device],
                                 _on(found_inf, device), extra))
        for module, family, hyper, tensors, divisor, inf, extra in launches:
            module.fused_step(family, hyper, tensors, grad_scale=divisor, found_inf=inf, **extra)
        return loss

    # ----- helpers ------------------------------------------------------------------------------
    def _check_group_at_step(self, gi, group, read_lr=False) -> None:
        """Group ``gi``'s hyperparameters as the step reads them: a checkpoint, or a hand edit of
        ``param_groups``, may have changed them since ``add_param_group`` checked them. A few
        comparisons per group; the error names the group and the key."""
        try:
            self._check_group(group, read_lr=read_lr)
            if group["demon"] is not None:
                as_demon(group["demon"])
        except KeyError as exc:
            raise ValueError(f"{type(self).__name__}: param group {gi} has no {exc.args[0]!r}") from None
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{type(self).__name__}: param group {gi}: {exc}") from None

    @staticmethod
    def _call_extras(gi, group, params, noise: StepNoise, module, device, dtype, quantized, tensors) -> dict:
        """The noise and rounding arguments of the call over ``tensors`` (its bucket of group
        ``gi``'s participating ``params``): none when the group draws nothing."""
        extra = {}
        spec = as_blockwise(group["state_dtype"])
        # stochastic_rounding is a no-op for params that are not bfloat16.
        rounding = Rounding(group["seed"], params=group["stochastic_rounding"] and dtype == torch.bfloat16,
                            state=rounds_state(group, dtype))
        if noise.noisy(gi) or rounding.params or rounding.state:
            # The call's params as the group holds them (DTensors, not their shards), in order.
            bucket = [p for p in params if (p.device, p.dtype) == (device, dtype)
                      and (spec is not None and spec.quantizes(p)) == quantized]
            if noise.noisy(gi):
                extra["noise"] = noise.for_call(gi, group, tensors, bucket, module.draw_weights)
            else:
                tensors.offsets = noise.offsets_of(bucket)
            if rounding.params or rounding.state:
                extra["rounding"] = rounding
        return extra

    def _backend(self, group, device):
        """The backend module of ``group`` on ``device``, chosen once and remembered: the choice
        cannot change within a process, and a step traced by torch.compile then only looks it up
        (the availability probes are not traceable)."""
        # Plain values only, so torch.compile looks the key up in the real dict; and no
        # group["capturable"]: while tracing an optimizer, torch.compile shows it as True.
        key = (group["backend"], device.type, device.index, *_needs(group))
        module = self._backends.get(key)
        if module is None:
            module = self._backends[key] = _resolve(group, device)
        return module

    def _params_with_grad(self, group_index, group) -> Participants:
        """The params of ``group`` with a grad, and those without one that the group's noise steps
        from their ``grad_sample`` alone; their grads checked."""
        participants = Participants.of(group["params"], consumes_grad_sample(group["noise"]))
        dtensor_cls = _loaded_dtensor_class()
        if not participants.grads_look_valid(dtensor_cls):
            for i, p in enumerate(group["params"]):
                if p.grad is not None:
                    self._check_grad(group_index, i, p, p.grad, dtensor_cls)  # says what is wrong, or passes a DTensor
        return participants

    def _check_grad(self, group_index, i, p, g, dtensor_cls):
        where = f"param {i} of param group {group_index}"
        if g.is_sparse:
            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients ({where})")
        if not p.is_floating_point():  # complex and integer params alike
            raise RuntimeError(f"{type(self).__name__} supports real floating-point params only; {where} is {p.dtype}")
        if dtensor_cls is not None and isinstance(p, dtensor_cls) and (
                not isinstance(g, dtensor_cls) or g.placements != p.placements):
            raise RuntimeError(f"the gradient of {where} must be a DTensor placed like it "
                               f"({p.placements}), got {getattr(g, 'placements', 'a plain tensor')}")
        if g.shape != p.shape or g.dtype != p.dtype or g.device != p.device:
            raise RuntimeError(
                f"the gradient of {where} does not match it: grad {tuple(g.shape)} {g.dtype} on {g.device}, "
                f"param {tuple(p.shape)} {p.dtype} on {p.device}")

    def _init_group(self, group_index, group, participants: Participants, family: Family, demon: Demon | None,
                    hyper: Hyper, chosen) -> dict:
        """(device, dtype) -> the ``StepTensors`` of that call, the state created or converted where
        needed. The lists are kept for the next step, which builds them again only when something
        they were built from has changed (``GroupLists.fits``)."""
        buffers = self._state_keys(group)
        track_prod = family.second_moment and demon is not None
        fields = dict(buffers, steps="step")  # StepTensors field -> the state key holding it
        if track_prod:
            fields["beta1_prods"] = "beta1_prod"
        # The fused kernels read the counters on the device; the host-side backends read them with
        # .item(), so on accelerators they keep them on the CPU, as torch.optim does.
        host_devices = frozenset(d for d, module in chosen.items()
                                 if d.type != "cpu" and _name(module) not in CAPTURABLE)
        settings = (tuple(buffers.items()), group["state_dtype"], track_prod, host_devices)
        states = [self.state[p] for p in participants.params]
        # While torch.compile traces the step the lists are built but not kept: the compiled step
        # never runs this code, and is traced again when its guards see the inputs change.
        compiling = torch.compiler.is_compiling()
        lists = None if compiling else self._step_lists.get(group_index)
        if lists is None or not lists.fits(settings, participants, states):
            _check_state_shapes(group_index, group, participants.params, states, buffers.values())
            _check_8bit_placements(group_index, group, participants.params)
            self._init_state(participants.params, states, buffers, group["state_dtype"], track_prod, host_devices,
                             demon, hyper)
            spec = as_blockwise(group["state_dtype"])
            scale_fields = {f: key + SCALES_SUFFIX for f, key in buffers.items()} if spec is not None else None
            lists = GroupLists(settings, participants, states, fields, _loaded_dtensor_class(), spec, scale_fields)
            if not compiling:
                self._step_lists[group_index] = lists
        return lists.calls(participants.grads)

    def _init_state(self, params, states, buffers, state_dtype, track_prod, host_devices, demon, hyper):
        """Creates the state entries the step reads, and moves or converts those that are not
        where or what the kernels expect."""
        cpu = torch.device("cpu")
        spec = as_blockwise(state_dtype)
        for p, state in zip(params, states):
            step_device = cpu if p.device in host_devices else p.device
            step = state.get("step")
            fresh = step is None
            # float64 counters: exact for any step count (float32 stalls at 2^24) and Demon product.
            if fresh:
                state["step"] = torch.zeros((), dtype=torch.float64, device=step_device)
            elif type(step) is not torch.Tensor or step.device != step_device or step.dtype != torch.float64:
                # The official code stores a Python int; a checkpoint may come from another device, or
                # from before the counters were float64 (float32: converted exactly).
                state["step"] = torch.as_tensor(step, dtype=torch.float64).to(step_device)
            if spec is not None and spec.quantizes(p):
                for field, key in buffers.items():
                    ensure_8bit_state(state, field, key, p, spec)
            else:
                # 8-bit groups keep the state of their small params in float32 (Blockwise8bit.min_numel).
                dtype = p.dtype if state_dtype is None else torch.float32 if spec is not None else state_dtype
                for key in buffers.values():
                    ensure_float_state(state, key, p, dtype)
            if track_prod:
                self._beta1_prod(state, fresh, step_device, demon, hyper)

    @staticmethod
    def _beta1_prod(state, fresh, step_device, demon, hyper):
        prod = state.get("beta1_prod")
        if prod is None:
            # The empty product is 1. Demon added to a run under way: rebuild the exact product
            # of the betas so far (reading the counter is a host sync, paid once).
            value = 1.0 if fresh else demon.beta_product(hyper.beta1, int(state["step"]))
            state["beta1_prod"] = torch.full((), value, dtype=torch.float64, device=step_device)
        elif prod.device != step_device or prod.dtype != torch.float64:
            state["beta1_prod"] = prod.to(device=step_device, dtype=torch.float64)


def _check_saved_state(name, state, allowed, where) -> None:
    """One param's saved state: only keys in ``allowed``, valid counters, valid 8-bit scales."""
    unknown = sorted(set(state) - allowed)
    if unknown:
        raise ValueError(f"not a {name} checkpoint: the state of {where} has {unknown[0]!r}, which {name} does "
                         f"not keep (it keeps {', '.join(sorted(allowed))})")
    if "step" not in state:
        raise ValueError(f"the state of {where} has no 'step': its buffers cannot be stepped without their count")
    for key in COUNTERS:
        if key not in state:
            continue
        try:
            value = float(state[key])
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"state {key!r} of {where} must be one number, got {state[key]!r}") from None
        if key == "step" and not (math.isfinite(value) and value >= 0 and value == int(value)):
            raise ValueError(f"state 'step' of {where} is {value!r}: a step count is a whole number >= 0")
        if key == "beta1_prod" and not 0.0 <= value <= 1.0:
            raise ValueError(f"state 'beta1_prod' of {where} is {value!r}: a product of betas is in [0, 1]")
    for key, value in state.items():
        value = getattr(value, "_local_tensor", value)  # a DTensor's: each rank checks its own shard
        if key.endswith(SCALES_SUFFIX) and torch.is_tensor(value) and value.numel() and not bool(
                (torch.isfinite(value) & (value >= 0)).all()):
            raise ValueError(f"state {key!r} of {where} holds a negative or non-finite 8-bit scale")


def _check_8bit_placements(group_index, group, params) -> None:
    """8-bit state only for DTensor placements that keep every block within one shard
    (``Blockwise8bit.quantizes`` refuses the others): checked before any state is made."""
    spec = as_blockwise(group["state_dtype"])
    if spec is None:
        return
    for p in params:
        try:
            spec.quantizes(p)
        except NotImplementedError as exc:
            i = next(i for i, q in enumerate(group["params"]) if q is p)
            raise NotImplementedError(f"param {i} of param group {group_index}: {exc}") from None


def _check_state_shapes(group_index, group, params, states, keys) -> None:
    """Every state buffer a step reads has its param's shape: ``p.data = ...`` may resize a param
    whose state was made for its old shape (model surgery, a grown vocabulary), and no backend may
    then read or write past a buffer's end. Checked for every param before any state is made, so a
    refusal changes nothing."""
    for p, state in zip(params, states):
        for key in keys:
            buf = state.get(key)
            if buf is not None and torch.is_tensor(buf) and buf.shape != p.shape:
                i = next(i for i, q in enumerate(group["params"]) if q is p)
                raise RuntimeError(
                    f"state {key!r} of param {i} of param group {group_index} has shape {tuple(buf.shape)}, but the "
                    f"param has {tuple(p.shape)}: the param was resized after its state was made. Start its state "
                    f"afresh (del optimizer.state[param]) or load a checkpoint made for the new shape")


def _refuse_duplicates(param_group, index) -> None:
    """A param listed twice in a group would be stepped twice per step (torch.optim only warns,
    and its backends then differ): refused. Across groups torch.optim refuses it itself."""
    params = param_group["params"]
    if isinstance(params, (torch.Tensor, set)):
        return  # one tensor; or a set, which torch.optim refuses
    param_group["params"] = params = list(params)  # a generator is read once, here
    if len({id(p) for p in params}) != len(params):
        raise ValueError(f"param group {index} lists a param more than once: each would be stepped once per time "
                         "it is listed")


def _with_group_demon(param_group, defaults, index):
    """``param_group`` with its ``total_steps``/``delay`` (DemonSGD's and DemonAdam's spelling) as
    ``demon``; a group that gives both spellings is refused."""
    if not isinstance(param_group, dict) or not ({"total_steps", "delay"} & param_group.keys()):
        return param_group
    group = dict(param_group)
    if "demon" in group:
        raise ValueError(f"param group {index}: give total_steps/delay or demon, not both")
    # What the group leaves out comes from the constructor's Demon, if it has one.
    inherited = None if defaults["demon"] is None or defaults["demon"] is required else as_demon(defaults["demon"])
    total_steps = group.pop("total_steps", inherited.total_steps if inherited else None)
    if total_steps is None:
        raise ValueError(f"param group {index} sets delay but no total_steps, and the optimizer has no Demon")
    group["demon"] = Demon(total_steps, group.pop("delay", inherited.delay if inherited else 0.0)).as_dict()
    return group


def grad_divisors(max_norm, plans, noise: StepNoise, grad_scale) -> dict:
    r"""``{device: the divisor of every gradient}`` for the backends' ``grad_scale``: AMP's scale ``s``
    (or None) on each device of the step, and with ``max_norm`` the clip folded in, ``s / c`` with

    .. math:: c = \min\Bigl(1, \frac{\text{max\_norm}}{\lVert g / s \rVert_2 + 10^{-6}}\Bigr)

    over every gradient of the step (all groups and devices), so unscaling and clipping are one
    division inside the fused step. ``g`` is the clean gradient, before noise: ``p.grad``, or for a
    param stepped from its ``grad_sample`` alone the mean of its rows (one extra pass over them).
    Computed on the device by ``torch.nn.utils.get_total_norm`` (FSDP2's DTensor grads: reduced over
    the mesh, so a sharded run clips as the unsharded one): no host read, so a clipped step can be
    captured."""
    devices = {d for _, participants, _ in plans for d in participants.devices}
    if max_norm is None or not devices:
        return {d: _on(grad_scale, d) for d in devices}
    grads = [g if g is not None else noise.rows(p).mean(0)
             for _, participants, _ in plans for p, g in zip(participants.params, participants.grads)]
    total = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    full_tensor = getattr(total, "full_tensor", None)
    if full_tensor is not None:  # DTensor grads (FSDP2): the norm comes reduced over the mesh, replicated
        total = full_tensor()
    total = total.float()
    if grad_scale is not None:
        total = total / _on(grad_scale, total.device)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    divisor = coef.reciprocal() if grad_scale is None else _on(grad_scale, coef.device) / coef
    return {d: _on(divisor, d).reshape(1) for d in devices}


def _needs(group) -> tuple:
    """Which of FEATURES ``group`` uses, as plain booleans (part of the backend cache key)."""
    stochastic = group["stochastic_rounding"] or may_round_state(group)
    blockwise = as_blockwise(group["state_dtype"]) is not None
    return group["noise"] is not None, group["state_dtype"] is not None, stochastic, blockwise


def _missing(module, group) -> list:
    """The features ``group`` uses that ``module`` does not support, spelled as arguments."""
    return [what for (flag, what), used in zip(FEATURES, _needs(group))
            if used and getattr(module, flag, False) is not True]


def _resolve(group, device):
    """The backend of ``group`` on ``device``. "auto" sends a group that uses a feature the fastest
    backend lacks (noise, mixed state, stochastic rounding: FEATURES) to the fastest one that has
    it: Triton on accelerators where it runs, else foreach."""
    module = backends.resolve(group["backend"], device)
    missing = _missing(module, group)
    if missing:
        if group["backend"] != "auto":
            raise NotImplementedError(f"backend={group['backend']!r} does not support {missing[0]} yet")
        candidates = ["foreach"]
        if device.type != "cpu" and backends.get("triton").available(device):
            candidates.insert(0, "triton")
        module = next(m for m in map(backends.get, candidates) if not _missing(m, group))
    if group["capturable"] and device.type != "cpu" and _name(module) not in CAPTURABLE:
        raise RuntimeError(f"capturable=True on {device} needs a fused backend ({' or '.join(CAPTURABLE)}): "
                           f"{_name(module)} reads the step counters on the host")
    return module


def _name(backend_module):
    return backend_module.__name__.rsplit(".", 1)[-1]


def _loaded_dtensor_class():
    """torch's DTensor class if its module is imported, else None: a DTensor exists only once its
    module is, so there is no need to import it (0.75 s) to learn that a plain model has none."""
    module = sys.modules.get("torch.distributed.tensor") or sys.modules.get("torch.distributed._tensor")
    return None if module is None else module.DTensor


def _lr_on(hyper: Hyper, device) -> Hyper:
    """``hyper`` with its tensor lr, if any, as the kernels read it: float32 on ``device``
    (the tensor itself when it already is, so writes to it reach a captured graph)."""
    lr = hyper.lr_tensor
    if lr is None or (lr.device == device and lr.dtype == torch.float32):
        return hyper
    return replace(hyper, lr_tensor=lr.to(device=device, dtype=torch.float32, non_blocking=True))


def _on(t, device):
    if t is None or t.device == device:
        return t
    return t.to(device, non_blocking=True)
