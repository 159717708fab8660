"""Saving pruned models: a compressed safetensors layout and a sparsity report.

``save_sparse`` writes one safetensors file. Tensors that are at least
``min_sparsity`` zeros are stored as a packed bitmask (1 bit per weight) plus
their non-zero values in the original dtype; every other tensor is stored
densely. A 90%-sparse fp32 matrix then takes 1/32 + 1/10 of its dense size.
With ``pattern="n:m"``, tensors that hold at most n non-zeros in every
group of m along their input dim are stored in the n:m layout instead: the
n kept values of every group plus each one's index inside its group, at
ceil(log2 m) bits (2 bits for 2:4, the metadata sparse tensor cores use).
``load_sparse`` restores every tensor bit for bit.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping

import torch

FORMAT = "mgpp-sparse-v1"
_BITMASK = ".__bitmask"
_VALUES = ".__values"
_NM_VALUES = ".__nm_values"
_NM_INDICES = ".__nm_indices"
_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor into uint8, 8 elements per byte, little-bit first."""
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8) * _BIT_WEIGHTS).sum(dim=1, dtype=torch.uint8)


def unpack_mask(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of ``pack_mask``: the first ``numel`` bits as a flat bool tensor."""
    bits = packed.reshape(-1, 1).bitwise_and(_BIT_WEIGHTS) != 0
    return bits.reshape(-1)[:numel]


def _index_bits(m):
    return max(1, (m - 1).bit_length())


def _int_view(t):
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def nm_pack(t, n, m, dim):
    """(values, packed indices) of a tensor with at most n non-zeros (by bit
    pattern) in every group of m along ``dim``, or None if it has more.

    Each group stores exactly n values: its non-zeros, then (where it has
    fewer) its first +0.0 entries; the indices are ascending within a
    group, ``_index_bits(m)`` bits each, packed little-bit first."""
    if t.dim() == 0 or t.shape[dim] % m:
        return None
    moved = t.movedim(dim, -1).reshape(-1, m)
    nz = _int_view(moved) != 0
    if bool((nz.sum(1) > n).any()):
        return None
    # Non-zeros first, then zeros, each by index: a stable order.
    key = (~nz).to(torch.int64) * m + torch.arange(m)
    idx = key.argsort(dim=1)[:, :n].sort(dim=1).values
    values = moved.gather(1, idx).contiguous()
    b = _index_bits(m)
    bits = (idx.unsqueeze(-1) >> torch.arange(b)) & 1
    return values.reshape(-1), pack_mask(bits.bool())


def nm_unpack(values, packed, shape, dtype, n, m, dim):
    """Inverse of ``nm_pack``: the dense tensor."""
    shape = list(shape)
    moved_shape = shape[:dim] + shape[dim + 1:] + [shape[dim]]
    groups = 1
    for s in moved_shape:
        groups *= s
    groups //= m
    b = _index_bits(m)
    bits = unpack_mask(packed, groups * n * b).reshape(groups, n, b).to(torch.int64)
    idx = (bits << torch.arange(b)).sum(-1)
    dense = torch.zeros(groups, m, dtype=dtype)
    dense.scatter_(1, idx, values.reshape(groups, n))
    return dense.reshape(moved_shape).movedim(-1, dim).contiguous()


def _state_of(model_or_state):
    if isinstance(model_or_state, torch.nn.Module):
        return model_or_state.state_dict()
    if not isinstance(model_or_state, Mapping):
        raise TypeError(f"model must be an nn.Module or a state dict, got {type(model_or_state).__name__}")
    return dict(model_or_state)


#: Header keys the format itself uses; ``metadata`` may not overwrite them.
_RESERVED_HEADER_KEYS = ("format", "sparse", "nm")


def _check_save_args(state, min_sparsity, metadata, pattern, input_dims):
    """save_sparse's arguments, each refused by name before anything is written."""
    if isinstance(min_sparsity, bool) or not isinstance(min_sparsity, (int, float)) \
            or not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity must be a number in [0, 1], got {min_sparsity!r}")
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise TypeError(f"metadata must be a dict of strings, got {type(metadata).__name__}")
        clash = sorted(str(k) for k in metadata if str(k) in _RESERVED_HEADER_KEYS)
        if clash:
            raise ValueError(f"metadata may not use the header keys the format reads {list(_RESERVED_HEADER_KEYS)}, "
                             f"got {clash}")
    if input_dims is None:
        return {}
    if not isinstance(input_dims, Mapping):
        raise TypeError(f"input_dims must be a dict {{name: dim}}, got {type(input_dims).__name__}")
    if pattern is None:
        raise ValueError("input_dims names each tensor's input dim for pattern=; pass a pattern such as '2:4'")
    for name, dim in input_dims.items():
        if name not in state:
            raise ValueError(f"input_dims names {name!r}, which is not in the state dict")
        t = state[name]
        if isinstance(dim, bool) or not isinstance(dim, int) or not -t.dim() <= dim < t.dim():
            raise ValueError(f"input_dims[{name!r}] must be an int in [{-t.dim()}, {t.dim()}) for a tensor "
                             f"of shape {tuple(t.shape)}, got {dim!r}")
    return dict(input_dims)


def save_sparse(model, path, *, min_sparsity=0.5, metadata=None, pattern=None, input_dims=None):
    """Write ``model``'s state dict to ``path`` in the compressed layout.

    Args:
        model: an ``nn.Module`` or a state dict.
        path: the ``.safetensors`` file to write.
        min_sparsity: tensors with at least this fraction of exact zeros are
            stored as bitmask + values; others densely.
        metadata: extra string key/values for the file header.
        pattern: ``"n:m"`` (e.g. ``"2:4"``) stores every floating tensor with
            ``ndim >= 2`` that holds at most n non-zeros in each group of m
            along its input dim in the n:m layout (values + indices).
        input_dims: ``{name: dim}``, each tensor's input dim for
            ``pattern``; for a tensor not named there the last dim is tried,
            then dim 0 (a GPT-2 ``Conv1D`` weight is ``[in, out]``).

    Returns:
        dict with ``file_bytes``, ``dense_bytes`` (the same tensors stored
        densely), ``pruned_dense_bytes`` and ``pruned_compressed_bytes`` (the
        compressed tensors alone, dense vs compressed), and ``nm_tensors``,
        the names stored in the n:m layout.
    """
    from safetensors.torch import save_file

    state = _state_of(model)
    input_dims = _check_save_args(state, min_sparsity, metadata, pattern, input_dims)
    nm = None
    if pattern is not None:
        from .nm import parse_pattern

        nm = parse_pattern(pattern)
    out, sparse_info, nm_info = {}, {}, {}
    dense_bytes = pruned_dense = pruned_compressed = 0
    seen = {}
    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"save_sparse: state entry {name!r} is not a tensor")
        t = t.detach().cpu()
        # safetensors refuses shared storage; tied weights are written once each.
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)) if t.numel() else None
        if key in seen:
            t = t.clone()
        seen[key] = name
        nbytes = t.numel() * t.element_size()
        dense_bytes += nbytes
        if nm is not None and t.is_floating_point() and t.dim() >= 2:
            n, m = nm
            given = input_dims.get(name)
            for dim in ([given % t.dim()] if given is not None else [t.dim() - 1, 0]):
                packed = nm_pack(t, n, m, dim)
                if packed is not None:
                    out[name + _NM_VALUES], out[name + _NM_INDICES] = packed
                    nm_info[name] = {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
                                     "n": n, "m": m, "dim": dim}
                    pruned_dense += nbytes
                    pruned_compressed += packed[0].numel() * t.element_size() + packed[1].numel()
                    break
            if name in nm_info:
                continue
        if t.is_floating_point() and t.numel() > 0:
            # Non-zero by bit pattern, so that -0.0 is kept as a value and
            # the round trip is bitwise.
            nz = t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]) != 0
            sparsity = 1.0 - nz.sum().item() / t.numel()
            if sparsity >= min_sparsity:
                out[name + _BITMASK] = pack_mask(nz)
                out[name + _VALUES] = t[nz].contiguous()
                sparse_info[name] = {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
                pruned_dense += nbytes
                pruned_compressed += out[name + _BITMASK].numel() + out[name + _VALUES].numel() * t.element_size()
                continue
        out[name] = t.contiguous()
    header = {"format": FORMAT, "sparse": json.dumps(sparse_info)}
    if nm_info:
        header["nm"] = json.dumps(nm_info)
    if metadata:
        header.update({str(k): str(v) for k, v in metadata.items()})
    save_file(out, str(path), metadata=header)
    return dict(file_bytes=os.path.getsize(path), dense_bytes=dense_bytes,
                pruned_dense_bytes=pruned_dense, pruned_compressed_bytes=pruned_compressed,
                nm_tensors=sorted(nm_info))


def read_sparse(path) -> dict:
    """Read a file written by ``save_sparse`` (or any safetensors file) into a dense state dict."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        ours = meta.get("format") == FORMAT
        sparse_info = json.loads(meta.get("sparse", "{}")) if ours else {}
        nm_info = json.loads(meta.get("nm", "{}")) if ours else {}
        raw = {k: f.get_tensor(k) for k in f.keys()}
    state = {}
    for name, info in sparse_info.items():
        shape = info["shape"]
        numel = 1
        for s in shape:
            numel *= s
        mask = unpack_mask(raw.pop(name + _BITMASK), numel)
        values = raw.pop(name + _VALUES)
        dense = torch.zeros(numel, dtype=getattr(torch, info["dtype"]))
        dense[mask] = values
        state[name] = dense.reshape(shape)
    for name, info in nm_info.items():
        state[name] = nm_unpack(raw.pop(name + _NM_VALUES), raw.pop(name + _NM_INDICES), info["shape"],
                                getattr(torch, info["dtype"]), info["n"], info["m"], info["dim"])
    state.update(raw)
    return state


def load_sparse(model, path, strict=True):
    """Load a file written by ``save_sparse`` into ``model`` (exactly); returns the model.

    The names (with ``strict``) and shapes are compared first, so that a file
    of another model is refused before any tensor is copied (torch's own
    ``load_state_dict`` copies every matching tensor before it reports)."""
    state = read_sparse(path)
    mine = model.state_dict()
    shapes = [f"{n}: file {tuple(t.shape)}, model {tuple(mine[n].shape)}"
              for n, t in state.items() if n in mine and tuple(t.shape) != tuple(mine[n].shape)]
    if shapes:
        raise ValueError(f"load_sparse: {path} does not fit the model, shapes differ: " + "; ".join(shapes[:5])
                         + (f" (and {len(shapes) - 5} more)" if len(shapes) > 5 else ""))
    if strict:
        missing, unexpected = sorted(set(mine) - set(state)), sorted(set(state) - set(mine))
        if missing or unexpected:
            raise ValueError(f"load_sparse: {path} does not fit the model: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]} (strict=False loads the common names)")
    model.load_state_dict(state, strict=strict)
    return model


def sparsity_report(model_or_state, patterns=None, *, print_table=True, min_numel=1):
    """Per-tensor sparsity of the floating tensors of a model or state dict.

    Args:
        model_or_state: an ``nn.Module`` or a (dense) state dict.
        patterns: if given, only tensors whose names match one of these
            regular expressions; ``None`` reports every floating tensor with
            ``ndim >= 2``.
        print_table: print the table as well as returning it.

    Returns:
        ``{"rows": [{"name", "shape", "numel", "zeros", "sparsity"}, ...],
        "total": {"numel", "zeros", "sparsity"}}``.
    """
    import re

    state = _state_of(model_or_state)
    regexes = [re.compile(p) for p in patterns] if patterns is not None else None
    rows, zeros_total, numel_total = [], 0, 0
    for name, t in state.items():
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.numel() < min_numel:
            continue
        if regexes is not None:
            if not any(r.search(name) for r in regexes):
                continue
        elif t.dim() < 2:
            continue
        z = int((t == 0).sum().item())
        rows.append(dict(name=name, shape=tuple(t.shape), numel=t.numel(), zeros=z,
                         sparsity=z / t.numel()))
        zeros_total += z
        numel_total += t.numel()
    total = dict(numel=numel_total, zeros=zeros_total,
                 sparsity=zeros_total / numel_total if numel_total else 0.0)
    report = {"rows": rows, "total": total}
    if print_table:
        print(format_report(report))
    return report


def format_report(report) -> str:
    """The report as a fixed-width table."""
    rows = report["rows"]
    width = max([len(r["name"]) for r in rows] + [6])
    lines = [f"{'tensor':<{width}}  {'shape':>16}  {'numel':>10}  {'sparsity':>8}"]
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        lines.append(f"{r['name']:<{width}}  {shape:>16}  {r['numel']:>10}  {r['sparsity']:>8.4f}")
    t = report["total"]
    lines.append(f"{'total':<{width}}  {'':>16}  {t['numel']:>10}  {t['sparsity']:>8.4f}")
    return "\n".join(lines)
