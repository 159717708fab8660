"""The CUDA kernels against the CPU kernels, on the same inputs.

Every op test in this suite runs on both devices against the plain-PyTorch
reference; these compare the two devices with each other directly, on data
that reaches the awkward paths: several 65,536-element chunks and odd tails,
non-contiguous tensors, edge values, every dtype pair, windows and level-1
histograms. The threshold ops must agree bitwise. The fused step may differ
where the devices round differently: CUDA's expf and the CPU's vectorised
exp can differ in the last bit, so with the prior on the results are held
to the reference suite's tolerance (twice it, as each device is within it);
each device's histogram must still be exactly that of its own stored
weights.
"""
import pytest
import torch

from conftest import bits
from mgpp_ext import GMP, MGPP, ops
from test_step_vs_reference import LAM, N, S0, S1, clamped_level0, edge_tensors, make_groups
from test_threshold import huge, normal, tied, tiny, zero_heavy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
_INT = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


def ulps(a, b):
    """Largest distance in units in the last place between same-dtype floats
    (sign-aware, so -0 and +0 are 0 apart); NaN positions must match."""
    a, b = a.detach().cpu(), b.detach().cpu()
    assert torch.equal(a.isnan(), b.isnan()), "NaN positions differ"
    keep = ~a.isnan()
    if not bool(keep.any()):
        return 0

    def ordered(x):
        i = bits(x[keep]).to(torch.int64)
        sign = torch.iinfo(_INT[x.dtype]).min
        return torch.where(i < 0, sign - i, i)  # monotone in the value, -0 -> 0

    return int((ordered(a) - ordered(b)).abs().max())


def assert_agree(cpu, gpu, dtype, what, prior):
    if dtype != torch.float32:
        assert ulps(cpu, gpu) <= 2, f"{what}: {ulps(cpu, gpu)} ulps apart"
    elif prior:
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=2e-5, atol=2e-7, msg=lambda m: f"{what}: {m}")
    else:
        assert ulps(cpu, gpu) <= 1, f"{what}: {ulps(cpu, gpu)} ulps apart"


def step_inputs(ptype, stype):
    g = torch.Generator().manual_seed(3)
    shapes = [(64, 33), (70001,), (1,), (4097,)]
    ps = [0.05 * torch.randn(s, generator=g) for s in shapes]
    for p in ps:  # some weights inside the spike, where the prior pulls hardest
        small = torch.rand(p.shape, generator=g) < 0.05
        p[small] = 1e-4 * torch.randn(int(small.sum()), generator=g)
    gs = [torch.randn(s, generator=g) for s in shapes]
    ms = [0.01 * torch.randn(s, generator=g) for s in shapes]
    vs = [1e-4 * torch.rand(s, generator=g) for s in shapes]
    ep, eg, em, ev = edge_tensors(ptype, "cpu")
    ps.append(ep.float())
    gs.append(eg.float())
    ms.append(em.float())
    vs.append(ev.float())
    # a transposed (non-contiguous) tensor
    ps.append(0.05 * torch.randn(33, 65, generator=g).t())
    gs.append(torch.randn(33, 65, generator=g).t())
    ms.append(torch.zeros(33, 65).t())
    vs.append(torch.zeros(33, 65).t())
    masks = [torch.rand(p.shape, generator=g) < 0.8 for p in ps]
    return ([p.to(ptype) for p in ps], [x.to(ptype) for x in gs], [m.to(stype) for m in ms],
            [v.to(stype) for v in vs], masks)


def run_step(device, inputs, prior, masked, window, lo1):
    ps, gs, ms, vs, masks = ([t.to(device, copy=True) for t in ts] for ts in inputs)
    hist = torch.zeros(ops.HIST_BINS, dtype=torch.int64, device=device)
    hist1 = torch.zeros(3 * ops.HIST_BINS, dtype=torch.int64, device=device)
    ops.mgpp_step_(ps, gs, ms, vs, masks if masked else [], hist, lr=1e-3, beta1=0.9, beta2=0.98,
                   eps=1e-6, weight_decay=0.01, step=5, apply_prior=prior, num_examples=N,
                   lambda_mix=LAM, sigma0_sq=S0, sigma1_sq=S1, hist_window=window,
                   hist1=hist1, hist1_lo=lo1)
    # the histograms are those of this device's own stored weights
    assert torch.equal(hist, clamped_level0(ps, *window, device))
    for i in range(3):
        want = torch.zeros(ops.HIST_BINS, dtype=torch.int64, device=device)
        state = ops.new_select_state(1, device)
        state[1] = lo1 + i
        ops.abs_histogram_(ps, state, want, 1)
        assert torch.equal(hist1[i * ops.HIST_BINS:(i + 1) * ops.HIST_BINS], want)
    return ps, ms, vs, hist


