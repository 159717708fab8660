"""on_nonfinite="propagate": no per-step inf/NaN check, as torch.optim.AdamW.

With finite gradients it is the same step as "raise" (bitwise, from the
same state). An inf/NaN gradient between the steps that rank weights across
groups (pruning events, ADMM's global projections) reaches the weights it
touches, as AdamW's would; the next such step refuses to rank it and changes
nothing. An n:m ranking (SR-STE's mask updates, ADMM's n:m projections)
orders inf/NaN above every number, so it is not checked: the NaN is kept in
its own group. The mask learner over frozen weights does not offer it.
"""
import pytest
import torch

from mgpp_ext import ADMM, GMP, MGPP, PLATON, SRSTE, AdaptByPruning, MGPPPlaton, Movement
from mgpp_ext.reference_nm import nm_mask_reference
from mgpp_ext.regulariser_ops import unpack_dual_mask

SCHED = dict(total_steps=24, initial_warmup_steps=2, final_finetune_steps=4, prune_interval=3,
             target_sparsity=0.5)
BUILDERS = {
    "mgpp": lambda ps, **kw: MGPP(ps, lr=1e-2, num_train_examples=100, **SCHED, **kw),
    "gmp": lambda ps, **kw: GMP(ps, lr=1e-2, **SCHED, **kw),
    "platon": lambda ps, **kw: PLATON(ps, lr=1e-2, **SCHED, **kw),
    "movement": lambda ps, **kw: Movement(ps, lr=1e-2, score_lr=0.5, **SCHED, **kw),
    "mgpp_platon": lambda ps, **kw: MGPPPlaton(ps, lr=1e-2, num_train_examples=100, **SCHED, **kw),
    "admm": lambda ps, **kw: ADMM(ps, lr=1e-2, total_steps=24, pattern="2:4", rho=0.5, admm_interval=4,
                                  final_finetune_steps=4, **kw),
    "admm_global": lambda ps, **kw: ADMM(ps, lr=1e-2, total_steps=24, pattern=0.5, rho=0.5, admm_interval=4,
                                         final_finetune_steps=4, **kw),
    "srste": lambda ps, **kw: SRSTE(ps, lr=1e-2, pattern="2:4", mask_interval=3, **kw),
}
# The methods that check some step (SR-STE checks none).
CHECKING = [m for m in sorted(BUILDERS) if m != "srste"]
# What each method's checked steps rank, as the error names it (n:m
# rankings are not checked: SR-STE checks no step, n:m ADMM its event only).
RANKING = {"admm_global": "the ADMM projection"}


def make(device, method, on_nonfinite, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.nn.Parameter(torch.randn(12, 16, generator=gen).to(device))
    v = torch.nn.Parameter(torch.randn(8, 12, generator=gen).to(device))
    b = torch.nn.Parameter(torch.randn(8, generator=gen).to(device))
    return [w, v, b], BUILDERS[method]([w, v, b], on_nonfinite=on_nonfinite)


def fill(params, t, nan_at=None):
    gen = torch.Generator().manual_seed(1000 + t)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(p.device)
    if nan_at is not None:
        params[0].grad[nan_at] = float("nan")


def snapshot(params, opt):
    state = [(k, v.clone()) for p in params for k, v in sorted(opt.state.get(p, {}).items())
             if torch.is_tensor(v)]
    return [p.detach().clone() for p in params], state


def identical(x, y):
    """Bitwise equal (a NaN equals the same NaN)."""
    if x.dtype != y.dtype or x.shape != y.shape:
        return False
    if x.dtype == torch.float32:
        return torch.equal(x.view(torch.int32), y.view(torch.int32))
    return torch.equal(x, y)


def same(a, b):
    (pa, sa), (pb, sb) = a, b
    return (all(identical(x, y) for x, y in zip(pa, pb))
            and [k for k, _ in sa] == [k for k, _ in sb]
            and all(identical(x, y) for (_, x), (_, y) in zip(sa, sb)))


def checked_steps(method, opt, upto):
    """The steps "propagate" checks: those that rank weights."""
    if method == "admm_global":
        # the first projection (before step 0), those after steps 3, 7, 11
        # and 15, and the hard projection at t_e = 24 - 4 - 1 (an event)
        return [t for t in [0, 3, 7, 11, 15, 19] if t < upto]
    if method == "admm":
        return [t for t in [19] if t < upto]  # its n:m projections are not checked; t_e is an event
    if method == "srste":
        return []  # its n:m mask updates are not checked, and it has no events
    return [t for t in range(upto) if opt.schedule.is_event(t)]


def dense_of(opt, ps):
    """The tensor a gradient's NaN reaches: SR-STE's dense W (its param
    holds W M, where a dropped weight stays 0), else the param."""
    return opt.dense_weights()[0] if isinstance(opt, SRSTE) else ps[0]


@pytest.mark.parametrize("method", sorted(BUILDERS))
def test_same_step_as_raise_when_finite(device, method):
    ps, opt = make(device, method, "propagate")
    qs, ref = make(device, method, "raise")
    for t in range(20):
        fill(ps, t)
        fill(qs, t)
        opt.step()
        ref.step()
        assert same(snapshot(ps, opt), snapshot(qs, ref)), f"{method}: step {t} differs from on_nonfinite='raise'"
    assert opt.schedule_state()["events"] == ref.schedule_state()["events"]


@pytest.mark.parametrize("method", sorted(BUILDERS))
def test_checks_exactly_the_steps_that_rank(device, method):
    ps, opt = make(device, method, "propagate")
    seen = []
    inner = opt._check_event_inputs

    def spy(prunable, t, ranking="the pruning event"):
        seen.append((t, ranking))
        return inner(prunable, t, ranking)

    opt._check_event_inputs = spy
    for t in range(24):
        fill(ps, t)
        opt.step()
    want = checked_steps(method, opt, 24)
    assert [t for t, _ in seen] == want, f"{method}: checked {seen}, want {want}"
    for t, ranking in seen:
        expected = RANKING.get(method, "the pruning event")
        if method == "admm_global":
            expected = ("the first ADMM projection" if t == 0 else
                        "the pruning event" if t == 19 else expected)
        assert ranking == expected, f"{method}: step {t} named {ranking!r}"


def test_steps_checked_back_to_back_read_only_the_gradients(monkeypatch):
    """ADMM with a global pattern ranks every step with admm_interval=1:
    after the first check every step was checked, so the weights cannot hold
    what a step let in, and only the gradients are read (as "raise" does).
    A loaded state is read in full again."""
    from mgpp_ext.engine import nonfinite

    reads = []
    inner = nonfinite._all_finite
    monkeypatch.setattr(nonfinite, "_all_finite", lambda xs: reads.append(1) or inner(xs))
    gen = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(8, 16, generator=gen))
    opt = ADMM([w], lr=1e-2, total_steps=20, pattern=0.5, rho=0.5, admm_interval=1,
               final_finetune_steps=4, on_nonfinite="propagate")
    for t in range(4):
        w.grad = torch.randn(w.shape, generator=gen)
        opt.step()
    assert len(reads) == 2  # step 0: the weights and Z, U (none yet); no score state yet
    opt.load_state_dict(opt.state_dict())
    w.grad = torch.randn(w.shape, generator=gen)
    opt.step()
    assert len(reads) == 5  # the weights, the scores and Z, U of the loaded state


