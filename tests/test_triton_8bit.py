"""8-bit blockwise state on the Triton backend (``update_8bit_kernel``), run by Triton's interpreter
on CPU tensors, against the reference (docs/kernel-contract.md, "8-bit blockwise state"); and the
kernel compiled for Hopper (sm_90) without a GPU, with correctly rounded square roots and division
and no fused multiply-add in the comparisons that pick a code.

The float32 update may differ from the reference's by an ulp (FMA contraction, order), which moves a
code only when a value sits within that ulp of a decision point: codes are compared bit for bit but
for rare flips, as the bfloat16-state tests compare bits. Where the update is a single multiply per
buffer (zero gradients, no weight decay), nothing can differ: codes and scales are then bit-identical.

The interpreter costs per operation, so the runs are chosen rather than crossed: every CONFIGS entry
with float32 params, the dynamic book and 256-element blocks; each block size (16, 64, 256, 2048) and
the linear book with a few configs; bfloat16 params with and without stochastic rounding.
"""
import pytest
import torch

pytest.importorskip("triton")

from blockwise_cases import assert_8bit_close, assert_8bit_equal, spec  # noqa: E402
from cases import CONFIGS, SIZES, make_grads, make_params, on_cpu, run  # noqa: E402
from noise_cases import noisy_run  # noqa: E402
# Imported before any test switches the interpreter on, so that these are the compiled kernels the
# PTX tests need (the interpreted copies the other tests run are loaded apart: launch.kernels_for).
from noisefuse.backends.triton_kernels import kernels, launch  # noqa: E402
from noisefuse.state import maps  # noqa: E402
from noisefuse.state.blockwise import SCALES_SUFFIX, SIGNED_FIELDS, decode, zero_code  # noqa: E402

# SIZES with blockwise_cases.MIN_NUMEL: an empty param (float32 state), a one-element tensor (one
# short block), 1023 (a short last block for every block size) and 4097 (one element past a launch
# block). ALL_8BIT has no empty param, for the runs whose group must not split into an 8-bit and a
# float32 call: noise and stochastic rounding index their draws by each call's global offsets, which
# this branch's optimizer computes for the whole group (fixed on main, 79b4d3e).
ALL_8BIT = (1, 1023, 4097)


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    on_cpu("triton", monkeypatch)
    monkeypatch.delenv("NOISEFUSE_TRITON_BLOCK", raising=False)


def _compare(config, state_dtype, dtype=torch.float32, sizes=SIZES, steps=20, **kwargs):
    params = make_params(sizes, dtype=dtype)
    pa, oa = run(config, "reference", params, steps=steps, state_dtype=state_dtype, seed=7, **kwargs)
    pb, ob = run(config, "triton", params, steps=steps, state_dtype=state_dtype, seed=7, **kwargs)
    assert any(v.dtype == torch.uint8 for v in ob.state[pb[-1]].values())  # the 8-bit kernel ran
    assert_8bit_close(oa, ob, pa, pb, dtype)


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_every_config_matches_reference(config):
    _compare(config, spec())


# (block_size, code_book, config): the other block sizes, each with a PN config (two momentum buffers
# whose roles alternate) and a second-moment one, and the linear book (256 with every config above).
BLOCKS = [(16, "dynamic", "adapnm"), (16, "linear", "demon_sgd_nesterov"), (64, "dynamic", "demon_adamw_ams"),
          (64, "linear", "pnm_l2_demon"), (256, "linear", "adapnm"), (2048, "dynamic", "pnm"),
          (2048, "linear", "demon_adamw_ams")]


@pytest.mark.parametrize("block_size,code_book,config", BLOCKS)
def test_block_sizes_and_code_books(block_size, code_book, config):
    _compare(config, spec(block_size, code_book), steps=10)


@pytest.mark.parametrize("launch_block,block_size", [("64", 256), ("512", 16)])
def test_programs_hold_whole_blocks(launch_block, block_size, monkeypatch):
    # A launch block smaller than a quantization block (64 < 256) grows to it; a larger one (512)
    # holds several blocks. Tensors of many tiles, a short last block and a one-element tail.
    monkeypatch.setenv("NOISEFUSE_TRITON_BLOCK", launch_block)
    _compare("demon_adamw_ams", spec(block_size), sizes=(0, 1, 600, 1024, 257), steps=6)


@pytest.mark.parametrize("config,stochastic_rounding", [("adapnm", False), ("adapnm", True),
                                                        ("demon_sgd_nesterov", True), ("pnm_l2_demon", False)])
