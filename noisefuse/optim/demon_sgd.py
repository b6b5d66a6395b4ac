"""SGD with heavy-ball momentum decayed by Demon (Chen & Kyrillidis, arXiv 1910.04952)."""
from __future__ import annotations

from ..backends.family import Family, Hyper
from ..demon import Demon
from .base import FusedOptimizer, required, common_hyper, check_bool, check_lr, check_nonneg, check_unit


def demon_argument(cls_name, total_steps, delay, demon):
    """``total_steps``/``delay`` and ``demon=`` are two spellings of one thing: take at most one.
    Neither: every param group must then give its own (``total_steps`` or ``demon``; torch's
    ``required``), as a group may give any hyperparameter."""
    if total_steps is not None and demon is not None:
        raise ValueError(f"{cls_name}: give total_steps or demon=, not both")
    if total_steps is None and demon is None:
        return required
    return Demon(total_steps, delay) if demon is None else demon


class DemonSGD(FusedOptimizer):
    r"""SGD with Demon momentum decay, in the paper's heavy-ball form (no dampening).

    .. math::
        \begin{aligned}
        &\beta_t = \beta_{init} \frac{f}{(1 - \beta_{init}) + \beta_{init} f}, \quad
          f = \max\!\left(0, 1 - \frac{t - 1}{T}\right) \\
        &b_t = \beta_t\, b_{t-1} + g_t \\
        &\theta_t = \theta_{t-1} - \gamma\, b_t
          \qquad\text{or, with nesterov,}\qquad
          \theta_t = \theta_{t-1} - \gamma\,(g_t + \beta_t b_t)
        \end{aligned}

    The first step equals ``torch.optim.SGD``'s; as :math:`\beta_t \to 0` it becomes plain SGD.
    State keys: ``step``, ``momentum_buffer``.

    Args:
        params: iterable of parameters or dicts defining param groups.
        lr: learning rate :math:`\gamma`.
        momentum: :math:`\beta_{init}` (default 0.9).
        total_steps: :math:`T`, the steps over which momentum decays to 0 (or pass ``demon=``).
        nesterov: Nesterov momentum.
        weight_decay: :math:`\lambda`; L2 (:math:`g \leftarrow g + \lambda\theta`) unless ``decoupled``.
        decoupled: decoupled weight decay :math:`\theta \leftarrow \theta(1 - \gamma\lambda)`.
        delay: fraction of ``total_steps`` before the decay starts.
        demon, backend, seed, maximize, capturable, state_dtype, state_rounding, stochastic_rounding,
            max_grad_norm: as in :class:`noisefuse.PNM`.
    """

    def __init__(self, params, lr=required, momentum=0.9, total_steps=None, nesterov=False, weight_decay=0.0,
                 decoupled=False, *, delay=0.0, demon=None, noise=None, backend="auto", seed=None,
                 maximize=False, capturable=False, state_dtype=None,
                 state_rounding=None, stochastic_rounding=False, max_grad_norm=None):
        demon = demon_argument("DemonSGD", total_steps, delay, demon)
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        decoupled=decoupled)
        super().__init__(params, defaults, demon=demon, noise=noise, backend=backend, seed=seed,
                         maximize=maximize, capturable=capturable, state_dtype=state_dtype,
                         state_rounding=state_rounding, stochastic_rounding=stochastic_rounding,
                         max_grad_norm=max_grad_norm)

    def _check_group(self, group, read_lr=True):
        check_lr(group["lr"], read_lr)
        if group["demon"] is None:
            raise ValueError("DemonSGD decays its momentum: demon must be set (total_steps)")
        check_unit("momentum", group["momentum"])
        check_nonneg("weight_decay", group["weight_decay"])
        check_bool("nesterov", group["nesterov"])
        check_bool("decoupled", group["decoupled"])

    def _family(self, group):
        return Family("heavy_ball")

    def _hyper(self, group, demon):
        return Hyper(beta1=group["momentum"], nesterov=group["nesterov"], **common_hyper(group, demon))

    def _state_keys(self, group):
        return {"exp_avgs": "momentum_buffer"}
