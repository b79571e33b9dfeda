"""The catalog trie: device tables agree with a plain trie; constrained decoding yields titles."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigrec_jax.data import prompts
from bigrec_jax.generate import GenerateOptions, Generator, trie as trie_lib


def test_tables_allow_exactly_the_trie_children_sparse_and_dense():
  rng = np.random.default_rng(0)
  vocab, eos = 30, 1
  seqs = [list(rng.integers(2, vocab, size=rng.integers(1, 5))) + [eos] for _ in range(60)]
  seqs += [[5, 6, eos], [5, 6, 7, eos]]  # a title that is a prefix of another
  tables = trie_lib.build_tables(seqs, vocab, max_sparse_width=3)
  assert (np.asarray(tables.dense_row) >= 0).sum() >= 1, "the root must need a dense row"
  # Reference: walk every prefix in Python.
  children: dict[tuple, set] = {}
  for s in seqs:
    for t in range(len(s)):
      children.setdefault(tuple(s[:t]), set()).add(int(s[t]))
  dev = trie_lib.to_device(tables)
  mask_fn = jax.jit(lambda st: trie_lib.allowed_mask(dev, st, vocab))
  step_fn = jax.jit(lambda st, tok: trie_lib.advance(dev, st, tok))
  prefixes = sorted(children, key=len)
  state_of = {(): 0}
  for prefix in prefixes:
    if prefix:
      parent = state_of[prefix[:-1]]
      state_of[prefix] = int(step_fn(jnp.array([parent]), jnp.array([prefix[-1]]))[0])
    allowed = np.flatnonzero(np.asarray(mask_fn(jnp.array([state_of[prefix]]))[0]))
    assert set(allowed) == children[prefix], prefix
  # A token outside the trie leads to the sink, which allows nothing.
  bad = int(step_fn(jnp.array([0]), jnp.array([0]))[0])
  assert bad == tables.sink and not np.asarray(mask_fn(jnp.array([bad]))).any()


@pytest.mark.parametrize("template", prompts.TEMPLATES)
def test_titles_are_tokenized_as_in_a_training_target(smollm2, template):
  tok = smollm2.tokenizer
  titles = ["Toy Story", "Wizard of Oz, The", "12 Angry Men"]
  seqs = trie_lib.title_sequences(tok, titles, prompts.PromptFormat(template).trie_context())
  for title, seq in zip(titles, seqs):
    row = {"instruction": "i", "input": "x", "output": prompts.quote(title)}
    prompt_ids = tok(prompts.prompt_for(row, template))["input_ids"]
    full_ids = tok(prompts.full_text(row, template))["input_ids"] + [tok.eos_token_id]
    assert full_ids[:len(prompt_ids)] == prompt_ids
    assert seq == full_ids[len(prompt_ids):]


def test_constrained_decoding_returns_only_catalog_titles(smollm2, ml100k, real_rows):
  tok = smollm2.tokenizer
  # 50 real titles, short enough to finish within max_new_tokens.
  lengths = [len(s) for s in trie_lib.title_sequences(tok, ml100k.log.titles)]
  catalog = [t for t, n in zip(ml100k.log.titles, lengths) if n <= 8][:50]
  assert len(catalog) == 50
  generator = Generator(smollm2, GenerateOptions(num_beams=4, num_return_sequences=4,
                                                 max_new_tokens=8, batch_size=4,
                                                 constrained=True, progress=False),
                        titles=catalog)
  rows = generator.generate_rows(real_rows[:4])
  allowed = {prompts.quote(t) for t in catalog}
  for row in rows:
    assert len(row["predict"]) == 4 and len(set(row["predict"])) == 4
    assert all(p in allowed for p in row["predict"]), row["predict"]
    assert all(s is not None and s < 0 for s in row["predict_scores"])
