"""GPT-2's byte-level BPE as a ``tiktoken.Encoding``, built offline from a folder's vocab.json + merges.txt,
or from its ``tokenizer.json`` (Hugging Face ``tokenizers``' file: the only one Pythia's folders have).

The files use OpenAI's "data gym" format: every byte is written as a printable unicode character
(GPT-2's ``bytes_to_unicode``), ``merges.txt`` lists merges in priority order, and ``vocab.json`` must
number tokens so that the 256 single bytes come first (in data-gym order) and each merge's result takes
the next id. That is exactly tiktoken's ``mergeable_ranks``. We rebuild tiktoken's
``data_gym_to_mergeable_bpe_ranks`` here because its file reader caches by path in a temp folder, which
would hand a stale vocabulary to a folder whose files changed.

A ``tokenizer.json`` holds the same BPE (``model.vocab``, ``model.merges``, tokens in the same printable
alphabet) plus what transformers applies around it: a unicode ``normalizer`` (NFC in Pythia's), applied to
the text first, and ``added_tokens`` (``<|endoftext|>``, Pythia's ``<|padding|>`` and runs of spaces), split
out of the text before the BPE, the longest first where several match at one place (``tokenizers``' own
rule). Its ids need not start with the 256 bytes (Pythia's start with two special tokens): a token's id is
its rank, which is the BPE's merge priority when each merge's result has a larger id than the one before.
"""
from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

import tiktoken

from minitf.errors import MinitfError

# GPT-2's pre-tokenizer (tiktoken's r50k_base / gpt2 pattern).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ENDOFTEXT = "<|endoftext|>"


def _data_gym_alphabet() -> dict[str, int]:
    """Printable stand-in character → byte, in data-gym (= GPT-2 ``bytes_to_unicode``) order."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    char_to_byte = {chr(b): b for b in printable}
    rest = [b for b in range(256) if b not in char_to_byte.values()]
    char_to_byte |= {chr(256 + i): b for i, b in enumerate(rest)}
    return char_to_byte


def mergeable_ranks(vocab_path: Path, merges_path: Path) -> tuple[dict[bytes, int], dict[str, int]]:
    """Return ({token bytes: rank}, {special token: id}) after checking vocab.json agrees with merges.txt."""
    char_to_byte = _data_gym_alphabet()

    def to_bytes(path: Path, s: str) -> bytes:
        try:
            return bytes(char_to_byte[c] for c in s)
        except KeyError as e:
            raise MinitfError(f"{path}: token {s!r} has a character {e} outside GPT-2's byte alphabet") from None

    try:
        vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
        lines = merges_path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as e:
        raise MinitfError(f"{e.filename}: no such file (a model folder needs vocab.json and merges.txt)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MinitfError(f"{vocab_path}: not valid JSON/UTF-8 ({e})") from None
    if not isinstance(vocab, dict):
        raise MinitfError(f"{vocab_path}: expected a JSON object token → id")

    ranks = {bytes([b]): i for i, b in enumerate(char_to_byte.values())}
    for lineno, line in enumerate(lines, 1):
        if not line.strip() or (lineno == 1 and line.startswith("#version")):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise MinitfError(f"{merges_path}: line {lineno} is not a merge 'a b': {line!r}")
        ranks[to_bytes(merges_path, parts[0]) + to_bytes(merges_path, parts[1])] = len(ranks)

    specials = {k: v for k, v in vocab.items() if k.startswith("<|") and k.endswith("|>")}
    from_vocab = {to_bytes(vocab_path, k): v for k, v in vocab.items() if k not in specials}
    if from_vocab != ranks:
        bad = next((k for k, v in ranks.items() if from_vocab.get(k) != v), None)
        raise MinitfError(
            f"{vocab_path}: ids do not follow {merges_path.name} (token {bad!r} should have id {ranks.get(bad)}, "
            f"has {from_vocab.get(bad)}); expected 256 byte tokens then one id per merge, in order")
    return ranks, specials


def load_tokenizer(folder: Path) -> tiktoken.Encoding:
    """A ``tiktoken.Encoding`` for the folder's BPE with ``<|endoftext|>`` as its special token. No network.
    vocab.json + merges.txt when the folder has them, else tokenizer.json."""
    folder = Path(folder)
    if not (folder / "vocab.json").exists() and (folder / "tokenizer.json").exists():
        return load_tokenizer_json(folder / "tokenizer.json")
    ranks, specials = mergeable_ranks(folder / "vocab.json", folder / "merges.txt")
    if ENDOFTEXT not in specials:
        raise MinitfError(f"{folder / 'vocab.json'}: no {ENDOFTEXT} token")
    return tiktoken.Encoding(name=f"minitf:{folder}", pat_str=GPT2_PATTERN,
                             mergeable_ranks=ranks, special_tokens=specials)


_NORMALIZERS = ("NFC", "NFD", "NFKC", "NFKD")


class HFTokenizer(tiktoken.Encoding):
    """A ``tiktoken.Encoding`` that applies tokenizer.json's unicode normalizer and splits its added tokens out
    of the text (longest first) before the BPE, as ``tokenizers`` does. ``encode`` with ``allowed_special="all"``
    (how ``Model.encode`` calls it) is transformers' ``encode(text, add_special_tokens=False)``."""

    def __init__(self, *, normalizer: str | None, **kwargs):
        super().__init__(**kwargs)
        self.normalizer = normalizer
        added = sorted(self._special_tokens, key=len, reverse=True)  # longest first: leftmost-longest matches
        self._added = re.compile("|".join(map(re.escape, added))) if added else None

    def encode(self, text: str, *, allowed_special=frozenset(), disallowed_special="all") -> list[int]:
        if self.normalizer:
            text = unicodedata.normalize(self.normalizer, text)
        if allowed_special != "all" or self._added is None:
            return super().encode(text, allowed_special=allowed_special, disallowed_special=disallowed_special)
        ids, pos = [], 0
        for m in self._added.finditer(text):
            ids += self.encode_ordinary(text[pos:m.start()]) + [self._special_tokens[m.group()]]
            pos = m.end()
        return ids + self.encode_ordinary(text[pos:])


