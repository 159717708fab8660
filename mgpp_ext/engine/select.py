"""The exact global select: the k-th smallest |x| over many tensors.

A two-level radix select on the fp32 bit pattern of |x| (65,536 bins of the
high 16 bits, then of the low 16 bits inside the chosen bin), bitwise equal
to ``torch.kthvalue`` over the concatenation, without concatenating. An
event's level-0 histogram of |w| is built by the fused step itself inside a
window predicted from the previous event, and the level-1 histograms of the
predicted bins with it, so most events need no extra pass over the
weights. The predictions change only the speed, never the result: a miss
costs one more pass. Across FSDP2 shards the histograms are summed.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from .. import ops

# Width of the level-0 window around the predicted bin of the next event's
# threshold, in bins of 1/128 octave: about -17% .. +41% in |w|. Sparsity
# only grows, so the threshold tends to move up. On the demo's MiniLM
# fine-tune the threshold's bin lay within 20 bins of the prediction from
# the previous event's histogram.
WINDOW_BELOW = 32
WINDOW_ABOVE = 64
# A window holding more than this share of the weights costs about as much
# as the full histogram (a scattered increment per weight inside it), so the
# full one is used.
WINDOW_MAX_SHARE = 0.5


class EventHist(NamedTuple):
    """The histograms an event step's fused pass fills (see mgpp_step_)."""
    level0: torch.Tensor
    window: tuple
    level1: Optional[torch.Tensor]  # n1 * HIST_BINS bins, or None
    level1_lo: int
    gate: Optional[torch.Tensor] = None  # the step's device-side inf/NaN check

    def kernel_args(self):
        """mgpp_step_'s keyword arguments for these histograms, but ``hist``."""
        return dict(hist_window=self.window, hist1=self.level1, hist1_lo=self.level1_lo)


class GlobalSelect:
    """The select and its predictions for the next event.

    ``window`` and ``bin_guess`` (the level-0 window and the predicted
    threshold bin of the next event) are speed only, so they are not
    checkpointed; ``window_misses`` and ``level1_passes`` count the extra
    passes they did not save."""

    def __init__(self):
        self.window = ops.FULL_WINDOW
        self.bin_guess = -1
        self.window_misses = 0
        self.level1_passes = 0

    def event_histograms(self, prunable, device, gate):
        """The histograms an event's fused pass fills: level 0 in the
        predicted window and, when the last event also predicted the
        threshold's bin, the level-1 histograms of that bin and its two
        neighbours (skipped when a prunable tensor has no gradient, since
        the fused pass would not see it, and for bf16 weights, which never
        need a level-1 pass). ``gate``: the step's device-side inf/NaN
        check, or None."""
        level0 = torch.zeros(ops.HIST_BINS, dtype=torch.int64, device=device)
        lo, hi = self.window
        lo1 = self.bin_guess - 1
        if self.bin_guess < 0 or not (lo < lo1 and lo1 + 2 < hi) or low_bits_zero(prunable) \
                or any(p.grad is None for p in prunable):
            return EventHist(level0, self.window, None, 0, gate)
        level1 = torch.zeros(3 * ops.HIST_BINS, dtype=torch.int64, device=device)
        return EventHist(level0, self.window, level1, lo1, gate)

    def select(self, local, k, n_total, reduce, hist=None, next_k=None):
        """Exact radix select of the k-th smallest |x| over ``local`` (this
        rank's pieces of every scored tensor), summed over the shard group
        by ``reduce(hist, n_total)``.

        ``hist`` (an ``EventHist``) holds what the fused step already built:
        the level-0 histogram with its keys clamped to a window and perhaps
        the level-1 histograms of the predicted bins. If the k-th element
        falls in an edge bin of the window, the window missed: the level-0
        histogram is rebuilt in full with one more pass. If it falls in a
        predicted bin, that bin's level-1 histogram is used and the level-1
        pass is skipped. Either way the result never depends on the
        predictions. With ``next_k`` (the k of the next event, 0 if none)
        the next event's window and bin are predicted from this one's
        histogram. Returns the select state (see ``ops.new_select_state``),
        or None if ``hist.gate`` (the step's device-side inf/NaN check, read
        with the bin) failed: then the histograms were meaningless and
        nothing was changed."""
        device = local[0].device
        predict = next_k is not None
        sel = ops.new_select_state(k, device)
        if hist is None:
            level0 = torch.zeros(ops.HIST_BINS, dtype=torch.int64, device=device)
            ops.abs_histogram_(local, sel, level0, 0)
            hist = EventHist(level0, ops.FULL_WINDOW, None, 0)
        level0, window = hist.level0, hist.window
        reduce(level0, n_total)
        ops.select_bin_(level0, sel, 0)
        level1 = None
        if window != ops.FULL_WINDOW or predict or hist.gate is not None:
            # One small device-to-host read per event: the bin, the next
            # event's window predicted from this histogram and the gate,
            # together.
            nxt = next_k if predict else 0
            b, nxt_window, guess, ok = bin_and_next_window(level0, sel, nxt, window, n_total, hist.gate)
            if not ok:
                return None
            lo, hi = window
            if (b == lo and lo > 0) or (b == hi and hi < ops.HIST_BINS - 1):
                self.window_misses += 1
                sel = ops.new_select_state(k, device)
                level0.zero_()
                ops.abs_histogram_(local, sel, level0, 0)
                reduce(level0, n_total)
                ops.select_bin_(level0, sel, 0)
                b, nxt_window, guess, _ = bin_and_next_window(level0, sel, nxt, ops.FULL_WINDOW, n_total)
            elif hist.level1 is not None and 0 <= b - hist.level1_lo < hist.level1.numel() // ops.HIST_BINS:
                i = b - hist.level1_lo
                level1 = hist.level1[i * ops.HIST_BINS:(i + 1) * ops.HIST_BINS]
            if predict:
                self.window, self.bin_guess = nxt_window, guess
        if level1 is None and low_bits_zero(local):
            # The level-0 bin is the value itself: tau is known without a
            # level-1 pass.
            sel[2:3].copy_(sel[1:2] * ops.HIST_BINS)
            return sel
        if level1 is None:
            self.level1_passes += 1
            level1 = level0
            level1.zero_()
            ops.abs_histogram_(local, sel, level1, 1)
        reduce(level1, n_total)
        ops.select_bin_(level1, sel, 1)
        return sel


