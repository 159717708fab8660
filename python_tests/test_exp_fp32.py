"""The kernels' fp32 exp (csrc/exp_fp32.h) and its op-by-op copy in the
reference: accurate against float64, and bitwise the same in the kernel's
vector lanes, its scalar tail, on every device, and in the reference.

The kernel's exp is seen through the prior gradient: with lr = 0 and zero
moments, one step leaves exp_avg = (1 - beta1) * (grad + prior(p)), and the
prior is p/n * (p0/s0 + (1 - p0)/s1) with p0 = 1/(1 + exp(c1 + c2 p^2)).
"""
import math

import pytest
import torch

from conftest import bits
from mgpp_ext import ops
from mgpp_ext.reference import exp_fp32, prior_gradient, sqrt_fp32

S0, S1, LAM, N = 1e-8, 0.05, 0.1, 50.0


def ulp_error(got, exact):
    """|got - exact| in units of the last place of exact (float64 exact)."""
    _, e = torch.frexp(exact)
    e = torch.clamp(e, min=-125)  # subnormal results: the fixed ulp 2^-149
    return ((got.double() - exact).abs() / torch.ldexp(torch.ones_like(exact), e - 24))


def test_exp_fp32_is_under_one_ulp():
    # every 997th fp32 bit pattern in [-104, 104], both signs
    mags = torch.arange(0, 0x42D00000, 997, dtype=torch.int64).to(torch.int32).view(torch.float32)
    x = torch.cat([mags, -mags])
    got = exp_fp32(x)
    exact = torch.exp(x.double())
    finite = exact < 3.4028234663852886e38
    assert float(ulp_error(got[finite], exact[finite]).max()) < 1.0
    assert bool((got[~finite] == math.inf).all())


def test_exp_fp32_edges():
    x = torch.tensor([0.0, -0.0, 1.0, -1.0, 88.72283, 88.7229, 104.0, 1e30, math.inf,
                      -87.0, -103.9, -104.0, -1e30, -math.inf, math.nan])
    got = exp_fp32(x)
    assert got[0] == got[1] == 1.0
    assert got[2] == torch.tensor(math.e, dtype=torch.float32)
    assert got[4] == torch.tensor(math.exp(float(x[4])), dtype=torch.float32)  # just below overflow
    assert bool((got[5:9] == math.inf).all())
    assert 0 < got[10] < 2 ** -126  # a subnormal result
    assert bool((got[11:14] == 0).all())
    assert math.isnan(got[14])


def test_sqrt_fp32_is_correctly_rounded():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.rand(200_000, generator=g) * 1e4, torch.rand(1000, generator=g) * 1e-38,
                   torch.tensor([0.0, 1.0, 4.0, 3.4e38, math.inf])])
    got = sqrt_fp32(x)
    exact = x.double().sqrt()
    # correctly rounded: no other float is closer to the exact root
    up = torch.nextafter(got, torch.full_like(got, math.inf)).double()
    down = torch.nextafter(got, torch.zeros_like(got)).double()
    err = (got.double() - exact).abs()
    ok = (err <= (up - exact).abs()) & (err <= (down - exact).abs())
    assert bool(ok[torch.isfinite(exact)].all())


def crossover_values():
    """|p| across the spike/slab crossover, where p0 falls from 1 to 0, and
    far values on both sides, as fp32."""
    c1 = math.log(LAM) - math.log1p(-LAM) + 0.5 * math.log(S0) - 0.5 * math.log(S1)
    c2 = 0.5 / S0 - 0.5 / S1
    x = math.sqrt(-c1 / c2)
    near = torch.linspace(0.0, 3.0 * x, 3001)
    far = torch.logspace(-30, 1, 200)
    v = torch.cat([near, far, torch.tensor([0.0, 1e-45, 3e38])])
    return torch.cat([v, -v])


def kernel_exp_avg(p, device, state_dtype=None):
    """exp_avg after one lr = 0 step from zero moments and zero grads."""
    p = p.to(device)
    m = torch.zeros_like(p, dtype=state_dtype or p.dtype)
    v = torch.zeros_like(m)
    ops.mgpp_step_([p.clone()], [torch.zeros_like(p)], [m], [v], [],
                   torch.empty(0, dtype=torch.int64, device=device), lr=0.0, beta1=0.9, beta2=0.98,
                   eps=1e-6, weight_decay=0.0, step=1, apply_prior=True, num_examples=N,
                   lambda_mix=LAM, sigma0_sq=S0, sigma1_sq=S1)
    return m.cpu()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_kernel_prior_is_bitwise_the_reference(device, dtype):
    """In every vector lane and in the scalar tail: the values are laid out
    at every offset modulo the vector block, and a 7-element tensor is all
    tail."""
    p = crossover_values().to(dtype)
    want = (0.1 * (0.0 + prior_gradient(p.float(), N, LAM, S0, S1)))
    got = kernel_exp_avg(p, device, torch.float32)
    assert torch.equal(bits(got), bits(want))
    for shift in (1, 5, 17, 31):  # the same values in other lanes / the tail
        rolled = kernel_exp_avg(torch.roll(p, shift), device, torch.float32)
        assert torch.equal(bits(torch.roll(rolled, -shift)), bits(got)), f"shift {shift}"
    tail = kernel_exp_avg(p[1500:1507], device, torch.float32)
    assert torch.equal(bits(tail), bits(got[1500:1507]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_cuda_prior_is_bitwise_the_cpu(dtype):
    p = crossover_values().to(dtype)
    assert torch.equal(bits(kernel_exp_avg(p, "cuda", torch.float32)),
                       bits(kernel_exp_avg(p, "cpu", torch.float32)))
