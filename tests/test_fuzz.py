"""Property-based differential fuzzing: every backend against the reference on random shapes,
layouts, param groups, dtypes, state precisions, noise and mid-run checkpoint moves.

Each example is one training run of 3-6 steps, twice: on the reference, uninterrupted; and on the
backend under test, which at a drawn step saves its state_dict (through torch.save and
torch.load(weights_only=True)) and hands it to a fresh optimizer on another backend (drawn; the
backend under test is the first or the second of the two), which loads it and continues. Params
and every state entry must then agree with the reference's.

Runs briefly in `make test` (100 examples per backend, derandomized, so CI sees the same examples
each time; ~40 s on two idle cores) and longer on demand: NOISEFUSE_FUZZ_EXAMPLES=500 pytest
tests/test_fuzz.py (examples per backend; Triton's interpreter, ~50 ms a step, runs a third of
them). A failure prints the scenario (a plain dict) and a @reproduce_failure blob; a fixed bug's
scenario goes to FOUND below."""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings, strategies as st  # a test dependency (Makefile, pyproject.toml)

import noisefuse as nf
from blockwise_cases import assert_8bit_close
from cases import ALL_BACKENDS, CONFIGS, assert_same_state, cpu_backends, make_grads, on_cpu, through_a_file
from test_bf16_state import assert_bf16_state_close

EXAMPLES = int(os.environ.get("NOISEFUSE_FUZZ_EXAMPLES", "100"))

# Non-dense params on the fused backends are stepped by foreach, with one warning (docs/integration.md).
pytestmark = pytest.mark.filterwarnings("ignore:.*stepped by the foreach backend")

# Sizes per dimension count, so that a param stays under 600 elements: 0, 1, odd and prime sizes.
SIZES = {1: (0, 1, 2, 3, 5, 7, 13, 31, 97, 257, 509), 2: (0, 1, 2, 3, 5, 7, 13, 23), 3: (0, 1, 2, 3, 5, 7)}
BIG = (4099,)  # just over one 4096-element Triton block: drawn rarely
LAYOUTS = ("contiguous", "transposed", "strided")
# float32 and bfloat16 twice: they take the most state precisions (bfloat16 state, 8-bit).
PARAM_DTYPES = (torch.float32, torch.bfloat16, torch.float32, torch.bfloat16, torch.float16, torch.float64)


@st.composite
def shapes(draw):
    if draw(st.integers(0, 24)) == 24:  # not 0: hypothesis starts from, and shrinks towards, 0
        return BIG
    dims = draw(st.integers(1, 3))
    return tuple(draw(st.sampled_from(SIZES[dims])) for _ in range(dims))


@st.composite
def precisions(draw, dtype):
    """(state_dtype, stochastic_rounding): the state precisions each param dtype takes."""
    options = ["param"]
    if dtype == torch.float32:
        options.append("bfloat16")
    if dtype in (torch.float32, torch.bfloat16):
        options.append("8bit")
    kind = draw(st.sampled_from(options))
    state_dtype = {"param": None, "bfloat16": torch.bfloat16,
                   "8bit": nf.state.Blockwise8bit(block_size=draw(st.sampled_from((16, 64, 256))), min_numel=0)}[kind]
    stochastic = dtype == torch.bfloat16 and draw(st.booleans())  # rounds bfloat16 params only
    return kind, state_dtype, stochastic


@st.composite
def scenarios(draw, backend):
    dtype = draw(st.sampled_from(PARAM_DTYPES))
    n = draw(st.integers(1, 4))
    params = [(draw(shapes()), draw(st.sampled_from(LAYOUTS)), draw(st.booleans())) for _ in range(n)]
    kind, state_dtype, stochastic = draw(precisions(dtype))
    common = dict(state_dtype=state_dtype, stochastic_rounding=stochastic, seed=draw(st.integers(0, 2**32)),
                  max_grad_norm=draw(st.sampled_from((None, None, 0.5))))
    if draw(st.booleans()):
        common["noise"] = nf.noise.Isotropic(std=draw(st.sampled_from((0.01, 0.1))))
    # Two groups: the params from ``split`` on, with their own lr and weight decay.
    split = draw(st.integers(1, n - 1)) if n > 1 and draw(st.booleans()) else None
    second = dict(lr_scale=draw(st.sampled_from((0.5, 2.0))), weight_decay=draw(st.sampled_from((0.0, 0.05))))
    steps = draw(st.integers(3, 6))
    other = draw(st.sampled_from([b for b in cpu_backends() if b != backend]))
    move = dict(at=draw(st.integers(1, steps - 1)), backends=(backend, other) if draw(st.booleans()) else (other, backend))
    return dict(config=draw(st.sampled_from(sorted(CONFIGS))), dtype=dtype, params=params, kind=kind, common=common,
                split=split, second=second, steps=steps, move=move, data_seed=draw(st.integers(0, 2**16)))


def make_params(s):
    """The scenario's params, the same values and layouts at each call."""
    g = torch.Generator().manual_seed(s["data_seed"])
    params = []
    for shape, layout, _ in s["params"]:
        values = torch.randn(shape, generator=g, dtype=torch.float64)
        if layout == "transposed" and len(shape) > 1:  # dense, not contiguous
            p = torch.empty(*shape[:-2], shape[-1], shape[-2], dtype=s["dtype"]).transpose(-1, -2)
        elif layout == "strided":  # not dense: every other element of its storage
            p = torch.empty(*shape[:-1], 2 * shape[-1], dtype=s["dtype"])[..., ::2]
        else:
            p = torch.empty(shape, dtype=s["dtype"])
        params.append(p.copy_(values).requires_grad_())
    return params


