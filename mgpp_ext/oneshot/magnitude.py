"""One-shot magnitude pruning: each linear sublayer drops its smallest |W|
(per layer, not per row: the baseline of the Wanda and SparseGPT papers);
n:m: the n largest |W| of every group of m along the input dim."""
from __future__ import annotations

import math

from ..nm import nm_mask
from ..rows import row_keep_mask


class Magnitude:
    name = "magnitude"
    options = {}
    needs_inputs = False  # no statistics pass

    def collector(self, in_features, device="cpu"):
        return None

    def prune(self, w, stats, sparsity, nm):
        """Prune ``w`` ([out, in], in place); returns extra report fields."""
        score = w.abs()
        if nm is not None:
            keep = nm_mask(score, nm[0], nm[1], -1)
        else:
            keep = row_keep_mask(score.reshape(1, -1), math.floor(sparsity * w.numel())).view(w.shape)
        w.masked_fill_(~keep, 0.0)
        return {}
