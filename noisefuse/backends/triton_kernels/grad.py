"""The gradient of the fused step, formed in registers inside the element kernel: AMP unscaling,
``maximize``, gradient noise and L2 decay (SPEC.md sections 0 and 4; docs/kernel-contract.md,
"Noise"). Nothing here writes memory: the gradient the update uses is never stored.

The noise kind is a ``tl.constexpr`` (it changes what is read: ``grad`` or the ``grad_sample`` rows);
everything that changes with the run (the batch size ``B``, ``std``, ``scale``, the seed, the step, the
per-step weight vector) is a runtime value, so none of it compiles a kernel.

For noises that read ``grad_sample`` (``[B, *shape]``, rows laid out like the param) each program
walks the ``B`` rows of its tile with a runtime loop, keeping the running sums in registers. Every
row is unscaled and negated before it is summed, as the reference does, so the sums see exactly the
rows it sees. The centered Fisher diagonal needs the mean before the squared deviations, so it reads
the rows twice (two passes, as written in the reference: a one-pass formula would round differently).

Normals come from ``noisefuse.random.philox_triton.element_normal`` at the counter
``(lo32(i), hi32(i), lo32(t), TAG)``: ``i`` the element's global index (the tensor's offset from the
table plus its index in the tensor) and ``t`` the tensor's step after this update's increment.

Like ``kernels.py``, this file is loaded a second time with the interpreter on (``launch.kernels_for``).
"""
import triton
import triton.language as tl

from ...noise.step import NOISE_CODES
from ...random.philox import TAG_DIAG_FISHER, TAG_ISOTROPIC
from ...random.philox_triton import element_normal

NOISE_NONE = tl.constexpr(NOISE_CODES["none"])
NOISE_ISOTROPIC = tl.constexpr(NOISE_CODES["isotropic"])
NOISE_DIAG_FISHER = tl.constexpr(NOISE_CODES["diag_fisher"])
NOISE_MULTIPLICATIVE = tl.constexpr(NOISE_CODES["multiplicative"])
TAG_ISOTROPIC_C = tl.constexpr(TAG_ISOTROPIC)
TAG_DIAG_FISHER_C = tl.constexpr(TAG_DIAG_FISHER)


@triton.jit
def _div(x, y, COMPUTE: tl.constexpr):
    """IEEE-rounded ``x / y``, as torch divides (Triton's float32 ``/`` is an approximation)."""
    if COMPUTE == tl.float32:
        return tl.div_rn(x, y)
    else:
        return x / y


@triton.jit
def _sqrt(x, COMPUTE: tl.constexpr):
    """IEEE-rounded square root, as ``torch.sqrt``."""
    if COMPUTE == tl.float32:
        return tl.sqrt_rn(x)
    else:
        return tl.sqrt(x)


@triton.jit
def _preprocess(x, scale, COMPUTE: tl.constexpr, HAS_GRAD_SCALE: tl.constexpr, MAXIMIZE: tl.constexpr):
    """SPEC section 0 steps 1-2 on loaded values: to ``COMPUTE``, divided by the AMP scale, negated
    when maximizing."""
    x = x.to(COMPUTE)
    if HAS_GRAD_SCALE:
        x = _div(x, scale, COMPUTE)
    if MAXIMIZE:
        x = -x
    return x


@triton.jit
def _row(gs_ptr, b, numel, offs, mask, scale, COMPUTE: tl.constexpr, HAS_GRAD_SCALE: tl.constexpr,
         MAXIMIZE: tl.constexpr, ROWS_ALIGNED: tl.constexpr):
    """The preprocessed tile of sample ``b``'s row of ``grad_sample``."""
    ptr = gs_ptr + b * numel
    if ROWS_ALIGNED:
        # The base is aligned and every row a multiple of 16 bytes long (checked on the host).
        ptr = tl.multiple_of(ptr, 16)
    return _preprocess(tl.load(ptr + offs, mask=mask), scale, COMPUTE, HAS_GRAD_SCALE, MAXIMIZE)


@triton.jit
def _normal(seed_lo, seed_hi, t, index, TAG: tl.constexpr, COMPUTE: tl.constexpr):
    """float32 N(0, 1) of the global indices ``index`` at step ``t``, converted to ``COMPUTE``."""
    tag = tl.full(index.shape, TAG, tl.uint32)
    return element_normal(seed_lo, seed_hi, t, tag, index).to(COMPUTE)