def make_optimizer(s, params, backend, seed=None):
    split, common = s["split"], dict(s["common"])
    if seed is not None:
        common["seed"] = seed  # a fresh optimizer's seed: the checkpoint's must win
    groups = params if split is None else [{"params": params[:split]}, {"params": params[split:]}]
    opt = CONFIGS[s["config"]](groups, backend=backend, **common)
    if split is not None:
        group = opt.param_groups[1]
        group["lr"] *= s["second"]["lr_scale"]
        group["weight_decay"] = s["second"]["weight_decay"]
    return opt


def set_grads(s, params, step):
    for p, g, (_, _, like_param) in zip(params, make_grads(params, step), s["params"]):
        # A contiguous grad, or one laid out as its param (each read in the param's layout).
        p.grad = torch.empty_strided(p.shape, p.stride(), dtype=p.dtype).copy_(g) if like_param else g


def run_reference(s):
    params = make_params(s)
    opt = make_optimizer(s, params, "reference")
    for step in range(s["steps"]):
        set_grads(s, params, step)
        opt.step()
    return params, opt


def run_moved(s):
    params = make_params(s)
    first, second = s["move"]["backends"]
    opt = make_optimizer(s, params, first)
    for step in range(s["steps"]):
        if step == s["move"]["at"]:
            saved = through_a_file(opt.state_dict())
            opt = make_optimizer(s, params, second, seed=s["common"]["seed"] ^ 1)
            opt.load_state_dict(saved)
        set_grads(s, params, step)
        opt.step()
    assert opt.param_groups[0]["seed"] == s["common"]["seed"] and opt.param_groups[0]["backend"] == second
    return params, opt


def assert_matches(s, ref, opt, ref_params, params):
    """Tolerances from float rounding. Every backend computes in float32 (float64 for float64
    params) and rounds once on store; they differ only in the order of float32 operations (FMA
    contraction, vector widths, reduction order of the clipping norm), a few float32 ulps per step,
    which cases.TOLERANCES[float32] (1e-6, 1e-5) covers for 20 steps, ours being 3-6; the noise is
    the same Philox stream on every backend, so it adds no difference of its own.
    Stored in low precision (bfloat16/float16 params or state), a value a few float32 ulps apart may
    round to the neighbouring storage value: one storage ulp (2^-8 for bfloat16, 2^-11 for float16)
    relative, which later steps carry and may repeat: TOLERANCES[bf16/fp16] (two ulps). With
    bfloat16 state, a flipped state element moves its float32 param by about lr times a bfloat16
    ulp of the update, rarely: assert_bf16_state_close (flips in at most 0.2% of the elements).
    8-bit state: a float32 difference at a code boundary flips that element's code (a code step,
    larger than an ulp) and can move its block's scale: assert_8bit_close (codes equal but for
    0.2% flips, scales within an ulp but for a block whose largest element flipped).
    Noise on float64 params: the normals are a float32 quantity on every backend (docs/noise.md,
    "The stream": Box-Muller in float32), whose log and cos round differently by an ulp or two per
    backend, so float64 params with noise agree to float32's tolerance, not float64's."""
    dtype = s["dtype"]
    if dtype == torch.float64 and "noise" in s["common"]:
        dtype = torch.float32
    if s["kind"] == "8bit":
        assert_8bit_close(ref, opt, ref_params, params, dtype=dtype)
    elif s["kind"] == "bfloat16" or dtype == torch.bfloat16:
        assert_bf16_state_close(ref, opt, ref_params, params, dtype)
    else:
        assert_same_state(ref, opt, ref_params, params, dtype)
    for p, q in zip(ref_params, params):
        assert p.stride() == q.stride()  # stepped in place, in its layout


def check(s):
    ref_params, ref = run_reference(s)
    params, opt = run_moved(s)
    assert_matches(s, ref, opt, ref_params, params)


@pytest.fixture(params=ALL_BACKENDS)
def backend(request, monkeypatch):
    on_cpu(request.param, monkeypatch)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the run may move to Triton too
    return request.param


def test_backend_matches_reference(backend):
    @settings(max_examples=max(1, EXAMPLES // 3) if backend == "triton" else EXAMPLES, deadline=None,
              derandomize=True, database=None, print_blob=True)
    @given(scenarios(backend))
    def fuzz(s):
        check(s)

    fuzz()


def _plain(backend, common=(), **kwargs):
    """A one-group AdaPNM scenario of 3 steps, moved to the reference after the first."""
    return dict(config="adapnm", kind="param", split=None, second=dict(lr_scale=0.5, weight_decay=0.0), steps=3,
                move=dict(at=1, backends=(backend, "reference")), data_seed=0,
                common=dict(dict(state_dtype=None, stochastic_rounding=False, seed=0, max_grad_norm=None), **dict(common)),
                **kwargs)


# What the fuzzing found, kept as regressions (run as plain tests, so that one failing does not
# stop the fuzzing of its backend).
FOUND = {
    # Contiguous grads of transposed params: a (1, 2) param transposed from (2, 1) (strides (1, 1),
    # a size-1 dimension's stride), and a (3, 2) one. Found against a native build older than its
    # sources (7d90214's layout rules), which refused both.
    "size1_dim_transposed": dict(dtype=torch.float16, params=[((1, 2), "transposed", False)]),
    "transposed_contiguous_grad": dict(dtype=torch.float32, params=[((3, 2), "transposed", False)]),
    # float64 params with noise: the normals are float32 on every backend (assert_matches).
    "float64_noise": dict(dtype=torch.float64, params=[((1,), "contiguous", False)],
                          common=dict(noise=nf.noise.Isotropic(std=0.01))),
}


@pytest.mark.parametrize("case", sorted(FOUND))
def test_found_by_fuzzing(backend, case):
    check(_plain(backend, **FOUND[case]))
