"""torch.library.opcheck on every mgpp_ext op.

opcheck runs the default sub-tests (test_schema: the in-place annotations
match what the kernel mutates; test_autograd_registration; test_faketensor:
the fake implementations in ops.py agree with the kernels;
test_aot_dispatch_dynamic: the op traces and functionalises under
torch.compile's AOT dispatcher). All of them apply to these ops, so none is
left out.
"""
import pytest
import torch
from torch.library import opcheck

from mgpp_ext import ops

OPS = torch.ops.mgpp_ext


def step_args(device, dtype, masks, hist, apply_prior=True, step=3):
    g = torch.Generator().manual_seed(0)
    shapes = [(7, 5), (13,), (1,)]
    params = [torch.randn(s, generator=g).to(device, dtype) for s in shapes]
    grads = [torch.randn(s, generator=g).to(device, dtype) for s in shapes]
    exp_avgs = [0.1 * torch.randn(s, generator=g).to(device, dtype) for s in shapes]
    exp_avg_sqs = [torch.rand(s, generator=g).to(device, dtype) for s in shapes]
    mask_list = [(torch.rand(s, generator=g) > 0.5).to(device) for s in shapes] if masks else []
    h = (torch.zeros(ops.HIST_BINS, dtype=torch.int64, device=device) if hist
         else torch.empty(0, dtype=torch.int64, device=device))
    return (params, grads, exp_avgs, exp_avg_sqs, mask_list, h, 1e-2, 0.9, 0.98, 1e-6, 0.01,
            step, apply_prior, 100.0, 0.1, 1e-6, 0.05)


@pytest.mark.parametrize("dtype, masks, hist", [
    pytest.param(torch.float32, False, False, id="fp32"),
    pytest.param(torch.float32, True, True, id="fp32-masks-hist"),
    pytest.param(torch.bfloat16, False, False, id="bf16"),
    pytest.param(torch.bfloat16, True, False, id="bf16-masks"),
    pytest.param(torch.bfloat16, False, True, id="bf16-hist"),
])
def test_mgpp_step(device, dtype, masks, hist):
    opcheck(OPS.mgpp_step_, step_args(device, dtype, masks, hist))


def test_mgpp_step_with_histogram_window(device):
    opcheck(OPS.mgpp_step_, step_args(device, torch.float32, False, True) + (0x3f00, 0x3f80))


@pytest.mark.parametrize("gate", [True, False])
def test_mgpp_step_gated(device, gate):
    args = step_args(device, torch.float32, True, True) + (0, ops.HIST_BINS - 1, None, 0)
    opcheck(OPS.mgpp_step_, args, {"apply_if": torch.tensor(gate, device=device)})


def test_mgpp_step_without_prior(device):
    opcheck(OPS.mgpp_step_, step_args(device, torch.float32, False, False, apply_prior=False, step=1))


def weights(device):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(7, 5, generator=g).to(device),
            torch.randn(13, generator=g).to(device, torch.bfloat16)]


def finished_select_state(tensors, k):
    state = ops.new_select_state(k, tensors[0].device)
    for level in (0, 1):
        hist = torch.zeros(ops.HIST_BINS, dtype=torch.int64, device=tensors[0].device)
        ops.abs_histogram_(tensors, state, hist, level)
        ops.select_bin_(hist, state, level)
    return state


@pytest.mark.parametrize("level", [0, 1])
def test_abs_histogram(device, level):
    x = weights(device)
    state = finished_select_state(x, 10)  # level 1 needs a level-0 prefix
    hist = torch.zeros(ops.HIST_BINS, dtype=torch.int64, device=device)
    opcheck(OPS.abs_histogram_, (x, state, hist, level))


@pytest.mark.parametrize("level", [0, 1])
def test_select_bin(device, level):
    x = weights(device)
    state = ops.new_select_state(10, device)
    hist = torch.zeros(ops.HIST_BINS, dtype=torch.int64, device=device)
    ops.abs_histogram_(x, state, hist, 0)
    if level == 1:
        ops.select_bin_(hist, state, 0)
        hist.zero_()
        ops.abs_histogram_(x, state, hist, 1)
    opcheck(OPS.select_bin_, (hist, state, level))


