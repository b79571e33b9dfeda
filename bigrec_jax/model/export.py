"""Writes our params as a Hugging Face checkpoint directory (the output of full fine-tuning).

    save_pretrained("runs/x/train/model", params, config, tokenizer)

gives config.json + model.safetensors + the tokenizer files, which
`transformers.AutoModelForCausalLM.from_pretrained` and our `load_model` both read. The layout
is the inverse of `loading._hf_getters`: stacked [L, ...] layer weights are split per layer and
kernels go back to torch's [out, in]; a tied embedding is written once (HF ties lm_head to it).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from bigrec_jax import files
from bigrec_jax.files import atomic_path, write_json
from bigrec_jax.model.config import LlamaConfig

# our layer module -> HF's module under model.layers.{i}; the same names loading.py reads.
_HF_LAYER = {"input_norm": "input_layernorm", "post_norm": "post_attention_layernorm",
             "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj",
             "v_proj": "self_attn.v_proj", "o_proj": "self_attn.o_proj",
             "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj", "down_proj": "mlp.down_proj"}
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                  "mistral": "MistralForCausalLM"}


def hf_config(config: LlamaConfig) -> dict[str, Any]:
  """config.json for transformers (and `LlamaConfig.from_hf`, which reads it back exactly)."""
  rope_scaling = None
  if config.rope_scaling:
    rope_scaling = {k: list(v) if isinstance(v, tuple) else v for k, v in config.rope_scaling}
  return {
      "architectures": [_ARCHITECTURES.get(config.architecture, "LlamaForCausalLM")],
      "model_type": config.architecture, "vocab_size": config.vocab_size,
      "hidden_size": config.hidden_size, "intermediate_size": config.intermediate_size,
      "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
      "num_key_value_heads": config.num_kv_heads, "head_dim": config.head_dim,
      "hidden_act": "silu", "rope_theta": config.rope_theta, "rope_scaling": rope_scaling,
      "rms_norm_eps": config.rms_norm_eps, "tie_word_embeddings": config.tie_word_embeddings,
      "attention_bias": config.attention_bias, "mlp_bias": False,
      "max_position_embeddings": config.max_position_embeddings,
      "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
      "pad_token_id": config.pad_token_id, "torch_dtype": "float32", "dtype": "float32"}


def hf_tensors(config: LlamaConfig, params) -> dict[str, np.ndarray]:
  """Our params (host or device arrays) as HF tensor names -> float32 numpy arrays."""
  f32 = lambda x: np.ascontiguousarray(np.asarray(x, np.float32))
  out = {"model.embed_tokens.weight": f32(params["embed"]),
         "model.norm.weight": f32(params["final_norm"]["scale"])}
  if not config.tie_word_embeddings:
    out["lm_head.weight"] = f32(np.asarray(params["lm_head"]).T)
  layers = params["layers"]
  for ours, hf in _HF_LAYER.items():
    if ours.endswith("norm"):
      stacked = np.asarray(layers[ours]["scale"])
      for i in range(config.num_layers):
        out[f"model.layers.{i}.{hf}.weight"] = f32(stacked[i])
      continue
    kernel = np.asarray(layers[ours]["kernel"])  # [L, in, out]
    for i in range(config.num_layers):
      out[f"model.layers.{i}.{hf}.weight"] = f32(kernel[i].T)
    if "bias" in layers[ours]:
      bias = np.asarray(layers[ours]["bias"])
      for i in range(config.num_layers):
        out[f"model.layers.{i}.{hf}.bias"] = f32(bias[i])
  return out


def save_pretrained(directory: str, params, config: LlamaConfig, tokenizer=None) -> None:
  """config.json, model.safetensors (float32) and, if given, the tokenizer's files.

  Each file is written atomically; the caller swaps a finished directory into place.
  """
  from safetensors.numpy import save_file

  files.makedirs(directory)
  with atomic_path(os.path.join(directory, "model.safetensors")) as tmp:
    # transformers reads only safetensors files whose metadata says format "pt".
    save_file(hf_tensors(config, params), tmp, metadata={"format": "pt"})
  write_json(os.path.join(directory, "config.json"), hf_config(config))
  if tokenizer is not None:
    with files.local_staging(directory) as local:  # transformers writes only local files
      tokenizer.save_pretrained(local)
