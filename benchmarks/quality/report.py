#!/usr/bin/env python3
"""Table and plots from the quality grid's results file.

    python benchmarks/quality/report.py        # writes results.md, accuracy_vs_sparsity.png,
                                               # sensitivity.png next to results.json

Points with fewer than the planned 3 seeds are shown with the number of
seeds they have (n); missing points are left out, never filled in.
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
METHOD_NAMES = {"dense": "dense AdamW", "gmp": "GMP", "platon": "PLATON", "mgpp": "MGPP",
                "admm": "ADMM", "srste": "SR-STE", "oneshot": "one-shot n:m magnitude + fine-tune",
                "movement": "Movement", "mgpp_platon": "MGPP + PLATON score",
                "cam_cut": "Cam-Cut", "smooth_cut": "Smooth-Cut", "taylor": "Taylor |W g|",
                "magnitude": "magnitude |W|", "adapt_by_pruning": "adapting by pruning"}
#: The methods of the main tables (gradual pruning at the grid's sparsities).
MAIN = ("gmp", "platon", "mgpp", "admm", "movement", "mgpp_platon")
IMPORTANCE = ("cam_cut", "smooth_cut", "taylor", "magnitude")


def _mean_std(values):
    if len(values) == 1:
        return values[0], 0.0
    return statistics.mean(values), statistics.stdev(values)


def _cell(values):
    """mean +- std (n); a single seed shows its value alone, not a spread of 0."""
    if len(values) == 1:
        return f"{values[0]:.4f} (n=1)"
    m, sd = _mean_std(values)
    return f"{m:.4f} +- {sd:.4f} (n={len(values)})"


def _sensitivity_base(runs):
    """The grid point the prior study varies around (same seed as the study)."""
    sens = [r for r in runs if r.get("study") == "sensitivity"]
    if not sens:
        return []
    seed = sens[0]["seed"]
    return [r for r in runs if r["key"] == f"trec/mgpp/0.9/seed{seed}"]


def summarise(runs):
    """{(task, method, sparsity): [records]} of the grid (sensitivity runs apart)."""
    table = defaultdict(list)
    for r in runs:
        if r.get("study") or r["method"] not in ("dense",) + MAIN:
            continue
        table[(r["task"], r["method"], r["sparsity"])].append(r)
    return table


def markdown(runs, meta):
    table = summarise(runs)
    lines = []
    trec = {k: v for k, v in table.items() if k[0] == "trec"}
    if trec:
        any_rec = next(iter(trec.values()))[0]
        s = any_rec["splits"]
        lines.append(f"TREC-6 (train {s['train']} / val {s['val']} / test {s['test']}), test accuracy, "
                     "mean +- std over seeds (n = seeds run):\n")
        sparsities = sorted({k[2] for k in trec if k[1] != "dense"})
        lines.append("| method | 0% | " + " | ".join(f"{x:.0%}" for x in sparsities) + " |")
        lines.append("|---|---|" + "---|" * len(sparsities))
        if ("trec", "dense", 0.0) in trec:
            dense = _cell([r["test_accuracy"] for r in trec[("trec", "dense", 0.0)]])
            lines.append(f"| dense AdamW | {dense} |" + " |" * len(sparsities))
        for method in MAIN:
            if not any(k[1] == method for k in trec):
                continue
            cells = []
            for x in sparsities:
                recs = trec.get(("trec", method, x), [])
                cells.append(_cell([r["test_accuracy"] for r in recs]) if recs else "not run")
            lines.append(f"| {METHOD_NAMES[method]} | | " + " | ".join(cells) + " |")
        lines.append("")
    spam = {k: v for k, v in table.items() if k[0] == "spam"}
    if spam:
        s = next(iter(spam.values()))[0]["splits"]
        lines.append(f"SMS spam (train {s['train']} / val {s['val']} / test {s['test']}), test F1 of the "
                     "spam class at 90% sparsity (dense: 0%):\n")
        lines.append("| method | test F1 | test accuracy |")
        lines.append("|---|---|---|")
        for method in ("dense",) + MAIN:
            recs = spam.get(("spam", method, 0.0 if method == "dense" else 0.9), [])
            if recs:
                lines.append(f"| {METHOD_NAMES[method]} | {_cell([r['test_f1'] for r in recs])} | "
                             f"{_cell([r['test_accuracy'] for r in recs])} |")
        lines.append("")
    leaky = [r for r in runs if r.get("study") == "spam_exact_dedupe"]
    if leaky:
        s = leaky[0]["splits"]
        lines.append(f"SMS spam as first run, with verbatim repeats dropped only (train {s['train']} / val "
                     f"{s['val']} / test {s['test']}; 7 test messages, 4 of them spam, repeat a training "
                     "message up to case, digits and punctuation), test F1 at 90% (dense: 0%):\n")
        lines.append("| method | test F1 |")
        lines.append("|---|---|")
        for method in ("dense",) + MAIN:
            recs = [r for r in leaky if r["method"] == method]
            if recs:
                lines.append(f"| {METHOD_NAMES[method]} | {_cell([r['test_f1'] for r in recs])} |")
        lines.append("")
    sens = [r for r in runs if r.get("study") == "sensitivity" and r["task"] == "trec"]
    if sens:
        base = _sensitivity_base(runs)
        lines.append(f"MGPP prior sensitivity, TREC-6 at 90%, seed {sens[0]['seed']}, VALIDATION accuracy "
                     f"(base: sigma0_sq {meta['mgpp_prior']['sigma0_sq']:g}, sigma1_sq "
                     f"{meta['mgpp_prior']['sigma1_sq']:g}, lambda {meta['mgpp_prior']['lambda_mix']:g}):\n")
        lines.append("| varied | value | val accuracy |")
        lines.append("|---|---|---|")
        if base:
            lines.append(f"| (base) | | {base[0]['val_accuracy']:.4f} |")
        for r in sorted(sens, key=lambda r: (list(r["prior"])[0], list(r["prior"].values())[0])):
            (name, value), = r["prior"].items()
            lines.append(f"| {name} | {value:g} | {r['val_accuracy']:.4f} |")
        lines.append("")
    movie = [r for r in runs if r["task"] == "movie"]
    if movie:
        sp = movie[0]["splits"]
        lines.append(f"Movie-review sentiment (train {sp['train']} / val {sp['val']} / test {sp['test']}), "
                     "8 epochs, 90% sparsity, VALIDATION accuracy:\n")
        lines.append("| run | val accuracy |")
        lines.append("|---|---|")
        order = lambda r: ({"dense": 0, "gmp": 1, "mgpp": 2}[r["method"]],  # noqa: E731
                           (r.get("prior") or {}).get("sigma1_sq", 0))
        for r in sorted(movie, key=order):
            name = METHOD_NAMES[r["method"]]
            if r.get("prior"):
                name += f", sigma1_sq {r['prior']['sigma1_sq']:g}"
            lines.append(f"| {name} | {r['val_accuracy']:.4f} |")
        lines.append("")
    total = sum(r["train_seconds"] for r in runs)
    devices = sorted({r.get("device", "?") for r in runs})
    lines.append(f"{len(runs)} runs, {total / 3600:.2f} h of training on {', '.join(devices)}.")
    return "\n".join(lines)


def plot(runs, meta, out_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = summarise(runs)
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, marker in (("gmp", "s"), ("platon", "^"), ("mgpp", "o")):
        pts = sorted((k[2], v) for k, v in table.items() if k[0] == "trec" and k[1] == method)
        if not pts:
            continue
        xs = [x for x, _ in pts]
        stats = [_mean_std([r["test_accuracy"] for r in v]) for _, v in pts]
        ax.errorbar(xs, [m for m, _ in stats], yerr=[s for _, s in stats], marker=marker,
                    capsize=3, label=METHOD_NAMES[method])
    dense = table.get(("trec", "dense", 0.0))
    if dense:
        m, _ = _mean_std([r["test_accuracy"] for r in dense])
        ax.axhline(m, color="gray", linestyle="--", label=f"dense ({m:.3f})")
    ax.set_xlabel("sparsity of the prunable weights")
    ax.set_ylabel("test accuracy (mean +- std over seeds)")
    ax.set_title("MiniLM-L6 fine-tuned on TREC-6")
    ax.set_xlim(0.45, 0.98)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "accuracy_vs_sparsity.png", dpi=120)
    plt.close(fig)

    sens = [r for r in runs if r.get("study") == "sensitivity" and r["task"] == "trec"]
    base = _sensitivity_base(runs)
    movie = [r for r in runs if r["task"] == "movie"]
    if sens:
        names = ["sigma1_sq", "sigma0_sq", "lambda_mix"]
        # the same seed's GMP for scale; one validation example is 1/538
        gmp = [r for r in runs if r["key"] == f"trec/gmp/0.9/seed{sens[0]['seed']}"]
        fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
        for ax, name in zip(axes, names):
            pts = [(r["prior"][name], r["val_accuracy"]) for r in sens if name in r["prior"]]
            if base:
                pts.append((meta["mgpp_prior"][name], base[0]["val_accuracy"]))
            pts.sort()
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o")
            if gmp:
                ax.axhline(gmp[0]["val_accuracy"], color="gray", linestyle=":", label="GMP")
            ax.set_xscale("log")
            ax.set_xlabel(name)
            ax.set_ylabel("TREC-6 val accuracy")
            ax.grid(alpha=0.3)
        lo = min(r["val_accuracy"] for r in sens + base + gmp)
        hi = max(r["val_accuracy"] for r in sens + base)
        for ax in axes[:3]:  # one scale for the three TREC panels
            ax.set_ylim(lo - 0.02, hi + 0.02)
        axes[0].legend(fontsize=8)
        ax = axes[3]
        pts = sorted((r["prior"]["sigma1_sq"], r["val_accuracy"]) for r in movie if r.get("prior"))
        if pts:
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label="MGPP")
        for r in movie:
            if r["method"] in ("dense", "gmp"):
                ax.axhline(r["val_accuracy"], linestyle="--" if r["method"] == "dense" else ":",
                           color="gray", label=METHOD_NAMES[r["method"]])
        ax.set_xscale("log")
        ax.set_xlabel("sigma1_sq")
        ax.set_ylabel("movie sentiment val accuracy")
        ax.grid(alpha=0.3)
        if movie:
            ax.legend(fontsize=8)
        fig.suptitle("MGPP prior sensitivity at 90% sparsity (validation): TREC-6 (n=4,305) and "
                     "movie sentiment (n=2,000)")
        fig.tight_layout()
        fig.savefig(out_dir / "sensitivity.png", dpi=120)
        plt.close(fig)


def scores_markdown(runs):
    """The score-based neighbours: the length study, Movement's scope,
    DeepCuts and its baselines, adapting by pruning."""
    lines = []
    test = lambda rs: _cell([r["test_accuracy"] for r in rs]) if rs else "not run"  # noqa: E731
    dense = [r for r in runs if r["task"] == "trec" and r["method"] == "dense" and not r.get("study")]
    long = [r for r in runs if r.get("study") == "epochs"]
    if long:
        seeds = sorted({r["seed"] for r in long})
        lines += ["", f"Length of training, TREC-6 at 90%, seed{'s' if len(seeds) > 1 else ''} "
                  f"{', '.join(map(str, seeds))}: the grid's 6 "
                  "epochs against 18 (the pruning phase from 3.5 to 15.5 epochs), on the same seeds, "
                  "validation and test accuracy, mean +- std (n = seeds run):", "",
                  "| method | 6 epochs val | 6 epochs test | 18 epochs val | 18 epochs test |", "|---|---|---|---|---|"]
        for m in ("gmp", "platon", "mgpp"):
            lng = [r for r in long if r["method"] == m]
            base = [r for r in runs if r["key"] in {f"trec/{m}/0.9/seed{g['seed']}" for g in lng}]
            if base and lng:
                cells = [_cell([r[k] for r in rs]) for rs in (base, lng) for k in ("val_accuracy", "test_accuracy")]
                lines.append(f"| {METHOD_NAMES[m]} | " + " | ".join(cells) + " |")
    scope = [r for r in runs if r.get("study") == "movement_scope"]
    if scope:
        base = [r for r in runs if r["key"] == "trec/movement/0.9/seed0"]
        lines += ["", "Movement's threshold, TREC-6 at 90%, seed 0, VALIDATION accuracy:", "",
                  "| threshold | val accuracy |", "|---|---|"]
        if base:
            lines.append(f"| global (the grid's) | {base[0]['val_accuracy']:.4f} |")
        lines.append(f"| per tensor | {scope[0]['val_accuracy']:.4f} |")
    imp = [r for r in runs if r["method"] in IMPORTANCE and r["task"] == "trec" and not r.get("study")]
    if imp:
        sps = sorted({r["sparsity"] for r in imp})
        lines += ["", "One-shot scores, prune, then fine-tune with the fixed mask (DeepCuts' pipeline: dense "
                  "fine-tune, score, prune with one global threshold, rewind to the pretrained weights, "
                  "retrain), TREC-6, test accuracy, mean +- std over seeds (n = seeds run):", "",
                  "| score | " + " | ".join(f"{x:.0%} ({1 / (1 - x):.0f}x)" for x in sps) + " |",
                  "|---|" + "---|" * len(sps)]
        if dense:
            lines.append(f"| dense AdamW (0%) | " + " | ".join([test(dense)] * len(sps)) + " |")
        for m in IMPORTANCE:
            cells = [test([r for r in imp if r["method"] == m and r["sparsity"] == x
                           and not r.get("pipeline") and not r.get("scope")]) for x in sps]
            lines.append(f"| {METHOD_NAMES[m]} | " + " | ".join(cells) + " |")
        var = [r for r in imp if r.get("pipeline") or r.get("scope")]
        if var:
            lines += ["", "At 75%, seed 0: the pipeline and the threshold's scope, test accuracy:", "",
                      "| score | rewind, global | plain (score the pretrained model), global | rewind, per layer |",
                      "|---|---|---|---|"]
            for m in IMPORTANCE:
                pick = lambda **kw: [r for r in imp if r["method"] == m and r["sparsity"] == 0.75  # noqa: E731
                                     and r["seed"] == 0 and all(r.get(k) == v for k, v in kw.items())]
                lines.append(f"| {METHOD_NAMES[m]} | {test(pick(pipeline=None, scope=None))} | "
                             f"{test(pick(pipeline='plain'))} | {test(pick(scope='layer'))} |")
    abp = [r for r in runs if r["method"] == "adapt_by_pruning" and r["task"] == "trec" and not r.get("study")]
    if abp:
        sps = sorted({r["sparsity"] for r in abp})
        lines += ["", "Adapting by pruning (the encoder frozen; a mask over its weights and the head learned), "
                  "TREC-6, test accuracy, mean +- std over seeds (n = seeds run):", "",
                  "| run | " + " | ".join(f"{x:.0%}" for x in sps) + " |", "|---|" + "---|" * len(sps)]
        if dense:
            lines.append(f"| dense fine-tune (0%) | " + " | ".join([test(dense)] * len(sps)) + " |")
        for rel, name in (("topk", "straight-through top-k"), ("hard_concrete", "hard-concrete")):
            rows = [r for r in abp if r.get("relaxation", "topk") == rel]
            if rows:
                cells = [test([r for r in rows if r["sparsity"] == x]) for x in sps]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
    spam = [r for r in runs if r["task"] == "spam" and not r.get("study")
            and (r["method"] in IMPORTANCE or r["method"] == "adapt_by_pruning")]
    if spam:
        lines += ["", "SMS spam, test F1 of the spam class:", "", "| run | sparsity | test F1 |", "|---|---|---|"]
        for m in IMPORTANCE + ("adapt_by_pruning",):
            rows = [r for r in spam if r["method"] == m]
            for x in sorted({r["sparsity"] for r in rows}):
                lines.append(f"| {METHOD_NAMES[m]} | {x:.0%} | {_cell([r['test_f1'] for r in rows if r['sparsity'] == x])} |")
    return "\n".join(lines)


def scores_plot(runs, out_dir):
    """Test accuracy against sparsity: the gradual methods with Movement and
    MGPP + PLATON (left), the one-shot scores and adapting by pruning (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trec = [r for r in runs if r["task"] == "trec" and not r.get("study") and not r.get("pattern")
            and not r.get("pipeline") and not r.get("scope") and r.get("relaxation", "topk") == "topk"]
    panels = (("gradual pruning", ("gmp", "platon", "mgpp", "movement", "mgpp_platon")),
              ("score once / learn a mask", IMPORTANCE + ("adapt_by_pruning",)))
    if not any(r["method"] in ("movement", "mgpp_platon") + IMPORTANCE + ("adapt_by_pruning",) for r in trec):
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    dense = [r["test_accuracy"] for r in trec if r["method"] == "dense"]
    for ax, (title, methods) in zip(axes, panels):
        for m in methods:
            by = defaultdict(list)
            for r in trec:
                if r["method"] == m:
                    by[r["sparsity"]].append(r["test_accuracy"])
            if not by:
                continue
            xs = sorted(by)
            ms = [_mean_std(by[x]) for x in xs]
            ax.errorbar(xs, [a for a, _ in ms], yerr=[b for _, b in ms], marker="o", capsize=3,
                        label=METHOD_NAMES[m])
        if dense:
            ax.axhline(_mean_std(dense)[0], color="gray", linestyle="--", label="dense")
        ax.set_xlim(*((0.45, 0.98) if ax is axes[0] else (0.25, 0.8)))
        ax.set_title(f"MiniLM-L6 on TREC-6: {title}")
        ax.set_xlabel("sparsity")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("test accuracy (mean +- std over seeds)")
    fig.tight_layout()
    fig.savefig(out_dir / "scores_accuracy.png", dpi=120)
    plt.close(fig)


def _pat_key(p):
    return tuple(int(x) for x in p.split(":"))


def nm_markdown(runs):
    """Test accuracy of the n:m runs, one row per method, one column per
    pattern; then the two validation studies (the n:m path, ADMM's rho)."""
    nm = [r for r in runs if r.get("pattern")]
    if not nm:
        return ""
    pats = sorted({r["pattern"] for r in nm}, key=_pat_key)
    methods = [m for m in ("oneshot", "gmp", "mgpp", "platon", "admm", "srste")
               if any(r["method"] == m for r in nm)]
    lines = ["", "TREC-6, n:m semi-structured (along each weight's input dim), test accuracy, "
             "mean +- std over seeds (n = seeds run):", "",
             "| method | " + " | ".join(pats) + " |", "|---|" + "---|" * len(pats)]
    dense = [r["test_accuracy"] for r in runs if r["task"] == "trec" and r["method"] == "dense"
             and not r.get("study")]
    if dense:
        lines.append("| dense AdamW (0%) | " + " | ".join([_cell(dense)] * len(pats)) + " |")
    for m in methods:
        cells = []
        for p in pats:
            acc = [r["test_accuracy"] for r in nm if r["method"] == m and r["pattern"] == p
                   and not r.get("study")]
            cells.append(_cell(acc) if acc else "not run")
        lines.append(f"| {METHOD_NAMES[m]} | " + " | ".join(cells) + " |")
    path = [r for r in nm if r.get("study") == "nm_path"]
    if path:
        lines += ["", "Path to the n:m mask, 2:4, seed 0, VALIDATION accuracy (the default is "
                  "`capped`):", "", "| method | capped | project |", "|---|---|---|"]
        for m in ("gmp", "mgpp"):
            capped = [r for r in nm if r["method"] == m and r["pattern"] == "2:4" and r["seed"] == 0
                      and not r.get("study")]
            proj = [r for r in path if r["method"] == m]
            if capped and proj:
                lines.append(f"| {METHOD_NAMES[m]} | {capped[0]['val_accuracy']:.4f} | "
                             f"{proj[0]['val_accuracy']:.4f} |")
    rho = [r for r in nm if r.get("study") == "admm_rho"]
    if rho:
        base = [r for r in nm if r["method"] == "admm" and r["pattern"] == "2:4" and r["seed"] == 0
                and not r.get("study")]
        lines += ["", "ADMM's rho, 2:4, seed 0, VALIDATION accuracy:", "", "| rho | val accuracy |",
                  "|---|---|"]
        rows = [(r["admm"]["rho"], r["val_accuracy"]) for r in rho]
        if base:
            import sys

            sys.path.insert(0, str(HERE))
            from run_grid import ADMM as GRID_ADMM  # the rho the grid's ADMM rows use

            rows.append((GRID_ADMM["rho"], base[0]["val_accuracy"]))
        for value, acc in sorted(rows):
            mark = " (the grid's)" if base and value == GRID_ADMM["rho"] else ""
            lines.append(f"| {value:g}{mark} | {acc:.4f} |")
    lines += admm_start_markdown(runs)
    return "\n".join(lines)


def admm_start_markdown(runs):
    """ADMM's cells run from U = W - Proj(W) (study ``admm_u0_dual``, before
    the fix to Zhang et al.'s U = 0) beside the same cell and rho from U = 0,
    where both exist."""
    old = [r for r in runs if r.get("study") == "admm_u0_dual"]
    level = lambda r: r.get("pattern") or r["sparsity"]  # noqa: E731
    pairs = []
    for r in old:
        new = [x for x in runs if x["method"] == "admm" and x.get("study") != "admm_u0_dual"
               and x["seed"] == r["seed"] and level(x) == level(r) and x["task"] == r["task"]
               and x["settings"]["admm"] == r["settings"]["admm"]]
        if new:
            pairs.append((r, new[0]))
    if not pairs:
        return []
    lines = ["", "ADMM started from U = W - Proj(W) (the first rows) and from Zhang et al.'s U = 0 "
             "(the grid's now), same cell and rho, val / test accuracy:", "",
             "| cell | seed | rho | U = W - Proj(W) | U = 0 |", "|---|---|---|---|---|"]
    order = lambda p: (isinstance(level(p[0]), str), str(level(p[0])), p[0]["seed"],  # noqa: E731
                       p[0]["settings"]["admm"]["rho"])
    for r, n in sorted(pairs, key=order):
        cell = r.get("pattern") or f"{r['sparsity']:.0%}"
        lines.append(f"| {cell} | {r['seed']} | {r['settings']['admm']['rho']:g} | "
                     f"{r['val_accuracy']:.3f} / {r['test_accuracy']:.3f} | "
                     f"{n['val_accuracy']:.3f} / {n['test_accuracy']:.3f} |")
    return lines


def nm_plot(runs, out_dir):
    nm = [r for r in runs if r.get("pattern") and not r.get("study")]
    if not nm:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pats = sorted({r["pattern"] for r in nm}, key=_pat_key)
    methods = [m for m in ("oneshot", "gmp", "mgpp", "platon", "admm", "srste")
               if any(r["method"] == m for r in nm)]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        xs, ys, es = [], [], []
        for j, p in enumerate(pats):
            acc = [r["test_accuracy"] for r in nm if r["method"] == m and r["pattern"] == p]
            if acc:
                mean, std = _mean_std(acc)
                xs.append(j + (i - (len(methods) - 1) / 2) * width)
                ys.append(mean)
                es.append(std)
        ax.bar(xs, ys, width, yerr=es, capsize=2, label=METHOD_NAMES[m].split(" +")[0])
    dense = [r["test_accuracy"] for r in runs if r["task"] == "trec" and r["method"] == "dense"
             and not r.get("study")]
    if dense:
        ax.axhline(_mean_std(dense)[0], color="gray", linestyle="--", label="dense")
    ax.set_xticks(range(len(pats)), pats)
    ax.set_ylim(0.7, 0.96)
    ax.set_ylabel("test accuracy (mean +- std over seeds)")
    ax.set_title("MiniLM-L6 on TREC-6, n:m sparsity")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(out_dir / "nm_accuracy.png", dpi=120)
    plt.close(fig)


def current_runs(runs):
    """The rows whose recorded settings are what run_grid.py would run for
    their key now, and the study rows kept beside them (keys run_grid no
    longer makes); a row of a current key run with other settings is left
    out with a warning, so a stale run never reaches a table."""
    import sys

    sys.path.insert(0, str(HERE))
    import run_grid

    by_key = {run_grid.key(pt): pt for pt in run_grid.points()}
    keep = []
    for r in runs:
        pt = by_key.get(r["key"])
        if pt is not None and r.get("settings") is not None and r["settings"] != run_grid.settings(pt):
            print(f"warning: {r['key']} was run with other settings than run_grid.py's; left out")
            continue
        keep.append(r)
    return keep


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--results", type=Path, default=HERE / "results.json")
    args = p.parse_args(argv)
    doc = json.loads(args.results.read_text())
    doc["runs"] = current_runs(doc["runs"])
    # n:m runs (a "pattern") have their own table; they must not land in the
    # unstructured columns of the same sparsity.
    runs = [r for r in doc["runs"] if not r.get("pattern")]
    text = markdown(runs, doc["meta"]) + "\n" + nm_markdown(doc["runs"]) + "\n" + scores_markdown(runs)
    (args.results.parent / "results.md").write_text(text + "\n")
    plot(runs, doc["meta"], args.results.parent)
    nm_plot(doc["runs"], args.results.parent)
    scores_plot(runs, args.results.parent)
    print(text)


if __name__ == "__main__":
    main()
