"""The Triton kernels of the fused step (docs/kernel-contract.md), two launches per (device, dtype)
group:

1. ``scalars_kernel`` (one lane per tensor): reads each tensor's step counter (and Demon's running
   product), computes that tensor's coefficients in float64 exactly as
   ``noisefuse.backends.family.tensor_scalars`` does, stores them in a small float64 table and
   advances the counters.
2. ``update_kernel`` (one program per block of ``BLOCK`` elements of one tensor, found through the
   block map): reads the coefficients of its tensor and applies the per-element update.
   ``update_8bit_kernel`` is the same update on 8-bit blockwise state (docs/kernel-contract.md,
   "8-bit blockwise state"): its state buffers are uint8 codes with one float32 scale per
   ``QUANT_BLOCK`` elements, dequantized on load and quantized again on store. A separate kernel, so
   that the float and bfloat16-state kernels compile exactly as they did.

The counters are advanced in the first launch, before any block reads them, and every block reads
the coefficients of the *old* counter from the table: launches on one stream are ordered, so no block
can see a half-advanced counter (the race a single launch would have, where the block that advances
a counter cannot know when the other blocks of its tensor have read it).

Storage dtypes (the params' ``DTYPE`` and the state's ``STATE_DTYPE``: the same, float32 state
for bfloat16/float16 params, or bfloat16 state for float32 params), stochastic rounding (of the
params, ``ROUND_PARAMS``, and of bfloat16 state, ``ROUND_STATE``) and algorithm flags are
``tl.constexpr``; every
value that changes during training (lr, betas, the Demon schedule, the counters, the AMP scale, the
seed) is a runtime scalar or is read from a device tensor, so changing it never compiles a kernel. Python floats reach a Triton kernel as float32,
so each double-precision hyperparameter travels as a pair ``(hi, lo)`` of float32 numbers with
``hi + lo`` equal to it within 2^-48 relative (``_f64``).

The gradient itself (AMP, ``maximize``, gradient noise, L2 decay) is formed by ``grad.form_grad``.

This file is loaded twice when the interpreter is used on CPU tensors (see ``launch.kernels_for``),
so it holds kernels only and no state.
"""
import triton
import triton.language as tl

from ...random.philox import TAG_ROUNDING
from ...state import code_buckets, maps
from ...random.philox_triton import rounding_word
from .grad import form_grad

# Table layouts and flag codes, shared with the host code (which reads ``.value``). Globals a
# Triton kernel reads must be constexpr objects.
# Columns of the pointer table (one int64 row per tensor): data pointers, then the tensor's global
# element offset for the noise (a number, not a pointer).
(COL_PARAM, COL_GRAD, COL_EXP_AVG, COL_NEG_EXP_AVG, COL_EXP_AVG_SQ, COL_MAX_EXP_AVG_SQ, COL_STEP,
 COL_PROD, COL_GRAD_SAMPLE, COL_OFFSET) = (tl.constexpr(i) for i in range(10))
N_COLS = tl.constexpr(10)
# Columns of the per-tensor coefficient table (float64); SC_T is the step t after the increment,
# SC_DECAY the decoupled decay factor 1 - lr * weight_decay (the lr may be read from a tensor).
SC_A, SC_B, SC_BETA1, SC_STEP_SIZE, SC_INV_SQRT_BC2, SC_ODD, SC_T, SC_DECAY = (tl.constexpr(i) for i in range(8))
N_SCALARS = tl.constexpr(8)  # 64-byte rows
# Columns of the 8-bit scales table (one int64 row per tensor): the data pointers of the float32
# scales of exp_avg, neg_exp_avg, exp_avg_sq and max_exp_avg_sq (0 where unused).
SCOL_EXP_AVG, SCOL_NEG_EXP_AVG, SCOL_EXP_AVG_SQ, SCOL_MAX_EXP_AVG_SQ = (tl.constexpr(i) for i in range(4))
N_SCALE_COLS = tl.constexpr(4)
# Rows of the [4, 256] code-book table (maps.tables).
# The O(1) code decision's table, after the books in the same tensor (state/code_buckets.py).
BUCKET_MANTISSA_BITS = tl.constexpr(code_buckets.MANTISSA_BITS)
BUCKET_BIAS = tl.constexpr(code_buckets.BUCKET_BIAS)
BUCKETS_PER_SIGN = tl.constexpr(code_buckets.BUCKETS_PER_SIGN)
PADDED_POINTS = tl.constexpr(code_buckets.PADDED_POINTS)
PADDED_BASE = tl.constexpr(code_buckets.PADDED_BASE)
BUCKETS_BASE = tl.constexpr(code_buckets.BUCKETS_BASE)
GUESS_MIN_SCALE = tl.constexpr(code_buckets.GUESS_MIN_SCALE)
GUESS_MAX_SCALE = tl.constexpr(code_buckets.GUESS_MAX_SCALE)
BOOK_SIGNED_VALUES = tl.constexpr(maps.SIGNED_VALUES)
BOOK_SIGNED_MIDPOINTS = tl.constexpr(maps.SIGNED_MIDPOINTS)
BOOK_UNSIGNED_VALUES = tl.constexpr(maps.UNSIGNED_VALUES)
BOOK_UNSIGNED_MIDPOINTS = tl.constexpr(maps.UNSIGNED_MIDPOINTS)
NUM_CODES = tl.constexpr(maps.NUM_CODES)
INF = tl.constexpr(float("inf"))
# family.MOMENTUM_CODES
MOMENTUM_HEAVY_BALL, MOMENTUM_EMA, MOMENTUM_PN = (tl.constexpr(i) for i in range(3))
TAG_ROUNDING_C = tl.constexpr(TAG_ROUNDING)  # rounding word 0; word 1 under TAG_ROUNDING + 1
TAG_ROUNDING_1_C = tl.constexpr(TAG_ROUNDING + 1)


