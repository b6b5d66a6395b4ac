"""The native backend: ``torch.ops.noisefuse.fused_step_``, one op with a CPU and a CUDA kernel
(csrc/), chosen by PyTorch's dispatcher. Gradient noise is drawn inside the kernels, float32 state
of float16/bfloat16 params, stochastic rounding of bfloat16 params and 8-bit blockwise state are
handled there too.
See docs/backends/native.md."""
from __future__ import annotations

import sys

import torch

from ..noise.config import MULTIPLICATIVE_KINDS, Multiplicative
from ..noise.step import NoiseStep
from ..random.rounding import Rounding
from ..noise.transforms import sample_weights
from ..random.philox import seed_as_int64
from . import stream
from .family import MOMENTUM_CODES, Family, Hyper
from .step_tensors import StepTensors


def _torch_mismatch(built: str | None) -> ImportError | None:
    """The error to report when noisefuse._C was built against another torch than this one: its C++
    calls into libtorch are only valid for the headers it was compiled with."""
    running = torch.__version__.split("+")[0]
    if built is not None and built.split(".")[:2] == running.split(".")[:2]:
        return None
    against = f"against torch {built}" if built else "by an older noisefuse (it does not say for which torch)"
    return ImportError(f"noisefuse._C was built {against} but is loaded into torch {torch.__version__}; rebuild "
                       "it against this torch (make build, or pip install --no-build-isolation -e .)")


try:
    from .. import _C  # (registers torch.ops.noisefuse.*)

    _LOAD_ERROR = _torch_mismatch(getattr(_C, "torch_version", None))
except ImportError as exc:  # not built, or built against another torch (its symbols are missing)
    _LOAD_ERROR = exc
    if "undefined symbol" in str(exc):
        _LOAD_ERROR = ImportError(f"{exc}: noisefuse._C was probably built against another torch than "
                                  f"{torch.__version__}; rebuild it (make build, or pip install "
                                  "--no-build-isolation -e .)")
if _LOAD_ERROR is None and not (hasattr(torch.ops.noisefuse, "sample_weights") and any(
        arg.name == "block_size" for arg in torch.ops.noisefuse.fused_step_.default._schema.arguments)):
    # Built before the newest schemas (an editable install whose sources changed since): said so
    # here, and unused, rather than failing at the first step that needs what it lacks.
    _LOAD_ERROR = ImportError("noisefuse._C was built from older sources; rebuild it (make build, or "
                              "pip install --no-build-isolation -e .)")


# Every noise kind is drawn inside the kernels (csrc/include/noisefuse/noise_element.h); the state
# may be float32 for float16/bfloat16 params (a template parameter of the kernels), bfloat16
# params are rounded stochastically on store (csrc/include/noisefuse/bf16_rounding.h), and 8-bit
# blockwise state is dequantized, stepped and quantized block by block inside the kernels
# (csrc/cpu/cpu_blockwise.h on CPU).
supports_noise = True
supports_mixed_state = True
supports_stochastic_rounding = True
supports_blockwise_8bit = True
_warned_layout = False  # set by stream.step_with_foreach: one layout warning per backend


_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}
# The devices whose weight vector the op draws (probed once: the probe is not traceable).
_WEIGHTS_ON = frozenset() if _LOAD_ERROR is not None else frozenset(
    device for device, key in _DISPATCH_KEYS.items()
    if torch._C._dispatch_has_kernel_for_dispatch_key("noisefuse::sample_weights", key))


def load_error():
    return _LOAD_ERROR


