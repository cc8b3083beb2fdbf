"""Parity with transformers through golden fixtures (made by tests/golden/make_golden.py): no torch needed."""
from pathlib import Path

import numpy as np
import pytest

from minitf import Model

GOLDEN = Path(__file__).resolve().parent / "golden"
NAMES = sorted(p.name for p in GOLDEN.iterdir() if (p / "expected.npz").exists())


TRAITS = {  # name: (keys prefixed with "transformer.", tensor dtype, separate lm_head.weight)
    "hub_bf16": (False, "BF16", False),
    "prefixed_f16": (True, "F16", False),
    "prefixed_f32_untied": (True, "F32", True),
}


def _header(name: str) -> dict:
    import json
    raw = (GOLDEN / name / "model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n])


@pytest.mark.parametrize("name", sorted(TRAITS))
def test_fixture_has_the_traits_its_name_claims(name):
    """Each layout/dtype the loader must handle is really covered by a fixture (and is run below)."""
    assert name in NAMES
    prefixed, dtype, untied = TRAITS[name]
    tensors = {k: v for k, v in _header(name).items() if k != "__metadata__"}
    assert all(k.startswith("transformer.") or k == "lm_head.weight" for k in tensors) == prefixed
    assert {v["dtype"] for v in tensors.values()} == {dtype}
    assert ("lm_head.weight" in tensors) == untied


@pytest.mark.parametrize("name", NAMES)
def test_golden_parity(name):
    ref = np.load(GOLDEN / name / "expected.npz")
    model = Model.load(GOLDEN / name)
    run = model.run(ref["tokens"], keep={"resid_pre", "resid_post", "pattern"})
    scale = np.abs(ref["logits"]).max()
    np.testing.assert_allclose(run.logits, ref["logits"], rtol=0, atol=1e-4 * scale)
    for layer in range(model.cfg.n_layer):
        np.testing.assert_allclose(run["resid_pre", layer], ref["hidden"][layer], rtol=0,
                                   atol=1e-4 * np.abs(ref["hidden"][layer]).max())
        np.testing.assert_allclose(run["pattern", layer], ref["attentions"][layer], rtol=0, atol=1e-5)
    L = model.cfg.n_layer  # transformers' last hidden state is ln_f(resid_post of the last layer)
    last = run["resid_post", L - 1].astype(np.float64)  # [B, T, D]
    centred = last - last.mean(-1, keepdims=True)
    final = centred / np.sqrt((centred ** 2).mean(-1, keepdims=True) + model.cfg.eps)
    final = final * model.w["ln_f.weight"] + model.w["ln_f.bias"]  # [B, T, D]
    np.testing.assert_allclose(final, ref["hidden"][L], rtol=0, atol=1e-4 * np.abs(ref["hidden"][L]).max())


def test_golden_hub_file_is_unaligned_with_mask_buffers():
    """The Hub-style fixture really has the traits it stands for."""
    raw = (GOLDEN / "hub_bf16" / "model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = _header("hub_bf16")
    assert (8 + n) % 8 == 3
    assert "h.0.attn.bias" in header and not any(k.startswith("transformer.") for k in header)
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}
