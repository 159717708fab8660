"""``FixedMask``: AdamW with a given mask, fixed from the first step.

The fine-tuning half of every "score, prune, then fine-tune" method
(DeepCuts, Taylor, magnitude one-shot): a ``FixedMaskSchedule`` (no events;
every step multiplies the mask in, as the final phase of the gradual
methods does), no score, no regulariser.
"""
from __future__ import annotations

import torch

from ..engine import PruningOptimizer
from ..engine.distributed import like_param, local
from ..engine.validation import check_adamw, check_on_nonfinite
from ..patterns import GlobalPattern
from ..schedule import FixedMaskSchedule
from ..scores import Magnitude


class FixedMask(PruningOptimizer):
    """AdamW that keeps a given sparsity mask on the prunable weights.

    At construction the prunable weights where ``masks`` is False are set
    to zero; every step is an AdamW step followed by the mask (in the same
    fused pass), so they stay zero and the kept weights train.

    Args:
        params: tensors or param groups, as in ``MGPP`` (the prunable ones
            are those of groups with ``prune=True``, or with ``ndim >= 2``).
        masks: one bool tensor per prunable tensor, in order (True: kept),
            each shaped like its tensor, e.g. from
            ``mgpp_ext.importance.masks_from_scores``.
        lr, betas, eps, weight_decay, on_nonfinite: as in ``MGPP``.

    ``sparsity()`` reports the zeros; the record's ``target_sparsity`` is the
    masks' own fraction of False.
    """

    method = "fixed_mask"

    def __init__(self, params, masks, lr=5e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0, *,
                 on_nonfinite="raise"):
        check_adamw(lr, betas, eps, weight_decay)
        check_on_nonfinite(on_nonfinite)
        masks = list(masks) if not isinstance(masks, torch.Tensor) else [masks]
        for i, m in enumerate(masks):
            if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
                raise TypeError(f"FixedMask: masks[{i}] must be a bool tensor, got "
                                f"{type(m).__name__ if not isinstance(m, torch.Tensor) else m.dtype}")
        total = sum(m.numel() for m in masks)
        pruned = sum(int((~m).sum()) for m in masks)
        sparsity = pruned / total if total else 0.0
        if not sparsity < 1.0:
            raise ValueError("FixedMask: the masks keep no weight at all")
        super().__init__(params, lr, betas, eps, weight_decay, schedule=FixedMaskSchedule(sparsity),
                         score=Magnitude(), pattern=GlobalPattern(), regulariser=None,
                         on_nonfinite=on_nonfinite)
        prunable = self._prunable()
        if len(masks) != len(prunable):
            raise ValueError(f"FixedMask: 'masks' has {len(masks)} tensors for {len(prunable)} prunable params")
        for (gi, pi, p), m in zip(prunable, masks):
            if tuple(m.shape) != tuple(p.shape):
                raise ValueError(f"FixedMask: the mask of '{self._name(gi, pi)}' has shape {tuple(m.shape)}, "
                                 f"the param {tuple(p.shape)}")
        with torch.no_grad():
            for (_, _, p), m in zip(prunable, masks):
                keep = m.to(local(p).device)
                local(p).masked_fill_(~keep, 0.0)
                self.state[p]["mask"] = like_param(keep.clone(), p)

    def masks(self):
        """The fixed mask of every prunable tensor."""
        return [self.state[p]["mask"] for _, _, p in self._prunable()]
