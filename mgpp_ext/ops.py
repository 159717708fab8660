"""Thin, documented wrappers over the ``torch.ops.mgpp_ext`` kernels.

The kernels live in the compiled module ``mgpp_ext._C`` (CPU always, CUDA
when built with CUDA). Fake implementations are registered here so the ops
trace under ``torch.compile`` and pass ``torch.library.opcheck``.
"""
from __future__ import annotations

import os

import torch

HIST_BINS = 65536
#: The level-0 histogram window that clamps nothing.
FULL_WINDOW = (0, HIST_BINS - 1)

#: MGPP_EXT_LIBRARY=/path/to/_C.so loads the kernels from another build of
#: the same sources instead of mgpp_ext._C (scripts/test_alt_build.sh tests
#: the MGPP_CPU_ARCH=generic build this way beside the installed one).
LIBRARY = os.environ.get("MGPP_EXT_LIBRARY") or None

try:
    if LIBRARY is not None:
        if not os.path.isfile(LIBRARY):
            raise ImportError(f"MGPP_EXT_LIBRARY={LIBRARY!r} is not a file")
        torch.ops.load_library(LIBRARY)
    else:
        from . import _C  # noqa: F401  (registers the kernels)

    EXTENSION_ERROR = None
except (ImportError, OSError) as exc:  # pragma: no cover - exercised only on broken installs
    EXTENSION_ERROR = exc


def require_extension():
    """Raise a clear error if the compiled kernels are missing."""
    if EXTENSION_ERROR is not None:
        raise RuntimeError(
            "mgpp_ext's compiled kernels (mgpp_ext._C) are not built or failed to load "
            f"({EXTENSION_ERROR}). Build them against the installed torch with "
            "`pip install --no-build-isolation -e .` from the repository root. "
            "The pure-PyTorch reference (mgpp_ext.reference) works without them."
        )


def _ops():
    require_extension()
    return torch.ops.mgpp_ext


def mgpp_step_(params, grads, exp_avgs, exp_avg_sqs, masks, hist, *, lr, beta1, beta2,
               eps, weight_decay, step, apply_prior, num_examples=1.0, lambda_mix=0.5,
               sigma0_sq=1e-10, sigma1_sq=1.0, hist_window=FULL_WINDOW, hist1=None, hist1_lo=0,
               apply_if=None):
    """Fused prior gradient + AdamW over same-dtype tensors, in place.

    ``masks`` is ``[]`` or one bool tensor per param (multiplied in after the
    update); ``hist`` is an empty int64 tensor or one of ``HIST_BINS`` bins
    that receives the level-0 histogram of the updated |param|. With
    ``hist_window=(lo, hi)`` every bin index is clamped to [lo, hi]: bin lo
    also counts what lies below, bin hi what lies above, and the counts are
    exact strictly inside the window (the kernel spends a scattered
    increment only on elements inside it). ``lo`` must be <= 0x7fff, the
    largest level-0 bin an |x| has. ``hist1``, with ``n1 * HIST_BINS``
    bins (n1 <= 4), receives in block i the level-1 histogram (low 16 bits)
    of the elements whose level-0 bin is ``hist1_lo + i``: the bins predicted
    to hold the threshold, strictly inside the window. When one of them does,
    the event needs no level-1 pass. ``apply_if``, a one-element bool
    tensor on the params' device, gates the op: when it holds False params
    and state are left as they are, and ``hist`` (if given) receives every
    element in bin ``hist_window[0]``, so that a select chained on it stays
    well defined though meaningless. It is read where the kernel runs, so
    on a GPU the host does not wait for it (the optimizer passes its
    ``all_finite`` check this way, and reads it back with the select's
    result on an event).
    """
    lo, hi = hist_window
    _ops().mgpp_step_(list(params), list(grads), list(exp_avgs), list(exp_avg_sqs),
                      list(masks), hist, float(lr), float(beta1), float(beta2), float(eps),
                      float(weight_decay), int(step), bool(apply_prior), float(num_examples),
                      float(lambda_mix), float(sigma0_sq), float(sigma1_sq), int(lo), int(hi),
                      hist1, int(hist1_lo), apply_if)


