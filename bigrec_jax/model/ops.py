"""The backend-specific kernels of the model, selected by one switch (`LlamaConfig.kernels`,
`--config.model.kernels`):

- "cpu": hand-written pieces tuned on XLA:CPU (measured in their docstrings): `matmul` with
  bfloat16 operands and float32 accumulation and its own VJP, the LoRA side product `lora_delta`
  with a VJP that transposes the rank-r operand, attention whose backward pass recomputes the
  probabilities from a saved log-sum-exp (`attend`), and 16-bit decode weights carried as their
  uint16 bits (`PackedHalf`);
- "xla": plain `jnp.dot` / `jax.nn.dot_product_attention` with JAX's own autodiff, 16-bit
  weights stored as they are: what GPU and TPU compilers fuse and tile themselves;
- "auto" (default): "cpu" when JAX's default backend is the CPU, "xla" on every other backend.

Both paths compute the same function (tests/model/test_ops.py checks values and gradients).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array

KERNELS = ("auto", "cpu", "xla")


def resolve(kernels: str) -> str:
  """"cpu" or "xla" for a `kernels` setting ("auto": by JAX's default backend)."""
  if kernels not in KERNELS:
    raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")
  if kernels == "auto":
    return "cpu" if jax.default_backend() == "cpu" else "xla"
  return kernels


# ----------------------------------------------------------------------------- packed weights

@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PackedHalf:
  """A 16-bit float weight carried as its uint16 bit pattern (`pack_half`; `unpack_half` is a
  bitcast back). A typed container, so code that expects float weights (lora.merge, exports)
  can refuse it instead of doing arithmetic on the bits."""
  bits: Array  # uint16, the weight's shape
  half: str = dataclasses.field(metadata=dict(static=True))  # "bfloat16" or "float16"

  @property
  def shape(self):
    return self.bits.shape


def pack_half(w: Array) -> PackedHalf:
  """A 16-bit float weight as its uint16 bit pattern.

  XLA:CPU widens 16-bit float arrays carried through a loop to float32: a decode loop around the
  layer scan then slices float32 kernels and narrows each slice again at every layer and step
  (~2x the time of the bfloat16 products, measured). Integer bits are carried as they are.
  """
  if jnp.dtype(w.dtype).itemsize != 2 or not jnp.issubdtype(w.dtype, jnp.floating):
    raise ValueError(f"pack_half takes a 16-bit float weight, got {w.dtype}")
  return PackedHalf(jax.lax.bitcast_convert_type(w, jnp.uint16), jnp.dtype(w.dtype).name)


def unpack_half(w) -> Array:
  """`pack_half`'s bits back as the 16-bit float weight; any other weight as it is."""
  if isinstance(w, PackedHalf):
    return jax.lax.bitcast_convert_type(w.bits, jnp.dtype(w.half))
  return w


def decode_weight(w: Array, dtype, kernels: str):
  """A projection kernel prepared once for many decode steps: cast to `dtype` (None: as it is)
  and, on the cpu path, packed when 16-bit."""
  if dtype is None:
    return w
  w = w.astype(dtype)
  if resolve(kernels) == "cpu" and jnp.dtype(dtype).itemsize == 2:
    return pack_half(w)
  return w


# ----------------------------------------------------------------------------- matmul

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
def cpu_matmul(x: Array, w: Array, operand_dtype=None) -> Array:
  """x @ w with both operands cast to `operand_dtype` (None: x's dtype), accumulated in float32
  and returned in x's dtype; the backward products likewise. Pass the weight as stored.

  Why: XLA:CPU runs a bfloat16 x bfloat16 -> float32 dot on oneDNN (AMX on recent Xeons, ~4.5x
  the float32 rate measured here) but a bfloat16-result dot itself, slowly; and float32
  activations with bfloat16 operands (LlamaConfig.matmul_dtype) keep every other op and every
  saved residual in float32, which XLA:CPU handles at full speed.
  """
  return _matmul_fwd(x, w, operand_dtype)[0]


cpu_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def xla_matmul(x: Array, w: Array, operand_dtype=None) -> Array:
  """The same product in plain jnp (JAX's autodiff): operands in `operand_dtype`, float32
  accumulation, x's dtype out."""
  return _dot32(x, w, operand_dtype or x.dtype).astype(x.dtype)


def matmul(x: Array, w, operand_dtype=None, kernels: str = "auto") -> Array:
  """x @ w for a projection (w may be a `PackedHalf`), on the `kernels` path."""
  w = unpack_half(w)
  if resolve(kernels) == "cpu":
    return cpu_matmul(x, w, operand_dtype)
  return xla_matmul(x, w, operand_dtype)


# ----------------------------------------------------------------------------- LoRA side product

def _lora_fwd(h, a, b, scale):
  u = cpu_matmul(h, a)  # [..., r]
  y = cpu_matmul(u, b) * jnp.asarray(scale, h.dtype)
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
def cpu_lora_delta(h: Array, a: Array, b: Array, scale: float) -> Array:
  """scale * (h @ a) @ b, the LoRA update of a projection (h: [..., in], a: [in, r], b: [r, out])."""
  return _lora_fwd(h, a, b, scale)[0]


cpu_lora_delta.defvjp(_lora_fwd, _lora_bwd)


def lora_delta(h: Array, a: Array, b: Array, scale: float, kernels: str = "auto") -> Array:
  """scale * (h @ a) @ b on the `kernels` path."""
  if resolve(kernels) == "cpu":
    return cpu_lora_delta(h, a, b, scale)
  return xla_matmul(xla_matmul(h, a), b) * jnp.asarray(scale, h.dtype)


# ----------------------------------------------------------------------------- attention

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
def attend(qf: Array, kf: Array, vf: Array, causal: Array, key_valid: Array,
           groups: int) -> Array:
  """softmax(q.k^T / sqrt(hd), masked) @ v on folded operands (see `cpu_attention`)."""
  return _attend_fwd(qf, kf, vf, causal, key_valid, groups)[0]


attend.defvjp(_attend_fwd, _attend_bwd)


def cpu_attention(q: Array, k: Array, v: Array, query_slots: Array, key_valid: Array, *,
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
    out = attend(qf, kf[:, :, :keys], vf[:, :, :keys], causal[lo:hi, :keys],
                 key_valid[:, :keys], g)
    outs.append(out.reshape(b, kvh, g, c, hd))
  out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=3)
  return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h * hd)


