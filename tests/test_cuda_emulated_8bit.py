"""The CUDA kernel of 8-bit blockwise state (csrc/cuda/fused_step_blockwise.cuh), run on the CPU
through the CUDA emulation (tests/cuda_emulation.py) in place of the native CPU kernel, against the
reference backend (noisefuse/state/host_step.py: dequantize, step in float32, quantize).

What the kernel adds to the float32-state kernel, and so what these tests cross: each thread's kIlp
elements dequantized from codes and block scales; a block's new scale reduced over the threads that
own it (shared memory and barriers, quantization blocks of 16 to 2048 elements in tiles of 2048);
the codes of a branchless binary search; tails of tensors inside a pack, a block and a chunk; the
scales as extra lists of the launch table; PN writing one momentum buffer by parity.

Codes equal the reference's given the same float32 values (products and comparisons only); the
float32 update may differ from the reference's by an ulp in the order of its operations, which moves
a code only when a value sits at a decision point: rare flips are allowed, as for bfloat16 state
(test_8bit_state.assert_8bit_close), except in the exact test, where the update is one product per
buffer and every code and scale must be the reference's bit for bit."""
from __future__ import annotations

import pytest
import torch

import noisefuse as nf
from blockwise_cases import assert_8bit_close
from cases import CONFIGS, make_params, run, saved_and_loaded
from noise_cases import noisy_run
from noisefuse.backends import native, reference
from noisefuse.backends.step_tensors import StepTensors
from noisefuse.state import Blockwise8bit, code_buckets
from noisefuse.state.blockwise import encode, zero_code
from test_cuda_emulated import CHUNK, ILP, emulated, emulated_kernels  # noqa: F401  (the fixture)
from test_native import FAMILIES, STATE_LISTS, op_args, step_tensors

pytestmark = pytest.mark.skipif(not native.available(torch.device("cpu")),
                                reason=f"native extension not built: {native.load_error()}")

# Empty, one element, kIlp - 1, kIlp, kIlp + 1, inside a chunk, just past one, past two and mid-block.
# The emulation runs 512 fibers per block: the end-to-end runs keep to sizes below a chunk but one
# run past two chunks (the op-level tests cross a chunk too), so that the file takes minutes.
RUN_SIZES = (0, 1, ILP - 1, ILP, ILP + 1, 1023, 4099)
BIG_RUN_SIZES = (1023, CHUNK + 1, 2 * CHUNK + 4099)
# The op-level calls: every tail (pack, block, chunk) once, an empty tensor between others.
OP_SIZES = (1, ILP - 1, ILP + 1, 1023, 0, 4097, CHUNK + 3)
# Block sizes at both ends and between (the reduction's tree has 2 to 9 rounds), each book at the
# smallest and the largest block; min_numel 0, so that every param of RUN_SIZES is 8-bit.
SPECS = {"b256": Blockwise8bit(256, min_numel=0),
         "b16_linear": Blockwise8bit(16, "linear", min_numel=0),
         "b16": Blockwise8bit(16, min_numel=0),
         "b64_linear": Blockwise8bit(64, "linear", min_numel=0),
         "b2048": Blockwise8bit(2048, min_numel=0),
         "b2048_linear": Blockwise8bit(2048, "linear", min_numel=0)}


def compare_8bit(config, dtype, spec, steps=20, sizes=RUN_SIZES, **kw):
    params = make_params(sizes, dtype)
    pa, oa = run(config, "reference", params, steps, state_dtype=spec, **kw)
    pb, ob = run(config, "native", params, steps, state_dtype=spec, **kw)
    assert_8bit_close(oa, ob, pa, pb)
    assert all(v.dtype == torch.uint8 for k, v in ob.state[pb[-1]].items() if k in codes_keys(ob))


def codes_keys(opt):
    """The state keys of the buffers (codes with 8-bit state) of ``opt``'s first group."""
    return set(opt._state_keys(opt.param_groups[0]).values())


