"""``SRSTE``: sparse-refined straight-through estimator (Zhou et al. 2021).

The ``EveryStep`` schedule (no events: the mask is recomputed inside the
step), the n:m ``NMPattern`` on |W| and the ``SrsteDecay`` regulariser,
whose step op updates the dense weights, recomputes the mask and writes
the masked weights (regulariser_ops.srste_step_).
"""
from __future__ import annotations

from ..engine import PruningOptimizer
from ..engine.validation import check_adamw, check_on_nonfinite
from ..patterns import NMPattern
from ..regularisers import SrsteDecay
from ..schedule import EveryStep
from ..scores import Magnitude


class SRSTE(PruningOptimizer):
    """Train n:m-sparse from the start with SR-STE, as a drop-in optimizer.

    The optimizer keeps the dense weights W in its state and the parameters
    hold W * M, M the n:m mask of |W| along each tensor's input dim, so the
    forward pass sees the sparse weights. From construction on (the
    parameters are masked then). Each step takes the gradient at W * M,
    adds ``lambda_w * (1 - M) * W`` (the sparse-refined decay of the masked
    weights), takes an AdamW step on W, recomputes M every
    ``mask_interval`` steps and writes W * M into the parameters: the next
    backward pass's gradient is exactly the straight-through one.

    The decay is part of the gradient AdamW normalises (as in the paper,
    where it changes the gradient SGD takes), so its strength relative to
    the loss gradient differs from the paper's SGD runs: 2e-4 was chosen
    there, not for AdamW.

    Args:
        params, lr, betas, eps, weight_decay: as ``torch.optim.AdamW``.
        pattern: ``"n:m"``, e.g. ``"2:4"``.
        lambda_w: the decay of the masked weights (the paper's 2e-4).
        mask_interval: steps between mask updates (1: every step).
        on_nonfinite: as in ``MGPP``; ``"propagate"`` checks no step: a
            mask update ranks within n:m groups, where inf and NaN rank
            above every number, so an inf/NaN that reached W is kept in its
            own group and shows in the next forward pass, as after
            ``torch.optim.AdamW``.

    ``dense_weights()`` returns the dense W. State per prunable weight:
    AdamW's moments, the dense W (the param's dtype) and the mask (bool).
    """

    method = "srste"

    def __init__(self, params, lr=5e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0, *,
                 pattern="2:4", lambda_w=2e-4, mask_interval=1, on_nonfinite="raise"):
        check_adamw(lr, betas, eps, weight_decay)
        if pattern is None:
            raise ValueError("pattern must be an 'n:m' pattern such as '2:4', got None")
        part = NMPattern.parse(pattern)
        if not isinstance(part, NMPattern):
            raise ValueError(f"SRSTE: pattern must be an 'n:m' pattern such as '2:4', got {pattern!r}")
        regulariser = SrsteDecay(lambda_w)
        check_on_nonfinite(on_nonfinite)
        schedule = EveryStep(target_sparsity=1.0 - part.n / part.m, mask_interval=mask_interval)
        super().__init__(params, lr, betas, eps, weight_decay, schedule=schedule, score=Magnitude(),
                         pattern=part, regulariser=regulariser, on_nonfinite=on_nonfinite)
        self.regulariser.start(self)

    def dense_weights(self):
        """The dense W of every prunable tensor (the optimizer's own copies)."""
        return [self.state[p]["dense"] for _, _, p in self._prunable()]
