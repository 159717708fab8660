"""The whole MGPP step in plain PyTorch, written to read like ALGORITHM.md §1.

This is the specification the fused kernels are tested against, not the fast
path: it concatenates every |theta| and calls ``torch.kthvalue`` (a copy of
all prunable weights per event), exactly as the authors' code does.

Numerics follow the kernels' contract: parameters may be fp32, bf16 or fp16;
every step widens param, grad and moments to fp32, does the math in fp32 and
rounds back to the storage dtype.
"""
from __future__ import annotations

import math

import torch


def prior_gradient(theta, n, lam, sigma0_sq, sigma1_sq):
    """(1/n) * d/dtheta [-log pi(theta)] for pi = lam N(0,s1) + (1-lam) N(0,s0)."""
    c1 = math.log(lam) - math.log1p(-lam) + 0.5 * math.log(sigma0_sq) - 0.5 * math.log(sigma1_sq)
    c2 = 0.5 / sigma0_sq - 0.5 / sigma1_sq
    # P(spike | theta) as 1 / (1 + exp(c1 + c2 theta^2)): exp overflows to
    # inf away from zero and p0 becomes exactly 0, never NaN.
    p0 = 1.0 / (1.0 + torch.exp(c1 + c2 * (theta * theta)))
    return (theta * (1.0 / n)) * (p0 * (1.0 / sigma0_sq) + (1.0 - p0) * (1.0 / sigma1_sq))


def cubic_sparsity(t, t_s, t_e, s_i, s_f):
    """s_t = s_f + (s_i - s_f) (1 - (t - t_s)/(t_e - t_s))^3 on [t_s, t_e]."""
    if t_e == t_s:
        return s_f
    return s_f + (s_i - s_f) * (1.0 - (t - t_s) / (t_e - t_s)) ** 3


def lambda_annealed(t, t_s, t_e, lam, alpha_i, alpha_f):
    """lambda_t = lambda * alpha_t; alpha linear from alpha_i at t_s to alpha_f at t_e."""
    if t <= t_s:
        alpha = alpha_i
    elif t >= t_e:
        alpha = alpha_f
    else:
        alpha = alpha_i + (alpha_f - alpha_i) * (t - t_s) / (t_e - t_s)
    return lam * alpha


def global_threshold(weights, k):
    """tau = k-th smallest |theta| over all weights (the authors' cat + kthvalue)."""
    flat = torch.cat([w.detach().float().abs().reshape(-1) for w in weights])
    return torch.kthvalue(flat, k).values