def _normalizer(path: Path, spec) -> str | None:
    """tokenizer.json's ``normalizer`` → the ``unicodedata`` form it applies (None: none)."""
    if spec is None:
        return None
    steps = spec.get("normalizers", []) if spec.get("type") == "Sequence" else [spec]
    forms = [step.get("type") for step in steps]
    if len(forms) > 1 or any(form not in _NORMALIZERS for form in forms):
        raise MinitfError(f"{path}: normalizer {forms} is not supported (minitf applies one of {', '.join(_NORMALIZERS)})")
    return forms[0] if forms else None


def load_tokenizer_json(path: Path) -> tiktoken.Encoding:
    """A byte-level BPE ``tokenizer.json`` (GPT-2's, Pythia's) as an ``HFTokenizer``; one-line errors name the file."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        model, pre = raw["model"], raw.get("pre_tokenizer") or {}
        vocab, merges, added = model["vocab"], model["merges"], raw.get("added_tokens") or []
    except FileNotFoundError:
        raise MinitfError(f"{path}: no such file (a model folder needs vocab.json and merges.txt, or tokenizer.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise MinitfError(f"{path}: not a tokenizers file ({type(e).__name__}: {e})") from None
    if model.get("type", "BPE") != "BPE" or model.get("dropout") or model.get("byte_fallback") \
            or pre.get("type") != "ByteLevel" or pre.get("add_prefix_space") or pre.get("use_regex") is False:
        raise MinitfError(f"{path}: minitf reads a byte-level BPE (model BPE without dropout, pre_tokenizer "
                          "ByteLevel with its regex and no added prefix space), as GPT-2's and Pythia's")
    normalizer = _normalizer(path, raw.get("normalizer"))
    char_to_byte = _data_gym_alphabet()
    specials = {t["content"]: t["id"] for t in added}
    ranks: dict[bytes, int] = {}
    for token, i in vocab.items():
        if token in specials:
            continue
        try:
            ranks[bytes(char_to_byte[c] for c in token)] = i
        except KeyError as e:
            raise MinitfError(f"{path}: token {token!r} has a character {e} outside GPT-2's byte alphabet") from None
    if missing := [b for b in range(256) if bytes([b]) not in ranks]:
        raise MinitfError(f"{path}: the vocabulary lacks the single byte {missing[0]} (a byte-level BPE has all 256)")
    last = max(ranks[bytes([b])] for b in range(256))
    for n, merge in enumerate(merges, 1):  # each merge's result must rank after everything merged before it
        a, b = merge.split(" ") if isinstance(merge, str) else merge
        i = vocab.get(a + b)
        if i is None or i <= last:
            raise MinitfError(f"{path}: merge {n} ({a!r} {b!r}) gives {'no token' if i is None else f'id {i}'}; "
                              f"minitf needs each merge's token to have a larger id than the one before ({last})")
        last = i
    if ENDOFTEXT not in specials:
        raise MinitfError(f"{path}: no {ENDOFTEXT} among its added_tokens")
    return HFTokenizer(normalizer=normalizer, name=f"minitf:{path}", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                       special_tokens=specials)
