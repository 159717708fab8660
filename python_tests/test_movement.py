"""Movement pruning and MGPP+PLATON against the plain-PyTorch reference;
the fused movement_step_ op; the exact signed threshold; resume; bad input."""
import pytest
import torch

from mgpp_ext import MGPPPlaton, Movement, score_ops
from mgpp_ext.reference import ReferenceMGPP
from mgpp_ext.regularisers import MixturePrior
from mgpp_ext.scores import MovementScore
from conftest import bits
from test_baselines import check_resume
from test_step_vs_reference import (DTYPES, EVENTS, HYPER, SCHEDULE, assert_near, lockstep, make_groups,
                                    make_params, set_grads)

ADAM = dict(lr=2e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
PRIOR = {k: HYPER[k] for k in ("num_train_examples", "lambda_mix", "sigma0_sq", "sigma1_sq", "lambda_anneal")}


def build(device, dtype, method, **overrides):
    opt_groups, flat, flags = make_groups(device, dtype)
    if method == "movement":
        kw = {**ADAM, **SCHEDULE, "score_lr": 0.5, **overrides}
        opt = Movement(opt_groups, **kw)
        ref_kw = dict(kw, num_train_examples=1)
    else:
        kw = {**ADAM, **SCHEDULE, **PRIOR, **overrides}
        opt = MGPPPlaton(opt_groups, **kw)
        ref_kw = kw
    ref_params = [p.detach().clone() for p in flat]
    ref = ReferenceMGPP(ref_params, flags, method=method, **ref_kw)
    return opt, flat, ref, ref_params, flags


def copy_scores(opt, params, ref, flags):
    """Start the reference's movement scores from the optimizer's."""
    for i, p in enumerate(params):
        if flags[i] and "movement_score" in opt.state.get(p, {}):
            ref.movement[i].copy_(opt.state[p]["movement_score"])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("method", ["movement", "mgpp_platon"])
def test_whole_schedule_matches_reference(device, method, dtype):
    opt, params, ref, ref_params, flags = build(device, dtype, method)
    pruned = [i for i, f in enumerate(flags) if f]
    exact = device == "cpu"
    for t in range(SCHEDULE["total_steps"]):
        set_grads(t, params, ref_params)
        lockstep(opt, params, ref, ref_params)
        copy_scores(opt, params, ref, flags)
        opt.step()
        ref.step()
        for i, (a, b) in enumerate(zip(params, ref_params)):
            assert_near(a, b, dtype, f"{method} step {t} param {i}", exact=exact)
            if i in pruned:
                assert torch.equal(a == 0, b == 0), f"{method} step {t} param {i}: zero patterns differ"
                if method == "movement" and t < SCHEDULE["total_steps"] - SCHEDULE["final_finetune_steps"] - 1:
                    s = opt.state[a]["movement_score"]
                    if exact:
                        assert torch.equal(bits(s), bits(ref.movement[i])), f"step {t} score {i}"
                    else:
                        torch.testing.assert_close(s, ref.movement[i], rtol=1e-5, atol=1e-8)
        if t in EVENTS:
            assert opt.last_threshold == ref.last_threshold, (t, opt.last_threshold, ref.last_threshold)
    assert opt.schedule_state()["events"] == len(EVENTS)
    n = sum(params[i].numel() for i in pruned)
    assert sum(int((params[i] == 0).sum()) for i in pruned) >= int(SCHEDULE["target_sparsity"] * n)
    if method == "movement":
        assert all("movement_score" not in opt.state[params[i]] for i in pruned)  # freed at t_e
    else:
        assert opt.current_lambda == 0.0


def test_movement_scores_are_signed_and_used():
    """A weight that grows away from zero gains score; one pushed towards
    zero loses it. Movement prunes the second even when it is the larger."""
    w = torch.tensor([[2.0, 0.5, 0.5, 0.5]])
    opt = Movement([w], lr=1e-3, total_steps=6, initial_warmup_steps=3, final_finetune_steps=1,
                   prune_interval=1, initial_sparsity=0.25, target_sparsity=0.25)
    for _ in range(3):
        w.grad = torch.tensor([[1.0, -1.0, -0.5, -0.2]])  # shrinks w[0], grows the others
        opt.step()
    s = opt.scores()[0]
    assert s[0, 0] < 0 < s[0, 3] < s[0, 2] < s[0, 1]
    w.grad = torch.tensor([[1.0, -1.0, -0.5, -0.2]])
    opt.step()  # the first event: 1 of 4 pruned
    assert w[0, 0] == 0 and (w[0, 1:] != 0).all()


@pytest.mark.parametrize("k_case", ["negative", "zero", "positive"])
def test_signed_threshold_is_the_exact_kth(k_case):
    """Events._signed_threshold against kthvalue: k-th among the negatives,
    at the ties at zero, and among the positives; -0.0 counts as zero."""
    g = torch.Generator().manual_seed(3)
    scores = [torch.randn(37, 11, generator=g), torch.randn(5, 16, generator=g) * 1e-30]
    scores[0][0, :7] = 0.0
    scores[0][1, :5] = -0.0
    scores[1][0, 3] = scores[1][0, 4] = scores[1][0, 5]  # ties
    flat = torch.cat([s.reshape(-1) for s in scores])
    n_neg = int((flat < 0).sum())
    n_zero = int((flat == 0).sum())
    k = {"negative": n_neg // 2, "zero": n_neg + n_zero // 2, "positive": n_neg + n_zero + 17}[k_case]
    w = torch.randn(4, 4)
    opt = Movement([w], total_steps=4)
    tau = opt._signed_threshold(scores, k, flat.numel())
    want = torch.kthvalue(flat, k).values
    assert float(tau) == float(want), (k_case, float(tau), float(want))
    for k in (1, n_neg, n_neg + 1, flat.numel()):
        assert float(opt._signed_threshold(scores, k, flat.numel())) == float(torch.kthvalue(flat, k).values)


def op_reference(p, g, m, v, s, *, lr, beta1, beta2, eps, weight_decay, step, score_lr):
    """movement_step_ in plain PyTorch: the score, then ReferenceMGPP's AdamW."""
    ref_p = p.detach().clone()
    ref_p.grad = g.clone()
    ref = ReferenceMGPP([ref_p], [False], lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay,
                        total_steps=10, num_train_examples=1, method="gmp")
    ref.steps[0] = step - 1
    ref.exp_avg[0], ref.exp_avg_sq[0] = m.clone(), v.clone()
    s_new = s - torch.mul(g.float() * p.float(), score_lr)
    ref.step()
    return ref_p, ref.exp_avg[0], ref.exp_avg_sq[0], s_new


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1,), (7,), (33, 5), (130, 17)])
@pytest.mark.parametrize("state_fp32", [False, True])
def test_movement_step_op_bitwise(dtype, shape, state_fp32):
    if dtype == torch.float32 and state_fp32:
        pytest.skip("the same case")
    g_ = torch.Generator().manual_seed(hash(shape) % 1000)
    sd = torch.float32 if state_fp32 else dtype
    p = torch.randn(shape, generator=g_).to(dtype)
    g = torch.randn(shape, generator=g_).to(dtype)
    g.view(-1)[0] = 0.0
    p.view(-1)[-1] = 0.0
    m = (0.1 * torch.randn(shape, generator=g_)).to(sd)
    v = torch.rand(shape, generator=g_).to(sd) * 0.01
    s = torch.randn(shape, generator=g_)
    hyper = dict(lr=3e-3, beta1=0.9, beta2=0.98, eps=1e-6, weight_decay=0.01, step=5, score_lr=0.37)
    want = op_reference(p, g, m.float(), v.float(), s, **hyper)
    score_ops.movement_step_([p], [g], [m], [v], [s], **hyper)
    for got, exp, name in zip((p, m, v, s), want, ("param", "exp_avg", "exp_avg_sq", "score")):
        assert torch.equal(bits(got), bits(exp.to(got.dtype))), name


