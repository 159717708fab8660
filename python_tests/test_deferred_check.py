"""The inf/NaN check of a step between pruning events, kept on the device.

On CUDA, ``all_finite``'s result gates the fused kernel (``apply_if``) and
is read back by the next call, so such a step does not wait for the GPU to
finish it. These tests force that path on every device and hold it to the
check read at once: the same weights and state bitwise, the same schedule,
the same errors (one call later).
"""
import warnings

import pytest
import torch

from mgpp_ext import GMP, MGPP, PLATON, ops

from conftest import bits

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# events at 2, 3, 6, 8; masked final phase from 9 on
HYPER = dict(total_steps=12, num_train_examples=64, target_sparsity=0.75, initial_sparsity=0.25,
             initial_warmup_steps=2, final_finetune_steps=3, prune_interval=3,
             sigma0_sq=1e-8, sigma1_sq=0.5, weight_decay=0.01, lr=1e-2)
SHAPES = [(17, 9), (33,), (5, 4, 3), (9,)]


def make(device, defer, dtype=torch.float32, **kw):
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=g).to(device, dtype) for s in SHAPES]
    opt = MGPP(params, **{**HYPER, **kw})
    opt._defer_finite_check = defer
    return params, opt


def grads(params, t, bad=False):
    g = torch.Generator().manual_seed(100 + t)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(p.device, p.dtype)
    if bad:
        params[t % len(params)].grad.view(-1)[t % 5] = float("nan") if t % 2 else float("-inf")


def device_state(params, opt):
    """Everything the kernels write: weights, moments (zero before they
    exist: a deferred step creates them before its check is read), masks."""
    out = [bits(p) for p in params]
    for p in params:
        st = opt.state.get(p, {})
        out += [bits(st[k]) if k in st else bits(torch.zeros_like(p)) for k in ("exp_avg", "exp_avg_sq")]
        if "mask" in st:
            out.append(st["mask"])
    return out


def step_both(runs, steps):
    """Steps ``steps`` with clean gradients on every (params, optimizer) run."""
    for t in steps:
        for ps, opt in runs:
            grads(ps, t)
            opt.step()


def assert_same_run(runs):
    """The two runs hold the same weights, moments, masks and host record."""
    (pa, a), (pb, b) = runs
    assert all(torch.equal(x, y) for x, y in zip(device_state(pa, a), device_state(pb, b)))
    assert host_record(a) == host_record(b)


def host_record(opt):
    sd = opt.state_dict()
    steps = [float(s["step"]) for s in sd["state"].values()]
    return opt.schedule_state(), sorted(sd["state"]), steps, sd["param_groups"][0]["mgpp"]


# -- the op's gate --------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("masked", [False, True])
def test_apply_if_false_changes_nothing(device, dtype, masked):
    g = torch.Generator().manual_seed(1)
    shapes = [(70001,), (3, 5), (0,)]
    p, gr, m, v = ([torch.randn(s, generator=g).to(device, dtype) for s in shapes] for _ in range(4))
    v = [x.abs() for x in v]
    masks = [torch.rand(s, generator=g).to(device) > 0.5 for s in shapes] if masked else []
    hist = torch.zeros(ops.HIST_BINS, dtype=torch.int64, device=device)
    hist1 = torch.zeros(2 * ops.HIST_BINS, dtype=torch.int64, device=device)
    lo = 0x3c00
    kw = dict(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, step=3, apply_prior=True,
              num_examples=10.0, lambda_mix=0.1, sigma0_sq=1e-6, sigma1_sq=0.1,
              hist_window=(lo, 0x3f90), hist1_lo=0x3f80)
    before = [x.clone() for x in p + m + v]
    ops.mgpp_step_(p, gr, m, v, masks, hist, apply_if=torch.tensor(False, device=device), hist1=hist1, **kw)
    assert all(torch.equal(a, b) for a, b in zip(before, p + m + v))
    # every element in bin lo, so that a select chained on it stays defined
    assert int(hist[lo]) == 70016 and int(hist.sum()) == 70016 and int(hist1.sum()) == 0
    # True is the same as no gate, bitwise
    p2, m2, v2 = ([x.clone() for x in xs] for xs in (p, m, v))
    hist.zero_()
    h2, h12 = hist.clone(), hist1.clone()
    ops.mgpp_step_(p, gr, m, v, masks, hist, apply_if=torch.tensor([True], device=device), hist1=hist1, **kw)
    ops.mgpp_step_(p2, gr, m2, v2, masks, h2, hist1=h12, **kw)
    assert all(torch.equal(bits(a), bits(b)) for a, b in zip(p + m + v, p2 + m2 + v2))
    assert torch.equal(hist, h2) and int(hist.sum()) == 70016
    assert torch.equal(hist1, h12)


