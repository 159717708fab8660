"""The whole MGPP step in plain PyTorch, written to read like README.md's "The algorithm in brief".

This is the specification the fused kernels are tested against, not the fast
path: it concatenates every |theta| and calls ``torch.kthvalue`` (a copy of
all prunable weights per event), exactly as the authors' code does.

Numerics follow the kernels' contract: parameters may be fp32, bf16 or fp16;
every step widens param, grad and moments to fp32, does the math in fp32 and
rounds back to the storage dtype. Every fp32 operation here is one the
kernels perform in the same order, each rounded once, so that one step from
the same state gives the same bits on every CPU and GPU:

- exp is ``exp_fp32``, the kernels' own (``csrc/exp_fp32.h``): torch.exp
  rounds differently by CPU and device;
- sqrt is rounded from float64 (``sqrt_fp32``): torch's CPU sqrt calls
  Intel MKL, whose code path on non-Intel CPUs is off by one ulp for about
  15% of inputs;
- division by a scalar goes through a tensor: on CUDA, torch divides by a
  host scalar as a multiplication by its reciprocal;
- beta^step is ``power``, the kernels' binary exponentiation.
"""
from __future__ import annotations

import math
from fractions import Fraction

import torch

# The constants of csrc/exp_fp32.h (all exact in fp32).
_EXP_MAX_ARG = 104.0
_LOG2E = 1.44269504088896341
_LN2_HI = 0.693359375
_LN2_LO = -2.12194440e-4
_ROUND = 12582912.0  # 1.5 * 2^23
_ROUND_BITS = 0x4B400000
_EXP_C = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
          1.6666665459e-1, 5.0000001201e-1)


def _f32(x):
    """A Python float rounded to fp32 (scalars in fp32 ops are rounded so anyway)."""
    return torch.tensor(x, dtype=torch.float32).item()


_LOG2E, _LN2_LO = _f32(_LOG2E), _f32(_LN2_LO)
_EXP_C = tuple(_f32(c) for c in _EXP_C)


def exp_fp32(x):
    """exp of an fp32 tensor, bitwise as the kernels compute it.

    x = k ln2 + r (Cody-Waite, |r| <= ln2/2), exp(r) by the Cephes
    polynomial, times 2^k in two exact halves; under 1 ulp from exp;
    +inf above 104, 0 below -104, NaN for NaN.
    """
    nan = torch.isnan(x)
    xc = torch.where(nan, torch.zeros_like(x), x).clamp(-_EXP_MAX_ARG, _EXP_MAX_ARG)
    kr = xc * _LOG2E + _ROUND  # rounds xc * log2(e) to an integer, ties to even
    k = kr - _ROUND
    r = xc - k * _LN2_HI
    r = r - k * _LN2_LO
    r2 = r * r
    c0, c1, c2, c3, c4, c5 = _EXP_C
    q = c0 * r + c1
    q = q * r + c2
    q = q * r + c3
    q = q * r + c4
    q = q * r + c5
    y = q * r2 + r
    y = y + 1.0
    n = kr.view(torch.int32) - _ROUND_BITS
    n1 = n >> 1
    n2 = n - n1
    y = y * ((n1 + 127) << 23).view(torch.float32)
    y = y * ((n2 + 127) << 23).view(torch.float32)
    return torch.where(nan, x, y)


def sqrt_fp32(x):
    """The correctly rounded fp32 sqrt: sqrt in float64, then rounded.

    A double carries more than 2 * 24 + 2 bits, so rounding its sqrt to fp32
    gives the correctly rounded fp32 sqrt (even a double sqrt one ulp off
    stays clear of the fp32 rounding boundaries).
    """
    return x.double().sqrt().float()


def power(base, exponent):
    """base ** exponent for an int exponent >= 0, as csrc/bias_correction.h."""
    result = 1.0
    while exponent > 0:
        if exponent & 1:
            result *= base
        base *= base
        exponent >>= 1
    return result


def prior_gradient(theta, n, lam, sigma0_sq, sigma1_sq):
    """(1/n) * d/dtheta [-log pi(theta)] for pi = lam N(0,s1) + (1-lam) N(0,s0)."""
    c1 = math.log(lam) - math.log1p(-lam) + 0.5 * math.log(sigma0_sq) - 0.5 * math.log(sigma1_sq)
    c2 = 0.5 / sigma0_sq - 0.5 / sigma1_sq
    # P(spike | theta) as 1 / (1 + exp(c1 + c2 theta^2)): exp overflows to
    # inf away from zero and p0 becomes exactly 0, never NaN.
    p0 = 1.0 / (1.0 + exp_fp32(c1 + c2 * (theta * theta)))
    return (theta * (1.0 / n)) * (p0 * (1.0 / sigma0_sq) + (1.0 - p0) * (1.0 / sigma1_sq))


