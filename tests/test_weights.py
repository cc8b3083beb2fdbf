"""Loading checkpoints: dtypes, key styles, alignment, and one clear line for every kind of bad input."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minitf import Model
from minitf.errors import MinitfError
from minitf.weights import read_safetensors_header

GOLDEN = Path(__file__).resolve().parent / "golden"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def folder(tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(GOLDEN / "prefixed_f32_untied", dst)
    return dst


def rewrite(folder: Path, edit) -> None:
    """Apply ``edit(header, tensors)`` to the folder's safetensors file and write it back (F32 only)."""
    path = folder / "model.safetensors"
    header, start = read_safetensors_header(path)
    raw = path.read_bytes()
    tensors = {k: np.frombuffer(raw[start + v["data_offsets"][0]: start + v["data_offsets"][1]], np.float32)
               .reshape(v["shape"]).copy() for k, v in header.items()}
    edit(tensors)
    out, pos, blobs = {}, 0, []
    for k, t in tensors.items():
        out[k] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [pos, pos + t.nbytes]}
        blobs.append(t.astype(np.float32).tobytes())
        pos += t.nbytes
    text = json.dumps(out).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + b"".join(blobs))


def test_arrays_are_float32_aligned_and_views_share_memory():
    model = Model.load(GOLDEN / "hub_bf16")  # BF16, data at an offset ≡ 3 (mod 8)
    for name, a in model.w.items():
        assert a.dtype == np.float32 and a.flags.c_contiguous and a.ctypes.data % 16 == 0, name
    assert np.shares_memory(model.W_Q[0], model.w["h.0.attn.c_attn.weight"])
    H, D, Dh = model.cfg.n_head, model.cfg.d_model, model.cfg.d_head
    assert model.W_Q[0].shape == (H, D, Dh) and model.W_O[1].shape == (H, Dh, D)
    # W_K of head 1 is columns D + Dh … D + 2Dh of the fused c_attn weight
    np.testing.assert_array_equal(model.W_K[0][1], model.w["h.0.attn.c_attn.weight"][:, D + Dh:D + 2 * Dh])
    assert "lm_head.weight" not in model.w and np.shares_memory(model.W_U, model.w["wte.weight"])


def test_untied_lm_head_is_used():
    model = Model.load(GOLDEN / "prefixed_f32_untied")
    assert "lm_head.weight" in model.w and np.shares_memory(model.W_U, model.w["lm_head.weight"])


def test_missing_folder_and_files(tmp_path, folder):
    with pytest.raises(MinitfError, match="nope: not a model folder"):
        Model.load(tmp_path / "nope")
    (folder / "model.safetensors").unlink()
    with pytest.raises(MinitfError, match=r"model\.safetensors: no such file"):
        Model.load(folder)
    (folder / "config.json").unlink()
    with pytest.raises(MinitfError, match=r"config\.json: no such file"):
        Model.load(folder)


def test_truncated_file(folder):
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(MinitfError, match=r"model\.safetensors: truncated"):
        Model.load(folder)
    path.write_bytes(b"\x05\x00")
    with pytest.raises(MinitfError, match=r"model\.safetensors: truncated"):
        Model.load(folder)


def test_malformed_header(folder):
    path = folder / "model.safetensors"
    path.write_bytes((10).to_bytes(8, "little") + b"{not json!" + b"\0" * 100)
    with pytest.raises(MinitfError, match=r"model\.safetensors: malformed safetensors header"):
        Model.load(folder)
    path.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    with pytest.raises(MinitfError, match=r"model\.safetensors: not a safetensors file or truncated"):
        Model.load(folder)


def test_wrong_shape(folder):
    rewrite(folder, lambda t: t.__setitem__("transformer.h.0.mlp.c_fc.bias", np.zeros(7, np.float32)))
    with pytest.raises(MinitfError, match=r"h\.0\.mlp\.c_fc\.bias has shape \[7\] but config\.json implies \[60\]"):
        Model.load(folder)


def test_missing_key(folder):
    rewrite(folder, lambda t: t.pop("transformer.ln_f.bias"))
    with pytest.raises(MinitfError, match=r"model\.safetensors: missing tensor ln_f\.bias"):
        Model.load(folder)


def test_config_disagrees_with_weights(folder):
    cfg = json.loads((folder / "config.json").read_text())
    cfg["n_layer"] = 2
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MinitfError, match=r"missing tensor h\.1\.ln_1\.weight"):
        Model.load(folder)
    cfg["n_layer"], cfg["n_embd"] = 1, 30
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MinitfError, match=r"wte\.weight has shape \[457, 15\] but config\.json implies \[457, 30\]"):
        Model.load(folder)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_inf_weights(folder, bad):
    def poison(t):
        t["transformer.h.0.attn.c_proj.weight"][1, 2] = bad
    rewrite(folder, poison)
    with pytest.raises(MinitfError, match=r"h\.0\.attn\.c_proj\.weight contains NaN or inf"):
        Model.load(folder)


def test_bad_config(folder):
    (folder / "config.json").write_text("{")
    with pytest.raises(MinitfError, match=r"config\.json: not valid JSON"):
        Model.load(folder)
    (folder / "config.json").write_text(json.dumps({"n_layer": 1, "n_head": 3, "n_embd": 15, "vocab_size": 457}))
    with pytest.raises(MinitfError, match=r"config\.json: missing field 'n_positions'"):
        Model.load(folder)
    (folder / "config.json").write_text(json.dumps({"n_layer": 1, "n_head": 3, "n_embd": 15, "vocab_size": 457,
                                                    "n_positions": 12, "activation_function": "relu"}))
    with pytest.raises(MinitfError, match=r"activation_function 'relu' is not supported"):
        Model.load(folder)


def test_cli_prints_one_line_without_traceback(folder):
    rewrite(folder, lambda t: t.pop("transformer.ln_f.bias"))
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "info", "--model", str(folder)],
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "model.safetensors: missing tensor ln_f.bias" in out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""
