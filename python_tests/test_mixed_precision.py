"""Autocast fine-tunes: fp32 master weights, low-precision forward/backward.

On CPU autocast runs in bf16; on CUDA in fp16 with a GradScaler, whose skipped
overflow steps must not advance the pruning schedule.
"""
import math

import pytest
import torch

from mgpp_ext import MGPP


def task(device, n=256, dim=24, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * 2.0
    y = torch.randint(0, classes, (n,), generator=g)
    x = centers[y] + torch.randn(n, dim, generator=g)
    return x.to(device), y.to(device)


def run(device, autocast, steps=60, target=0.8, init_scale=2.0 ** 16):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(24, 64), torch.nn.GELU(), torch.nn.Linear(64, 64),
                                torch.nn.GELU(), torch.nn.Linear(64, 4)).to(device)
    x, y = task(device)
    opt = MGPP(model.parameters(), lr=3e-3, total_steps=steps, num_train_examples=len(y),
               target_sparsity=target, initial_warmup_steps=5, final_finetune_steps=15,
               prune_interval=5, sigma1_sq=1.0)
    amp_dtype = torch.bfloat16 if device == "cpu" else torch.float16
    scaler = torch.amp.GradScaler(device, init_scale=init_scale, enabled=autocast and device == "cuda")
    losses = []
    for t in range(steps):
        idx = torch.arange(t * 32, t * 32 + 32, device=device) % len(y)
        with torch.autocast(device_type=device, dtype=amp_dtype, enabled=autocast):
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    return model, opt, losses, acc


def test_autocast_fine_tune(device):
    model, opt, losses, acc = run(device, autocast=True)
    weights = [model[i].weight for i in (0, 2, 4)]
    assert all(w.dtype == torch.float32 for w in weights)  # master weights stay fp32
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    n = sum(w.numel() for w in weights)
    assert sum(int((w == 0).sum()) for w in weights) >= math.floor(0.8 * n)
    assert opt.mask_fixed
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:5]) / 5
    _, _, _, acc_fp32 = run(device, autocast=False)
    assert acc >= acc_fp32 - 0.05, (acc, acc_fp32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
def test_fp16_autocast_overflow_steps_never_reach_mgpp(monkeypatch):
    # A huge initial scale overflows fp16 gradients: GradScaler skips those
    # steps (MGPP's step is not called) and halves the scale. MGPP counts
    # exactly the steps it was given, and raised on none (an inf reaching it
    # would raise under its default on_nonfinite="raise").
    calls = []
    real = MGPP.step

    def counted(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)
    monkeypatch.setattr(MGPP, "step", counted)
    _, opt, _, _ = run("cuda", autocast=True, steps=60, init_scale=2.0 ** 40)
    assert 0 < len(calls) < 60
    assert opt.current_step == len(calls)
    assert opt.schedule_state()["skipped_steps"] == 0
