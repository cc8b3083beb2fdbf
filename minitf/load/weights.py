"""Load a GPT-2 or GPT-NeoX (Pythia) checkpoint folder in Hugging Face layout into float32 NumPy arrays.

A folder holds ``config.json`` and ``model.safetensors`` — or its shards ``model-0000x-of-0000y.safetensors``
with ``model.safetensors.index.json`` — plus the tokenizer (``vocab.json`` / ``merges.txt`` or
``tokenizer.json``, read by ``minitf.load.tokenizer``). The safetensors format is small enough to read by hand, which lets us

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

A GPT-NeoX checkpoint (``GPTNeoXForCausalLM``) is stored under GPT-2's names and layouts at load, so that
everything downstream (the forward pass, the per-head views, the attribution) reads one layout; what the
forward pass does differently is decided by ``Config.arch`` and its NeoX fields (``minitf.model``):

    GPT-NeoX key (``gpt_neox.`` prefix dropped)     stored as                 layout change
    embed_in.weight [V, D]                          wte.weight [V, D]         —  (no wpe: rotary positions)
    layers.l.input_layernorm.*                      h.l.ln_1.*                —
    layers.l.post_attention_layernorm.*             h.l.ln_2.*                —
    layers.l.attention.query_key_value.weight       h.l.attn.c_attn.weight    [(H, 3, Dh), D] → [D, (3, H, Dh)]
    layers.l.attention.query_key_value.bias         h.l.attn.c_attn.bias      [(H, 3, Dh)] → [(3, H, Dh)]
    layers.l.attention.dense.{weight,bias}          h.l.attn.c_proj.*         weight [D, D]ᵀ (torch's [out, in])
    layers.l.mlp.dense_h_to_4h.{weight,bias}        h.l.mlp.c_fc.*            weight [M, D] → [D, M]
    layers.l.mlp.dense_4h_to_h.{weight,bias}        h.l.mlp.c_proj.*          weight [D, M] → [M, D]
    final_layer_norm.*                              ln_f.*                    —
    embed_out.weight (or lm_head.weight) [V, D]     lm_head.weight [V, D]     —  (untied in Pythia)

NeoX's fused query_key_value is laid out per head — each head's q, k, v side by side, (H, 3, Dh) along its
output axis (transformers' ``modeling_gpt_neox`` views it as [..., H, 3·Dh] and chunks the last axis in 3) —
while GPT-2's c_attn is (3, H, Dh): all queries, then all keys, then all values.
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
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # GPT-2's causal-mask buffers
_NEOX_IGNORED_SUFFIXES = (".attention.bias", ".attention.masked_bias", ".attention.rotary_emb.inv_freq")
GPT2, NEOX = "gpt2", "gpt_neox"  # Config.arch: the two families
_MODEL_SHA: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Config:
    """The hyper-parameters minitf needs, read from ``config.json`` (GPT-2's names; GPT-NeoX's in comments).

    The last five fields say how a GPT-NeoX differs; their defaults are GPT-2's.
    """

    n_layer: int  # (num_hidden_layers)
    n_head: int  # (num_attention_heads)
    d_model: int  # n_embd (hidden_size)
    n_ctx: int  # n_positions (older files: n_ctx) (max_position_embeddings)
    d_mlp: int  # n_inner, or 4 · n_embd (intermediate_size)
    d_vocab: int  # vocab_size
    eps: float  # layer_norm_epsilon (layer_norm_eps)
    arch: str = GPT2  # GPT2 or NEOX
    act: str = "gelu_new"  # "gelu_new" (tanh) or "gelu" (exact, erf) (hidden_act)
    parallel_residual: bool = False  # x + attn(LN₁ x) + mlp(LN₂ x) (use_parallel_residual)
    rotary_dim: int = 0  # int(d_head · rotary_pct): rotary's frequency count is ⌈rotary_dim / 2⌉ (GPT-2: 0, wpe)
    rotary_base: float = 10000.0  # rotary_emb_base (rope_parameters.rope_theta)

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_head

    @property
    def rotary_dims(self) -> int:
        """How many of each head's first dimensions rotary rotates: 2 · ⌈rotary_dim / 2⌉ (transformers' count)."""
        return 2 * ((self.rotary_dim + 1) // 2)


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

    if raw.get("model_type") == "gpt_neox" or "GPTNeoXForCausalLM" in (raw.get("architectures") or []):
        return _read_neox_config(path, raw, field)
    act = field("activation_function", default="gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise MinitfError(f"{path}: activation_function {act!r} is not supported (GPT-2 uses 'gelu_new')")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if raw.get(flag):
            raise MinitfError(f"{path}: {flag}=true is not supported")
    if raw.get("scale_attn_weights") is False:
        raise MinitfError(f"{path}: scale_attn_weights=false is not supported")
    try:
        d_model = _integer("n_embd", field("n_embd", "hidden_size"))
        cfg = Config(
            n_layer=_integer("n_layer", field("n_layer", "num_hidden_layers")),
            n_head=_integer("n_head", field("n_head", "num_attention_heads")),
            d_model=d_model,
            n_ctx=_integer("n_positions", field("n_positions", "n_ctx")),
            d_mlp=_integer("n_inner", field("n_inner", default=4 * d_model)),
            d_vocab=_integer("vocab_size", field("vocab_size")),
            eps=float(field("layer_norm_epsilon", default=1e-5)),
        )
    except (TypeError, ValueError) as e:
        raise MinitfError(f"{path}: bad value ({e})") from None
    return _check_sizes(path, cfg)


def _integer(name: str, value) -> int:
    """A config size: an integer (6 or 6.0), never a fraction (6.7) or a flag (true) silently truncated."""
    if isinstance(value, bool) or not (isinstance(value, int) or isinstance(value, float) and value.is_integer()):
        raise ValueError(f"{name} {value!r} is not an integer")
    return int(value)


def _check_sizes(path: Path, cfg: Config) -> Config:
    if min(cfg.n_layer, cfg.n_head, cfg.d_model, cfg.n_ctx, cfg.d_mlp, cfg.d_vocab) <= 0:
        raise MinitfError(f"{path}: sizes must be positive")
    if cfg.d_model % cfg.n_head:
        raise MinitfError(f"{path}: hidden size {cfg.d_model} is not a multiple of the head count {cfg.n_head}")
    return cfg


def _read_neox_config(path: Path, raw: dict, field) -> Config:
    """A ``GPTNeoXForCausalLM``'s config.json: the Hub's (``rotary_pct``, ``rotary_emb_base``) or transformers 5's
    (``rope_parameters``: ``partial_rotary_factor``, ``rope_theta``)."""
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise MinitfError(f"{path}: rope_parameters must be an object")
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise MinitfError(f"{path}: rope_type {rope.get('rope_type', rope.get('type'))!r} is not supported "
                          "(minitf runs the default rotary embedding)")
    act = field("hidden_act", default="gelu")
    if act not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
        raise MinitfError(f"{path}: hidden_act {act!r} is not supported (Pythia uses 'gelu')")
    if raw.get("attention_bias") is False:
        raise MinitfError(f"{path}: attention_bias=false is not supported")
    try:
        size = lambda name, **default: _integer(name, field(name, **default))  # noqa: E731
        d_model, n_head = size("hidden_size"), size("num_attention_heads")
        pct = float(raw["rotary_pct"] if raw.get("rotary_pct") is not None
                    else rope.get("partial_rotary_factor", 0.25))
        base = float(raw["rotary_emb_base"] if raw.get("rotary_emb_base") is not None
                     else rope.get("rope_theta", 10000.0))
        cfg = Config(
            n_layer=size("num_hidden_layers"), n_head=n_head, d_model=d_model,
            n_ctx=size("max_position_embeddings"), d_mlp=size("intermediate_size", default=4 * d_model),
            d_vocab=size("vocab_size"), eps=float(field("layer_norm_eps", default=1e-5)), arch=NEOX,
            act="gelu" if act == "gelu" else "gelu_new", parallel_residual=bool(raw.get("use_parallel_residual", True)),
            rotary_dim=int(d_model // max(n_head, 1) * pct), rotary_base=base)
    except (TypeError, ValueError) as e:
        raise MinitfError(f"{path}: bad value ({e})") from None
    _check_sizes(path, cfg)
    if not 0 < pct <= 1 or cfg.rotary_dims > cfg.d_head or base <= 0:
        raise MinitfError(f"{path}: rotary_pct {pct} of head size {cfg.d_head} (rotating {cfg.rotary_dims} "
                          f"dimensions) or rotary_emb_base {base} is out of range")
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


def checkpoint_files(folder: Path) -> tuple[list[Path], dict[str, str] | None]:
    """The safetensors files of ``folder``: [model.safetensors], or, when only ``model.safetensors.index.json``
    is there, its shards (sorted) with its weight map {key: shard file name}."""
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.exists() or not index.exists():
        return [single], None
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
        raise MinitfError(f"{index}: not a safetensors index ({e})") from None
    if not isinstance(weight_map, dict) or not weight_map or not all(
            isinstance(v, str) and v and Path(v).name == v for v in weight_map.values()):
        raise MinitfError(f"{index}: expected a weight_map of tensor name → shard file name in this folder")
    return [folder / name for name in sorted(set(weight_map.values()))], weight_map


def _tensor_table(folder: Path, prefix: str) -> dict[str, tuple[Path, str, dict, int]]:
    """{key without ``prefix``: (file, key, header entry, data start)} over every safetensors file of ``folder``."""
    files, weight_map = checkpoint_files(folder)
    table: dict[str, tuple[Path, str, dict, int]] = {}
    for path in files:
        header, data_start = read_safetensors_header(path)
        for key, info in header.items():
            name = key.removeprefix(prefix)
            if name in table:
                there = "" if table[name][0] == path else f" in {table[name][0].name}"
                raise MinitfError(f"{path}: {name} is stored twice (as {table[name][1]}{there} and {key})")
            if weight_map is not None and weight_map.get(key) != path.name:
                raise MinitfError(f"{folder / 'model.safetensors.index.json'}: {key} is in {path.name}, but the "
                                  f"index says {weight_map.get(key)}")
            table[name] = (path, key, info, data_start)
    if weight_map is not None and (lost := sorted(set(weight_map) - {t[1] for t in table.values()})):
        raise MinitfError(f"{folder / weight_map[lost[0]]}: has no tensor {lost[0]} (the index lists it there)")
    return table


def _layout(cfg: Config, present: set[str]) -> tuple[dict[str, tuple[str, tuple, object]], set[str]]:
    """(our name → (checkpoint name, shape as stored, conversion to our layout or None), ignored buffer names).

    Our names and layouts are GPT-2's (``expected_shapes``); a GPT-NeoX checkpoint's map onto them as the
    module docstring's table says."""
    L, H, D, Dh, M, V = cfg.n_layer, cfg.n_head, cfg.d_model, cfg.d_head, cfg.d_mlp, cfg.d_vocab
    if cfg.arch == GPT2:
        table = {name: (name, shape, None) for name, shape in expected_shapes(cfg).items()}
        if "lm_head.weight" in present:
            table["lm_head.weight"] = ("lm_head.weight", (V, D), None)
        return table, {f"h.{l}{suffix}" for l in range(L) for suffix in _IGNORED_SUFFIXES}

    def transpose(a):  # torch's Linear weight [out, in] → [in, out]
        return np.ascontiguousarray(a.T)

    def qkv_weight(a):  # [(H, 3, Dh), D] → [D, (3, H, Dh)]
        return a.reshape(H, 3, Dh, D).transpose(3, 1, 0, 2).reshape(D, 3 * D)

    def qkv_bias(a):  # [(H, 3, Dh)] → [(3, H, Dh)]
        return a.reshape(H, 3, Dh).transpose(1, 0, 2).reshape(3 * D)

    table = {"wte.weight": ("embed_in.weight", (V, D), None),
             "ln_f.weight": ("final_layer_norm.weight", (D,), None), "ln_f.bias": ("final_layer_norm.bias", (D,), None)}
    for l in range(L):
        p, q = f"h.{l}.", f"layers.{l}."
        table |= {
            p + "ln_1.weight": (q + "input_layernorm.weight", (D,), None),
            p + "ln_1.bias": (q + "input_layernorm.bias", (D,), None),
            p + "attn.c_attn.weight": (q + "attention.query_key_value.weight", (3 * D, D), qkv_weight),
            p + "attn.c_attn.bias": (q + "attention.query_key_value.bias", (3 * D,), qkv_bias),
            p + "attn.c_proj.weight": (q + "attention.dense.weight", (D, D), transpose),
            p + "attn.c_proj.bias": (q + "attention.dense.bias", (D,), None),
            p + "ln_2.weight": (q + "post_attention_layernorm.weight", (D,), None),
            p + "ln_2.bias": (q + "post_attention_layernorm.bias", (D,), None),
            p + "mlp.c_fc.weight": (q + "mlp.dense_h_to_4h.weight", (M, D), transpose),
            p + "mlp.c_fc.bias": (q + "mlp.dense_h_to_4h.bias", (M,), None),
            p + "mlp.c_proj.weight": (q + "mlp.dense_4h_to_h.weight", (D, M), transpose),
            p + "mlp.c_proj.bias": (q + "mlp.dense_4h_to_h.bias", (D,), None),
        }
    for out in ("embed_out.weight", "lm_head.weight"):  # transformers ≥ 5.14 may save it as lm_head
        if out in present:
            table["lm_head.weight"] = (out, (V, D), None)
            break
    return table, {f"layers.{l}{suffix}" for l in range(L) for suffix in _NEOX_IGNORED_SUFFIXES}