def test_bfloat16_params(config, stochastic_rounding):
    _compare(config, spec(64), dtype=torch.bfloat16, sizes=ALL_8BIT if stochastic_rounding else SIZES, steps=12,
             stochastic_rounding=stochastic_rounding)


@pytest.mark.parametrize("config,code_book", [("adapnm", "dynamic"), ("demon_adamw_ams", "linear"),
                                              ("pnm", "dynamic"), ("demon_sgd_nesterov", "linear")])
def test_zero_gradients_give_bit_identical_codes_and_scales(config, code_book, monkeypatch):
    """After real steps (non-trivial codes and scales), steps with zero gradients and no weight decay:
    the float32 update is then m * a and v * beta2 (and a maximum), one rounding each, the same on
    every backend; dequantization, the square root and quantization are correctly rounded products
    and comparisons. The Triton optimizer starts from copies of the reference's state (the same
    starting codes, scales and counters); PN's buffers swap roles between the zero-gradient steps.
    The reference quantizes with a correctly rounded square root, as the kernel does."""
    state_dtype = spec(64, code_book)
    params = make_params(SIZES)
    pa, oa = run(config, "reference", params, steps=5, state_dtype=state_dtype)
    pb = [p.detach().clone().requires_grad_() for p in pa]
    ob = CONFIGS[config](pb, backend="triton", state_dtype=state_dtype)
    for group in (*oa.param_groups, *ob.param_groups):
        group["weight_decay"] = 0.0
    for a, b in zip(pa, pb):
        ob.state[b] = {key: value.clone() for key, value in oa.state[a].items()}
    assert_8bit_equal(oa, ob, pa, pb)
    for _ in range(4):
        for p in (*pa, *pb):
            p.grad = torch.zeros_like(p)
        oa.step()
        ob.step()
        assert_8bit_equal(oa, ob, pa, pb)
    for a, b in zip(pa, pb):
        torch.testing.assert_close(a.detach(), b.detach(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("config", ["demon_adamw_ams", "pnm"])
def test_nan_gradient_element(config):
    """A NaN gradient element: its own codes become those of 0 (the signed book's 0, the unsigned
    book's code 0; the amsgrad maximum is NaN too, as torch.maximum gives it), its block's scales
    are the largest finite magnitudes, and no other element is touched."""
    state_dtype = spec(64)
    params = make_params((200, 1023))
    results = []
    for backend in ("reference", "triton"):
        ps = [p.detach().clone().requires_grad_() for p in params]
        opt = CONFIGS[config](ps, backend=backend, state_dtype=state_dtype)
        for step in range(3):
            grads = make_grads(ps, step)
            if step == 2:
                grads[1][70] = float("nan")
            for p, g in zip(ps, grads):
                p.grad = g
            opt.step()
        results.append((ps, opt))
    (pa, oa), (pb, ob) = results
    assert_8bit_close(oa, ob, pa, pb, torch.float32)
    state = ob.state[pb[1]]
    assert torch.isnan(pb[1][70]) and int(torch.isnan(pb[1]).sum()) == 1
    # Written at step 3 (odd): every buffer but PN's negative one, whose codes are read only.
    written = {field: key for field, key in ob._state_keys(ob.param_groups[0]).items() if field != "neg_exp_avgs"}
    for field, key in written.items():
        assert state[key][70].item() == zero_code(state_dtype, signed=field in SIGNED_FIELDS), key
        scales = state[key + SCALES_SUFFIX]
        assert torch.isfinite(scales).all() and scales[1] > 0, key  # element 70 is in block 1


@pytest.mark.parametrize("config", ["demon_adamw_ams", "pnm_l2_demon"])
def test_isotropic_noise(config, monkeypatch):
    monkeypatch.setenv("NOISEFUSE_TRITON_BLOCK", "64")
    params = make_params((1, 70, 129))
    pa, oa = noisy_run(config, "reference", "isotropic", params, steps=6, state_dtype=spec(16))
    pb, ob = noisy_run(config, "triton", "isotropic", params, steps=6, state_dtype=spec(16))
    assert any(v.dtype == torch.uint8 for v in ob.state[pb[-1]].values())
    assert_8bit_close(oa, ob, pa, pb, torch.float32)


def test_row_noise(monkeypatch):
    # A noise that reads the per-sample rows (the element kernel's other gradient path).
    monkeypatch.setenv("NOISEFUSE_TRITON_BLOCK", "64")
    params = make_params((1, 70, 129))
    pa, oa = noisy_run("adapnm", "reference", "diag_fisher", params, steps=4, state_dtype=spec(16))
    pb, ob = noisy_run("adapnm", "triton", "diag_fisher", params, steps=4, state_dtype=spec(16))
    assert_8bit_close(oa, ob, pa, pb, torch.float32)


def _amp_run(backend, params, found_inf_at, scale=1024.0):
    """Steps with grads multiplied by ``scale`` and the optimizer told to unscale them (as GradScaler
    does), found_inf set at step ``found_inf_at``, and the lr a float32 tensor the kernel reads."""
    ps = [p.detach().clone().requires_grad_() for p in params]
    opt = CONFIGS["demon_adamw_ams"](ps, backend=backend, state_dtype=spec(64))
    for group in opt.param_groups:
        group["lr"] = torch.tensor(group["lr"], dtype=torch.float32)
    for step in range(4):
        for p, g in zip(ps, make_grads(ps, step)):
            p.grad = g * scale
        opt.grad_scale = torch.tensor([scale])
        opt.found_inf = torch.tensor([1.0 if step == found_inf_at else 0.0])
        opt.step()
    return ps, opt


def test_amp_grad_scale_found_inf_and_lr_tensor():
    params = make_params((1, 300, 1023))
    pa, oa = _amp_run("reference", params, found_inf_at=2)
    pb, ob = _amp_run("triton", params, found_inf_at=2)
    assert_8bit_close(oa, ob, pa, pb, torch.float32)
    assert ob.state[pb[0]]["step"].item() == 3


def test_found_inf_changes_nothing_bit_for_bit():
    ps = [p.detach().clone().requires_grad_() for p in make_params((300, 1023))]
    opt = CONFIGS["adapnm"](ps, backend="triton", state_dtype=spec(64))
    for step in range(2):
        for p, g in zip(ps, make_grads(ps, step)):
            p.grad = g
        opt.step()
    before = [(p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()}) for p in ps]
    opt.grad_scale, opt.found_inf = torch.tensor([2.0]), torch.tensor([1.0])
    opt.step()
    for p, (p0, state0) in zip(ps, before):
        assert torch.equal(p.detach(), p0)
        assert opt.state[p].keys() == state0.keys()
        for key, value in state0.items():
            assert torch.equal(opt.state[p][key], value), key


def test_codes_decode_to_the_reference_values():
    # The codes mean what they mean to the reference: decoded with its decode, the Triton state is
    # the reference's float32 state to a code step (a sanity check of the layout: rows, blocks, books).
    state_dtype = spec(256, "linear")
    params = make_params((4097,))
    pa, oa = run("demon_adamw_ams", "reference", params, steps=6, state_dtype=state_dtype)
    pb, ob = run("demon_adamw_ams", "triton", params, steps=6, state_dtype=state_dtype)
    for field, key in oa._state_keys(oa.param_groups[0]).items():
        a = decode(oa.state[pa[0]][key], oa.state[pa[0]][key + SCALES_SUFFIX], state_dtype, field)
        b = decode(ob.state[pb[0]][key], ob.state[pb[0]][key + SCALES_SUFFIX], state_dtype, field)
        assert torch.count_nonzero(a) > 0.9 * a.numel()
        torch.testing.assert_close(a, b, atol=0, rtol=1e-5)


def test_bad_8bit_arguments_are_refused_before_any_launch():
    ps = make_params((40,))
    codes = [torch.full((40,), 127, dtype=torch.uint8)]
    steps = [torch.zeros((), dtype=torch.float64)]
    kwargs = dict(momentum=1, lr=0.1, beta1=0.9, beta2=0.0, beta0=0.0, eps=0.0, weight_decay=0.0, decoupled=True,
                  nesterov=False, maximize=False, demon_total_steps=0, demon_delay=0.0)
    books = maps.tables("dynamic")
    good = dict(state_scales=[torch.zeros(3)], code_books=books, block_size=16)
    for bad, match in ((dict(block_size=24), "power of two"), (dict(block_size=0), "uint8"),
                       (dict(state_scales=[]), "state_scales"), (dict(code_books=books[:2]), "code_books"),
                       (dict(state_scales=[torch.zeros(2)]), "scales"),
                       (dict(stochastic_state_rounding=True, offsets=[0]), "stochastic_state_rounding")):
        with pytest.raises(RuntimeError, match=match):
            launch.fused_step(ps, make_grads(ps, 0), codes, [], [], [], steps, [], **kwargs, **{**good, **bad})
    with pytest.raises(RuntimeError, match="uint8"):
        launch.fused_step(ps, make_grads(ps, 0), [torch.zeros(40)], [], [], [], steps, [], **kwargs, **good)
    assert steps[0].item() == 0 and torch.equal(codes[0], torch.full((40,), 127, dtype=torch.uint8))


# ----- compiled for Hopper, without a GPU (as tests/test_triton_ptx.py compiles the other variants) ---------
_POINTER_TYPES = {"ptrs": "*i64", "numels": "*i64", "block_tensor": "*i64", "block_chunk": "*i64",
                  "scale_ptrs": "*i64", "scalars": "*fp64", "grad_scale_ptr": "*fp32", "found_inf_ptr": "*fp32",
                  "weights_ptr": "*fp32", "books_ptr": "*fp32"}
_INTEGERS = {"batch", "seed_lo", "seed_hi"}


def _hopper_ptx(constants, num_warps):
    """PTX of ``update_8bit_kernel`` for sm_90 through Triton's real compiler (no GPU needed)."""
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError:
        pytest.skip("this Triton cannot compile for a target without a GPU")
    if launch._is_interpreted(kernels):
        pytest.skip("noisefuse was imported with TRITON_INTERPRET=1: its kernels are interpreted")
    fn = kernels.update_8bit_kernel
    signature, constexprs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constants:
            signature[name], constexprs[(i,)] = "constexpr", constants[name]
        else:
            signature[name] = _POINTER_TYPES.get(name, "i32" if name in _INTEGERS else "fp32")
    try:
        source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    except TypeError as exc:  # the ahead-of-time API differs between Triton releases
        pytest.skip(f"ASTSource of this Triton takes other arguments: {exc}")
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps}).asm["ptx"]


