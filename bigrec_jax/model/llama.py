"""The Flax LLaMA decoder (LLaMA 1/2/3, SmolLM2, Qwen2) with LoRA and a static-shape KV cache.

Layers are stacked and run with `nn.scan` (one traced block, compile time independent of depth).
Variables: 'params' holds the frozen base weights, 'lora' the adapters (see layers.Projection).

One block serves training, prefill, grounding and decoding; what attention reads is the cache
(model/cache.py): none (training), a per-sequence KV cache (prefill, one-token decode: positions
come from the attention mask and the cache's valid slots, left padding), or a beam cache (beam
search's decode step: prompt K/V shared by a row's beams, generated K/V reordered lazily).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigrec_jax.model.cache import BeamCache, BeamStep, beam_attention, init_cache
from bigrec_jax.model.config import LlamaConfig, LoraConfig
from bigrec_jax.model.layers import Projection, RMSNorm, apply_rope, attention, rope_tables

Array = jax.Array


class SequenceKeys(NamedTuple):
  """What attention reads besides a layer's K/V when there is no beam cache (shared by layers)."""
  query_slots: Array  # [T] key slot of each query
  key_valid: Array  # [B, S] real keys
  write_index: Array  # int32: where this call's K/V go in a KV cache


class DecoderBlock(nn.Module):
  config: LlamaConfig
  lora: LoraConfig | None = None

  @nn.compact
  def __call__(self, x, layer_cache, cos, sin, keys, deterministic):
    cfg = self.config
    dt, pdt = cfg.compute_dtype, jnp.dtype(cfg.param_dtype)
    proj = lambda n, f, axes, bias=False: Projection(
        f, axes, bias, self.lora, dt, pdt, cfg.projection_dtype, cfg.kernels, name=n)
    b, t, _ = x.shape
    h = RMSNorm(cfg.rms_norm_eps, pdt, name="input_norm")(x)
    q = proj("q_proj", cfg.num_heads * cfg.head_dim, ("embed", "q_proj"), cfg.attention_bias)(
        h, deterministic).reshape(b, t, cfg.num_heads, cfg.head_dim)
    k = proj("k_proj", cfg.num_kv_heads * cfg.head_dim, ("embed", "kv_proj"), cfg.attention_bias)(
        h, deterministic).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    v = proj("v_proj", cfg.num_kv_heads * cfg.head_dim, ("embed", "kv_proj"), cfg.attention_bias)(
        h, deterministic).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if isinstance(keys, BeamStep):
      a, new_cache = beam_attention(q, k, v, layer_cache, keys, dt)
    else:
      if layer_cache is not None:
        put = lambda buf, x: jax.lax.dynamic_update_slice_in_dim(
            buf, x.astype(buf.dtype), keys.write_index, axis=1)
        k, v = put(layer_cache["k"], k), put(layer_cache["v"], v)
        new_cache = {"k": k, "v": v}
      else:
        new_cache = None
      a = attention(q, k.astype(dt), v.astype(dt), keys.query_slots, keys.key_valid,
                    causal_block=cfg.causal_block if layer_cache is None else 0,
                    kernels=cfg.kernels)
    x = x + proj("o_proj", cfg.hidden_size, ("q_proj", "embed"))(a, deterministic)
    h = RMSNorm(cfg.rms_norm_eps, pdt, name="post_norm")(x)
    gate = proj("gate_proj", cfg.intermediate_size, ("embed", "mlp"))(h, deterministic)
    up = proj("up_proj", cfg.intermediate_size, ("embed", "mlp"))(h, deterministic)
    x = x + proj("down_proj", cfg.hidden_size, ("mlp", "embed"))(nn.silu(gate) * up, deterministic)
    return x, new_cache


