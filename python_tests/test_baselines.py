"""GMP and PLATON (fused step + exact radix select) against the plain-PyTorch
reference with the same method, over a whole schedule; their checkpoints."""
import io

import pytest
import torch

from mgpp_ext import GMP, MGPP, PLATON
from mgpp_ext.reference import ReferenceMGPP
from test_step_vs_reference import (DTYPES, EVENTS, SCHEDULE, assert_near, lockstep, make_groups, make_params,
                                    set_grads)

ADAM = dict(lr=2e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
METHODS = {"gmp": GMP, "platon": PLATON}


def build(device, dtype, method, **overrides):
    opt_groups, flat, flags = make_groups(device, dtype)
    kw = {**ADAM, **SCHEDULE, **overrides}
    opt = METHODS[method](opt_groups, **kw)
    ref_params = [p.detach().clone() for p in flat]
    ref = ReferenceMGPP(ref_params, flags, num_train_examples=1, method=method, **kw)
    return opt, flat, ref, ref_params, flags


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("method", ["gmp", "platon"])
def test_whole_schedule_matches_reference(device, method, dtype):
    opt, params, ref, ref_params, flags = build(device, dtype, method)
    pruned = [i for i, f in enumerate(flags) if f]
    for t in range(SCHEDULE["total_steps"]):
        set_grads(t, params, ref_params)
        # Step by step from the same state: see test_step_vs_reference for why
        # fp32 kernels and eager ops may not run freely side by side.
        lockstep(opt, params, ref, ref_params)
        opt.step()
        ref.step()
        for i, (a, b) in enumerate(zip(params, ref_params)):
            assert_near(a, b, dtype, f"{method} step {t} param {i}", exact=device == "cpu")
            if i in pruned:
                assert torch.equal(a == 0, b == 0), f"{method} step {t} param {i}: zero patterns differ"
        if t in EVENTS:
            assert opt.last_threshold == ref.last_threshold, (t, opt.last_threshold, ref.last_threshold)
    assert opt.schedule_state()["events"] == len(EVENTS)
    assert opt.current_lambda == 0.0
    n = sum(params[i].numel() for i in pruned)
    assert sum(int((params[i] == 0).sum()) for i in pruned) >= int(SCHEDULE["target_sparsity"] * n)


def test_platon_prunes_by_score_not_magnitude():
    """A large weight with a zero gradient has zero importance: PLATON prunes
    it, GMP keeps it."""
    def run(cls):
        w = torch.full((4, 8), 0.1)
        w[0, 0] = 5.0
        opt = cls([w], lr=1e-3, total_steps=6, initial_warmup_steps=2, final_finetune_steps=1,
                  prune_interval=1, target_sparsity=0.5)
        for t in range(6):
            g = torch.ones_like(w)
            g[0, 0] = 0.0
            w.grad = g
            opt.step()
        return w
    assert run(PLATON)[0, 0] == 0.0
    assert run(GMP)[0, 0] != 0.0


def _run(opt, params, steps, start=0):
    for t in range(start, start + steps):
        set_grads(t, params, params)
        opt.step()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("method", ["gmp", "platon"])
@pytest.mark.parametrize("resume_at", [2, 6, 17, 20])  # warm-up, mid-window, final event, final phase
def test_resume_is_bitwise(method, resume_at, dtype):
    """Also in bf16/fp16, whose PLATON scores must come back in fp32 (torch
    casts optimizer state to the param dtype on load)."""
    def fresh():
        groups = make_params("cpu", dtype)
        ps = [p for _, group in groups for p in group]
        return METHODS[method](ps, **ADAM, **SCHEDULE), ps
    check_resume(fresh, resume_at)


def check_resume(fresh, resume_at, on_resume=None):
    """A run saved at ``resume_at`` (torch.save round trip) and resumed in a
    fresh optimizer ends bitwise where the straight run does. ``fresh()``
    returns (optimizer, params); ``on_resume(opt, params)`` may inspect the
    resumed optimizer."""
    straight, sp = fresh()
    _run(straight, sp, SCHEDULE["total_steps"])
    first, fp = fresh()
    _run(first, fp, resume_at)
    buf = io.BytesIO()
    torch.save({"opt": first.state_dict(), "params": [p.detach().clone() for p in fp]}, buf)
    buf.seek(0)
    saved = torch.load(buf)
    second, rp = fresh()
    with torch.no_grad():
        for p, q in zip(rp, saved["params"]):
            p.copy_(q)
    second.load_state_dict(saved["opt"])
    if on_resume is not None:
        on_resume(second, rp)
    _run(second, rp, SCHEDULE["total_steps"] - resume_at, start=resume_at)
    for a, b in zip(sp, rp):
        assert torch.equal(a, b)
    assert straight.last_threshold == second.last_threshold


def test_checkpoint_of_another_method_refused():
    ps = [torch.randn(8, 8)]
    gmp = GMP(ps, total_steps=10)
    with pytest.raises(ValueError, match="method"):
        MGPP(ps, total_steps=10, num_train_examples=10).load_state_dict(gmp.state_dict())
    with pytest.raises(ValueError, match="method"):
        PLATON(ps, total_steps=10).load_state_dict(gmp.state_dict())
    with pytest.raises(ValueError, match="importance_betas"):
        PLATON(ps, total_steps=10, importance_betas=(0.85, 1.0)).load_state_dict(
            PLATON(ps, total_steps=10).state_dict())


@pytest.mark.parametrize("bad", [(0.85,), (0.85, 1.0), (-0.1, 0.9), "0.85", (True, 0.9)])
def test_platon_bad_importance_betas(bad):
    with pytest.raises(ValueError, match="importance_betas"):
        PLATON([torch.randn(4, 4)], total_steps=10, importance_betas=bad)
