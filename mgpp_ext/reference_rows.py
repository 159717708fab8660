"""The per-row selection rule in plain PyTorch (``mgpp_ext.rows`` is the
compiled op tested against it): in every row along the last dim the ``k``
smallest scores are dropped, ties dropping the higher index first, NaN
ranked above +inf (as ``torch.sort`` ranks it)."""
from __future__ import annotations

import torch


def row_keep_mask_reference(scores: torch.Tensor, k: int) -> torch.Tensor:
    length = scores.shape[-1]
    if not 0 <= k <= length:
        raise ValueError(f"k must be in [0, {length}], got {k}")
    rows = scores.reshape(-1, length).float()
    # A stable ascending sort of the reversed row puts, among equal scores,
    # the higher original index first: it is dropped first.
    order = torch.sort(rows.flip(-1), dim=-1, stable=True).indices[:, :k]
    keep = torch.ones_like(rows, dtype=torch.bool)
    keep.scatter_(1, length - 1 - order, False)
    return keep.view(scores.shape)