# ----- the optimizers, end to end ----------------------------------------------------------------
# Every config with float32 params (blocks of 256, the dynamic book); bfloat16 params rounded to
# nearest with one config of each family shape, and stochastically; then each book at the smallest
# and the largest block, with the families of widest state (PN + amsgrad, EMA + amsgrad).
RUNS = ([(config, "float32", "b256", False) for config in sorted(CONFIGS)]
        + [(config, "bfloat16", "b256", False) for config in ("adapnm", "demon_sgd", "pnm_l2_demon",
                                                                "demon_adamw_ams")]
        + [(config, "bfloat16", spec, True) for config, spec in (("adapnm", "b256"), ("demon_adam", "b64_linear"),
                                                                  ("pnm", "b16"))]
        + [(config, "float32", spec, False) for config, spec in (("adapnm", "b16_linear"), ("adapnm", "b2048"),
                                                                  ("demon_adamw_ams", "b16"),
                                                                  ("demon_adamw_ams", "b2048_linear"))])


@pytest.mark.parametrize("config,dtype,spec,rounding", RUNS)
def test_matches_reference(config, dtype, spec, rounding, emulated):
    kw = dict(stochastic_rounding=True, seed=0xF00DFACE_DEADBEEF) if rounding else {}
    compare_8bit(config, getattr(torch, dtype), SPECS[spec], **kw)


def test_matches_reference_past_two_chunks(emulated):
    """PN with amsgrad (the widest state) on tensors crossing one and two 64K chunks: each block of
    the launch starts its tensor's scales at its own chunk."""
    compare_8bit("adapnm", torch.float32, SPECS["b256"], sizes=BIG_RUN_SIZES)


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_zero_gradients_give_the_reference_codes_bit_for_bit(config, emulated):
    """Non-trivial 8-bit state from 5 real steps of the reference, loaded into the emulated kernel's
    optimizer; then 6 steps of both with zero gradients and no weight decay. Each buffer's update is
    then one float32 product (m * a, v * beta2; the maximum and the square root exact), the same
    number on both, so every code and every scale must be the reference's."""
    spec = SPECS["b64_linear" if "demon" in config else "b256"]
    params = make_params(RUN_SIZES, torch.float32)
    pa, oa = run(config, "reference", params, steps=5, state_dtype=spec)
    pb = [p.detach().clone().requires_grad_() for p in pa]
    ob = CONFIGS[config](pb, backend="native", state_dtype=spec)
    ob.load_state_dict(saved_and_loaded(oa))  # its own tensors
    for opt, ps in ((oa, pa), (ob, pb)):
        for group in opt.param_groups:
            group["weight_decay"] = 0.0
        for _ in range(6):
            for p in ps:
                p.grad = torch.zeros_like(p)
            opt.step()
    for i, (a, b) in enumerate(zip(pa, pb)):
        sa, sb = oa.state[a], ob.state[b]
        assert sa.keys() == sb.keys()
        for key in sa:
            assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), f"param {i} {key}"
        torch.testing.assert_close(a.detach(), b.detach(), atol=1e-6, rtol=1e-5)
    for key in codes_keys(oa):  # the state is far from its fresh zeros
        assert len(oa.state[pa[-1]][key].unique()) > 20, key


@pytest.mark.parametrize("noise,config", [("isotropic", "pnm_l2_demon"), ("mult_gaussian", "demon_adamw_ams"),
                                          ("diag_fisher", "adapnm")])
def test_noise_matches_reference(noise, config, emulated):
    """Normals from the global index of the element (isotropic, diag_fisher), grad_sample rows."""
    params = make_params((0, 1, ILP - 1, 37, 4099), torch.float32)
    spec = SPECS["b256"]
    pa, oa = noisy_run(config, "reference", noise, params, steps=6, state_dtype=spec)
    pb, ob = noisy_run(config, "native", noise, params, steps=6, state_dtype=spec)
    assert_8bit_close(oa, ob, pa, pb)


# ----- the op ------------------------------------------------------------------------------------
def quantized(family, hyper, sizes=OP_SIZES, dtype=torch.float32, spec=SPECS["b256"]):
    """test_native.step_tensors's random bucket with its buffers encoded as 8-bit codes and scales."""
    ts = step_tensors(family, hyper, sizes=sizes, dtype=dtype, state_dtype=torch.float32)
    ts.quantization = spec
    for key in STATE_LISTS:
        if getattr(ts, key):
            pairs = [encode(x, spec, key) for x in getattr(ts, key)]
            setattr(ts, key, [codes for codes, _ in pairs])
            ts.scales[key] = [scales for _, scales in pairs]
    return ts


