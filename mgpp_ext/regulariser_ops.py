"""The steps and projections of the ADMM and SR-STE regularisers.

These are the per-family ops the regularisers in ``mgpp_ext.regularisers``
call, thin wrappers over the fused ``torch.ops.mgpp_ext`` kernels (schemas
and their definitions in ``csrc/regulariser_ops.cpp``; CPU in
``csrc/cpu/regulariser_cpu.cpp``, CUDA in ``csrc/cuda/regulariser_cuda.cu``).
Each op reads and writes memory once. ``mgpp_ext.reference_regularisers``
holds the same ops in plain PyTorch, and the kernels are tested against it
bit for bit.

ADMM's two tensors Z and U are held as one fp32 tensor A per param and a
packed 1-bit mask M (``new_dual_mask``): Z = A M and U = A (1 - M), which
is exact right after a projection, when their supports are disjoint. 4
bytes and 1 bit per weight instead of 8 bytes.
"""
from __future__ import annotations

import torch

from . import ops

__all__ = ["new_dual_mask", "pack_dual_mask", "unpack_dual_mask", "admm_step_", "admm_combine_",
           "admm_project_", "admm_threshold_mask_", "srste_step_"]


def _bit_weights(device):
    return torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=device)


def new_dual_mask(like):
    """A zeroed packed mask for a tensor like ``like``: ceil(numel / 8)
    bytes, bit j of byte i for element 8 i + j (row-major); the padding bits
    of the last byte are clear."""
    return torch.zeros(-(-like.numel() // 8), dtype=torch.uint8, device=like.device)


def pack_dual_mask(keep, out=None):
    """Pack a bool tensor into bits (see ``new_dual_mask``)."""
    flat = keep.reshape(-1)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    packed = (flat.view(-1, 8).to(torch.uint8) * _bit_weights(flat.device)).sum(1, dtype=torch.uint8)
    if out is None:
        return packed
    out.copy_(packed)
    return out


def unpack_dual_mask(packed, like):
    """The bool tensor shaped like ``like`` that ``packed`` holds."""
    bits = (packed.view(-1, 1) & _bit_weights(packed.device)) != 0
    return bits.reshape(-1)[: like.numel()].view(like.shape)


def _list(xs):
    return list(xs)


def admm_step_(params, grads, exp_avgs, exp_avg_sqs, duals, dual_masks, *, lr, beta1, beta2, eps,
               weight_decay, step, rho, apply_if=None):
    """AdamW on ``L(W) + (rho / 2) ||W - Z + U||^2``, in place and in one
    pass: the gradient each param's AdamW step sees is ``g + rho ((W - Z) +
    U)``, with Z and U from ``duals[i]`` (A, fp32) and ``dual_masks[i]``
    (packed M). ``exp_avgs``/``exp_avg_sqs`` have the params' dtype or
    fp32. ``apply_if``: a one-element bool tensor on the params' device;
    False leaves everything as it is."""
    ops.require_extension()
    torch.ops.mgpp_ext.admm_step_(_list(params), _list(grads), _list(exp_avgs), _list(exp_avg_sqs),
                                  _list(duals), _list(dual_masks), float(lr), float(beta1),
                                  float(beta2), float(eps), float(weight_decay), int(step),
                                  float(rho), apply_if)


def admm_combine_(params, duals, dual_masks):
    """A <- W + U for each param (the argument of a global projection)."""
    ops.require_extension()
    torch.ops.mgpp_ext.admm_combine_(_list(params), _list(duals), _list(dual_masks))


def admm_project_(params, duals, dual_masks, n, m, dims):
    """Z <- Proj_{n:m}(W + U), U <- U + W - Z, in place and in one pass:
    A <- W + U and M <- the n:m keep mask of |A| along ``dims[i]`` (ties to
    the lower index, as ``nm_mask``)."""
    ops.require_extension()
    torch.ops.mgpp_ext.admm_project_(_list(params), _list(duals), _list(dual_masks), int(n), int(m),
                                     [int(d) for d in dims])


def admm_threshold_mask_(duals, select_state, dual_masks):
    """M <- |A| > tau, tau the finished select's threshold (the global
    projection onto the k largest |W + U|)."""
    ops.require_extension()
    torch.ops.mgpp_ext.admm_threshold_mask_(_list(duals), select_state, _list(dual_masks))


def srste_step_(params, grads, dense, exp_avgs, exp_avg_sqs, masks, *, lr, beta1, beta2, eps,
                weight_decay, step, lambda_w, n, m, dims, update_mask, apply_if=None):
    """SR-STE's step, in place and in one pass: AdamW on the dense W
    (``dense[i]``, the params' dtype) with the gradient ``g + lambda_w (1 -
    M) W`` (g taken at W M), then, if ``update_mask``, M (``masks[i]``,
    bool) <- the n:m mask of the updated |W| along ``dims[i]``, and the
    param <- W M (a dropped weight is +0)."""
    ops.require_extension()
    torch.ops.mgpp_ext.srste_step_(_list(params), _list(grads), _list(dense), _list(exp_avgs),
                                   _list(exp_avg_sqs), _list(masks), float(lr), float(beta1),
                                   float(beta2), float(eps), float(weight_decay), int(step),
                                   float(lambda_w), int(n), int(m), [int(d) for d in dims],
                                   bool(update_mask), apply_if)


if ops.EXTENSION_ERROR is None:

    @torch.library.register_fake("mgpp_ext::admm_step_")
    def _(params, grads, exp_avgs, exp_avg_sqs, duals, dual_masks, lr, beta1, beta2, eps,
          weight_decay, step, rho, apply_if=None):
        return None

    @torch.library.register_fake("mgpp_ext::admm_combine_")
    def _(params, duals, dual_masks):
        return None

    @torch.library.register_fake("mgpp_ext::admm_project_")
    def _(params, duals, dual_masks, n, m, dims):
        return None

    @torch.library.register_fake("mgpp_ext::admm_threshold_mask_")
    def _(duals, select_state, dual_masks):
        return None

    @torch.library.register_fake("mgpp_ext::srste_step_")
    def _(params, grads, dense, exp_avgs, exp_avg_sqs, masks, lr, beta1, beta2, eps, weight_decay,
          step, lambda_w, n, m, dims, update_mask, apply_if=None):
        return None