def load_weights(folder: Path) -> tuple[Config, dict[str, np.ndarray]]:
    """Read ``folder/config.json`` and its safetensors file(s) → (config, {GPT-2 key name: float32 array}).

    Checks every expected key is present with the shape the config implies; names the file and key on failure.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MinitfError(f"{folder}: not a model folder (no such directory)")
    cfg = read_config(folder / "config.json")
    by_name = _tensor_table(folder, "transformer." if cfg.arch == GPT2 else "gpt_neox.")
    layout, buffers = _layout(cfg, set(by_name))
    where = checkpoint_files(folder)[0]
    where = where[0] if len(where) == 1 else folder / "model.safetensors.index.json"
    missing = [source for source, _, _ in layout.values() if source not in by_name]
    if missing:
        raise MinitfError(f"{where}: missing tensor {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    # Every other tensor must be a known buffer of a layer the config has: anything else means config.json and
    # the weights disagree (e.g. n_layer 4 on a 6-layer file would silently drop 2 layers).
    used = {source for source, _, _ in layout.values()}
    extra = [by_name[name][1] for name in by_name if name not in used and name not in buffers]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise MinitfError(f"{by_name[next(n for n in by_name if by_name[n][1] == extra[0])][0]}: tensor {extra[0]}"
                          f"{more} is not part of the model config.json describes "
                          f"(n_layer {cfg.n_layer}); check that config.json belongs to these weights")
    for source, shape, _ in layout.values():
        got = tuple(by_name[source][2]["shape"])
        if got != shape:
            raise MinitfError(f"{by_name[source][0]}: {source} has shape {list(got)} but config.json implies {list(shape)}")

    weights: dict[str, np.ndarray] = {}
    handles: dict[Path, object] = {}
    try:
        for name, (source, _, convert) in layout.items():
            path, key, info, data_start = by_name[source]
            if path not in handles:
                handles[path] = open(path, "rb", buffering=0)
            a = _read_tensor(handles[path], path, key, info, data_start)
            weights[name] = a if convert is None else convert(a)  # the stored one is freed here
    finally:
        for f in handles.values():
            f.close()
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
            for name in ("vocab.json", "merges.txt", "tokenizer.json"):
                if (Path(model.folder) / name).is_file():
                    h.update(name.encode() + bytes.fromhex(file_sha256(Path(model.folder) / name)))
        _MODEL_SHA[model] = h.hexdigest()
    return _MODEL_SHA[model]