def abs_histogram_(tensors, select_state, hist, level):
    """Add the level-``level`` histogram of |x| over ``tensors`` into ``hist``."""
    _ops().abs_histogram_(list(tensors), select_state, hist, int(level))


def select_bin_(hist, select_state, level):
    """Narrow ``select_state`` to the bin of ``hist`` holding the wanted rank."""
    _ops().select_bin_(hist, select_state, int(level))


def apply_threshold_(tensors, select_state, masks=()):
    """Zero every |x| <= tau in place; optionally record ``|x| > tau`` masks."""
    _ops().apply_threshold_(list(tensors), select_state, list(masks))


def apply_mask_(tensors, masks):
    """``x = x if mask else 0`` for each tensor, in place."""
    _ops().apply_mask_(list(tensors), list(masks))


def global_threshold(tensors, k):
    """The k-th smallest |x| over all ``tensors`` (1-based), as a 0-dim fp32 tensor.

    Equal, bitwise, to ``torch.kthvalue(torch.cat([t.float().abs().flatten()
    for t in tensors]), k).values`` but computed with two radix-histogram
    passes and no concatenation or copy.
    """
    return _ops().global_threshold(list(tensors), int(k))


def all_finite(tensors):
    """0-dim bool tensor: True iff no element of ``tensors`` is inf or NaN."""
    return _ops().all_finite(list(tensors))


def new_select_state(k, device):
    """A fresh select state asking for the k-th smallest element.

    Filled on the device: a tensor built from a host list would be a
    pageable copy, which makes the host wait for the GPU."""
    state = torch.zeros(4, dtype=torch.int64, device=device)
    state[:1].fill_(int(k))
    return state


def threshold_from_select_state(select_state):
    """tau as a 0-dim fp32 tensor, from a finished select state (no host sync)."""
    return select_state[2:3].to(torch.int32).view(torch.float32).squeeze(0)


if EXTENSION_ERROR is None:

    @torch.library.register_fake("mgpp_ext::mgpp_step_")
    def _(params, grads, exp_avgs, exp_avg_sqs, masks, hist, lr, beta1, beta2, eps,
          weight_decay, step, apply_prior, num_examples, lambda_mix, sigma0_sq, sigma1_sq,
          hist_lo=0, hist_hi=HIST_BINS - 1, hist1=None, hist1_lo=0, apply_if=None):
        return None

    @torch.library.register_fake("mgpp_ext::abs_histogram_")
    def _(tensors, select_state, hist, level):
        return None

    @torch.library.register_fake("mgpp_ext::select_bin_")
    def _(hist, select_state, level):
        return None

    @torch.library.register_fake("mgpp_ext::apply_threshold_")
    def _(tensors, select_state, masks):
        return None

    @torch.library.register_fake("mgpp_ext::apply_mask_")
    def _(tensors, masks):
        return None

    @torch.library.register_fake("mgpp_ext::all_finite")
    def _(tensors):
        # The kernels' checks, so that a traced call fails as an eager one.
        for i, t in enumerate(tensors):
            if t.dtype not in (torch.float32, torch.bfloat16, torch.float16):
                raise TypeError(f"all_finite: 'tensors[{i}]' must be float32, bfloat16 or float16, got {t.dtype}")
            if t.device != tensors[0].device:
                raise ValueError(f"all_finite: 'tensors[{i}]' is on {t.device}, expected {tensors[0].device} "
                                 "like 'tensors[0]'")
        return tensors[0].new_empty((), dtype=torch.bool)

    @torch.library.register_fake("mgpp_ext::global_threshold")
    def _(tensors, k):
        return tensors[0].new_empty((), dtype=torch.float32)
