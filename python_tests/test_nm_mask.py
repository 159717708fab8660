"""N:M keep masks and in-place N:M pruning (mgpp_ext.nm) against the
plain-PyTorch rule (mgpp_ext.reference_nm), bitwise.

Every op test runs on each device of the ``device`` fixture (CUDA skipped
without a GPU); on CUDA the result is also compared with the CPU kernel's.
Inputs reach every kernel path: contiguous groups (dim innermost in
memory) and strided ones (dim 0, a middle dim), m with in-register
transposes (2, 4, 8, 16, 32) and the others, blocks and parallel pieces
with tails, non-contiguous views, and the values where an ordering can go
wrong: ties, all zeros, -0.0 next to +0.0, NaN, +-inf, huge, tiny and
subnormal numbers.
"""
import pytest
import torch
from torch.library import opcheck

from conftest import bits
from mgpp_ext import nm
from mgpp_ext.reference_nm import nm_mask_reference, nm_prune_reference

OPS = torch.ops.mgpp_ext
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
PATTERNS = [(2, 4), (4, 8), (1, 4), (3, 8), (1, 2), (16, 32), (31, 32), (3, 4), (2, 3), (5, 12),
            (7, 16)]
KINDS = ["normal", "ties", "zeros", "signed_zeros", "specials", "nan_payloads", "extremes"]
# NaNs of several payloads and both signs (quiet and signalling), as bit patterns.
NAN_BITS = {torch.float32: [0x7fc00000, 0x7f800001, 0x7fffffff, -0x00400000, -0x007fffff,
                            0x7fc12345],
            torch.bfloat16: [0x7fc0, 0x7f81, 0x7fff, -0x0040, -0x007f, 0x7fa5],
            torch.float16: [0x7e00, 0x7c01, 0x7fff, -0x0200, -0x03ff, 0x7d23]}
INT_OF = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}
ID = lambda p: f"{p[0]}:{p[1]}"  # noqa: E731


def make_scores(kind, shape, dtype, seed=0):
    """Scores of one kind, built in fp32 and stored in dtype."""
    g = torch.Generator().manual_seed(seed)
    numel = 1
    for s in shape:
        numel *= s
    pick = lambda values: torch.tensor(values)[  # noqa: E731
        torch.randint(0, len(values), (numel,), generator=g)]
    if kind == "normal":
        x = torch.randn(numel, generator=g)
    elif kind == "ties":
        x = pick([0.5, -0.5, 1.0, -1.0, 2.0, 0.5, 0.5])
    elif kind == "zeros":
        x = torch.zeros(numel)
    elif kind == "signed_zeros":
        x = pick([0.0, -0.0, 0.0, -0.0, 1e-3, -1e-3])
    elif kind == "specials":
        x = torch.where(torch.rand(numel, generator=g) < 0.5, torch.randn(numel, generator=g),
                        pick([float("nan"), float("inf"), float("-inf"), -float("nan"), 0.0, -0.0]))
    elif kind == "nan_payloads":
        nans = torch.tensor(NAN_BITS[dtype], dtype=INT_OF[dtype])[
            torch.randint(0, len(NAN_BITS[dtype]), (numel,), generator=g)].view(dtype)
        x = torch.randn(numel, generator=g).to(dtype)
        x = torch.where(torch.rand(numel, generator=g) < 0.6, nans, x)
        assert torch.isnan(x).any()
        return x.reshape(shape)
    elif kind == "extremes":
        if dtype == torch.float16:  # its own range: max, tiny normals, subnormals
            values = [65504.0, -65504.0, 6.1035e-05, 6e-8, -6e-8, 3e-6, 1e-7, 1.0, -2.0]
        else:  # fp32 / bf16 range: huge, tiny normals, subnormals
            values = [3.3e38, -3.3e38, 1.2e-38, 1e-40, -1e-40, 1.4e-45, 9.2e-41, 1e-30, 1.0]
        x = pick(values) * torch.where(torch.rand(numel, generator=g) < 0.8, 1.0,
                                       torch.rand(numel, generator=g) + 0.5)
    else:
        raise ValueError(kind)
    x = x.reshape(shape).to(dtype)
    if kind == "extremes" and dtype != torch.float16:
        assert (x.float().abs() < 1.1754944e-38).any() and (x.float().abs() > 1e38).any()
    return x


