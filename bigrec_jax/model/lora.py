"""LoRA as a separate small tree: init, merge/unmerge into base weights, PEFT export/import.

Our layout per target: {"a": [L, in, r], "b": [L, r, out]} under lora["layers"][name]. PEFT's is
`base_model.model.model.layers.{i}.{self_attn|mlp}.{name}.lora_A.weight` [r, in] and `lora_B` [out, r].
"""
from __future__ import annotations

import json
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from bigrec_jax import files
from bigrec_jax.files import UserError, atomic_path, write_json
from bigrec_jax.model import ops
from bigrec_jax.model.config import LORA_TARGETS, PROJECTIONS, LlamaConfig, LoraConfig



def init_lora(config: LlamaConfig, lora_config: LoraConfig, rng) -> dict:
  """Fresh adapters: A kaiming-uniform as PEFT, B zeros (so the model starts as the base).

  Built directly rather than through `Llama.init`, so base weights are never allocated.
  """
  from bigrec_jax.model.layers import lora_a_init

  out = {}
  dims = target_dims(config)
  keys = jax.random.split(rng, len(lora_config.targets))
  for key, name in zip(keys, lora_config.targets):
    d_in, d_out = dims[name]
    layer_keys = jax.random.split(key, config.num_layers)
    out[name] = {"a": jax.vmap(lambda k: lora_a_init(k, (d_in, lora_config.rank)))(layer_keys),
                 "b": jnp.zeros((config.num_layers, lora_config.rank, d_out), jnp.float32)}
  return {"layers": out}


def target_dims(config: LlamaConfig) -> dict[str, tuple[int, int]]:
  d, hd = config.hidden_size, config.head_dim
  return {"q_proj": (d, config.num_heads * hd), "k_proj": (d, config.num_kv_heads * hd),
          "v_proj": (d, config.num_kv_heads * hd), "o_proj": (config.num_heads * hd, d),
          "gate_proj": (d, config.intermediate_size), "up_proj": (d, config.intermediate_size),
          "down_proj": (config.intermediate_size, d)}


def _delta(ab: dict, scale: float) -> jax.Array:
  return jnp.einsum("lir,lro->lio", ab["a"], ab["b"]) * scale


def merge(params: dict, lora: dict, lora_config: LoraConfig) -> dict:
  """Base weights with W + scale * A @ B folded in (inference without the adapter overhead)."""
  return _fold(params, lora, lora_config.scale)


def unmerge(params: dict, lora: dict, lora_config: LoraConfig) -> dict:
  """Undo `merge` (exact up to float rounding)."""
  return _fold(params, lora, -lora_config.scale)


def _fold(params, lora, scale):
  layers = dict(params["layers"])
  for name, ab in lora["layers"].items():
    k = layers[name]["kernel"]
    if isinstance(k, ops.PackedHalf) or not jnp.issubdtype(k.dtype, jnp.floating):
      what = "packed 16-bit bits (ops.PackedHalf)" if isinstance(k, ops.PackedHalf) else k.dtype
      raise ValueError(
          f"lora.merge/unmerge: the {name} kernel is {what}, not a float weight; merge into the "
          "float params (model.params), then prepare them for decoding "
          "(generate.decoder.cast_projections)")
    layers[name] = {**layers[name], "kernel": (k + _delta(ab, scale).astype(k.dtype))}
  return {**params, "layers": layers}


