"""N:M semi-structured sparsity: keep masks and in-place pruning.

The rule, along a dim ``dim`` of a tensor: every group of ``m`` consecutive
entries (indices ``[0, m), [m, 2m), ...`` of that dim, the other indices
fixed) keeps its ``n`` largest scores. Scores compare as fp32 values (bf16 /
fp16 widened exactly), NaN counts as larger than ``+inf`` (as in
``torch.topk``), and ``-0.0 == +0.0``. Ties go to the lower index along
``dim``. Equivalently, entry ``i`` is kept iff

    #{j in group : s_j > s_i  or  (s_j == s_i and j < i)} < n

(NaN above everything, NaN == NaN), so every group keeps exactly ``n``
entries. ``1 <= n < m <= 32``. ``mgpp_ext.reference_nm`` holds the
plain-PyTorch specification the kernels are tested against.

The kernels (``torch.ops.mgpp_ext.nm_mask`` / ``nm_prune_``, CPU and CUDA)
read the tensors where they lie, in any dense layout: the groups may be
contiguous (``dim`` the innermost dim in memory, the common case) or strided
(e.g. dim 0 of a GPT-2 ``Conv1D`` weight ``[in, out]``). Only a non-dense
tensor (a slice) goes through a copy.
"""
from __future__ import annotations

import numbers

import torch

from . import ops

#: The largest group size the kernels support (a group's keep mask is 32 bits).
MAX_M = 32
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

__all__ = ["MAX_M", "check_pattern", "nm_mask", "nm_prune_", "parse_pattern"]


def _is_int(x):
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def check_pattern(n, m):
    """Validate an n:m pattern; returns ``(int(n), int(m))``."""
    if not _is_int(n):
        raise TypeError(f"'n' must be an int, got {type(n).__name__} {n!r}")
    if not _is_int(m):
        raise TypeError(f"'m' must be an int, got {type(m).__name__} {m!r}")
    n, m = int(n), int(m)
    if not 2 <= m <= MAX_M:
        raise ValueError(f"'m' must be in [2, {MAX_M}], got m = {m} (pattern {n}:{m})")
    if not 1 <= n < m:
        raise ValueError(f"'n' must be in [1, m - 1] = [1, {m - 1}], got n = {n} "
                         f"(pattern {n}:{m})")
    return n, m


def parse_pattern(pattern):
    """``"2:4" -> (2, 4)``. Also accepts an ``(n, m)`` pair. Raises ValueError
    for a malformed string or an n, m out of range."""
    if isinstance(pattern, str):
        parts = pattern.strip().split(":")
        if len(parts) != 2 or not all(p.strip().isdecimal() for p in parts):
            raise ValueError(f"'pattern' must look like 'N:M' with integers N < M (e.g. '2:4'), "
                             f"got {pattern!r}")
        return check_pattern(int(parts[0]), int(parts[1]))
    if isinstance(pattern, (tuple, list)) and len(pattern) == 2:
        return check_pattern(*pattern)
    raise TypeError(f"'pattern' must be a string 'N:M' or an (n, m) pair, got {pattern!r}")


def _check_float(t, name):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"'{name}' must be a tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"'{name}' must be float32, bfloat16 or float16, got {t.dtype}")
    if t.layout != torch.strided:
        raise ValueError(f"'{name}' must be a dense (strided) tensor, got {t.layout}")


def _check_dim(t, dim, m, name):
    """dim wrapped into [0, t.dim()), with t's size along it a multiple of m."""
    if not _is_int(dim):
        raise TypeError(f"'dim' for '{name}' must be an int, got {type(dim).__name__} {dim!r}")
    if t.dim() == 0:
        raise ValueError(f"'{name}' must have at least one dimension, got a 0-dim tensor")
    if not -t.dim() <= dim < t.dim():
        raise IndexError(f"'dim' = {dim} is out of range for '{name}' with {t.dim()} "
                         f"dimensions (shape {tuple(t.shape)})")
    dim = int(dim) % t.dim()
    if t.shape[dim] % m != 0:
        raise ValueError(f"'{name}' has size {t.shape[dim]} along dim {dim}, which is not a "
                         f"multiple of m = {m} (shape {tuple(t.shape)})")
    return dim


def _nm_ops():
    o = ops._ops()
    if not hasattr(o, "nm_mask"):
        raise RuntimeError("this build of mgpp_ext's kernels has no N:M ops "
                           f"({ops.LIBRARY or 'mgpp_ext._C'}); rebuild it from the current "
                           "sources")
    return o


