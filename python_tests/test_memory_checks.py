"""The in-place ops refuse tensors that share memory where one is written:
an expanded view as an output, one tensor passed in two lists (a param
twice, exp_avg as exp_avg_sq, a grad that is a moment), and leave every
tensor as it was. Views of one buffer that share no element (column
slices, halves) are accepted and give the bits of separate tensors."""
import pytest
import torch

from mgpp_ext import ops
from mgpp_ext import regulariser_ops as rops
from mgpp_ext import score_ops
from mgpp_ext.nm import nm_prune_

pytestmark = pytest.mark.skipif(ops.EXTENSION_ERROR is not None, reason="extension not built")

HP = dict(lr=1e-2, beta1=0.9, beta2=0.98, eps=1e-6, weight_decay=0.01, step=1)


def fresh(seed=0, shape=(8, 12)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g)


def adamw_lists(k=2):
    p = [fresh(i) for i in range(k)]
    g = [fresh(10 + i) for i in range(k)]
    m = [fresh(20 + i) * 0.1 for i in range(k)]
    v = [fresh(30 + i).abs() * 0.1 for i in range(k)]
    return p, g, m, v


def snapshot(*lists):
    return [[t.clone() for t in lst] for lst in lists]


def unchanged(before, *lists):
    return all(torch.equal(a, b) for bl, lst in zip(before, lists) for a, b in zip(bl, lst))


def mgpp_step(p, g, m, v):
    ops.mgpp_step_(p, g, m, v, [], torch.empty(0, dtype=torch.long), apply_prior=False, **HP)


def admm_step(p, g, m, v):
    a = [torch.zeros_like(t) for t in p]
    k = [rops.new_dual_mask(t) for t in p]
    rops.admm_step_(p, g, m, v, a, k, rho=0.5, **HP)


def srste_step(p, g, m, v):
    dense = [t.clone() for t in p]
    masks = [torch.ones_like(t, dtype=torch.bool) for t in p]
    rops.srste_step_(p, g, dense, m, v, masks, lambda_w=0.0, n=2, m=4, dims=[1] * len(p),
                     update_mask=True, **HP)


def movement_step(p, g, m, v):
    s = [torch.zeros_like(t) for t in p]
    score_ops.movement_step_(p, g, m, v, s, score_lr=0.1, **HP)


STEPS = {"mgpp_step_": mgpp_step, "admm_step_": admm_step, "srste_step_": srste_step,
         "movement_step_": movement_step}


def aliased(case):
    """AdamW lists where two entries share memory, and the words the error must name."""
    p, g, m, v = adamw_lists()
    if case == "param_twice":
        p[1] = p[0]
        return (p, g, m, v), r"'params\[0\]' and 'params\[1\]' share memory"
    if case == "exp_avg_is_exp_avg_sq":
        v[0] = m[0]
        return (p, g, m, v), r"'exp_avgs\[0\]' and 'exp_avg_sqs\[0\]' share memory"
    if case == "grad_is_a_moment":
        g[1] = m[1]
        return (p, g, m, v), r"'grads\[1\]' and 'exp_avgs\[1\]' share memory"
    if case == "moment_overlaps_param":  # the second half of p[0] is m[1]'s buffer
        buf = torch.randn(16, 12)
        p[0], m[1] = buf[:8], buf[4:12]
        return (p, g, m, v), r"'params\[0\]' and 'exp_avgs\[1\]' share memory"
    assert case == "expanded_moment"
    v[1] = torch.ones(1, 12).expand(8, 12)
    return (p, g, m, v), r"'exp_avg_sqs\[1\]' has elements that share memory"


@pytest.mark.parametrize("case", ["param_twice", "exp_avg_is_exp_avg_sq", "grad_is_a_moment",
                                  "moment_overlaps_param", "expanded_moment"])
@pytest.mark.parametrize("op", list(STEPS))
def test_steps_refuse_shared_memory_before_writing(op, case):
    lists, match = aliased(case)
    before = snapshot(*lists)
    with pytest.raises(ValueError, match=f"{op}: {match}"):
        STEPS[op](*lists)
    assert unchanged(before, *lists)


@pytest.mark.parametrize("op", list(STEPS))
def test_steps_accept_disjoint_views_of_one_buffer(op):
    """Params that are the even and odd columns of one matrix, and moments
    that are its two halves: no element is shared, so the step runs, and
    gives the bits of the same step on separate tensors."""
    p, g, m, v = adamw_lists()
    buf = torch.stack(p, dim=2).reshape(8, 24)  # p[0] = buf[:, ::2], p[1] = buf[:, 1::2]
    mbuf = torch.cat(m)
    views = [buf[:, ::2], buf[:, 1::2]], g, [mbuf[:8], mbuf[8:]], [t.clone() for t in v]
    assert torch.equal(views[0][0], p[0]) and torch.equal(views[0][1], p[1])
    STEPS[op](*views)
    STEPS[op](p, g, m, v)
    for a, b in zip(views[0] + views[2] + views[3], p + m + v):
        assert torch.equal(a, b)


