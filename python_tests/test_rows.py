"""Exact per-row selection (``row_keep_mask``) against its plain-PyTorch rule,
and the per-row and per-tensor patterns of ``GMP``, ``MGPP`` and ``PLATON``.

The op's masks must equal the reference's exactly: the rule is exact (a
stable order with ties broken by index), so there is no tolerance. Each
pattern event runs with lr = 0, so that the event ranks the weights before
the step, and the step's result must be those weights times the reference
keep mask, bit for bit.
"""
import copy

import pytest
import torch
from torch.library import opcheck

from mgpp_ext import GMP, MGPP, PLATON, ops
from mgpp_ext.patterns import RowPattern, TensorPattern, parse
from mgpp_ext.reference_rows import row_keep_mask_reference
from mgpp_ext.rows import row_keep_mask
from test_nm_pattern import make_params, run  # the same params and lr-0 event loop

pytestmark = pytest.mark.skipif(ops.EXTENSION_ERROR is not None, reason="extension not built")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def scores_of(kind, shape, dtype, g):
    x = torch.randn(shape, generator=g)
    if kind == "ties":  # few distinct values: most of a row ties
        x = torch.randint(-2, 3, shape, generator=g).float()
        x.view(-1)[::5] = -0.0
    elif kind == "edge":
        flat = x.view(-1)
        flat[::7] = float("inf")
        flat[1::9] = float("-inf")
        flat[2::11] = float("nan")
        flat[3::13] = 1e-40
    return x.to(dtype)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="CUDA is not available"))])