def cubic_sparsity(t, t_s, t_e, s_i, s_f):
    """s_t = s_f + (s_i - s_f) (1 - (t - t_s)/(t_e - t_s))^3 on [t_s, t_e],
    as an exact fraction of the decimals s_i and s_f (s_i at t_s, s_f at t_e)."""
    s_i, s_f = Fraction(repr(float(s_i))), Fraction(repr(float(s_f)))
    if t_e == t_s:
        return s_f
    return s_f + (s_i - s_f) * (1 - Fraction(t - t_s, t_e - t_s)) ** 3


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
    in ``mgpp_ext.MGPP``. ``method`` selects the baselines (README.md, "The
    algorithm in brief") on the same schedule: ``"gmp"`` (no prior) and ``"platon"``
    (no prior; the threshold is on the importance score, with
    ``importance_betas``), and the neighbours: ``"movement"`` (no prior;
    S -= score_lr * grad * theta before each update, the threshold the k-th
    smallest signed S) and ``"mgpp_platon"`` (MGPP's prior, PLATON's score).
    """

    def __init__(self, params, prune, *, lr=5e-5, betas=(0.9, 0.98), eps=1e-6,
                 weight_decay=0.0, total_steps, num_train_examples,
                 target_sparsity=0.9, initial_sparsity=0.0, initial_warmup_steps=0,
                 final_finetune_steps=0, prune_interval=100, lambda_mix=0.1,
                 sigma0_sq=1e-10, sigma1_sq=0.05, lambda_anneal=(1.0, 0.001),
                 method="mgpp", importance_betas=(0.85, 0.95), score_lr=1.0):
        if method not in ("mgpp", "gmp", "platon", "movement", "mgpp_platon"):
            raise ValueError("method must be 'mgpp', 'gmp', 'platon', 'movement' or 'mgpp_platon', "
                             f"got {method!r}")
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
        # Movement: S accumulates -score_lr * grad * theta every step.
        self.score_lr = score_lr
        self.movement = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]

    def is_event(self, t):
        return t == self.t_s or t == self.t_e or (self.t_s < t < self.t_e and t % self.interval == 0)

    @torch.no_grad()
    def step(self, lr=None):
        t = self.t
        lr = self.lr if lr is None else lr
        prior_on = t <= self.t_e and self.method in ("mgpp", "mgpp_platon")
        if self.method in ("platon", "mgpp_platon") and t <= self.t_e:
            self._update_importance(t)
        lam_t = lambda_annealed(t, self.t_s, self.t_e, self.lam, self.alpha_i, self.alpha_f)
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            self.steps[i] += 1
            step = self.steps[i]  # AdamW's bias-correction count for this tensor
            theta = p.float()
            grad = p.grad.float()
            if self.prune[i] and self.method == "movement" and t <= self.t_e:
                # Before the update, with the loss gradient; each product
                # rounded on its own.
                self.movement[i] = self.movement[i] - torch.mul(grad * theta, self.score_lr)
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
            step_size = lr / (1.0 - power(self.beta1, step))
            bc2_sqrt = torch.tensor(math.sqrt(1.0 - power(self.beta2, step)), device=v.device)
            denom = sqrt_fp32(v) / bc2_sqrt + self.eps
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
        if self.method in ("platon", "mgpp_platon"):
            scores = [self.ipt_bar[i] * self.ipt_unc[i] for i, f in enumerate(self.prune) if f]
        elif self.method == "movement":
            scores = [self.movement[i] for i, f in enumerate(self.prune) if f]
        else:
            scores = [p.float().abs() for p in pruned]
        n_total = sum(p.numel() for p in pruned)
        s_t = cubic_sparsity(t, self.t_s, self.t_e, self.s_i, self.s_f)
        k = math.floor(s_t * n_total)  # exact: s_t is a Fraction
        masks = []
        if k > 0:
            if self.method == "movement":  # signed: the k-th smallest S itself
                tau = torch.kthvalue(torch.cat([sc.reshape(-1) for sc in scores]), k).values
            else:
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
