#!/usr/bin/env python
"""The steps of the score-based methods against torch.optim.AdamW(fused=True),
on the same tensors, dtype and machine, in one run.

  (m)  Movement.step() between events: AdamW with S -= score_lr g w fused in
  (mn) the same with on_nonfinite="propagate" (no per-step inf/NaN read,
       as torch AdamW; the check runs at pruning events only)
  (g)  GMP.step() between events (the plain fused AdamW step of the engine)
  (gn) the same with on_nonfinite="propagate"
  (p)  PLATON.step() between events (its score accumulated in eager passes)
  (mp) MGPPPlaton.step() between events (the prior fused, PLATON's score eager)
  (c)  torch AdamW (fused)
  (k)  movement_step_ alone (the fused op, no engine around it)
  (f)  all_finite alone (the engine's inf/NaN read pass over the gradients)

Ratios are each case's median over (c)'s median from the same run. Before
timing, one Movement step is checked bitwise against ReferenceMGPP
(method="movement") from the same state.

    PYTHONPATH=. python benchmarks/bench_scores.py                # 10M, 50M fp32
    PYTHONPATH=. python benchmarks/bench_scores.py --sizes 10M --dtype bf16
    PYTHONPATH=. python benchmarks/bench_scores.py --device cuda --sizes 85M,500M
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_step as bs  # noqa: E402  (shapes, tensors, timing)

from mgpp_ext import GMP, PLATON, MGPPPlaton, Movement  # noqa: E402
from mgpp_ext.reference import ReferenceMGPP  # noqa: E402

HP = dict(lr=5e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0)
SCHED = dict(total_steps=10**6, prune_interval=10**6, initial_warmup_steps=0, target_sparsity=0.9)
CASES = ("m", "mn", "g", "gn", "p", "mp", "c", "k", "f")
LABELS = {"m": "(m) Movement step", "mn": "(mn) Movement, propagate", "g": "(g) GMP step",
          "gn": "(gn) GMP, propagate", "p": "(p) PLATON step",
          "mp": "(mp) MGPP+PLATON step", "c": "(c) torch AdamW fused",
          "k": "(k) movement_step_ op alone", "f": "(f) all_finite alone"}


class _Call:
    """A bare op call with the ``step`` interface time_fn needs."""

    def __init__(self, fn):
        self.step = fn


def build(case, params):
    if case == "k":
        from mgpp_ext import score_ops
        m = [torch.zeros_like(p) for p in params]
        v = [torch.zeros_like(p) for p in params]
        s = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        g = [p.grad for p in params]
        return _Call(lambda: score_ops.movement_step_(params, g, m, v, s, lr=HP["lr"], beta1=0.9, beta2=0.98,
                                                      eps=1e-6, weight_decay=0.0, step=2, score_lr=1.0))
    if case == "f":
        from mgpp_ext import ops
        g = [p.grad for p in params]
        return _Call(lambda: ops.all_finite(g))
    if case == "c":
        opt, _ = bs.adamw(params)
        return opt
    if case in ("m", "mn"):
        opt = Movement(params, **HP, **SCHED, score_lr=1.0,
                       on_nonfinite="propagate" if case == "mn" else "raise")
    elif case in ("g", "gn"):
        opt = GMP(params, **HP, **SCHED, on_nonfinite="propagate" if case == "gn" else "raise")
    elif case == "p":
        opt = PLATON(params, **HP, **SCHED)
    else:
        opt = MGPPPlaton(params, **HP, **SCHED, num_train_examples=10_000)
    opt.step()  # t = 0 = t_s is an event (k = 0): move past it, state allocated
    return opt


def check_movement(params, grads):
    """One Movement step equals the reference's from the same state, bitwise."""
    ps = bs.with_grads(params, grads, clone_grads=True)
    opt = build("m", ps)
    ref_ps = bs.with_grads(ps, [p.grad for p in ps], clone_grads=True)
    ref = ReferenceMGPP(ref_ps, [True] * len(ps), **HP, **SCHED, num_train_examples=1, method="movement")
    ref.t, ref.steps = 1, [1] * len(ps)
    for i, p in enumerate(ps):
        ref.exp_avg[i].copy_(opt.state[p]["exp_avg"])
        ref.exp_avg_sq[i].copy_(opt.state[p]["exp_avg_sq"])
        ref.movement[i].copy_(opt.state[p]["movement_score"])
    opt.step()
    ref.step()
    for i, (a, b) in enumerate(zip(ps, ref_ps)):
        s, r = opt.state[a]["movement_score"], ref.movement[i]
        if a.device.type == "cpu":  # the CPU kernel rounds as the reference, bit for bit
            assert torch.equal(a, b), f"param {i}"
            assert torch.equal(s, r), f"score {i}"
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(s, r, rtol=1e-5, atol=1e-9)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10M,50M")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--shapes", default="bert", choices=sorted(bs.LAYER_SHAPES))
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    device = torch.device(args.device)
    machine = dict(cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
                   torch=torch.__version__)
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
    out = dict(machine=machine, device=str(device), dtype=args.dtype, shapes=args.shapes, rows={})
    for size in args.sizes.split(","):
        shapes = bs.make_shapes(args.shapes, bs.parse_size(size))
        params, grads = bs.make_tensors(shapes, dtype, device)
        numel = sum(p.numel() for p in params)
        check_movement(params, grads)
        row = dict(numel=numel)
        for case in CASES:
            ps = bs.with_grads(params, grads)
            opt = build(case, ps)
            row[case] = bs.time_fn(opt.step, device, args.warmup, args.repeat)
            del opt, ps
        base = row["c"]["median_s"]
        for case in CASES:
            row[case]["vs_adamw"] = row[case]["median_s"] / base
        out["rows"][size] = row
        print(f"{size} ({numel:,} weights, {args.dtype}, {torch.get_num_threads()} threads):")
        for case in CASES:
            r = row[case]
            print(f"  {LABELS[case]:28s} {r['median_s'] * 1e3:9.2f} ms  {r['vs_adamw']:5.2f}x AdamW")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
