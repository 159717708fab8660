"""all_finite: every position of every size is read (the CPU pass reads each
range as interleaved streams, with a scalar tail)."""
import pytest
import torch

from mgpp_ext import ops

SIZES = [1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1000, 65535, 65536, 65537, 200_003]


def positions(n):
    q = n // 8
    cand = {0, n - 1, n // 2} | {i * q + d for i in range(9) for d in (-1, 0, 1)}
    return sorted(p for p in cand if 0 <= p < n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("n", SIZES)
def test_every_position_is_checked(device, dtype, n):
    x = torch.randn(n, device=device).to(dtype)
    y = torch.randn(5, 3, device=device).to(dtype)
    assert bool(ops.all_finite([y, x]))
    for pos in positions(n):
        for bad in (float("inf"), float("-inf"), float("nan")):
            z = x.clone()
            z[pos] = bad
            assert not bool(ops.all_finite([y, z])), (n, pos, bad)


def test_huge_finite_values_pass(device):
    x = torch.tensor([torch.finfo(torch.float32).max, -torch.finfo(torch.float32).max,
                      torch.finfo(torch.float32).tiny, 0.0, -0.0], device=device)
    assert bool(ops.all_finite([x]))
    h = torch.tensor([65504.0, -65504.0], dtype=torch.float16, device=device)
    assert bool(ops.all_finite([h]))


@pytest.mark.parametrize("device", ["cpu", "meta"] + (["cuda"] if torch.cuda.is_available() else []))
def test_refuses_non_float_by_name(device):
    """The CPU kernel, the fake implementation (meta) and the composite CUDA
    takes refuse the same inputs with the same type."""
    ok = torch.zeros(3, device=device)
    with pytest.raises(TypeError, match=r"all_finite: 'tensors\[1\]' must be float32, bfloat16 or float16"):
        ops.all_finite([ok, torch.zeros(3, dtype=torch.float64, device=device)])
