"""Paths of test data that need no torch."""
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SHARED_GPT2 = TESTS.parents[1] / "shared" / "gpt2"  # GPT-2's real vocab.json / merges.txt beside the checkout
TOKENIZER_DIR = TESTS / "data" / "tokenizer"  # GPT-2's bytes + first 200 merges + <|endoftext|>
