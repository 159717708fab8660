"""``save_sparse(pattern="n:m")``: kept values plus per-group indices, bitwise round trips."""
import pytest
import torch

from mgpp_ext import GMP, export, prunable_param_groups
from mgpp_ext.reference_nm import nm_mask_reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def nm_sparse(shape, n, m, dim, dtype, seed=0):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
    return w.masked_fill(~nm_mask_reference(w.abs(), n, m, dim), 0.0)


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.view(torch.uint8).reshape(-1), b.view(torch.uint8).reshape(-1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_round_trip_is_bitwise_and_compact(tmp_path, n, m, dtype):
    state = {"w": nm_sparse((24, 64), n, m, 1, dtype), "bias": torch.randn(24).to(dtype)}
    info = export.save_sparse(state, tmp_path / "f.safetensors", pattern=f"{n}:{m}")
    assert info["nm_tensors"] == ["w"]
    bits = (m - 1).bit_length()
    kept = 24 * 64 * n // m
    assert info["pruned_compressed_bytes"] == kept * state["w"].element_size() + -(-kept * bits // 8)
    back = export.read_sparse(tmp_path / "f.safetensors")
    assert same_bits(back["w"], state["w"]) and same_bits(back["bias"], state["bias"])


def test_fewer_nonzeros_negative_zero_and_fallback(tmp_path):
    w = torch.tensor([[-0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 2.0],
                      [0.0, 0.0, 0.0, 0.0, 3.0, -4.0, 0.0, 0.0]])
    dense3 = torch.tensor([[1.0, 2.0, 3.0, 0.0]] * 2)  # 3 non-zeros in a group of 4: not 2:4
    info = export.save_sparse({"w": w, "d": dense3}, tmp_path / "f.safetensors", pattern="2:4", min_sparsity=0.0)
    assert info["nm_tensors"] == ["w"]
    back = export.read_sparse(tmp_path / "f.safetensors")
    assert same_bits(back["w"], w) and same_bits(back["d"], dense3)


def test_input_dim_zero_and_given_dims(tmp_path):
    conv = nm_sparse((32, 12), 2, 4, 0, torch.float32, seed=3)  # Conv1D [in, out]: groups along dim 0
    info = export.save_sparse({"c": conv}, tmp_path / "a.safetensors", pattern="2:4", input_dims={"c": 0})
    assert info["nm_tensors"] == ["c"]
    assert same_bits(export.read_sparse(tmp_path / "a.safetensors")["c"], conv)
    wrong = export.save_sparse({"c": conv}, tmp_path / "b.safetensors", pattern="2:4", input_dims={"c": 1})
    assert wrong["nm_tensors"] == []  # not 2:4 along dim 1: stored another way, still exact
    assert same_bits(export.read_sparse(tmp_path / "b.safetensors")["c"], conv)


def test_bad_pattern_refused(tmp_path):
    with pytest.raises(ValueError, match="'pattern'"):
        export.save_sparse({"w": torch.zeros(4, 4)}, tmp_path / "f.safetensors", pattern="2/4")


def test_gradual_2_4_model_exports_bitwise(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    groups = prunable_param_groups(model, patterns=[r"weight$"])
    opt = GMP(groups, lr=1e-2, total_steps=12, target_sparsity=0.5, initial_warmup_steps=1,
              final_finetune_steps=3, prune_interval=2, pattern="2:4")
    x = torch.randn(64, 16)
    for _ in range(12):
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
    dims = dict(zip(groups[0]["param_names"], groups[0]["input_dims"]))
    info = export.save_sparse(model, tmp_path / "m.safetensors", pattern="2:4", input_dims=dims)
    assert info["nm_tensors"] == ["0.weight", "2.weight"]
    back = export.read_sparse(tmp_path / "m.safetensors")
    for name, t in model.state_dict().items():
        assert same_bits(back[name], t), name
