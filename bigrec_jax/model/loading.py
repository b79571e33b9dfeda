"""One entry point to load a model: `load_model(path)` for GGUF files and HF safetensors dirs.

GGUF (the embedded SmolLM2 default): every tensor is dequantized to float32, llama.cpp's row
permutation of attn_q/attn_k is undone, and the float weights plus tokenizer are cached under
$BIGREC_HOME/converted/ so the next load takes about a second.
HF directories: config.json + model.safetensors (or a sharded index) + tokenizer files.
With a mesh, each tensor goes straight into its target sharding (no full copy per device).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from bigrec_jax import assets, files, host
from bigrec_jax.files import UserError, atomic_path, write_json
from bigrec_jax.model.config import PROJECTIONS, LlamaConfig
from bigrec_jax.model.llama import abstract_variables

_HF_LAYER = {"input_norm": "input_layernorm", "post_norm": "post_attention_layernorm",
             **PROJECTIONS}
_GGUF_LAYER = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
               "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
               "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
               "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


@dataclasses.dataclass
class LoadedModel:
  config: LlamaConfig
  params: Any  # frozen base weights (pytree of jax arrays)
  tokenizer: Any  # a transformers tokenizer
  source: str  # where it came from (for logs, adapter configs and cache keys)


def load_model(path: str | None = None, *, dtype: str = "float32", param_dtype: str = "float32",
               mesh=None, remat: bool = False, matmul_dtype: str = "", kernels: str = "auto",
               tokenizer: str | None = None, check_tokenizer_vocab: bool = True) -> LoadedModel:
  """Loads a GGUF file or an HF directory (None: the embedded SmolLM2-135M-Instruct GGUF).

  matmul_dtype: operands of the base-weight products ("" = dtype; "auto": bfloat16 where this
  host multiplies it in hardware, host.resolve_matmul_dtype; see LlamaConfig).
  kernels: "auto" | "cpu" | "xla", the implementation of the products and attention (ops.py).
  tokenizer: a directory with the tokenizer files, for weights that come without them (default:
  the model's own directory, or the tokenizer inside the GGUF file).
  check_tokenizer_vocab: refuse a tokenizer with more tokens than the model's vocab_size; False
  only for synthetic checkpoints (tests) that pair a tiny embedding with a real tokenizer."""
  path = path or assets.smollm2_gguf()
  files.check_filesystem(path, "the model path")
  if not files.exists(path):
    raise UserError(f"{path}: model not found (expected a .gguf file or an HF directory with "
                    "config.json and *.safetensors)")
  if path.endswith(".gguf") and files.isfile(path):
    hf_dir = _convert_gguf(path)
  elif files.isdir(path):
    hf_dir = path
  else:
    raise UserError(f"{path}: unsupported model format (expected .gguf or an HF directory)")
  config_path = os.path.join(hf_dir, "config.json")
  if not files.exists(config_path):
    raise UserError(f"{config_path}: missing; an HF model directory needs config.json")
  hf_config = json.loads(files.read_text(config_path))
  matmul_dtype = host.resolve_matmul_dtype(matmul_dtype, jax.default_backend())
  try:
    config = LlamaConfig.from_hf(hf_config, dtype=dtype, param_dtype=param_dtype, remat=remat,
                                 matmul_dtype=matmul_dtype, kernels=kernels)
  except (KeyError, ValueError) as e:
    raise UserError(f"{config_path}: {e}") from None
  if tokenizer is not None:
    files.check_filesystem(tokenizer, "--tokenizer")
  if tokenizer is not None and not files.isdir(tokenizer):
    raise UserError(f"--tokenizer={tokenizer}: not a directory (expected one holding "
                    "tokenizer.json or tokenizer.model, e.g. the original model's directory)")
  # The tokenizer first: a missing or wrong one is the cheaper mistake to report.
  tok = load_tokenizer(tokenizer or hf_dir, config.pad_token_id,
                       vocab_size=config.vocab_size if check_tokenizer_vocab else None)
  with files.local_copy(hf_dir) as local_dir:  # safetensors maps local files only
    params = _build_params(config, _SafetensorsDir(local_dir), mesh)
  return LoadedModel(config, params, tok, path)


# Files a tokenizer never needs: left out when the tokenizer's directory is downloaded.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".h5", ".msgpack")
# Files transformers builds a tokenizer from: any one of these groups is enough.
_TOKENIZER_FILES = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"))
# A title-like string every real tokenizer of these models encodes and decodes unchanged.
_SAMPLE_TEXT = "Toy Story (1995)"


def load_tokenizer(hf_dir: str, pad_token_id: int = 0, vocab_size: int | None = None):
  """The checkpoint's tokenizer, left-padding with `pad_token_id` (0, as the reference sets).

  Checked to be real (transformers may build an empty tokenizer from a folder without
  vocabulary files, which then encodes every title to no ids): its files are present, it has no
  more tokens than `vocab_size` (the model's, when given), and a sample title round-trips."""
  from transformers import AutoTokenizer

  _require_tokenizer_files(hf_dir)
  try:
    with files.local_copy(hf_dir, skip=_WEIGHT_SUFFIXES) as local_dir:
      tok = AutoTokenizer.from_pretrained(local_dir)
  except UserError:
    raise
  except Exception as e:  # transformers raises many types (OSError, ValueError, KeyError...)
    raise UserError(f"{hf_dir}: the tokenizer could not be loaded ({type(e).__name__}: {e})"
                    ) from None
  _check_tokenizer(tok, hf_dir, vocab_size)
  tok.padding_side = "left"
  tok.pad_token = tok.convert_ids_to_tokens(pad_token_id)
  return tok


def _require_tokenizer_files(directory: str) -> None:
  present = set(files.listdir(directory))
  if any(set(group) <= present for group in _TOKENIZER_FILES):
    return
  partial = [g for g in _TOKENIZER_FILES if set(g) & present]
  missing = (sorted(set(partial[0]) - present)[0] if partial else "tokenizer.json")
  raise UserError(f"{os.path.join(directory, missing)}: missing, so there is no tokenizer "
                  "(transformers needs tokenizer.json, tokenizer.model, or vocab.json + "
                  "merges.txt); copy the model's tokenizer files next to its weights or pass "
                  "--tokenizer=DIR")


def _check_tokenizer(tok, directory: str, vocab_size: int | None) -> None:
  if vocab_size is not None and len(tok) > vocab_size:
    raise UserError(f"{directory}: the tokenizer has {len(tok)} tokens but the model's "
                    f"vocab_size is {vocab_size}, so it belongs to another model; pass the "
                    "model's own tokenizer with --tokenizer=DIR")
  ids = tok(_SAMPLE_TEXT, add_special_tokens=False)["input_ids"]
  text = tok.decode(ids).strip() if ids else ""
  if text != _SAMPLE_TEXT:
    raise UserError(f"{directory}: the tokenizer is not usable: {_SAMPLE_TEXT!r} encodes to "
                    f"{ids[:8]} and decodes to {text!r}; its files are incomplete or damaged")


class _SafetensorsDir:
  """Lazy access to the tensors of an HF checkpoint (single file or sharded index)."""

  def __init__(self, directory: str):
    from safetensors import safe_open

    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
      with open(index) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    else:
      shards = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
    if not shards:
      raise UserError(f"{directory}: no *.safetensors weights found")
    self.where = {}
    self.handles = {}
    for name in shards:
      full = os.path.join(directory, name)
      if not os.path.exists(full):
        raise UserError(f"{full}: listed in the index but missing")
      h = safe_open(full, framework="numpy")
      self.handles[full] = h
      for key in h.keys():
        self.where[key] = full

  def get(self, key: str) -> np.ndarray:
    if key not in self.where:
      raise UserError(f"tensor {key!r} is missing from the checkpoint "
                      f"({', '.join(sorted(self.handles))})")
    return self.handles[self.where[key]].get_tensor(key)

  def has(self, key: str) -> bool:
    return key in self.where


def _hf_getters(config: LlamaConfig, reader: _SafetensorsDir) -> dict[str, Callable]:
  """Our param path -> a function producing its float32 numpy value in our layout."""
  g: dict[str, Callable] = {}
  g["embed"] = lambda: reader.get("model.embed_tokens.weight")
  g["final_norm/scale"] = lambda: reader.get("model.norm.weight")
  if not config.tie_word_embeddings:
    g["lm_head"] = lambda: reader.get("lm_head.weight").T
  for ours, hf in _HF_LAYER.items():
    is_norm = ours.endswith("norm")
    def stacked(hf=hf, is_norm=is_norm, suffix="weight"):
      ws = [reader.get(f"model.layers.{i}.{hf}.{suffix}") for i in range(config.num_layers)]
      return np.stack([w if is_norm or suffix == "bias" else w.T for w in ws])
    g[f"layers/{ours}/{'scale' if is_norm else 'kernel'}"] = stacked
    if config.attention_bias and ours in ("q_proj", "k_proj", "v_proj"):
      g[f"layers/{ours}/bias"] = lambda hf=hf: np.stack(
          [reader.get(f"model.layers.{i}.{hf}.bias") for i in range(config.num_layers)])
  return g


def _build_params(config: LlamaConfig, reader: _SafetensorsDir, mesh) -> dict:
  from bigrec_jax import parallel

  shapes, axes = abstract_variables(config)
  shapes, axes = shapes["params"], axes["params"]
  getters = _hf_getters(config, reader)
  flat_shapes = {"/".join(str(k.key) for k in path): leaf
                 for path, leaf in jax.tree_util.tree_leaves_with_path(shapes)}
  flat_axes = {"/".join(str(k.key) for k in path): leaf for path, leaf in
               jax.tree_util.tree_leaves_with_path(axes, is_leaf=lambda x: isinstance(x, tuple))}
  out = {}
  dtype = jnp.dtype(config.param_dtype)
  for name, spec in flat_shapes.items():
    if name not in getters:
      raise UserError(f"no checkpoint tensor maps to parameter {name}")
    value = np.asarray(getters[name](), dtype=np.float32)
    if value.shape != spec.shape:
      raise UserError(f"tensor for {name} has shape {value.shape}, expected {spec.shape} "
                      f"from config ({config.architecture})")
    value = value.astype(dtype)
    if mesh is None:
      out[name] = jnp.asarray(value)
    else:
      sharding = parallel.sharding_for(flat_axes[name], mesh, value.shape)
      out[name] = jax.make_array_from_callback(value.shape, sharding, lambda idx, v=value: v[idx])
  return _unflatten(out)


def _unflatten(flat: dict[str, Any]) -> dict:
  tree: dict = {}
  for key, value in flat.items():
    node = tree
    *parents, leaf = key.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def hf_directory(path: str) -> str:
  """An HF model directory transformers can load for `path`: the directory itself (absolute), or
  the one a .gguf file is converted to (the same weights, dequantized, that load_model runs);
  anything else is returned unchanged. PEFT adapters record this as their base model."""
  if path.endswith(".gguf") and files.isfile(path):
    return _convert_gguf(path)
  if files.isdir(path):
    return files.abspath(path)
  return path


def _convert_gguf(path: str) -> str:
  """Converts a llama-architecture GGUF file to an HF-style directory in the cache (once)."""
  size, mtime = files.size_and_mtime(path)  # a remote file is downloaded only to convert it
  key = hashlib.sha256(f"{files.abspath(path)}:{size}:{mtime}".encode()).hexdigest()[:16]
  out = os.path.join(assets.home(), "converted", f"{os.path.basename(path)}.{key}")
  done = os.path.join(out, ".complete")
  if os.path.exists(done) and _conversion_is_current(done, path):
    return out
  with files.local_copy(path) as local:
    _write_conversion(local, out, source=files.abspath(path))
  return out


def _write_conversion(path: str, out: str, source: str) -> None:
  """The conversion of the local GGUF file `path` into the directory `out`."""
  done = os.path.join(out, ".complete")
  import gguf
  from safetensors.numpy import save_file

  try:
    reader = gguf.GGUFReader(path)
  except Exception as e:  # the gguf package raises bare ValueErrors on bad files
    raise UserError(f"{path}: not a readable GGUF file ({e})") from None
  field = lambda k, default=None: reader.fields[k].contents() if k in reader.fields else default
  arch = field("general.architecture")
  if arch != "llama":
    raise UserError(f"{path}: GGUF architecture {arch!r} is not supported (only 'llama')")
  n_layer = int(field("llama.block_count"))
  n_head = int(field("llama.attention.head_count"))
  n_kv = int(field("llama.attention.head_count_kv", n_head))
  hidden = int(field("llama.embedding_length"))
  tensors = {t.name: t for t in reader.tensors}

  def load(name: str) -> np.ndarray:
    if name not in tensors:
      raise UserError(f"{path}: tensor {name!r} is missing")
    t = tensors[name]
    try:
      return np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
    except NotImplementedError:
      raise UserError(f"{path}: tensor {name!r} is stored as {t.tensor_type.name}, which the gguf "
                      f"package {_gguf_version()} cannot dequantize; use a file quantized to a "
                      "common type (F32, F16, BF16, Q8_0, Q4_K, Q5_K, Q6_K, ...)") from None

  def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    # llama.cpp interleaves the two rotary halves of every head; restore HF's rotate_half order.
    return w.reshape(heads, w.shape[0] // heads // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)

  weights = {"model.embed_tokens.weight": load("token_embd.weight"),
             "model.norm.weight": load("output_norm.weight")}
  tied = "output.weight" not in tensors
  if not tied:
    weights["lm_head.weight"] = load("output.weight")
  for i in range(n_layer):
    for hf, gg in _GGUF_LAYER.items():
      w = load(f"blk.{i}.{gg}.weight")
      if gg == "attn_q":
        w = unpermute(w, n_head)
      elif gg == "attn_k":
        w = unpermute(w, n_kv)
      weights[f"model.layers.{i}.{hf}.weight"] = w
  vocab = weights["model.embed_tokens.weight"].shape[0]
  head_dim = int(field("llama.rope.dimension_count", hidden // n_head))
  theta = float(field("llama.rope.freq_base", 10000.0))
  rope_scaling = _gguf_rope_scaling(path, field, tensors, load, head_dim, theta)
  config = {
      "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
      "hidden_size": hidden, "intermediate_size": int(field("llama.feed_forward_length")),
      "num_hidden_layers": n_layer, "num_attention_heads": n_head, "num_key_value_heads": n_kv,
      "head_dim": head_dim, "rope_theta": theta, "rope_scaling": rope_scaling,
      "rms_norm_eps": float(field("llama.attention.layer_norm_rms_epsilon", 1e-5)),
      "max_position_embeddings": int(field("llama.context_length", 2048)),
      "tie_word_embeddings": tied, "bos_token_id": field("tokenizer.ggml.bos_token_id"),
      "eos_token_id": field("tokenizer.ggml.eos_token_id", 2), "pad_token_id": 0,
      "source_gguf": source}
  os.makedirs(out, exist_ok=True)
  with atomic_path(os.path.join(out, "model.safetensors")) as tmp:
    save_file(weights, tmp)
  write_json(os.path.join(out, "config.json"), config)
  if "tokenizer.ggml.model" in reader.fields:  # else load_model reports it (or uses --tokenizer)
    _save_gguf_tokenizer(path, out)
  write_json(done, {"source": source, "version": _CONVERSION_VERSION})


# 2: RoPE scaling is read from the file. Older conversions stay valid for files without any.
_CONVERSION_VERSION = 2


def _conversion_is_current(done: str, gguf_path: str) -> bool:
  with open(done) as f:
    if json.load(f).get("version", 1) >= _CONVERSION_VERSION:
      return True
  import gguf

  with files.local_copy(gguf_path) as local:
    reader = gguf.GGUFReader(local)
    scaled = ("llama.rope.scaling.type" in reader.fields or
              any(t.name == "rope_freqs.weight" for t in reader.tensors))
  if not scaled:  # the old conversion is what this code would write: mark it current
    write_json(done, {"source": files.abspath(gguf_path), "version": _CONVERSION_VERSION})
  return not scaled


def _gguf_version() -> str:
  from importlib import metadata

  return metadata.version("gguf")


def _gguf_rope_scaling(path: str, field, tensors: dict, load, head_dim: int,
                       theta: float) -> dict | None:
  """HF `rope_scaling` for a llama GGUF file's RoPE scaling (None: plain RoPE).

  llama.cpp's converter writes Llama 3.1/3.2's "llama3" scaling as a `rope_freqs` tensor of
  per-frequency divisors (no metadata); linear scaling as llama.rope.scaling.type/factor. Any
  other kind (YaRN, ...) is refused rather than run unscaled, which would give wrong logits."""
  kind = field("llama.rope.scaling.type", "none")
  if "rope_freqs.weight" in tensors:
    if kind != "none":
      raise UserError(f"{path}: both a rope_freqs tensor and llama.rope.scaling.type={kind!r}; "
                      "only one RoPE scaling at a time is supported")
    return _llama3_scaling_from_freq_factors(
        load("rope_freqs.weight"), head_dim, theta,
        field("llama.rope.scaling.original_context_length"), path)
  if kind == "none":
    return None
  if kind == "linear":
    return {"rope_type": "linear", "factor": float(field("llama.rope.scaling.factor"))}
  raise UserError(f"{path}: llama.rope.scaling.type={kind!r} is not supported (supported: none, "
                  "linear, and llama3 scaling as a rope_freqs tensor)")


def _llama3_rope_factors(inv_freq: np.ndarray, scaling: dict) -> np.ndarray:
  """What each inverse frequency is divided by under HF's llama3 rope_scaling (llama.cpp's
  rope_freqs tensor)."""
  factor, lo, hi = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
  old = scaling["original_max_position_embeddings"]
  wavelen = 2 * np.pi / inv_freq
  smooth = (old / wavelen - lo) / (hi - lo)
  return np.where(wavelen < old / hi, 1.0, np.where(
      wavelen > old / lo, factor, 1.0 / ((1 - smooth) / factor + smooth)))


def _llama3_scaling_from_freq_factors(factors: np.ndarray, head_dim: int, theta: float,
                                      original_context, path: str) -> dict | None:
  """The llama3 rope_scaling whose per-frequency divisors are `factors`; UserError if none is.

  Only old/low_freq_factor and old/high_freq_factor (the band's wavelengths) matter: they are
  fitted to the smoothly scaled band and written in Meta's form (low_freq_factor 1), or with the
  file's original_context_length when it has one; with fewer than two frequencies in the band,
  Meta's 1 and 4 are assumed. The result must reproduce every divisor."""
  inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
  factors = np.asarray(factors, np.float64).reshape(-1)
  if factors.shape != inv.shape:
    raise UserError(f"{path}: rope_freqs has {factors.size} entries, expected {inv.size} "
                    f"(head_dim {head_dim} / 2)")
  if np.allclose(factors, 1.0):
    return None
  factor = float(factors.max())
  wavelen = 2 * np.pi / inv
  # 1 where a frequency is kept, 0 where it is divided by `factor`, between in the band.
  share = (1.0 / factors - 1.0 / factor) / (1.0 - 1.0 / factor)
  band = (share > 1e-6) & (share < 1 - 1e-6)
  old = float(original_context or 8192)
  if band.sum() >= 2:
    slope, intercept = np.polyfit(old / wavelen[band], share[band], 1)
    lo = -intercept / slope
    hi = lo + 1.0 / slope
    if not original_context and lo > 0:  # Meta's form: low_freq_factor 1, the band's end as old
      old, hi, lo = old / lo, hi / lo, 1.0
  else:
    lo, hi = 1.0, 4.0
    if band.any():  # place the band so its one frequency gets its share
      old = float(wavelen[band][0] * (lo + share[band][0] * (hi - lo)))
  tidy = lambda x: float(round(x)) if abs(x - round(x)) < 1e-5 * max(1.0, abs(x)) else float(x)
  scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": tidy(lo),
             "high_freq_factor": tidy(hi), "original_max_position_embeddings": int(tidy(old))
             if tidy(old).is_integer() else tidy(old)}
  if not (0 < lo < hi) or not np.allclose(_llama3_rope_factors(inv, scaling), factors,
                                          rtol=1e-4):
    raise UserError(f"{path}: the rope_freqs tensor is not a llama3 RoPE scaling this loader "
                    "can express; refusing to run the model with unscaled RoPE")
  return scaling


def _save_gguf_tokenizer(gguf_path: str, out: str) -> None:
  from transformers import AutoTokenizer

  try:
    tok = AutoTokenizer.from_pretrained(os.path.dirname(gguf_path),
                                        gguf_file=os.path.basename(gguf_path))
  except Exception as e:  # transformers' GGUF tokenizer conversion raises many types
    raise UserError(f"{gguf_path}: its tokenizer could not be read ({type(e).__name__}: {e}); "
                    "pass --tokenizer=DIR") from None
  tok.save_pretrained(out)
