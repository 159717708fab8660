"""MGPP (fused kernels) against ReferenceMGPP (plain PyTorch) over a whole
schedule, and the raw mgpp_step_ op against the reference's per-element math.

Lockstep, every dtype: before each step the reference is given the
optimizer's params and moments, so a difference shows in the step that made
it and cannot compound. (Near the prior's crossover the step is stiff: the
prior gradient there is ~1e3 times the data gradient and changes ~20x faster
than theta, so a one-ulp difference grows within a few free steps.)

Tolerance. The kernels and the reference evaluate the same fp32 operations in
the same order, each rounded once, with the same exp (csrc/exp_fp32.h) and a
correctly rounded sqrt and division; so on the CPU one step is asserted
bitwise. Elsewhere (a GPU, whose torch kernels the reference runs on) an
operation evaluated differently leaves the fp32 results a few fp32 ulps
apart, 2^-24 relative: 2^13 (fp16) to 2^16 (bf16) times smaller than a unit
of the storage format, so the stored values are equal or neighbours. Hence
at most 1 ulp for bf16/fp16 params, and rtol 1e-5 for fp32.

A free-running run (no copying) is also checked, with assertions that a
single rounding flip cannot break: events and k exactly, the threshold to a
few storage ulps, zero patterns equal but for weights within 1 ulp of it.
"""
import math
from fractions import Fraction

import pytest
import torch

from conftest import bits
from mgpp_ext import MGPP, ops
from mgpp_ext.reference import ReferenceMGPP, global_threshold as reference_threshold

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SCHEDULE = dict(total_steps=24, initial_warmup_steps=3, final_finetune_steps=6, prune_interval=4,
                initial_sparsity=0.3, target_sparsity=0.8)
T_S, T_E = 3, 17
EVENTS = [3, 4, 8, 12, 16, 17]
HYPER = dict(lr=2e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01, num_train_examples=50,
             lambda_mix=0.1, sigma0_sq=1e-8, sigma1_sq=0.05, lambda_anneal=(1.0, 0.001))

# (group, its "prune" flag, shapes); None: no "prune" key, so ndim >= 2 is pruned
LAYOUT = [
    ("pruned", True, [(64, 33), (17, 64), (4097,)]),
    ("dense", False, [(33,), (1,), (5, 3, 7)]),
    ("default", None, [(9, 4), (4,)]),
]


