"""``ADMM`` and ``SRSTE`` against plain-PyTorch references, in lockstep.

Before every step the reference takes the optimizer's state (for ADMM, Z
and U as two separate tensors, rebuilt from the optimizer's one fp32
tensor and packed mask), both take the step with the same gradient, and the
results must agree bit for bit on the CPU. So the memory trick (one
tensor and one bit instead of Z and U) is checked against the two-tensor
form at every projection.
"""
import copy
import math

import pytest
import torch

from mgpp_ext import ADMM, SRSTE, prunable_param_groups
from mgpp_ext import regulariser_ops as rops
from mgpp_ext.reference import power, sqrt_fp32
from mgpp_ext.reference_nm import nm_mask_reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = ((8, 16), (12, 8), (4, 24))


def adamw(theta, grad, m, v, *, lr, beta1, beta2, eps, wd, step):
    """torch.optim.AdamW's update in fp32, as mgpp_ext.reference writes it."""
    theta = theta * (1.0 - lr * wd)
    m = beta1 * m + (1.0 - beta1) * grad
    v = beta2 * v + (1.0 - beta2) * (grad * grad)
    step_size = lr / (1.0 - power(beta1, step))
    bc2_sqrt = torch.tensor(math.sqrt(1.0 - power(beta2, step)))
    denom = sqrt_fp32(v) / bc2_sqrt + eps
    return theta - step_size * (m / denom), m, v


def project(x, pattern, dims, k=None):
    """Keep masks of Proj_pattern(x): n:m along dims, or the k largest |x| overall."""
    if isinstance(pattern, tuple):
        n, m = pattern
        return [nm_mask_reference(t.abs(), n, m, d) for t, d in zip(x, dims)]
    tau = torch.kthvalue(torch.cat([t.abs().flatten() for t in x]), k).values
    return [t.abs() > tau for t in x]


def params_of(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(s, generator=g) * 0.5).to(dtype).requires_grad_() for s in SHAPES]


def grads_for(params, g):
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(p.dtype)


def same(a, b):
    return torch.equal(a.detach().contiguous().view(torch.uint8), b.detach().contiguous().view(torch.uint8))


HP = dict(lr=1e-2, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)


