"""The model's history-free catalog prior (generate/prior.py) and contrastive decoding with it.

Unit: title log-likelihoods of a tiny random model (full-vocabulary and renormalised over the
trie's children) against a plain forward per title. Real:
SmolLM2 on real ML-100K titles, the Generator's prior against a full forward of each title after
the history-free prompt (and, with rows, the mean over their prompts), and a contrastive search (alpha 2) whose every beam scores
2 log p(title | history) - log q(title) under the catalog-restricted model.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigrec_jax.generate import prior as prior_lib
from bigrec_jax.generate import trie as trie_lib
from bigrec_jax.model import LlamaConfig, forward, init_params

CONFIG = LlamaConfig(vocab_size=16, hidden_size=32, intermediate_size=48, num_layers=2,
                     num_heads=4, num_kv_heads=2, head_dim=8, eos_token_id=1, pad_token_id=0,
                     bos_token_id=None)


@functools.partial(jax.jit, static_argnums=0)
def _jitted_forward(config, params, ids):
  """A plain forward, jitted once per length (run eagerly, the layer scan compiles every call)."""
  return forward(config, params, ids, jnp.ones_like(ids))[0]


def _forward_log_likelihood(config, params, prompt, seq, trie=None) -> float:
  """log p(seq | prompt) from one plain forward over prompt + seq; with `trie` (sequences),
  each step renormalised over the tokens that follow its prefix in some trie sequence."""
  ids = np.concatenate([prompt, seq]).astype(np.int32)[None]
  logits = _jitted_forward(config, params, ids)
  logp = np.asarray(jax.nn.log_softmax(logits[0, len(prompt) - 1:-1], axis=-1), np.float64)
  total = 0.0
  for t, x in enumerate(seq):
    total += logp[t, x]
    if trie is not None:
      children = sorted({s[t] for s in trie if s and list(s[:t]) == list(seq[:t])})
      total -= np.log(np.exp(logp[t, children]).sum())
  return float(total)


@pytest.mark.parametrize("renormalised", [False, True])
def test_title_log_likelihoods_equal_a_forward_per_title(renormalised):
  params = init_params(CONFIG, jax.random.key(0))
  params = {**params, "embed": params["embed"] * 4.0}  # peaked: the titles' scores differ
  prompt = np.array([2, 5, 7, 3, 9], np.int32)
  seqs = [[3, 4, 1], None, [8, 9, 10, 11, 12, 13, 14, 1], [5, 1], [3, 7, 1], [15, 2, 3, 4, 1],
          [3, 4, 6, 1]]
  trie = seqs if renormalised else None
  # batch 2 and bucket 4: four batches of two buckets, the last filled with a copy of its first
  got = prior_lib.title_log_likelihoods(CONFIG, params, prompt, seqs, trie_sequences=trie,
                                        batch_size=2, bucket_multiple=4)
  assert got[1] == -np.inf
  want = [_forward_log_likelihood(CONFIG, params, prompt, np.asarray(s), trie)
          for s in seqs if s]
  np.testing.assert_allclose(got[[0, 2, 3, 4, 5, 6]], want, atol=1e-4)
  assert len(set(np.round(want, 3))) == len(want)  # the check can tell titles apart
  if renormalised:  # forced tokens cost nothing: only the choices at the root and after 3, 3 4
    assert got[2] == pytest.approx(_forward_log_likelihood(
        CONFIG, params, prompt, np.asarray([8]), trie), abs=1e-5)


def test_catalog_prior_is_the_softmax_of_log_likelihoods():
  ll = np.array([np.log(2.0), -np.inf, 0.0, np.log(5.0)])
  np.testing.assert_allclose(prior_lib.catalog_prior(ll), [2 / 8, 0, 1 / 8, 5 / 8])
  flat = prior_lib.catalog_prior(ll, temperature=2.0)  # sqrt of the masses, renormalised
  np.testing.assert_allclose(flat, np.array([2 ** .5, 0, 1, 5 ** .5]) / (1 + 2 ** .5 + 5 ** .5))
  with pytest.raises(ValueError, match="finite"):
    prior_lib.catalog_prior(np.full(3, -np.inf))


def _restricted_scores(run, prompts, seqs) -> np.ndarray:
  """[len(prompts), len(seqs)] each title's log-prob after each prompt, every step renormalised
  over the titles' trie children: every (prompt, title) pair in one jitted causal forward (one
  compile), prompts left-padded (positions count from the first real token) and titles
  right-padded (padding only follows)."""
  width, longest = max(len(p) for p in prompts), max(len(s) for s in seqs)
  ids = np.stack([np.concatenate([np.zeros(width - len(p), np.int32), p,
                                  np.pad(np.asarray(s, np.int32), (0, longest - len(s)))])
                  for p in prompts for s in seqs])
  mask = np.stack([np.arange(width + longest) >= width - len(p) for p in prompts for _ in seqs])
  logp = np.asarray(jax.nn.log_softmax(run(ids, mask)[:, width - 1:], axis=-1), np.float64)
  logp = logp.reshape(len(prompts), len(seqs), *logp.shape[1:])
  children = lambda pre: sorted({s[len(pre)] for s in map(tuple, seqs) if s[:len(pre)] == pre})
  return np.array([[sum(lp[r, t, x] - np.log(np.exp(lp[r, t, children(tuple(s[:t]))]).sum())
                        for t, x in enumerate(s)) for r, s in enumerate(seqs)] for lp in logp])


def _softmax(x):
  e = np.exp(x - x.max())
  return e / e.sum()


def test_smollm2_prior_and_contrastive_beams(smollm2, real_rows):
  """Six real titles, six beams, renormalised, length penalty 0: the Generator's prior is each
  title's restricted log-likelihood after the history-free prompt (softmaxed over the six), and
  with rows the mean of their prompts' distributions; at alpha 2 every returned title scores
  2 log p_r(title | row) - log q(title)."""
  from bigrec_jax.data import prepare
  from bigrec_jax.generate.runner import GenerateOptions, Generator

  tok = smollm2.tokenizer
  titles_all = prepare.build("ml-100k").log.titles
  seqs_all = trie_lib.title_sequences(tok, titles_all)
  catalog = [t for t, s in zip(titles_all, seqs_all) if len(s) <= 7][:6]
  options = GenerateOptions(num_beams=6, num_return_sequences=6, max_new_tokens=8, batch_size=2,
                            constrained=True, length_penalty=0.0, progress=False,
                            renormalize=True, assistant="llm_prior", guidance=2.0)
  generator = Generator(smollm2, options, titles=catalog)
  seqs = trie_lib.title_sequences(tok, catalog)
  # weights as an argument, not a closure: captured, they would be folded into the program
  jitted = jax.jit(lambda p, i, m: forward(smollm2.config, p, i, m)[0])
  run = lambda i, m: jitted(smollm2.params, i, m)
  free = np.asarray(tok(options.prompt_format.history_free_prompt())["input_ids"], np.int32)
  rows = real_rows[:2]
  ids = generator.prompt_ids(rows)
  free_scores, *by_row = _restricted_scores(run, [free, *map(np.asarray, ids)], seqs)
  q = generator.catalog_prior()
  np.testing.assert_allclose(q, _softmax(free_scores), rtol=2e-3)
  # The marginal over real users (prior_rows): the mean of each row's catalog distribution
  # (the rows' prompts from their text: their item ids belong to the full catalog).
  text_rows = [{k: v for k, v in r.items() if k != "history_item_ids"} for r in rows]
  marginal = generator.catalog_prior(text_rows)
  np.testing.assert_allclose(marginal, np.mean([_softmax(x) for x in by_row], axis=0), rtol=2e-3)
  assert np.abs(marginal - q).max() > 0.01  # a different prompt set, a different prior
  results = generator.generate_ids(ids, guidance=generator.row_guidance(rows))
  index = {tuple(s): i for i, s in enumerate(seqs)}
  for restricted, (tokens, scores, lengths) in zip(by_row, results):
    got = [tuple(int(x) for x in t[:n]) for t, n in zip(tokens, lengths)]
    assert sorted(got) == sorted(index)
    want = [2 * restricted[index[g]] - np.log(q[index[g]]) for g in got]
    np.testing.assert_allclose(scores, want, atol=3e-3)  # float32 decode cache vs a forward
  # alpha 2 is not alpha 1: the prior reorders some row's beams (else the check is vacuous)
  plain = generator.generate_ids(ids, guidance=generator.row_guidance(rows), alpha=1.0)
  assert any([tuple(int(x) for x in t[:n]) for t, n in zip(r[0], r[2])]
             != [tuple(int(x) for x in t[:n]) for t, n in zip(p[0], p[2])]
             for r, p in zip(results, plain))
