"""Make the golden fixtures once with the reference (needs torch + transformers):

    python tests/golden/make_golden.py

Each folder tests/golden/<name>/ is a tiny GPT-2 checkpoint with the test tokenizer, and expected.npz holds
transformers' outputs on fixed tokens, so test_golden.py checks parity where torch is not installed.
"""
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from reference import TOKENIZER_DIR, random_gpt2, reference_outputs, save  # noqa: E402

FIXTURES = {  # name: (key style, dtype, tied, shape)
    "hub_bf16": ("hub", torch.bfloat16, True, dict(n_layer=2, n_head=2, d_head=8, n_ctx=24)),
    "prefixed_f16": ("prefixed", torch.float16, True, dict(n_layer=3, n_head=4, d_head=4, n_ctx=16)),
    "prefixed_f32_untied": ("prefixed", torch.float32, False, dict(n_layer=1, n_head=3, d_head=5, n_ctx=12)),
}


def main() -> None:
    for i, (name, (style, dtype, tied, shape)) in enumerate(FIXTURES.items()):
        folder = HERE / name
        model = random_gpt2(d_vocab=457, seed=100 + i, tied=tied, **shape)
        save(model, folder, style, dtype, tokenizer_dir=TOKENIZER_DIR)
        (folder / "generation_config.json").unlink(missing_ok=True)
        tokens = np.random.default_rng(i).integers(0, 457, (2, shape["n_ctx"]))
        ref = reference_outputs(folder, tokens)
        np.savez_compressed(folder / "expected.npz", tokens=tokens, **ref)
        print(name, sorted(p.name for p in folder.iterdir()))


if __name__ == "__main__":
    main()
