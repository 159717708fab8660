"""Gradual n:m pruning: ``MGPP``, ``GMP`` and ``PLATON`` with ``pattern="n:m"``.

Every event is checked against a plain-PyTorch rendering of
``NMPattern``'s rule, from the same state: the event steps run with lr = 0,
so the weights the event ranks are the weights before the step, and the
step's result must be those weights times the reference's keep mask, bit
for bit. The final mask must be exactly n:m along each tensor's input dim.
"""
import copy

import pytest
import torch

import mgpp_ext
from mgpp_ext import GMP, MGPP, PLATON, prunable_param_groups
from mgpp_ext.patterns import NMPattern
from mgpp_ext.reference_nm import nm_mask_reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
PATTERNS = [(2, 4), (4, 8), (1, 4)]


def reference_event(scores, k, n, m, dims, final, path="capped"):
    """Keep masks of one n:m event, in plain PyTorch: each group's n largest
    scores are safe; of the rest, the k smallest over all tensors go (ties
    at the k-th included); at the last event every one of them goes."""
    if k == 0 and not final:
        return [torch.ones_like(s, dtype=torch.bool) for s in scores]
    if path == "project" and not final:
        flat = torch.cat([s.float().flatten() for s in scores])
        tau = torch.kthvalue(flat, k).values
        return [s.float() > tau for s in scores]
    safe = [nm_mask_reference(s, n, m, d) for s, d in zip(scores, dims)]
    if final or path == "project":
        return safe
    rest = torch.cat([s.float()[~keep] for s, keep in zip(scores, safe)])
    tau = torch.kthvalue(rest, k).values
    return [keep | (s.float() > tau) for s, keep in zip(scores, safe)]


def make_params(dtype, shapes=((8, 16), (12, 8), (4, 24))):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=g).to(dtype).requires_grad_() for s in shapes]


def build(method, params, n, m, total=24, path="capped", **kw):
    common = dict(lr=1e-2, total_steps=total, target_sparsity=1 - n / m, initial_warmup_steps=2,
                  final_finetune_steps=4, prune_interval=3,
                  pattern=NMPattern(n, m, path) if path != "capped" else f"{n}:{m}", **kw)
    if method == "mgpp":
        return MGPP(params, num_train_examples=100, sigma1_sq=1.0, **common)
    if method == "gmp":
        return GMP(params, **common)
    return PLATON(params, **common)


