"""The public surface of MGPP and prunable_param_groups."""
import copy
import inspect
import math

import pytest
import torch

from mgpp_ext import MGPP, prunable_param_groups

SCHED = dict(total_steps=20, num_train_examples=100)


def tensors(device, *shapes, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g).to(device, dtype) for s in shapes]


def fill_grads(params, seed=1):
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(p.device, p.dtype)


# -- signature and construction ------------------------------------------------

def test_signature():
    params = list(inspect.signature(MGPP.__init__).parameters.values())[1:]
    P, K = inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY
    empty = inspect.Parameter.empty
    documented = [
        ("params", P, empty), ("lr", P, 5e-5), ("betas", P, (0.9, 0.98)), ("eps", P, 1e-6),
        ("weight_decay", P, 0.0),
        ("total_steps", K, empty), ("num_train_examples", K, empty),
        ("target_sparsity", K, 0.9), ("initial_sparsity", K, 0.0),
        ("initial_warmup_steps", K, 0), ("final_finetune_steps", K, 0),
        ("prune_interval", K, 100), ("lambda_mix", K, 0.1), ("sigma0_sq", K, 1e-10),
        ("sigma1_sq", K, 0.05), ("lambda_anneal", K, (1.0, 0.001)),
    ]
    got = [(p.name, p.kind, p.default) for p in params]
    assert got[:len(documented)] == documented
    # anything added later is keyword-only and optional, so documented calls keep working
    extra = params[len(documented):]
    assert all(p.kind == K and p.default is not empty for p in extra), extra
    assert ("on_nonfinite", K, "raise") in got


def test_positional_hyper_parameters_and_defaults(device):
    w, b = tensors(device, (4, 3), (3,))
    opt = MGPP([w, b], 1e-3, (0.8, 0.99), 1e-8, 0.01, **SCHED)
    g = opt.param_groups[0]
    assert (g["lr"], g["betas"], g["eps"], g["weight_decay"]) == (1e-3, (0.8, 0.99), 1e-8, 0.01)
    assert isinstance(opt, torch.optim.Optimizer)
    d = MGPP([w], **SCHED)
    g = d.param_groups[0]
    assert (g["lr"], g["betas"], g["eps"], g["weight_decay"]) == (5e-5, (0.9, 0.98), 1e-6, 0.0)
    assert d.schedule.target_sparsity == 0.9 and d.schedule.lambda_anneal == (1.0, 0.001)
    assert (d.sigma0_sq, d.sigma1_sq) == (1e-10, 0.05)
    with pytest.raises(TypeError):
        MGPP([w], total_steps=10)  # num_train_examples is required


def test_plain_iterable_prunes_ndim_ge_2_only(device):
    torch.manual_seed(0)  # the layers' init: not left to the tests that ran before
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)).to(device)
    extra = torch.nn.Parameter(torch.randn(2, 3, 5, device=device))
    params = list(model.parameters()) + [extra]
    before = [p.detach().clone() for p in params]
    # lr = 0: the update leaves every weight as it is, so only the event changes them
    opt = MGPP(iter(params), lr=0.0, total_steps=10, num_train_examples=100, target_sparsity=0.5,
               initial_sparsity=0.5)
    fill_grads(params)
    opt.step()
    for p, b in zip(params, before):
        zeros = int((p == 0).sum())
        if p.dim() >= 2:
            assert 0 < zeros < p.numel()
        else:
            assert torch.equal(p, b)  # biases: never pruned
    assert set(opt.sparsity()["per_tensor"]) == {"group0.param0", "group0.param2", "group0.param4"}
    n = sum(p.numel() for p in params if p.dim() >= 2)
    assert opt.sparsity()["overall"] == sum(int((p == 0).sum()) for p in params if p.dim() >= 2) / n
    assert opt.sparsity()["overall"] >= math.floor(0.5 * n) / n


def test_named_parameters_like_adamw(device):
    """torch.optim.AdamW accepts model.named_parameters(); a drop-in must too."""
    model = torch.nn.Linear(8, 16).to(device)
    ref = torch.optim.AdamW(model.named_parameters())
    assert ref.param_groups[0]["param_names"] == ["weight", "bias"]
    opt = MGPP(model.named_parameters(), **SCHED)
    assert opt.param_groups[0]["params"] == [model.weight, model.bias]
    assert set(opt.sparsity()["per_tensor"]) == {"weight"}


