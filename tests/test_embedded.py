"""The embedded model weights/tiny: transformers loads it, and its logits equal minitf's."""
from pathlib import Path

import numpy as np
import pytest

import minitf
from minitf.kernels import softmax

TINY = Path(__file__).resolve().parents[1] / "weights" / "tiny"


def test_tiny_matches_transformers():
    pytest.importorskip("torch")
    from reference import reference_outputs

    model = minitf.load(TINY)
    ids = [model.bos] + model.encode("And it came to pass, when the king heard it, that he said unto Elizabeth")
    tokens = np.array([ids])
    ref = reference_outputs(TINY, tokens)  # transformers, float32, from the folder's config.json + safetensors
    run = model.run(tokens, keep={"pattern"})
    np.testing.assert_allclose(run.logits, ref["logits"], rtol=0, atol=1e-4 * np.abs(ref["logits"]).max())
    np.testing.assert_allclose(run["pattern", 5], ref["attentions"][5], rtol=0, atol=1e-5)


def test_tiny_tokenizer_matches_transformers():
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2TokenizerFast.from_pretrained(str(TINY))
    model = minitf.load(TINY)
    for text in ["It is a truth universally acknowledged", "ROMEO.\nBut soft! what light", "<|endoftext|>x  y"]:
        assert model.encode(text) == hf(text)["input_ids"]


def test_tiny_shape_and_quality_claims():
    """What weights/tiny/README.md states about the model."""
    model = minitf.load(TINY)
    cfg = model.cfg
    assert (cfg.n_layer, cfg.n_head, cfg.d_model, cfg.n_ctx, cfg.d_vocab) == (6, 8, 256, 256, 8192)
    probs = softmax(model.run([model.bos] + model.encode("And it came to"), logits="last").logits[0])
    assert model.token_str(int(probs.argmax())) == " pass"
