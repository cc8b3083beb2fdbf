"""Load a GPT-2 checkpoint folder in Hugging Face layout into float32 NumPy arrays.

A folder holds ``config.json`` and ``model.safetensors`` (plus ``vocab.json`` / ``merges.txt``, read by
``minitf.load.tokenizer``). The safetensors format is small enough to read by hand, which lets us

* widen F16 and BF16 to float32 one tensor at a time (NumPy has no bfloat16: its bits are the top half of
  a float32, so ``uint32(bits) << 16`` reinterpreted as float32 is exact);
* read each tensor straight into a freshly allocated, aligned float32 array (the Hub's GPT-2 file starts
  its data at byte 14291: arrays viewed in place would be unaligned, which halves matmul speed);
* skip what we do not use (``attn.bias`` causal-mask buffers: 12 × 4 MiB in GPT-2 small) without reading it,
  and refuse what nothing accounts for (a tensor of a layer config.json does not have);
* check the header as the safetensors library does: the tensors' byte ranges tile the data exactly (no
  overlap, no duplicated range, no gap, nothing after the last), and no tensor is named twice;
* keep peak memory at the float32 parameter bytes plus one tensor (no whole-file mmap in the RSS).

Keys may carry the ``transformer.`` prefix (transformers' ``save_pretrained``) or not (the Hub's files).
``lm_head.weight`` is used when present, else the unembedding is tied to ``wte``.

``model_sha256`` is a loaded model's identity: the key of its neuron index, its cached neuron tables and a
study's settings.
"""
from __future__ import annotations

import hashlib
import json
import math
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minitf.errors import MinitfError
from minitf.util.files import file_sha256
from minitf.util.fmt import count

_DTYPES = {"F32": 4, "F16": 2, "BF16": 2}
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
_MODEL_SHA: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Config:
    """The GPT-2 hyper-parameters minitf needs, read from ``config.json``."""

    n_layer: int
    n_head: int
    d_model: int  # n_embd
    n_ctx: int  # n_positions (older files: n_ctx)
    d_mlp: int  # n_inner, or 4 · n_embd
    d_vocab: int  # vocab_size
    eps: float  # layer_norm_epsilon

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_head


