"""Long run: many pruning events over tens of millions of weights must not
grow memory from event to event."""
import os

import pytest
import torch

import mgpp_ext


def rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    pytest.skip("no /proc/self/status")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_memory_flat_over_many_events():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(1024, 1024) * 0.02) for _ in range(20)]  # 21M weights
    opt = mgpp_ext.MGPP([{"params": params, "prune": True}], lr=1e-4, total_steps=60,
                        num_train_examples=10000, target_sparsity=0.9, initial_warmup_steps=0,
                        final_finetune_steps=5, prune_interval=1, sigma1_sq=1.0)
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    samples = []
    for t in range(55):  # 55 pruning events, then the fixed-mask phase
        opt.step()
        if t >= 20:  # allocator arenas and caches settle in the first events
            samples.append(rss_bytes())
    assert opt.schedule_state()["events"] == 55
    growth = max(samples) - samples[0]
    # A leak of anything per event (a 1 MiB mask, a 4 MiB weight copy) over
    # these 35 events would show as >= 35 MiB; allocator noise stays well below.
    assert growth < 32 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB over {len(samples)} events"
    zeros = sum(int((p == 0).sum()) for p in params)
    assert zeros >= int(0.9 * sum(p.numel() for p in params))
