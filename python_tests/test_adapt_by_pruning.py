"""AdaptByPruning: a mask learned over frozen weights, against a plain-PyTorch
reference of its step; frozen weights bitwise unchanged; resume; bad input."""
import copy
import io
import json
import math
import re

import pytest
import torch
from torch.nn.utils import parametrize

from mgpp_ext import AdaptByPruning
from mgpp_ext.methods.adapt_by_pruning import _expected_keep_offset
from conftest import bits


def make(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 12),
                                torch.nn.ReLU(), torch.nn.Linear(12, 3))
    return model, [model[0].weight, model[2].weight], list(model[4].parameters())


def data(t):
    g = torch.Generator().manual_seed(100 + t)
    return torch.randn(32, 8, generator=g), torch.randint(0, 3, (32,), generator=g)


def loss_of(model, t):
    x, y = data(t)
    return torch.nn.functional.cross_entropy(model(x), y)


KW = dict(target_sparsity=0.6, total_steps=16, final_finetune_steps=4, score_lr=0.05, mask_interval=3)


def reference_step(w, head, scores, tau, t, lr):
    """One topk step by hand: the forward with W * 1[S > tau], the
    straight-through gradient of S, S -= lr g / rms(g)."""
    masked = [(wi * (si > tau).float()).requires_grad_(True) for wi, si in zip(w, scores)]
    x, y = data(t)
    h = torch.relu(torch.nn.functional.linear(x, masked[0], head["b0"]))
    h = torch.relu(torch.nn.functional.linear(h, masked[1], head["b2"]))
    loss = torch.nn.functional.cross_entropy(torch.nn.functional.linear(h, head["w4"], head["b4"]), y)
    gm = torch.autograd.grad(loss, masked)
    out = []
    for si, wi, g in zip(scores, w, gm):
        gs = g * wi
        rms = gs.pow(2).mean().sqrt()
        out.append(si - gs * (lr / rms) if rms > 0 else si.clone())
    return out


def test_topk_steps_match_reference():
    model, weights, head = make()
    w0 = [w.detach().clone() for w in weights]
    learner = AdaptByPruning(model, weights, head, **KW)
    n = sum(w.numel() for w in weights)
    for t in range(KW["total_steps"] - KW["final_finetune_steps"]):
        s_before = learner.scores()
        tau = learner._tau
        flat = torch.cat([s.reshape(-1) for s in s_before])
        assert tau == float(torch.kthvalue(flat, math.floor(0.6 * n)).values) or t % 3 != 0
        hd = dict(b0=model[0].bias.detach(), b2=model[2].bias.detach(), w4=model[4].weight.detach(),
                  b4=model[4].bias.detach())
        want = reference_step(w0, hd, s_before, tau, t, KW["score_lr"])
        loss_of(model, t).backward()
        learner.step()
        learner.zero_grad()
        for a, b in zip(learner.scores(), want):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # the mask holds the target exactly (no ties among random scores)
    assert sum(int((~m).sum()) for m in learner.masks()) == math.floor(0.6 * n)