def clone8(ts):
    out = StepTensors(**{k: [t.clone() if torch.is_tensor(t) else t for t in v] for k, v in vars(ts).items()
                         if isinstance(v, list)})
    out.quantization = ts.quantization
    out.scales = {k: [s.clone() for s in v] for k, v in ts.scales.items()}
    return out


def tensors(ts):
    """Every tensor of ``ts`` by name: lists, counters, codes and scales."""
    named = {f"{k}[{i}]": t for k, v in vars(ts).items() if isinstance(v, list) for i, t in enumerate(v)
             if torch.is_tensor(t)}
    named.update({f"{k}_scales[{i}]": s for k, v in ts.scales.items() for i, s in enumerate(v)})
    return named


def assert_steps_like_the_reference(expected, ts, dtype, exact_codes=False):
    """Codes equal but for rare flips, params to the dtype's float32-order tolerance but for as rare
    elements (those of a flipped code), scales to a few float32 ulps (a block's maximum element an
    ulp apart); counters exactly. With ``exact_codes`` no flip: codes and scales bit for bit."""
    want, got = tensors(expected), tensors(ts)
    assert want.keys() == got.keys()
    for name, a in want.items():
        b = got[name]
        assert a.dtype == b.dtype and a.shape == b.shape, name
        if a.dtype == torch.uint8:
            apart = int((a != b).sum())
            assert apart <= (0 if exact_codes else max(1, 0.001 * a.numel())), f"{name}: {apart} codes apart"
        elif name.startswith(("steps", "beta1_prods")) or "_scales" in name and exact_codes:
            assert torch.equal(a, b), name
        elif "_scales" in name:
            torch.testing.assert_close(a, b, atol=0, rtol=4e-7, msg=lambda m: f"{name}: {m}")
        else:  # params: a flipped code moves its element's update by a code step
            atol, rtol = (1e-6, 1e-5) if dtype == torch.float32 else (8e-3, 1.6e-2)
            apart = int((~torch.isclose(a, b, atol=atol, rtol=rtol, equal_nan=True)).sum())
            assert apart <= (0 if exact_codes else max(1, 0.001 * a.numel())), f"{name}: {apart} elements apart"
            torch.testing.assert_close(a, b, atol=2e-3, rtol=1e-2, equal_nan=True, msg=lambda m: f"{name}: {m}")


def emulated_step(family, hyper, ts, **kw):
    with emulated_kernels():
        native.fused_step(family, hyper, ts, **kw)


# Every block size with both families of PN / single buffer at float32; bfloat16 params at one.
OP_CASES = [(name, "float32", spec) for name in sorted(FAMILIES) for spec in ("b256", "b16_linear", "b2048")] + [
    (name, "bfloat16", "b64_linear") for name in sorted(FAMILIES)]


@pytest.mark.parametrize("name,dtype,spec", OP_CASES)
def test_each_variant_with_grad_scale(name, dtype, spec):
    """Three steps from random 8-bit state (PN's two parities: the counters start at 3 + i), with an
    AMP scale."""
    family, hyper = FAMILIES[name]
    dtype = getattr(torch, dtype)
    ts = quantized(family, hyper, dtype=dtype, spec=SPECS[spec])
    expected = clone8(ts)
    scale = torch.tensor(64.0)
    for _ in range(3):
        reference.fused_step(family, hyper, expected, grad_scale=scale)
        emulated_step(family, hyper, ts, grad_scale=scale)
    assert_steps_like_the_reference(expected, ts, dtype)


def misalign8(ts, index):
    """Params, grads and codes at ``index`` as equal views one element into larger buffers: contiguous
    but not vector-aligned (the kernel's per-lane path); the scales too."""
    def shifted(t):
        return torch.cat([torch.zeros(1, dtype=t.dtype, device=t.device), t])[1:]

    for key in ("params", "grads", *STATE_LISTS):
        if getattr(ts, key):
            getattr(ts, key)[index] = shifted(getattr(ts, key)[index])
    for scales in ts.scales.values():
        scales[index] = shifted(scales[index])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", ["pn_ams", "ema_v", "heavy_ball"])