def low_bits_zero(tensors):
    """Whether every value's fp32 bit pattern has 16 zero low bits (bf16
    widened to fp32), so that its level-0 bin is the value itself."""
    return all(t.dtype == torch.bfloat16 for t in tensors)


def bin_and_next_window(hist, sel, next_k, window, n_total, gate=None):
    """(the level-0 bin just selected, the next event's window, the next
    event's predicted bin or -1, whether ``gate`` holds True).

    The predicted bin is where this event's cumulative count reaches
    ``next_k``, and the window is around it; the window is the full range
    (and no bin is predicted) when there is no next event, when ``hist``
    (exact only strictly inside ``window``) cannot place that bin, or when
    the window would hold too many weights. One host read, which also
    brings ``gate`` (a one-element bool tensor, or None: True).
    """
    full_range = ops.FULL_WINDOW
    extra = [] if gate is None else [gate.reshape(1).to(torch.int64)]
    if next_k <= 0:
        b, *ok = torch.cat([sel[1:2]] + extra).tolist()
        return b, full_range, -1, all(ok)
    cum = hist.cumsum(0)
    guess = torch.searchsorted(cum, torch.full((1,), next_k, dtype=torch.int64, device=hist.device))
    lo = (guess - WINDOW_BELOW).clamp(0, ops.HIST_BINS - 1)
    hi = (guess + WINDOW_ABOVE).clamp(0, ops.HIST_BINS - 1)
    # Weights in the new window, counted in the bins where ``hist`` is
    # exact (an edge bin of a clamped window also counts all beyond it).
    a = lo.clamp(min=window[0] + int(window[0] > 0))
    z = hi.clamp(max=window[1] - int(window[1] < ops.HIST_BINS - 1))
    inside = torch.where(z >= a, cum[z] - torch.where(a > 0, cum[(a - 1).clamp(min=0)], 0), 0)
    b, g, lo, hi, inside, *ok = torch.cat([sel[1:2], guess, lo, hi, inside] + extra).tolist()
    placed = window == full_range or window[0] < g < window[1]
    if g >= ops.HIST_BINS or not placed or inside > WINDOW_MAX_SHARE * n_total:
        return b, full_range, -1, all(ok)
    return b, (lo, hi), g, all(ok)


def fold_into_window(full, hist, window):
    """Add a full level-0 histogram into ``hist``, whose keys are clamped to ``window``."""
    lo, hi = window
    hist[lo:hi + 1] += full[lo:hi + 1]
    hist[lo] += full[:lo].sum()
    hist[hi] += full[hi + 1:].sum()
