"""Patterns: which weights compete with each other at a pruning event.

A pattern turns "prune k of the N prunable weights by this score" into
zeros and keep-masks: ``prune(opt, local, k, n_total, hist, want_masks)``
with ``local`` this rank's pieces of the prunable tensors. ``bind(opt)``
checks the prunable tensors once, when the optimizer is built.
``uses_fused_histogram`` says whether the event uses the level-0 histogram
of |w| that the fused step builds. ``hyper()`` goes into checkpoints (empty
for the global pattern, so that checkpoints saved before patterns existed
still load).
"""
from __future__ import annotations

import torch

from . import ops
from .engine.distributed import local


class GlobalPattern:
    """Every prunable weight competes with every other: one exact global
    k-th smallest score (the radix select) over all prunable tensors, and
    every weight at or below it is zeroed (ties at the threshold included,
    so a tie can prune a few more than k)."""

    name = "global"
    uses_fused_histogram = True

    def hyper(self):
        return {}

    def bind(self, opt):
        pass

    def check_target(self, target_sparsity):
        pass

    def prune(self, opt, local, k, n_total, hist, want_masks):
        """Zero the weights at or below the k-th smallest score, set the
        optimizer's threshold, and return the keep-masks when
        ``want_masks`` (else []). For |w| ``hist`` holds the histograms the
        fused step built (an ``EventHist``). None when the step's gate
        failed (nothing changed)."""
        scores = opt.score.tensors(opt)
        if scores is None:
            sel = opt._global_select(local, k, n_total, hist, predict=True)
            if sel is None:
                return None
            masks = [torch.empty_like(p, dtype=torch.bool) for p in local] if want_masks else []
            ops.apply_threshold_(local, sel, masks)
            opt._threshold = ops.threshold_from_select_state(sel)
            return masks
        sel = opt._global_select(scores, k, n_total)
        tau = ops.threshold_from_select_state(sel)
        masks = []
        for p, s in zip(local, scores):
            keep = s > tau  # ties at the threshold are pruned, as for |w|
            p.masked_fill_(~keep, 0.0)
            masks.append(keep)
        opt._threshold = tau
        return masks if want_masks else []



#: The paths to an n:m mask that ``NMPattern`` offers.
NM_PATHS = ("capped", "project")


class NMPattern:
    """n:m semi-structured sparsity: in the final mask every group of m
    consecutive weights along a tensor's input dimension keeps its n
    largest scores (``mgpp_ext.nm_mask``'s rule, ties to the lower index).

    The schedule's target must be 1 - n/m. Two paths lead there:

    - ``"capped"`` (the default): at every event each group's n largest
      scores are safe, and the other m - n of every group compete globally:
      the schedule's k = floor(s_t N) smallest of them (one exact global
      select) are zeroed. So every event prunes exactly the schedule's k
      (ties at the threshold aside), no group ever loses more than m - n,
      and at the last event, where k is every candidate, the mask is
      exactly n:m.
    - ``"project"``: the events are those of ``GlobalPattern`` (unstructured,
      global), and the last one projects onto n:m instead: each group keeps
      its n largest scores.

    The input dimension of each prunable tensor comes from its param
    group's ``"input_dims"`` (``prunable_param_groups`` records it: the last
    dim of an ``nn.Linear`` weight, dim 0 of a GPT-2 ``Conv1D`` weight) and
    is the last dim otherwise. Its size must be a multiple of m.
    """

    name = "n:m"
    uses_fused_histogram = False

    def __init__(self, n, m, path="capped"):
        from .nm import check_pattern

        self.n, self.m = check_pattern(n, m)
        if path not in NM_PATHS:
            raise ValueError(f"path must be one of {NM_PATHS}, got {path!r}")
        self.path = path
        self.dims = None

    @classmethod
    def parse(cls, pattern):
        """``"2:4"`` (any "n:m") or an ``NMPattern``; None means the global pattern."""
        from .nm import parse_pattern

        if pattern is None:
            return GlobalPattern()
        if isinstance(pattern, GlobalPattern):
            return pattern
        if isinstance(pattern, NMPattern):
            return cls(pattern.n, pattern.m, pattern.path)  # bind() fills in this optimizer's dims
        return cls(*parse_pattern(pattern))

    @property
    def text(self):
        return f"{self.n}:{self.m}"

    def hyper(self):
        hyper = dict(pattern=self.text)
        if self.path != "capped":
            hyper["pattern_path"] = self.path
        return hyper

    def check_target(self, target_sparsity):
        """target_sparsity must be 1 - n/m (to within float rounding)."""
        want = 1.0 - self.n / self.m
        if abs(float(target_sparsity) - want) > 1e-9:
            raise ValueError(
                f"pattern '{self.text}' keeps {self.n} of every {self.m} weights, so target_sparsity "
                f"must be 1 - {self.n}/{self.m} = {want!r}, got target_sparsity={target_sparsity!r}")

    def bind(self, opt):
        """Find each prunable tensor's input dim and check that m divides it."""
        dims = []
        for gi, pi, p in opt._prunable():
            given = opt.param_groups[gi].get("input_dims")
            dim = given[pi] if given is not None else -1
            if not -p.dim() <= dim < p.dim():
                raise ValueError(f"{type(opt).__name__}: input dim {dim} of '{opt._name(gi, pi)}' is out of "
                                 f"range for its shape {tuple(p.shape)}")
            dim %= p.dim()
            size = local(p).shape[dim]
            if size % self.m:
                raise ValueError(
                    f"{type(opt).__name__}: pattern '{self.text}' needs the input dim of every prunable "
                    f"tensor to be a multiple of {self.m}, but '{opt._name(gi, pi)}' has size {size} along "
                    f"dim {dim} (shape {tuple(local(p).shape)})")
            dims.append(dim)
        self.dims = dims

    def prune(self, opt, pieces, k, n_total, hist, want_masks):
        from .nm import nm_mask

        if hist is not None and hist.gate is not None and not bool(hist.gate.reshape(()).item()):
            return None
        final = opt._t == opt.schedule.t_e
        scores = opt.score.tensors(opt)
        scores = [p.abs() for p in pieces] if scores is None else scores
        if self.path == "project" and not final:
            sel = opt._global_select(scores, k, n_total)
            tau = ops.threshold_from_select_state(sel)
            masks = []
            for p, s in zip(pieces, scores):
                keep = s > tau
                p.masked_fill_(~keep, 0.0)
                masks.append(keep)
            opt._threshold = tau
            return masks if want_masks else []
        safe = [nm_mask(s, self.n, self.m, d) for s, d in zip(scores, self.dims)]
        candidates = n_total // self.m * (self.m - self.n)
        if self.path == "project" or final:
            k = candidates  # the last event: every candidate goes
        k = min(k, candidates)
        masks = []
        if k == candidates:
            # Every candidate goes: no select needed, and tau is the largest
            # candidate score.
            cand = [s.float().masked_fill(keep, float("-inf")) for s, keep in zip(scores, safe)]
            tau = torch.stack([c.max() for c in cand]).max()
            masks = safe
        else:
            ranked = [s.masked_fill(keep, float("inf")) for s, keep in zip(scores, safe)]
            sel = opt._global_select(ranked, k, n_total)
            tau = ops.threshold_from_select_state(sel)
            masks = [keep | (r.float() > tau) for keep, r in zip(safe, ranked)]
        for p, keep in zip(pieces, masks):
            p.masked_fill_(~keep, 0.0)
        opt._threshold = tau
        return masks if want_masks else []