def xla_attention(q: Array, k: Array, v: Array, query_slots: Array, key_valid: Array) -> Array:
  """The same attention as `jax.nn.dot_product_attention` (grouped K/V heads, a boolean mask from
  the causal slots and the valid keys): [B, T, H * hd]."""
  b, t, h, hd = q.shape
  s = k.shape[1]
  causal = jnp.arange(s)[None, :] <= query_slots[:, None]  # [T, S]
  mask = causal[None, None] & key_valid[:, None, None, :]  # [B, 1, T, S]
  out = jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask)
  return out.reshape(b, t, h * hd)


def attention(q: Array, k: Array, v: Array, query_slots: Array, key_valid: Array, *,
              causal_block: int = 0, kernels: str = "auto") -> Array:
  """Grouped-query causal attention on the `kernels` path (arguments: `cpu_attention`)."""
  if resolve(kernels) == "cpu":
    return cpu_attention(q, k, v, query_slots, key_valid, causal_block=causal_block)
  return xla_attention(q, k, v, query_slots, key_valid)


def check_not_packed(tree: Any, what: str) -> None:
  """Raises ValueError when `tree` holds a PackedHalf (weights prepared for decoding)."""
  leaves = jax.tree_util.tree_leaves(tree, is_leaf=lambda x: isinstance(x, PackedHalf))
  if any(isinstance(x, PackedHalf) for x in leaves):
    raise ValueError(f"{what}: the weights are packed 16-bit bits (ops.PackedHalf, made by "
                     "generate.decoder.cast_projections for decoding); pass the float weights "
                     "(model.params) instead")
