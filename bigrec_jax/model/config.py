"""Model and LoRA configuration: one frozen, hashable dataclass each (usable as jit statics)."""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from bigrec_jax.model.ops import KERNELS

# The one table of a decoder layer's projections: our name -> its module path in an HF/PEFT
# layer. The LoRA targets, PEFT key names and HF loading/export all derive from it.
PROJECTIONS = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj",
               "v_proj": "self_attn.v_proj", "o_proj": "self_attn.o_proj",
               "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj", "down_proj": "mlp.down_proj"}
LORA_TARGETS = tuple(PROJECTIONS)


def resolve_targets(targets) -> tuple[str, ...]:
  """lora.targets as names, "all-linear" (every projection, as PEFT and Levanter) or regexes
  matched against the names (e.g. ".*_proj", "(q|v)_proj") -> names in LORA_TARGETS order."""
  import re

  specs = [targets] if isinstance(targets, str) else list(targets)
  chosen = set()
  for spec in specs:
    if spec == "all-linear":
      chosen.update(LORA_TARGETS)
      continue
    try:
      matched = {n for n in LORA_TARGETS if re.fullmatch(spec, n)}
    except re.error:
      matched = set()
    if not matched:
      raise ValueError(f"unknown LoRA target(s) [{spec!r}]; choose from {LORA_TARGETS}, "
                       "\"all-linear\" or a regex over them")
    chosen |= matched
  return tuple(n for n in LORA_TARGETS if n in chosen)


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """LLaMA 1/2/3, SmolLM2 and Qwen2 from one config. Defaults are SmolLM2-135M."""
  vocab_size: int = 49152
  hidden_size: int = 576
  intermediate_size: int = 1536
  num_layers: int = 30
  num_heads: int = 9
  num_kv_heads: int = 3
  head_dim: int = 64
  rope_theta: float = 100000.0
  # HF rope_scaling as sorted (key, value) pairs so the config stays hashable.
  rope_scaling: tuple[tuple[str, Any], ...] | None = None
  rms_norm_eps: float = 1e-5
  tie_word_embeddings: bool = True
  attention_bias: bool = False  # Qwen2: bias on q/k/v
  max_position_embeddings: int = 8192
  bos_token_id: int | None = 1
  eos_token_id: int = 2
  pad_token_id: int = 0
  dtype: str = "float32"  # compute dtype (bfloat16 on GPU/TPU)
  param_dtype: str = "float32"
  # Operands of the base-weight products ("" = dtype), accumulated in float32. "bfloat16" with
  # float32 activations runs those products on AMX on recent Xeon CPUs (ops.matmul).
  matmul_dtype: str = ""
  remat: bool = False  # rematerialise each decoder block in the backward pass
  # Without a KV cache (training, embedding), queries are processed in blocks of this many
  # positions that attend only to keys up to their block's end: causal attention without the
  # work above the diagonal. 0 disables it.
  causal_block: int = 128
  architecture: str = "llama"
  # Which implementation of the products, attention and decode-weight packing (model/ops.py):
  # "cpu" (custom VJPs and uint16-packed 16-bit decode weights, tuned on XLA:CPU), "xla" (plain
  # jnp / jax.nn.dot_product_attention, JAX's autodiff), "auto" = "cpu" on CPU backends, else "xla".
  kernels: str = "auto"

  def __post_init__(self):
    if self.kernels not in KERNELS:
      raise ValueError(f"kernels must be one of {KERNELS}, got {self.kernels!r}")

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def projection_dtype(self):
    """dtype of the base-weight matmul operands, or None for the compute dtype."""
    return jnp.dtype(self.matmul_dtype) if self.matmul_dtype else None

  @property
  def rope_scaling_dict(self) -> dict[str, Any] | None:
    return dict(self.rope_scaling) if self.rope_scaling else None

  def replace(self, **kw) -> "LlamaConfig":
    return dataclasses.replace(self, **kw)

  @classmethod
  def from_hf(cls, hf: dict[str, Any], **overrides) -> "LlamaConfig":
    """From a HF config.json dict (LlamaForCausalLM / Qwen2ForCausalLM)."""
    arch = (hf.get("architectures") or ["LlamaForCausalLM"])[0]
    model_type = hf.get("model_type", "llama")
    if model_type not in ("llama", "qwen2", "mistral"):
      raise ValueError(f"unsupported model_type {model_type!r} ({arch}); supported: llama, qwen2")
    heads = hf["num_attention_heads"]
    scaling = hf.get("rope_scaling") or hf.get("rope_parameters")
    if scaling:
      scaling = {k: v for k, v in scaling.items() if k != "rope_theta"}
      kind = scaling.get("rope_type", scaling.get("type", "default"))
      scaling = None if kind == "default" else tuple(sorted(
          (k, tuple(v) if isinstance(v, list) else v) for k, v in scaling.items()))
    theta = hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    eos = hf.get("eos_token_id", 2)
    eos = eos[0] if isinstance(eos, list) else eos
    kw = dict(
        vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"], num_layers=hf["num_hidden_layers"],
        num_heads=heads, num_kv_heads=hf.get("num_key_value_heads", heads),
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads, rope_theta=float(theta),
        rope_scaling=scaling, rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
        attention_bias=hf.get("attention_bias", model_type == "qwen2"),
        max_position_embeddings=hf.get("max_position_embeddings", 4096),
        bos_token_id=hf.get("bos_token_id"), eos_token_id=eos,
        pad_token_id=hf.get("pad_token_id") or 0, architecture=model_type)
    kw.update(overrides)
    return cls(**kw)


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """PEFT-compatible LoRA settings; defaults are the BIGRec reference (q_proj, v_proj, r=8)."""
  rank: int = 8
  alpha: float = 16.0
  dropout: float = 0.05
  targets: tuple[str, ...] = ("q_proj", "v_proj")

  def __post_init__(self):
    unknown = set(self.targets) - set(LORA_TARGETS)
    if unknown:
      raise ValueError(f"unknown LoRA target(s) {sorted(unknown)}; choose from {LORA_TARGETS}")
    if self.rank <= 0:
      raise ValueError(f"LoRA rank must be positive, got {self.rank}")
    if not self.alpha > 0:  # alpha / rank scales the update: <= 0 trains nothing or its negative
      raise ValueError(f"LoRA alpha must be positive, got {self.alpha}")

  @property
  def scale(self) -> float:
    return self.alpha / self.rank
