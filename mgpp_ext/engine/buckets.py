"""AdamW's per-parameter state and the buckets of one fused call.

Why a file of its own: every optimizer here steps a param group the same
way (create the moments on first use, count the step, call one fused op
per bucket of tensors that share a device, a dtype and a step count), and
the engine and the frozen-weight mask learner must agree on it, so that
their checkpoints hold the same state.
"""
from __future__ import annotations

from collections import OrderedDict

import torch

from .distributed import as_float, local


def adamw_buckets(optimizer, group, kind=None):
    """Counts the step of every param of ``group`` that has a gradient and
    returns ``(buckets, stepped)``.

    ``buckets`` maps ``(kind(p), device, dtype, step)`` to the params of
    one fused call, in the group's order; ``kind`` (default: None for all)
    splits tensors that take different ops. ``stepped`` lists the params in
    the order they were counted. A param's ``exp_avg`` and ``exp_avg_sq``
    are created (zeros like it) on its first step.
    """
    buckets, stepped = OrderedDict(), []
    for p in group["params"]:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            raise RuntimeError(f"{type(optimizer).__name__} does not support sparse gradients")
        state = optimizer.state[p]
        if "exp_avg" not in state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        stepped.append(p)
        k = None if kind is None else kind(p)
        buckets.setdefault((k, local(p).device, p.dtype, int(state["step"].item())), []).append(p)
    return buckets, stepped


def adamw_lists(optimizer, ps):
    """The local params, grads, exp_avgs and exp_avg_sqs of one bucket, in
    the order every fused step op takes them."""
    st = [optimizer.state[p] for p in ps]
    return ([local(p) for p in ps], [local(p.grad) for p in ps],
            [local(s["exp_avg"]) for s in st], [local(s["exp_avg_sq"]) for s in st])


def adamw_hyper(group, step):
    """The AdamW keyword arguments of a fused step op for a bucket of
    ``group`` at its ``step``."""
    beta1, beta2 = group["betas"]
    return dict(lr=as_float(group["lr"]), beta1=beta1, beta2=beta2, eps=group["eps"],
                weight_decay=group["weight_decay"], step=step)
