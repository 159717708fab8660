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


def opt_device(opt):
    """The device the optimizer's prunable tensors live on (their local shards')."""
    return local(opt._prunable()[0][2]).device


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
        if getattr(opt.score, "signed", False):
            tau = opt._signed_threshold(scores, k, n_total)
        else:
            tau = ops.threshold_from_select_state(opt._global_select(scores, k, n_total))
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
        """The pattern part named by ``pattern`` (see ``parse``)."""
        return parse(pattern)

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
        dims = input_dims(opt)
        for (gi, pi, p), dim in zip(opt._prunable(), dims):
            size = local(p).shape[dim]
            if size % self.m:
                raise ValueError(
                    f"{type(opt).__name__}: pattern '{self.text}' needs the input dim of every prunable "
                    f"tensor to be a multiple of {self.m}, but '{opt._name(gi, pi)}' has size {size} along "
                    f"dim {dim} (shape {tuple(local(p).shape)})")
        self.dims = dims

    def prune(self, opt, pieces, k, n_total, hist, want_masks):
        from .nm import nm_mask

        scores = _event_scores(opt, pieces, hist)
        if scores is None:
            return None
        final = opt._t == opt.schedule.t_e
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
            tau = torch.stack([c.max() for c in cand if c.numel()]
                              or [torch.tensor(float("-inf"), device=opt_device(opt))]).max().reshape(1)
            for group in opt._shard_groups():  # the largest over every rank's shards
                torch.distributed.all_reduce(tau, op=torch.distributed.ReduceOp.MAX, group=group)
            tau = tau.reshape(())
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


def input_dims(opt):
    """Each prunable tensor's input dim, wrapped: its param group's
    ``"input_dims"`` entry (``prunable_param_groups`` records it: the last
    dim of an ``nn.Linear`` weight, dim 0 of a GPT-2 ``Conv1D`` weight), the
    last dim otherwise."""
    dims = []
    for gi, pi, p in opt._prunable():
        given = opt.param_groups[gi].get("input_dims")
        dim = given[pi] if given is not None else -1
        if not -p.dim() <= dim < p.dim():
            raise ValueError(f"{type(opt).__name__}: input dim {dim} of '{opt._name(gi, pi)}' is out of "
                             f"range for its shape {tuple(p.shape)}")
        dims.append(dim % p.dim())
    return dims


def _whole(opt, pattern_name):
    """Refuse sharded tensors: per-tensor and per-row selection need what
    they compare on one rank."""
    for gi, pi, p in opt._prunable():
        if tuple(local(p).shape) != tuple(p.shape):
            raise ValueError(
                f"{type(opt).__name__}: pattern '{pattern_name}' compares weights within one tensor, "
                f"but '{opt._name(gi, pi)}' is sharded ({tuple(local(p).shape)} of {tuple(p.shape)} on "
                "this rank); use the global or an n:m pattern")


def _event_scores(opt, local_, hist):
    """The scores an event ranks (the score part's, or |w|), or None when
    the step's gate failed (nothing changes)."""
    if hist is not None and hist.gate is not None and not bool(hist.gate.reshape(()).item()):
        return None
    scores = opt.score.tensors(opt)
    return [p.abs() for p in local_] if scores is None else scores


def _largest_dropped(scores, masks):
    """The largest dropped score (-inf when none is), as the event's tau."""
    worst = [s.float().masked_fill(keep, float("-inf")).max() for s, keep in zip(scores, masks)
             if s.numel()]
    return torch.stack(worst).max() if worst else torch.tensor(float("-inf"))


class TensorPattern:
    """Each prunable tensor keeps its own share: at sparsity s_t a tensor of
    N_i weights drops exactly floor(s_t N_i) of them, its smallest scores
    (``row_keep_mask`` over the flattened tensor: ties drop the higher index
    first). So every tensor ends at the target sparsity, where the global
    pattern lets some tensors keep more than others."""

    name = "tensor"
    uses_fused_histogram = False

    def hyper(self):
        return dict(pattern="tensor")

    def check_target(self, target_sparsity):
        pass

    def bind(self, opt):
        _whole(opt, self.name)

    def prune(self, opt, local_, k, n_total, hist, want_masks):
        from .rows import row_keep_mask

        scores = _event_scores(opt, local_, hist)
        if scores is None:
            return None
        masks = []
        for p, s in zip(local_, scores):
            keep = row_keep_mask(s.reshape(1, -1), opt.schedule.num_pruned(opt._t, s.numel()))
            keep = keep.view(s.shape)
            p.masked_fill_(~keep, 0.0)
            masks.append(keep)
        opt._threshold = _largest_dropped(scores, masks)
        return masks if want_masks else []


class RowPattern:
    """Each output row keeps its own share: the weights of a row (the
    entries that share every index but the input dim's: ``W[i, :]`` of an
    ``nn.Linear``, ``W[:, j]`` of a GPT-2 ``Conv1D``) compete only with each
    other, and at sparsity s_t a row of L weights drops exactly floor(s_t
    L), its smallest scores (``row_keep_mask``: ties drop the higher index
    first). The input dims are found as for ``NMPattern``."""

    name = "row"
    uses_fused_histogram = False

    def __init__(self):
        self.dims = None

    def hyper(self):
        return dict(pattern="row")

    def check_target(self, target_sparsity):
        pass

    def bind(self, opt):
        _whole(opt, self.name)
        self.dims = input_dims(opt)

    def prune(self, opt, local_, k, n_total, hist, want_masks):
        from .rows import row_keep_mask

        scores = _event_scores(opt, local_, hist)
        if scores is None:
            return None
        masks = []
        for p, s, d in zip(local_, scores, self.dims):
            rows = s.movedim(d, -1)
            k_row = opt.schedule.num_pruned(opt._t, rows.shape[-1])
            keep = row_keep_mask(rows, k_row).movedim(-1, d)
            p.masked_fill_(~keep, 0.0)
            masks.append(keep)
        opt._threshold = _largest_dropped(scores, masks)
        return masks if want_masks else []


def parse(pattern):
    """The pattern part a method's ``pattern=`` names: None or ``"global"``
    (one global threshold), ``"tensor"``, ``"row"``, ``"n:m"`` (e.g.
    ``"2:4"``), or a pattern object (an ``NMPattern`` is copied, so that
    ``bind`` fills in this optimizer's dims)."""
    from .nm import parse_pattern

    if pattern is None or pattern == "global":
        return GlobalPattern()
    if isinstance(pattern, GlobalPattern):
        return pattern
    if pattern == "tensor" or isinstance(pattern, TensorPattern):
        return TensorPattern()
    if pattern == "row" or isinstance(pattern, RowPattern):
        return RowPattern()
    if isinstance(pattern, NMPattern):
        return NMPattern(pattern.n, pattern.m, pattern.path)
    if isinstance(pattern, str) and ":" not in pattern:
        raise ValueError(f"'pattern' must be None, 'global', 'tensor', 'row' or 'N:M' (e.g. '2:4'), "
                         f"got {pattern!r}")
    return NMPattern(*parse_pattern(pattern))