@pytest.mark.parametrize("kind", ["random", "ties", "edge"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (7,), (5, 13), (3, 4, 33), (2, 70000)])
def test_matches_reference(shape, dtype, kind, device):
    g = torch.Generator().manual_seed(sum(shape))
    s = scores_of(kind, shape, dtype, g)
    length = shape[-1]
    for k in sorted({0, 1, length // 3, length // 2, length - 1, length}):
        got = row_keep_mask(s.to(device), k).cpu()
        want = row_keep_mask_reference(s, k)
        assert torch.equal(got, want), f"k = {k}"
        assert (got.reshape(-1, length).sum(1) == length - k).all()


def test_ties_keep_the_lower_index_and_non_contiguous():
    s = torch.zeros(4, 6)
    assert torch.equal(row_keep_mask(s, 2)[0], torch.tensor([True] * 4 + [False] * 2))
    t = torch.randn(6, 9).t()  # rows along a strided dim
    assert torch.equal(row_keep_mask(t, 4), row_keep_mask_reference(t.contiguous(), 4))


def test_bad_input_refused_by_name():
    with pytest.raises(ValueError, match="'k' must be in \\[0, 5\\]"):
        row_keep_mask(torch.randn(3, 5), 6)
    with pytest.raises(ValueError, match="'k' must be in"):
        row_keep_mask(torch.randn(3, 5), -1)
    with pytest.raises(ValueError, match="0-dim"):
        row_keep_mask(torch.tensor(1.0), 0)
    with pytest.raises(TypeError, match="'scores' must be float32, bfloat16 or float16"):
        row_keep_mask(torch.ones(3, 5, dtype=torch.int32), 1)
    with pytest.raises(TypeError, match="'k' must be an int"):
        row_keep_mask(torch.randn(3, 5), 1.5)


def test_opcheck(device):
    opcheck(torch.ops.mgpp_ext.row_keep_mask, (torch.randn(4, 9, device=device), 3))


# ------------------------------------------------------------- the patterns
def build(method, params, pattern, total=24, **kw):
    common = dict(lr=1e-2, total_steps=total, target_sparsity=0.7, initial_warmup_steps=2,
                  final_finetune_steps=4, prune_interval=3, pattern=pattern, **kw)
    if method == "mgpp":
        return MGPP(params, num_train_examples=100, sigma1_sq=1.0, **common)
    if method == "gmp":
        return GMP(params, **common)
    return PLATON(params, **common)


def reference_keep(before, pattern, sch, t, dims):
    return reference_keep_of([b.abs() for b in before], pattern, sch, t, dims)


def reference_keep_of(scores, pattern, sch, t, dims):
    """The keep masks of an event at step t that ranks ``scores`` per tensor
    or per row (along each tensor's input dim)."""
    out = []
    for s, d in zip(scores, dims):
        if pattern == "tensor":
            out.append(row_keep_mask_reference(s.reshape(1, -1), sch.num_pruned(t, s.numel()))
                       .view(s.shape))
        else:
            rows = s.movedim(d, -1)
            out.append(row_keep_mask_reference(rows, sch.num_pruned(t, rows.shape[-1]))
                       .movedim(-1, d))
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pattern", ["row", "tensor"])
@pytest.mark.parametrize("method", ["mgpp", "gmp"])
def test_events_match_reference(method, pattern, dtype):
    params = make_params(dtype)
    opt = build(method, params, pattern)
    seen = []

    def check(opt, t, before, after):
        for b, a, keep in zip(before, after, reference_keep(before, pattern, opt.schedule, t,
                                                           [1, 1, 1])):
            want = b.masked_fill(~keep, 0.0)
            assert torch.equal(a.detach().view(torch.uint8), want.view(torch.uint8)), f"step {t}"
        seen.append(t)

    run(opt, params, opt.schedule.total_steps, check)
    assert seen == [t for t in range(opt.schedule.total_steps) if opt.schedule.is_event(t)]
    for p in params:  # the final masks hold the target exactly, per row / per tensor
        mask = opt.state[p]["mask"]
        if pattern == "row":
            assert (mask.sum(1) == p.shape[1] - int(0.7 * p.shape[1])).all()
        else:
            assert int(mask.sum()) == p.numel() - int(0.7 * p.numel())
        assert not p.detach()[~mask].any()


@pytest.mark.parametrize("pattern", ["row", "tensor"])
def test_platon_events_match_reference(pattern):
    """PLATON ranks its own scores (Ibar * U), not |w|: at each event before
    the last (lr = 0) the weights are the ones before the step times the
    reference keep mask of ``opt.scores()`` per row / per tensor."""
    params = make_params(torch.float32)
    opt = build("platon", params, pattern)
    g = torch.Generator().manual_seed(1)
    checked = 0
    for _ in range(opt.schedule.total_steps):
        t = opt.current_step
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        event = opt.schedule.is_event(t)
        for group in opt.param_groups:
            group["lr"] = 0.0 if event else 1e-2
        before = [p.detach().clone() for p in params]
        opt.step()
        if event and t != opt.schedule.t_e:  # the scores are freed after the last event
            scores = [s.float() for s in opt.scores()]
            assert not all(torch.equal(s, b.abs()) for s, b in zip(scores, before))  # not |w|
            for b, a, keep in zip(before, params, reference_keep_of(scores, pattern, opt.schedule, t, [1, 1, 1])):
                assert torch.equal(a.detach(), b.masked_fill(~keep, 0.0)), f"step {t}"
            checked += 1
    assert checked >= 2
    for p in params:
        mask = opt.state[p]["mask"]
        if pattern == "row":
            assert (mask.sum(1) == p.shape[1] - int(0.7 * p.shape[1])).all()
        else:
            assert int(mask.sum()) == p.numel() - int(0.7 * p.numel())


def test_rows_follow_the_input_dim():
    # A GPT-2 Conv1D weight is [in, out]: its rows run along dim 0.
    w = torch.randn(16, 6, requires_grad=True)
    opt = GMP([{"params": [w], "input_dims": [0]}], lr=0.0, total_steps=4, target_sparsity=0.5,
              prune_interval=1, pattern="row")
    for _ in range(4):
        w.grad = torch.zeros_like(w)
        opt.step()
    assert (opt.state[w]["mask"].sum(0) == 8).all()


@pytest.mark.parametrize("pattern", ["row", "tensor"])
def test_resume_is_bitwise(pattern):
    a_params = make_params(torch.bfloat16)
    a = build("gmp", a_params, pattern)
    run(a, a_params, 7)
    b_params = [p.detach().clone().requires_grad_() for p in a_params]
    b = build("gmp", b_params, pattern)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    run(a, a_params, a.schedule.total_steps - 7, seed=5)
    run(b, b_params, b.schedule.total_steps - 7, seed=5)
    for p, q in zip(a_params, b_params):
        assert torch.equal(p.detach().view(torch.uint8), q.detach().view(torch.uint8))
    other = build("gmp", make_params(torch.bfloat16), "tensor" if pattern == "row" else "row")
    with pytest.raises(ValueError, match="hyper-parameter 'pattern' differs"):
        other.load_state_dict(a.state_dict())


def test_parse():
    assert isinstance(parse("row"), RowPattern) and isinstance(parse("tensor"), TensorPattern)
    with pytest.raises(ValueError, match="'pattern' must be None, 'global', 'tensor', 'row' or"):
        parse("rows")
