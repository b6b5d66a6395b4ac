"""Demangled kernel names decoded into what each variant is: its template parameters (from
csrc/cuda/fused_step_kernels.cuh, fused_step_blockwise.cuh and torch's FusedAdamMathFunctor /
FusedSgdMathFunctor), its launch shape (block size, elements per thread per loop iteration) and the
bytes per element its algorithm must move."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

# csrc/cuda/multi_tensor_apply.cuh: kBlockThreads = 512, kIlp = 4; torch's MultiTensorApply.cuh:
# kBlockSize = 512, kILP = 4; sample_weights_kernel.cuh: kWeightThreads = 256.
BLOCK_THREADS = 512
ILP = 4
WEIGHT_THREADS = 256

DTYPES = {"float": "float32", "double": "float64", "c10::Half": "float16", "c10::BFloat16": "bfloat16",
          "at::Half": "float16", "at::BFloat16": "bfloat16"}
SIZES = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2}
SHORT = {"float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16", "8-bit": "8bit"}
SECOND = {0: "none", 1: "v", 2: "v+amsgrad"}
NOISE = {0: "none", 1: "isotropic", 2: "diag_fisher", 3: "multiplicative"}
ROUNDING = {0: "none", 1: "params", 2: "state", 3: "params+state"}


@dataclass
class Variant:
    library: str  # noisefuse | torch
    kernel: str  # fused_step | blockwise_step | advance_counters | sample_weights | torch_adamw | torch_sgd
    param_dtype: str | None = None
    state_dtype: str | None = None  # '8-bit' for blockwise state
    momentum: str | None = None  # pn | single (one buffer: heavy ball or EMA, chosen at run time)
    second_moment: str | None = None  # none | v | v+amsgrad
    noise: str | None = None
    rounding: str | None = None  # which stores are rounded stochastically to bfloat16
    block_threads: int = BLOCK_THREADS
    elements_per_thread: int = ILP  # per iteration of the hot loop
    detail: str = ""  # what tells apart kernels of one name (the counter kernel's table type)

    @property
    def eight_bit(self) -> bool:
        return self.state_dtype == "8-bit"

    @property
    def is_step(self) -> bool:
        return self.kernel in ("fused_step", "blockwise_step", "torch_adamw", "torch_sgd")

    def label(self) -> str:
        """A short row label: 'f32/bf16 pn v+ams iso sr:state'."""
        if not self.is_step:
            return f"{self.kernel} {self.detail}".strip()
        if self.library == "torch":
            name = {"torch_adamw": "AdamW" + (" amsgrad" if self.second_moment == "v+amsgrad" else ""),
                    "torch_sgd": "SGD momentum"}[self.kernel]
            return f"torch {name} {SHORT[self.param_dtype]}"
        parts = [f"{SHORT[self.param_dtype]}/{SHORT[self.state_dtype]}", self.momentum,
                 {"none": "-", "v": "v", "v+amsgrad": "v+ams"}[self.second_moment]]
        if self.noise != "none":
            parts.append({"isotropic": "iso", "diag_fisher": "fisher", "multiplicative": "mult"}[self.noise])
        if self.rounding != "none":
            parts.append(f"sr:{self.rounding}")
        return " ".join(parts)

    def as_dict(self) -> dict:
        return {**asdict(self), "eight_bit": self.eight_bit, "label": self.label()}


def _args(demangled: str, template: str) -> list[str]:
    """The top-level template arguments of ``template<...>`` in ``demangled``."""
    start = demangled.index(template + "<") + len(template) + 1
    depth, args, cur = 1, [], ""
    for ch in demangled[start:]:
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
            if depth == 0:
                args.append(cur.strip())
                break
        if ch == "," and depth == 1:
            args.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return args


def _int(arg: str) -> int:
    """'2', '(noisefuse::NoiseKind)2' or 'true'/'false' as an int."""
    if arg in ("true", "false"):
        return int(arg == "true")
    return int(re.search(r"-?\d+$", arg).group(0))


def decode(library: str, demangled: str) -> Variant | None:
    """The variant a kernel's demangled name describes; None for kernels this report does not know."""
    if library == "noisefuse":
        if "fused_step_kernel<" in demangled:
            scalar, state, pn, second, _lists, noise, rnd = _args(demangled, "fused_step_kernel")
            return Variant("noisefuse", "fused_step", DTYPES[scalar], DTYPES[state], "pn" if _int(pn) else "single",
                           SECOND[_int(second)], NOISE[_int(noise)], ROUNDING[_int(rnd)])
        if "blockwise_step_kernel<" in demangled:
            scalar, pn, second, _lists, noise, rnd = _args(demangled, "blockwise_step_kernel")
            return Variant("noisefuse", "blockwise_step", DTYPES[scalar], "8-bit", "pn" if _int(pn) else "single",
                           SECOND[_int(second)], NOISE[_int(noise)], ROUNDING[_int(rnd)])
        if "advance_counters_kernel<" in demangled:
            table = _args(demangled, "advance_counters_kernel")[0]
            lists, offsets = _args(table, "TensorTable")
            return Variant("noisefuse", "advance_counters", block_threads=0, elements_per_thread=1,
                           detail=f"({lists} lists{', offsets' if offsets == 'true' else ''})")
        if "sample_weights_kernel" in demangled:
            return Variant("noisefuse", "sample_weights", block_threads=WEIGHT_THREADS, elements_per_thread=1)
        return None
    if "FusedAdamMathFunctor<" in demangled:
        scalar, _depth, mode, amsgrad = _args(demangled, "FusedAdamMathFunctor")
        if _int(mode) != 1:  # ADAM_MODE 1 is AdamW; Adam (0) moves the same bytes
            return None
        dtype = DTYPES.get(scalar)
        return Variant("torch", "torch_adamw", dtype, dtype, "single", "v+amsgrad" if _int(amsgrad) else "v", "none",
                       "none")
    if "FusedSgdMathFunctor<" in demangled:
        scalar, depth = _args(demangled, "FusedSgdMathFunctor")
        if _int(depth) != 3:  # depth 3: params, grads, momentum buffers
            return None
        dtype = DTYPES.get(scalar)
        return Variant("torch", "torch_sgd", dtype, dtype, "single", "none", "none", "none")
    return None


def algorithm_bytes(v: Variant, rows: int, block_size: int) -> float | None:
    """Bytes per element the step must move: every per-element tensor read plus every one written at
    its storage size (docs/benchmarks.md, "MB/step"), grad_sample's ``rows`` rows in place of the grad
    for the noises that read them, 8-bit state as one code byte plus its block's float32 scale over
    ``block_size`` elements. None for kernels that are not a step."""
    if not v.is_step or v.param_dtype not in SIZES:
        return None
    p = SIZES[v.param_dtype]
    s = 1 + 4 / block_size if v.eight_bit else SIZES[v.state_dtype]
    grads = rows * p if v.noise in ("diag_fisher", "multiplicative") else p
    state_read = 1 + (v.momentum == "pn") + (v.second_moment != "none") + (v.second_moment == "v+amsgrad")
    state_written = 1 + (v.second_moment != "none") + (v.second_moment == "v+amsgrad")
    return p + grads + state_read * s + p + state_written * s