@pytest.mark.parametrize("ptype,stype", [
    (torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32),
    (torch.float16, torch.float16), (torch.float16, torch.float32)], ids=str)
@pytest.mark.parametrize("prior", [True, False])
@pytest.mark.parametrize("masked", [False, True])
def test_fused_step_agrees(ptype, stype, prior, masked):
    inputs = step_inputs(ptype, stype)
    window, lo1 = (0x3a00, 0x3e00), 0x3d4c  # |w| ~ 5e-4 .. 0.125; level 1 around 0.05
    cpu = run_step("cpu", inputs, prior, masked, window, lo1)
    gpu = run_step("cuda", inputs, prior, masked, window, lo1)
    for what, dtype, a, b in [("param", ptype, cpu[0], gpu[0]), ("exp_avg", stype, cpu[1], gpu[1]),
                              ("exp_avg_sq", stype, cpu[2], gpu[2])]:
        for i, (x, y) in enumerate(zip(a, b)):
            assert_agree(x, y, dtype, f"{what}[{i}]", prior)
    if not prior and ptype != torch.float32:
        # storage rounding absorbs the ulps: the same weights, the same histogram
        assert torch.equal(cpu[3], gpu[3].cpu())


def threshold_cases():
    return {
        "normal": lambda: [normal("cpu", 70001), normal("cpu", 33, 7, seed=4)],
        "tied": lambda: [tied("cpu", 257)],
        "zero_heavy": lambda: [zero_heavy("cpu", 131073)],
        "tiny_huge": lambda: [tiny("cpu"), huge("cpu"), normal("cpu", 100, seed=5)],
        "nan": lambda: [torch.tensor([float("nan"), 1.0, -float("nan"), 0.0, float("inf")]),
                        normal("cpu", 999, seed=6)],
    }