def test_movement_step_op_non_contiguous_and_gate():
    base = torch.randn(16, 24)
    p = base[:, ::2]
    g = torch.randn(16, 12)
    m, v, s = torch.zeros(16, 12), torch.zeros(16, 12), torch.randn(24, 16).t()[:, :12]
    hyper = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=1, score_lr=1.0)
    want = op_reference(p.contiguous(), g, m, v, s.contiguous(), **hyper)
    before = [t.clone() for t in (p, m, v, s)]
    score_ops.movement_step_([p], [g], [m], [v], [s], **hyper, apply_if=torch.tensor([False]))
    assert all(torch.equal(a, b) for a, b in zip((p, m, v, s), before))
    score_ops.movement_step_([p], [g], [m], [v], [s], **hyper, apply_if=torch.tensor([True]))
    for got, exp in zip((p, m, v, s), want):
        assert torch.equal(got, exp)


def test_movement_step_op_bad_input():
    p, g, m, v = (torch.randn(4, 4) for _ in range(4))
    hyper = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=1)
    with pytest.raises(ValueError, match="scores"):
        score_ops.movement_step_([p], [g], [m], [v], [torch.zeros(4, 4, dtype=torch.float64)], **hyper,
                                 score_lr=1.0)
    with pytest.raises(ValueError, match="scores"):
        score_ops.movement_step_([p], [g], [m], [v], [torch.zeros(4, 5)], **hyper, score_lr=1.0)
    with pytest.raises(ValueError, match="scores"):
        score_ops.movement_step_([p], [g], [m], [v], [], **hyper, score_lr=1.0)
    with pytest.raises(ValueError, match="score_lr"):
        score_ops.movement_step_([p], [g], [m], [v], [torch.zeros(4, 4)], **hyper, score_lr=0.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("method", ["movement", "mgpp_platon"])
@pytest.mark.parametrize("resume_at", [2, 6, 17, 20])
def test_resume_is_bitwise(method, resume_at, dtype):
    def fresh():
        ps = [p for _, group in make_params("cpu", dtype) for p in group]
        if method == "movement":
            return Movement(ps, **ADAM, **SCHEDULE, score_lr=0.5), ps
        return MGPPPlaton(ps, **ADAM, **SCHEDULE, **PRIOR), ps

    def scores_fp32(opt, ps):
        if method == "movement" and resume_at < 17:
            assert all(opt.state[p]["movement_score"].dtype == torch.float32 for p in ps if p.dim() >= 2)
    check_resume(fresh, resume_at, scores_fp32)


def test_inf_grad_changes_no_score():
    w = torch.randn(8, 8)
    opt = Movement([w], total_steps=10, on_nonfinite="skip")
    w.grad = torch.randn(8, 8)
    opt.step()
    s = opt.scores()[0]
    w0 = w.clone()
    w.grad = torch.randn(8, 8)
    w.grad[2, 3] = float("inf")
    opt.step()
    assert torch.equal(opt.scores()[0], s) and torch.equal(w, w0)
    assert opt.schedule_state()["skipped_steps"] == 1


def test_bad_arguments_refused_by_name():
    w = [torch.randn(4, 4)]
    for bad in (0.0, -1.0, float("inf"), "1", True):
        with pytest.raises(ValueError, match="score_lr"):
            Movement(w, total_steps=10, score_lr=bad)
    with pytest.raises(ValueError, match="pattern"):
        Movement(w, total_steps=10, pattern="2:4")
    with pytest.raises(ValueError, match="pattern"):
        Movement(w, total_steps=10, pattern="columns")
    with pytest.raises(ValueError, match="importance_betas"):
        MGPPPlaton(w, total_steps=10, num_train_examples=10, importance_betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="sigma0_sq"):
        MGPPPlaton(w, total_steps=10, num_train_examples=10, sigma0_sq=1.0, sigma1_sq=0.5)


def test_movement_score_with_a_regulariser_refused():
    from mgpp_ext import PruningOptimizer
    from mgpp_ext.patterns import GlobalPattern
    from mgpp_ext.schedule import Schedule

    class Both(PruningOptimizer):
        method = "both"

    with pytest.raises(TypeError, match="movement"):
        Both([torch.randn(4, 4)], 1e-3, (0.9, 0.99), 1e-8, 0.0, schedule=Schedule(total_steps=10),
             score=MovementScore(), pattern=GlobalPattern(), regulariser=MixturePrior(10, 1e-8, 0.05))


def test_checkpoints_of_other_methods_refused():
    from mgpp_ext import GMP, PLATON
    ps = [torch.randn(8, 8)]
    with pytest.raises(ValueError, match="method"):
        Movement(ps, total_steps=10).load_state_dict(GMP(ps, total_steps=10).state_dict())
    with pytest.raises(ValueError, match="method"):
        MGPPPlaton(ps, total_steps=10, num_train_examples=5).load_state_dict(PLATON(ps, total_steps=10).state_dict())
    with pytest.raises(ValueError, match="score_lr"):
        Movement(ps, total_steps=10, score_lr=2.0).load_state_dict(Movement(ps, total_steps=10).state_dict())


@pytest.mark.parametrize("pattern", ["tensor", "row"])
def test_movement_tensor_and_row_patterns_rank_signed_scores(pattern):
    """Each tensor (row) drops exactly its own floor(s_t N) lowest signed
    scores, the most negative first."""
    g = torch.Generator().manual_seed(6)
    ws = [torch.randn(6, 10, generator=g), torch.randn(4, 20, generator=g)]
    opt = Movement(ws, lr=1e-3, total_steps=8, initial_warmup_steps=3, final_finetune_steps=2, prune_interval=1,
                   initial_sparsity=0.5, target_sparsity=0.5, pattern=pattern)
    for t in range(4):
        for w in ws:
            w.grad = torch.randn(w.shape, generator=g)
        opt.step()
    # the event at t = 3 ranked the scores after step 3's accumulation
    after = opt.scores()
    for w, s in zip(ws, after):
        rows = s.reshape(1, -1) if pattern == "tensor" else s
        wr = w.reshape(1, -1) if pattern == "tensor" else w
        for srow, wrow in zip(rows, wr):
            k = srow.numel() // 2
            dropped = torch.argsort(srow)[:k]
            assert (wrow[dropped] == 0).all() and int((wrow == 0).sum()) == k
