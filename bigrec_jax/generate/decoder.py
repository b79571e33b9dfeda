"""Prefill and one-token decode steps for generation, with a prompt cache shared by all beams.

The model's own `forward(cache=...)` keeps one [L, B, S, ...] cache per sequence; for beam search
that would copy every prompt K/V once per beam and move the whole cache through memory at every
step (the scan over layers reads and rewrites it, and reordering beams gathers it again). Here:
- the prompt K/V come from one `forward` over the B prompts (not B * beams) and stay read-only;
- generated K/V live in a small [L, T, N, KVH, hd] buffer (T = max_new_tokens, N = B * beams),
  one slot written per step;
- beams are reordered lazily: `ancestors[n, t]` is the slot that holds the K/V of step t for
  beam n, so "gathering the cache by source beam" costs a [N, T] int gather, not a cache copy;
- with `matmul_dtype`, callers pass the projection kernels already cast (`cast_projections`,
  done once by the Generator), so no step casts them.
The layer math is the model's (layers.apply_rope / rope_tables, same RMSNorm and attention
numerics); tests check the step against the full-sequence `forward` logits. LoRA must be merged
into the weights first (`lora.merge`): the step reads plain kernels.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from bigrec_jax.model import forward, init_cache, output_logits, prefix_then_suffix
from bigrec_jax.model.config import LlamaConfig
from bigrec_jax.model import ops
from bigrec_jax.model.layers import apply_rope, rope_tables

Array = jax.Array

_NEG = jnp.finfo(jnp.float32).min


class PromptCache(NamedTuple):
  """K/V of the prompts, one per row (not per beam), laid out for the decode step's products:
  k [L, B, KVH, hd, P] (keys already transposed for q.k), v [L, B, KVH, P, hd]; valid [B, P]."""
  k: Array
  v: Array
  valid: Array
  length: Array  # [B] int32: real tokens per prompt (the position of the first generated token)


class GenCache(NamedTuple):
  """K/V of generated tokens: k, v [L, T, N, KVH, hd]; slot (t, n) written at step t by beam n."""
  k: Array
  v: Array


def prefill(config: LlamaConfig, params, ids: Array, mask: Array, prefix_len: int = 0
            ) -> tuple[Array, PromptCache]:
  """Runs the left-padded prompts once: (logits of the last position [B, V], PromptCache).

  `prefix_len` > 0: every real prompt begins with the same `prefix_len` tokens, computed once
  (model.prefix_then_suffix); the cache then holds the prefix first and each row's tail after it.
  """
  b, p = ids.shape
  if prefix_len > 0:
    _, hidden, cache = prefix_then_suffix(config, params, ids, mask, prefix_len)
  else:
    hidden, cache = forward(config, params, ids, mask, cache=init_cache(config, b, p),
                            output="hidden")
  logits = output_logits(config, params, hidden[:, -1])
  length = jnp.sum(mask.astype(jnp.int32), axis=1)
  # Transposed once here rather than by every decode step ([L, B, P, KVH, hd] in the model).
  return logits, PromptCache(cache["k"].transpose(0, 1, 3, 4, 2),
                             cache["v"].transpose(0, 1, 3, 2, 4), cache["valid"], length)


def cast_projections(config: LlamaConfig, params):
  """params with every layer's projection kernels in `config.matmul_dtype` (if set).

  `ops.matmul` casts its operands, so float32 kernels work too, but the decode step would then
  cast them at every step; cast once, each step reads bfloat16 kernels: half the bytes, and no
  convert pass. The products are the same either way. On the "cpu" kernels path 16-bit kernels
  are stored as their bits (`ops.PackedHalf`): XLA:CPU would otherwise carry them through the
  decode loop as float32. Packed params are for decoding only (lora.merge refuses them).
  """
  dt = config.projection_dtype
  if dt is None:
    return params

  def cast(kernel):
    return ops.decode_weight(kernel, dt, config.kernels)

  layers = {name: ({**sub, "kernel": cast(sub["kernel"])} if "kernel" in sub else sub)
            for name, sub in params["layers"].items()}
  return dict(params, layers=layers)


def init_gen_cache(config: LlamaConfig, num_rows: int, max_new_tokens: int) -> GenCache:
  shape = (config.num_layers, max_new_tokens, num_rows, config.num_kv_heads, config.head_dim)
  zeros = jnp.zeros(shape, config.compute_dtype)
  return GenCache(zeros, zeros)


def _rms_norm(x: Array, scale: Array, eps: float) -> Array:
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return (scale.astype(jnp.float32) * y).astype(x.dtype)


def _proj(layer: dict, name: str, x: Array, dt, mm_dt=None, kernels: str = "auto") -> Array:
  y = ops.matmul(x.astype(dt), layer[name]["kernel"], mm_dt, kernels)
  if "bias" in layer[name]:
    y = y + layer[name]["bias"].astype(dt)
  return y


def decode_step(config: LlamaConfig, params, prompt: PromptCache, gen: GenCache,
                ancestors: Array, tokens: Array, step: Array) -> tuple[Array, GenCache]:
  """Feeds one token per beam and returns (logits [N, V] float32, the cache with slot `step`).

  tokens: [N] with N = B * beams (row-major: beams of prompt b are rows b*K .. b*K+K-1);
  ancestors: [N, T] slot index holding each earlier step's K/V for that beam (entry `step` must
  be the beam's own index n); step: scalar int32, the generation index of `tokens`.
  """
  cfg = config
  dt = cfg.compute_dtype
  n = tokens.shape[0]
  b, p = prompt.valid.shape
  k_beams = n // b
  kvh, hd = cfg.num_kv_heads, cfg.head_dim
  groups = cfg.num_heads // kvh
  m = k_beams * groups  # queries per (row, KV head) against the prompt
  mm_dt = cfg.projection_dtype

  positions = (jnp.repeat(prompt.length, k_beams) + step)[:, None]  # [N, 1]
  cos, sin = rope_tables(cfg, positions)
  x = jnp.take(params["embed"], tokens, axis=0).astype(dt)[:, None, :]  # [N, 1, D]
  prompt_valid = prompt.valid[:, None, None, :]  # [B, 1, 1, P]
  scale = 1.0 / math.sqrt(hd)

  def layer_fn(x, xs):
    layer, pk, pv, gk, gv = xs  # pk [B, KVH, hd, P], pv [B, KVH, P, hd], gk/gv [T, N, KVH, hd]
    t_max = gk.shape[0]
    h = _rms_norm(x, layer["input_norm"]["scale"], cfg.rms_norm_eps)
    q = _proj(layer, "q_proj", h, dt, mm_dt, cfg.kernels).reshape(n, 1, cfg.num_heads, hd)
    k = _proj(layer, "k_proj", h, dt, mm_dt, cfg.kernels).reshape(n, 1, kvh, hd)
    v = _proj(layer, "v_proj", h, dt, mm_dt, cfg.kernels).reshape(n, 1, kvh, hd)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    k, v = k[:, 0].astype(gk.dtype), v[:, 0].astype(gv.dtype)  # [N, KVH, hd]
    # This step's K/V join the beam's history at slot (step, n): ancestors[:, step] == arange(N).
    gk = jax.lax.dynamic_update_slice_in_dim(gk, k[None], step, axis=0)
    gv = jax.lax.dynamic_update_slice_in_dim(gv, v[None], step, axis=0)
    slot_rows = jnp.arange(t_max)[None, :]
    f32 = jnp.float32
    hist_k = gk[slot_rows, ancestors].astype(f32)  # [N, T, KVH, hd]
    hist_v = gv[slot_rows, ancestors].astype(f32)
    # Prompt part: the K beams x G query heads of a row are M queries against its prompt keys.
    qp = q.reshape(b, k_beams, kvh, groups, hd).transpose(0, 2, 1, 3, 4).reshape(b, kvh, m, hd)
    s_prompt = jnp.einsum("bkmd,bkdp->bkmp", qp, pk.astype(dt),
                          preferred_element_type=jnp.float32) * scale
    s_prompt = jnp.where(prompt_valid, s_prompt, _NEG)  # [B, KVH, M, P]
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
    probs = jax.nn.softmax(scores, axis=-1).astype(dt)  # [B, KVH, M, P + T]
    out_p = jnp.einsum("bkmp,bkpd->bkmd", probs[..., :p], pv.astype(dt))
    out_p = out_p.reshape(b, kvh, k_beams, groups, hd).transpose(0, 2, 1, 3, 4)
    probs_g = probs[..., p:].reshape(b, kvh, k_beams, groups, t_max).transpose(0, 2, 4, 1, 3)
    probs_g = probs_g.reshape(n, t_max, kvh, groups)  # back to [N, T, KVH, G]
    out_g = jnp.sum(probs_g.astype(f32)[..., None] * hist_v[:, :, :, None],
                    axis=1).astype(dt)  # [N, KVH, G, hd]
    a = (out_p.reshape(n, kvh, groups, hd) + out_g).reshape(n, 1, cfg.num_heads * hd)
    x = x + _proj(layer, "o_proj", a, dt, mm_dt, cfg.kernels)
    h = _rms_norm(x, layer["post_norm"]["scale"], cfg.rms_norm_eps)
    gate = _proj(layer, "gate_proj", h, dt, mm_dt, cfg.kernels)
    mlp = jax.nn.silu(gate) * _proj(layer, "up_proj", h, dt, mm_dt, cfg.kernels)
    x = x + _proj(layer, "down_proj", mlp, dt, mm_dt, cfg.kernels)
    return x, (k, v)

  x, (new_k, new_v) = jax.lax.scan(layer_fn, x, (params["layers"], prompt.k, prompt.v,
                                                 gen.k, gen.v))
  # One in-place write of this step's K/V for all layers: [L, 1, N, KVH, hd] at slot `step`.
  gen = GenCache(jax.lax.dynamic_update_slice_in_dim(gen.k, new_k[:, None], step, axis=1),
                 jax.lax.dynamic_update_slice_in_dim(gen.v, new_v[:, None], step, axis=1))
  x = _rms_norm(x, params["final_norm"]["scale"], cfg.rms_norm_eps)
  return output_logits(cfg, params, x[:, 0]), gen
