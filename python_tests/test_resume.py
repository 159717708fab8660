"""Checkpoint and resume: an interrupted run continues bitwise like an
uninterrupted one, at any point of the schedule; mismatched checkpoints are
refused."""
import collections
import copy

import pytest
import torch

from mgpp_ext import MGPP, prunable_param_groups

TOTAL = 24
# t_s = 3, t_e = 24 - 6 - 1 = 17; events at 3, 5, 10, 15, 17
HYPER = dict(lr=3e-3, weight_decay=0.01, total_steps=TOTAL, num_train_examples=64,
             initial_warmup_steps=3, final_finetune_steps=6, prune_interval=5,
             initial_sparsity=0.2, target_sparsity=0.7, sigma0_sq=1e-8)


class Net(torch.nn.Module):
    def __init__(self, hidden=33):
        super().__init__()
        self.inp = torch.nn.Linear(17, hidden)
        self.out = torch.nn.Linear(hidden, 5)
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        return self.out(torch.tanh(self.inp(x))) * self.scale


def build(device, dtype, seed, hyper=HYPER, hidden=33):
    torch.manual_seed(seed)  # a fresh model starts from other weights than the saved one
    model = Net(hidden).to(device, dtype)
    opt = MGPP(prunable_param_groups(model, patterns=[r"weight$"]), **hyper)
    return model, opt


def train(model, opt, steps):
    for t in steps:
        g = torch.Generator().manual_seed(t)
        x = torch.randn(8, 17, generator=g).to(model.scale.device, model.scale.dtype)
        y = torch.randn(8, 5, generator=g).to(x)
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()


def snapshot(model, opt):
    return {"model": copy.deepcopy(model.state_dict()), "opt": copy.deepcopy(opt.state_dict())}


@pytest.fixture(scope="module")
def uninterrupted():
    runs = {}

    def get(device, dtype):
        if (device, dtype) not in runs:
            model, opt = build(device, dtype, seed=0)
            train(model, opt, range(TOTAL))
            runs[device, dtype] = (model, opt)
        return runs[device, dtype]
    return get


def assert_same_run(a_model, a_opt, b_model, b_opt):
    for (name, p), q in zip(a_model.named_parameters(), b_model.parameters()):
        assert torch.equal(p, q), name
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(a_opt.state[p][key], b_opt.state[q][key]), (name, key)
        assert ("mask" in a_opt.state[p]) == ("mask" in b_opt.state[q])
    assert a_opt.schedule_state() == b_opt.schedule_state()
    assert a_opt.last_threshold == b_opt.last_threshold


# resume points: the next step to take. 2: warm-up; 7: between events;
# 10: the next step is an event; 11: right after an event; 18: right after t_e
# (the final masks exist); 21: the final phase
@pytest.mark.parametrize("resume_at", [2, 7, 10, 11, 18, 21])
def test_resume_is_bitwise(device, uninterrupted, resume_at):
    ref_model, ref_opt = uninterrupted(device, torch.float32)
    model, opt = build(device, torch.float32, seed=0)
    train(model, opt, range(resume_at))
    saved = snapshot(model, opt)
    del model, opt
    model, opt = build(device, torch.float32, seed=1)
    assert not torch.equal(model.inp.weight, ref_model.inp.weight)
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    assert opt.current_step == resume_at
    train(model, opt, range(resume_at, TOTAL))
    assert_same_run(ref_model, ref_opt, model, opt)
    n = sum(p.numel() for p in (model.inp.weight, model.out.weight))
    assert opt.mask_fixed and opt.sparsity()["overall"] >= int(0.7 * n) / n


@pytest.mark.parametrize("dtype, resume_at", [(torch.float32, 18), (torch.bfloat16, 12)], ids=["fp32-18", "bf16-12"])
def test_resume_through_a_file(device, uninterrupted, tmp_path, dtype, resume_at):
    ref_model, ref_opt = uninterrupted(device, dtype)
    model, opt = build(device, dtype, seed=0)
    train(model, opt, range(resume_at))
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, path)
    del model, opt
    model, opt = build(device, dtype, seed=2)
    ckpt = torch.load(path, map_location=device, weights_only=True)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    for p in model.parameters():  # masks come back as bool, moments in the param dtype
        st = opt.state[p]
        assert st["exp_avg"].dtype == dtype
        if "mask" in st:
            assert st["mask"].dtype == torch.bool
    train(model, opt, range(resume_at, TOTAL))
    assert_same_run(ref_model, ref_opt, model, opt)


