"""Shared fixtures: every op and optimizer test runs once per device.

"cpu" always; "cuda" only where torch sees a GPU (skipped cleanly otherwise),
so the same tests exercise the CUDA kernels on a GPU machine.
"""
import pytest
import torch

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="CUDA is not available")),
]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def bits(t):
    """The raw bit pattern of a float tensor, for bitwise comparisons."""
    t = t.detach()
    return t.view({torch.float32: torch.int32, torch.bfloat16: torch.int16,
                   torch.float16: torch.int16}[t.dtype])