def _compared_products(ptx):
    """For every float32 ``<`` of the PTX, the instructions that define its two operands."""
    import re

    defined_by = {m.group(2): m.group(1) for m in re.finditer(r"^\s*([a-z][\w.]*)\s+(%r\d+),", ptx, re.M)}
    compares = re.findall(r"setp\.lt\.f32\s+%p\d+,\s*(%r\d+),\s*(%r\d+);", ptx)
    return [(defined_by.get(a), defined_by.get(b)) for a, b in compares]


@pytest.mark.parametrize("dtype,noise,round_params", [("float32", 0, False), ("bfloat16", 1, True)])
def test_8bit_kernel_compiles_for_hopper(dtype, noise, round_params):
    """AdaPNM with amsgrad (three buffers written, two momentum buffers read): float32 params, and
    bfloat16 params with isotropic noise and stochastic rounding. Without noise (whose normals use
    approximate log/cos by contract) no approximate square root, division or reciprocal is left; and
    every float32 ``<`` (for each written buffer: the O(1) decision's ``T[g] * s < x`` and the
    search's 8 levels for blocks of extreme scales) takes a plain product, rounded on its own: a
    compare cannot absorb a multiply into an FMA."""
    import triton.language as tl

    constants = dict(DTYPE=getattr(tl, dtype), MOMENTUM=2, SECOND_MOMENT=True, AMSGRAD=True, NESTEROV=False,
                     MAXIMIZE=False, DECOUPLED=True, HAS_GRAD_SCALE=True, HAS_FOUND_INF=True, ALIGNED=True,
                     NOISE=noise, CENTERED=False, ROWS_ALIGNED=False, ROUND_PARAMS=round_params, STATIC_BATCH=0,
                     QUANT_BLOCK=256, BLOCK=4096)
    ptx = _hopper_ptx(constants, num_warps=8)
    assert ".target sm_90" in ptx
    assert "sqrt.rn.f32" in ptx
    if not noise:
        for approximate in ("sqrt.approx", "div.approx", "div.full", "rcp.approx"):
            assert approximate not in ptx, approximate
    compares = _compared_products(ptx)
    assert compares and len(compares) % ((1 + 8) * 3) == 0, len(compares)
    assert all("mul.f32" in (a, b) or "mul.rn.f32" in (a, b) for a, b in compares), set(compares)
    assert not any(op is not None and op.startswith("fma") for pair in compares for op in pair), set(compares)