def read_config(path: Path) -> Config:
    """Parse and check ``config.json``; every failure is one line naming the file."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MinitfError(f"{path}: no such file (a model folder needs config.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MinitfError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise MinitfError(f"{path}: expected a JSON object")

    def field(*names, default=None):
        for name in names:
            if raw.get(name) is not None:
                return raw[name]
        if default is None:
            raise MinitfError(f"{path}: missing field {names[0]!r}")
        return default

    act = field("activation_function", default="gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise MinitfError(f"{path}: activation_function {act!r} is not supported (GPT-2 uses 'gelu_new')")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if raw.get(flag):
            raise MinitfError(f"{path}: {flag}=true is not supported")
    if raw.get("scale_attn_weights") is False:
        raise MinitfError(f"{path}: scale_attn_weights=false is not supported")
    try:
        d_model = int(field("n_embd", "hidden_size"))
        cfg = Config(
            n_layer=int(field("n_layer", "num_hidden_layers")),
            n_head=int(field("n_head", "num_attention_heads")),
            d_model=d_model,
            n_ctx=int(field("n_positions", "n_ctx")),
            d_mlp=int(field("n_inner", default=4 * d_model)),
            d_vocab=int(field("vocab_size")),
            eps=float(field("layer_norm_epsilon", default=1e-5)),
        )
    except (TypeError, ValueError) as e:
        raise MinitfError(f"{path}: bad value ({e})") from None
    if min(cfg.n_layer, cfg.n_head, cfg.d_model, cfg.n_ctx, cfg.d_mlp, cfg.d_vocab) <= 0:
        raise MinitfError(f"{path}: sizes must be positive")
    if cfg.d_model % cfg.n_head:
        raise MinitfError(f"{path}: n_embd={cfg.d_model} is not a multiple of n_head={cfg.n_head}")
    return cfg


def expected_shapes(cfg: Config) -> dict[str, tuple[int, ...]]:
    """Checkpoint key (unprefixed) → shape. GPT-2 stores Conv1D weights as [in, out]."""
    D, M = cfg.d_model, cfg.d_mlp
    shapes = {"wte.weight": (cfg.d_vocab, D), "wpe.weight": (cfg.n_ctx, D),
              "ln_f.weight": (D,), "ln_f.bias": (D,)}
    for layer in range(cfg.n_layer):
        p = f"h.{layer}."
        shapes |= {
            p + "ln_1.weight": (D,), p + "ln_1.bias": (D,),
            p + "attn.c_attn.weight": (D, 3 * D), p + "attn.c_attn.bias": (3 * D,),
            p + "attn.c_proj.weight": (D, D), p + "attn.c_proj.bias": (D,),
            p + "ln_2.weight": (D,), p + "ln_2.bias": (D,),
            p + "mlp.c_fc.weight": (D, M), p + "mlp.c_fc.bias": (M,),
            p + "mlp.c_proj.weight": (M, D), p + "mlp.c_proj.bias": (D,),
        }
    return shapes


def read_safetensors_header(path: Path) -> tuple[dict, int]:
    """Return (header without __metadata__, byte offset where the data starts), checked against the file size."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise MinitfError(f"{path}: truncated (no safetensors header)")
            n = int.from_bytes(head, "little")
            if n > size - 8 or n > 100_000_000:
                raise MinitfError(f"{path}: not a safetensors file or truncated (header length {n}, file {size} bytes)")
            header = json.loads(f.read(n), object_pairs_hook=_no_duplicate_keys)
    except FileNotFoundError:
        raise MinitfError(f"{path}: no such file (a model folder needs model.safetensors)") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise MinitfError(f"{path}: malformed safetensors header (not JSON)") from None
    except _DuplicateKey as e:
        raise MinitfError(f"{path}: tensor {e} appears twice in the safetensors header") from None
    except OSError as e:
        raise MinitfError(f"{path}: cannot read ({e.strerror})") from None
    if not isinstance(header, dict):
        raise MinitfError(f"{path}: malformed safetensors header")
    header.pop("__metadata__", None)
    data_start = 8 + n
    for key, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            count = math.prod(shape)
            if not all(type(x) is int for x in (begin, end, *shape)):
                raise TypeError
        except (TypeError, KeyError, ValueError):
            raise MinitfError(f"{path}: malformed header entry for {key!r}") from None
        if dtype in _DTYPES and end - begin != count * _DTYPES[dtype]:
            raise MinitfError(f"{path}: {key} has {end - begin} bytes for shape {shape} {dtype}")
        if not 0 <= begin <= end or data_start + end > size:
            raise MinitfError(f"{path}: truncated: {key} ends at byte {data_start + end}, file has {size}")
    _check_coverage(path, header, size - data_start)
    return header, data_start


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list) -> dict:
    """json object_pairs_hook: a header naming a tensor twice is ambiguous (json.loads would keep the last)."""
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def _check_coverage(path: Path, header: dict, n_data: int) -> None:
    """The tensors' byte ranges, sorted by (begin, end), must tile the data [0, n_data) exactly: each begins
    where the previous ends — no overlap, no duplicated range, no gap, nothing after the last (the safetensors
    library's own check: "invalid offset for tensor" / "file not fully covered")."""
    pos, prev = 0, None  # end of the bytes covered so far, and the tensor that covers them last
    for key, info in sorted(header.items(), key=lambda kv: tuple(kv[1]["data_offsets"])):
        begin, end = info["data_offsets"]
        if begin < pos:
            same = (begin, end) == tuple(header[prev]["data_offsets"])
            raise MinitfError(f"{path}: {key} (data bytes {begin}–{end}) "
                              f"{'has the same bytes as' if same else 'overlaps'} {prev}; "
                              "safetensors tensors may not share bytes")
        if begin > pos:
            raise MinitfError(f"{path}: {count(begin - pos, 'unused data byte')} before {key} (data bytes {begin}–{end}); "
                              "safetensors tensors must cover the data without gaps")
        pos, prev = end, key
    if pos != n_data:
        raise MinitfError(f"{path}: {count(n_data - pos, 'byte')} after the last tensor; "
                          "safetensors tensors must cover the data exactly")


