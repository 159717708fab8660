#!/usr/bin/env python
"""Time N:M pruning: the fused kernels against the eager PyTorch formulation.

Cases, on fp32 weights shaped like transformer linear weights, measured in
one run for each pattern:
  (1) eager mask + apply: s = |w| in groups of m, topk(n) indices, a bool
      mask scattered from them, w.mul_(mask)      (what people write)
  (2) mgpp_ext.nm.nm_prune_ (mask + apply, with the mask written)
  (3) the mask alone: mgpp_ext.nm.nm_mask(|w|) vs the eager mask
Before timing, the kernels' masks are checked bitwise against
mgpp_ext.reference_nm on a slice of the weights, and against the eager mask
everywhere outside groups with a tie at the cut (topk does not say which of
tied entries it returns).

    PYTHONPATH=. python benchmarks/bench_nm.py                   # 10M and 50M weights
    PYTHONPATH=. python benchmarks/bench_nm.py --quick            # tiny sizes, a smoke run
    PYTHONPATH=. python benchmarks/bench_nm.py --json out.json
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time

import torch

from mgpp_ext import nm, ops
from mgpp_ext.reference_nm import nm_mask_reference

PATTERNS = ((2, 4), (4, 8), (1, 4))
# Weight counts -> number of columns of the [rows, cols] weight.
DEFAULT_SIZES = {"10M": 4096, "50M": 1024}
QUICK_SIZES = {"64K": 256, "256K": 1024}
REFERENCE_LIMIT = 1 << 20  # weights the bitwise reference check runs on


def parse_size(text):
    text = text.strip().upper()
    mult = {"K": 10**3, "M": 10**6, "B": 10**9}.get(text[-1:], 1)
    return int(float(text[:-1] if text[-1:] in "KMB" else text) * mult)


def nm_mask_eager(w, n, m):
    """The usual eager formulation of the n:m mask of |w| along the last dim."""
    s = w.abs().reshape(-1, m)
    idx = s.topk(n, dim=1).indices
    return torch.zeros_like(s, dtype=torch.bool).scatter_(1, idx, True).reshape(w.shape)


def nm_prune_eager(w, n, m):
    mask = nm_mask_eager(w, n, m)
    w.mul_(mask)
    return mask


def time_fn(fn, warmup, repeat, before=None):
    """Median / min seconds of single calls after warm-up; ``before`` runs
    untimed ahead of each call."""
    for _ in range(warmup):
        if before:
            before()
        fn()
    samples = []
    for _ in range(repeat):
        if before:
            before()
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return dict(median_s=statistics.median(samples), min_s=min(samples), samples=len(samples))


def tie_at_cut(w, n, m):
    """Per group: whether the n-th and (n+1)-th largest |w| are equal, where
    topk may pick either."""
    s = w.abs().reshape(-1, m).sort(dim=1, descending=True).values
    return (s[:, n - 1] == s[:, n]) | (torch.isnan(s[:, n - 1]) & torch.isnan(s[:, n]))


def check(w, n, m):
    """The kernels against the reference and the eager formulation."""
    ours = nm.nm_mask(w.abs(), n, m)
    rows = max(1, min(w.shape[0], REFERENCE_LIMIT // w.shape[1]))
    if not torch.equal(ours[:rows], nm_mask_reference(w[:rows].abs(), n, m)):
        raise AssertionError(f"{n}:{m}: nm_mask differs from the reference")
    t, mask = w.clone(), torch.empty(w.shape, dtype=torch.bool)
    nm.nm_prune_([t], n, m, -1, masks=[mask])
    if not torch.equal(mask, ours) or not torch.equal(t, torch.where(ours, w, 0.0)):
        raise AssertionError(f"{n}:{m}: nm_prune_ differs from nm_mask")
    eager = nm_mask_eager(w, n, m)
    differ = (eager != ours).reshape(-1, m).any(dim=1)
    ties = tie_at_cut(w, n, m)
    if bool((differ & ~ties).any()):
        raise AssertionError(f"{n}:{m}: nm_mask and the eager mask differ outside tied groups")
    return dict(reference_rows_checked=rows, groups_differing_at_ties=int(differ.sum()),
                groups_tied_at_cut=int(ties.sum()))


def bench(numel, cols, warmup, repeat):
    rows = max(1, round(numel / cols))
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(rows, cols, generator=gen) * 0.02
    out = dict(shape=[rows, cols], numel=rows * cols, patterns={})
    w = torch.empty_like(w0)
    mask = torch.empty(w0.shape, dtype=torch.bool)
    reset = lambda: w.copy_(w0)  # noqa: E731  (pruning is in place: fresh weights each call)
    for n, m in PATTERNS:
        key = f"{n}:{m}"
        print(f"  {key} ...", file=sys.stderr, flush=True)
        row = dict(check=check(w0, n, m))
        row["eager_prune"] = time_fn(lambda: nm_prune_eager(w, n, m), warmup, repeat, reset)
        row["nm_prune"] = time_fn(lambda: nm.nm_prune_([w], n, m, -1, masks=[mask]), warmup,
                                  repeat, reset)
        row["nm_prune_no_mask"] = time_fn(lambda: nm.nm_prune_([w], n, m, -1), warmup, repeat,
                                          reset)
        row["eager_mask"] = time_fn(lambda: nm_mask_eager(w0, n, m), warmup, repeat)
        row["nm_mask"] = time_fn(lambda: nm.nm_mask(w0.abs(), n, m), warmup, repeat)
        row["nm_mask_scores_given"] = time_fn(lambda: nm.nm_mask(w0, n, m), warmup, repeat)
        row["ratio_prune"] = row["eager_prune"]["median_s"] / row["nm_prune"]["median_s"]
        row["ratio_mask"] = row["eager_mask"]["median_s"] / row["nm_mask"]["median_s"]
        out["patterns"][key] = row
        gc.collect()
    return out


def machine_info():
    info = dict(python=platform.python_version(), torch=torch.__version__,
                threads=torch.get_num_threads(), platform=platform.platform(),
                cpu_capability=torch.backends.cpu.get_cpu_capability(),
                cpu_count=os.cpu_count(), library=ops.LIBRARY or "mgpp_ext._C")
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next((line.split(":", 1)[1].strip() for line in f
                                      if line.startswith("model name")), None)
    except OSError:
        pass
    try:
        info["loadavg_at_start"] = os.getloadavg()
    except OSError:
        pass
    return info


def print_table(label, res):
    print(f"\n== {label}: fp32 [{res['shape'][0]} x {res['shape'][1]}] = {res['numel']:,} weights ==")
    print(f"{'pattern':8s} {'eager mask+apply':>17s} {'nm_prune_':>10s} {'ratio':>6s}   "
          f"{'eager mask':>11s} {'nm_mask(|w|)':>13s} {'ratio':>6s}   "
          f"{'nm_prune_ no mask':>18s} {'nm_mask(w)':>11s}")
    for key, r in res["patterns"].items():
        ms = lambda name: r[name]["median_s"] * 1e3  # noqa: E731
        print(f"{key:8s} {ms('eager_prune'):14.2f} ms {ms('nm_prune'):7.2f} ms "
              f"{r['ratio_prune']:5.1f}x   {ms('eager_mask'):8.2f} ms {ms('nm_mask'):10.2f} ms "
              f"{r['ratio_mask']:5.1f}x   {ms('nm_prune_no_mask'):15.2f} ms "
              f"{ms('nm_mask_scores_given'):8.2f} ms")
    for key, r in res["patterns"].items():
        c = r["check"]
        print(f"check {key}: bitwise equal to the reference on {c['reference_rows_checked']} rows; "
              f"equal to the eager mask except in {c['groups_differing_at_ties']} of "
              f"{c['groups_tied_at_cut']} groups with a tie at the cut")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default=None,
                    help="comma-separated SIZE:COLS, e.g. 10M:4096,50M:1024 (the default)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (smoke run)")
    ap.add_argument("--repeat", type=int, default=None, help="timed calls per case (default 7)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 2)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (default: all cores)")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = ap.parse_args(argv)

    ops.require_extension()
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    if args.sizes:
        sizes = {s.split(":")[0]: int(s.split(":")[1]) for s in args.sizes.split(",")}
    else:
        sizes = QUICK_SIZES if args.quick else DEFAULT_SIZES
    repeat = args.repeat or (3 if args.quick else 7)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)

    info = machine_info()
    print(f"mgpp-ext N:M benchmark: cpu, {info.get('cpu_model')}, torch {info['torch']}, "
          f"{info['threads']} threads, capability {info['cpu_capability']}, "
          f"warm-up {warmup}, median of {repeat}, kernels from {info['library']}")
    load = info.get("loadavg_at_start", (0.0,))[0]
    if load > 0.5 * (os.cpu_count() or 1):
        print(f"WARNING: load average {load:.1f} on {os.cpu_count()} CPUs: other processes "
              "compete for the cores and memory bandwidth; timings will be noisy")
    results = {}
    for label, cols in sizes.items():
        print(f"timing {label} ...", file=sys.stderr, flush=True)
        results[label] = bench(parse_size(label), cols, warmup, repeat)
    for label, res in results.items():
        print_table(label, res)
    print("\nratio = eager median / fused median. eager mask+apply: abs, reshape, topk, "
          "scatter_ into a zero bool mask, mul_; nm_prune_ writes the weights and the mask in "
          "one pass. nm_mask(|w|) includes the |w| it is given; nm_mask(w) ranks w itself.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(machine=info, args=vars(args), sizes=results), f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