def run(opt, params, steps, check=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        t = opt.current_step
        for p in params:
            p.grad = torch.randn(p.shape, generator=g).to(p.dtype)
        event = opt.schedule.is_event(t)
        for group in opt.param_groups:
            group["lr"] = 0.0 if event else 1e-2
        before = [p.detach().clone() for p in params]
        opt.step()
        if event and check is not None:
            check(opt, t, before, params)


def groups_of(t, m, dim):
    return t.movedim(dim, -1).reshape(-1, m)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,m", PATTERNS)
@pytest.mark.parametrize("method", ["mgpp", "gmp"])
@pytest.mark.parametrize("path", ["capped", "project"])
def test_magnitude_events_match_reference(method, n, m, dtype, path):
    params = make_params(dtype)
    opt = build(method, params, n, m, path=path)
    seen = []

    def check(opt, t, before, after):
        sch = opt.schedule
        final = t == sch.t_e
        n_total = sum(p.numel() for p in before)
        k = sch.num_pruned(t, n_total)
        keeps = reference_event([b.abs() for b in before], k, n, m, [1] * 3, final, path)
        for b, a, keep in zip(before, after, keeps):
            want = b.masked_fill(~keep, 0.0)
            assert torch.equal(a.detach().view(torch.uint8), want.view(torch.uint8)), f"step {t}"
        seen.append(t)

    run(opt, params, opt.schedule.total_steps, check)
    assert seen == [t for t in range(opt.schedule.total_steps) if opt.schedule.is_event(t)]
    for p in params:
        mask = opt.state[p]["mask"]
        assert (groups_of(mask, m, 1).sum(1) == n).all()
        assert not p.detach()[~mask].any()


@pytest.mark.parametrize("n,m", PATTERNS)
def test_platon_events_match_reference(n, m):
    params = make_params(torch.float32)
    opt = build("platon", params, n, m)
    g = torch.Generator().manual_seed(1)
    for _ in range(opt.schedule.total_steps):
        t = opt.current_step
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        event = opt.schedule.is_event(t)
        final = t == opt.schedule.t_e
        for group in opt.param_groups:
            group["lr"] = 0.0 if event else 1e-2
        before = [p.detach().clone() for p in params]
        opt.step()
        if event and not final:  # the scores are freed after the last event
            k = opt.schedule.num_pruned(t, sum(p.numel() for p in params))
            keeps = reference_event(opt.scores(), k, n, m, [1] * 3, False)
            for b, a, keep in zip(before, params, keeps):
                assert torch.equal(a.detach(), b.masked_fill(~keep, 0.0)), f"step {t}"
    for p in params:
        mask = opt.state[p]["mask"]
        assert (groups_of(mask, m, 1).sum(1) == n).all()


@pytest.mark.parametrize("method", ["mgpp", "gmp", "platon"])
def test_events_prune_the_schedules_k_and_no_group_loses_more_than_m_minus_n(method):
    n, m = 2, 4
    params = make_params(torch.float32)
    opt = build(method, params, n, m)
    counts = []

    def check(opt, t, before, after):
        zeros = sum(int((a == 0).sum()) for a in after)
        counts.append((zeros, opt.schedule.num_pruned(t, sum(p.numel() for p in after))))
        for a in after:
            assert ((groups_of(a.detach(), m, 1) == 0).sum(1) <= m - n).all()

    run(opt, params, opt.schedule.total_steps, check)
    assert len(counts) >= 3
    assert all(z == k for z, k in counts), counts  # continuous random weights: no ties
    assert counts[-1][1] == sum(p.numel() for p in params) // 2


def test_conv1d_weights_run_along_dim0():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_embd=16, n_layer=2, n_head=2, n_positions=8, vocab_size=32)
    model = transformers.GPT2LMHeadModel(cfg)
    groups = prunable_param_groups(model)
    assert groups[0]["input_dims"] == [0] * len(groups[0]["params"])
    params = groups[0]["params"]
    opt = GMP(groups, lr=1e-2, total_steps=10, target_sparsity=0.5, initial_warmup_steps=1,
              final_finetune_steps=2, prune_interval=2, pattern="2:4")
    ids = torch.randint(0, 32, (2, 8))
    for _ in range(10):
        model(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    for p in params:
        mask = opt.state[p]["mask"]
        assert (groups_of(mask, 4, 0).sum(1) == 2).all()
        assert (groups_of(p.detach(), 4, 0) != 0).sum(1).le(2).all()


def test_linear_input_dim_is_last():
    model = torch.nn.Sequential(torch.nn.Linear(8, 4))
    groups = prunable_param_groups(model, patterns=[r"weight$"])
    assert groups[0]["input_dims"] == [1]


@pytest.mark.parametrize("method", ["mgpp", "gmp", "platon"])
def test_target_must_be_one_minus_n_over_m(method):
    params = make_params(torch.float32)
    with pytest.raises(ValueError, match=r"pattern '2:4'.*1 - 2/4 = 0\.5.*target_sparsity=0\.9"):
        kw = dict(lr=1e-2, total_steps=10, target_sparsity=0.9, pattern="2:4")
        {"mgpp": lambda: MGPP(params, num_train_examples=10, **kw), "gmp": lambda: GMP(params, **kw),
         "platon": lambda: PLATON(params, **kw)}[method]()


def test_input_dim_not_divisible_refused_by_name():
    model = torch.nn.Sequential(torch.nn.Linear(6, 4))
    groups = prunable_param_groups(model, patterns=[r"weight$"])
    with pytest.raises(ValueError, match=r"'0\.weight' has size 6 along dim 1"):
        GMP(groups, total_steps=10, target_sparsity=0.5, pattern="2:4")


@pytest.mark.parametrize("bad", ["2-4", "4:2", "0:4", "2:64", "a:b"])
def test_bad_pattern_refused(bad):
    with pytest.raises(ValueError, match="'n'|'m'|'pattern'"):
        GMP(make_params(torch.float32), total_steps=10, target_sparsity=0.5, pattern=bad)


@pytest.mark.parametrize("method", ["mgpp", "gmp", "platon"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_resume_is_bitwise(method, dtype):
    n, m = 2, 4
    a_params = make_params(dtype)
    a = build(method, a_params, n, m)
    run(a, a_params, 7)  # between events, two events in
    b_params = [p.detach().clone().requires_grad_() for p in a_params]
    b = build(method, b_params, n, m)
    b.load_state_dict(copy.deepcopy(a.state_dict()))  # as if saved: no tensor shared with a
    run(a, a_params, a.schedule.total_steps - 7, seed=5)
    run(b, b_params, b.schedule.total_steps - 7, seed=5)
    for p, q in zip(a_params, b_params):
        assert torch.equal(p.detach().view(torch.uint8), q.detach().view(torch.uint8))
        assert torch.equal(a.state[p]["mask"], b.state[q]["mask"])
    assert a.schedule_state() == b.schedule_state()


def test_checkpoint_of_another_pattern_refused():
    params = make_params(torch.float32)
    nm = GMP(params, total_steps=10, target_sparsity=0.5, pattern="2:4")
    dense = GMP(params, total_steps=10, target_sparsity=0.5)
    with pytest.raises(ValueError, match="hyper-parameter 'pattern' differs"):
        dense.load_state_dict(nm.state_dict())
    other = GMP(params, total_steps=10, target_sparsity=0.5, pattern=NMPattern(2, 4, "project"))
    with pytest.raises(ValueError, match="'pattern_path' differs"):
        other.load_state_dict(nm.state_dict())


def test_exported():
    assert mgpp_ext.NMPattern is NMPattern


def test_empty_prunable_tensor_with_a_pattern():
    """An empty tensor among the prunable ones has no candidate at the last
    event; the others still end exactly n:m and every step is counted."""
    ws = [torch.randn(0, 4, requires_grad=True), torch.randn(4, 8, requires_grad=True)]
    opt = GMP(ws, total_steps=4, target_sparsity=0.5, prune_interval=1, final_finetune_steps=1, pattern="2:4")
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        for w in ws:
            w.grad = torch.randn(w.shape, generator=g)
        opt.step()
    assert opt.current_step == 4
    assert ((ws[1] != 0).reshape(-1, 4).sum(1) == 2).all()
