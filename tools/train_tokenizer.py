#!/usr/bin/env python3
"""Train the byte-level BPE tokenizer of the embedded tiny model.

Learns merges on the train split written by ``tools/build_corpus.py`` with
the HF ``tokenizers`` BPE trainer (GPT-2 pre-tokenizer regex, byte-level
alphabet), then writes the result in GPT-2's exact file format with the ids
REWRITTEN to the data-gym layout that tiktoken expects:

* ids 0..255: the single bytes, in tiktoken's ``rank_to_intbyte`` order
  (printable non-space bytes first, the rest in increasing order), spelled
  with GPT-2's ``bytes_to_unicode`` mapping;
* ids 256..: one id per merge, in ``merges.txt`` order;
* last id: ``<|endoftext|>``.

So id == tiktoken rank for every mergeable token, and the vocabulary is
``VOCAB_SIZE`` (8192) in all.  The script then verifies that

1. ``tiktoken.load.data_gym_to_mergeable_bpe_ranks(merges, vocab)`` accepts
   the files (its internal consistency assert passes), and
2. ``transformers.GPT2TokenizerFast`` over the files and a tiktoken
   ``Encoding`` (GPT-2's regex, ``<|endoftext|>`` special) give identical ids
   on a few thousand lines of the corpus (train and held-out).

Usage::

    python tools/train_tokenizer.py [--work /tmp/tiny_work] [--out weights/tiny]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys

VOCAB_SIZE = 8192
EOT = "<|endoftext|>"
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character mapping."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def data_gym_byte_order() -> list[int]:
    order = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    order += [b for b in range(256) if b not in order]
    return order


def read_docs(path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)["text"]


def learn_merges(docs_path: str, n_merges: int) -> list[tuple[str, str]]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    # ask for a few spare merges: merges whose result duplicates an existing
    # token are dropped below
    trainer = trainers.BpeTrainer(
        vocab_size=256 + n_merges + 64,
        min_frequency=2,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(read_docs(docs_path), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return merges


def build_files(merges, n_merges, out_dir):
    b2u = bytes_to_unicode()
    vocab: dict[str, int] = {}
    for b in data_gym_byte_order():
        vocab[b2u[b]] = len(vocab)
    kept, dropped = [], 0
    for a, b in merges:
        assert a in vocab and b in vocab, (a, b)
        if a + b in vocab:  # each merge must create a distinct, new token
            dropped += 1
            continue
        kept.append((a, b))
        vocab[a + b] = len(vocab)
        if len(kept) == n_merges:
            break
    if len(kept) < n_merges:
        raise SystemExit(f"only {len(kept)} usable merges learned, need {n_merges}")
    vocab[EOT] = len(vocab)
    assert len(vocab) == VOCAB_SIZE, len(vocab)
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write("#version: 0.2\n")
        for a, b in kept:
            f.write(f"{a} {b}\n")
    return kept, dropped


def tiktoken_encoding(out_dir):
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    ranks = data_gym_to_mergeable_bpe_ranks(
        os.path.join(out_dir, "merges.txt"), os.path.join(out_dir, "vocab.json"))
    return tiktoken.Encoding(name="minitf-tiny", pat_str=GPT2_PATTERN,
                             mergeable_ranks=ranks, special_tokens={EOT: len(ranks)})


def verify(out_dir, work, n_lines=4000, seed=0):
    from transformers import GPT2TokenizerFast

    enc = tiktoken_encoding(out_dir)  # (1) the internal assert passes
    assert enc.n_vocab == VOCAB_SIZE, enc.n_vocab
    vocab_file = os.path.join(out_dir, "vocab.json")
    merges_file = os.path.join(out_dir, "merges.txt")
    hf = GPT2TokenizerFast(vocab_file=vocab_file, merges_file=merges_file)
    if len(hf) != VOCAB_SIZE:  # transformers >= 5 renamed the arguments
        hf = GPT2TokenizerFast(vocab=vocab_file, merges=merges_file)
    assert len(hf) == VOCAB_SIZE, len(hf)
    assert hf.convert_tokens_to_ids(EOT) == VOCAB_SIZE - 1
    lines = []
    for name in ("train.txt", "heldout.txt"):
        with open(os.path.join(work, name), encoding="utf-8") as f:
            lines += [ln for ln in f.read().split("\n") if ln.strip()]
    rng = random.Random(seed)
    sample = rng.sample(lines, min(n_lines, len(lines)))
    # some multi-line chunks and special-token uses as well
    sample += ["\n".join(rng.sample(lines, 5)) for _ in range(200)]
    sample += [EOT + s for s in sample[:100]]
    sample += ["It is a truth universally acknowledged", "And God said", "To be, or not",
               "  leading spaces\n\n\ttabs  and trailing  ", "naïve café — “quotes” 123456 x²"]
    bad = 0
    for s in sample:
        a = enc.encode(s, allowed_special={EOT})
        b = hf.encode(s)
        if a != b:
            bad += 1
            if bad <= 5:
                print("MISMATCH", repr(s[:80]), a[:20], b[:20], file=sys.stderr)
        assert enc.decode(a) == s
    print(f"verify: {len(sample)} strings, {bad} mismatches between tiktoken and GPT2TokenizerFast")
    if bad:
        raise SystemExit("tokenizer verification failed")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/tiny_work")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "weights", "tiny"))
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    n_merges = VOCAB_SIZE - 256 - 1
    merges = learn_merges(os.path.join(args.work, "train_docs.jsonl"), n_merges)
    kept, dropped = build_files(merges, n_merges, args.out)
    print(f"learned {len(merges)} merges, dropped {dropped} duplicate-result merges, kept {len(kept)}; "
          f"vocab {VOCAB_SIZE} (256 bytes + {len(kept)} merges + {EOT})")
    verify(args.out, args.work)


if __name__ == "__main__":
    main()