class Llama(nn.Module):
  """Decoder-only causal LM. `output` is 'logits' or 'hidden' (after the final RMSNorm).

  `cache`: None, a KV cache dict (returned updated) or a BeamCache (tokens [N, 1], one per beam;
  `attention_mask` is then unused; returned with this step's K/V written)."""
  config: LlamaConfig
  lora: LoraConfig | None = None

  @nn.compact
  def __call__(self, input_ids: Array, attention_mask: Array, cache: dict | None = None,
               deterministic: bool = True, output: str = "logits"):
    cfg = self.config
    dt, pdt = cfg.compute_dtype, jnp.dtype(cfg.param_dtype)
    mask = attention_mask.astype(bool)
    t = input_ids.shape[1]
    if isinstance(cache, BeamCache):
      positions, layer_cache, keys = cache.positions(), cache.layers(), cache.shared()
    else:
      if cache is None:
        offset = jnp.zeros((), jnp.int32)
        key_valid = mask
        positions = jnp.cumsum(mask, axis=1) - 1
        layer_cache = None
      else:
        offset = cache["index"]
        key_valid = jax.lax.dynamic_update_slice_in_dim(cache["valid"], mask, offset, axis=1)
        positions = jnp.sum(cache["valid"], axis=1, keepdims=True) + jnp.cumsum(mask, axis=1) - 1
        layer_cache = {"k": cache["k"], "v": cache["v"]}
      positions = jnp.maximum(positions, 0)
      keys = SequenceKeys(offset + jnp.arange(t), key_valid, offset)
    cos, sin = rope_tables(cfg, positions)

    embed = self.param("embed", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), ("vocab", "embed")), (cfg.vocab_size, cfg.hidden_size), pdt)
    x = jnp.take(embed, input_ids, axis=0).astype(dt)

    block = DecoderBlock
    if cfg.remat:
      block = nn.remat(block, prevent_cse=False, static_argnums=(6,),
                       policy=jax.checkpoint_policies.nothing_saveable)
    layers = nn.scan(
        block, variable_axes={"params": 0, "lora": 0}, split_rngs={"params": True, "dropout": True},
        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast), length=cfg.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"})(cfg, self.lora, name="layers")
    x, new_kv = layers(x, layer_cache, cos, sin, keys, deterministic)
    x = RMSNorm(cfg.rms_norm_eps, pdt, name="final_norm")(x)
    if isinstance(cache, BeamCache):
      new_cache = cache.written(*new_kv)
    elif cache is not None:
      new_cache = {"k": new_kv["k"], "v": new_kv["v"], "valid": key_valid, "index": offset + t}
    else:
      new_cache = None
    if output == "hidden":
      return x, new_cache
    weights = {"embed": embed}
    if not cfg.tie_word_embeddings:
      weights["lm_head"] = self.param("lm_head", nn.with_logical_partitioning(
          nn.initializers.normal(0.02), ("embed", "vocab")), (cfg.hidden_size, cfg.vocab_size), pdt)
    return output_logits(cfg, weights, x), new_cache


def variables(params, lora=None) -> dict:
  return {"params": params} if lora is None else {"params": params, "lora": lora}


def forward(config: LlamaConfig, params, input_ids, attention_mask, *, lora=None,
            lora_config: LoraConfig | None = None, cache=None, dropout_rng=None,
            output: str = "logits"):
  """Functional entry point: (logits [B,T,V] float32 | hidden [B,T,D], new_cache)."""
  module = Llama(config, lora_config if lora is not None else None)
  rngs = None if dropout_rng is None else {"dropout": dropout_rng}
  return module.apply(variables(params, lora), input_ids, attention_mask, cache,
                      deterministic=dropout_rng is None, output=output, rngs=rngs)


def output_weight(config: LlamaConfig, params) -> tuple[Array, bool]:
  """(weight, vocab_major): the tied embedding [V, D] or the untied lm_head [D, V]."""
  if config.tie_word_embeddings:
    return params["embed"], True
  return params["lm_head"], False


def output_logits(config: LlamaConfig, params, hidden: Array) -> Array:
  """float32 logits from final-norm hidden states (tied embeddings or a separate lm_head)."""
  dt = config.compute_dtype
  weight, vocab_major = output_weight(config, params)
  weight = weight.astype(dt)
  return jnp.dot(hidden.astype(dt), weight.T if vocab_major else weight,
                 preferred_element_type=jnp.float32)


