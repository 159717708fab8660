#!/usr/bin/env python
"""Time one MGPP step against torch's AdamW and the authors' plain-PyTorch path.

Cases, all on the same weight shapes, dtype and device, measured in one run:
  (a) MGPP.step() at a non-event step of the pruning phase (prior on)
  (b) MGPP.step() at a pruning event (fused step + level-0 histogram,
      level-1 histogram pass, select, threshold pass)
  (c) torch.optim.AdamW(fused=True)  (foreach=True where fused is refused)
  (d) the authors' event step: prior gradient added into .grad with torch
      ops, torch.optim.AdamW (default implementation), |w| per tensor,
      torch.cat, torch.kthvalue, masked_fill_
  (e) the threshold alone: ops.global_threshold vs kthvalue(cat(|w|))
Before timing it checks that a fused event step and the reference event
step (mgpp_ext.reference.ReferenceMGPP and the (d) path) agree, and that
global_threshold equals kthvalue bitwise.

Then the regulariser cases (regulariser_cases.py, --regularisers on|off|only):
the ADMM step, the SR-STE step (mask updated / fixed) and torch AdamW on
the same tensors, and ADMM's fused 2:4 projection against its eager form.

    PYTHONPATH=. python benchmarks/bench_step.py                 # CPU, 10M and 50M
    PYTHONPATH=. python benchmarks/bench_step.py --device cuda --shapes llama
    PYTHONPATH=. python benchmarks/bench_step.py --regularisers only  # ADMM, SR-STE
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

import regulariser_cases
from mgpp_ext import GMP, MGPP, Schedule, ops
from mgpp_ext.reference import ReferenceMGPP, prior_gradient

# The authors' GLUE settings (README.md, "The algorithm in brief"); MNLI's training-set size.
HP = dict(lr=5e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0)
PRIOR = dict(num_train_examples=392702, lambda_mix=0.1, sigma0_sq=1e-10, sigma1_sq=0.05,
             lambda_anneal=(1.0, 0.001))
SPARSITY = 0.9
TOTAL_STEPS = 10**6
# The event steps' schedule: cubic from 90% to 95% over EVENT_STEPS steps,
# as in training, where every event prunes a few more weights than the last
# (about 1.5e-5 of them per step here), so the threshold moves up to the
# smallest surviving weights. (At a constant k it would land among the
# weights pruned at the last event, which AdamW has just moved off zero:
# a state training never reaches before the mask is fixed.)
EVENT_SCHEDULE = dict(total_steps=10**4, initial_sparsity=SPARSITY, target_sparsity=0.95)

# One transformer layer's prunable weights, repeated until the target count.
LAYER_SHAPES = {
    # BERT-base: query, key, value, attention output; intermediate; output.
    "bert": [(768, 768)] * 4 + [(3072, 768), (768, 3072)],
    # Llama-like 1.3B: q, k, v, o; gate, up; down.
    "llama": [(2048, 2048)] * 4 + [(5632, 2048)] * 2 + [(2048, 5632)],
}
DEFAULT_SIZES = {"cpu": "10M,50M", "cuda": "100M,500M,1B"}
CHECK_LIMIT = 100_000_000  # weights the correctness check runs on, at most
CASES = ("a", "a90", "b", "c", "d", "e1", "e2")
LABELS = {
    "a": "(a) MGPP step, non-event",
    "a90": "(a') same, 90% of w pruned",
    "b": "(b) MGPP step, pruning event",
    "c": "(c) torch AdamW",
    "d": "(d) authors' event path",
    "e1": "(e1) ops.global_threshold",
    "e2": "(e2) kthvalue(cat(|w|))",
}


# -- problem set-up -------------------------------------------------------------
def parse_size(text):
    text = text.strip().upper()
    mult = {"K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9}.get(text[-1:], 1)
    return int(float(text[:-1] if text[-1:] in "KMBG" else text) * mult)


def make_shapes(kind, target):
    """Layer shapes in order, one tensor at a time, until >= target weights."""
    shapes, total, layer = [], 0, LAYER_SHAPES[kind]
    while total < target:
        s = layer[len(shapes) % len(layer)]
        shapes.append(s)
        total += s[0] * s[1]
    return shapes


def make_tensors(shapes, dtype, device, seed=0):
    """Weights ~ N(0, 0.02^2) like a pretrained init, gradients ~ N(0, 1e-3^2)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    params, grads = [], []
    for s in shapes:
        params.append((torch.randn(s, generator=gen, device=device) * 0.02).to(dtype))
        grads.append((torch.randn(s, generator=gen, device=device) * 1e-3).to(dtype))
    return params, grads