# ----------------------------------------------------------------- ADMM
def admm_zu(opt, p):
    """Z and U from the optimizer's one fp32 tensor A and packed mask M."""
    st = opt.state[p]
    a = st["admm_dual"]
    keep = rops.unpack_dual_mask(st["admm_dual_mask"], a)
    return a.masked_fill(~keep, 0.0), a.masked_fill(keep, 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pattern", ["2:4", "1:4", "4:8", 0.6])
def test_admm_lockstep_with_two_tensor_reference(pattern, dtype):
    params = params_of(dtype)
    total, ff, interval, rho, growth = 20, 5, 3, 0.5, 1.5
    opt = ADMM(params, **HP, total_steps=total, pattern=pattern, rho=rho, admm_interval=interval,
               final_finetune_steps=ff, rho_growth=growth)
    nm = None if isinstance(pattern, float) else tuple(int(x) for x in pattern.split(":"))
    n_total = sum(p.numel() for p in params)
    k = None if nm else math.floor(pattern * n_total)
    t_e = total - ff - 1
    g = torch.Generator().manual_seed(1)
    # Before step 0: Z = Proj(W), U = 0 (Zhang et al.'s initialisation).
    w0 = [p.detach().float() for p in params]
    keep0 = project(w0, nm, [1] * 3, k)
    z = [w.masked_fill(~kp, 0.0) for w, kp in zip(w0, keep0)]
    u = [torch.zeros_like(w) for w in w0]
    for t in range(total):
        grads_for(params, g)
        if t > 0 and t <= t_e:  # the optimizer's one tensor and mask hold the reference's own Z and U
            for i, p in enumerate(params):
                oz, ou = admm_zu(opt, p)
                assert torch.equal(oz, z[i]) and torch.equal(ou, u[i]), f"Z/U before step {t}, tensor {i}"
        before = [p.detach().clone() for p in params]
        if t > 0:
            m = [opt.state[p]["exp_avg"].float().clone() for p in params]
            v = [opt.state[p]["exp_avg_sq"].float().clone() for p in params]
            step = int(opt.state[params[0]]["step"])
        else:
            m = [torch.zeros_like(p, dtype=torch.float32) for p in params]
            v = [torch.zeros_like(p, dtype=torch.float32) for p in params]
            step = 0
        mask = [opt.state[p].get("mask") for p in params]
        opt.step()
        rho_t = rho * growth ** (t // interval)
        want = []
        for i, p in enumerate(params):
            grad = p.grad.float()
            if t <= t_e:
                grad = grad + rho_t * ((before[i].float() - z[i]) + u[i])
            theta, _, _ = adamw(before[i].float(), grad, m[i], v[i], lr=HP["lr"], beta1=0.9, beta2=0.98,
                                eps=1e-6, wd=0.01, step=step + 1)
            if mask[i] is not None:
                theta = torch.where(mask[i], theta, torch.zeros_like(theta))
            want.append(theta.to(dtype))
        if t == t_e:  # the hard projection by |W|
            keeps = project([w.float() for w in want], nm, [1] * 3, k)
            want = [w.masked_fill(~kp, 0.0) for w, kp in zip(want, keeps)]
        for i, p in enumerate(params):
            assert same(p, want[i]), f"step {t}, tensor {i}"
        if t < t_e and (t + 1) % interval == 0:
            x = [p.detach().float() + uu for p, uu in zip(params, u)]
            keeps = project(x, nm, [1] * 3, k)
            z_new = [xx.masked_fill(~kp, 0.0) for xx, kp in zip(x, keeps)]
            u_new = [uu + p.detach().float() - zz for uu, p, zz in zip(u, params, z_new)]
            for p, zz, uu in zip(params, z_new, u_new):
                oz, ou = admm_zu(opt, p)
                assert torch.equal(oz, zz) and torch.equal(ou, uu), f"projection after step {t}"
            z, u = z_new, u_new  # the reference carries its own two tensors
    for p in params:
        assert "admm_dual" not in opt.state[p]
        if nm:
            n, m_ = nm
            assert (opt.state[p]["mask"].reshape(-1, m_).sum(1) == n).all()
    if not nm:
        assert sum(int((p == 0).sum()) for p in params) >= k


def test_admm_state_is_one_fp32_tensor_and_one_bit_per_weight():
    params = params_of(torch.float32)
    opt = ADMM(params, **HP, total_steps=10, pattern="2:4", rho=0.1, admm_interval=2)
    grads_for(params, torch.Generator().manual_seed(0))
    opt.step()
    for p in params:
        st = opt.state[p]
        assert st["admm_dual"].dtype == torch.float32 and st["admm_dual"].shape == p.shape
        assert st["admm_dual_mask"].dtype == torch.uint8 and st["admm_dual_mask"].numel() == -(-p.numel() // 8)
        assert set(st) == {"step", "exp_avg", "exp_avg_sq", "admm_dual", "admm_dual_mask"}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pattern", ["2:4", 0.5])
def test_admm_resume_is_bitwise(pattern, dtype):
    kw = dict(**HP, total_steps=16, pattern=pattern, rho=0.2, admm_interval=3, final_finetune_steps=4)
    a_params = params_of(dtype)
    a = ADMM(a_params, **kw)
    g = torch.Generator().manual_seed(2)
    for _ in range(7):
        grads_for(a_params, g)
        a.step()
    b_params = [p.detach().clone().requires_grad_() for p in a_params]
    b = ADMM(b_params, **kw)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    for _ in range(9):
        grads_for(a_params, g)
        for p, q in zip(a_params, b_params):
            q.grad = p.grad.clone()
        a.step()
        b.step()
    for p, q in zip(a_params, b_params):
        assert same(p, q)
        assert torch.equal(a.state[p]["mask"], b.state[q]["mask"])
    assert a.schedule_state() == b.schedule_state()


@pytest.mark.parametrize("kw,match", [
    (dict(rho=0.0), "rho must be > 0"),
    (dict(rho=-1.0), "rho must be > 0"),
    (dict(admm_interval=0), "admm_interval"),
    (dict(rho_growth=0.5), "rho_growth"),
    (dict(rho=float("inf")), "rho must be finite in float32"),
    (dict(rho=1e39), "rho must be finite in float32"),
    (dict(lr=float("inf")), "lr must be finite in float32"),
    (dict(weight_decay=float("inf")), "weight_decay must be finite"),
    (dict(eps=float("inf")), "eps must be finite"),
    (dict(rho_growth=float("inf")), "rho_growth must be finite"),
    # rho = 1e-3 * 1.5 ** 299 at the hard projection: past float32.
    (dict(total_steps=300, admm_interval=1, rho_growth=1.5), "past float32's largest value"),
    (dict(total_steps=150, admm_interval=1, rho_growth=1.5), None),  # 1e-3 * 1.5 ** 149: finite
    (dict(pattern=1.5), "pattern"),
    (dict(pattern="2:3:4"), "'pattern'"),
    (dict(pattern="tensor"), "ADMM: pattern must be an 'n:m' pattern"),
    (dict(pattern="row"), "ADMM: pattern must be an 'n:m' pattern"),
    (dict(pattern=None), "ADMM: pattern must be an 'n:m' pattern"),
    (dict(pattern=2), "ADMM: pattern must be an 'n:m' pattern .* or a float sparsity"),
    (dict(pattern="3:8", total_steps=10), None),  # valid
])
def test_admm_bad_arguments_refused_by_name(kw, match):
    args = {"total_steps": 10, "pattern": "2:4", **kw}
    if match is None:
        ADMM(params_of(torch.float32), **args)
        return
    with pytest.raises(ValueError, match=match):
        ADMM(params_of(torch.float32), **args)


def test_admm_set_total_steps_refuses_a_rho_past_float32():
    opt = ADMM(params_of(torch.float32), total_steps=100, admm_interval=1, rho_growth=1.5)
    with pytest.raises(ValueError, match="past float32's largest value"):
        opt.set_total_steps(1000)
    assert opt.schedule.total_steps == 100  # refused before anything changed
    opt.set_total_steps(200)
    assert opt.schedule.total_steps == 200


def test_admm_starts_from_z_proj_w_and_u_zero():
    params = params_of(torch.float32)
    opt = ADMM(params, **HP, total_steps=10, pattern="2:4", rho=0.1, admm_interval=4)
    w0 = [p.detach().clone() for p in params]
    opt.regulariser.before_step(opt, 0)  # what the first step does before its update
    for p, w, keep in zip(params, w0, project(w0, (2, 4), [1] * 3)):
        z, u = admm_zu(opt, p)
        assert torch.equal(z, w.masked_fill(~keep, 0.0)) and not u.any()


def test_admm_set_total_steps_moves_the_hard_projection():
    """A trainer that knows the run length late (the Hugging Face callback)
    gets one hard projection at the new t_e, not an event every step."""
    params = params_of(torch.float32)
    opt = ADMM(params, **HP, total_steps=100, pattern="2:4", rho=0.1, admm_interval=10, final_finetune_steps=20)
    opt.set_total_steps(200)
    sch = opt.schedule
    assert (sch.total_steps, sch.t_e, sch.final_finetune_steps) == (200, 179, 20)
    assert [t for t in range(200) if sch.is_event(t)] == [179]
    g = torch.Generator().manual_seed(0)
    grads_for(params, g)
    opt.step()
    with pytest.raises(RuntimeError, match="already taken"):
        opt.set_total_steps(300)


def test_admm_pattern_must_divide_input_dim():
    model = torch.nn.Sequential(torch.nn.Linear(6, 8))
    with pytest.raises(ValueError, match=r"'0\.weight' has size 6 along dim 1"):
        ADMM(prunable_param_groups(model, patterns=[r"weight$"]), total_steps=10, pattern="2:4")


# ---------------------------------------------------------------- SR-STE
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pattern,interval", [("2:4", 1), ("1:4", 1), ("4:8", 3)])
def test_srste_lockstep_with_reference(pattern, interval, dtype):
    n, m_ = (int(x) for x in pattern.split(":"))
    params = params_of(dtype)
    dense0 = [p.detach().clone() for p in params]
    opt = SRSTE(params, **HP, pattern=pattern, lambda_w=0.05, mask_interval=interval)
    # The parameters hold W * M from construction on.
    for p, w in zip(params, dense0):
        keep = nm_mask_reference(w.abs(), n, m_, 1)
        assert same(p, w.masked_fill(~keep, 0.0))
    g = torch.Generator().manual_seed(3)
    for t in range(10):
        grads_for(params, g)
        st = [opt.state[p] for p in params]
        w = [s["dense"].float().clone() for s in st]
        keep = [s["nm_mask"].clone() for s in st]
        m = [s["exp_avg"].float().clone() if "exp_avg" in s else torch.zeros_like(ww) for s, ww in zip(st, w)]
        v = [s["exp_avg_sq"].float().clone() if "exp_avg_sq" in s else torch.zeros_like(ww) for s, ww in zip(st, w)]
        opt.step()
        for i, p in enumerate(params):
            grad = p.grad.float()
            grad = torch.where(keep[i], grad, grad + 0.05 * w[i])
            theta, _, _ = adamw(w[i], grad, m[i], v[i], lr=HP["lr"], beta1=0.9, beta2=0.98, eps=1e-6,
                                wd=0.01, step=t + 1)
            theta = theta.to(dtype)
            new_keep = nm_mask_reference(theta.abs(), n, m_, 1) if t % interval == 0 else keep[i]
            assert same(opt.state[p]["dense"], theta), f"step {t}, tensor {i}"
            assert torch.equal(opt.state[p]["nm_mask"], new_keep), f"step {t}, tensor {i}"
            assert same(p, theta.masked_fill(~new_keep, 0.0)), f"step {t}, tensor {i}"
            assert (new_keep.reshape(-1, m_).sum(1) == n).all()


def test_srste_gradient_is_straight_through():
    """The forward pass sees W * M, so the gradient the next step uses is
    the loss's gradient at W * M, not at the dense W: for
    L = sum((x W_eff^T)^2), dL/dW_eff = 2 (x W_eff^T)^T x, which differs
    from the same expression at the dense W. One step then moves the
    dense W by AdamW of that gradient plus lambda_w (1 - M) W."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 4, bias=False)
    hp = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    opt = SRSTE([lin.weight], **hp, pattern="2:4", lambda_w=0.1, mask_interval=1)
    dense, keep = opt.dense_weights()[0].clone(), opt.state[lin.weight]["nm_mask"].clone()
    w_eff = dense * keep
    assert torch.equal(lin.weight.detach(), w_eff)
    x = torch.randn(5, 8)
    (lin(x) ** 2).sum().backward()
    at_masked = 2 * (x @ w_eff.T).T @ x
    at_dense = 2 * (x @ dense.T).T @ x
    assert torch.allclose(lin.weight.grad, at_masked, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(at_masked, at_dense, rtol=1e-2, atol=1e-2)
    grad = lin.weight.grad.clone()
    opt.step()
    theta, _, _ = adamw(dense, torch.where(keep, grad, grad + 0.1 * dense), torch.zeros_like(dense),
                        torch.zeros_like(dense), lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, wd=0.0, step=1)
    assert same(opt.state[lin.weight]["dense"], theta)


@pytest.mark.parametrize("view", ["column_slice", "transposed"])
def test_srste_strided_params_match_contiguous(view):
    """A parameter that is a strided view (a column slice of a bigger
    weight, a transposed one) takes the same steps, bitwise, as a
    contiguous copy of it, and the rest of the buffer is left alone."""
    g = torch.Generator().manual_seed(7)
    base = torch.randn(16, 24, generator=g)
    owner = base.clone()
    strided = torch.nn.Parameter(owner[:, ::2] if view == "column_slice" else owner.t())
    assert not strided.is_contiguous() and strided.data_ptr() == owner.data_ptr()
    rest = owner[:, 1::2].clone() if view == "column_slice" else None
    plain = torch.nn.Parameter(strided.detach().clone())
    a = SRSTE([strided], **HP, pattern="2:4", lambda_w=0.05)
    b = SRSTE([plain], **HP, pattern="2:4", lambda_w=0.05)
    for _ in range(4):
        grad = torch.randn(plain.shape, generator=g)
        strided.grad, plain.grad = grad.clone(), grad.clone()
        a.step()
        b.step()
        assert same(strided, plain)
        assert same(a.state[strided]["dense"], b.state[plain]["dense"])
        assert torch.equal(a.state[strided]["nm_mask"], b.state[plain]["nm_mask"])
    if rest is not None:
        assert same(owner[:, 1::2], rest)
    assert same(owner[:, ::2] if view == "column_slice" else owner.t(), plain)


@pytest.mark.parametrize("dtype", DTYPES)
def test_srste_resume_is_bitwise(dtype):
    a_params = params_of(dtype)
    a = SRSTE(a_params, **HP, pattern="2:4", mask_interval=2)
    g = torch.Generator().manual_seed(4)
    for _ in range(5):
        grads_for(a_params, g)
        a.step()
    b_params = [p.detach().clone().requires_grad_() for p in a_params]
    b = SRSTE(b_params, **HP, pattern="2:4", mask_interval=2)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    for _ in range(5):
        grads_for(a_params, g)
        for p, q in zip(a_params, b_params):
            q.grad = p.grad.clone()
        a.step()
        b.step()
    for p, q in zip(a_params, b_params):
        assert same(p, q) and same(a.state[p]["dense"], b.state[q]["dense"])
        assert torch.equal(a.state[p]["nm_mask"], b.state[q]["nm_mask"])


@pytest.mark.parametrize("kw,match", [
    (dict(lambda_w=-1.0), "lambda_w must be >= 0"),
    (dict(mask_interval=0), "mask_interval must be >= 1"),
    (dict(pattern=None), "pattern must be an 'n:m'"),
    (dict(pattern="4:2"), "'n'"),
    (dict(pattern="tensor"), "SRSTE: pattern must be an 'n:m'"),
    (dict(pattern="global"), "SRSTE: pattern must be an 'n:m'"),
    (dict(lambda_w=float("inf")), "lambda_w must be finite"),
])
def test_srste_bad_arguments_refused_by_name(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        SRSTE(params_of(torch.float32), **kw)
