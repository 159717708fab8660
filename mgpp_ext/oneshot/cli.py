"""``python -m mgpp_ext oneshot``: prune a causal LM in one shot from
calibration text, report perplexity before and after, and save it.

    python -m mgpp_ext oneshot --model smollm2 --method wanda --sparsity 0.5 --out pruned/
    python -m mgpp_ext oneshot --model DIR --method sparsegpt --sparsity 0.5 --pattern 2:4 --out DIR

``--model`` is a ``save_pretrained`` directory (with its tokenizer), or
``smollm2`` for the shipped SmolLM2-135M (dequantized and cached on first
use). Calibration: ``--samples`` windows of ``--seq-len`` tokens of the
Amazon and movie review snippets; evaluation: the first ``--eval-tokens``
tokens of the NYT editorials' test split (``mgpp_ext.oneshot.text``). The
output directory gets the pruned model and tokenizer (``save_pretrained``,
loadable by plain transformers), ``sparse.safetensors`` (the compressed
layout of ``mgpp_ext.export.save_sparse``) and ``report.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import time


def _int_at_least(lo):
    """An argparse type: an int >= lo, refused by argparse with the flag's name."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {value}")
        return value
    parse.__name__ = f"int >= {lo}"
    return parse


def add_parser(sub):
    p = sub.add_parser("oneshot", help="one-shot pruning of a causal LM (magnitude, Wanda, SparseGPT, SDS)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="save_pretrained directory, or 'smollm2'")
    p.add_argument("--method", required=True, choices=("magnitude", "wanda", "sparsegpt"))
    p.add_argument("--sparsity", required=True, type=float, help="fraction pruned, in [0, 1)")
    p.add_argument("--pattern", default=None, help="'n:m' (e.g. 2:4); sparsity must be 1 - n/m")
    p.add_argument("--sds", action="store_true", help="sparse-dense-sparse around the method")
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--samples", type=_int_at_least(1), default=64, help="calibration windows (default 64)")
    p.add_argument("--seq-len", type=_int_at_least(2), default=256,
                   help="calibration window length (default 256)")
    p.add_argument("--eval-tokens", type=_int_at_least(0), default=8192,
                   help="NYT test tokens for perplexity, 0 to skip (default 8192)")
    p.add_argument("--eval-seq-len", type=_int_at_least(2), default=512, help="perplexity window (default 512)")
    p.add_argument("--batch-size", type=_int_at_least(1), default=8)
    p.add_argument("--seed", type=int, default=0, help="calibration windows' seed")
    p.add_argument("--no-progress", action="store_true")
    return p


def _load(model_arg):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model_arg == "smollm2":
        from .smollm2 import load_smollm2

        return load_smollm2()
    if not os.path.isdir(model_arg):
        raise SystemExit(f"--model: no such directory: {model_arg}")
    import torch

    model = AutoModelForCausalLM.from_pretrained(model_arg, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(model_arg)


def _summary(report, method):
    layers = sorted({r["layer"] for r in report})
    numel = sum(r["shape"][0] * r["shape"][1] for r in report)
    zeros = sum(r["sparsity"] * r["shape"][0] * r["shape"][1] for r in report)
    lines = [f"{'layer':>5s} {'sublayers':>9s} {'weights':>10s} {'sparsity':>8s} {'seconds':>8s}"]
    for li in layers:
        rows = [r for r in report if r["layer"] == li]
        n = sum(r["shape"][0] * r["shape"][1] for r in rows)
        s = sum(r["sparsity"] * r["shape"][0] * r["shape"][1] for r in rows) / n
        lines.append(f"{li:5d} {len(rows):9d} {n:10,d} {s:8.4f} {sum(r['seconds'] for r in rows):8.2f}")
    lines.append(f"{'all':>5s} {len(report):9d} {numel:10,d} {zeros / numel:8.4f} "
                 f"{sum(r['seconds'] for r in report):8.2f}   ({method})")
    return "\n".join(lines)


def run(args):
    from . import perplexity, prune, sds
    from .text import calibration_ids, evaluation_ids
    from ..export import save_sparse
    from .sequential import check_model_fits, check_sparsity_and_pattern

    try:
        _, nm = check_sparsity_and_pattern(args.sparsity, args.pattern)
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"--sparsity/--pattern: {exc}")
    # Before minutes of loading and evaluating: what the flags alone decide.
    if args.eval_tokens and args.eval_tokens < args.eval_seq_len:
        raise SystemExit(f"--eval-tokens {args.eval_tokens} is less than one --eval-seq-len window "
                         f"({args.eval_seq_len}); give more tokens or 0 to skip the evaluation")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise SystemExit(f"--out: {args.out} exists and is not a directory")
    model, tok = _load(args.model)
    try:  # before the dense evaluation, which takes minutes
        check_model_fits(model, nm)
        cal = calibration_ids(tok, args.samples, args.seq_len, seed=args.seed)
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"--model/--pattern/--samples/--seq-len: {exc}")
    out = dict(model=args.model, method=args.method, sds=args.sds, sparsity=args.sparsity,
               pattern=args.pattern, calibration=dict(samples=args.samples, seq_len=args.seq_len,
                                                      tokens=cal.numel(), sources=["amazon", "movie"]))
    ev = evaluation_ids(tok, "test", args.eval_tokens) if args.eval_tokens else None
    if ev is not None:
        ppl, windows, count = perplexity(model, ev, seq_len=args.eval_seq_len, return_counts=True)
        out["dense_ppl"] = ppl
        out["evaluation"] = dict(source="nyt", split="test", windows=windows, predicted_tokens=count,
                                 seq_len=args.eval_seq_len)
        print(f"dense perplexity {ppl:.3f} ({windows} windows of {args.eval_seq_len}, "
              f"{count} predicted NYT test tokens)")
    t0 = time.perf_counter()
    kw = dict(method=args.method, sparsity=args.sparsity, pattern=args.pattern,
              batch_size=args.batch_size, progress=not args.no_progress)
    try:
        if args.sds:
            result = sds(model, cal, **kw)
            report = result["second"]
            out["sds_dense"] = result["dense"]
        else:
            report = prune(model, cal, **kw)
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"oneshot: {exc}")
    out["seconds"] = time.perf_counter() - t0
    out["layers"] = report
    print(_summary(report, args.method + (" + SDS" if args.sds else "")))
    print(f"pruning took {out['seconds']:.1f} s")
    if ev is not None:
        ppl, windows, count = perplexity(model, ev, seq_len=args.eval_seq_len, return_counts=True)
        out["pruned_ppl"] = ppl
        print(f"pruned perplexity {ppl:.3f} (same {count} tokens)")
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    info = save_sparse(model, os.path.join(args.out, "sparse.safetensors"), pattern=args.pattern,
                       metadata={"method": args.method, "sparsity": str(args.sparsity)})
    out["sparse_file_bytes"] = info["file_bytes"]
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {args.out} (save_pretrained, sparse.safetensors {info['file_bytes'] / 2**20:.1f} MiB, "
          "report.json)")
    return 0
