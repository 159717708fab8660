"""DDP and FSDP2 on CPU with gloo, 2 processes spawned by the test itself."""
import socket
import sys
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))
import dist_workers as W  # noqa: E402

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn, *args):
    # A free port found here can be taken before gloo binds it, and gloo then
    # aborts the process: start once more on a new port in that case only.
    try:
        mp.spawn(fn, args=(2, free_port(), *args), nprocs=2, join=True)
    except mp.ProcessExitedException:
        mp.spawn(fn, args=(2, free_port(), *args), nprocs=2, join=True)


def test_ddp_matches_single_process(tmp_path):
    """DDP all-reduces gradients, so every rank steps the same weights:
    MGPP needs no communication of its own there."""
    ref_state, ref_thr = W.single_process(lr=1e-2)
    spawn(W.ddp_worker, 1e-2, str(tmp_path))
    r0, r1 = (torch.load(tmp_path / f"ddp{r}.pt") for r in range(2))
    for k in ref_state:
        assert torch.equal(r0["state"][k], r1["state"][k]), f"ranks differ at {k}"
        torch.testing.assert_close(r0["state"][k], ref_state[k], rtol=1e-4, atol=1e-5)
        assert torch.equal(r0["state"][k] == 0, ref_state[k] == 0), f"mask differs at {k}"
    assert r0["thresholds"] == r1["thresholds"]


def test_fsdp2_threshold_is_bitwise_global(tmp_path):
    """lr = 0 keeps the weights bitwise equal to the single-process run, so the
    sharded threshold (histograms all-reduced) must be bitwise the global one."""
    ref_state, ref_thr = W.single_process(lr=0.0)
    spawn(W.fsdp_worker, 0.0, str(tmp_path))
    r0, r1 = (torch.load(tmp_path / f"fsdp{r}.pt") for r in range(2))
    assert r0["thresholds"] == r1["thresholds"] == ref_thr
    assert any(t is not None and t > 0 for t in ref_thr)
    for k in ref_state:
        assert torch.equal(r0["state"][k], ref_state[k]), k


def test_fsdp2_training_matches_single_process(tmp_path):
    ref_state, ref_thr = W.single_process(lr=1e-2)
    spawn(W.fsdp_worker, 1e-2, str(tmp_path))
    r0, r1 = (torch.load(tmp_path / f"fsdp{r}.pt") for r in range(2))
    assert r0["thresholds"] == r1["thresholds"]
    for k in ref_state:
        torch.testing.assert_close(r0["state"][k], ref_state[k], rtol=1e-4, atol=1e-5)
    for a, b in zip(r0["thresholds"], ref_thr):
        assert (a is None) == (b is None)
        if a is not None:
            assert abs(a - b) <= 1e-5 * max(abs(b), 1e-6)
    # the sharded final mask, gathered, is the zero pattern of the weights
    assert r0["sparsity"] == r1["sparsity"] >= 0.74
    # The optimizer's only communication: two int32 histograms per event.
    for r in (r0, r1):
        assert r["comm"] == [2 * 65536 * 4 if e else 0 for e in r["events"]], r["comm"]


@pytest.mark.parametrize("defer", [False, True], ids=["checked-at-once", "checked-next-call"])
def test_fsdp2_skip_keeps_ranks_together(tmp_path, defer):
    """An inf/NaN gradient on one rank: both ranks skip that step (the flag is
    all-reduced on the device) and the run equals one that never saw it."""
    good = [b for i, b in enumerate(W.batches(W.SKIP_CALLS)) if i not in W.BAD_CALLS]
    ref_state, _ = W.single_process(lr=1e-2, data=good)
    spawn(W.fsdp_skip_worker, str(tmp_path), defer)
    r0, r1 = (torch.load(tmp_path / f"skip{r}.pt") for r in range(2))
    assert r0["record"] == r1["record"]
    assert r0["record"]["skipped_steps"] == len(W.BAD_CALLS)
    assert r0["record"]["step"] == W.HYPER["total_steps"] and r0["record"]["events"] == 4
    for k in ref_state:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
        torch.testing.assert_close(r0["state"][k], ref_state[k], rtol=1e-4, atol=1e-5)


# MGPP saved between events; PLATON mid-window (its scores' window sum and
# step count must survive torch.distributed.checkpoint too)
@pytest.mark.parametrize("method,resume_at", [("mgpp", 6), ("platon", 5)])
def test_fsdp2_resume_from_distributed_checkpoint(tmp_path, method, resume_at):
    straight = tmp_path / "straight"
    resumed = tmp_path / "resumed"
    straight.mkdir()
    resumed.mkdir()
    spawn(W.fsdp_worker, 1e-2, str(straight), None, method)
    spawn(W.fsdp_worker, 1e-2, str(resumed), resume_at, method)
    a, b = torch.load(straight / "fsdp0.pt"), torch.load(resumed / "fsdp0.pt")
    assert a["thresholds"] == b["thresholds"]
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k
    for ma, mb in zip(a["masks"], b["masks"]):
        assert torch.equal(ma, mb)


@pytest.mark.parametrize("method", ["gmp", "platon"])
def test_fsdp2_baselines_match_single_process(tmp_path, method):
    """GMP and PLATON share the sharded machinery: PLATON's score state is
    sharded like the weights and its threshold is taken over all shards."""
    ref_state, ref_thr = W.single_process(1e-2, method)
    spawn(W.fsdp_worker, 1e-2, str(tmp_path), None, method)
    r0, r1 = (torch.load(tmp_path / f"fsdp{r}.pt") for r in range(2))
    assert r0["thresholds"] == r1["thresholds"]
    for a, b in zip(r0["thresholds"], ref_thr):
        assert (a is None) == (b is None)
        if a is not None:
            assert abs(a - b) <= 1e-4 * max(abs(b), 1e-12)
    for k in ref_state:
        torch.testing.assert_close(r0["state"][k], ref_state[k], rtol=1e-4, atol=1e-5)
    assert r0["sparsity"] == r1["sparsity"] >= 0.74



def test_fsdp2_mixed_sharding_refused_and_nm_threshold_global(tmp_path):
    """A prunable set of sharded and plain weights would count the plain ones
    once per rank in the global threshold: refused at the step, which changes
    nothing. GMP 2:4's last event takes the largest candidate over every
    rank's shards: the same threshold on both ranks as in one process."""
    ref = W.nm_single_process()
    spawn(W.fsdp_guard_worker, str(tmp_path))
    r0, r1 = (torch.load(tmp_path / f"guard{r}.pt") for r in range(2))
    for r in (r0, r1):
        assert r["mixed_error"] is not None and "plain tensor while others are sharded" in r["mixed_error"]
        assert r["mixed_step"] == 0
    assert ref is not None and r0["nm_threshold"] == r1["nm_threshold"] == ref
