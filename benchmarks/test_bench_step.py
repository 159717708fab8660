"""pytest-benchmark versions of bench_step.py's cases (a)-(e), small by default.

    PYTHONPATH=. python -m pytest benchmarks/test_bench_step.py --benchmark-group-by=param:device
    MGPP_BENCH_SIZE=10M MGPP_BENCH_DEVICE=cuda PYTHONPATH=. python -m pytest benchmarks/

Not part of the test suite (``python -m pytest python_tests``). Each case
checks its result before it is timed.
"""
from __future__ import annotations

import math
import os

import pytest
import torch

import bench_step as bs
from mgpp_ext import ops

SIZE = bs.parse_size(os.environ.get("MGPP_BENCH_SIZE", "1M"))
SHAPES = os.environ.get("MGPP_BENCH_SHAPES", "bert")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
if os.environ.get("MGPP_BENCH_DEVICE"):
    DEVICES = [os.environ["MGPP_BENCH_DEVICE"]]
DTYPES = [torch.float32, torch.bfloat16]

pytestmark = [
    pytest.mark.benchmark(group="mgpp-step", warmup=True, warmup_iterations=2),
    pytest.mark.skipif(ops.EXTENSION_ERROR is not None, reason="mgpp_ext._C is not built"),
]


@pytest.fixture(scope="module", params=[(d, t) for d in DEVICES for t in DTYPES],
                ids=lambda p: f"{p[0]}-{str(p[1]).split('.')[-1]}")
def problem(request):
    device, dtype = torch.device(request.param[0]), request.param[1]
    params, grads = bs.make_tensors(bs.make_shapes(SHAPES, SIZE), dtype, device)
    return params, grads, device, dtype


def _run(benchmark, fn, device, rounds=None):
    def call():
        fn()
        bs.sync(device)
    if hasattr(fn, "before"):  # an untimed step ahead of each timed one
        benchmark.pedantic(call, setup=fn.before, rounds=rounds or 10, warmup_rounds=2)
    else:
        benchmark(call)


def test_correctness(problem):
    params, grads, device, dtype = problem
    report = bs.check_correctness(params, grads, device, dtype)
    assert report["global_threshold_bitwise_equal"]


@pytest.mark.parametrize("case", ["a", "a90"], ids=["dense", "pruned90"])
def test_a_mgpp_nonevent(benchmark, problem, case):
    params, grads, device, _ = problem
    fn, _ = bs.build_case(case, params, grads, device)
    assert bs.expected_nonevent(fn.opt, 10**4)
    _run(benchmark, fn, device)
    assert all(torch.isfinite(p).all() for p in fn.opt.param_groups[0]["params"])


def test_b_mgpp_event(benchmark, problem):
    params, grads, device, _ = problem
    fn, _ = bs.build_case("b", params, grads, device)
    assert bs.expected_alternating(fn.opt, 1000)
    _run(benchmark, fn, device)
    opt = fn.opt
    assert opt.schedule_state()["events"] == opt.current_step // 2 + 1  # t = 0 and every even t
    n = sum(p.numel() for p in opt.param_groups[0]["params"])
    zeros = sum(int((p == 0).sum()) for p in opt.param_groups[0]["params"])
    assert zeros >= math.floor(bs.SPARSITY * n)  # the last call was an event


def test_c_torch_adamw(benchmark, problem):
    params, grads, device, _ = problem
    fn, notes = bs.build_case("c", params, grads, device)
    benchmark.extra_info.update(notes)
    _run(benchmark, fn, device)


def test_d_authors_event_path(benchmark, problem):
    params, grads, device, _ = problem
    fn, _ = bs.build_case("d", params, grads, device)
    _run(benchmark, fn, device, rounds=5)
    step = fn.authors
    zeros = sum(int((p == 0).sum()) for p in step.params)
    assert zeros >= math.floor(bs.SPARSITY * step.n_total)


@pytest.mark.parametrize("impl", ["global_threshold", "kthvalue_cat"])
def test_e_threshold(benchmark, problem, impl):
    params, _, device, _ = problem
    k = math.floor(bs.SPARSITY * sum(p.numel() for p in params))
    expected = bs.kthvalue_threshold(params, k)
    fn = (lambda: ops.global_threshold(params, k)) if impl == "global_threshold" else \
        (lambda: bs.kthvalue_threshold(params, k))
    assert bs._bits(fn()) == bs._bits(expected)
    _run(benchmark, fn, device)
