"""One-shot importance scores (magnitude, Taylor, Cam-Cut, Smooth-Cut),
masks from them, and FixedMask fine-tuning, against plain-PyTorch
references on a small model."""
import io
import math

import pytest
import torch

from mgpp_ext import FixedMask, importance
from mgpp_ext.reference import ReferenceMGPP
from conftest import bits


class Tiny(torch.nn.Module):
    """Embedding -> Linear -> ReLU -> LayerNorm -> Linear, mean over tokens."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = torch.nn.Embedding(11, 6)
        self.fc1 = torch.nn.Linear(6, 10)
        self.act = torch.nn.ReLU()
        self.norm = torch.nn.LayerNorm(10)
        self.fc2 = torch.nn.Linear(10, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, ids):
        return self.fc2(self.norm(self.act(self.fc1(self.emb(ids))))).mean(1)


def batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randint(0, 11, (4, 5), generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(3)]


def loss_fn(model, batch):
    ids, y = batch
    return torch.nn.functional.cross_entropy(model(ids), y)


def manual(model, ids, noise=None):
    """The forward pass by hand: (fc1 output, fc2 output per token, logits);
    ``noise(shape)`` is added to the outputs of the modules with weights
    but emb and norm: fc1 and fc2 (not the parameter-free ReLU)."""
    n = noise or (lambda shape: 0.0)
    h1 = torch.nn.functional.linear(model.emb(ids), model.fc1.weight, model.fc1.bias)
    h1 = h1 + n(h1.shape)
    a = torch.relu(h1)
    z = model.norm(a)
    h2 = torch.nn.functional.linear(z, model.fc2.weight, model.fc2.bias)
    h2 = h2 + n(h2.shape)
    return h1, h2, h2.mean(1)


def ref_grads(model, data, passes=1, noise_std=0.0, seed=0):
    params = [model.fc1.weight, model.fc2.weight]
    sums = [torch.zeros_like(p) for p in params]
    gen = torch.Generator().manual_seed(seed)
    noise = (lambda shape: noise_std * torch.randn(shape, generator=gen)) if noise_std else None
    for ids, y in data:
        for _ in range(passes):
            _, _, logits = manual(model, ids, noise)
            gs = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, y), params)
            for s, g in zip(sums, gs):
                s.add_(g)
    return [s / (len(data) * passes) for s in sums]


def params_of(model):
    return [model.fc1.weight, model.fc2.weight]


def test_taylor_and_magnitude_match_reference():
    model = Tiny()
    got = importance.taylor(model, params_of(model), batches(), loss_fn)
    want = [(p.detach() * g).abs() for p, g in zip(params_of(model), ref_grads(model, batches()))]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    for a, p in zip(importance.magnitude(params_of(model)), params_of(model)):
        assert torch.equal(a, p.detach().abs())


def test_cam_cut_matches_reference():
    model = Tiny()
    got = importance.cam_cut(model, params_of(model), batches(), loss_fn)
    with torch.no_grad():
        outs = [manual(model, ids)[:2] for ids, _ in batches()]
    a1 = torch.cat([h1.reshape(-1, 10) for h1, _ in outs]).mean(0)
    a2 = torch.cat([h2.reshape(-1, 3) for _, h2 in outs]).mean(0)
    g1, g2 = ref_grads(model, batches())
    want = [(model.fc1.weight.detach() * g1 * a1[:, None]).abs(), (model.fc2.weight.detach() * g2 * a2[:, None]).abs()]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_smooth_cut_matches_reference():
    model = Tiny()
    got = importance.smooth_cut(model, params_of(model), batches(), loss_fn, passes=4, noise_std=0.05, seed=7)
    want = [(p.detach() * g).abs()
            for p, g in zip(params_of(model), ref_grads(model, batches(), passes=4, noise_std=0.05, seed=7))]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # the noise matters, and without it Smooth-Cut is Taylor
    plain = importance.taylor(model, params_of(model), batches(), loss_fn)
    assert not torch.allclose(got[0], plain[0])
    quiet = importance.smooth_cut(model, params_of(model), batches(), loss_fn, passes=2, noise_std=0.0)
    for a, b in zip(quiet, plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


def test_scoring_leaves_the_model_as_it_was():
    model = Tiny()
    model.train()
    model.fc2.eval()  # a submodule in its own mode keeps it
    before = {n: bits(p).clone() for n, p in model.named_parameters()}
    model.fc2.bias.requires_grad_(False)
    model.fc1.weight.grad = torch.ones_like(model.fc1.weight)
    for name in importance.SCORES:
        if name == "magnitude":
            continue
        importance.SCORES[name](model, params_of(model), batches(), loss_fn)
    assert model.training and not model.fc2.training and model.fc1.training
    assert not model.fc2.bias.requires_grad and model.emb.weight.requires_grad
    assert torch.equal(model.fc1.weight.grad, torch.ones_like(model.fc1.weight)) and model.fc2.weight.grad is None
    for n, p in model.named_parameters():
        assert torch.equal(bits(p), before[n]), n


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_masks_from_scores_exact(scope, sparsity):
    g = torch.Generator().manual_seed(2)
    scores = [torch.rand(20, 7, generator=g), torch.rand(33, generator=g) * 2]
    scores[0][0, :4] = 0.25  # ties
    masks = importance.masks_from_scores(scores, sparsity, scope=scope)
    groups = [scores] if scope == "global" else [[s] for s in scores]
    out = [masks] if scope == "global" else [[m] for m in masks]
    for ss, ms in zip(groups, out):
        flat = torch.cat([s.reshape(-1) for s in ss])
        k = math.floor(round(sparsity * 10) * flat.numel() / 10)
        if k == 0:
            assert all(m.all() for m in ms)
            continue
        tau = torch.kthvalue(flat, k).values
        for s, m in zip(ss, ms):
            assert torch.equal(m, s > tau)
        assert sum(int((~m).sum()) for m in ms) >= k


def test_fixed_mask_matches_reference_and_keeps_zeros():
    g = torch.Generator().manual_seed(4)
    ps = [torch.randn(8, 6, generator=g), torch.randn(5, 4, generator=g), torch.randn(6, generator=g)]
    masks = [torch.rand(8, 6, generator=g) > 0.4, torch.rand(5, 4, generator=g) > 0.7]
    hp = dict(lr=1e-2, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    opt = FixedMask(ps, masks, **hp)
    assert torch.equal(ps[0] == 0, ~masks[0]) and torch.equal(ps[1] == 0, ~masks[1])
    ref_ps = [p.clone() for p in ps]
    ref = ReferenceMGPP(ref_ps, [True, True, False], **hp, total_steps=100, initial_warmup_steps=90,
                        num_train_examples=1, method="gmp")
    ref.final_mask = [masks[0], masks[1], None]
    for t in range(5):
        gg = torch.Generator().manual_seed(10 + t)
        for p, q in zip(ps, ref_ps):
            p.grad = torch.randn(p.shape, generator=gg)
            q.grad = p.grad.clone()
        opt.step()
        ref.step()
        for a, b in zip(ps, ref_ps):
            assert torch.equal(bits(a), bits(b)), t
    assert torch.equal(ps[0] == 0, ~masks[0])
    assert opt.mask_fixed and opt.schedule_state()["events"] == 0


def test_fixed_mask_resume_is_bitwise():
    def fresh():
        g = torch.Generator().manual_seed(5)
        ps = [torch.randn(8, 8, generator=g), torch.randn(8, generator=g)]
        return ps, FixedMask(ps, [torch.arange(64).view(8, 8) % 3 != 0], lr=1e-2)

    def run(ps, opt, ts):
        for t in ts:
            gg = torch.Generator().manual_seed(t)
            for p in ps:
                p.grad = torch.randn(p.shape, generator=gg)
            opt.step()
    a, oa = fresh()
    run(a, oa, range(6))
    b, ob = fresh()
    run(b, ob, range(3))
    buf = io.BytesIO()
    torch.save({"opt": ob.state_dict(), "ps": [p.clone() for p in b]}, buf)
    buf.seek(0)
    saved = torch.load(buf)
    c, oc = fresh()
    with torch.no_grad():
        for p, q in zip(c, saved["ps"]):
            p.copy_(q)
    oc.load_state_dict(saved["opt"])
    run(c, oc, range(3, 6))
    for x, y in zip(a, c):
        assert torch.equal(x, y)


def test_bad_input_refused_by_name():
    model = Tiny()
    ps = params_of(model)
    with pytest.raises(ValueError, match="batches"):
        importance.taylor(model, ps, [], loss_fn)
    with pytest.raises(ValueError, match="params"):
        importance.taylor(model, [torch.randn(3, 3)], batches(), loss_fn)
    with pytest.raises(ValueError, match="params"):
        importance.cam_cut(model, [], batches(), loss_fn)
    with pytest.raises(ValueError, match="passes"):
        importance.smooth_cut(model, ps, batches(), loss_fn, passes=0)
    with pytest.raises(ValueError, match="noise_std"):
        importance.smooth_cut(model, ps, batches(), loss_fn, noise_std=-1.0)
    with pytest.raises(TypeError, match="scalar"):
        importance.taylor(model, ps, batches(), lambda m, b: m(b[0]))
    s = [torch.rand(4, 4)]
    with pytest.raises(ValueError, match="sparsity"):
        importance.masks_from_scores(s, 1.0)
    with pytest.raises(ValueError, match="scope"):
        importance.masks_from_scores(s, 0.5, scope="row")
    with pytest.raises(ValueError, match="scores\\[0\\]"):
        importance.masks_from_scores([torch.tensor([1.0, float("nan")])], 0.5)
    w = [torch.randn(4, 4)]
    with pytest.raises(TypeError, match="masks\\[0\\]"):
        FixedMask(w, [torch.ones(4, 4)])
    with pytest.raises(ValueError, match="shape"):
        FixedMask(w, [torch.ones(4, 5, dtype=torch.bool)])
    with pytest.raises(ValueError, match="masks"):
        FixedMask(w, [torch.ones(4, 4, dtype=torch.bool)] * 2)
    with pytest.raises(ValueError, match="no weight"):
        FixedMask(w, [torch.zeros(4, 4, dtype=torch.bool)])


def test_smooth_cut_perturbs_the_modules_with_weights_only():
    """On real architectures: BERT's and GPT-2's linear layers (Conv1D) and
    the classifier, not embeddings, LayerNorms, Llama's RMSNorm,
    activations, dropout or containers."""
    transformers = pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D
    bert = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
        num_labels=3))
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2,
                                                                 n_positions=16))
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2))
    for model, kinds in ((bert, (torch.nn.Linear,)), (gpt2, (Conv1D, torch.nn.Linear)),
                         (llama, (torch.nn.Linear,))):
        got = {id(m) for m in importance._noised(model)}
        want = {id(m) for m in model.modules() if isinstance(m, kinds)}
        assert got == want, type(model).__name__
    # torch's batch, instance and group norms are normalisation layers too.
    conv = torch.nn.Sequential(torch.nn.Conv1d(2, 4, 3), torch.nn.BatchNorm1d(4),
                               torch.nn.InstanceNorm1d(4, affine=True), torch.nn.GroupNorm(2, 4),
                               torch.nn.Linear(4, 2))
    assert [type(m).__name__ for m in importance._noised(conv)] == ["Conv1d", "Linear"]


def test_score_of_a_param_the_loss_does_not_use_refused():
    model = Tiny()
    model.extra = torch.nn.Linear(3, 3)  # a parameter of the model that the forward never uses
    with pytest.raises(ValueError, match="does not depend on any of the scored params"):
        importance.taylor(model, [model.extra.weight], batches(), loss_fn)
    assert model.extra.weight.requires_grad and model.extra.weight.grad is None


def test_cam_cut_refuses_weights_it_cannot_score():
    """Cam-Cut's activation is a linear layer's output per output feature:
    an embedding's weight, and a layer the loss never calls, are refused by
    name, and the model is left as it was."""
    model = Tiny()
    with pytest.raises(ValueError, match=r"params\[0\] is the weight of Embedding"):
        importance.cam_cut(model, [model.emb.weight], batches(), loss_fn)
    model.extra = torch.nn.Linear(3, 3)
    with pytest.raises(ValueError, match=r"the module of params\[1\] was never called"):
        importance.cam_cut(model, [model.fc1.weight, model.extra.weight], batches(), loss_fn)
    assert model.fc1.weight.grad is None and model.training
