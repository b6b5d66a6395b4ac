"""Adaptive Positive-Negative Momentum, Adam form (Xie et al., ICML 2021)."""
from __future__ import annotations

from ..backends.family import Family, Hyper
from .base import FusedOptimizer, common_hyper, check_betas, check_bool, check_lr, check_nonneg, check_unit


class AdaPNM(FusedOptimizer):
    r"""Adaptive Positive-Negative Momentum, argument- and state-compatible with the official
    ``AdaPNM`` (state keys ``step``, ``exp_avg``, ``neg_exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``).

    .. math::
        \begin{aligned}
        &(m^+, m^-) = (\text{exp\_avg}, \text{neg\_exp\_avg}) \text{ if } t \text{ odd, else swapped} \\
        &m^+ \leftarrow \beta_1^2 m^+ + (1 - \beta_1^2)\, g_t \\
        &v_t = \beta_2 v_{t-1} + (1 - \beta_2)\, g_t^2, \qquad
         \hat v_t = \max(\hat v_{t-1}, v_t) \ \text{(amsgrad)} \\
        &\theta_t = \theta_{t-1} - \frac{\gamma}{1 - \beta_1^t}\,
            \frac{\big((1 + \beta_0)\, m^+ - \beta_0\, m^-\big) / \sqrt{(1 + \beta_0)^2 + \beta_0^2}}
                 {\sqrt{\hat v_t} / \sqrt{1 - \beta_2^t} + \epsilon}
        \end{aligned}

    With Demon, :math:`\beta_1` becomes the decayed :math:`\beta_t` and the bias correction
    :math:`1 - \prod_{i \le t} \beta_i` (kept in the state as ``beta1_prod``).

    Args:
        params: iterable of parameters or dicts defining param groups.
        lr: learning rate :math:`\gamma` (default 1e-3).
        betas: ``(beta1, beta2, beta0)`` (default ``(0.9, 0.999, 1.0)``).
        eps: :math:`\epsilon` (default 1e-8).
        weight_decay: :math:`\lambda` (default 0).
        amsgrad: divide by the running maximum of :math:`v` (default True, as the official code).
        decoupled: decoupled weight decay (default) or L2 regularisation.
        demon, backend, seed, maximize, capturable, state_dtype, state_rounding, stochastic_rounding,
            max_grad_norm: as in :class:`noisefuse.PNM`.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999, 1.0), eps=1e-8, weight_decay=0.0,
                 amsgrad=True, decoupled=True, *, demon=None, noise=None, backend="auto", seed=None,
                 maximize=False, capturable=False, state_dtype=None,
                 state_rounding=None, stochastic_rounding=False, max_grad_norm=None):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        decoupled=decoupled)
        super().__init__(params, defaults, demon=demon, noise=noise, backend=backend, seed=seed,
                         maximize=maximize, capturable=capturable, state_dtype=state_dtype,
                         state_rounding=state_rounding, stochastic_rounding=stochastic_rounding,
                         max_grad_norm=max_grad_norm)

    def _check_group(self, group, read_lr=True):
        check_lr(group["lr"], read_lr)
        check_betas(group["betas"], ("beta1", "beta2", "beta0"))
        check_unit("beta1 (betas[0])", group["betas"][0])
        check_unit("beta2 (betas[1])", group["betas"][1])
        check_nonneg("beta0 (betas[2])", group["betas"][2])
        check_nonneg("eps", group["eps"])
        check_nonneg("weight_decay", group["weight_decay"])
        check_bool("amsgrad", group["amsgrad"])
        check_bool("decoupled", group["decoupled"])

    def _group_defaults_for_old_checkpoints(self):
        return {"amsgrad": True, "decoupled": True}

    def _family(self, group):
        return Family("pn", second_moment=True, amsgrad=group["amsgrad"])

    def _hyper(self, group, demon):
        beta1, beta2, beta0 = group["betas"]
        return Hyper(beta1=beta1, beta2=beta2, beta0=beta0, eps=group["eps"], **common_hyper(group, demon))

    def _state_keys(self, group):
        keys = {"exp_avgs": "exp_avg", "neg_exp_avgs": "neg_exp_avg", "exp_avg_sqs": "exp_avg_sq"}
        if group["amsgrad"]:
            keys["max_exp_avg_sqs"] = "max_exp_avg_sq"
        return keys
