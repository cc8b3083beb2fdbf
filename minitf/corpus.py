"""Corpora: documents streamed from a file, a stable train/test split, and tokenization to the context.

Formats (by file name):

* ``.txt``   — documents separated by one or more blank lines (a line of only whitespace is blank);
  a document's text is its lines joined with ``"\\n"``.
* ``.jsonl`` — one JSON object per line with a string field ``"text"`` (blank lines are skipped).
* ``.txt.gz`` / ``.jsonl.gz`` — the same, gzip-compressed.

Documents are numbered ``doc_id = 0, 1, 2, …`` in file order. Files must be UTF-8 (a BOM is allowed); a
line that does not decode, or is not valid JSON, is a ``MinitfError`` naming the file and the line.

The split is by document content, not position, so that it survives reordering and appending documents,
and so that duplicated documents never straddle train and test:

    split(doc) = "test"  if  int(sha256(utf-8 text)[:8 bytes], big-endian) mod 100 < 20   else "train"

which puts ~20 % of the documents in test.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from pathlib import Path
from typing import Iterator, NamedTuple

from minitf.errors import MinitfError
from minitf.util.files import regular_file

SPLITS = ("train", "test")
TEST_PERCENT = 20
CORPUS_FORMATS = (".txt", ".jsonl", ".txt.gz", ".jsonl.gz")
MAX_LINE_BYTES = 64 << 20  # one line (a .txt line or a .jsonl document) at most
_ASCII_SPACE = frozenset(" \t\n\r\f\v")  # whitespace to GPT-2's pre-tokenizer (\s) and to str.isspace alike


class Document(NamedTuple):
    doc_id: int  # 0-based position of the document in the file
    text: str


def corpus_format(path: Path) -> tuple[str, bool]:
    """("txt" | "jsonl", gzipped?) from the file name."""
    name = Path(path).name.lower()
    gz = name.endswith(".gz")
    base = name[:-3] if gz else name
    for kind in ("txt", "jsonl"):
        if base.endswith("." + kind):
            return kind, gz
    raise MinitfError(f"{path}: unknown corpus format (use {', '.join(CORPUS_FORMATS)})")


def _lines(path: Path, gz: bool) -> Iterator[tuple[int, str]]:
    """(1-based line number, decoded line without its line ending), streaming; a line over MAX_LINE_BYTES
    (e.g. a binary file with no newline) is an error, not a memory blow-up."""
    regular_file(path, "corpus file")
    try:
        f = gzip.open(path, "rb") if gz else open(path, "rb")
    except FileNotFoundError:
        raise MinitfError(f"{path}: no such corpus file") from None
    except OSError as e:
        raise MinitfError(f"{path}: cannot read ({e.strerror})") from None
    with f:
        lineno = 0
        try:
            while raw := f.readline(MAX_LINE_BYTES + 1):
                lineno += 1
                if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                    raise MinitfError(f"{path}: line {lineno} is longer than {MAX_LINE_BYTES >> 20} MiB")
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise MinitfError(f"{path}: line {lineno}: not UTF-8 ({e.reason} at byte {e.start})") from None
                if lineno == 1:
                    line = line.removeprefix("\ufeff")
                yield lineno, line.rstrip("\r\n")
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:
            raise MinitfError(f"{path}: corrupt or truncated gzip after line {lineno} ({e})") from None
        except OSError as e:
            raise MinitfError(f"{path}: cannot read after line {lineno} ({e})") from None


def read_documents(path: str | Path) -> Iterator[Document]:
    """Stream the documents of a corpus file (see the module docstring for the formats)."""
    path = Path(path)
    kind, gz = corpus_format(path)
    doc_id = 0
    if kind == "jsonl":
        for lineno, line in _lines(path, gz):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise MinitfError(f"{path}: line {lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise MinitfError(f"{path}: line {lineno}: expected an object with a string field \"text\"")
            yield Document(doc_id, record["text"])
            doc_id += 1
        return
    lines: list[str] = []
    for _, line in _lines(path, gz):
        if line.strip():
            lines.append(line)
        elif lines:
            yield Document(doc_id, "\n".join(lines))
            doc_id += 1
            lines = []
    if lines:
        yield Document(doc_id, "\n".join(lines))


def split_of(doc: Document | str) -> str:
    """"train" or "test", from a hash of the document's text (stable across runs, machines and file order)."""
    text = doc if isinstance(doc, str) else doc.text
    h = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")
    return "test" if h % 100 < TEST_PERCENT else "train"