def test_different_hyper_parameters_refused(device):
    model, opt = build(device, torch.float32, seed=0)
    train(model, opt, range(4))
    saved = opt.state_dict()
    _, other = build(device, torch.float32, seed=0, hyper={**HYPER, "target_sparsity": 0.8})
    with pytest.raises(ValueError, match=r"'target_sparsity' differs: saved 0\.7\d*, this optimizer 0\.8"):
        other.load_state_dict(saved)
    _, other = build(device, torch.float32, seed=0, hyper={**HYPER, "sigma0_sq": 1e-9})
    with pytest.raises(ValueError, match="'sigma0_sq' differs"):
        other.load_state_dict(saved)
    assert other.current_step == 0  # nothing loaded


def test_different_model_refused(device):
    model, opt = build(device, torch.float32, seed=0)
    train(model, opt, range(4))
    saved = opt.state_dict()
    _, other = build(device, torch.float32, seed=0, hidden=34)
    with pytest.raises(ValueError, match="prunable parameters differ"):
        other.load_state_dict(saved)


def test_different_parameter_order_refused(device):
    model, opt = build(device, torch.float32, seed=0)
    train(model, opt, range(4))
    saved = opt.state_dict()
    # same prunable weights, but the dense group lists its tensors in another order
    other_model = Net().to(device)
    groups = prunable_param_groups(other_model, patterns=[r"weight$"])
    dense = groups[1]
    dense["params"] = dense["params"][::-1]
    dense["param_names"] = dense["param_names"][::-1]
    other = MGPP(groups, **HYPER)
    with pytest.raises(ValueError, match="different model or parameter order"):
        other.load_state_dict(saved)


def test_foreign_state_dict_refused(device):
    model, _ = build(device, torch.float32, seed=0)
    adamw = torch.optim.AdamW(model.parameters())
    _, opt = build(device, torch.float32, seed=0)
    with pytest.raises(ValueError, match="not saved by MGPP"):
        opt.load_state_dict(adamw.state_dict())


def _corrupt(saved, edit):
    """A deep copy of the state dict with ``edit(record, groups, state)`` applied
    to its JSON record (in every group, as saved), groups and state."""
    import json
    sd = copy.deepcopy(saved)
    record = json.loads(sd["param_groups"][0]["mgpp"])
    edit(record, sd["param_groups"], sd["state"])
    for g in sd["param_groups"]:
        g["mgpp"] = json.dumps(record)
    return sd


def _set(key, value):
    def edit(record, groups, state):
        if value is _MISSING:
            del record[key]
        else:
            record[key] = value
    return edit


_MISSING = object()


@pytest.mark.parametrize("edit,match", [
    (_set("t", _MISSING), "'t' must be an int >= 0, got None"),
    (_set("t", "abc"), "'t' must be an int >= 0"),
    (_set("t", -5), "'t' must be an int >= 0"),
    (_set("events", 1.5), "'events' must be an int >= 0"),
    (_set("threshold", "x"), "'threshold' must be a number or None"),
    (_set("extra", [1]), "'extra' must be a dict"),
    (lambda r, g, s: g[0].update(lr="fast"), "saved param group 0: lr must be a number"),
    (lambda r, g, s: g[1].update(lr=float("nan")), "saved param group 1: lr must be a number"),
    (lambda r, g, s: g[0].update(betas=(2.0, 0.9)), r"saved param group 0: betas\[0\] must be <"),
    (lambda r, g, s: g[1].update(prune=True), "saved param group 1 has prune=True"),
    (lambda r, g, s: next(iter(s.values())).pop("exp_avg_sq"), "but not \\['exp_avg_sq'\\]"),
])
def test_corrupt_checkpoint_refused_before_anything_loads(device, edit, match):
    """A corrupt record, group value or AdamW state is refused by name, and
    the optimizer is left exactly as it was (no half-loaded state)."""
    model, opt = build(device, torch.float32, seed=0)
    train(model, opt, range(4))
    saved = opt.state_dict()
    other_model, other = build(device, torch.float32, seed=1)
    train(other_model, other, range(2))
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(ValueError, match=match):
        other.load_state_dict(_corrupt(saved, edit))
    after = other.state_dict()
    assert after["param_groups"] == before["param_groups"]
    assert after["state"].keys() == before["state"].keys()
    for pid, st in before["state"].items():
        for key, v in st.items():
            assert torch.equal(after["state"][pid][key], v), (pid, key)
    other.load_state_dict(saved)  # the uncorrupted checkpoint still loads
    assert other.current_step == 4


