"""Plain-PyTorch specification of the N:M keep rule (``mgpp_ext.nm``).

In every group of ``m`` consecutive entries along ``dim`` (indices
``[0, m), [m, 2m), ...`` of that dim, the other indices fixed), entry ``i`` is
kept iff fewer than ``n`` entries ``j`` of its group beat it, where ``j``
beats ``i`` when ``s_j > s_i``, or ``s_j == s_i`` and ``j < i``. Scores
compare as fp32 values (bf16 / fp16 widened exactly), NaN above ``+inf``
(every NaN equal to every other), ``-0.0`` equal to ``+0.0``.

Written to be read, not to be fast: it builds the ``m x m`` "beats" table of
every group.
"""
from __future__ import annotations

import torch


def _groups(scores: torch.Tensor, m: int, dim: int) -> torch.Tensor:
    """scores as fp32 with the groups in the last dim: [..., groups, m]."""
    s = scores.float().movedim(dim, -1)
    return s.reshape(*s.shape[:-1], s.shape[-1] // m, m)


def nm_mask_reference(scores: torch.Tensor, n: int, m: int, dim: int = -1) -> torch.Tensor:
    """Bool tensor shaped like ``scores``: True where the n:m rule keeps the entry."""
    dim = dim % scores.dim()
    if scores.shape[dim] % m != 0:
        raise ValueError(f"size {scores.shape[dim]} along dim {dim} is not a multiple of m = {m}")
    s = _groups(scores, m, dim)
    nan = torch.isnan(s)
    x_i = s.unsqueeze(-1)    # [..., g, m(i), 1]
    x_j = s.unsqueeze(-2)    # [..., g, 1, m(j)]
    nan_i, nan_j = nan.unsqueeze(-1), nan.unsqueeze(-2)
    # NaN beats every number; between numbers, the fp32 order (-0.0 == +0.0).
    greater = (nan_j & ~nan_i) | (x_j > x_i)
    equal = (nan_j & nan_i) | (x_j == x_i)
    idx = torch.arange(m, device=scores.device)
    lower_index = idx.view(1, m) < idx.view(m, 1)  # [i, j]: j < i
    beats = greater | (equal & lower_index)        # [..., g, i, j]: j beats i
    keep = beats.sum(dim=-1) < n
    keep = keep.reshape(*keep.shape[:-2], -1).movedim(-1, dim)
    return keep.contiguous()


def nm_prune_reference(tensor: torch.Tensor, n: int, m: int, dim: int = -1,
                       scores: torch.Tensor | None = None):
    """(pruned copy, keep mask): entries the rule drops set to +0.0, scored by
    ``scores``, or by ``|tensor|`` when ``scores`` is None."""
    keep = nm_mask_reference(tensor.abs() if scores is None else scores, n, m, dim)
    return torch.where(keep, tensor, torch.zeros((), dtype=tensor.dtype, device=tensor.device)), keep