def check_split(split: str | None) -> str | None:
    """"train" | "test" | None (all documents; "all" is accepted for None)."""
    if split == "all":
        return None
    if split not in (None, *SPLITS):
        raise MinitfError(f"`split` {split}: choose train, test or all", param="split")
    return split


def documents(path: str | Path, split: str | None = None) -> Iterator[Document]:
    """The documents of ``path`` in ``split`` ("train", "test", or None / "all"), with their file doc_ids."""
    split = check_split(split)
    for doc in read_documents(path):
        if split is None or split_of(doc) == split:
            yield doc


def default_corpus(model, corpus: str | Path | None = None, needed_for: str | None = None) -> Path | None:
    """The corpus to use: ``corpus`` when given, else the one shipped with the model folder (``corpus.txt.gz``).

    When there is neither: None, or with ``needed_for`` (what to do, e.g. "give --corpus FILE") a MinitfError
    "<folder> has no corpus.txt.gz and no corpus was given: <needed_for>".
    """
    if corpus is not None:  # a missing file is reported where it is read; a FIFO or device never is
        return regular_file(corpus, "corpus file") if Path(corpus).exists() else Path(corpus)
    path = None if model.folder is None else Path(model.folder) / "corpus.txt.gz"
    if path is not None and path.is_file():
        return path
    if needed_for is not None:
        raise MinitfError(f"{model.folder or 'the model'} has no corpus.txt.gz and no corpus was given: {needed_for}")
    return None


def tokenized_documents(model, path: str | Path, doc_ids: set[int], bos: bool = True,
                        split: str | None = None) -> dict[int, list[int]]:
    """{doc_id: ``tokenize_document``} for the documents of ``path`` (in ``split``) that an index named, read
    until all are found. A doc_id the file lacks means the index was built on another corpus: MinitfError."""
    found: dict[int, list[int]] = {}
    for doc in documents(path, split) if doc_ids else ():
        if doc.doc_id in doc_ids:
            found[doc.doc_id] = tokenize_document(model, doc.text, bos)
            if len(found) == len(doc_ids):
                break
    if missing := doc_ids - found.keys():
        raise MinitfError(f"{path}: the index names document {min(missing)}, which the corpus does not have; "
                          f"rebuild the index")
    return found


def _encode_prefix(model, text: str, n_tokens: int) -> list[int]:
    """The first ``n_tokens`` tokens of ``text`` (or all of them), without encoding a long text whole.

    GPT-2's pre-tokenizer never joins a non-space character with the whitespace after it, so cutting the
    text just before an ASCII whitespace character that follows a non-space one leaves every earlier
    pre-token, and so every earlier token, unchanged: the tokens of such a cut are a prefix of the text's.
    """
    limit = 8 * n_tokens + 64
    while limit < len(text):
        cut = limit
        while cut > 0 and not (text[cut] in _ASCII_SPACE and not text[cut - 1].isspace()):
            cut -= 1
        if cut > 0:
            ids = model.encode(text[:cut])
            if len(ids) >= n_tokens:
                return ids[:n_tokens]
        limit *= 4
    return model.encode(text)[:n_tokens]


def tokenize_document(model, text: str, bos: bool = True) -> list[int]:
    """``[bos] + encode(text)`` (or without BOS), truncated to the model's context ``n_ctx``."""
    n = model.cfg.n_ctx - (1 if bos else 0)
    ids = _encode_prefix(model, text, n) if n > 0 else []
    return ([model.bos] if bos else []) + ids
