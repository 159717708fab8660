#!/usr/bin/env python3
"""Why Movement collapses on the TREC-6 grid: its first pruning event.

The grid's Movement points (``run_grid.py --only scores``) end at chance
level, with one global threshold and with a per-tensor one. This study
isolates the first event. It fine-tunes MiniLM densely for the grid's
prune warm-up (1 epoch, the same seed, batches and learning rate; plain
``torch.optim.AdamW``) while it accumulates movement's score
S = -sum_t g_t * w_t in plain PyTorch, then prunes a fraction of the
encoder's weights once, without further training, by four scores: S
(lowest dropped, as Movement does; the schedule's first event drops 2.8%), -S (a control: the highest dropped),
|w|, and a random score. It reports the VALIDATION
accuracy of each (the test split stays unseen) and the correlation of S
with |w|, and writes ``movement_first_event.json``.

    python benchmarks/quality/movement_first_event.py            # about 3 min on 2 cores
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run_grid as grid  # noqa: E402  (the grid's data, model, batching and schedule)

ft = grid.ft


def prune_once(weights, saved, scores, fraction):
    """Every weight whose score is among the lowest ``fraction`` set to 0
    (one global k-th over all tensors), the others restored to ``saved``."""
    flat = torch.cat([s.flatten() for s in scores])
    k = int(fraction * flat.numel())
    tau = flat.kthvalue(k).values if k > 0 else flat.min() - 1
    with torch.no_grad():
        for w, s, o in zip(weights, scores, saved):
            w.copy_(torch.where(s > tau, o, torch.zeros_like(o)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fractions", default="0.028,0.083,0.2,0.5",
                   help="fractions to drop; 0.028 and 0.083 are the grid's first two events at 90%%")
    p.add_argument("--out", default=str(HERE / "movement_first_event.json"))
    args = p.parse_args(argv)
    import mgpp_ext
    from mgpp_ext import data

    cfg = grid.train_config(dict(task="trec"))
    examples, labels = data.load_trec("coarse")
    train_ex, val_ex, _ = data.split(examples, seed=cfg["split_seed"], fractions=(0.8, 0.1, 0.1))
    torch.manual_seed(args.seed)
    model, tok = data.load_minilm_classifier(len(labels))
    model.get_input_embeddings().weight.requires_grad_(False)
    train_ds, val_ds = (data.encode(tok, ex, cfg["max_length"]) for ex in (train_ex, val_ex))
    weights = mgpp_ext.prunable_param_groups(model)[0]["params"]
    steps_per_epoch = math.ceil(len(train_ex) / cfg["batch_size"])
    warmup = int(round(cfg["prune_warmup"] * steps_per_epoch))
    total = int(round(cfg["epochs"] * steps_per_epoch))
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=cfg["lr"],
                            betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0)
    sched = ft.linear_schedule(opt, int(round(cfg["lr_warmup"] * total)), total)
    score = [torch.zeros_like(w) for w in weights]
    ids, mask, labels_t = train_ds.tensors
    gen = torch.Generator().manual_seed(args.seed + 1)  # the grid's batch order
    model.train()
    step = 0
    for batch in ft.epoch_batches(mask.sum(1), cfg["batch_size"], gen, bucket=True):
        if step == warmup:
            break
        b_ids, b_mask = data.trim_padding(ids[batch], mask[batch])
        model(input_ids=b_ids, attention_mask=b_mask, labels=labels_t[batch]).loss.backward()
        for s, w in zip(score, weights):
            s.sub_(w.grad * w.detach())
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1

    saved = [w.detach().clone() for w in weights]
    magnitude = [w.abs() for w in saved]
    g = torch.Generator().manual_seed(args.seed)
    random = [torch.rand(w.shape, generator=g) for w in saved]
    reversed_score = [-s for s in score]  # a control: the highest S dropped instead
    flat_s = torch.cat([s.flatten() for s in score])
    flat_w = torch.cat([m.flatten() for m in magnitude])
    out = dict(steps=step, dense_val_accuracy=ft.accuracy(model, val_ds, data, "cpu"),
               corr_score_magnitude=float(torch.corrcoef(torch.stack([flat_s, flat_w]))[0, 1]),
               score_zero_fraction=float((flat_s == 0).float().mean()), pruned={})
    print(f"dense after {step} steps: val {out['dense_val_accuracy']:.4f}; "
          f"corr(S, |w|) = {out['corr_score_magnitude']:.4f}")
    for frac in (float(x) for x in args.fractions.split(",")):
        row = {}
        for name, sc in (("movement", score), ("movement_reversed", reversed_score), ("magnitude", magnitude),
                         ("random", random)):
            prune_once(weights, saved, sc, frac)
            row[name] = ft.accuracy(model, val_ds, data, "cpu")
        out["pruned"][str(frac)] = row
        print(f"{frac:g} pruned: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()))
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
