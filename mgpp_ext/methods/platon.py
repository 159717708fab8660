"""``PLATON`` (Zhang et al. 2022): prune by the upper confidence bound of importance.

The engine's cubic ``Schedule`` and ``GlobalPattern`` with the
``PlatonImportance`` score, no regulariser.
"""
from __future__ import annotations

from ..engine import PruningOptimizer
from ..engine.validation import check_adamw, check_on_nonfinite
from ..patterns import NMPattern
from ..schedule import Schedule
from ..scores import PlatonImportance


class PLATON(PruningOptimizer):
    """PLATON (Zhang et al. 2022): prune by the upper confidence bound of importance.

    Importance I = |theta * grad| (the weight and the loss gradient before
    the update) is averaged over a window of ``prune_interval`` steps. At
    each window end (every multiple of ``prune_interval`` up to t_e, and
    every event step)::

        Ibar <- b1 * Ibar + (1 - b1) * I
        U    <- b2 * U    + (1 - b2) * |I - Ibar|
        score = Ibar * U

    and at an event the ``floor(s_t * N)`` weights with the smallest score
    (ties at the threshold included) are zeroed. The window follows
    the official PLATON code (its local-window update);
    the paper's text updates Ibar and U every step, so with b1 = 0.85 and a
    window of 100 steps Ibar here remembers about 7 windows, not 7 steps,
    and U measures the variation between window means. Everything else (AdamW,
    schedule, final mask) is MGPP's, without the prior.

    A step in which a weight has no gradient adds 0 to its window (the
    window mean still divides by the window's length). ``last_threshold``
    is the threshold on the score, not on |theta|.

    Args: as ``GMP``, plus ``importance_betas=(b1, b2)`` (the paper's
    defaults 0.85 and 0.95); ``pattern`` as in ``MGPP`` (None: global;
    ``"n:m"``: an exact n:m mask at the end, ranked by the score). Memory: three fp32 tensors per prunable weight
    (window sum, Ibar, U) on top of AdamW's state, freed once the final mask
    is fixed.
    """

    method = "platon"

    def __init__(self, params, lr=5e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0, *,
                 total_steps, target_sparsity=0.9, initial_sparsity=0.0,
                 initial_warmup_steps=0, final_finetune_steps=0, prune_interval=100,
                 importance_betas=(0.85, 0.95), on_nonfinite="raise", pattern=None):
        score = PlatonImportance(importance_betas)
        check_adamw(lr, betas, eps, weight_decay)
        check_on_nonfinite(on_nonfinite)
        schedule = Schedule(
            total_steps=total_steps, initial_warmup_steps=initial_warmup_steps,
            final_finetune_steps=final_finetune_steps, prune_interval=prune_interval,
            initial_sparsity=initial_sparsity, target_sparsity=target_sparsity,
            lambda_anneal=(1.0, 1.0))
        super().__init__(params, lr, betas, eps, weight_decay, schedule=schedule, score=score,
                         pattern=NMPattern.parse(pattern), regulariser=None, on_nonfinite=on_nonfinite)

    @property
    def importance_betas(self):
        return self.score.importance_betas

    def scores(self):
        """The current score Ibar * U of every prunable tensor (new tensors)."""
        if self.mask_fixed:
            raise RuntimeError("PLATON.scores: the final mask is fixed and the scores were freed")
        return [st["ipt_bar"] * st["ipt_unc"]
                for st in (self.score._state(self, p) for _, _, p in self._prunable())]
