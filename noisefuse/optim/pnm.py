"""Positive-Negative Momentum, SGD form (Xie et al., ICML 2021)."""
from __future__ import annotations

from ..backends.family import Family, Hyper
from .base import FusedOptimizer, required, common_hyper, check_betas, check_bool, check_lr, check_nonneg, check_unit


class PNM(FusedOptimizer):
    r"""Positive-Negative Momentum (Xie et al., "Positive-Negative Momentum: Manipulating Stochastic
    Gradient Noise to Improve Generalization", ICML 2021), argument- and state-compatible with the
    official ``PNM``.

    .. math::
        \begin{aligned}
        &(m^+, m^-) = (\text{pos\_momentum}, \text{neg\_momentum}) \text{ if } t \text{ odd, else swapped} \\
        &m^+ \leftarrow \beta_1^2 m^+ + (1 - \beta_1^2)\, g_t \\
        &\theta_t = \theta_{t-1} - \gamma\,
            \frac{(1 + \beta_0)\, m^+ - \beta_0\, m^-}{\sqrt{(1 + \beta_0)^2 + \beta_0^2}}
        \end{aligned}

    with ``betas = (beta1, beta0)``; :math:`\beta_0` sets the size of the injected noise (0 gives
    plain EMA momentum). Weight decay is decoupled (:math:`\theta \leftarrow \theta(1 - \gamma\lambda)`)
    or, with ``decoupled=False``, L2 (:math:`g \leftarrow g + \lambda\theta`).

    Args:
        params: iterable of parameters or dicts defining param groups.
        lr: learning rate :math:`\gamma`.
        betas: ``(beta1, beta0)`` (default ``(0.9, 1.0)``).
        weight_decay: :math:`\lambda` (default 0).
        decoupled: decoupled weight decay (default) or L2 regularisation.
        demon: ``None``, total steps, or :class:`noisefuse.Demon` — decays :math:`\beta_1` (Demon).
        backend: ``"auto"``, ``"native"``, ``"triton"``, ``"foreach"`` or ``"reference"``.
        seed: seed of the noise stream (drawn from torch's generator when ``None``).
        maximize: maximize the objective instead of minimizing.
        capturable: keep step counters on the device so the step can be captured in a CUDA graph.
        state_dtype: dtype of the state buffers: ``None`` (the param's), ``torch.float32`` (exact
            state for bfloat16/float16 params, the update still rounded once into the param) or
            ``torch.bfloat16`` (half the state memory of float32 params; stored stochastically), or
            :class:`noisefuse.state.Blockwise8bit` (8-bit codes and a float32 scale per block: a
            quarter of float32's memory, for float32/bfloat16 params; small params keep float32).
        state_rounding: how bfloat16 state is stored: ``"stochastic"`` (unbiased, from the seed's
            stream; the default with ``state_dtype=torch.bfloat16``) or ``"nearest"`` (the default
            for bfloat16 params with ``state_dtype=None``, as torch.optim).
        stochastic_rounding: round bfloat16 params stochastically (unbiased; draws from the seed's
            stream) instead of to nearest; a no-op for other dtypes.
        max_grad_norm: clip the gradient to this global L2 norm inside the step (``None``: no clip):
            every gradient of the optimizer is scaled by :math:`\min(1, c / (\lVert g \rVert + 10^{-6}))`,
            the norm taken over the unscaled (AMP) gradients before noise, on the device.
    """

    def __init__(self, params, lr=required, betas=(0.9, 1.0), weight_decay=0.0, decoupled=True, *,
                 demon=None, noise=None, backend="auto", seed=None, maximize=False, capturable=False, state_dtype=None,
                 state_rounding=None, stochastic_rounding=False, max_grad_norm=None):
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay, decoupled=decoupled)
        super().__init__(params, defaults, demon=demon, noise=noise, backend=backend, seed=seed,
                         maximize=maximize, capturable=capturable, state_dtype=state_dtype,
                         state_rounding=state_rounding, stochastic_rounding=stochastic_rounding,
                         max_grad_norm=max_grad_norm)

    def _check_group(self, group, read_lr=True):
        check_lr(group["lr"], read_lr)
        check_betas(group["betas"], ("beta1", "beta0"))
        check_unit("beta1 (betas[0])", group["betas"][0])
        check_nonneg("beta0 (betas[1])", group["betas"][1])
        check_nonneg("weight_decay", group["weight_decay"])
        check_bool("decoupled", group["decoupled"])

    def _group_defaults_for_old_checkpoints(self):
        return {"decoupled": True}

    def _family(self, group):
        return Family("pn")

    def _hyper(self, group, demon):
        beta1, beta0 = group["betas"]
        return Hyper(beta1=beta1, beta0=beta0, **common_hyper(group, demon))

    def _state_keys(self, group):
        return {"exp_avgs": "pos_momentum", "neg_exp_avgs": "neg_momentum"}