def layouts(m):
    """(name, scores-maker taking a shape -> tensor, dim) cases for one m."""
    def base(shape):
        return lambda make: make(shape)

    def transposed(shape):  # the group dim is a strided dim of a transposed view
        return lambda make: make(shape[::-1]).t()

    def sliced(shape):  # non-dense: every other column
        return lambda make: make((shape[0], 2 * shape[1]))[:, ::2]

    def permuted(shape):
        return lambda make: make((shape[2], shape[0], shape[1])).permute(1, 2, 0)

    return [
        ("rows", base((3, 2 * m)), -1),
        ("odd", base((7, 3 * m)), 1),
        ("3d", base((5, 4, 4 * m)), -1),
        ("1d", base((5 * m,)), 0),
        ("dim0", base((2 * m, 7)), 0),
        ("middle", base((3, 2 * m, 5)), 1),
        ("transposed-dim0", transposed((2 * m, 9)), 0),
        ("transposed-last", transposed((5, 3 * m)), -1),
        ("sliced", sliced((4, 2 * m)), 1),
        ("sliced-dim0", sliced((2 * m, 3)), 0),
        ("permuted", permuted((3, 2 * m, 4)), 1),
    ]


def per_group_count(mask, m, dim):
    s = mask.movedim(dim, -1)
    return s.reshape(*s.shape[:-1], s.shape[-1] // m, m).sum(-1)


def assert_mask(scores, n, m, dim, device):
    got = nm.nm_mask(scores.to(device) if scores.device.type != device else scores, n, m, dim)
    want = nm_mask_reference(scores.cpu(), n, m, dim)
    assert got.dtype == torch.bool and got.shape == scores.shape
    assert got.device.type == device
    assert torch.equal(got.cpu(), want), (
        f"{int((got.cpu() != want).sum())} of {want.numel()} entries differ")
    assert bool((per_group_count(got, m, dim) == n).all())
    if device == "cuda":
        assert torch.equal(got.cpu(), nm.nm_mask(scores.cpu(), n, m, dim))
    return got


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pattern", PATTERNS, ids=ID)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nm_mask_matches_reference(device, dtype, pattern, kind):
    n, m = pattern
    for seed, (name, build, dim) in enumerate(layouts(m)):
        scores = build(lambda shape: make_scores(kind, shape, dtype, seed).to(device))
        assert_mask(scores, n, m, dim, device)


@pytest.mark.parametrize("pattern", [(2, 4), (4, 8), (1, 4), (5, 12), (16, 32), (1, 2), (3, 6)],
                         ids=ID)
@pytest.mark.parametrize("dim", [-1, 0])
def test_nm_mask_large(device, pattern, dim):
    """Several blocks, tiles and parallel pieces, with tails of each."""
    n, m = pattern
    rows = 3 * 4096 // m + 1
    shapes = ([(rows * m, 67), (8 * m, 1237)] if dim == 0 else [(67, rows * m)])
    for shape in shapes:
        for kind in ("normal", "ties"):
            scores = make_scores(kind, shape, torch.float32, seed=7)
            assert_mask(scores.to(device), n, m, dim, device)


def test_nm_mask_agrees_with_topk_without_ties(device):
    """With distinct scores the rule is just the top n of each group."""
    x = torch.randperm(64 * 32, generator=torch.Generator().manual_seed(3)).float().reshape(64, 32)
    for n, m in [(2, 4), (4, 8), (9, 16)]:
        g = x.reshape(-1, m)
        want = torch.zeros_like(g, dtype=torch.bool).scatter_(1, g.topk(n, dim=1).indices, True)
        got = nm.nm_mask(x.to(device), n, m)
        assert torch.equal(got.cpu(), want.reshape(x.shape))


def test_nm_mask_ties_go_to_the_lower_index(device):
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, -0.0, 0.0, -0.0], [2.0, 1.0, 1.0, 1.0],
                      [float("nan"), 5.0, float("nan"), float("inf")],
                      [-float("inf"), float("-inf"), 0.0, -1e-45]], device=device)
    want = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 1, 1]],
                        dtype=torch.bool)
    assert torch.equal(nm.nm_mask(x, 2, 4).cpu(), want)
    assert torch.equal(nm_mask_reference(x.cpu(), 2, 4), want)


