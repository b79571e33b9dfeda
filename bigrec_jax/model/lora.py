"""LoRA as a separate small tree: init, merge/unmerge into base weights, PEFT export/import.

Our layout per target: {"a": [L, in, r], "b": [L, r, out]} under lora["layers"][name]. PEFT's is
`base_model.model.model.layers.{i}.{self_attn|mlp}.{name}.lora_A.weight` [r, in] and `lora_B` [out, r].
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from bigrec_jax.files import UserError, atomic_path, write_json
from bigrec_jax.model.config import LlamaConfig, LoraConfig

_MODULE_OF = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn",
              "o_proj": "self_attn", "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


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
      prefix = f"base_model.model.model.layers.{i}.{_MODULE_OF[name]}.{name}"
      tensors[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(a[i].T)
      tensors[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(b[i].T)
  os.makedirs(path, exist_ok=True)
  with atomic_path(os.path.join(path, "adapter_model.safetensors")) as tmp:
    save_file(tensors, tmp)
  write_json(os.path.join(path, "adapter_config.json"), {
      "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
      "r": lora_config.rank, "lora_alpha": lora_config.alpha, "lora_dropout": lora_config.dropout,
      "target_modules": list(lora_config.targets), "bias": "none", "fan_in_fan_out": False,
      "inference_mode": True, "use_rslora": False, "use_dora": False,
      "init_lora_weights": True, "modules_to_save": None, "layers_to_transform": None})


def import_peft(path: str, config: LlamaConfig) -> tuple[dict, LoraConfig]:
  """Reads a PEFT LoRA adapter directory into our tree and LoraConfig."""
  from safetensors.numpy import load_file

  cfg_path = os.path.join(path, "adapter_config.json")
  weights = os.path.join(path, "adapter_model.safetensors")
  for p in (cfg_path, weights):
    if not os.path.exists(p):
      raise UserError(f"{p}: missing; a PEFT adapter directory needs adapter_config.json and "
                      "adapter_model.safetensors")
  with open(cfg_path) as f:
    pc = json.load(f)
  if pc.get("peft_type", "LORA") != "LORA":
    raise UserError(f"{cfg_path}: peft_type {pc.get('peft_type')!r} is not LORA")
  if pc.get("use_rslora") or pc.get("use_dora") or pc.get("bias", "none") != "none":
    raise UserError(f"{cfg_path}: rslora, DoRA and LoRA biases are not supported")
  targets = pc["target_modules"]
  targets = tuple(sorted(targets)) if isinstance(targets, list) else tuple(
      t for t in _MODULE_OF if t in str(targets))
  lc = LoraConfig(rank=int(pc["r"]), alpha=float(pc["lora_alpha"]),
                  dropout=float(pc.get("lora_dropout", 0.0)), targets=targets)
  tensors = load_file(weights)
  dims = target_dims(config)
  out = {}
  for name in lc.targets:
    a_list, b_list = [], []
    for i in range(config.num_layers):
      prefix = f"base_model.model.model.layers.{i}.{_MODULE_OF[name]}.{name}"
      try:
        a = tensors[f"{prefix}.lora_A.weight"]
        b = tensors[f"{prefix}.lora_B.weight"]
      except KeyError as e:
        raise UserError(f"{weights}: tensor {e.args[0]} is missing") from None
      d_in, d_out = dims[name]
      if a.shape != (lc.rank, d_in) or b.shape != (d_out, lc.rank):
        raise UserError(f"{weights}: {prefix} has shapes A{a.shape} B{b.shape}, expected "
                        f"A{(lc.rank, d_in)} B{(d_out, lc.rank)} for this model")
      a_list.append(a.T)
      b_list.append(b.T)
    out[name] = {"a": jnp.asarray(np.stack(a_list), jnp.float32),
                 "b": jnp.asarray(np.stack(b_list), jnp.float32)}
  return {"layers": out}, lc