def test_param_groups_given_as_generators(device):
    """{"params": module.parameters()} in a group, and add_param_group with
    a generator, keep every tensor (as torch.optim.AdamW does)."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)).to(device)
    opt = MGPP([{"params": model[0].parameters()}, {"params": model[1].parameters()}], **SCHED)
    assert [len(g["params"]) for g in opt.param_groups] == [2, 2]
    assert set(opt.sparsity()["per_tensor"]) == {"group0.param0", "group1.param0"}
    extra = torch.nn.Linear(4, 4).to(device)
    opt.add_param_group({"params": extra.parameters(), "prune": False})
    assert len(opt.param_groups[2]["params"]) == 2


def test_add_param_group_that_would_be_pruned_refused(device):
    w, b = tensors(device, (4, 3), (3,))
    opt = MGPP([w, b], **SCHED)
    extra = torch.nn.Linear(4, 4).to(device)
    with pytest.raises(ValueError, match=r"params\[0\] would be pruned.*prune=False"):
        opt.add_param_group({"params": list(extra.parameters())})
    assert len(opt.param_groups) == 1  # nothing added
    fill_grads([w, b])
    opt.step()  # still steps


def test_sparse_gradient_refused_by_name():
    emb = torch.nn.Embedding(10, 4, sparse=True)
    lin = torch.nn.Linear(4, 4)
    for mode in ("raise", "skip", "propagate"):
        opt = MGPP([lin.weight, emb.weight], **{**SCHED, "on_nonfinite": mode})
        emb(torch.tensor([1, 2])).sum().backward()
        lin.weight.grad = torch.zeros_like(lin.weight)
        with pytest.raises(RuntimeError, match="MGPP does not support sparse gradients"):
            opt.step()
        assert opt.current_step == 0
        emb.weight.grad = None


def test_step_without_any_gradient_changes_nothing(device):
    """As torch.optim.AdamW: no gradient, no step (the schedule does not
    advance, so no event prunes)."""
    w, b = tensors(device, (8, 4), (4,))
    opt = MGPP([w, b], **{**SCHED, "initial_warmup_steps": 0})
    before = w.clone()
    for _ in range(3):
        opt.step()
    assert opt.current_step == 0 and torch.equal(w, before) and len(opt.state) == 0


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copy_of_model_and_optimizer_continues_the_run(how):
    """copy.deepcopy / pickle of (model, optimizer) keep the schedule, the
    score and the position (torch.optim.Optimizer's own __getstate__ keeps
    only defaults, state and groups): both copies then take the same steps."""
    import pickle
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    opt = MGPP(prunable_param_groups(model, patterns=[r"weight$"]), total_steps=12, num_train_examples=64,
               initial_warmup_steps=2, prune_interval=2, target_sparsity=0.6, sigma1_sq=1.0)
    x = torch.randn(8, 16)

    def train(m, o, steps):
        for _ in range(steps):
            o.zero_grad()
            m(x).pow(2).mean().backward()
            o.step()

    train(model, opt, 3)
    pair = copy.deepcopy((model, opt)) if how == "deepcopy" else pickle.loads(pickle.dumps((model, opt)))
    model2, opt2 = pair
    assert opt2.current_step == 3 and opt2.schedule == opt.schedule
    train(model, opt, 9)
    train(model2, opt2, 9)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    assert opt2.sparsity()["overall"] == opt.sparsity()["overall"] >= 0.6


def test_closure_and_lazy_state(device):
    w, = tensors(device, (5, 4))
    w.requires_grad_(True)
    opt = MGPP([w], lr=1e-2, **SCHED)
    assert len(opt.state) == 0

    def closure():
        opt.zero_grad()
        loss = (w ** 2).sum()
        loss.backward()
        return loss
    loss = opt.step(closure)
    assert loss.item() > 0
    assert set(opt.state[w]) >= {"step", "exp_avg", "exp_avg_sq"}
    assert opt.current_step == 1


def test_lr_scheduler_changes_the_update(device):
    def run(lr, scale=None):
        w, b = tensors(device, (6, 5), (5,))
        opt = MGPP([w, b], lr=lr, total_steps=20, num_train_examples=100, initial_warmup_steps=10)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: scale) if scale else None
        for t in range(4):
            fill_grads([w, b], seed=t)
            opt.step()
            if sched:
                sched.step()
        return w, b, opt
    w1, b1, opt1 = run(1e-2, scale=0.5)
    w2, b2, _ = run(5e-3)
    w3, b3, _ = run(1e-2)
    assert opt1.param_groups[0]["lr"] == pytest.approx(5e-3)
    assert torch.equal(w1, w2) and torch.equal(b1, b2)  # the group's lr is what the step uses
    assert not torch.equal(w1, w3)


def test_sparsity_and_schedule_state(device):
    w1, w2, b = tensors(device, (10, 10), (7, 3), (10,))
    groups = [{"params": [w1, w2], "prune": True, "param_names": ["enc.w1", "enc.w2"]},
              {"params": [b], "prune": False, "param_names": ["enc.b"]}]
    opt = MGPP(groups, lr=0.0, total_steps=12, num_train_examples=50, initial_warmup_steps=2,
               final_finetune_steps=3, prune_interval=4, initial_sparsity=0.2, target_sparsity=0.6)
    keys = {"step", "phase", "target_sparsity", "lambda_t", "threshold", "last_k", "events",
            "skipped_steps"}
    s = opt.schedule_state()
    assert set(s) == keys
    assert s["step"] == 0 and s["phase"] == "warmup" and s["threshold"] is None and s["events"] == 0
    assert s["lambda_t"] == pytest.approx(0.1)
    assert opt.sparsity() == {"overall": 0.0, "per_tensor": {"enc.w1": 0.0, "enc.w2": 0.0}}
    for t in range(3):  # t = 2 is the first event
        fill_grads([w1, w2, b], seed=t)
        opt.step()
    s = opt.schedule_state()
    n = 121
    assert s["step"] == 3 and s["phase"] == "pruning" and s["events"] == 1
    assert s["last_k"] == math.floor(0.2 * n) and s["target_sparsity"] == pytest.approx(0.2)
    assert s["threshold"] == opt.last_threshold and s["threshold"] > 0
    sp = opt.sparsity()
    assert set(sp["per_tensor"]) == {"enc.w1", "enc.w2"}
    assert sp["per_tensor"]["enc.w1"] == int((w1 == 0).sum()) / 100
    assert sp["per_tensor"]["enc.w2"] == int((w2 == 0).sum()) / 21
    assert sp["overall"] == (int((w1 == 0).sum()) + int((w2 == 0).sum())) / n
    assert sp["overall"] >= math.floor(0.2 * n) / n
    assert int((b == 0).sum()) == 0
    for t in range(3, 12):
        fill_grads([w1, w2, b], seed=t)
        opt.step()
    s = opt.schedule_state()
    assert s["step"] == 12 and s["phase"] == "final" and s["lambda_t"] == 0.0
    assert s["events"] == 3  # t_s = 2, 4, t_e = 12 - 3 - 1 = 8
    assert opt.mask_fixed and s["last_k"] == math.floor(0.6 * n)


# -- prunable_param_groups on real model definitions ------------------------------

@pytest.fixture(scope="module")
def transformers():
    """Skips only the tests that build real model definitions, not the file."""
    return pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def bert(transformers):
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=37,
                                  max_position_embeddings=16, num_labels=3)
    return transformers.BertForSequenceClassification(cfg)


def check_groups(model, groups, expected_pruned):
    named = dict(model.named_parameters())
    pruned, dense = groups[0], groups[1]
    assert pruned["prune"] is True and dense["prune"] is False
    assert pruned["param_names"] == expected_pruned  # model order, nothing else
    assert set(dense["param_names"]) == set(named) - set(expected_pruned)
    for g in groups:
        assert [id(p) for p in g["params"]] == [id(named[n]) for n in g["param_names"]]


def test_bert_selection(bert):
    expected = [f"bert.encoder.layer.{i}.{m}.weight" for i in range(2) for m in (
        "attention.self.query", "attention.self.key", "attention.self.value",
        "attention.output.dense", "intermediate.dense", "output.dense")]
    groups = prunable_param_groups(bert)
    check_groups(bert, groups, expected)
    dense = groups[1]["param_names"]
    for name in ("bert.embeddings.word_embeddings.weight", "bert.encoder.layer.0.attention.output.LayerNorm.weight",
                 "bert.encoder.layer.1.output.dense.bias", "bert.pooler.dense.weight", "classifier.weight"):
        assert name in dense


def test_bert_one_step_prunes_only_the_selection(bert):
    model = type(bert)(bert.config)
    model.load_state_dict(bert.state_dict())
    groups = prunable_param_groups(model, weight_decay=0.01)
    assert all(g["weight_decay"] == 0.01 for g in groups)
    opt = MGPP(groups, lr=1e-3, total_steps=5, num_train_examples=100, target_sparsity=0.5,
               initial_sparsity=0.5)
    ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=torch.tensor([0, 2])).loss.backward()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    pruned = set(groups[0]["param_names"])
    for name, p in model.named_parameters():
        if name in pruned:
            assert float((p == 0).float().mean()) > 0.3, name
        else:  # BERT's biases start at 0 (and a key bias gets no gradient): no *new* zeros
            assert int(((p == 0) & (before[name] != 0)).sum()) == 0, name
    assert set(opt.sparsity()["per_tensor"]) == pruned


def test_gpt2_selection(transformers):
    cfg = transformers.GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=2, n_positions=16,
                                  bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg)
    expected = [f"transformer.h.{i}.{m}.weight" for i in range(2)
                for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    check_groups(model, prunable_param_groups(model), expected)


def test_llama_selection(transformers):
    cfg = transformers.LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=37,
                                   num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=1, max_position_embeddings=16)
    model = transformers.LlamaForCausalLM(cfg)
    expected = [f"model.layers.{i}.{m}.weight" for i in range(2) for m in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    check_groups(model, prunable_param_groups(model), expected)


def test_custom_patterns_and_frozen_params(bert):
    groups = prunable_param_groups(bert, patterns=[r"^classifier\.weight$", r"pooler\.dense\.weight"])
    check_groups(bert, groups, ["bert.pooler.dense.weight", "classifier.weight"])
    bert.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    try:
        groups = prunable_param_groups(bert)
        names = groups[0]["param_names"] + groups[1]["param_names"]
        assert "bert.embeddings.word_embeddings.weight" not in names
        assert len(names) == len(list(bert.parameters())) - 1
    finally:
        bert.bert.embeddings.word_embeddings.weight.requires_grad_(True)
    with pytest.raises(ValueError, match="no parameter name"):
        prunable_param_groups(bert, patterns=[r"nothing_matches"])
    with pytest.raises(ValueError, match="no parameter name"):
        prunable_param_groups(torch.nn.Linear(3, 3))


# -- bad arguments ---------------------------------------------------------------

def _ok(device):
    return tensors(device, (4, 3), (3,))


def _w(device):
    return torch.randn(3, 3, device=device)


def _in_two_groups(device):
    w = _w(device)
    return [{"params": [w]}, {"params": [w]}]


BAD = {  # id: (params, extra kwargs, exception, message must match)
    "target_sparsity=1": (_ok, dict(target_sparsity=1.0), ValueError, "target_sparsity"),
    "target_sparsity<0": (_ok, dict(target_sparsity=-0.1), ValueError, "target_sparsity"),
    "total<=warmup+final": (_ok, dict(total_steps=10, initial_warmup_steps=5, final_finetune_steps=5),
                            ValueError, "total_steps"),
    "prune_interval=0": (_ok, dict(prune_interval=0), ValueError, "prune_interval"),
    "sigma0_sq=sigma1_sq": (_ok, dict(sigma0_sq=0.05, sigma1_sq=0.05), ValueError, "sigma0_sq"),
    "sigma0_sq>sigma1_sq": (_ok, dict(sigma0_sq=0.1, sigma1_sq=0.05), ValueError, "sigma0_sq"),
    "sigma0_sq=0": (_ok, dict(sigma0_sq=0.0), ValueError, "sigma0_sq"),
    "lambda_mix=0": (_ok, dict(lambda_mix=0.0), ValueError, "lambda_mix"),
    "lambda_mix=1": (_ok, dict(lambda_mix=1.0), ValueError, "lambda_mix"),
    "lr<0": (_ok, dict(lr=-1.0), ValueError, "lr"),
    "beta2=1": (_ok, dict(betas=(0.9, 1.0)), ValueError, r"betas\[1\]"),
    "eps=0": (_ok, dict(eps=0.0), ValueError, "eps"),
    "num_train_examples=0": (_ok, dict(num_train_examples=0), ValueError, "num_train_examples"),
    "on_nonfinite": (_ok, dict(on_nonfinite="ignore"), ValueError, "on_nonfinite"),
    "int_tensor": (lambda d: [torch.ones(3, 3, dtype=torch.int64, device=d)], {}, TypeError,
                   r"params\[0\].*dtype"),
    "complex_tensor": (lambda d: [_w(d), torch.randn(3, 3, dtype=torch.complex64, device=d)], {},
                       TypeError, r"params\[1\].*dtype"),
    "sparse_tensor": (lambda d: [_w(d).to_sparse()], {}, ValueError, r"params\[0\].*sparse"),
    "tensor_in_two_groups": (_in_two_groups, {}, ValueError, "more than one parameter group"),
    "tensor_twice_in_a_group": (lambda d: [_w(d)] * 2, {}, ValueError, r"params\[1\] is params\[0\] again"),
    "lr=inf": (_ok, dict(lr=float("inf")), ValueError, "lr must be finite in float32"),
    "weight_decay=1e39": (_ok, dict(weight_decay=1e39), ValueError, "weight_decay must be finite in float32"),
    "sigma1_sq=inf": (_ok, dict(sigma1_sq=float("inf")), ValueError, "sigma1_sq must be finite"),
    "num_train_examples=inf": (_ok, dict(num_train_examples=float("inf")), ValueError,
                               "num_train_examples must be finite"),
    "no_ndim2_tensor": (lambda d: [torch.randn(3, device=d), torch.randn(1, device=d)], {}, ValueError,
                        "prunable set is empty"),
    "all_prune_false": (lambda d: [{"params": [_w(d)], "prune": False}], {}, ValueError,
                        "prunable set is empty"),
    "prune_not_bool": (lambda d: [{"params": [_w(d)], "prune": "yes"}], {}, TypeError, "'prune'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_arguments(device, case):
    make, kw, exc, match = BAD[case]
    with pytest.raises(exc, match=match):
        MGPP(make(device), **{**SCHED, **kw})


def test_param_shape_changed_after_construction(device):
    w, b = tensors(device, (4, 3), (3,))
    opt = MGPP([w, b], **SCHED)
    w.data = torch.randn(5, 3, device=device)
    fill_grads([w, b])
    with pytest.raises(RuntimeError, match=r"changed shape from \(4, 3\) to \(5, 3\)"):
        opt.step()
    assert opt.current_step == 0


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_nonfinite_grad_raises_by_default(device, bad):
    w, b = tensors(device, (6, 5), (5,))
    opt = MGPP([w, b], lr=1e-2, **SCHED)
    fill_grads([w, b])
    opt.step()
    snapshot = [w.clone(), b.clone()] + [opt.state[p][k].clone() for p in (w, b)
                                         for k in ("exp_avg", "exp_avg_sq", "step")]
    fill_grads([w, b], seed=2)
    b.grad[3] = bad
    with pytest.raises(FloatingPointError, match="inf or NaN"):
        opt.step()
    after = [w, b] + [opt.state[p][k] for p in (w, b) for k in ("exp_avg", "exp_avg_sq", "step")]
    assert all(torch.equal(x, y) for x, y in zip(snapshot, after))
    assert opt.current_step == 1


def test_nonfinite_grad_skip(device):
    def make():
        w, b = tensors(device, (6, 5), (5,), dtype=torch.bfloat16)
        return w, b, MGPP([w, b], lr=1e-2, total_steps=8, num_train_examples=100,
                          initial_warmup_steps=1, on_nonfinite="skip", target_sparsity=0.5)
    w, b, opt = make()
    w2, b2, clean = make()
    for t in range(6):
        if t in (0, 1, 3):  # before any step, in place of the first event (t_s = 1), later
            fill_grads([w, b], seed=100 + t)
            w.grad[2, 2] = float("nan") if t % 2 else float("-inf")
            snapshot = [w.clone(), b.clone()] + [v.clone() for p in (w, b) for v in opt.state[p].values()]
            opt.step()
            assert opt.current_step == t
            after = [w, b] + [v for p in (w, b) for v in opt.state[p].values()]
            assert len(after) == len(snapshot) == (2 if t == 0 else 8)
            assert all(torch.equal(x, y) for x, y in zip(snapshot, after))
        fill_grads([w, b], seed=t)
        opt.step()
        fill_grads([w2, b2], seed=t)
        clean.step()
    # skipped steps leave no trace: same run as one that never saw them
    assert torch.equal(w, w2) and torch.equal(b, b2)
    assert opt.schedule_state()["skipped_steps"] == 3
    assert opt.schedule_state()["events"] == clean.schedule_state()["events"] > 0


def test_grad_scaler(device):
    """GradScaler unscales before MGPP sees the gradients. On an overflow the
    scaler never calls MGPP's step, so what can be checked is that the
    overflowed batch leaves no trace: the run equals one without that batch.
    What MGPP itself does with the same inf gradient (on_nonfinite="skip")
    must give that run too, and count the skip."""
    def run(use_scaler, inf_at=(), drop=(), **opt_kw):
        torch.manual_seed(0)
        model = torch.nn.Linear(6, 4).to(device)
        opt = MGPP(model.parameters(), lr=1e-2, total_steps=10, num_train_examples=100,
                   initial_warmup_steps=2, **opt_kw)
        scaler = torch.amp.GradScaler(device, init_scale=2.0 ** 10, enabled=use_scaler)
        for t in range(5):
            if t in drop:
                continue
            gen = torch.Generator().manual_seed(t)
            x = torch.randn(3, 6, generator=gen).to(device)
            opt.zero_grad()
            loss = model(x).pow(2).mean() * (float("inf") if t in inf_at else 1.0)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        return model, opt
    plain, plain_opt = run(False)
    scaled, scaled_opt = run(True)
    assert scaled_opt.current_step == plain_opt.current_step == 5
    for p, q in zip(plain.parameters(), scaled.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)  # power-of-2 scale: exact in practice
    without, without_opt = run(True, drop=(1,))
    overflowed, overflowed_opt = run(True, inf_at=(1,))
    own, own_opt = run(False, inf_at=(1,), on_nonfinite="skip")
    for other, other_opt in ((overflowed, overflowed_opt), (own, own_opt)):
        assert all(torch.equal(p, q) for p, q in zip(without.parameters(), other.parameters()))
        assert other_opt.current_step == without_opt.current_step == 4
        assert other_opt.schedule_state()["events"] == without_opt.schedule_state()["events"]
    assert overflowed_opt.schedule_state()["skipped_steps"] == 0  # the scaler skipped it
    assert own_opt.schedule_state()["skipped_steps"] == 1  # MGPP skipped it


def test_sigma0_sq_below_the_fp32_range(device):
    """1/sigma0_sq must be representable in fp32, or the prior turns every
    weight into NaN (0 * inf): such a sigma0_sq is refused by name, and at
    the smallest accepted one every weight stays finite."""
    w = torch.tensor([[0.0, 1e-20, 1e-3, 0.5]], device=device)
    kw = dict(lr=1e-3, total_steps=10, num_train_examples=100, sigma1_sq=1.0)
    for bad in (1e-39, 1e-45):
        with pytest.raises(ValueError, match="sigma0_sq must be >= 1e-38"):
            MGPP([w], sigma0_sq=bad, **kw)
    opt = MGPP([w], sigma0_sq=1e-38, **kw)
    w.grad = torch.ones_like(w)
    opt.step()
    assert bool(torch.isfinite(w).all()), w
    assert w[0, 3] < 0.5  # the step did run


def test_prunable_tensors_on_two_devices_refused():
    """The global threshold needs every prunable tensor on one device; a
    second device is refused before anything is written (a "meta" tensor
    stands in for a GPU one, so this runs everywhere)."""
    a = torch.randn(4, 4, requires_grad=True)
    b = torch.randn(4, 4, device="meta", requires_grad=True)
    opt = MGPP([a, b], **SCHED)
    a.grad = torch.ones_like(a)
    b.grad = torch.ones_like(b)
    before = a.detach().clone()
    with pytest.raises(RuntimeError, match="one device"):
        opt.step()
    assert torch.equal(a, before) and opt.current_step == 0
