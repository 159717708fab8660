"""``GMP``: gradual magnitude pruning (Zhu & Gupta 2017) with AdamW.

The engine's cubic ``Schedule``, ``Magnitude`` score and ``GlobalPattern``,
with no regulariser: MGPP's run without the prior, so that a comparison of
the two differs in the prior alone.
"""
from __future__ import annotations

from ..engine import PruningOptimizer
from ..engine.validation import check_adamw, check_on_nonfinite
from ..patterns import NMPattern
from ..schedule import Schedule
from ..scores import Magnitude


class GMP(PruningOptimizer):
    """Gradual magnitude pruning (Zhu & Gupta) with AdamW.

    The same schedule, events and exact global magnitude threshold as
    ``MGPP``, without the prior gradient. Arguments as in ``MGPP``, minus
    the prior's (``num_train_examples``, ``lambda_mix``, ``sigma0_sq``,
    ``sigma1_sq``, ``lambda_anneal``); ``pattern`` as in ``MGPP`` (None:
    global; ``"n:m"``: an exact n:m mask at the end).

    As in MGPP, a weight pruned at one event may regrow before the
    next (Zhu & Gupta keep it masked); the final mask is fixed after t_e.
    """

    method = "gmp"

    def __init__(self, params, lr=5e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0, *,
                 total_steps, target_sparsity=0.9, initial_sparsity=0.0,
                 initial_warmup_steps=0, final_finetune_steps=0, prune_interval=100,
                 on_nonfinite="raise", pattern=None):
        check_adamw(lr, betas, eps, weight_decay)
        check_on_nonfinite(on_nonfinite)
        # lambda_anneal (1, 1) keeps the record of checkpoints saved before
        # the engine had parts; no prior reads it.
        schedule = Schedule(
            total_steps=total_steps, initial_warmup_steps=initial_warmup_steps,
            final_finetune_steps=final_finetune_steps, prune_interval=prune_interval,
            initial_sparsity=initial_sparsity, target_sparsity=target_sparsity,
            lambda_anneal=(1.0, 1.0))
        super().__init__(params, lr, betas, eps, weight_decay, schedule=schedule, score=Magnitude(),
                         pattern=NMPattern.parse(pattern), regulariser=None, on_nonfinite=on_nonfinite)
