"""Exact per-row selection: ``row_keep_mask(scores, k)``.

In every row of ``scores`` (its last dim) exactly ``k`` entries are
dropped, the ``k`` smallest scores, the rest kept. Ties are broken
deterministically, so that the lower index is kept (the n:m rule's order);
NaN ranks above +inf. Batched over rows, O(row length) per row, as a
compiled op (CPU and CUDA; ``torch.ops.mgpp_ext.row_keep_mask``).
``mgpp_ext.reference_rows`` is the plain-PyTorch rule it is tested against.

This is the selection of the per-row pattern (``pattern="row"``) and of
one-shot methods that compare weights within each output row (Wanda).
"""
from __future__ import annotations

import torch

from . import ops

__all__ = ["row_keep_mask"]


def row_keep_mask(scores, k):
    """Bool tensor shaped like ``scores``: False at the ``k`` smallest
    entries of every row along the last dim (ties: the higher index is
    dropped first; NaN above +inf), True elsewhere. ``0 <= k <= row length``."""
    ops.require_extension()
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"row_keep_mask: 'scores' must be a tensor, got {type(scores).__name__}")
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"row_keep_mask: 'k' must be an int, got {k!r}")
    return torch.ops.mgpp_ext.row_keep_mask(scores, k)


if ops.EXTENSION_ERROR is None:

    @torch.library.register_fake("mgpp_ext::row_keep_mask")
    def _(scores, k):
        return torch.empty_like(scores, dtype=torch.bool, memory_format=torch.contiguous_format)
