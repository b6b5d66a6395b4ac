"""Adam/AdamW whose first-moment coefficient decays by Demon, with exact bias correction."""
from __future__ import annotations

from ..backends.family import Family, Hyper
from .base import FusedOptimizer, common_hyper, check_betas, check_bool, check_lr, check_nonneg, check_unit
from .demon_sgd import demon_argument


class DemonAdam(FusedOptimizer):
    r"""Adam with Demon momentum decay and the exact bias correction of a time-varying EMA.

    .. math::
        \begin{aligned}
        &m_t = \beta_t m_{t-1} + (1 - \beta_t)\, g_t, \qquad
         v_t = \beta_2 v_{t-1} + (1 - \beta_2)\, g_t^2 \\
        &\theta_t = \theta_{t-1} - \gamma\, \frac{m_t / (1 - \prod_{i \le t} \beta_i)}
            {\sqrt{v_t / (1 - \beta_2^t)} + \epsilon}
        \end{aligned}

    :math:`\beta_t` follows Demon's schedule (see :class:`noisefuse.Demon`); the product is kept in
    the state as ``beta1_prod``. (Implementations that divide by :math:`1 - \beta_t^t` do not
    correct the bias of a time-varying average.) ``decoupled=True`` gives the AdamW form.
    State keys: ``step``, ``exp_avg``, ``exp_avg_sq``, ``beta1_prod`` (and ``max_exp_avg_sq``).

    Args:
        params: iterable of parameters or dicts defining param groups.
        lr: learning rate :math:`\gamma` (default 1e-3).
        betas: ``(beta1, beta2)``; ``beta1`` is :math:`\beta_{init}` (default ``(0.9, 0.999)``).
        eps: :math:`\epsilon` (default 1e-8).
        total_steps: :math:`T`, the steps over which :math:`\beta_t` decays to 0 (or pass ``demon=``).
        weight_decay: :math:`\lambda`.
        decoupled: AdamW's decoupled decay instead of L2 (default False, as ``torch.optim.Adam``).
        amsgrad: divide by the running maximum of :math:`v` (default False).
        delay: fraction of ``total_steps`` before the decay starts.
        demon, backend, seed, maximize, capturable, state_dtype, state_rounding, stochastic_rounding,
            max_grad_norm: as in :class:`noisefuse.PNM`.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, total_steps=None, weight_decay=0.0,
                 decoupled=False, amsgrad=False, *, delay=0.0, demon=None, noise=None, backend="auto",
                 seed=None, maximize=False, capturable=False, state_dtype=None,
                 state_rounding=None, stochastic_rounding=False, max_grad_norm=None):
        demon = demon_argument("DemonAdam", total_steps, delay, demon)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decoupled=decoupled,
                        amsgrad=amsgrad)
        super().__init__(params, defaults, demon=demon, noise=noise, backend=backend, seed=seed,
                         maximize=maximize, capturable=capturable, state_dtype=state_dtype,
                         state_rounding=state_rounding, stochastic_rounding=stochastic_rounding,
                         max_grad_norm=max_grad_norm)

    def _check_group(self, group, read_lr=True):
        check_lr(group["lr"], read_lr)
        if group["demon"] is None:
            raise ValueError("DemonAdam decays its momentum: demon must be set (total_steps)")
        check_betas(group["betas"], ("beta1", "beta2"))
        check_unit("beta1 (betas[0])", group["betas"][0])
        check_unit("beta2 (betas[1])", group["betas"][1])
        check_nonneg("eps", group["eps"])
        check_nonneg("weight_decay", group["weight_decay"])
        check_bool("decoupled", group["decoupled"])
        check_bool("amsgrad", group["amsgrad"])

    def _family(self, group):
        return Family("ema", second_moment=True, amsgrad=group["amsgrad"])

    def _hyper(self, group, demon):
        beta1, beta2 = group["betas"]
        return Hyper(beta1=beta1, beta2=beta2, eps=group["eps"], **common_hyper(group, demon))

    def _state_keys(self, group):
        keys = {"exp_avgs": "exp_avg", "exp_avg_sqs": "exp_avg_sq"}
        if group["amsgrad"]:
            keys["max_exp_avg_sqs"] = "max_exp_avg_sq"
        return keys
