"""Make a random GPT-NeoX (Pythia-architecture) model folder offline, to try minitf's Pythia path without the Hub.

    python tools/make_neox.py OUT [--tokenizer weights/tiny] [--layers 4 --heads 4 --d-model 128 …] [--corpus FILE]

Writes OUT/config.json + model.safetensors (transformers' ``save_pretrained``), OUT/tokenizer.json built from the
tokenizer folder's vocab.json + merges.txt with the ``tokenizers`` library as Pythia's is (NFC normalizer, byte
level, ``<|endoftext|>`` and ``<|padding|>`` special), and copies the tokenizer folder's corpus.txt.gz (or
``--corpus``) so that ``study`` can mine prompts. The weights are random (larger than init so every layer
matters): the folder exercises the code, not a trained model. Needs torch, transformers and tokenizers.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def tokenizer_json(source: Path, out: Path) -> int:
    """out/tokenizer.json from source's vocab.json + merges.txt; returns its vocabulary size."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    tok = Tokenizer(BPE.from_file(str(source / "vocab.json"), str(source / "merges.txt")))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True), AddedToken("<|padding|>", special=True)])
    tok.save(str(out / "tokenizer.json"))
    return tok.get_vocab_size()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--tokenizer", type=Path, default=Path("weights/tiny"))
    ap.add_argument("--corpus", type=Path)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--n-ctx", type=int, default=256)
    ap.add_argument("--rotary-pct", type=float, default=0.25)
    ap.add_argument("--sequential", action="store_true", help="use_parallel_residual=false")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from reference_neox import random_neox, save_neox

    args.out.mkdir(parents=True, exist_ok=True)
    n_vocab = tokenizer_json(args.tokenizer, args.out)
    model = random_neox(n_layer=args.layers, n_head=args.heads, d_head=args.d_model // args.heads, d_vocab=n_vocab,
                        n_ctx=args.n_ctx, rotary_pct=args.rotary_pct, parallel=not args.sequential, seed=args.seed)
    save_neox(model, args.out)
    corpus = args.corpus or args.tokenizer / "corpus.txt.gz"
    if corpus.exists():
        shutil.copy(corpus, args.out / corpus.name)
    print(f"{args.out}: random GPT-NeoX, {args.layers} layers × {args.heads} heads, d_model {args.d_model}, "
          f"vocabulary {n_vocab}")


if __name__ == "__main__":
    main()
