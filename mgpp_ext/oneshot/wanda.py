"""Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large
Language Models"): score |W_ij| * ||X_j||_2, the input column's norm over
every calibration token, compared within each output row: each row drops
exactly floor(s * in) (``row_keep_mask``); n:m: the n best of every group
of m along the input dim."""
from __future__ import annotations

import math

import torch

from ..nm import nm_mask
from ..rows import row_keep_mask


class SquaredNorms:
    """Sum over tokens of x_j^2 for every input column j."""

    def __init__(self, in_features, device):
        self.sq = torch.zeros(in_features, dtype=torch.float64, device=device)
        self.tokens = 0

    def add(self, x):
        x = x.reshape(-1, x.shape[-1]).double()
        self.sq += (x * x).sum(0)
        self.tokens += x.shape[0]


class Wanda:
    name = "wanda"
    options = {}
    needs_inputs = True

    def collector(self, in_features, device="cpu"):
        return SquaredNorms(in_features, device)

    @staticmethod
    def scores(w, stats):
        return w.abs().float() * stats.sq.sqrt().float().view(1, -1)

    def prune(self, w, stats, sparsity, nm):
        score = self.scores(w, stats)
        if nm is not None:
            keep = nm_mask(score, nm[0], nm[1], -1)
        else:
            keep = row_keep_mask(score, math.floor(sparsity * w.shape[1]))
        w.masked_fill_(~keep, 0.0)
        return {}