@pytest.mark.parametrize("method", CHECKING)
def test_nan_between_events_reaches_the_weights_and_the_next_event_refuses(device, method):
    ps, opt = make(device, method, "propagate")
    evs = checked_steps(method, opt, 20)
    # after the first checked step, or from step 1 where that is the only one
    t_bad = next(t for t in range(evs[0] + 1 if len(evs) > 1 else 1, 20) if t not in evs)
    t_next = next(t for t in evs if t > t_bad)
    for t in range(t_next):
        fill(ps, t, nan_at=(1, 2) if t == t_bad else None)
        opt.step()  # no check: the NaN is taken in, as torch.optim.AdamW would
        if t == t_bad:
            assert not torch.isfinite(dense_of(opt, ps)).all(), f"{method}: the NaN gradient did not reach the weight"
    assert opt.current_step == t_next
    fill(ps, t_next)
    before = snapshot(ps, opt)
    ranking = RANKING.get(method, "the pruning event")
    with pytest.raises(FloatingPointError, match=rf"holds inf or NaN at {ranking} of step {t_next}"):
        opt.step()
    assert same(before, snapshot(ps, opt)), f"{method}: the refused event changed the parameters or the state"
    assert opt.current_step == t_next


@pytest.mark.parametrize("method", ["srste", "admm"])
def test_nm_rankings_keep_a_nan_in_its_group(device, method):
    """A NaN gradient under "propagate" reaches the weight it touches. An
    n:m mask update or projection then ranks it above every number, by
    nm.py's rule: it is kept, in its own group, and the forward pass sees it
    (SR-STE's param holds W M). A global ranking refuses it instead."""
    ps, opt = make(device, method, "propagate")
    # SR-STE updates its mask at steps 0, 3, 6, 9; n:m ADMM projects after 3 and 7
    for t in range(10):
        fill(ps, t, nan_at=(1, 2) if t == 1 else None)
        opt.step()
    dim = opt.pattern.dims[0]
    st = opt.state[ps[0]]
    if method == "srste":
        ranked, keep = opt.dense_weights()[0], st["nm_mask"]
        assert torch.isnan(ps[0][1, 2]), "the forward pass does not see the kept NaN"
    else:
        ranked = st["admm_dual"]  # A = W + U at the projection after step 7
        keep = unpack_dual_mask(st["admm_dual_mask"], ranked)
    assert torch.isnan(ranked[1, 2]), f"{method}: the NaN gradient did not reach the ranked tensor"
    assert keep[1, 2], f"{method}: the NaN was dropped, not kept"
    assert torch.equal(keep.cpu(), nm_mask_reference(ranked.abs().cpu(), 2, 4, dim))


@pytest.mark.parametrize("method", CHECKING)
@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_nonfinite_gradient_at_an_event_refused_before_anything_changes(device, method, bad):
    ps, opt = make(device, method, "propagate")
    t_ev = checked_steps(method, opt, 20)[-1 if method == "admm" else 1]
    for t in range(t_ev):
        fill(ps, t)
        opt.step()
    fill(ps, t_ev)
    ps[1].grad[0, 0] = bad
    before = snapshot(ps, opt)
    with pytest.raises(FloatingPointError, match="a gradient holds inf or NaN"):
        opt.step()
    assert same(before, snapshot(ps, opt))
    fill(ps, t_ev)  # a clean retry of the same step goes through
    opt.step()
    assert opt.current_step == t_ev + 1


def test_refused_by_name():
    w = torch.nn.Parameter(torch.randn(4, 4))
    with pytest.raises(ValueError, match=r"on_nonfinite must be 'raise' or 'skip' or 'propagate', got 'ignore'"):
        MGPP([w], total_steps=10, num_train_examples=10, on_nonfinite="ignore")
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"on_nonfinite must be 'raise' or 'skip', got 'propagate'"):
        AdaptByPruning(model, [model[0].weight], target_sparsity=0.5, total_steps=10, on_nonfinite="propagate")
