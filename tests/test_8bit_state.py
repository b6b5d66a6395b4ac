"""8-bit blockwise state (``state_dtype=noisefuse.state.Blockwise8bit()``; docs/kernel-contract.md,
"8-bit blockwise state"): the code books, quantize/dequantize round trips at every block edge, the
pitfalls the format is designed around (small second moments, amsgrad's maximum, NaN gradients),
the host backends against each other, which params stay float32, checkpoints across state formats,
and the arguments refused."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import noisefuse as nf
from blockwise_cases import assert_8bit_close
from cases import (CONFIGS, assert_checkpoint_resumes_bit_for_bit, make_grads, make_params, run, saved_and_loaded,
                   trained)
from noisefuse.optim.precision import COUNTERS
from noisefuse.state import Blockwise8bit, maps
from noisefuse.state.blockwise import SCALES_SUFFIX, decode, dequantize, encode, quantize

BOOKS = maps.MAPS


@pytest.mark.parametrize("book", BOOKS)
@pytest.mark.parametrize("signed", [True, False])
def test_code_books(book, signed):
    """Sorted, 1 (and -1) exact so a block's largest element is stored without error, 0 present;
    the decision points lie between their neighbours; unsigned books decide 0 at 0."""
    table = maps.tables(book)
    values = table[maps.SIGNED_VALUES if signed else maps.UNSIGNED_VALUES]
    points = table[maps.SIGNED_MIDPOINTS if signed else maps.UNSIGNED_MIDPOINTS][:255]
    assert values.dtype == torch.float32 and values.shape == (256,)
    assert bool((values[1:] >= values[:-1]).all()) and values.max() == 1.0 and 0.0 in values.tolist()
    assert values.min() == (-1.0 if signed else 0.0)
    assert bool((points >= values[:-1]).all() and (points <= values[1:]).all())
    if not signed:
        assert points[0] == 0.0 and values[1] > 0
    if book == "dynamic":  # decades down to 1e-6 (signed) / 1e-7 (unsigned) of the block maximum
        smallest = values[values > 0].min().item()
        assert smallest == pytest.approx(1e-6 if signed else 1e-7, rel=1e-6)


def _assert_nearest(x, codes, scales, spec, signed):
    """Each code is the nearest value of the book times the block's scale (ties: either); for an
    unsigned positive value, the nearest but 0."""
    table = maps.tables(spec.code_book)[maps.SIGNED_VALUES if signed else maps.UNSIGNED_VALUES]
    s = scales.repeat_interleave(spec.block_size)[:x.numel()]
    candidates = table[None, :] * s[:, None]
    err = (candidates - x.reshape(-1, 1)).abs()
    if not signed:
        err[:, 0] = torch.where(x.reshape(-1) > 0, float("inf"), err[:, 0])
    chosen = err.gather(1, codes.reshape(-1, 1).long()).squeeze(1)
    assert bool((chosen <= err.min(1).values * (1 + 1e-6) + 1e-30).all())


@pytest.mark.parametrize("block", [16, 256, 2048])
@pytest.mark.parametrize("book", BOOKS)
def test_round_trip_at_every_block_edge(block, book):
    spec = Blockwise8bit(block_size=block, code_book=book)
    g = torch.Generator().manual_seed(block)
    for n in (0, 1, block - 1, block, block + 1, 3 * block + 5):
        x = torch.randn(n, generator=g) * torch.logspace(-3, 2, n) if n else torch.zeros(0)
        for signed in (True, False):
            values = x if signed else x.abs()
            codes, scales = quantize(values, spec, signed=signed)
            assert codes.dtype == torch.uint8 and codes.shape == values.shape
            assert scales.dtype == torch.float32 and scales.numel() == -(-n // block)
            if n:
                assert torch.equal(scales, torch.nn.functional.pad(values.abs(), (0, -n % block)).view(-1, block).amax(1))
                _assert_nearest(values, codes, scales, spec, signed)
            back = dequantize(codes, scales, spec, signed=signed)
            # The largest element of each block is stored exactly; requantizing is the identity.
            if n:
                blocks = torch.nn.functional.pad(back.abs(), (0, -n % block)).view(-1, block)
                assert torch.equal(blocks.amax(1), scales)
            again, again_scales = quantize(back, spec, signed=signed)
            assert torch.equal(again, codes) and torch.equal(again_scales, scales)


def test_small_second_moments_are_never_stored_as_zero():
    """sqrt(v) of 1e-30 next to 1 in the same block: the linear book's smallest positive step is
    1/255, but the value still gets a positive code, so m / (sqrt(v) + eps) cannot explode."""
    for book in BOOKS:
        spec = Blockwise8bit(block_size=16, code_book=book)
        v = torch.tensor([1.0] + [1e-30] * 15)
        codes, scales = encode(v, spec, "exp_avg_sqs")
        assert bool((codes > 0).all())
        assert bool((decode(codes, scales, spec, "exp_avg_sqs") > 0).all())


def test_the_amsgrad_maximum_rounds_up():
    """The stored root is at least sqrt(vmax) (its square, rounded, may sit an ulp below vmax; the
    step after squares and roots it back exactly: sqrt_rn(rn(r * r)) = r)."""
    spec = Blockwise8bit(block_size=64)
    x = torch.rand(64 * 50, generator=torch.Generator().manual_seed(3)) ** 4
    codes, scales = encode(x, spec, "max_exp_avg_sqs")
    root = dequantize(codes, scales, spec, signed=False)

    def sqrt_rn(t):  # correctly rounded (torch's float32 sqrt on the CPU is not, always)
        return t.double().sqrt().float()

    assert bool((root >= sqrt_rn(x)).all()) and torch.equal(sqrt_rn(root * root), root)
    nearest_codes, _ = encode(x, spec, "exp_avg_sqs")
    assert bool((codes >= nearest_codes).all()) and bool((codes > nearest_codes).any())


def test_a_nan_or_inf_does_not_poison_its_block():
    spec = Blockwise8bit(block_size=16)
    x = torch.linspace(-1, 2, 16)
    for bad in (float("nan"), float("inf"), -float("inf")):
        y = x.clone()
        y[5] = bad
        codes, scales = quantize(y, spec, signed=True)
        clean_codes, clean_scales = quantize(torch.cat([x[:5], x[6:]]), Blockwise8bit(block_size=16), signed=True)
        assert scales.item() == x.abs().max().item()  # the finite maximum
        assert torch.equal(torch.cat([codes[:5], codes[6:]]), clean_codes[:15])


@pytest.mark.parametrize("backend", ["reference", "foreach"])
def test_amsgrad_maximum_never_decreases_through_steps(backend):
    """Each step requantizes max_exp_avg_sq with a new block scale; the stored maximum (sqrt(vmax))
    may only grow, element by element."""
    p = torch.zeros(4096 + 7, requires_grad=True)
    opt = nf.AdaPNM([p], lr=1e-3, betas=(0.9, 0.9, 1.0), state_dtype=Blockwise8bit(block_size=64), backend=backend)
    spec = Blockwise8bit(block_size=64)
    g = torch.Generator().manual_seed(0)
    previous = torch.zeros(p.numel())
    for step in range(30):
        p.grad = torch.randn(p.numel(), generator=g) * (10.0 if step == 3 else 0.1)
        opt.step()
        state = opt.state[p]
        now = decode(state["max_exp_avg_sq"], state["max_exp_avg_sq" + SCALES_SUFFIX], spec, "max_exp_avg_sqs")
        assert bool((now >= previous).all()), step
        previous = now


SPEC = Blockwise8bit(block_size=64, min_numel=1000)  # params of 1023 and 4097 elements are 8-bit


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_foreach_matches_reference(config):
    params = make_params()
    pa, oa = run(config, "reference", params, steps=20, state_dtype=SPEC)
    pb, ob = run(config, "foreach", params, steps=20, state_dtype=SPEC)
    assert_8bit_close(oa, ob, pa, pb)
    assert oa.state[pa[3]]["step"].item() == 20 and oa.state[pa[3]][next(iter(_buffer_keys(oa)))].dtype == torch.uint8


def _buffer_keys(opt):
    return opt._state_keys(opt.param_groups[0]).values()


def test_which_params_are_8bit():
    """By element count (min_numel): small params keep float32 state, in a call of their own."""
    params = make_params((10, 5000, 4095, 4096))
    opt = nf.AdaPNM(params, state_dtype=Blockwise8bit())
    for p, g in zip(params, make_grads(params, 0)):
        p.grad = g
    opt.step()
    dtypes = [opt.state[p]["exp_avg"].dtype for p in params]
    assert dtypes == [torch.float32, torch.uint8, torch.float32, torch.uint8]
    assert opt.state[params[1]]["exp_avg_scales"].shape == (20,)  # 5000 / 256, rounded up
    assert "exp_avg_scales" not in opt.state[params[0]]


def test_state_bytes():
    """AdaPNM with amsgrad: 4 buffers of 1 byte plus 4 / 256 bytes of scale per element."""
    p = torch.zeros(256 * 100, requires_grad=True)
    opt = nf.AdaPNM([p], state_dtype=Blockwise8bit())
    p.grad = torch.ones_like(p)
    opt.step()
    nbytes = sum(v.numel() * v.element_size() for k, v in opt.state[p].items() if k not in COUNTERS)
    assert nbytes == 4 * (p.numel() + 4 * 100)


def test_amp_skip_leaves_codes_and_scales():
    params = make_params((5000,))
    opt = nf.AdaPNM(params, state_dtype=Blockwise8bit())
    params[0].grad = torch.randn(5000)
    opt.step()
    before = {k: v.clone() for k, v in opt.state[params[0]].items()}
    opt.grad_scale, opt.found_inf = torch.tensor(1.0), torch.tensor(1.0)
    params[0].grad = torch.randn(5000)
    opt.step()
    assert all(torch.equal(v, before[k]) for k, v in opt.state[params[0]].items())


def _copies(params):
    return [p.detach().clone().requires_grad_() for p in params]


def test_checkpoint_resumes_bit_for_bit():
    """Codes (uint8) and scales (float32) are plain tensors that a weights_only load reads."""
    factory = lambda ps: nf.AdaPNM(ps, lr=1e-2, weight_decay=0.01, state_dtype=Blockwise8bit(128))  # noqa: E731
    resumed = assert_checkpoint_resumes_bit_for_bit(factory, make_params((5000, 300)))
    assert resumed.param_groups[0]["state_dtype"] == Blockwise8bit(128).as_dict()


def test_checkpoints_convert_between_formats():
    """8-bit state loads into float32 state decoded exactly; float32 state loads into 8-bit state
    quantized once; into another block size, decoded then quantized."""
    params = make_params((5000,))
    eight = trained(lambda ps: nf.PNM(ps, lr=0.05, state_dtype=Blockwise8bit(64)), params)
    spec, q8 = Blockwise8bit(64), eight.state[params[0]]
    into_f32 = nf.PNM(_copies(params), lr=0.05)
    into_f32.load_state_dict(saved_and_loaded(eight))
    q32 = into_f32.state[into_f32.param_groups[0]["params"][0]]
    assert set(q32) == {"step", "pos_momentum", "neg_momentum"}
    for key in ("pos_momentum", "neg_momentum"):
        assert q32[key].dtype == torch.float32
        assert torch.equal(q32[key], decode(q8[key], q8[key + SCALES_SUFFIX], spec, "exp_avgs"))
    back = nf.PNM(_copies(params), lr=0.05, state_dtype=Blockwise8bit(64))
    back.load_state_dict(saved_and_loaded(into_f32))
    qb = back.state[back.param_groups[0]["params"][0]]
    for key in ("pos_momentum", "neg_momentum"):  # decoded values quantize to their own codes
        assert torch.equal(qb[key], q8[key]) and torch.equal(qb[key + SCALES_SUFFIX], q8[key + SCALES_SUFFIX])
    other = nf.PNM(_copies(params), lr=0.05, state_dtype=Blockwise8bit(256, code_book="linear"))
    other.load_state_dict(saved_and_loaded(eight))
    qo = other.state[other.param_groups[0]["params"][0]]
    expected = encode(q32["pos_momentum"], Blockwise8bit(256, code_book="linear"), "exp_avgs")
    assert torch.equal(qo["pos_momentum"], expected[0]) and torch.equal(qo["pos_momentum_scales"], expected[1])
    other.step()  # and it steps


def test_a_checkpoint_whose_scales_do_not_fit_is_refused():
    params = make_params((5000,))
    opt = trained(lambda ps: nf.AdaPNM(ps, state_dtype=Blockwise8bit()), params, steps=1)
    sd = saved_and_loaded(opt)
    sd["state"][0]["exp_avg_sq_scales"] = sd["state"][0]["exp_avg_sq_scales"][:-1]
    target = nf.AdaPNM(_copies(params), state_dtype=Blockwise8bit())
    with pytest.raises(ValueError, match="'exp_avg_sq'.*5000 8-bit codes.*need 20 float32 scales"):
        target.load_state_dict(sd)
    assert not target.state
    sd = saved_and_loaded(opt)
    del sd["state"][0]["exp_avg_scales"]
    with pytest.raises(ValueError, match="'exp_avg_scales': it has none"):
        target.load_state_dict(sd)
    sd = saved_and_loaded(opt)
    sd["param_groups"][0]["state_dtype"] = None
    with pytest.raises(ValueError, match="holds 8-bit codes, but its param group's state_dtype"):
        target.load_state_dict(sd)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="Invalid state_dtype: 8-bit blockwise state is for float32 and bfloat16"):
        nf.AdaPNM(make_params((3,), dtype=torch.float64), state_dtype=Blockwise8bit())
    with pytest.raises(ValueError, match="8-bit blockwise state is for float32 and bfloat16 params.*float16"):
        nf.PNM(make_params((3,), dtype=torch.float16), lr=0.1, state_dtype=Blockwise8bit())
    for block in (0, 3, 100, 8, 4096, -256, 2.0, True):
        with pytest.raises(ValueError, match="Invalid block_size"):
            Blockwise8bit(block_size=block)
    with pytest.raises(ValueError, match="Invalid code_book"):
        Blockwise8bit(code_book="quantile")
    with pytest.raises(ValueError, match="Invalid min_numel"):
        Blockwise8bit(min_numel=-1)
    with pytest.raises(ValueError, match="state_rounding: 'stochastic' rounds bfloat16 state; 8-bit"):
        nf.AdaPNM(make_params((3,)), state_dtype=Blockwise8bit(), state_rounding="stochastic")


def test_state_dtype_reads_back_as_plain_values():
    opt = nf.DemonAdam(make_params((3,)), total_steps=10, state_dtype=Blockwise8bit(512, "linear", 0))
    assert opt.param_groups[0]["state_dtype"] == {"format": "blockwise8bit", "block_size": 512,
                                                  "code_book": "linear", "min_numel": 0}


@pytest.mark.parametrize("noise,config", [("isotropic", "pnm_l2_demon"), ("diag_fisher", "adapnm"),
                                          ("mult_gaussian", "demon_adamw_ams")])
def test_noise_with_8bit_and_float32_calls_in_one_group(noise, config):
    """A group whose params are split into an 8-bit call and a float32 call (min_numel): each call
    draws the noise of its own params (their grad_sample rows, their global offsets)."""
    from noise_cases import noisy_run

    params = make_params()  # 0, 1 (float32 state) and 1023, 4097 (8-bit) elements
    pa, oa = noisy_run(config, "reference", noise, params, state_dtype=SPEC)
    pb, ob = noisy_run(config, "foreach", noise, params, state_dtype=SPEC)
    assert_8bit_close(oa, ob, pa, pb)
    plain, _ = noisy_run(config, "reference", noise, params)
    # The float32-state params follow exactly the run without 8-bit state: same noise, same state.
    for p, q in zip(pa[:2], plain[:2]):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("stochastic_rounding", [False, True])
def test_bfloat16_params(stochastic_rounding):
    params = make_params(dtype=torch.bfloat16)
    kwargs = dict(steps=12, seed=7, state_dtype=SPEC, stochastic_rounding=stochastic_rounding)
    pa, oa = run("adapnm", "reference", params, **kwargs)
    pb, ob = run("adapnm", "foreach", params, **kwargs)
    for i, (a, b) in enumerate(zip(pa, pb)):
        # bfloat16 params: where the float32 update differs by an ulp, a stochastic draw or a code can
        # fall the other way, and the element then walks apart by a few bfloat16 ulps; rarely.
        apart = int((~torch.isclose(a.float(), b.float(), atol=1.6e-2, rtol=1.6e-2)).sum())
        assert apart <= max(2, 0.005 * a.numel()), f"param {i}: {apart} elements apart"
        torch.testing.assert_close(a.float(), b.float(), atol=0.1, rtol=0.05, msg=lambda m: f"param {i}: {m}")
    assert ob.state[pb[3]]["exp_avg"].dtype == torch.uint8 and ob.state[pb[1]]["exp_avg"].dtype == torch.float32


def test_rows_of_whole_blocks_decide_8bit_state_under_fsdp2():
    """Blockwise8bit.rows_are_whole_blocks: the row rule of Shard(0) params; and the coverage script
    that measures what it costs (docs/integration.md, "Checkpointing at scale")."""
    import importlib.util
    spec = Blockwise8bit(64)
    assert spec.rows_are_whole_blocks((130, 64)) and spec.rows_are_whole_blocks((7, 128))
    assert not spec.rows_are_whole_blocks((128, 130)) and not spec.rows_are_whole_blocks((100,))
    assert spec.rows_are_whole_blocks((64, 3, 3, 64)) and not spec.rows_are_whole_blocks((64, 3, 7, 7))
    assert spec.rows_are_whole_blocks((0, 5))
    path = Path(__file__).resolve().parents[1] / "scripts" / "fsdp2_8bit_coverage.py"
    module_spec = importlib.util.spec_from_file_location("fsdp2_8bit_coverage", path)
    script = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(script)
    total, eight, fallback, sharded, unsharded = script.coverage([(8192, 64), (64, 130), (10,)], Blockwise8bit(64, min_numel=100))
    assert total == 8192 * 64 + 64 * 130 + 10
    assert eight == 8192 * 64 / total and fallback == 64 * 130 / total
    assert sharded == pytest.approx((8192 * 64 * (1 + 4 / 64) + 4 * (64 * 130 + 10)) / total)
    assert unsharded == pytest.approx(((8192 * 64 + 64 * 130) * (1 + 4 / 64) + 40) / total)


@pytest.mark.parametrize("book", ["dynamic", "linear"])
def test_the_python_built_table_guesses_every_normal_scale_right(book):
    """state/code_buckets.py, the table the Triton kernel reads (its own copy of the O(1) decision of
    tests/test_blockwise_codes.py): for
    values at and beside every decision point times scales from 2^-100 to FLT_MAX, the guess
    ``g + [T[g] s < x]`` passes its check ``T[g-1] s < x <= T[g+1] s`` (so the kernel never searches)
    and equals the count. Decided here with torch ops, in the kernel's float32 arithmetic."""
    from noisefuse.state import code_buckets, maps

    books = maps.tables(book)
    table = code_buckets.decision_table(books)
    gen = torch.Generator().manual_seed(1)
    scales = torch.cat([torch.tensor([2.0 ** -100, 1.0, 3.4028234663852886e38]),
                        torch.exp2(torch.empty(8).uniform_(-100, 127, generator=gen))]).float()
    for row in (maps.SIGNED_MIDPOINTS, maps.UNSIGNED_MIDPOINTS, maps.UNSIGNED_VALUES):
        points = books[row, :255]
        padded = table[code_buckets.PADDED_BASE + row * code_buckets.PADDED_POINTS:][:code_buckets.PADDED_POINTS]
        starts = table[code_buckets.BUCKETS_BASE + row * 2 * code_buckets.BUCKETS_PER_SIGN:][
            :2 * code_buckets.BUCKETS_PER_SIGN].long()
        for s in scales:
            products = points * s
            x = torch.cat([products, torch.nextafter(products, torch.tensor(float("inf"))),
                           torch.nextafter(products, torch.tensor(-float("inf"))),
                           (torch.rand(2000, generator=gen) * 2 - 1) * s])
            x = x[x.abs() <= s]
            bits = (x * (1.0 / s)).view(torch.int32).long()
            q = ((bits & 0x7FFFFFFF) >> (23 - code_buckets.MANTISSA_BITS)) - code_buckets.BUCKET_BIAS
            q = q.clamp(0, code_buckets.BUCKETS_PER_SIGN - 1) + (bits < 0).long() * code_buckets.BUCKETS_PER_SIGN
            g = starts[q]
            guess = g + (padded[g + 1] * s < x).long()
            check = ~(padded[g] * s >= x) & (padded[g + 2] * s >= x)
            count = (products[None, :] < x[:, None]).sum(1)
            assert bool(check.all()), (row, float(s), x[~check][:5])
            assert torch.equal(guess, count), (row, float(s))