def test_optimizer_hooks_see_the_engine_state(device):
    """torch.optim's state-dict hooks: a load pre-hook's dict is what gets
    checked, a load post-hook sees the restored position, and a state_dict
    post-hook sees the record."""
    model, opt = build(device, torch.float32, seed=0)
    train(model, opt, range(3))
    seen = {}
    def post(o, sd):
        seen["record"] = "mgpp" in sd["param_groups"][0]

    opt.register_state_dict_post_hook(post)
    saved = opt.state_dict()
    assert seen["record"] is True
    _, other = build(device, torch.float32, seed=1)

    def bad_lr(o, sd):
        sd = copy.deepcopy(sd)
        sd["param_groups"][0]["lr"] = -1.0
        return sd

    handle = other.register_load_state_dict_pre_hook(bad_lr)
    with pytest.raises(ValueError, match="saved param group 0: lr must be >= 0.0"):
        other.load_state_dict(saved)
    assert other.current_step == 0
    handle.remove()
    other.register_load_state_dict_post_hook(
        lambda o: seen.update(step=o.current_step, record=any("mgpp" in g for g in o.param_groups)))
    other.load_state_dict(saved)
    assert seen["step"] == 3 and seen["record"] is False


def test_numpy_hyper_parameters_save_as_python_numbers(tmp_path):
    """numpy's float64 is a float, so it is accepted as lr or betas, and an
    LR scheduler computing from it keeps it; the saved param groups hold
    Python numbers, so the checkpoint loads with torch.load(weights_only=True)
    (torch's default) and resumes the run. Other library scalars are refused
    by name."""
    import numpy as np

    hyper = {**HYPER, "lr": np.float64(3e-3), "betas": (np.float64(0.9), 0.98)}
    model, opt = build("cpu", torch.float32, seed=0, hyper=hyper)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: np.float64(0.5) ** t)
    for t in range(4):
        train(model, opt, [t])
        sched.step()
    assert type(opt.param_groups[0]["lr"]) is np.float64  # the live groups are the user's
    torch.save(snapshot(model, opt), tmp_path / "ckpt.pt")
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    for group in saved["opt"]["param_groups"]:
        assert type(group["lr"]) is float and type(group["initial_lr"]) is float
        assert all(type(b) is float for b in group["betas"])
    other_model, other = build("cpu", torch.float32, seed=1, hyper={**HYPER, "betas": (0.9, 0.98)})
    other_model.load_state_dict(saved["model"])
    other.load_state_dict(saved["opt"])
    assert other.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    train(model, opt, [4])
    train(other_model, other, [4])
    assert_same_run(model, opt, other_model, other)
    with pytest.raises(ValueError, match=r"lr must be a Python int or float, got float32 .*pass float\(lr\)"):
        build("cpu", torch.float32, seed=0, hyper={**HYPER, "lr": np.float32(3e-3)})
    # A user's own group value of another sequence type is saved as given.
    Tag = collections.namedtuple("Tag", "kind index")
    opt.param_groups[0]["tag"] = Tag("attn", 0)
    assert opt.state_dict()["param_groups"][0]["tag"] == Tag("attn", 0)


def test_tensor_lr_set_on_a_group_resumes():
    """A one-element tensor lr put on a group after construction (the step
    reads it as a float) is checked as the number it holds on load, so its
    checkpoint resumes the run; any other tensor lr is refused by name."""
    model, opt = build("cpu", torch.float32, seed=0)
    opt.param_groups[0]["lr"] = torch.tensor(2e-3)
    train(model, opt, range(4))
    saved = snapshot(model, opt)
    other_model, other = build("cpu", torch.float32, seed=1)
    other_model.load_state_dict(saved["model"])
    other.load_state_dict(saved["opt"])
    train(model, opt, [4])
    train(other_model, other, [4])
    assert_same_run(model, opt, other_model, other)
    bad = copy.deepcopy(saved["opt"])
    bad["param_groups"][0]["lr"] = torch.tensor([1e-3, 2e-3])
    with pytest.raises(ValueError, match=r"saved param group 0: a tensor lr must be one floating-point element"):
        other.load_state_dict(bad)