@pytest.mark.parametrize("with_masks", [False, True])
def test_apply_threshold(device, with_masks):
    x = weights(device)
    state = finished_select_state(x, 20)
    masks = [torch.zeros(t.shape, dtype=torch.bool, device=device) for t in x] if with_masks else []
    opcheck(OPS.apply_threshold_, (x, state, masks))


def test_apply_mask(device):
    x = weights(device)
    g = torch.Generator().manual_seed(2)
    masks = [(torch.rand(t.shape, generator=g) > 0.5).to(device) for t in x]
    opcheck(OPS.apply_mask_, (x, masks))


@pytest.mark.parametrize("k", [1, 20, 48])
def test_global_threshold(device, k):
    opcheck(OPS.global_threshold, (weights(device), k))


@pytest.mark.skipif(not hasattr(OPS, "all_finite"), reason="no all_finite op in this build")
def test_all_finite(device):
    x = weights(device)
    opcheck(OPS.all_finite, (x,))
    x[0][3, 1] = float("inf")
    opcheck(OPS.all_finite, (x,))


# ------------------------------------------------------- ADMM and SR-STE ops
def regulariser_state(device, dtype):
    from mgpp_ext import regulariser_ops as rops  # registers the fake implementations

    g = torch.Generator().manual_seed(2)
    shapes = [(8, 12), (4, 5)]
    params = [torch.randn(s, generator=g).to(device, dtype) for s in shapes]
    grads = [torch.randn(s, generator=g).to(device, dtype) for s in shapes]
    exp_avgs = [0.1 * torch.randn(s, generator=g).to(device, dtype) for s in shapes]
    exp_avg_sqs = [torch.rand(s, generator=g).to(device, dtype) for s in shapes]
    duals = [torch.randn(s, generator=g).to(device) for s in shapes]
    masks = [rops.pack_dual_mask(torch.rand(s, generator=g) > 0.5).to(device) for s in shapes]
    return params, grads, exp_avgs, exp_avg_sqs, duals, masks


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("gate", [None, True, False])
def test_admm_step(device, dtype, gate):
    p, g, m, v, a, k = regulariser_state(device, dtype)
    kw = {} if gate is None else {"apply_if": torch.tensor(gate, device=device)}
    opcheck(OPS.admm_step_, (p, g, m, v, a, k, 1e-2, 0.9, 0.98, 1e-6, 0.01, 3, 0.5), kw)


def test_admm_project_combine_threshold(device):
    p, _, _, _, a, k = regulariser_state(device, torch.float32)
    opcheck(OPS.admm_project_, (p, a, k, 2, 4, [1, 0]))
    opcheck(OPS.admm_combine_, (p, a, k))
    sel = torch.tensor([0, 0, int(torch.tensor(0.5).view(torch.int32)), 0], device=device)
    opcheck(OPS.admm_threshold_mask_, (a, sel, k))


@pytest.mark.parametrize("update_mask", [True, False])
def test_srste_step(device, update_mask):
    p, g, m, v, _, _ = regulariser_state(device, torch.bfloat16)
    dense = [x.clone() for x in p]
    keep = [torch.ones(x.shape, dtype=torch.bool, device=device) for x in p]
    opcheck(OPS.srste_step_, (p, g, dense, m, v, keep, 1e-2, 0.9, 0.98, 1e-6, 0.01, 3, 2e-4, 2, 4,
                              [1, 0], update_mask))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_movement_step(device, dtype):
    import mgpp_ext.score_ops  # noqa: F401  (registers the fake)
    p, g, m, v = step_args(device, dtype, masks=False, hist=False)[:4]
    scores = [torch.randn(x.shape, device=device) for x in p]
    opcheck(OPS.movement_step_, (p, g, m, v, scores, 1e-2, 0.9, 0.98, 1e-6, 0.01, 3, 0.5))
