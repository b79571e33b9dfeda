"""The caches the decoder block's attention understands (`Llama(..., cache=...)`).

- A **KV cache** (`init_cache`), one per sequence: a dict {"k", "v": [L, B, S, KVH, hd],
  "valid": [B, S] bool, "index": int32}. `index` is the next slot to write, `valid` marks real
  (non-padding) tokens; prefill and one-token decode write it the same way.
- A **beam cache** (`BeamCache`) for beam search, where that layout would copy every prompt K/V
  once per beam and move the whole cache through memory at every step (the layer scan reads and
  rewrites it, and reordering beams gathers it again). Instead:
  - the prompt K/V (`PromptCache`) come from one prefill over the B prompts (not B * beams) and
    stay read-only, laid out for the step's products;
  - generated K/V (`GenCache`) live in a small [L, T, N, KVH, hd] buffer (T = max_new_tokens,
    N = B * beams), one slot written per step;
  - beams are reordered lazily: `ancestors[n, t]` is the slot that holds the K/V of step t for
    beam n, so "gathering the cache by source beam" costs an [N, T] int gather, not a copy.
  `beam_attention` is the attention of one decode step over both parts.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array

_NEG = jnp.finfo(jnp.float32).min


def init_cache(config, batch: int, max_len: int, dtype=None) -> dict:
  """An empty KV cache of static shape [L, batch, max_len, KVH, hd]."""
  dtype = dtype or config.compute_dtype
  shape = (config.num_layers, batch, max_len, config.num_kv_heads, config.head_dim)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
          "valid": jnp.zeros((batch, max_len), bool), "index": jnp.zeros((), jnp.int32)}


class PromptCache(NamedTuple):
  """K/V of the prompts, one per row (not per beam), laid out for the decode step's products:
  k [L, B, KVH, hd, P] (keys already transposed for q.k), v [L, B, KVH, P, hd]; valid [B, P]."""
  k: Array
  v: Array
  valid: Array
  length: Array  # [B] int32: real tokens per prompt (the position of the first generated token)

  @staticmethod
  def from_kv_cache(cache: dict, mask: Array) -> "PromptCache":
    """The prompt part of a beam cache from a prefill's KV cache (transposed once here rather
    than by every decode step)."""
    return PromptCache(cache["k"].transpose(0, 1, 3, 4, 2), cache["v"].transpose(0, 1, 3, 2, 4),
                       cache["valid"], jnp.sum(mask.astype(jnp.int32), axis=1))


class GenCache(NamedTuple):
  """K/V of generated tokens: k, v [L, T, N, KVH, hd]; slot (t, n) written at step t by beam n."""
  k: Array
  v: Array


def init_gen_cache(config, num_rows: int, max_new_tokens: int) -> GenCache:
  shape = (config.num_layers, max_new_tokens, num_rows, config.num_kv_heads, config.head_dim)
  zeros = jnp.zeros(shape, config.compute_dtype)
  return GenCache(zeros, zeros)


class BeamCache(NamedTuple):
  """What one decode step of N = B * beams tokens attends to (row-major: the beams of prompt b
  are rows b*K .. b*K+K-1). ancestors: [N, T] slot holding each earlier step's K/V for that beam
  (entry `step` must be the beam's own index n); step: scalar int32, the generation index of the
  tokens fed."""
  prompt: PromptCache
  gen: GenCache
  ancestors: Array
  step: Array

  def positions(self) -> Array:
    """[N, 1] position of the token fed at `step` (a prompt of length l puts it at l + step)."""
    beams = self.ancestors.shape[0] // self.prompt.length.shape[0]
    return (jnp.repeat(self.prompt.length, beams) + self.step)[:, None]

  def layers(self) -> tuple[Array, Array, Array, Array]:
    """The per-layer arrays, stacked on axis 0 (scanned with the layers)."""
    return self.prompt.k, self.prompt.v, self.gen.k, self.gen.v

  def shared(self) -> "BeamStep":
    """What every layer reads the same (broadcast to the layer scan)."""
    return BeamStep(self.prompt.valid, self.ancestors, self.step)

  def written(self, new_k: Array, new_v: Array) -> "BeamCache":
    """The cache with this step's K/V of every layer ([L, N, KVH, hd]) at slot `step`: one
    in-place write for all layers."""
    put = lambda buf, x: jax.lax.dynamic_update_slice_in_dim(buf, x[:, None], self.step, axis=1)
    return self._replace(gen=GenCache(put(self.gen.k, new_k), put(self.gen.v, new_v)))


class BeamStep(NamedTuple):
  prompt_valid: Array  # [B, P]
  ancestors: Array  # [N, T]
  step: Array


def beam_attention(q: Array, k: Array, v: Array, layer: tuple, shared: BeamStep, dtype
                   ) -> tuple[Array, tuple[Array, Array]]:
  """One layer's attention for one decode step: (output [N, 1, H * hd], (k, v) [N, KVH, hd]).

  q [N, 1, H, hd], k, v [N, 1, KVH, hd] after RoPE; `layer` = this layer's (prompt k
  [B, KVH, hd, P], prompt v [B, KVH, P, hd], generated k, v [T, N, KVH, hd]).
  """
  pk, pv, gk, gv = layer
  n, _, h, hd = q.shape
  b, p = shared.prompt_valid.shape
  kvh = k.shape[2]
  groups = h // kvh
  k_beams = n // b
  m = k_beams * groups  # queries per (row, KV head) against the prompt
  t_max = gk.shape[0]
  step = shared.step
  scale = 1.0 / math.sqrt(hd)
  f32 = jnp.float32
  k, v = k[:, 0].astype(gk.dtype), v[:, 0].astype(gv.dtype)  # [N, KVH, hd]
  # This step's K/V join the beam's history at slot (step, n): ancestors[:, step] == arange(N).
  gk = jax.lax.dynamic_update_slice_in_dim(gk, k[None], step, axis=0)
  gv = jax.lax.dynamic_update_slice_in_dim(gv, v[None], step, axis=0)
  slot_rows = jnp.arange(t_max)[None, :]
  hist_k = gk[slot_rows, shared.ancestors].astype(f32)  # [N, T, KVH, hd]
  hist_v = gv[slot_rows, shared.ancestors].astype(f32)
  # Prompt part: the K beams x G query heads of a row are M queries against its prompt keys.
  qp = q.reshape(b, k_beams, kvh, groups, hd).transpose(0, 2, 1, 3, 4).reshape(b, kvh, m, hd)
  s_prompt = jnp.einsum("bkmd,bkdp->bkmp", qp, pk.astype(dtype),
                        preferred_element_type=f32) * scale
  s_prompt = jnp.where(shared.prompt_valid[:, None, None, :], s_prompt, _NEG)  # [B, KVH, M, P]
  qn = q.reshape(n, kvh, groups, hd)
  # The generated part (T <= max_new_tokens slots) as a multiply-reduce, not a dot: a batched
  # dot over (n, k) would first transpose the gathered [N, T, KVH, hd] history to
  # [N, KVH, T, hd], twice per layer and step (~10% of a 32-token CPU beam search).
  s_gen = jnp.sum(qn.astype(f32)[:, None] * hist_k[:, :, :, None], axis=-1) * scale
  gen_visible = (jnp.arange(t_max) <= step)[None, :, None, None]  # slots t <= step
  s_gen = jnp.where(gen_visible, s_gen, _NEG)  # [N, T, KVH, G]
  # [N = B * K, T, KVH, G] -> [B, KVH, M = K * G, T], the prompt scores' layout
  s_gen = s_gen.reshape(b, k_beams, t_max, kvh, groups).transpose(0, 3, 1, 4, 2)
  scores = jnp.concatenate([s_prompt, s_gen.reshape(b, kvh, m, t_max)], axis=-1)
  probs = jax.nn.softmax(scores, axis=-1).astype(dtype)  # [B, KVH, M, P + T]
  out_p = jnp.einsum("bkmp,bkpd->bkmd", probs[..., :p], pv.astype(dtype))
  out_p = out_p.reshape(b, kvh, k_beams, groups, hd).transpose(0, 2, 1, 3, 4)
  probs_g = probs[..., p:].reshape(b, kvh, k_beams, groups, t_max).transpose(0, 2, 4, 1, 3)
  probs_g = probs_g.reshape(n, t_max, kvh, groups)  # back to [N, T, KVH, G]
  out_g = jnp.sum(probs_g.astype(f32)[..., None] * hist_v[:, :, :, None],
                  axis=1).astype(dtype)  # [N, KVH, G, hd]
  out = (out_p.reshape(n, kvh, groups, hd) + out_g).reshape(n, 1, h * hd)
  return out, (k, v)
