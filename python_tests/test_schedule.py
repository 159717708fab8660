"""Schedule: phases, pruning events, cubic sparsity, lambda annealing, validation."""
import math
from fractions import Fraction

import pytest

import torch

from mgpp_ext import MGPP, Schedule


def events(s):
    return [t for t in range(s.total_steps) if s.is_event(t)]


@pytest.mark.parametrize("kw, t_s, t_e, expected", [
    # events at t_s, every multiple of the interval strictly between, and t_e
    (dict(total_steps=50, initial_warmup_steps=7, final_finetune_steps=10, prune_interval=10),
     7, 39, [7, 10, 20, 30, 39]),
    # t_s on a multiple of the interval: counted once
    (dict(total_steps=50, initial_warmup_steps=10, final_finetune_steps=10, prune_interval=10),
     10, 39, [10, 20, 30, 39]),
    # t_e on a multiple of the interval: counted once
    (dict(total_steps=41, initial_warmup_steps=3, final_finetune_steps=0, prune_interval=10),
     3, 40, [3, 10, 20, 30, 40]),
    # no warm-up, interval longer than the pruning phase
    (dict(total_steps=9, initial_warmup_steps=0, final_finetune_steps=4, prune_interval=100),
     0, 4, [0, 4]),
    # interval 1: every step of the pruning phase is an event
    (dict(total_steps=8, initial_warmup_steps=2, final_finetune_steps=2, prune_interval=1),
     2, 5, [2, 3, 4, 5]),
])
def test_events(kw, t_s, t_e, expected):
    s = Schedule(**kw)
    assert (s.t_s, s.t_e) == (t_s, t_e)
    assert events(s) == expected


@pytest.mark.parametrize("total, warmup, final, interval", [
    (1, 0, 0, 1), (8, 2, 2, 1), (40, 3, 4, 10), (41, 0, 1, 7), (17, 7, 0, 3), (5, 1, 3, 100)])
def test_next_event(total, warmup, final, interval):
    s = Schedule(total_steps=total, initial_warmup_steps=warmup, final_finetune_steps=final,
                 prune_interval=interval)
    for t in range(-1, total + 2):
        want = next((u for u in events(s) if u > t), None)
        assert s.next_event(t) == want, t


def test_phases_and_prior():
    s = Schedule(total_steps=20, initial_warmup_steps=5, final_finetune_steps=6)
    assert [s.phase(t) for t in (0, 4, 5, 13, 14, 19)] == [
        "warmup", "warmup", "pruning", "pruning", "final", "final"]
    # the prior is on through t_e (warm-up included) and off afterwards
    assert [s.prior_active(t) for t in (0, 5, 13, 14, 19)] == [True, True, True, False, False]


def test_cubic_sparsity():
    s_i, s_f = 0.3, 0.9
    s = Schedule(total_steps=31, initial_warmup_steps=5, final_finetune_steps=5,
                 initial_sparsity=s_i, target_sparsity=s_f)
    t_s, t_e = 5, 25
    assert s.sparsity(0) == 0.0 and s.sparsity(t_s - 1) == 0.0
    assert s.sparsity(t_s) == s_i  # exactly, not s_f + (s_i - s_f) * 1
    assert s.sparsity(t_e) == s_f
    assert s.sparsity(t_e + 3) == s_f
    for t in range(t_s, t_e + 1):
        expected = s_f + (s_i - s_f) * (1 - (t - t_s) / (t_e - t_s)) ** 3
        assert s.sparsity(t) == pytest.approx(expected, rel=1e-12)
    assert s.sparsity(15) == pytest.approx(s_f + (s_i - s_f) / 8)
    values = [s.sparsity(t) for t in range(t_s, t_e + 1)]
    assert all(a < b for a, b in zip(values, values[1:]))  # strictly rising
    # k = floor(s_t * N)
    for t in (t_s, 15, t_e):
        assert s.num_pruned(t, 1001) == math.floor(s.sparsity(t) * 1001)
    assert s.num_pruned(t_e, 1000) == 900


def test_lambda_annealing():
    s = Schedule(total_steps=31, initial_warmup_steps=5, final_finetune_steps=5,
                 lambda_mix=0.1, lambda_anneal=(1.0, 0.001))
    assert s.lambda_at(0) == pytest.approx(0.1)
    assert s.lambda_at(5) == pytest.approx(0.1)
    assert s.lambda_at(15) == pytest.approx(0.1 * (1.0 + 0.001) / 2)
    assert s.lambda_at(25) == pytest.approx(0.1 * 0.001)
    assert s.lambda_at(30) == pytest.approx(0.1 * 0.001)
    for t in range(5, 26):
        assert s.alpha(t) == pytest.approx(1.0 + (0.001 - 1.0) * (t - 5) / 20)
    # a constant prior
    c = Schedule(total_steps=10, lambda_anneal=(1.0, 1.0))
    assert {c.lambda_at(t) for t in range(10)} == {0.1}


