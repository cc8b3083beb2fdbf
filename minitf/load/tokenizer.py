"""GPT-2's byte-level BPE as a ``tiktoken.Encoding``, built offline from a folder's vocab.json + merges.txt.

The files use OpenAI's "data gym" format: every byte is written as a printable unicode character
(GPT-2's ``bytes_to_unicode``), ``merges.txt`` lists merges in priority order, and ``vocab.json`` must
number tokens so that the 256 single bytes come first (in data-gym order) and each merge's result takes
the next id. That is exactly tiktoken's ``mergeable_ranks``. We rebuild tiktoken's
``data_gym_to_mergeable_bpe_ranks`` here because its file reader caches by path in a temp folder, which
would hand a stale vocabulary to a folder whose files changed.
"""
from __future__ import annotations

import json
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
    """A ``tiktoken.Encoding`` for the folder's BPE with ``<|endoftext|>`` as its special token. No network."""
    folder = Path(folder)
    ranks, specials = mergeable_ranks(folder / "vocab.json", folder / "merges.txt")
    if ENDOFTEXT not in specials:
        raise MinitfError(f"{folder / 'vocab.json'}: no {ENDOFTEXT} token")
    return tiktoken.Encoding(name=f"minitf:{folder}", pat_str=GPT2_PATTERN,
                             mergeable_ranks=ranks, special_tokens=specials)