@triton.jit
def _f64(hi, lo):
    """The double ``hi + lo`` carried by two float32 kernel arguments."""
    return tl.cast(hi, tl.float64) + tl.cast(lo, tl.float64)


@triton.jit
def _max_combine(a, b):
    return tl.maximum(a, b)


@triton.jit
def _powi(base, e):
    """``base ** e`` for float64 ``base`` and int64 ``e >= 0``, lane-wise, by repeated squaring
    (exact for 0 ** e, a few ulps otherwise; no transcendental functions)."""
    acc = base * 0.0 + 1.0
    b = base
    # As many squarings as the largest exponent has bits; the loop runs on a scalar. tl.reduce with
    # our own combiner, not tl.max: Triton's library functions are compiled or interpreted once,
    # when triton is imported, and the interpreted copy of this file needs both.
    remaining = tl.reduce(e, 0, _max_combine)
    while remaining > 0:
        acc = tl.where((e & 1) == 1, acc * b, acc)
        b = b * b
        e = e >> 1
        remaining = remaining >> 1
    return acc


@triton.jit
def _to_storage(x, DTYPE: tl.constexpr):
    """``x`` rounded to nearest-even in ``DTYPE``, as torch rounds on a copy. float32 -> bfloat16 is
    done on the bits: one code path for every GPU and for the interpreter, whose own bfloat16
    conversion truncates; a few integer operations per element are free in a memory-bound kernel."""
    if DTYPE == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = tl.where(x != x, 0x7FC0, rounded)  # keep NaN a NaN (its carry could reach the sign)
        return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(DTYPE)


@triton.jit
def _to_bf16_stochastic(x, r):
    """float32 ``x`` rounded stochastically to bfloat16 with the 16-bit draws ``r`` (uint32):
    ``(bits(x) + r) >> 16``, and NaN/inf as rounding to nearest gives them (the add must not carry
    into or out of them; ``noisefuse.random.rounding`` has the derivation)."""
    bits = x.to(tl.uint32, bitcast=True)
    rounded = (bits + r) >> 16
    special = (bits & 0x7F800000) == 0x7F800000
    rounded = tl.where(special, tl.where(x != x, 0x7FC0, bits >> 16), rounded)
    return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _state_out(x, r, STATE_DTYPE: tl.constexpr, ROUND_STATE: tl.constexpr):
    """A state value as stored: stochastically with its bits ``r`` (bfloat16 state, ``ROUND_STATE``),
    else to nearest."""
    if ROUND_STATE:
        return _to_bf16_stochastic(x, r)
    else:
        return _to_storage(x, STATE_DTYPE)


