"""Small building blocks of the LLaMA decoder: RMSNorm, RoPE, LoRA-aware projections (the
products and attention themselves: ops.py, per backend)."""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigrec_jax.model import ops
from bigrec_jax.model.config import LlamaConfig, LoraConfig

Array = jax.Array


class RMSNorm(nn.Module):
  eps: float
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                       (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (scale.astype(jnp.float32) * y).astype(x.dtype)


def rope_inv_freq(config: LlamaConfig) -> Array:
  """Inverse frequencies, with HF's 'linear' and 'llama3' rope_scaling variants."""
  hd = config.head_dim
  inv = 1.0 / (config.rope_theta ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))
  scaling = config.rope_scaling_dict
  if not scaling:
    return inv
  kind = scaling.get("rope_type", scaling.get("type"))
  if kind == "linear":
    return inv / scaling["factor"]
  if kind == "llama3":
    factor, lo, hi = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    scaled = jnp.where(wavelen > old / lo, inv / factor, inv)
    smooth = (old / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old / hi) & (wavelen <= old / lo)
    return jnp.where(medium, smoothed, scaled)
  raise ValueError(f"unsupported rope_scaling type {kind!r} (supported: linear, llama3)")


def rope_tables(config: LlamaConfig, positions: Array) -> tuple[Array, Array]:
  """cos/sin of shape [B, T, head_dim] in HF's rotate_half layout (frequencies repeated twice)."""
  freqs = positions.astype(jnp.float32)[..., None] * rope_inv_freq(config)
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
  """x: [B, T, heads, hd]; HF rotate_half convention."""
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  cos, sin = cos[:, :, None, :], sin[:, :, None, :]
  return (x.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin).astype(x.dtype)


def lora_a_init(key, shape, dtype=jnp.float32):
  """PEFT's kaiming_uniform(a=sqrt(5)) on lora_A [r, in]: U(-1/sqrt(in), 1/sqrt(in))."""
  bound = 1.0 / math.sqrt(shape[0])  # our layout is [in, r]
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def dropout(x: Array, rate: float, rng) -> Array:
  """Inverted dropout whose keep decisions use 16 random bits each, two per 32-bit draw.

  Random bits dominate the cost of dropout on CPU (threefry); halving them matters because LoRA
  drops the input of every adapted projection. The drop probability is rounded to a multiple of
  2**-16 (0.05 -> 0.0500031). Threefry keeps the masks independent of how the batch is sharded.
  """
  threshold = round(rate * 65536)
  if threshold <= 0:
    return x
  flat = x.size
  bits = jax.random.bits(rng, ((flat + 1) // 2,), jnp.uint32)
  halves = jnp.stack([bits & 0xFFFF, bits >> 16], axis=-1).reshape(-1)[:flat]
  keep = (halves >= threshold).reshape(x.shape)
  scale = jnp.asarray(65536 / (65536 - threshold), x.dtype)
  return jnp.where(keep, x * scale, jnp.zeros((), x.dtype))


class Projection(nn.Module):
  """A linear layer (kernel [in, out]) with an optional LoRA adapter in the 'lora' collection.

  LoRA lives in its own variable collection so that the optimizer, gradients and checkpoints see
  only that small tree; base weights come in through 'params' and are never differentiated.
  """
  features: int
  axes: tuple[str, str]
  use_bias: bool = False
  lora: LoraConfig | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  matmul_dtype: Any = None  # operands of the base-weight product (None: dtype)
  kernels: str = "auto"  # ops.py: "cpu" | "xla" | "auto"

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    kernel = self.param("kernel", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), self.axes), (x.shape[-1], self.features), self.param_dtype)
    y = ops.matmul(x.astype(self.dtype), kernel, self.matmul_dtype, self.kernels)
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, self.axes[1:]),
                        (self.features,), self.param_dtype)
      y = y + bias.astype(self.dtype)
    if self.lora is not None and self.name in self.lora.targets:
      a = self.variable("lora", "a", lambda: nn.Partitioned(
          lora_a_init(self.make_rng("params"), (x.shape[-1], self.lora.rank)),
          names=(self.axes[0], "lora_rank")))
      b = self.variable("lora", "b", lambda: nn.Partitioned(
          jnp.zeros((self.lora.rank, self.features), jnp.float32),
          names=("lora_rank", self.axes[1])))
      a_val, b_val = nn.unbox(a.value), nn.unbox(b.value)
      h = x
      if not deterministic and self.lora.dropout > 0:
        h = dropout(h, self.lora.dropout, self.make_rng("dropout"))
      y = y + ops.lora_delta(h, a_val.astype(self.dtype), b_val.astype(self.dtype),
                             self.lora.scale, self.kernels)
    return y


# The backend-specific kernels live in ops.py (selected by LlamaConfig.kernels); these names stay
# importable from here.
pack_half, unpack_half = ops.pack_half, ops.unpack_half
matmul, lora_delta, attention = ops.matmul, ops.lora_delta, ops.attention