def with_grads(params, grads, clone_grads=False):
    out = [p.detach().clone() for p in params]
    for p, g in zip(out, grads):
        p.grad = g.clone() if clone_grads else g
    return out


def nonevent_mgpp(params):
    """An MGPP whose steps 1 .. 10**6 - 2 are all non-event pruning-phase steps."""
    opt = MGPP(params, **HP, **PRIOR, total_steps=TOTAL_STEPS, prune_interval=TOTAL_STEPS,
               initial_warmup_steps=0, initial_sparsity=0.0, target_sparsity=SPARSITY)
    opt.step()  # t = 0 = t_s is an event (k = 0); move past it
    return opt


def event_mgpp(params, prune_interval=1):
    """An MGPP with a pruning event of EVENT_SCHEDULE (from sparsity 0.9 up)
    on every multiple of prune_interval (and at t = 0)."""
    return MGPP(params, **HP, **PRIOR, **EVENT_SCHEDULE, prune_interval=prune_interval,
                initial_warmup_steps=0)


def reference_mgpp(params):
    return ReferenceMGPP(params, [True] * len(params), **HP, **PRIOR, **EVENT_SCHEDULE,
                         prune_interval=1, initial_warmup_steps=0)


def adamw(params):
    """(optimizer, implementation name): fused where torch supports it."""
    try:
        opt = torch.optim.AdamW(params, **HP, fused=True)
        opt.step()  # torch refuses unsupported dtype/device on the first step
        return opt, "fused"
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(params, **HP, foreach=True), "foreach (fused refused)"


class AuthorsEventStep:
    """What the authors' code does at an event (PTMGP pruners/MWA.py): the prior
    gradient added into .grad with torch ops, torch's AdamW in its default
    implementation, then |w| per tensor, torch.cat, torch.kthvalue, masked_fill_."""

    def __init__(self, params):
        self.params = params
        self.opt = torch.optim.AdamW(params, **HP)
        self.schedule = Schedule(**EVENT_SCHEDULE, prune_interval=1,
                                 lambda_mix=PRIOR["lambda_mix"],
                                 lambda_anneal=PRIOR["lambda_anneal"])
        self.n_total = sum(p.numel() for p in params)
        self.t = 0
        self.tau = None

    @torch.no_grad()
    def step(self, prune=True):
        lam = self.schedule.lambda_at(self.t)
        for p in self.params:
            # Added in the parameter's dtype, as the authors' code (p.grad.sub_(p.mul(...)));
            # computed in fp32 (the reference's exp is an fp32 one).
            p.grad.add_(prior_gradient(p.float(), PRIOR["num_train_examples"], lam,
                                       PRIOR["sigma0_sq"], PRIOR["sigma1_sq"]).to(p.dtype))
        self.opt.step()
        if not prune:
            self.t += 1
            return
        k = self.schedule.num_pruned(self.t, self.n_total)
        mags = [p.detach().abs() for p in self.params]
        self.tau = torch.kthvalue(torch.cat([m.view(-1) for m in mags]), k).values
        for p, m in zip(self.params, mags):
            p.masked_fill_(m <= self.tau, 0.0)
        self.t += 1


def _select_state(tensors, sparsity):
    """A finished select state for the k = floor(sparsity N) threshold."""
    k = math.floor(sparsity * sum(t.numel() for t in tensors))
    device = tensors[0].device
    sel = ops.new_select_state(k, device)
    for level in (0, 1):
        hist = torch.zeros(ops.HIST_BINS, dtype=torch.int64, device=device)
        ops.abs_histogram_(tensors, sel, hist, level)
        ops.select_bin_(hist, sel, level)
    return sel


def kthvalue_threshold(tensors, k):
    return torch.kthvalue(torch.cat([t.float().abs().flatten() for t in tensors]), k).values


