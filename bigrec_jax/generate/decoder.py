"""Prefill and one-token decode steps for beam search, over the model's own forward.

The prompt K/V come from one `forward` over the B prompts (not B * beams) and are shared by a
row's beams; each decode step is `forward(..., cache=BeamCache)`: the model's decoder block with
the beam cache's attention (model/cache.py, which says why that layout). With `matmul_dtype`,
callers pass the projection kernels already cast (`cast_projections`, done once by the
Generator), so no step casts them. LoRA must be merged into the weights first (`lora.merge`):
the step reads plain kernels.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from bigrec_jax.model import forward, init_cache, prefix_then_suffix, output_logits
from bigrec_jax.model import ops
from bigrec_jax.model.cache import BeamCache, GenCache, PromptCache, init_gen_cache
from bigrec_jax.model.config import LlamaConfig

Array = jax.Array

__all__ = ["GenCache", "PromptCache", "cast_projections", "decode_step", "init_gen_cache",
           "prefill"]


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
  return output_logits(config, params, hidden[:, -1]), PromptCache.from_kv_cache(cache, mask)


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


def decode_step(config: LlamaConfig, params, prompt: PromptCache, gen: GenCache,
                ancestors: Array, tokens: Array, step: Array) -> tuple[Array, GenCache]:
  """Feeds one token per beam and returns (logits [N, V] float32, the cache with slot `step`).

  tokens: [N] with N = B * beams (row-major: beams of prompt b are rows b*K .. b*K+K-1);
  ancestors: [N, T] slot index holding each earlier step's K/V for that beam (entry `step` must
  be the beam's own index n); step: scalar int32, the generation index of `tokens`.
  """
  ids = tokens[:, None]
  logits, cache = forward(config, params, ids, jnp.ones_like(ids),
                          cache=BeamCache(prompt, gen, ancestors, step))
  return logits[:, 0], cache.gen