def prefix_then_suffix(config: LlamaConfig, params, input_ids, attention_mask, prefix_len: int, *,
                       lora=None, lora_config: LoraConfig | None = None, dropout_rng=None):
  """Runs a batch whose rows all begin with the same `prefix_len` real tokens, the prefix once.

  Every BIGRec prompt opens with the same instruction (~72 of SmolLM2's ~150 prompt tokens), so
  the prefix is computed at batch 1 and its K/V broadcast to the rows. Layout of the returned
  cache [L, B, P + S, ...]: slots [0, P) the prefix, then each row's remaining tokens left-padded
  (input_ids[:, P:] under attention_mask[:, :S]: with left padding that is exactly the row's
  tail). Attention does not care where padding sits, and positions come from the valid slots,
  so every real token sees the same keys at the same positions as in `forward`. Gradients reach
  the prefix through the broadcast (summed over rows). With dropout, the prefix's LoRA dropout
  mask is drawn once for the batch (the rows share that computation).

  Every row with any real token must have more than `prefix_len` of them (tokenize.
  shared_prefix_length guarantees it); all-padding filler rows are allowed.
  Returns (prefix hidden [1, P, D], suffix hidden [B, S, D], cache after the suffix).
  """
  b, t = input_ids.shape
  p, s = prefix_len, t - prefix_len
  if not 0 < p < t:
    raise ValueError(f"prefix_len {p} must be in (0, {t})")
  input_ids, mask = jnp.asarray(input_ids), jnp.asarray(attention_mask, jnp.int32)
  lengths = jnp.sum(mask, axis=1)
  longest = jnp.argmax(lengths)  # a real row (row 0 may be filler)
  prefix_ids = jax.lax.dynamic_slice_in_dim(input_ids[longest], t - lengths[longest], p)[None]
  rngs = (None, None) if dropout_rng is None else tuple(jax.random.split(dropout_rng))
  kw = dict(lora=lora, lora_config=lora_config, output="hidden")
  prefix_hidden, cache = forward(config, params, prefix_ids, jnp.ones((1, p), jnp.int32),
                                 cache=init_cache(config, 1, p), dropout_rng=rngs[0], **kw)
  grow = lambda x: jnp.concatenate(
      [jnp.broadcast_to(x, x.shape[:1] + (b,) + x.shape[2:]),
       jnp.zeros(x.shape[:1] + (b, s) + x.shape[3:], x.dtype)], axis=2)
  cache = {"k": grow(cache["k"]), "v": grow(cache["v"]),
           "valid": jnp.arange(t)[None, :] < p * jnp.ones((b, 1), jnp.int32),
           "index": jnp.asarray(p, jnp.int32)}
  suffix_hidden, cache = forward(config, params, input_ids[:, p:], mask[:, :s], cache=cache,
                                 dropout_rng=rngs[1], **kw)
  return prefix_hidden, suffix_hidden, cache


def forward_shared_prefix(config: LlamaConfig, params, input_ids, attention_mask, prefix_len: int,
                          *, lora=None, lora_config: LoraConfig | None = None, dropout_rng=None,
                          output: str = "logits") -> Array:
  """`forward`'s logits [B, T, V] (or hidden [B, T, D]) in the caller's left-padded layout,
  computed with `prefix_then_suffix`. Padding positions hold arbitrary values."""
  prefix_hidden, suffix_hidden, _ = prefix_then_suffix(
      config, params, input_ids, attention_mask, prefix_len, lora=lora, lora_config=lora_config,
      dropout_rng=dropout_rng)
  t, p = input_ids.shape[1], prefix_len
  start = t - jnp.sum(jnp.asarray(attention_mask, jnp.int32), axis=1, keepdims=True)  # [B, 1]
  slot = jnp.arange(t)[None, :]
  from_prefix = jnp.take(prefix_hidden[0], jnp.clip(slot - start, 0, p - 1), axis=0)
  from_suffix = jnp.take_along_axis(suffix_hidden, jnp.clip(slot - p, 0, t - p - 1)[..., None],
                                    axis=1)
  hidden = jnp.where((slot - start < p)[..., None], from_prefix, from_suffix)
  if output == "hidden":
    return hidden
  return output_logits(config, params, hidden)


def last_hidden_state(config: LlamaConfig, params, input_ids, attention_mask) -> Array:
  """[B, D] hidden state after the final norm at the last position (left padding: last real)."""
  hidden, _ = forward(config, params, input_ids, attention_mask, output="hidden")
  return hidden[:, -1].astype(jnp.float32)


def abstract_variables(config: LlamaConfig, lora_config: LoraConfig | None = None):
  """Shapes and logical axes of every variable, without allocating anything."""
  module = Llama(config, lora_config)
  ids = jnp.zeros((1, 1), jnp.int32)
  boxed = jax.eval_shape(lambda: module.init(jax.random.key(0), ids, ids))
  axes = nn.get_partition_spec(boxed)
  shapes = nn.unbox(boxed)
  to_tuple = lambda spec: tuple(spec)
  axes = jax.tree.map(to_tuple, axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  return shapes, axes


def init_params(config: LlamaConfig, rng) -> dict:
  """Random base weights (for unit tests with tiny configs).

  Compiled once per config: run eagerly, Flax's init dispatches every initializer and the layer
  scan op by op (~3x the compile time, again for every call)."""
  return _jitted_init(config)(rng)


@functools.lru_cache(maxsize=32)
def _jitted_init(config: LlamaConfig):
  ids = jnp.zeros((1, 1), jnp.int32)
  return jax.jit(lambda rng: nn.unbox(Llama(config).init(rng, ids, ids))["params"])