def _read_tensor(f, path: Path, key: str, info: dict, data_start: int) -> np.ndarray:
    """Read one tensor into a new aligned float32 array (widening F16/BF16)."""
    dtype, shape, (begin, _) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
    if dtype not in _DTYPES:
        raise MinitfError(f"{path}: {key} has dtype {dtype}; minitf reads F32, F16 and BF16")
    f.seek(data_start + begin)
    if dtype == "F32":
        out = np.empty(shape, np.float32)  # [*shape] aligned, filled in place
        raw = out
    else:
        raw = np.empty(shape, np.uint16)  # [*shape] the 16-bit words
    if f.readinto(memoryview(raw).cast("B")) != raw.nbytes:
        raise MinitfError(f"{path}: truncated while reading {key}")
    if dtype == "F16":
        out = raw.view(np.float16).astype(np.float32)  # [*shape]
    elif dtype == "BF16":
        out = raw.astype(np.uint32)  # [*shape]
        out <<= 16  # bf16 bits are the high half of a float32
        out = out.view(np.float32)
    if not np.isfinite(out).all():
        raise MinitfError(f"{path}: {key} contains NaN or inf")
    return out


def load_weights(folder: Path) -> tuple[Config, dict[str, np.ndarray]]:
    """Read ``folder/config.json`` and ``folder/model.safetensors`` → (config, {unprefixed key: float32 array}).

    Checks every expected key is present with the shape the config implies; names the file and key on failure.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MinitfError(f"{folder}: not a model folder (no such directory)")
    cfg = read_config(folder / "config.json")
    path = folder / "model.safetensors"
    header, data_start = read_safetensors_header(path)
    by_name: dict[str, tuple[str, dict]] = {}
    for key, info in header.items():
        name = key.removeprefix("transformer.")
        if name in by_name:
            raise MinitfError(f"{path}: {name} is stored twice (as {by_name[name][0]} and {key})")
        by_name[name] = (key, info)

    shapes = expected_shapes(cfg)
    missing = [k for k in shapes if k not in by_name]
    if missing:
        raise MinitfError(f"{path}: missing tensor {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if "lm_head.weight" in by_name:
        shapes["lm_head.weight"] = (cfg.d_vocab, cfg.d_model)
    # Every other tensor must be a known causal-mask buffer of a layer the config has: anything else means
    # config.json and the weights disagree (e.g. n_layer 4 on a 6-layer file would silently drop 2 layers).
    buffers = {f"h.{layer}{suffix}" for layer in range(cfg.n_layer) for suffix in _IGNORED_SUFFIXES}
    extra = [by_name[name][0] for name in by_name if name not in shapes and name not in buffers]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise MinitfError(f"{path}: tensor {extra[0]}{more} is not part of the model config.json describes "
                          f"(n_layer {cfg.n_layer}); check that config.json belongs to these weights")
    for name, shape in shapes.items():
        got = tuple(by_name[name][1]["shape"])
        if got != shape:
            raise MinitfError(f"{path}: {name} has shape {list(got)} but config.json implies {list(shape)}")

    weights: dict[str, np.ndarray] = {}
    with open(path, "rb", buffering=0) as f:
        for name in shapes:
            key, info = by_name[name]
            weights[name] = _read_tensor(f, path, key, info, data_start)
    # A saved lm_head that equals wte (a tied model saved with both) needs no second copy.
    if "lm_head.weight" in weights and np.array_equal(weights["lm_head.weight"], weights["wte.weight"]):
        del weights["lm_head.weight"]
    return cfg, weights


def model_sha256(model) -> str:
    """sha256 over the float32 weights (sorted names, shapes, bytes) and the folder's tokenizer files."""
    if model not in _MODEL_SHA:
        h = hashlib.sha256()
        for name in sorted(model.w):
            a = np.ascontiguousarray(model.w[name], dtype=np.float32)
            h.update(f"{name}:{a.shape}\n".encode())
            h.update(memoryview(a).cast("B"))
        if model.folder is not None:
            for name in ("vocab.json", "merges.txt"):
                if (Path(model.folder) / name).is_file():
                    h.update(name.encode() + bytes.fromhex(file_sha256(Path(model.folder) / name)))
        _MODEL_SHA[model] = h.hexdigest()
    return _MODEL_SHA[model]
