"""SparseGPT (Frantar and Alistarh 2023, "SparseGPT: Massive Language Models
Can Be Accurately Pruned in One-Shot").

With H = 2 X X^T / n over the calibration tokens (n of them), damped by
``percdamp`` (1%) of its mean diagonal, and inputs that never fire (a zero
diagonal) set to H_jj = 1 with their weights zeroed, the columns are
processed in blocks of ``blocksize`` (128): at the start of a block its
mask is chosen by w^2 / [H^-1]_jj^2 (unstructured: the smallest fraction s
of the block's scores; n:m: at every m-th column, the m - n smallest of the
next m in each row), then column by column each pruned weight is removed
and the error is spread over the block's remaining columns by the OBS
update with the upper Cholesky factor of H^-1; the block's accumulated
error then updates the columns to its right at once (lazy batch updates).
"""
from __future__ import annotations

import torch


class Hessian:
    """X^T X summed over tokens (fp32, as SparseGPT's reference code keeps
    it: the O(tokens * in^2) product is the dominant cost of the method, and
    fp64 doubles it), and the token count."""

    def __init__(self, in_features, device):
        self.xtx = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.tokens = 0

    def add(self, x):
        x = x.reshape(-1, x.shape[-1]).float()
        self.xtx.addmm_(x.t(), x)
        self.tokens += x.shape[0]

    def matrix(self):
        return (2.0 / self.tokens) * self.xtx


def inverse_factor(h, percdamp):
    """The dead inputs (a zero diagonal) and the upper Cholesky factor of the
    damped H^-1 (float32, as SparseGPT's reference code computes it)."""
    h = h.float().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    damp = percdamp * torch.mean(torch.diag(h))
    idx = torch.arange(h.shape[0], device=h.device)
    h[idx, idx] += damp
    hinv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return dead, torch.linalg.cholesky(hinv, upper=True)


class SparseGPT:
    name = "sparsegpt"
    options = {"blocksize": 128, "percdamp": 0.01}
    needs_inputs = True

    def __init__(self, blocksize=128, percdamp=0.01):
        if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
            raise ValueError(f"blocksize must be an int >= 1, got {blocksize!r}")
        # > 0: undamped, the Hessian of too few calibration tokens is singular.
        if isinstance(percdamp, bool) or not (isinstance(percdamp, (int, float)) and 0 < percdamp < 1):
            raise ValueError(f"percdamp must be a number in (0, 1), got {percdamp!r}")
        self.blocksize = blocksize
        self.percdamp = float(percdamp)

    def collector(self, in_features, device="cpu"):
        return Hessian(in_features, device)

    @torch.no_grad()
    def prune(self, w, stats, sparsity, nm):
        rows, cols = w.shape
        W = w.float().clone()
        dead, hinv = inverse_factor(stats.matrix(), self.percdamp)
        W[:, dead] = 0.0
        bs = self.blocksize
        if nm is not None:
            bs = max(nm[1], bs // nm[1] * nm[1])  # blocks hold whole groups
        err_total = 0.0
        for i1 in range(0, cols, bs):
            i2 = min(i1 + bs, cols)
            count = i2 - i1
            W1 = W[:, i1:i2].clone()
            Q1 = torch.zeros_like(W1)
            Err1 = torch.zeros_like(W1)
            Hinv1 = hinv[i1:i2, i1:i2]
            d = torch.diag(Hinv1)
            if nm is None:
                tmp = W1 ** 2 / d.view(1, -1) ** 2
                k = int(tmp.numel() * sparsity)
                mask1 = torch.zeros_like(W1, dtype=torch.bool)
                if k > 0:
                    thresh = torch.sort(tmp.flatten())[0][k - 1]
                    mask1 = tmp <= thresh
            else:
                mask1 = torch.zeros_like(W1, dtype=torch.bool)
            for i in range(count):
                col = W1[:, i]
                if nm is not None and i % nm[1] == 0:
                    n, m = nm
                    tmp = W1[:, i:i + m] ** 2 / d[i:i + m].view(1, -1) ** 2
                    drop = torch.topk(tmp, m - n, dim=1, largest=False)[1]
                    mask1.scatter_(1, i + drop, True)
                q = col.clone()
                q[mask1[:, i]] = 0.0
                Q1[:, i] = q
                e = (col - q) / Hinv1[i, i]
                err_total += float(((col - q) ** 2 / Hinv1[i, i] ** 2).sum()) / 2
                W1[:, i:] -= e.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
                Err1[:, i] = e
            W[:, i1:i2] = Q1
            W[:, i2:] -= Err1 @ hinv[i1:i2, i2:]
        w.copy_(W.to(w.dtype))
        return {"error": err_total}