def test_nm_mask_layout_follows_scores(device):
    x = make_scores("normal", (16, 6), torch.float32).to(device).t()  # strides (1, 6)
    got = nm.nm_mask(x, 2, 4, dim=1)
    assert got.stride() == torch.empty_like(x, dtype=torch.bool).stride()
    assert torch.equal(got.cpu(), nm_mask_reference(x.cpu(), 2, 4, 1))


def test_nm_mask_empty(device):
    x = torch.empty(0, 8, device=device)
    assert nm.nm_mask(x, 2, 4).shape == (0, 8)
    assert nm.nm_mask(torch.empty(3, 0, device=device), 2, 4).shape == (3, 0)


# -- nm_prune_ ------------------------------------------------------------------
def prune_case(device, kind, seed=0):
    """Tensors of every dtype, shapes and dims, some non-contiguous views."""
    specs = [((6, 16), torch.float32, -1, None), ((16, 5), torch.bfloat16, 0, None),
             ((3, 8, 5), torch.float16, 1, None), ((40,), torch.float32, 0, None),
             ((7, 24), torch.float32, 0, "t"), ((4, 32), torch.bfloat16, 1, "slice"),
             ((9, 8200), torch.float32, -1, None)]
    out, dims = [], []
    for i, (shape, dtype, dim, view) in enumerate(specs):
        if view == "t":
            t = make_scores(kind, shape[::-1], dtype, seed + i).to(device).t()
            dim = 1 - (dim % 2)
        elif view == "slice":
            t = make_scores(kind, (shape[0], 2 * shape[1]), dtype, seed + i).to(device)[:, 1::2]
        else:
            t = make_scores(kind, shape, dtype, seed + i).to(device)
        out.append(t)
        dims.append(dim)
    return out, dims