@triton.jit
def form_grad(g_ptr, gs_ptr, numel, offs, mask, p, index, t, grad_scale_ptr, weights_ptr, batch,
              seed_lo, seed_hi, std, scale, weight_decay, COMPUTE: tl.constexpr, NOISE: tl.constexpr,
              CENTERED: tl.constexpr, HAS_GRAD_SCALE: tl.constexpr, MAXIMIZE: tl.constexpr,
              DECOUPLED: tl.constexpr, ROWS_ALIGNED: tl.constexpr, STATIC_BATCH: tl.constexpr):
    r"""The gradient the update uses, for one tile (``mask`` None for a full tile).

    With :math:`r_b = \pm\,\text{grad\_sample}[b] / \text{grad\_scale}` (the rows after SPEC section 0
    steps 1-2) and :math:`\xi` the element's normal:

    .. math::
        \text{none: } g = \pm\,\text{grad}/\text{grad\_scale}, \qquad
        \text{isotropic: } g \leftarrow g + \sigma\,\xi_1,\\
        \text{diag\_fisher: } \bar g = \tfrac1B \textstyle\sum_b r_b,\;
        f = \tfrac1B \sum_b r_b^2 \;\big(\text{centered: } \tfrac1B \sum_b (r_b - \bar g)^2\big),\;
        g = \bar g + (s\sqrt f)\,\xi_2,\\
        \text{multiplicative: } g = \tfrac1B \textstyle\sum_b w_b\, r_b,

    then :math:`g \leftarrow g + \lambda p` for L2 decay (``p`` the param before decoupled decay).
    ``index``: the global element indices (int64); ``t``: the tensor's step (int64); ``std`` and
    ``scale`` already in ``COMPUTE``. The user's ``grad`` and ``grad_sample`` are only read.
    ``STATIC_BATCH``: ``B`` as a constant under the interpreter, 0 when compiled (``B`` is then the
    runtime ``batch``): Triton's interpreter before 3.8 turns a runtime loop bound into an int with
    ``int()`` of a one-element array, which NumPy >= 2.4 refuses, and a constant costs it nothing.
    """
    grad_scale = 1.0
    if HAS_GRAD_SCALE:
        grad_scale = tl.load(grad_scale_ptr).to(COMPUTE)
    if NOISE == NOISE_DIAG_FISHER or NOISE == NOISE_MULTIPLICATIVE:
        n_rows = batch.to(COMPUTE)
        total = tl.full(offs.shape, 0.0, COMPUTE)
        squares = tl.full(offs.shape, 0.0, COMPUTE)
        # The bound is a constant under the interpreter (see STATIC_BATCH), the runtime B when compiled;
        # written in the range itself: assigned to a name first, the interpreter makes it a tensor.
        for b in range(0, STATIC_BATCH if STATIC_BATCH > 0 else batch):
            r = _row(gs_ptr, b, numel, offs, mask, grad_scale, COMPUTE, HAS_GRAD_SCALE, MAXIMIZE, ROWS_ALIGNED)
            if NOISE == NOISE_MULTIPLICATIVE:
                total += tl.load(weights_ptr + b).to(COMPUTE) * r
            else:
                total += r
                if not CENTERED:
                    squares += r * r
        g = _div(total, n_rows, COMPUTE)
        if NOISE == NOISE_DIAG_FISHER:
            if CENTERED:
                for b in range(0, STATIC_BATCH if STATIC_BATCH > 0 else batch):
                    dev = _row(gs_ptr, b, numel, offs, mask, grad_scale, COMPUTE, HAS_GRAD_SCALE, MAXIMIZE,
                               ROWS_ALIGNED) - g
                    squares += dev * dev
            root_f = _sqrt(_div(squares, n_rows, COMPUTE), COMPUTE)
            g = g + (scale * root_f) * _normal(seed_lo, seed_hi, t, index, TAG_DIAG_FISHER_C, COMPUTE)
    else:
        g = _preprocess(tl.load(g_ptr + offs, mask=mask), grad_scale, COMPUTE, HAS_GRAD_SCALE, MAXIMIZE)
        if NOISE == NOISE_ISOTROPIC:
            g = g + std * _normal(seed_lo, seed_hi, t, index, TAG_ISOTROPIC_C, COMPUTE)
    if not DECOUPLED:
        g = g + weight_decay * p
    return g