def available(device: torch.device) -> bool:
    """Whether the extension has a kernel for tensors on ``device``."""
    if _LOAD_ERROR is not None:
        return False
    key = _DISPATCH_KEYS.get(device.type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key("noisefuse::fused_step_", key)


def check_device(device: torch.device) -> None:
    if not available(device):
        reason = f"it failed to load: {_LOAD_ERROR}" if _LOAD_ERROR else f"it has no kernel for {device.type}"
        raise RuntimeError(f"backend='native' cannot run on {device}: {reason}")


def fused_step(family: Family, hyper: Hyper, ts: StepTensors, grad_scale=None, found_inf=None,
               noise: NoiseStep | None = None, rounding: Rounding | None = None) -> None:
    if not ts.params:
        return  # with no tensor argument the dispatcher could not choose a kernel
    reason = stream.layout_needs_foreach(ts, noise, rounding)
    if reason is not None:
        stream.step_with_foreach(sys.modules[__name__], family, hyper, ts, grad_scale, found_inf, noise, rounding,
                                 reason)
        return
    reads_rows = noise is not None and noise.consumes_grad_sample
    torch.ops.noisefuse.fused_step_(
        ts.params, ts.grads, ts.exp_avgs, ts.neg_exp_avgs, ts.exp_avg_sqs, ts.max_exp_avg_sqs,
        ts.steps, ts.beta1_prods, ts.grad_samples if reads_rows else [],
        momentum=MOMENTUM_CODES[family.momentum], lr=hyper.lr,
        beta1=hyper.beta1, beta2=hyper.beta2, beta0=hyper.beta0, eps=hyper.eps,
        weight_decay=hyper.weight_decay, decoupled=hyper.decoupled, nesterov=hyper.nesterov,
        maximize=hyper.maximize, demon_total_steps=hyper.demon_total_steps,
        demon_delay=hyper.demon_delay, grad_scale=grad_scale, found_inf=found_inf, lr_tensor=hyper.lr_tensor,
        sample_weights=noise.sample_weights if noise is not None else None,
        **stream.stream_kwargs(ts, noise, rounding), **stream.blockwise_kwargs(ts))


def draw_weights(noise: Multiplicative, batch_size: int, seed: int, step, device) -> torch.Tensor:
    """The step's weight vector (``transforms.sample_weights``) in one launch of
    ``torch.ops.noisefuse.sample_weights`` where the extension has a kernel for ``device``, instead
    of the few hundred small ops of the torch draw; the same numbers to the float32 rounding of log
    and cos. ``step`` (an int, or a 0-d tensor read on the device) as in ``sample_weights``."""
    device = torch.device(device)
    if device.type not in _WEIGHTS_ON:
        return sample_weights(noise, batch_size, seed, step, device)
    noise.check_batch(batch_size)
    if torch.is_tensor(step):
        step = step.to(device=device, dtype=torch.int64)
    else:
        step = torch.tensor(step, dtype=torch.int64, device=device)
    bernoulli = noise.kind == "bernoulli"
    return torch.ops.noisefuse.sample_weights(
        step, batch_size, seed_as_int64(seed), MULTIPLICATIVE_KINDS.index(noise.kind),
        0.0 if bernoulli else noise.sigma_for(batch_size), noise.prob_for(batch_size) if bernoulli else 1.0)


if _LOAD_ERROR is None:
    # The FakeTensor kernel lets torch.compile trace the op without running it: the op only
    # mutates its inputs in place (declared in the schema) and returns nothing.
    _register_fake = getattr(torch.library, "register_fake", None) or torch.library.impl_abstract

    @_register_fake("noisefuse::fused_step_")
    def _fused_step_fake(params, grads, exp_avgs, neg_exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps,
                         beta1_prods, grad_samples, *, momentum, lr, beta1, beta2, beta0, eps, weight_decay,
                         decoupled, nesterov, maximize, demon_total_steps, demon_delay, grad_scale=None,
                         found_inf=None, lr_tensor=None, sample_weights=None, offsets=(), noise_kind=0, seed=0,
                         noise_std=0.0, noise_scale=0.0, noise_centered=False, stochastic_rounding=False,
                         stochastic_state_rounding=False, state_scales=None, code_books=None, block_size=0):
        return None

    # The Philox test ops (csrc/philox_ops.cpp) return new tensors: their fakes give the shapes.
    @_register_fake("noisefuse::sample_weights")
    def _sample_weights_fake(step, batch_size, seed, kind, sigma, prob):
        return torch.empty(batch_size, dtype=torch.float32, device=step.device)

    @_register_fake("noisefuse::philox4x32_10")
    def _philox4x32_10_fake(counters, seed):
        return torch.empty_like(counters)

    @_register_fake("noisefuse::philox_normal")
    def _philox_normal_fake(index, seed, step, tag):
        return torch.empty(index.shape, dtype=torch.float32, device=index.device)
