"""Small building blocks of the LLaMA decoder: RMSNorm, RoPE, LoRA-aware projections, attention."""
from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

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

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    kernel = self.param("kernel", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), self.axes), (x.shape[-1], self.features), self.param_dtype)
    y = matmul(x.astype(self.dtype), unpack_half(kernel, self.matmul_dtype), self.matmul_dtype)
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
      y = y + lora_delta(h, a_val.astype(self.dtype), b_val.astype(self.dtype),
                         self.lora.scale)
    return y


def pack_half(w: Array) -> Array:
  """A 16-bit float weight as its uint16 bit pattern; `unpack_half` undoes it (a bitcast).

  XLA:CPU widens 16-bit float arrays carried through a loop to float32: a decode loop around the
  layer scan then slices float32 kernels and narrows each slice again at every layer and step
  (~2x the time of the bfloat16 products, measured). Integer bits are carried as they are.
  """
  return jax.lax.bitcast_convert_type(w, jnp.uint16)


def unpack_half(w: Array, dtype) -> Array:
  """`pack_half`'s bits back as the 16-bit `dtype`; any other weight as it is."""
  return jax.lax.bitcast_convert_type(w, dtype) if w.dtype == jnp.uint16 else w


def _rows_first(x: Array) -> Array:
  """x: [..., n] -> [N, n] with every leading axis folded into rows."""
  return x.reshape(-1, x.shape[-1])


