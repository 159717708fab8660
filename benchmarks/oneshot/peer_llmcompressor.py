#!/usr/bin/env python
"""llm-compressor's one-shot Wanda / SparseGPT on a saved model, for run.py.

Runs inside llm-compressor's own virtualenv (run.py builds it): it never
imports mgpp_ext, only the perplexity function's file, so both libraries
are evaluated by the same code. The calibration token ids are run.py's,
as a datasets.Dataset of input_ids (no shuffling, no re-tokenization).
Wall time: the oneshot() call alone.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--method", choices=("wanda", "sparsegpt"), required=True)
    ap.add_argument("--sparsity", type=float, required=True)
    ap.add_argument("--mask-structure", default="0:0", help="llm-compressor's 'N:M' (N pruned of M) or 0:0")
    ap.add_argument("--calibration", required=True)
    ap.add_argument("--evaluation", required=True)
    ap.add_argument("--eval-seq-len", type=int, required=True)
    ap.add_argument("--perplexity-py", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.spec_from_file_location("mgpp_perplexity", args.perplexity_py)
    ppl_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ppl_mod)

    cal = torch.load(args.calibration)
    ev = torch.load(args.evaluation)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(args.model)
    ds = Dataset.from_dict({"input_ids": cal.tolist(),
                            "attention_mask": torch.ones_like(cal).tolist()})
    cls = WandaPruningModifier if args.method == "wanda" else SparseGPTModifier
    # The same 2:4 / 4:8 masks: llm-compressor's "N:M" counts pruned weights;
    # for 2:4 and 4:8 at 50% that is the same string.
    recipe = cls(sparsity=args.sparsity, mask_structure=args.mask_structure, targets=["Linear"],
                 ignore=["re:.*lm_head"])  # the form its matcher needs (it names it "lm_head.")
    t0 = time.perf_counter()
    model = oneshot(model=model, processor=tok, recipe=recipe, dataset=ds,
                    num_calibration_samples=cal.shape[0], max_seq_length=cal.shape[1],
                    shuffle_calibration_samples=False)
    seconds = time.perf_counter() - t0
    ppl, windows, count = ppl_mod.perplexity(model, ev, seq_len=args.eval_seq_len, return_counts=True)
    linears = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n]
    zeros = sum(int((m.weight == 0).sum()) for m in linears)
    numel = sum(m.weight.numel() for m in linears)
    with open(args.out, "w") as f:
        json.dump(dict(ppl=ppl, seconds=seconds, windows=windows, predicted_tokens=count,
                       sparsity=zeros / numel, library="llmcompressor 0.14.0.1"), f)


if __name__ == "__main__":
    main()
