"""Adapters from the benchmark's cases to the project's jitted functions.

Each returns a zero-argument callable (or a step over explicit state) plus `impl`, the name of
the code it runs, recorded in bench.json so a reader knows what was measured.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


# ----------------------------------------------------------------------------- training

def train_step(model, p: dict[str, Any], rows: np.ndarray):
  """(step(state) -> (state, loss), initial state, impl) for one LoRA AdamW step on `rows`."""
  import optax

  from bigrec_jax.model import LoraConfig, forward, lora

  cfg, params = model.config, model.params
  lc = LoraConfig(rank=p["rank"], alpha=p["alpha"], dropout=p["dropout"],
                  targets=tuple(p["targets"]))
  ids = jnp.asarray(rows)
  mask = jnp.ones_like(ids)
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(p["lr"], weight_decay=0.0))

  def loss_fn(adapters, ids, mask, rng):
    logits, _ = forward(cfg, params, ids, mask, lora=adapters, lora_config=lc, dropout_rng=rng)
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
    w = mask[:, 1:].astype(jnp.float32)
    return jnp.sum(nll * w) / jnp.sum(w)

  @jax.jit
  def step(state):
    adapters, opt_state, rng = state
    rng, sub = jax.random.split(rng)
    loss, grads = jax.value_and_grad(loss_fn)(adapters, ids, mask, sub)
    updates, opt_state = opt.update(grads, opt_state, adapters)
    return (optax.apply_updates(adapters, updates), opt_state, rng), loss

  adapters = lora.init_lora(cfg, lc, jax.random.key(0))
  state = (adapters, opt.init(adapters), jax.random.key(1))
  return step, state, "bench fallback: value_and_grad(forward) + optax adamw"


# ----------------------------------------------------------------------------- beam search

def beam_search(model, p: dict[str, Any], prompts: Sequence[str]) -> tuple[Callable[[], Any], str]:
  raise NotImplementedError("bigrec_jax.generate has no beam search yet")


def beam_summary(model, out) -> dict[str, Any]:
  return {}


# ----------------------------------------------------------------------------- embeddings

def embed_texts(model, p: dict[str, Any], texts: Sequence[str]) -> tuple[Callable[[], Any], str]:
  from bigrec_jax.model import last_hidden_state

  cfg, params, tok = model.config, model.params, model.tokenizer
  bs = p["batch"]
  fn = jax.jit(lambda ids, mask: last_hidden_state(cfg, params, ids, mask))
  padded = [0]

  def run():
    out = []
    padded[0] = 0
    for i in range(0, len(texts), bs):
      chunk = list(texts[i:i + bs])
      n = len(chunk)
      chunk += [""] * (bs - n)
      enc = tok(chunk, padding=True, pad_to_multiple_of=8, return_tensors="np")
      padded[0] += int(enc["input_ids"].size)
      out.append(fn(enc["input_ids"], enc["attention_mask"])[:n])
    return jnp.concatenate(out)

  run.padded_tokens = padded
  return run, "bench fallback: jit(last_hidden_state) per batch of 16, lengths padded to x8"
