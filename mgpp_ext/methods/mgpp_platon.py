"""``MGPPPlaton``: MGPP's mixture Gaussian prior with PLATON's score.

One composition of existing parts: the cubic ``Schedule`` with the prior's
lambda, the ``MixturePrior`` regulariser fused into the step, and the
``PlatonImportance`` score in place of |w|. It asks whether the prior helps
the strongest score.
"""
from __future__ import annotations

from ..engine import PruningOptimizer
from ..engine.validation import check_adamw, check_on_nonfinite
from ..patterns import NMPattern
from ..regularisers import MixturePrior
from ..schedule import Schedule
from ..scores import PlatonImportance


class MGPPPlaton(PruningOptimizer):
    """MGPP's prior gradient with PLATON's upper-confidence-bound score.

    Every step is MGPP's (the spike-and-slab prior's gradient added to each
    prunable weight's gradient, then AdamW); the importance Ibar * U is
    PLATON's (``|theta * grad|`` with the loss gradient alone, before the
    prior is added, averaged over windows of ``prune_interval`` steps); at
    the events the weights with the smallest Ibar * U are zeroed.

    Args: ``MGPP``'s, plus PLATON's ``importance_betas``. ``pattern`` as in
    ``MGPP``. Memory: PLATON's three fp32 tensors per prunable weight, up
    to the last event.
    """

    method = "mgpp_platon"

    def __init__(self, params, lr=5e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0, *,
                 total_steps, num_train_examples,
                 target_sparsity=0.9, initial_sparsity=0.0,
                 initial_warmup_steps=0, final_finetune_steps=0, prune_interval=100,
                 lambda_mix=0.1, sigma0_sq=1e-10, sigma1_sq=0.05, lambda_anneal=(1.0, 0.001),
                 importance_betas=(0.85, 0.95), on_nonfinite="raise", pattern=None):
        score = PlatonImportance(importance_betas)
        check_adamw(lr, betas, eps, weight_decay)
        prior = MixturePrior(num_train_examples, sigma0_sq, sigma1_sq)
        check_on_nonfinite(on_nonfinite)
        schedule = Schedule(
            total_steps=total_steps, initial_warmup_steps=initial_warmup_steps,
            final_finetune_steps=final_finetune_steps, prune_interval=prune_interval,
            initial_sparsity=initial_sparsity, target_sparsity=target_sparsity,
            lambda_mix=lambda_mix, lambda_anneal=lambda_anneal)
        super().__init__(params, lr, betas, eps, weight_decay, schedule=schedule, score=score,
                         pattern=NMPattern.parse(pattern), regulariser=prior, on_nonfinite=on_nonfinite)

    @property
    def importance_betas(self):
        return self.score.importance_betas
