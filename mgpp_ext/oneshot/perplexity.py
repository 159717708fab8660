"""Perplexity over non-overlapping windows of a fixed length."""
from __future__ import annotations

import math

import torch

from .sequential import check_ids


@torch.no_grad()
def perplexity(model, token_ids, *, seq_len, batch_size=1, return_counts=False):
    """exp(mean negative log-likelihood) of ``token_ids`` (a 1-D LongTensor,
    or [1, N]) cut into ``N // seq_len`` non-overlapping windows of
    ``seq_len`` tokens (the tail shorter than a window is dropped). In every
    window each token after the first is predicted from the ones before it
    in the window: ``windows * (seq_len - 1)`` predictions. With
    ``return_counts``, returns ``(ppl, windows, predicted_tokens)``."""
    ids = torch.as_tensor(token_ids)
    if ids.dim() == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.dim() != 1 or ids.dtype != torch.long:
        raise ValueError(f"token_ids must be a 1-D LongTensor of token ids, got {ids.dtype} of shape "
                         f"{tuple(ids.shape)}")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise ValueError(f"seq_len must be an int >= 2, got {seq_len!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")

    windows = ids.numel() // seq_len
    if windows == 0:
        raise ValueError(f"token_ids holds {ids.numel()} tokens, fewer than one window of {seq_len}")
    windows_cpu = ids[: windows * seq_len].view(windows, seq_len)
    check_ids(windows_cpu, model, "token_ids")  # the vocabulary, and a window within learned positions
    device = next(model.parameters()).device
    data = windows_cpu.to(device)
    nll, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for b in range(0, windows, batch_size):
            x = data[b:b + batch_size]
            logits = model(input_ids=x, use_cache=False).logits.float()
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
            nll += float(loss)
            count += x[:, 1:].numel()
    finally:
        model.train(was_training)
    ppl = math.exp(nll / count)
    return (ppl, windows, count) if return_counts else ppl