# -- timing and memory ----------------------------------------------------------
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCK = time.perf_counter


def _with_before(fn, before):
    """fn, with an untimed ``before()`` that time_fn runs ahead of each call."""
    def run():
        fn()
    run.before = before
    return run


def time_fn(fn, device, warmup, repeat):
    """Median / min / max seconds of single calls, synchronised, after warm-up.
    CLOCK is wall time, or the process's CPU time under --clock cpu. A
    ``fn.before`` runs untimed ahead of every call."""
    before = getattr(fn, "before", lambda: None)
    for _ in range(warmup):
        before()
        fn()
    sync(device)
    samples = []
    for _ in range(repeat):
        before()
        sync(device)
        t0 = CLOCK()
        fn()
        sync(device)
        samples.append(CLOCK() - t0)
    return _stats(samples)


def _stats(samples):
    return dict(median_s=statistics.median(samples), min_s=min(samples), max_s=max(samples),
                samples=len(samples))


# Written before every round-robin call: larger than any last-level cache
# here, so each call starts from the same cache, full of another pass's
# dirty lines (as an optimizer step finds it after the backward pass), not
# from whatever the case timed before it left.
FLUSH_BYTES = 256 << 20


def time_round_robin(fns, device, warmup, repeat):
    """``time_fn`` over several callables at once: each repetition times one
    call of every case in turn, so that a slow spell of a shared machine
    (another tenant's memory traffic) falls on every case alike instead of
    on whichever case was being timed then. An untimed write of
    FLUSH_BYTES precedes every call. Returns {case: stats}."""
    flush = torch.zeros(FLUSH_BYTES // 4, dtype=torch.float32, device=device)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    samples = {case: [] for case in fns}
    for _ in range(repeat):
        for case, fn in fns.items():
            flush.add_(1.0)
            sync(device)
            t0 = CLOCK()
            fn()
            sync(device)
            samples[case].append(CLOCK() - t0)
    return {case: _stats(xs) for case, xs in samples.items()}


def _proc_status_kib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def _reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


_LIBC = None


def exact_malloc_accounting():
    """Make glibc mmap every block >= 64 KiB and return freed memory, so that
    RSS growth during a call counts the call's allocations. Slows repeated
    mid-size allocations, so it is switched on only after all timing."""
    try:
        global _LIBC
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024)   # M_MMAP_THRESHOLD (also fixes it: no dynamic raise)
        libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD
        libc.malloc_trim(0)
        _LIBC = libc
        return True
    except (OSError, AttributeError):
        return False