def make_params(device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    groups = []
    for _, prune, shapes in LAYOUT:
        ps = []
        for s in shapes:
            p = 0.05 * torch.randn(s, generator=g)
            # some weights start inside the spike, where the prior pulls hardest
            small = torch.rand(s, generator=g) < 0.05
            p[small] = 1e-4 * torch.randn(int(small.sum()), generator=g)
            ps.append(p.to(device, dtype))
        groups.append((prune, ps))
    return groups


def make_groups(device, dtype, seed=0):
    """(optimizer param groups, their tensors in order, each tensor's prune flag)."""
    flat, flags, opt_groups = [], [], []
    for prune, ps in make_params(device, dtype, seed):
        group = {"params": ps}
        if prune is not None:
            group["prune"] = prune
        opt_groups.append(group)
        flat += ps
        flags += [p.dim() >= 2 if prune is None else prune for p in ps]
    return opt_groups, flat, flags


def build(device, dtype, seed=0, **overrides):
    """(optimizer, its params, reference, its params, prune flags): identical starts."""
    opt_groups, flat, flags = make_groups(device, dtype, seed)
    kw = {**HYPER, **SCHEDULE, **overrides}
    opt = MGPP(opt_groups, **kw)
    ref_params = [p.detach().clone() for p in flat]
    ref = ReferenceMGPP(ref_params, flags, **kw)
    return opt, flat, ref, ref_params, flags


def set_grads(t, opt_params, ref_params, skip=()):
    g = torch.Generator().manual_seed(1000 + t)
    for i, (a, b) in enumerate(zip(opt_params, ref_params)):
        grad = 0.1 * torch.randn(a.shape, generator=g)
        grad[torch.rand(a.shape, generator=g) < 0.01] *= 1e3  # a few large gradients
        grad = grad.to(a.device, a.dtype)
        a.grad = None if i in skip else grad.clone()
        b.grad = None if i in skip else grad.clone()


def lockstep(opt, params, ref, ref_params):
    """Start the reference's next step from the optimizer's state."""
    for i, (a, b) in enumerate(zip(params, ref_params)):
        b.copy_(a)
        if "exp_avg" in opt.state.get(a, {}):  # a frozen param has no moments
            ref.exp_avg[i].copy_(opt.state[a]["exp_avg"])
            ref.exp_avg_sq[i].copy_(opt.state[a]["exp_avg_sq"])


def assert_near(a, b, dtype, what, rtol=1e-5, exact=False):
    """fp32: assert_close; bf16/fp16: at most one unit in the last place
    apart; ``exact``: bitwise (one step from the same state on the CPU)."""
    if exact:
        assert torch.equal(bits(a), bits(b)), f"{what}: not bitwise equal"
        return
    if dtype == torch.float32:
        torch.testing.assert_close(a, b, rtol=rtol, atol=1e-7, msg=lambda m: f"{what}: {m}")
        return
    # same-sign floats one ulp apart have bit patterns one apart
    steps = (bits(a).int() - bits(b).int()).abs().max().item()
    assert steps <= 1, f"{what}: {steps} ulps apart"


def flat(tensors):
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def sparsity_floor(t, n):
    """floor(s_t N) in exact rational arithmetic on the decimals of SCHEDULE
    (so s_t = s_i exactly at t_s, and 0.3 * 1000 is 300, not 299)."""
    s_i = Fraction(str(SCHEDULE["initial_sparsity"]))
    s_f = Fraction(str(SCHEDULE["target_sparsity"]))
    s_t = s_f + (s_i - s_f) * (1 - Fraction(t - T_S, T_E - T_S)) ** 3
    return math.floor(s_t * n)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_whole_schedule_matches_reference(device, dtype):
    """Lockstep over the whole schedule: every step from the same state."""
    opt, params, ref, ref_params, flags = build(device, dtype)
    exact = device == "cpu"
    pruned_idx = [i for i, f in enumerate(flags) if f]
    assert len(pruned_idx) == 4  # 3 explicit + (9, 4) by default
    n_pruned = sum(params[i].numel() for i in pruned_idx)
    final_zeros = None
    for t in range(SCHEDULE["total_steps"]):
        set_grads(t, params, ref_params)
        user_grads = [p.grad.clone() for p in params]
        opt.step()
        ref.step()
        assert torch.equal(bits(flat(p.grad for p in params)), bits(flat(user_grads))), \
            f"step {t} changed a .grad"
        assert_near(flat(params), flat(ref_params), dtype, f"params at step {t}", exact=exact)
        # fp32 moments: the prior gradient near the crossover is p0/sigma0_sq with
        # p0 = 1/(1+exp(z)), and z = c1 + c2 theta^2 ~ 10 carries an absolute
        # rounding error of ~1e-6, i.e. tens of ulps of exp(z)
        for key, mine in (("exp_avg", ref.exp_avg), ("exp_avg_sq", ref.exp_avg_sq)):
            assert_near(flat(opt.state[p][key] for p in params), flat(mine), dtype,
                        f"{key} at step {t}", rtol=1e-4, exact=exact)
        assert torch.equal(flat(params) == 0, flat(ref_params) == 0), f"zero pattern at step {t}"
        if ref.last_threshold is None:
            assert opt.last_threshold is None
        else:  # both select over the same weights when their steps agree bitwise
            assert opt.last_threshold == ref.last_threshold, f"threshold at step {t}"
        if t in EVENTS:
            zeros = sum(int((params[i] == 0).sum()) for i in pruned_idx)
            assert zeros >= sparsity_floor(t, n_pruned), f"sparsity after the event at {t}"
            assert opt.schedule_state()["last_k"] == sparsity_floor(t, n_pruned)
        lockstep(opt, params, ref, ref_params)
        if t == T_E:
            final_zeros = [params[i] == 0 for i in pruned_idx]
        if t > T_E:
            # the final mask is fixed: pruned weights stay exactly +0
            for z, i in zip(final_zeros, pruned_idx):
                assert bool((bits(params[i])[z] == 0).all()), f"param {i} regrew at step {t}"
    assert opt.schedule_state()["events"] == len(EVENTS)
    assert opt.sparsity()["overall"] >= math.floor(0.8 * n_pruned) / n_pruned
    # dense params never pruned: the prior is off for them, they are not sparse
    for i, f in enumerate(flags):
        if not f:
            assert int((params[i] == 0).sum()) == 0


def storage_ulp(x, dtype):
    """One unit in the last place of |x| in dtype (x a float)."""
    x = torch.tensor(abs(x), dtype=dtype)
    return float(torch.nextafter(x, torch.tensor(math.inf, dtype=dtype)).float() - x.float())


def flip_one_rounding(params, ref_params):
    """Move the optimizer's weight nearest the prior's crossover one ulp, as a
    rounding flip in one of the two implementations would."""
    a, b = params[2].view(-1), ref_params[2].view(-1)
    x = math.sqrt(-(math.log(HYPER["lambda_mix"] / (1 - HYPER["lambda_mix"]))
                    + 0.5 * math.log(HYPER["sigma0_sq"] / HYPER["sigma1_sq"]))
                  / (0.5 / HYPER["sigma0_sq"] - 0.5 / HYPER["sigma1_sq"]))
    j = int((a.float().abs() - x).abs().argmin())
    a[j] = torch.nextafter(a[j], torch.tensor(math.inf, dtype=a.dtype, device=a.device))
    assert not torch.equal(a, b)


@pytest.mark.parametrize("flip", [False, True], ids=["as-is", "one-flip"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_free_running_schedule_agrees(device, dtype, flip):
    """No copying between the two: a rounding flip may then grow into
    different weights near the crossover, but not into a different schedule.
    Events and k are exact, the thresholds agree to a few storage ulps, and
    the zero patterns differ only in weights within 1 ulp of the threshold.
    ("one-flip" makes such a flip on purpose, at step 10.)"""
    opt, params, ref, ref_params, flags = build(device, dtype)
    pruned_idx = [i for i, f in enumerate(flags) if f]
    n_pruned = sum(params[i].numel() for i in pruned_idx)
    events, diverged = 0, 0
    for t in range(SCHEDULE["total_steps"]):
        set_grads(t, params, ref_params)
        events_before = opt.schedule_state()["events"]
        opt.step()
        ref.step()
        if flip and t == 10:
            flip_one_rounding(params, ref_params)
        diverged += not torch.equal(bits(flat(params)), bits(flat(ref_params)))
        if t not in EVENTS:
            assert opt.schedule_state()["events"] == events_before, f"event at step {t}"
            continue
        events += 1
        k = sparsity_floor(t, n_pruned)
        assert opt.schedule_state()["events"] == events
        assert opt.schedule_state()["last_k"] == k
        tau, tau_ref = opt.last_threshold, ref.last_threshold
        assert (tau is None) == (tau_ref is None) == (k == 0)
        if tau is None:
            continue
        assert tau == pytest.approx(tau_ref, rel=0, abs=4 * storage_ulp(tau_ref, dtype)), \
            f"threshold at step {t}"
        band = max(tau, tau_ref) + storage_ulp(max(tau, tau_ref), dtype)
        for i in pruned_idx:
            a, b = params[i], ref_params[i]
            differ = (a == 0) != (b == 0)
            near = (a.float().abs() <= band) & (b.float().abs() <= band)
            assert bool(near[differ].all()), f"zero pattern of param {i} at step {t}"
        zeros = sum(int((params[i] == 0).sum()) for i in pruned_idx)
        assert zeros >= k, f"sparsity after the event at {t}"
    assert events == len(EVENTS) == opt.schedule_state()["events"]
    # the final sparsity is the weights' own, and at least s_f's share
    zeros = sum(int((params[i] == 0).sum()) for i in pruned_idx)
    assert opt.sparsity()["overall"] == zeros / n_pruned
    assert zeros >= sparsity_floor(T_E, n_pruned)
    if dtype == torch.float32:  # no ties at the threshold: exactly k
        assert zeros == sparsity_floor(T_E, n_pruned)
    if device == "cpu" and not flip:  # the same operations in the same order
        assert torch.equal(bits(flat(params)), bits(flat(ref_params)))
    if flip:  # the flip did grow: the two runs differed after it
        assert diverged >= 2


def test_frozen_prunable_weight_still_counts(device):
    """A prunable tensor without gradients is not updated but is still
    thresholded (lockstep, as the whole-schedule test)."""
    opt, params, ref, ref_params, flags = build(device, torch.bfloat16)
    frozen = 1  # the (17, 64) weight
    before = params[frozen].clone()
    for t in range(SCHEDULE["total_steps"]):
        set_grads(t, params, ref_params, skip=(frozen,))
        opt.step()
        ref.step()
        assert opt.last_threshold == ref.last_threshold
        assert_near(flat(params), flat(ref_params), torch.bfloat16, f"params at step {t}",
                    exact=device == "cpu")
        assert torch.equal(flat(params) == 0, flat(ref_params) == 0)
        lockstep(opt, params, ref, ref_params)
    z = params[frozen] == 0
    assert 0 < int(z.sum()) < z.numel()
    assert torch.equal(params[frozen][~z], before[~z])  # pruned, otherwise untouched


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_event_is_exact_on_the_optimizers_own_weights(device, dtype, monkeypatch):
    """Whatever the kernel's rounding, tau is the exact k-th smallest |w| of the
    weights the event sees, and exactly the weights with |w| <= tau are zeroed.
    (The weights an event sees are caught by wrapping ops.apply_threshold_.)"""
    opt, params, _, ref_params, flags = build(device, dtype)
    seen = []
    real = ops.apply_threshold_

    def spy(tensors, select_state, masks=()):
        before = [t.clone() for t in tensors]
        real(tensors, select_state, masks)
        seen.append((before, [t.clone() for t in tensors]))
    monkeypatch.setattr(ops, "apply_threshold_", spy)
    for t in range(T_E + 1):
        set_grads(t, params, ref_params)
        opt.step()
        if t in EVENTS:
            before, after = seen[-1]
            k = opt.schedule_state()["last_k"]
            tau = reference_threshold(before, k)
            assert opt.last_threshold == tau.item()
            for b, a in zip(before, after):
                assert torch.equal(bits(a), bits(torch.where(b.float().abs() > tau, b, torch.zeros_like(b))))
    assert len(seen) == len(EVENTS)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_histogram_window_never_changes_the_result(device, dtype, monkeypatch):
    """Events build their level-0 histogram in a window predicted from the
    last event, and the level-1 histograms of three predicted bins. A hit
    and a miss of either prediction (a miss costs one more pass) give
    bitwise the same weights and thresholds."""
    a, params_a, _, _, _ = build(device, dtype)
    b, params_b, _, _, _ = build(device, dtype)
    c, params_c, _, _, _ = build(device, dtype)
    d, params_d, _, _, _ = build(device, dtype)
    windows = []
    real = ops.mgpp_step_

    def spy(*args, hist_window=ops.FULL_WINDOW, **kw):
        if args[5].numel() > 0:
            windows.append(hist_window)
        real(*args, hist_window=hist_window, **kw)
    monkeypatch.setattr(ops, "mgpp_step_", spy)
    forced, wrong_bin, steered = 0, 0, []
    for t in range(SCHEDULE["total_steps"]):
        set_grads(t, params_a, params_b)
        for p, q, r in zip(params_a, params_c, params_d):
            q.grad = p.grad.clone()
            r.grad = p.grad.clone()
        misses = a._window_misses
        a.step()
        steer = None
        if a.schedule.is_event(t) and a._window_misses == misses and a.last_threshold is not None \
                and d._bin_guess >= 0:
            # d predicts the bin a has just found, placed in each of the
            # three level-1 blocks in turn: every such event skips level 1
            block = len(steered) % 3
            d._bin_guess = (bits(torch.tensor(a.last_threshold)).item() >> 16) + 1 - block
            lo, hi = d._hist_window
            if lo < d._bin_guess - 1 and d._bin_guess + 1 < hi:
                steer = d._level1_passes
                steered.append(block)
        d.step()
        if steer is not None:
            assert d._level1_passes == steer, f"step {t}: level-1 block {steered[-1]} unused"
        if b.schedule.is_event(t) and b.schedule.num_pruned(t, 1 << 20) > 0:
            b._hist_window = (1, 2)  # far below any weight here: always a miss
            forced += 1
            if c._bin_guess >= 0:  # a window that holds the threshold, a wrong bin
                c._bin_guess = c._hist_window[0] + 2
                wrong_bin += 1
        b.step()
        c.step()
        for other, params in ((b, params_b), (c, params_c), (d, params_d)):
            assert torch.equal(bits(flat(params_a)), bits(flat(params))), f"params at step {t}"
            assert a.last_threshold == other.last_threshold
    assert forced > 0 and b._window_misses == forced
    # the default run used predicted windows, and most of them held the threshold
    predicted = sum(w != ops.FULL_WINDOW and w != (1, 2) for w in windows)
    assert predicted >= 2 and a._window_misses < predicted / 2
    if dtype == torch.bfloat16:
        # the level-0 bin of a bf16 weight is its value: never a level-1 pass
        assert a._level1_passes == b._level1_passes == c._level1_passes == 0
        return
    # ... and some of its events found the threshold in a predicted bin, so
    # they skipped the level-1 pass, which every forced miss made
    assert a._level1_passes < forced and b._level1_passes == forced
    assert wrong_bin >= 2 and c._level1_passes >= wrong_bin
    assert set(steered) == {0, 1, 2}


def test_lr_per_group_and_scheduler(device):
    """LambdaLR with a different schedule per group, on both implementations."""
    dtype = torch.float32
    g = torch.Generator().manual_seed(5)
    pruned = [(0.05 * torch.randn(s, generator=g)).to(device) for s in [(64, 33), (4097,)]]
    dense = [(0.05 * torch.randn(s, generator=g)).to(device) for s in [(33,), (1,)]]
    kw = {**HYPER, **SCHEDULE}
    opt = MGPP([{"params": pruned, "prune": True, "lr": 3e-3},
                {"params": dense, "prune": False, "lr": 1e-2}], **kw)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [lambda t: 1.0 - t / 24, lambda t: 0.5 ** (t // 5)])
    # the threshold involves only prunable weights, so one reference per group is exact
    ref_p = ReferenceMGPP([p.clone() for p in pruned], [True, True], **kw)
    ref_d = ReferenceMGPP([p.clone() for p in dense], [False, False], **kw)
    params, ref_params = pruned + dense, ref_p.params + ref_d.params
    lrs_seen = set()
    for t in range(SCHEDULE["total_steps"]):
        set_grads(t, params, ref_params)
        lr_p, lr_d = (grp["lr"] for grp in opt.param_groups)
        lrs_seen.add((lr_p, lr_d))
        opt.step()
        ref_p.step(lr=lr_p)
        ref_d.step(lr=lr_d)
        sched.step()
        assert_near(flat(params), flat(ref_params), dtype, f"params at step {t}")
        assert torch.equal(flat(params) == 0, flat(ref_params) == 0)
        lockstep(opt, pruned, ref_p, ref_p.params)
        lockstep(opt, dense, ref_d, ref_d.params)
    assert len(lrs_seen) == SCHEDULE["total_steps"]
    assert opt.last_threshold == pytest.approx(ref_p.last_threshold, rel=1e-6)


# -- the raw op on edge values -------------------------------------------------

S0, S1, LAM, N = 1e-10, 0.05, 0.1, 1000.0


def crossover():
    """|theta| where the spike and the slab are equally likely (p0 = 1/2)."""
    c1 = math.log(LAM) - math.log1p(-LAM) + 0.5 * math.log(S0) - 0.5 * math.log(S1)
    c2 = 0.5 / S0 - 0.5 / S1
    return math.sqrt(-c1 / c2)


def edge_tensors(dtype, device):
    x = crossover()
    p_vals = [0.0, -0.0, 1e4, -1e4, 1e-30, -1e-30, 1e-5, -1e-5, x, -x, 0.5 * x, 0.9 * x, 1.1 * x,
              2 * x, 1e-4, 3e-4, 1.0, -2.5, 60000.0, 1e-20]
    g_vals = [0.0, 1e-3, -1e-3, 1e30, -1e30, 3e38, 1e-30, 5.0, -5.0, 60000.0]
    n = 3 * 16 + 5  # vector body and scalar tail
    p = torch.tensor([p_vals[i % len(p_vals)] for i in range(n)])
    g = torch.tensor([g_vals[(7 * i) % len(g_vals)] for i in range(n)])
    if dtype == torch.float16:  # keep the inputs finite in fp16
        p = p.clamp(-6e4, 6e4)
        g = g.clamp(-6e4, 6e4)
    m = torch.zeros(n)
    m[::3] = 0.01
    v = torch.zeros(n)
    v[1::3] = 1e-4
    return [t.to(device, dtype) for t in (p, g, m, v)]


def reference_single_step(p, g, m, v, *, lr, wd, step, prior, betas=(0.9, 0.98), eps=1e-6):
    """One step of ReferenceMGPP at bias-correction count ``step``, no event."""
    p, m, v = p.clone(), m.clone(), v.clone()
    ref = ReferenceMGPP([p], [prior], lr=lr, betas=betas, eps=eps, weight_decay=wd,
                        total_steps=10**6, num_train_examples=N, initial_sparsity=0.0,
                        prune_interval=10**7, lambda_mix=LAM, sigma0_sq=S0, sigma1_sq=S1,
                        lambda_anneal=(1.0, 1.0))
    ref.t = step - 1  # t = 0 is the first event, at s_i = 0: it prunes nothing
    ref.steps[0] = step - 1  # the bias-correction count of this tensor
    ref.exp_avg[0].copy_(m)
    ref.exp_avg_sq[0].copy_(v)
    p.grad = g.clone()
    ref.step()
    return p, ref.exp_avg[0], ref.exp_avg_sq[0]


def kernel_step(p, g, m, v, *, lr, wd, step, prior, masks=(), hist=None, betas=(0.9, 0.98), eps=1e-6):
    p, m, v = p.clone(), m.clone(), v.clone()
    h = hist if hist is not None else torch.empty(0, dtype=torch.int64, device=p.device)
    ops.mgpp_step_([p], [g], [m], [v], list(masks), h, lr=lr, beta1=betas[0], beta2=betas[1],
                   eps=eps, weight_decay=wd, step=step, apply_prior=prior, num_examples=N,
                   lambda_mix=LAM, sigma0_sq=S0, sigma1_sq=S1)
    return p, m, v


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("prior", [True, False])
@pytest.mark.parametrize("step", [1, 7])
def test_raw_step_edge_values(device, dtype, prior, step):
    p, g, m, v = edge_tensors(dtype, device)
    assert all(bool(torch.isfinite(t).all()) for t in (p, g, m, v))
    got = kernel_step(p, g, m, v, lr=1e-3, wd=0.01, step=step, prior=prior)
    want = reference_single_step(p, g, m, v, lr=1e-3, wd=0.01, step=step, prior=prior)
    for name, a, b in zip(("param", "exp_avg", "exp_avg_sq"), got, want):
        assert not bool(torch.isnan(a).any()), f"{name} has NaN from finite inputs"
        assert_near(a, b, dtype, name)
    # params stay finite even where g*g overflows the second moment
    assert bool(torch.isfinite(got[0]).all())


def test_raw_step_prior_pulls_to_zero_at_the_crossover(device):
    """With a zero data gradient the prior alone moves weights towards 0, and
    much harder inside the spike than in the slab (per unit of |theta|)."""
    x = crossover()
    p = torch.tensor([0.5 * x, x, 2 * x, 1e-2, -0.5 * x, -1e-2], device=device)
    zeros = torch.zeros_like(p)
    # a huge lr relative to the moments' scale is irrelevant: Adam normalises,
    # so compare the prior gradient itself through exp_avg = (1 - beta1) * grad
    _, m, _ = kernel_step(p, zeros, zeros, zeros, lr=0.0, wd=0.0, step=1, prior=True)
    grad = m / 0.1
    assert bool((torch.sign(grad) == torch.sign(p)).all())
    per_unit = grad / p
    assert per_unit[0] > per_unit[1] > per_unit[2] > per_unit[3]
    assert per_unit[0] == pytest.approx(per_unit[4].item(), rel=1e-6)
    # inside the spike ~ 1/(n sigma0_sq), far in the slab ~ 1/(n sigma1_sq)
    assert per_unit[0].item() == pytest.approx(1 / (N * S0), rel=0.1)
    assert per_unit[3].item() == pytest.approx(1 / (N * S1), rel=1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_raw_step_mask_and_histogram(device, dtype):
    gen = torch.Generator().manual_seed(9)
    shapes = [(64, 33), (4097,), (1,)]
    ps = [(0.05 * torch.randn(s, generator=gen)).to(device, dtype) for s in shapes]
    gs = [torch.randn(s, generator=gen).to(device, dtype) for s in shapes]
    ms = [torch.zeros(s, device=device, dtype=dtype) for s in shapes]
    vs = [torch.zeros(s, device=device, dtype=dtype) for s in shapes]
    masks = [(torch.rand(s, generator=gen) < 0.7).to(device) for s in shapes]
    hist = torch.zeros(ops.HIST_BINS, dtype=torch.int64, device=device)
    plain = [p.clone() for p in ps]
    ops.mgpp_step_(plain, gs, [m.clone() for m in ms], [v.clone() for v in vs], [],
                   torch.empty(0, dtype=torch.int64, device=device), lr=1e-2, beta1=0.9,
                   beta2=0.98, eps=1e-6, weight_decay=0.0, step=1, apply_prior=True,
                   num_examples=N, lambda_mix=LAM, sigma0_sq=S0, sigma1_sq=S1)
    masked = [p.clone() for p in ps]
    ops.mgpp_step_(masked, gs, ms, vs, masks, hist, lr=1e-2, beta1=0.9, beta2=0.98, eps=1e-6,
                   weight_decay=0.0, step=1, apply_prior=True, num_examples=N, lambda_mix=LAM,
                   sigma0_sq=S0, sigma1_sq=S1)
    for a, b, mk in zip(masked, plain, masks):
        # the mask is applied after the update; pruned entries are +0
        assert torch.equal(bits(a), bits(torch.where(mk, b, torch.zeros_like(b))))
    # the histogram is the level-0 histogram of the stored, updated |param|
    want = torch.zeros_like(hist)
    ops.abs_histogram_(masked, ops.new_select_state(1, device), want, 0)
    assert torch.equal(hist, want) and int(hist.sum()) == sum(p.numel() for p in ps)


def clamped_level0(tensors, lo, hi, device):
    """The level-0 histogram with every key clamped to [lo, hi], from the full one."""
    full = torch.zeros(ops.HIST_BINS, dtype=torch.int64, device=device)
    ops.abs_histogram_(tensors, ops.new_select_state(1, device), full, 0)
    want = torch.zeros_like(full)
    want[lo:hi + 1] = full[lo:hi + 1]
    want[lo] += full[:lo].sum()
    want[hi] += full[hi + 1:].sum()
    return want


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("window", [
    pytest.param((0x3c00, 0x3c40), id="narrow"),  # around |w| = 2^-7 .. 2^-7 * 1.5
    pytest.param((0, 0x3c20), id="from-zero"),
    pytest.param((0x3c20, 0xffff), id="to-top"),
    pytest.param((0x3d00, 0x3d00), id="one-bin"),
    pytest.param((0x7f00, 0x7fc0), id="reaches-inf-nan"),
    pytest.param((0, 0xffff), id="full"),
])
def test_raw_step_histogram_window(device, dtype, window):
    """Clamped keys: the edge bins count what lies beyond them, inside bins
    are exact. Odd sizes exercise the vector body and the scalar tail;
    zeros, huge and inf/NaN weights land in the right edge."""
    gen = torch.Generator().manual_seed(11)
    shapes = [(64, 33), (4097,), (1,), (31,)]
    ps = [(0.01 * torch.randn(s, generator=gen)) for s in shapes]
    ps[0][0, :5] = torch.tensor([0.0, -0.0, 3e38, float("inf"), float("nan")])
    ps[1][:3] = torch.tensor([1e-40, float("-inf"), 1.0])
    ps = [p.to(device, dtype) for p in ps]
    gs = [torch.zeros_like(p) for p in ps]
    ms = [torch.zeros_like(p) for p in ps]
    vs = [torch.zeros_like(p) for p in ps]
    lo, hi = window
    hist = torch.zeros(ops.HIST_BINS, dtype=torch.int64, device=device)
    # level-1 histograms of three bins inside the window, where there is one
    n1 = min(3, hi - lo - 1)
    lo1 = (lo + hi) // 2 - 1 if n1 == 3 else lo + 1
    hist1 = torch.zeros(max(n1, 0) * ops.HIST_BINS, dtype=torch.int64, device=device)
    # lr = 0, no prior, no decay: the stored weights are the inputs
    ops.mgpp_step_(ps, gs, ms, vs, [], hist, lr=0.0, beta1=0.9, beta2=0.98, eps=1e-6,
                   weight_decay=0.0, step=1, apply_prior=False, hist_window=window,
                   hist1=hist1 if n1 > 0 else None, hist1_lo=lo1)
    assert torch.equal(hist, clamped_level0(ps, lo, hi, device))
    assert int(hist.sum()) == sum(p.numel() for p in ps)
    for i in range(max(n1, 0)):
        want = torch.zeros(ops.HIST_BINS, dtype=torch.int64, device=device)
        state = ops.new_select_state(1, device)
        state[1] = lo1 + i
        ops.abs_histogram_(ps, state, want, 1)
        assert torch.equal(hist1[i * ops.HIST_BINS:(i + 1) * ops.HIST_BINS], want), f"level-1 bin {i}"


def test_raw_step_histogram_window_is_checked(device):
    p = torch.zeros(3, device=device)
    hist = torch.zeros(ops.HIST_BINS, dtype=torch.int64, device=device)
    kw = dict(lr=0.0, beta1=0.9, beta2=0.98, eps=1e-6, weight_decay=0.0, step=1, apply_prior=False)
    args = lambda h: ([p], [p.clone()], [p.clone()], [p.clone()], [], h)  # noqa: E731
    for bad in [(-1, 5), (9, 8), (0, 65536)]:
        with pytest.raises(RuntimeError, match="hist_lo"):
            ops.mgpp_step_(*args(hist), hist_window=bad, **kw)
    # no |x| has a level-0 key above 0x7fff; such a window would clamp every
    # key past the CUDA kernel's 32,768 shared-memory bins
    for bad in [(0x8000, 0x8000), (0x8000, 0xffff), (0xffff, 0xffff)]:
        with pytest.raises(RuntimeError, match="'hist_lo' must be <= 32767"):
            ops.mgpp_step_(*args(hist), hist_window=bad, **kw)
    ops.mgpp_step_(*args(hist), hist_window=(0x7fff, 0xffff), **kw)  # the last key is fine
    assert int(hist[0x7fff]) == 3 and int(hist.sum()) == 3
    h1 = torch.zeros(2 * ops.HIST_BINS, dtype=torch.int64, device=device)
    for lo1 in (10, 19, 25):  # the two bins must lie strictly inside (10, 20)
        with pytest.raises(RuntimeError, match="hist1_lo"):
            ops.mgpp_step_(*args(hist), hist_window=(10, 20), hist1=h1, hist1_lo=lo1, **kw)
    with pytest.raises(RuntimeError, match="'hist1' must be"):
        ops.mgpp_step_(*args(hist), hist_window=(10, 20), hist1=h1[:1000], hist1_lo=12, **kw)
    with pytest.raises(RuntimeError, match="needs the level-0"):
        ops.mgpp_step_(*args(hist[:0]), hist_window=(10, 20), hist1=h1, hist1_lo=12, **kw)


def test_raw_step_non_contiguous(device):
    gen = torch.Generator().manual_seed(10)
    base = torch.randn(33, 64, generator=gen).to(device)
    g = torch.randn(64, 33, generator=gen).to(device)
    p_nc = base.clone().t()
    m_nc = torch.zeros(33, 64, device=device).t()
    v_nc = torch.zeros(33, 64, device=device).t()
    assert not p_nc.is_contiguous()
    p_c, m_c, v_c = kernel_step(base.t().contiguous(), g, torch.zeros(64, 33, device=device),
                                torch.zeros(64, 33, device=device), lr=1e-2, wd=0.1, step=2, prior=True)
    ops.mgpp_step_([p_nc], [g], [m_nc], [v_nc], [], torch.empty(0, dtype=torch.int64, device=device),
                   lr=1e-2, beta1=0.9, beta2=0.98, eps=1e-6, weight_decay=0.1, step=2,
                   apply_prior=True, num_examples=N, lambda_mix=LAM, sigma0_sq=S0, sigma1_sq=S1)
    for a, b in ((p_nc, p_c), (m_nc, m_c), (v_nc, v_c)):
        assert torch.equal(a, b)


# -- the AdamW part against torch.optim.AdamW itself ------------------------------

def adamw_vs(kind, device):
    """Dense (unpruned) tensors, one of which gets no gradient for its first two steps."""
    g = torch.Generator().manual_seed(21)
    w0, b0 = torch.randn(5, 4, generator=g).to(device), torch.randn(7, generator=g).to(device)
    grads = [(torch.randn(5, 4, generator=g).to(device), torch.randn(7, generator=g).to(device))
             for _ in range(6)]
    hyper = dict(lr=1e-2, weight_decay=0.01)
    out = []
    for which in ("adamw", kind):
        w, b = w0.clone(), b0.clone()
        if which == "adamw":
            opt = torch.optim.AdamW([w, b], betas=(0.9, 0.98), eps=1e-6, foreach=False, **hyper)
        elif which == "mgpp":
            opt = MGPP([{"params": [w], "prune": True}, {"params": [b], "prune": False}],
                       total_steps=100, num_train_examples=10, initial_warmup_steps=50, **hyper)
        else:
            opt = ReferenceMGPP([w, b], [True, False], total_steps=100, num_train_examples=10,
                                initial_warmup_steps=50, **hyper)
        for t, (gw, gb) in enumerate(grads):
            w.grad = gw.clone()
            b.grad = None if t < 2 else gb.clone()
            opt.step()
        out.append(b)
    return out


def test_dense_params_match_torch_adamw(device):
    """Bias correction counts each tensor's own steps, as torch.optim.AdamW does."""
    want, got = adamw_vs("mgpp", device)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_reference_dense_params_match_torch_adamw(device):
    """The reference claims "bias correction as torch.optim.AdamW" too."""
    want, got = adamw_vs("reference", device)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("sigma0_sq", [1e-12, 1e-10, 1e-7, 1e-3])
def test_far_from_zero_shortcut_is_exact(device, sigma0_sq):
    """Vectors whose weights all sit far out in the slab (or are exact zeros)
    skip the exp of the prior (CPU kernel). Put the same far weights in
    vectors that also hold one weight near the crossover (which forces the
    exact formula for the whole vector): their results must be bitwise equal
    either way. On CUDA, which computes every element exactly, the far
    weights must give the CPU shortcut's bits."""
    c1 = math.log(LAM) - math.log1p(-LAM) + 0.5 * math.log(sigma0_sq) - 0.5 * math.log(S1)
    c2 = 0.5 / sigma0_sq - 0.5 / S1
    x = math.sqrt(max(-c1 / c2, 1e-30))
    g = torch.Generator().manual_seed(5)
    # |p| log-uniform from just above the crossover out to 1: covers the edge
    # of the shortcut whatever its exact position
    far = torch.exp(torch.empty(4096).uniform_(math.log(1.0001 * x), 0.0, generator=g))
    far *= torch.where(torch.rand(4096, generator=g) < 0.5, -1.0, 1.0)
    far[::37] = 0.0
    n = far.numel()
    mixed = far.clone()
    mixed[::4] = 0.5 * x  # one near weight in every group of 4: no vector is all-far
    grads = 1e-3 * torch.randn(n, generator=g)
    def run(p, on=device):
        p = p.to(on, copy=True)
        m = torch.zeros_like(p)
        v = torch.zeros_like(p)
        ops.mgpp_step_([p], [grads.to(on)], [m], [v], [], torch.empty(0, dtype=torch.int64, device=on),
                       lr=1e-3, beta1=0.9, beta2=0.98, eps=1e-6, weight_decay=0.0, step=1, apply_prior=True,
                       num_examples=N, lambda_mix=LAM, sigma0_sq=sigma0_sq, sigma1_sq=S1)
        return p.cpu(), m.cpu()
    p_far, m_far = run(far)
    if device == "cpu":
        p_mix, m_mix = run(mixed)
        keep = torch.ones(n, dtype=torch.bool)
        keep[::4] = False
        assert torch.equal(bits(p_far[keep]), bits(p_mix[keep]))
        assert torch.equal(bits(m_far[keep]), bits(m_mix[keep]))
    else:
        # The CUDA kernel has no shortcut: every element takes the exact
        # formula, which must give the bits of the CPU kernel's shortcut.
        p_cpu, m_cpu = run(far, "cpu")
        assert torch.equal(bits(p_far), bits(p_cpu))
        assert torch.equal(bits(m_far), bits(m_cpu))
    # and both are the formula: exp_avg = (1 - beta1) * (grad + prior gradient),
    # in float64 (a shortcut taken too close to zero would be off by ~1e9x)
    t = far.double()
    p0 = 1.0 / (1.0 + torch.exp(c1 + c2 * t * t))
    prior = (t / N) * (p0 / sigma0_sq + (1 - p0) / S1)
    want = 0.1 * (grads.double() + prior)
    scale = 0.1 * (grads.double().abs() + prior.abs())  # the sum may cancel: bound by its terms
    err = (m_far.double() - want).abs()
    assert bool((err <= 1e-5 * scale + 1e-30).all()), (err / scale).max()