@triton.jit
def _dequantize(codes_ptr, scales_ptr, books_ptr, offs, mask, ROOT: tl.constexpr, QUANT_BLOCK: tl.constexpr):
    """float32 values of 8-bit state at ``offs``: ``S[c] * s`` (momentum), or ``(U[c] * s)^2``
    (``ROOT``: a second moment, stored as its square root), ``s`` the scale of the element's block.
    A product, then its square: never contracted with what the update adds to it."""
    codes = tl.load(codes_ptr + offs, mask=mask).to(tl.int32)
    scale = tl.load(scales_ptr + offs // QUANT_BLOCK, mask=mask)
    if ROOT:
        root = tl.load(books_ptr + BOOK_UNSIGNED_VALUES * NUM_CODES + codes) * scale
        return root * root
    else:
        return tl.load(books_ptr + BOOK_SIGNED_VALUES * NUM_CODES + codes) * scale


@triton.jit
def _quantize(x, mask, books_ptr, ROW: tl.constexpr, QUANT_BLOCK: tl.constexpr, BLOCK: tl.constexpr):
    r"""(uint8 codes [BLOCK], float32 scales [BLOCK // QUANT_BLOCK]) of float32 ``x``, whole blocks
    of ``QUANT_BLOCK`` elements (``mask`` None for a full tile, else the elements that exist):

    .. math:: s = \max_{x_j \text{ finite}} |x_j| \ (0 \text{ if none}),\qquad
              c = \#\{k < 255 : T_k\, s < x\}\ (x \text{ NaN} \to 0)

    with ``T`` the code-book row ``ROW`` (decision points, or the unsigned values to round up). The
    count is a branchless binary search over the sorted products ``T_k s`` (``s >= 0``): products and
    comparisons only, no division, so every backend gets the same codes from the same ``x``."""
    magnitude = tl.abs(x)
    magnitude = tl.where(magnitude < INF, magnitude, 0.0)  # NaN and +-inf never set a scale
    if mask is not None:
        magnitude = tl.where(mask, magnitude, 0.0)
    # A maximum, so any reduction order gives the same scale. tl.max cannot run in the interpreted
    # copy of this file (see _powi), and a combiner of ours runs there one element at a time; the
    # combiner tl.max reduces with is one the interpreter recognises and reduces with NumPy.
    scales = tl.reduce(tl.reshape(magnitude, [BLOCK // QUANT_BLOCK, QUANT_BLOCK]), 1, tl.standard._elementwise_max)
    scale = tl.reshape(tl.broadcast_to(tl.expand_dims(scales, 1), [BLOCK // QUANT_BLOCK, QUANT_BLOCK]), [BLOCK])
    x = tl.where(x != x, 0.0, x)
    # The count in O(1) (state/code_buckets.py): the bucket of x / s guesses it, one exact compare
    # against a product decides the one point the bucket may hold. The ratio need only be close: it
    # picks the bucket. Correctly rounded (no approximate division in the kernel,
    # tests/test_triton_8bit.py), once a block.
    inverses = tl.div_rn(tl.full([BLOCK // QUANT_BLOCK], 1.0, tl.float32), scales)
    inverse = tl.reshape(tl.broadcast_to(tl.expand_dims(inverses, 1), [BLOCK // QUANT_BLOCK, QUANT_BLOCK]), [BLOCK])
    bits = (x * inverse).to(tl.int32, bitcast=True)
    bucket = ((bits & 0x7FFFFFFF) >> (23 - BUCKET_MANTISSA_BITS)) - BUCKET_BIAS
    bucket = tl.minimum(tl.maximum(bucket, 0), BUCKETS_PER_SIGN - 1) + tl.where(bits < 0, BUCKETS_PER_SIGN, 0)
    g = tl.load(books_ptr + BUCKETS_BASE + ROW * (2 * BUCKETS_PER_SIGN) + bucket).to(tl.int32)
    points = books_ptr + PADDED_BASE + ROW * PADDED_POINTS  # [NaN, T_0 .. T_254, +inf ...]: T_k at k + 1
    codes = tl.where(tl.load(points + g + 1) * scale < x, g + 1, g)
    # The guess is the count at scales in [2^-100, 2^126]; blocks of any other scale (denormal
    # ones, 0: rare) take the contract's search. tl.reduce, as for the scales.
    other_scale = (scale < GUESS_MIN_SCALE) | (scale > GUESS_MAX_SCALE)
    if mask is not None:
        other_scale = other_scale & mask
    if tl.reduce(other_scale.to(tl.int32), 0, tl.standard._elementwise_max) > 0:
        searched = tl.full([BLOCK], 0, tl.int32)
        for level in tl.static_range(8):
            width = 128 >> level
            point = tl.load(books_ptr + ROW * NUM_CODES + searched + (width - 1))
            searched = tl.where(point * scale < x, searched + width, searched)
        codes = tl.where(other_scale, searched, codes)
    return codes.to(tl.uint8), scales


@triton.jit
def _load_state(ptr, scales_ptr, books_ptr, offs, mask, ROOT: tl.constexpr, COMPUTE: tl.constexpr,
                QUANT_BLOCK: tl.constexpr):
    """A state buffer's values at ``offs`` in ``COMPUTE``: as stored, or decoded from 8-bit codes
    (``QUANT_BLOCK > 0``; ``ROOT`` for the second moments)."""
    if QUANT_BLOCK > 0:
        return _dequantize(ptr, scales_ptr, books_ptr, offs, mask, ROOT, QUANT_BLOCK)
    else:
        return tl.load(ptr + offs, mask=mask).to(COMPUTE)


@triton.jit
def _store_state(ptr, scales_ptr, books_ptr, x, r, offs, mask, start, numel, ROW: tl.constexpr,
                 ROOT: tl.constexpr, STATE_DTYPE: tl.constexpr, ROUND_STATE: tl.constexpr,
                 QUANT_BLOCK: tl.constexpr, BLOCK: tl.constexpr):
    """Stores a state buffer's new values ``x``: as ``_state_out`` rounds them, or as 8-bit codes
    and scales (``QUANT_BLOCK > 0``) of ``x``, or of ``sqrt_rn(x)`` for a second moment (``ROOT``),
    against code-book row ``ROW``. ``start`` is the tile's first element (a whole number of blocks)."""
    if QUANT_BLOCK > 0:
        if ROOT:
            x = tl.sqrt_rn(x)  # correctly rounded (the contract's sqrt_rn): the codes depend on its bits
        codes, scales = _quantize(x, mask, books_ptr, ROW, QUANT_BLOCK, BLOCK)
        tl.store(ptr + offs, codes, mask=mask)
        blocks = start // QUANT_BLOCK + tl.arange(0, BLOCK // QUANT_BLOCK)
        if mask is None:
            tl.store(scales_ptr + blocks, scales)
        else:
            tl.store(scales_ptr + blocks, scales, mask=blocks * QUANT_BLOCK < numel)
    else:
        tl.store(ptr + offs, _state_out(x, r, STATE_DTYPE, ROUND_STATE), mask=mask)


@triton.jit(do_not_specialize=["n_tensors"])
def scalars_kernel(ptrs, n_tensors, scalars, found_inf_ptr, lr_ptr,
                   lr_hi, lr_lo, wd_hi, wd_lo, beta1_hi, beta1_lo, beta2_hi, beta2_lo,
                   demon_start_hi, demon_start_lo, demon_len_hi, demon_len_lo,
                   MOMENTUM: tl.constexpr, SECOND_MOMENT: tl.constexpr, DEMON: tl.constexpr,
                   TRACK_PROD: tl.constexpr, HAS_FOUND_INF: tl.constexpr, LR_TENSOR: tl.constexpr,
                   BLOCK_T: tl.constexpr):
    r"""Per-tensor coefficients at :math:`t = \text{step} + 1`, and the counters advanced.

    With :math:`s = t - 1`, Demon start :math:`D` and length :math:`T - D`:
    :math:`\beta_{1,t} = \beta_1` if :math:`s < D`, else
    :math:`\beta_1 f / ((1 - \beta_1) + \beta_1 f)` with :math:`f = \max(0, 1 - (s - D)/(T - D))`.
    :math:`(a, b) = (\beta_{1,t}^2, 1 - \beta_{1,t}^2)` (pn), :math:`(\beta_{1,t}, 1)` (heavy ball),
    :math:`(\beta_{1,t}, 1 - \beta_{1,t})` (ema). With a second moment, step size
    :math:`\gamma / (1 - \pi_t)` where :math:`\pi_t = \pi_{t-1}\beta_{1,t}` (Demon, stored back) or
    :math:`\beta_1^t`, and :math:`1/\sqrt{1 - \beta_2^t}`; otherwise :math:`\gamma` and 1. The decoupled
    decay factor :math:`1 - \gamma\lambda`. The lr :math:`\gamma` is the float32 at ``lr_ptr`` with
    ``LR_TENSOR`` (read on the device: an LR schedule that writes it reaches a captured graph), else
    the argument. A nonzero ``found_inf`` leaves everything, counters included, untouched.
    """
    i = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    mask = i < n_tensors
    if HAS_FOUND_INF:
        # Loaded per lane (one address): the interpreter cannot `&` a scalar into a block mask.
        mask = mask & (tl.load(found_inf_ptr + i * 0) == 0)
    # The counters are float64 0-d tensors (exact for any step count and Demon product).
    step_ptr = tl.load(ptrs + i * N_COLS + COL_STEP, mask=mask, other=0).to(tl.pointer_type(tl.float64))
    step = tl.load(step_ptr, mask=mask, other=0.0)
    t_int = step.to(tl.int64) + 1
    t = t_int.to(tl.float64)

    if LR_TENSOR:
        lr = tl.load(lr_ptr + i * 0).to(tl.float64)
    else:
        lr = t * 0.0 + _f64(lr_hi, lr_lo)
    beta1 = _f64(beta1_hi, beta1_lo)
    beta1_t = t * 0.0 + beta1
    if DEMON:
        start = _f64(demon_start_hi, demon_start_lo)
        length = _f64(demon_len_hi, demon_len_lo)
        s = t - 1.0
        frac = tl.maximum(1.0 - (s - start) / length, 0.0)
        decayed = beta1 * frac / ((1.0 - beta1) + beta1 * frac)
        beta1_t = tl.where(s < start, beta1_t, decayed)

    if MOMENTUM == MOMENTUM_PN:
        a = beta1_t * beta1_t
        b = 1.0 - a
    elif MOMENTUM == MOMENTUM_HEAVY_BALL:
        a = beta1_t
        b = t * 0.0 + 1.0
    else:
        a = beta1_t
        b = 1.0 - beta1_t

    step_size = lr
    inv_sqrt_bc2 = t * 0.0 + 1.0
    if SECOND_MOMENT:
        if TRACK_PROD:
            prod_ptr = tl.load(ptrs + i * N_COLS + COL_PROD, mask=mask, other=0).to(tl.pointer_type(tl.float64))
            new_prod = tl.load(prod_ptr, mask=mask, other=0.0) * beta1_t
            bc1 = 1.0 - new_prod
            tl.store(prod_ptr, new_prod, mask=mask)
        else:
            bc1 = 1.0 - _powi(t * 0.0 + beta1, t_int)
        beta2 = _f64(beta2_hi, beta2_lo)
        step_size = lr / bc1
        inv_sqrt_bc2 = 1.0 / tl.sqrt(1.0 - _powi(t * 0.0 + beta2, t_int))

    row = scalars + i * N_SCALARS
    tl.store(row + SC_A, a, mask=mask)
    tl.store(row + SC_B, b, mask=mask)
    tl.store(row + SC_BETA1, beta1_t, mask=mask)
    tl.store(row + SC_STEP_SIZE, step_size, mask=mask)
    tl.store(row + SC_INV_SQRT_BC2, inv_sqrt_bc2, mask=mask)
    tl.store(row + SC_ODD, (t_int % 2).to(tl.float64), mask=mask)
    tl.store(row + SC_T, t, mask=mask)
    tl.store(row + SC_DECAY, 1.0 - lr * _f64(wd_hi, wd_lo), mask=mask)
    tl.store(step_ptr, t, mask=mask)


@triton.jit
def _pointers(row, sc, DTYPE: tl.constexpr, STATE_DTYPE: tl.constexpr, MOMENTUM: tl.constexpr,
              ALIGNED: tl.constexpr):
    """Typed pointers of one table row: param, grad, positive and negative momentum, v, vmax,
    grad_sample (unused ones are 0 or point at the param, and are never dereferenced). The four
    state pointers are of ``STATE_DTYPE``, the others of ``DTYPE``."""
    ty = tl.pointer_type(DTYPE)
    state_ty = tl.pointer_type(STATE_DTYPE)
    p_addr = tl.load(row + COL_PARAM)
    first = tl.load(row + COL_EXP_AVG)
    pos, neg = first, p_addr
    if MOMENTUM == MOMENTUM_PN:  # the two buffers alternate roles with the parity of t
        second = tl.load(row + COL_NEG_EXP_AVG)
        odd = tl.load(sc + SC_ODD) != 0.0
        pos = tl.where(odd, first, second)
        neg = tl.where(odd, second, first)
    v = tl.load(row + COL_EXP_AVG_SQ)
    vmax = tl.load(row + COL_MAX_EXP_AVG_SQ)
    p_ptr, g_ptr = p_addr.to(ty), tl.load(row + COL_GRAD).to(ty)
    gs_ptr = tl.load(row + COL_GRAD_SAMPLE).to(ty)
    pos_ptr, neg_ptr, v_ptr, vmax_ptr = pos.to(state_ty), neg.to(state_ty), v.to(state_ty), vmax.to(state_ty)
    if ALIGNED:
        # Every pointer of the group is 16-byte aligned (checked on the host): full tiles can then
        # use 128-bit accesses, which Triton cannot prove for an address read from memory.
        p_ptr, g_ptr = tl.multiple_of(p_ptr, 16), tl.multiple_of(g_ptr, 16)
        pos_ptr, neg_ptr = tl.multiple_of(pos_ptr, 16), tl.multiple_of(neg_ptr, 16)
        v_ptr, vmax_ptr = tl.multiple_of(v_ptr, 16), tl.multiple_of(vmax_ptr, 16)
    return p_ptr, g_ptr, pos_ptr, neg_ptr, v_ptr, vmax_ptr, gs_ptr


@triton.jit
def _scale_pointers(scale_row, sc, MOMENTUM: tl.constexpr):
    """float32 pointers of one 8-bit scales-table row: positive and negative momentum (swapped with
    the parity of t for PN, as ``_pointers`` swaps their codes), v, vmax."""
    first = tl.load(scale_row + SCOL_EXP_AVG)
    pos, neg = first, first
    if MOMENTUM == MOMENTUM_PN:
        second = tl.load(scale_row + SCOL_NEG_EXP_AVG)
        odd = tl.load(sc + SC_ODD) != 0.0
        pos = tl.where(odd, first, second)
        neg = tl.where(odd, second, first)
    ty = tl.pointer_type(tl.float32)
    return (pos.to(ty), neg.to(ty), tl.load(scale_row + SCOL_EXP_AVG_SQ).to(ty),
            tl.load(scale_row + SCOL_MAX_EXP_AVG_SQ).to(ty))


@triton.jit
def _update_tile(row, sc, scale_row, books_ptr, start, offs, mask, numel, grad_scale_ptr, weights_ptr, batch,
                 seed_lo, seed_hi, std, scale, weight_decay, beta2, one_minus_beta2, eps, c_pos, c_neg,
                 DTYPE: tl.constexpr, STATE_DTYPE: tl.constexpr, COMPUTE: tl.constexpr, MOMENTUM: tl.constexpr,
                 SECOND_MOMENT: tl.constexpr, AMSGRAD: tl.constexpr, NESTEROV: tl.constexpr,
                 MAXIMIZE: tl.constexpr, DECOUPLED: tl.constexpr, HAS_GRAD_SCALE: tl.constexpr,
                 ALIGNED: tl.constexpr, NOISE: tl.constexpr, CENTERED: tl.constexpr, ROWS_ALIGNED: tl.constexpr,
                 ROUND_PARAMS: tl.constexpr, ROUND_STATE: tl.constexpr, STATIC_BATCH: tl.constexpr,
                 QUANT_BLOCK: tl.constexpr, BLOCK: tl.constexpr):
    """One tile of one tensor, from element ``start``; ``mask`` is None for a full tile (unmasked,
    vectorizable accesses). With ``QUANT_BLOCK > 0`` the state is 8-bit (``scale_row``: the tensor's
    row of the scales table; ``books_ptr``: the code books), else ``scale_row`` and ``books_ptr`` are
    never read."""
    p_ptr, g_ptr, pos_ptr, neg_ptr, v_ptr, vmax_ptr, gs_ptr = _pointers(row, sc, DTYPE, STATE_DTYPE, MOMENTUM,
                                                                        ALIGNED)
    if QUANT_BLOCK > 0:
        pos_s, neg_s, v_s, vmax_s = _scale_pointers(scale_row, sc, MOMENTUM)
    else:
        pos_s, neg_s, v_s, vmax_s = pos_ptr, neg_ptr, v_ptr, vmax_ptr  # never read
    # The counter of the noise and of stochastic rounding: the global element index and the step
    # after this update's increment (unused, and compiled away, without either).
    index = tl.load(row + COL_OFFSET) + offs
    t = tl.load(sc + SC_T).to(tl.int64)
    a = tl.load(sc + SC_A).to(COMPUTE)
    b = tl.load(sc + SC_B).to(COMPUTE)
    step_size = tl.load(sc + SC_STEP_SIZE).to(COMPUTE)

    # The rounding words the stochastic stores read: w0 the momentum and second moment, w1 the param
    # and the amsgrad maximum (16 bits each).
    if ROUND_STATE:
        w0 = rounding_word(seed_lo, seed_hi, t, tl.full(index.shape, TAG_ROUNDING_C, tl.uint32), index)
    else:
        w0 = 0  # unused
    if ROUND_PARAMS or (ROUND_STATE and AMSGRAD):
        w1 = rounding_word(seed_lo, seed_hi, t, tl.full(index.shape, TAG_ROUNDING_1_C, tl.uint32), index)
    else:
        w1 = 0  # unused
    p = tl.load(p_ptr + offs, mask=mask).to(COMPUTE)
    g = form_grad(g_ptr, gs_ptr, numel, offs, mask, p, index, t, grad_scale_ptr, weights_ptr, batch,
                  seed_lo, seed_hi, std, scale, weight_decay, COMPUTE, NOISE, CENTERED, HAS_GRAD_SCALE,
                  MAXIMIZE, DECOUPLED, ROWS_ALIGNED, STATIC_BATCH)
    if DECOUPLED:
        p = p * tl.load(sc + SC_DECAY).to(COMPUTE)
    m = a * _load_state(pos_ptr, pos_s, books_ptr, offs, mask, False, COMPUTE, QUANT_BLOCK) + b * g
    if MOMENTUM == MOMENTUM_PN:
        d = c_pos * m - c_neg * _load_state(neg_ptr, neg_s, books_ptr, offs, mask, False, COMPUTE, QUANT_BLOCK)
    elif NESTEROV:
        d = g + tl.load(sc + SC_BETA1).to(COMPUTE) * m
    else:
        d = m

    if SECOND_MOMENT:
        v = beta2 * _load_state(v_ptr, v_s, books_ptr, offs, mask, True, COMPUTE, QUANT_BLOCK) + one_minus_beta2 * g * g
        vv = v
        if AMSGRAD:
            vmax = _load_state(vmax_ptr, vmax_s, books_ptr, offs, mask, True, COMPUTE, QUANT_BLOCK)
            if QUANT_BLOCK > 0:
                # A NaN maximum, as torch.maximum gives it (and the 8-bit reference quantizes to 0).
                vv = tl.maximum(vmax, v, propagate_nan=tl.PropagateNan.ALL)
            else:
                vv = tl.maximum(vmax, v)
            # 8-bit: rounded up (decided against the values), so the stored maximum never decreases.
            _store_state(vmax_ptr, vmax_s, books_ptr, vv, w1 >> 16, offs, mask, start, numel, BOOK_UNSIGNED_VALUES,
                         True, STATE_DTYPE, ROUND_STATE, QUANT_BLOCK, BLOCK)
        _store_state(v_ptr, v_s, books_ptr, v, w0 >> 16, offs, mask, start, numel, BOOK_UNSIGNED_MIDPOINTS, True,
                     STATE_DTYPE, ROUND_STATE, QUANT_BLOCK, BLOCK)
        inv_sqrt_bc2 = tl.load(sc + SC_INV_SQRT_BC2).to(COMPUTE)
        # IEEE sqrt and division, as torch (Triton's float32 defaults are approximations).
        if COMPUTE == tl.float32:
            p = p - step_size * tl.div_rn(d, tl.sqrt_rn(vv) * inv_sqrt_bc2 + eps)
        else:
            p = p - step_size * (d / (tl.sqrt(vv) * inv_sqrt_bc2 + eps))
    else:
        p = p - step_size * d

    _store_state(pos_ptr, pos_s, books_ptr, m, w0 & 0xFFFF, offs, mask, start, numel, BOOK_SIGNED_MIDPOINTS, False,
                 STATE_DTYPE, ROUND_STATE, QUANT_BLOCK, BLOCK)
    if ROUND_PARAMS:  # bfloat16 params only (the host checks)
        tl.store(p_ptr + offs, _to_bf16_stochastic(p, w1 & 0xFFFF), mask=mask)
    else:
        tl.store(p_ptr + offs, _to_storage(p, DTYPE), mask=mask)


@triton.jit
def _update_block(ptrs, numels, block_tensor, block_chunk, scalars, grad_scale_ptr, found_inf_ptr, weights_ptr,
                  scale_ptrs, books_ptr, wd_hi, wd_lo, beta2_hi, beta2_lo, omb2_hi, omb2_lo, eps_hi, eps_lo,
                  c_pos_hi, c_pos_lo, c_neg_hi, c_neg_lo, batch, seed_lo, seed_hi, std_hi, std_lo,
                  scale_hi, scale_lo,
                  DTYPE: tl.constexpr, STATE_DTYPE: tl.constexpr, COMPUTE: tl.constexpr,
                  MOMENTUM: tl.constexpr, SECOND_MOMENT: tl.constexpr, AMSGRAD: tl.constexpr,
                  NESTEROV: tl.constexpr, MAXIMIZE: tl.constexpr, DECOUPLED: tl.constexpr,
                  HAS_GRAD_SCALE: tl.constexpr, HAS_FOUND_INF: tl.constexpr, ALIGNED: tl.constexpr,
                  NOISE: tl.constexpr, CENTERED: tl.constexpr, ROWS_ALIGNED: tl.constexpr,
                  ROUND_PARAMS: tl.constexpr, ROUND_STATE: tl.constexpr, STATIC_BATCH: tl.constexpr,
                  QUANT_BLOCK: tl.constexpr, BLOCK: tl.constexpr):
    """The body of both update kernels: block ``program_id`` of the block map, full or partial."""
    blk = tl.program_id(0)
    idx = tl.load(block_tensor + blk)
    start = tl.load(block_chunk + blk) * BLOCK
    numel = tl.load(numels + idx)
    offs = start + tl.arange(0, BLOCK)
    ok = True
    if HAS_FOUND_INF:
        ok = tl.load(found_inf_ptr) == 0
    if ok:
        row = ptrs + idx * N_COLS
        sc = scalars + idx * N_SCALARS
        scale_row = scale_ptrs + idx * N_SCALE_COLS
        # Group constants: formed in double from their (hi, lo) pairs, rounded once, as the reference
        # rounds a Python float multiplying a float32 tensor.
        weight_decay = (tl.cast(wd_hi, tl.float64) + tl.cast(wd_lo, tl.float64)).to(COMPUTE)
        beta2 = (tl.cast(beta2_hi, tl.float64) + tl.cast(beta2_lo, tl.float64)).to(COMPUTE)
        one_minus_beta2 = (tl.cast(omb2_hi, tl.float64) + tl.cast(omb2_lo, tl.float64)).to(COMPUTE)
        eps = (tl.cast(eps_hi, tl.float64) + tl.cast(eps_lo, tl.float64)).to(COMPUTE)
        c_pos = (tl.cast(c_pos_hi, tl.float64) + tl.cast(c_pos_lo, tl.float64)).to(COMPUTE)
        c_neg = (tl.cast(c_neg_hi, tl.float64) + tl.cast(c_neg_lo, tl.float64)).to(COMPUTE)
        std = (tl.cast(std_hi, tl.float64) + tl.cast(std_lo, tl.float64)).to(COMPUTE)
        scale = (tl.cast(scale_hi, tl.float64) + tl.cast(scale_lo, tl.float64)).to(COMPUTE)
        if start + BLOCK <= numel:
            _update_tile(row, sc, scale_row, books_ptr, start, offs, None, numel, grad_scale_ptr, weights_ptr, batch,
                         seed_lo, seed_hi, std, scale, weight_decay, beta2, one_minus_beta2, eps, c_pos, c_neg, DTYPE,
                         STATE_DTYPE, COMPUTE, MOMENTUM, SECOND_MOMENT, AMSGRAD, NESTEROV, MAXIMIZE, DECOUPLED,
                         HAS_GRAD_SCALE, ALIGNED, NOISE, CENTERED, ROWS_ALIGNED, ROUND_PARAMS, ROUND_STATE,
                         STATIC_BATCH, QUANT_BLOCK, BLOCK)
        else:
            _update_tile(row, sc, scale_row, books_ptr, start, offs, offs < numel, numel, grad_scale_ptr, weights_ptr,
                         batch, seed_lo, seed_hi, std, scale, weight_decay, beta2, one_minus_beta2, eps, c_pos, c_neg,
                         DTYPE, STATE_DTYPE, COMPUTE, MOMENTUM, SECOND_MOMENT, AMSGRAD, NESTEROV, MAXIMIZE,
                         DECOUPLED, HAS_GRAD_SCALE, ALIGNED, NOISE, CENTERED, ROWS_ALIGNED, ROUND_PARAMS, ROUND_STATE,
                         STATIC_BATCH, QUANT_BLOCK, BLOCK)


@triton.jit(do_not_specialize=["batch", "seed_lo", "seed_hi"])
def update_kernel(ptrs, numels, block_tensor, block_chunk, scalars, grad_scale_ptr, found_inf_ptr, weights_ptr,
                  wd_hi, wd_lo, beta2_hi, beta2_lo, omb2_hi, omb2_lo, eps_hi, eps_lo,
                  c_pos_hi, c_pos_lo, c_neg_hi, c_neg_lo, batch, seed_lo, seed_hi, std_hi, std_lo,
                  scale_hi, scale_lo,
                  DTYPE: tl.constexpr, STATE_DTYPE: tl.constexpr, COMPUTE: tl.constexpr,
                  MOMENTUM: tl.constexpr, SECOND_MOMENT: tl.constexpr, AMSGRAD: tl.constexpr,
                  NESTEROV: tl.constexpr, MAXIMIZE: tl.constexpr, DECOUPLED: tl.constexpr,
                  HAS_GRAD_SCALE: tl.constexpr, HAS_FOUND_INF: tl.constexpr, ALIGNED: tl.constexpr,
                  NOISE: tl.constexpr, CENTERED: tl.constexpr, ROWS_ALIGNED: tl.constexpr,
                  ROUND_PARAMS: tl.constexpr, ROUND_STATE: tl.constexpr, STATIC_BATCH: tl.constexpr,
                  BLOCK: tl.constexpr):
    r"""The per-element update of block ``program_id`` (docs/kernel-contract.md), in ``COMPUTE``
    precision with one rounding on store: state to ``STATE_DTYPE``, the param to ``DTYPE`` (to
    nearest, or stochastically with ``ROUND_PARAMS``/``ROUND_STATE``, from the stream at ``TAG_ROUNDING``):

    .. math::
        m \leftarrow a\,m + b\,g,\quad
        d = c_+ m - c_- m_- \ (\text{pn}) \mid g + \beta_{1,t} m \ (\text{nesterov}) \mid m,\\
        v \leftarrow \beta_2 v + (1 - \beta_2) g^2,\ \hat v = \max(\hat v, v),\quad
        p \leftarrow p - \eta\, d / (\sqrt{\hat v}/\sqrt{1 - \beta_2^t} + \epsilon)
        \ \text{(second moment; else } p \leftarrow p - \gamma d)

    with :math:`p \leftarrow (1 - \gamma\lambda) p` first for decoupled decay, and the per-tensor
    :math:`a, b, \beta_{1,t}, \eta, 1/\sqrt{1 - \beta_2^t}, 1 - \gamma\lambda` read from the
    coefficient table.
    :math:`g` is formed by ``grad.form_grad`` (``NOISE``: ``noisefuse.noise.NOISE_CODES``; ``batch``,
    the seed's 32-bit halves as int32, and ``std``/``scale`` as float32 pairs are runtime values).
    """
    # No 8-bit state: the pointer table stands in for the scales table and the code books, never read.
    _update_block(ptrs, numels, block_tensor, block_chunk, scalars, grad_scale_ptr, found_inf_ptr, weights_ptr,
                  ptrs, scalars, wd_hi, wd_lo, beta2_hi, beta2_lo, omb2_hi, omb2_lo, eps_hi, eps_lo,
                  c_pos_hi, c_pos_lo, c_neg_hi, c_neg_lo, batch, seed_lo, seed_hi, std_hi, std_lo, scale_hi, scale_lo,
                  DTYPE, STATE_DTYPE, COMPUTE, MOMENTUM, SECOND_MOMENT, AMSGRAD, NESTEROV, MAXIMIZE, DECOUPLED,
                  HAS_GRAD_SCALE, HAS_FOUND_INF, ALIGNED, NOISE, CENTERED, ROWS_ALIGNED, ROUND_PARAMS, ROUND_STATE,
                  STATIC_BATCH, 0, BLOCK)


@triton.jit(do_not_specialize=["batch", "seed_lo", "seed_hi"])
def update_8bit_kernel(ptrs, numels, block_tensor, block_chunk, scalars, grad_scale_ptr, found_inf_ptr, weights_ptr,
                       scale_ptrs, books_ptr, wd_hi, wd_lo, beta2_hi, beta2_lo, omb2_hi, omb2_lo, eps_hi, eps_lo,
                       c_pos_hi, c_pos_lo, c_neg_hi, c_neg_lo, batch, seed_lo, seed_hi, std_hi, std_lo,
                       scale_hi, scale_lo,
                       DTYPE: tl.constexpr, MOMENTUM: tl.constexpr, SECOND_MOMENT: tl.constexpr,
                       AMSGRAD: tl.constexpr, NESTEROV: tl.constexpr, MAXIMIZE: tl.constexpr,
                       DECOUPLED: tl.constexpr, HAS_GRAD_SCALE: tl.constexpr, HAS_FOUND_INF: tl.constexpr,
                       ALIGNED: tl.constexpr, NOISE: tl.constexpr, CENTERED: tl.constexpr,
                       ROWS_ALIGNED: tl.constexpr, ROUND_PARAMS: tl.constexpr, STATIC_BATCH: tl.constexpr,
                       QUANT_BLOCK: tl.constexpr, BLOCK: tl.constexpr):
    r"""``update_kernel``'s update on 8-bit blockwise state (float32 or bfloat16 params, float32 math):
    the state buffers are uint8 codes, and ``scale_ptrs`` an int64 ``[n, 4]`` table of the data
    pointers of their float32 scales (one per ``QUANT_BLOCK`` elements of each tensor's own flat
    index); ``books_ptr`` is the float32 ``[4, 256]`` code-book table (``maps.tables``) followed by the
    O(1) code decision's table (``code_buckets.decision_table``). ``BLOCK`` is a
    multiple of ``QUANT_BLOCK`` and every tile starts at a multiple of ``BLOCK``, so a tile holds whole
    quantization blocks (the last one of a tensor may be short) and no block is shared by two
    programs. Per element :math:`j` of a block with scale :math:`s` (docs/kernel-contract.md):

    .. math::
        m = S[c_j]\,s,\quad v = (U[c_j]\,s)^2,\quad
        \text{the update},\quad
        (c', s') = \text{quantize}(m \mid \sqrt{v} \mid \sqrt{\hat v})

    with the decision points ``Ms`` (momentum), ``Mu`` (v) and the values ``U`` (the amsgrad maximum,
    rounded up) of ``_quantize``. PN writes only its positive buffer; the other's codes and scales are
    read."""
    _update_block(ptrs, numels, block_tensor, block_chunk, scalars, grad_scale_ptr, found_inf_ptr, weights_ptr,
                  scale_ptrs, books_ptr, wd_hi, wd_lo, beta2_hi, beta2_lo, omb2_hi, omb2_lo, eps_hi, eps_lo,
                  c_pos_hi, c_pos_lo, c_neg_hi, c_neg_lo, batch, seed_lo, seed_hi, std_hi, std_lo, scale_hi, scale_lo,
                  DTYPE, tl.uint8, tl.float32, MOMENTUM, SECOND_MOMENT, AMSGRAD, NESTEROV, MAXIMIZE, DECOUPLED,
                  HAS_GRAD_SCALE, HAS_FOUND_INF, ALIGNED, NOISE, CENTERED, ROWS_ALIGNED, ROUND_PARAMS, False,
                  STATIC_BATCH, QUANT_BLOCK, BLOCK)
