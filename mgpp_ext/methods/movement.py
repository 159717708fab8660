"""``Movement``: movement pruning (Sanh, Wolf & Rush 2020) with AdamW.

The engine's cubic ``Schedule`` and ``GlobalPattern`` with the
``MovementScore``, no regulariser. The score's update rides in the fused
step (``movement_step_``).
"""
from __future__ import annotations

from ..engine import PruningOptimizer
from ..engine.validation import check_adamw, check_on_nonfinite
from ..patterns import GlobalPattern, parse
from ..schedule import Schedule
from ..scores import MovementScore


class Movement(PruningOptimizer):
    """Movement pruning (Sanh et al. 2020): prune the weights that move towards zero.

    Every step, before the AdamW update, each prunable weight's score
    accumulates ``S <- S - score_lr * grad * theta`` (in the same fused pass
    as the update). At the events of the cubic schedule the
    ``floor(s_t * N)`` weights with the lowest S over all prunable tensors
    (the exact global k-th, ties at the threshold included) are zeroed;
    after the last event the mask is fixed and S is freed. Everything else
    (AdamW, schedule, final mask) is GMP's.

    This is the optimizer form: the model's forward pass sees the pruned
    weights themselves (a pruned weight is 0, so its score stops moving
    until it regrows), rather than a separate straight-through mask over
    dense weights.

    Args: as ``GMP``, plus ``score_lr`` (the score's step size; a constant
    scales every score alike, so it does not change the ranking).
    ``pattern``: None (one exact global threshold over the signed scores);
    ``"tensor"``: every tensor drops its own floor(s_t N_i) lowest scores
    (the per-matrix top-k of Sanh et al.'s code); ``"row"``: every output
    row its own share. (n:m is not offered: its selection ranks magnitudes.) Memory: one fp32 tensor per prunable weight
    on top of AdamW's state, up to the last event.
    """

    method = "movement"

    def __init__(self, params, lr=5e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0, *,
                 total_steps, target_sparsity=0.9, initial_sparsity=0.0,
                 initial_warmup_steps=0, final_finetune_steps=0, prune_interval=100,
                 score_lr=1.0, on_nonfinite="raise", pattern=None):
        score = MovementScore(score_lr)
        check_adamw(lr, betas, eps, weight_decay)
        check_on_nonfinite(on_nonfinite)
        if pattern not in (None, "global", "tensor", "row"):
            raise ValueError(
                "Movement: pattern must be None or 'global' (one exact global threshold over the signed scores), "
                f"'tensor' or 'row' (each tensor or row its own share), got {pattern!r}")
        schedule = Schedule(
            total_steps=total_steps, initial_warmup_steps=initial_warmup_steps,
            final_finetune_steps=final_finetune_steps, prune_interval=prune_interval,
            initial_sparsity=initial_sparsity, target_sparsity=target_sparsity,
            lambda_anneal=(1.0, 1.0))
        super().__init__(params, lr, betas, eps, weight_decay, schedule=schedule, score=score,
                         pattern=GlobalPattern() if pattern in (None, "global") else parse(pattern),
                         regulariser=None, on_nonfinite=on_nonfinite)

    @property
    def score_lr(self):
        return self.score.score_lr

    def scores(self):
        """The current movement score S of every prunable tensor (new tensors)."""
        if self.mask_fixed:
            raise RuntimeError("Movement.scores: the final mask is fixed and the scores were freed")
        return [s.clone() for s in self.score.tensors(self)]