def test_apply_mask_and_threshold_refuse_shared_memory():
    a, b = fresh(0), fresh(1)
    keep = [torch.rand(8, 12) > 0.5 for _ in range(2)]
    before = snapshot([a])
    with pytest.raises(ValueError, match=r"apply_mask_: 'tensors\[1\]' has elements that share memory"):
        ops.apply_mask_([a, torch.ones(1).expand(8, 12)], keep)
    with pytest.raises(ValueError, match=r"apply_mask_: 'tensors\[0\]' and 'tensors\[1\]' share memory"):
        ops.apply_mask_([a, a], keep)
    state = ops.new_select_state(10, "cpu")
    with pytest.raises(ValueError, match=r"apply_threshold_: 'tensors\[0\]' and 'tensors\[1\]' share memory"):
        ops.apply_threshold_([a, a[2:]], state)
    assert unchanged(before, [a])
    ops.apply_mask_([a, b], keep)  # separate tensors: fine


def test_admm_projections_refuse_shared_memory():
    p = [fresh(0)]
    a = [fresh(1)]
    k = [rops.new_dual_mask(p[0])]
    before = snapshot(p, a, k)
    with pytest.raises(ValueError, match=r"admm_combine_: 'params\[0\]' and 'duals\[0\]' share memory"):
        rops.admm_combine_(p, p, k)
    with pytest.raises(ValueError, match=r"admm_project_: 'params\[0\]' and 'duals\[0\]' share memory"):
        rops.admm_project_(p, p, k, 2, 4, [1])
    two = [fresh(2), fresh(3)]
    with pytest.raises(ValueError, match=r"admm_project_: 'dual_masks\[0\]' and 'dual_masks\[1\]' share memory"):
        rops.admm_project_(two, [t.clone() for t in two], [k[0], k[0]], 2, 4, [1, 1])
    assert unchanged(before, p, a, k)


def test_nm_prune_refuses_shared_outputs_and_accepts_disjoint_halves():
    w = fresh(0, (8, 8))
    before = w.clone()
    with pytest.raises(ValueError, match=r"nm_prune_: 'tensors\[0\]' and 'tensors\[1\]' share memory"):
        nm_prune_([w, w[:4]], 2, 4, [1, 1])
    mask = torch.ones(8, 8, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"nm_prune_: 'masks\[0\]' has elements that share memory"):
        nm_prune_([w], 2, 4, [1], masks=[torch.ones(1, 8, dtype=torch.bool).expand(8, 8)])
    assert torch.equal(w, before) and mask.all()
    # The left half pruned by the right half's scores: no element shared.
    left, right = w[:, :4], w[:, 4:]
    want = left.clone()
    nm_prune_([want], 2, 4, [1], scores=[right.clone()])
    nm_prune_([left], 2, 4, [1], scores=[right])
    assert torch.equal(left, want) and torch.equal(w[:, 4:], before[:, 4:])


def test_unfolded_output_refused():
    """Windows that overlap (unfold) share elements without a zero stride:
    torch's own test gives up on them, the exact count does not."""
    p, g, m, v = adamw_lists(1)
    buf = torch.zeros(98)
    v = [buf.unfold(0, 12, 11)[:8]]  # 8 windows of 12, each sharing one element with the next
    assert v[0].shape == (8, 12)
    before = snapshot(p, m, [buf])
    with pytest.raises(ValueError, match=r"mgpp_step_: 'exp_avg_sqs\[0\]' has elements that share memory"):
        mgpp_step(p, g, m, v)
    assert unchanged(before, p, m, [buf])
    # Windows that touch but do not share an element are fine.
    v_ok = [torch.zeros(96).unfold(0, 12, 12)]
    mgpp_step(p, g, m, v_ok)


def test_second_histogram_must_be_its_own():
    p, g, m, v = adamw_lists(1)
    hist = torch.zeros(ops.HIST_BINS, dtype=torch.long)
    before = snapshot(p)
    with pytest.raises(ValueError, match=r"mgpp_step_: 'hist\[0\]' and 'hist1\[0\]' share memory"):
        ops.mgpp_step_(p, g, m, v, [], hist, apply_prior=False, hist1=hist, hist1_lo=1, **HP)
    assert unchanged(before, p)