class ReferenceMGPP:
    """MGPP over a list of tensors, one step per call, gradients from ``.grad``.

    ``prune[i]`` says whether ``params[i]`` is prunable. Hyper-parameters as
    in ``mgpp_ext.MGPP``. ``method`` selects the baselines of ALGORITHM.md
    section 2 on the same schedule: ``"gmp"`` (no prior) and ``"platon"``
    (no prior; the threshold is on the importance score, with
    ``importance_betas``).
    """

    def __init__(self, params, prune, *, lr=5e-5, betas=(0.9, 0.98), eps=1e-6,
                 weight_decay=0.0, total_steps, num_train_examples,
                 target_sparsity=0.9, initial_sparsity=0.0, initial_warmup_steps=0,
                 final_finetune_steps=0, prune_interval=100, lambda_mix=0.1,
                 sigma0_sq=1e-10, sigma1_sq=0.05, lambda_anneal=(1.0, 0.001),
                 method="mgpp", importance_betas=(0.85, 0.95)):
        if method not in ("mgpp", "gmp", "platon"):
            raise ValueError(f"method must be 'mgpp', 'gmp' or 'platon', got {method!r}")
        self.method = method
        self.params = list(params)
        self.prune = list(prune)
        self.lr, (self.beta1, self.beta2), self.eps, self.wd = lr, betas, eps, weight_decay
        self.n = num_train_examples
        self.s_f, self.s_i = target_sparsity, initial_sparsity
        self.t_s = initial_warmup_steps
        self.t_e = total_steps - final_finetune_steps - 1
        self.interval = prune_interval
        self.lam, self.sigma0_sq, self.sigma1_sq = lambda_mix, sigma0_sq, sigma1_sq
        self.alpha_i, self.alpha_f = lambda_anneal
        self.t = 0
        self.steps = [0] * len(self.params)  # per tensor, as torch.optim.AdamW counts
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.final_mask = None
        self.last_threshold = None
        # PLATON: window sum of |theta * grad|, its EMA Ibar and uncertainty U.
        self.b1_ipt, self.b2_ipt = importance_betas
        self.ipt_sum = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]
        self.ipt_bar = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]
        self.ipt_unc = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]
        self.window = 0

    def is_event(self, t):
        return t == self.t_s or t == self.t_e or (self.t_s < t < self.t_e and t % self.interval == 0)

    @torch.no_grad()
    def step(self, lr=None):
        t = self.t
        lr = self.lr if lr is None else lr
        prior_on = t <= self.t_e and self.method == "mgpp"
        if self.method == "platon" and t <= self.t_e:
            self._update_importance(t)
        lam_t = lambda_annealed(t, self.t_s, self.t_e, self.lam, self.alpha_i, self.alpha_f)
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            self.steps[i] += 1
            step = self.steps[i]  # AdamW's bias-correction count for this tensor
            theta = p.float()
            grad = p.grad.float()
            if self.prune[i] and prior_on:
                # The prior gradient is added before the AdamW update, so it
                # passes through Adam's normalisation.
                grad = grad + prior_gradient(theta, self.n, lam_t, self.sigma0_sq, self.sigma1_sq)
            m = self.exp_avg[i].float()
            v = self.exp_avg_sq[i].float()
            # AdamW, decoupled weight decay, bias correction as torch.optim.AdamW.
            theta = theta * (1.0 - lr * self.wd)
            m = self.beta1 * m + (1.0 - self.beta1) * grad
            v = self.beta2 * v + (1.0 - self.beta2) * (grad * grad)
            step_size = lr / (1.0 - self.beta1 ** step)
            bc2_sqrt = math.sqrt(1.0 - self.beta2 ** step)
            denom = v.sqrt() / bc2_sqrt + self.eps
            theta = theta - step_size * (m / denom)
            if self.final_mask is not None and self.prune[i]:
                # After t_e the final mask is fixed and re-applied every step.
                theta = torch.where(self.final_mask[i], theta, torch.zeros_like(theta))
            p.copy_(theta)
            self.exp_avg[i].copy_(m)
            self.exp_avg_sq[i].copy_(v)

        if self.is_event(t):
            self._prune_event(t)
        self.t += 1

    def _update_importance(self, t):
        """PLATON: I = |theta * grad| before the update, averaged over a window
        that ends at every multiple of the interval and at every event."""
        for i, p in enumerate(self.params):
            if self.prune[i] and p.grad is not None:
                self.ipt_sum[i] += (p.float() * p.grad.float()).abs()
        self.window += 1
        if self.is_event(t) or t % self.interval == 0:
            for i in range(len(self.params)):
                if not self.prune[i]:
                    continue
                ipt = self.ipt_sum[i] / self.window
                self.ipt_bar[i] = self.b1_ipt * self.ipt_bar[i] + (1 - self.b1_ipt) * ipt
                self.ipt_unc[i] = self.b2_ipt * self.ipt_unc[i] + (1 - self.b2_ipt) * (ipt - self.ipt_bar[i]).abs()
                self.ipt_sum[i].zero_()
            self.window = 0

    def _prune_event(self, t):
        pruned = [p for p, flag in zip(self.params, self.prune) if flag]
        if self.method == "platon":
            scores = [self.ipt_bar[i] * self.ipt_unc[i] for i, f in enumerate(self.prune) if f]
        else:
            scores = [p.float().abs() for p in pruned]
        n_total = sum(p.numel() for p in pruned)
        s_t = cubic_sparsity(t, self.t_s, self.t_e, self.s_i, self.s_f)
        k = math.floor(s_t * n_total)
        masks = []
        if k > 0:
            tau = global_threshold(scores, k)
            self.last_threshold = tau.item()
            for p, score in zip(pruned, scores):
                keep = score > tau  # ties at tau are all pruned
                p.copy_(torch.where(keep, p, torch.zeros_like(p)))
                masks.append(keep)
        else:
            masks = [torch.ones_like(p, dtype=torch.bool) for p in pruned]
        if t == self.t_e:
            it = iter(masks)
            self.final_mask = [next(it) if flag else None for flag in self.prune]
