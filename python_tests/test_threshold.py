"""The exact global threshold (two-level radix select) and its building blocks.

Reference: torch.kthvalue over torch.cat of every |x| as fp32, which is what
the authors' code does; global_threshold must agree with it bitwise.
"""
import pytest
import torch

from conftest import bits
from mgpp_ext import ops

HIST = ops.HIST_BINS


def kthvalue_reference(tensors, k):
    return torch.kthvalue(torch.cat([t.detach().float().abs().reshape(-1) for t in tensors]), k).values


def assert_threshold(tensors, k):
    got = ops.global_threshold(tensors, k)
    want = kthvalue_reference(tensors, k)
    assert got.dtype == torch.float32 and got.dim() == 0
    assert got.device == tensors[0].device
    assert torch.equal(got, want), (k, got, want)
    assert torch.equal(bits(got), bits(want))  # +0, never -0
    return got


def ranks(n):
    return sorted({1, 2, n // 3 + 1, n // 2 + 1, (9 * n) // 10 + 1, n - 1, n} & set(range(1, n + 1)))


def normal(device, *shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(device)


def tied(device, n, seed=1):
    values = torch.tensor([0.5, -0.5, 1.0, -2.0, 2.0])
    idx = torch.randint(0, len(values), (n,), generator=torch.Generator().manual_seed(seed))
    return values[idx].to(device)


def zero_heavy(device, n, seed=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g)
    zero = torch.rand(n, generator=g) < 0.9
    sign = torch.rand(n, generator=g) < 0.5
    x[zero & sign] = 0.0
    x[zero & ~sign] = -0.0
    assert (torch.signbit(x) & (x == 0)).any() and (~torch.signbit(x) & (x == 0)).any()
    return x.to(device)


def tiny(device):
    # subnormals (down to the smallest), the smallest normal, and a few normals
    x = torch.tensor([1e-40, -1e-40, 1e-45, -1e-45, 1.4e-45, 3e-42, 1.1754944e-38, -1e-38,
                      2e-39, 0.0, 1e-30, -5e-41, 1e-40, 7e-44])
    assert (x.abs() < 1.1754944e-38).sum() >= 8
    return x.to(device)


def huge(device):
    return torch.tensor([1e38, -3e38, float("inf"), -float("inf"), 3.4028235e38, 1.0, -1e38,
                         2e38, float("inf"), 0.5]).to(device)


@pytest.mark.parametrize("make", [
    lambda d: [normal(d, 1000)],
    lambda d: [tied(d, 257)],
    lambda d: [zero_heavy(d, 1000)],
    lambda d: [tiny(d)],
    lambda d: [huge(d)],
    lambda d: [tied(d, 37), zero_heavy(d, 50), tiny(d), huge(d)],
], ids=["normal", "tied", "zero_heavy", "tiny", "huge", "all_mixed"])
def test_matches_kthvalue(device, make):
    tensors = make(device)
    n = sum(t.numel() for t in tensors)
    for k in ranks(n):
        assert_threshold(tensors, k)


def test_nan_sorts_above_inf(device):
    x = torch.tensor([1.0, float("nan"), -float("inf"), 2.0, float("nan"), -0.5], device=device)
    for k in range(1, 7):
        got, want = ops.global_threshold([x], k), kthvalue_reference([x], k)
        assert torch.equal(bits(got), bits(want)), k  # NaN != NaN: compare the bits
    assert torch.isnan(ops.global_threshold([x], 5)) and torch.isinf(ops.global_threshold([x], 4))


def test_every_rank_with_ties(device):
    # every k of a small, heavily tied input (the rank falls inside runs of ties)
    tensors = [tied(device, 23), zero_heavy(device, 9, seed=5)]
    for k in range(1, 33):
        assert_threshold(tensors, k)


def test_single_element(device):
    x = torch.tensor([-3.25], device=device)
    assert assert_threshold([x], 1).item() == 3.25
    assert assert_threshold([torch.tensor(-0.0, device=device)], 1).item() == 0.0  # 0-dim


@pytest.mark.parametrize("n", [1, 3, 4, 4097])
def test_odd_sizes(device, n):
    x = normal(device, n, seed=n)
    for k in ranks(n):
        assert_threshold([x], k)


def test_many_tensors_of_mixed_sizes(device):
    g = torch.Generator().manual_seed(3)
    sizes = torch.randint(1, 300, (25,), generator=g).tolist() + [1, 1, 4097, 0]
    tensors = [torch.randn(s, generator=g).mul_(10.0 ** torch.randint(-3, 3, (1,), generator=g).item()).to(device)
               for s in sizes]
    tensors.insert(3, torch.empty(3, 0, device=device))  # empty tensors count for nothing
    for k in ranks(sum(sizes)):
        assert_threshold(tensors, k)


def test_non_contiguous(device):
    base = normal(device, 64, 33, seed=4)
    tensors = [base.t(), base[::3], base[:, 1::2], normal(device, 4097, seed=5)[::2]]
    assert not any(t.is_contiguous() for t in tensors)
    for k in ranks(sum(t.numel() for t in tensors)):
        assert_threshold(tensors, k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_dtypes(device, dtype):
    x = (normal(device, 999, seed=6) * 10).to(dtype)
    z = zero_heavy(device, 100).to(dtype)
    for k in ranks(1099):
        assert_threshold([x, z], k)


def test_mixed_dtypes_in_one_call(device):
    tensors = [normal(device, 300, seed=7).to(torch.bfloat16), normal(device, 301, seed=8),
               normal(device, 17, 5, seed=9).to(torch.float16), tied(device, 40).to(torch.bfloat16)]
    for k in ranks(sum(t.numel() for t in tensors)):
        assert_threshold(tensors, k)


@pytest.mark.parametrize("tensors_fn, k, exc, match", [
    (lambda d: [torch.randn(5, device=d)], 0, RuntimeError, "'k'"),
    (lambda d: [torch.randn(5, device=d), torch.randn(2, device=d)], 8, RuntimeError, "'k'"),
    (lambda d: [], 1, RuntimeError, "'tensors'"),
    (lambda d: [torch.randn(3, device=d), torch.arange(4, device=d)], 1, TypeError,
     r"'tensors\[1\]' must be float32, bfloat16 or float16"),
], ids=["k=0", "k>N", "empty", "int"])
def test_global_threshold_errors(device, tensors_fn, k, exc, match):
    with pytest.raises(exc, match=match):
        ops.global_threshold(tensors_fn(device), k)


# -- the lower-level ops ------------------------------------------------------

def abs_bit_patterns(tensors):
    return torch.cat([t.detach().float().abs().reshape(-1).view(torch.int32).long() for t in tensors])


def test_abs_histogram_level0(device):
    tensors = [normal(device, 64, 33), zero_heavy(device, 500).to(torch.bfloat16), huge(device), tiny(device)]
    n = sum(t.numel() for t in tensors)
    hist = torch.zeros(HIST, dtype=torch.int64, device=device)
    ops.abs_histogram_(tensors, ops.new_select_state(1, device), hist, 0)
    assert int(hist.sum()) == n
    want = torch.bincount(abs_bit_patterns(tensors).cpu() >> 16, minlength=HIST)
    assert torch.equal(hist.cpu(), want)
    # the op adds into what hist holds
    ops.abs_histogram_(tensors, ops.new_select_state(1, device), hist, 0)
    assert torch.equal(hist.cpu(), 2 * want)


def test_abs_histogram_level1(device):
    x = normal(device, 4097, seed=11)
    pats = abs_bit_patterns([x]).cpu()
    prefix = int((pats >> 16)[100])
    state = torch.tensor([1, prefix, 0, 0], dtype=torch.int64, device=device)
    hist = torch.zeros(HIST, dtype=torch.int64, device=device)
    ops.abs_histogram_([x], state, hist, 1)
    sel = pats[(pats >> 16) == prefix]
    assert int(hist.sum()) == sel.numel() >= 1
    assert torch.equal(hist.cpu(), torch.bincount(sel & 0xFFFF, minlength=HIST))


def test_select_bin(device):
    hist = torch.zeros(HIST, dtype=torch.int64)
    hist[5], hist[10], hist[200], hist[HIST - 1] = 3, 2, 4, 1
    hist = hist.to(device)
    for k, (bin_, rank_in_bin, count) in {1: (5, 1, 3), 3: (5, 3, 3), 4: (10, 1, 2), 5: (10, 2, 2),
                                          6: (200, 1, 4), 9: (200, 4, 4), 10: (HIST - 1, 1, 1)}.items():
        state = ops.new_select_state(k, device)
        ops.select_bin_(hist, state, 0)
        assert state.cpu().tolist() == [rank_in_bin, bin_, 0, count], k
    # level 1 completes tau's bit pattern below the level-0 prefix
    state = torch.tensor([2, 0x3F80, 0, 0], dtype=torch.int64, device=device)
    low = torch.zeros(HIST, dtype=torch.int64)
    low[7], low[9] = 1, 5
    ops.select_bin_(low.to(device), state, 1)
    assert int(state[2]) == (0x3F80 << 16) | 9
    if device == "cpu":
        # A GPU kernel cannot raise without a host sync; there select_bin_
        # clamps an out-of-range rank and global_threshold checks k on the host.
        with pytest.raises(RuntimeError, match="select_state"):
            ops.select_bin_(hist, ops.new_select_state(11, device), 0)  # only 10 elements


def select(tensors, k):
    """The full two-level select, leaving tau in the returned select state."""
    device = tensors[0].device
    state = ops.new_select_state(k, device)
    for level in (0, 1):
        hist = torch.zeros(HIST, dtype=torch.int64, device=device)
        ops.abs_histogram_(tensors, state, hist, level)
        ops.select_bin_(hist, state, level)
    return state


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_apply_threshold(device, dtype):
    base = normal(device, 64, 33, seed=12)
    tensors = [base.to(dtype), tied(device, 301).to(dtype), zero_heavy(device, 200).to(dtype),
               normal(device, 10, 9, seed=13).to(dtype).t()]  # non-contiguous
    originals = [t.clone() for t in tensors]
    # k lands on the first of the many |x| == 0.5 of the tied tensor
    k = sum(int((t.float().abs() < 0.5).sum()) for t in tensors) + 1
    state = select(tensors, k)
    tau = ops.threshold_from_select_state(state)
    assert torch.equal(tau, kthvalue_reference(tensors, k)) and tau.item() == 0.5
    masks = [torch.zeros(t.shape, dtype=torch.bool, device=device) for t in tensors]
    ops.apply_threshold_(tensors, state, masks)
    zeros = 0
    for t, o, m in zip(tensors, originals, masks):
        keep = o.float().abs() > tau
        assert torch.equal(m, keep)
        assert torch.equal(bits(t), bits(torch.where(keep, o, torch.zeros_like(o))))  # +0 where pruned
        zeros += int((t == 0).sum())
    # ties at tau are all pruned: the tied tensor makes the count exceed k
    assert zeros > k
    assert zeros == sum(int((o.float().abs() <= tau).sum()) for o in originals)


def test_apply_threshold_without_masks_and_ties(device):
    x = torch.tensor([0.5, -0.5, 0.5, 1.0, -0.25, 0.5, 2.0], device=device)
    state = select([x], 2)  # tau = 0.5: every 0.5 goes, not just the 2nd smallest
    ops.apply_threshold_([x], state)
    assert x.tolist() == [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 2.0]
    assert int((x == 0).sum()) == 5 >= 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_apply_mask(device, dtype):
    g = torch.Generator().manual_seed(14)
    tensors = [torch.randn(17, 64, generator=g).to(device, dtype),
               torch.randn(8, 9, generator=g).to(device, dtype).t()]
    masks = [torch.rand(t.shape, generator=g).to(device) < 0.5 for t in tensors]
    originals = [t.clone() for t in tensors]
    ops.apply_mask_(tensors, masks)
    for t, o, m in zip(tensors, originals, masks):
        assert torch.equal(bits(t), bits(torch.where(m, o, torch.zeros_like(o))))
    with pytest.raises(RuntimeError, match="'masks'"):
        ops.apply_mask_(tensors, masks[:1])
