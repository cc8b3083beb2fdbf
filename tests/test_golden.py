"""Parity with transformers through golden fixtures (made by tests/golden/make_golden.py): no torch needed."""
from pathlib import Path

import numpy as np
import pytest

from minitf import Model

GOLDEN = Path(__file__).resolve().parent / "golden"
NAMES = sorted(p.name for p in GOLDEN.iterdir() if (p / "expected.npz").exists())


def test_fixtures_exist():
    assert {"hub_bf16", "prefixed_f16", "prefixed_f32_untied"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_golden_parity(name):
    ref = np.load(GOLDEN / name / "expected.npz")
    model = Model.load(GOLDEN / name)
    run = model.run(ref["tokens"], keep={"resid_pre", "pattern"})
    scale = np.abs(ref["logits"]).max()
    np.testing.assert_allclose(run.logits, ref["logits"], rtol=0, atol=1e-4 * scale)
    for layer in range(model.cfg.n_layer):
        np.testing.assert_allclose(run["resid_pre", layer], ref["hidden"][layer], rtol=0,
                                   atol=1e-4 * np.abs(ref["hidden"][layer]).max())
        np.testing.assert_allclose(run["pattern", layer], ref["attentions"][layer], rtol=0, atol=1e-5)


def test_golden_hub_file_is_unaligned_with_mask_buffers():
    """The Hub-style fixture really has the traits it stands for."""
    import json
    raw = (GOLDEN / "hub_bf16" / "model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    assert (8 + n) % 8 == 3
    assert "h.0.attn.bias" in header and not any(k.startswith("transformer.") for k in header)
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}
