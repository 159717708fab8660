"""bench_step.py's regulariser cases: the ADMM and SR-STE steps against
torch.optim.AdamW(fused=True) on the same tensors, and ADMM's n:m
projection against its eager form, all timed in the same run.

  (r1) ADMM.step() between projections (the proximal term fused in)
  (r1n) the same with on_nonfinite="propagate" (steps between projections
       are not checked for inf/NaN, as torch.optim.AdamW's)
  (r2) SRSTE.step() with the mask recomputed (mask_interval=1, the worst case)
  (r2n) the same with on_nonfinite="propagate" (an n:m mask update is not
       checked for inf/NaN: no step is, as in torch.optim.AdamW)
  (r3) SRSTE.step() between mask updates (mask_interval=10**6)
  (r3n) the same with on_nonfinite="propagate"
  (c)  torch AdamW (fused) on the same tensors
  (p1) admm_project_: Z <- Proj_2:4(W + U), U <- U + W - Z, one fused op
  (p2) the eager form, Z and U as two fp32 tensors: x = W + U; |x|, reshape
       into groups, topk, scatter a keep mask, Z = x * keep, U = x - Z

Each case is checked before it is timed: one fused ADMM step, one SR-STE
step and one projection equal the plain-PyTorch references
(mgpp_ext.reference_regularisers) bitwise, and the fused projection's mask
equals the eager topk mask but in groups with tied scores (whose order topk
leaves open).
"""
from __future__ import annotations

import gc

import torch

from mgpp_ext import ADMM, SRSTE
from mgpp_ext import reference_regularisers as ref
from mgpp_ext import regulariser_ops as rops

N, M = 2, 4
STEP_HP = dict(lr=5e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0)
REG_CASES = ("r1", "r1n", "r2", "r2n", "r3", "r3n", "c", "p1", "p2")
REG_LABELS = {
    "r1": "(r1) ADMM step, 2:4",
    "r1n": "(r1n) ADMM step, propagate",
    "r2": "(r2) SR-STE step, mask updated",
    "r2n": "(r2n) SR-STE updated, propagate",
    "r3": "(r3) SR-STE step, mask fixed",
    "r3n": "(r3n) SR-STE fixed, propagate",
    "c": "(c) torch AdamW",
    "p1": "(p1) ADMM projection, fused",
    "p2": "(p2) ADMM projection, eager",
}


def _with_grads(params, grads):
    out = [p.detach().clone() for p in params]
    for p, g in zip(out, grads):
        p.grad = g
    return out


def admm_opt(params, on_nonfinite="raise"):
    """An ADMM whose steps 1 .. 10**6 - 2 are all between projections."""
    opt = ADMM(params, **STEP_HP, total_steps=10**6, pattern=f"{N}:{M}", rho=1e-3,
               admm_interval=10**6, on_nonfinite=on_nonfinite)
    opt.step()  # t = 0: state allocated and the first projection done, untimed
    return opt


def srste_opt(params, mask_interval, on_nonfinite="raise"):
    opt = SRSTE(params, **STEP_HP, pattern=f"{N}:{M}", mask_interval=mask_interval,
                on_nonfinite=on_nonfinite)
    opt.step()  # moments allocated, untimed
    return opt


def eager_project(ws, zs, us, dim=-1):
    """Z <- Proj_{n:m}(W + U), U <- U + W - Z with torch ops, two fp32
    tensors. Returns the keep masks."""
    keeps = []
    for w, z, u in zip(ws, zs, us):
        x = w.float() + u
        s = x.abs().movedim(dim, -1)
        groups = s.reshape(-1, M)
        idx = groups.topk(N, dim=-1).indices
        keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, idx, True)
        keep = keep.view(s.shape).movedim(-1, dim)
        torch.mul(x, keep, out=z)
        torch.sub(x, z, out=u)
        keeps.append(keep)
    return keeps


def _bits(t):
    return t.view({torch.float32: torch.int32, torch.bfloat16: torch.int16,
                   torch.float16: torch.int16}[t.dtype])


