"""``ADMM``: ADMM pattern pruning with AdamW (Zhang et al. 2018, as in seed 001).

The ``AdmmProximal`` regulariser (its proximal gradient added inside the
step, and the Z/U projections every ``admm_interval`` steps), then a
one-shot hard projection by |W| (``Schedule.one_shot``) onto the pattern,
then masked fine-tuning with the fixed mask.
"""
from __future__ import annotations

from ..engine import PruningOptimizer
from ..engine.validation import check_adamw, check_number, check_on_nonfinite
from ..patterns import GlobalPattern, NMPattern
from ..regularisers import AdmmProximal
from ..schedule import Schedule
from ..scores import Magnitude


class ADMM(PruningOptimizer):
    """ADMM pattern pruning: AdamW on ``L(W) + (rho/2)||W - Z + U||^2``.

    Steps ``0 .. t_e`` (``t_e = total_steps - final_finetune_steps - 1``)
    are the ADMM phase: each is an AdamW step whose gradient carries the
    proximal term ``rho_t ((W - Z) + U)`` (added inside the step op, regulariser_ops.admm_step_), and
    every ``admm_interval`` steps ``Z <- Proj(W + U)``, ``U <- U + W - Z`` in
    one op (regulariser_ops.admm_project_). At t_e the weights are projected onto the pattern by
    |W| (the hard projection) and the mask is fixed; the last
    ``final_finetune_steps`` steps fine-tune with it.

    Args:
        params, lr, betas, eps, weight_decay: as ``torch.optim.AdamW``.
        total_steps: optimizer steps of the whole run.
        pattern: ``"n:m"`` (e.g. ``"2:4"``: n of every m consecutive weights
            along each tensor's input dim are kept) or a float sparsity in
            (0, 1) for unstructured pruning with one global threshold.
        rho: the penalty weight (> 0); ``rho_growth`` (>= 1) multiplies it
            at every projection: ``rho_t = rho * rho_growth ** (t //
            admm_interval)``.
        admm_interval: steps between projections.
        final_finetune_steps: steps after the hard projection, mask fixed.
        on_nonfinite: as in ``MGPP``; ``"propagate"`` checks the steps
            that start or end with a global projection, and the hard
            projection's. An n:m projection is not checked: it ranks within
            groups, where inf and NaN rank above every number, so an inf/NaN
            in W + U is kept in its own group.

    State per prunable weight: AdamW's moments, plus 4 bytes and 1 bit for
    Z and U together during the ADMM phase (see ``AdmmProximal``).
    """

    method = "admm"

    def __init__(self, params, lr=5e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0, *,
                 total_steps, pattern="2:4", rho=1e-3, admm_interval=100, final_finetune_steps=0,
                 rho_growth=1.0, on_nonfinite="raise"):
        check_adamw(lr, betas, eps, weight_decay)
        if isinstance(pattern, float):
            check_number("pattern", pattern, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
            target, part = pattern, GlobalPattern()
        else:
            part = NMPattern.parse(pattern) if isinstance(pattern, (str, tuple, list)) else None
            if not isinstance(part, NMPattern):
                raise ValueError(f"ADMM: pattern must be an 'n:m' pattern such as '2:4' or a float sparsity in "
                                 f"(0, 1) for one global threshold, got {pattern!r}")
            target = 1.0 - part.n / part.m
        regulariser = AdmmProximal(rho, admm_interval, rho_growth)
        check_on_nonfinite(on_nonfinite)
        schedule = Schedule.one_shot(total_steps, final_finetune_steps, target)
        regulariser.check_run(schedule.t_e)
        super().__init__(params, lr, betas, eps, weight_decay, schedule=schedule, score=Magnitude(),
                         pattern=part, regulariser=regulariser, on_nonfinite=on_nonfinite)

    def _schedule_for(self, total_steps):
        """For ``set_total_steps``: the hard projection moves to the new
        t_e, the fine-tuning length stays."""
        sch = self.schedule
        schedule = Schedule.one_shot(total_steps, sch.final_finetune_steps, sch.target_sparsity)
        self.regulariser.check_run(schedule.t_e)
        return schedule

    @property
    def current_rho(self):
        """rho_t of the next step (None once the mask is fixed)."""
        return None if self.mask_fixed else self.regulariser.rho_at(self.current_step)
