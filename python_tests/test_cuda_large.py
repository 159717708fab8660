"""A tensor past 2^31 elements on the GPU: every kernel indexes it with 64-bit
offsets (a 32-bit index would wrap and touch the wrong elements, or only
the first 2^31). bf16 keeps it to 4 GiB per tensor, 16 GiB in all."""
import pytest
import torch

from mgpp_ext import ops
from test_cuda_vs_cpu import ulps

N_BIG = 2**31 + 4097
KW = dict(lr=1e-3, beta1=0.9, beta2=0.98, eps=1e-6, weight_decay=0.01, step=3, apply_prior=True,
          num_examples=1000.0, lambda_mix=0.1, sigma0_sq=1e-8, sigma1_sq=0.05)


def _big_gpu():
    return torch.cuda.is_available() and torch.cuda.get_device_properties(0).total_memory >= 40 * 2**30


pytestmark = pytest.mark.skipif(not _big_gpu(), reason="needs a CUDA GPU with 40 GiB")


def test_step_histogram_and_threshold_past_2_31(device="cuda", n=N_BIG):
    g = torch.Generator(device=device).manual_seed(0)
    p = 0.05 * torch.randn(n, generator=g, device=device, dtype=torch.bfloat16)
    grad = torch.randn(n, generator=g, device=device, dtype=torch.bfloat16)
    m = torch.zeros_like(p)
    v = torch.zeros_like(p)
    # the CPU kernel on both ends: the last elements lie past 2^31
    ends = [slice(0, 4097), slice(n - 4097, n)]
    want = []
    for sl in ends:
        pc, gc, mc, vc = (x[sl].cpu() for x in (p, grad, m, v))
        ops.mgpp_step_([pc], [gc], [mc], [vc], [], torch.empty(0, dtype=torch.int64), **KW)
        want.append((pc, mc, vc))
    hist = torch.zeros(ops.HIST_BINS, dtype=torch.int64, device=device)
    ops.mgpp_step_([p], [grad], [m], [v], [], hist, **KW)
    del grad
    for sl, (pc, mc, vc) in zip(ends, want):
        for got, w in ((p, pc), (m, mc), (v, vc)):
            assert ulps(got[sl], w) <= 2
    assert int(hist.sum()) == n
    assert bool(ops.all_finite([p, m, v]))
    # the exact k-th smallest |p|, with k past 2^31
    k = n - 1000
    tau = ops.global_threshold([p], k).to(torch.bfloat16)  # one of p's values
    a = p.abs()
    below, at_or_below = int((a < tau).sum()), int((a <= tau).sum())
    assert below < k <= at_or_below
    del a
    sel = ops.new_select_state(k, device)
    for level in (0, 1):
        h = torch.zeros(ops.HIST_BINS, dtype=torch.int64, device=device)
        ops.abs_histogram_([p], sel, h, level)
        ops.select_bin_(h, sel, level)
    mask = torch.empty(n, dtype=torch.bool, device=device)
    ops.apply_threshold_([p], sel, [mask])
    assert int((p == 0).sum()) == at_or_below == n - int(mask.sum())
    assert bool(p[n - 4097:].ne(0).any())  # the tail was kept where it is large
