"""Corpus files, the train/test split and tokenization to the context."""
import gzip
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minitf.corpus import (Document, default_corpus, documents, read_documents, split_of,
                           tokenize_document)
from minitf.errors import MinitfError
from minitf.load.tokenizer import load_tokenizer
from reference_paths import SHARED_GPT2, TOKENIZER_DIR

TOKENIZER = load_tokenizer(SHARED_GPT2 if (SHARED_GPT2 / "vocab.json").exists() else TOKENIZER_DIR)


def texts(docs):
    return [d.text for d in docs]


def test_txt_documents_are_separated_by_blank_lines(tmp_path):
    p = tmp_path / "c.txt"
    p.write_bytes("\ufeffFirst line\nsecond line\n\n\n  \t\nDoc two\r\n\r\nDoc three\n  indented\nlast".encode())
    docs = list(read_documents(p))
    assert docs == [Document(0, "First line\nsecond line"), Document(1, "Doc two"),
                    Document(2, "Doc three\n  indented\nlast")]


def test_jsonl_documents_and_gzip_give_the_same_documents(tmp_path):
    records = [{"text": "alpha beta"}, {"text": "γ δ\n\nε", "id": 7}, {"text": ""}]
    body = "\n".join(json.dumps(r, ensure_ascii=False) for r in records[:2]) + "\n\n" + json.dumps(records[2]) + "\n"
    (tmp_path / "c.jsonl").write_text(body, encoding="utf-8")
    with gzip.open(tmp_path / "c.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(body)
    plain = list(read_documents(tmp_path / "c.jsonl"))
    assert plain == [Document(0, "alpha beta"), Document(1, "γ δ\n\nε"), Document(2, "")]
    assert list(read_documents(tmp_path / "c.jsonl.gz")) == plain
    (tmp_path / "c.txt").write_text("a b\n\nc d\n")
    with gzip.open(tmp_path / "c.txt.gz", "wt") as f:
        f.write("a b\n\nc d\n")
    assert list(read_documents(tmp_path / "c.txt.gz")) == list(read_documents(tmp_path / "c.txt"))


@pytest.mark.parametrize("name, content, match", [
    ("bad.jsonl", b'{"text": "ok"}\n{"text": "ok"}\n{not json}\n', r"bad\.jsonl: line 3: not valid JSON"),
    ("bad2.jsonl", b'{"text": "ok"}\n{"body": "no text"}\n', r"bad2\.jsonl: line 2: expected an object"),
    ("bad.txt", b"fine\nfine\n\nbad \xff\xfe byte\n", r"bad\.txt: line 4: not UTF-8"),
    ("bad.txt.gz", gzip.compress(b"one\n\ntwo \xc3\n"), r"bad\.txt\.gz: line 3: not UTF-8"),
    ("corrupt.txt.gz", gzip.compress(b"one\n\ntwo\n" * 1000)[:-30], r"corrupt\.txt\.gz: corrupt or truncated gzip"),
    ("notgzip.txt.gz", b"plain text\n", r"notgzip\.txt\.gz: corrupt or truncated gzip"),
    ("corpus.csv", b"a,b\n", r"corpus\.csv: unknown corpus format"),
])
def test_bad_files_name_the_file_and_line(tmp_path, name, content, match):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(MinitfError, match=match):
        list(read_documents(tmp_path / name))


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(MinitfError, match="no such corpus file"):
        list(read_documents(tmp_path / "absent.txt"))


def test_split_is_the_documented_hash_rule_stable_and_about_80_20(tmp_path):
    docs = [f"document number {i} with some words" for i in range(3000)]
    for text in docs[:50]:  # the rule, recomputed here
        h = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
        assert split_of(text) == ("test" if h % 100 < 20 else "train")
        assert split_of(Document(123, text)) == split_of(text)  # by content, not id
    frac = sum(split_of(t) == "test" for t in docs) / len(docs)
    assert 0.17 < frac < 0.23
    p = tmp_path / "c.txt"
    p.write_text("\n\n".join(docs[:200]))
    train, test, everything = list(documents(p, "train")), list(documents(p, "test")), list(documents(p))
    assert sorted(train + test) == everything and not set(train) & set(test)
    assert list(documents(p, "all")) == everything
    # reordering the file keeps every document in its split
    (tmp_path / "r.txt").write_text("\n\n".join(reversed(docs[:200])))
    assert set(texts(documents(tmp_path / "r.txt", "test"))) == set(texts(test))
    with pytest.raises(MinitfError, match="`split` valid"):
        list(documents(p, "valid"))


def test_default_corpus(tmp_path):
    assert default_corpus(SimpleNamespace(folder=None)) is None
    assert default_corpus(SimpleNamespace(folder=tmp_path)) is None
    (tmp_path / "corpus.txt.gz").write_bytes(gzip.compress(b"x\n"))
    assert default_corpus(SimpleNamespace(folder=tmp_path)) == tmp_path / "corpus.txt.gz"


def test_tokenized_documents(tmp_path):
    from minitf.corpus import tokenize_document, tokenized_documents

    model = SimpleNamespace(cfg=SimpleNamespace(n_ctx=8), bos=0, encode=lambda text: [ord(c) for c in text])
    p = tmp_path / "c.txt"
    p.write_text("ab\n\ncd\n\nefghijklmnop\n")
    assert tokenized_documents(model, p, {0, 2}) == {0: [0, 97, 98], 2: tokenize_document(model, "efghijklmnop")}
    assert tokenized_documents(model, p, {1}, bos=False) == {1: [99, 100]}
    with pytest.raises(MinitfError, match=r"c\.txt: the index names document 3, which the corpus does not have"):
        tokenized_documents(model, p, {1, 3})


def test_given_corpus_wins_and_a_missing_one_is_one_error(tmp_path):
    assert default_corpus(SimpleNamespace(folder=tmp_path), "other.jsonl") == Path("other.jsonl")
    with pytest.raises(MinitfError, match=r"^.*empty has no corpus.txt.gz and no corpus was given: give --corpus FILE$"):
        default_corpus(SimpleNamespace(folder=tmp_path / "empty"), needed_for="give --corpus FILE")
    (tmp_path / "corpus.txt.gz").write_bytes(gzip.compress(b"x\n"))
    assert default_corpus(SimpleNamespace(folder=tmp_path), needed_for="unused") == tmp_path / "corpus.txt.gz"


def _model(n_ctx):
    return SimpleNamespace(cfg=SimpleNamespace(n_ctx=n_ctx), bos=TOKENIZER.eot_token,
                           encode=lambda t: TOKENIZER.encode(t, allowed_special="all"))


@settings(max_examples=150, deadline=None)
@given(text=st.text(st.sampled_from(list("ab cd\t\n\r.,'s0123 \x1c\x0bé中😀-")) | st.characters(), max_size=600),
       n_ctx=st.integers(1, 40), bos=st.booleans())
def test_tokenize_document_is_bos_plus_encode_truncated_to_the_context(text, n_ctx, bos):
    model = _model(n_ctx)
    full = TOKENIZER.encode(text, allowed_special="all")
    expected = ([TOKENIZER.eot_token] if bos else []) + full[: n_ctx - (1 if bos else 0)]
    assert tokenize_document(model, text, bos) == expected


def test_tokenize_document_long_text_and_special_token():
    model = _model(16)
    text = "word " * 10_000 + "<|endoftext|>"
    assert tokenize_document(model, text) == [TOKENIZER.eot_token] + TOKENIZER.encode(text, allowed_special="all")[:15]
    assert tokenize_document(model, "<|endoftext|> hi", bos=False)[0] == TOKENIZER.eot_token


def test_a_fifo_a_device_or_an_endless_line_is_one_error_not_a_hang(tmp_path, monkeypatch):
    import os

    import minitf.corpus as corpus_mod

    fifo = tmp_path / "c.txt"
    os.mkfifo(fifo)
    with pytest.raises(MinitfError, match="is a FIFO, not a corpus file"):
        list(read_documents(fifo))
    zero = tmp_path / "zero.txt"
    zero.symlink_to("/dev/zero")
    with pytest.raises(MinitfError, match="is a device, not a corpus file"):
        list(read_documents(zero))
    with pytest.raises(MinitfError, match="is a device"):
        default_corpus(None, zero)
    monkeypatch.setattr(corpus_mod, "MAX_LINE_BYTES", 1 << 20)
    long = tmp_path / "long.txt"
    long.write_bytes(b"a" * (3 << 20))
    with pytest.raises(MinitfError, match="line 1 is longer than 1 MiB"):
        list(read_documents(long))
    long.write_bytes(b"a" * (1 << 20) + b"\nb\n")  # exactly the limit, then a newline: fine
    assert [len(d.text) for d in read_documents(long)] == [(1 << 20) + 2]
