"""Distributed pieces of the engine: DTensor shards and histogram sums.

Under DDP every rank holds the whole model and needs nothing here. FSDP2
parameters are DTensors: each rank steps its local shard, and an event sums
the radix-select histograms over the ranks that hold pieces of the model,
so every rank finds the same exact global threshold.
"""
from __future__ import annotations

import torch


_DTENSOR = None


def _dtensor_class():
    """DTensor, or () where torch is built without distributed (isinstance
    against () is False). Looked up once: a step asks for every tensor it
    touches, and an import statement per call cost more than the check."""
    global _DTENSOR
    if _DTENSOR is None:
        try:
            from torch.distributed.tensor import DTensor
        except ImportError:
            DTensor = ()
        _DTENSOR = DTensor
    return _DTENSOR


def is_dtensor(t):
    return isinstance(t, _dtensor_class())


def local(t):
    """The local shard of a DTensor (a view: writes reach the DTensor), else t."""
    return t.to_local() if is_dtensor(t) else t


def like_param(local_tensor, p):
    """Wrap a local tensor as sharded like ``p`` when ``p`` is a DTensor."""
    if not is_dtensor(p):
        return local_tensor
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(local_tensor, p.device_mesh, p.placements, run_check=False,
                              shape=p.shape, stride=p.stride())


def check_one_sharding(prunable, owner):
    """The prunable tensors are all plain or all DTensors on one mesh with one
    placement: the global threshold sums histograms over the first one's
    shard groups, which would count a plain (whole) tensor once per rank, or
    a tensor sharded otherwise wrongly."""
    first = next((p for p in prunable if is_dtensor(p)), None)
    if first is None:
        return
    for i, p in enumerate(prunable):
        if not is_dtensor(p):
            raise RuntimeError(
                f"{owner}: prunable parameter {i} is a plain tensor while others are sharded (FSDP2 "
                "DTensors); the global threshold would count it once per rank. Shard every module "
                "that holds a prunable weight (fully_shard), or none")
        if p.device_mesh != first.device_mesh or tuple(p.placements) != tuple(first.placements):
            raise RuntimeError(
                f"{owner}: prunable parameter {i} is sharded as {tuple(p.placements)} on "
                f"{p.device_mesh}, the first as {tuple(first.placements)} on {first.device_mesh}; "
                "the global threshold needs one mesh and one placement for every prunable weight")


def shard_groups(tensors):
    """Process groups across which ``tensors`` (the prunable set) are split."""
    for p in tensors:
        if is_dtensor(p):
            from torch.distributed.tensor import Shard

            mesh = p.device_mesh
            return [mesh.get_group(i) for i, pl in enumerate(p.placements) if isinstance(pl, Shard)]
    return []


def reduce_histogram(hist, n_total, groups):
    """Sum ``hist`` over ``groups`` in place.

    ``n_total`` is the global number of scored weights: no bin can count
    more, so below 2^31 the sum is exact in int32 and half the bytes travel.
    """
    if not groups:
        return
    wire = hist.to(torch.int32) if n_total < 2 ** 31 else hist
    for group in groups:
        torch.distributed.all_reduce(wire, op=torch.distributed.ReduceOp.SUM, group=group)
    if wire is not hist:
        hist.copy_(wire)


def as_float(x):
    """A Python float from a number or a one-element tensor (an LR scheduler may use either)."""
    return float(x.item()) if isinstance(x, torch.Tensor) else float(x)
