"""Adapters from the benchmark's cases to the project's jitted functions.

Each returns a zero-argument callable (or a step over explicit state) plus `impl`, the name of
the code it runs, recorded in bench.json so a reader knows what was measured.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np


# ----------------------------------------------------------------------------- training

def train_step(model, p: dict[str, Any], batch: dict[str, np.ndarray], *,
               label_window: int | None = None, prefix_len: int = 0):
  """(step(state) -> (state, loss), initial state, impl): the project's jitted training step.

  batch: {"input_ids", "attention_mask", "labels"} [rows, T] (the packed cases: labels = input
  ids, train_on_inputs, the reference default). One micro-batch per step (accumulation 1), AdamW
  with HF's warm-up schedule and grad-norm clipping at 1.0 as HF Trainer does; `label_window`
  and `prefix_len` as `loop.train` passes them. LoRA unless p["mode"] == "full" (every weight
  trained); no weight decay on either side.
  """
  from bigrec_jax import parallel
  from bigrec_jax.model import LoraConfig
  from bigrec_jax.train import optimizer as opt_lib
  from bigrec_jax.train import step as step_lib

  cfg = model.config
  full = p.get("mode") == "full"
  lc = None if full else LoraConfig(rank=p["rank"], alpha=p["alpha"], dropout=p["dropout"],
                                    targets=tuple(p["targets"]))
  mesh = parallel.make_mesh()
  opt, _ = opt_lib.make_optimizer(p["lr"], total_steps=10_000, warmup_steps=20, max_grad_norm=1.0)
  train = step_lib.make_train_step(cfg, lc, opt, mesh, label_window=label_window,
                                   prefix_len=prefix_len)
  params = jax.device_put(model.params, step_lib.param_shardings(cfg, mesh))
  state = step_lib.init_state(cfg, lc, opt, 0, mesh, params=params if full else None)
  frozen = None if full else params
  batch = {k: np.asarray(batch[k], np.int32)[:, None, :]  # [rows, accum=1, T]
           for k in ("input_ids", "attention_mask", "labels")}
  batch = jax.device_put(batch, step_lib.batch_spec_sharding(mesh, 3))

  def step(state):
    state, metrics = train(state, frozen, batch)
    return state, metrics["loss"]

  mode = "full fine-tuning" if full else "LoRA"
  if label_window:
    mode += f", label window {label_window}"
  if prefix_len:
    mode += f", shared prefix {prefix_len}"
  return step, state, f"bigrec_jax.train.step.make_train_step ({mode}, accumulation 1)"


# ----------------------------------------------------------------------------- beam search

def beam_search(model, p: dict[str, Any], prompts: Sequence[str]) -> tuple[Callable[[], Any], str]:
  """The project's Generator (bucketed prompts, jitted beam search), forced to `new_tokens`.

  EOS is set to an id no token has, so every run decodes exactly new_tokens steps, as the torch
  side does with min_new_tokens = max_new_tokens: the same work whatever the model predicts.
  """
  import dataclasses

  from bigrec_jax.generate.runner import GenerateOptions, Generator

  opts = GenerateOptions(num_beams=p["beams"], num_return_sequences=p["returned"],
                         max_new_tokens=p["new_tokens"], batch_size=p["batch"], progress=False)
  gen = Generator(model, opts)
  gen.search_config = dataclasses.replace(gen.search_config, eos_token_id=-1)
  tok = model.tokenizer

  def run():
    ids = [np.asarray(x, np.int32) for x in tok(list(prompts))["input_ids"]]
    return gen.generate_ids(ids)

  return run, "bigrec_jax.generate.runner.Generator.generate_ids (EOS disabled)"


def beam_summary(model, out) -> dict[str, Any]:
  """Prompt length is not known here; the best hypothesis of the first prompt, for a glance."""
  tokens, scores, lengths = out[0]
  text = model.tokenizer.decode(tokens[0][:int(lengths[0])], skip_special_tokens=True)
  return {"best_of_first": text[:80]}


# ----------------------------------------------------------------------------- embeddings

def embed_texts(model, p: dict[str, Any], texts: Sequence[str]) -> tuple[Callable[[], Any], str]:
  from bigrec_jax.ground import embed

  def run():
    return embed.embed_texts(model, texts, batch_size=p["batch"], progress=False)

  lengths = [len(x) for x in embed.tokenize(model.tokenizer, texts, 512)]
  run.padded_tokens = [p["batch"] * sum(n for _, n in embed.plan_batches(lengths, p["batch"]))]
  run.tokens = [sum(lengths)]
  return run, f"bigrec_jax.ground.embed.embed_texts(batch_size={p['batch']})"