def test_misaligned_views_beside_aligned_tensors(name, dtype):
    family, hyper = FAMILIES[name]
    ts = quantized(family, hyper, sizes=(CHUNK + 9, 4097, 5, 2048), dtype=dtype, spec=SPECS["b64_linear"])
    misalign8(ts, 0)
    misalign8(ts, 2)
    ts.exp_avgs[3] = torch.cat([torch.zeros(3, dtype=torch.uint8), ts.exp_avgs[3]])[3:]  # one operand only
    assert ts.params[0].storage_offset() == 1 and ts.exp_avgs[3].storage_offset() == 3
    expected = clone8(ts)
    for _ in range(3):
        reference.fused_step(family, hyper, expected)
        emulated_step(family, hyper, ts)
    assert_steps_like_the_reference(expected, ts, dtype)


@pytest.mark.parametrize("name", ["pn_ams", "ema_ams"])
def test_nan_and_inf_gradients_do_not_poison_their_blocks(name):
    """A NaN and an inf gradient in one block: the element's param is NaN or inf like the
    reference's, its momentum is stored as 0 (NaN) or saturated, and the block's scale is the finite
    maximum of the others'."""
    family, hyper = FAMILIES[name]
    spec = SPECS["b64_linear"]
    ts = quantized(family, hyper, sizes=(4097, 300), spec=spec)
    ts.grads[0][70] = float("nan")
    ts.grads[0][100] = float("inf")
    ts.grads[1][5] = float("nan")
    expected = clone8(ts)
    reference.fused_step(family, hyper, expected)
    emulated_step(family, hyper, ts)
    assert_steps_like_the_reference(expected, ts, torch.float32)
    assert ts.params[0][70].isnan() and not ts.params[0][69].isnan()
    written = ts.exp_avgs if not family.pn or ts.steps[0].item() % 2 == 1 else ts.neg_exp_avgs
    assert written[0][70].item() == zero_code(spec, signed=True)
    field = "exp_avgs" if written is ts.exp_avgs else "neg_exp_avgs"
    assert bool(ts.scales[field][0].isfinite().all()) and ts.scales[field][0][1].item() > 0


def test_found_inf_leaves_codes_scales_params_and_counters_unchanged():
    family, hyper = FAMILIES["pn_ams"]
    ts = quantized(family, hyper)
    before = clone8(ts)
    emulated_step(family, hyper, ts, grad_scale=torch.tensor(8.0), found_inf=torch.tensor(1.0))
    assert all(torch.equal(a, b) for a, b in zip(tensors(before).values(), tensors(ts).values()))
    emulated_step(family, hyper, ts, grad_scale=torch.tensor(8.0), found_inf=torch.tensor(0.0))
    assert all(s.item() == b.item() + 1 for s, b in zip(ts.steps, before.steps))
    assert not torch.equal(ts.params[5], before.params[5])
    assert not torch.equal(ts.scales["exp_avg_sqs"][5], before.scales["exp_avg_sqs"][5])


def test_pn_reads_its_negative_buffer_only():
    """Each step writes the buffer of its parity: the other's codes and scales keep their bits."""
    family, hyper = FAMILIES["pn_v"]
    ts = quantized(family, hyper, sizes=(4097, 70))  # steps 3 and 4: one tensor of each parity
    before = clone8(ts)
    emulated_step(family, hyper, ts)
    for i, step in enumerate(before.steps):
        untouched = "neg_exp_avgs" if int(step.item()) % 2 == 0 else "exp_avgs"
        assert torch.equal(getattr(ts, untouched)[i], getattr(before, untouched)[i]), (i, untouched)
        assert torch.equal(ts.scales[untouched][i], before.scales[untouched][i]), (i, untouched)