@pytest.mark.parametrize("relaxation", ["topk", "hard_concrete"])
@pytest.mark.parametrize("score_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_frozen_weights_unchanged_head_trains(relaxation, score_dtype):
    model, weights, head = make()
    w0 = [bits(w).clone() for w in weights]
    h0 = [p.detach().clone() for p in head]
    learner = AdaptByPruning(model, weights, head, relaxation=relaxation, score_dtype=score_dtype, **KW)
    s0 = learner.scores()
    for t in range(KW["total_steps"]):
        loss_of(model, t).backward()
        learner.step()
        learner.zero_grad()
    assert all(torch.equal(bits(w), b) for w, b in zip(learner.pretrained_weights(), w0))
    assert all(not w.requires_grad for w in learner.pretrained_weights())
    assert not all(torch.equal(p, q) for p, q in zip(head, h0))
    assert not all(torch.equal(a, b) for a, b in zip(learner.scores(), s0))
    assert learner.mask_fixed
    # state: the scores themselves, 4 (or 2) bytes per masked weight, nothing else per weight
    assert all(s.dtype == score_dtype for s in learner.scores())
    assert all(len(learner.state[s]) == 0 for s in learner.param_groups[0]["params"])
    model.eval()
    for w, m, layer in zip(learner.pretrained_weights(), learner.masks(), (model[0], model[2])):
        assert torch.equal(layer.weight, w * m)


def test_hard_concrete_samples_in_training_mask_in_eval():
    model, weights, head = make()
    learner = AdaptByPruning(model, weights, head, relaxation="hard_concrete", **KW)
    model.train()
    w = model[0].weight  # one sample
    z = w / learner.pretrained_weights()[0]
    z = z[learner.pretrained_weights()[0] != 0]
    assert (z >= 0).all() and (z <= 1).all() and (z == 0).any() and (z == 1).any() and ((z > 0) & (z < 1)).any()
    assert not torch.equal(model[0].weight, model[0].weight)  # a fresh sample every access
    model.eval()
    assert torch.equal(model[0].weight, learner.pretrained_weights()[0] * learner.masks()[0])
    # the gradient reaches the scores
    model.train()
    loss_of(model, 0).backward()
    assert learner.param_groups[0]["params"][0].grad.abs().sum() > 0


def _per_weight_tensors(learner):
    """Tensors the learner holds besides the model's weights, the scores
    and the head's AdamW state, with at least as many entries as the
    smallest masked weight (per-weight state)."""
    small = min(w.numel() for w in learner.pretrained_weights())
    skip = {"param_groups", "state", "_weights", "_masks_modules"}
    found = []

    def walk(name, v):
        if isinstance(v, torch.Tensor):
            if v.numel() >= small:
                found.append(name)
        elif isinstance(v, dict):
            for k, x in v.items():
                walk(f"{name}[{k!r}]", x)
        elif isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                walk(f"{name}[{i}]", x)
    for name, v in vars(learner).items():
        if name not in skip:
            walk(name, v)
    return found


@pytest.mark.parametrize("relaxation", ["topk", "hard_concrete"])
def test_no_per_weight_state_besides_the_scores(relaxation):
    model, weights, head = make()
    learner = AdaptByPruning(model, weights, head, relaxation=relaxation, **KW)
    for t in range(KW["total_steps"]):
        loss_of(model, t).backward()
        learner.step()
        learner.zero_grad()
        assert _per_weight_tensors(learner) == [], t
    assert learner.mask_fixed
    # the fixed mask is 1[S > tau] of the scores as they were at t_e
    model.eval()
    for w, m, layer in zip(learner.pretrained_weights(), learner.masks(), (model[0], model[2])):
        assert torch.equal(layer.weight, w * m)


def test_expected_keep_offset_solves_the_count():
    g = torch.Generator().manual_seed(0)
    for scores in (torch.randn(50_001, generator=g) * 3, torch.rand(1_000, generator=g).pow(4) * 20,
                   torch.zeros(64)):
        n = scores.numel()
        for keep in (1, n // 10, n // 2, n - 1):
            c = _expected_keep_offset(scores, keep, 1.6, start=float(scores.median()))
            got = float(torch.sigmoid(scores - c + 1.6).double().sum())
            assert abs(got - keep) <= max(0.5, 1e-6 * n), (n, keep, got)


def test_hard_concrete_holds_the_sparsity_in_expectation():
    """The sampled gates are zero as often as the schedule's sparsity asks
    (before the offset, a gate at the threshold was nonzero 83% of the
    time, so the trained network was far denser than the target)."""
    model, weights, head = make()
    # the offset is refreshed with the threshold, every step here (between
    # refreshes it drifts as S moves)
    kw = {**KW, "target_sparsity": 0.6, "mask_interval": 1}
    learner = AdaptByPruning(model, weights, head, relaxation="hard_concrete", **kw)
    w = learner.pretrained_weights()
    n = sum(x.numel() for x in w)
    model.train()
    for t in range(6):
        assert abs(learner.expected_sparsity() - math.floor(0.6 * n) / n) <= 0.5 / n + 1e-9
        zeros = trials = 0
        for _ in range(300):  # 96,000 gates: the zero fraction's std is about 0.0016
            for layer, wi in zip((model[0], model[2]), w):
                z = layer.weight[wi != 0] / wi[wi != 0]
                zeros += int((z == 0).sum())
                trials += z.numel()
        assert abs(zeros / trials - 0.6) < 0.012, (t, zeros / trials)
        loss_of(model, t).backward()
        learner.step()
        learner.zero_grad()


@pytest.mark.parametrize("relaxation", ["topk", "hard_concrete"])
@pytest.mark.parametrize("resume_at", [4, 12, 14])
def test_resume_is_bitwise(relaxation, resume_at):
    def fresh():
        model, weights, head = make()
        return model, AdaptByPruning(model, weights, head, relaxation=relaxation, **KW)

    def run(model, learner, ts):
        for t in ts:
            loss_of(model, t).backward()
            learner.step()
            learner.zero_grad()
    ma, la = fresh()
    run(ma, la, range(KW["total_steps"]))
    mb, lb = fresh()
    run(mb, lb, range(resume_at))
    buf = io.BytesIO()
    torch.save({"model": mb.state_dict(), "learner": lb.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf)
    mc, lc = fresh()
    mc.load_state_dict(saved["model"])
    lc.load_state_dict(saved["learner"])
    run(mc, lc, range(resume_at, KW["total_steps"]))
    for a, b in zip(ma.state_dict().values(), mc.state_dict().values()):
        assert torch.equal(a, b)


def test_nonfinite_gradient():
    model, weights, head = make()
    learner = AdaptByPruning(model, weights, head, **KW)
    loss_of(model, 0).backward()
    head[0].grad[0, 0] = float("nan")
    s0 = learner.scores()
    with pytest.raises(FloatingPointError, match="inf or NaN"):
        learner.step()
    assert all(torch.equal(a, b) for a, b in zip(learner.scores(), s0)) and learner.current_step == 0


def test_bad_arguments_refused_by_name():
    model, weights, head = make()
    for kw, word in [(dict(relaxation="l0"), "relaxation"), (dict(score_lr=0.0), "score_lr"),
                     (dict(mask_interval=0), "mask_interval"), (dict(score_dtype=torch.float16), "score_dtype"),
                     (dict(stretch=(0.1, 1.1)), "stretch"), (dict(temperature=-1.0), "temperature"),
                     (dict(target_sparsity=1.0), "target_sparsity")]:
        model, weights, head = make()
        with pytest.raises(ValueError, match=word):
            AdaptByPruning(model, weights, head, **{**KW, **kw})
    model, weights, head = make()
    with pytest.raises(ValueError, match="weights\\[0\\]"):
        AdaptByPruning(model, [torch.nn.Parameter(torch.randn(3, 3))], head, **KW)
    with pytest.raises(ValueError, match="head\\[0\\]"):
        AdaptByPruning(model, weights, [weights[0]], **KW)
    # Refused before the model is touched: no weight frozen, no parametrization left behind.
    for bad_head, exc, word in [(["x"], TypeError, "head\\[0\\] must be a torch.Tensor"),
                                ([torch.randn(3, requires_grad=True) * 2], ValueError, "head\\[0\\] is not a leaf"),
                                ([torch.nn.Parameter(torch.randn(3, dtype=torch.float64))], TypeError,
                                 "head\\[0\\] is a torch.strided torch.float64")]:
        model, weights, head = make()
        with pytest.raises(exc, match=word):
            AdaptByPruning(model, weights, bad_head, **KW)
        assert all(w.requires_grad for w in weights) and not parametrize.is_parametrized(model[0])
    for kw, word in [(dict(relaxation="hard_concrete", stretch=(-0.1, float("inf"))), "stretch must have finite"),
                     (dict(seed=1.7), "seed must be an int")]:
        model, weights, head = make()
        with pytest.raises(ValueError, match=word):
            AdaptByPruning(model, weights, head, **{**KW, **kw})
        assert all(w.requires_grad for w in weights) and not parametrize.is_parametrized(model[0])
    model, weights, head = make()
    other = AdaptByPruning(model, weights, head, **{**KW, "relaxation": "hard_concrete"})
    model2, weights2, head2 = make()
    with pytest.raises(ValueError, match="relaxation"):
        AdaptByPruning(model2, weights2, head2, **KW).load_state_dict(other.state_dict())


@pytest.mark.parametrize("key,value,match", [
    ("t", -1, "'t' must be an int >= 0, got -1"),
    ("skipped", 2.0, "'skipped' must be an int >= 0"),
    ("tau", "x", "'tau' must be a number, got 'x'"),
    ("hc_tau", None, "'hc_tau' must be a number, got None"),
    ("fixed", 1, "'fixed' must be a bool, got 1"),
])
def test_corrupt_record_refused_before_anything_loads(key, value, match):
    model, weights, head = make()
    learner = AdaptByPruning(model, weights, head, **KW)
    for t in range(3):
        loss_of(model, t).backward()
        learner.step()
        learner.zero_grad()
    saved = learner.state_dict()
    groups = [dict(g) for g in saved["param_groups"]]
    rec = json.loads(groups[0]["mgpp"])
    rec[key] = value
    groups[0]["mgpp"] = json.dumps(rec)
    model2, weights2, head2 = make()
    other = AdaptByPruning(model2, weights2, head2, **KW)
    with pytest.raises(ValueError, match=re.escape(match) + ".*corrupt checkpoint"):
        other.load_state_dict({**saved, "param_groups": groups})
    assert other.current_step == 0 and not other.state


def test_numpy_lr_saves_as_a_python_number():
    """A numpy float64 lr (a float, here from an LR scheduler) is saved as a
    Python float: the state dict loads with torch.load(weights_only=True)."""
    import numpy as np

    model, weights, head = make()
    learner = AdaptByPruning(model, weights, head, lr=np.float64(1e-3), **KW)
    sched = torch.optim.lr_scheduler.LambdaLR(learner, lambda t: np.float64(0.5) ** t)
    loss_of(model, 0).backward()
    learner.step()
    sched.step()
    assert type(learner.param_groups[0]["lr"]) is np.float64
    buf = io.BytesIO()
    torch.save(learner.state_dict(), buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    assert all(type(g["lr"]) is float for g in saved["param_groups"])


@pytest.mark.parametrize("relaxation", ["topk", "hard_concrete"])
def test_copy_of_model_and_learner_continues_the_run(relaxation):
    """copy.deepcopy of (model, learner) keeps the schedule, the scores, the
    sampler and the position: both copies then take the same steps."""
    model, weights, head = make()
    learner = AdaptByPruning(model, weights, head, **{**KW, "relaxation": relaxation})

    def train(m, opt, ts):
        for t in ts:
            x, y = data(t)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opt.step()

    train(model, learner, range(3))
    model2, learner2 = copy.deepcopy((model, learner))
    assert learner2.current_step == 3
    train(model, learner, range(3, 9))
    train(model2, learner2, range(3, 9))
    for a, b in zip(learner.scores(), learner2.scores()):
        assert torch.equal(a, b)
    x, _ = data(99)
    assert torch.equal(model(x), model2(x))