def check(params, grads):
    """One fused step of each family against its reference, bitwise, and the
    fused projection's mask against the eager topk mask."""
    g = torch.Generator().manual_seed(1)
    ps = [p.clone() for p in params]
    m = [torch.zeros_like(p) for p in ps]
    v = [torch.zeros_like(p) for p in ps]
    a = [0.01 * torch.randn(p.shape, generator=g) for p in ps]
    k = [rops.pack_dual_mask(torch.rand(p.shape, generator=g) < 0.5) for p in ps]
    hp = dict(lr=1e-3, beta1=0.9, beta2=0.98, eps=1e-6, weight_decay=0.01, step=1)
    r = [x.clone() for x in ps], [x.clone() for x in m], [x.clone() for x in v]
    rops.admm_step_(ps, grads, m, v, a, k, rho=1e-3, **hp)
    ref.admm_step_(*r[:1], grads, *r[1:], a, k, rho=1e-3, **hp)
    if not all(torch.equal(_bits(x), _bits(y)) for x, y in zip(ps + m + v, r[0] + r[1] + r[2])):
        raise AssertionError("admm_step_ differs from the reference")
    dense = [x.clone() for x in params]
    keep = [torch.ones(x.shape, dtype=torch.bool) for x in params]
    out = [x.clone() for x in params]
    rd, rk, ro = [x.clone() for x in dense], [x.clone() for x in keep], [x.clone() for x in out]
    m = [torch.zeros_like(p) for p in ps]
    v = [torch.zeros_like(p) for p in ps]
    rm, rv = [x.clone() for x in m], [x.clone() for x in v]
    kw = dict(lambda_w=2e-4, n=N, m=M, dims=[-1] * len(ps), update_mask=True, **hp)
    rops.srste_step_(out, grads, dense, m, v, keep, **kw)
    ref.srste_step_(ro, grads, rd, rm, rv, rk, **kw)
    if not all(torch.equal(_bits(x), _bits(y)) for x, y in zip(out + dense, ro + rd)) or not all(
            torch.equal(x, y) for x, y in zip(keep, rk)):
        raise AssertionError("srste_step_ differs from the reference")
    z = [torch.empty_like(x) for x in a]
    u = [x.masked_fill(rops.unpack_dual_mask(kk, x), 0.0) for x, kk in zip(a, k)]
    keeps = eager_project(params, z, u)
    ra, rk = [x.clone() for x in a], [x.clone() for x in k]
    rops.admm_project_(params, a, k, N, M, [-1] * len(params))
    ref.admm_project_(params, ra, rk, N, M, [-1] * len(params))
    if not all(torch.equal(_bits(x), _bits(y)) for x, y in zip(a, ra)) or not all(
            torch.equal(x, y) for x, y in zip(k, rk)):
        raise AssertionError("admm_project_ differs from the reference")
    ties = 0
    for want, aa, kk in zip(keeps, a, k):
        # topk orders tied scores arbitrarily: a group may differ only where
        # its |W + U| has a tie.
        differ = (rops.unpack_dual_mask(kk, aa) != want).reshape(-1, M).any(1)
        groups = aa.abs().reshape(-1, M)[differ]
        if not (groups.sort(1).values.diff(dim=1) == 0).any(1).all():
            raise AssertionError("admm_project_'s mask differs from the eager topk mask")
        ties += int(differ.sum())
    return dict(admm_step_bitwise=True, srste_step_bitwise=True, projection_bitwise=True,
                eager_mask_equal_but_tied_groups=ties,
                numel_checked=sum(p.numel() for p in params))


def build(case, params, grads, adamw):
    """A callable doing one timed call of ``case``."""
    nonfinite = "propagate" if case.endswith("n") else "raise"
    if case in ("r1", "r1n"):
        return admm_opt(_with_grads(params, grads), nonfinite).step
    if case in ("r2", "r2n", "r3", "r3n"):
        return srste_opt(_with_grads(params, grads), 1 if case.startswith("r2") else 10**6, nonfinite).step
    if case == "c":
        opt, _ = adamw(_with_grads(params, grads))
        return opt.step
    ws = [p.detach().clone() for p in params]
    a = [torch.zeros(p.shape, dtype=torch.float32, device=p.device) for p in params]
    if case == "p1":
        k = [rops.new_dual_mask(p).fill_(255) for p in params]
        return lambda: rops.admm_project_(ws, a, k, N, M, [-1] * len(ws))
    if case == "p2":
        z = [torch.zeros_like(x) for x in a]
        return lambda: eager_project(ws, z, a)
    raise ValueError(case)


def bench(params, grads, device, warmup, repeat, time_cases, adamw, check_limit):
    """The timings, ratios and check of one size. Every case is built first
    and ``time_cases`` times them round-robin (one call of each per
    repetition), so that the ratios to (c) compare calls made at the same
    time on a shared machine."""
    m, total = 0, 0
    while m < len(params) and (m == 0 or total + params[m].numel() <= check_limit):
        total += params[m].numel()
        m += 1
    row = dict(check=check(params[:m], grads[:m]) if device.type == "cpu" else None, cases={})
    fns = {case: build(case, params, grads, adamw) for case in REG_CASES}
    row["cases"] = time_cases(fns, device, warmup, repeat)
    del fns
    gc.collect()
    c = row["cases"]
    med = lambda x: c[x]["median_s"]  # noqa: E731
    row["ratios"] = dict(r1_over_c=med("r1") / med("c"), r1n_over_c=med("r1n") / med("c"),
                         r2_over_c=med("r2") / med("c"), r2n_over_c=med("r2n") / med("c"),
                         r3_over_c=med("r3") / med("c"),
                         r3n_over_c=med("r3n") / med("c"), p2_over_p1=med("p2") / med("p1"))
    return row


def print_row(label, row, n):
    print(f"\n== {label}: regularisers, {n:,} weights ==")
    print(f"{'case':34s} {'median ms':>10s} {'min ms':>9s}")
    for case in REG_CASES:
        r = row["cases"][case]
        print(f"{REG_LABELS[case]:34s} {r['median_s'] * 1e3:10.2f} {r['min_s'] * 1e3:9.2f}")
    q = row["ratios"]
    ok = lambda good: "ok" if good else "MISSED"  # noqa: E731
    print(f"(r1)/(c) = {q['r1_over_c']:.2f} (target <= 1.3: {ok(q['r1_over_c'] <= 1.3)})   "
          f"(r2)/(c) = {q['r2_over_c']:.2f} (target <= 1.3: {ok(q['r2_over_c'] <= 1.3)})   "
          f"(r3)/(c) = {q['r3_over_c']:.2f}   "
          f"(p2)/(p1) = {q['p2_over_p1']:.1f} (target >= 5: {ok(q['p2_over_p1'] >= 5)})")
    print(f"with on_nonfinite='propagate': (r1n)/(c) = {q['r1n_over_c']:.2f} "
          f"(target <= 1.3: {ok(q['r1n_over_c'] <= 1.3)})   (r2n)/(c) = {q['r2n_over_c']:.2f} "
          f"(target <= 1.3: {ok(q['r2n_over_c'] <= 1.3)})   (r3n)/(c) = {q['r3n_over_c']:.2f}")
    if row["check"]:
        print(f"check ({row['check']['numel_checked']:,} weights): admm_step_, srste_step_ and "
              "admm_project_ == reference bitwise; projection mask == eager topk mask but in "
              f"{row['check']['eager_mask_equal_but_tied_groups']} groups with tied |W + U|")