def _dot32(a: Array, b: Array, dtype) -> Array:
  return jnp.dot(a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


def _matmul_fwd(x, w, operand_dtype):
  return _dot32(x, w, operand_dtype or x.dtype).astype(x.dtype), (x, w)


def _matmul_bwd(operand_dtype, res, g):
  # Residuals are the activation and the weight as stored (a layer slice of the scanned float32
  # parameters), cast again here: saving cast copies would stack them per layer every step, and
  # XLA:CPU updates a stacked bfloat16 buffer by converting all of it to float32 and back.
  x, w = res
  dt = operand_dtype or x.dtype
  d_x = _dot32(g, w.T, dt).astype(x.dtype)
  # Unused (and removed by XLA) when w is a frozen base weight, as in LoRA training.
  d_w = _dot32(_rows_first(x).T, _rows_first(g), dt)
  return d_x, d_w.astype(w.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def matmul(x: Array, w: Array, operand_dtype=None) -> Array:
  """x @ w with both operands cast to `operand_dtype` (None: x's dtype), accumulated in float32
  and returned in x's dtype; the backward products likewise. Pass the weight as stored.

  Why: XLA:CPU runs a bfloat16 x bfloat16 -> float32 dot on oneDNN (AMX on recent Xeons, ~4.5x
  the float32 rate measured here) but a bfloat16-result dot itself, slowly; and float32
  activations with bfloat16 operands (LlamaConfig.matmul_dtype) keep every other op and every
  saved residual in float32, which XLA:CPU handles at full speed.
  """
  return _matmul_fwd(x, w, operand_dtype)[0]


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def _lora_fwd(h, a, b, scale):
  u = matmul(h, a)  # [..., r]
  y = matmul(u, b) * jnp.asarray(scale, h.dtype)
  return y, (h, u, a, b)


def _lora_bwd(scale, res, g):
  # The weight gradients contract over every token. Left to itself XLA:CPU transposes the large
  # operand (the [tokens, features] activation or cotangent) into a copy for that contraction,
  # ~5% of a SmolLM2 step at 8x512; transposing the rank-r operand instead costs nothing. The
  # barrier keeps the algebraic simplifier from folding the small transpose back into the dot.
  h, u, a, b = res
  g = g * jnp.asarray(scale, g.dtype)
  g2, h2, u2 = _rows_first(g), _rows_first(h), _rows_first(u)
  d_u = jnp.dot(g, b.T)  # [..., r]
  d_b = jnp.dot(jax.lax.optimization_barrier(u2.T), g2)  # [r, out]
  d_a = jnp.dot(jax.lax.optimization_barrier(_rows_first(d_u).T), h2).T  # [in, r]
  d_h = jnp.dot(d_u, a.T)
  return d_h, d_a.astype(a.dtype), d_b.astype(b.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def lora_delta(h: Array, a: Array, b: Array, scale: float) -> Array:
  """scale * (h @ a) @ b, the LoRA update of a projection (h: [..., in], a: [in, r], b: [r, out])."""
  return _lora_fwd(h, a, b, scale)[0]


lora_delta.defvjp(_lora_fwd, _lora_bwd)


def _masked_scores(qf: Array, kf: Array, causal: Array, key_valid: Array, groups: int) -> Array:
  """Scaled q.k^T in float32, masked entries at the float32 minimum: [B, KVH, G*T, S].

  The [B, 1, G*T, S] mask is rebuilt here from causal [T, S] and key_valid [B, S] rather than
  passed in, so the backward pass keeps only those small inputs as residuals.
  """
  b, (t, s) = key_valid.shape[0], causal.shape
  mask = causal[None] & key_valid[:, None, :]  # [B, T, S]
  mask = jnp.broadcast_to(mask[:, None], (b, groups, t, s)).reshape(b, 1, groups * t, s)
  scores = jnp.einsum("bkqd,bksd->bkqs", qf, kf, preferred_element_type=jnp.float32)
  scores = scores * (1.0 / math.sqrt(qf.shape[-1]))
  return jnp.where(mask, scores, jnp.finfo(jnp.float32).min)


def _attend_fwd(qf, kf, vf, causal, key_valid, groups):
  scores = _masked_scores(qf, kf, causal, key_valid, groups)
  peak = jnp.max(scores, axis=-1, keepdims=True)
  unnorm = jnp.exp(scores - peak)
  total = jnp.sum(unnorm, axis=-1, keepdims=True)
  probs = (unnorm / total).astype(vf.dtype)
  out = jnp.einsum("bkqs,bksd->bkqd", probs, vf,
                   preferred_element_type=jnp.float32).astype(qf.dtype)
  lse = (peak + jnp.log(total))[..., 0]  # [B, KVH, G*T]
  return out, (qf, kf, vf, causal, key_valid, out, lse)


def _attend_bwd(groups, res, d_out):
  # The probabilities are recomputed from q, k and the saved log-sum-exp instead of being kept
  # as a [B, KVH, G*T, S] residual per layer: on CPU, storing and reloading that stack cost more
  # than the extra q.k^T (what flash attention does on accelerators, and torch's SDPA on CPU).
  qf, kf, vf, causal, key_valid, out, lse = res
  scores = _masked_scores(qf, kf, causal, key_valid, groups)
  probs = jnp.where(scores > jnp.finfo(jnp.float32).min, jnp.exp(scores - lse[..., None]), 0.0)
  f32 = jnp.float32
  d_v = jnp.einsum("bkqs,bkqd->bksd", probs.astype(vf.dtype), d_out, preferred_element_type=f32)
  d_probs = jnp.einsum("bkqd,bksd->bkqs", d_out, vf, preferred_element_type=f32)
  delta = jnp.sum(d_out.astype(f32) * out.astype(f32), axis=-1, keepdims=True)
  d_scores = (probs * (d_probs - delta) * (1.0 / math.sqrt(qf.shape[-1]))).astype(qf.dtype)
  d_q = jnp.einsum("bkqs,bksd->bkqd", d_scores, kf, preferred_element_type=f32)
  d_k = jnp.einsum("bkqs,bkqd->bksd", d_scores, qf, preferred_element_type=f32)
  return d_q.astype(qf.dtype), d_k.astype(kf.dtype), d_v.astype(vf.dtype), None, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attend(qf: Array, kf: Array, vf: Array, causal: Array, key_valid: Array,
            groups: int) -> Array:
  """softmax(q.k^T / sqrt(hd), masked) @ v on folded operands (see `attention`)."""
  return _attend_fwd(qf, kf, vf, causal, key_valid, groups)[0]


_attend.defvjp(_attend_fwd, _attend_bwd)


def attention(q: Array, k: Array, v: Array, query_slots: Array, key_valid: Array, *,
              causal_block: int = 0) -> Array:
  """Grouped-query causal attention without materialising repeated K/V heads.

  q: [B, T, H, hd]; k, v: [B, S, KVH, hd]; query_slots: [T] index of each query in the key
  sequence; key_valid: [B, S] (False for padding and unwritten cache slots).
  The G = H / KVH query heads that share a KV head are folded into one [G*T, hd] operand, so both
  products are plain batched matmuls over (batch, KV head): on CPU this took about 20% less time
  than the equivalent 5-d einsums at 8x512 (forward + backward, identical results).
  The backward pass keeps only the output and a log-sum-exp per query (`_attend_bwd`).
  `causal_block` > 0 promises that query i is key i (no cache: query_slots == arange(T), S == T)
  and splits the queries into blocks that attend only to keys up to the block's end, which skips
  nearly half of the products at long T.
  """
  b, t, h, hd = q.shape
  kvh = k.shape[2]
  g = h // kvh
  s = k.shape[1]
  qg = q.reshape(b, t, kvh, g, hd).transpose(0, 2, 3, 1, 4)  # [B, KVH, G, T, hd]
  kf, vf = k.transpose(0, 2, 1, 3), v.astype(q.dtype).transpose(0, 2, 1, 3)  # [B, KVH, S, hd]
  causal = jnp.arange(s)[None, :] <= query_slots[:, None]  # [T, S]
  bounds = [0, t]
  if causal_block > 0 and t == s and t > causal_block:
    bounds = list(range(0, t, causal_block)) + [t]
  outs = []
  for lo, hi in zip(bounds[:-1], bounds[1:]):
    keys = s if len(bounds) == 2 else hi  # a block's queries see no key after its last one
    c = hi - lo
    qf = qg[:, :, :, lo:hi].reshape(b, kvh, g * c, hd)  # row g*c + t
    out = _attend(qf, kf[:, :, :keys], vf[:, :, :keys], causal[lo:hi, :keys],
                  key_valid[:, :keys], g)
    outs.append(out.reshape(b, kvh, g, c, hd))
  out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=3)
  return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h * hd)