@pytest.mark.parametrize("gate,match", [
    (lambda d: torch.tensor(1, device=d), "one-element bool tensor, got Long"),
    (lambda d: torch.ones(2, dtype=torch.bool, device=d), r"one-element bool tensor, got Bool of shape \[2\]"),
])
def test_apply_if_bad(device, gate, match):
    p = [torch.zeros(4, device=device)]
    with pytest.raises(RuntimeError, match="mgpp_step_: 'apply_if' must be a " + match):
        ops.mgpp_step_(p, [torch.zeros(4, device=device)], [torch.zeros(4, device=device)],
                       [torch.zeros(4, device=device)], [],
                       torch.empty(0, dtype=torch.int64, device=device), lr=0.1, beta1=0.9, beta2=0.9,
                       eps=1e-8, weight_decay=0.0, step=1, apply_prior=False, apply_if=gate(device))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
def test_apply_if_on_another_device():
    p = [torch.zeros(4, device="cuda")]
    with pytest.raises(RuntimeError, match="'apply_if' must be on the params' device"):
        ops.mgpp_step_(p, [torch.zeros(4, device="cuda")], [torch.zeros(4, device="cuda")],
                       [torch.zeros(4, device="cuda")], [],
                       torch.empty(0, dtype=torch.int64, device="cuda"), lr=0.1, beta1=0.9, beta2=0.9,
                       eps=1e-8, weight_decay=0.0, step=1, apply_prior=False, apply_if=torch.tensor(True))


# -- when the optimizer defers -----------------------------------------------------

def test_defers_on_cuda_only_and_never_for_gradient_scores(device):
    params, opt = make(device, None)
    assert opt._defers_finite_check(params[0].device) == (device == "cuda")
    gmp = GMP(params, **{k: v for k, v in HYPER.items() if k not in ("num_train_examples", "sigma0_sq", "sigma1_sq")})
    assert gmp._defers_finite_check(params[0].device) == (device == "cuda")
    platon = PLATON(params, total_steps=12)
    platon._defer_finite_check = True  # PLATON folds gradients into its scores before the check is known
    assert not platon._defers_finite_check(params[0].device)


def test_events_and_clean_steps_leave_nothing_pending(device):
    params, opt = make(device, True)
    for t in range(12):
        grads(params, t)
        opt.step()
        assert (opt._pending is None) == opt.schedule.is_event(t)
        assert opt._pending is None or opt._pending.t == t
    assert opt.current_step == 12 and opt._pending is None


# -- same run as the check read at once -------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("initial_sparsity", [0.25, 0.0], ids=["first-event-prunes", "first-event-k0"])
def test_skip_matches_immediate_check_bitwise(device, dtype, initial_sparsity):
    """Bad gradients at the first step (which creates the state), just before
    an event, on events (the first one with k = 0 or not; later ones with a
    predicted window and level-1 bins), several in a row, in the masked
    final phase and at the very end; the deferred run matches the immediate
    one after every call."""
    # calls; the step index t lags by the skips before. Bad at t = 0, 0 (the
    # first step), 2, 2, 2, 2 (the first event), 4, 5 (just before event 6),
    # 8 (the last event), 10 (masked final phase) and 11 (the last step).
    bad = {0, 1, 4, 5, 6, 7, 10, 12, 16, 19, 21}
    (pa, a), (pb, b) = (make(device, defer, dtype, on_nonfinite="skip", initial_sparsity=initial_sparsity)
                        for defer in (False, True))
    for t in range(22):
        for ps, opt in ((pa, a), (pb, b)):
            grads(ps, t, bad=t in bad)
            opt.step()
        da, db = device_state(pa, a), device_state(pb, b)
        assert len(da) == len(db) and all(torch.equal(x, y) for x, y in zip(da, db)), t
    assert b._pending is not None  # the last step's check is still on its way
    ra, rb = host_record(a), host_record(b)
    assert ra == rb
    assert ra[0]["skipped_steps"] == len(bad) and ra[0]["step"] == 11 and ra[0]["events"] == 4
    assert a.sparsity() == b.sparsity()