@pytest.mark.parametrize("with_masks", [False, True], ids=["no-masks", "masks"])
@pytest.mark.parametrize("with_scores", [False, True], ids=["abs", "scores"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pattern", [(2, 4), (4, 8), (1, 4), (3, 8)], ids=ID)
def test_nm_prune_matches_reference(device, pattern, kind, with_scores, with_masks):
    n, m = pattern
    tensors, dims = prune_case(device, kind)
    before = [t.clone() for t in tensors]
    # Scores in another dtype than their tensor, and from another kind of values.
    scores = ([make_scores("ties" if kind == "normal" else "normal", t.shape,
                           DTYPES[(i + 1) % 3], 100 + i).to(device)
               for i, t in enumerate(tensors)] if with_scores else None)
    masks = ([torch.zeros(t.shape, dtype=torch.bool, device=device) for t in tensors]
             if with_masks else None)
    nm.nm_prune_(tensors, n, m, dims, scores=scores, masks=masks)
    for i, (t, b, d) in enumerate(zip(tensors, before, dims)):
        want_t, want_mask = nm_prune_reference(b.cpu(), n, m, d,
                                               None if scores is None else scores[i].cpu())
        # bitwise: dropped entries +0.0, kept entries their exact bits (NaN payloads, -0.0)
        assert torch.equal(bits(t.cpu()), bits(want_t)), f"tensor {i}"
        if masks is not None:
            assert torch.equal(masks[i].cpu(), want_mask), f"mask {i}"
    if device == "cuda":
        cpu = [b.cpu() for b in before]
        cpu_masks = [torch.zeros(t.shape, dtype=torch.bool) for t in cpu]
        nm.nm_prune_(cpu, n, m, dims, scores=None if scores is None else [s.cpu() for s in scores],
                     masks=cpu_masks)
        for t, c in zip(tensors, cpu):
            assert torch.equal(bits(t.cpu()), bits(c))


def test_nm_prune_writes_only_the_view(device):
    base = make_scores("normal", (8, 24), torch.float32).to(device)
    outside = base[:, 1::2].clone()
    view = base[:, ::2]  # [8, 12], non-contiguous
    want, _ = nm_prune_reference(view.cpu(), 2, 4, 1)
    nm.nm_prune_([view], 2, 4, [1])
    assert torch.equal(bits(base[:, ::2].cpu()), bits(want))
    assert torch.equal(bits(base[:, 1::2]), bits(outside))


def test_nm_prune_mask_in_another_layout(device):
    t = make_scores("normal", (12, 8), torch.float32).to(device)
    mask = torch.zeros(8, 12, dtype=torch.bool, device=device).t()  # transposed
    want_t, want_mask = nm_prune_reference(t.cpu(), 1, 4, 0)
    nm.nm_prune_([t], 1, 4, 0, masks=[mask])
    assert torch.equal(mask.cpu(), want_mask)
    assert torch.equal(bits(t.cpu()), bits(want_t))


def test_nm_prune_scored_by_the_tensor_itself(device):
    """scores may be the pruned tensor: then the signed values rank."""
    t = make_scores("normal", (4, 16), torch.float32).to(device)
    want, _ = nm_prune_reference(t.cpu(), 2, 4, -1, scores=t.cpu())
    nm.nm_prune_([t], 2, 4, -1, scores=[t])
    assert torch.equal(bits(t.cpu()), bits(want))


def test_nm_prune_refuses_scores_that_share_memory_with_a_pruned_tensor(device):
    """A score must not be read while a tensor it lies in is pruned: scores
    inside another pruned tensor, or overlapping its own tensor through a
    different view, are refused before anything is written. The tensor
    itself (any object with its view) and disjoint parts of one buffer are
    accepted."""
    buf = make_scores("normal", (3, 16), torch.float32).to(device)
    a, b = buf[0].view(4, 4), buf[1].view(4, 4)
    before = buf.clone()
    with pytest.raises(ValueError, match=r"'scores\[0\]' shares memory with 'tensors\[1\]'"):
        nm.nm_prune_([a, b], 2, 4, -1, scores=[b, a])
    shifted = buf.view(-1)[2:18].view(4, 4)  # overlaps a, shifted by two entries
    with pytest.raises(ValueError, match=r"'scores\[0\]' shares memory with 'tensors\[0\]'"):
        nm.nm_prune_([a], 2, 4, -1, scores=[shifted])
    assert torch.equal(bits(buf), bits(before))  # nothing written
    # Accepted: the tensor through another object, and a disjoint row of the buffer.
    want_a, _ = nm_prune_reference(a.cpu(), 2, 4, -1, scores=a.cpu())
    want_b, _ = nm_prune_reference(b.cpu(), 2, 4, -1, scores=buf[2].view(4, 4).cpu())
    nm.nm_prune_([a, b], 2, 4, -1, scores=[a.detach(), buf[2].view(4, 4)])
    assert torch.equal(bits(a.cpu()), bits(want_a))
    assert torch.equal(bits(b.cpu()), bits(want_b))


def test_nm_prune_is_idempotent(device):
    t = make_scores("ties", (6, 32), torch.float32).to(device)
    nm.nm_prune_([t], 2, 4)
    once = t.clone()
    nm.nm_prune_([t], 2, 4)
    assert torch.equal(bits(t), bits(once))
    assert bool((per_group_count(t != 0, 4, -1) <= 2).all())


def test_nm_prune_empty_list_and_tensor(device):
    nm.nm_prune_([], 2, 4, [])
    t = torch.empty(0, 4, device=device)
    nm.nm_prune_([t], 2, 4, [0])


# -- errors ---------------------------------------------------------------------
def test_nm_mask_errors(device):
    x = torch.randn(4, 10, device=device)
    with pytest.raises(ValueError, match=r"'scores' has size 10 along dim 1.*multiple of m = 4"):
        nm.nm_mask(x, 2, 4)
    with pytest.raises(ValueError, match=r"'encoder.w' has size 10"):
        nm.nm_mask(x, 2, 4, name="encoder.w")
    y = torch.randn(4, 32, device=device)
    for n, m, arg in [(4, 4, "'n'"), (5, 4, "'n'"), (0, 4, "'n'"), (-1, 4, "'n'"),
                      (2, 64, "'m'"), (1, 1, "'m'"), (2, 33, "'m'")]:
        with pytest.raises(ValueError, match=arg):
            nm.nm_mask(y, n, m)
    with pytest.raises(TypeError, match="'n' must be an int"):
        nm.nm_mask(y, 2.0, 4)
    with pytest.raises(TypeError, match="'m' must be an int"):
        nm.nm_mask(y, 2, True)
    for bad in (torch.float64, torch.int32, torch.bool):
        with pytest.raises(TypeError, match="float32, bfloat16 or float16"):
            nm.nm_mask(y.to(bad), 2, 4)
    with pytest.raises(IndexError, match="'dim' = 2"):
        nm.nm_mask(y, 2, 4, dim=2)
    with pytest.raises(IndexError, match="'dim' = -3"):
        nm.nm_mask(y, 2, 4, dim=-3)
    with pytest.raises(ValueError, match="0-dim"):
        nm.nm_mask(torch.tensor(1.0, device=device), 1, 2, dim=0)


def test_nm_prune_errors(device):
    a = torch.randn(4, 8, device=device)
    b = torch.randn(8, 6, device=device)
    with pytest.raises(ValueError, match=r"'tensors\[1\]' has size 6 along dim 1"):
        nm.nm_prune_([a, b], 2, 4, [1, 1])
    with pytest.raises(ValueError, match=r"'fc2.weight' has size 6"):
        nm.nm_prune_([a, b], 2, 4, [1, 1], names=["fc1.weight", "fc2.weight"])
    with pytest.raises(ValueError, match="'dims' must have one dim per tensor"):
        nm.nm_prune_([a, b], 2, 4, [1])
    with pytest.raises(TypeError, match="'dims' must be an int or one int per tensor, got bool"):
        nm.nm_prune_([a, b], 2, 4, True)
    with pytest.raises(ValueError, match="'scores' must have one tensor per tensor"):
        nm.nm_prune_([a, b], 2, 4, [1, 0], scores=[a])
    with pytest.raises(ValueError, match="'masks' must have one mask per tensor"):
        nm.nm_prune_([a, b], 2, 4, [1, 0], masks=[a.bool()])
    with pytest.raises(ValueError, match=r"'scores\[0\]'.*must match"):
        nm.nm_prune_([a], 2, 4, [1], scores=[torch.randn(4, 4, device=device)])
    with pytest.raises(ValueError, match=r"'masks\[0\]'.*must match"):
        nm.nm_prune_([a], 2, 4, [1], masks=[torch.zeros(8, 4, dtype=torch.bool, device=device)])
    with pytest.raises(TypeError, match=r"'masks\[0\]' must be a bool tensor"):
        nm.nm_prune_([a], 2, 4, [1], masks=[torch.zeros(4, 8, device=device)])
    with pytest.raises(TypeError, match=r"'scores\[0\]' must be float32"):
        nm.nm_prune_([a], 2, 4, [1], scores=[a.double()])
    with pytest.raises(TypeError, match=r"'tensors\[0\]' must be float32"):
        nm.nm_prune_([a.long()], 2, 4, [1])
    with pytest.raises(ValueError, match="'n'"):
        nm.nm_prune_([a], 4, 4, [1])
    with pytest.raises(IndexError, match="'dim' = 2"):
        nm.nm_prune_([a], 2, 4, [2])
    before = a.clone()
    # a later tensor's error leaves earlier ones untouched
    with pytest.raises(ValueError, match=r"'tensors\[1\]' has size 6 along dim 1"):
        nm.nm_prune_([a, b], 2, 4, [1, 1])
    assert torch.equal(a, before)


def test_op_errors_without_the_wrapper(device):
    """The kernels check their arguments too, with the same exception types."""
    x = torch.randn(4, 8, device=device)
    with pytest.raises(ValueError, match="not a multiple of m = 3"):
        OPS.nm_mask(x, 1, 3, 1)
    with pytest.raises(ValueError, match="'n' must be in"):
        OPS.nm_mask(x, 4, 4, 1)
    with pytest.raises(ValueError, match="'m' must be in"):
        OPS.nm_mask(x, 2, 40, 1)
    with pytest.raises(IndexError, match="out of range"):
        OPS.nm_mask(x, 2, 4, 3)
    with pytest.raises(TypeError, match="float32, bfloat16 or float16"):
        OPS.nm_mask(x.double(), 2, 4, 1)
    with pytest.raises(ValueError, match="'dims' must have one dim per tensor"):
        OPS.nm_prune_([x], [], 2, 4, [], [])
    with pytest.raises(ValueError, match=r"'masks\[0\]' has shape"):
        OPS.nm_prune_([x], [], 2, 4, [1], [torch.zeros(8, 4, dtype=torch.bool, device=device)])
    with pytest.raises(TypeError, match=r"'masks\[0\]' must be bool"):
        OPS.nm_prune_([x], [], 2, 4, [1], [torch.zeros(4, 8, device=device)])


def test_parse_pattern():
    assert nm.parse_pattern("2:4") == (2, 4)
    assert nm.parse_pattern(" 16:32 ") == (16, 32)
    assert nm.parse_pattern((1, 4)) == (1, 4)
    for bad in ("2-4", "a:b", "2:4:8", "", ":4", "2:", "-1:4", "2.0:4", "\u00b2:4"):
        with pytest.raises(ValueError, match="'pattern' must look like 'N:M'"):
            nm.parse_pattern(bad)
    for bad, arg in (("4:2", "'n'"), ("0:4", "'n'"), ("4:4", "'n'"), ("2:64", "'m'"),
                     ("1:1", "'m'")):
        with pytest.raises(ValueError, match=arg):
            nm.parse_pattern(bad)
    with pytest.raises(TypeError, match="'pattern'"):
        nm.parse_pattern(24)


# -- opcheck --------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", ["rows", "dim0", "transposed"])
def test_opcheck_nm_mask(device, dtype, case):
    x = make_scores("ties", (8, 12), dtype).to(device)
    if case == "transposed":
        x = x.t()
    dim = 0 if case != "rows" else 1
    opcheck(OPS.nm_mask, (x, 2, 4, dim))


@pytest.mark.parametrize("with_scores", [False, True], ids=["abs", "scores"])
@pytest.mark.parametrize("with_masks", [False, True], ids=["no-masks", "masks"])
def test_opcheck_nm_prune(device, with_scores, with_masks):
    g = torch.Generator().manual_seed(4)
    tensors = [torch.randn(8, 12, generator=g).to(device),
               torch.randn(16, 4, generator=g).to(device, torch.bfloat16)]
    dims = [1, 0]
    scores = [torch.randn(t.shape, generator=g).to(device) for t in tensors] if with_scores else []
    masks = ([torch.zeros(t.shape, dtype=torch.bool, device=device) for t in tensors]
             if with_masks else [])
    opcheck(OPS.nm_prune_, (tensors, scores, 2, 4, dims, masks))


# -- CUDA against the CPU kernel ------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
@pytest.mark.parametrize("pattern", PATTERNS, ids=ID)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_matches_cpu(dtype, pattern):
    n, m = pattern
    for kind in KINDS:
        for dim, shape in ((-1, (129, 40 * m)), (0, (40 * m, 129))):
            x = make_scores(kind, shape, dtype, seed=5)
            assert torch.equal(nm.nm_mask(x.cuda(), n, m, dim).cpu(), nm.nm_mask(x, n, m, dim))
            t_cpu, t_gpu = x.clone(), x.cuda()
            k_cpu = torch.zeros(shape, dtype=torch.bool)
            k_gpu = k_cpu.cuda()
            nm.nm_prune_([t_cpu], n, m, dim, masks=[k_cpu])
            nm.nm_prune_([t_gpu], n, m, dim, masks=[k_gpu])
            assert torch.equal(bits(t_gpu.cpu()), bits(t_cpu))
            assert torch.equal(k_gpu.cpu(), k_cpu)
