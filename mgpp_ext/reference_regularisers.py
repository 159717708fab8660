"""Plain-PyTorch references of the ADMM and SR-STE ops.

Each function here is the op of the same name in
``mgpp_ext.regulariser_ops`` (the fused kernels), written to read like its
definition: the AdamW arithmetic in the order and roundings of
``mgpp_ext.reference`` and the n:m rule of ``mgpp_ext.reference_nm``. The
kernels are tested against these bit for bit on the CPU.

ADMM's two tensors Z and U are held as one fp32 tensor A and a 1-bit mask M
(``pack_dual_mask``): Z = A M and U = A (1 - M).
"""
from __future__ import annotations

import math

import torch

from .regulariser_ops import new_dual_mask, pack_dual_mask, unpack_dual_mask  # noqa: F401
from .reference_nm import nm_mask_reference as nm_mask
from .reference import power, sqrt_fp32


def _adamw(theta, grad, m, v, *, lr, beta1, beta2, eps, weight_decay, step):
    """AdamW in fp32, written as ``mgpp_ext.reference`` (and the kernels)
    round it."""
    theta = theta * (1.0 - lr * weight_decay)
    m = beta1 * m + (1.0 - beta1) * grad
    v = beta2 * v + (1.0 - beta2) * (grad * grad)
    step_size = lr / (1.0 - power(beta1, step))
    bc2_sqrt = torch.tensor(math.sqrt(1.0 - power(beta2, step)), device=theta.device)
    denom = sqrt_fp32(v) / bc2_sqrt + eps
    return theta - step_size * (m / denom), m, v


def _gate_closed(apply_if):
    return apply_if is not None and not bool(apply_if)


def _zu(a, packed):
    keep = unpack_dual_mask(packed, a)
    return a.masked_fill(~keep, 0.0), a.masked_fill(keep, 0.0)


@torch.no_grad()
def admm_step_(params, grads, exp_avgs, exp_avg_sqs, duals, dual_masks, *, lr, beta1, beta2, eps,
               weight_decay, step, rho, apply_if=None):
    """AdamW on ``L(W) + (rho / 2) ||W - Z + U||^2``, in place: the gradient
    each param's AdamW step sees is ``g + rho ((W - Z) + U)``, with Z and U
    from ``duals[i]`` (A) and ``dual_masks[i]`` (packed M). ``apply_if``: a
    one-element bool tensor; False leaves everything as it is."""
    if rho <= 0:
        raise ValueError(f"admm_step_: 'rho' must be > 0, got {rho}")
    if _gate_closed(apply_if):
        return
    for p, g, m, v, a, k in zip(params, grads, exp_avgs, exp_avg_sqs, duals, dual_masks):
        w = p.float()
        z, u = _zu(a, k)
        grad = g.float() + rho * ((w - z) + u)
        theta, m_new, v_new = _adamw(w, grad, m.float(), v.float(), lr=lr, beta1=beta1,
                                     beta2=beta2, eps=eps, weight_decay=weight_decay, step=step)
        p.copy_(theta)
        m.copy_(m_new)
        v.copy_(v_new)


@torch.no_grad()
def admm_combine_(params, duals, dual_masks):
    """A <- W + U for each param (the argument of the next projection)."""
    for p, a, k in zip(params, duals, dual_masks):
        _, u = _zu(a, k)
        a.copy_(p.float() + u)


@torch.no_grad()
def admm_project_(params, duals, dual_masks, n, m, dims):
    """Z <- Proj_{n:m}(W + U), U <- U + W - Z, in place: A <- W + U and
    M <- the n:m keep mask of |A| along ``dims[i]``."""
    admm_combine_(params, duals, dual_masks)
    for a, k, d in zip(duals, dual_masks, dims):
        pack_dual_mask(nm_mask(a.abs(), n, m, d), out=k)


@torch.no_grad()
def admm_threshold_mask_(duals, select_state, dual_masks):
    """M <- |A| > tau, tau the finished select's threshold (the global
    projection onto the k largest |W + U|)."""
    tau = select_state[2:3].to(torch.int32).view(torch.float32).squeeze(0)
    for a, k in zip(duals, dual_masks):
        pack_dual_mask(a.abs() > tau, out=k)


@torch.no_grad()
def srste_step_(params, grads, dense, exp_avgs, exp_avg_sqs, masks, *, lr, beta1, beta2, eps,
                weight_decay, step, lambda_w, n, m, dims, update_mask, apply_if=None):
    """SR-STE's step, in place: AdamW on the dense W with the gradient
    ``g + lambda_w (1 - M) W`` (g taken at W M), then, if ``update_mask``,
    M <- the n:m mask of the updated |W| along ``dims[i]``, and the param
    <- W M."""
    if lambda_w < 0:
        raise ValueError(f"srste_step_: 'lambda_w' must be >= 0, got {lambda_w}")
    if _gate_closed(apply_if):
        return
    for p, g, w, m_, v, keep, d in zip(params, grads, dense, exp_avgs, exp_avg_sqs, masks, dims):
        wf = w.float()
        grad = g.float()
        grad = torch.where(keep, grad, grad + lambda_w * wf)
        theta, m_new, v_new = _adamw(wf, grad, m_.float(), v.float(), lr=lr, beta1=beta1,
                                     beta2=beta2, eps=eps, weight_decay=weight_decay, step=step)
        w.copy_(theta)
        m_.copy_(m_new)
        v.copy_(v_new)
        if update_mask:
            keep.copy_(nm_mask(w.abs(), n, m, d))
        p.copy_(w.masked_fill(~keep, 0.0))
