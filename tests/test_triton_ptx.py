"""The Triton kernels compile for Hopper (sm_90) without a GPU, through Triton's real compiler.

The interpreter accepts things compiled Triton rejects (it once ran a Philox whose constants no GPU
build could read), so CI compiles the kernels ahead of time for every noise kind and storage dtype:
what passes here fails on a GPU only for reasons a GPU can tell."""
import pytest

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
try:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except ImportError:  # pragma: no cover - an older Triton without ahead-of-time targets
    pytest.skip("this Triton cannot compile for a target without a GPU", allow_module_level=True)

from noisefuse.backends.triton_kernels import kernels  # noqa: E402

HOPPER = GPUTarget("cuda", 90, 32)
POINTERS = {"ptrs": "*i64", "numels": "*i64", "block_tensor": "*i64", "block_chunk": "*i64", "scalars": "*fp64",
            "grad_scale_ptr": "*fp32", "found_inf_ptr": "*fp32", "weights_ptr": "*fp32", "lr_ptr": "*fp32"}
INTEGERS = {"batch", "seed_lo", "seed_hi", "n_tensors"}


def compile_ptx(fn, constants, num_warps):
    signature, constexprs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constants:
            signature[name], constexprs[(i,)] = "constexpr", constants[name]
        else:
            signature[name] = POINTERS.get(name, "i32" if name in INTEGERS else "fp32")
    try:
        source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    except TypeError as exc:  # the ahead-of-time API differs between Triton releases
        pytest.skip(f"ASTSource of this Triton takes other arguments: {exc}")
    return triton.compile(source, target=HOPPER, options={"num_warps": num_warps}).asm["ptx"]


@pytest.mark.parametrize(
    "dtype, state_dtype, compute, momentum, noise, centered, round_params, round_state",
    [
        ("float32", "float32", "float32", 2, 0, False, False, False),  # AdaPNM, no noise
        ("float32", "float32", "float32", 1, 2, True, False, False),  # DemonAdam with centered diagonal-Fisher noise
        ("bfloat16", "bfloat16", "float32", 2, 3, False, False, False),  # multiplicative noise on bf16 storage
        ("float64", "float64", "float64", 0, 1, False, False, False),  # DemonSGD with isotropic noise in float64
        ("bfloat16", "float32", "float32", 2, 1, False, True, False),  # bf16 params, float32 state, stochastic rounding
        ("float16", "float32", "float32", 1, 0, False, False, False),  # fp16 params, float32 state
        ("float32", "bfloat16", "float32", 2, 0, False, False, True),  # float32 params, bf16 state rounded
        ("bfloat16", "bfloat16", "float32", 1, 0, False, True, True),  # bf16 params and state, both rounded
    ],
)
def test_update_kernel_compiles_for_hopper(dtype, state_dtype, compute, momentum, noise, centered, round_params,
                                           round_state):
    constants = dict(DTYPE=getattr(tl, dtype), STATE_DTYPE=getattr(tl, state_dtype), COMPUTE=getattr(tl, compute),
                     MOMENTUM=momentum, SECOND_MOMENT=True, AMSGRAD=True, NESTEROV=False, MAXIMIZE=True,
                     DECOUPLED=False, HAS_GRAD_SCALE=True, HAS_FOUND_INF=True, ALIGNED=True, NOISE=noise,
                     CENTERED=centered, ROWS_ALIGNED=True, ROUND_PARAMS=round_params, ROUND_STATE=round_state,
                     STATIC_BATCH=0,
                     BLOCK=4096)
    ptx = compile_ptx(kernels.update_kernel, constants, num_warps=8)
    assert ".target sm_90" in ptx
    if dtype == "float32":
        assert "ld.global.v4" in ptx  # aligned full blocks use 128-bit loads


@pytest.mark.parametrize("lr_tensor", [False, True])
def test_scalars_kernel_compiles_for_hopper(lr_tensor):
    constants = dict(MOMENTUM=2, SECOND_MOMENT=True, DEMON=True, TRACK_PROD=True, HAS_FOUND_INF=True,
                     LR_TENSOR=lr_tensor, BLOCK_T=128)
    assert ".target sm_90" in compile_ptx(kernels.scalars_kernel, constants, num_warps=4)
