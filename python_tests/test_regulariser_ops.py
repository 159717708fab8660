"""The fused ADMM and SR-STE kernels (mgpp_ext.regulariser_ops) against their
plain-PyTorch references (mgpp_ext.reference_regularisers), one op call at a
time from the same state.

Tolerance: none on the CPU. The kernels evaluate the reference's fp32
operations in the same order, each rounded once (built with
-ffp-contract=off), with a correctly rounded sqrt and division, and the n:m
selection is an exact rule with a fixed tie order; so every output, the
packed mask bytes included, must be bitwise equal (a NaN only as a NaN: its
sign and payload are not fixed by IEEE).

Coverage: odd shapes, groups along the contiguous and a strided dim, tensors
of several parallel pieces, 2:4, 4:8, 1:4 and 3:5 (the run-time-m path),
every param dtype with moments in its dtype or fp32, edge gradients (zeros,
huge, tiny, inf, NaN), non-contiguous tensors and a closed gate.
"""
import pytest
import torch

from conftest import bits
from mgpp_ext import ops
from mgpp_ext import reference_regularisers as ref
from mgpp_ext import regulariser_ops as rops

pytestmark = pytest.mark.skipif(ops.EXTENSION_ERROR is not None, reason="extension not built")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (shapes, dims, n, m): numels that are not multiples of 8 (partial mask
# bytes), strided groups (dim 0 of a 2-D weight, a middle dim), and tensors
# of more than one 64K-element parallel piece.
CASES = [
    ([(5, 12), (12, 7)], [-1, 0], 2, 4),
    ([(3, 16, 9), (9, 40)], [1, -1], 4, 8),
    ([(6, 20), (4, 3)], [1, 0], 1, 4),
    ([(10, 15), (40, 33)], [1, 0], 3, 5),
    ([(130, 1032), (1032, 131)], [-1, 0], 2, 4),
]
HP = dict(lr=3e-2, beta1=0.9, beta2=0.98, eps=1e-6, weight_decay=0.01, step=3)
EDGE = ["random", "zeros", "huge", "tiny", "inf_nan"]


def same(a, b):
    """Bitwise equal, except that a NaN's sign and payload are free (IEEE
    does not fix them, and conversions differ in the NaN they produce)."""
    if a.dtype == torch.bool or a.dtype == torch.uint8:
        return torch.equal(a, b)
    a, b = a.detach(), b.detach()
    nan = torch.isnan(a)
    if not torch.equal(nan, torch.isnan(b)):
        return False
    return torch.equal(bits(a.masked_fill(nan, 0)), bits(b.masked_fill(nan, 0)))


def grad_like(p, g, edge):
    x = torch.randn(p.shape, generator=g)
    if edge == "zeros":
        x.zero_()
    elif edge == "huge":
        x = x * 1e30  # beyond fp16/bf16 range for some: inf after the cast
    elif edge == "tiny":
        x = x * 1e-40  # fp32 subnormals
    elif edge == "inf_nan":
        flat = x.view(-1)
        flat[::7] = float("inf")
        flat[3::11] = float("-inf")
        flat[5::13] = float("nan")
    return x.to(p.dtype)


def state(shapes, dtype, moment_dtype, edge, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [(0.5 * torch.randn(s, generator=g)).to(dtype) for s in shapes]
    for p in params:  # exact zeros and ties, where the bit rules matter
        p.view(-1)[::9] = 0
        p.view(-1)[1::17] = -0.0
    grads = [grad_like(p, g, edge) for p in params]
    m = [(0.1 * torch.randn(s, generator=g)).to(moment_dtype) for s in shapes]
    v = [(0.01 * torch.rand(s, generator=g)).to(moment_dtype) for s in shapes]
    duals = [0.3 * torch.randn(s, generator=g) for s in shapes]
    for a in duals:
        a.view(-1)[2::19] = 0
    keep = [torch.rand(s, generator=g) < 0.5 for s in shapes]
    dual_masks = [rops.pack_dual_mask(k) for k in keep]
    return params, grads, m, v, duals, dual_masks


def clone(xs):
    return [x.clone() for x in xs]


def assert_all_same(got, want, names):
    for name, gs, ws in zip(names, got, want):
        for i, (a, b) in enumerate(zip(gs, ws)):
            assert same(a, b), f"{name}[{i}] differs from the reference"


def moment_dtypes(dtype):
    return [dtype] if dtype == torch.float32 else [dtype, torch.float32]


# ----------------------------------------------------------------- ADMM step
@pytest.mark.parametrize("edge", EDGE)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_admm_step_matches_reference(case, dtype, edge):
    shapes, _, _, _ = CASES[case]
    for mdt in moment_dtypes(dtype):
        p, g, m, v, a, k = state(shapes, dtype, mdt, edge, seed=case)
        rp, rm, rv, ra, rk, rg = clone(p), clone(m), clone(v), clone(a), clone(k), clone(g)
        rops.admm_step_(p, g, m, v, a, k, rho=0.7, **HP)
        ref.admm_step_(rp, rg, rm, rv, ra, rk, rho=0.7, **HP)
        assert_all_same([p, m, v], [rp, rm, rv], ["params", "exp_avgs", "exp_avg_sqs"])
        # The step reads the dual A, its mask and the gradients; it must not
        # change them (the reference had copies of its own).
        assert_all_same([a, k, g], [ra, rk, rg], ["duals", "dual_masks", "grads"])


def test_admm_step_non_contiguous_and_closed_gate():
    p, g, m, v, a, k = state([(16, 24)], torch.float32, torch.float32, "random")
    pt = [p[0].t().contiguous().t()]  # same values, transposed strides
    assert not pt[0].is_contiguous()
    rp, rm, rv = clone(p), clone(m), clone(v)
    rops.admm_step_(pt, g, m, v, a, k, rho=0.5, **HP)
    ref.admm_step_(rp, g, rm, rv, a, k, rho=0.5, **HP)
    assert_all_same([pt, m, v], [rp, rm, rv], ["params", "exp_avgs", "exp_avg_sqs"])
    before = clone(pt + m + v)
    rops.admm_step_(pt, g, m, v, a, k, rho=0.5, apply_if=torch.tensor(False), **HP)
    assert all(same(x, y) for x, y in zip(pt + m + v, before))


# ------------------------------------------------------------ ADMM projections
@pytest.mark.parametrize("edge", ["random", "inf_nan"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_admm_project_matches_reference(case, dtype, edge):
    """inf_nan: inf/NaN in W and in U, as an unchecked step under
    on_nonfinite="propagate" can leave them; the n:m rule ranks them above
    every number."""
    shapes, dims, n, mm = CASES[case]
    p, _, _, _, a, k = state(shapes, dtype, torch.float32, "random", seed=10 + case)
    if edge == "inf_nan":
        for x, y in zip(p, a):
            x.view(-1)[::23] = float("nan")
            x.view(-1)[4::29] = float("-inf")
            y.view(-1)[7::31] = float("inf")
            y.view(-1)[11::37] = float("nan")
    ra, rk = clone(a), clone(k)
    rops.admm_project_(p, a, k, n, mm, dims)
    ref.admm_project_(p, ra, rk, n, mm, dims)
    assert_all_same([a, k], [ra, rk], ["duals", "dual_masks"])
    for x, kk in zip(p, k):  # padding bits of the last byte stay clear
        if x.numel() % 8:
            assert int(kk[-1]) >> (x.numel() % 8) == 0


def test_admm_project_ties_and_non_contiguous():
    # Every |A| equal: the n:m rule keeps the lowest indices of each group.
    # The mask starts all ones, as ADMM's first projection finds it, with
    # the padding bits of its last byte set (84 elements): they must end clear.
    p = [torch.ones(7, 12).t()]  # [12, 7], transposed strides; groups along dim 0
    a = [torch.zeros(12, 7)]
    k = [rops.new_dual_mask(p[0]).fill_(255)]
    ra, rk = clone(a), clone(k)
    rops.admm_project_(p, a, k, 2, 4, [0])
    ref.admm_project_(p, ra, rk, 2, 4, [0])
    assert_all_same([a, k], [ra, rk], ["duals", "dual_masks"])
    keep = rops.unpack_dual_mask(k[0], a[0])
    assert keep[0::4].all() and keep[1::4].all() and not keep[2::4].any() and not keep[3::4].any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_admm_combine_and_threshold_mask_match_reference(dtype):
    shapes = [(13, 7), (300, 250)]
    p, _, _, _, a, k = state(shapes, dtype, torch.float32, "random", seed=3)
    a[0].view(-1)[4] = float("nan")
    ra = clone(a)
    rops.admm_combine_(p, a, k)
    ref.admm_combine_(p, ra, k)
    assert_all_same([a], [ra], ["duals"])
    tau = torch.cat([x.abs().flatten() for x in a]).nanquantile(0.6)
    sel = torch.zeros(4, dtype=torch.int64)
    sel[2] = int(tau.to(torch.float32).view(torch.int32))
    k2, rk2 = clone(k), clone(k)
    rops.admm_threshold_mask_(a, sel, k2)
    ref.admm_threshold_mask_(a, sel, rk2)
    assert_all_same([k2], [rk2], ["dual_masks"])


# ----------------------------------------------------------------- SR-STE step
@pytest.mark.parametrize("update_mask", [True, False])
@pytest.mark.parametrize("edge", EDGE)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_srste_step_matches_reference(case, dtype, edge, update_mask):
    shapes, dims, n, mm = CASES[case]
    for mdt in moment_dtypes(dtype):
        w, g, m, v, _, _ = state(shapes, dtype, mdt, edge, seed=20 + case)
        keep = [torch.rand(x.shape, generator=torch.Generator().manual_seed(5)) < 0.5 for x in w]
        p = [x.masked_fill(~kk, 0.0) for x, kk in zip(w, keep)]
        rp, rw, rm, rv, rk = clone(p), clone(w), clone(m), clone(v), clone(keep)
        kw = dict(lambda_w=0.3, n=n, m=mm, dims=dims, update_mask=update_mask, **HP)
        rops.srste_step_(p, g, w, m, v, keep, **kw)
        ref.srste_step_(rp, g, rw, rm, rv, rk, **kw)
        assert_all_same([p, w, m, v, keep], [rp, rw, rm, rv, rk],
                        ["params", "dense", "exp_avgs", "exp_avg_sqs", "masks"])


# fp32 groups of 4 or 8 along contiguous memory take a register path in
# the vector builds, m vectors of groups at a time (8 groups on AVX2, 16 on
# AVX-512; 32 / 64 elements for m = 4, 64 / 128 for m = 8) and the scalar
# form for the rest: lengths below, at and past one iteration of either
# width and past the two-iteration lag of the selection, every kind of n,
# several parallel pieces, and params whose data mostly does not start on a
# vector boundary (plain stores instead of streaming ones).
REGISTER_SHAPES = {
    4: [[(1, 4)], [(1, 60)], [(4, 16)], [(17, 4)], [(31, 12)], [(70, 2048)]],
    8: [[(1, 8)], [(1, 120)], [(2, 64)], [(17, 8)], [(31, 24)], [(70, 2048)]],
}


@pytest.mark.parametrize("edge", ["random", "inf_nan"])
@pytest.mark.parametrize("m_n", [(4, 1), (4, 2), (4, 3), (8, 1), (8, 4), (8, 7)])
@pytest.mark.parametrize("shapes", range(6))
def test_srste_register_path(shapes, m_n, edge):
    group, n = m_n
    shapes = REGISTER_SHAPES[group][shapes]
    w, g, m, v, _, _ = state(shapes, torch.float32, torch.float32, edge, seed=40 + n)
    keep = [torch.rand(x.shape, generator=torch.Generator().manual_seed(6)) < 0.5 for x in w]
    # Each param a view one row into a larger buffer: off the vector
    # boundary unless its rows are a multiple of 64 bytes.
    p = [torch.zeros((x.shape[0] + 1,) + x.shape[1:])[1:] for x in w]
    for x, y, kk in zip(p, w, keep):
        x.copy_(y.masked_fill(~kk, 0.0))
    rp, rw, rm, rv, rk = clone(p), clone(w), clone(m), clone(v), clone(keep)
    kw = dict(lambda_w=0.3, n=n, m=group, dims=[-1] * len(shapes), update_mask=True, **HP)
    rops.srste_step_(p, g, w, m, v, keep, **kw)
    ref.srste_step_(rp, g, rw, rm, rv, rk, **kw)
    assert_all_same([p, w, m, v, keep], [rp, rw, rm, rv, rk],
                    ["params", "dense", "exp_avgs", "exp_avg_sqs", "masks"])


def test_srste_step_non_contiguous_and_closed_gate():
    w, g, m, v, _, _ = state([(16, 24)], torch.bfloat16, torch.float32, "random")
    w = [w[0].t().contiguous().t()]
    keep = [torch.ones(16, 24, dtype=torch.bool)]
    p = [w[0].clone()]
    rp, rw, rm, rv, rk = clone(p), clone(w), clone(m), clone(v), clone(keep)
    kw = dict(lambda_w=2e-4, n=2, m=4, dims=[0], update_mask=True, **HP)
    rops.srste_step_(p, g, w, m, v, keep, **kw)
    ref.srste_step_(rp, g, rw, rm, rv, rk, **kw)
    assert_all_same([p, w, m, v, keep], [rp, rw, rm, rv, rk],
                    ["params", "dense", "exp_avgs", "exp_avg_sqs", "masks"])
    before = clone(p + w + m + v + keep)
    rops.srste_step_(p, g, w, m, v, keep, apply_if=torch.tensor(False), **kw)
    assert all(same(x, y) for x, y in zip(p + w + m + v + keep, before))


# ----------------------------------------------------------------- bad input
def test_bad_arguments_refused_by_name():
    p, g, m, v, a, k = state([(8, 12)], torch.float32, torch.float32, "random")
    with pytest.raises(ValueError, match="'rho' must be finite in float32 and > 0"):
        rops.admm_step_(p, g, m, v, a, k, rho=0.0, **HP)
    with pytest.raises(TypeError, match="'duals\\[0\\]' must be float32"):
        rops.admm_step_(p, g, m, v, [a[0].double()], k, rho=1.0, **HP)
    with pytest.raises(ValueError, match="'dual_masks\\[0\\]' must be a contiguous tensor of 12 bytes"):
        rops.admm_step_(p, g, m, v, a, [torch.zeros(11, dtype=torch.uint8)], rho=1.0, **HP)
    with pytest.raises(ValueError, match="'params\\[0\\]' has size 8 along dim 0, which is not a multiple of m = 5"):
        rops.admm_project_(p, a, k, 2, 5, [0])
    with pytest.raises(ValueError, match="'n' must be in"):
        rops.admm_project_(p, a, k, 4, 4, [1])
    keep = [torch.ones(8, 12, dtype=torch.bool)]
    kw = dict(n=2, m=4, dims=[1], update_mask=True, **HP)
    with pytest.raises(ValueError, match="'lambda_w' must be finite and >= 0"):
        rops.srste_step_(p, g, clone(p), m, v, keep, lambda_w=-1.0, **kw)
    with pytest.raises(ValueError, match="'dense\\[0\\]' must be a dense tensor like 'params\\[0\\]'"):
        rops.srste_step_(p, g, [p[0].half()], m, v, keep, lambda_w=0.0, **kw)
    with pytest.raises(ValueError, match="'masks\\[0\\]' must be a bool tensor"):
        rops.srste_step_(p, g, clone(p), m, v, [keep[0].float()], lambda_w=0.0, **kw)
    # The list checks raise the types the CUDA bindings raise: ValueError for
    # lengths and shapes, TypeError for dtypes.
    with pytest.raises(ValueError, match="'params', 'grads', 'exp_avgs' and 'exp_avg_sqs' must have the same length"):
        rops.admm_step_(p, g, m, v[:0], a, k, rho=1.0, **HP)
    with pytest.raises(TypeError, match="all 'params' and 'grads' must share one dtype"):
        rops.admm_step_(p, [g[0].half()], m, v, a, k, rho=1.0, **HP)
    with pytest.raises(ValueError, match="entry 0 has mismatched shapes"):
        rops.admm_step_(p, [g[0][:4]], m, v, a, k, rho=1.0, **HP)
    with pytest.raises(TypeError, match=r"'params\[0\]' must be float32, bfloat16 or float16"):
        rops.admm_combine_([p[0].double()], a, k)
    before = clone(p)
    with pytest.raises(ValueError, match="'params\\[0\\]' and 'dense\\[0\\]' share memory"):
        rops.srste_step_(p, g, [p[0].detach()], m, v, keep, lambda_w=0.0, **kw)
    assert same(p[0], before[0])


# ------------------------------------------------------------- CUDA vs CPU
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")


def to_cuda(xs):
    return [x.cuda() for x in xs]


@cuda
@pytest.mark.parametrize("edge", ["random", "inf_nan"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_cuda_matches_cpu(case, dtype, edge):
    """Every op on the GPU against the CPU kernel from the same state: the
    same fp32 operations, each rounded once, and the same n:m rule, so the
    results are bitwise equal."""
    shapes, dims, n, mm = CASES[case]
    for mdt in moment_dtypes(dtype):
        p, g, m, v, a, k = state(shapes, dtype, mdt, edge, seed=30 + case)
        cp, cm, cv = to_cuda(p), to_cuda(m), to_cuda(v)
        rops.admm_step_(cp, to_cuda(g), cm, cv, to_cuda(a), to_cuda(k), rho=0.7, **HP)
        rops.admm_step_(p, g, m, v, a, k, rho=0.7, **HP)
        assert_all_same([[x.cpu() for x in cp], [x.cpu() for x in cm], [x.cpu() for x in cv]],
                        [p, m, v], ["params", "exp_avgs", "exp_avg_sqs"])
        ca, ck = to_cuda(a), to_cuda(k)
        rops.admm_project_(to_cuda(p), ca, ck, n, mm, dims)
        rops.admm_project_(p, a, k, n, mm, dims)
        assert_all_same([[x.cpu() for x in ca], [x.cpu() for x in ck]], [a, k],
                        ["duals", "dual_masks"])
        for update_mask in (True, False):
            w = clone(p)
            keep = [x != 0 for x in w]
            out = [x.clone() for x in w]
            cw, ckeep, cout, cm, cv = to_cuda(w), to_cuda(keep), to_cuda(out), to_cuda(m), to_cuda(v)
            kw = dict(lambda_w=0.3, n=n, m=mm, dims=dims, update_mask=update_mask, **HP)
            rops.srste_step_(cout, to_cuda(g), cw, cm, cv, ckeep, **kw)
            rops.srste_step_(out, g, w, m, v, keep, **kw)
            assert_all_same([[x.cpu() for x in t] for t in (cout, cw, cm, cv, ckeep)],
                            [out, w, m, v, keep],
                            ["params", "dense", "exp_avgs", "exp_avg_sqs", "masks"])
