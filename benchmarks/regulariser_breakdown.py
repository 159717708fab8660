"""The ADMM and SR-STE ops alone (no optimizer, no inf/NaN check) against
torch AdamW(fused=True) and the check's all_finite pass: where the
optimizer-level ratios of regulariser_cases.py go.

    PYTHONPATH=. python benchmarks/regulariser_breakdown.py
    PYTHONPATH=. python benchmarks/regulariser_breakdown.py --size 768000 --threads 1
    PYTHONPATH=. python benchmarks/regulariser_breakdown.py --pattern 4:8 --dim 0

The default is bench_step.py's 10M BERT-shaped fp32 tensors on every
thread (memory-bound). ``--size 768000 --threads 1`` is one 1000 x 768
tensor whose state fits in a Zen 3 L3: the ops' compute, without DRAM.
The cases run round-robin (one call of each per round) and each ratio is
the median over rounds of case / AdamW within the round, so a slow spell
of a shared host falls on both sides of every ratio. ``--pattern`` and
``--dim`` set the SR-STE ops' and the projection's n:m groups (default 2:4
along dim -1; fp32 groups of 4 or 8 along dim -1 take SR-STE's register
path, dim 0 (a GPT-2 Conv1D weight) or other m its general path).
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_step as bs  # noqa: E402
from mgpp_ext import nm_prune_, ops  # noqa: E402
from mgpp_ext import regulariser_ops as rops  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=bs.parse_size, default=None,
                    help="weights in one 768-wide tensor (default: 10M in BERT shapes)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--pattern", default="2:4", help="n:m of the SR-STE and projection cases")
    ap.add_argument("--dim", type=int, default=-1, help="the dim the n:m groups run along")
    args = ap.parse_args(argv)
    try:
        pn, pm = (int(x) for x in args.pattern.split(":"))
    except ValueError:
        raise SystemExit(f"--pattern must be 'n:m', got {args.pattern!r}") from None
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.size is None:
        params, grads = bs.make_tensors(bs.make_shapes("bert", 10_000_000), torch.float32,
                                        torch.device("cpu"))
        what = "10M BERT shapes"
    else:
        if args.size % 768 != 0:
            raise SystemExit(f"--size must be a multiple of 768, got {args.size}")
        params, grads = bs.make_tensors([(args.size // 768, 768)], torch.float32, torch.device("cpu"))
        what = f"one {args.size // 768} x 768 tensor"
    numel = sum(p.numel() for p in params)
    # Calls per timed sample: at least ~5M weights' worth, so a small
    # tensor's sample is not one call's jitter.
    reps = max(1, 5_000_000 // numel)
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    a = [torch.zeros_like(p) for p in params]
    k = [rops.new_dual_mask(p).fill_(255) for p in params]
    dense = [p.clone() for p in params]
    keep = [torch.ones_like(p, dtype=torch.bool) for p in params]
    dims = [args.dim] * len(params)
    hp = dict(lr=1e-3, beta1=0.9, beta2=0.98, eps=1e-6, weight_decay=0.0, step=1)
    ps = [p.clone() for p in params]
    for p, g in zip(ps, grads):
        p.grad = g
    opt = torch.optim.AdamW(ps, lr=1e-3, fused=True)
    cases = {
        "adamw fused": opt.step,
        "mgpp_step_ no prior": lambda: ops.mgpp_step_(
            params, grads, m, v, [], torch.empty(0, dtype=torch.int64), apply_prior=False,
            num_examples=1.0, lambda_mix=0.1, sigma0_sq=1e-10, sigma1_sq=0.05, **hp),
        "all_finite": lambda: ops.all_finite(grads),
        "admm_step_": lambda: rops.admm_step_(params, grads, m, v, a, k, rho=1e-3, **hp),
        "srste fixed": lambda: rops.srste_step_(params, grads, dense, m, v, keep, lambda_w=2e-4,
                                                n=pn, m=pm, dims=dims, update_mask=False, **hp),
        "srste update": lambda: rops.srste_step_(params, grads, dense, m, v, keep, lambda_w=2e-4,
                                                 n=pn, m=pm, dims=dims, update_mask=True, **hp),
        "admm_project_": lambda: rops.admm_project_(params, a, k, pn, pm, dims),
        f"nm_prune_ ({pn}:{pm}, for scale)": lambda: nm_prune_(dense, pn, pm, args.dim),
    }
    samples = {name: [] for name in cases}
    for f in cases.values():
        f()
    for _ in range(args.rounds):
        for name, f in cases.items():
            t0 = time.perf_counter()
            for _ in range(reps):
                f()
            samples[name].append((time.perf_counter() - t0) / reps)
    base = samples["adamw fused"]
    print(f"{what}, {numel:,} fp32 weights, {pn}:{pm} along dim {args.dim}, {torch.get_num_threads()} threads, "
          f"{args.rounds} rounds of {reps} call(s) per case")
    print(f"{'case':28s} {'median ms':>10s} {'/ AdamW':>8s}")
    for name, s in samples.items():
        ratio = statistics.median(x / b for x, b in zip(s, base))
        print(f"{name:28s} {statistics.median(s) * 1e3:10.3f} {ratio:8.3f}")


if __name__ == "__main__":
    main()
