"""The tiktoken Encoding built from vocab.json + merges.txt, against transformers' GPT-2 tokenizer."""
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minitf.errors import MinitfError
from minitf.load.tokenizer import load_tokenizer
from reference_paths import SHARED_GPT2, TOKENIZER_DIR

needs_gpt2 = pytest.mark.skipif(not (SHARED_GPT2 / "vocab.json").exists(), reason="../shared/gpt2 not present")
text = st.one_of(
    st.text(max_size=80),
    st.lists(st.sampled_from(["hello", " world", "  ", "\n", "\t", "<|endoftext|>", "'s", " don't", "123",
                              "é", "日本", "🙂", "  \n ", "!", " the"]), max_size=20).map("".join),
)


@pytest.fixture(scope="module")
def gpt2():
    return load_tokenizer(SHARED_GPT2)


@needs_gpt2
def test_known_ids(gpt2):
    assert gpt2.encode("hello world") == [31373, 995]
    assert gpt2.encode("The capital of France is") == [464, 3139, 286, 4881, 318]
    assert gpt2.encode(" out") == [503]
    assert gpt2.eot_token == 50256 and gpt2.n_vocab == 50257


@pytest.fixture(scope="module")
def hf_tokenizers():
    transformers = pytest.importorskip("transformers")
    toks = {d: transformers.GPT2TokenizerFast.from_pretrained(str(d))
            for d in (SHARED_GPT2, TOKENIZER_DIR) if (d / "vocab.json").exists()}
    assert all(t.vocab_size > 400 for t in toks.values())  # the files really were read
    return toks


@settings(max_examples=300, deadline=None)
@given(s=text)
def test_ids_equal_transformers_and_roundtrip(hf_tokenizers, s):
    for folder, hf in hf_tokenizers.items():
        enc = _cached(folder)
        ids = enc.encode(s, allowed_special="all")
        assert ids == hf(s)["input_ids"], folder
        assert enc.decode(ids) == s


_cache = {}


def _cached(folder: Path):
    if folder not in _cache:
        _cache[folder] = load_tokenizer(folder)
    return _cache[folder]


def test_any_bpe_in_gpt2_format():
    enc = load_tokenizer(TOKENIZER_DIR)
    assert enc.n_vocab == 457 and enc.eot_token == 456
    assert enc.decode(enc.encode("the theatre")) == "the theatre"


def test_vocab_out_of_order_is_refused(tmp_path):
    import json
    vocab = json.loads((TOKENIZER_DIR / "vocab.json").read_text())
    a, b = [k for k, v in vocab.items() if v in (300, 301)]
    vocab[a], vocab[b] = 301, 300
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text((TOKENIZER_DIR / "merges.txt").read_text())
    with pytest.raises(MinitfError, match="vocab.json: ids do not follow merges.txt"):
        load_tokenizer(tmp_path)


def test_missing_and_bad_files(tmp_path):
    with pytest.raises(MinitfError, match="vocab.json: no such file"):
        load_tokenizer(tmp_path)
    (tmp_path / "vocab.json").write_text("{not json")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(MinitfError, match="vocab.json: not valid JSON"):
        load_tokenizer(tmp_path)