def export_peft(path: str, lora: dict, lora_config: LoraConfig, config: LlamaConfig,
                base_model: str = "") -> None:
  """Writes adapter_config.json + adapter_model.safetensors loadable by `peft.PeftModel`."""
  from safetensors.numpy import save_file

  tensors = {}
  for name, ab in lora["layers"].items():
    a, b = np.asarray(ab["a"], np.float32), np.asarray(ab["b"], np.float32)
    for i in range(a.shape[0]):
      prefix = f"base_model.model.model.layers.{i}.{PROJECTIONS[name]}"
      tensors[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(a[i].T)
      tensors[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(b[i].T)
  # A module whose rank differs from lora_config.rank (an imported rank_pattern) keeps the
  # common scale: alpha_pattern gives it alpha = scale * its rank.
  ranks = {name: int(ab["a"].shape[-1]) for name, ab in lora["layers"].items()}
  rank_pattern = {n: r for n, r in ranks.items() if r != lora_config.rank}
  alpha_pattern = {n: lora_config.scale * r for n, r in rank_pattern.items()}
  if base_model:  # PEFT's AutoPeftModel hands this to transformers: an HF directory, not a .gguf
    from bigrec_jax.model.loading import hf_directory

    base_model = hf_directory(base_model)
  files.makedirs(path)
  with atomic_path(os.path.join(path, "adapter_model.safetensors")) as tmp:
    save_file(tensors, tmp)
  write_json(os.path.join(path, "adapter_config.json"), {
      "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
      "r": lora_config.rank, "lora_alpha": lora_config.alpha, "lora_dropout": lora_config.dropout,
      "target_modules": list(lora_config.targets), "bias": "none", "fan_in_fan_out": False,
      "inference_mode": True, "use_rslora": False, "use_dora": False,
      "init_lora_weights": True, "modules_to_save": None, "layers_to_transform": None,
      "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern})


# ---------------------------------------------------------------- importing PEFT adapters
#
# PEFT may give every adapted module (and layer) its own rank and scale (rank_pattern,
# alpha_pattern, use_rslora) and adapt only some layers (layers_to_transform). Our tree applies
# one scale, `LoraConfig.scale`, to every projection, so that the training and decoding code keep
# a single static scale. An imported adapter keeps that: each layer's own scale is folded into its
# B (B * own_scale / LoraConfig.scale), a module's layers of lower rank are padded with zero
# columns of A and zero rows of B, and untransformed layers are all zeros. Each is exact: the
# projection's output is PEFT's, and zero blocks stay zero under further training.

# adapter_config.json fields import_peft reads (everything else is metadata, an initialisation
# setting whose effect is already in the saved tensors, or refused below).
_HONOURED = ("r", "lora_alpha", "lora_dropout", "target_modules", "exclude_modules",
             "rank_pattern", "alpha_pattern", "use_rslora", "layers_to_transform",
             "layers_pattern", "bias", "peft_type", "init_lora_weights")
_HARMLESS = ("task_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
             "inference_mode", "runtime_config", "megatron_core", "qalora_group_size",
             "ensure_weight_tying", "loftq_config", "eva_config", "corda_config",
             "lora_ga_config")
# Fields whose non-default value changes what the adapter computes in ways our LoRA does not.
_REFUSED = {
    "use_dora": "DoRA (weight-decomposed LoRA) adds a magnitude vector per module",
    "modules_to_save": "fully trained copies of whole modules are not part of our adapter tree",
    "trainable_token_indices": "trained embedding rows are not part of our adapter tree",
    "fan_in_fan_out": "transposed (Conv1D-style) base weights are not a LLaMA layout",
    "lora_bias": "a trained bias on lora_B is not supported",
    "megatron_config": "Megatron-parallel LoRA layers are not supported",
    "alora_invocation_tokens": "activated LoRA (applied after invocation tokens) is not supported",
    "use_qalora": "QA-LoRA's pooled inputs are not supported",
    "layer_replication": "replicated decoder layers are not supported",
    "target_parameters": "LoRA on bare parameters (not modules) is not supported",
    "use_bdlora": "block-diagonal LoRA is not supported",
    "arrow_config": "Arrow routing between several adapters is not supported",
    "kasa_config": "KaSA adapters are not supported",
    "velora_config": "VeLoRA is not supported",
    "monteclora_config": "MonteCLoRA is not supported",
}
# init_lora_weights values that rewrite the base weights: the saved A/B then only make sense on
# top of those rewritten weights, unless PEFT converted the adapter when saving it.
_BASE_REWRITING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")


def import_peft(path: str, config: LlamaConfig) -> tuple[dict, LoraConfig]:
  """Reads a PEFT LoRA adapter directory into our tree and LoraConfig.

  Honours rank_pattern, alpha_pattern, use_rslora, layers_to_transform/layers_pattern,
  exclude_modules and regex target_modules; refuses, naming the field, anything that would make
  our output differ from PEFT's (DoRA, modules_to_save, bias training, other PEFT types, targets
  this model has no LoRA for, ...). The returned LoraConfig's scale applies to every projection;
  per-module and per-layer scales are folded into B (see the comment above).
  """
  from safetensors.numpy import load as load_safetensors

  cfg_path = os.path.join(path, "adapter_config.json")
  weights = os.path.join(path, "adapter_model.safetensors")
  for p in (cfg_path, weights):
    if not files.exists(p):
      raise UserError(f"{p}: missing; a PEFT adapter directory needs adapter_config.json and "
                      "adapter_model.safetensors")
  try:
    pc = json.loads(files.read_text(cfg_path))
  except json.JSONDecodeError as e:
    raise UserError(f"{cfg_path}: not valid JSON ({e})") from None
  _refuse_unsupported(pc, cfg_path)
  layout = _peft_layout(pc, config, cfg_path)
  lc = LoraConfig(rank=int(pc["r"]), alpha=float(pc["lora_alpha"]),
                  dropout=float(pc.get("lora_dropout") or 0.0),
                  targets=tuple(n for n in LORA_TARGETS if n in layout))
  tensors = load_safetensors(files.read_bytes(weights))  # adapters are small; works on a bucket
  used: set[str] = set()
  out = {name: _import_module(name, per_layer, tensors, used, lc.scale, config, weights)
         for name, per_layer in layout.items()}
  extra = sorted(set(tensors) - used)
  if extra:
    raise UserError(f"{weights}: {len(extra)} tensor(s) not accounted for by adapter_config.json "
                    f"(first: {extra[0]}); this importer reads only LoRA A/B matrices")
  return {"layers": {n: out[n] for n in lc.targets}}, lc


def _refuse_unsupported(pc: dict, cfg_path: str) -> None:
  """UserError naming the first adapter_config.json field whose value we cannot honour."""
  def refuse(field, why):
    raise UserError(f"{cfg_path}: {field}={pc[field]!r} is not supported: {why}")

  if pc.get("peft_type", "LORA") != "LORA":
    refuse("peft_type", "only LoRA adapters can be imported")
  for field in ("r", "lora_alpha", "target_modules"):
    if pc.get(field) is None:
      raise UserError(f"{cfg_path}: field {field!r} is missing")
  if pc.get("bias", "none") != "none":
    refuse("bias", "the adapter trained the base model's biases; only bias='none' is supported")
  for field, why in _REFUSED.items():
    if pc.get(field):
      refuse(field, why)
  init = pc.get("init_lora_weights")
  if isinstance(init, str) and init.lower().startswith(_BASE_REWRITING_INITS):
    refuse("init_lora_weights", "this initialisation rewrites the base weights; save the adapter "
           "with PEFT's path_initial_model_for_weight_conversion to get a plain LoRA")
  for field, value in pc.items():
    if value and field not in _HONOURED + _HARMLESS + tuple(_REFUSED):
      refuse(field, "this field is not understood by this importer")


def _peft_module_names(config: LlamaConfig) -> tuple[dict[str, tuple[str, int]], list[str]]:
  """HF module names of a LLaMA model: {adaptable projection: (our name, layer)}, and the rest."""
  ours, others = {}, ["lm_head", "model", "model.embed_tokens", "model.norm", "model.rotary_emb",
                      "model.layers"]
  for i in range(config.num_layers):
    for name in LORA_TARGETS:
      ours[f"model.layers.{i}.{PROJECTIONS[name]}"] = (name, i)
    others += [f"model.layers.{i}{s}" for s in ("", ".self_attn", ".mlp", ".mlp.act_fn",
                                                 ".input_layernorm", ".post_attention_layernorm")]
  return ours, others


def _is_target(pc: dict, key: str) -> bool:
  """PEFT's `check_target_module_exists` for one module name (peft/tuners/tuners_utils.py)."""
  targets, excluded = pc["target_modules"], pc.get("exclude_modules")
  if excluded:
    if isinstance(excluded, str):
      if re.fullmatch(excluded, key):
        return False
    elif key in excluded or any(key.endswith(f".{e}") for e in excluded):
      return False
  if isinstance(targets, str):
    return re.fullmatch(targets, key) is not None
  if key in targets:
    return True
  if not any(key.endswith(f".{t}") for t in targets):
    return False
  layers = pc.get("layers_to_transform")
  if layers is None or layers == []:
    return True
  patterns = pc.get("layers_pattern") or []
  patterns = [patterns] if isinstance(patterns, str) else patterns
  if not patterns:
    match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", key)
  else:
    match = next(filter(None, (re.match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", key)
                               for p in patterns)), None)
  if match is None:
    return False
  index = int(match.group("idx"))
  return index == layers if isinstance(layers, int) else index in layers


def _pattern_value(pattern: dict, key: str, default):
  """PEFT's rank_pattern/alpha_pattern lookup: the first pattern key that ends `key`."""
  for k, value in (pattern or {}).items():
    if re.match(rf"(.*\.)?({k})$", key):
      return value
  return default


def _peft_layout(pc: dict, config: LlamaConfig, cfg_path: str) -> dict[str, dict[int, tuple]]:
  """{our target: {layer: (rank, scale)}} of the modules PEFT adapts with this config."""
  targets = pc["target_modules"]
  ours, others = _peft_module_names(config)
  if targets == "all-linear":  # PEFT's shorthand: every linear layer but the output head
    pc = {**pc, "target_modules": list(LORA_TARGETS)}
  for key in others:
    if _is_target(pc, key):
      raise UserError(f"{cfg_path}: target_modules={targets!r} adapts {key!r}; only the "
                      f"attention and MLP projections ({', '.join(LORA_TARGETS)}) can be imported")
  if isinstance(targets, list):
    for t in targets:
      if not any(k == t or k.endswith(f".{t}") for k in ours):
        raise UserError(f"{cfg_path}: target module {t!r} does not exist in this model (LoRA "
                        f"targets here: {', '.join(LORA_TARGETS)})")
  layout: dict[str, dict[int, tuple]] = {}
  for key, (name, layer) in ours.items():
    if _is_target(pc, key):
      r = int(_pattern_value(pc.get("rank_pattern"), key, pc["r"]))
      alpha = float(_pattern_value(pc.get("alpha_pattern"), key, pc["lora_alpha"]))
      scale = alpha / math.sqrt(r) if pc.get("use_rslora") else alpha / r
      layout.setdefault(name, {})[layer] = (r, scale)
  if not layout:
    raise UserError(f"{cfg_path}: target_modules={targets!r} adapts no module of this model")
  return layout


def _import_module(name: str, per_layer: dict[int, tuple], tensors: dict, used: set,
                   scale: float, config: LlamaConfig, weights: str) -> dict:
  """One target's stacked {"a": [L, in, r], "b": [L, r, out]}, r the largest of its layers'."""
  d_in, d_out = target_dims(config)[name]
  rank = max(r for r, _ in per_layer.values())
  a = np.zeros((config.num_layers, d_in, rank), np.float32)
  b = np.zeros((config.num_layers, rank, d_out), np.float32)
  for i, (r, own_scale) in per_layer.items():
    prefix = f"base_model.model.model.layers.{i}.{PROJECTIONS[name]}"
    names = (f"{prefix}.lora_A.weight", f"{prefix}.lora_B.weight")
    missing = [n for n in names if n not in tensors]
    if missing:
      raise UserError(f"{weights}: tensor {missing[0]} is missing")
    a_i, b_i = tensors[names[0]], tensors[names[1]]
    if a_i.shape != (r, d_in) or b_i.shape != (d_out, r):
      raise UserError(f"{weights}: {prefix} has shapes A{a_i.shape} B{b_i.shape}, expected "
                      f"A{(r, d_in)} B{(d_out, r)} for this model and adapter_config.json")
    used.update(names)
    a[i, :, :r] = a_i.T
    b[i, :r, :] = b_i.T if own_scale == scale else b_i.T * np.float32(own_scale / scale)
  return {"a": jnp.asarray(a), "b": jnp.asarray(b)}