@pytest.mark.parametrize("case", list(threshold_cases()))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_threshold_ops_agree(case, dtype):
    xs = [x.to(dtype) for x in threshold_cases()[case]()]
    gx = [x.cuda() for x in xs]
    n = sum(x.numel() for x in xs)
    n_nan = sum(int(x.isnan().sum()) for x in xs)
    # fp16 NaN payloads may widen differently (the GPU's half-to-float
    # conversion can make every NaN canonical, the CPU's keeps the payload);
    # each device still matches its own torch.kthvalue (test_threshold.py).
    # Such NaNs are compared as NaNs: same rank, possibly different bits.
    loose_nan = dtype == torch.float16 and n_nan > 0
    for k in sorted({1, 2, n // 3 + 1, n // 2 + 1, (9 * n) // 10 + 1, n}):
        a, b = ops.global_threshold(xs, k), ops.global_threshold(gx, k)
        if loose_nan and k > n - n_nan:
            assert bool(a.isnan()) and bool(b.isnan()), (k, a, b)
            continue
        assert torch.equal(bits(a), bits(b.cpu())), (k, a, b)
        # the building blocks, step by step
        sa, sb = ops.new_select_state(k, "cpu"), ops.new_select_state(k, "cuda")
        for level in (0, 1):
            ha = torch.zeros(ops.HIST_BINS, dtype=torch.int64)
            hb = torch.zeros(ops.HIST_BINS, dtype=torch.int64, device="cuda")
            ops.abs_histogram_(xs, sa, ha, level)
            ops.abs_histogram_(gx, sb, hb, level)
            top = ops.HIST_BINS
            if loose_nan and level == 0:  # NaN keys lie above inf's, 0x7f80
                top = 0x7f81
                assert int(ha[top:].sum()) == int(hb[top:].sum()) == n_nan
            assert torch.equal(ha[:top], hb[:top].cpu()), (k, level)
            ops.select_bin_(ha, sa, level)
            ops.select_bin_(hb, sb, level)
            assert torch.equal(sa, sb.cpu()), (k, level)
        ya, yb = [x.clone() for x in xs], [x.clone() for x in gx]
        ma = [torch.empty(x.shape, dtype=torch.bool) for x in xs]
        mb = [torch.empty(x.shape, dtype=torch.bool, device="cuda") for x in gx]
        ops.apply_threshold_(ya, sa, ma)
        ops.apply_threshold_(yb, sb, mb)
        for u, v, p, q in zip(ya, yb, ma, mb):
            assert torch.equal(bits(u), bits(v.cpu())) and torch.equal(p, q.cpu())
        za, zb = [x.clone() for x in xs], [x.clone() for x in gx]
        ops.apply_mask_(za, ma)
        ops.apply_mask_(zb, mb)
        assert all(torch.equal(bits(u), bits(v.cpu())) for u, v in zip(za, zb))
    assert bool(ops.all_finite(xs)) == bool(ops.all_finite(gx))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gmp_runs_agree(dtype):
    """A whole GMP schedule (fused AdamW, events, final mask) on both devices:
    the same zero pattern at every step, thresholds and weights within ulps."""
    sched = dict(total_steps=24, initial_warmup_steps=3, final_finetune_steps=6, prune_interval=4,
                 initial_sparsity=0.3, target_sparsity=0.8, lr=2e-3, weight_decay=0.01)
    runs = []
    for device in ("cpu", "cuda"):
        groups, flat, _ = make_groups(device, dtype)
        runs.append((GMP(groups, **sched), flat))
    (oa, pa), (ob, pb) = runs
    g = torch.Generator().manual_seed(8)
    for t in range(24):
        for p, q in zip(pa, pb):
            grad = torch.randn(p.shape, generator=g).to(dtype)
            p.grad, q.grad = grad.clone(), grad.cuda()
        oa.step()
        ob.step()
        for i, (p, q) in enumerate(zip(pa, pb)):
            assert torch.equal(p == 0, q.cpu() == 0), (t, i)
            if dtype == torch.float32:
                torch.testing.assert_close(q.cpu(), p, rtol=1e-5, atol=1e-7)
            else:
                assert ulps(p, q) <= 2, (t, i)
        if oa.last_threshold is not None:
            assert oa.last_threshold == pytest.approx(ob.last_threshold, rel=1e-5)
    assert oa.schedule_state() == {**ob.schedule_state(), "threshold": oa.last_threshold}
    assert oa.sparsity() == ob.sparsity()


def test_mgpp_event_agrees_on_the_same_weights():
    """MGPP in lockstep: each step starts the GPU optimizer from the CPU one's
    weights and moments, so an event thresholds the same values; the zero
    pattern and threshold must then agree."""
    kw = dict(total_steps=12, num_train_examples=64, target_sparsity=0.75, initial_sparsity=0.25,
              initial_warmup_steps=2, final_finetune_steps=3, prune_interval=3, lr=1e-3,
              sigma0_sq=1e-8, sigma1_sq=0.5)
    ga, pa, _ = make_groups("cpu", torch.float32)
    gb, pb, _ = make_groups("cuda", torch.float32)
    oa, ob = MGPP(ga, **kw), MGPP(gb, **kw)
    g = torch.Generator().manual_seed(9)
    for t in range(12):
        for p, q in zip(pa, pb):
            with torch.no_grad():
                q.copy_(p)
            if p in oa.state:
                for key in ("exp_avg", "exp_avg_sq"):
                    ob.state[q][key].copy_(oa.state[p][key])
            grad = torch.randn(p.shape, generator=g)
            p.grad, q.grad = grad.clone(), grad.cuda()
        oa.step()
        ob.step()
        for p, q in zip(pa, pb):
            torch.testing.assert_close(q.cpu(), p, rtol=2e-5, atol=2e-7)
        if oa.schedule.is_event(t):
            assert ob.last_threshold == pytest.approx(oa.last_threshold, rel=1e-5)
            assert oa.sparsity()["overall"] == ob.sparsity()["overall"]
