#!/usr/bin/env python3
"""Fine-tune and prune the real MiniLM on TREC-6 with several processes.

    torchrun --nproc_per_node 2 examples/distributed_finetune.py            # FSDP2
    torchrun --nproc_per_node 2 examples/distributed_finetune.py --ddp      # DDP

Runs on CPU with the gloo backend (``--backend nccl`` on GPUs). Under FSDP2
(``fully_shard``) every rank holds a shard of each weight; ``MGPP`` steps the
local shards and, at each pruning event, all-reduces two 65,536-bin
histograms (int32 below 2^31 prunable weights: 512 KiB in all) so that every
rank applies the same exact global threshold. Under DDP every rank holds the whole model and the gradients are
already averaged: MGPP needs no communication at all.
"""
from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mgpp_ext  # noqa: E402
from mgpp_ext import data  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ddp", action="store_true", help="DistributedDataParallel instead of FSDP2")
    p.add_argument("--backend", default="gloo")
    # The defaults are those of examples/finetune_prune.py (the main demo).
    p.add_argument("--epochs", type=float, default=6.0)
    p.add_argument("--batch-size", type=int, default=32, help="global batch size")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate")
    p.add_argument("--lr-warmup", type=float, default=0.06, help="fraction of steps of linear LR warm-up")
    p.add_argument("--prune-warmup", type=float, default=1.0, help="epochs before the first pruning event")
    p.add_argument("--final-finetune", type=float, default=1.5, help="epochs with the final mask fixed")
    p.add_argument("--prune-interval", type=int, default=10)
    p.add_argument("--max-train-examples", type=int, default=None)
    p.add_argument("--target-sparsity", type=float, default=0.9)
    p.add_argument("--sigma1-sq", type=float, default=1.0)
    p.add_argument("--max-length", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    dist.init_process_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    device = torch.device("cpu") if args.backend == "gloo" else torch.device("cuda", rank % torch.cuda.device_count())
    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} must be divisible by the world size {world}")

    examples, labels = data.load_trec("coarse")
    train_set, val_set, test_set = data.split(examples, seed=0)
    if args.max_train_examples:
        train_set = train_set[: args.max_train_examples]
    torch.manual_seed(args.seed)  # the same new classifier head on every rank
    model, tok = data.load_minilm_classifier(len(labels))
    # As in the demo: the 30,522-row word embedding stays frozen (it is not
    # pruned, and training it would dominate the step on CPU).
    model.get_input_embeddings().weight.requires_grad_(False)
    model.to(device)
    train_ds = data.encode(tok, train_set, args.max_length)
    test_ds = data.encode(tok, test_set, args.max_length)

    if args.ddp:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
        groups = mgpp_ext.prunable_param_groups(model)
    else:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (world,))
        for layer in model.bert.encoder.layer:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        wrapped = model
        groups = mgpp_ext.prunable_param_groups(model)

    per_rank = args.batch_size // world
    steps_per_epoch = len(train_ds) // args.batch_size
    total = max(4, int(args.epochs * steps_per_epoch))
    opt = mgpp_ext.MGPP(groups, lr=args.lr, total_steps=total, num_train_examples=len(train_ds),
                        target_sparsity=args.target_sparsity,
                        initial_warmup_steps=int(args.prune_warmup * steps_per_epoch),
                        final_finetune_steps=int(args.final_finetune * steps_per_epoch),
                        prune_interval=args.prune_interval, sigma1_sq=args.sigma1_sq)
    warm = max(1, int(round(args.lr_warmup * total)))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: (t + 1) / warm if t < warm else max(0.0, (total - t) / max(1, total - warm)))

    g = torch.Generator().manual_seed(args.seed)  # the same global order on every rank
    order = torch.cat([torch.randperm(len(train_ds), generator=g) for _ in range(math.ceil(args.epochs) + 1)])
    start = time.time()
    bar = None
    if rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"{'DDP' if args.ddp else 'FSDP2'} x{world}")
    wrapped.train()
    for step in range(total):
        idx = order[step * args.batch_size + rank * per_rank: step * args.batch_size + (rank + 1) * per_rank]
        ids, mask, y = (t[idx].to(device) for t in train_ds.tensors)
        ids, mask = data.trim_padding(ids, mask)
        loss = torch.nn.functional.cross_entropy(wrapped(input_ids=ids, attention_mask=mask).logits, y)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        if bar is not None:
            bar.set_postfix(loss=f"{loss.item():.3f}", tau=opt.last_threshold)
            bar.update(1)
    if bar is not None:
        bar.close()

    sparsity = opt.sparsity()["overall"]  # counts zeros across shards
    wrapped.eval()
    correct = torch.zeros(1, dtype=torch.int64, device=device)
    with torch.no_grad():
        ids, mask, y = (t.to(device) for t in test_ds.tensors)
        for i in range(0, len(y), 128):  # every rank runs the same batches (FSDP2 needs all ranks)
            out = wrapped(input_ids=ids[i:i + 128], attention_mask=mask[i:i + 128]).logits
            correct += (out.argmax(-1) == y[i:i + 128]).sum()
    if rank == 0:
        print(f"ranks: {world} ({'DDP' if args.ddp else 'FSDP2'}, {args.backend}), steps: {total}, "
              f"train/test examples: {len(train_ds)}/{len(test_ds)}")
        print(f"pruning events: {opt.schedule_state()['events']}, "
              f"histogram all-reduce per event: {2 * mgpp_ext.ops.HIST_BINS * 4} bytes"
              + (" (none needed under DDP)" if args.ddp else ""))
        print(f"final sparsity: {sparsity:.4f}")
        print(f"test accuracy (pruned): {correct.item() / len(y):.4f}")
        print(f"wall time: {time.time() - start:.1f} s")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # FSDP2 holds the process group in reference cycles: free it now, while the
    # interpreter is whole. Left to interpreter exit, a gloo thread releasing
    # the last collective's tensors can abort the process.
    gc.collect()
