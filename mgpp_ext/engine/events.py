"""Pruning events: the schedule's k, the pattern's zeros, the final mask.

A mixin of ``PruningOptimizer``. At an event step t the schedule gives
k = floor(s_t N) over the N prunable weights, the pattern zeroes k of them
by the score, and at the last event (t_e) the keep-masks are stored: after
it every step multiplies them in and the mask is fixed.
"""
from __future__ import annotations

import torch

from .. import ops
from .distributed import like_param, local
from .select import EventHist, fold_into_window


class Events:

    def _event_histograms(self, prunable, device, gate):
        """The histograms the event step's fused pass fills (see
        ``GlobalSelect.event_histograms``)."""
        return self._select.event_histograms(prunable, device, gate)

    def _fold_missing(self, prunable, hist, device):
        """Add the weights without a gradient (unchanged this step, but they
        still count in the threshold) into the fused pass's histogram."""
        missing = [p for p in prunable if p.grad is None]
        if missing and hist is not None:
            full = torch.zeros_like(hist.level0)
            ops.abs_histogram_([local(p) for p in missing], ops.new_select_state(1, device), full, 0)
            fold_into_window(full, hist.level0, hist.window)

    def _prune_event(self, t, prunable, hist):
        """Prune to the schedule's k at step ``t``. Returns False, having
        changed nothing, when the step's device-side gate (``hist.gate``)
        turns out to have failed."""
        sch = self.schedule
        n_total = sum(p.numel() for p in prunable)
        k = sch.num_pruned(t, n_total)
        final_event = t == sch.t_e
        pieces = [local(p) for p in prunable]
        if k > 0:
            masks = self.pattern.prune(self, pieces, k, n_total, hist, final_event)
            if masks is None:
                return False
        else:
            if hist is not None and hist.gate is not None and not bool(hist.gate.reshape(()).item()):
                return False
            masks = [torch.ones_like(p, dtype=torch.bool) for p in pieces] if final_event else []
        self._last_k = k
        self._events += 1
        if final_event:
            for p, m in zip(prunable, masks):
                self.state[p]["mask"] = like_param(m, p)
            self.score.release(self)  # the scores are not needed once the mask is fixed
        return True

    def _global_select(self, pieces, k, n_total, hist=None, predict=False):
        """The exact k-th smallest |x| over ``pieces`` (this rank's pieces
        of every scored tensor), summed over the shard group; with
        ``predict`` the next event's window and bin are predicted from this
        event's histogram. See ``GlobalSelect.select``."""
        return self._select.select(pieces, k, n_total, self._reduce_histogram, hist,
                                   next_k=self._next_k(n_total) if predict else None)

    def _signed_threshold(self, scores, k, n_total):
        """The exact k-th smallest of signed ``scores`` (this rank's pieces),
        as a 0-dim fp32 tensor, from the radix select of |x|.

        With n_neg scores below zero (summed over the shard group): if
        k <= n_neg the k-th smallest is negative, and it is minus the
        (n_total - k + 1)-th smallest of |x| over the negatives with every
        other score put at 0 (the negatives' |x| are all > 0, and the
        n_total - n_neg zeros come first); otherwise it is the k-th
        smallest of max(x, 0) (the negatives and zeros then rank as ties at
        0). Both are exact: no value is rounded on the way. One temporary
        per tensor, like the scores' own."""
        n_neg = torch.stack([(s < 0).sum() for s in scores]).sum()
        for group in self._shard_groups():
            torch.distributed.all_reduce(n_neg, group=group)
        n_neg = int(n_neg.item())
        if k <= n_neg:
            keys = [torch.where(s < 0, s, torch.zeros_like(s)).abs_() for s in scores]
            tau = ops.threshold_from_select_state(self._global_select(keys, n_total - k + 1, n_total))
            return -tau
        keys = [torch.where(s > 0, s, torch.zeros_like(s)) for s in scores]
        return ops.threshold_from_select_state(self._global_select(keys, k, n_total))

    def _next_k(self, n_total):
        """k of the next pruning event, or 0 if there is none."""
        nxt = self.schedule.next_event(self._t)
        return 0 if nxt is None else self.schedule.num_pruned(nxt, n_total)


__all__ = ["Events", "EventHist"]