def test_opcheck():
    # The op's schema declares the scales it writes (Tensor(h!)[]?): checked by running it on copies.
    ps = make_params((3, 40))
    books = maps.tables("linear")
    codes = [torch.full(p.shape, 127, dtype=torch.uint8) for p in ps]
    roots = [torch.zeros(p.shape, dtype=torch.uint8) for p in ps]
    scales = [torch.zeros(-(-p.numel() // 16)) for _ in ("exp_avgs", "exp_avg_sqs") for p in ps]
    args = ([p.detach().clone() for p in ps], make_grads(ps, 0), codes, [], roots, [],
            [torch.zeros((), dtype=torch.float64) for _ in ps], [], [], None, None, None, None, scales, books)
    kwargs = dict(momentum=1, lr=0.01, beta1=0.9, beta2=0.999, beta0=0.0, eps=1e-8, weight_decay=0.01,
                  decoupled=True, nesterov=False, maximize=False, demon_total_steps=0, demon_delay=0.0,
                  offsets=[], block_size=16)
    torch.library.opcheck(torch.ops.noisefuse.triton_fused_step_.default, args, kwargs,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


@pytest.mark.parametrize("code_book", maps.MAPS)
def test_quantize_decides_every_code_as_the_reference(code_book, monkeypatch):
    """``_quantize``'s O(1) decision (state/code_buckets.py) against the reference's count, on values
    where it is hardest: every decision point times the scale and its float32 neighbours, for normal,
    tiny, denormal and huge scales (both ends of [2^-100, 2^126], where the guess alone decides, and
    either side of it, where the search does), blocks of zeros, NaN and infinities; for the three
    decision rows."""
    import triton
    import triton.language as tl

    from noisefuse.state.blockwise import quantize

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    # The interpreted kernels, as a global of this module: the interpreter reads a kernel's globals,
    # not its closure.
    monkeypatch.setitem(globals(), "_INTERPRETED", launch.kernels_for(torch.device("cpu")))
    quant_block, per_program = 256, 1024

    @triton.jit
    def quantize_kernel(x_ptr, codes_ptr, scales_ptr, books_ptr, ROW: tl.constexpr, QUANT_BLOCK: tl.constexpr,
                        BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        codes, scales = _INTERPRETED._quantize(tl.load(x_ptr + offs), None, books_ptr, ROW, QUANT_BLOCK, BLOCK)
        tl.store(codes_ptr + offs, codes)
        tl.store(scales_ptr + tl.program_id(0) * (BLOCK // QUANT_BLOCK) + tl.arange(0, BLOCK // QUANT_BLOCK), scales)

    books = maps.tables(code_book, torch.device("cpu"))
    table = launch._decision_table(books)
    gen = torch.Generator().manual_seed(0)
    rows = {maps.SIGNED_MIDPOINTS: dict(signed=True), maps.UNSIGNED_MIDPOINTS: dict(signed=False),
            maps.UNSIGNED_VALUES: dict(signed=False, round_up=True)}
    for row, kind in rows.items():
        blocks = []
        for scale in (1.0, 0.3712, 7.3e-12, 2.0 ** -100, 2.0 ** 126, 2.0 ** -130, 1.2e-38, 3.0e38):
            s = torch.tensor(scale, dtype=torch.float32)
            products = books[row, :255] * s
            candidates = torch.cat([products, torch.nextafter(products, torch.tensor(float("inf"))),
                                    torch.nextafter(products, torch.tensor(-float("inf"))),
                                    (torch.rand(400, generator=gen) * 2 - 1) * s])
            if not kind["signed"]:
                candidates = candidates.abs()
            candidates = candidates[candidates.abs() <= s]
            for piece in candidates.split(quant_block - 1):  # each block holds s itself: its scale is s
                blocks.append(torch.cat([s.reshape(1), piece, torch.zeros(quant_block - 1 - piece.numel())]))
        special = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.5, -0.25, 0.0])
        blocks.append(torch.cat([special, torch.zeros(quant_block - special.numel())]))  # scale 0.5
        blocks.append(torch.zeros(quant_block))  # scale 0
        blocks.append(torch.full((quant_block,), float("nan")))  # scale 0
        while len(blocks) % (per_program // quant_block):
            blocks.append(torch.zeros(quant_block))
        x = torch.cat(blocks)
        codes = torch.empty(x.numel(), dtype=torch.uint8)
        scales = torch.empty(x.numel() // quant_block)
        quantize_kernel[(x.numel() // per_program,)](x, codes, scales, table, ROW=row, QUANT_BLOCK=quant_block,
                                                     BLOCK=per_program)
        want_codes, want_scales = quantize(x, spec(quant_block, code_book), **kind)
        assert torch.equal(scales, want_scales), row
        wrong = (codes != want_codes).nonzero().flatten()
        assert wrong.numel() == 0, (row, x[wrong[:5]], codes[wrong[:5]], want_codes[wrong[:5]])
