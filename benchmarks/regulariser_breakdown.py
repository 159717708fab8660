"""The ADMM and SR-STE ops alone (no optimizer, no inf/NaN check) against
torch AdamW(fused=True) and the check's all_finite pass, on bench_step.py's
10M BERT-shaped fp32 tensors: where the optimizer-level ratios of
regulariser_cases.py go.

    PYTHONPATH=. python benchmarks/regulariser_breakdown.py
"""
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_step as bs  # noqa: E402
from mgpp_ext import nm_prune_, ops  # noqa: E402
from mgpp_ext import regulariser_ops as rops  # noqa: E402

print(f"{torch.get_num_threads()} threads, times in ms (median of 7)")
params, grads = bs.make_tensors(bs.make_shapes("bert", 10_000_000), torch.float32, torch.device("cpu"))
m = [torch.zeros_like(p) for p in params]; v = [torch.zeros_like(p) for p in params]
a = [torch.zeros_like(p) for p in params]; k = [rops.new_dual_mask(p).fill_(255) for p in params]
dense = [p.clone() for p in params]; keep = [torch.ones_like(p, dtype=torch.bool) for p in params]
hp = dict(lr=1e-3, beta1=0.9, beta2=0.98, eps=1e-6, weight_decay=0.0, step=1)
def t(f, r=7):
    f(); f()
    s = []
    for _ in range(r):
        t0 = time.perf_counter(); f(); s.append(time.perf_counter() - t0)
    return statistics.median(s) * 1e3
ps = [p.clone() for p in params]
for p, g in zip(ps, grads): p.grad = g
opt = torch.optim.AdamW(ps, lr=1e-3, fused=True)
print("adamw fused", t(opt.step))
print("mgpp_step_ no prior", t(lambda: ops.mgpp_step_(params, grads, m, v, [], torch.empty(0, dtype=torch.int64), lr=1e-3, beta1=0.9, beta2=0.98, eps=1e-6, weight_decay=0.0, step=1, apply_prior=False, num_examples=1., lambda_mix=.1, sigma0_sq=1e-10, sigma1_sq=.05)))
print("all_finite", t(lambda: ops.all_finite(grads)))
print("admm_step_", t(lambda: rops.admm_step_(params, grads, m, v, a, k, rho=1e-3, **hp)))
print("srste fixed", t(lambda: rops.srste_step_(params, grads, dense, m, v, keep, lambda_w=2e-4, n=2, m=4, dims=[-1]*len(params), update_mask=False, **hp)))
print("srste update", t(lambda: rops.srste_step_(params, grads, dense, m, v, keep, lambda_w=2e-4, n=2, m=4, dims=[-1]*len(params), update_mask=True, **hp)))
print("admm_project_", t(lambda: rops.admm_project_(params, a, k, 2, 4, [-1]*len(params))))
print("nm_prune_ (2:4, for scale)", t(lambda: nm_prune_(dense, 2, 4, -1)))