def test_taking_back_a_first_step_keeps_the_final_mask(device):
    """A tensor without gradients until after the last event holds only its
    final mask; when its first step is taken back, the mask stays."""
    (pa, a), (pb, b) = (make(device, defer, on_nonfinite="skip") for defer in (False, True))
    for t in range(12):
        for ps, opt in ((pa, a), (pb, b)):
            grads(ps, t, bad=t == 10)
            if t < 10:
                ps[0].grad = None
            opt.step()
    for ps, opt in ((pa, a), (pb, b)):
        assert opt.current_step == 11 and opt.schedule_state()["skipped_steps"] == 1
        assert set(opt.state[ps[0]]) == {"step", "exp_avg", "exp_avg_sq", "mask"}
        assert int(opt.state[ps[0]]["step"]) == 1
    assert all(torch.equal(x, y) for x, y in zip(device_state(pa, a), device_state(pb, b)))


def test_bad_first_step_leaves_no_state(device):
    params, opt = make(device, True, on_nonfinite="skip")
    grads(params, 0, bad=True)
    opt.step()
    assert len(opt.state) == len(params)  # created before the check was known
    assert opt.current_step == 0 and len(opt.state) == 0


def test_raise_comes_one_call_later_and_changes_nothing(device):
    runs = (pa, a), (pb, b) = make(device, False), make(device, True)
    step_both(runs, range(4))  # through events 2 and 3
    grads(pa, 4, bad=True)
    before = [x.clone() for x in device_state(pa, a)]
    with pytest.raises(FloatingPointError, match="a gradient contains inf or NaN"):
        a.step()
    grads(pb, 4, bad=True)
    b.step()  # the check is still on the device: nothing applied, nothing raised yet
    grads(pb, 5)
    with pytest.raises(FloatingPointError,
                       match="a gradient of step 4 contained inf or NaN .*neither did this call"):
        b.step()
    for ps, opt in runs:
        assert opt.current_step == 4 and opt.schedule_state()["skipped_steps"] == 0
        assert all(torch.equal(x, y) for x, y in zip(before, device_state(ps, opt)))
    # the run goes on from where it stood, the same way
    step_both(runs, range(5, 12))
    assert_same_run(runs)


def test_event_raises_within_the_call(device):
    """An event reads the gate with the threshold's bin: a bad gradient there
    raises at once, and the weights, state and schedule are as before."""
    runs = (pa, a), (pb, b) = make(device, False), make(device, True)
    step_both(runs, range(6))
    assert a.schedule.is_event(6)
    for ps, opt in runs:
        before = [x.clone() for x in device_state(ps, opt)]
        rec = opt.schedule_state()
        grads(ps, 6, bad=True)
        with pytest.raises(FloatingPointError, match="a gradient contains inf or NaN; no parameter"):
            opt.step()
        assert opt._pending is None and opt.schedule_state() == rec
        assert all(torch.equal(x, y) for x, y in zip(before, device_state(ps, opt)))
    step_both(runs, range(6, 12))
    assert_same_run(runs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
def test_host_waits_on_cuda():
    """No step between events makes a synchronizing call (a copy to the host
    or a stream synchronize, as torch.cuda's sync debug mode counts them),
    and an event makes one (plus one per window miss, which rebuilds its
    histogram)."""
    params, opt = make("cuda", None)
    waits = []
    for t in range(12):
        grads(params, t)
        misses = opt._window_misses
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                opt.step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        n = sum("synchronizing" in str(w.message) for w in seen)
        waits.append(n - (opt._window_misses - misses))
    assert waits == [int(opt.schedule.is_event(t)) for t in range(12)]


@pytest.mark.parametrize("read", ["current_step", "schedule_state", "state_dict", "mask_fixed",
                                  "current_lambda", "current_target_sparsity"])
def test_accessors_read_the_pending_check(device, read):
    params, opt = make(device, True)
    step_both([(params, opt)], range(4))
    grads(params, 4, bad=True)
    opt.step()
    with pytest.raises(FloatingPointError, match="step 4"):
        value = getattr(opt, read)
        value() if callable(value) else value
    assert opt.current_step == 4  # read once: no second error


def test_checkpoint_after_a_skipped_last_step(device, tmp_path):
    """state_dict() settles the pending check; load_state_dict() drops one."""
    params, opt = make(device, True, on_nonfinite="skip")
    for t in range(5):
        grads(params, t, bad=t == 4)
        opt.step()
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    rec = opt.schedule_state()
    assert rec["step"] == 4 and rec["skipped_steps"] == 1
    params2, opt2 = make(device, True, on_nonfinite="skip")
    grads(params2, 0, bad=True)
    opt2.step()  # its pending check belongs to the run the checkpoint replaces
    opt2.load_state_dict(torch.load(tmp_path / "opt.pt"))
    assert opt2.schedule_state() == rec