def test_single_event_when_t_e_equals_t_s():
    s = Schedule(total_steps=10, initial_warmup_steps=4, final_finetune_steps=5,
                 initial_sparsity=0.2, target_sparsity=0.8, prune_interval=1)
    assert s.t_s == s.t_e == 4
    assert events(s) == [4]
    # one event, straight to the target (no 0/0 in the cubic)
    assert s.sparsity(4) == 0.8 and s.sparsity(3) == 0.0
    assert math.isfinite(s.alpha(4)) and s.alpha(9) == 0.001
    assert s.phase(4) == "pruning" and s.phase(5) == "final"


def test_as_dict_round_trip():
    s = Schedule(total_steps=12, initial_warmup_steps=2, lambda_anneal=[1, 0.5])
    d = s.as_dict()
    assert d["lambda_anneal"] == [1.0, 0.5]
    assert s.lambda_anneal == (1.0, 0.5)
    assert Schedule(**{**d, "lambda_anneal": tuple(d["lambda_anneal"])}) == s


@pytest.mark.parametrize("kw, exc, match", [
    (dict(total_steps=0), ValueError, "total_steps"),
    (dict(total_steps=10.0), TypeError, "total_steps"),
    (dict(total_steps=True), TypeError, "total_steps"),
    (dict(total_steps=10, initial_warmup_steps=-1), ValueError, "initial_warmup_steps"),
    (dict(total_steps=10, final_finetune_steps=-1), ValueError, "final_finetune_steps"),
    (dict(total_steps=10, prune_interval=0), ValueError, "prune_interval"),
    (dict(total_steps=10, initial_warmup_steps=6, final_finetune_steps=4), ValueError,
     "total_steps must be larger"),
    (dict(total_steps=10, target_sparsity=1.0), ValueError, "target_sparsity"),
    (dict(total_steps=10, target_sparsity=-0.1), ValueError, "target_sparsity"),
    (dict(total_steps=10, initial_sparsity=1.0), ValueError, "initial_sparsity"),
    (dict(total_steps=10, initial_sparsity=0.5, target_sparsity=0.4), ValueError,
     "initial_sparsity"),
    (dict(total_steps=10, lambda_mix=0.0), ValueError, "lambda_mix"),
    (dict(total_steps=10, lambda_mix=1.0), ValueError, "lambda_mix"),
    (dict(total_steps=10, lambda_anneal=(1.0,)), ValueError, "lambda_anneal"),
    (dict(total_steps=10, lambda_anneal=None), ValueError, "lambda_anneal must be a pair"),
    (dict(total_steps=10, lambda_anneal="ab"), ValueError, "lambda_anneal must be a pair"),
    (dict(total_steps=10, lambda_anneal=(True, True)), ValueError, r"lambda_anneal\[0\]"),
    (dict(total_steps=10, target_sparsity=False), ValueError, "target_sparsity must be a number"),
    (dict(total_steps=10, lambda_mix=True), ValueError, "lambda_mix must be a number"),
    (dict(total_steps=10, lambda_anneal=(0.0, 1.0)), ValueError, r"lambda_anneal\[0\]"),
    # lambda_mix * alpha_f = 2 is not a mixture weight
    (dict(total_steps=10, lambda_mix=0.1, lambda_anneal=(1.0, 20.0)), ValueError,
     r"lambda_anneal\[1\]"),
])
def test_validation_names_the_argument(kw, exc, match):
    with pytest.raises(exc, match=match):
        Schedule(**kw)


def test_first_event_prunes_exactly_s_i():
    """s_i = 0.3, s_f = 0.9 (the authors' settings): in floats s_f + (s_i - s_f)
    * 1 is 0.29999999999999993, and floor(s_t * 1000) would be 299."""
    s = Schedule(total_steps=100, initial_warmup_steps=10, final_finetune_steps=10,
                 initial_sparsity=0.3, target_sparsity=0.9)
    assert s.sparsity(10) == 0.3 and s.num_pruned(10, 1000) == 300
    assert s.sparsity(89) == 0.9 and s.num_pruned(89, 1000) == 900
    # exact for every N, not only where the floats happen to round well
    for n in range(1, 3000):
        assert s.num_pruned(10, n) == (3 * n) // 10, n
        assert s.num_pruned(89, n) == (9 * n) // 10, n
    # between the ends, k = floor(s_t N) of the exact s_t
    t, n = 30, 12345
    s_t = Fraction(9, 10) + (Fraction(3, 10) - Fraction(9, 10)) * (1 - Fraction(20, 79)) ** 3
    assert s.num_pruned(t, n) == math.floor(s_t * n)
    assert s.sparsity(t) == float(s_t)


def test_first_event_of_an_optimizer_prunes_exactly_300_of_1000():
    w = torch.nn.Parameter(torch.linspace(0.01, 1.0, 1000).reshape(40, 25))
    opt = MGPP([w], lr=1e-9, total_steps=100, num_train_examples=100, initial_warmup_steps=10,
               final_finetune_steps=10, initial_sparsity=0.3, target_sparsity=0.9)
    for t in range(11):
        w.grad = torch.zeros_like(w)
        opt.step()
    assert opt.schedule_state()["last_k"] == 300
    assert int((w == 0).sum()) == 300
