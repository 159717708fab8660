"""Scores: what a pruning event ranks.

A score is a small object the engine asks four things:

- ``fused_histogram``: True when the score is |w| itself, whose level-0
  histogram the fused step builds while it writes the weights (an event then
  needs no extra pass over them);
- ``observe(opt, t, event)``: called once per taken step, after the inf/NaN
  check and before the update, with the gradients and weights of step t;
- ``tensors(opt)``: the score of every prunable tensor (None for |w|);
- ``release(opt)``: called after the last event, when the mask is fixed.

``hyper()`` and ``record()``/``load_record()`` put what defines and what
carries the score into checkpoints; ``fp32_state_keys`` names per-param
state kept in fp32 whatever the param dtype. ``observes_gradients`` tells
the engine the score takes in gradients before the inf/NaN check is known,
so that check is read at once.

A score that accumulates inside the fused step (movement) says so with
``owns_step(t)`` and makes the step's op call itself in
``fused_step(opt, params, group, step, t, gate)``, as a regulariser that
owns its step does; ``signed`` says its values can be negative (the event
then ranks them with ``Events._signed_threshold``, not by |x|).
"""
from __future__ import annotations

import torch

from . import score_ops
from .engine.buckets import adamw_hyper, adamw_lists
from .engine.distributed import local


class Magnitude:
    """|w|: magnitude pruning (MGPP, GMP)."""

    name = "magnitude"
    fused_histogram = True
    observes_gradients = False
    fp32_state_keys = ()

    def hyper(self):
        return {}

    def record(self):
        return {}

    def load_record(self, record):
        pass

    def observe(self, opt, t, event):
        pass

    def tensors(self, opt):
        return None

    def release(self, opt):
        pass

    def owns_step(self, t):
        return False


class PlatonImportance:
    """PLATON's upper confidence bound of importance, Ibar * U.

    Importance I = |theta * grad| (the weight and the loss gradient before
    the update) is averaged over a window of ``prune_interval`` steps. At
    each window end (every multiple of ``prune_interval`` up to t_e, and
    every event step)::

        Ibar <- b1 * Ibar + (1 - b1) * I
        U    <- b2 * U    + (1 - b2) * |I - Ibar|

    A step in which a weight has no gradient adds 0 to its window (the
    window mean still divides by the window's length). State: three fp32
    tensors per prunable weight (window sum, Ibar, U), freed once the final
    mask is fixed.
    """

    name = "platon"
    fused_histogram = False
    observes_gradients = True
    fp32_state_keys = ("ipt_sum", "ipt_bar", "ipt_unc")

    def __init__(self, importance_betas=(0.85, 0.95)):
        if not (isinstance(importance_betas, (tuple, list)) and len(importance_betas) == 2
                and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0.0 <= b < 1.0
                        for b in importance_betas)):
            raise ValueError(f"importance_betas must be two numbers in [0, 1), got {importance_betas!r}")
        self.importance_betas = tuple(float(b) for b in importance_betas)
        self.window = 0  # steps accumulated in the current window

    def hyper(self):
        return dict(importance_betas=list(self.importance_betas))

    def record(self):
        return {"window": self.window}

    def load_record(self, record):
        self.window = int(record.get("window", 0))

    def _state(self, opt, p):
        state = opt.state[p]
        if "ipt_sum" not in state:
            for key in self.fp32_state_keys:
                state[key] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
        return state

    def observe(self, opt, t, event):
        sch = opt.schedule
        if t > sch.t_e:
            return  # the final mask is fixed: no more scores needed
        prunable = [p for _, _, p in opt._prunable()]
        for p in prunable:
            st = self._state(opt, p)
            if p.grad is not None:
                st["ipt_sum"].add_((p.detach().float() * p.grad.float()).abs_())
        self.window += 1
        if event or t % sch.prune_interval == 0:
            b1, b2 = self.importance_betas
            for p in prunable:
                st = self._state(opt, p)
                ipt = st["ipt_sum"].div_(self.window)
                # Products rounded before the sum, as the formula reads (and
                # the reference computes it): add_(x, alpha=a) would fuse them.
                st["ipt_bar"].mul_(b1).add_(ipt * (1.0 - b1))
                st["ipt_unc"].mul_(b2).add_((ipt - st["ipt_bar"]).abs_().mul_(1.0 - b2))
                st["ipt_sum"].zero_()
            self.window = 0

    def tensors(self, opt):
        return [local(st["ipt_bar"] * st["ipt_unc"])
                for st in (self._state(opt, p) for _, _, p in opt._prunable())]

    def release(self, opt):
        for _, _, p in opt._prunable():
            for key in self.fp32_state_keys:
                opt.state[p].pop(key, None)

    def owns_step(self, t):
        return False


class MovementScore:
    """Movement pruning's score (Sanh et al. 2020): S accumulates
    ``-score_lr * grad * theta`` every step (theta the weight before the
    update, grad the loss gradient), so weights moving away from zero gain
    score and weights shrinking towards it lose it. The lowest S are pruned.

    The accumulation rides in the fused step (``movement_step_``: one fp32
    read and write per weight on top of AdamW, no pass of its own) up to
    the last event; then S is freed and the mask is fixed. A step in which
    a weight has no gradient leaves its score as it is. A constant
    ``score_lr`` scales every score alike, so it does not change the
    ranking; it is there to keep S in a comfortable range. State: one fp32
    tensor per prunable weight.
    """

    name = "movement"
    fused_histogram = False
    observes_gradients = False  # read inside the gated step: a failed check writes nothing
    signed = True
    fp32_state_keys = ("movement_score",)

    def __init__(self, score_lr=1.0):
        if isinstance(score_lr, bool) or not isinstance(score_lr, (int, float)) \
                or not (score_lr > 0 and score_lr < float("inf")):
            raise ValueError(f"score_lr must be a finite number > 0, got {score_lr!r}")
        self.score_lr = float(score_lr)

    def hyper(self):
        return dict(score_lr=self.score_lr)

    def record(self):
        return {}

    def load_record(self, record):
        pass

    def _score(self, opt, p):
        state = opt.state[p]
        if "movement_score" not in state:
            state["movement_score"] = torch.zeros_like(p, dtype=torch.float32,
                                                       memory_format=torch.contiguous_format)
        return state["movement_score"]

    def observe(self, opt, t, event):
        pass

    def owns_step(self, t):
        return True  # the engine asks only up to the last event

    def fused_step(self, opt, ps, group, step, t, gate):
        score_ops.movement_step_(*adamw_lists(opt, ps), [local(self._score(opt, p)) for p in ps],
                                 **adamw_hyper(group, step), score_lr=self.score_lr, apply_if=gate)

    def tensors(self, opt):
        return [local(self._score(opt, p)) for _, _, p in opt._prunable()]

    def release(self, opt):
        for _, _, p in opt._prunable():
            opt.state[p].pop("movement_score", None)
