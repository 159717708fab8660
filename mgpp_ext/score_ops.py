"""The fused step of the scores that accumulate while the weights train.

``movement_step_`` is AdamW with movement pruning's score riding in the
same pass (schema in ``csrc/score_ops.cpp``, CPU kernel in
``csrc/cpu/score_cpu.cpp``, CUDA kernel beside the regularisers' in
``csrc/cuda/regulariser_kernel.cu``): the score costs one fp32 read and write per
weight on top of the step, and no pass of its own.
``mgpp_ext.reference.ReferenceMGPP(method="movement")`` is the plain-PyTorch
specification the kernel is tested against.
"""
from __future__ import annotations

import torch

from . import ops

__all__ = ["movement_step_"]


def movement_step_(params, grads, exp_avgs, exp_avg_sqs, scores, *, lr, beta1, beta2, eps,
                   weight_decay, step, score_lr, apply_if=None):
    """AdamW with movement's score, in place and in one pass: for each
    param, before its update, ``scores[i] -= score_lr * (grads[i] *
    params[i])`` (fp32, every product rounded on its own), then the plain
    AdamW step. ``scores`` are fp32 tensors shaped like the params;
    ``exp_avgs``/``exp_avg_sqs`` have the params' dtype or fp32.
    ``apply_if``: a one-element bool tensor on the params' device; False
    leaves the params, moments and scores as they are."""
    ops.require_extension()
    torch.ops.mgpp_ext.movement_step_(list(params), list(grads), list(exp_avgs), list(exp_avg_sqs),
                                      list(scores), float(lr), float(beta1), float(beta2), float(eps),
                                      float(weight_decay), int(step), float(score_lr), apply_if)


if ops.EXTENSION_ERROR is None:

    @torch.library.register_fake("mgpp_ext::movement_step_")
    def _(params, grads, exp_avgs, exp_avg_sqs, scores, lr, beta1, beta2, eps, weight_decay, step,
          score_lr, apply_if=None):
        return None
