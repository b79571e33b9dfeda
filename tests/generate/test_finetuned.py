"""Unconstrained beam search on a SmolLM2 fine-tuned (by our train step) to emit catalog titles.

Issue 6: "beam search without constraint on a model that was fine-tuned to emit titles returns
mostly catalog titles too". The adapter is trained here, in a few steps of the project's own
jitted LoRA step on short prompts -> `"Title"` + EOS, so the test stays around a minute on CPU.
"""
from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np
import pytest

from bigrec_jax import parallel
from bigrec_jax.data import prompts
from bigrec_jax.data.tokenize import IGNORE_INDEX, Tokenized, pad_examples
from bigrec_jax.generate import GenerateOptions, Generator, trie as trie_lib
from bigrec_jax.model import LoraConfig, lora as lora_lib
from bigrec_jax.train import optimizer as opt_lib
from bigrec_jax.train import step as step_lib

pytestmark = pytest.mark.slow

CATALOG_SIZE, TRAIN_ROWS, STEPS, LR = 20, 10, 10, 1e-2


def _prompt(seen: str) -> str:
  # Short (about 15 tokens), but ends at the marker constrained decoding tokenizes titles after.
  return f"A user liked {prompts.quote(seen)}. Recommend a movie.\n{prompts.RESPONSE_MARKER}"


@pytest.fixture(scope="module")
def catalog(smollm2, ml100k):
  """20 real ML-100K titles of at most 8 target tokens (quotes and EOS included)."""
  lengths = [len(s) for s in trie_lib.title_sequences(smollm2.tokenizer, ml100k.log.titles)]
  titles = [t for t, n in zip(ml100k.log.titles, lengths) if n <= 8][:CATALOG_SIZE]
  assert len(titles) == CATALOG_SIZE
  return titles


@pytest.fixture(scope="module")
def tuned(smollm2, catalog):
  """SmolLM2 with a LoRA adapter trained on prompt -> `"Title"` + EOS (merged into the weights)."""
  tok = smollm2.tokenizer
  rng = np.random.default_rng(0)
  ids, labels = [], []
  for i in range(TRAIN_ROWS):
    seen, target = rng.choice(CATALOG_SIZE, 2, replace=False)
    prompt = tok(_prompt(catalog[seen]))["input_ids"]
    full = tok(_prompt(catalog[seen]) + prompts.quote(catalog[target]))["input_ids"]
    full = full + [tok.eos_token_id]
    ids.append(full)
    labels.append([IGNORE_INDEX] * len(prompt) + full[len(prompt):])  # response-only loss
  data = Tokenized.from_lists(ids, labels)
  length = int(data.lengths.max())
  batch = {k: v[:, None] for k, v in pad_examples(data, range(TRAIN_ROWS), length).items()}

  mesh = parallel.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  lc = LoraConfig(dropout=0.0)
  opt, _ = opt_lib.make_optimizer(LR, STEPS, warmup_steps=0)
  step = step_lib.make_train_step(smollm2.config, lc, opt, mesh)
  state = step_lib.init_state(smollm2.config, lc, opt, 0, mesh)
  params = jax.device_put(smollm2.params, step_lib.param_shardings(smollm2.config, mesh))
  batch = parallel.global_batch_from_local(batch, mesh)
  started, losses = time.time(), []
  for _ in range(STEPS):
    state, metrics = step(state, params, batch)
    losses.append(float(metrics["loss"]))
  print(f"fine-tuning: {STEPS} steps in {time.time() - started:.1f} s, loss "
        + " ".join(f"{x:.2f}" for x in losses))
  assert losses[-1] < 0.5 * losses[0]
  merged = jax.jit(lora_lib.merge, static_argnums=2)(smollm2.params, state.lora, lc)
  return dataclasses.replace(smollm2, params=merged)


def test_finetuned_unconstrained_beam_search_returns_mostly_catalog_titles(smollm2, tuned,
                                                                           catalog):
  rng = np.random.default_rng(1)  # prompts with other pairs than the training ones
  texts = [_prompt(catalog[i]) for i in rng.choice(CATALOG_SIZE, 8, replace=False)]
  allowed = {prompts.quote(t) for t in catalog}
  options = GenerateOptions(num_beams=4, num_return_sequences=4, max_new_tokens=8,
                            batch_size=8, progress=False)
  started = time.time()
  predict, _ = Generator(tuned, options).generate_prompts(texts)
  tuned_hits = sum(p[0] in allowed for p in predict)
  base_predict, _ = Generator(smollm2, options).generate_prompts(texts)
  base_hits = sum(p[0] in allowed for p in base_predict)
  print(f"catalog titles as predict[0]: fine-tuned {tuned_hits}/8, base {base_hits}/8 "
        f"({time.time() - started:.1f} s); e.g. {predict[0]} / base {base_predict[0]}")
  assert tuned_hits >= 7, predict  # >= 80% (7/8 = 87.5%)
  assert tuned_hits > base_hits

  constrained = Generator(tuned, dataclasses.replace(options, constrained=True), titles=catalog)
  predict, scores = constrained.generate_prompts(texts)
  assert all(p in allowed for row in predict for p in row), predict
  assert all(s is not None for row in scores for s in row)