@pytest.mark.parametrize("name", ["pn_ams", "heavy_ball"])
def test_more_tensors_than_one_launch_table(name):
    """With the scales lists the table holds fewer tensors (35 with pn_ams's 10 lists, 63 with
    heavy_ball's 4): 150 tensors take several launches, each with its counter launch."""
    family, hyper = FAMILIES[name]
    sizes = [(i * 37) % 300 for i in range(150)]
    sizes[34] = sizes[35] = 0
    ts = quantized(family, hyper, sizes=sizes, spec=SPECS["b16"])
    expected = clone8(ts)
    for _ in range(2):
        reference.fused_step(family, hyper, expected)
        emulated_step(family, hyper, ts)
    assert_steps_like_the_reference(expected, ts, torch.float32)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_opcheck(name, emulated):
    family, hyper = FAMILIES[name]
    ts = quantized(family, hyper, sizes=(3, 70))
    scales = [s for key in STATE_LISTS if getattr(ts, key) for s in ts.scales[key]]
    args, kwargs = op_args(family, hyper, ts, grad_scale=torch.tensor(2.0), found_inf=torch.tensor(0.0),
                           state_scales=scales, code_books=nf.state.maps.tables("dynamic"), block_size=256)
    torch.library.opcheck(emulated.fused_step_.default, args, kwargs)


def test_zero_gradients_step_a_random_state_bit_for_bit_at_every_block_size():
    """The exact test at the op, over every block size and book: zero gradients and no decay from
    random codes (PN at both parities, amsgrad, Demon's beta)."""
    for name in ("pn_ams", "ema_v"):
        family, base = FAMILIES[name]
        hyper = type(base)(**dict(vars(base), weight_decay=0.0))
        for spec in SPECS.values():
            ts = quantized(family, hyper, spec=spec)
            for g in ts.grads:
                g.zero_()
            expected = clone8(ts)
            for _ in range(3):
                reference.fused_step(family, hyper, expected)
                emulated_step(family, hyper, ts)
            assert_steps_like_the_reference(expected, ts, torch.float32, exact_codes=True)



# ----- the O(1) code decision ------------------------------------------------------------------
@pytest.mark.parametrize("book", nf.state.maps.MAPS)
def test_device_bucket_tables_are_the_host_rows(book, emulated):
    """The kernel's bucket tables, built by a kernel from the books (blockwise_tables.cu), are the
    host's (state/code_buckets.py, which the CPU and Triton kernels share), row for row in the
    kernel's order: m's nearest points, v's, the maximum's rounding up."""
    books = nf.state.maps.tables(book)
    got = emulated.bucket_tables(books).reshape(3, -1)
    rows = (nf.state.maps.SIGNED_MIDPOINTS, nf.state.maps.UNSIGNED_MIDPOINTS, nf.state.maps.UNSIGNED_VALUES)
    for w, row in enumerate(rows):
        assert torch.equal(got[w].long(), code_buckets.bucket_starts(books[row, :-1])), f"row {row}"
    assert emulated.bucket_tables(books).data_ptr() == got.data_ptr()  # built once per books tensor


@pytest.mark.parametrize("spec", ["b256", "b16_linear"])
def test_codes_come_from_the_table_and_the_search_only_for_denormal_scales(spec, emulated):
    """The kernel takes every code of a run at ordinary scales from its table (no fallback search,
    counted by the emulation), with the reference's codes (compare_8bit); a block whose scale is
    denormal makes the search run, with the same codes. AdaPNM with amsgrad writes all three rows."""
    emulated.code_searches()  # the count starts here
    compare_8bit("adapnm", torch.float32, SPECS[spec], steps=3, sizes=(1, ILP + 1, 1023, 4099))
    assert emulated.code_searches() == 0
    grads = [torch.randn(1023, generator=torch.Generator().manual_seed(step)) * 1e-40 for step in range(2)]
    runs = []
    for backend in ("reference", "native"):  # momenta of denormal gradients: denormal scales
        ps = [torch.zeros(1023, requires_grad=True)]
        opt = CONFIGS["adapnm"](ps, backend=backend, state_dtype=SPECS[spec])
        for g in grads:
            ps[0].grad = g.clone()
            opt.step()
        runs.append((ps, opt))
    (pa, oa), (pb, ob) = runs
    assert emulated.code_searches() > 0
    assert_8bit_close(oa, ob, pa, pb)