def peak_extra_bytes(fn, device):
    """Peak memory above the level before the call, during one call."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    if _LIBC is not None:
        _LIBC.malloc_trim(0)  # free heap blocks stop being resident: reuse shows as growth
    if not _reset_peak_rss():
        return None
    base = _proc_status_kib("VmRSS")
    fn()
    return (_proc_status_kib("VmHWM") - base) * 1024


# -- the checks -----------------------------------------------------------------
def _bits(x):
    return x.detach().float().cpu().reshape(1).view(torch.int32).item()


def check_correctness(params, grads, device, dtype):
    """Two event steps from identical states: fused MGPP vs ReferenceMGPP
    (thresholds bitwise equal, params allclose), the (d) path vs the
    reference (allclose), and global_threshold == kthvalue bitwise."""
    fused = with_grads(params, grads)
    ref = with_grads(params, grads)
    authors = with_grads(params, grads, clone_grads=True)
    opt_f, opt_r, opt_a = event_mgpp(fused), reference_mgpp(ref), AuthorsEventStep(authors)
    tol = dict(rtol=1e-5, atol=1e-7) if dtype == torch.float32 else dict(rtol=2e-2, atol=1e-4)
    report = {}
    for t in range(2):
        for p, g in zip(authors, grads):  # a fresh backward: the (d) path adds into .grad
            p.grad.copy_(g)
        opt_f.step()
        opt_r.step()
        opt_a.step()
        sync(device)
        tau_f, tau_r = opt_f._threshold, torch.tensor(opt_r.last_threshold, dtype=torch.float32)
        if _bits(tau_f) != _bits(tau_r):
            raise AssertionError(f"step {t}: fused threshold {float(tau_f)!r} != reference "
                                 f"{float(tau_r)!r}")
        if not all(torch.allclose(a.float(), b.float(), **tol) for a, b in zip(fused, ref)):
            diff = max((a.float() - b.float()).abs().max().item() for a, b in zip(fused, ref))
            raise AssertionError(f"step {t}: fused params differ from the reference by {diff}")
        a_diff = max((a.float() - b.float()).abs().max().item() for a, b in zip(authors, ref))
        if not math.isclose(float(opt_a.tau), float(tau_r), rel_tol=tol["rtol"] * 10):
            raise AssertionError(f"step {t}: (d) threshold {float(opt_a.tau)} vs reference "
                                 f"{float(tau_r)}")
        report[f"step{t}"] = dict(tau=float(tau_f), authors_tau=float(opt_a.tau),
                                  authors_max_param_diff=a_diff)
    k = math.floor(SPARSITY * sum(p.numel() for p in params))
    ours, theirs = ops.global_threshold(params, k), kthvalue_threshold(params, k)
    if _bits(ours) != _bits(theirs):
        raise AssertionError(f"global_threshold {float(ours)!r} != kthvalue {float(theirs)!r}")
    report["global_threshold_bitwise_equal"] = True
    del fused, ref, authors, opt_f, opt_r, opt_a
    gc.collect()
    return report


# -- the cases ------------------------------------------------------------------
def build_case(case, params, grads, device):
    """(callable doing one timed call, notes). Builds fresh state from clones."""
    if case in ("a", "a90"):
        ps = with_grads(params, grads)
        if case == "a90":
            # Late in the pruning phase most weights sit near zero, in the
            # spike, where the kernel cannot skip the exp of the prior.
            with torch.no_grad():
                ops.apply_threshold_(ps, _select_state(ps, SPARSITY))
        opt = nonevent_mgpp(ps)

        def run():
            opt.step()
        run.opt = opt
        return run, {}
    if case == "b":
        # Events on even steps. Each timed event follows an untimed non-event
        # step, as in training: the weights pruned at the last event have moved
        # off exact zero (so the kernel computes their prior in full).
        opt = event_mgpp(with_grads(params, grads), prune_interval=2)
        opt.step()  # t = 0: the first event
        run = _with_before(opt.step, opt.step)
        run.opt = opt
        return run, {}
    if case == "c":
        opt, impl = adamw(with_grads(params, grads))
        return opt.step, {"adamw_impl": impl}
    if case == "d":
        step = AuthorsEventStep(with_grads(params, grads, clone_grads=True))
        step.step()  # AdamW state allocated outside the timing, as for (b) and (c)
        run = _with_before(step.step, lambda: step.step(prune=False))
        run.authors = step
        return run, {}
    k = math.floor(SPARSITY * sum(p.numel() for p in params))
    if case == "e1":
        return (lambda: ops.global_threshold(params, k)), {}
    if case == "e2":
        return (lambda: kthvalue_threshold(params, k)), {}
    raise ValueError(case)


# Passes over the weights made by each op an event step calls (all_finite
# reads the gradients, not the weights; select_bin_ reads a histogram).
WEIGHT_PASSES = {"mgpp_step_": 1, "abs_histogram_": 1, "apply_threshold_": 1}


def passes_per_event(fn, events=4):
    """Passes over the weights per event step of case (b), counted over a few
    untimed events by wrapping the ops: the fused step's pass, any full
    level-0 rebuild (a missed window), the level-1 pass, the masking pass."""
    counts = dict.fromkeys(WEIGHT_PASSES, 0)
    real = {name: getattr(ops, name) for name in WEIGHT_PASSES}

    def counting(name):
        def call(*args, **kwargs):
            counts[name] += 1
            return real[name](*args, **kwargs)
        return call
    for _ in range(events):
        fn.before()
        for name in WEIGHT_PASSES:
            setattr(ops, name, counting(name))
        try:
            fn()
        finally:
            for name, f in real.items():
                setattr(ops, name, f)
    return {name: c / events for name, c in counts.items()}


def expected_alternating(opt, calls):
    """Untimed non-event step, then a timed event, ``calls`` times."""
    sch, t = opt.schedule, opt.current_step
    return all(sch.is_event(s) == ((s - t) % 2 == 1) and sch.prior_active(s)
               for s in range(t, t + 2 * calls))


def expected_nonevent(opt, calls):
    sch, t = opt.schedule, opt.current_step
    return all(not sch.is_event(s) and sch.prior_active(s) for s in range(t, t + calls))


def bench_size(shapes, dtype, device, warmup, repeat, do_breakdown):
    params, grads = make_tensors(shapes, dtype, device)
    n = sum(p.numel() for p in params)
    row = dict(numel=n, tensors=len(shapes), cases={})
    # The check holds three copies of the weights and the reference's
    # temporaries: on large sets it runs on the leading tensors only.
    m, total = 0, 0
    while m < len(params) and (m == 0 or total + params[m].numel() <= CHECK_LIMIT):
        total += params[m].numel()
        m += 1
    row["check"] = check_correctness(params[:m], grads[:m], device, dtype)
    row["check"]["numel_checked"] = total
    for case in CASES:
        fn, notes = build_case(case, params, grads, device)
        if case in ("a", "a90") and not expected_nonevent(fn.opt, warmup + repeat):
            raise AssertionError("(a): the schedule would put an event among the timed steps")
        if case == "b" and not expected_alternating(fn.opt, warmup + repeat):
            raise AssertionError("(b): the timed steps must be events, the untimed ones not")
        row["cases"][case] = dict(time_fn(fn, device, warmup, repeat), **notes)
        if case == "b":
            row["passes_per_event"] = passes_per_event(fn)
        del fn
        gc.collect()
    if do_breakdown:
        row["breakdown"] = breakdown(params, grads, device, dtype, warmup, repeat)
    return row


def memory_size(shapes, dtype, device):
    """Peak extra memory of one steady-state call of each case."""
    params, grads = make_tensors(shapes, dtype, device)
    out = {}
    for case in CASES:
        fn, _ = build_case(case, params, grads, device)
        before = getattr(fn, "before", lambda: None)
        before()
        fn()  # state exists; the measured call allocates only its temporaries
        before()
        out[case] = peak_extra_bytes(fn, device)
        del fn
        gc.collect()
    return out


def breakdown(params, grads, device, dtype, warmup, repeat):
    """Where the time of (a), (b) and (d) goes, piece by piece (ms)."""
    T = lambda fn: time_fn(fn, device, warmup, repeat)["median_s"] * 1e3  # noqa: E731
    out = {}
    ps = with_grads(params, grads)
    opt = nonevent_mgpp(ps)
    st = [opt.state[p] for p in ps]
    m, v = [s["exp_avg"] for s in st], [s["exp_avg_sq"] for s in st]
    no_hist = torch.empty(0, dtype=torch.int64, device=device)
    hist = torch.zeros(ops.HIST_BINS, dtype=torch.int64, device=device)
    kw = dict(lr=HP["lr"], beta1=HP["betas"][0], beta2=HP["betas"][1], eps=HP["eps"],
              weight_decay=HP["weight_decay"], step=10, num_examples=PRIOR["num_train_examples"],
              lambda_mix=PRIOR["lambda_mix"], sigma0_sq=PRIOR["sigma0_sq"],
              sigma1_sq=PRIOR["sigma1_sq"])
    out["op mgpp_step_ prior on, no hist"] = T(lambda: ops.mgpp_step_(ps, grads, m, v, [], no_hist, apply_prior=True, **kw))
    out["op mgpp_step_ prior off, no hist"] = T(lambda: ops.mgpp_step_(ps, grads, m, v, [], no_hist, apply_prior=False, **kw))
    out["op mgpp_step_ prior on, with hist"] = T(lambda: ops.mgpp_step_(ps, grads, m, v, [], hist, apply_prior=True, **kw))
    out["MGPP._grads_finite"] = T(opt._grads_finite)
    pruned = [p.detach().clone() for p in ps]
    ops.apply_threshold_(pruned, _select_state(pruned, SPARSITY))
    out["op mgpp_step_ prior on, 90% pruned w"] = T(lambda: ops.mgpp_step_(pruned, grads, m, v, [], no_hist, apply_prior=True, **kw))
    del pruned
    out["torch._foreach_norm(grads, inf)"] = T(lambda: torch._foreach_norm(grads, float("inf")))
    if hasattr(ops, "all_finite"):
        out["op all_finite(grads)"] = T(lambda: bool(ops.all_finite(grads)))
    out["MGPP.step non-event (= (a))"] = T(opt.step)
    k = math.floor(SPARSITY * sum(p.numel() for p in ps))
    sel = ops.new_select_state(k, device)
    hist.zero_()
    ops.abs_histogram_(ps, sel, hist, 0)
    ops.select_bin_(hist, sel, 0)
    out["op abs_histogram_ level 0"] = T(lambda: ops.abs_histogram_(ps, sel, hist, 0))
    out["op abs_histogram_ level 1"] = T(lambda: ops.abs_histogram_(ps, sel, hist, 1))
    hist.zero_()
    ops.abs_histogram_(ps, ops.new_select_state(k, device), hist, 0)
    out["op select_bin_ level 0"] = T(lambda: ops.select_bin_(hist, ops.new_select_state(k, device), 0))
    hist.zero_()
    ops.abs_histogram_(ps, sel, hist, 1)
    ops.select_bin_(hist, sel, 1)
    out["op apply_threshold_ (no masks)"] = T(lambda: ops.apply_threshold_(ps, sel))
    del opt, ps, st, m, v
    gc.collect()
    # The event's level-0 histogram with the window predicted from the last
    # event, and with the full range (the window forced off before each
    # event), on GMP's event where no prior hides the histogram's cost.
    for label, full in (("predicted window", False), ("full histogram", True)):
        gmp = GMP(with_grads(params, grads), **HP, **EVENT_SCHEDULE, prune_interval=2,
                  initial_warmup_steps=0)
        gmp.step()

        def before(gmp=gmp, full=full):
            gmp.step()
            if full:
                gmp._hist_window = ops.FULL_WINDOW
        out[f"GMP event step, {label}"] = T(_with_before(gmp.step, before))
        del gmp
        gc.collect()
    # The authors' path, piece by piece.
    ps = with_grads(params, grads, clone_grads=True)
    ad = torch.optim.AdamW(ps, **HP)
    ad.step()
    out["(d) prior_gradient + grad.add_"] = T(lambda: [p.grad.add_(prior_gradient(
        p, PRIOR["num_train_examples"], PRIOR["lambda_mix"], PRIOR["sigma0_sq"],
        PRIOR["sigma1_sq"])) for p in ps])
    out["(d) torch AdamW default impl"] = T(ad.step)
    out["(d) |w| + torch.cat"] = T(lambda: torch.cat([p.abs().view(-1) for p in ps]))
    flat = torch.cat([p.abs().view(-1) for p in ps])
    out["(d) torch.kthvalue"] = T(lambda: torch.kthvalue(flat, k))
    tau = torch.kthvalue(flat, k).values
    out["(d) masks + masked_fill_"] = T(lambda: [p.masked_fill_(p.abs() <= tau, 0.0) for p in ps])
    del ad, ps, flat
    gc.collect()
    opt_f, _ = adamw(with_grads(params, grads))
    out["torch AdamW fused"] = T(opt_f.step)
    opt_fe = torch.optim.AdamW(with_grads(params, grads), **HP, foreach=True)
    out["torch AdamW foreach"] = T(opt_fe.step)
    del opt_f, opt_fe
    gc.collect()
    return out


def copy_bandwidth(device, nbytes, warmup, repeat):
    """Bytes read + written per second of a large tensor copy_."""
    x = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    t = time_fn(lambda: y.copy_(x), device, warmup, max(repeat, 5))["median_s"]
    return 2 * x.numel() * 4 / t


# -- reporting ------------------------------------------------------------------
def machine_info(device):
    info = dict(python=platform.python_version(), torch=torch.__version__,
                threads=torch.get_num_threads(), platform=platform.platform(),
                cpu_capability=torch.backends.cpu.get_cpu_capability())
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next((l.split(":", 1)[1].strip() for l in f
                                      if l.startswith("model name")), None)
        info["cpu_count"] = os.cpu_count()
    except OSError:
        pass
    try:
        info["loadavg_at_start"] = os.getloadavg()
    except OSError:
        pass
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here,
                                            capture_output=True, text=True).stdout.strip()
        info["git_dirty"] = bool(subprocess.run(["git", "status", "--porcelain"], cwd=here,
                                                capture_output=True, text=True).stdout.strip())
    except OSError:
        pass
    return info


def print_size(label, row, elt, copy_bw):
    n = row["numel"]
    min_bytes = 7 * n * elt  # read p, g, m, v; write p, m, v
    print(f"\n== {label}: {n:,} weights in {row['tensors']} tensors ==")
    print(f"{'case':34s} {'median ms':>10s} {'min ms':>9s} {'GB/s':>7s} {'% copy':>7s} "
          f"{'peak extra MiB':>15s}")
    for case in CASES:
        r = row["cases"][case]
        ms = r["median_s"] * 1e3
        if case in ("a", "a90", "b", "c", "d"):
            gbs = min_bytes / r["median_s"] / 1e9
            bw = f"{gbs:7.1f} {100 * gbs * 1e9 / copy_bw:6.0f}%"
        else:
            bw = f"{'':7s} {'':7s}"
        mem = row.get("memory", {}).get(case)
        mem = f"{mem / 2**20:15.1f}" if mem is not None else f"{'-':>15s}"
        name = LABELS[case] + (f" [{r['adamw_impl']}]" if "adamw_impl" in r else "")
        print(f"{name:34s} {ms:10.2f} {r['min_s'] * 1e3:9.2f} {bw} {mem}")
    c = row["cases"]
    ratios = dict(a_over_c=c["a"]["median_s"] / c["c"]["median_s"],
                  a90_over_c=c["a90"]["median_s"] / c["c"]["median_s"],
                  d_over_b=c["d"]["median_s"] / c["b"]["median_s"],
                  e2_over_e1=c["e2"]["median_s"] / c["e1"]["median_s"],
                  b_over_a=c["b"]["median_s"] / c["a"]["median_s"])
    row["ratios"] = ratios
    ok = lambda good: "ok" if good else "MISSED"  # noqa: E731
    print(f"(a)/(c) = {ratios['a_over_c']:.2f} (target <= 1.3: {ok(ratios['a_over_c'] <= 1.3)})   "
          f"(a')/(c) = {ratios['a90_over_c']:.2f}   "
          f"(d)/(b) = {ratios['d_over_b']:.1f} (target >= 20: {ok(ratios['d_over_b'] >= 20)})   "
          f"(e2)/(e1) = {ratios['e2_over_e1']:.1f}   (b)/(a) = {ratios['b_over_a']:.2f}")
    pp = row["passes_per_event"]
    print(f"passes over the weights per event step (b): {sum(pp.values()):.2f} "
          f"(fused step {pp['mgpp_step_']:.2f}, histograms {pp['abs_histogram_']:.2f}, "
          f"masking {pp['apply_threshold_']:.2f})")
    ck = row["check"]
    print(f"check ({ck['numel_checked']:,} weights): fused tau == reference tau bitwise at 2 event "
          f"steps (tau = {ck['step1']['tau']:.6g}); "
          f"(d) max |param diff| vs reference {ck['step1']['authors_max_param_diff']:.2g}; "
          f"global_threshold == kthvalue bitwise")
    if "breakdown" in row:
        print("breakdown (median ms):")
        for name, ms in row["breakdown"].items():
            print(f"  {name:40s} {ms:10.2f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--sizes", default=None,
                    help="comma-separated weight counts, e.g. 10M,50M (default: "
                         + "; ".join(f"{k}: {v}" for k, v in DEFAULT_SIZES.items()) + ")")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--shapes", choices=tuple(LAYER_SHAPES), default="bert")
    ap.add_argument("--repeat", type=int, default=None, help="timed calls per case "
                    "(default 5 on CPU, 20 on CUDA)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 2 / 5)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: time.process_time, the CPU seconds the process used; with "
                         "--threads 1 it is robust to other processes on a busy machine")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time the pieces of (a), (b) and (d) separately")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON")
    ap.add_argument("--regularisers", choices=("on", "off", "only"), default="on",
                    help="the ADMM / SR-STE cases too (on), not (off), or alone (only)")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        if device.type == "cuda":
            sys.exit("--clock cpu measures host CPU time; use wall time on CUDA")
        global CLOCK
        CLOCK = time.process_time
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    ops.require_extension()
    dtype = getattr(torch, args.dtype)
    repeat = args.repeat or (20 if device.type == "cuda" else 5)
    warmup = args.warmup if args.warmup is not None else (5 if device.type == "cuda" else 2)
    sizes = [parse_size(s) for s in (args.sizes or DEFAULT_SIZES[device.type]).split(",")]
    elt = torch.empty(0, dtype=dtype).element_size()
    torch.manual_seed(0)

    info = machine_info(device)
    print(f"mgpp-ext step benchmark: {args.device}"
          f"{' (' + info['device_name'] + ')' if 'device_name' in info else ''}, "
          f"{info.get('cpu_model')}, torch {info['torch']}, {info['threads']} threads, "
          f"{args.dtype}, {args.shapes} shapes, warm-up {warmup}, median of {repeat}, "
          f"{args.clock} clock")
    load = info.get("loadavg_at_start", (0.0,))[0]
    if device.type == "cpu" and load > 0.5 * (os.cpu_count() or 1):
        print(f"WARNING: load average {load:.1f} on {os.cpu_count()} CPUs: other processes "
              "compete for the cores and memory bandwidth; CPU timings will be noisy")
    # 1 GiB: beyond the last-level cache (this CPU reports 480 MiB of L3).
    copy_bw = copy_bandwidth(device, 1 << 30, warmup, repeat)
    print(f"copy_ bandwidth (bytes read + written / s): {copy_bw / 1e9:.1f} GB/s")

    rows = {}
    for size in sizes:
        shapes = make_shapes(args.shapes, size)
        print(f"timing {size:,} ...", file=sys.stderr, flush=True)
        if args.regularisers != "only":
            rows[size] = bench_size(shapes, dtype, device, warmup, repeat, args.breakdown)
        else:
            rows[size] = dict(numel=sum(a * b for a, b in shapes), tensors=len(shapes))
        gc.collect()
        if args.regularisers != "off":
            params, grads = make_tensors(shapes, dtype, device)
            rows[size]["regularisers"] = regulariser_cases.bench(
                params, grads, device, warmup, repeat, time_round_robin, adamw, CHECK_LIMIT)
            del params, grads
            gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    measure_memory = not args.no_memory and args.regularisers != "only"
    if measure_memory:
        if device.type == "cpu":
            exact_malloc_accounting()
        for size in sizes:
            print(f"memory {size:,} ...", file=sys.stderr, flush=True)
            rows[size]["memory"] = memory_size(make_shapes(args.shapes, size), dtype, device)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()

    for size in sizes:
        label = f"{args.shapes} {args.dtype} {args.device}, target {size:,}"
        if args.regularisers != "only":
            print_size(label, rows[size], elt, copy_bw)
        if "regularisers" in rows[size]:
            regulariser_cases.print_row(label, rows[size]["regularisers"], rows[size]["numel"])
    threads = info["threads"]
    if measure_memory:
        hist_note = (f"{(threads + 1) * 2 + 0.5:.1f} MiB ({threads} per-thread + 1 global "
                     "64K-bin int64 level-0 histograms, the same for the three predicted "
                     "bins' level-1 histograms, and a cumulative sum for the next event's "
                     "prediction)" if device.type == "cpu"
                     else "2.5 MiB (the level-0 and three level-1 histograms, a cumulative sum)")
        print(f"\npeak extra memory: CPU = growth of peak RSS (VmHWM) during one call, "
              f"CUDA = max_memory_allocated growth. Expected for (b): about {hist_note}; "
              "(d)/(e2): the |w| copies, the cat copy and kthvalue's own copy and indices.")
    if args.json:
        result = dict(machine=info, args=vars(args), copy_bandwidth_Bps=copy_bw,
                      bytes_per_weight_min=7 * elt, sizes={str(k): v for k, v in rows.items()})
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
