"""Property tests (hypothesis): the threshold against torch.kthvalue on
arbitrary float arrays, the fused step against the reference on random
hyper-parameters and shapes."""
import math
from fractions import Fraction

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import mgpp_ext  # noqa: E402
from mgpp_ext import ops  # noqa: E402
from mgpp_ext.reference import ReferenceMGPP  # noqa: E402

# Every float32 value, subnormals, +-0 and +-inf included (NaN is ordered
# differently by kthvalue's comparison sort and by a bit-pattern select only
# in how NaN payloads compare, so it is covered by test_threshold instead).
finite_or_inf = st.floats(width=32, allow_nan=False, allow_subnormal=True)
arrays = st.lists(st.lists(finite_or_inf, min_size=1, max_size=70), min_size=1, max_size=4)


@settings(max_examples=150, deadline=None)
@given(arrays, st.data(), st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
def test_threshold_equals_kthvalue(chunks, data, dtype):
    tensors = [torch.tensor(c, dtype=torch.float32).to(dtype) for c in chunks]
    flat = torch.cat([t.float().abs() for t in tensors])
    k = data.draw(st.integers(min_value=1, max_value=flat.numel()))
    tau = ops.global_threshold(tensors, k)
    ref = torch.kthvalue(flat, k).values
    assert tau.view(torch.int32).item() == ref.view(torch.int32).item(), (k, tau, ref)


@settings(max_examples=25, deadline=None)
@given(
    shapes=st.lists(st.tuples(st.integers(1, 9), st.integers(1, 9)), min_size=1, max_size=3),
    lr=st.floats(1e-5, 1e-2),
    wd=st.floats(0.0, 0.1),
    sigma0_sq=st.sampled_from([1e-10, 1e-8, 1e-6]),
    sigma1_sq=st.sampled_from([0.05, 0.5, 2.0]),
    lam=st.floats(0.01, 0.9),
    n=st.integers(10, 100000),
    sparsity=st.floats(0.1, 0.9),
    seed=st.integers(0, 2**31 - 1),
)
def test_fused_step_matches_reference(shapes, lr, wd, sigma0_sq, sigma1_sq, lam, n, sparsity, seed):
    g = torch.Generator().manual_seed(seed)
    init = [torch.randn(s, generator=g) * 0.05 for s in shapes]
    a = [torch.nn.Parameter(t.clone()) for t in init]
    b = [torch.nn.Parameter(t.clone()) for t in init]
    kw = dict(lr=lr, weight_decay=wd, total_steps=8, num_train_examples=n,
              target_sparsity=sparsity, initial_warmup_steps=1, final_finetune_steps=2,
              prune_interval=2, lambda_mix=lam, sigma0_sq=sigma0_sq, sigma1_sq=sigma1_sq)
    opt = mgpp_ext.MGPP([{"params": a, "prune": True}], **kw)
    ref = ReferenceMGPP(b, [True] * len(b), **kw)
    for _ in range(8):
        for pa, pb in zip(a, b):
            grad = torch.randn(pa.shape, generator=g) * 0.1
            pa.grad, pb.grad = grad.clone(), grad.clone()
        opt.step()
        ref.step()
        # One step from the same state: the kernel and the reference do the
        # same fp32 operations in the same order, so they agree bitwise.
        # Then the reference continues from the optimizer's state, so that
        # what is checked at the end is the optimizer's own run.
        for i, (pa, pb) in enumerate(zip(a, b)):
            st_ = opt.state[pa]
            for mine, theirs, what in ((pa.data, pb.data, "param"),
                                       (st_["exp_avg"], ref.exp_avg[i], "exp_avg"),
                                       (st_["exp_avg_sq"], ref.exp_avg_sq[i], "exp_avg_sq")):
                assert torch.equal(mine.view(torch.int32), theirs.view(torch.int32)), what
            pb.data.copy_(pa.data)
            ref.exp_avg[i].copy_(st_["exp_avg"])
            ref.exp_avg_sq[i].copy_(st_["exp_avg_sq"])
    total = sum(p.numel() for p in a)
    zeros = sum(int((p == 0).sum()) for p in a)
    # k = floor(s_f N) for the decimal s_f stands for, in exact arithmetic
    assert zeros >= math.floor(Fraction(repr(sparsity)) * total)
