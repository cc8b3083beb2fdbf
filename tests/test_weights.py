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
from minitf.load.weights import read_safetensors_header

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


# ---- byte ranges: the tensors must tile the data exactly, as the safetensors library requires ----------------
def raw_parts(folder: Path) -> tuple[dict, bytes]:
    """(header entries in file order, data bytes) of the folder's safetensors file."""
    path = folder / "model.safetensors"
    header, start = read_safetensors_header(path)
    return header, path.read_bytes()[start:]


def write_raw(folder: Path, entries, data: bytes) -> Path:
    """Write a safetensors file from header ``entries`` ((key, info) pairs, kept in this order, duplicates too)."""
    text = "{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in entries) + "}"
    path = folder / "model.safetensors"
    path.write_bytes(len(text.encode()).to_bytes(8, "little") + text.encode() + data)
    return path


def entry(header, key, begin, end=None):
    info = dict(header[key])
    n = info["data_offsets"][1] - info["data_offsets"][0]
    return {**info, "data_offsets": [begin, begin + n if end is None else end]}


def overlap(header, data):
    """The issue's case: c_fc.weight pointed at [0, its length), over the tensors stored there."""
    key = "transformer.h.0.mlp.c_fc.weight"
    return [(k, entry(header, k, 0) if k == key else v) for k, v in header.items()], data


def same_range(header, data):
    """ln_1.weight given ln_1.bias's bytes (both [15] F32, the bias stored first); its own bytes are left unused."""
    b = header["transformer.h.0.ln_1.bias"]["data_offsets"]
    assert b < header["transformer.h.0.ln_1.weight"]["data_offsets"]
    return [(k, entry(header, k, *b) if k == "transformer.h.0.ln_1.weight" else v) for k, v in header.items()], data


def gap_out_of_order(header, data):
    """The entries listed last-to-first, with 16 unused bytes inserted before the tensor at the middle offset."""
    by_offset = sorted(header, key=lambda k: header[k]["data_offsets"])
    cut = header[by_offset[len(by_offset) // 2]]["data_offsets"][0]
    shifted = {k: entry(header, k, v["data_offsets"][0] + (16 if v["data_offsets"][0] >= cut else 0))
               for k, v in header.items()}
    return list(reversed(shifted.items())), data[:cut] + b"\0" * 16 + data[cut:]


def trailing(header, data):
    return list(header.items()), data + b"\0" * 8


def duplicate_key(header, data):
    """A key written twice in the JSON, the second time for another tensor's bytes (json.loads and the library
    keep the last one, which leaves the first one's bytes unused)."""
    items = list(header.items())
    return items + [(items[0][0], items[1][1])], data


@pytest.mark.parametrize("corrupt, message", [
    (overlap, r"transformer\.h\.0\.mlp\.c_fc\.weight|overlaps"),
    (same_range, r"transformer\.h\.0\.ln_1\.weight \(data bytes \d+–\d+\) has the same bytes as transformer\.h\.0\.ln_1\.bias"),
    (gap_out_of_order, r"16 unused data bytes before transformer\."),
    (trailing, r"8 bytes after the last tensor"),
    (duplicate_key, r"tensor \S+ appears twice in the safetensors header"),
])
def test_byte_ranges_that_safetensors_rejects_are_rejected(folder, corrupt, message):
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = write_raw(folder, *corrupt(*raw_parts(folder)))
    with pytest.raises(SafetensorError):  # the reference: the safetensors library refuses the same file
        load_file(path)
    with pytest.raises(MinitfError, match=r"model\.safetensors: .*" + message) as e:
        Model.load(folder)
    if corrupt is overlap:
        assert "c_fc.weight" in str(e.value) and ("overlaps" in str(e.value) or "same bytes" in str(e.value))


def test_entries_out_of_header_order_and_empty_tensors_are_fine(folder):
    """Header order is free and zero-size tensors may share an offset: the library and minitf both accept."""
    from safetensors.numpy import load_file

    header, data = raw_parts(folder)
    before = Model.load(folder).w
    path = write_raw(folder, list(reversed(header.items())), data)
    after = Model.load(folder).w
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)
    empty = [(f"e{i}", {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}) for i in range(2)]
    write_raw(folder, empty + list(header.items()), data)
    load_file(path)
    read_safetensors_header(path)


def test_same_tensor_stored_with_and_without_prefix(folder):
    header, data = raw_parts(folder)
    bias = header["transformer.ln_f.bias"]
    n = len(data)
    write_raw(folder, list(header.items()) + [("ln_f.bias", {**bias, "data_offsets": [n, n + 60]})], data + data[:60])
    with pytest.raises(MinitfError, match=r"ln_f\.bias is stored twice \(as transformer\.ln_f\.bias and ln_f\.bias\)"):
        Model.load(folder)


# ---- tensors config.json does not account for --------------------------------------------------------------
def test_layers_beyond_config_are_refused(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(GOLDEN / "prefixed_f16", folder)  # 3 layers
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["n_layer"] == 3
    cfg["n_layer"] = 2
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MinitfError, match=r"model\.safetensors: tensor transformer\.h\.2\.\S+ \(and 11 more\) is not "
                                          r"part of the model config\.json describes \(n_layer 2\)"):
        Model.load(folder)


def test_mask_buffers_only_for_layers_the_config_has(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(GOLDEN / "hub_bf16", folder)  # 2 layers, with h.0.attn.bias and h.1.attn.bias
    Model.load(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["n_layer"] = 1
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MinitfError, match=r"tensor h\.1\.\S+ \(and 12 more\) is not part"):
        Model.load(folder)


def test_unknown_tensor_is_refused(folder):
    rewrite(folder, lambda t: t.__setitem__("transformer.h.0.mlp.gate.weight", np.zeros(3, np.float32)))
    with pytest.raises(MinitfError, match=r"tensor transformer\.h\.0\.mlp\.gate\.weight is not part of the model"):
        Model.load(folder)


def test_cli_refuses_overlapping_tensors(folder):
    write_raw(folder, *overlap(*raw_parts(folder)))
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "run", "--model", str(folder), "--text", "a"],
                         capture_output=True, text=True)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "c_fc.weight" in out.stderr and "Traceback" not in out.stderr