def nm_mask(scores, n, m, dim=-1, *, name="scores"):
    """The n:m keep mask of ``scores`` along ``dim`` (rule: module docstring).

    Returns a bool tensor shaped (and laid out) like ``scores``, True where
    kept; exactly ``n`` of every ``m`` are True. ``scores``: float32,
    bfloat16 or float16, any layout, CPU or CUDA. ``name`` names the tensor
    in error messages (e.g. a parameter's name). Raises ValueError when
    ``scores.shape[dim]`` is not a multiple of ``m`` or n:m is out of range
    (``1 <= n < m <= 32``), TypeError for another dtype, IndexError for a dim
    out of range.
    """
    n, m = check_pattern(n, m)
    _check_float(scores, name)
    dim = _check_dim(scores, dim, m, name)
    return _nm_ops().nm_mask(scores, n, m, dim)


def nm_prune_(tensors, n, m, dims=-1, *, scores=None, masks=None, names=None):
    """Zero, in place, the entries of each tensor the n:m rule drops.

    For each ``tensors[i]`` (float32 / bfloat16 / float16), the score is
    ``|tensors[i]|`` (computed in the kernel, no temporary; NaN weights count
    as largest) when ``scores`` is None, else ``scores[i]`` (same shape, any
    of the three dtypes, sharing no memory with any of ``tensors`` except
    ``tensors[i]`` itself through the same view; a score that does would be
    read while a tensor is being pruned, and is refused). The rule runs along
    ``dims[i]`` (``dims``: one int per tensor, or one int for all). Entries
    not kept become +0.0; kept entries keep their exact bits. ``masks``, if
    given, is one bool tensor per tensor (same shape) that receives the keep
    mask. One pass over memory: each group is read, decided and written back.
    All tensors share one device. ``names`` (optional) names the tensors in
    error messages.
    """
    n, m = check_pattern(n, m)
    tensors = list(tensors)
    count = len(tensors)
    names = [f"tensors[{i}]" for i in range(count)] if names is None else list(names)
    if len(names) != count:
        raise ValueError(f"'names' must have one name per tensor ({count}), got {len(names)}")
    if _is_int(dims):
        dims = [int(dims)] * count
    elif not isinstance(dims, (list, tuple)):
        raise TypeError(f"'dims' must be an int or one int per tensor, got {type(dims).__name__} {dims!r}")
    else:
        dims = list(dims)
        if len(dims) != count:
            raise ValueError(f"'dims' must have one dim per tensor ({count}), got {len(dims)}")
    scores = [] if scores is None else list(scores)
    if scores and len(scores) != count:
        raise ValueError(f"'scores' must have one tensor per tensor ({count}), got {len(scores)}")
    masks = [] if masks is None else list(masks)
    if masks and len(masks) != count:
        raise ValueError(f"'masks' must have one mask per tensor ({count}), got {len(masks)}")
    for i, t in enumerate(tensors):
        _check_float(t, names[i])
        dims[i] = _check_dim(t, dims[i], m, names[i])
        if t.device != tensors[0].device:
            raise ValueError(f"'{names[i]}' is on {t.device}, expected {tensors[0].device} "
                             f"like '{names[0]}'")
        if scores:
            s = scores[i]
            _check_float(s, f"scores[{i}]")
            if s.shape != t.shape or s.device != t.device:
                raise ValueError(f"'scores[{i}]' ({tuple(s.shape)} on {s.device}) must match "
                                 f"'{names[i]}' ({tuple(t.shape)} on {t.device})")
        if masks:
            k = masks[i]
            if not isinstance(k, torch.Tensor) or k.dtype != torch.bool:
                raise TypeError(f"'masks[{i}]' must be a bool tensor, got "
                                f"{getattr(k, 'dtype', type(k).__name__)}")
            if k.shape != t.shape or k.device != t.device:
                raise ValueError(f"'masks[{i}]' ({tuple(k.shape)} on {k.device}) must match "
                                 f"'{names[i]}' ({tuple(t.shape)} on {t.device})")
    if count == 0:
        return
    _nm_ops().nm_prune_(tensors, scores, n, m, dims, masks)


if ops.EXTENSION_ERROR is None and hasattr(torch.ops.mgpp_ext, "nm_mask"):

    @torch.library.register_fake("mgpp_ext::nm_mask")
    def _(scores, n, m, dim):
        check_pattern(n, m)
        _check_float(scores, "scores")
        _check_dim(scores, dim, m, "scores")
        return torch.empty_like(scores, dtype=torch.bool)

    @torch.library.register_fake("mgpp_ext::nm_prune_")
    def _(tensors, scores, n, m, dims, masks):
        return None
